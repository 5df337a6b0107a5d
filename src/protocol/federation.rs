//! The homeserver-to-homeserver protocol (ALPN `roost-fed/1`): the same envelopes as the client
//! protocol, with their own operations. A peer connection is mutually authenticated with TLS
//! certificates; its first request names the peer's domain, which its certificate must be valid
//! for.

use tls_codec::{Deserialize, TlsDeserialize, TlsSerialize, TlsSize};

use super::request::{encode_envelope, open_envelope, split_u16};
use tls_codec::VLBytes;

use super::{
    ClaimKeyPackagesRequest, ClaimedKeyPackages, ClientId, CredentialVerifyingKey, DecodeError,
    DeleteGroupRequest, ErrorResponse, FetchGroupTreeRequest, FetchHistoryRequest, GetGroupRequest,
    GetTreeHeadRequest, LookupUserRequest, MessageKind, ProveBindingsRequest,
    ProveConsistencyRequest, ResponseBody, SendCommitRequest, SendMessageRequest,
    SendProposalRequest, Text, UserClients, MAX_REQUEST_LEN, MAX_RESPONSE_LEN,
};

/// `Identify` (federation) request body: the domain the connecting homeserver speaks for.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct IdentifyRequest {
    pub domain: Text,
}

/// A claim relayed for a client of the requesting homeserver.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct FederatedClaimRequest {
    /// The claiming client: a client of the requesting homeserver's domain.
    pub claimer: ClientId,
    pub request: ClaimKeyPackagesRequest,
}

/// A domain's credential-verifying keys (client `GetDomainKeys` and federation `GetDomainKeys`).
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct DomainKeysBody {
    pub domain: Text,
    pub keys: Vec<CredentialVerifyingKey>,
}

/// `GetDomainKeys` (client) request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GetDomainKeysRequest {
    pub domain: Text,
}

/// One message of a delivery: for these recipients (clients of the receiving homeserver).
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct DeliveryItem {
    pub recipients: Vec<ClientId>,
    pub kind: MessageKind,
    pub payload: VLBytes,
}

/// Messages of one group for clients of the receiving homeserver, sent by the group's hub.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct DeliverRequest {
    /// Unique per sending homeserver: a retried delivery carries the same id and is stored once.
    pub delivery_id: VLBytes,
    /// The group the messages belong to (empty for messages outside any group).
    pub group_id: VLBytes,
    pub items: Vec<DeliveryItem>,
}

/// Several deliveries in outbox order, stored by the receiver in that order in one disk commit.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct DeliverBatchRequest {
    pub deliveries: Vec<DeliverRequest>,
}

/// The receiver's answer to a [`DeliverBatchRequest`]: the first `accepted` deliveries are stored
/// (or were stored before); with `refusal`, the next one was refused for that reason and none
/// after it was looked at.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct DeliveredBatch {
    pub accepted: u32,
    pub refusal: Option<ErrorResponse>,
}

/// Deliveries sent in one `DeliverBatch` at most.
pub const MAX_DELIVERIES_PER_BATCH: usize = 256;

/// A group operation of a client of the requesting homeserver, for a group hosted here.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct RelayedGroupRequest {
    /// The acting client: a client of the requesting homeserver's domain.
    pub sender: ClientId,
    pub request: GroupRequest,
}

/// The group operations a client's homeserver relays to the group's hub.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u16)]
pub enum GroupRequest {
    #[tls_codec(discriminant = 17)]
    SendCommit(SendCommitRequest),
    #[tls_codec(discriminant = 18)]
    SendMessage(SendMessageRequest),
    #[tls_codec(discriminant = 19)]
    GetGroup(GetGroupRequest),
    /// The groups hosted at the hub that the sender is a member of.
    #[tls_codec(discriminant = 20)]
    ListGroups,
    #[tls_codec(discriminant = 21)]
    SendProposal(SendProposalRequest),
    #[tls_codec(discriminant = 22)]
    DeleteGroup(DeleteGroupRequest),
    #[tls_codec(discriminant = 28)]
    FetchGroupTree(FetchGroupTreeRequest),
    /// The groups hosted at the hub that any client of the sender's user is a member of.
    #[tls_codec(discriminant = 33)]
    ListUserGroups,
}

/// A question about this homeserver's transparency log, relayed for a client of the peer (who
/// verifies the answer against this server's keys: the peer only carries it). The client
/// operation codes and bodies.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u16)]
pub enum TransparencyQuery {
    #[tls_codec(discriminant = 34)]
    GetTreeHead(GetTreeHeadRequest),
    #[tls_codec(discriminant = 35)]
    ProveBindings(ProveBindingsRequest),
    #[tls_codec(discriminant = 36)]
    ProveConsistency(ProveConsistencyRequest),
    #[tls_codec(discriminant = 37)]
    FetchHistory(FetchHistoryRequest),
}

/// `ClientsDeparted` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ClientsDepartedRequest {
    pub clients: Vec<ClientId>,
}

/// Operation codes of the federation protocol.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u16)]
pub enum FederationOperation {
    Identify = 1,
    GetDomainKeys = 2,
    LookupUser = 3,
    ClaimKeyPackages = 4,
    Deliver = 5,
    RelayGroupRequest = 6,
    ClientsDeparted = 7,
    DeliverBatch = 8,
    Transparency = 9,
}

impl FederationOperation {
    pub const ALL: &'static [FederationOperation] = &[
        Self::Identify,
        Self::GetDomainKeys,
        Self::LookupUser,
        Self::ClaimKeyPackages,
        Self::Deliver,
        Self::RelayGroupRequest,
        Self::ClientsDeparted,
        Self::DeliverBatch,
        Self::Transparency,
    ];

    pub fn from_u16(value: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|op| *op as u16 == value)
    }
}

/// A request from a peer homeserver.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u16)]
pub enum FederationRequest {
    /// Name the domain this connection speaks for (first request of a connection).
    #[tls_codec(discriminant = 1)]
    Identify(IdentifyRequest),
    /// This homeserver's credential-verifying keys.
    #[tls_codec(discriminant = 2)]
    GetDomainKeys,
    /// One of this homeserver's users, with its clients' credentials.
    #[tls_codec(discriminant = 3)]
    LookupUser(LookupUserRequest),
    /// One KeyPackage per client of one of this homeserver's users, for a remote claimer.
    #[tls_codec(discriminant = 4)]
    ClaimKeyPackages(FederatedClaimRequest),
    /// Messages for clients of this homeserver (from a group's hub).
    #[tls_codec(discriminant = 5)]
    Deliver(DeliverRequest),
    /// A group operation of a remote client, for a group hosted here.
    #[tls_codec(discriminant = 6)]
    RelayGroupRequest(RelayedGroupRequest),
    /// Clients of the requesting homeserver that no longer exist (removed, or user deleted).
    #[tls_codec(discriminant = 7)]
    ClientsDeparted(ClientsDepartedRequest),
    /// Several deliveries, in order (how a hub drains its outbox).
    #[tls_codec(discriminant = 8)]
    DeliverBatch(DeliverBatchRequest),
    /// A question about this homeserver's transparency log.
    #[tls_codec(discriminant = 9)]
    Transparency(TransparencyQuery),
}

/// A successful federation response body, tagged with its request's operation code.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u16)]
pub enum FederationResponseBody {
    #[tls_codec(discriminant = 1)]
    Identified,
    #[tls_codec(discriminant = 2)]
    DomainKeys(DomainKeysBody),
    #[tls_codec(discriminant = 3)]
    UserFound(UserClients),
    #[tls_codec(discriminant = 4)]
    KeyPackagesClaimed(ClaimedKeyPackages),
    #[tls_codec(discriminant = 5)]
    Delivered,
    /// The hub's answer to a relayed group operation: the client response body.
    #[tls_codec(discriminant = 6)]
    GroupResponse(ResponseBody),
    #[tls_codec(discriminant = 7)]
    DeparturesNoted,
    #[tls_codec(discriminant = 8)]
    DeliveredBatch(DeliveredBatch),
    /// The answer to a transparency question: the client response body.
    #[tls_codec(discriminant = 9)]
    Transparency(ResponseBody),
}

/// A federation response: a body, or an error.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u8)]
pub enum FederationResponse {
    #[tls_codec(discriminant = 0)]
    Ok(FederationResponseBody),
    #[tls_codec(discriminant = 1)]
    Error(ErrorResponse),
}

/// The version number in every `roost-fed/1` envelope. Federation keeps version 1 and its error
/// form (`code`, `message`; codes up to [`super::V1_LAST_CODE`]) until a `roost-fed/2`.
pub const FEDERATION_VERSION: u16 = 1;

pub fn encode_federation_request(request: &FederationRequest) -> Result<Vec<u8>, tls_codec::Error> {
    encode_envelope(FEDERATION_VERSION, request)
}

pub fn decode_federation_request(bytes: &[u8]) -> Result<FederationRequest, DecodeError> {
    let body = open_envelope(bytes, MAX_REQUEST_LEN, FEDERATION_VERSION)?;
    let (operation, _) = split_u16(body)?;
    if FederationOperation::from_u16(operation).is_none() {
        return Err(DecodeError::UnknownOperation(operation));
    }
    Ok(FederationRequest::tls_deserialize_exact(body)?)
}

pub fn encode_federation_response(
    response: &FederationResponse,
) -> Result<Vec<u8>, tls_codec::Error> {
    encode_envelope(FEDERATION_VERSION, response)
}

pub fn decode_federation_response(bytes: &[u8]) -> Result<FederationResponse, DecodeError> {
    let body = open_envelope(bytes, MAX_RESPONSE_LEN, FEDERATION_VERSION)?;
    Ok(FederationResponse::tls_deserialize_exact(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{GroupEpoch, GroupList};

    fn client() -> ClientId {
        ClientId::of("bob@b.example", 2)
    }

    fn relayed(request: GroupRequest) -> FederationRequest {
        FederationRequest::RelayGroupRequest(RelayedGroupRequest {
            sender: client(),
            request,
        })
    }

    #[test]
    fn every_federation_request_round_trips() {
        let requests = [
            FederationRequest::Identify(IdentifyRequest {
                domain: Text::new("b.example").unwrap(),
            }),
            FederationRequest::GetDomainKeys,
            FederationRequest::LookupUser(LookupUserRequest {
                user_id: Text::new("alice@a.example").unwrap(),
            }),
            FederationRequest::ClaimKeyPackages(FederatedClaimRequest {
                claimer: client(),
                request: ClaimKeyPackagesRequest {
                    user_id: Text::new("alice@a.example").unwrap(),
                    ciphersuite: 1,
                },
            }),
            FederationRequest::Deliver(DeliverRequest {
                delivery_id: vec![1; 16].into(),
                group_id: vec![2; 16].into(),
                items: vec![DeliveryItem {
                    recipients: vec![client()],
                    kind: MessageKind::Mls,
                    payload: vec![3, 4].into(),
                }],
            }),
            relayed(GroupRequest::GetGroup(GetGroupRequest {
                group_id: vec![5].into(),
            })),
            relayed(GroupRequest::ListGroups),
            relayed(GroupRequest::ListUserGroups),
            relayed(GroupRequest::FetchGroupTree(FetchGroupTreeRequest {
                group_id: vec![5].into(),
                epoch: 3,
                offset: 0,
            })),
            FederationRequest::ClientsDeparted(ClientsDepartedRequest {
                clients: vec![client()],
            }),
            FederationRequest::DeliverBatch(DeliverBatchRequest {
                deliveries: vec![DeliverRequest {
                    delivery_id: vec![1; 16].into(),
                    group_id: vec![2; 16].into(),
                    items: Vec::new(),
                }],
            }),
            FederationRequest::Transparency(TransparencyQuery::ProveBindings(
                ProveBindingsRequest {
                    user_id: Text::new("alice@a.example").unwrap(),
                },
            )),
            FederationRequest::Transparency(TransparencyQuery::GetTreeHead(GetTreeHeadRequest {
                domain: Text::new("a.example").unwrap(),
            })),
            FederationRequest::Transparency(TransparencyQuery::ProveConsistency(
                ProveConsistencyRequest {
                    domain: Text::new("a.example").unwrap(),
                    old_size: 3,
                    new_size: 9,
                },
            )),
        ];
        for request in requests {
            let bytes = encode_federation_request(&request).unwrap();
            assert_eq!(decode_federation_request(&bytes).unwrap(), request);
        }
        // A relayed ListGroups carries the client operation code 20 and an empty body.
        let bytes = encode_federation_request(&relayed(GroupRequest::ListGroups)).unwrap();
        assert_eq!(&bytes[bytes.len() - 2..], &20u16.to_be_bytes());
    }

    #[test]
    fn batch_answers_round_trip_with_and_without_a_refusal() {
        for refusal in [
            None,
            Some(ErrorResponse::new(
                super::super::ErrorCode::QueueFull,
                "full",
            )),
        ] {
            let response =
                FederationResponse::Ok(FederationResponseBody::DeliveredBatch(DeliveredBatch {
                    accepted: 3,
                    refusal,
                }));
            let bytes = encode_federation_response(&response).unwrap();
            assert_eq!(decode_federation_response(&bytes).unwrap(), response);
        }
    }

    #[test]
    fn a_hubs_group_list_round_trips_and_trailing_bytes_are_refused() {
        let response = FederationResponse::Ok(FederationResponseBody::GroupResponse(
            ResponseBody::Groups(GroupList {
                groups: vec![GroupEpoch {
                    group_id: vec![7; 16].into(),
                    epoch: 3,
                }],
                unreachable_hubs: vec![Text::new("c.example").unwrap()],
            }),
        ));
        let mut bytes = encode_federation_response(&response).unwrap();
        assert_eq!(decode_federation_response(&bytes).unwrap(), response);
        bytes.push(0);
        assert!(decode_federation_response(&bytes).is_err());
    }
}
