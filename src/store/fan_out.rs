//! The fan-out every cross-table write shares: envelopes into the queues of clients that exist
//! (the accounts' tables say which), and into a group's log for the members that read it.

use super::kv::{Prefetch, WriteTransaction};
use super::rows::{Enqueued, Envelope, FullQueues, QueueLimits};
use super::tables::{accounts, group_logs, queues};
use super::{Store, StoreError};

impl Store {
    /// Queues every envelope whose client exists and has room, in one commit; answers after it.
    pub async fn enqueue(
        &self,
        envelopes: Vec<Envelope>,
        now_ms: u64,
        limits: QueueLimits,
    ) -> Result<Result<Vec<Enqueued>, FullQueues>, StoreError> {
        self.write_reading(envelope_reads(&envelopes, limits), move |txn| {
            enqueue(txn, &envelopes, now_ms, limits)
        })
        .await
    }
}

/// Queues envelopes inside an open write transaction, for the clients that exist (see
/// [`queues::enqueue_in`]).
pub(super) fn enqueue(
    txn: &WriteTransaction,
    envelopes: &[Envelope],
    now_ms: u64,
    limits: QueueLimits,
) -> Result<Result<Vec<Enqueued>, FullQueues>, StoreError> {
    let clients = accounts::ClientRows::open(txn)?;
    queues::enqueue_in(txn, envelopes, now_ms, limits, &|client| {
        clients.exists(client)
    })
}

/// The rows [`enqueue`] reads for `envelopes` under `limits`: each recipient's client row, and
/// what [`queues::envelope_reads`] names.
pub(super) fn envelope_reads(envelopes: &[Envelope], limits: QueueLimits) -> Prefetch {
    let mut reads = queues::envelope_reads(envelopes, limits);
    for envelope in envelopes {
        accounts::client_reads(&mut reads, envelope.key());
    }
    reads
}

/// Queues `envelopes` (messages of group `group_id`, hosted here): the MLS messages for clients
/// that read the group's log are appended to it, each distinct message once; the rest go to their
/// queues ([`enqueue_in`]). Outcomes are per envelope, in order; a refusal writes nothing.
///
/// Admission follows the queues' rule with the log's kept entries and bytes standing for a
/// queue's: an application message beyond the limits is refused for its log readers
/// (`QueueFull`), a handshake beyond twice the limits refuses the whole operation (the log
/// readers named), unless it may be skipped (`HandshakeIfRoom`).
pub(super) fn enqueue_group_in(
    txn: &WriteTransaction,
    group_id: &[u8],
    envelopes: &[Envelope],
    now_ms: u64,
    limits: QueueLimits,
) -> Result<Result<Vec<Enqueued>, FullQueues>, StoreError> {
    let plan = match group_logs::plan_log(txn, group_id, envelopes, limits)? {
        Ok(plan) => plan,
        Err(full) => return Ok(Err(full)),
    };
    if plan.verdicts.iter().all(Option::is_none) {
        return enqueue(txn, envelopes, now_ms, limits);
    }
    let for_queues: Vec<Envelope> = envelopes
        .iter()
        .zip(&plan.verdicts)
        .filter(|(_, verdict)| verdict.is_none())
        .map(|(envelope, _)| envelope.clone())
        .collect();
    let queued = match enqueue(txn, &for_queues, now_ms, limits)? {
        Ok(queued) => queued,
        Err(full) => return Ok(Err(full)),
    };
    let positions = group_logs::write_log(txn, group_id, envelopes, &plan, now_ms, limits)?;
    let mut queued = queued.into_iter();
    Ok(Ok(plan
        .verdicts
        .iter()
        .map(|verdict| match verdict {
            None => queued.next().unwrap_or(Enqueued::UnknownClient),
            Some(group_logs::LogVerdict::Full) => Enqueued::QueueFull,
            Some(group_logs::LogVerdict::Append(entry)) => Enqueued::Logged {
                gseq: positions[*entry],
            },
        })
        .collect()))
}
