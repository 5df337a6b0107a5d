//! The values that pass between the store's floors: what a fan-out queues (envelopes, their
//! admission and outcome, the limits they are held to), a group's member rows, a delivery for a
//! peer's outbox. No tables and no transactions here: every table file may use them.

use crate::protocol::{ClientId, MessageKind};

/// Per-client queue limits.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    /// Messages per client.
    pub max_messages: u64,
    /// Payload bytes per client.
    pub max_bytes: u64,
    /// Payload bytes of all the clients of one user.
    pub max_user_bytes: u64,
    /// Payload bytes of all queues of the server.
    pub max_server_bytes: u64,
}

impl QueueLimits {
    /// Per-client limits, with no total per user or server.
    pub const fn per_client(max_messages: u64, max_bytes: u64) -> Self {
        Self {
            max_messages,
            max_bytes,
            max_user_bytes: u64::MAX,
            max_server_bytes: u64::MAX,
        }
    }
}

/// Handshake messages and Welcomes may fill a queue up to this many times its limits.
pub const HANDSHAKE_RESERVE_FACTOR: u64 = 2;

/// A message for one client.
#[derive(Clone, Debug)]
pub struct Envelope {
    pub client: ClientId,
    pub kind: MessageKind,
    pub payload: std::sync::Arc<Vec<u8>>,
    pub admission: Admission,
}

impl Envelope {
    pub fn new(
        client: ClientId,
        kind: MessageKind,
        payload: std::sync::Arc<Vec<u8>>,
        admission: Admission,
    ) -> Self {
        Self {
            client,
            kind,
            payload,
            admission,
        }
    }

    /// The recipient as the queue tables key it.
    pub(crate) fn key(&self) -> (&str, u32) {
        key(&self.client)
    }
}

/// A client as the store's tables key it: (user id, device id).
pub(crate) fn key(client: &ClientId) -> (&str, u32) {
    (client.user_id.as_str(), client.device_id)
}

/// How an envelope is admitted into a queue: the rule of protocol-spec/queues.md, "Full queues".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// An application message, within the queue's limits. A full queue refuses this envelope
    /// alone ([`Enqueued::QueueFull`]); the sender is told.
    Message,
    /// An application message relayed by a peer, within the queue's limits. A full queue
    /// refuses the whole enqueue, so the delivery waits in the hub's outbox and comes again.
    MessageOrRefuseAll,
    /// A handshake message or a Welcome, which a member cannot do without: admitted past the
    /// limits, up to [`HANDSHAKE_RESERVE_FACTOR`] times them. Beyond that the whole enqueue is
    /// refused, naming the full queues: the commit does not happen.
    Handshake,
    /// A handshake message for a client the same commit removes: admitted as [`Self::Handshake`]
    /// while there is room, skipped beyond the reserve (the client is out of the group anyway).
    HandshakeIfRoom,
    /// A server notice: admitted whatever the limits. With `coalesce`, at most one notice of
    /// that kind waits per client; another is not queued ([`Enqueued::Coalesced`]) and does not
    /// count against the limits while it waits.
    Notice { coalesce: Option<u8> },
}

/// What became of one envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    Queued {
        seq: u64,
    },
    /// Appended to the group's log, which the client reads (`UseGroupLogs`), at this position.
    Logged {
        gseq: u64,
    },
    QueueFull,
    UnknownClient,
    /// A notice of the same kind is still queued for the client: this one was not added.
    Coalesced,
}

/// An enqueue refused as a whole (nothing was written): the clients whose queues are full.
pub type FullQueues = Vec<ClientId>;

/// A delivery for a peer, to put into the outbox with the change that produced it.
#[derive(Clone, Debug)]
pub struct OutgoingDelivery {
    pub peer: String,
    pub delivery: Vec<u8>,
}

/// A client in a group, at a leaf.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupMemberRow {
    pub client: ClientId,
    pub leaf_index: u32,
}
