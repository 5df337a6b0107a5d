//! The session registry: the authenticated connections of each client, each with a bounded
//! notification queue and a handle to close it. Implements [`Sessions`] for the services.
//!
//! Notifications are hints (everything they announce can be fetched with a request), so a
//! connection whose queue is full misses the notification instead of slowing the sender down.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::protocol::{
    ClientId, GroupLogAppended, NewMessages, Notification, QueuedMessage, MAX_PUSHED_BYTES,
    MAX_PUSHED_MESSAGES,
};
use crate::services::{Connections, PushedMessage, Sessions};

/// Notifications that may wait for one slow connection before newer ones are dropped.
pub const PUSH_QUEUE_CAPACITY: usize = 64;

/// Identifies one connection (quinn's stable connection id).
pub type ConnectionKey = usize;

/// One authenticated connection of a client.
struct SessionEntry {
    connection: ConnectionKey,
    notifications: mpsc::Sender<Notification>,
    hint: Arc<HintSlot>,
    /// Cancelled to make the connection finish its requests and close.
    close: CancellationToken,
}

/// What the push writer of one connection reads from.
pub struct PushFeed {
    pub notifications: mpsc::Receiver<Notification>,
    pub hint: Arc<HintSlot>,
}

/// A connection's `NewMessages` hint in waiting: a slot, not a queue. An enqueue updates it
/// without ever waiting; the push writer takes what is there when it gets to it, so a slow reader
/// gets the newest hint (with the newest small messages) and nothing older.
#[derive(Default)]
pub struct HintSlot {
    pending: Mutex<PendingHint>,
    /// Signalled when the slot has something newer; keeps one wake-up for a busy writer.
    ready: Notify,
}

/// Groups whose log hints may wait for one connection at once; beyond, one hint with an empty
/// group id tells the client to list its logs.
pub const MAX_PENDING_GROUP_HINTS: usize = 256;

/// The newest sequence number announced on a queue or a log, with the newest small messages
/// that ride along with its hint: consecutive sequence numbers ending at `latest`.
#[derive(Default)]
struct NewestRun {
    latest: u64,
    messages: VecDeque<PushedMessage>,
    bytes: usize,
}

impl NewestRun {
    /// Records `message`; one no newer than `latest` is stale and changes nothing.
    fn offer(&mut self, message: &PushedMessage) {
        if message.seq <= self.latest {
            return;
        }
        if message.seq != self.latest + 1 {
            // Something queued in between was announced out of order (or not at all): the
            // messages held no longer end where the new one starts.
            self.clear();
        }
        self.latest = message.seq;
        self.keep_newest(message);
    }

    /// Adds `message` to the small messages the hint carries, keeping the newest that fit; a
    /// message too large to carry empties them (the hint then only announces).
    fn keep_newest(&mut self, message: &PushedMessage) {
        let size = message.payload.len();
        if !message.carried || size > MAX_PUSHED_BYTES {
            self.clear();
            return;
        }
        // Make room by letting the oldest go (the client fetches them).
        while self.messages.len() >= MAX_PUSHED_MESSAGES || self.bytes + size > MAX_PUSHED_BYTES {
            let Some(oldest) = self.messages.pop_front() else {
                break;
            };
            self.bytes -= oldest.payload.len();
        }
        self.bytes += size;
        self.messages.push_back(message.clone());
    }

    fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }

    /// The messages held, as the hint carries them (taking them).
    fn take_messages(&mut self) -> Vec<QueuedMessage> {
        self.bytes = 0;
        std::mem::take(&mut self.messages)
            .into_iter()
            .map(queued_message)
            .collect()
    }
}

#[derive(Default)]
struct PendingHint {
    /// Group logs with entries not hinted yet.
    groups: HashMap<Arc<[u8]>, NewestRun>,
    /// More groups moved than [`MAX_PENDING_GROUP_HINTS`].
    groups_overflowed: bool,
    /// The queue's newest message (hints only move forward), with the small ones riding along.
    queue: NewestRun,
    /// The `queue.latest` of the last hint taken.
    taken_seq: u64,
}

impl HintSlot {
    /// Records that `message` was queued; never waits.
    fn offer(&self, message: &PushedMessage) {
        self.lock().queue.offer(message);
        self.ready.notify_one();
    }

    /// Records that `message` was appended to `group_id`'s log; never waits.
    fn offer_log(&self, group_id: &Arc<[u8]>, message: &PushedMessage) {
        let mut pending = self.lock();
        let pending = &mut *pending;
        if !pending.groups.contains_key(group_id) && pending.groups.len() >= MAX_PENDING_GROUP_HINTS
        {
            pending.groups_overflowed = true;
        } else {
            pending
                .groups
                .entry(group_id.clone())
                .or_default()
                .offer(message);
        }
        self.ready.notify_one();
    }

    /// The group log hints waiting, each group once (taking them).
    pub fn take_group_hints(&self) -> Vec<GroupLogAppended> {
        let (groups, overflowed) = {
            let mut pending = self.lock();
            (
                std::mem::take(&mut pending.groups),
                std::mem::take(&mut pending.groups_overflowed),
            )
        };
        let mut hints: Vec<GroupLogAppended> = groups
            .into_iter()
            .map(|(group_id, mut run)| GroupLogAppended {
                group_id: group_id.to_vec().into(),
                latest_gseq: run.latest,
                messages: run.take_messages(),
            })
            .collect();
        if overflowed {
            hints.push(GroupLogAppended {
                group_id: Vec::new().into(),
                latest_gseq: 0,
                messages: Vec::new(),
            });
        }
        hints
    }

    /// Waits until the slot may hold something newer than the last hint taken.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// The hint to send, if the queue moved on since the last one was taken.
    pub fn take(&self) -> Option<NewMessages> {
        let mut pending = self.lock();
        if pending.queue.latest <= pending.taken_seq {
            return None;
        }
        pending.taken_seq = pending.queue.latest;
        Some(NewMessages {
            latest_seq: pending.queue.latest,
            messages: pending.queue.take_messages(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PendingHint> {
        // Every update leaves the hint consistent, even if a holder panicked mid-way.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn queued_message(message: PushedMessage) -> QueuedMessage {
    QueuedMessage {
        seq: message.seq,
        enqueued_at_ms: message.enqueued_at_ms,
        kind: message.kind,
        payload: message.payload.as_slice().into(),
    }
}

#[derive(Default)]
pub struct SessionRegistry {
    clients: Mutex<HashMap<ClientId, Vec<SessionEntry>>>,
}

impl SessionRegistry {
    /// Registers an authenticated connection of `client`, closed by cancelling `close`. What it
    /// must push comes out of the returned feed.
    pub fn register(
        &self,
        client: &ClientId,
        connection: ConnectionKey,
        close: CancellationToken,
    ) -> PushFeed {
        let (notifications, receiver) = mpsc::channel(PUSH_QUEUE_CAPACITY);
        let hint = Arc::new(HintSlot::default());
        self.lock()
            .entry(client.clone())
            .or_default()
            .push(SessionEntry {
                connection,
                notifications,
                hint: hint.clone(),
                close,
            });
        PushFeed {
            notifications: receiver,
            hint,
        }
    }

    /// Forgets a connection; its notification receiver ends once it has drained.
    pub fn unregister(&self, client: &ClientId, connection: ConnectionKey) {
        let mut clients = self.lock();
        if let Some(sessions) = clients.get_mut(client) {
            sessions.retain(|session| session.connection != connection);
            if sessions.is_empty() {
                clients.remove(client);
            }
        }
    }

    /// Queues `notification` for every authenticated connection. Returns how many took it.
    pub fn broadcast(&self, notification: &Notification) -> usize {
        let clients = self.lock();
        clients
            .values()
            .flatten()
            .filter(|session| session.notifications.try_send(notification.clone()).is_ok())
            .count()
    }

    /// How many authenticated connections `client` has.
    pub fn connections(&self, client: &ClientId) -> usize {
        self.lock().get(client).map_or(0, Vec::len)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ClientId, Vec<SessionEntry>>> {
        // The map stays consistent even if a holder panicked: every update is a single call.
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Connections for SessionRegistry {
    fn connected_clients(&self) -> usize {
        self.lock().len()
    }

    fn connected(&self, client: &ClientId) -> bool {
        self.lock().contains_key(client)
    }
}

impl Sessions for SessionRegistry {
    fn notify(&self, client: &ClientId, notification: &Notification) -> usize {
        let clients = self.lock();
        clients.get(client).map_or(0, |sessions| {
            sessions
                .iter()
                .filter(|session| session.notifications.try_send(notification.clone()).is_ok())
                .count()
        })
    }

    fn connections(&self) -> &dyn Connections {
        self
    }

    fn new_message(&self, client: &ClientId, message: &PushedMessage) -> usize {
        self.lock().get(client).map_or(0, |sessions| {
            for session in sessions {
                session.hint.offer(message);
            }
            sessions.len()
        })
    }

    fn log_appended(&self, readers: &[&ClientId], group_id: &Arc<[u8]>, message: &PushedMessage) {
        let clients = self.lock();
        let offer = |sessions: &Vec<SessionEntry>| {
            for session in sessions {
                session.hint.offer_log(group_id, message);
            }
        };
        // Whichever side is smaller is walked: a large group with few members connected costs
        // the connected ones, not the members.
        if clients.len() <= readers.len() {
            let readers: std::collections::HashSet<&ClientId> = readers.iter().copied().collect();
            for (client, sessions) in clients.iter() {
                if readers.contains(client) {
                    offer(sessions);
                }
            }
        } else {
            for client in readers {
                if let Some(sessions) = clients.get(*client) {
                    offer(sessions);
                }
            }
        }
    }

    fn disconnect(&self, client: &ClientId) {
        if let Some(sessions) = self.lock().get(client) {
            for session in sessions {
                session.close.cancel();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MessageKind;

    fn message(seq: u64, size: usize) -> PushedMessage {
        PushedMessage {
            carried: true,
            seq,
            enqueued_at_ms: 1,
            kind: MessageKind::Mls,
            payload: Arc::new(vec![seq as u8; size]),
        }
    }

    fn seqs(hint: &NewMessages) -> Vec<u64> {
        hint.messages.iter().map(|m| m.seq).collect()
    }

    #[tokio::test]
    async fn new_message_hints_coalesce_to_the_latest_without_blocking() {
        let registry = SessionRegistry::default();
        let client = ClientId::of("bob@localhost", 1);
        let feed = registry.register(&client, 7, CancellationToken::new());
        for seq in 1..=10_000 {
            registry.new_message(&client, &message(seq, 10));
        }
        feed.hint.ready().await;
        let hint = feed.hint.take().unwrap();
        assert_eq!(hint.latest_seq, 10_000);
        // One slot, not a queue: only the newest messages that fit ride along.
        assert_eq!(
            seqs(&hint),
            (10_001 - MAX_PUSHED_MESSAGES as u64..=10_000).collect::<Vec<_>>()
        );
        assert_eq!(
            hint.messages[0].payload.as_slice(),
            message(hint.messages[0].seq, 10).payload.as_slice()
        );
        assert!(feed.hint.take().is_none(), "nothing older is left to read");
        // A stale hint never moves it backwards.
        registry.new_message(&client, &message(5, 10));
        assert!(feed.hint.take().is_none());
    }

    #[test]
    fn group_log_hints_coalesce_per_group_and_too_many_groups_become_one_list_hint() {
        let slot = HintSlot::default();
        let group = |n: u32| -> Arc<[u8]> { Arc::from(n.to_be_bytes().as_slice()) };
        slot.offer_log(&group(0), &message(1, 10));
        slot.offer_log(&group(0), &message(2, 10));
        slot.offer_log(&group(0), &message(1, 10)); // late: never moves a hint back
        let hints = slot.take_group_hints();
        assert_eq!(hints.len(), 1);
        assert_eq!(hints[0].latest_gseq, 2);
        assert_eq!(
            hints[0].messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(slot.take_group_hints().is_empty(), "taken");
        for n in 0..MAX_PENDING_GROUP_HINTS as u32 + 10 {
            slot.offer_log(&group(n), &message(5, 10));
        }
        let hints = slot.take_group_hints();
        assert_eq!(hints.len(), MAX_PENDING_GROUP_HINTS + 1);
        let list = hints
            .iter()
            .filter(|hint| hint.group_id.as_slice().is_empty());
        assert_eq!(
            list.count(),
            1,
            "one hint tells the client to list its logs"
        );
    }

    #[test]
    fn only_small_consecutive_messages_ride_along() {
        let slot = HintSlot::default();
        slot.offer(&message(1, 100));
        slot.offer(&message(2, MAX_PUSHED_BYTES + 1));
        let hint = slot.take().unwrap();
        assert_eq!(
            (hint.latest_seq, seqs(&hint)),
            (2, vec![]),
            "too large: announced only"
        );

        slot.offer(&message(3, MAX_PUSHED_BYTES / 2));
        slot.offer(&message(4, MAX_PUSHED_BYTES / 2));
        slot.offer(&message(5, 1));
        let hint = slot.take().unwrap();
        assert_eq!(
            (hint.latest_seq, seqs(&hint)),
            (5, vec![4, 5]),
            "the oldest made room"
        );

        // 7 announced before 6 (two writes racing): 6 is then stale, and the run starts at 7.
        slot.offer(&message(7, 1));
        slot.offer(&message(6, 1));
        slot.offer(&message(8, 1));
        let hint = slot.take().unwrap();
        assert_eq!((hint.latest_seq, seqs(&hint)), (8, vec![7, 8]));
    }
}
