//! Several nodes of one domain on one PostgreSQL database: clients of either node are users of
//! the same server. Messages and pushes cross nodes, the database decides races between them,
//! a removal on one node closes the client's connections on the other, and a node's clients
//! carry on through the other when it dies.

use std::collections::BTreeSet;

use roost::client::groups::GroupEvent;
use roost::protocol::{close_code, ClaimOutcome, ErrorCode, Notification};

use crate::accounts::closed_with;
use crate::cli::ServerProcess;
use crate::group_logs::texts;
use crate::groups::{caught_up_with_epoch, groups, receive, registered_with_key_packages};
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

    // Each device is an Admin and commits at the same epoch, each through its own node: one
    // wins epoch 2; the other is refused, catches up with the winner's commit, and lands on 3.
    let (a, b) = tokio::join!(
        on_first.invite(&group_id, "dave@localhost"),
        on_second.invite(&group_id, "erin@localhost")
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(
        caught_up_with_epoch(&on_first, 2) + caught_up_with_epoch(&on_second, 2),
        1,
        "exactly one commit of epoch 1 won"
    );
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
async fn a_group_message_racing_its_recipients_removal_on_the_other_node_never_reaches_it() {
    let first = TestServer::start_shared(|_| {}).await;
    let second = first.start_node(|_| {}).await;
    let alice = registered_with_key_packages(&first, "alice@localhost", 1).await;
    let admin = groups(&first, &alice[0]).await;
    let conflicts = |server: &TestServer| server.server.store().stats().conflicts();
    let before = conflicts(&first) + conflicts(&second);
    let tries = 8;
    for n in 0..tries {
        let user = format!("bob{n}@localhost");
        let bob = registered_with_key_packages(&second, &user, 2).await;
        let group_id = within(admin.create_group()).await.unwrap();
        within(admin.invite(&group_id, &user)).await.unwrap();
        // Alice sends through the first node while bob removes his second device through the
        // other.
        let removed = bob[1].identity.client.clone();
        let (sent, gone) = tokio::join!(
            within(admin.send(&group_id, b"sent as the device goes")),
            within(bob[0].connection.remove_client(&removed))
        );
        sent.unwrap();
        gone.unwrap();
        // Nothing waits for the removed device (not the message, not its Welcome), on either
        // node, and it cannot come back for it.
        for server in [&first, &second] {
            let store = server.server.store();
            assert_eq!(
                store
                    .queue_size(&roost::protocol::ClientId::of(&user, removed.device_id))
                    .await
                    .unwrap(),
                (0, 0),
                "try {n}"
            );
            let (waiting, _) = store
                .fetch_messages(
                    &roost::protocol::ClientId::of(&user, removed.device_id),
                    0,
                    100,
                    1 << 20,
                )
                .await
                .unwrap();
            assert!(waiting.is_empty(), "try {n}: {} messages", waiting.len());
        }
        let again = second.connect().await;
        let result = within(again.authenticate(&removed, &bob[1].identity.signing_key)).await;
        assert_eq!(code(result.map(|_| ())), ErrorCode::AuthenticationFailed);
        // The device that stays has the message.
        assert!(messages_of(&receive(&second, &bob[0]).await)
            .contains(&"sent as the device goes".to_owned()));
    }
    println!(
        "{tries} tries, {} write batches ran again after a conflict",
        conflicts(&first) + conflicts(&second) - before
    );
}

/// Events on the node bus, as anyone who can connect to the database sees and sends them.
struct BusTap {
    client: postgres::Client,
}

impl BusTap {
    /// Connects to `server`'s database and listens on the event channel (on a thread of its own:
    /// the synchronous client blocks).
    async fn connect(server: &TestServer) -> Self {
        let url = server.database.as_ref().unwrap().url.clone();
        tokio::task::spawn_blocking(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            client.batch_execute("LISTEN roost_events").unwrap();
            Self { client }
        })
        .await
        .unwrap()
    }

    /// The events heard so far (base64 text, as sent).
    async fn heard(mut self) -> (Self, Vec<String>) {
        tokio::task::spawn_blocking(move || {
            use postgres::fallible_iterator::FallibleIterator as _;
            let heard: Vec<String> = self
                .client
                .notifications()
                .timeout_iter(std::time::Duration::from_millis(300))
                .map(|notification| Ok(notification.payload().to_owned()))
                .collect()
                .unwrap();
            (self, heard)
        })
        .await
        .unwrap()
    }

    /// Closes the connection (off the async workers, where the synchronous client may block).
    async fn close(self) {
        tokio::task::spawn_blocking(move || drop(self))
            .await
            .unwrap();
    }

    /// Sends `payloads` on the event channel.
    async fn send(mut self, payloads: Vec<String>) -> Self {
        tokio::task::spawn_blocking(move || {
            for payload in payloads {
                self.client
                    .execute("SELECT pg_notify('roost_events', $1)", &[&payload])
                    .unwrap();
            }
            self
        })
        .await
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_events_on_the_node_bus_are_refused() {
    use base64::Engine as _;
    use roost::protocol::cluster::{
        encode_cluster_event, seal_cluster_event, ClusterEnvelope, ClusterEvent, EventKey,
    };

    let first = TestServer::start_shared(|_| {}).await;
    let second = first.start_node(|_| {}).await;
    let alice = second.register("alice@localhost").await;
    let client = alice.identity.client.clone();
    // Genuine events to replay later: a device of alice's added through the first node and
    // removed through the second (which tells the first to close its connection).
    let tap = BusTap::connect(&first).await;
    let spare = first.add_device(&alice).await;
    within(alice.connection.remove_client(&spare.identity.client))
        .await
        .unwrap();
    assert_eq!(closed_with(&spare).await, close_code::CLIENT_REMOVED.into());
    let (tap, genuine) = tap.heard().await;
    assert!(!genuine.is_empty(), "the removal was announced on the bus");

    // What an attacker with a database login sends: alice's disconnection, unsealed (the old
    // format), sealed with a key of its own, and the genuine events again.
    let disconnect = encode_cluster_event(&ClusterEnvelope {
        origin: 7,
        event: ClusterEvent::Disconnect(client.clone()),
    })
    .unwrap();
    let now_ms = roost::clock::Clock::now_ms(&roost::clock::SystemClock);
    let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes);
    let mut forged = vec![
        base64(&disconnect),
        base64(&seal_cluster_event(
            &EventKey([0; 32]),
            now_ms,
            1,
            &disconnect,
        )),
        "not even base64!".to_owned(),
    ];
    forged.extend(genuine.iter().cloned());
    let refused_before = second.server.services().cluster_events_refused();
    tap.send(forged.clone()).await.close().await;
    // Alice's device stays connected and served, and the second node counted every forgery.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while second.server.services().cluster_events_refused()
        < refused_before + forged.len() as u64 - 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the forgeries were not all refused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // (A disconnection would have failed this request.)
    within(alice.connection.fetch_messages(0, 10, 1 << 16))
        .await
        .unwrap();
}

fn messages_of(events: &[GroupEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event {
            GroupEvent::Message { text, .. } => Some(String::from_utf8_lossy(text).into_owned()),
            _ => None,
        })
        .collect()
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
