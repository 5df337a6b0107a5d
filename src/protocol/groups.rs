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

/// `GetGroup` response body: what a member or a joiner needs.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GroupState {
    pub group_id: VLBytes,
    pub epoch: u64,
    pub members: Vec<GroupMember>,
    /// The current `RatchetTree`, TLS-encoded (what a joiner from a Welcome needs).
    pub ratchet_tree: VLBytes,
    /// An `MLSMessage` carrying the current epoch's `GroupInfo`.
    pub group_info: VLBytes,
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
