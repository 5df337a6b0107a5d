//! Per-source and per-client limits: one source cannot take every connection slot, open
//! connections or register accounts as fast as it likes, and one client cannot send requests
//! without bound; each refusal has its own code or close reason.

use roost::client::{ClientError, Connection};
use roost::protocol::{close_code, ErrorCode};

use crate::support::{code, new_key, within, TestServer, CIPHERSUITE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holds_only_so_many_connections() {
    let server =
        TestServer::start_with(|config| config.limits.max_connections_per_source = 2).await;
    let first = server.connect().await;
    let _second = server.connect().await;
    let third = server.connect().await;
    match within(third.closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, close_code::TOO_MANY_CONNECTIONS.into())
        }
        other => panic!("expected TOO_MANY_CONNECTIONS, got {other:?}"),
    }
    // A slot freed is a slot for the same source again.
    within(first.close()).await;
    let again = within(async {
        loop {
            let connection = server.connect().await;
            if connection.server_info().await.is_ok() {
                return connection;
            }
        }
    })
    .await;
    within(again.server_info()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_opens_only_so_many_connections_a_second() {
    let server =
        TestServer::start_with(|config| config.limits.handshakes_per_second_per_source = 3).await;
    let mut refused = 0;
    let mut held = Vec::new();
    for _ in 0..10 {
        match within(Connection::connect(&server.client_config())).await {
            Ok(connection) => held.push(connection),
            Err(ClientError::Connect(_)) => refused += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert!(held.len() >= 3, "a burst of the limit gets through");
    assert!(refused >= 5, "the rest of the burst is refused ({refused})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_registers_only_so_many_users_an_hour() {
    let server =
        TestServer::start_with(|config| config.limits.registrations_per_hour_per_source = 2).await;
    for user in ["a@localhost", "b@localhost"] {
        server.register(user).await;
    }
    let connection = server.connect().await;
    let refused =
        within(connection.register_user("c@localhost", &new_key(), CIPHERSUITE, None)).await;
    assert_eq!(code(refused), ErrorCode::RateLimited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sends_only_so_many_requests_a_second() {
    let server = TestServer::start_with(|config| {
        config.limits.requests_per_second_per_client = 5;
        config.limits.unauthenticated_requests_per_second_per_source = 5;
    })
    .await;
    let device = server.register("alice@localhost").await;
    let mut limited = None;
    for _ in 0..20 {
        if let Err(e) = within(device.connection.who_am_i()).await {
            limited = Some(e);
            break;
        }
    }
    assert_eq!(
        limited.expect("a burst over the limit is refused").code(),
        Some(ErrorCode::RateLimited)
    );
    // Before authentication, the source is limited the same way.
    let anonymous = server.connect().await;
    let mut limited = None;
    for _ in 0..20 {
        if let Err(e) = within(anonymous.server_info()).await {
            limited = Some(e);
            break;
        }
    }
    assert_eq!(limited.unwrap().code(), Some(ErrorCode::RateLimited));
}

/// The log lines a test wrote, captured from the global subscriber.
#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_flood_or_forge_the_log() {
    let log = CapturedLog::default();
    let writer = log.clone();
    let installed = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .try_init();
    assert!(installed.is_ok(), "only this test installs a subscriber");

    let server = TestServer::start().await;
    let mut group_id = vec![1u8; roost::identity::GROUP_ID_RANDOM_LEN];
    group_id.extend_from_slice(b"b.example");
    let recipients: Vec<roost::protocol::ClientId> = (0..20_001)
        .map(|i| roost::protocol::ClientId {
            user_id: roost::protocol::Text::new(format!("nobody{i}@localhost")).unwrap(),
            device_id: 1,
        })
        .collect();
    let delivery = |id: u8, recipients| {
        roost::protocol::FederationRequest::Deliver(roost::protocol::DeliverRequest {
            delivery_id: vec![id; 16].into(),
            group_id: group_id.clone().into(),
            items: vec![roost::protocol::DeliveryItem {
                recipients,
                kind: roost::protocol::MessageKind::ServerNotice,
                payload: vec![0, 3].into(),
            }],
        })
    };
    let services = server.server.services();
    within(services.handle_federation("b.example", delivery(9, recipients)))
        .await
        .unwrap();
    // A recipient id that tries to write a line of its own is not a user id: refused, and
    // what is said of it is escaped.
    let forged = roost::protocol::ClientId {
        user_id: roost::protocol::Text::new("x\nFORGED-LINE 2026 INFO all is well@localhost")
            .unwrap(),
        device_id: 1,
    };
    let refused = within(services.handle_federation("b.example", delivery(10, vec![forged]))).await;
    match refused {
        Err(refusal @ roost::services::ServiceError::InvalidUserId(_)) => {
            assert!(!refusal.to_string().contains('\n'), "{refusal}")
        }
        other => panic!("{other:?}"),
    }

    let written = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let about_it: Vec<&str> = written
        .lines()
        .filter(|line| line.contains("named recipients that are not clients here"))
        .collect();
    assert_eq!(
        about_it.len(),
        1,
        "one line for the whole delivery: {about_it:?}"
    );
    assert!(about_it[0].contains("not_queued=20001"), "{}", about_it[0]);
    assert!(
        !written.lines().any(|line| line.starts_with("FORGED-LINE")),
        "a recipient id wrote its own line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_key_packages_and_malformed_delivery_ids_are_refused_before_storage() {
    use openmls::prelude::{
        Capabilities, Ciphersuite, Extension, ExtensionType, Extensions, KeyPackage,
        UnknownExtension,
    };
    use tls_codec::Serialize;

    let server = TestServer::start().await;
    let device = server.register("bob@localhost").await;
    // A genuine, valid KeyPackage carrying 20 KB of extension: over the limit.
    let padding = 0xff00;
    let capabilities = Capabilities::builder()
        .extensions(vec![
            ExtensionType::Unknown(roost::protocol::ROLES_EXTENSION_TYPE),
            ExtensionType::Unknown(padding),
        ])
        .build();
    let bundle = KeyPackage::builder()
        .leaf_node_capabilities(capabilities)
        .key_package_extensions(
            Extensions::single(Extension::Unknown(
                padding,
                UnknownExtension(vec![0; 20_000]),
            ))
            .unwrap(),
        )
        .build(
            Ciphersuite::try_from(CIPHERSUITE).unwrap(),
            device.mls.provider(),
            device.mls.signer(),
            device.mls.credential().clone(),
        )
        .unwrap();
    let bytes = bundle.key_package().tls_serialize_detached().unwrap();
    assert!(bytes.len() > roost::protocol::MAX_KEY_PACKAGE_LEN);
    let refused = within(device.connection.publish_key_packages(vec![bytes])).await;
    assert_eq!(code(refused), ErrorCode::InvalidKeyPackage);

    let mut group_id = vec![1u8; roost::identity::GROUP_ID_RANDOM_LEN];
    group_id.extend_from_slice(b"b.example");
    let delivery = roost::protocol::FederationRequest::Deliver(roost::protocol::DeliverRequest {
        delivery_id: vec![9; 64].into(),
        group_id: group_id.into(),
        items: Vec::new(),
    });
    let refused = within(
        server
            .server
            .services()
            .handle_federation("b.example", delivery),
    )
    .await;
    assert!(
        matches!(refused, Err(roost::services::ServiceError::PeerRefused(_))),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_database_are_private_even_if_the_directory_existed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = roost::config::ServerConfig::new(
        "localhost".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        data_dir.clone(),
    );
    let server = within(roost::server::Server::start(config)).await.unwrap();
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir), 0o700);
    assert_eq!(mode(&data_dir.join(roost::store::DATABASE_FILE)), 0o600);
    within(server.shutdown()).await.unwrap();
}
