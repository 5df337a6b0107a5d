//! Several nodes of one domain on one PostgreSQL database: clients of either node are users of
//! the same server. Messages and pushes cross nodes, the database decides races between them,
//! a removal on one node closes the client's connections on the other, and a node's clients
//! carry on through the other when it dies.

use std::collections::BTreeSet;

use roost::client::groups::{is_wrong_epoch, GroupEvent};
use roost::protocol::{close_code, ClaimOutcome, ErrorCode, Notification};

use crate::accounts::closed_with;
use crate::cli::ServerProcess;
use crate::group_logs::texts;
use crate::groups::{groups, receive, registered_with_key_packages};
use crate::support::{code, copy_keys, register_device, within, Device, TestServer};

/// Waits on `device`'s push stream for a `NewMessages` hint (skipping other notifications).
async fn hinted(device: &mut Device) {
    loop {
        match within(device.push.next()).await {
            Some(Ok(Notification::NewMessages(_) | Notification::GroupLogAppended(_))) => return,
            Some(Ok(_)) => continue,
            other => panic!("push stream ended: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_between_clients_of_two_nodes_crosses_with_its_pushes() {
    let first = TestServer::start_shared(|_| {}).await;
    let second = first.start_node(|_| {}).await;
    let alice = registered_with_key_packages(&first, "alice@localhost", 1).await;
    // Bob registers through the other node: one domain, one set of users.
    let mut bob = registered_with_key_packages(&second, "bob@localhost", 1).await;
    assert_eq!(
        within(alice[0].connection.lookup_user("bob@localhost"))
            .await
            .unwrap()
            .clients
            .len(),
        1
    );

    let admin = groups(&first, &alice[0]).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    // The Welcome was queued by the first node; the second pushes the hint to bob at once.
    hinted(&mut bob[0]).await;
    assert!(receive(&second, &bob[0])
        .await
        .contains(&GroupEvent::Joined {
            group_id: group_id.clone()
        }));

    within(admin.send(&group_id, b"hello from node 1"))
        .await
        .unwrap();
    hinted(&mut bob[0]).await;
    assert_eq!(
        texts(&receive(&second, &bob[0]).await),
        ["hello from node 1"]
    );

    let mut alice = alice;
    let member = groups(&second, &bob[0]).await;
    within(member.send(&group_id, b"hello from node 2"))
        .await
        .unwrap();
    hinted(&mut alice[0]).await;
    assert_eq!(
        texts(&receive(&first, &alice[0]).await),
        ["hello from node 2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_commits_for_one_epoch_through_two_nodes_exactly_one_wins() {
    let first = TestServer::start_shared(|_| {}).await;
    let second = first.start_node(|_| {}).await;
    let laptop = first.register("alice@localhost").await;
    laptop.publish(3, true).await;
    let phone = second.add_device(&laptop).await;
    phone.publish(3, true).await;
    registered_with_key_packages(&first, "dave@localhost", 1).await;
    registered_with_key_packages(&second, "erin@localhost", 1).await;

    let on_first = groups(&first, &laptop).await;
    let group_id = within(on_first.create_group()).await.unwrap();
    within(on_first.invite(&group_id, "alice@localhost"))
        .await
        .unwrap();
    receive(&second, &phone).await;
    let on_second = groups(&second, &phone).await;

    // Each device is an Admin and commits at the same epoch, each through its own node.
    let (a, b) = tokio::join!(
        on_first.invite(&group_id, "dave@localhost"),
        on_second.invite(&group_id, "erin@localhost")
    );
    let (loser, loser_server, loser_user) = match (&a, &b) {
        (Ok(_), Err(e)) if is_wrong_epoch(e) => (&phone, &second, "erin@localhost"),
        (Err(e), Ok(_)) if is_wrong_epoch(e) => (&laptop, &first, "dave@localhost"),
        other => panic!("expected exactly one WrongEpoch, got {other:?}"),
    };
    let after_race = within(laptop.connection.get_group(&group_id))
        .await
        .unwrap();
    assert_eq!((after_race.epoch, after_race.members.len()), (2, 3));
    // The loser catches up and its retry lands on the next epoch.
    receive(loser_server, loser).await;
    within(
        groups(loser_server, loser)
            .await
            .invite(&group_id, loser_user),
    )
    .await
    .unwrap();
    let state = within(phone.connection.get_group(&group_id)).await.unwrap();
    assert_eq!((state.epoch, state.members.len()), (3, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_claimed_through_both_nodes_at_once_are_each_handed_out_once() {
    const STOCK: usize = 48;
    const CLAIMS_AT_ONCE: usize = 4;
    let first = TestServer::start_shared(|_| {}).await;
    let second = first.start_node(|_| {}).await;
    let bob = first.register("bob@localhost").await;
    let published: BTreeSet<Vec<u8>> = bob.publish(STOCK, true).await.into_iter().collect();
    let claimer_1 = first.register("carol@localhost").await;
    let claimer_2 = second.register("dave@localhost").await;

    /// Claims bob's KeyPackages through `device`'s node, `CLAIMS_AT_ONCE` requests at a time,
    /// until the node finds none left; returns what it handed out.
    async fn claim_all(device: &Device) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        loop {
            let claims = (0..CLAIMS_AT_ONCE).map(|_| {
                device
                    .connection
                    .claim_key_packages("bob@localhost", crate::support::CIPHERSUITE)
            });
            let mut exhausted = false;
            for claimed in futures::future::join_all(claims).await {
                for claim in claimed.unwrap().claims {
                    match claim.outcome {
                        ClaimOutcome::KeyPackage(bytes) => got.push(bytes.as_slice().to_vec()),
                        ClaimOutcome::LastResort(_) | ClaimOutcome::Unavailable => exhausted = true,
                    }
                }
            }
            if exhausted {
                return got;
            }
        }
    }
    let (got_1, got_2) =
        within(async { tokio::join!(claim_all(&claimer_1), claim_all(&claimer_2)) }).await;
    println!(
        "node 1 handed out {}, node 2 {} of {STOCK}; write batches run again after a conflict: {} and {}",
        got_1.len(),
        got_2.len(),
        first.server.store().stats().conflicts(),
        second.server.store().stats().conflicts(),
    );
    let mut handed_out: Vec<Vec<u8>> = got_1.into_iter().chain(got_2).collect();
    assert_eq!(handed_out.len(), STOCK, "every KeyPackage handed out once");
    handed_out.sort();
    handed_out.dedup();
    assert_eq!(handed_out.len(), STOCK, "no KeyPackage handed out twice");
    assert!(handed_out.iter().all(|bytes| published.contains(bytes)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_client_through_one_node_closes_its_connection_on_the_other() {
    let first = TestServer::start_shared(|_| {}).await;
    let second = first.start_node(|_| {}).await;
    let laptop = first.register("alice@localhost").await;
    let mut phone = second.add_device(&laptop).await;

    within(laptop.connection.remove_client(&phone.identity.client))
        .await
        .unwrap();
    assert_eq!(
        within(phone.push.next()).await.unwrap().unwrap(),
        Notification::ClientRemoved(phone.identity.client.clone())
    );
    assert_eq!(closed_with(&phone).await, close_code::CLIENT_REMOVED.into());
    // And it cannot come back through either node.
    for server in [&first, &second] {
        let again = server.connect().await;
        let result =
            within(again.authenticate(&phone.identity.client, &phone.identity.signing_key)).await;
        assert_eq!(code(result.map(|_| ())), ErrorCode::AuthenticationFailed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_node_is_killed_its_clients_carry_on_through_the_other_and_lose_nothing() {
    use roost::client::groups::GroupClient;
    use roost::client::{ClientConfig, Connection};
    use roost::clock::{Clock, SystemClock};

    let database = roost::store::ScratchDatabase::create().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (dir_1, dir_2) = (root.path().join("node-1"), root.path().join("node-2"));
    let store = ["--store", database.url.as_str()];
    let node_1 = ServerProcess::start(&dir_1, &store);
    // The second node: a copy of the first's keys and certificate, the same database.
    copy_keys(&dir_1, &dir_2);
    let node_2 = ServerProcess::start(&dir_2, &store);
    let certificate = dir_1.join("server-cert.pem");
    let config_1 = ClientConfig::new(node_1.addr, "localhost", &certificate).unwrap();
    let config_2 = ClientConfig::new(node_2.addr, "localhost", &certificate).unwrap();

    let (alice, _, alice_mls) = register_device(&config_1, "alice@localhost").await;
    let (bob, bob_identity, bob_mls) = register_device(&config_2, "bob@localhost").await;
    let keys = within(alice.domain_keys()).await.unwrap();
    let admin = GroupClient::new(&alice, &alice_mls, keys.clone(), SystemClock.now());
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    let events =
        within(GroupClient::new(&bob, &bob_mls, keys.clone(), SystemClock.now()).receive())
            .await
            .unwrap();
    assert!(events
        .iter()
        .any(|(_, event)| matches!(event, Ok(GroupEvent::Joined { .. }))));
    for i in 0..5 {
        within(admin.send(&group_id, format!("before {i}").as_bytes()))
            .await
            .unwrap();
    }

    // Bob's node is killed; bob connects to the other one.
    node_2.kill_9();
    drop(bob);
    let bob = within(Connection::connect(&config_1)).await.unwrap();
    within(bob.authenticate_without_push(&bob_identity.client, &bob_identity.signing_key))
        .await
        .unwrap();
    for i in 0..5 {
        within(admin.send(&group_id, format!("after {i}").as_bytes()))
            .await
            .unwrap();
    }
    let events: Vec<GroupEvent> =
        within(GroupClient::new(&bob, &bob_mls, keys, SystemClock.now()).receive())
            .await
            .unwrap()
            .into_iter()
            .map(|(seq, event)| event.unwrap_or_else(|e| panic!("message {seq}: {e:#}")))
            .collect();
    let expected: Vec<String> = (0..5)
        .map(|i| format!("before {i}"))
        .chain((0..5).map(|i| format!("after {i}")))
        .collect();
    assert_eq!(texts(&events), expected);
    node_1.kill_9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_leaving_at_once_through_two_nodes_leave_their_user_one() {
    let first = TestServer::start_shared(|_| {}).await;
    let second = first.start_node(|_| {}).await;
    let observer = first.register("olga@localhost").await;
    for round in 0..3 {
        let user = format!("erin{round}@localhost");
        let laptop = first.register(&user).await;
        let phone = second.add_device(&laptop).await;
        // Each removes itself: alone, each removal is allowed (the other device remains).
        let (a, b) = tokio::join!(
            laptop.connection.remove_client(&laptop.identity.client),
            phone.connection.remove_client(&phone.identity.client)
        );
        let outcomes = [a, b];
        assert_eq!(
            outcomes.iter().filter(|outcome| outcome.is_ok()).count(),
            1,
            "round {round}: {outcomes:?}"
        );
        let refused = outcomes.into_iter().find_map(Result::err).unwrap();
        assert_eq!(refused.code(), Some(ErrorCode::LastClient), "round {round}");
        let remaining = within(observer.connection.lookup_user(&user))
            .await
            .unwrap();
        assert_eq!(remaining.clients.len(), 1, "round {round}");
    }
}

#[test]
fn a_store_that_cannot_be_reached_or_read_is_refused_with_a_reason_and_no_password() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let serve = |store: &str| {
        std::process::Command::new(crate::cli::ROOST)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(["--store", store])
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    // Nothing listens on port 1.
    let output = serve("postgres://roost:hunter2@127.0.0.1:1/roost");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("opening the store postgres://roost:***@127.0.0.1:1/roost"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(!data_dir.exists(), "a failed start left its data directory");

    let output = serve("mysql://127.0.0.1/roost");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not a store"), "{stderr}");
}
