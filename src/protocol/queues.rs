//! Client queues: messages wait on the server until their client fetches and acknowledges them.

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use super::{GroupDeleted, KeyPackagesLow};

/// Most messages one `FetchMessages` returns.
pub const MAX_FETCH_COUNT: u32 = 1000;

/// What a queued message is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u8)]
pub enum MessageKind {
    /// An MLS message (`MLSMessage`: a commit, proposal or application message).
    Mls = 0,
    /// An MLS Welcome (`MLSMessage` with wire format `mls_welcome`).
    Welcome = 1,
    /// A notice from the server: the payload is a [`ServerNotice`].
    ServerNotice = 2,
}

impl MessageKind {
    pub fn from_u8(value: u8) -> Option<Self> {
        [Self::Mls, Self::Welcome, Self::ServerNotice]
            .into_iter()
            .find(|kind| *kind as u8 == value)
    }
}

/// A notice the server puts into a client's queue.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u16)]
pub enum ServerNotice {
    /// The client's KeyPackage stock ran low while it was offline.
    #[tls_codec(discriminant = 1)]
    KeyPackagesLow(KeyPackagesLow),
    /// Messages outlived the server's retention and were deleted unread.
    #[tls_codec(discriminant = 2)]
    MessagesExpired(MessagesExpired),
    /// A group this client was in was deleted.
    #[tls_codec(discriminant = 3)]
    GroupDeleted(GroupDeleted),
}

/// `count` messages, with sequence numbers from `first_seq` to `last_seq`, were deleted unread.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct MessagesExpired {
    pub count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// One message in a queue.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct QueuedMessage {
    /// Position in the client's queue: assigned in order, without gaps, never reused.
    pub seq: u64,
    /// When the server accepted it (Unix milliseconds).
    pub enqueued_at_ms: u64,
    pub kind: MessageKind,
    pub payload: VLBytes,
}

/// `FetchMessages` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct FetchMessagesRequest {
    /// The first sequence number wanted (messages before it are skipped, not deleted).
    pub from_seq: u64,
    /// Most messages to return, at most [`MAX_FETCH_COUNT`].
    pub max_count: u32,
    /// Most payload bytes to return (at least one message is returned if there is one).
    pub max_bytes: u32,
}

/// `FetchMessages` response body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct FetchedMessages {
    pub messages: Vec<QueuedMessage>,
    /// The sequence number the next enqueued message will get: everything below it that is not
    /// acknowledged is still queued.
    pub next_seq: u64,
}

/// `AckMessages` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct AckMessagesRequest {
    /// Every message with a sequence number up to and including this one is deleted.
    pub up_to_seq: u64,
}

/// Most messages a `NewMessages` hint carries inline.
pub const MAX_PUSHED_MESSAGES: usize = 16;
/// Most payload bytes a `NewMessages` hint carries inline, all messages together; a larger
/// message is only announced.
pub const MAX_PUSHED_BYTES: usize = 16 * 1024;

/// Notification: messages are waiting; `latest_seq` is the newest one's sequence number.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct NewMessages {
    pub latest_seq: u64,
    /// The newest of them, when they are small: consecutive sequence numbers ending at
    /// `latest_seq`, or empty. They stay queued until acknowledged, like any other.
    pub messages: Vec<QueuedMessage>,
}
