//! Connections, ALPN, limits and bad input.

use roost::client::{ClientError, Connection};
use roost::protocol::{
    close_code, encode_request, ErrorCode, Request, Response, Version, ALPN_FEDERATION,
    MAX_REQUEST_LEN, MAX_UNAUTHENTICATED_REQUEST_LEN,
};

use crate::support::{within, TestServer};

#[tokio::test]
async fn connect_and_get_server_info() {
    let server = TestServer::start().await;
    let connection = server.connect().await;
    let info = within(connection.server_info()).await.unwrap();
    assert_eq!(info.domain.as_str(), "localhost");
    assert_eq!(
        info.protocol_version,
        roost::protocol::Version::LATEST.number()
    );
    assert_eq!(info.limits.max_request_len as usize, MAX_REQUEST_LEN);
    assert_eq!(info.limits.max_concurrent_streams, 64);
}

#[tokio::test]
async fn a_wrong_alpn_is_refused_in_the_handshake() {
    let server = TestServer::start().await;
    let mut config = server.client_config();
    config.alpns = vec![b"h3".to_vec()];
    let result = within(Connection::connect(&config)).await;
    assert!(
        matches!(result, Err(ClientError::Connect(_))),
        "a connection with ALPN h3 was accepted"
    );
    // The server is still up for everyone else.
    within(server.connect().await.server_info()).await.unwrap();
}

#[tokio::test]
async fn a_handshake_without_alpn_is_refused_in_the_handshake() {
    let server = TestServer::start().await;
    let mut config = server.client_config();
    config.alpns = Vec::new();
    let result = within(Connection::connect(&config)).await;
    match result {
        // QUIC CRYPTO_ERROR 0x100 + TLS alert no_application_protocol (120).
        Err(ClientError::Connect(reason)) => assert!(
            reason.contains("no_application_protocol")
                || reason.contains("NoApplicationProtocol")
                || reason.contains("0x178")
                || reason.contains("120"),
            "{reason}"
        ),
        other => panic!("a connection without ALPN was accepted: {:?}", other.err()),
    }
}

#[tokio::test]
async fn the_federation_alpn_is_closed_while_federation_is_off() {
    let server = TestServer::start().await;
    let mut config = server.client_config();
    config.alpns = vec![ALPN_FEDERATION.to_vec()];
    let connection = within(Connection::connect(&config)).await.unwrap();
    match within(connection.closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, close_code::UNSUPPORTED_ALPN.into());
        }
        other => panic!("unexpected close: {other}"),
    }
}

#[tokio::test]
async fn an_oversize_request_gets_the_size_error_and_the_server_stays_up() {
    let server = TestServer::start().await;
    let connection = server.connect().await;
    let oversize = vec![0u8; MAX_REQUEST_LEN + 1];
    match within(connection.request_raw(&oversize)).await.unwrap() {
        Response::Error(e) => assert_eq!(e.code(), ErrorCode::RequestTooLarge),
        other => panic!("oversize request answered with {other:?}"),
    }
    // The same connection and a new one both still work.
    within(connection.server_info()).await.unwrap();
    within(server.connect().await.server_info()).await.unwrap();
}

#[tokio::test]
async fn a_request_of_exactly_the_limit_is_read_and_decoded() {
    let server = TestServer::start().await;
    let device = server.register("alice@localhost").await;
    let mut at_limit = encode_request(Version::LATEST, &Request::GetServerInfo).unwrap();
    at_limit.resize(MAX_REQUEST_LEN, 0);
    match within(device.connection.request_raw(&at_limit))
        .await
        .unwrap()
    {
        // Read in full, then refused for its trailing bytes: not for its size.
        Response::Error(e) => assert_eq!(e.code(), ErrorCode::MalformedRequest),
        other => panic!("padded request answered with {other:?}"),
    }
}

#[tokio::test]
async fn before_authentication_only_small_requests_are_read() {
    let server = TestServer::start().await;
    let connection = server.connect().await;
    let mut padded = encode_request(Version::LATEST, &Request::GetServerInfo).unwrap();
    padded.resize(MAX_UNAUTHENTICATED_REQUEST_LEN, 0);
    match within(connection.request_raw(&padded)).await.unwrap() {
        Response::Error(e) => assert_eq!(e.code(), ErrorCode::MalformedRequest),
        other => panic!("padded request answered with {other:?}"),
    }
    padded.push(0);
    match within(connection.request_raw(&padded)).await.unwrap() {
        Response::Error(e) => assert_eq!(e.code(), ErrorCode::RequestTooLarge),
        other => panic!("oversize request answered with {other:?}"),
    }
    within(connection.server_info()).await.unwrap();
}

#[tokio::test]
async fn garbage_gets_a_decode_error_and_the_server_stays_up() {
    let server = TestServer::start().await;
    let connection = server.connect().await;
    let cases: [(&[u8], ErrorCode); 6] = [
        (b"", ErrorCode::MalformedRequest),
        (b"\x00\x02\x00\x02\xff\xff\xff", ErrorCode::MalformedRequest),
        (b"\x00\x02\x00\x01trailing", ErrorCode::MalformedRequest),
        (b"\x47\x45\x54\x20/", ErrorCode::UnsupportedVersion),
        (b"\x00\x02\x7f\x00", ErrorCode::UnknownOperation),
        (b"\x00\x01\x00\x01", ErrorCode::UnsupportedVersion),
    ];
    for (bytes, expected) in cases {
        match within(connection.request_raw(bytes)).await.unwrap() {
            Response::Error(e) => assert_eq!(e.code(), expected, "for {bytes:?}: {e}"),
            other => panic!("{bytes:?} answered with {other:?}"),
        }
    }
    within(connection.server_info()).await.unwrap();
}

#[tokio::test]
async fn many_requests_run_concurrently_on_one_connection() {
    let server = TestServer::start().await;
    let device = server.register("alice@localhost").await;
    let connection = &device.connection;
    // More than the per-connection stream limit: the rest wait for a free stream, none fail.
    let requests = (0..200).map(|_| connection.server_info());
    for result in within(futures::future::join_all(requests)).await {
        result.unwrap();
    }
}
