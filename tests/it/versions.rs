//! Protocol versions: both served side by side, each connection speaking the one its handshake
//! chose, and roost/1 refused clearly once its time is over.

use roost::client::{ClientConfig, ClientError, Connection};
use roost::clock::Clock;
use roost::protocol::{encode_request, ErrorCode, Request, Response, Retry, Version};

use crate::support::{new_key, within, TestServer, CIPHERSUITE};

fn speaking(server: &TestServer, versions: &[Version]) -> ClientConfig {
    let mut config = server.client_config();
    config.alpns = versions.iter().map(|v| v.alpn().to_vec()).collect();
    config
}

#[tokio::test]
async fn a_client_offering_both_versions_gets_the_newest_and_one_offering_roost_1_gets_roost_1() {
    let server = TestServer::start_with(|config| {
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    for (offer, expected) in [
        (&Version::ALL[..], Version::V2),
        (&[Version::V1][..], Version::V1),
        (&[Version::V2][..], Version::V2),
        // The server's preference decides, not the order of the offer.
        (&[Version::V1, Version::V2][..], Version::V2),
    ] {
        let connection = within(Connection::connect(&speaking(&server, offer)))
            .await
            .unwrap();
        assert_eq!(connection.version(), expected, "offering {offer:?}");
        let info = within(connection.server_info()).await.unwrap();
        assert_eq!(info.protocol_version, expected.number());
    }
    // Operators see how many clients of each version connect (when to retire roost/1).
    let text = crate::support::scrape_metrics(&server.server).await;
    for (version, count) in [(1, 1), (2, 3)] {
        let series = format!("roost_client_connections_total{{version=\"{version}\"}} {count}");
        assert!(
            text.lines().any(|line| line == series),
            "no {series} in:\n{text}"
        );
    }
}

#[tokio::test]
async fn each_connection_speaks_its_own_version_only() {
    let server = TestServer::start().await;
    for version in Version::ALL {
        let connection = within(Connection::connect(&speaking(&server, &[version])))
            .await
            .unwrap();
        // A device registers, authenticates and gets its push stream in either version.
        let key = new_key();
        let user = format!("user{}@localhost", version.number());
        let registered = within(connection.register_user(&user, &key, CIPHERSUITE, None))
            .await
            .unwrap();
        within(connection.authenticate(&registered.client, &key))
            .await
            .unwrap();
        assert_eq!(
            within(connection.who_am_i()).await.unwrap(),
            registered.client
        );
        // An envelope of the other version is refused with UnsupportedVersion, in this
        // connection's own form.
        let other = Version::ALL.into_iter().find(|v| *v != version).unwrap();
        let foreign = encode_request(other, &Request::GetServerInfo).unwrap();
        match within(connection.request_raw(&foreign)).await.unwrap() {
            Response::Error(e) => assert_eq!(e.code(), ErrorCode::UnsupportedVersion),
            other => panic!("{other:?}"),
        }
        // A refusal's class: on the wire in roost/2, from the code in roost/1; the same here.
        let taken = within(connection.register_user(&user, &new_key(), CIPHERSUITE, None)).await;
        match taken {
            Err(ClientError::Server(e)) => {
                assert_eq!(e.code(), ErrorCode::UserExists);
                assert_eq!(e.retry(), Retry::Never);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_rate_limit_says_when_to_retry_in_roost_2() {
    let server = TestServer::start_with(|config| {
        config.limits.unauthenticated_requests_per_second_per_source = 1;
    })
    .await;
    let connection = within(Connection::connect(&speaking(&server, &[Version::V2])))
        .await
        .unwrap();
    let mut refusal = None;
    for _ in 0..10 {
        if let Err(ClientError::Server(e)) = within(connection.server_info()).await {
            refusal = Some(e);
            break;
        }
    }
    let refusal = refusal.expect("the limit of one request a second was reached");
    assert_eq!(refusal.code(), ErrorCode::RateLimited);
    assert_eq!(refusal.retry(), Retry::Later);
    let wait = refusal.retry_after_hint().expect("a wait is given");
    assert!(wait <= std::time::Duration::from_secs(1), "{wait:?}");
}

#[tokio::test]
async fn roost_1_after_its_end_is_answered_unsupported_version_naming_roost_2() {
    let end = roost::clock::SystemClock.now() + 3_600;
    let server = TestServer::start_with(|config| config.roost1_served_until = Some(end)).await;
    let clock = server.clock.clone();
    assert!(clock.now() < end);
    let old = within(Connection::connect(&speaking(&server, &[Version::V1])))
        .await
        .unwrap();
    let key = new_key();
    let registered = within(old.register_user("alice@localhost", &key, CIPHERSUITE, None))
        .await
        .unwrap();

    clock.set(end);
    // The same connection and a new one: every request gets the one clear refusal.
    let again = within(Connection::connect(&speaking(&server, &[Version::V1])))
        .await
        .unwrap();
    for connection in [&old, &again] {
        match within(connection.server_info()).await {
            Err(ClientError::Server(e)) => {
                assert_eq!(e.code(), ErrorCode::UnsupportedVersion);
                assert!(e.message.as_str().contains("roost/2"), "{e}");
            }
            other => panic!("roost/1 still served: {other:?}"),
        }
        assert!(within(connection.authenticate(&registered.client, &key))
            .await
            .is_err());
    }
    // The same device goes on over roost/2.
    let new = within(Connection::connect(&server.client_config()))
        .await
        .unwrap();
    assert_eq!(new.version(), Version::V2);
    within(new.authenticate(&registered.client, &key))
        .await
        .unwrap();
}
