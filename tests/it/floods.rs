//! Floods against the real server binary, with its resident memory measured from `/proc`: one
//! source that sends requests it never finishes, or asks for responses it never reads, must not
//! make the server hold more than its budgets (transport/budget.rs), and others stay served.

use std::time::Duration;

use roost::client::groups::GroupClient;
use roost::client::{ClientConfig, Connection};
use roost::clock::Clock;
use roost::protocol::{close_code, encode_request, FetchMessagesRequest, Request, MAX_REQUEST_LEN};

use crate::cli::ServerProcess;
use crate::support::{register_device, within};

const MIB: usize = 1024 * 1024;

/// The highest resident memory of `server` over `period`, sampled every 50 ms (the flood keeps
/// arriving meanwhile; there is no event to wait for).
async fn peak_rss(server: &ServerProcess, period: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + period;
    let mut peak = server.rss();
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(server.rss());
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_never_finish_cannot_pin_the_servers_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, &[]);
    let config =
        ClientConfig::new(server.addr, "localhost", &data_dir.join("server-cert.pem")).unwrap();
    const CONNECTIONS: usize = 8;
    const STREAMS: usize = 64;
    let mut connections = Vec::new();
    for i in 0..CONNECTIONS {
        connections.push(
            register_device(&config, &format!("flood{i}@localhost"))
                .await
                .0,
        );
    }
    let baseline = server.rss();

    // Every stream sends all but the last byte of a largest request and never finishes it.
    let almost = std::sync::Arc::new(vec![0u8; MAX_REQUEST_LEN - 1]);
    let mut writers = tokio::task::JoinSet::new();
    for connection in &connections {
        for _ in 0..STREAMS {
            let quic = connection.quic().clone();
            let almost = almost.clone();
            writers.spawn(async move {
                let (mut send, _recv) = quic.open_bi().await?;
                send.write_all(&almost).await?;
                // Hold the stream open, unfinished, until the test ends.
                std::future::pending::<()>().await;
                anyhow::Ok(())
            });
        }
    }
    let peak = peak_rss(&server, Duration::from_secs(3)).await;
    let grown = peak.saturating_sub(baseline);
    println!(
        "{CONNECTIONS} connections x {STREAMS} unfinished 1 MiB requests: server RSS {} -> {} MiB (+{} MiB)",
        baseline / MIB,
        peak / MIB,
        grown / MIB
    );
    // Per connection: quinn's receive window (2 MiB), its own large-request budget (4 MiB) and
    // the first chunk of each stream (64 x 16 KiB); before the budgets this flood took 546 MiB.
    assert!(
        grown < CONNECTIONS * 14 * MIB,
        "the flood grew the server by {} MiB",
        grown / MIB
    );
    // Everyone else is still served.
    let other = within(Connection::connect(&config)).await.unwrap();
    within(other.server_info()).await.unwrap();
    writers.abort_all();
    drop(connections);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_never_read_cannot_pin_the_servers_memory_and_the_reader_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, &["--request-timeout-secs", "2"]);
    let config =
        ClientConfig::new(server.addr, "localhost", &data_dir.join("server-cert.pem")).unwrap();

    // Bob's queue holds 8 MiB: alice sends him 40 messages of 200 KiB in their group.
    let (alice, _, alice_mls) = register_device(&config, "alice@localhost").await;
    let (bob, bob_identity, _) = register_device(&config, "bob@localhost").await;
    let now = roost::clock::SystemClock.now();
    let keys = within(alice.domain_keys()).await.unwrap();
    let admin = GroupClient::new(&alice, &alice_mls, keys.clone(), now);
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite(&group_id, "bob@localhost"))
        .await
        .unwrap();
    let text = vec![b'x'; 200 * 1024];
    for _ in 0..40 {
        within(admin.send(&group_id, &text)).await.unwrap();
    }
    drop(bob);
    let baseline = server.rss();

    // Two connections of bob's each ask for 4 MiB, 63 times, and read nothing.
    const CONNECTIONS: usize = 2;
    const REQUESTS: usize = 63;
    let fetch = encode_request(
        roost::protocol::Version::LATEST,
        &Request::FetchMessages(FetchMessagesRequest {
            from_seq: 0,
            max_count: 1000,
            max_bytes: 4 * MIB as u32,
        }),
    )
    .unwrap();
    let mut readers = Vec::new();
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        let connection = within(Connection::connect(&config)).await.unwrap();
        within(
            connection.authenticate_without_push(&bob_identity.client, &bob_identity.signing_key),
        )
        .await
        .unwrap();
        for _ in 0..REQUESTS {
            let (mut send, recv) = within(connection.quic().open_bi()).await.unwrap();
            within(send.write_all(&fetch)).await.unwrap();
            send.finish().unwrap();
            held.push((send, recv));
        }
        readers.push(connection);
    }
    let peak = peak_rss(&server, Duration::from_millis(1500)).await;
    let grown = peak.saturating_sub(baseline);
    println!(
        "{CONNECTIONS} connections x {REQUESTS} unread 4 MiB fetches: server RSS {} -> {} MiB (+{} MiB)",
        baseline / MIB,
        peak / MIB,
        grown / MIB
    );
    // Per connection: its response budget (8 MiB) and quinn's send window (8 MiB); before the
    // budgets this flood took 892 MiB.
    assert!(
        grown < CONNECTIONS * 24 * MIB,
        "the flood grew the server by {} MiB",
        grown / MIB
    );
    // A connection that does not read what it asked for is closed once a write times out.
    for connection in &readers {
        match within(connection.closed()).await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, close_code::NOT_READING.into())
            }
            other => panic!("expected a NOT_READING close, got {other:?}"),
        }
    }
    // Everyone else is still served.
    within(alice.server_info()).await.unwrap();
    drop(held);
    assert!(server.terminate().success());
}
