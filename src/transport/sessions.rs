//! The session registry: the authenticated connections of each client, each with a bounded
//! notification queue and a handle to close it. Implements [`Sessions`] for the services.
//!
//! Notifications are hints (everything they announce can be fetched with a request), so a
//! connection whose queue is full misses the notification instead of slowing the sender down.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::protocol::{ClientId, Notification};
use crate::services::Sessions;

/// Notifications that may wait for one slow connection before newer ones are dropped.
pub const PUSH_QUEUE_CAPACITY: usize = 64;

/// Identifies one connection (quinn's stable connection id).
pub type ConnectionKey = usize;

/// One authenticated connection of a client.
struct SessionEntry {
    connection: ConnectionKey,
    notifications: mpsc::Sender<Notification>,
    /// The newest queued message's sequence number: a slot, not a queue, so a slow reader gets
    /// only the latest hint and an enqueue never waits.
    latest_seq: watch::Sender<u64>,
    /// Cancelled to make the connection finish its requests and close.
    close: CancellationToken,
}

/// What the push writer of one connection reads from.
pub struct PushFeed {
    pub notifications: mpsc::Receiver<Notification>,
    pub latest_seq: watch::Receiver<u64>,
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
        let (latest_seq, latest_receiver) = watch::channel(0);
        self.lock()
            .entry(client.clone())
            .or_default()
            .push(SessionEntry {
                connection,
                notifications,
                latest_seq,
                close,
            });
        PushFeed {
            notifications: receiver,
            latest_seq: latest_receiver,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, Vec<SessionEntry>>> {
        // The map stays consistent even if a holder panicked: every update is a single call.
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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

    fn new_messages(&self, client: &ClientId, latest_seq: u64) {
        if let Some(sessions) = self.lock().get(client) {
            for session in sessions {
                session.latest_seq.send_if_modified(|latest| {
                    let newer = latest_seq > *latest;
                    if newer {
                        *latest = latest_seq;
                    }
                    newer
                });
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
    use crate::protocol::Text;

    #[tokio::test]
    async fn new_message_hints_coalesce_to_the_latest_without_blocking() {
        let registry = SessionRegistry::default();
        let client = ClientId {
            user_id: Text::new("bob@localhost").unwrap(),
            device_id: 1,
        };
        let mut feed = registry.register(&client, 7, CancellationToken::new());
        for seq in 1..=10_000 {
            registry.new_messages(&client, seq);
        }
        feed.latest_seq.changed().await.unwrap();
        assert_eq!(*feed.latest_seq.borrow_and_update(), 10_000);
        // One slot, not a queue: nothing older is left to read.
        assert!(!feed.latest_seq.has_changed().unwrap());
        // A stale hint never moves it backwards.
        registry.new_messages(&client, 5);
        assert!(!feed.latest_seq.has_changed().unwrap());
    }
}
