//! The crash harness: the real server binary under a send load, killed with SIGKILL at random
//! moments and restarted on the same data directory, while its clients retry what was not
//! answered. Every acknowledged message must be delivered exactly once and in order.
//!
//! In the suite's PostgreSQL run (`ROOST_TEST_STORE=postgres`) the server keeps its data in a
//! fresh PostgreSQL database.
//!
//! `ROOST_CRASH_CYCLES` sets the number of kill/restart cycles (default 3, enough for CI;
//! run `ROOST_CRASH_CYCLES=100 cargo test --test it crash -- --nocapture` for the full run).

use std::time::Duration;

use rand::Rng;
use roost::client::groups::{GroupClient, GroupEvent};
use roost::client::state::DeviceIdentity;
use roost::client::{ClientConfig, Connection};
use roost::clock::Clock;
use roost::protocol::SendMessageRequest;

use crate::cli::ServerProcess;
use crate::support::{new_key, register_device, within, CIPHERSUITE};

/// Connects and authenticates, retrying while the server restarts.
async fn connect(config: &ClientConfig, identity: &DeviceIdentity) -> Connection {
    within(async {
        loop {
            if let Ok(connection) = Connection::connect(config).await {
                if connection
                    .authenticate_without_push(&identity.client, &identity.signing_key)
                    .await
                    .is_ok()
                {
                    return connection;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Sends `request` until the server answers it, reconnecting across restarts: the same bytes
/// every time, so the server's dedupe makes it exactly once.
async fn send_until_answered(
    connection: &mut Connection,
    config: &ClientConfig,
    identity: &DeviceIdentity,
    request: &SendMessageRequest,
) {
    loop {
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, connection.send_message(request.clone()));
        match answer.await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) if e.code().is_some_and(|code| !code.is_retryable()) => {
                panic!("a message was refused for good: {e}")
            }
            Ok(Err(_)) | Err(_) => *connection = connect(config, identity).await,
        }
    }
}

/// A killed server answers nothing (not even a close): an attempt is given up after this.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(1000);

/// One client action of the load.
enum Step {
    /// A group message, sent until answered (the same bytes each time).
    Send(SendMessageRequest),
    /// Registers this user, until answered (a lost answer shows as `UserExists` on the retry).
    Register(String),
    /// Claims one of bob's KeyPackages, until answered.
    Claim,
}

/// What the load got acknowledged.
#[derive(Default)]
struct Acknowledged {
    messages: u32,
    users: Vec<String>,
    /// Every KeyPackage a claim handed out (not last resorts, which are never used up).
    claimed: Vec<Vec<u8>>,
}

async fn perform(
    step: &Step,
    alice: &mut Connection,
    config: &ClientConfig,
    identity: &DeviceIdentity,
    acknowledged: &mut Acknowledged,
) {
    match step {
        Step::Send(request) => {
            send_until_answered(alice, config, identity, request).await;
            acknowledged.messages += 1;
        }
        Step::Register(user) => {
            let key = new_key();
            loop {
                let Ok(Ok(connection)) =
                    tokio::time::timeout(ANSWER_TIMEOUT, Connection::connect(config)).await
                else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let registered = tokio::time::timeout(
                    ANSWER_TIMEOUT,
                    connection.register_user(user, &key, CIPHERSUITE, None),
                )
                .await;
                match registered {
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) if e.code() == Some(roost::protocol::ErrorCode::UserExists) => break,
                    Ok(Err(e)) if e.code().is_some_and(|code| !code.is_retryable()) => {
                        panic!("registering {user} was refused for good: {e}")
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            acknowledged.users.push(user.clone());
        }
        Step::Claim => loop {
            let claimed = tokio::time::timeout(
                ANSWER_TIMEOUT,
                alice.claim_key_packages("bob@localhost", CIPHERSUITE),
            )
            .await;
            match claimed {
                Ok(Ok(claimed)) => {
                    for claim in claimed.claims {
                        if let roost::protocol::ClaimOutcome::KeyPackage(bytes) = claim.outcome {
                            acknowledged.claimed.push(bytes.as_slice().to_vec());
                        }
                    }
                    break;
                }
                Ok(Err(e)) if e.code().is_some_and(|code| !code.is_retryable()) => {
                    panic!("a claim was refused for good: {e}")
                }
                _ => *alice = connect(config, identity).await,
            }
        },
    }
}

/// Flags for a server that one local source drives hard (many reconnects and registrations).
const GENEROUS: [&str; 4] = [
    "--registrations-per-hour-per-source",
    "1000000",
    "--handshakes-per-second-per-source",
    "100000",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_exactly_once_and_in_order() {
    let cycles: usize = std::env::var("ROOST_CRASH_CYCLES")
        .ok()
        .and_then(|cycles| cycles.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let listen = crate::support::reserved_port().to_string();
    // In the suite's PostgreSQL run the killed server keeps its data there.
    let database =
        crate::support::on_postgres().then(|| roost::store::ScratchDatabase::create().unwrap());
    let mut flags: Vec<&str> = GENEROUS.to_vec();
    if let Some(database) = &database {
        flags.extend(["--store", database.url.as_str()]);
    }
    let flags = flags.as_slice();
    let mut server = ServerProcess::start_on(&listen, &data_dir, flags);
    let config =
        ClientConfig::new(server.addr, "localhost", &data_dir.join("server-cert.pem")).unwrap();

    // Alice, bob and carol in one group, set up before the crashes: bob reads his queue, carol
    // the group's log.
    let (mut alice, alice_identity, alice_mls) = register_device(&config, "alice@localhost").await;
    let (bob, bob_identity, bob_mls) = register_device(&config, "bob@localhost").await;
    let (carol, carol_identity, carol_mls) = register_device(&config, "carol@localhost").await;
    within(carol.use_group_logs()).await.unwrap();
    let keys = within(alice.domain_keys()).await.unwrap();
    let now = roost::clock::SystemClock.now();
    let group_id = {
        let admin = GroupClient::new(&alice, &alice_mls, keys.clone(), now);
        let group_id = within(admin.create_group()).await.unwrap();
        within(admin.invite_many(&group_id, &["bob@localhost", "carol@localhost"]))
            .await
            .unwrap();
        group_id
    };
    drop((bob, carol));

    // The load: alice sends numbered messages one after another, registers users and claims
    // bob's KeyPackages, each until answered; the server is killed at random moments (also in
    // the middle of a step) and restarted on the same data directory.
    let mut acknowledged = Acknowledged::default();
    let mut rng = rand::thread_rng();
    let mut step_number = 0u32;
    for _ in 0..cycles {
        let kill_at = tokio::time::Instant::now() + Duration::from_millis(rng.gen_range(20..300));
        loop {
            step_number += 1;
            let step = match step_number % 5 {
                3 => Step::Register(format!("user{step_number}@localhost")),
                4 => Step::Claim,
                _ => {
                    let mut group = alice_mls.group(&group_id).unwrap().unwrap();
                    let text = format!("m{}", acknowledged.messages);
                    Step::Send(alice_mls.encrypt(&mut group, text.as_bytes()).unwrap())
                }
            };
            let kill = tokio::time::sleep_until(kill_at);
            tokio::pin!(kill);
            let killed = tokio::select! {
                () = perform(&step, &mut alice, &config, &alice_identity, &mut acknowledged) => false,
                () = &mut kill => true,
            };
            if killed {
                server.kill_9();
                server = ServerProcess::start_on(&listen, &data_dir, flags);
                // What was in flight is done again until answered.
                perform(
                    &step,
                    &mut alice,
                    &config,
                    &alice_identity,
                    &mut acknowledged,
                )
                .await;
                break;
            }
            if tokio::time::Instant::now() >= kill_at {
                server.kill_9();
                server = ServerProcess::start_on(&listen, &data_dir, flags);
                break;
            }
        }
    }
    let sent = acknowledged.messages;

    // Every acknowledged registration exists; no claimed KeyPackage was handed out twice.
    let alice = connect(&config, &alice_identity).await;
    for user in &acknowledged.users {
        within(alice.lookup_user(user)).await.unwrap();
    }
    let mut claimed = acknowledged.claimed.clone();
    claimed.sort();
    claimed.dedup();
    assert_eq!(
        claimed.len(),
        acknowledged.claimed.len(),
        "a claimed KeyPackage came back"
    );

    // Bob (from his queue) and carol (from the group's log) read everything: each message once,
    // in the order alice sent them.
    let expected: Vec<String> = (0..sent).map(|n| format!("m{n}")).collect();
    for (identity, mls, reads) in [
        (&bob_identity, &bob_mls, "queue"),
        (&carol_identity, &carol_mls, "log"),
    ] {
        let connection = connect(&config, identity).await;
        let reader = GroupClient::new(&connection, mls, keys.clone(), now);
        let mut heard = Vec::new();
        for (seq, event) in within(reader.receive()).await.unwrap() {
            match event.unwrap_or_else(|e| panic!("message {seq}: {e:#}")) {
                GroupEvent::Message { text, .. } => heard.push(String::from_utf8(text).unwrap()),
                // The Welcome, and the server's notices (KeyPackages ran low).
                GroupEvent::Joined { .. } | GroupEvent::Other => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let duplicates = heard.len().saturating_sub(expected.len());
        println!(
            "crash harness ({reads}): {cycles} kill -9 cycles, {sent} messages acknowledged, {} delivered, {duplicates} duplicates; {} registrations acknowledged, all present; {} KeyPackages claimed, none twice",
            heard.len(),
            acknowledged.users.len(),
            acknowledged.claimed.len()
        );
        assert_eq!(heard, expected, "exactly once, in order, from the {reads}");
    }
    assert!(server.terminate().success());
}

/// Bob's homeserver is killed with SIGKILL again and again while alice's (the group's hub)
/// keeps sending: its outbox delivers everything, and bob gets each message exactly once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiving_homeserver_killed_again_and_again_gets_everything_exactly_once() {
    let cycles: usize = std::env::var("ROOST_CRASH_CYCLES")
        .ok()
        .and_then(|cycles| cycles.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    for domain in ["a.example", "b.example"] {
        crate::cli::roost_certs(&certs, domain);
    }
    let ca = certs.join("ca.pem");
    let (a_addr, b_addr) = (
        crate::support::reserved_port(),
        crate::support::reserved_port(),
    );
    let serve = |domain: &str, listen: std::net::SocketAddr, peer: &str, peer_addr| {
        let mut args = crate::cli::serve_as(&certs, domain);
        args.extend([
            "--peer".to_owned(),
            format!("{peer}={peer_addr}"),
            "--peer-ca".to_owned(),
            ca.to_str().unwrap().to_owned(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ServerProcess::start_on(&listen.to_string(), &dir.path().join(domain), &args)
    };
    let a = serve("a.example", a_addr, "b.example", b_addr);
    let mut b = serve("b.example", b_addr, "a.example", a_addr);
    let a_config = ClientConfig::new(a_addr, "a.example", &ca).unwrap();
    let b_config = ClientConfig::new(b_addr, "b.example", &ca).unwrap();

    let (alice, _, alice_mls) = register_device(&a_config, "alice@a.example").await;
    let (bob, bob_identity, bob_mls) = register_device(&b_config, "bob@b.example").await;
    let now = roost::clock::SystemClock.now();
    let alice_keys = within(alice.domain_keys()).await.unwrap();
    let admin = GroupClient::new(&alice, &alice_mls, alice_keys, now);
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@b.example"))
        .await
        .unwrap();
    let bob_keys = within(bob.domain_keys()).await.unwrap();
    let reader = GroupClient::new(&bob, &bob_mls, bob_keys.clone(), now);
    within(async {
        loop {
            let events = reader.receive().await.unwrap();
            if events
                .iter()
                .any(|(_, event)| matches!(event, Ok(GroupEvent::Joined { .. })))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(reader);
    drop(bob);

    // Alice keeps sending while b.example is killed and restarted at random moments.
    let mut sent = 0u32;
    let mut rng = rand::thread_rng();
    for _ in 0..cycles {
        let kill_at = tokio::time::Instant::now() + Duration::from_millis(rng.gen_range(20..300));
        while tokio::time::Instant::now() < kill_at {
            within(admin.send(&group_id, format!("m{sent}").as_bytes()))
                .await
                .unwrap();
            sent += 1;
        }
        b.kill_9();
        b = serve("b.example", b_addr, "a.example", a_addr);
    }

    // Bob gets everything from a.example's outbox, each once, in order (the outbox may be
    // waiting out its backoff after the last kill: give it time).
    let bob = connect(&b_config, &bob_identity).await;
    let reader = GroupClient::new(&bob, &bob_mls, bob_keys, now);
    let mut heard = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while heard.len() < sent as usize && tokio::time::Instant::now() < deadline {
        for (seq, event) in reader.receive().await.unwrap() {
            match event.unwrap_or_else(|e| panic!("message {seq}: {e:#}")) {
                GroupEvent::Message { text, .. } => heard.push(String::from_utf8(text).unwrap()),
                other => panic!("unexpected {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected: Vec<String> = (0..sent).map(|n| format!("m{n}")).collect();
    println!(
        "two-homeserver crash harness: {cycles} kill -9 cycles of the receiver, {sent} messages sent, {} delivered",
        heard.len()
    );
    assert_eq!(heard, expected, "exactly once, in order");
    assert!(b.terminate().success());
    assert!(a.terminate().success());
}
