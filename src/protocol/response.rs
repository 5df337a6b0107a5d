//! The response envelope:
//! `struct { uint16 version; ResponseStatus status; select (status) { ... } }`.

use tls_codec::{Deserialize, TlsDeserialize, TlsSerialize, TlsSize};

use super::request::{encode_envelope, open_envelope};
use super::{
    AuthenticateResponse, ClaimedKeyPackages, ClientCredential, ClientId, ClientRegistered,
    CredentialVerifyingKey, DecodeError, DomainKeysBody, ErrorResponse, FetchedMessages,
    GroupEpoch, GroupList, GroupLogMessages, GroupLogs, GroupState, GroupTreeChunk,
    KeyPackageStatus, Limits, MessageAccepted, PushInfo, PushTargetAdded, PushTargets,
    RegistrationMode, Text, UserClients, MAX_RESPONSE_LEN,
};

/// `GetServerInfo` response body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ServerInfo {
    /// The domain this homeserver serves (`a.example` in `alice@a.example`).
    pub domain: Text,
    /// The protocol version the server speaks.
    pub protocol_version: u16,
    pub limits: Limits,
    /// How the server takes registrations.
    pub registration: RegistrationMode,
    /// The keys that sign this server's client credentials, newest first.
    pub credential_keys: Vec<CredentialVerifyingKey>,
}

/// A successful response body, tagged with the operation code of the request it answers.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u16)]
pub enum ResponseBody {
    #[tls_codec(discriminant = 1)]
    ServerInfo(ServerInfo),
    #[tls_codec(discriminant = 2)]
    Authenticated(AuthenticateResponse),
    #[tls_codec(discriminant = 3)]
    WhoAmI(ClientId),
    #[tls_codec(discriminant = 4)]
    UserRegistered(ClientRegistered),
    #[tls_codec(discriminant = 5)]
    ClientAdded(ClientRegistered),
    #[tls_codec(discriminant = 6)]
    Clients(UserClients),
    #[tls_codec(discriminant = 7)]
    ClientRemoved,
    #[tls_codec(discriminant = 8)]
    CredentialRenewed(ClientCredential),
    #[tls_codec(discriminant = 9)]
    UserFound(UserClients),
    #[tls_codec(discriminant = 10)]
    UserDeleted,
    #[tls_codec(discriminant = 11)]
    KeyPackagesPublished(KeyPackageStatus),
    #[tls_codec(discriminant = 12)]
    KeyPackagesClaimed(ClaimedKeyPackages),
    #[tls_codec(discriminant = 13)]
    KeyPackageStatus(KeyPackageStatus),
    #[tls_codec(discriminant = 14)]
    Messages(FetchedMessages),
    #[tls_codec(discriminant = 15)]
    MessagesAcked,
    #[tls_codec(discriminant = 16)]
    GroupCreated(GroupEpoch),
    #[tls_codec(discriminant = 17)]
    CommitAccepted(GroupEpoch),
    #[tls_codec(discriminant = 18)]
    MessageAccepted(MessageAccepted),
    #[tls_codec(discriminant = 19)]
    Group(GroupState),
    #[tls_codec(discriminant = 20)]
    Groups(GroupList),
    #[tls_codec(discriminant = 21)]
    ProposalAccepted,
    #[tls_codec(discriminant = 22)]
    GroupDeleted,
    #[tls_codec(discriminant = 23)]
    DomainKeys(DomainKeysBody),
    #[tls_codec(discriminant = 24)]
    GroupLogsUsed,
    #[tls_codec(discriminant = 25)]
    GroupLogs(GroupLogs),
    #[tls_codec(discriminant = 26)]
    GroupLogMessages(GroupLogMessages),
    #[tls_codec(discriminant = 27)]
    GroupLogAcked,
    #[tls_codec(discriminant = 28)]
    GroupTree(GroupTreeChunk),
    #[tls_codec(discriminant = 29)]
    PushInfo(PushInfo),
    #[tls_codec(discriminant = 30)]
    PushTargetAdded(PushTargetAdded),
    #[tls_codec(discriminant = 31)]
    PushTargets(PushTargets),
    #[tls_codec(discriminant = 32)]
    PushTargetRemoved,
}

/// A response: a body, or an error.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u8)]
pub enum Response {
    #[tls_codec(discriminant = 0)]
    Ok(ResponseBody),
    #[tls_codec(discriminant = 1)]
    Error(ErrorResponse),
}

/// Encodes a response envelope for the current protocol version.
pub fn encode_response(response: &Response) -> Result<Vec<u8>, tls_codec::Error> {
    encode_envelope(response)
}

/// Decodes a response envelope (the client side of [`encode_response`]).
pub fn decode_response(bytes: &[u8]) -> Result<Response, DecodeError> {
    let body = open_envelope(bytes, MAX_RESPONSE_LEN)?;
    Ok(Response::tls_deserialize_exact(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, PROTOCOL_VERSION};

    #[test]
    fn responses_round_trip() {
        let samples = [
            Response::Ok(ResponseBody::ServerInfo(ServerInfo {
                domain: Text::new("a.example").unwrap(),
                protocol_version: PROTOCOL_VERSION,
                limits: Limits {
                    max_request_len: 1,
                    max_response_len: 2,
                    max_notification_len: 3,
                    max_concurrent_streams: 4,
                    idle_timeout_ms: 5,
                    request_timeout_ms: 6,
                },
                registration: RegistrationMode::Invite,
                credential_keys: vec![CredentialVerifyingKey {
                    key_id: 1,
                    public_key: vec![5u8; 32].into(),
                    valid_until: u64::MAX,
                }],
            })),
            Response::Ok(ResponseBody::ClientRemoved),
            Response::Ok(ResponseBody::KeyPackagesClaimed(ClaimedKeyPackages {
                user_id: Text::new("bob@b.example").unwrap(),
                claims: vec![
                    crate::protocol::ClaimedKeyPackage {
                        client: ClientId {
                            user_id: Text::new("bob@b.example").unwrap(),
                            device_id: 1,
                        },
                        outcome: crate::protocol::ClaimOutcome::LastResort(vec![7; 9].into()),
                    },
                    crate::protocol::ClaimedKeyPackage {
                        client: ClientId {
                            user_id: Text::new("bob@b.example").unwrap(),
                            device_id: 2,
                        },
                        outcome: crate::protocol::ClaimOutcome::Unavailable,
                    },
                ],
            })),
            Response::Ok(ResponseBody::UserDeleted),
            Response::Ok(ResponseBody::Messages(FetchedMessages {
                messages: vec![crate::protocol::QueuedMessage {
                    seq: 3,
                    enqueued_at_ms: 1_700_000_000_000,
                    kind: crate::protocol::MessageKind::Welcome,
                    payload: vec![1, 2, 3].into(),
                }],
                next_seq: 4,
            })),
            Response::Ok(ResponseBody::WhoAmI(ClientId {
                user_id: Text::new("bob@b.example").unwrap(),
                device_id: 1,
            })),
            Response::Ok(ResponseBody::PushInfo(crate::protocol::PushInfo {
                vapid_public_key: vec![4; 65].into(),
                gateways: vec![Text::new("https://gw.example.net/notify").unwrap()],
                max_targets_per_client: 4,
                wake_interval_ms: 30_000,
            })),
            Response::Ok(ResponseBody::PushTargetAdded(
                crate::protocol::PushTargetAdded {
                    target_id: 7,
                    replaced: crate::protocol::Flag(true),
                },
            )),
            Response::Ok(ResponseBody::PushTargets(crate::protocol::PushTargets {
                targets: vec![crate::protocol::RegisteredPushTarget {
                    target_id: 7,
                    registered_at: 1_700_000_000,
                    target: crate::protocol::PushTarget::Gateway(crate::protocol::GatewayPusher {
                        gateway_url: Text::new("https://gw.example.net/notify").unwrap(),
                        app_id: Text::new("app").unwrap(),
                        pushkey: Text::new("key").unwrap(),
                    }),
                }],
            })),
            Response::Ok(ResponseBody::PushTargetRemoved),
            Response::Error(ErrorResponse::new(
                ErrorCode::NotAuthenticated,
                "log in first",
            )),
        ];
        for response in samples {
            let bytes = encode_response(&response).unwrap();
            assert_eq!(
                bytes.len(),
                2 + tls_codec::Size::tls_serialized_len(&response)
            );
            assert_eq!(decode_response(&bytes).unwrap(), response);
        }
    }

    #[test]
    fn an_error_message_longer_than_the_text_limit_is_cut_not_refused() {
        let long = "é".repeat(crate::protocol::MAX_TEXT_LEN);
        let error = ErrorResponse::new(ErrorCode::Internal, &long);
        assert!(error.message.as_str().len() <= crate::protocol::MAX_TEXT_LEN);
        let bytes = encode_response(&Response::Error(error.clone())).unwrap();
        assert_eq!(decode_response(&bytes).unwrap(), Response::Error(error));
    }
}
