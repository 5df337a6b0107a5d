//! Throughput figures: `cargo bench --bench throughput`. Prints, asserts nothing.
//!
//! - queue writes through the group-commit writer (many concurrent single-recipient enqueues);
//! - fan-out of one message to 1,000 queues (one commit each);
//! - requests per second over one real QUIC connection to a real server on loopback;
//! - latency from queued to in a connected client's hands, carried by the push or fetched.

use std::sync::Arc;
use std::time::{Duration, Instant};

use roost::client::{ClientConfig, Connection};
use roost::config::ServerConfig;
use roost::server::Server;
use roost::store::{Admission, Envelope, NewUser, QueueLimits, Store};

const USERS: usize = 1000;
const LIMITS: QueueLimits = QueueLimits::per_client(u64::MAX, u64::MAX);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let users = register(&store).await;
    concurrent_enqueues(&store, &users).await;
    fan_out(&store, &users).await;
    store.close().await;
    quic_requests().await;
    push_latency().await;
    // Send cost at two sizes of group: it should not grow with the group.
    for members in [2, 20, 100] {
        group_messages(members).await;
    }
}

/// From a message being queued to a connected client holding it: carried by the push hint,
/// versus announced by the hint and then fetched (one more round trip and a database read).
async fn push_latency() {
    use roost::protocol::{MessageKind, Notification};
    use roost::services::Delivery;

    const ROUNDS: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let (server, client_config) = start_server(dir.path()).await;
    let connection = Connection::connect(&client_config).await.unwrap();
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let registered = connection
        .register_user("bob@localhost", &key, 1, None)
        .await
        .unwrap();
    let client = registered.client.clone();
    let mut push = connection.authenticate(&client, &key).await.unwrap();
    let (mut carried, mut fetched) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let start = Instant::now();
        server
            .services()
            .queues()
            .deliver(vec![Delivery {
                recipients: vec![client.clone()],
                kind: MessageKind::Mls,
                payload: vec![0x42; 200],
            }])
            .await
            .unwrap();
        let hint = loop {
            if let Some(Ok(Notification::NewMessages(hint))) = push.next().await {
                break hint;
            }
        };
        assert!(!hint.messages.is_empty(), "a 200-byte message rides along");
        // Every other round, ignore what the hint carries and fetch, as a client without it would.
        if round % 2 == 0 {
            carried.push(start.elapsed());
        } else {
            let messages = connection.fetch_messages(0, 100, 1 << 20).await.unwrap();
            assert!(!messages.messages.is_empty());
            fetched.push(start.elapsed());
        }
        connection.ack_messages(hint.latest_seq).await.unwrap();
    }
    carried.sort();
    fetched.sort();
    println!(
        "queued -> in a connected client's hands, 200-byte message: carried by the push p50 {:.2?} p99 {:.2?}; pushed hint then fetch p50 {:.2?} p99 {:.2?}",
        carried[carried.len() / 2],
        carried[carried.len() * 99 / 100],
        fetched[fetched.len() / 2],
        fetched[fetched.len() * 99 / 100],
    );
    server.shutdown().await.unwrap();
}

/// End to end: one device sends application messages to a group of `members` devices through a
/// real server; each message is verified, fanned out in one commit, and pushed.
async fn group_messages(members: usize) {
    use roost::client::groups::GroupClient;
    use roost::client::mls::DeviceMls;
    use roost::client::state::DeviceIdentity;

    const MESSAGES: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let (server, client_config) = start_server(dir.path()).await;
    let mut devices = Vec::new();
    for i in 0..members {
        let connection = Connection::connect(&client_config).await.unwrap();
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let registered = connection
            .register_user(&format!("member{i}@localhost"), &key, 1, None)
            .await
            .unwrap();
        let identity = DeviceIdentity::new(registered, key, 1);
        let push = connection
            .authenticate(&identity.client, &identity.signing_key)
            .await
            .unwrap();
        let mls = DeviceMls::new(&identity).unwrap();
        connection
            .top_up_key_packages(&identity.client, &mls)
            .await
            .unwrap();
        devices.push((connection, mls, push));
    }
    let keys = devices[0].0.domain_keys().await.unwrap();
    let (sender_connection, sender_mls, _) = &devices[0];
    let now = roost::clock::Clock::now(&roost::clock::SystemClock);
    let sender = GroupClient::new(sender_connection, sender_mls, keys, now);
    let start = Instant::now();
    let group_id = sender.create_group().await.unwrap();
    for i in 1..members {
        sender
            .invite(&group_id, &format!("member{i}@localhost"))
            .await
            .unwrap();
    }
    println!(
        "group of {members} created and filled (one invite commit each) in {:.2?}",
        start.elapsed()
    );
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let sent = Instant::now();
        sender
            .send(&group_id, format!("message {i}").as_bytes())
            .await
            .unwrap();
        latencies.push(sent.elapsed());
    }
    let elapsed = start.elapsed();
    latencies.sort();
    println!(
        "{MESSAGES} application messages to {} members each, sent one after another: {:.2?} = {:.0} messages/s ({:.0} deliveries/s), send p50 {:.2?}",
        members - 1,
        elapsed,
        MESSAGES as f64 / elapsed.as_secs_f64(),
        (MESSAGES * (members - 1)) as f64 / elapsed.as_secs_f64(),
        latencies[latencies.len() / 2]
    );
    server.shutdown().await.unwrap();
}

/// A server for `localhost` on loopback with its data in `dir`, and how clients reach it.
async fn start_server(dir: &std::path::Path) -> (Server, ClientConfig) {
    let mut config = ServerConfig::new(
        "localhost".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        dir.join("data"),
    );
    // One local source drives the whole load: the per-source and per-client limits would
    // measure themselves, not the server.
    config.limits.requests_per_second_per_client = u32::MAX;
    config.limits.unauthenticated_requests_per_second_per_source = u32::MAX;
    config.limits.registrations_per_hour_per_source = u32::MAX;
    config.limits.handshakes_per_second_per_source = u32::MAX;
    config.limits.max_connections_per_source = usize::MAX;
    let server = Server::start(config).await.unwrap();
    let client_config =
        ClientConfig::new(server.local_addr(), "localhost", server.certificate_path()).unwrap();
    (server, client_config)
}

async fn register(store: &Store) -> Vec<String> {
    let tasks: Vec<_> = (0..USERS)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let user_id = format!("user{i}@localhost");
                let mut key = [0u8; 32];
                key[..8].copy_from_slice(&(i as u64).to_be_bytes());
                store
                    .register_user(NewUser {
                        user_id: user_id.clone(),
                        signature_key: key,
                        now: 0,
                        quarantine_secs: 0,
                        invite: None,
                        issue_credential: Box::new(|_| vec![0; 200]),
                    })
                    .await
                    .unwrap()
                    .unwrap();
                user_id
            })
        })
        .collect();
    let mut users = Vec::with_capacity(USERS);
    for task in tasks {
        users.push(task.await.unwrap());
    }
    users
}

/// The ceiling the enqueue figure is measured against: raw redb on the same disk, committing
/// 1 KiB values in batches of the size the writer reaches (`batch`), `Durability::Immediate`.
/// Returns values committed per second.
fn redb_ceiling(batch: usize) -> f64 {
    use redb::{Database, Durability, TableDefinition};
    const VALUES: usize = 20_000;
    const TABLE: TableDefinition<(&str, u32, u64), &[u8]> = TableDefinition::new("ceiling");
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("ceiling.redb")).unwrap();
    let value = vec![0x5a; 1024];
    let start = Instant::now();
    let mut written = 0u64;
    while (written as usize) < VALUES {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(Durability::Immediate).unwrap();
        {
            let mut table = txn.open_table(TABLE).unwrap();
            for _ in 0..batch {
                let user = format!("user{}@localhost", written % 200);
                table
                    .insert((user.as_str(), 1, written), value.as_slice())
                    .unwrap();
                written += 1;
            }
        }
        txn.commit().unwrap();
    }
    written as f64 / start.elapsed().as_secs_f64()
}

async fn concurrent_enqueues(store: &Store, users: &[String]) {
    const WRITERS: usize = 200;
    const PER_WRITER: usize = 100;
    let payload = Arc::new(vec![0x5a; 1024]);
    let commits = store.stats().commits();
    let start = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            let user_id = users[writer % users.len()].clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                for _ in 0..PER_WRITER {
                    let envelope = Envelope {
                        user_id: user_id.clone(),
                        device_id: 1,
                        kind: 0,
                        payload: payload.clone(),
                        admission: Admission::Message,
                    };
                    store
                        .enqueue(vec![envelope], 0, LIMITS)
                        .await
                        .unwrap()
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed();
    let messages = WRITERS * PER_WRITER;
    let commits = store.stats().commits() - commits;
    let rate = messages as f64 / elapsed.as_secs_f64();
    let per_commit = messages as f64 / commits as f64;
    let ceiling = redb_ceiling(per_commit.round() as usize);
    println!(
        "enqueue, {WRITERS} concurrent writers, 1 KiB each: {messages} messages in {:.2?} = {rate:.0} messages/s, {commits} commits ({per_commit:.1} messages per commit); raw redb, same batches: {ceiling:.0}/s; ratio {:.2}",
        elapsed,
        rate / ceiling
    );
}

async fn fan_out(store: &Store, users: &[String]) {
    for size in [64, 1024, 16 * 1024] {
        fan_out_of(store, users, size).await;
    }
}

async fn fan_out_of(store: &Store, users: &[String], size: usize) {
    const ROUNDS: usize = 20;
    let payload = Arc::new(vec![0xa5; size]);
    let mut timings = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let envelopes: Vec<_> = users
            .iter()
            .map(|user_id| Envelope {
                user_id: user_id.clone(),
                device_id: 1,
                kind: 0,
                payload: payload.clone(),
                admission: Admission::Message,
            })
            .collect();
        let start = Instant::now();
        store.enqueue(envelopes, 0, LIMITS).await.unwrap().unwrap();
        timings.push(start.elapsed());
    }
    timings.sort();
    println!(
        "fan-out of one {size}-byte message to {} queues (one commit): median {:.2?}, worst {:.2?}",
        users.len(),
        timings[ROUNDS / 2],
        timings[ROUNDS - 1]
    );
}

async fn quic_requests() {
    const REQUESTS: usize = 20_000;
    const IN_FLIGHT: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let (server, client_config) = start_server(dir.path()).await;
    let connection = Arc::new(Connection::connect(&client_config).await.unwrap());
    let start = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let connection = connection.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(REQUESTS / IN_FLIGHT);
                for _ in 0..REQUESTS / IN_FLIGHT {
                    let sent = Instant::now();
                    connection.server_info().await.unwrap();
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::with_capacity(REQUESTS);
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed();
    latencies.sort();
    println!(
        "GetServerInfo over one QUIC connection, {IN_FLIGHT} in flight: {} requests in {:.2?} = {:.0} requests/s, p50 {:.2?}, p99 {:.2?}",
        latencies.len(),
        elapsed,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100]
    );
    server.shutdown().await.unwrap();
}
