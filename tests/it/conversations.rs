//! Conversations that never lose a message and never jam: a message and a commit crossing (in
//! both orders, through queues and group logs, across federation), and a departure followed at
//! once by other members' sends and commits.

use roost::client::groups::{GroupClient, GroupEvent};
use roost::protocol::ClientId;

use crate::federation::{alice_at_a_with_bob_at_b, two_homeservers};
use crate::groups::{groups, receive, registered_with_key_packages};
use crate::support::{within, Device, TestServer};
use crate::trust::alice_and_bob;

/// The application messages among `events`, as (sender, text).
fn messages(events: &[GroupEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|event| match event {
            GroupEvent::Message { sender, text, .. } => Some((
                sender.user_id.to_string(),
                String::from_utf8_lossy(text).into_owned(),
            )),
            _ => None,
        })
        .collect()
}

/// What `client` processed while catching up inside its operations, failing on any error.
fn caught_up(client: &GroupClient<'_>) -> Vec<GroupEvent> {
    client
        .take_caught_up()
        .into_iter()
        .map(|(seq, event)| event.unwrap_or_else(|e| panic!("message {seq}: {e:#}")))
        .collect()
}

/// A group of alice (Admin), bob and carol, everyone joined.
async fn three_members(server: &TestServer) -> (Device, Device, Device, Vec<u8>) {
    let (alice, bob, group_id) = alice_and_bob(server).await;
    let carol = registered_with_key_packages(server, "carol@localhost", 1)
        .await
        .remove(0);
    within(
        groups(server, &alice)
            .await
            .invite(&group_id, "carol@localhost"),
    )
    .await
    .unwrap();
    receive(server, &carol).await;
    receive(server, &bob).await;
    (alice, bob, carol, group_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_just_before_a_commit_is_read_after_it() {
    let server = TestServer::start().await;
    let (alice, bob, group_id) = alice_and_bob(&server).await;
    // Bob's message is queued at epoch 1; alice commits (epoch 2) before she reads it.
    within(groups(&server, &bob).await.send(&group_id, b"hello alice"))
        .await
        .unwrap();
    within(
        groups(&server, &alice)
            .await
            .set_role(&group_id, "bob@localhost", true),
    )
    .await
    .unwrap();
    let events = receive(&server, &alice).await;
    assert_eq!(
        messages(&events),
        [("bob@localhost".to_owned(), "hello alice".to_owned())],
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_reader_that_committed_first_reads_the_message_before_and_its_own_echoes() {
    let server = TestServer::start().await;
    // Alice and bob read the group's log, which holds one copy of what any member sends to
    // them: alice meets her own there too.
    let alice = server.register("alice@localhost").await;
    within(alice.connection.use_group_logs()).await.unwrap();
    let bob = server.register("bob@localhost").await;
    within(bob.connection.use_group_logs()).await.unwrap();
    bob.publish(2, true).await;
    let alices = groups(&server, &alice).await;
    let group_id = within(alices.create_group()).await.unwrap();
    within(alices.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    receive(&server, &bob).await;
    // Bob's message is logged at epoch 1; alice commits before she reads it.
    within(
        groups(&server, &bob)
            .await
            .send(&group_id, b"before the commit"),
    )
    .await
    .unwrap();
    within(alices.commit_pending(&group_id)).await.unwrap();
    within(alices.send(&group_id, b"mine")).await.unwrap();
    let events = receive(&server, &alice).await;
    let own = GroupEvent::OwnMessage {
        group_id: group_id.clone(),
    };
    // Bob's message (of the epoch before her commit), then her commit and her message, which
    // come back as hers: neither errors nor "ignored".
    assert_eq!(
        events,
        [
            GroupEvent::Message {
                group_id: group_id.clone(),
                sender: bob.identity.client.clone(),
                text: b"before the commit".to_vec(),
            },
            own.clone(),
            own,
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_overtaken_by_a_commit_is_encrypted_again_and_delivered() {
    let server = TestServer::start().await;
    let (alice, bob, group_id) = alice_and_bob(&server).await;
    within(groups(&server, &alice).await.commit_pending(&group_id))
        .await
        .unwrap();
    // Bob has not read the commit: his message is for the old epoch, refused, and sent again.
    let bobs = groups(&server, &bob).await;
    within(bobs.send(&group_id, b"late")).await.unwrap();
    assert!(matches!(
        caught_up(&bobs).as_slice(),
        [GroupEvent::Committed { epoch: 2, .. }]
    ));
    let events = receive(&server, &alice).await;
    assert_eq!(
        messages(&events),
        [("bob@localhost".to_owned(), "late".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_overtaken_by_a_commit_across_federation_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_homeservers(dir.path()).await;
    let (alice, bob, group_id) = alice_at_a_with_bob_at_b(&a, &b).await;
    within(alice.groups().await.commit_pending(&group_id))
        .await
        .unwrap();
    let bobs = bob.groups().await;
    within(bobs.send(&group_id, b"from b, late")).await.unwrap();
    assert!(matches!(
        caught_up(&bobs).as_slice(),
        [GroupEvent::Committed { .. }]
    ));
    let events = alice.receive().await;
    assert_eq!(
        messages(&events),
        [("bob@b.example".to_owned(), "from b, late".to_owned())]
    );
    // And the other way: bob's message of the old epoch, read by alice after her own commit.
    within(bob.groups().await.send(&group_id, b"before"))
        .await
        .unwrap();
    within(alice.groups().await.commit_pending(&group_id))
        .await
        .unwrap();
    let events = alice.receive().await;
    assert_eq!(
        messages(&events),
        [("bob@b.example".to_owned(), "before".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_followed_at_once_by_commits_and_sends_of_others_jams_nothing() {
    let server = TestServer::start().await;
    let (alice, bob, carol, group_id) = three_members(&server).await;
    within(groups(&server, &bob).await.leave(&group_id))
        .await
        .unwrap();
    // Alice has not seen the leave: her commit is refused (ProposalsNotCommitted), she catches
    // up and commits again, carrying it.
    let alices = groups(&server, &alice).await;
    within(alices.set_role(&group_id, "carol@localhost", true))
        .await
        .unwrap();
    assert!(
        caught_up(&alices)
            .iter()
            .any(|event| matches!(event, GroupEvent::Proposed { what, .. } if what == "to leave")),
        "alice saw bob's leave on the way"
    );
    let state = within(alice.connection.get_group(&group_id)).await.unwrap();
    let members: Vec<&ClientId> = state.members.iter().map(|member| &member.client).collect();
    assert!(!members.contains(&&bob.identity.client), "{members:?}");
    // Carol, behind by that commit, sends at once: caught up and sent again.
    within(groups(&server, &carol).await.send(&group_id, b"still here"))
        .await
        .unwrap();
    assert_eq!(
        messages(&receive(&server, &alice).await),
        [("carol@localhost".to_owned(), "still here".to_owned())]
    );

    // A second departure, this time seen by carol before she sends: MLS sends nothing over a
    // pending proposal, so her send commits it first and says so.
    let dave = registered_with_key_packages(&server, "dave@localhost", 1)
        .await
        .remove(0);
    within(alices.invite(&group_id, "dave@localhost"))
        .await
        .unwrap();
    receive(&server, &dave).await;
    within(groups(&server, &dave).await.leave(&group_id))
        .await
        .unwrap();
    let events = receive(&server, &carol).await;
    assert!(
        events
            .iter()
            .any(|event| matches!(event, GroupEvent::Proposed { .. })),
        "{events:?}"
    );
    let committed = within(groups(&server, &carol).await.send(&group_id, b"bye dave"))
        .await
        .unwrap();
    assert!(committed.is_some(), "carol committed the leave first");
    let events = receive(&server, &alice).await;
    let committed_at = events
        .iter()
        .position(|event| matches!(event, GroupEvent::Committed { .. }));
    let message_at = events
        .iter()
        .position(|event| matches!(event, GroupEvent::Message { .. }));
    assert!(committed_at < message_at, "{events:?}");
    assert_eq!(
        messages(&events),
        [("carol@localhost".to_owned(), "bye dave".to_owned())]
    );
    let state = within(alice.connection.get_group(&group_id)).await.unwrap();
    assert_eq!(state.members.len(), 2, "alice and carol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_added_after_groups_exist_joins_them_and_receives_the_next_message() {
    let server = TestServer::start().await;
    let (alice, bob, first) = alice_and_bob(&server).await;
    let laptop = groups(&server, &alice).await;
    let second = within(laptop.create_group()).await.unwrap();
    within(laptop.invite(&second, "bob@localhost"))
        .await
        .unwrap();
    receive(&server, &bob).await;

    // Alice's phone, added afterwards, joins both by external commit: one each.
    let phone = server.add_device(&alice).await;
    let phones = groups(&server, &phone).await;
    let joined = within(phones.join_user_groups()).await.unwrap();
    assert!(joined.unreachable_hubs.is_empty());
    let mut joined_ids: Vec<Vec<u8>> = joined
        .groups
        .into_iter()
        .map(|(group_id, outcome)| {
            outcome.unwrap();
            group_id
        })
        .collect();
    joined_ids.sort();
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort();
    assert_eq!(joined_ids, expected);
    // With the user's role (Admin), in the server's view too.
    let state = within(phone.connection.get_group(&first)).await.unwrap();
    let listed = state
        .members
        .iter()
        .find(|member| member.client == phone.identity.client)
        .expect("the phone is a member");
    assert_eq!(listed.role, roost::protocol::Role::Admin);

    // Bob sends to both (catching up with the phone's commits on the way); the phone reads
    // both, and so does the laptop.
    for group_id in [&first, &second] {
        within(groups(&server, &bob).await.send(group_id, b"hi alice"))
            .await
            .unwrap();
    }
    for device in [&phone, &alice] {
        let events = receive(&server, device).await;
        assert_eq!(
            messages(&events),
            [
                ("bob@localhost".to_owned(), "hi alice".to_owned()),
                ("bob@localhost".to_owned(), "hi alice".to_owned())
            ],
            "{events:?}"
        );
    }
    // Nothing left to join.
    assert!(within(phones.join_user_groups())
        .await
        .unwrap()
        .groups
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_lost_its_group_state_resyncs_and_the_group_goes_on() {
    let server = TestServer::start().await;
    let (alice, bob, group_id) = alice_and_bob(&server).await;
    let before = within(alice.connection.get_group(&group_id)).await.unwrap();
    // Bob's state for the group is gone (a wiped device keeps only its identity).
    let bobs = groups(&server, &bob).await;
    bobs.forget(&group_id).unwrap();
    assert!(bob.mls.group(&group_id).unwrap().is_none());
    let epoch = within(bobs.resync(&group_id)).await.unwrap();
    assert_eq!(epoch, before.epoch + 1);
    // One clean change for the others, the same members and roles.
    let events = receive(&server, &alice).await;
    assert_eq!(
        events,
        [GroupEvent::Committed {
            group_id: group_id.clone(),
            epoch
        }]
    );
    let after = within(alice.connection.get_group(&group_id)).await.unwrap();
    let clients = |state: &roost::protocol::GroupState| {
        let mut clients: Vec<(ClientId, roost::protocol::Role)> = state
            .members
            .iter()
            .map(|member| (member.client.clone(), member.role))
            .collect();
        clients.sort_by_key(|(client, _)| client.to_string());
        clients
    };
    assert_eq!(clients(&after), clients(&before));
    within(
        groups(&server, &alice)
            .await
            .send(&group_id, b"welcome back"),
    )
    .await
    .unwrap();
    assert_eq!(
        messages(&receive(&server, &bob).await),
        [("alice@localhost".to_owned(), "welcome back".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_read_a_group_nor_join_it_by_external_commit() {
    use openmls::prelude::{MlsGroup, MlsMessageBodyIn, MlsMessageIn, RatchetTreeIn};
    use openmls_traits::OpenMlsProvider;
    use tls_codec::{Deserialize, Serialize};

    let server = TestServer::start().await;
    let (alice, _bob, group_id) = alice_and_bob(&server).await;
    let mallory = registered_with_key_packages(&server, "mallory@localhost", 1)
        .await
        .remove(0);
    let refused = within(mallory.connection.get_group(&group_id)).await;
    assert_eq!(
        crate::support::code(refused),
        roost::protocol::ErrorCode::NotAMember
    );
    assert!(within(groups(&server, &mallory).await.join_user_groups())
        .await
        .unwrap()
        .groups
        .is_empty());
    // Handed the GroupInfo and tree by a member, her external commit is still refused.
    let state = within(alice.connection.get_group(&group_id)).await.unwrap();
    let MlsMessageBodyIn::GroupInfo(group_info) =
        MlsMessageIn::tls_deserialize_exact(state.group_info.as_slice())
            .unwrap()
            .extract()
    else {
        panic!("not a GroupInfo")
    };
    let provider = mallory.mls.provider();
    let (_, bundle) = MlsGroup::external_commit_builder()
        .with_ratchet_tree(
            RatchetTreeIn::tls_deserialize_exact(state.ratchet_tree.as_slice()).unwrap(),
        )
        .build_group(provider, group_info, mallory.mls.credential().clone())
        .unwrap()
        .leaf_node_parameters(
            openmls::prelude::LeafNodeParameters::builder()
                .with_capabilities(mallory.mls.capabilities())
                .build(),
        )
        .load_psks(provider.storage())
        .unwrap()
        .create_group_info(true)
        .build(
            provider.rand(),
            provider.crypto(),
            mallory.mls.signer(),
            |_| true,
        )
        .unwrap()
        .finalize(provider)
        .unwrap();
    let (commit, _, info) = bundle.into_messages();
    let request = roost::protocol::SendCommitRequest {
        commit: commit.tls_serialize_detached().unwrap().into(),
        welcome: None,
        group_info: info.unwrap().tls_serialize_detached().unwrap().into(),
    };
    let refused = within(mallory.connection.send_commit(request)).await;
    assert_eq!(
        crate::support::code(refused),
        roost::protocol::ErrorCode::Forbidden
    );
    let after = within(alice.connection.get_group(&group_id)).await.unwrap();
    assert_eq!((after.epoch, after.members.len()), (state.epoch, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_joins_its_users_groups_at_another_homeserver() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_homeservers(dir.path()).await;
    let (alice, mut bob, group_id) = alice_at_a_with_bob_at_b(&a, &b).await;
    // Bob's second device, at b.example, finds the group hosted at a.example and joins it
    // through its own homeserver (the listing, the group's state and the commit all relayed).
    let mut tablet = b.second_device(&bob).await;
    let joined = within(tablet.groups().await.join_user_groups())
        .await
        .unwrap();
    assert!(joined.unreachable_hubs.is_empty());
    assert_eq!(joined.groups.len(), 1);
    assert_eq!(joined.groups[0].0, group_id);
    joined.groups.into_iter().for_each(|(_, outcome)| {
        outcome.unwrap();
    });
    within(alice.groups().await.send(&group_id, b"to both of bob's"))
        .await
        .unwrap();
    // Delivered to b.example through the hub's outbox: each device reads as it is told, until
    // the message is there (bob is told of the tablet's joining first).
    for device in [&mut tablet, &mut bob] {
        let mut events = Vec::new();
        while messages(&events).is_empty() {
            events.extend(device.receive_pushed().await);
        }
        assert_eq!(
            messages(&events),
            [("alice@a.example".to_owned(), "to both of bob's".to_owned())],
            "{events:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_is_told_which_hubs_it_could_not_ask_and_joins_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_homeservers(dir.path()).await;
    let (_alice, bob, _at_a) = alice_at_a_with_bob_at_b(&a, &b).await;
    let at_b = within(bob.groups().await.create_group()).await.unwrap();
    within(a.server.shutdown()).await.unwrap();
    // The hub a.example is down: the tablet joins bob's group at b.example, and hears which hub
    // to ask again.
    let tablet = b.second_device(&bob).await;
    let joined = within(tablet.groups().await.join_user_groups())
        .await
        .unwrap();
    assert_eq!(joined.unreachable_hubs, ["a.example"]);
    assert_eq!(joined.groups.len(), 1);
    assert_eq!(joined.groups[0].0, at_b);
    assert!(joined.groups[0].1.is_ok(), "{:?}", joined.groups[0].1);
}
