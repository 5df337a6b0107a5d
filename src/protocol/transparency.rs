//! Key transparency on the wire (`protocol-spec/transparency.md`): log entries, users' bindings,
//! signed tree heads, and the bodies of the operations that prove them.

use tls_codec::{Serialize, TlsDeserialize, TlsSerialize, TlsSize, VLByteSlice, VLBytes};

use super::{ClientCredential, Text};

/// How many of a user's entries one `FetchHistory` answer carries at most.
pub const MAX_HISTORY_ENTRIES: u32 = 256;
/// How many log entries one `FetchLogEntries` answer carries at most.
pub const MAX_LOG_ENTRIES: u32 = 1024;

/// What a log entry did to a client's binding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u8)]
pub enum BindingChange {
    /// A new client's first credential.
    Issued = 1,
    /// A new credential for an existing client (new validity, or a new issuer key after a
    /// rotation): it replaces the client's previous one.
    Renewed = 2,
    /// The client was removed (or its user deleted): its credential is no longer bound.
    Revoked = 3,
}

/// One entry of the log.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct LogEntry {
    pub change: BindingChange,
    /// Unix seconds, when the server wrote it.
    pub logged_at: u64,
    /// Issued, renewed: the new credential. Revoked: the credential the client last had.
    pub credential: ClientCredential,
}

/// An entry of a deleted user, as the log keeps it: what replaying it does to the map, without
/// the user id or the credential. Its leaf hash is the one the full entry had, so every head and
/// proof stays valid.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct RedactedEntry {
    pub leaf_hash: [u8; 32],
    /// The user's key in the map.
    pub user_key: [u8; 32],
    /// The hash of the user's bindings after the entry.
    pub bindings_after: [u8; 32],
}

/// The last entry of a deleted user: it leaves the map (a lookup then proves it absent).
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct UserRemoved {
    pub user_key: [u8; 32],
}

/// One entry of the log as it is kept and served. Its leaf hash is RFC 9162's of its encoding,
/// except a redacted entry's, which is the one the whole entry had.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u8)]
pub enum LogRecord {
    /// An entry of a user deleted since.
    #[tls_codec(discriminant = 0)]
    Redacted(RedactedEntry),
    /// A credential issued, renewed or revoked.
    #[tls_codec(discriminant = 1)]
    Entry(LogEntry),
    /// A user's deletion.
    #[tls_codec(discriminant = 2)]
    Removed(UserRemoved),
}

/// A user's state in the map: its current credentials and a chain over its whole history.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct UserBindings {
    pub user_id: Text,
    /// How many log entries concern this user.
    pub entries: u64,
    /// SHA-256 chain over the user's entries (32 zero bytes before the first).
    pub history: [u8; 32],
    /// The credentials bound now, in device id order.
    pub credentials: Vec<ClientCredential>,
}

/// What a tree head commits to.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct TreeHead {
    pub domain: Text,
    /// Entries in the log.
    pub tree_size: u64,
    /// RFC 9162 root of the log's first `tree_size` entries.
    pub log_root: [u8; 32],
    /// Root of the map after those entries.
    pub map_root: [u8; 32],
    /// Unix milliseconds.
    pub published_at: u64,
    /// The credential-signing key that signed it.
    pub key_id: u32,
}

/// A tree head and the homeserver's Ed25519 signature over [`tree_head_signature_content`].
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct SignedTreeHead {
    pub head: TreeHead,
    pub signature: VLBytes,
}

/// The bytes a tree head's signature covers:
/// `struct { opaque label<V> = "roost/1 tree head"; TreeHead head; }`.
pub fn tree_head_signature_content(head: &TreeHead) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    let _ = VLByteSlice(crate::transparency::TREE_HEAD_LABEL).tls_serialize(&mut out);
    let _ = head.tls_serialize(&mut out);
    out
}

/// Where a user's path in the map ends.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u8)]
pub enum MapPathEnd {
    /// An empty subtree: the user has no entries.
    #[tls_codec(discriminant = 0)]
    Empty,
    /// The user's own leaf: its value is the hash of the `UserBindings` beside the proof.
    #[tls_codec(discriminant = 1)]
    User,
    /// The one other user in the subtree on the path: the user has no entries.
    #[tls_codec(discriminant = 2)]
    OtherUser(MapLeaf),
}

/// A leaf of the map: a user's key and the hash of its `UserBindings`.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct MapLeaf {
    pub key: [u8; 32],
    pub value: [u8; 32],
}

/// A user's path from the map root: sibling hashes, the root's child's sibling first.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct MapProof {
    pub siblings: Vec<[u8; 32]>,
    pub end: MapPathEnd,
}

/// `ProveBindings` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ProveBindingsRequest {
    pub user_id: Text,
}

/// `ProveBindings` response body: the user's bindings at the newest head, proved in its map.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct BindingsProof {
    pub head: SignedTreeHead,
    /// For a user with no entries: no credentials, no entries, a zero history.
    pub bindings: UserBindings,
    pub proof: MapProof,
}

/// `GetTreeHead` request body: the domain whose newest head is wanted (this server's own, or
/// another's through federation).
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GetTreeHeadRequest {
    pub domain: Text,
}

/// `ProveConsistency` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ProveConsistencyRequest {
    pub domain: Text,
    pub old_size: u64,
    pub new_size: u64,
}

/// `ProveConsistency` response body: RFC 9162's consistency proof between the two sizes.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ConsistencyProof {
    pub hashes: Vec<[u8; 32]>,
}

/// `FetchHistory` request body: a user's entries from its `from`-th (0 is the first).
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct FetchHistoryRequest {
    pub user_id: Text,
    pub from: u64,
}

/// One of a user's entries, where it is in the log and the proof that it is there.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ProvedEntry {
    pub index: u64,
    pub entry: LogEntry,
    /// RFC 9162 inclusion proof in the head's log.
    pub inclusion: Vec<[u8; 32]>,
}

/// `FetchHistory` response body: the user's bindings at the newest head (as `ProveBindings`
/// answers) and its entries `from..` (at most [`MAX_HISTORY_ENTRIES`]), each proved in the log.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct UserHistory {
    pub bindings: BindingsProof,
    pub entries: Vec<ProvedEntry>,
}

/// `FetchLogEntries` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct FetchLogEntriesRequest {
    pub start: u64,
    pub count: u32,
}

/// `FetchLogEntries` response body: the newest head and entries `start..` of its log (at most
/// [`MAX_LOG_ENTRIES`], none past the head).
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct LogPage {
    pub head: SignedTreeHead,
    pub entries: Vec<LogRecord>,
}
