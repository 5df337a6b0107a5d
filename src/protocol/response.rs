//! The response envelope:
//! `struct { uint16 version; ResponseStatus status; select (status) { ... } }`.

use tls_codec::{Deserialize, Serialize, TlsDeserialize, TlsSerialize, TlsSize};

use super::request::open_envelope;
use super::{
    AuthenticateResponse, BindingsProof, ClaimedKeyPackages, ClientCredential, ClientId,
    ClientRegistered, ConsistencyProof, CredentialVerifyingKey, DecodeError, DomainKeysBody,
    ErrorResponse, FetchedMessages, GroupEpoch, GroupList, GroupLogMessages, GroupLogs, GroupState,
    GroupTreeChunk, KeyPackageStatus, Limits, LogPage, MessageAccepted, PushInfo, PushTargetAdded,
    PushTargets, RegistrationMode, SignedTreeHead, Text, UserClients, UserHistory, Version,
    MAX_RESPONSE_LEN,
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
    // The transparency bodies are boxed: a tree head alone outweighs every other body.
    #[tls_codec(discriminant = 34)]
    TreeHead(Box<SignedTreeHead>),
    #[tls_codec(discriminant = 35)]
    Bindings(Box<BindingsProof>),
    #[tls_codec(discriminant = 36)]
    Consistency(ConsistencyProof),
    #[tls_codec(discriminant = 37)]
    History(Box<UserHistory>),
    #[tls_codec(discriminant = 38)]
    LogPage(Box<LogPage>),
}

/// A response: a body, or an error. On the wire:
/// `struct { ResponseStatus status; select (status) { case ok: ResponseBody; case error:
/// ErrorResponse; } }`, the error in the form of the connection's version.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Response {
    Ok(ResponseBody),
    Error(ErrorResponse),
}

const STATUS_OK: u8 = 0;
const STATUS_ERROR: u8 = 1;

/// Encodes a response envelope for a connection speaking `version`.
pub fn encode_response(version: Version, response: &Response) -> Result<Vec<u8>, tls_codec::Error> {
    let mut out = version.number().tls_serialize_detached()?;
    match response {
        Response::Ok(body) => {
            STATUS_OK.tls_serialize(&mut out)?;
            body.tls_serialize(&mut out)?;
        }
        Response::Error(error) => {
            STATUS_ERROR.tls_serialize(&mut out)?;
            match version {
                Version::V1 => error.tls_serialize(&mut out)?,
                Version::V2 => error.serialize_v2(&mut out)?,
            };
        }
    }
    Ok(out)
}

/// Decodes a response envelope on a connection speaking `version` (the client side of
/// [`encode_response`]).
pub fn decode_response(version: Version, bytes: &[u8]) -> Result<Response, DecodeError> {
    let mut body = open_envelope(bytes, MAX_RESPONSE_LEN, version.number())?;
    let response = match u8::tls_deserialize(&mut body)? {
        STATUS_OK => Response::Ok(ResponseBody::tls_deserialize(&mut body)?),
        STATUS_ERROR => Response::Error(match version {
            Version::V1 => ErrorResponse::tls_deserialize(&mut body)?,
            Version::V2 => ErrorResponse::deserialize_v2(&mut body)?,
        }),
        other => {
            return Err(DecodeError::Malformed(format!(
                "unknown response status {other}"
            )))
        }
    };
    if !body.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} bytes after the response",
            body.len()
        )));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    #[test]
    fn responses_round_trip() {
        let samples = [
            Response::Ok(ResponseBody::ServerInfo(ServerInfo {
                domain: Text::new("a.example").unwrap(),
                protocol_version: 2,
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
                        client: ClientId::of("bob@b.example", 1),
                        outcome: crate::protocol::ClaimOutcome::LastResort(vec![7; 9].into()),
                    },
                    crate::protocol::ClaimedKeyPackage {
                        client: ClientId::of("bob@b.example", 2),
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
            Response::Ok(ResponseBody::WhoAmI(ClientId::of("bob@b.example", 1))),
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
            Response::Ok(ResponseBody::TreeHead(Box::new(sample_head()))),
            Response::Ok(ResponseBody::Bindings(Box::new(sample_bindings()))),
            Response::Ok(ResponseBody::Consistency(
                crate::protocol::ConsistencyProof {
                    hashes: vec![[3; 32], [4; 32]],
                },
            )),
            Response::Ok(ResponseBody::History(Box::new(
                crate::protocol::UserHistory {
                    bindings: sample_bindings(),
                    entries: vec![crate::protocol::ProvedEntry {
                        index: 4,
                        entry: sample_entry(),
                        inclusion: vec![[5; 32]],
                    }],
                },
            ))),
            Response::Ok(ResponseBody::LogPage(Box::new(crate::protocol::LogPage {
                head: sample_head(),
                entries: vec![
                    crate::protocol::LogRecord::Entry(sample_entry()),
                    crate::protocol::LogRecord::Redacted(crate::protocol::RedactedEntry {
                        leaf_hash: [1; 32],
                        user_key: [2; 32],
                        bindings_after: [3; 32],
                    }),
                    crate::protocol::LogRecord::Removed(crate::protocol::UserRemoved {
                        user_key: [2; 32],
                    }),
                ],
            }))),
            Response::Error(ErrorResponse::new(
                ErrorCode::NotAuthenticated,
                "log in first",
            )),
        ];
        for response in samples {
            for version in Version::ALL {
                let bytes = encode_response(version, &response).unwrap();
                assert_eq!(&bytes[..2], &version.number().to_be_bytes());
                assert_eq!(decode_response(version, &bytes).unwrap(), response);
                let other = Version::ALL.into_iter().find(|v| *v != version).unwrap();
                assert_eq!(
                    decode_response(other, &bytes),
                    Err(DecodeError::UnsupportedVersion(version.number()))
                );
            }
        }
    }

    fn sample_head() -> crate::protocol::SignedTreeHead {
        crate::protocol::SignedTreeHead {
            head: crate::protocol::TreeHead {
                domain: Text::new("a.example").unwrap(),
                tree_size: 9,
                log_root: [1; 32],
                map_root: [2; 32],
                published_at: 1_700_000_000_000,
                key_id: 1,
            },
            signature: vec![6; 64].into(),
        }
    }

    fn sample_credential() -> ClientCredential {
        ClientCredential {
            content: crate::protocol::ClientCredentialContent {
                client: ClientId::of("alice@a.example", 2),
                signature_key: vec![1; 32].into(),
                ciphersuite: 1,
                not_before: 10,
                not_after: 20,
                issuer_key_id: 1,
            },
            signature: vec![2; 64].into(),
        }
    }

    fn sample_entry() -> crate::protocol::LogEntry {
        crate::protocol::LogEntry {
            change: crate::protocol::BindingChange::Renewed,
            logged_at: 1_700_000_000,
            credential: sample_credential(),
        }
    }

    fn sample_bindings() -> crate::protocol::BindingsProof {
        crate::protocol::BindingsProof {
            head: sample_head(),
            bindings: crate::protocol::UserBindings {
                user_id: Text::new("alice@a.example").unwrap(),
                entries: 2,
                history: [7; 32],
                credentials: vec![sample_credential()],
            },
            proof: crate::protocol::MapProof {
                siblings: vec![[8; 32]],
                end: crate::protocol::MapPathEnd::OtherUser(crate::protocol::MapLeaf {
                    key: [9; 32],
                    value: [10; 32],
                }),
            },
        }
    }

    #[test]
    fn an_error_message_longer_than_the_text_limit_is_cut_not_refused() {
        let long = "é".repeat(crate::protocol::MAX_TEXT_LEN);
        let error = ErrorResponse::new(ErrorCode::Internal, &long);
        assert!(error.message.as_str().len() <= crate::protocol::MAX_TEXT_LEN);
        for version in Version::ALL {
            let bytes = encode_response(version, &Response::Error(error.clone())).unwrap();
            assert_eq!(
                decode_response(version, &bytes).unwrap(),
                Response::Error(error.clone())
            );
        }
    }

    #[test]
    fn roost_2_errors_carry_their_class_and_hint_and_roost_1_errors_keep_their_form() {
        let limited = ErrorResponse::new(ErrorCode::RateLimited, "slow down")
            .retry_after(std::time::Duration::from_millis(1500));
        let v2 = encode_response(Version::V2, &Response::Error(limited.clone())).unwrap();
        // version 2, status error, code 35, class retryable, 1500 ms, the message.
        let mut expected = vec![0, 2, 1, 0, 35, 1, 0, 0, 0x05, 0xdc, 9];
        expected.extend_from_slice(b"slow down");
        assert_eq!(v2, expected);
        let Response::Error(decoded) = decode_response(Version::V2, &v2).unwrap() else {
            panic!("an error")
        };
        assert!(decoded.is_retryable());
        assert_eq!(
            decoded.retry_after_hint(),
            Some(std::time::Duration::from_millis(1500))
        );
        // The same error on roost/1: version 1, status, code, message; no class, no hint.
        let v1 = encode_response(Version::V1, &Response::Error(limited)).unwrap();
        let mut expected = vec![0, 1, 1, 0, 35, 9];
        expected.extend_from_slice(b"slow down");
        assert_eq!(v1, expected);
        let permanent = ErrorResponse::new(ErrorCode::InvalidGroupId, "no");
        let v2 = encode_response(Version::V2, &Response::Error(permanent)).unwrap();
        assert_eq!(&v2[3..6], &[0, 54, 0], "InvalidGroupId is permanent");
        assert_eq!(
            decode_response(Version::V2, &[0, 2, 7]),
            Err(DecodeError::Malformed("unknown response status 7".into()))
        );
    }
}
