//! What an attacker gets from what the server remembers: another client's accepted bytes sent
//! again get no answer from the record, a joiner gets no tree from before it came, and a peer
//! can leave no route behind with deliveries for nobody nor be answered for user ids that are
//! not ones. Each test makes the attack, sees the refusal, and checks that nothing changed.

use roost::identity::GROUP_ID_RANDOM_LEN;
use roost::protocol::{
    ClientId, ClientsDepartedRequest, DeliverRequest, DeliveryItem, ErrorCode, FederationRequest,
    GroupRequest, MessageKind, RelayedGroupRequest, SendProposalRequest, Text,
};
use roost::services::ServiceError;
use tls_codec::Serialize;

use crate::federation::{alice_at_a_with_bob_at_b, two_homeservers, FedDevice};
use crate::groups::{groups, receive, registered_with_key_packages};
use crate::support::{code, within, Device, TestServer};
use crate::trust::alice_and_bob;

/// How many messages wait in a device's queue.
async fn queued(device: &Device) -> usize {
    within(device.connection.fetch_messages(0, 100, u32::MAX))
        .await
        .unwrap()
        .messages
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_bytes_of_another_client_get_no_answer_and_change_nothing() {
    let server = TestServer::start().await;
    let (alice, bob, group_id) = alice_and_bob(&server).await;
    let carol = registered_with_key_packages(&server, "carol@localhost", 1)
        .await
        .remove(0);
    let (alice_before, bob_before) = (queued(&alice).await, queued(&bob).await);

    // Alice's message, replayed by a member (bob) and a non-member (carol) within the window.
    let message = {
        let mut group = alice.mls.group(&group_id).unwrap().unwrap();
        alice.mls.encrypt(&mut group, b"alice's").unwrap()
    };
    let accepted = within(alice.connection.send_message(message.clone()))
        .await
        .unwrap();
    let replayed = within(bob.connection.send_message(message.clone())).await;
    assert_eq!(code(replayed), ErrorCode::Forbidden);
    let replayed = within(carol.connection.send_message(message.clone())).await;
    assert_eq!(code(replayed), ErrorCode::NotAMember);
    // Its sender's own retry still gets the first answer.
    let retried = within(alice.connection.send_message(message))
        .await
        .unwrap();
    assert_eq!(retried.accepted_at_ms, accepted.accepted_at_ms);

    // Bob's leave proposal, replayed by alice (a member) and carol.
    let proposal = {
        let mut group = bob.mls.group(&group_id).unwrap().unwrap();
        let proposal = group
            .leave_group(bob.mls.provider(), bob.mls.signer())
            .unwrap();
        SendProposalRequest {
            proposal: proposal.tls_serialize_detached().unwrap().into(),
        }
    };
    within(bob.connection.send_proposal(proposal.clone()))
        .await
        .unwrap();
    let replayed = within(alice.connection.send_proposal(proposal.clone())).await;
    assert_eq!(code(replayed), ErrorCode::Forbidden);
    let replayed = within(carol.connection.send_proposal(proposal.clone())).await;
    assert_eq!(code(replayed), ErrorCode::NotAMember);
    within(bob.connection.send_proposal(proposal))
        .await
        .unwrap();

    // Alice's commit (of bob's leave), replayed by carol, and by bob (who is now out).
    assert_eq!(
        queued(&alice).await,
        alice_before + 1,
        "bob's proposal, once"
    );
    receive(&server, &alice).await;
    let commit = {
        let mut group = alice.mls.group(&group_id).unwrap().unwrap();
        alice.mls.commit(&mut group, &[], &[], None).unwrap()
    };
    let committed = within(alice.connection.send_commit(commit.clone()))
        .await
        .unwrap();
    let replayed = within(carol.connection.send_commit(commit.clone())).await;
    assert_eq!(code(replayed), ErrorCode::NotAMember);
    let replayed = within(bob.connection.send_commit(commit.clone())).await;
    assert_eq!(code(replayed), ErrorCode::NotAMember);
    let retried = within(alice.connection.send_commit(commit)).await.unwrap();
    assert_eq!(retried.epoch, committed.epoch);

    // Nothing was queued twice: bob holds alice's message once and the commit that removed
    // him; alice nothing more; carol nothing; the epoch moved once.
    assert_eq!(queued(&bob).await, bob_before + 2);
    assert_eq!(queued(&alice).await, 0);
    assert_eq!(queued(&carol).await, 0);
    let state = within(alice.connection.get_group(&group_id)).await.unwrap();
    assert_eq!(state.epoch, committed.epoch);
    assert_eq!(state.members.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_gets_the_trees_of_its_own_epoch_and_later_never_earlier() {
    let server = TestServer::start().await;
    let alice = registered_with_key_packages(&server, "alice@localhost", 1).await;
    let bob = registered_with_key_packages(&server, "bob@localhost", 1).await;
    let carol = registered_with_key_packages(&server, "carol@localhost", 1).await;
    let admin = groups(&server, &alice[0]).await;
    let group_id = within(admin.create_group()).await.unwrap();
    // Epoch 1 adds bob (its tree is kept for him), epoch 2 removes him: a member carol never
    // met, whose leaf is in the tree kept for epoch 1.
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    receive(&server, &bob[0]).await;
    within(admin.remove_user(&group_id, "bob@localhost"))
        .await
        .unwrap();
    // Epoch 3 adds carol.
    within(admin.invite(&group_id, "carol@localhost"))
        .await
        .unwrap();
    receive(&server, &carol[0]).await;

    // Alice, a member since the start, may fetch every kept tree; carol only from epoch 3 on.
    within(alice[0].connection.fetch_group_tree(&group_id, 1))
        .await
        .unwrap();
    let before_her = within(carol[0].connection.fetch_group_tree(&group_id, 1)).await;
    assert_eq!(
        before_her.unwrap_err().code(),
        Some(ErrorCode::TreeNotKept),
        "the tree of an epoch before carol joined"
    );
    let hers = within(carol[0].connection.fetch_group_tree(&group_id, 3))
        .await
        .unwrap();
    assert_eq!(
        hers,
        within(alice[0].connection.fetch_group_tree(&group_id, 3))
            .await
            .unwrap()
    );
}

/// A delivery from a.example to b.example for a group it says it hosts.
fn delivery(group_id: &[u8], items: Vec<DeliveryItem>) -> FederationRequest {
    FederationRequest::Deliver(DeliverRequest {
        delivery_id: vec![9; 16].into(),
        group_id: group_id.to_vec().into(),
        items,
    })
}

fn client(user_id: &str) -> ClientId {
    ClientId {
        user_id: Text::new(user_id).unwrap(),
        device_id: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_leaves_no_route_with_empty_deliveries_and_is_refused_malformed_user_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_homeservers(dir.path()).await;
    let (_alice, bob, _group_id) = alice_at_a_with_bob_at_b(&a, &b).await;
    let services = b.server.services();
    let routes = b.server.store().group_routes().await.unwrap();
    assert_eq!(routes.len(), 1);

    // Group ids a.example may claim, each delivered with nothing, or for nobody.
    let invented = |n: u8| {
        let mut id = vec![n; GROUP_ID_RANDOM_LEN];
        id.extend_from_slice(b"a.example");
        id
    };
    let for_nobody = DeliveryItem {
        recipients: Vec::new(),
        kind: MessageKind::ServerNotice,
        payload: vec![0, 3].into(),
    };
    for (n, items) in [(1, Vec::new()), (2, vec![for_nobody])] {
        let refused = services
            .handle_federation("a.example", delivery(&invented(n), items))
            .await;
        assert!(
            matches!(refused, Err(ServiceError::PeerRefused(_))),
            "{refused:?}"
        );
    }
    assert_eq!(b.server.store().group_routes().await.unwrap(), routes);

    // User ids that are not ones: as recipients, relayed senders, departed clients.
    let malformed = ["Bob@b.example", "bob@@b.example", "@a.example", "bob@"];
    for user_id in malformed {
        let item = DeliveryItem {
            recipients: vec![client(user_id)],
            kind: MessageKind::ServerNotice,
            payload: vec![0, 3].into(),
        };
        let refused = services
            .handle_federation("a.example", delivery(&invented(3), vec![item]))
            .await;
        assert!(
            matches!(refused, Err(ServiceError::InvalidUserId(_))),
            "{user_id}: {refused:?}"
        );
    }
    for user_id in ["Alice@a.example", "alice@@a.example", "@a.example"] {
        let relayed = FederationRequest::RelayGroupRequest(RelayedGroupRequest {
            sender: client(user_id),
            request: GroupRequest::ListGroups,
        });
        let refused = a
            .server
            .services()
            .handle_federation("b.example", relayed)
            .await;
        assert!(
            matches!(refused, Err(ServiceError::InvalidUserId(_))),
            "{user_id}: {refused:?}"
        );
        let departed = FederationRequest::ClientsDeparted(ClientsDepartedRequest {
            clients: vec![client(user_id)],
        });
        let refused = b
            .server
            .services()
            .handle_federation("a.example", departed)
            .await;
        assert!(
            matches!(refused, Err(ServiceError::InvalidUserId(_))),
            "{user_id}: {refused:?}"
        );
    }
    // Nothing reached bob's queue, and no route was left.
    assert_eq!(queued_at(&bob).await, 0);
    assert_eq!(b.server.store().group_routes().await.unwrap(), routes);
}

async fn queued_at(device: &FedDevice) -> usize {
    within(device.connection.fetch_messages(0, 100, u32::MAX))
        .await
        .unwrap()
        .messages
        .len()
}
