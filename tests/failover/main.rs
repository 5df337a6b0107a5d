//! High availability: two Roost nodes on a PostgreSQL primary with a synchronous standby, kept
//! by pg_auto_failover (Debian's `postgresql-15-auto-failover` and `pg-auto-failover-cli`), all
//! on loopback ports of this machine. Clients of both nodes converse while the primary is killed
//! with SIGKILL; after the standby takes over, every message a sender had acknowledged is
//! delivered exactly once, in order, and the old primary comes back as a standby.

use std::sync::Arc;
use std::time::{Duration, Instant};

use roost::client::groups::{GroupClient, GroupEvent};
use roost::client::state::DeviceIdentity;
use roost::client::{ClientConfig, Connection};
use roost::clock::{Clock, SystemClock};
use roost::config::ServerConfig;
use roost::protocol::Retry;
use roost::server::Server;
use roost::store::{ScratchCluster, StoreLocation};

const CIPHERSUITE: u16 = 1;
/// How long a client keeps resending the same request through a failover.
const PATIENCE: Duration = Duration::from_secs(90);

/// A node of `localhost` on `url`, keeping its keys in `dir`.
async fn node(url: &str, dir: &std::path::Path) -> Server {
    let mut config = ServerConfig::new(
        "localhost".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        dir.join("data"),
    );
    config.store = Some(StoreLocation::Postgres(url.to_owned()));
    Server::start(config).await.unwrap()
}

fn client_config(server: &Server) -> ClientConfig {
    ClientConfig::new(server.local_addr(), "localhost", server.certificate_path()).unwrap()
}

/// A device of `user` on `server`, authenticated (without a push stream) and with KeyPackages.
async fn device(server: &Server, user: &str) -> (Connection, roost::client::mls::DeviceMls) {
    let connection = Connection::connect(&client_config(server)).await.unwrap();
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let registered = connection
        .register_user(user, &key, CIPHERSUITE, None)
        .await
        .unwrap();
    let identity = DeviceIdentity::new(registered, key, CIPHERSUITE);
    connection
        .authenticate_without_push(&identity.client, &identity.signing_key)
        .await
        .unwrap();
    let mls = roost::client::mls::DeviceMls::new(&identity).unwrap();
    connection
        .publish_key_packages(mls.key_packages(2, false).unwrap())
        .await
        .unwrap();
    (connection, mls)
}

/// Runs `request` until it is answered, as long as the server says to try again later (or the
/// connection fails, as it may while a node's database changes hands), for at most [`PATIENCE`].
async fn patiently<T, F, Fut>(mut request: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        match request().await {
            Ok(answer) => return answer,
            Err(e) if Instant::now() < deadline => {
                let retryable = e
                    .downcast_ref::<roost::client::ClientError>()
                    .is_none_or(|e| e.retry() == Retry::Later);
                assert!(retryable, "refused for good: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no answer within {PATIENCE:?}: {e:#}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_the_primary_killed_exactly_once_and_in_order() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(ScratchCluster::start)
            .await
            .unwrap()
            .unwrap(),
    );
    // Alice on the first node writes to bob on the second, in a group of the two.
    let pair = Pair::start(&cluster.url()).await;

    const MESSAGES: usize = 60;
    const KILL_AFTER: usize = 20;
    let mut killed_at = None;
    let mut recovered_after = None;
    for i in 0..MESSAGES {
        if i == KILL_AFTER {
            let cluster = cluster.clone();
            tokio::task::spawn_blocking(move || cluster.kill_primary().unwrap())
                .await
                .unwrap();
            killed_at = Some(Instant::now());
            // The senders carry on at once: what they send waits for the standby to take over.
        }
        // Encrypted once, and the same bytes sent until the server takes them: a resend of a
        // message the server had taken is recognised, so it is never delivered twice.
        let request = pair.seal(&format!("message {i}"));
        patiently(|| async { Ok(pair.alice.send_message(request.clone()).await?) }).await;
        if let (Some(killed), None) = (killed_at, recovered_after) {
            recovered_after = Some(killed.elapsed());
        }
    }
    let recovered_after = recovered_after.unwrap();
    eprintln!("from SIGKILL of the primary to the first acknowledged write: {recovered_after:?}");

    let mut texts = Vec::new();
    while texts.len() < MESSAGES {
        texts.extend(pair.bob_receives().await);
    }
    let sent: Vec<String> = (0..MESSAGES).map(|i| format!("message {i}")).collect();
    assert_eq!(texts, sent, "every acknowledged message, once, in order");

    // The old primary comes back as a standby of the new one: no second primary.
    let cluster_ = cluster.clone();
    tokio::task::spawn_blocking(move || cluster_.restart_killed_as_standby().unwrap())
        .await
        .unwrap();
    let after = pair.seal("after the old primary returned");
    patiently(|| async { Ok(pair.alice.send_message(after.clone()).await?) }).await;
    let writable = tokio::task::spawn_blocking(move || cluster.writable_nodes())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(writable.len(), 1, "nodes taking writes: {writable:?}");
    pair.shutdown().await;
}

/// A group of alice (on the first node) and bob (on the second), ready to converse.
struct Pair {
    servers: (Server, Server),
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    alice: Connection,
    alice_mls: roost::client::mls::DeviceMls,
    bob: Connection,
    bob_mls: roost::client::mls::DeviceMls,
    group_id: Vec<u8>,
}

impl Pair {
    async fn start(url: &str) -> Self {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = node(url, dirs.0.path()).await;
        roost::server::copy_node_keys(&dirs.0.path().join("data"), &dirs.1.path().join("data"))
            .unwrap();
        let second = node(url, dirs.1.path()).await;
        let (alice, alice_mls) = device(&first, "alice@localhost").await;
        let (bob, bob_mls) = device(&second, "bob@localhost").await;
        let keys = alice.domain_keys().await.unwrap();
        let groups = GroupClient::new(&alice, &alice_mls, keys, SystemClock.now());
        let group_id = groups.create_group().await.unwrap();
        groups.invite(&group_id, "bob@localhost").await.unwrap();
        let pair = Self {
            servers: (first, second),
            _dirs: dirs,
            alice,
            alice_mls,
            bob,
            bob_mls,
            group_id,
        };
        let keys = pair.bob.domain_keys().await.unwrap();
        let bob_groups = GroupClient::new(&pair.bob, &pair.bob_mls, keys, SystemClock.now());
        let joined = bob_groups.receive().await.unwrap();
        assert!(joined
            .iter()
            .any(|(_, event)| matches!(event, Ok(GroupEvent::Joined { .. }))));
        pair
    }

    async fn shutdown(self) {
        self.servers.0.shutdown().await.unwrap();
        self.servers.1.shutdown().await.unwrap();
    }

    /// Alice's next message, encrypted (to be sent, and resent, as these bytes).
    fn seal(&self, text: &str) -> roost::protocol::SendMessageRequest {
        let mut group = self.alice_mls.group(&self.group_id).unwrap().unwrap();
        self.alice_mls.encrypt(&mut group, text.as_bytes()).unwrap()
    }

    /// The texts of what bob's queue holds now (processed and acknowledged).
    async fn bob_receives(&self) -> Vec<String> {
        let keys = self.bob.domain_keys().await.unwrap();
        let groups = GroupClient::new(&self.bob, &self.bob_mls, keys, SystemClock.now());
        let events = patiently(|| groups.receive()).await;
        events
            .into_iter()
            .filter_map(|(_, event)| match event {
                Ok(GroupEvent::Message { text, .. }) => Some(String::from_utf8(text).unwrap()),
                _ => None,
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_standby_never_confirms_is_refused_for_a_retry_not_acknowledged() {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(ScratchCluster::start)
            .await
            .unwrap()
            .unwrap(),
    );
    let pair = Pair::start(&cluster.url()).await;
    let before = pair.seal("before");
    pair.alice.send_message(before).await.unwrap();

    let stalling = cluster.clone();
    tokio::task::spawn_blocking(move || stalling.stall_synchronous_replication().unwrap())
        .await
        .unwrap();
    // The commit waits for a standby that is gone: refused once the store gives up waiting
    // (30 s), as a failure to try again later, never acknowledged and never a hang.
    let stalled = pair.seal("stalled");
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        pair.alice.send_message(stalled.clone()),
    )
    .await
    .expect("a commit the standby cannot confirm does not hang")
    .unwrap_err();
    assert_eq!(refused.retry(), Retry::Later, "{refused}");

    let restarting = cluster.clone();
    tokio::task::spawn_blocking(move || restarting.restart_standby().unwrap())
        .await
        .unwrap();
    // The same bytes again: the server took them on the primary before, so this is a resend of
    // one message, delivered once.
    patiently(|| async { Ok(pair.alice.send_message(stalled.clone()).await?) }).await;
    let mut received = Vec::new();
    while received.len() < 2 {
        received.extend(pair.bob_receives().await);
    }
    assert_eq!(received, ["before", "stalled"]);
    assert!(pair.bob_receives().await.is_empty(), "nothing twice");
}
