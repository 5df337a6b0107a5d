//! Client queues: per-client, gap-free sequence numbers; messages stay until acknowledged or
//! expired. One enqueue puts one or many messages into many queues in one commit.

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::kv::{Prefetch, ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::protocol::ClientId;
use crate::store::rows::{
    Admission, Enqueued, Envelope, FullQueues, QueueLimits, HANDSHAKE_RESERVE_FACTOR,
};
use crate::store::{Store, StoreError};

/// (user id, device id, seq) -> a [`QueueRecord`].
pub(in crate::store) const QUEUE: TableDefinition<(&str, u32, u64), &[u8]> =
    TableDefinition::new("queue-2");
/// Schema 1's queue: (user id, device id, seq) -> `uint64 enqueued_at_ms; uint8 kind; payload`.
/// Read only by [`migrate_queue_1`].
pub(in crate::store) const QUEUE_1: TableDefinition<(&str, u32, u64), &[u8]> =
    TableDefinition::new("queue-1");
/// A payload fanned out to several queues, stored once: payload id -> bytes. Each queue record
/// that holds it counts in [`SHARED_PAYLOAD_REFS`]; the last one to go takes it along.
pub(in crate::store) const SHARED_PAYLOADS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("shared-payloads-1");
/// Payload id -> how many queue records refer to it (always at least 1).
pub(in crate::store) const SHARED_PAYLOAD_REFS: TableDefinition<u64, u64> =
    TableDefinition::new("shared-payload-refs-1");
/// (user id, device id, notice kind) -> the seq of that client's notice of that kind, while it
/// may still be queued: a coalesced notice is queued again only once the previous one is gone.
pub(in crate::store) const PENDING_NOTICES: TableDefinition<(&str, u32, u8), u64> =
    TableDefinition::new("pending-notices-1");
/// Computes the server's total from every queue head (the schema 3 migration).
pub(in crate::store) fn count_server_total(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut total = 0u64;
    for entry in txn.open_table(QUEUE_HEADS)?.iter()? {
        total = total.saturating_add(entry?.1.value().2);
    }
    crate::store::totals::set_server_total(txn, total)
}

/// Payload bytes queued for all the clients of `user_id`, as counted by `removals` (exact with
/// [`QUEUE_REMOVED`], an over-estimate with [`QUEUE_REMOVED_SEEN`]).
fn user_total(
    heads: &impl ReadableTable<(&'static str, u32), (u64, u64, u64)>,
    removals: &impl ReadableTable<(&'static str, u32), (u64, u64)>,
    user_id: &str,
) -> Result<u64, StoreError> {
    let mut total = 0u64;
    for entry in heads.range((user_id, 0)..=(user_id, u32::MAX))? {
        let (key, head) = entry?;
        let (_, gone_bytes) = removals.get(key.value())?.map_or((0, 0), |r| r.value());
        total = total.saturating_add(head.value().2.saturating_sub(gone_bytes));
    }
    Ok(total)
}

/// (user id, device id) -> (next seq, messages ever queued, payload bytes ever queued): written
/// by enqueues only.
pub(in crate::store) const QUEUE_HEADS: TableDefinition<(&str, u32), (u64, u64, u64)> =
    TableDefinition::new("queue-heads-1");

/// (user id, device id) -> (messages, payload bytes) removed from the queue so far (acknowledged
/// or purged): written by removals only. A queue holds its head's counts less these. Kept apart
/// so that a message queued for a client and the client's acknowledgement, made by two nodes at
/// once, write different rows and do not conflict.
pub(in crate::store) const QUEUE_REMOVED: TableDefinition<(&str, u32), (u64, u64)> =
    TableDefinition::new("queue-removed-1");

/// (user id, device id) -> [`QUEUE_REMOVED`]'s row as an enqueue last read it: written by
/// enqueues only. Removals only grow, so a head's counts less these are an over-estimate of what
/// the queue holds, and an enqueue that fits under the limits by the over-estimate need not read
/// the removals (on a shared store, reading them would conflict with every acknowledgement
/// another node makes for the client meanwhile). Absent: nothing seen, a bound all the same.
pub(in crate::store) const QUEUE_REMOVED_SEEN: TableDefinition<(&str, u32), (u64, u64)> =
    TableDefinition::new("queue-removed-seen-1");

/// A client's queue: (next seq, messages queued, payload bytes queued).
/// A client's queue as a read transaction sees it: the next sequence number it will assign, and
/// how many messages wait.
pub(in crate::store) fn queue_extent_read(
    txn: &crate::store::kv::ReadTransaction,
    client: (&str, u32),
) -> Result<(u64, u64), StoreError> {
    let heads = txn.open_table(QUEUE_HEADS)?;
    let removed = txn.open_table(QUEUE_REMOVED)?;
    let (next_seq, count, _) = queue_state(&heads, &removed, client)?;
    Ok((next_seq, count))
}

pub(in crate::store) fn queue_state(
    heads: &impl ReadableTable<(&'static str, u32), (u64, u64, u64)>,
    removed: &impl ReadableTable<(&'static str, u32), (u64, u64)>,
    client: (&str, u32),
) -> Result<(u64, u64, u64), StoreError> {
    let (next_seq, added, added_bytes) = heads
        .get(client)?
        .map_or((FIRST_SEQ, 0, 0), |head| head.value());
    let (gone, gone_bytes) = removed.get(client)?.map_or((0, 0), |r| r.value());
    Ok((
        next_seq,
        added.saturating_sub(gone),
        added_bytes.saturating_sub(gone_bytes),
    ))
}

/// Counts `count` messages of `bytes` as removed from `client`'s queue.
fn record_removed(
    txn: &WriteTransaction,
    client: (&str, u32),
    count: u64,
    bytes: u64,
) -> Result<(), StoreError> {
    let mut removed = txn.open_table(QUEUE_REMOVED)?;
    let (gone, gone_bytes) = removed.get(client)?.map_or((0, 0), |r| r.value());
    removed.put(
        client,
        (gone.saturating_add(count), gone_bytes.saturating_add(bytes)),
    )?;
    Ok(())
}

/// The sequence number of a client's first message.
pub const FIRST_SEQ: u64 = 1;

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub enqueued_at_ms: u64,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Messages deleted unread from one client's queue because they outlived the retention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiredMessages {
    pub client: ClientId,
    pub count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

impl Store {
    /// Up to `max_count` messages from `from_seq` on, within `max_bytes` of payload (but at least
    /// one if there is one), and the next sequence number the queue will assign.
    pub async fn fetch_messages(
        &self,
        client: &ClientId,
        from_seq: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<(Vec<StoredMessage>, u64), StoreError> {
        self.read_for(client, move |txn, (user_id, device_id)| {
            let next_seq = txn
                .open_table(QUEUE_HEADS)?
                .get((user_id, device_id))?
                .map_or(FIRST_SEQ, |head| head.value().0);
            let queue = txn.open_table(QUEUE)?;
            let shared = txn.open_table(SHARED_PAYLOADS)?;
            let mut messages = Vec::new();
            let mut bytes = 0u64;
            let range = (user_id, device_id, from_seq)..=(user_id, device_id, u64::MAX);
            for entry in queue.range(range)? {
                if messages.len() >= max_count {
                    break;
                }
                let (key, value) = entry?;
                let record = QueueRecord::decode(value.value())?;
                bytes = bytes.saturating_add(record.payload_len());
                if bytes > max_bytes as u64 && !messages.is_empty() {
                    break;
                }
                let payload = match record.payload {
                    Payload::Inline(payload) => payload.to_vec(),
                    Payload::Shared { id, .. } => shared
                        .get(id)?
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!("shared payload {id} is missing"))
                        })?
                        .value()
                        .to_vec(),
                };
                messages.push(StoredMessage {
                    seq: key.value().2,
                    enqueued_at_ms: record.enqueued_at_ms,
                    kind: record.kind,
                    payload,
                });
            }
            Ok((messages, next_seq))
        })
        .await
    }

    /// Deletes a client's messages up to and including `up_to_seq`. Refused (`Ok(Err(next_seq))`)
    /// when `up_to_seq` has not been assigned yet.
    pub async fn ack_messages(
        &self,
        client: &ClientId,
        up_to_seq: u64,
    ) -> Result<Result<(), u64>, StoreError> {
        let (user_id, device_id) = (client.user_id.as_str(), client.device_id);
        let user_id = user_id.to_owned();
        let mut reads = Prefetch::default();
        reads.key(&QUEUE_REMOVED, (user_id.as_str(), device_id));
        let client = (user_id.as_str(), device_id);
        reads.range(
            &QUEUE,
            (client.0, client.1, 0)..=(client.0, client.1, up_to_seq),
        );
        self.write_reading(reads, move |txn| {
            let through = QueuedThrough::read(txn, &user_id, device_id, up_to_seq)?;
            // The head is read only when the acknowledged message is not in the queue: on a
            // shared store, an acknowledgement that read the head would conflict with every
            // message another node queues for the client meanwhile.
            if through.last_seq != Some(up_to_seq) {
                let next_seq = txn
                    .open_table(QUEUE_HEADS)?
                    .get((user_id.as_str(), device_id))?
                    .map_or(FIRST_SEQ, |head| head.value().0);
                if up_to_seq >= next_seq {
                    return Ok(Err(next_seq));
                }
            }
            let (removed, removed_bytes) = through.delete(txn, &user_id, device_id)?;
            if removed > 0 {
                record_removed(txn, (user_id.as_str(), device_id), removed, removed_bytes)?;
            }
            Ok(Ok(()))
        })
        .await
    }

    /// Deletes every message enqueued before `cutoff_ms`, queue by queue, and reports what each
    /// client lost.
    pub async fn purge_expired_messages(
        &self,
        cutoff_ms: u64,
    ) -> Result<Vec<ExpiredMessages>, StoreError> {
        self.write(move |txn| {
            let clients: Vec<(String, u32)> = {
                let heads = txn.open_table(QUEUE_HEADS)?;
                let removed = txn.open_table(QUEUE_REMOVED)?;
                let mut clients = Vec::new();
                for entry in heads.iter()? {
                    let (key, _) = entry?;
                    let (user_id, device_id) = key.value();
                    if queue_state(&heads, &removed, (user_id, device_id))?.1 > 0 {
                        clients.push((user_id.to_owned(), device_id));
                    }
                }
                clients
            };
            let mut report = Vec::new();
            for (user_id, device_id) in clients {
                let mut first_seq = None;
                let mut last_seq = 0;
                let (removed, removed_bytes) =
                    delete_through(txn, &user_id, device_id, u64::MAX, |seq, record| {
                        if record.enqueued_at_ms >= cutoff_ms {
                            return false;
                        }
                        first_seq.get_or_insert(seq);
                        last_seq = seq;
                        true
                    })?;
                if removed == 0 {
                    continue;
                }
                record_removed(txn, (user_id.as_str(), device_id), removed, removed_bytes)?;
                report.push(ExpiredMessages {
                    client: ClientId::of(&user_id, device_id),
                    count: removed,
                    first_seq: first_seq.unwrap_or(last_seq),
                    last_seq,
                });
            }
            Ok(report)
        })
        .await
    }

    /// (messages, payload bytes) queued for a client.
    pub async fn queue_size(&self, client: &ClientId) -> Result<(u64, u64), StoreError> {
        self.read_for(client, move |txn, (user_id, device_id)| {
            let (heads, removed) = (txn.open_table(QUEUE_HEADS)?, txn.open_table(QUEUE_REMOVED)?);
            let (_, count, bytes) = queue_state(&heads, &removed, (user_id, device_id))?;
            Ok((count, bytes))
        })
        .await
    }
}

/// When the oldest message waiting for a client was queued (Unix ms), if any waits.
pub(in crate::store) fn oldest_queued_at(
    txn: &crate::store::kv::ReadTransaction,
    user_id: &str,
    device_id: u32,
) -> Result<Option<u64>, StoreError> {
    let queue = txn.open_table(QUEUE)?;
    let first = queue
        .range((user_id, device_id, 0)..=(user_id, device_id, u64::MAX))?
        .next()
        .transpose()?;
    first
        .map(|(_, record)| QueueRecord::decode(record.value()).map(|r| r.enqueued_at_ms))
        .transpose()
}

/// The rows [`enqueue_in`] reads for `envelopes` under `limits`: each recipient's queue head and
/// removals seen, and with a total per user, those of each recipient user's
/// queues.
pub(in crate::store) fn envelope_reads(envelopes: &[Envelope], limits: QueueLimits) -> Prefetch {
    let mut reads = Prefetch::default();
    let mut users: Vec<&str> = Vec::new();
    for envelope in envelopes {
        let client = envelope.key();
        reads.key(&QUEUE_HEADS, client);
        reads.key(&QUEUE_REMOVED_SEEN, client);
        if !users.contains(&client.0) {
            users.push(client.0);
        }
    }
    if limits.max_user_bytes != u64::MAX {
        for user in users {
            reads.range(&QUEUE_HEADS, (user, 0)..=(user, u32::MAX));
            reads.range(&QUEUE_REMOVED_SEEN, (user, 0)..=(user, u32::MAX));
        }
    }
    reads
}

/// Queues envelopes inside an open write transaction; other store operations that must commit
/// their own change together with a fan-out (a group commit, a federation delivery) call this.
///
/// Each envelope is admitted by its [`Admission`]. `Ok(Err(full))` refuses the whole enqueue
/// before anything is written: an envelope that must not be dropped found no room.
/// A client that `client_exists` does not know gets nothing (`UnknownClient`).
pub(in crate::store) fn enqueue_in(
    txn: &WriteTransaction,
    envelopes: &[Envelope],
    now_ms: u64,
    limits: QueueLimits,
    client_exists: ClientExists<'_>,
) -> Result<Result<Vec<Enqueued>, FullQueues>, StoreError> {
    // Every table is opened once for the whole enqueue (an enqueue is often one envelope, and
    // the writer applies many of them per commit: opening tables is a large part of its work).
    let server_bytes = if limits.max_server_bytes == u64::MAX {
        0
    } else {
        txn.totals().server_total(txn)?
    };
    let mut heads = txn.open_table(QUEUE_HEADS)?;
    let removed = txn.open_table(QUEUE_REMOVED)?;
    let mut seen = txn.open_table(QUEUE_REMOVED_SEEN)?;
    let mut queue = txn.open_table(QUEUE)?;
    let mut pending_notices = txn.open_table(PENDING_NOTICES)?;
    let tables = AdmissionTables {
        client_exists,
        heads: &heads,
        removed: &removed,
        seen: &seen,
        queue: &queue,
        pending_notices: &pending_notices,
    };
    let (plan, refreshed) = match admit(&tables, server_bytes, envelopes, limits)? {
        Ok(admitted) => admitted,
        Err(full) => return Ok(Err(full)),
    };
    drop(removed);
    for (client, removals) in refreshed {
        seen.put(client, removals)?;
    }
    drop(seen);
    let mut shared = txn.open_table(SHARED_PAYLOADS)?;
    // A payload that several envelopes hold (the same `Arc`: one message fanned out) is stored
    // once, under an id given when its first envelope is queued.
    let mut holders: HashMap<*const Vec<u8>, usize> = HashMap::new();
    for (envelope, verdict) in envelopes.iter().zip(&plan) {
        if *verdict == Verdict::Admitted {
            *holders.entry(Arc::as_ptr(&envelope.payload)).or_default() += 1;
        }
    }
    let mut shared_ids: HashMap<*const Vec<u8>, (u64, u64)> = HashMap::new();
    let mut outcomes = Vec::with_capacity(envelopes.len());
    for (envelope, verdict) in envelopes.iter().zip(plan) {
        let client = envelope.key();
        if let Verdict::Refused(outcome) = verdict {
            outcomes.push(outcome);
            continue;
        }
        let (next_seq, count, bytes) = heads
            .get(client)?
            .map_or((FIRST_SEQ, 0, 0), |head| head.value());
        let size = envelope.payload.len() as u64;
        let key = Arc::as_ptr(&envelope.payload);
        let payload = if holders[&key] > 1 {
            let (id, references) = match shared_ids.get(&key) {
                Some(known) => *known,
                None => {
                    let id = shared.last()?.map_or(1, |(last, _)| last.value() + 1);
                    shared.put(id, envelope.payload.as_slice())?;
                    (id, 0)
                }
            };
            shared_ids.insert(key, (id, references + 1));
            Payload::Shared { id, len: size }
        } else {
            Payload::Inline(envelope.payload.as_slice())
        };
        let record = QueueRecord {
            enqueued_at_ms: now_ms,
            kind: envelope.kind as u8,
            payload,
        };
        queue.put(
            (
                envelope.client.user_id.as_str(),
                envelope.client.device_id,
                next_seq,
            ),
            record.encode().as_slice(),
        )?;
        if let Admission::Notice {
            coalesce: Some(notice_kind),
        } = envelope.admission
        {
            pending_notices.put(
                (
                    envelope.client.user_id.as_str(),
                    envelope.client.device_id,
                    notice_kind,
                ),
                next_seq,
            )?;
        }
        let following = next_seq
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("queue sequence numbers exhausted".into()))?;
        heads.put(client, (following, count + 1, bytes.saturating_add(size)))?;
        outcomes.push(Enqueued::Queued { seq: next_seq });
    }
    let mut references = txn.open_table(SHARED_PAYLOAD_REFS)?;
    for (id, count) in shared_ids.into_values() {
        references.put(id, count)?;
    }
    drop((references, heads, queue, shared, pending_notices));
    let added: u64 = envelopes
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| matches!(outcome, Enqueued::Queued { .. }))
        .map(|(envelope, _)| envelope.payload.len() as u64)
        .sum();
    txn.totals().adjust(added, 0);
    Ok(Ok(outcomes))
}

/// Whether one envelope goes into its queue.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Admitted,
    Refused(Enqueued),
}

/// Whether a client exists (the accounts' tables know, a floor up).
pub(in crate::store) type ClientExists<'a> = &'a dyn Fn((&str, u32)) -> Result<bool, StoreError>;

/// The tables [`admit`] reads, opened by its caller.
struct AdmissionTables<'a, 't> {
    client_exists: ClientExists<'a>,
    heads: &'a Table<'t, (&'static str, u32), (u64, u64, u64)>,
    removed: &'a Table<'t, (&'static str, u32), (u64, u64)>,
    seen: &'a Table<'t, (&'static str, u32), (u64, u64)>,
    queue: &'a Table<'t, (&'static str, u32, u64), &'static [u8]>,
    pending_notices: &'a Table<'t, (&'static str, u32, u8), u64>,
}

/// Queues whose removals were read exactly, with those removals (to remember as seen).
type Refreshed<'e> = Vec<((&'e str, u32), (u64, u64))>;

/// The verdict on each envelope, and the queues refreshed.
type Admitted<'e> = (Vec<Verdict>, Refreshed<'e>);

/// Decides, without writing, which envelopes go in (counting the ones before them in the same
/// enqueue), or refuses the whole enqueue.
fn admit<'e>(
    tables: &AdmissionTables,
    server_bytes: u64,
    envelopes: &'e [Envelope],
    limits: QueueLimits,
) -> Result<Result<Admitted<'e>, FullQueues>, StoreError> {
    let mut admission = AdmissionRun::new(tables, server_bytes, envelopes, limits);
    let mut verdicts = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        let client = envelope.key();
        if !(tables.client_exists)(client)? {
            verdicts.push(Verdict::Refused(Enqueued::UnknownClient));
            continue;
        }
        verdicts.push(admission.judge(envelope, client)?);
    }
    Ok(if admission.full.is_empty() {
        Ok((verdicts, admission.refreshed))
    } else {
        Err(admission.full)
    })
}

/// What one enqueue has admitted so far, queue by queue, user by user and for the server.
struct AdmissionRun<'a, 't, 'e> {
    tables: &'a AdmissionTables<'a, 't>,
    limits: QueueLimits,
    /// What the whole enqueue adds (messages, bytes), for the over-estimates below.
    incoming: (u64, u64),
    envelope_count: u64,
    server_bytes: u64,
    /// Per client: (messages, bytes) queued so far, counting this enqueue's admitted envelopes,
    /// and how many of the messages are coalesced notices (which do not count).
    sizes: HashMap<(&'e str, u32), (u64, u64, u64)>,
    /// Per user: bytes queued so far, counting this enqueue's admitted ones. Read only when a
    /// total is configured.
    user_bytes: HashMap<&'e str, u64>,
    coalesced_now: Vec<(&'e str, u32, u8)>,
    refreshed: Refreshed<'e>,
    full: FullQueues,
}

impl<'a, 't, 'e> AdmissionRun<'a, 't, 'e> {
    fn new(
        tables: &'a AdmissionTables<'a, 't>,
        server_bytes: u64,
        envelopes: &'e [Envelope],
        limits: QueueLimits,
    ) -> Self {
        let bytes = envelopes
            .iter()
            .map(|envelope| envelope.payload.len() as u64)
            .sum::<u64>();
        Self {
            tables,
            limits,
            incoming: (envelopes.len() as u64, bytes),
            envelope_count: envelopes.len() as u64,
            server_bytes,
            sizes: HashMap::new(),
            user_bytes: HashMap::new(),
            coalesced_now: Vec::new(),
            refreshed: Vec::new(),
            full: Vec::new(),
        }
    }

    /// The verdict on one envelope for an existing client, counted in if admitted.
    fn judge(
        &mut self,
        envelope: &Envelope,
        client: (&'e str, u32),
    ) -> Result<Verdict, StoreError> {
        let size = envelope.payload.len() as u64;
        let (count, bytes, notices) = match self.sizes.get(&client) {
            Some(known) => *known,
            None => self.queue_size(client)?,
        };
        let user = match self.user_bytes.get(client.0) {
            Some(known) => *known,
            None => self.user_size(client.0)?,
        };
        let limits = self.limits;
        let counted = count.saturating_sub(notices);
        let server_bytes = self.server_bytes;
        let within = |factor: u64| {
            counted < limits.max_messages.saturating_mul(factor)
                && bytes.saturating_add(size) <= limits.max_bytes.saturating_mul(factor)
                && user.saturating_add(size) <= limits.max_user_bytes.saturating_mul(factor)
                && server_bytes.saturating_add(size)
                    <= limits.max_server_bytes.saturating_mul(factor)
        };
        let verdict = match envelope.admission {
            Admission::Message if !within(1) => Verdict::Refused(Enqueued::QueueFull),
            Admission::MessageOrRefuseAll if !within(1) => self.refuse_all(client),
            Admission::Handshake if !within(HANDSHAKE_RESERVE_FACTOR) => self.refuse_all(client),
            Admission::HandshakeIfRoom if !within(HANDSHAKE_RESERVE_FACTOR) => {
                Verdict::Refused(Enqueued::QueueFull)
            }
            Admission::Notice {
                coalesce: Some(kind),
            } => self.coalesce(client, kind)?,
            _ => Verdict::Admitted,
        };
        if verdict == Verdict::Admitted {
            self.user_bytes.insert(client.0, user.saturating_add(size));
            self.server_bytes = server_bytes.saturating_add(size);
            let notice = matches!(envelope.admission, Admission::Notice { coalesce: Some(_) });
            let grown = (
                count + 1,
                bytes.saturating_add(size),
                notices + u64::from(notice),
            );
            self.sizes.insert(client, grown);
        } else {
            self.user_bytes.insert(client.0, user);
            self.sizes.insert(client, (count, bytes, notices));
        }
        Ok(verdict)
    }

    /// A queue's (messages, bytes, waiting coalesced notices) before this enqueue: by the
    /// removals last seen (an over-estimate) while that leaves room for the whole enqueue, else
    /// exact (and remembered as seen).
    fn queue_size(&mut self, client: (&'e str, u32)) -> Result<(u64, u64, u64), StoreError> {
        let (limits, tables) = (self.limits, self.tables);
        let (_, mut count, mut bytes) = queue_state(tables.heads, tables.seen, client)?;
        if count.saturating_add(self.incoming.0) >= limits.max_messages
            || bytes.saturating_add(self.incoming.1) > limits.max_bytes
        {
            (_, count, bytes) = queue_state(tables.heads, tables.removed, client)?;
            let removals = tables.removed.get(client)?.map_or((0, 0), |r| r.value());
            self.refreshed.push((client, removals));
        }
        // Waiting coalesced notices matter only to a queue this enqueue can take to its message
        // limit: look them up only then (the common enqueue reads nothing more).
        let mut notices = 0;
        if count.saturating_add(self.envelope_count) >= limits.max_messages {
            let first = (client.0, client.1, 0u8)..=(client.0, client.1, u8::MAX);
            for entry in tables.pending_notices.range(first)? {
                let (_, seq) = entry?;
                if tables
                    .queue
                    .get((client.0, client.1, seq.value()))?
                    .is_some()
                {
                    notices += 1;
                }
            }
        }
        Ok((count, bytes, notices))
    }

    /// A user's queued bytes before this enqueue (0 when no per-user total is configured).
    fn user_size(&self, user: &str) -> Result<u64, StoreError> {
        let tables = self.tables;
        if self.limits.max_user_bytes == u64::MAX {
            return Ok(0);
        }
        Ok(match user_total(tables.heads, tables.seen, user)? {
            bound if bound.saturating_add(self.incoming.1) <= self.limits.max_user_bytes => bound,
            _ => user_total(tables.heads, tables.removed, user)?,
        })
    }

    /// A full queue that refuses the whole enqueue.
    fn refuse_all(&mut self, client: (&str, u32)) -> Verdict {
        let client = ClientId::of(client.0, client.1);
        if !self.full.contains(&client) {
            self.full.push(client);
        }
        Verdict::Refused(Enqueued::QueueFull)
    }

    /// A coalescing notice goes in unless one of its kind waits unread already.
    fn coalesce(&mut self, client: (&'e str, u32), kind: u8) -> Result<Verdict, StoreError> {
        let key = (client.0, client.1, kind);
        let waiting = self.coalesced_now.contains(&key)
            || match self.tables.pending_notices.get(key)? {
                Some(seq) => self
                    .tables
                    .queue
                    .get((client.0, client.1, seq.value()))?
                    .is_some(),
                None => false,
            };
        if waiting {
            return Ok(Verdict::Refused(Enqueued::Coalesced));
        }
        self.coalesced_now.push(key);
        Ok(Verdict::Admitted)
    }
}

/// Deletes, in order, the client's messages up to `up_to_seq` while `take(seq, record)` says
/// so; stops at the first it refuses. Releases the shared payloads they held. Returns
/// (messages, payload bytes) deleted.
fn delete_through(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
    up_to_seq: u64,
    take: impl FnMut(u64, &QueueRecord) -> bool,
) -> Result<(u64, u64), StoreError> {
    QueuedThrough::read_taking(txn, user_id, device_id, up_to_seq, take)?
        .delete(txn, user_id, device_id)
}

/// A client's messages from the start of its queue up to a position, read but not yet deleted.
struct QueuedThrough {
    seqs: Vec<u64>,
    bytes: u64,
    /// Shared payload id -> records of these that hold it.
    released: HashMap<u64, u64>,
    /// The last message read.
    last_seq: Option<u64>,
}

impl QueuedThrough {
    fn read(
        txn: &WriteTransaction,
        user_id: &str,
        device_id: u32,
        up_to_seq: u64,
    ) -> Result<Self, StoreError> {
        Self::read_taking(txn, user_id, device_id, up_to_seq, |_, _| true)
    }

    /// The messages up to `up_to_seq`, in order, while `take(seq, record)` says so.
    fn read_taking(
        txn: &WriteTransaction,
        user_id: &str,
        device_id: u32,
        up_to_seq: u64,
        mut take: impl FnMut(u64, &QueueRecord) -> bool,
    ) -> Result<Self, StoreError> {
        let queue = txn.open_table(QUEUE)?;
        let mut through = Self {
            seqs: Vec::new(),
            bytes: 0,
            released: HashMap::new(),
            last_seq: None,
        };
        for entry in queue.range((user_id, device_id, 0)..=(user_id, device_id, up_to_seq))? {
            let (key, value) = entry?;
            let seq = key.value().2;
            let record = QueueRecord::decode(value.value())?;
            if !take(seq, &record) {
                break;
            }
            through.bytes = through.bytes.saturating_add(record.payload_len());
            if let Payload::Shared { id, .. } = record.payload {
                *through.released.entry(id).or_default() += 1;
            }
            through.seqs.push(seq);
            through.last_seq = Some(seq);
        }
        Ok(through)
    }

    /// Deletes the messages and releases the shared payloads they held: (messages, bytes).
    fn delete(
        self,
        txn: &WriteTransaction,
        user_id: &str,
        device_id: u32,
    ) -> Result<(u64, u64), StoreError> {
        let mut queue = txn.open_table(QUEUE)?;
        for seq in &self.seqs {
            queue.delete((user_id, device_id, *seq))?;
        }
        drop(queue);
        release_shared_payloads(txn, self.released)?;
        txn.totals().adjust(0, self.bytes);
        Ok((self.seqs.len() as u64, self.bytes))
    }
}

/// Drops `released[id]` references to each shared payload, deleting those no record holds.
fn release_shared_payloads(
    txn: &WriteTransaction,
    released: HashMap<u64, u64>,
) -> Result<(), StoreError> {
    if released.is_empty() {
        return Ok(());
    }
    let mut references = txn.open_table(SHARED_PAYLOAD_REFS)?;
    let mut shared = txn.open_table(SHARED_PAYLOADS)?;
    for (id, count) in released {
        let held = references
            .get(id)?
            .map(|held| held.value())
            .ok_or_else(|| {
                StoreError::Corrupt(format!("shared payload {id} has no reference count"))
            })?;
        match held.checked_sub(count) {
            Some(0) => {
                references.delete(id)?;
                shared.delete(id)?;
            }
            Some(left) => {
                references.put(id, left)?;
            }
            None => {
                return Err(StoreError::Corrupt(format!(
                    "shared payload {id} released more often than held"
                )))
            }
        }
    }
    Ok(())
}

/// Deletes a client's whole queue (it was removed, or its user deleted).
pub(in crate::store) fn delete_client_queue(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
) -> Result<(), StoreError> {
    delete_through(txn, user_id, device_id, u64::MAX, |_, _| true)?;
    txn.open_table(QUEUE_HEADS)?.delete((user_id, device_id))?;
    txn.open_table(QUEUE_REMOVED)?
        .delete((user_id, device_id))?;
    txn.open_table(QUEUE_REMOVED_SEEN)?
        .delete((user_id, device_id))?;
    let mut pending_notices = txn.open_table(PENDING_NOTICES)?;
    let kinds: Vec<u8> = pending_notices
        .range((user_id, device_id, 0u8)..=(user_id, device_id, u8::MAX))?
        .map(|entry| entry.map(|(key, _)| key.value().2))
        .collect::<Result<_, _>>()?;
    for kind in kinds {
        pending_notices.delete((user_id, device_id, kind))?;
    }
    Ok(())
}

/// One queued message as stored:
///
/// ```text
/// uint64 enqueued_at_ms; uint8 kind; uint8 storage;
/// select (storage) {
///     case inline(0): opaque payload[rest of the record];
///     case shared(1): uint64 payload_id; uint64 payload_len;   /* in SHARED_PAYLOADS */
/// }
/// ```
pub(in crate::store) struct QueueRecord<'a> {
    enqueued_at_ms: u64,
    kind: u8,
    payload: Payload<'a>,
}

enum Payload<'a> {
    Inline(&'a [u8]),
    Shared { id: u64, len: u64 },
}

const INLINE: u8 = 0;
const SHARED: u8 = 1;

impl<'a> QueueRecord<'a> {
    fn payload_len(&self) -> u64 {
        match self.payload {
            Payload::Inline(payload) => payload.len() as u64,
            Payload::Shared { len, .. } => len,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut record = Vec::with_capacity(10 + 16);
        record.extend_from_slice(&self.enqueued_at_ms.to_be_bytes());
        record.push(self.kind);
        match self.payload {
            Payload::Inline(payload) => {
                record.reserve(payload.len());
                record.push(INLINE);
                record.extend_from_slice(payload);
            }
            Payload::Shared { id, len } => {
                record.push(SHARED);
                record.extend_from_slice(&id.to_be_bytes());
                record.extend_from_slice(&len.to_be_bytes());
            }
        }
        record
    }

    fn decode(bytes: &'a [u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt("bad queue record".into());
        let (at, rest) = bytes.split_first_chunk::<8>().ok_or_else(corrupt)?;
        let (&[kind, storage], rest) = rest.split_first_chunk::<2>().ok_or_else(corrupt)?;
        let payload = match (storage, rest.len()) {
            (INLINE, _) => Payload::Inline(rest),
            (SHARED, 16) => {
                let (id, len) = rest.split_at(8);
                Payload::Shared {
                    id: u64::from_be_bytes(id.try_into().map_err(|_| corrupt())?),
                    len: u64::from_be_bytes(len.try_into().map_err(|_| corrupt())?),
                }
            }
            _ => return Err(corrupt()),
        };
        Ok(Self {
            enqueued_at_ms: u64::from_be_bytes(*at),
            kind,
            payload,
        })
    }
}

/// Moves schema 1's queue records (payload always inline) into the schema 2 queue table, and
/// drops the old table. Part of the migration from schema 1 to 2, in its transaction.
pub(in crate::store) fn migrate_queue_1(txn: &WriteTransaction) -> Result<(), StoreError> {
    {
        let old = txn.open_table(QUEUE_1)?;
        let mut queue = txn.open_table(QUEUE)?;
        for entry in old.iter()? {
            let (key, value) = entry?;
            let (user_id, device_id, seq) = key.value();
            let [t0, t1, t2, t3, t4, t5, t6, t7, kind, payload @ ..] = value.value() else {
                return Err(StoreError::Corrupt("bad schema 1 queue record".into()));
            };
            let record = QueueRecord {
                enqueued_at_ms: u64::from_be_bytes([*t0, *t1, *t2, *t3, *t4, *t5, *t6, *t7]),
                kind: *kind,
                payload: Payload::Inline(payload),
            };
            queue.put((user_id, device_id, seq), record.encode().as_slice())?;
        }
    }
    txn.delete_table(QUEUE_1)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MessageKind;
    use std::sync::Arc;

    const LIMITS: QueueLimits = QueueLimits::per_client(10_000, 1 << 30);

    /// A store in a temporary directory, with `count` users of one client each.
    async fn store_with_users(count: usize) -> (tempfile::TempDir, Store, Vec<ClientId>) {
        let (dir, store) = crate::store::test_store();
        let users = add_users(&store, count).await;
        (dir, store, users)
    }

    async fn add_users(store: &Store, count: usize) -> Vec<ClientId> {
        let registrations = (0..count).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let user_id = format!("user{i}@localhost");
                let mut key = [0u8; 32];
                key[..8].copy_from_slice(&(i as u64).to_be_bytes());
                store.register_for_test(&user_id, key).await;
                ClientId::of(&user_id, 1)
            })
        });
        let mut users = Vec::new();
        for registration in registrations.collect::<Vec<_>>() {
            users.push(registration.await.unwrap());
        }
        users
    }

    /// Enqueues `envelopes` at time 1 within `limits`: what became of each (none refused them all).
    async fn enqueued(
        store: &Store,
        envelopes: Vec<Envelope>,
        limits: QueueLimits,
    ) -> Vec<Enqueued> {
        store.enqueue(envelopes, 1, limits).await.unwrap().unwrap()
    }

    /// A message of `kind` for `client`, admitted as `admission`.
    fn envelope_of(
        client: &ClientId,
        kind: MessageKind,
        payload: &[u8],
        admission: Admission,
    ) -> Envelope {
        Envelope::new(client.clone(), kind, Arc::new(payload.to_vec()), admission)
    }

    /// One message (one shared `payload`) for every client in `clients`.
    fn envelopes_for(clients: &[ClientId], payload: &Arc<Vec<u8>>) -> Vec<Envelope> {
        clients
            .iter()
            .map(|client| {
                Envelope::new(
                    client.clone(),
                    MessageKind::Mls,
                    payload.clone(),
                    Admission::Message,
                )
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fanning_one_message_out_to_a_thousand_queues_is_one_commit() {
        let (_dir, store, users) = store_with_users(1000).await;
        let envelopes = envelopes_for(&users, &Arc::new(vec![7u8; 1024]));
        let commits = store.stats().commits();
        let outcomes = enqueued(&store, envelopes, LIMITS).await;
        assert_eq!(store.stats().commits() - commits, 1);
        assert!(outcomes
            .iter()
            .all(|o| *o == Enqueued::Queued { seq: FIRST_SEQ }));
        let (messages, next) = store
            .fetch_messages(&ClientId::of("user999@localhost", 1), 0, 10, 1 << 20)
            .await
            .unwrap();
        assert_eq!((messages.len(), next), (1, FIRST_SEQ + 1));
    }

    #[tokio::test]
    async fn limits_refuse_per_recipient_and_acks_free_room() {
        let (_dir, store, users) = store_with_users(2).await;
        let limits = QueueLimits::per_client(2, 100);
        let envelope = |user: usize, size: usize| {
            envelope_of(
                &users[user],
                MessageKind::Mls,
                &vec![0; size],
                Admission::Message,
            )
        };
        let outcomes = enqueued(
            &store,
            vec![
                envelope(0, 10),
                envelope(0, 10),
                envelope(0, 10),
                envelope(1, 101),
            ],
            limits,
        )
        .await;
        assert_eq!(
            outcomes,
            [
                Enqueued::Queued { seq: 1 },
                Enqueued::Queued { seq: 2 },
                Enqueued::QueueFull,
                Enqueued::QueueFull
            ]
        );
        let unknown = Envelope {
            client: ClientId::of("nobody@localhost", 1),
            ..envelope(0, 1)
        };
        assert_eq!(
            store.enqueue(vec![unknown], 1, limits).await.unwrap(),
            Ok(vec![Enqueued::UnknownClient])
        );
        assert_eq!(store.ack_messages(&users[0], 3).await.unwrap(), Err(3));
        store.ack_messages(&users[0], 1).await.unwrap().unwrap();
        assert_eq!(store.queue_size(&users[0]).await.unwrap(), (1, 10));
        assert_eq!(
            store
                .enqueue(vec![envelope(0, 10)], 1, limits)
                .await
                .unwrap(),
            Ok(vec![Enqueued::Queued { seq: 3 }]),
            "sequence numbers are never reused"
        );
    }

    #[tokio::test]
    async fn handshakes_use_the_reserve_and_refuse_the_whole_enqueue_beyond_it() {
        let (_dir, store, users) = store_with_users(2).await;
        let limits = QueueLimits::per_client(2, 1000);
        let envelope = |user: usize, admission| {
            envelope_of(&users[user], MessageKind::Mls, &[0; 10], admission)
        };
        let enqueue = |envelopes: Vec<Envelope>| store.enqueue(envelopes, 1, limits);
        let fill = vec![envelope(0, Admission::Message); 2];
        enqueue(fill).await.unwrap().unwrap();
        // Full for application messages, open for handshakes up to twice the limit.
        assert_eq!(
            enqueue(vec![envelope(0, Admission::Message)])
                .await
                .unwrap(),
            Ok(vec![Enqueued::QueueFull])
        );
        let handshakes = vec![envelope(0, Admission::Handshake); 2];
        enqueue(handshakes).await.unwrap().unwrap();
        // Beyond the reserve: the whole enqueue is refused and nothing is written, not even for
        // the recipient with room.
        let refused = enqueue(vec![
            envelope(1, Admission::Handshake),
            envelope(0, Admission::Handshake),
        ])
        .await
        .unwrap();
        assert_eq!(refused, Err(vec![users[0].clone()]));
        assert_eq!(store.queue_size(&users[1]).await.unwrap(), (0, 0));
        // A removed member's copy is skipped instead.
        assert_eq!(
            enqueue(vec![
                envelope(1, Admission::Handshake),
                envelope(0, Admission::HandshakeIfRoom),
            ])
            .await
            .unwrap(),
            Ok(vec![Enqueued::Queued { seq: 1 }, Enqueued::QueueFull])
        );
        // A relayed application message refuses the whole delivery.
        assert_eq!(
            enqueue(vec![envelope(0, Admission::MessageOrRefuseAll)])
                .await
                .unwrap(),
            Err(vec![users[0].clone()])
        );
    }

    #[tokio::test]
    async fn totals_per_user_and_per_server_bound_what_queues_hold_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let users = add_users(&store, 3).await;
        let (second_device, _) = store
            .add_client(crate::store::NewClient {
                user_id: users[0].user_id.to_string(),
                signature_key: [9; 32],
                now: 0,
                max_clients: 10,
                issue_credential: {
                    let user_id = users[0].user_id.to_string();
                    Box::new(move |device| {
                        crate::store::placeholder_credential(&user_id, device, [9; 32])
                    })
                },
            })
            .await
            .unwrap()
            .unwrap();
        let limits = QueueLimits {
            max_user_bytes: 30,
            max_server_bytes: 50,
            ..QueueLimits::per_client(100, 1000)
        };
        let envelope = |user: usize, device: u32| {
            envelope_of(
                &ClientId::of(users[user].user_id.as_str(), device),
                MessageKind::Mls,
                &[0; 20],
                Admission::Message,
            )
        };
        // User 0 has two devices: 20 bytes on one, and the second 20 would pass its own
        // queue's limit but not the user's.
        assert_eq!(
            enqueued(
                &store,
                vec![envelope(0, 1), envelope(0, second_device)],
                limits
            )
            .await,
            [Enqueued::Queued { seq: 1 }, Enqueued::QueueFull]
        );
        // The server holds 20; 20 more for user 1 fit, then the server's 50 are reached.
        assert_eq!(
            enqueued(&store, vec![envelope(1, 1), envelope(2, 1)], limits).await,
            [Enqueued::Queued { seq: 1 }, Enqueued::QueueFull]
        );
        // Acknowledging frees room, and the total is kept across a reopening.
        store.ack_messages(&users[0], 1).await.unwrap().unwrap();
        store.close().await;
        drop(store);
        store = Store::open(dir.path()).unwrap();
        assert_eq!(
            enqueued(&store, vec![envelope(2, 1)], limits).await,
            [Enqueued::Queued { seq: 1 }]
        );
        assert_eq!(
            enqueued(&store, vec![envelope(0, 1)], limits).await,
            [Enqueued::QueueFull],
            "40 of 50 held: 20 more do not fit"
        );
    }

    #[tokio::test]
    async fn coalesced_notices_wait_once_and_do_not_count() {
        let (_dir, store, users) = store_with_users(1).await;
        let limits = QueueLimits::per_client(1, 1000);
        let envelope =
            |admission| envelope_of(&users[0], MessageKind::ServerNotice, &[0, 1, 2], admission);
        let notice = envelope(Admission::Notice { coalesce: Some(1) });
        let outcomes = enqueued(&store, vec![notice.clone(); 3], limits).await;
        assert_eq!(
            outcomes,
            [
                Enqueued::Queued { seq: 1 },
                Enqueued::Coalesced,
                Enqueued::Coalesced
            ]
        );
        // The waiting notice leaves room for a real message.
        assert_eq!(
            store
                .enqueue(vec![envelope(Admission::Message)], 1, limits)
                .await
                .unwrap(),
            Ok(vec![Enqueued::Queued { seq: 2 }])
        );
        // Once it is acknowledged, the next one of its kind is queued again.
        store.ack_messages(&users[0], 1).await.unwrap().unwrap();
        assert_eq!(
            store.enqueue(vec![notice], 1, limits).await.unwrap(),
            Ok(vec![Enqueued::Queued { seq: 3 }])
        );
    }

    #[tokio::test]
    async fn expired_messages_are_purged_and_reported() {
        let (_dir, store, users) = store_with_users(1).await;
        let envelope = envelope_of(&users[0], MessageKind::Mls, &[1, 2, 3], Admission::Message);
        store
            .enqueue(vec![envelope.clone(), envelope.clone()], 1_000, LIMITS)
            .await
            .unwrap()
            .unwrap();
        store
            .enqueue(vec![envelope], 5_000, LIMITS)
            .await
            .unwrap()
            .unwrap();
        let report = store.purge_expired_messages(2_000).await.unwrap();
        assert_eq!(
            report,
            [ExpiredMessages {
                client: users[0].clone(),
                count: 2,
                first_seq: 1,
                last_seq: 2
            }]
        );
        let (left, _) = store
            .fetch_messages(&users[0], 0, 10, 1 << 20)
            .await
            .unwrap();
        assert_eq!(left.iter().map(|m| m.seq).collect::<Vec<_>>(), [3]);
        assert_eq!(store.queue_size(&users[0]).await.unwrap(), (1, 3));
    }

    /// How many payloads are stored once for several queues.
    async fn shared_payloads(store: &Store) -> usize {
        store
            .read(|txn| Ok(txn.open_table(SHARED_PAYLOADS)?.iter()?.count()))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_fanned_out_payload_is_stored_once_and_goes_with_its_last_reader() {
        let (_dir, store, users) = store_with_users(3).await;
        let fanned_out = Arc::new(vec![9u8; 4096]);
        let envelopes = |payload: &Arc<Vec<u8>>| envelopes_for(&users, payload);
        store
            .enqueue(envelopes(&fanned_out), 1_000, LIMITS)
            .await
            .unwrap()
            .unwrap();
        let direct = envelope_of(
            &users[0],
            MessageKind::Welcome,
            &[5u8; 10],
            Admission::Handshake,
        );
        store
            .enqueue(vec![direct], 1_000, LIMITS)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            shared_payloads(&store).await,
            1,
            "one copy for three queues"
        );

        for client in &users {
            let (messages, _) = store.fetch_messages(client, 0, 10, 1 << 20).await.unwrap();
            assert_eq!(messages[0].payload, *fanned_out);
            assert!(store.queue_size(client).await.unwrap().1 >= 4096);
        }
        let (messages, _) = store
            .fetch_messages(&users[0], 0, 10, 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            (messages[1].kind, messages[1].payload.clone()),
            (1, vec![5u8; 10])
        );

        // Acknowledged by one client; the other two copies expire and are purged.
        store.ack_messages(&users[0], 1).await.unwrap().unwrap();
        assert_eq!(store.queue_size(&users[0]).await.unwrap(), (1, 10));
        let purged = store.purge_expired_messages(2_000).await.unwrap();
        assert_eq!(purged.len(), 3, "{purged:?}");
        assert_eq!(
            shared_payloads(&store).await,
            0,
            "the last reference took it along"
        );

        // Deleting a client's queue releases its references too.
        store
            .enqueue(envelopes(&fanned_out), 3_000, LIMITS)
            .await
            .unwrap()
            .unwrap();
        store
            .write(|txn| {
                delete_client_queue(txn, "user0@localhost", 1)?;
                delete_client_queue(txn, "user1@localhost", 1)
            })
            .await
            .unwrap();
        assert_eq!(shared_payloads(&store).await, 1);
        let (messages, _) = store
            .fetch_messages(&ClientId::of("user2@localhost", 1), 0, 10, 1 << 20)
            .await
            .unwrap();
        assert_eq!(messages[0].payload, *fanned_out);
        store
            .write(|txn| delete_client_queue(txn, "user2@localhost", 1))
            .await
            .unwrap();
        assert_eq!(shared_payloads(&store).await, 0);
    }
}
