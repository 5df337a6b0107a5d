//! The request envelope: `struct { uint16 version; Request request; }`.

use tls_codec::{Deserialize, Serialize, TlsDeserialize, TlsSerialize, TlsSize};

use super::{
    AckGroupLogRequest, AckMessagesRequest, AddClientRequest, AddPushTargetRequest,
    AuthenticateRequest, ClaimKeyPackagesRequest, CreateGroupRequest, DecodeError,
    DeleteGroupRequest, FetchGroupLogRequest, FetchGroupTreeRequest, FetchHistoryRequest,
    FetchLogEntriesRequest, FetchMessagesRequest, GetDomainKeysRequest, GetGroupRequest,
    GetTreeHeadRequest, LookupUserRequest, ProveBindingsRequest, ProveConsistencyRequest,
    PublishKeyPackagesRequest, RegisterUserRequest, RemoveClientRequest, RemovePushTargetRequest,
    SendCommitRequest, SendMessageRequest, SendProposalRequest, Version, MAX_REQUEST_LEN,
};

/// Operation codes: the `uint16` that selects a request body (and the matching response body).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u16)]
pub enum Operation {
    GetServerInfo = 1,
    Authenticate = 2,
    WhoAmI = 3,
    RegisterUser = 4,
    AddClient = 5,
    ListClients = 6,
    RemoveClient = 7,
    RenewCredential = 8,
    LookupUser = 9,
    DeleteUser = 10,
    PublishKeyPackages = 11,
    ClaimKeyPackages = 12,
    KeyPackageStatus = 13,
    FetchMessages = 14,
    AckMessages = 15,
    CreateGroup = 16,
    SendCommit = 17,
    SendMessage = 18,
    GetGroup = 19,
    ListGroups = 20,
    SendProposal = 21,
    DeleteGroup = 22,
    GetDomainKeys = 23,
    UseGroupLogs = 24,
    ListGroupLogs = 25,
    FetchGroupLog = 26,
    AckGroupLog = 27,
    FetchGroupTree = 28,
    GetPushInfo = 29,
    AddPushTarget = 30,
    ListPushTargets = 31,
    RemovePushTarget = 32,
    ListUserGroups = 33,
    GetTreeHead = 34,
    ProveBindings = 35,
    ProveConsistency = 36,
    FetchHistory = 37,
    FetchLogEntries = 38,
}

impl Operation {
    pub const ALL: &'static [Operation] = &[
        Self::GetServerInfo,
        Self::Authenticate,
        Self::WhoAmI,
        Self::RegisterUser,
        Self::AddClient,
        Self::ListClients,
        Self::RemoveClient,
        Self::RenewCredential,
        Self::LookupUser,
        Self::DeleteUser,
        Self::PublishKeyPackages,
        Self::ClaimKeyPackages,
        Self::KeyPackageStatus,
        Self::FetchMessages,
        Self::AckMessages,
        Self::CreateGroup,
        Self::SendCommit,
        Self::SendMessage,
        Self::GetGroup,
        Self::ListGroups,
        Self::SendProposal,
        Self::DeleteGroup,
        Self::GetDomainKeys,
        Self::UseGroupLogs,
        Self::ListGroupLogs,
        Self::FetchGroupLog,
        Self::AckGroupLog,
        Self::FetchGroupTree,
        Self::GetPushInfo,
        Self::AddPushTarget,
        Self::ListPushTargets,
        Self::RemovePushTarget,
        Self::ListUserGroups,
        Self::GetTreeHead,
        Self::ProveBindings,
        Self::ProveConsistency,
        Self::FetchHistory,
        Self::FetchLogEntries,
    ];

    pub fn from_u16(value: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|op| *op as u16 == value)
    }

    /// Whether the operation needs an authenticated connection.
    pub fn requires_authentication(self) -> bool {
        match self {
            Self::GetServerInfo | Self::Authenticate | Self::RegisterUser | Self::GetPushInfo => {
                false
            }
            Self::WhoAmI
            | Self::AddClient
            | Self::ListClients
            | Self::RemoveClient
            | Self::RenewCredential
            | Self::LookupUser
            | Self::DeleteUser
            | Self::PublishKeyPackages
            | Self::ClaimKeyPackages
            | Self::KeyPackageStatus
            | Self::FetchMessages
            | Self::AckMessages
            | Self::CreateGroup
            | Self::SendCommit
            | Self::SendMessage
            | Self::GetGroup
            | Self::ListGroups
            | Self::SendProposal
            | Self::DeleteGroup
            | Self::GetDomainKeys
            | Self::UseGroupLogs
            | Self::ListGroupLogs
            | Self::FetchGroupLog
            | Self::AckGroupLog
            | Self::FetchGroupTree
            | Self::AddPushTarget
            | Self::ListPushTargets
            | Self::RemovePushTarget
            | Self::ListUserGroups
            | Self::GetTreeHead
            | Self::ProveBindings
            | Self::ProveConsistency
            | Self::FetchHistory
            | Self::FetchLogEntries => true,
        }
    }
}

/// A request: the operation code followed by its body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u16)]
pub enum Request {
    /// The server's domain, protocol version and limits. No authentication needed.
    #[tls_codec(discriminant = 1)]
    GetServerInfo,
    /// Authenticate this connection as a client (channel-bound; see `AuthenticateRequest`).
    #[tls_codec(discriminant = 2)]
    Authenticate(AuthenticateRequest),
    /// The client this connection is authenticated as.
    #[tls_codec(discriminant = 3)]
    WhoAmI,
    /// Create a user with its first client.
    #[tls_codec(discriminant = 4)]
    RegisterUser(RegisterUserRequest),
    /// Add a client (device) to the authenticated client's user.
    #[tls_codec(discriminant = 5)]
    AddClient(AddClientRequest),
    /// The authenticated client's user's clients.
    #[tls_codec(discriminant = 6)]
    ListClients,
    /// Remove one of the user's other clients (or this one), never the last.
    #[tls_codec(discriminant = 7)]
    RemoveClient(RemoveClientRequest),
    /// A fresh credential for the authenticated client.
    #[tls_codec(discriminant = 8)]
    RenewCredential,
    /// A user's clients with their credentials.
    #[tls_codec(discriminant = 9)]
    LookupUser(LookupUserRequest),
    /// Delete the authenticated client's user and everything it owns.
    #[tls_codec(discriminant = 10)]
    DeleteUser,
    /// Upload KeyPackages for the authenticated client.
    #[tls_codec(discriminant = 11)]
    PublishKeyPackages(PublishKeyPackagesRequest),
    /// Take one KeyPackage per client of a user.
    #[tls_codec(discriminant = 12)]
    ClaimKeyPackages(ClaimKeyPackagesRequest),
    /// The KeyPackage stock of the authenticated client's user's clients.
    #[tls_codec(discriminant = 13)]
    KeyPackageStatus,
    /// Messages from the authenticated client's queue.
    #[tls_codec(discriminant = 14)]
    FetchMessages(FetchMessagesRequest),
    /// Delete the authenticated client's messages up to a sequence number.
    #[tls_codec(discriminant = 15)]
    AckMessages(AckMessagesRequest),
    /// Register a new MLS group with this server as its delivery service.
    #[tls_codec(discriminant = 16)]
    CreateGroup(CreateGroupRequest),
    /// A commit for a group (with its Welcome and new GroupInfo).
    #[tls_codec(discriminant = 17)]
    SendCommit(SendCommitRequest),
    /// An application message for a group.
    #[tls_codec(discriminant = 18)]
    SendMessage(SendMessageRequest),
    /// A group's members, tree and GroupInfo.
    #[tls_codec(discriminant = 19)]
    GetGroup(GetGroupRequest),
    /// The groups the authenticated client is a member of.
    #[tls_codec(discriminant = 20)]
    ListGroups,
    /// A proposal on its own (leaving, or an Admin's removal), committed later by any member.
    #[tls_codec(discriminant = 21)]
    SendProposal(SendProposalRequest),
    /// Delete a group (Admins only).
    #[tls_codec(discriminant = 22)]
    DeleteGroup(DeleteGroupRequest),
    /// The credential-verifying keys of a domain (this server's, or a peer's through it).
    #[tls_codec(discriminant = 23)]
    GetDomainKeys(GetDomainKeysRequest),
    /// From now on, read the MLS messages of groups hosted here from their group logs.
    #[tls_codec(discriminant = 24)]
    UseGroupLogs,
    /// The group logs the authenticated client may read, with its positions.
    #[tls_codec(discriminant = 25)]
    ListGroupLogs,
    /// Entries of one group's log.
    #[tls_codec(discriminant = 26)]
    FetchGroupLog(FetchGroupLogRequest),
    /// Acknowledge a group log's entries up to a position.
    #[tls_codec(discriminant = 27)]
    AckGroupLog(AckGroupLogRequest),
    /// Part of the ratchet tree of one epoch of a group (a joiner's, from a Welcome without it).
    #[tls_codec(discriminant = 28)]
    FetchGroupTree(FetchGroupTreeRequest),
    /// What offline push the server offers (its VAPID key, the gateways it allows).
    #[tls_codec(discriminant = 29)]
    GetPushInfo,
    /// Register a push target that wakes the authenticated client when it is not connected.
    #[tls_codec(discriminant = 30)]
    AddPushTarget(AddPushTargetRequest),
    /// The authenticated client's push targets.
    #[tls_codec(discriminant = 31)]
    ListPushTargets,
    /// Forget one of the authenticated client's push targets.
    #[tls_codec(discriminant = 32)]
    RemovePushTarget(RemovePushTargetRequest),
    /// The groups any client of the authenticated client's user is a member of (a new device
    /// joins them by external commit).
    #[tls_codec(discriminant = 33)]
    ListUserGroups,
    /// The newest signed head of a domain's transparency log (this server's, or a peer's).
    #[tls_codec(discriminant = 34)]
    GetTreeHead(GetTreeHeadRequest),
    /// A user's bindings at the newest head of its domain's log, with their proof.
    #[tls_codec(discriminant = 35)]
    ProveBindings(ProveBindingsRequest),
    /// The consistency proof between two heads of a domain's log.
    #[tls_codec(discriminant = 36)]
    ProveConsistency(ProveConsistencyRequest),
    /// A local user's entries in the log, each with its inclusion proof.
    #[tls_codec(discriminant = 37)]
    FetchHistory(FetchHistoryRequest),
    /// The log's records, for auditors.
    #[tls_codec(discriminant = 38)]
    FetchLogEntries(FetchLogEntriesRequest),
}

impl Request {
    pub fn operation(&self) -> Operation {
        match self {
            Self::GetServerInfo => Operation::GetServerInfo,
            Self::Authenticate(_) => Operation::Authenticate,
            Self::WhoAmI => Operation::WhoAmI,
            Self::RegisterUser(_) => Operation::RegisterUser,
            Self::AddClient(_) => Operation::AddClient,
            Self::ListClients => Operation::ListClients,
            Self::RemoveClient(_) => Operation::RemoveClient,
            Self::RenewCredential => Operation::RenewCredential,
            Self::LookupUser(_) => Operation::LookupUser,
            Self::DeleteUser => Operation::DeleteUser,
            Self::PublishKeyPackages(_) => Operation::PublishKeyPackages,
            Self::ClaimKeyPackages(_) => Operation::ClaimKeyPackages,
            Self::KeyPackageStatus => Operation::KeyPackageStatus,
            Self::FetchMessages(_) => Operation::FetchMessages,
            Self::AckMessages(_) => Operation::AckMessages,
            Self::CreateGroup(_) => Operation::CreateGroup,
            Self::SendCommit(_) => Operation::SendCommit,
            Self::SendMessage(_) => Operation::SendMessage,
            Self::GetGroup(_) => Operation::GetGroup,
            Self::ListGroups => Operation::ListGroups,
            Self::SendProposal(_) => Operation::SendProposal,
            Self::DeleteGroup(_) => Operation::DeleteGroup,
            Self::GetDomainKeys(_) => Operation::GetDomainKeys,
            Self::UseGroupLogs => Operation::UseGroupLogs,
            Self::ListGroupLogs => Operation::ListGroupLogs,
            Self::FetchGroupLog(_) => Operation::FetchGroupLog,
            Self::AckGroupLog(_) => Operation::AckGroupLog,
            Self::FetchGroupTree(_) => Operation::FetchGroupTree,
            Self::GetPushInfo => Operation::GetPushInfo,
            Self::AddPushTarget(_) => Operation::AddPushTarget,
            Self::ListPushTargets => Operation::ListPushTargets,
            Self::RemovePushTarget(_) => Operation::RemovePushTarget,
            Self::ListUserGroups => Operation::ListUserGroups,
            Self::GetTreeHead(_) => Operation::GetTreeHead,
            Self::ProveBindings(_) => Operation::ProveBindings,
            Self::ProveConsistency(_) => Operation::ProveConsistency,
            Self::FetchHistory(_) => Operation::FetchHistory,
            Self::FetchLogEntries(_) => Operation::FetchLogEntries,
        }
    }
}

/// Encodes a request envelope for a connection speaking `version`.
pub fn encode_request(version: Version, request: &Request) -> Result<Vec<u8>, tls_codec::Error> {
    encode_envelope(version.number(), request)
}

/// Encodes an envelope: the version number, then `body`.
pub(super) fn encode_envelope(
    version: u16,
    body: &impl Serialize,
) -> Result<Vec<u8>, tls_codec::Error> {
    let mut out = version.tls_serialize_detached()?;
    body.tls_serialize(&mut out)?;
    Ok(out)
}

/// Checks an envelope's size and that it carries `version`, returning the bytes after it.
pub(super) fn open_envelope(
    bytes: &[u8],
    limit: usize,
    version: u16,
) -> Result<&[u8], DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (carried, body) = split_u16(bytes)?;
    if carried != version {
        return Err(DecodeError::UnsupportedVersion(carried));
    }
    Ok(body)
}

/// Decodes a request envelope that arrived on a connection speaking `version`, telling an
/// oversize message, another version and an unknown operation apart from a malformed body so
/// that each gets its own error code.
pub fn decode_request(version: Version, bytes: &[u8]) -> Result<Request, DecodeError> {
    let body = open_envelope(bytes, MAX_REQUEST_LEN, version.number())?;
    let (operation, _) = split_u16(body)?;
    if Operation::from_u16(operation).is_none() {
        return Err(DecodeError::UnknownOperation(operation));
    }
    Ok(Request::tls_deserialize_exact(body)?)
}

/// Splits a big-endian `uint16` off the front of `bytes`.
pub(super) fn split_u16(bytes: &[u8]) -> Result<(u16, &[u8]), DecodeError> {
    match bytes {
        [hi, lo, rest @ ..] => Ok((u16::from_be_bytes([*hi, *lo]), rest)),
        _ => Err(DecodeError::Malformed(
            "message ends before its header".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClientId, SignatureScheme, Text};

    fn client() -> ClientId {
        ClientId::of("alice@a.example", 7)
    }

    fn samples() -> Vec<Request> {
        vec![
            Request::GetServerInfo,
            Request::Authenticate(AuthenticateRequest {
                client: client(),
                signature_scheme: SignatureScheme::Ed25519,
                signature: vec![9u8; 64].into(),
            }),
            Request::WhoAmI,
            Request::RegisterUser(RegisterUserRequest {
                user_id: Text::new("alice@a.example").unwrap(),
                signature_key: vec![1u8; 32].into(),
                ciphersuite: 1,
                invite: Some(Text::new("v1.123").unwrap()),
                proof: vec![2u8; 64].into(),
            }),
            Request::AddClient(AddClientRequest {
                signature_key: vec![3u8; 32].into(),
                ciphersuite: 3,
                proof: vec![4u8; 64].into(),
            }),
            Request::ListClients,
            Request::RemoveClient(RemoveClientRequest { client: client() }),
            Request::RenewCredential,
            Request::LookupUser(LookupUserRequest {
                user_id: Text::new("bob@b.example").unwrap(),
            }),
            Request::DeleteUser,
            Request::PublishKeyPackages(PublishKeyPackagesRequest {
                key_packages: vec![vec![1, 2, 3].into(), vec![4].into()],
            }),
            Request::ClaimKeyPackages(ClaimKeyPackagesRequest {
                user_id: Text::new("bob@b.example").unwrap(),
                ciphersuite: 1,
            }),
            Request::KeyPackageStatus,
            Request::FetchMessages(FetchMessagesRequest {
                from_seq: 5,
                max_count: 100,
                max_bytes: 65536,
            }),
            Request::AckMessages(AckMessagesRequest { up_to_seq: 9 }),
            Request::CreateGroup(CreateGroupRequest {
                group_info: vec![1].into(),
                ratchet_tree: vec![2].into(),
            }),
            Request::SendCommit(SendCommitRequest {
                commit: vec![3].into(),
                welcome: Some(vec![4].into()),
                group_info: vec![5].into(),
            }),
            Request::SendMessage(SendMessageRequest {
                message: vec![6].into(),
            }),
            Request::GetGroup(GetGroupRequest {
                group_id: vec![7].into(),
            }),
            Request::ListGroups,
            Request::SendProposal(SendProposalRequest {
                proposal: vec![8].into(),
            }),
            Request::DeleteGroup(DeleteGroupRequest {
                group_id: vec![9].into(),
            }),
            Request::GetDomainKeys(GetDomainKeysRequest {
                domain: Text::new("b.example").unwrap(),
            }),
            Request::UseGroupLogs,
            Request::ListGroupLogs,
            Request::FetchGroupLog(FetchGroupLogRequest {
                group_id: vec![4; 20].into(),
                from_gseq: 0,
                max_count: 10,
                max_bytes: 1024,
            }),
            Request::AckGroupLog(AckGroupLogRequest {
                group_id: vec![4; 20].into(),
                up_to_gseq: 3,
            }),
            Request::FetchGroupTree(FetchGroupTreeRequest {
                group_id: vec![4; 20].into(),
                epoch: 7,
                offset: 1024,
            }),
            Request::GetPushInfo,
            Request::AddPushTarget(AddPushTargetRequest {
                target: crate::protocol::PushTarget::WebPush(
                    crate::protocol::WebPushSubscription {
                        endpoint: Text::new("https://push.example.net/s/1").unwrap(),
                        p256dh: vec![4; 65].into(),
                        auth: vec![5; 16].into(),
                    },
                ),
            }),
            Request::AddPushTarget(AddPushTargetRequest {
                target: crate::protocol::PushTarget::Gateway(crate::protocol::GatewayPusher {
                    gateway_url: Text::new("https://gw.example.net/notify").unwrap(),
                    app_id: Text::new("org.example.app").unwrap(),
                    pushkey: Text::new("token").unwrap(),
                }),
            }),
            Request::ListPushTargets,
            Request::RemovePushTarget(RemovePushTargetRequest { target_id: 9 }),
            Request::ListUserGroups,
            Request::GetTreeHead(GetTreeHeadRequest {
                domain: Text::new("a.example").unwrap(),
            }),
            Request::ProveBindings(ProveBindingsRequest {
                user_id: Text::new("alice@a.example").unwrap(),
            }),
            Request::ProveConsistency(ProveConsistencyRequest {
                domain: Text::new("a.example").unwrap(),
                old_size: 2,
                new_size: 5,
            }),
            Request::FetchHistory(FetchHistoryRequest {
                user_id: Text::new("alice@a.example").unwrap(),
                from: 0,
            }),
            Request::FetchLogEntries(FetchLogEntriesRequest {
                start: 0,
                count: 100,
            }),
        ]
    }

    #[test]
    fn every_request_round_trips_and_names_its_operation() {
        let requests = samples();
        let operations: std::collections::BTreeSet<u16> =
            requests.iter().map(|r| r.operation() as u16).collect();
        assert_eq!(
            operations.len(),
            Operation::ALL.len(),
            "a sample per operation"
        );
        for request in requests {
            for version in Version::ALL {
                let bytes = encode_request(version, &request).unwrap();
                assert_eq!(&bytes[..2], &version.number().to_be_bytes());
                assert_eq!(&bytes[2..4], &(request.operation() as u16).to_be_bytes());
                assert_eq!(
                    bytes.len(),
                    2 + tls_codec::Size::tls_serialized_len(&request)
                );
                assert_eq!(decode_request(version, &bytes).unwrap(), request);
            }
        }
    }

    #[test]
    fn decoding_tells_errors_apart() {
        let v1 = Version::V1;
        let good = encode_request(v1, &Request::WhoAmI).unwrap();
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            decode_request(v1, &trailing),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_request(v1, &[0]),
            Err(DecodeError::Malformed(_))
        ));
        // Another version's envelope, on a connection of roost/1 and of roost/2.
        assert_eq!(
            decode_request(v1, &[0, 2, 0, 1]),
            Err(DecodeError::UnsupportedVersion(2))
        );
        assert_eq!(
            decode_request(Version::V2, &good),
            Err(DecodeError::UnsupportedVersion(1))
        );
        assert_eq!(
            decode_request(v1, &[0, 1, 0xff, 0xff]),
            Err(DecodeError::UnknownOperation(0xffff))
        );
        let oversize = vec![0u8; MAX_REQUEST_LEN + 1];
        assert!(matches!(
            decode_request(v1, &oversize),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
