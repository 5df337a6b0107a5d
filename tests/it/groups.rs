//! Groups: real openmls clients against a real server.

use roost::client::groups::{GroupClient, GroupEvent};
use roost::clock::Clock;
use roost::protocol::{ClientId, ErrorCode, Role, SendCommitRequest};

use crate::support::{within, Device, TestServer};

pub(crate) async fn groups<'a>(server: &TestServer, device: &'a Device) -> GroupClient<'a> {
    GroupClient::new(
        &device.connection,
        &device.mls,
        within(device.connection.domain_keys()).await.unwrap(),
        server.clock.now(),
    )
}

/// Processes a device's queue; returns what happened, failing the test on any processing error.
pub(crate) async fn receive(server: &TestServer, device: &Device) -> Vec<GroupEvent> {
    let client = groups(server, device).await;
    within(client.receive())
        .await
        .unwrap()
        .into_iter()
        .map(|(seq, event)| event.unwrap_or_else(|e| panic!("message {seq}: {e:#}")))
        .collect()
}

pub(crate) async fn registered_with_key_packages(
    server: &TestServer,
    user: &str,
    devices: usize,
) -> Vec<Device> {
    let first = server.register(user).await;
    first.publish(5, true).await;
    let mut all = vec![first];
    for _ in 1..devices {
        let device = server.add_device(&all[0]).await;
        device.publish(5, true).await;
        all.push(device);
    }
    all
}

/// How many commits to `epoch` `client` processed while catching up inside its operations.
pub(crate) fn caught_up_with_epoch(client: &GroupClient<'_>, epoch: u64) -> usize {
    client
        .take_caught_up()
        .into_iter()
        .filter(
            |(_, event)| matches!(event, Ok(GroupEvent::Committed { epoch: e, .. }) if *e == epoch),
        )
        .count()
}

fn messages(events: &[GroupEvent]) -> Vec<(ClientId, String)> {
    events
        .iter()
        .filter_map(|event| match event {
            GroupEvent::Message { sender, text, .. } => {
                Some((sender.clone(), String::from_utf8(text.clone()).unwrap()))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_with_two_devices_each_hold_a_conversation() {
    let server = TestServer::start().await;
    let alice = registered_with_key_packages(&server, "alice@localhost", 2).await;
    let bob = registered_with_key_packages(&server, "bob@localhost", 2).await;
    let carol = registered_with_key_packages(&server, "carol@localhost", 2).await;

    let admin = groups(&server, &alice[0]).await;
    let group_id = within(admin.create_group()).await.unwrap();
    for user in ["alice@localhost", "bob@localhost", "carol@localhost"] {
        within(admin.invite(&group_id, user)).await.unwrap();
    }
    // Everyone else joins from their Welcome and applies the commits that follow it.
    for device in alice[1..].iter().chain(&bob).chain(&carol) {
        let events = receive(&server, device).await;
        assert!(
            events.contains(&GroupEvent::Joined {
                group_id: group_id.clone()
            }),
            "{} did not join: {events:?}",
            device.identity.client
        );
    }
    let state = within(alice[0].connection.get_group(&group_id))
        .await
        .unwrap();
    assert_eq!(state.members.len(), 6);
    assert_eq!(state.epoch, 3);
    for member in &state.members {
        let expected = if member.client.user_id.as_str() == "alice@localhost" {
            Role::Admin
        } else {
            Role::Member
        };
        assert_eq!(member.role, expected, "{}", member.client);
    }

    // Every device speaks once; every other device hears each exactly once.
    let everyone: Vec<&Device> = alice.iter().chain(&bob).chain(&carol).collect();
    for speaker in &everyone {
        let text = format!("hello from {}", speaker.identity.client);
        within(
            groups(&server, speaker)
                .await
                .send(&group_id, text.as_bytes()),
        )
        .await
        .unwrap();
    }
    for listener in &everyone {
        let mut heard = messages(&receive(&server, listener).await);
        heard.sort();
        let mut expected: Vec<_> = everyone
            .iter()
            .filter(|speaker| speaker.identity.client != listener.identity.client)
            .map(|speaker| {
                let client = speaker.identity.client.clone();
                let text = format!("hello from {client}");
                (client, text)
            })
            .collect();
        expected.sort();
        assert_eq!(heard, expected, "{}", listener.identity.client);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_commits_for_one_epoch_the_first_wins_and_the_other_retries() {
    let server = TestServer::start().await;
    let alice = registered_with_key_packages(&server, "alice@localhost", 2).await;
    let _dave = registered_with_key_packages(&server, "dave@localhost", 1).await;
    let _erin = registered_with_key_packages(&server, "erin@localhost", 1).await;
    let laptop = groups(&server, &alice[0]).await;
    let group_id = within(laptop.create_group()).await.unwrap();
    within(laptop.invite(&group_id, "alice@localhost"))
        .await
        .unwrap();
    let phone = groups(&server, &alice[1]).await;
    receive(&server, &alice[1]).await;

    // Both devices (Admins: the role is the user's) commit at the same epoch: the server takes
    // one; the other is refused (WrongEpoch), catches up from its queue and commits again.
    let (first, second) = tokio::join!(
        laptop.invite(&group_id, "dave@localhost"),
        phone.invite(&group_id, "erin@localhost")
    );
    first.unwrap();
    second.unwrap();
    assert_eq!(
        caught_up_with_epoch(&laptop, 2) + caught_up_with_epoch(&phone, 2),
        1,
        "exactly one lost the race and caught up with the winner's commit"
    );
    let state = within(alice[0].connection.get_group(&group_id))
        .await
        .unwrap();
    assert_eq!(state.members.len(), 4);
    assert_eq!(state.epoch, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_cannot_add_non_members_cannot_send_and_forgeries_change_nothing() {
    let server = TestServer::start().await;
    let alice = registered_with_key_packages(&server, "alice@localhost", 1).await;
    let bob = registered_with_key_packages(&server, "bob@localhost", 1).await;
    let dave = registered_with_key_packages(&server, "dave@localhost", 1).await;
    let admin = groups(&server, &alice[0]).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    receive(&server, &bob[0]).await;

    // A Member's Add is refused.
    let member = groups(&server, &bob[0]).await;
    let refused = within(member.invite(&group_id, "dave@localhost"))
        .await
        .unwrap_err();
    assert_eq!(code(&refused), Some(ErrorCode::NotAnAdmin));

    // A non-member cannot send, even a genuine message of the group.
    let mut group = alice[0].mls.group(&group_id).unwrap().unwrap();
    let genuine = alice[0]
        .mls
        .encrypt(&mut group, b"for members only")
        .unwrap();
    let error = within(dave[0].connection.send_message(genuine.clone()))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotAMember));

    // Forged commits: alice's commit sent by bob; a broken signature; a GroupInfo that does not
    // match. None changes the group.
    let mut group = alice[0].mls.group(&group_id).unwrap().unwrap();
    let claimed = within(alice[0].connection.claim_key_packages("dave@localhost", 1))
        .await
        .unwrap();
    let key_package = match &claimed.claims[0].outcome {
        roost::protocol::ClaimOutcome::KeyPackage(bytes) => {
            use tls_codec::Deserialize;
            openmls::prelude::KeyPackageIn::tls_deserialize_exact(bytes.as_slice())
                .unwrap()
                .validate(
                    &openmls_rust_crypto::RustCrypto::default(),
                    openmls::prelude::ProtocolVersion::Mls10,
                )
                .unwrap()
        }
        other => panic!("no KeyPackage: {other:?}"),
    };
    let commit = alice[0]
        .mls
        .add_members(&mut group, &[key_package])
        .unwrap();
    let epoch_before = within(alice[0].connection.get_group(&group_id))
        .await
        .unwrap()
        .epoch;

    let error = within(bob[0].connection.send_commit(commit.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(ErrorCode::Forbidden),
        "sent by another member"
    );
    // (Not the last bytes: those are the membership tag, which only members can check.)
    let mut broken = commit.clone();
    let mut bytes = broken.commit.as_slice().to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    broken.commit = bytes.into();
    let error = within(alice[0].connection.send_commit(broken))
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(ErrorCode::InvalidMlsMessage),
        "broken signature"
    );
    let stale_info = SendCommitRequest {
        group_info: within(alice[0].connection.get_group(&group_id))
            .await
            .unwrap()
            .group_info,
        ..commit.clone()
    };
    let error = within(alice[0].connection.send_commit(stale_info))
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(ErrorCode::GroupInfoMismatch),
        "a GroupInfo of the old epoch"
    );
    // The GroupInfo ends with `uint32 signer` and the Ed25519 signature (64 bytes after a
    // two-byte length): another signer, or a broken signature, is refused.
    for (what, from_end) in [("another signer", 67), ("a broken signature", 1)] {
        let mut bytes = commit.group_info.as_slice().to_vec();
        let at = bytes.len() - from_end;
        bytes[at] ^= 1;
        let tampered = SendCommitRequest {
            group_info: bytes.into(),
            ..commit.clone()
        };
        let error = within(alice[0].connection.send_commit(tampered))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::GroupInfoMismatch), "{what}");
    }
    let no_welcome = SendCommitRequest {
        welcome: None,
        ..commit.clone()
    };
    let error = within(alice[0].connection.send_commit(no_welcome))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::WelcomeMismatch));
    assert_eq!(
        within(alice[0].connection.get_group(&group_id))
            .await
            .unwrap()
            .epoch,
        epoch_before,
        "a refused commit changed the group"
    );
    // The genuine commit still goes through.
    within(alice[0].connection.send_commit(commit))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_state_survives_a_restart() {
    let server = TestServer::start().await;
    let alice = registered_with_key_packages(&server, "alice@localhost", 1).await;
    let bob = registered_with_key_packages(&server, "bob@localhost", 1).await;
    let group_id = {
        let admin = groups(&server, &alice[0]).await;
        let group_id = within(admin.create_group()).await.unwrap();
        within(admin.invite(&group_id, "bob@localhost"))
            .await
            .unwrap();
        group_id
    };
    receive(&server, &bob[0]).await;
    let (alice_mls, bob_mls) = (
        alice[0].mls.snapshot().unwrap(),
        bob[0].mls.snapshot().unwrap(),
    );
    let (alice_identity, bob_identity) = (alice[0].identity.clone(), bob[0].identity.clone());
    drop((alice, bob));

    let server = server.restart().await;
    let mut alice = server.reconnect(&alice_identity).await;
    alice.mls = alice_mls;
    let mut bob = server.reconnect(&bob_identity).await;
    bob.mls = bob_mls;
    within(groups(&server, &alice).await.send(&group_id, b"still here"))
        .await
        .unwrap();
    assert_eq!(
        messages(&receive(&server, &bob).await),
        [(alice_identity.client.clone(), "still here".to_owned())]
    );
}

fn code(error: &anyhow::Error) -> Option<ErrorCode> {
    error
        .downcast_ref::<roost::client::ClientError>()
        .and_then(roost::client::ClientError::code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_leave_admins_remove_and_the_last_admin_stays() {
    let server = TestServer::start().await;
    let alice = registered_with_key_packages(&server, "alice@localhost", 1).await;
    let bob = registered_with_key_packages(&server, "bob@localhost", 1).await;
    let carol = registered_with_key_packages(&server, "carol@localhost", 1).await;
    let admin = groups(&server, &alice[0]).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    within(admin.invite(&group_id, "carol@localhost"))
        .await
        .unwrap();
    receive(&server, &bob[0]).await;
    receive(&server, &carol[0]).await;

    // A Member cannot remove someone else; the last Admin cannot leave.
    let carol_groups = groups(&server, &carol[0]).await;
    let refused = within(carol_groups.remove_user(&group_id, "alice@localhost"))
        .await
        .unwrap_err();
    assert_eq!(code(&refused), Some(ErrorCode::NotAnAdmin));
    let refused = within(admin.leave(&group_id)).await.unwrap_err();
    assert_eq!(code(&refused), Some(ErrorCode::LastAdmin));

    // Bob leaves: from now on he gets none of the group's messages.
    within(groups(&server, &bob[0]).await.leave(&group_id))
        .await
        .unwrap();
    let error = within(bob[0].connection.get_group(&group_id))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotAMember));

    // Alice (who has not even seen the proposal yet) talks: bob does not get it.
    within(admin.send(&group_id, b"bob is gone")).await.unwrap();
    assert!(messages(&receive(&server, &bob[0]).await).is_empty());

    // A commit that leaves his proposal out is refused; one that includes it goes through.
    receive(&server, &carol[0]).await; // carol now holds bob's proposal
    let mut carol_group = carol[0].mls.group(&group_id).unwrap().unwrap();
    let bundle = carol_group
        .commit_builder()
        .consume_proposal_store(false)
        .load_psks(openmls_traits::OpenMlsProvider::storage(
            carol[0].mls.provider(),
        ))
        .unwrap()
        .create_group_info(true)
        .build(
            openmls_traits::OpenMlsProvider::rand(carol[0].mls.provider()),
            openmls_traits::OpenMlsProvider::crypto(carol[0].mls.provider()),
            carol[0].mls.signer(),
            |_| true,
        )
        .unwrap()
        .stage_commit(carol[0].mls.provider())
        .unwrap();
    let (commit, _, group_info) = bundle.into_messages();
    use tls_codec::Serialize;
    let ignoring = SendCommitRequest {
        commit: commit.tls_serialize_detached().unwrap().into(),
        welcome: None,
        group_info: group_info.unwrap().tls_serialize_detached().unwrap().into(),
    };
    let error = within(carol[0].connection.send_commit(ignoring))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::ProposalsNotCommitted));
    carol_group
        .clear_pending_commit(openmls_traits::OpenMlsProvider::storage(
            carol[0].mls.provider(),
        ))
        .unwrap();
    // Any member (carol is only a Member) completes bob's leaving.
    within(carol_groups.commit_pending(&group_id))
        .await
        .unwrap();
    assert!(receive(&server, &bob[0])
        .await
        .contains(&GroupEvent::Removed {
            group_id: group_id.clone()
        }));
    receive(&server, &alice[0]).await;

    // The Admin removes carol; carol learns it from the commit.
    within(admin.remove_user(&group_id, "carol@localhost"))
        .await
        .unwrap();
    assert!(receive(&server, &carol[0])
        .await
        .contains(&GroupEvent::Removed {
            group_id: group_id.clone()
        }));
    let state = within(alice[0].connection.get_group(&group_id))
        .await
        .unwrap();
    let members: Vec<_> = state.members.iter().map(|m| m.client.to_string()).collect();
    assert_eq!(members, ["alice@localhost/1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_deletes_a_group_and_its_members_are_told() {
    let server = TestServer::start().await;
    let alice = registered_with_key_packages(&server, "alice@localhost", 1).await;
    let bob = registered_with_key_packages(&server, "bob@localhost", 1).await;
    let admin = groups(&server, &alice[0]).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    receive(&server, &bob[0]).await;

    let refused = within(groups(&server, &bob[0]).await.delete_group(&group_id))
        .await
        .unwrap_err();
    assert_eq!(code(&refused), Some(ErrorCode::NotAnAdmin));
    within(admin.delete_group(&group_id)).await.unwrap();
    assert_eq!(
        receive(&server, &bob[0]).await,
        [GroupEvent::Deleted {
            group_id: group_id.clone(),
            by: alice[0].identity.client.clone()
        }]
    );
    assert!(
        bob[0].mls.group(&group_id).unwrap().is_none(),
        "bob forgot the group"
    );
    let error = within(alice[0].connection.get_group(&group_id))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::UnknownGroup));
    assert!(within(bob[0].connection.list_groups())
        .await
        .unwrap()
        .groups
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_change_by_commit_and_a_promoted_member_can_add() {
    let server = TestServer::start().await;
    let alice = registered_with_key_packages(&server, "alice@localhost", 1).await;
    let bob = registered_with_key_packages(&server, "bob@localhost", 1).await;
    let _dave = registered_with_key_packages(&server, "dave@localhost", 1).await;
    let admin = groups(&server, &alice[0]).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    receive(&server, &bob[0]).await;
    let member = groups(&server, &bob[0]).await;

    // A Member can neither add nor change roles.
    let refused = within(member.invite(&group_id, "dave@localhost"))
        .await
        .unwrap_err();
    assert_eq!(code(&refused), Some(ErrorCode::NotAnAdmin));
    let refused = within(member.set_role(&group_id, "bob@localhost", true))
        .await
        .unwrap_err();
    assert_eq!(code(&refused), Some(ErrorCode::NotAnAdmin), "{refused:#}");

    // Promoted, bob adds dave; everyone sees the roles in the group context.
    within(admin.set_role(&group_id, "bob@localhost", true))
        .await
        .unwrap();
    receive(&server, &bob[0]).await;
    assert!(member.roles(&group_id).unwrap().is_admin("bob@localhost"));
    within(member.invite(&group_id, "dave@localhost"))
        .await
        .unwrap();
    let state = within(alice[0].connection.get_group(&group_id))
        .await
        .unwrap();
    let roles: Vec<_> = state
        .members
        .iter()
        .map(|m| (m.client.user_id.to_string(), m.role))
        .collect();
    assert_eq!(
        roles,
        [
            ("alice@localhost".to_owned(), Role::Admin),
            ("bob@localhost".to_owned(), Role::Admin),
            ("dave@localhost".to_owned(), Role::Member)
        ]
    );

    // Demotions: fine while another Admin remains; the last one cannot go.
    receive(&server, &alice[0]).await;
    within(admin.set_role(&group_id, "alice@localhost", false))
        .await
        .unwrap();
    receive(&server, &bob[0]).await;
    let refused = within(member.set_role(&group_id, "bob@localhost", false))
        .await
        .unwrap_err();
    assert_eq!(code(&refused), Some(ErrorCode::LastAdmin));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_and_removed_clients_are_proposed_for_removal_by_the_server() {
    let server = TestServer::start().await;
    let alice = registered_with_key_packages(&server, "alice@localhost", 1).await;
    let bob = registered_with_key_packages(&server, "bob@localhost", 2).await;
    let carol = registered_with_key_packages(&server, "carol@localhost", 1).await;
    let admin = groups(&server, &alice[0]).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    within(admin.invite(&group_id, "carol@localhost"))
        .await
        .unwrap();
    for device in bob.iter().chain(&carol) {
        receive(&server, device).await;
    }
    let member_count = |state: &roost::protocol::GroupState| state.members.len();

    // Bob removes his phone: the server proposes its removal; carol (a Member) commits it.
    within(bob[0].connection.remove_client(&bob[1].identity.client))
        .await
        .unwrap();
    receive(&server, &carol[0]).await;
    within(groups(&server, &carol[0]).await.commit_pending(&group_id))
        .await
        .unwrap();
    let state = within(alice[0].connection.get_group(&group_id))
        .await
        .unwrap();
    assert_eq!(member_count(&state), 3);
    assert!(!state
        .members
        .iter()
        .any(|m| m.client == bob[1].identity.client));

    // Carol deletes her account: the server proposes her removal; a commit without it is refused
    // (must-include), so the Admin's next commit completes it.
    receive(&server, &alice[0]).await;
    within(carol[0].connection.delete_user()).await.unwrap();
    receive(&server, &alice[0]).await;
    within(admin.commit_pending(&group_id)).await.unwrap();
    let state = within(alice[0].connection.get_group(&group_id))
        .await
        .unwrap();
    let members: Vec<_> = state.members.iter().map(|m| m.client.to_string()).collect();
    assert_eq!(members, ["alice@localhost/1", "bob@localhost/1"]);
    // Bob, still in the group, follows every step.
    let events = receive(&server, &bob[0]).await;
    assert!(
        events.iter().any(
            |event| matches!(event, GroupEvent::Committed { epoch, .. } if *epoch == state.epoch)
        ),
        "{events:?}"
    );
    within(groups(&server, &bob[0]).await.send(&group_id, b"just us"))
        .await
        .unwrap();
    assert_eq!(
        messages(&receive(&server, &alice[0]).await),
        [(bob[0].identity.client.clone(), "just us".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_tree_or_a_foreign_creator_is_refused_at_creation() {
    let server = TestServer::start().await;
    let alice = registered_with_key_packages(&server, "alice@localhost", 1).await;
    let bob = registered_with_key_packages(&server, "bob@localhost", 1).await;
    let keys = within(alice[0].connection.domain_keys()).await.unwrap();

    let (_, request) = alice[0].mls.new_group(&keys).unwrap();
    let mut tampered = request.clone();
    let mut tree = tampered.ratchet_tree.as_slice().to_vec();
    let middle = tree.len() / 2;
    tree[middle] ^= 1;
    tampered.ratchet_tree = tree.into();
    let error = within(alice[0].connection.create_group(tampered))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::InvalidMlsMessage));

    // Bob cannot register a group whose only member is alice.
    let error = within(bob[0].connection.create_group(request.clone()))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::InvalidMlsMessage));
    // A group that does not list the server as external sender is refused.
    let foreign = roost::identity::DomainKeys {
        domain: "elsewhere.example".into(),
        keys: keys.keys.clone(),
    };
    let (_, unlisted) = alice[0].mls.new_group(&foreign).unwrap();
    let error = within(alice[0].connection.create_group(unlisted))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::InvalidMlsMessage));

    within(alice[0].connection.create_group(request.clone()))
        .await
        .unwrap();
    let error = within(alice[0].connection.create_group(request))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::GroupExists));
}

/// The encoded ratchet tree a device holds for a group.
fn tree_of(device: &Device, group_id: &[u8]) -> Vec<u8> {
    use tls_codec::Serialize;
    device
        .mls
        .group(group_id)
        .unwrap()
        .expect("the device holds the group")
        .export_ratchet_tree()
        .tls_serialize_detached()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcomes_travel_without_the_tree_and_joiners_fetch_the_tree_of_their_epoch() {
    use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn, ProcessedWelcome};
    use tls_codec::Deserialize;

    let server = TestServer::start().await;
    let alice = registered_with_key_packages(&server, "alice@localhost", 1).await;
    let bob = registered_with_key_packages(&server, "bob@localhost", 1).await;
    let _carol = registered_with_key_packages(&server, "carol@localhost", 1).await;
    let dave = registered_with_key_packages(&server, "dave@localhost", 1).await;
    let admin = groups(&server, &alice[0]).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    let tree_at_1 = tree_of(&alice[0], &group_id);
    // Two more commits before bob reads: his Welcome's epoch is long past when he joins.
    within(admin.invite(&group_id, "carol@localhost"))
        .await
        .unwrap();
    within(admin.remove_user(&group_id, "carol@localhost"))
        .await
        .unwrap();
    let current = tree_of(&alice[0], &group_id);

    // The Welcome in bob's queue does not carry the tree (decrypted on a copy of his keys).
    let queued = within(bob[0].connection.fetch_messages(0, 10, 1 << 20))
        .await
        .unwrap();
    let MlsMessageBodyIn::Welcome(welcome) =
        MlsMessageIn::tls_deserialize_exact(queued.messages[0].payload.as_slice())
            .unwrap()
            .extract()
    else {
        panic!("bob's first message is not a Welcome");
    };
    let copy = bob[0].mls.snapshot().unwrap();
    let processed = ProcessedWelcome::new_from_welcome(
        copy.provider(),
        &openmls::prelude::MlsGroupJoinConfig::default(),
        welcome,
    )
    .unwrap();
    let info = processed.unverified_group_info();
    assert_eq!(info.epoch().as_u64(), 1);
    assert!(info.extensions().ratchet_tree().is_none());

    // The server kept the tree of the epoch that added bob; he joins with it and catches up.
    let events = receive(&server, &bob[0]).await;
    assert_eq!(
        events[0],
        GroupEvent::Joined {
            group_id: group_id.clone()
        }
    );
    assert_eq!(tree_of(&bob[0], &group_id), current);
    assert_eq!(
        within(bob[0].connection.fetch_group_tree(&group_id, 1))
            .await
            .unwrap(),
        tree_at_1
    );
    // The current epoch's tree is served from the group's state (nobody joined at epoch 3).
    assert_eq!(
        within(bob[0].connection.fetch_group_tree(&group_id, 3))
            .await
            .unwrap(),
        current
    );
    // Past the end: an empty chunk with the tree's length.
    let request =
        roost::protocol::Request::FetchGroupTree(roost::protocol::FetchGroupTreeRequest {
            group_id: group_id.clone().into(),
            epoch: 1,
            offset: u32::MAX,
        });
    match within(bob[0].connection.request(&request)).await.unwrap() {
        roost::protocol::ResponseBody::GroupTree(chunk) => {
            assert!(chunk.chunk.as_slice().is_empty());
            assert_eq!(chunk.total_len as usize, tree_at_1.len());
        }
        other => panic!("{other:?}"),
    }
    // No tree for an epoch that added nobody and is not current; none for non-members.
    let refused = |result: Result<Vec<u8>, roost::client::ClientError>| result.unwrap_err().code();
    assert_eq!(
        refused(within(bob[0].connection.fetch_group_tree(&group_id, 0)).await),
        Some(ErrorCode::TreeNotKept)
    );
    assert_eq!(
        refused(within(dave[0].connection.fetch_group_tree(&group_id, 1)).await),
        Some(ErrorCode::NotAMember)
    );
    assert_eq!(
        refused(within(dave[0].connection.fetch_group_tree(b"no such group", 1)).await),
        Some(ErrorCode::UnknownGroup)
    );

    // An invitation to a group deleted before the device read it lapses, and says so.
    within(admin.invite(&group_id, "dave@localhost"))
        .await
        .unwrap();
    within(admin.delete_group(&group_id)).await.unwrap();
    let events = receive(&server, &dave[0]).await;
    assert!(
        matches!(&events[0], GroupEvent::InvitationLapsed { group_id: lapsed, .. } if *lapsed == group_id),
        "{events:?}"
    );
    assert!(
        matches!(events[1], GroupEvent::Deleted { .. }),
        "{events:?}"
    );
    let store = server.server.store();
    for epoch in 0..6 {
        assert_eq!(
            store
                .group_tree_chunk(&group_id, epoch, 0, 16)
                .await
                .unwrap(),
            None
        );
    }
}
