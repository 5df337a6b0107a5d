//! Groups: the delivery service. MLS handshake messages travel as `PublicMessage` so the server can
//! verify and order them; application messages travel as `PrivateMessage`.

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use super::{ClientId, Text};

/// `CreateGroup` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct CreateGroupRequest {
    /// An `MLSMessage` carrying the new group's `GroupInfo` (epoch 0, the creator alone).
    pub group_info: VLBytes,
    /// The group's `RatchetTree` (RFC 9420 section 12.4.3.3), TLS-encoded.
    pub ratchet_tree: VLBytes,
}

/// `SendCommit` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct SendCommitRequest {
    /// An `MLSMessage` carrying the commit as a `PublicMessage`.
    pub commit: VLBytes,
    /// An `MLSMessage` carrying the Welcome for the members the commit adds, if it adds any.
    pub welcome: Option<VLBytes>,
    /// An `MLSMessage` carrying the `GroupInfo` of the epoch the commit creates.
    pub group_info: VLBytes,
}

/// `SendMessage` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct SendMessageRequest {
    /// An `MLSMessage` carrying an application message as a `PrivateMessage`.
    pub message: VLBytes,
}

/// `GetGroup` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GetGroupRequest {
    pub group_id: VLBytes,
}

/// The MLS extension type (private-use range, RFC 9420 section 17.3) of the group-context
/// extension that lists a group's Admins. Every client announces it in its leaf capabilities.
pub const ROLES_EXTENSION_TYPE: u16 = 0xF0A1;

/// The roles extension's content: the users who are Admins (every other member is a Member).
#[derive(Clone, PartialEq, Eq, Debug, Default, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GroupRoles {
    pub admins: Vec<Text>,
}

impl GroupRoles {
    pub fn is_admin(&self, user_id: &str) -> bool {
        self.admins.iter().any(|admin| admin.as_str() == user_id)
    }
}

/// A member's role.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u8)]
pub enum Role {
    Member = 0,
    Admin = 1,
}

/// One member (a client in a leaf of the tree).
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GroupMember {
    pub client: ClientId,
    pub leaf_index: u32,
    /// The role of the member's user.
    pub role: Role,
}

/// The most bytes of a ratchet tree one `FetchGroupTree` answer carries.
pub const MAX_TREE_CHUNK_LEN: u32 = 1024 * 1024;

/// `GetGroup` leaves out (sends empty) a ratchet tree whose encoding is longer than this: fetch
/// it with `FetchGroupTree`.
pub const MAX_INLINE_TREE_LEN: usize = 1024 * 1024;

/// `GetGroup` response body: what a member or a joiner needs.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GroupState {
    pub group_id: VLBytes,
    pub epoch: u64,
    pub members: Vec<GroupMember>,
    /// The current `RatchetTree`, TLS-encoded; empty if longer than [`MAX_INLINE_TREE_LEN`].
    pub ratchet_tree: VLBytes,
    /// An `MLSMessage` carrying the current epoch's `GroupInfo`.
    pub group_info: VLBytes,
}

/// `FetchGroupTree` request body: part of the ratchet tree of one epoch of a group.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct FetchGroupTreeRequest {
    pub group_id: VLBytes,
    /// The epoch whose tree is wanted: a Welcome's epoch, or the current one.
    pub epoch: u64,
    /// The first byte of the tree's encoding wanted.
    pub offset: u32,
}

/// `FetchGroupTree` response body: bytes `offset..offset + chunk.len()` of the encoding of the
/// epoch's `RatchetTree` (RFC 9420 section 12.4.3.3), at most [`MAX_TREE_CHUNK_LEN`] of them.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GroupTreeChunk {
    pub epoch: u64,
    /// The length of the whole encoding.
    pub total_len: u32,
    pub offset: u32,
    pub chunk: VLBytes,
}

/// `CreateGroup` and `SendCommit` response body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GroupEpoch {
    pub group_id: VLBytes,
    pub epoch: u64,
}

/// `SendMessage` response body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct MessageAccepted {
    /// When the server accepted it (Unix milliseconds).
    pub accepted_at_ms: u64,
    /// Members whose queue was full: they did not get the message.
    pub queue_full: Vec<ClientId>,
}

/// `ListGroups` response body: the groups the authenticated client is a member of.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GroupList {
    pub groups: Vec<GroupEpoch>,
    /// Peer homeservers hosting groups of the client that could not be asked: their groups are
    /// missing from `groups`.
    pub unreachable_hubs: Vec<Text>,
}

/// `SendProposal` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct SendProposalRequest {
    /// An `MLSMessage` carrying a Remove or Update proposal as a `PublicMessage`.
    pub proposal: VLBytes,
}

/// `DeleteGroup` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct DeleteGroupRequest {
    pub group_id: VLBytes,
}

/// Server notice: a group was deleted by one of its Admins.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GroupDeleted {
    pub group_id: VLBytes,
    pub by: ClientId,
}
