//! An application message's fan-out, in one transaction: the send view it is checked against,
//! then its copies in members' queues, its one entry in the group's log, its deliveries in peers'
//! outboxes, and the request remembered for the dedupe window.

use std::sync::Arc;

use super::fan_out;
use super::kv::Prefetch;
use super::rows::{Enqueued, Envelope, OutgoingDelivery, QueueLimits};
use super::tables::groups::{self, GroupRefusal, Remembered, RequestRecord, SendView};
use super::tables::{federation, group_logs};
use super::{Store, StoreError};
use crate::protocol::ClientId;

impl Store {
    /// What `asker` sending an application message with `digest` to `group_id` needs, in one
    /// read: whether the same message was accepted within the dedupe window before `now_ms`,
    /// and if not the group's send view (`None` for a group not hosted here, or stored before
    /// send views existed: the caller falls back to the state).
    pub async fn prepare_send(
        &self,
        group_id: &[u8],
        digest: [u8; 32],
        asker: &ClientId,
        now_ms: u64,
    ) -> Result<(Remembered, Option<SendView>), StoreError> {
        let group_id = group_id.to_vec();
        let asker = asker.clone();
        // One statement on PostgreSQL: the remembered request, the send view and the group's
        // log readers.
        let mut reads = Prefetch::default();
        groups::send_view_reads(&mut reads, &group_id, &digest);
        group_logs::log_reader_reads(&mut reads, &group_id);
        self.read_reading(reads, move |txn| {
            let asker = crate::store::rows::key(&asker);
            let (remembered, view) =
                groups::prepared_send_in(txn, &group_id, &digest, asker, now_ms)?;
            let Some((epoch, members)) = view else {
                return Ok((remembered, None));
            };
            let log_readers = group_logs::log_readers_among(txn, &group_id, &members)?;
            let view = SendView {
                epoch,
                members,
                log_readers,
            };
            Ok((remembered, Some(view)))
        })
        .await
    }

    /// Queues `envelopes` locally and `remote` deliveries in their peers' outboxes, in one
    /// commit; with `request`, remembers it, or answers a retry of it without queuing again.
    /// With `log`, also appends that application message once to the log of the request's
    /// group, for readers the caller found in the group's send view; the second outcome is the
    /// log's (`Logged`, or `QueueFull` when the server's total is reached).
    pub async fn deliver(
        &self,
        envelopes: Vec<Envelope>,
        log: Option<Arc<Vec<u8>>>,
        remote: Vec<OutgoingDelivery>,
        now_ms: u64,
        limits: QueueLimits,
        request: Option<RequestRecord>,
    ) -> Result<Result<(Vec<Enqueued>, Option<Enqueued>), GroupRefusal>, StoreError> {
        let mut reads = fan_out::envelope_reads(&envelopes, limits);
        if let Some(request) = &request {
            groups::request_reads(&mut reads, request);
        }
        self.write_reading(reads, move |txn| {
            if let Some(request) = &request {
                if let Some(refusal) = groups::repeat_refusal(txn, request)? {
                    return Ok(Err(refusal));
                }
            }
            let outcomes = match fan_out::enqueue(txn, &envelopes, now_ms, limits)? {
                Ok(outcomes) => outcomes,
                Err(full) => return Ok(Err(GroupRefusal::QueueFull(full))),
            };
            let logged = match (&log, &request) {
                (Some(payload), Some(request)) => Some(group_logs::append_message_in(
                    txn,
                    &request.group_id,
                    payload,
                    now_ms,
                    limits,
                )?),
                _ => None,
            };
            federation::outbox_in(txn, &remote, now_ms)?;
            if let Some(request) = &request {
                groups::remember_request(txn, request)?;
            }
            Ok(Ok((outcomes, logged)))
        })
        .await
    }
}
