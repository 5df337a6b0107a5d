//! Graceful shutdown: stop accepting, tell clients, finish in-flight requests, close the store.

use roost::client::Connection;
use roost::protocol::{
    close_code, decode_response, encode_request, Notification, Request, Response, ResponseBody,
    MAX_RESPONSE_LEN,
};
use roost::store::Store;

use crate::support::{within, TestServer};

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_then_closes_everything() {
    let harness = TestServer::start().await;
    let alice = harness.register("alice@localhost").await;
    let config = harness.client_config();
    let TestServer {
        server,
        dir,
        database,
        ..
    } = harness;
    let connection = alice.connection;
    let mut push = alice.push;

    // A request in flight: its stream is open and half written when shutdown begins.
    let request =
        encode_request(roost::protocol::Version::LATEST, &Request::GetServerInfo).unwrap();
    let (mut send, mut recv) = connection.quic().open_bi().await.unwrap();
    send.write_all(&request[..2]).await.unwrap();
    // Streams are accepted in order: once a later request is answered, the server has the
    // half-written one.
    within(connection.server_info()).await.unwrap();

    let data_dir = dir.path().join("data");
    let shutdown = tokio::spawn(server.shutdown());

    // Clients are told first.
    match within(push.next()).await.unwrap().unwrap() {
        Notification::ServerShutdown(notice) => assert!(notice.retry_after_ms > 0),
        other => panic!("expected the shutdown notice, got {other:?}"),
    }
    // New connections are refused.
    assert!(within(Connection::connect(&config)).await.is_err());

    // The in-flight request completes.
    send.write_all(&request[2..]).await.unwrap();
    send.finish().unwrap();
    let response = within(recv.read_to_end(MAX_RESPONSE_LEN)).await.unwrap();
    assert!(matches!(
        decode_response(roost::protocol::Version::LATEST, &response).unwrap(),
        Response::Ok(ResponseBody::ServerInfo(_))
    ));

    // Then the connection is closed with the shutdown code, and the server is done.
    match within(connection.closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, close_code::SHUTTING_DOWN.into());
        }
        other => panic!("unexpected close: {other}"),
    }
    within(shutdown).await.unwrap().unwrap();

    // The store was closed cleanly: the database opens again.
    let location = match &database {
        Some(database) => roost::store::StoreLocation::Postgres(database.url.clone()),
        None => roost::store::StoreLocation::Redb(data_dir.join(roost::store::DATABASE_FILE)),
    };
    let reopened = tokio::task::spawn_blocking(move || Store::open_at(&location))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        reopened.bound_domain().await.unwrap().as_deref(),
        Some("localhost")
    );
}
