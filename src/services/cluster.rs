//! Several nodes, one domain: when the store is shared (PostgreSQL), a client may be connected to
//! any node, so what the services tell clients goes to every node. [`ClusterSessions`] does it
//! for this node's connections at once and publishes it as a [`ClusterEvent`] on the store's
//! event bus; [`run_cluster_events`] applies the other nodes' events to this node's connections
//! and wakes this node's outbox workers.
//!
//! Events are sealed with a key every node of the domain derives from the invite key of the data
//! directory they share: anyone who can connect to the database can `NOTIFY`, and a node acts
//! only on what a node of its domain sealed (forgeries and replays are counted and dropped).
//!
//! Events are hints, like the push stream they feed: a client that misses one finds everything in
//! its queue. They are published after the write they announce has committed, from a bounded
//! queue drained by one publishing thread, so a request never waits for the bus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{PushedMessage, Sessions};
use crate::protocol::cluster::{
    encode_cluster_event, seal_cluster_event, ClientNotification, ClusterEnvelope, ClusterEvent,
    EventKey, EventOpener, HintedMessage, LogAppendedHint, QueuedHint, MAX_CLUSTER_EVENT_LEN,
};
use crate::protocol::{ClientId, Notification};
use crate::store::EventBus;

/// Events that may wait for the publisher before newer ones are dropped (and logged).
const OUTGOING_CAPACITY: usize = 16_384;

/// Most events the publisher sends in one round trip.
const EVENTS_PER_PUBLISH: usize = 256;

/// The label the event key is derived with from the invite key.
pub(crate) const EVENT_KEY_LABEL: &str = "roost cluster events 1";

/// How often, at most, the node logs that it refused events (with how many since).
const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// This node's sessions, plus every other node's through the event bus.
pub(crate) struct ClusterSessions {
    local: Arc<dyn Sessions>,
    node: u64,
    outgoing: mpsc::Sender<Vec<u8>>,
}

impl ClusterSessions {
    /// Wraps `local` (this node's connections); events go out on `bus` from a thread of their own
    /// that ends when the last sender does.
    pub(crate) fn new(
        local: Arc<dyn Sessions>,
        node: u64,
        bus: Arc<dyn EventBus>,
        key: EventKey,
    ) -> Self {
        let (outgoing, mut queue) = mpsc::channel::<Vec<u8>>(OUTGOING_CAPACITY);
        // Blocking I/O (the synchronous PostgreSQL client): a thread, not a task.
        let spawned = std::thread::Builder::new()
            .name("roost-event-publisher".into())
            .spawn(move || {
                let mut waiting = Vec::new();
                // Sealed here, in the order they go out: receivers refuse a sequence number
                // that is not above the last one they took from this node.
                let mut seq = 0u64;
                while queue.blocking_recv_many(&mut waiting, EVENTS_PER_PUBLISH) > 0 {
                    let sent_at = now_ms();
                    let sealed: Vec<Vec<u8>> = waiting
                        .drain(..)
                        .map(|event| {
                            seq += 1;
                            seal_cluster_event(&key, sent_at, seq, &event)
                        })
                        .collect();
                    // What gathered while the last batch went out goes out together (a fan-out
                    // to a thousand queues is a thousand events).
                    if let Err(e) = bus.publish(&sealed) {
                        tracing::warn!(error = %e, events = sealed.len(), "could not tell the other nodes of events");
                    }
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
    fn connections(&self) -> &dyn super::Connections {
        self.local.connections()
    }

    fn new_message(&self, client: &ClientId, message: &PushedMessage) -> usize {
        let reached = self.local.new_message(client, message);
        self.publish(ClusterEvent::NewMessage(QueuedHint {
            client: client.clone(),
            message: hinted(message, PAYLOAD_ROOM),
        }));
        reached
    }

    fn log_appended(&self, readers: &[&ClientId], group_id: &Arc<[u8]>, message: &PushedMessage) {
        self.local.log_appended(readers, group_id, message);
        let hinted = hinted(message, PAYLOAD_ROOM);
        let fixed = group_id.len() + hinted.payload.as_ref().map_or(0, |p| p.as_slice().len()) + 64;
        let budget = MAX_CLUSTER_EVENT_LEN.saturating_sub(fixed);
        // As many readers per event as fit; a bigger fan-out is split over several events.
        let mut chunk: Vec<ClientId> = Vec::new();
        let mut spent = 0;
        for &reader in readers {
            let cost = reader_cost(reader.user_id.as_str());
            if !chunk.is_empty() && spent + cost > budget {
                self.publish_log_appended(std::mem::take(&mut chunk), group_id, &hinted);
                spent = 0;
            }
            spent += cost;
            chunk.push(reader.clone());
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

/// Applies the other nodes' events to this node until `stop`. Events not sealed by a node of this
/// domain, stale or replayed are counted in `refused` and dropped.
pub(crate) async fn run_cluster_events(
    bus: Arc<dyn EventBus>,
    node: u64,
    key: EventKey,
    targets: EventTargets,
    refused: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut events = bus.subscribe();
    let mut opener = EventOpener::new(key);
    let mut refusals = RefusalLog::default();
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
        match opener.open(&bytes, now_ms()) {
            Ok(envelope) if envelope.origin == node => {}
            Ok(envelope) => apply(&targets, envelope.event).await,
            Err(refusal) => {
                refused.fetch_add(1, Ordering::Relaxed);
                refusals.note(&refusal);
            }
        }
    }
}

/// A log line about refused events at most every [`REFUSAL_LOG_INTERVAL`] (a flood of forged
/// events must not become a flood of log lines).
#[derive(Default)]
struct RefusalLog {
    since_last_line: u64,
    last_line: Option<std::time::Instant>,
}

impl RefusalLog {
    fn note(&mut self, refusal: &crate::protocol::cluster::RefusedEvent) {
        self.since_last_line += 1;
        if self
            .last_line
            .is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            refused = self.since_last_line,
            last = %refusal,
            "refused events on the node bus that no node of this domain sent (counted in roost_cluster_events_refused_total)"
        );
        self.since_last_line = 0;
        self.last_line = Some(std::time::Instant::now());
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
            let readers: Vec<&ClientId> = hint.readers.iter().collect();
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
        ClusterEvent::PushTargetsChanged(client) => targets.push.refresh_registered(&client).await,
    }
}
