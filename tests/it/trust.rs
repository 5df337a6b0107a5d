//! Trust: a revoked device loses all authority at once, a member cannot wedge or hijack a group,
//! and nothing acknowledged is lost without the sender being told.

use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, CredentialWithKey, ExtensionType, KeyPackage,
    LeafNodeIndex, LeafNodeParameters,
};
use roost::client::add_client_request;
use roost::client::groups::GroupEvent;
use roost::protocol::{
    close_code, ClientId, ErrorCode, MessageKind, RemoveClientRequest, Request,
    SendProposalRequest, ServerNotice, CHANNEL_BINDING_LEN, ROLES_EXTENSION_TYPE,
};
use roost::services::{Caller, ServiceError};
use roost::store::StoreError;
use tls_codec::{Deserialize, Serialize};

use crate::groups::{groups, receive, registered_with_key_packages};
use crate::support::{code, new_key, within, Device, TestServer, CIPHERSUITE};

/// A group of alice (Admin) and bob (Member), both joined; returns its id.
pub(crate) async fn alice_and_bob(server: &TestServer) -> (Device, Device, Vec<u8>) {
    let alice = registered_with_key_packages(server, "alice@localhost", 1)
        .await
        .remove(0);
    let bob = registered_with_key_packages(server, "bob@localhost", 1)
        .await
        .remove(0);
    let admin = groups(server, &alice).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    let joined = receive(server, &bob).await;
    assert!(joined.contains(&GroupEvent::Joined {
        group_id: group_id.clone()
    }));
    (alice, bob, group_id)
}

async fn epoch(device: &Device, group_id: &[u8]) -> u64 {
    within(device.connection.get_group(group_id))
        .await
        .unwrap()
        .epoch
}

/// The service-level caller a connection authenticated as `client` acts as.
fn caller<'a>(client: &'a ClientId, binding: &'a [u8; CHANNEL_BINDING_LEN]) -> Caller<'a> {
    Caller {
        client: Some(client),
        channel_binding: binding,
        source: roost::rate_limit::Source::of("127.0.0.1".parse().unwrap()),
        version: roost::protocol::Version::LATEST,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_without_a_push_stream_is_closed_and_cannot_take_over() {
    let server = TestServer::start().await;
    let owner = server.register("alice@localhost").await;
    let stolen = server.add_device(&owner).await;
    let stolen_identity = stolen.identity.clone();
    drop(stolen);

    // The thief connects granting the server no unidirectional stream: no push stream.
    let mut config = server.client_config();
    config.accept_push = false;
    let thief = within(roost::client::Connection::connect(&config))
        .await
        .unwrap();
    within(thief.authenticate_without_push(&stolen_identity.client, &stolen_identity.signing_key))
        .await
        .unwrap();
    assert_eq!(
        server
            .server
            .sessions()
            .connections(&stolen_identity.client),
        1,
        "registered at Authenticate, push stream or not"
    );

    within(owner.connection.remove_client(&stolen_identity.client))
        .await
        .unwrap();
    let closed = within(thief.closed()).await;
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, close_code::CLIENT_REMOVED.into())
        }
        other => panic!("expected a CLIENT_REMOVED close, got {other:?}"),
    }
    // The takeover the connection would have allowed: a new device, then the owner's removal.
    let key = new_key();
    let attempt = thief
        .add_client(add_client_request("alice@localhost", &key, CIPHERSUITE))
        .await;
    assert!(attempt.is_err(), "a closed connection acts for nobody");
    let clients = within(owner.connection.list_clients()).await.unwrap();
    assert_eq!(clients.clients.len(), 1, "only the owner's device is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_when_their_client_is_removed_are_refused_where_they_act() {
    let server = TestServer::start().await;
    let alice = registered_with_key_packages(&server, "alice@localhost", 1)
        .await
        .remove(0);
    let bob = registered_with_key_packages(&server, "bob@localhost", 2).await;
    let admin = groups(&server, &alice).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    receive(&server, &bob[1]).await;
    let phone = &bob[1];
    let phone_id = phone.identity.client.clone();
    // Requests the phone prepared while it was still a client.
    let message = {
        let mut group = phone.mls.group(&group_id).unwrap().unwrap();
        phone.mls.encrypt(&mut group, b"late").unwrap()
    };
    let keys = within(phone.connection.domain_keys()).await.unwrap();
    let (_, new_group) = phone.mls.new_group(&keys).unwrap();
    let key_packages = phone.mls.key_packages(1, false).unwrap();

    within(bob[0].connection.remove_client(&phone_id))
        .await
        .unwrap();

    // Each request below authenticated before the removal and reaches the services after it:
    // every one is refused in the transaction that would act, and nothing changes.
    let binding = [0u8; CHANNEL_BINDING_LEN];
    let as_phone = caller(&phone_id, &binding);
    let services = server.server.services();
    let key = new_key();
    let requests = vec![
        Request::AddClient(add_client_request("bob@localhost", &key, CIPHERSUITE)),
        Request::RemoveClient(RemoveClientRequest {
            client: bob[0].identity.client.clone(),
        }),
        Request::DeleteUser,
        Request::PublishKeyPackages(roost::protocol::PublishKeyPackagesRequest {
            key_packages: key_packages.into_iter().map(Into::into).collect(),
        }),
        Request::CreateGroup(new_group),
        Request::SendMessage(message),
        Request::RenewCredential,
        Request::AckMessages(roost::protocol::AckMessagesRequest { up_to_seq: 0 }),
    ];
    for request in requests {
        let operation = request.operation();
        let refused = within(services.handle(&as_phone, request)).await;
        assert!(
            matches!(
                &refused,
                Err(ServiceError::Store(StoreError::ActorRemoved))
                    | Err(ServiceError::UnknownClient)
                    | Err(ServiceError::NotAMember)
            ),
            "{operation:?}: {refused:?}"
        );
    }
    let clients = within(bob[0].connection.list_clients()).await.unwrap();
    assert_eq!(clients.clients.len(), 1);
    assert_eq!(
        clients.clients[0].credential.content.client,
        bob[0].identity.client
    );
    let heard = receive(&server, &alice).await;
    assert!(
        !heard
            .iter()
            .any(|event| matches!(event, GroupEvent::Message { .. })),
        "nothing from the removed phone: {heard:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_proposals_with_bad_or_borrowed_credentials_are_refused_and_the_group_goes_on() {
    let server = TestServer::start().await;
    let (alice, bob, group_id) = alice_and_bob(&server).await;
    let propose_update = |credential: CredentialWithKey| {
        let mut group = bob.mls.group(&group_id).unwrap().unwrap();
        let (proposal, _) = group
            .propose_self_update(
                bob.mls.provider(),
                bob.mls.signer(),
                LeafNodeParameters::builder()
                    .with_credential_with_key(credential)
                    .build(),
            )
            .unwrap();
        SendProposalRequest {
            proposal: proposal.tls_serialize_detached().unwrap().into(),
        }
    };
    let bob_key = bob.mls.credential().signature_key.clone();

    // Garbage in the credential: accepted, it would freeze the group.
    let garbage = propose_update(CredentialWithKey {
        credential: BasicCredential::new(b"garbage".to_vec()).into(),
        signature_key: bob_key.clone(),
    });
    assert_eq!(
        code(within(bob.connection.send_proposal(garbage)).await),
        ErrorCode::InvalidMemberCredential
    );
    // The Admin's genuine credential on bob's leaf: accepted, bob would pass for alice.
    let borrowed = propose_update(CredentialWithKey {
        credential: alice.mls.credential().credential.clone(),
        signature_key: bob_key,
    });
    assert_eq!(
        code(within(bob.connection.send_proposal(borrowed)).await),
        ErrorCode::InvalidMemberCredential
    );

    // Nothing is pending: the Admin commits and the group moves on.
    let before = epoch(&alice, &group_id).await;
    within(groups(&server, &alice).await.commit_pending(&group_id))
        .await
        .unwrap();
    assert_eq!(epoch(&alice, &group_id).await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_that_could_never_be_committed_together_are_refused_on_arrival() {
    let server = TestServer::start().await;
    let (alice, bob, group_id) = alice_and_bob(&server).await;
    let bob_leaf = within(alice.connection.get_group(&group_id))
        .await
        .unwrap()
        .members
        .iter()
        .find(|member| member.client == bob.identity.client)
        .unwrap()
        .leaf_index;

    // Alice proposes bob's removal; bob's own leave is a second Remove of the same leaf.
    let mut admin_group = alice.mls.group(&group_id).unwrap().unwrap();
    let (removal, _) = admin_group
        .propose_remove_member(
            alice.mls.provider(),
            alice.mls.signer(),
            LeafNodeIndex::new(bob_leaf),
        )
        .unwrap();
    within(alice.connection.send_proposal(SendProposalRequest {
        proposal: removal.tls_serialize_detached().unwrap().into(),
    }))
    .await
    .unwrap();
    let leaving = groups(&server, &bob).await.leave(&group_id).await;
    let refused = leaving.expect_err("a second removal of the same leaf");
    assert_eq!(
        refused
            .downcast_ref::<roost::client::ClientError>()
            .and_then(|e| e.code()),
        Some(ErrorCode::ProposalConflict)
    );

    // The group is not wedged: the pending removal commits.
    within(groups(&server, &alice).await.commit_pending(&group_id))
        .await
        .unwrap();
    let state = within(alice.connection.get_group(&group_id)).await.unwrap();
    assert_eq!(state.members.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_its_own_update_pending_can_commit() {
    let server = TestServer::start().await;
    let (alice, bob, group_id) = alice_and_bob(&server).await;
    let mut group = bob.mls.group(&group_id).unwrap().unwrap();
    let (update, _) = group
        .propose_self_update(
            bob.mls.provider(),
            bob.mls.signer(),
            LeafNodeParameters::default(),
        )
        .unwrap();
    within(bob.connection.send_proposal(SendProposalRequest {
        proposal: update.tls_serialize_detached().unwrap().into(),
    }))
    .await
    .unwrap();
    // MLS leaves a committer's own Update out of its commit (its path replaces the leaf); the
    // server must not require it.
    let before = epoch(&alice, &group_id).await;
    within(groups(&server, &bob).await.commit_pending(&group_id))
        .await
        .unwrap();
    assert_eq!(epoch(&alice, &group_id).await, before + 1);
    receive(&server, &alice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_lacking_what_groups_require_are_refused_at_upload() {
    let server = TestServer::start().await;
    let bob = server.register("bob@localhost").await;
    let suite = Ciphersuite::try_from(CIPHERSUITE).unwrap();
    let publish = |key_package: KeyPackage| {
        bob.connection
            .publish_key_packages(vec![key_package.tls_serialize_detached().unwrap()])
    };
    let without_roles = KeyPackage::builder()
        .build(
            suite,
            bob.mls.provider(),
            bob.mls.signer(),
            bob.mls.credential().clone(),
        )
        .unwrap();
    assert_eq!(
        code(within(publish(without_roles.key_package().clone())).await),
        ErrorCode::InvalidKeyPackage
    );
    let roles = Capabilities::builder()
        .extensions(vec![ExtensionType::Unknown(ROLES_EXTENSION_TYPE)])
        .build();
    // A ciphersuite the server supports, but not the one bob's credential was issued for.
    let other_suite = KeyPackage::builder()
        .leaf_node_capabilities(roles)
        .build(
            Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
            bob.mls.provider(),
            bob.mls.signer(),
            bob.mls.credential().clone(),
        )
        .unwrap();
    assert_eq!(
        code(within(publish(other_suite.key_package().clone())).await),
        ErrorCode::KeyPackageCredentialMismatch
    );
    let status = within(bob.connection.key_package_status()).await.unwrap();
    assert_eq!(status.clients[0].remaining, 0, "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_and_welcomes_reach_full_queues_and_beyond_the_reserve_the_commit_is_refused() {
    let server = TestServer::start_with(|config| config.queues.max_messages = 2).await;
    let (alice, bob, group_id) = alice_and_bob(&server).await;
    let carol = registered_with_key_packages(&server, "carol@localhost", 1)
        .await
        .remove(0);
    let admin = groups(&server, &alice).await;
    // Bob's queue fills with application messages; the next one is refused to its sender.
    for text in ["one", "two"] {
        within(admin.send(&group_id, text.as_bytes()))
            .await
            .unwrap();
    }
    let message = {
        let mut group = alice.mls.group(&group_id).unwrap().unwrap();
        alice.mls.encrypt(&mut group, b"three").unwrap()
    };
    let accepted = within(alice.connection.send_message(message))
        .await
        .unwrap();
    assert_eq!(
        accepted.queue_full,
        std::slice::from_ref(&bob.identity.client)
    );

    // A commit still reaches bob, and carol's Welcome reaches her.
    within(admin.invite(&group_id, "carol@localhost"))
        .await
        .unwrap();
    let fetched = within(bob.connection.fetch_messages(0, 100, u32::MAX))
        .await
        .unwrap();
    assert_eq!(fetched.messages.len(), 3, "two messages and the commit");
    let events = receive(&server, &carol).await;
    assert!(events.contains(&GroupEvent::Joined {
        group_id: group_id.clone()
    }));

    // Bob never reads. One more commit fills his reserve (twice the limit); the next is refused,
    // naming him, and the group stays where it was.
    within(admin.commit_pending(&group_id)).await.unwrap();
    let before = epoch(&alice, &group_id).await;
    let refused = admin.commit_pending(&group_id).await.unwrap_err();
    let error = refused
        .downcast_ref::<roost::client::ClientError>()
        .expect("a server refusal");
    assert_eq!(error.code(), Some(ErrorCode::QueueFull));
    assert!(error.to_string().contains("bob@localhost"), "{error}");
    assert_eq!(epoch(&alice, &group_id).await, before);
    receive(&server, &carol).await;

    // Removing the member who never reads is not blocked by his full queue.
    within(admin.remove_user(&group_id, "bob@localhost"))
        .await
        .unwrap();
    assert_eq!(epoch(&alice, &group_id).await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_package_notices_are_coalesced_for_an_offline_client() {
    let server = TestServer::start_with(|config| {
        config.queues.max_messages = 3;
        config.key_packages.low_watermark = 100;
    })
    .await;
    let alice = server.register("alice@localhost").await;
    let bob = server.register("bob@localhost").await;
    bob.publish(10, false).await;
    let bob_identity = bob.identity.clone();
    within(bob.connection.close()).await;
    while server.server.sessions().connections(&bob_identity.client) > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    for _ in 0..10 {
        within(
            alice
                .connection
                .claim_key_packages("bob@localhost", CIPHERSUITE),
        )
        .await
        .unwrap();
    }
    let bob = server.reconnect(&bob_identity).await;
    let fetched = within(bob.connection.fetch_messages(0, 100, u32::MAX))
        .await
        .unwrap();
    assert_eq!(fetched.messages.len(), 1, "one notice of its kind waits");
    assert_eq!(fetched.messages[0].kind, MessageKind::ServerNotice);
    assert!(matches!(
        ServerNotice::tls_deserialize_exact(fetched.messages[0].payload.as_slice()).unwrap(),
        ServerNotice::KeyPackagesLow(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_has_a_retry_class_and_service_errors_agree_with_their_codes() {
    use roost::protocol::Retry;
    for code in ErrorCode::ALL {
        let expected = matches!(
            code,
            ErrorCode::RequestTimeout
                | ErrorCode::ShuttingDown
                | ErrorCode::Internal
                | ErrorCode::RateLimited
                | ErrorCode::QueueFull
                | ErrorCode::PeerUnavailable
        );
        assert_eq!(code.is_retryable(), expected, "{code:?}");
    }
    assert_eq!(ErrorCode::Unknown(9999).retry(), Retry::Later);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_can_be_added_back_and_hears_the_group_again() {
    let server = TestServer::start().await;
    let (alice, bob, group_id) = alice_and_bob(&server).await;
    let admin = groups(&server, &alice).await;
    bob.publish(2, false).await;
    within(admin.remove_user(&group_id, "bob@localhost"))
        .await
        .unwrap();
    let removed = receive(&server, &bob).await;
    assert!(removed.contains(&GroupEvent::Removed {
        group_id: group_id.clone()
    }));
    assert!(
        bob.mls.group(&group_id).unwrap().is_none(),
        "a removed member keeps no state for the group"
    );

    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    within(admin.send(&group_id, b"welcome back"))
        .await
        .unwrap();
    let events = receive(&server, &bob).await;
    assert!(
        events.contains(&GroupEvent::Joined {
            group_id: group_id.clone()
        }),
        "{events:?}"
    );
    assert!(events.iter().any(|event| matches!(
        event,
        GroupEvent::Message { text, .. } if text == b"welcome back"
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_replaces_stale_state_of_a_group_the_device_missed_its_removal_from() {
    let server = TestServer::start().await;
    let (alice, bob, group_id) = alice_and_bob(&server).await;
    let admin = groups(&server, &alice).await;
    bob.publish(2, false).await;
    within(admin.remove_user(&group_id, "bob@localhost"))
        .await
        .unwrap();
    // Bob never sees his removal (acknowledged unread, as if lost): his state is stale.
    let fetched = within(bob.connection.fetch_messages(0, 100, u32::MAX))
        .await
        .unwrap();
    let last = fetched.messages.last().unwrap().seq;
    within(bob.connection.ack_messages(last)).await.unwrap();
    assert!(bob.mls.group(&group_id).unwrap().is_some());

    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    let events = receive(&server, &bob).await;
    assert!(
        events.contains(&GroupEvent::Joined {
            group_id: group_id.clone()
        }),
        "{events:?}"
    );
    within(admin.send(&group_id, b"hello again")).await.unwrap();
    let events = receive(&server, &bob).await;
    assert!(events.iter().any(|event| matches!(
        event,
        GroupEvent::Message { text, .. } if text == b"hello again"
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_proposals_are_reported_with_who_proposes_what() {
    let server = TestServer::start().await;
    let (alice, bob, group_id) = alice_and_bob(&server).await;
    within(groups(&server, &bob).await.leave(&group_id))
        .await
        .unwrap();
    let events = receive(&server, &alice).await;
    assert_eq!(
        events,
        [GroupEvent::Proposed {
            group_id: group_id.clone(),
            by: Some(bob.identity.client.clone()),
            what: "to leave".into(),
        }]
    );
    // Alice's next change (here a plain commit) carries it.
    within(groups(&server, &alice).await.commit_pending(&group_id))
        .await
        .unwrap();
    let state = within(alice.connection.get_group(&group_id)).await.unwrap();
    assert_eq!(state.members.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_can_never_be_processed_is_reported_and_acknowledged_not_hidden() {
    let server = TestServer::start().await;
    let (alice, bob, group_id) = alice_and_bob(&server).await;
    let delivery = roost::services::Delivery {
        recipients: vec![bob.identity.client.clone()],
        kind: MessageKind::Mls,
        payload: b"not an MLS message".to_vec(),
    };
    within(server.server.services().queues().deliver(vec![delivery]))
        .await
        .unwrap();
    within(groups(&server, &alice).await.send(&group_id, b"after"))
        .await
        .unwrap();
    let events = within(groups(&server, &bob).await.receive()).await.unwrap();
    assert_eq!(events.len(), 2);
    assert!(events[0].1.is_err(), "reported: {:?}", events[0]);
    assert!(matches!(
        &events[1].1,
        Ok(GroupEvent::Message { text, .. }) if text == b"after"
    ));
    let left = within(bob.connection.fetch_messages(0, 10, u32::MAX))
        .await
        .unwrap();
    assert!(left.messages.is_empty(), "both acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_commit_or_proposal_is_answered_once_and_queued_once() {
    let server = TestServer::start().await;
    let (alice, bob, group_id) = alice_and_bob(&server).await;

    // The same message twice (its first answer lost, say): one copy, the first answer.
    let message = {
        let mut group = alice.mls.group(&group_id).unwrap().unwrap();
        alice.mls.encrypt(&mut group, b"once").unwrap()
    };
    let first = within(alice.connection.send_message(message.clone()))
        .await
        .unwrap();
    server.clock.advance(5);
    let again = within(alice.connection.send_message(message))
        .await
        .unwrap();
    assert_eq!(again.accepted_at_ms, first.accepted_at_ms);

    // The same commit twice: the second gets the first answer, not WrongEpoch.
    let commit = {
        let mut group = alice.mls.group(&group_id).unwrap().unwrap();
        alice.mls.commit(&mut group, &[], &[], None).unwrap()
    };
    let accepted = within(alice.connection.send_commit(commit.clone()))
        .await
        .unwrap();
    let retried = within(alice.connection.send_commit(commit)).await.unwrap();
    assert_eq!(retried.epoch, accepted.epoch);

    let fetched = within(bob.connection.fetch_messages(0, 100, u32::MAX))
        .await
        .unwrap();
    assert_eq!(
        fetched.messages.len(),
        2,
        "one message and one commit: {:?}",
        fetched.messages.iter().map(|m| m.seq).collect::<Vec<_>>()
    );
}
