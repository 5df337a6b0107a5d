//! The wire protocol, versions `roost/1` and `roost/2` and `roost-fed/1`: every type that crosses
//! the network, its encoding, the error codes and the limits.
//!
//! This module is pure. It does no I/O, knows nothing of tokio, quinn, redb or openmls group state,
//! and every decoder in it checks the input size before decoding and consumes the whole input
//! (trailing bytes are an error). `protocol-spec/` is the normative description of what this module
//! encodes; the two change together.

mod accounts;
pub mod admin;
mod auth;
pub mod cluster;
mod credential;
mod error;
mod federation;
mod group_logs;
mod groups;
mod key_packages;
mod notification;
mod push;
mod queues;
mod request;
mod response;
mod transparency;
mod types;
mod version;

pub use accounts::{
    add_client_proof_content, register_proof_content, AddClientRequest, ClientEntry,
    ClientRegistered, LookupUserRequest, RegisterUserRequest, RegistrationMode,
    RemoveClientRequest, UserClients, ADD_CLIENT_PROOF_LABEL, MAX_CLIENTS_PER_USER,
    REGISTER_PROOF_LABEL,
};
pub use auth::{
    channel_binding_content, AuthenticateRequest, AuthenticateResponse, SignatureScheme,
    AUTH_EXPORTER_CONTEXT, AUTH_EXPORTER_LABEL, AUTH_SIGNATURE_LABEL, CHANNEL_BINDING_LEN,
};
pub use credential::{
    credential_signature_content, ClientCredential, ClientCredentialContent,
    CredentialVerifyingKey, CREDENTIAL_SIGNATURE_LABEL, ED25519_PUBLIC_KEY_LEN,
    SUPPORTED_CIPHERSUITES,
};
pub use error::{DecodeError, ErrorCode, ErrorResponse, Retry, V1_LAST_CODE};
pub use federation::{
    decode_federation_request, decode_federation_response, encode_federation_request,
    encode_federation_response, ClientsDepartedRequest, DeliverBatchRequest, DeliverRequest,
    DeliveredBatch, DeliveryItem, DomainKeysBody, FederatedClaimRequest, FederationOperation,
    FederationRequest, FederationResponse, FederationResponseBody, GetDomainKeysRequest,
    GroupRequest, IdentifyRequest, RelayedGroupRequest, TransparencyQuery,
    MAX_DELIVERIES_PER_BATCH,
};
pub use group_logs::{
    AckGroupLogRequest, FetchGroupLogRequest, GroupLogAppended, GroupLogCursor, GroupLogMessages,
    GroupLogs,
};
pub use groups::{
    CreateGroupRequest, DeleteGroupRequest, FetchGroupTreeRequest, GetGroupRequest, GroupDeleted,
    GroupEpoch, GroupList, GroupMember, GroupRoles, GroupState, GroupTreeChunk, MessageAccepted,
    Role, SendCommitRequest, SendMessageRequest, SendProposalRequest, MAX_INLINE_TREE_LEN,
    MAX_TREE_CHUNK_LEN, ROLES_EXTENSION_TYPE,
};
pub use key_packages::{
    ClaimKeyPackagesRequest, ClaimOutcome, ClaimedKeyPackage, ClaimedKeyPackages, KeyPackageStatus,
    KeyPackageStock, KeyPackagesLow, PublishKeyPackagesRequest, MAX_KEY_PACKAGE_LEN,
};
pub use notification::{
    decode_notification, decode_push_header, encode_notification_record, encode_push_header,
    Notification, ServerShutdown, NOTIFICATION_LENGTH_PREFIX_LEN, PUSH_HEADER_LEN,
};
pub use push::{
    AddPushTargetRequest, GatewayPusher, PushInfo, PushTarget, PushTargetAdded, PushTargets,
    RegisteredPushTarget, RemovePushTargetRequest, WebPushSubscription, MAX_PUSHKEY_LEN,
    MAX_PUSH_TARGETS_PER_CLIENT, MAX_PUSH_URL_LEN, WEB_PUSH_AUTH_LEN, WEB_PUSH_KEY_LEN,
};
pub use queues::{
    AckMessagesRequest, FetchMessagesRequest, FetchedMessages, MessageKind, MessagesExpired,
    NewMessages, QueuedMessage, ServerNotice, MAX_FETCH_COUNT, MAX_PUSHED_BYTES,
    MAX_PUSHED_MESSAGES,
};
pub use request::{decode_request, encode_request, Operation, Request};
pub use response::{decode_response, encode_response, Response, ResponseBody, ServerInfo};
pub use transparency::{
    tree_head_signature_content, BindingChange, BindingsProof, ConsistencyProof,
    FetchHistoryRequest, FetchLogEntriesRequest, GetTreeHeadRequest, LogEntry, LogPage, LogRecord,
    MapLeaf, MapPathEnd, MapProof, ProveBindingsRequest, ProveConsistencyRequest, ProvedEntry,
    RedactedEntry, SignedTreeHead, TreeHead, UserBindings, UserHistory, UserRemoved,
    MAX_HISTORY_ENTRIES, MAX_LOG_ENTRIES,
};
pub use types::{ClientId, Flag, Limits, Text};
pub use version::Version;

/// ALPN identifier of the homeserver-to-homeserver protocol.
pub const ALPN_FEDERATION: &[u8] = b"roost-fed/1";

/// Largest encoded request a server accepts, in bytes. Checked before decoding.
pub const MAX_REQUEST_LEN: usize = 1024 * 1024;
/// Largest encoded request a server accepts on a connection that has not authenticated, in bytes:
/// enough for registration and authentication, little for a flood of unauthenticated streams.
pub const MAX_UNAUTHENTICATED_REQUEST_LEN: usize = 64 * 1024;
/// Largest encoded response a server sends and a client accepts, in bytes.
pub const MAX_RESPONSE_LEN: usize = 4 * 1024 * 1024;
/// Largest encoded notification record on the push stream, in bytes (the length prefix excluded).
pub const MAX_NOTIFICATION_LEN: usize = 64 * 1024;
/// Longest human-readable text field (error messages, domains, reasons), in bytes of UTF-8.
pub const MAX_TEXT_LEN: usize = 1024;

/// Stream error code a server uses to stop reading a request it refused (too large, too slow).
pub const STREAM_REFUSED: u32 = 1;

/// QUIC application error codes used when a server closes a connection.
pub mod close_code {
    /// Normal close: the peer is done.
    pub const NORMAL: u32 = 0;
    /// The server is shutting down; reconnect later.
    pub const SHUTTING_DOWN: u32 = 1;
    /// The negotiated ALPN (or the lack of one) is served by no handler on this server.
    pub const UNSUPPORTED_ALPN: u32 = 2;
    /// The authenticated client was removed (or its user deleted).
    pub const CLIENT_REMOVED: u32 = 3;
    /// A peer homeserver connected without a certificate.
    pub const PEER_REFUSED: u32 = 4;
    /// The peer did not read the responses it asked for within the request timeout.
    pub const NOT_READING: u32 = 5;
    /// The source address holds as many connections as the server allows one source.
    pub const TOO_MANY_CONNECTIONS: u32 = 6;
}
