//! Group logs: for clients that read them (`UseGroupLogs`), the MLS messages of a group hosted
//! here are stored once, in the group's log, instead of once per recipient queue. Each reader has
//! a window on the log (from the first entry after the commit that added it, to the commit that
//! removed it) and an acknowledged position; entries every reader acknowledged are deleted, and a
//! log keeps no more than a queue's limits (its oldest entries go first), so one reader that never
//! reads cannot stop the others.
//!
//! A send to a group of any size therefore writes one entry, not one queue record per member: the
//! writes are those of the log's own pages, whatever the group's size.

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::kv::{ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::protocol::{ClientId, MessageKind};
use crate::store::rows::{
    key, Admission, Enqueued, Envelope, FullQueues, GroupMemberRow, QueueLimits,
    HANDSHAKE_RESERVE_FACTOR,
};
use crate::store::{Store, StoreError};

/// (next position, first kept position, kept entries, kept payload bytes) of one log.
type LogHead = (u64, u64, u64, u64);
/// (group id, position) of a log entry.
type EntryKey<'a> = (&'a [u8], u64);
/// (accepted at ms, MLS message) of a log entry.
type EntryValue<'a> = (u64, &'a [u8]);
/// (user id, device id, group id) of a reader's window.
type WindowKey<'a> = (&'a str, u32, &'a [u8]);
/// (first readable, last readable (`OPEN` while a member), acknowledged position).
type Window = (u64, u64, u64);

/// group id -> [`LogHead`].
pub(in crate::store) const GROUP_LOGS: TableDefinition<&[u8], LogHead> =
    TableDefinition::new("group-logs-1");
/// [`EntryKey`] -> [`EntryValue`].
pub(in crate::store) const GROUP_LOG: TableDefinition<EntryKey, EntryValue> =
    TableDefinition::new("group-log-1");
/// [`WindowKey`] -> [`Window`].
pub(in crate::store) const LOG_READERS: TableDefinition<WindowKey, Window> =
    TableDefinition::new("log-readers-1");
/// (group id, acknowledged position, user id, device id): each log's readers, slowest first.
pub(in crate::store) const LOG_READERS_BY_ACKED: TableDefinition<(&[u8], u64, &str, u32), ()> =
    TableDefinition::new("log-readers-by-acked-1");
/// (user id, device id): the clients that read group logs.
pub(in crate::store) const LOG_CLIENTS: TableDefinition<(&str, u32), ()> =
    TableDefinition::new("log-clients-1");

/// `last` of a reader that is still a member.
const OPEN: u64 = u64::MAX;
/// The first position of every log.
const FIRST_GSEQ: u64 = 1;

/// One client's view of one group log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogCursor {
    pub group_id: Vec<u8>,
    pub acked: u64,
    pub next: u64,
    /// The last readable position once removed; `None` while a member.
    pub last: Option<u64>,
}

/// Entries read from a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntries {
    /// (position, accepted at ms, MLS message)
    pub entries: Vec<(u64, u64, Vec<u8>)>,
    pub next: u64,
    pub last: Option<u64>,
}

/// Why a log request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRefusal {
    /// The client has no window on that group's log.
    NotAReader,
    /// Acknowledging beyond what the client can have read.
    BeyondReadable { readable: u64 },
}

fn log_head(
    logs: &impl ReadableTable<&'static [u8], LogHead>,
    group_id: &[u8],
) -> Result<LogHead, StoreError> {
    Ok(logs
        .get(group_id)?
        .map_or((FIRST_GSEQ, FIRST_GSEQ, 0, 0), |head| head.value()))
}

/// What becomes of one envelope that a log reader receives.
#[derive(Clone, Copy, Debug)]
pub(in crate::store) enum LogVerdict {
    /// Appended as the log's n-th new entry of this operation.
    Append(usize),
    /// Refused: the log is full for messages of its kind.
    Full,
}

pub(in crate::store) struct LogPlan {
    /// Per envelope: `None` for a queue.
    pub verdicts: Vec<Option<LogVerdict>>,
    /// The envelope holding each new entry's message, in order.
    pub entries: Vec<usize>,
}

/// Decides, without writing, which envelopes the log takes and which it refuses.
pub(in crate::store) fn plan_log(
    txn: &WriteTransaction,
    group_id: &[u8],
    envelopes: &[Envelope],
    limits: QueueLimits,
) -> Result<Result<LogPlan, FullQueues>, StoreError> {
    let mut plan = LogPlan {
        verdicts: vec![None; envelopes.len()],
        entries: Vec::new(),
    };
    let readers = txn.open_table(LOG_READERS)?;
    let mut logged: Vec<usize> = Vec::new();
    for (index, envelope) in envelopes.iter().enumerate() {
        if envelope.kind != MessageKind::Mls {
            continue;
        }
        let window = readers.get((
            envelope.client.user_id.as_str(),
            envelope.client.device_id,
            group_id,
        ))?;
        if window.is_some_and(|window| window.value().1 == OPEN) {
            logged.push(index);
        }
    }
    drop(readers);
    if logged.is_empty() {
        return Ok(Ok(plan));
    }
    // Logs count toward the server's total of queued bytes, like queues.
    let mut server_bytes = if limits.max_server_bytes == u64::MAX {
        0
    } else {
        txn.totals().server_total(txn)?
    };
    let mut decided: HashMap<*const Vec<u8>, LogVerdict> = HashMap::new();
    for &index in &logged {
        let envelope = &envelopes[index];
        let key = Arc::as_ptr(&envelope.payload);
        if let Some(verdict) = decided.get(&key) {
            plan.verdicts[index] = Some(*verdict);
            continue;
        }
        let size = envelope.payload.len() as u64;
        // The log itself never refuses: it keeps its newest entries within the queue limits
        // (older ones go, as with retention). Only the server's total of queued bytes refuses,
        // by the queues' rule.
        let fits = |factor: u64| {
            server_bytes.saturating_add(size) <= limits.max_server_bytes.saturating_mul(factor)
        };
        let verdict = match envelope.admission {
            Admission::Message if !fits(1) => LogVerdict::Full,
            Admission::HandshakeIfRoom if !fits(HANDSHAKE_RESERVE_FACTOR) => LogVerdict::Full,
            Admission::Handshake | Admission::MessageOrRefuseAll
                if !fits(HANDSHAKE_RESERVE_FACTOR) =>
            {
                let mut full: FullQueues = logged
                    .iter()
                    .map(|&index| envelopes[index].client.clone())
                    .collect();
                full.dedup();
                return Ok(Err(full));
            }
            _ => {
                server_bytes = server_bytes.saturating_add(size);
                plan.entries.push(index);
                LogVerdict::Append(plan.entries.len() - 1)
            }
        };
        decided.insert(key, verdict);
        plan.verdicts[index] = Some(verdict);
    }
    Ok(Ok(plan))
}

/// Drops a log's oldest entries until one more of `size` bytes fits the queue limits: a log keeps
/// its newest entries, so a reader that never reads cannot stop the others (it finds the entries
/// it fell behind on gone, as after the retention).
fn make_room(
    log: &mut Table<EntryKey<'static>, EntryValue<'static>>,
    group_id: &[u8],
    (next, first_kept, count, bytes): (u64, &mut u64, &mut u64, &mut u64),
    size: u64,
    limits: QueueLimits,
    totals: &crate::store::totals::BatchTotals,
) -> Result<(), StoreError> {
    while *count > 0
        && (*count >= limits.max_messages || bytes.saturating_add(size) > limits.max_bytes)
        && *first_kept < next
    {
        if let Some(dropped) = log.remove((group_id, *first_kept))? {
            let dropped = dropped.value().1.len() as u64;
            *bytes = bytes.saturating_sub(dropped);
            totals.adjust(0, dropped);
        }
        *count -= 1;
        *first_kept += 1;
    }
    Ok(())
}

/// Appends the plan's new entries; returns their positions.
pub(in crate::store) fn write_log(
    txn: &WriteTransaction,
    group_id: &[u8],
    envelopes: &[Envelope],
    plan: &LogPlan,
    now_ms: u64,
    limits: QueueLimits,
) -> Result<Vec<u64>, StoreError> {
    let mut logs = txn.open_table(GROUP_LOGS)?;
    let (mut next, first_kept, mut count, mut bytes) = log_head(&logs, group_id)?;
    let mut log = txn.open_table(GROUP_LOG)?;
    let mut positions = Vec::with_capacity(plan.entries.len());
    let mut first_kept = first_kept;
    for &index in &plan.entries {
        let payload = envelopes[index].payload.as_slice();
        make_room(
            &mut log,
            group_id,
            (next, &mut first_kept, &mut count, &mut bytes),
            payload.len() as u64,
            limits,
            txn.totals(),
        )?;
        log.put((group_id, next), (now_ms, payload))?;
        positions.push(next);
        next += 1;
        count += 1;
        bytes = bytes.saturating_add(payload.len() as u64);
        txn.totals().adjust(payload.len() as u64, 0);
    }
    logs.put(group_id, (next, first_kept, count, bytes))?;
    Ok(positions)
}

/// Which of `members` (a group's receiving members) read its log: those with a window on it. A
/// member's window that closed meanwhile is harmless (an entry beyond it cannot be read), so this
/// may be read before the write that appends.
/// Adds the rows [`log_readers_among`] reads for `group_id` to `reads`.
pub(in crate::store) fn log_reader_reads(reads: &mut crate::store::kv::Prefetch, group_id: &[u8]) {
    reads.range(
        &LOG_READERS_BY_ACKED,
        (group_id, 0, "", 0)..=(group_id, u64::MAX, "\u{10FFFF}", u32::MAX),
    );
}

pub(in crate::store) fn log_readers_among(
    txn: &crate::store::kv::ReadTransaction,
    group_id: &[u8],
    members: &[ClientId],
) -> Result<Vec<bool>, StoreError> {
    let mut reads_log = vec![false; members.len()];
    let by_acked = txn.open_table(LOG_READERS_BY_ACKED)?;
    let mut readers =
        by_acked.range((group_id, 0, "", 0)..=(group_id, u64::MAX, "\u{10FFFF}", u32::MAX))?;
    let Some(first) = readers.next() else {
        return Ok(reads_log);
    };
    // Members by name, borrowed: no allocation per member.
    let positions: HashMap<(&str, u32), usize> = members
        .iter()
        .enumerate()
        .map(|(index, member)| (key(member), index))
        .collect();
    for entry in std::iter::once(first).chain(readers) {
        let (key, _) = entry?;
        let (_, _, user_id, device_id) = key.value();
        if let Some(&index) = positions.get(&(user_id, device_id)) {
            reads_log[index] = true;
        }
    }
    Ok(reads_log)
}

/// Appends one message to a group's log for readers the caller found with
/// [`log_readers_among`], by the queues' admission rule for application messages: `QueueFull` if
/// the log is full.
pub(in crate::store) fn append_message_in(
    txn: &WriteTransaction,
    group_id: &[u8],
    payload: &[u8],
    now_ms: u64,
    limits: QueueLimits,
) -> Result<Enqueued, StoreError> {
    let mut logs = txn.open_table(GROUP_LOGS)?;
    let (next, mut first_kept, mut count, mut bytes) = log_head(&logs, group_id)?;
    let size = payload.len() as u64;
    if limits.max_server_bytes != u64::MAX
        && txn.totals().server_total(txn)?.saturating_add(size) > limits.max_server_bytes
    {
        return Ok(Enqueued::QueueFull);
    }
    let mut log = txn.open_table(GROUP_LOG)?;
    make_room(
        &mut log,
        group_id,
        (next, &mut first_kept, &mut count, &mut bytes),
        size,
        limits,
        txn.totals(),
    )?;
    txn.totals().adjust(size, 0);
    log.put((group_id, next), (now_ms, payload))?;
    logs.put(
        group_id,
        (next + 1, first_kept, count + 1, bytes.saturating_add(size)),
    )?;
    Ok(Enqueued::Logged { gseq: next })
}

/// (user id, device id) of member rows, borrowed.
type MemberNames<'r> = std::collections::HashSet<(&'r str, u32)>;

fn member_names(rows: &[GroupMemberRow]) -> MemberNames<'_> {
    rows.iter()
        .map(|row| (row.client.user_id.as_str(), row.client.device_id))
        .collect()
}

/// Opens and closes log windows for a group's membership change from `old` to `new` (after this
/// transaction's entries were appended): a log client that joins reads from the next entry on; one
/// that leaves may read up to the last entry (the commit that removed it).
pub(in crate::store) fn update_windows(
    txn: &WriteTransaction,
    group_id: &[u8],
    old: &[GroupMemberRow],
    new: &[GroupMemberRow],
) -> Result<(), StoreError> {
    let (old_names, new_names) = (member_names(old), member_names(new));
    let is_in = |names: &MemberNames, row: &GroupMemberRow| {
        names.contains(&(row.client.user_id.as_str(), row.client.device_id))
    };
    let clients = txn.open_table(LOG_CLIENTS)?;
    let joined: Vec<&GroupMemberRow> = new.iter().filter(|row| !is_in(&old_names, row)).collect();
    let left: Vec<&GroupMemberRow> = old.iter().filter(|row| !is_in(&new_names, row)).collect();
    let mut joining_readers = Vec::new();
    for row in joined {
        if clients
            .get((row.client.user_id.as_str(), row.client.device_id))?
            .is_some()
        {
            joining_readers.push(row);
        }
    }
    drop(clients);
    let (next, ..) = log_head(&txn.open_table(GROUP_LOGS)?, group_id)?;
    let mut windows = Windows::of(txn)?;
    for row in joining_readers {
        windows.open(group_id, key(&row.client), next)?;
    }
    for row in left {
        windows.close(group_id, key(&row.client), next - 1)?;
    }
    drop(windows);
    trim(txn, group_id)
}

/// The readers' windows on group logs, both of their tables open for one transaction's changes.
struct Windows<'t> {
    readers: Table<'t, WindowKey<'static>, Window>,
    by_acked: Table<'t, (&'static [u8], u64, &'static str, u32), ()>,
}

impl<'t> Windows<'t> {
    fn of(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            readers: txn.open_table(LOG_READERS)?,
            by_acked: txn.open_table(LOG_READERS_BY_ACKED)?,
        })
    }

    /// Gives `client` a window on `group_id`'s log from position `first` on.
    fn open(&mut self, group_id: &[u8], client: (&str, u32), first: u64) -> Result<(), StoreError> {
        let (user_id, device_id) = client;
        let window = (first, OPEN, first - 1);
        if let Some(old) = self
            .readers
            .insert((user_id, device_id, group_id), window)?
        {
            // Rejoined before it had read all of its earlier window: that window is over.
            let (_, _, acked) = old.value();
            drop(old);
            self.by_acked
                .delete((group_id, acked, user_id, device_id))?;
        }
        self.by_acked
            .put((group_id, first - 1, user_id, device_id), ())
    }

    /// Ends `client`'s open window at `last`; a window with nothing left to read goes at once.
    fn close(&mut self, group_id: &[u8], client: (&str, u32), last: u64) -> Result<(), StoreError> {
        let (user_id, device_id) = client;
        // Only an open window closes: one closed before (a client that proposed to leave, then
        // was removed) keeps its end.
        let window = self.readers.get((user_id, device_id, group_id))?;
        let Some((first, OPEN, acked)) = window.map(|window| window.value()) else {
            return Ok(());
        };
        if acked >= last || last < first {
            self.readers.delete((user_id, device_id, group_id))?;
            self.by_acked.delete((group_id, acked, user_id, device_id))
        } else {
            self.readers
                .put((user_id, device_id, group_id), (first, last, acked))
        }
    }
}

/// Deletes the entries every reader of the log has acknowledged (all of them if it has none).
fn trim(txn: &WriteTransaction, group_id: &[u8]) -> Result<(), StoreError> {
    let slowest = txn
        .open_table(LOG_READERS_BY_ACKED)?
        .range((group_id, 0, "", 0)..=(group_id, u64::MAX, "\u{10FFFF}", u32::MAX))?
        .next()
        .transpose()?
        .map(|(key, _)| key.value().1);
    let mut logs = txn.open_table(GROUP_LOGS)?;
    let Some((next, first_kept, count, bytes)) = logs.get(group_id)?.map(|head| head.value())
    else {
        return Ok(());
    };
    let through = slowest.unwrap_or(next - 1);
    if through < first_kept {
        return Ok(());
    }
    let mut log = txn.open_table(GROUP_LOG)?;
    let (mut removed, mut removed_bytes) = (0u64, 0u64);
    for entry in log.extract_from_if((group_id, first_kept)..=(group_id, through), |_, _| true)? {
        let (_, value) = entry?;
        removed += 1;
        removed_bytes += value.value().1.len() as u64;
    }
    txn.totals().adjust(0, removed_bytes);
    logs.put(
        group_id,
        (
            next,
            through + 1,
            count.saturating_sub(removed),
            bytes.saturating_sub(removed_bytes),
        ),
    )?;
    Ok(())
}

/// Deletes a group's log and every window on it.
pub(in crate::store) fn delete_log(
    txn: &WriteTransaction,
    group_id: &[u8],
) -> Result<(), StoreError> {
    if let Some(head) = txn.open_table(GROUP_LOGS)?.remove(group_id)? {
        txn.totals().adjust(0, head.value().3);
    }
    txn.open_table(GROUP_LOG)?
        .retain_in((group_id, 0)..=(group_id, u64::MAX), |_, _| false)?;
    let mut by_acked = txn.open_table(LOG_READERS_BY_ACKED)?;
    let mut readers = txn.open_table(LOG_READERS)?;
    for entry in by_acked.extract_from_if(
        (group_id, 0, "", 0)..=(group_id, u64::MAX, "\u{10FFFF}", u32::MAX),
        |_, _| true,
    )? {
        let (key, _) = entry?;
        let (_, _, user_id, device_id) = key.value();
        readers.delete((user_id, device_id, group_id))?;
    }
    Ok(())
}

/// Forgets a deleted client's windows and that it read logs (the logs it held back are trimmed).
pub(in crate::store) fn delete_client_windows(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
) -> Result<(), StoreError> {
    txn.open_table(LOG_CLIENTS)?.delete((user_id, device_id))?;
    let windows: Vec<(Vec<u8>, u64)> = {
        let mut readers = txn.open_table(LOG_READERS)?;
        let mut windows = Vec::new();
        for entry in readers.extract_from_if(
            (user_id, device_id, &[][..])..=(user_id, device_id, GROUP_ID_UPPER_BOUND),
            |_, _| true,
        )? {
            let (key, value) = entry?;
            windows.push((key.value().2.to_vec(), value.value().2));
        }
        windows
    };
    for (group_id, acked) in windows {
        txn.open_table(LOG_READERS_BY_ACKED)?.delete((
            group_id.as_slice(),
            acked,
            user_id,
            device_id,
        ))?;
        trim(txn, &group_id)?;
    }
    Ok(())
}

/// Greater than any group id (see `groups::GROUP_ID_UPPER_BOUND`).
const GROUP_ID_UPPER_BOUND: &[u8] = &[0xff; 257];

/// Makes a client a reader of group logs (its mark); `false` if it was one already.
pub(in crate::store) fn mark_log_client_in(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
) -> Result<bool, StoreError> {
    Ok(txn
        .open_table(LOG_CLIENTS)?
        .insert((user_id, device_id), ())?
        .is_none())
}

/// Opens a client's window on a group's log from the log's next entry.
pub(in crate::store) fn open_window_at_next(
    txn: &WriteTransaction,
    group_id: &[u8],
    user_id: &str,
    device_id: u32,
) -> Result<(), StoreError> {
    let (next, ..) = log_head(&txn.open_table(GROUP_LOGS)?, group_id)?;
    Windows::of(txn)?.open(group_id, (user_id, device_id), next)
}

impl Store {
    /// Whether a client reads group logs.
    pub async fn uses_group_logs(&self, client: &ClientId) -> Result<bool, StoreError> {
        self.read_for(client, move |txn, (user_id, device_id)| {
            Ok(txn
                .open_table(LOG_CLIENTS)?
                .get((user_id, device_id))?
                .is_some())
        })
        .await
    }

    /// The logs a client may read, with its positions.
    pub async fn group_log_cursors(&self, client: &ClientId) -> Result<Vec<LogCursor>, StoreError> {
        self.read_for(client, move |txn, (user_id, device_id)| {
            let readers = txn.open_table(LOG_READERS)?;
            let logs = txn.open_table(GROUP_LOGS)?;
            let mut cursors = Vec::new();
            let range = (user_id, device_id, &[][..])..=(user_id, device_id, GROUP_ID_UPPER_BOUND);
            for entry in readers.range(range)? {
                let (key, window) = entry?;
                let group_id = key.value().2.to_vec();
                let (_, last, acked) = window.value();
                let (next, ..) = log_head(&logs, &group_id)?;
                cursors.push(LogCursor {
                    group_id,
                    acked,
                    next,
                    last: (last != OPEN).then_some(last),
                });
            }
            Ok(cursors)
        })
        .await
    }

    /// Entries of a group's log that the client may read, from `from` (0: after its
    /// acknowledged position): at most `max_count`, and within `max_bytes` of payload but for the
    /// first.
    pub async fn fetch_group_log(
        &self,
        client: &ClientId,
        group_id: &[u8],
        from: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Result<LogEntries, LogRefusal>, StoreError> {
        let (user_id, device_id) = (client.user_id.as_str(), client.device_id);
        let (user_id, group_id) = (user_id.to_owned(), group_id.to_vec());
        self.read(move |txn| {
            let Some((first, last, acked)) = txn
                .open_table(LOG_READERS)?
                .get((user_id.as_str(), device_id, group_id.as_slice()))?
                .map(|window| window.value())
            else {
                return Ok(Err(LogRefusal::NotAReader));
            };
            let (next, first_kept, ..) = log_head(&txn.open_table(GROUP_LOGS)?, &group_id)?;
            let from = if from == 0 { acked + 1 } else { from };
            let from = from.max(first).max(first_kept);
            let to = last.min(next.saturating_sub(1));
            let mut entries = Vec::new();
            let mut bytes = 0;
            if from <= to {
                let log = txn.open_table(GROUP_LOG)?;
                for entry in log.range((group_id.as_slice(), from)..=(group_id.as_slice(), to))? {
                    let (key, value) = entry?;
                    let (at, payload) = value.value();
                    if entries.len() == max_count
                        || (!entries.is_empty() && bytes + payload.len() > max_bytes)
                    {
                        break;
                    }
                    bytes += payload.len();
                    entries.push((key.value().1, at, payload.to_vec()));
                }
            }
            Ok(Ok(LogEntries {
                entries,
                next,
                last: (last != OPEN).then_some(last),
            }))
        })
        .await
    }

    /// Acknowledges a group log's entries up to `up_to` for a client: a window that is over and
    /// read goes, and entries every reader acknowledged are deleted.
    pub async fn ack_group_log(
        &self,
        client: &ClientId,
        group_id: &[u8],
        up_to: u64,
    ) -> Result<Result<(), LogRefusal>, StoreError> {
        let (user_id, device_id) = (client.user_id.as_str(), client.device_id);
        let (user_id, group_id) = (user_id.to_owned(), group_id.to_vec());
        self.write(move |txn| {
            let key = (user_id.as_str(), device_id, group_id.as_slice());
            let Some((first, last, acked)) = txn
                .open_table(LOG_READERS)?
                .get(key)?
                .map(|window| window.value())
            else {
                return Ok(Err(LogRefusal::NotAReader));
            };
            let (next, ..) = log_head(&txn.open_table(GROUP_LOGS)?, &group_id)?;
            let readable = last.min(next - 1);
            if up_to > readable {
                return Ok(Err(LogRefusal::BeyondReadable { readable }));
            }
            if up_to <= acked {
                return Ok(Ok(()));
            }
            let mut by_acked = txn.open_table(LOG_READERS_BY_ACKED)?;
            by_acked.delete((group_id.as_slice(), acked, user_id.as_str(), device_id))?;
            if up_to >= last {
                txn.open_table(LOG_READERS)?.delete(key)?;
            } else {
                by_acked.put(
                    (group_id.as_slice(), up_to, user_id.as_str(), device_id),
                    (),
                )?;
                txn.open_table(LOG_READERS)?
                    .put(key, (first, last, up_to))?;
            }
            drop(by_acked);
            trim(txn, &group_id)?;
            Ok(Ok(()))
        })
        .await
    }

    /// Deletes log entries accepted before `cutoff_ms` (the retention): readers behind them
    /// find the log starting later. Returns how many were deleted.
    pub async fn purge_expired_log_entries(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        self.write(move |txn| {
            let heads: Vec<(Vec<u8>, LogHead)> = txn
                .open_table(GROUP_LOGS)?
                .iter()?
                .map(|entry| entry.map(|(key, head)| (key.value().to_vec(), head.value())))
                .collect::<Result<_, _>>()?;
            let mut purged = 0;
            for (group_id, (next, first_kept, count, bytes)) in heads {
                let mut log = txn.open_table(GROUP_LOG)?;
                let mut kept_from = first_kept;
                let (mut removed, mut removed_bytes) = (0u64, 0u64);
                let expired: Vec<(u64, u64)> = log
                    .range((group_id.as_slice(), first_kept)..(group_id.as_slice(), next))?
                    .map(|entry| entry.map(|(key, value)| (key.value().1, value.value().0)))
                    .take_while(|entry| matches!(entry, Ok((_, at)) if *at < cutoff_ms))
                    .collect::<Result<_, _>>()?;
                for (position, _) in expired {
                    if let Some(value) = log.remove((group_id.as_slice(), position))? {
                        removed_bytes += value.value().1.len() as u64;
                    }
                    removed += 1;
                    kept_from = position + 1;
                }
                if removed > 0 {
                    txn.totals().adjust(0, removed_bytes);
                    txn.open_table(GROUP_LOGS)?.put(
                        group_id.as_slice(),
                        (
                            next,
                            kept_from,
                            count.saturating_sub(removed),
                            bytes.saturating_sub(removed_bytes),
                        ),
                    )?;
                    purged += removed;
                }
            }
            Ok(purged)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QueueLimits = QueueLimits::per_client(100, 1 << 20);

    /// A log for `group` with `readers` (user ids, device 1) whose windows open at the start.
    async fn log_with_readers(store: &Store, group: &'static [u8], readers: &'static [&str]) {
        store
            .write(move |txn| {
                let mut windows = Windows::of(txn)?;
                for reader in readers {
                    windows.open(group, (reader, 1), FIRST_GSEQ)?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }

    async fn append(store: &Store, group: &'static [u8], at_ms: u64) -> Enqueued {
        store
            .write(move |txn| append_message_in(txn, group, b"message", at_ms, LIMITS))
            .await
            .unwrap()
    }

    async fn positions(store: &Store, reader: &str, group: &[u8], from: u64) -> Vec<u64> {
        store
            .fetch_group_log(&ClientId::of(reader, 1), group, from, 100, 1 << 20)
            .await
            .unwrap()
            .unwrap()
            .entries
            .iter()
            .map(|(gseq, ..)| *gseq)
            .collect()
    }

    #[tokio::test]
    async fn entries_go_once_every_reader_acknowledged_them_or_they_expired() {
        let (_dir, store) = crate::store::test_store();
        log_with_readers(&store, b"g", &["a@x", "b@x"]).await;
        for at in [10, 20, 30] {
            append(&store, b"g", at).await;
        }
        assert_eq!(positions(&store, "a@x", b"g", 0).await, [1, 2, 3]);
        store
            .ack_group_log(&ClientId::of("a@x", 1), b"g", 2)
            .await
            .unwrap()
            .unwrap();
        // b has read nothing: everything stays, and a reads on from its position.
        assert_eq!(positions(&store, "b@x", b"g", 1).await, [1, 2, 3]);
        assert_eq!(positions(&store, "a@x", b"g", 0).await, [3]);
        store
            .ack_group_log(&ClientId::of("b@x", 1), b"g", 1)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(positions(&store, "b@x", b"g", 1).await, [2, 3], "1 is gone");
        // Retention: entries accepted before 25 expire, whoever has not read them.
        assert_eq!(store.purge_expired_log_entries(25).await.unwrap(), 1);
        assert_eq!(positions(&store, "b@x", b"g", 1).await, [3]);
        assert_eq!(
            store
                .ack_group_log(&ClientId::of("b@x", 1), b"g", 4)
                .await
                .unwrap(),
            Err(LogRefusal::BeyondReadable { readable: 3 })
        );
        assert_eq!(
            store
                .fetch_group_log(&ClientId::of("c@x", 1), b"g", 0, 10, 10)
                .await
                .unwrap(),
            Err(LogRefusal::NotAReader)
        );
    }

    #[tokio::test]
    async fn logs_count_toward_the_servers_total_of_queued_bytes() {
        let (_dir, store) = crate::store::test_store();
        log_with_readers(&store, b"g", &["a@x"]).await;
        let limits = QueueLimits {
            max_server_bytes: 20,
            ..LIMITS
        };
        let append =
            |limits| store.write(move |txn| append_message_in(txn, b"g", b"message", 1, limits));
        for _ in 0..2 {
            assert!(matches!(
                append(limits).await.unwrap(),
                Enqueued::Logged { .. }
            ));
        }
        assert_eq!(
            append(limits).await.unwrap(),
            Enqueued::QueueFull,
            "21 bytes > 20"
        );
        store
            .ack_group_log(&ClientId::of("a@x", 1), b"g", 2)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(append(limits).await.unwrap(), Enqueued::Logged { .. }),
            "read entries no longer count"
        );
    }

    #[tokio::test]
    async fn a_full_log_keeps_its_newest_entries() {
        let (_dir, store) = crate::store::test_store();
        log_with_readers(&store, b"g", &["a@x"]).await;
        for _ in 0..100 {
            assert!(matches!(
                append(&store, b"g", 1).await,
                Enqueued::Logged { .. }
            ));
        }
        // The 101st goes in; the oldest goes out (the reader that never read finds a gap).
        assert_eq!(
            append(&store, b"g", 1).await,
            Enqueued::Logged { gseq: 101 }
        );
        let kept = positions(&store, "a@x", b"g", 0).await;
        assert_eq!((kept.len(), kept[0], kept[99]), (100, 2, 101));
    }
}
