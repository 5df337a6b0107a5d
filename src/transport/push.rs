//! The push hub: which authenticated connections each client has, and a bounded queue of
//! notifications to each of them.
//!
//! Notifications are hints (everything they announce can be fetched with a request), so a
//! connection whose queue is full misses the notification instead of slowing the sender down.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::protocol::{ClientId, Notification};

/// Notifications that may wait for one slow connection before newer ones are dropped.
pub const PUSH_QUEUE_CAPACITY: usize = 64;

/// Identifies one connection of a client (quinn's stable connection id).
pub type ConnectionKey = usize;

/// The notification queues of one client's connections.
type ClientQueues = Vec<(ConnectionKey, mpsc::Sender<Notification>)>;

#[derive(Default)]
pub struct PushHub {
    clients: Mutex<HashMap<ClientId, ClientQueues>>,
}

impl PushHub {
    /// Registers a connection of `client`; its notifications come out of the returned receiver.
    pub fn register(
        &self,
        client: &ClientId,
        connection: ConnectionKey,
    ) -> mpsc::Receiver<Notification> {
        let (sender, receiver) = mpsc::channel(PUSH_QUEUE_CAPACITY);
        self.lock()
            .entry(client.clone())
            .or_default()
            .push((connection, sender));
        receiver
    }

    /// Forgets a connection; its receiver ends once it has drained.
    pub fn unregister(&self, client: &ClientId, connection: ConnectionKey) {
        let mut clients = self.lock();
        if let Some(connections) = clients.get_mut(client) {
            connections.retain(|(key, _)| *key != connection);
            if connections.is_empty() {
                clients.remove(client);
            }
        }
    }

    /// Queues `notification` for every connection of `client`. Returns how many took it.
    pub fn notify(&self, client: &ClientId, notification: &Notification) -> usize {
        let clients = self.lock();
        clients.get(client).map_or(0, |connections| {
            connections
                .iter()
                .filter(|(_, sender)| sender.try_send(notification.clone()).is_ok())
                .count()
        })
    }

    /// Queues `notification` for every authenticated connection. Returns how many took it.
    pub fn broadcast(&self, notification: &Notification) -> usize {
        let clients = self.lock();
        clients
            .values()
            .flatten()
            .filter(|(_, sender)| sender.try_send(notification.clone()).is_ok())
            .count()
    }

    /// How many authenticated connections `client` has.
    pub fn connections(&self, client: &ClientId) -> usize {
        self.lock().get(client).map_or(0, Vec::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, ClientQueues>> {
        // The map stays consistent even if a holder panicked: every update is a single call.
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
