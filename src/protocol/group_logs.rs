//! Group logs: one copy of each MLS message of a group hosted here, read by its members with their
//! own cursors (protocol-spec/queues.md, "Group logs"), for clients that asked for them.

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use super::QueuedMessage;

/// Where one client stands in one group's log (`ListGroupLogs`).
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GroupLogCursor {
    pub group_id: VLBytes,
    /// The client's acknowledged position: every entry up to it is done with.
    pub acked_gseq: u64,
    /// The position the group's next entry will get.
    pub next_gseq: u64,
    /// The last entry this client may read, once a commit removed it; 0 while it is a member.
    pub last_gseq: u64,
}

impl GroupLogCursor {
    /// Whether the log holds entries this client may read and has not acknowledged.
    pub fn has_unread(&self) -> bool {
        let newest = self.next_gseq.saturating_sub(1);
        let readable = match self.last_gseq {
            0 => newest,
            last => last.min(newest),
        };
        readable > self.acked_gseq
    }
}

/// `ListGroupLogs` response body: every group log the client may read.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GroupLogs {
    pub logs: Vec<GroupLogCursor>,
}

/// `FetchGroupLog` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct FetchGroupLogRequest {
    pub group_id: VLBytes,
    /// The first position wanted; 0 for the first one after the client's acknowledged position.
    pub from_gseq: u64,
    /// Most entries to return, at most [`super::MAX_FETCH_COUNT`].
    pub max_count: u32,
    /// About this many payload bytes at most (at least one entry is returned if there is one).
    pub max_bytes: u32,
}

/// `FetchGroupLog` response body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GroupLogMessages {
    pub group_id: VLBytes,
    /// In log order; `seq` is the entry's position in the group's log.
    pub messages: Vec<QueuedMessage>,
    /// The position the group's next entry will get.
    pub next_gseq: u64,
    /// The last entry this client may read, once a commit removed it; 0 while it is a member.
    pub last_gseq: u64,
}

/// `AckGroupLog` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct AckGroupLogRequest {
    pub group_id: VLBytes,
    pub up_to_gseq: u64,
}

/// Notification: entries were appended to a group log the client reads. An empty `group_id`
/// means that more groups moved than the server tracks for the connection: list them.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GroupLogAppended {
    pub group_id: VLBytes,
    pub latest_gseq: u64,
    /// The newest entries when they are small (consecutive positions ending at `latest_gseq`),
    /// or empty, as in `NewMessages`.
    pub messages: Vec<QueuedMessage>,
}
