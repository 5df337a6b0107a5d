//! Several nodes, one domain: when the store is shared (PostgreSQL), a client may be connected to
//! any node, so what the services tell clients goes to every node. [`ClusterSessions`] does it
//! for this node's connections at once and publishes it as a [`ClusterEvent`] on the store's
//! event bus; [`run_cluster_events`] applies the other nodes' events to this node's connections
//! and wakes this node's outbox workers.
//!
//! Events are hints, like the push stream they feed: a client that misses one finds everything in
//! its queue. They are published after the write they announce has committed, from a bounded
//! queue drained by one publishing thread, so a request never waits for the bus.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{PushedMessage, Sessions};
use crate::protocol::cluster::{
    decode_cluster_event, encode_cluster_event, ClientNotification, ClusterEnvelope, ClusterEvent,
    HintedMessage, LogAppendedHint, QueuedHint, MAX_CLUSTER_EVENT_LEN,
};
use crate::protocol::{ClientId, Notification, Text};
use crate::store::EventBus;

/// Events that may wait for the publisher before newer ones are dropped (and logged).
const OUTGOING_CAPACITY: usize = 16_384;

/// Most events the publisher sends in one round trip.
const EVENTS_PER_PUBLISH: usize = 256;

/// This node's sessions, plus every other node's through the event bus.
pub(crate) struct ClusterSessions {
    local: Arc<dyn Sessions>,
    node: u64,
    outgoing: mpsc::Sender<Vec<u8>>,
}

impl ClusterSessions {
    /// Wraps `local` (this node's connections); events go out on `bus` from a thread of their own
    /// that ends when the last sender does.
    pub(crate) fn new(local: Arc<dyn Sessions>, node: u64, bus: Arc<dyn EventBus>) -> Self {
        let (outgoing, mut queue) = mpsc::channel::<Vec<u8>>(OUTGOING_CAPACITY);
        // Blocking I/O (the synchronous PostgreSQL client): a thread, not a task.
        let spawned = std::thread::Builder::new()
            .name("roost-event-publisher".into())
            .spawn(move || {
                let mut waiting = Vec::new();
                while queue.blocking_recv_many(&mut waiting, EVENTS_PER_PUBLISH) > 0 {
                    // What gathered while the last batch went out goes out together (a fan-out
                    // to a thousand queues is a thousand events).
                    if let Err(e) = bus.publish(&waiting) {
                        tracing::warn!(error = %e, events = waiting.len(), "could not tell the other nodes of events");
                    }
                    waiting.clear();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the event publisher: other nodes will not hear of this node's events");
        }
        Self {
            local,
            node,
            outgoing,
        }
    }

    fn publish_log_appended(
        &self,
        readers: Vec<ClientId>,
        group_id: &Arc<[u8]>,
        message: &HintedMessage,
    ) {
        self.publish(ClusterEvent::LogAppended(LogAppendedHint {
            readers,
            group_id: group_id.to_vec().into(),
            message: message.clone(),
        }));
    }

    /// Tells the other nodes that `client`'s push targets changed.
    pub(crate) fn announce_push_targets_changed(&self, client: &ClientId) {
        self.publish(ClusterEvent::PushTargetsChanged(client.clone()));
    }

    /// Tells the other nodes that deliveries wait in the outbox.
    pub(crate) fn announce_outbox_work(&self) {
        self.publish(ClusterEvent::OutboxWork);
    }

    fn publish(&self, event: ClusterEvent) {
        let envelope = ClusterEnvelope {
            origin: self.node,
            event,
        };
        let Some(bytes) = encode_cluster_event(&envelope) else {
            tracing::warn!("an event too large for the bus was not sent to the other nodes");
            return;
        };
        if self.outgoing.try_send(bytes).is_err() {
            tracing::warn!("the event bus is backed up: an event was not sent to the other nodes");
        }
    }
}

/// `message` as an event carries it: with its payload when that is at most `room` bytes.
fn hinted(message: &PushedMessage, room: usize) -> HintedMessage {
    HintedMessage {
        seq: message.seq,
        enqueued_at_ms: message.enqueued_at_ms,
        kind: message.kind,
        payload: (message.carried && message.payload.len() <= room)
            .then(|| message.payload.as_slice().into()),
    }
}

/// Room for a payload in an event: half of it, the rest for client ids, a group id and framing
/// (a client id is a text of at most `MAX_TEXT_LEN` bytes).
const PAYLOAD_ROOM: usize = MAX_CLUSTER_EVENT_LEN / 2;

/// Bytes an event spends on one reader: its user id, the id's length prefix and the device id.
fn reader_cost(user_id: &str) -> usize {
    user_id.len() + 8
}

impl Sessions for ClusterSessions {
    fn notify(&self, client: &ClientId, notification: &Notification) -> usize {
        let reached = self.local.notify(client, notification);
        self.publish(ClusterEvent::Notify(ClientNotification {
            client: client.clone(),
            notification: notification.clone(),
        }));
        reached
    }

    fn disconnect(&self, client: &ClientId) {
        self.local.disconnect(client);
        self.publish(ClusterEvent::Disconnect(client.clone()));
    }

    /// Connected to this node (another node's connections are not known here).
    fn connected(&self, client: &ClientId) -> bool {
        self.local.connected(client)
    }

    fn connected_clients(&self) -> usize {
        self.local.connected_clients()
    }

    fn new_message(&self, client: &ClientId, message: &PushedMessage) -> usize {
        let reached = self.local.new_message(client, message);
        self.publish(ClusterEvent::NewMessage(QueuedHint {
            client: client.clone(),
            message: hinted(message, PAYLOAD_ROOM),
        }));
        reached
    }

    fn log_appended(&self, readers: &[(&str, u32)], group_id: &Arc<[u8]>, message: &PushedMessage) {
        self.local.log_appended(readers, group_id, message);
        let hinted = hinted(message, PAYLOAD_ROOM);
        let fixed = group_id.len() + hinted.payload.as_ref().map_or(0, |p| p.as_slice().len()) + 64;
        let budget = MAX_CLUSTER_EVENT_LEN.saturating_sub(fixed);
        // As many readers per event as fit; a bigger fan-out is split over several events.
        let mut chunk: Vec<ClientId> = Vec::new();
        let mut spent = 0;
        for &(user_id, device_id) in readers {
            if !chunk.is_empty() && spent + reader_cost(user_id) > budget {
                self.publish_log_appended(std::mem::take(&mut chunk), group_id, &hinted);
                spent = 0;
            }
            spent += reader_cost(user_id);
            chunk.push(ClientId {
                user_id: Text::truncated(user_id),
                device_id,
            });
        }
        if !chunk.is_empty() {
            self.publish_log_appended(chunk, group_id, &hinted);
        }
    }
}

/// What another node's events act on here.
pub(crate) struct EventTargets {
    /// This node's connections (not the cluster's: an event is applied here only).
    pub local: Arc<dyn Sessions>,
    pub outbox_wake: super::federation::OutboxWake,
    /// Which clients have push targets, known per node.
    pub push: Arc<super::push::Push>,
}

/// Applies the other nodes' events to this node until `stop`.
pub(crate) async fn run_cluster_events(
    bus: Arc<dyn EventBus>,
    node: u64,
    targets: EventTargets,
    stop: CancellationToken,
) {
    let mut events = bus.subscribe();
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            received = events.recv() => received,
        };
        let bytes = match received {
            Ok(bytes) => bytes,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "this node fell behind the other nodes' events");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        match decode_cluster_event(&bytes) {
            Ok(envelope) if envelope.origin == node => {}
            Ok(envelope) => apply(&targets, envelope.event).await,
            Err(e) => tracing::warn!(error = %e, "ignoring an event this node cannot read"),
        }
    }
}

async fn apply(targets: &EventTargets, event: ClusterEvent) {
    let pushed = |message: HintedMessage| PushedMessage {
        seq: message.seq,
        enqueued_at_ms: message.enqueued_at_ms,
        kind: message.kind,
        carried: message.payload.is_some(),
        payload: Arc::new(message.payload.map(Vec::from).unwrap_or_default()),
    };
    match event {
        ClusterEvent::NewMessage(hint) => {
            targets
                .local
                .new_message(&hint.client, &pushed(hint.message));
        }
        ClusterEvent::LogAppended(hint) => {
            let readers: Vec<(&str, u32)> = hint
                .readers
                .iter()
                .map(|reader| (reader.user_id.as_str(), reader.device_id))
                .collect();
            let group_id: Arc<[u8]> = Arc::from(hint.group_id.as_slice());
            targets
                .local
                .log_appended(&readers, &group_id, &pushed(hint.message));
        }
        ClusterEvent::Notify(notice) => {
            targets.local.notify(&notice.client, &notice.notification);
        }
        ClusterEvent::Disconnect(client) => targets.local.disconnect(&client),
        ClusterEvent::OutboxWork => targets.outbox_wake.wake_here(),
        ClusterEvent::PushTargetsChanged(client) => {
            targets
                .push
                .refresh_registered(client.user_id.as_str(), client.device_id)
                .await
        }
    }
}
