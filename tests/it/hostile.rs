//! Hostile input, table-driven: every operation that needs an authenticated connection, sent
//! without one, is refused with `NotAuthenticated` and changes nothing; and each operation
//! answers the errors its spec section names, each with its own code.

use roost::protocol::{
    AckMessagesRequest, AddClientRequest, ClaimKeyPackagesRequest, ClientId, CreateGroupRequest,
    DeleteGroupRequest, ErrorCode, FetchMessagesRequest, GetDomainKeysRequest, GetGroupRequest,
    LookupUserRequest, PublishKeyPackagesRequest, RemoveClientRequest, Request, SendCommitRequest,
    SendMessageRequest, SendProposalRequest, Text,
};

use crate::support::{code, within, TestServer, CIPHERSUITE};

/// One well-formed request of every operation that needs authentication.
fn authenticated_operations() -> Vec<Request> {
    let text = |s: &str| Text::new(s).unwrap();
    let bob = ClientId {
        user_id: text("bob@localhost"),
        device_id: 1,
    };
    vec![
        Request::WhoAmI,
        Request::AddClient(AddClientRequest {
            signature_key: vec![1; 32].into(),
            ciphersuite: 1,
            proof: vec![2; 64].into(),
        }),
        Request::ListClients,
        Request::RemoveClient(RemoveClientRequest { client: bob }),
        Request::RenewCredential,
        Request::LookupUser(LookupUserRequest {
            user_id: text("bob@localhost"),
        }),
        Request::DeleteUser,
        Request::PublishKeyPackages(PublishKeyPackagesRequest {
            key_packages: vec![vec![0; 8].into()],
        }),
        Request::ClaimKeyPackages(ClaimKeyPackagesRequest {
            user_id: text("bob@localhost"),
            ciphersuite: 1,
        }),
        Request::KeyPackageStatus,
        Request::FetchMessages(FetchMessagesRequest {
            from_seq: 0,
            max_count: 10,
            max_bytes: 1024,
        }),
        Request::AckMessages(AckMessagesRequest { up_to_seq: 1 }),
        Request::UseGroupLogs,
        Request::ListGroupLogs,
        Request::FetchGroupLog(roost::protocol::FetchGroupLogRequest {
            group_id: vec![1; 20].into(),
            from_gseq: 0,
            max_count: 10,
            max_bytes: 1024,
        }),
        Request::AckGroupLog(roost::protocol::AckGroupLogRequest {
            group_id: vec![1; 20].into(),
            up_to_gseq: 1,
        }),
        Request::FetchGroupTree(roost::protocol::FetchGroupTreeRequest {
            group_id: vec![1; 20].into(),
            epoch: 1,
            offset: 0,
        }),
        Request::CreateGroup(CreateGroupRequest {
            group_info: vec![0; 4].into(),
            ratchet_tree: vec![0; 4].into(),
        }),
        Request::SendCommit(SendCommitRequest {
            commit: vec![0; 4].into(),
            welcome: None,
            group_info: vec![0; 4].into(),
        }),
        Request::SendMessage(SendMessageRequest {
            message: vec![0; 4].into(),
        }),
        Request::GetGroup(GetGroupRequest {
            group_id: vec![0; 4].into(),
        }),
        Request::ListGroups,
        Request::SendProposal(SendProposalRequest {
            proposal: vec![0; 4].into(),
        }),
        Request::DeleteGroup(DeleteGroupRequest {
            group_id: vec![0; 4].into(),
        }),
        Request::GetDomainKeys(GetDomainKeysRequest {
            domain: text("localhost"),
        }),
        Request::AddPushTarget(roost::protocol::AddPushTargetRequest {
            target: roost::protocol::PushTarget::WebPush(roost::protocol::WebPushSubscription {
                endpoint: text("https://push.example.net/push"),
                p256dh: vec![4; 65].into(),
                auth: vec![1; 16].into(),
            }),
        }),
        Request::ListPushTargets,
        Request::RemovePushTarget(roost::protocol::RemovePushTargetRequest { target_id: 1 }),
        Request::ListUserGroups,
        Request::GetTreeHead(roost::protocol::GetTreeHeadRequest {
            domain: text("localhost"),
        }),
        Request::ProveBindings(roost::protocol::ProveBindingsRequest {
            user_id: text("bob@localhost"),
        }),
        Request::ProveConsistency(roost::protocol::ProveConsistencyRequest {
            domain: text("localhost"),
            old_size: 0,
            new_size: 1,
        }),
        Request::FetchHistory(roost::protocol::FetchHistoryRequest {
            user_id: text("bob@localhost"),
            from: 0,
        }),
        Request::FetchLogEntries(roost::protocol::FetchLogEntriesRequest {
            start: 0,
            count: 10,
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authenticated_operation_is_refused_without_authentication() {
    let server = TestServer::start().await;
    let bob = server.register("bob@localhost").await;
    bob.publish(2, false).await;
    let anonymous = server.connect().await;
    let operations = authenticated_operations();
    // Every operation code that needs authentication is in the table.
    let covered: std::collections::BTreeSet<u16> =
        operations.iter().map(|r| r.operation() as u16).collect();
    for code_point in 1..=64u16 {
        if let Some(operation) = roost::protocol::Operation::from_u16(code_point) {
            assert_eq!(
                covered.contains(&code_point),
                operation.requires_authentication(),
                "{operation:?} is not in the table"
            );
        }
    }
    for request in operations {
        let operation = request.operation();
        assert_eq!(
            code(within(anonymous.request(&request)).await),
            ErrorCode::NotAuthenticated,
            "{operation:?}"
        );
    }
    // Nothing changed for bob.
    let status = within(bob.connection.key_package_status()).await.unwrap();
    assert_eq!(status.clients[0].remaining, 2);
    assert_eq!(
        within(bob.connection.list_clients())
            .await
            .unwrap()
            .clients
            .len(),
        1
    );
}

/// A request and the code its spec section names for it.
struct Case {
    name: &'static str,
    request: Request,
    expected: ErrorCode,
}

/// A RegisterUser request for `user_id` with `key`, signed over the wrong content when
/// `bad_proof`.
fn register_request(user_id: &str, key: &ed25519_dalek::SigningKey, ciphersuite: u16) -> Request {
    Request::RegisterUser(roost::protocol::RegisterUserRequest {
        user_id: Text::new(user_id).unwrap(),
        signature_key: key.verifying_key().to_bytes().to_vec().into(),
        ciphersuite,
        invite: None,
        // Not over this connection's binding: only the cases that fail earlier reach no further.
        proof: vec![0; 64].into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operation_answers_each_error_its_spec_section_names() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let bob = server.register("bob@localhost").await;
    bob.publish(1, false).await;
    let text = |s: &str| Text::new(s).unwrap();
    let taken_key = alice.identity.signing_key.clone();
    let fresh = crate::support::new_key();
    let alice_id = alice.identity.client.clone();
    let bob_id = bob.identity.client.clone();
    let garbage = || -> tls_codec::VLBytes { vec![0, 1, 0, 9, 9].into() };
    let cases = vec![
        // accounts.md
        Case {
            name: "RegisterUser, bad grammar",
            request: register_request("Not A User", &fresh, CIPHERSUITE),
            expected: ErrorCode::InvalidUserId,
        },
        Case {
            name: "RegisterUser, other domain",
            request: register_request("carol@elsewhere.example", &fresh, CIPHERSUITE),
            expected: ErrorCode::WrongDomain,
        },
        Case {
            name: "RegisterUser, unsupported ciphersuite",
            request: register_request("carol@localhost", &fresh, 0x7777),
            expected: ErrorCode::UnsupportedCiphersuite,
        },
        Case {
            name: "RegisterUser, bad proof",
            request: register_request("carol@localhost", &fresh, CIPHERSUITE),
            expected: ErrorCode::InvalidProof,
        },
        Case {
            name: "RegisterUser, not a key",
            request: Request::RegisterUser(roost::protocol::RegisterUserRequest {
                user_id: text("carol@localhost"),
                signature_key: vec![1; 5].into(),
                ciphersuite: CIPHERSUITE,
                invite: None,
                proof: vec![0; 64].into(),
            }),
            expected: ErrorCode::InvalidKey,
        },
        Case {
            name: "AddClient, bad proof",
            request: Request::AddClient(AddClientRequest {
                signature_key: fresh.verifying_key().to_bytes().to_vec().into(),
                ciphersuite: CIPHERSUITE,
                proof: vec![0; 64].into(),
            }),
            expected: ErrorCode::InvalidProof,
        },
        Case {
            name: "AddClient, key in use",
            request: Request::AddClient(roost::client::add_client_request(
                "alice@localhost",
                &taken_key,
                CIPHERSUITE,
            )),
            expected: ErrorCode::KeyInUse,
        },
        Case {
            name: "RemoveClient, unknown",
            request: Request::RemoveClient(RemoveClientRequest {
                client: ClientId {
                    user_id: text("alice@localhost"),
                    device_id: 99,
                },
            }),
            expected: ErrorCode::UnknownClient,
        },
        Case {
            name: "RemoveClient, last",
            request: Request::RemoveClient(RemoveClientRequest {
                client: alice_id.clone(),
            }),
            expected: ErrorCode::LastClient,
        },
        Case {
            name: "RemoveClient, another user's",
            request: Request::RemoveClient(RemoveClientRequest { client: bob_id }),
            expected: ErrorCode::Forbidden,
        },
        Case {
            name: "LookupUser, bad grammar",
            request: Request::LookupUser(LookupUserRequest {
                user_id: text("nobody"),
            }),
            expected: ErrorCode::InvalidUserId,
        },
        Case {
            name: "LookupUser, unknown",
            request: Request::LookupUser(LookupUserRequest {
                user_id: text("nobody@localhost"),
            }),
            expected: ErrorCode::UnknownUser,
        },
        Case {
            name: "LookupUser, unknown domain",
            request: Request::LookupUser(LookupUserRequest {
                user_id: text("x@elsewhere.example"),
            }),
            expected: ErrorCode::UnknownDomain,
        },
        // keypackages.md
        Case {
            name: "PublishKeyPackages, garbage",
            request: Request::PublishKeyPackages(PublishKeyPackagesRequest {
                key_packages: vec![garbage()],
            }),
            expected: ErrorCode::InvalidKeyPackage,
        },
        Case {
            name: "ClaimKeyPackages, unknown user",
            request: Request::ClaimKeyPackages(ClaimKeyPackagesRequest {
                user_id: text("nobody@localhost"),
                ciphersuite: CIPHERSUITE,
            }),
            expected: ErrorCode::UnknownUser,
        },
        Case {
            name: "ClaimKeyPackages, unsupported ciphersuite",
            request: Request::ClaimKeyPackages(ClaimKeyPackagesRequest {
                user_id: text("bob@localhost"),
                ciphersuite: 0x7777,
            }),
            expected: ErrorCode::UnsupportedCiphersuite,
        },
        // queues.md
        Case {
            name: "AckMessages, unassigned",
            request: Request::AckMessages(AckMessagesRequest { up_to_seq: 1_000 }),
            expected: ErrorCode::InvalidSequence,
        },
        // groups.md
        Case {
            name: "CreateGroup, garbage",
            request: Request::CreateGroup(CreateGroupRequest {
                group_info: garbage(),
                ratchet_tree: garbage(),
            }),
            expected: ErrorCode::InvalidMlsMessage,
        },
        Case {
            name: "SendCommit, garbage",
            request: Request::SendCommit(SendCommitRequest {
                commit: garbage(),
                welcome: None,
                group_info: garbage(),
            }),
            expected: ErrorCode::InvalidMlsMessage,
        },
        Case {
            name: "SendMessage, garbage",
            request: Request::SendMessage(SendMessageRequest { message: garbage() }),
            expected: ErrorCode::InvalidMlsMessage,
        },
        Case {
            name: "SendProposal, garbage",
            request: Request::SendProposal(SendProposalRequest {
                proposal: garbage(),
            }),
            expected: ErrorCode::InvalidMlsMessage,
        },
        Case {
            name: "GetGroup, unknown",
            request: Request::GetGroup(GetGroupRequest {
                group_id: vec![7; 20].into(),
            }),
            expected: ErrorCode::UnknownGroup,
        },
        Case {
            name: "DeleteGroup, unknown",
            request: Request::DeleteGroup(DeleteGroupRequest {
                group_id: vec![7; 20].into(),
            }),
            expected: ErrorCode::UnknownGroup,
        },
        // federation.md
        Case {
            name: "GetDomainKeys, not a peer",
            request: Request::GetDomainKeys(GetDomainKeysRequest {
                domain: text("elsewhere.example"),
            }),
            expected: ErrorCode::UnknownDomain,
        },
        // authentication.md
        Case {
            name: "Authenticate, already",
            request: Request::Authenticate(roost::transport::auth::sign_authentication(
                &alice.identity.signing_key,
                &alice.connection.channel_binding().unwrap(),
                &alice_id,
            )),
            expected: ErrorCode::AlreadyAuthenticated,
        },
    ];
    for case in cases {
        let answer = within(alice.connection.request(&case.request)).await;
        assert_eq!(code(answer), case.expected, "{}", case.name);
    }
    // Before authentication: a wrong signature is told apart from nothing.
    let anonymous = server.connect().await;
    let forged = roost::transport::auth::sign_authentication(
        &fresh,
        &anonymous.channel_binding().unwrap(),
        &alice.identity.client,
    );
    assert_eq!(
        code(within(anonymous.request(&Request::Authenticate(forged))).await),
        ErrorCode::AuthenticationFailed
    );
    // Nothing of it changed alice's account.
    assert_eq!(
        within(alice.connection.list_clients())
            .await
            .unwrap()
            .clients
            .len(),
        1
    );
}
