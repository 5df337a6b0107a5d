//! What an operator meets: commands that refuse a mistyped data directory, a failed start that
//! leaves nothing behind, configuration from the environment, the certificate check, the admin
//! interface of a running server, online backups and metrics.

use std::process::Command;

use crate::cli::{ServerProcess, ROOST};

fn roost(args: &[&str]) -> std::process::Output {
    Command::new(ROOST)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn operator_commands_refuse_a_data_dir_that_is_not_roosts() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo");
    let typo_arg = typo.to_str().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for args in [
        vec!["invite", "create", "--data-dir"],
        vec!["rotate-credential-key", "--data-dir"],
    ] {
        let output = roost(&[&args[..], &[typo_arg]].concat());
        assert!(!output.status.success(), "{args:?} accepted a missing dir");
        assert!(
            stderr(&output).contains("does not exist"),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(output.stdout.is_empty(), "{args:?} printed a result");
        assert!(!typo.exists(), "{args:?} created the mistyped directory");

        let output = roost(&[&args[..], &[empty.to_str().unwrap()]].concat());
        assert!(!output.status.success());
        assert!(
            stderr(&output).contains("holds no Roost data"),
            "{}",
            stderr(&output)
        );
        assert_eq!(
            std::fs::read_dir(&empty).unwrap().count(),
            0,
            "{args:?} wrote into it"
        );
        assert!(
            !stderr(&output).contains("backtrace"),
            "{}",
            stderr(&output)
        );
    }
}

#[test]
fn a_failed_start_leaves_no_data_dir_behind() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let data_dir = dir.path().join("data");
    let output = roost(&[
        "serve",
        "--listen",
        &listen,
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains(&listen), "{}", stderr(&output));
    assert!(!data_dir.exists(), "the failed start left {data_dir:?}");

    // A certificate that cannot be read fails the start after the port was bound.
    let output = roost(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--cert",
        "/nonexistent/cert.pem",
        "--key",
        "/nonexistent/key.pem",
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("/nonexistent/cert.pem"),
        "{}",
        stderr(&output)
    );
    assert!(!data_dir.exists(), "the failed start left {data_dir:?}");

    // A second server on a data directory in use says so, and leaves the first one's data alone.
    let first = ServerProcess::start(&data_dir, &[]);
    let output = roost(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("another roost process is using the data directory"),
        "{}",
        stderr(&output)
    );
    assert!(data_dir.join("roost.redb").exists());
    assert!(first.terminate().success());
}

/// `roost serve` configured by `ROOST_*` variables alone: domain a.example, the certificate
/// `roost certs` made for b.example in `certs`, JSON logs.
fn serve_from_environment(data_dir: &std::path::Path, certs: &std::path::Path) -> Command {
    let mut command = Command::new(ROOST);
    command
        .arg("serve")
        .env_remove("RUST_LOG")
        .env("ROOST_DOMAIN", "a.example")
        .env("ROOST_LISTEN", "127.0.0.1:0")
        .env("ROOST_DATA_DIR", data_dir)
        .env("ROOST_CERT", certs.join("b.example.pem"))
        .env("ROOST_KEY", certs.join("b.example.key"))
        .env("ROOST_LOG_FORMAT", "json");
    command
}

#[test]
fn serve_flags_come_from_the_environment_and_a_certificate_for_another_name_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    crate::cli::roost_certs(&certs, "b.example");
    let data_dir = dir.path().join("data");
    let output = serve_from_environment(&data_dir, &certs)
        // Not a number: the flag parser must have read it from the environment.
        .env("ROOST_MAX_CONNECTIONS", "many")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("many"), "{}", stderr(&output));

    let mut child = serve_from_environment(&data_dir, &certs)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let mut warned = false;
    for line in lines.map_while(Result::ok) {
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            event["timestamp"].is_string() && event["level"].is_string(),
            "{line}"
        );
        if event["message"]
            .as_str()
            .unwrap_or_default()
            .contains("does not name the domain")
        {
            assert_eq!(event["level"], "WARN");
            warned = true;
        }
        if event["message"] == "serving; clients must trust the certificate" {
            assert_eq!(event["domain"], "a.example", "ROOST_DOMAIN was not used");
            assert_eq!(event["data_dir"], data_dir.to_str().unwrap());
            break;
        }
    }
    assert!(warned, "no warning about the certificate's name");
    let _ = child.kill();
    let _ = child.wait();
}

mod admin {
    use std::io::{Read, Write};

    use roost::admin::{AdminClient, AdminClientError};
    use roost::protocol::admin::{
        AdminRequest, Backup, InviteCreated, InviteInfo, Invites, QueuesTop, Status, UserDeleted,
        UserDetails, UsersPage, ADMIN_SOCKET_FILE, MAX_ADMIN_REQUEST_LEN,
    };
    use roost::protocol::{ClientId, MessageKind, Notification, MAX_FETCH_COUNT};
    use roost::services::Delivery;

    use crate::support::{within, TestServer};

    fn admin_of(server: &TestServer) -> AdminClient {
        AdminClient::for_data_dir(&server.dir.path().join("data")).unwrap()
    }

    async fn ask<T: serde::de::DeserializeOwned>(admin: &AdminClient, request: AdminRequest) -> T {
        within(admin.request(&request)).await.unwrap()
    }

    async fn refusal(admin: &AdminClient, request: AdminRequest) -> String {
        match within(admin.request::<serde_json::Value>(&request)).await {
            Err(AdminClientError::Refused(refusal)) => refusal.code,
            other => panic!("{request:?} was not refused: {other:?}"),
        }
    }

    async fn deliver(server: &TestServer, to: &ClientId, payloads: impl Iterator<Item = Vec<u8>>) {
        let deliveries = payloads
            .map(|payload| Delivery {
                recipients: vec![to.clone()],
                kind: MessageKind::Mls,
                payload,
            })
            .collect();
        within(server.server.services().queues().deliver(deliveries))
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_admin_socket_shows_and_manages_users_invites_and_queues() {
        let server = TestServer::start().await;
        let admin = admin_of(&server);
        let alice = server.register("alice@localhost").await;
        let _alice_phone = server.add_device(&alice).await;
        let mut bob = server.register("bob@localhost").await;
        deliver(
            &server,
            &bob.identity.client,
            (0..3u8).map(|i| vec![i; 100]),
        )
        .await;
        deliver(
            &server,
            &alice.identity.client,
            std::iter::once(vec![9; 10]),
        )
        .await;

        let status: Status = ask(&admin, AdminRequest::Status).await;
        assert_eq!(
            (
                status.users,
                status.clients,
                status.queued_messages,
                status.queued_bytes
            ),
            (2, 3, 4, 310)
        );
        assert_eq!(status.connected_clients, 3);
        assert_eq!(status.domain, "localhost");
        assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
        assert!(status.store_bytes > 0);

        // Pages in id order.
        let first: UsersPage = ask(
            &admin,
            AdminRequest::UsersList {
                after: None,
                limit: 1,
            },
        )
        .await;
        assert_eq!(first.users[0].user_id, "alice@localhost");
        assert_eq!(first.users[0].clients, 2);
        assert_eq!(first.next_after.as_deref(), Some("alice@localhost"));
        let second: UsersPage = ask(
            &admin,
            AdminRequest::UsersList {
                after: first.next_after,
                limit: 1,
            },
        )
        .await;
        assert_eq!(second.users[0].user_id, "bob@localhost");
        assert_eq!(second.next_after, None);

        let shown: UserDetails = ask(
            &admin,
            AdminRequest::UserShow {
                user_id: "bob@localhost".into(),
            },
        )
        .await;
        assert_eq!(shown.clients.len(), 1);
        let device = &shown.clients[0];
        assert_eq!((device.queued_messages, device.queued_bytes), (3, 300));
        assert!(device.connected && device.oldest_queued_at.is_some());
        assert!(device.credential_expires_at.ends_with('Z'));

        let top: QueuesTop = ask(&admin, AdminRequest::QueuesTop { limit: 1 }).await;
        assert_eq!(top.queues.len(), 1);
        assert_eq!(
            (top.queues[0].user_id.as_str(), top.queues[0].messages),
            ("bob@localhost", 3)
        );

        // Invites: created, listed, revoked (twice keeps the first time), unknown ids refused.
        let created: InviteCreated = ask(
            &admin,
            AdminRequest::InvitesCreate {
                uses: 2,
                valid_days: 1,
            },
        )
        .await;
        assert!(created.code.starts_with("roost-invite-1."));
        let listed: Invites = ask(&admin, AdminRequest::InvitesList).await;
        assert_eq!(listed.invites.len(), 1);
        assert_eq!(
            (
                listed.invites[0].id.as_str(),
                listed.invites[0].state.as_str()
            ),
            (created.id.as_str(), "active")
        );
        let revoked: InviteInfo = ask(
            &admin,
            AdminRequest::InvitesRevoke {
                id: created.id.clone(),
            },
        )
        .await;
        assert_eq!(revoked.state, "revoked");
        let again: InviteInfo = ask(
            &admin,
            AdminRequest::InvitesRevoke {
                id: created.id.clone(),
            },
        )
        .await;
        assert_eq!(again.revoked_at, revoked.revoked_at);
        for id in ["00ff", "not hex", ""] {
            let request = AdminRequest::InvitesRevoke { id: id.into() };
            assert_eq!(refusal(&admin, request).await, "unknown_invite");
        }
        for bad in [
            AdminRequest::InvitesCreate {
                uses: 0,
                valid_days: 1,
            },
            AdminRequest::InvitesCreate {
                uses: 1,
                valid_days: 0,
            },
            AdminRequest::UserShow {
                user_id: "no-domain".into(),
            },
        ] {
            assert_eq!(refusal(&admin, bad).await, "bad_request");
        }
        let foreign = AdminRequest::UserShow {
            user_id: "bob@elsewhere.example".into(),
        };
        assert_eq!(refusal(&admin, foreign).await, "not_local_user");

        // Deleting bob is his own account deletion: he is told and disconnected, and nothing of
        // him is left in any table.
        let deleted: UserDeleted = ask(
            &admin,
            AdminRequest::UserDelete {
                user_id: "bob@localhost".into(),
            },
        )
        .await;
        assert_eq!(deleted.clients, 1);
        let told = within(async {
            loop {
                match bob.push.next().await {
                    Some(Ok(Notification::ClientRemoved(client))) => return client,
                    Some(Ok(_)) => continue,
                    other => panic!("bob's push stream ended without the notice: {other:?}"),
                }
            }
        })
        .await;
        assert_eq!(told, bob.identity.client);
        // The notice comes first, then the server closes bob's connection: a fetch it answers
        // in between finds nothing (the queue went with the user), and then none is answered.
        within(async {
            while let Ok(fetched) = bob
                .connection
                .fetch_messages(0, MAX_FETCH_COUNT, u32::MAX)
                .await
            {
                assert!(
                    fetched.messages.is_empty(),
                    "a deleted user's queue is gone"
                );
                tokio::task::yield_now().await;
            }
        })
        .await;
        let left = server
            .server
            .store()
            .tables_containing(b"bob@localhost")
            .await
            .unwrap();
        assert!(left.is_empty(), "bob is still in {left:?}");
        let gone = AdminRequest::UserShow {
            user_id: "bob@localhost".into(),
        };
        assert_eq!(refusal(&admin, gone).await, "unknown_user");
        let again = AdminRequest::UserDelete {
            user_id: "bob@localhost".into(),
        };
        assert_eq!(refusal(&admin, again).await, "unknown_user");
        let status: Status = ask(&admin, AdminRequest::Status).await;
        assert_eq!(
            (status.users, status.clients, status.queued_messages),
            (1, 2, 1)
        );
    }

    /// Sends `line` on a raw admin connection and returns the answer line.
    fn raw_exchange(socket: &std::path::Path, line: &[u8]) -> serde_json::Value {
        let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(crate::support::TEST_TIMEOUT))
            .unwrap();
        // A long line may be cut short by the server's answer: a write error is fine.
        let _ = stream.write_all(line);
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        serde_json::from_str(answer.trim()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_admin_requests_get_a_reason_and_the_server_goes_on() {
        let server = TestServer::start().await;
        let socket = server.dir.path().join("data").join(ADMIN_SOCKET_FILE);
        let socket_mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&socket).unwrap().permissions(),
        );
        assert_eq!(socket_mode & 0o777, 0o600);
        let mut too_long = vec![b'x'; MAX_ADMIN_REQUEST_LEN + 10];
        too_long.push(b'\n');
        let cases: [&[u8]; 5] = [
            b"not json\n",
            b"{\"op\":\"format_disk\"}\n",
            b"{\"op\":\"user_delete\"}\n",
            b"\n",
            &too_long,
        ];
        for line in cases {
            let socket = socket.clone();
            let line = line.to_vec();
            let answer = tokio::task::spawn_blocking(move || raw_exchange(&socket, &line))
                .await
                .unwrap();
            assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
            assert!(answer.get("ok").is_none());
        }
        // A client that connects and says nothing holds nothing up.
        let _silent = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let status: Status = ask(&admin_of(&server), AdminRequest::Status).await;
        assert_eq!(status.users, 0);
        // The socket goes with the server.
        within(server.server.shutdown()).await.unwrap();
        assert!(!socket.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_taken_under_load_restores_every_message_acknowledged_before_it() {
        let server = TestServer::start().await;
        let bob = server.register("bob@localhost").await;
        let bob_identity = bob.identity.clone();
        drop(bob);
        let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        // The load: messages for bob, each queued only after the previous was acknowledged,
        // numbered in their payload; it goes on during the whole backup.
        let load = tokio::spawn({
            let queues = server.server.services().queues().clone();
            let (acknowledged, stop, bob) = (
                acknowledged.clone(),
                stop.clone(),
                bob_identity.client.clone(),
            );
            async move {
                let mut next = 0u32;
                while !stop.is_cancelled() {
                    let delivery = Delivery {
                        recipients: vec![bob.clone()],
                        kind: MessageKind::Mls,
                        payload: next.to_be_bytes().repeat(64),
                    };
                    queues.deliver(vec![delivery]).await.unwrap();
                    next += 1;
                    acknowledged.store(next, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        within(async {
            while acknowledged.load(std::sync::atomic::Ordering::SeqCst) < 200 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        let before_backup = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
        let restored_dir = tempfile::tempdir().unwrap();
        let target = restored_dir.path().join("data");
        let backup: Backup = within(admin_of(&server).backup(&target)).await.unwrap();
        let after_backup = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
        stop.cancel();
        load.await.unwrap();
        assert!(
            after_backup > before_backup,
            "the load did not go on during the backup"
        );
        let names: Vec<&str> = backup.files.iter().map(|f| f.name.as_str()).collect();
        for expected in ["roost.redb", "invite-key", "vapid.key", "server-cert.pem"] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
        assert!(names
            .iter()
            .any(|name| name.starts_with("credential-keys/")));
        // The scratch copy is gone from the live data directory.
        let leftovers: Vec<_> = std::fs::read_dir(server.dir.path().join("data"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("backup"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // A second backup into the same directory is refused, leaving the first intact.
        assert!(within(admin_of(&server).backup(&target)).await.is_err());
        within(server.server.shutdown()).await.unwrap();

        // Restore: a server started on the backup has bob and every message acknowledged
        // before the backup began, in order, and a prefix of the load without gaps. (A backup
        // is a redb file whichever store it was taken from: a PostgreSQL store's restores into
        // a single node.)
        let restored_file = restored_dir
            .path()
            .join("data")
            .join(roost::store::DATABASE_FILE);
        let restored = TestServer::start_in(restored_dir, server.clock.clone(), |config| {
            config.store = Some(roost::store::StoreLocation::Redb(restored_file))
        })
        .await;
        let bob = restored.reconnect(&bob_identity).await;
        let mut numbers = Vec::new();
        loop {
            let fetched = within(bob.connection.fetch_messages(0, MAX_FETCH_COUNT, u32::MAX))
                .await
                .unwrap();
            let Some(last) = fetched.messages.last().map(|m| m.seq) else {
                break;
            };
            for message in &fetched.messages {
                let payload: &[u8] = message.payload.as_ref();
                numbers.push(u32::from_be_bytes(payload[..4].try_into().unwrap()));
            }
            within(bob.connection.ack_messages(last)).await.unwrap();
        }
        let expected: Vec<u32> = (0..numbers.len() as u32).collect();
        assert_eq!(numbers, expected, "the restored queue has gaps or disorder");
        assert!(
            numbers.len() as u32 >= before_backup,
            "{} messages restored, {before_backup} were acknowledged before the backup",
            numbers.len()
        );
        assert!(numbers.len() as u32 <= after_backup);

        // The copy a backup was making when its server died is removed at the next start.
        let scratch = restored
            .dir
            .path()
            .join("data")
            .join("backup-in-progress-0011223344556677");
        std::fs::create_dir(&scratch).unwrap();
        std::fs::write(scratch.join("roost.redb"), b"half a copy").unwrap();
        let restored = restored.restart().await;
        assert!(!scratch.exists());
        drop(restored);
    }
}

mod metrics {
    use roost::protocol::{ErrorCode, MessageKind};
    use roost::services::Delivery;

    use crate::support::{code, within, TestServer};

    async fn get(server: &TestServer, path: &str) -> (u16, String, String) {
        let address = server.server.metrics_addr().expect("metrics are served");
        let response = within(reqwest::get(format!("http://{address}{path}")))
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, content_type, within(response.text()).await.unwrap())
    }

    /// The value of the sample line starting with `series ` (name and labels as printed).
    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
            .parse()
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_count_requests_connections_and_what_the_store_holds() {
        let server = TestServer::start_with(|config| {
            config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        let alice = server.register("alice@localhost").await;
        let bob = server.register("bob@localhost").await;
        let delivery = Delivery {
            recipients: vec![bob.identity.client.clone()],
            kind: MessageKind::Mls,
            payload: vec![7; 100],
        };
        within(server.server.services().queues().deliver(vec![delivery]))
            .await
            .unwrap();
        // One refused request: a lookup of a user id that is not one.
        let refused = within(alice.connection.lookup_user("not an id")).await;
        assert_eq!(code(refused), ErrorCode::InvalidUserId);

        let (status, content_type, text) = get(&server, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(sample(&text, "roost_users"), 2.0);
        assert_eq!(sample(&text, "roost_clients"), 2.0);
        assert_eq!(sample(&text, "roost_connected_clients"), 2.0);
        assert_eq!(sample(&text, "roost_queued_messages"), 1.0);
        assert_eq!(sample(&text, "roost_queued_bytes"), 100.0);
        assert_eq!(
            sample(
                &text,
                r#"roost_requests_total{operation="RegisterUser",outcome="ok"}"#
            ),
            2.0
        );
        assert_eq!(
            sample(
                &text,
                r#"roost_requests_total{operation="LookupUser",outcome="InvalidUserId"}"#
            ),
            1.0
        );
        assert_eq!(
            sample(
                &text,
                r#"roost_request_duration_seconds_count{operation="Authenticate"}"#
            ),
            2.0
        );
        assert_eq!(
            sample(&text, r#"roost_connections_open{kind="client"}"#),
            2.0
        );
        assert!(sample(&text, "roost_store_commits_total") >= 3.0);
        assert!(sample(&text, "roost_store_commit_writes_count") >= 3.0);
        assert!(sample(&text, "roost_store_file_bytes") > 0.0);

        // A closed connection is no longer open.
        drop(alice);
        within(async {
            loop {
                let (_, _, text) = get(&server, "/metrics").await;
                if sample(&text, r#"roost_connections_open{kind="client"}"#) == 1.0 {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;

        let (status, _, body) = get(&server, "/health").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        assert_eq!(get(&server, "/nothing").await.0, 404);
    }

    /// A connection from `source` that sends the start of a request and then nothing.
    async fn slow_sender(
        source: std::net::IpAddr,
        to: std::net::SocketAddr,
    ) -> tokio::net::TcpStream {
        use tokio::io::AsyncWriteExt;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        let mut stream = socket.connect(to).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: roost\r\n")
            .await
            .unwrap();
        stream
    }

    /// Reads until the server closes the connection.
    async fn closed(mut stream: tokio::net::TcpStream) {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 256];
        while !matches!(stream.read(&mut buf).await, Ok(0) | Err(_)) {}
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_senders_from_one_source_hold_few_slots_briefly_and_scrapes_go_on() {
        let server = TestServer::start_with(|config| {
            config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        let address = server.server.metrics_addr().unwrap();
        let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..130 {
            held.push(within(slow_sender(attacker, address)).await);
        }
        // All but the source's share are closed at once...
        let (sender, mut closes) = tokio::sync::mpsc::unbounded_channel();
        for stream in held {
            let sender = sender.clone();
            tokio::spawn(async move {
                closed(stream).await;
                let _ = sender.send(());
            });
        }
        within(async {
            for _ in 0..122 {
                closes.recv().await.unwrap();
            }
        })
        .await;
        // ...a scrape from elsewhere is answered while the rest are held...
        let (status, _, text) = get(&server, "/metrics").await;
        assert_eq!(status, 200);
        assert!(text.ends_with("# EOF\n"));
        // ...and those end at the header deadline.
        within(async {
            for _ in 0..8 {
                closes.recv().await.unwrap();
            }
        })
        .await;
    }

    #[tokio::test]
    async fn metrics_are_off_unless_asked_for() {
        let server = TestServer::start().await;
        assert_eq!(server.server.metrics_addr(), None);
    }
}

#[test]
fn roost_admin_reaches_the_running_server_through_its_data_dir_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();
    // Before the server ever ran: refused, nothing created.
    let output = roost(&["admin", "status", "--data-dir", data]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("does not exist"),
        "{}",
        stderr(&output)
    );

    let server = ServerProcess::start(&data_dir, &["--registration", "invite"]);
    let output = roost(&["admin", "--json", "status", "--data-dir", data]);
    assert!(output.status.success(), "{}", stderr(&output));
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["registration"], "invite");
    assert_eq!(status["listen"], server.addr.to_string());
    // Text output is for people: times in UTC, counts in words.
    let output = roost(&["admin", "status", "--data-dir", data]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains(" UTC") && text.contains("0 users"), "{text}");

    let output = roost(&[
        "admin",
        "users",
        "delete",
        "bob@localhost",
        "--data-dir",
        data,
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--yes"), "{}", stderr(&output));
    let output = roost(&[
        "admin",
        "--json",
        "users",
        "show",
        "bob@localhost",
        "--data-dir",
        data,
    ]);
    assert!(!output.status.success());
    let refusal: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(refusal["error"]["code"], "unknown_user");
    let output = roost(&["admin", "users", "list", "--data-dir", data]);
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), "no users");

    // `roost invite` goes through the socket while the server runs.
    let output = roost(&["invite", "create", "--data-dir", data]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = roost(&["invite", "--json", "list", "--data-dir", data]);
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed["invites"].as_array().unwrap().len(), 1);
    assert!(server.terminate().success());

    // With the server stopped: admin commands say so; an invite is recorded directly and
    // admits a user once the server is back.
    let output = roost(&["admin", "status", "--data-dir", data]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no server is running"),
        "{}",
        stderr(&output)
    );
    let output = roost(&["invite", "create", "--data-dir", data]);
    assert!(output.status.success(), "{}", stderr(&output));
    let code = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let server = ServerProcess::start(&data_dir, &["--registration", "invite"]);
    let state = dir.path().join("alice");
    let registered = crate::cli::client_json(
        server.addr,
        "localhost",
        &data_dir.join("server-cert.pem"),
        &[
            "--state",
            state.to_str().unwrap(),
            "register",
            "alice@localhost",
            "--invite",
            &code,
        ],
    );
    assert_eq!(registered["registered"]["verified"], true);
    let output = roost(&["invite", "--json", "list", "--data-dir", data]);
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut states: Vec<&str> = listed["invites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|invite| invite["state"].as_str().unwrap())
        .collect();
    // Two invites made within a second may list in either order.
    states.sort_unstable();
    assert_eq!(states, ["active", "used_up"]);
    assert!(server.terminate().success());
}
