//! The real binaries: `roost serve` under signals, `roost certs`, `roost-client info`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::TEST_TIMEOUT;

pub(crate) const ROOST: &str = env!("CARGO_BIN_EXE_roost");
pub(crate) const ROOST_CLIENT: &str = env!("CARGO_BIN_EXE_roost-client");

/// A `roost serve` process; killed if the test ends early.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl ServerProcess {
    pub(crate) fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", data_dir, extra)
    }

    pub(crate) fn start_on(listen: &str, data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(ROOST)
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The log line announcing the bound address carries `listen=ADDR`.
        let stderr = child.stderr.take().unwrap();
        let (found, addr) = mpsc::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listen=").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    if let Some(found) = found.take() {
                        let _ = found.send(addr);
                    }
                }
            }
        });
        let addr = addr
            .recv_timeout(TEST_TIMEOUT)
            .expect("the server never logged its address")
            .parse()
            .unwrap();
        Self { child, addr }
    }

    /// Kills the server with SIGKILL: no shutdown, no flush beyond what it committed.
    pub(crate) fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's resident memory now, in bytes (Linux `/proc`).
    pub(crate) fn rss(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: usize = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap();
        kib * 1024
    }

    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + TEST_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn client_json(
    addr: SocketAddr,
    server_name: &str,
    ca: &Path,
    command: &[&str],
) -> serde_json::Value {
    let output = client_command(addr, server_name, ca, command);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "roost-client {command:?} failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Commands that catch up with the queue print what they processed first, a line each.
    serde_json::from_str(stdout.trim().lines().last().unwrap_or_default()).unwrap()
}

/// Starts `roost-client` with `args` in the background; its stdout arrives line by line.
fn spawn_client(
    addr: SocketAddr,
    ca: &Path,
    args: &[&str],
) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(ROOST_CLIENT)
        .args(["--server", &addr.to_string(), "--ca"])
        .arg(ca)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    (child, lines)
}

pub(crate) fn client_command(
    addr: SocketAddr,
    server_name: &str,
    ca: &Path,
    command: &[&str],
) -> std::process::Output {
    Command::new(ROOST_CLIENT)
        .args([
            "--server",
            &addr.to_string(),
            "--server-name",
            server_name,
            "--ca",
        ])
        .arg(ca)
        .arg("--json")
        .args(command)
        .output()
        .unwrap()
}

#[test]
fn serve_answers_info_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, &["--domain", "a.example"]);
    let info = client_json(
        server.addr,
        "a.example",
        &data_dir.join("server-cert.pem"),
        &["info"],
    );
    assert_eq!(info["domain"], "a.example");
    assert_eq!(info["protocol_version"], 2);
    let status = server.terminate();
    assert!(status.success(), "roost exited with {status}");

    // The generated certificate is reused on the next start, and the key is private.
    let cert = std::fs::read(data_dir.join("server-cert.pem")).unwrap();
    let server = ServerProcess::start(&data_dir, &["--domain", "a.example"]);
    assert_eq!(
        std::fs::read(data_dir.join("server-cert.pem")).unwrap(),
        cert
    );
    assert_private(&data_dir.join("server-key.pem"));
    assert!(server.terminate().success());
}

#[test]
fn serve_refuses_a_data_dir_made_for_another_domain() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    assert!(ServerProcess::start(&data_dir, &["--domain", "a.example"])
        .terminate()
        .success());
    let output = Command::new(ROOST)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--domain",
            "b.example",
            "--data-dir",
        ])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("a.example"));
}

/// The `roost serve` flags for `domain` with the certificate `roost certs` wrote into `certs`.
pub(crate) fn serve_as(certs: &Path, domain: &str) -> Vec<String> {
    let file = |extension: &str| {
        certs
            .join(format!("{domain}.{extension}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    vec![
        "--domain".to_owned(),
        domain.to_owned(),
        "--cert".to_owned(),
        file("pem"),
        "--key".to_owned(),
        file("key"),
    ]
}

/// `roost certs --domain DOMAIN --out OUT`.
pub(crate) fn roost_certs(out: &Path, domain: &str) {
    let status = Command::new(ROOST)
        .args(["certs", "--domain", domain, "--out"])
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn certs_share_one_ca_and_serve_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    roost_certs(&out, "a.example");
    let ca = std::fs::read(out.join("ca.pem")).unwrap();
    roost_certs(&out, "b.example");
    assert_eq!(
        std::fs::read(out.join("ca.pem")).unwrap(),
        ca,
        "the CA was not reused"
    );
    for key in ["ca.key", "a.example.key", "b.example.key"] {
        assert_private(&out.join(key));
    }

    // Both certificates chain to the CA: a client trusting only ca.pem reaches either server.
    for domain in ["a.example", "b.example"] {
        let data_dir = dir.path().join(domain);
        let args = serve_as(&out, domain);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = ServerProcess::start(&data_dir, &args);
        let info = client_json(server.addr, domain, &out.join("ca.pem"), &["info"]);
        assert_eq!(info["domain"], domain);
        assert!(server.terminate().success());
    }
}

#[test]
fn client_reports_errors_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(ROOST_CLIENT)
        .args(["--ca"])
        .arg(dir.path().join("missing.pem"))
        .args(["--json", "info"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(error["error"].as_str().unwrap().contains("missing.pem"));
}

fn assert_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{} has mode {mode:o}", path.display());
}

#[test]
fn client_cli_registers_links_looks_up_removes_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, &[]);
    let ca = data_dir.join("server-cert.pem");
    let state = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let run = |command: &[&str]| client_json(server.addr, "localhost", &ca, command);

    let registered = run(&["--state", &state("laptop"), "register", "alice@localhost"]);
    assert_eq!(registered["registered"]["client_id"], "alice@localhost/1");
    assert_eq!(registered["registered"]["verified"], true);
    run(&["--state", &state("bob"), "register", "bob@localhost"]);
    let added = run(&[
        "--state",
        &state("phone"),
        "add-client",
        "--approve-from",
        &state("laptop"),
    ]);
    assert_eq!(added["added"]["client_id"], "alice@localhost/2");

    let found = run(&["--state", &state("bob"), "lookup", "alice@localhost"]);
    assert_eq!(found["user"], "alice@localhost");
    let clients = found["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    for client in clients {
        assert_eq!(client["verified"], true, "{client}");
    }
    let listed = run(&["--state", &state("phone"), "clients"]);
    assert_eq!(listed["clients"].as_array().unwrap().len(), 2);

    let removed = run(&["--state", &state("phone"), "remove-client", "1"]);
    assert_eq!(removed["removed"], "alice@localhost/1");
    let failed = client_command(
        server.addr,
        "localhost",
        &ca,
        &["--state", &state("phone"), "remove-client", "2"],
    );
    assert!(!failed.status.success());
    let error: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(error["code"], 24, "LastClient: {error}");

    let deleted = run(&["--state", &state("phone"), "delete-account"]);
    assert_eq!(deleted["deleted"], "alice@localhost");
    let gone = client_command(
        server.addr,
        "localhost",
        &ca,
        &["--state", &state("bob"), "lookup", "alice@localhost"],
    );
    let error: serde_json::Value = serde_json::from_slice(&gone.stdout).unwrap();
    assert_eq!(error["code"], 22, "UnknownUser: {error}");
    assert!(server.terminate().success());
}

#[test]
fn rotating_the_credential_key_keeps_old_credentials_valid() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let ca = data_dir.join("server-cert.pem");
    let laptop = dir.path().join("laptop");
    let laptop = laptop.to_str().unwrap();

    let server = ServerProcess::start(&data_dir, &[]);
    client_json(
        server.addr,
        "localhost",
        &ca,
        &["--state", laptop, "register", "alice@localhost"],
    );
    assert!(server.terminate().success());

    let status = Command::new(ROOST)
        .args(["rotate-credential-key", "--data-dir"])
        .arg(&data_dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    let server = ServerProcess::start(&data_dir, &[]);
    let info = client_json(server.addr, "localhost", &ca, &["info"]);
    let key_ids: Vec<_> = info["credential_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].clone())
        .collect();
    assert_eq!(
        key_ids,
        [serde_json::json!(2), serde_json::json!(1)],
        "newest first"
    );
    let listed = client_json(
        server.addr,
        "localhost",
        &ca,
        &["--state", laptop, "clients"],
    );
    assert_eq!(listed["clients"][0]["issuer_key_id"], 1);
    assert_eq!(
        listed["clients"][0]["verified"], true,
        "the old key's credential still verifies"
    );
    let renewed = client_json(
        server.addr,
        "localhost",
        &ca,
        &["--state", laptop, "renew-credential"],
    );
    assert_eq!(renewed["renewed"]["issuer_key_id"], 2);
    assert_eq!(renewed["renewed"]["verified"], true);
    assert!(server.terminate().success());
}

/// The README calls rotation safe while the server runs: the running server signs with the new
/// key at once, so the old key's published validity covers every credential it signed.
#[test]
fn a_key_rotated_while_the_server_runs_signs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let ca = data_dir.join("server-cert.pem");
    let state = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let server = ServerProcess::start(&data_dir, &[]);
    client_json(
        server.addr,
        "localhost",
        &ca,
        &["--state", &state("alice"), "register", "alice@localhost"],
    );
    let status = Command::new(ROOST)
        .args(["rotate-credential-key", "--data-dir"])
        .arg(&data_dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let registered = client_json(
        server.addr,
        "localhost",
        &ca,
        &["--state", &state("bob"), "register", "bob@localhost"],
    );
    assert_eq!(registered["registered"]["issuer_key_id"], 2, "{registered}");
    let listed = client_json(
        server.addr,
        "localhost",
        &ca,
        &["--state", &state("bob"), "lookup", "alice@localhost"],
    );
    assert_eq!(listed["clients"][0]["issuer_key_id"], 1);
    assert_eq!(listed["clients"][0]["verified"], true, "{listed}");
    assert!(server.terminate().success());
}

#[test]
fn invite_codes_made_while_the_server_runs_admit_users() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let ca = data_dir.join("server-cert.pem");
    let server = ServerProcess::start(&data_dir, &["--registration", "invite"]);
    let output = Command::new(ROOST)
        .args(["invite", "create", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(output.status.success());
    let invite = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let state = dir.path().join("alice");
    let state = state.to_str().unwrap();
    let refused = client_command(
        server.addr,
        "localhost",
        &ca,
        &["--state", state, "register", "alice@localhost"],
    );
    assert!(!refused.status.success());
    let registered = client_json(
        server.addr,
        "localhost",
        &ca,
        &[
            "--state",
            state,
            "register",
            "alice@localhost",
            "--invite",
            &invite,
        ],
    );
    assert_eq!(registered["registered"]["verified"], true);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_are_all_or_nothing_and_acknowledged_ones_survive_kill_9() {
    use roost::client::{add_client_request, ClientConfig, Connection};
    use roost::protocol::ErrorCode;

    const USERS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let ca = data_dir.join("server-cert.pem");
    let mut server = ServerProcess::start(&data_dir, &[]);
    let config = ClientConfig::new(server.addr, "localhost", &ca).unwrap();

    // Each user has two devices; each user's first device will delete the user.
    let mut deleters = Vec::new();
    for i in 0..USERS {
        let connection = Connection::connect(&config).await.unwrap();
        let key = crate::support::new_key();
        let user = format!("user{i}@localhost");
        let registered = connection
            .register_user(&user, &key, crate::support::CIPHERSUITE, None)
            .await
            .unwrap();
        let _push = connection
            .authenticate(&registered.client, &key)
            .await
            .unwrap();
        let second = add_client_request(
            &user,
            &crate::support::new_key(),
            crate::support::CIPHERSUITE,
        );
        connection.add_client(second).await.unwrap();
        deleters.push((user, connection));
    }

    // Delete everyone at once and kill the server as soon as the first deletions are answered.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    for (user, connection) in deleters {
        let acked_tx = acked_tx.clone();
        tokio::spawn(async move {
            if connection.delete_user().await.is_ok() {
                let _ = acked_tx.send(user);
            }
        });
    }
    drop(acked_tx);
    let mut acked = vec![acked_rx.recv().await.expect("no deletion was answered")];
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    while let Ok(user) = acked_rx.try_recv() {
        acked.push(user);
    }

    let server = ServerProcess::start(&data_dir, &[]);
    let config = ClientConfig::new(server.addr, "localhost", &ca).unwrap();
    let observer = Connection::connect(&config).await.unwrap();
    let key = crate::support::new_key();
    let me = observer
        .register_user(
            "observer@localhost",
            &key,
            crate::support::CIPHERSUITE,
            None,
        )
        .await
        .unwrap();
    let _push = observer.authenticate(&me.client, &key).await.unwrap();
    let mut gone = Vec::new();
    for i in 0..USERS {
        let user = format!("user{i}@localhost");
        match observer.lookup_user(&user).await {
            Ok(found) => {
                assert_eq!(found.clients.len(), 2, "{user} was half deleted");
                assert!(
                    !acked.contains(&user),
                    "{user}'s acknowledged deletion was lost"
                );
            }
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::UnknownUser));
                gone.push(user);
            }
        }
    }
    println!(
        "{} deletions acknowledged, {} users gone after kill -9",
        acked.len(),
        gone.len()
    );
    assert!(server.terminate().success());

    // What is gone left no trace in any table.
    let store = roost::store::Store::open(&data_dir).unwrap();
    for user in gone {
        assert_eq!(
            store.tables_containing(user.as_bytes()).await.unwrap(),
            Vec::<String>::new()
        );
    }
}

#[test]
fn client_cli_publishes_key_packages_on_registration_and_claims_them() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, &[]);
    let ca = data_dir.join("server-cert.pem");
    let state = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let run = |command: &[&str]| client_json(server.addr, "localhost", &ca, command);

    let registered = run(&["--state", &state("bob"), "register", "bob@localhost"]);
    let published = registered["key_packages_published"].as_u64().unwrap();
    assert!(
        published > 10,
        "registration published {published} KeyPackages"
    );
    assert!(dir.path().join("bob").join("mls-storage.bin").exists());
    run(&["--state", &state("alice"), "register", "alice@localhost"]);

    let claimed = run(&["--state", &state("alice"), "claim", "bob@localhost"]);
    assert_eq!(claimed["user"], "bob@localhost");
    let claim = &claimed["claims"][0];
    assert_eq!(claim["client_id"], "bob@localhost/1");
    assert_eq!(claim["kind"], "key_package");
    assert_eq!(claim["verified"], true, "{claim}");
    assert_eq!(claim["key_package_ref"].as_str().unwrap().len(), 64);

    let status = run(&["--state", &state("bob"), "keypackages"]);
    assert_eq!(
        status["clients"][0]["remaining"].as_u64().unwrap(),
        published - 2,
        "one claimed, and the last resort is not counted"
    );
    assert_eq!(status["clients"][0]["has_last_resort"], true);
    assert!(server.terminate().success());
}

#[test]
fn an_acknowledged_enqueue_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let ca = data_dir.join("server-cert.pem");
    // Every claim leaves bob "low", so each claim queues a notice for him while he is offline.
    let flags = ["--key-package-low-watermark", "1000"];
    let mut server = ServerProcess::start(&data_dir, &flags);
    let state = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    client_json(
        server.addr,
        "localhost",
        &ca,
        &["--state", &state("bob"), "register", "bob@localhost"],
    );
    client_json(
        server.addr,
        "localhost",
        &ca,
        &["--state", &state("alice"), "register", "alice@localhost"],
    );
    // The claim's answer means the notice for offline bob is committed.
    client_json(
        server.addr,
        "localhost",
        &ca,
        &["--state", &state("alice"), "claim", "bob@localhost"],
    );
    server.child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    server.child.wait().unwrap();

    let server = ServerProcess::start(&data_dir, &flags);
    let output = client_command(
        server.addr,
        "localhost",
        &ca,
        &["--state", &state("bob"), "recv"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let messages: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["kind"], "server_notice");
    assert_eq!(messages[0]["seq"], 1);
    assert!(messages[0]["notice"]["key_packages_low"]["remaining"].is_u64());
    // recv acknowledged it: the queue is empty now.
    let again = client_command(
        server.addr,
        "localhost",
        &ca,
        &["--state", &state("bob"), "recv"],
    );
    assert!(again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        r#"{"event":"no_messages"}"#
    );
    assert!(server.terminate().success());
}

#[test]
fn listen_prints_pushed_events_as_they_happen() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let ca = data_dir.join("server-cert.pem");
    let server = ServerProcess::start(&data_dir, &["--key-package-low-watermark", "1000"]);
    let state = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    client_json(
        server.addr,
        "localhost",
        &ca,
        &["--state", &state("bob"), "register", "bob@localhost"],
    );
    client_json(
        server.addr,
        "localhost",
        &ca,
        &["--state", &state("alice"), "register", "alice@localhost"],
    );

    let (mut listen, lines) = spawn_client(
        server.addr,
        &ca,
        &["--state", &state("bob"), "--json", "listen"],
    );
    // Claim until the push arrives. Claims made before listen connected were queued instead, and
    // listen prints those first, as messages.
    let deadline = std::time::Instant::now() + TEST_TIMEOUT;
    let event = 'pushed: loop {
        assert!(std::time::Instant::now() < deadline, "no push arrived");
        client_json(
            server.addr,
            "localhost",
            &ca,
            &["--state", &state("alice"), "claim", "bob@localhost"],
        );
        while let Ok(line) = lines.recv_timeout(Duration::from_millis(300)) {
            let printed: serde_json::Value = serde_json::from_str(&line).unwrap();
            if printed.get("event").is_some() {
                break 'pushed printed;
            }
            assert_eq!(printed["kind"], "server_notice", "{printed}");
        }
    };
    assert_eq!(event["event"], "key_packages_low", "{event}");
    let addr = server.addr;
    assert!(server.terminate().success());
    let next = |what: &str| -> serde_json::Value {
        let line = lines
            .recv_timeout(TEST_TIMEOUT)
            .unwrap_or_else(|_| panic!("listen printed no {what}"));
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next("shutdown notice")["event"], "server_shutdown");
    let reconnecting = next("reconnecting event");
    assert_eq!(reconnecting["event"], "reconnecting", "{reconnecting}");
    assert!(reconnecting["retry_in_ms"].as_u64().unwrap() > 0);

    // The server comes back on the same address: listen connects again by itself, with
    // growing pauses meanwhile, and goes on printing.
    let server = ServerProcess::start_on(
        &addr.to_string(),
        &data_dir,
        &["--key-package-low-watermark", "1000"],
    );
    let deadline = std::time::Instant::now() + TEST_TIMEOUT;
    loop {
        let event = next("reconnected event");
        if event["event"] == "reconnected" {
            break;
        }
        assert_eq!(event["event"], "reconnecting", "{event}");
        assert!(std::time::Instant::now() < deadline);
    }
    client_json(
        server.addr,
        "localhost",
        &ca,
        &["--state", &state("alice"), "claim", "bob@localhost"],
    );
    assert_eq!(
        next("pushed event after reconnecting")["event"],
        "key_packages_low"
    );
    let interrupted = Command::new("kill")
        .args(["-INT", &listen.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = listen.wait().unwrap();
    assert!(status.success());
    assert!(server.terminate().success());
}

#[test]
fn client_cli_holds_a_group_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, &[]);
    let ca = data_dir.join("server-cert.pem");
    let state = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let run = |command: &[&str]| client_json(server.addr, "localhost", &ca, command);
    let lines = |command: &[&str]| -> Vec<serde_json::Value> {
        let output = client_command(server.addr, "localhost", &ca, command);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };

    run(&["--state", &state("alice"), "register", "alice@localhost"]);
    run(&["--state", &state("bob"), "register", "bob@localhost"]);
    run(&[
        "--state",
        &state("bob-phone"),
        "add-client",
        "--approve-from",
        &state("bob"),
    ]);
    run(&["--state", &state("carol"), "register", "carol@localhost"]);
    let created = run(&["--state", &state("alice"), "create-group", "team"]);
    let group = created["group"].as_str().unwrap().to_owned();
    let invited = run(&[
        "--state",
        &state("alice"),
        "invite",
        "team",
        "bob@localhost",
    ]);
    assert_eq!(invited["added"].as_array().unwrap().len(), 2);

    for device in ["bob", "bob-phone"] {
        let joined = lines(&["--state", &state(device), "recv"]);
        assert_eq!(joined[0]["event"], "joined", "{joined:?}");
        assert_eq!(joined[0]["group"], group.as_str());
    }
    run(&["--state", &state("alice"), "send", "team", "hello bob"]);
    run(&["--state", &state("bob"), "send", &group, "hi alice"]);
    for (device, sender, text) in [
        ("bob-phone", "alice@localhost/1", "hello bob"),
        ("alice", "bob@localhost/1", "hi alice"),
    ] {
        let received = lines(&["--state", &state(device), "recv"]);
        let message = received
            .iter()
            .find(|line| line["sender"] == sender)
            .unwrap();
        assert_eq!(message["group"], group.as_str());
        assert_eq!(message["text"], text);
    }
    let members = run(&["--state", &state("bob"), "members", &group]);
    assert_eq!(members["members"].as_array().unwrap().len(), 3);
    assert_eq!(members["members"][0]["role"], "admin");
    let listed = run(&["--state", &state("bob-phone"), "groups"]);
    assert_eq!(listed["groups"][0]["group"], group.as_str());

    // A refused command exits non-zero with the code and message on stderr.
    let refused = client_command(
        server.addr,
        "localhost",
        &ca,
        &[
            "--state",
            &state("bob"),
            "invite",
            &group,
            "carol@localhost",
        ],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("NotAnAdmin (46)"), "{stderr}");

    // Promoted, bob may invite; bob leaves; alice completes it.
    run(&[
        "--state",
        &state("alice"),
        "set-role",
        "team",
        "bob@localhost",
        "admin",
    ]);
    lines(&["--state", &state("bob"), "recv"]);
    let invited = run(&[
        "--state",
        &state("bob"),
        "invite",
        &group,
        "carol@localhost",
    ]);
    assert_eq!(invited["added"][0], "carol@localhost/1");
    run(&["--state", &state("bob-phone"), "leave", &group]);
    // The pending proposal is shown, with who proposes what.
    let told = lines(&["--state", &state("alice"), "recv"]);
    let proposal = told
        .iter()
        .find(|line| line["event"] == "proposal")
        .unwrap_or_else(|| panic!("{told:?}"));
    assert_eq!(proposal["by"], "bob@localhost/2");
    assert_eq!(proposal["what"], "to leave");
    run(&["--state", &state("alice"), "commit", "team"]);
    let members = run(&["--state", &state("alice"), "members", "team"]);
    let members: Vec<_> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["client_id"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        members,
        [
            ("alice@localhost/1".to_owned(), "admin".to_owned()),
            ("bob@localhost/1".to_owned(), "admin".to_owned()),
            ("carol@localhost/1".to_owned(), "member".to_owned()),
        ]
    );
    run(&["--state", &state("alice"), "delete-group", "team"]);
    let told = lines(&["--state", &state("carol"), "recv"]);
    assert!(
        told.iter().any(|line| line["event"] == "group_deleted"),
        "{told:?}"
    );
    assert!(server.terminate().success());
}

/// The README's two-homeserver walkthrough, with the real binaries: certificates from one
/// development CA, two servers naming each other as peers, users on each in one group.
#[test]
fn two_homeservers_carry_a_conversation_between_their_users() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    for domain in ["a.example", "b.example"] {
        roost_certs(&certs, domain);
    }
    let (a_addr, b_addr) = (
        crate::support::reserved_port(),
        crate::support::reserved_port(),
    );
    let ca = certs.join("ca.pem");
    let serve = |domain: &str, listen: SocketAddr, peer: &str, peer_addr: SocketAddr| {
        let mut args = serve_as(&certs, domain);
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
    let b = serve("b.example", b_addr, "a.example", a_addr);
    let state = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let at_a = |command: &[&str]| client_json(a.addr, "a.example", &ca, command);
    let at_b = |command: &[&str]| client_json(b.addr, "b.example", &ca, command);

    at_a(&["--state", &state("alice"), "register", "alice@a.example"]);
    at_b(&["--state", &state("bob"), "register", "bob@b.example"]);
    let found = at_a(&["--state", &state("alice"), "lookup", "bob@b.example"]);
    assert_eq!(found["clients"][0]["verified"], true, "{found}");

    let created = at_a(&["--state", &state("alice"), "create-group", "team"]);
    let group = created["group"].as_str().unwrap().to_owned();
    at_a(&[
        "--state",
        &state("alice"),
        "invite",
        "team",
        "bob@b.example",
    ]);
    let joined = at_b(&["--state", &state("bob"), "recv", "--wait", "10"]);
    assert_eq!(joined["event"], "joined", "{joined}");

    at_b(&["--state", &state("bob"), "send", &group, "hi alice"]);
    let received = at_a(&["--state", &state("alice"), "recv", "--wait", "10"]);
    assert_eq!(
        (&received["sender"], &received["text"]),
        (&"bob@b.example/1".into(), &"hi alice".into()),
        "{received}"
    );
    // bob's own server lists the group hosted by a.example.
    let listed = at_b(&["--state", &state("bob"), "groups"]);
    assert_eq!(listed["groups"][0]["group"], group.as_str(), "{listed}");
}

/// `recv` acknowledges what it processed and what can never be processed, reports the latter
/// (stderr, and an `unprocessable` JSON event) and exits non-zero; nothing is hidden.
#[test]
fn recv_reports_a_message_it_can_never_process_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = ServerProcess::start(&data_dir, &[]);
    let ca = data_dir.join("server-cert.pem");
    let state = |name: &str| dir.path().join(name);
    let run = |command: &[&str]| client_json(server.addr, "localhost", &ca, command);
    let alice = state("alice");
    let bob = state("bob");
    run(&[
        "--state",
        alice.to_str().unwrap(),
        "register",
        "alice@localhost",
    ]);
    run(&[
        "--state",
        bob.to_str().unwrap(),
        "register",
        "bob@localhost",
    ]);
    run(&["--state", alice.to_str().unwrap(), "create-group", "team"]);
    run(&[
        "--state",
        alice.to_str().unwrap(),
        "invite",
        "team",
        "bob@localhost",
    ]);
    let joined = client_command(
        server.addr,
        "localhost",
        &ca,
        &["--state", bob.to_str().unwrap(), "recv"],
    );
    assert!(joined.status.success());

    // Alice's device sends a message whose ciphertext was damaged on the way: the server takes
    // it (it cannot read ciphertexts), bob can never decrypt it.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let identity = roost::client::state::DeviceIdentity::load(&alice).unwrap();
        let mls = roost::client::mls::DeviceMls::load(&identity, &alice).unwrap();
        let config = roost::client::ClientConfig::new(server.addr, "localhost", &ca).unwrap();
        let connection = roost::client::Connection::connect(&config).await.unwrap();
        connection
            .authenticate_without_push(&identity.client, &identity.signing_key)
            .await
            .unwrap();
        let group_id = connection.list_groups().await.unwrap().groups[0]
            .group_id
            .as_slice()
            .to_vec();
        let mut group = mls.group(&group_id).unwrap().unwrap();
        let request = mls.encrypt(&mut group, b"damaged").unwrap();
        let mut bytes = request.message.as_slice().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        connection
            .send_message(roost::protocol::SendMessageRequest {
                message: bytes.into(),
            })
            .await
            .unwrap();
        mls.save(&alice).unwrap();
        connection.close().await;
    });
    run(&["--state", alice.to_str().unwrap(), "send", "team", "after"]);

    let output = client_command(
        server.addr,
        "localhost",
        &ca,
        &["--state", bob.to_str().unwrap(), "recv"],
    );
    assert!(!output.status.success(), "recv must exit non-zero");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("can never be processed"), "{stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|line| line["event"] == "unprocessable" && line["reason"].is_string()),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|line| line["text"] == "after"),
        "{lines:?}"
    );
    // Both were acknowledged: nothing comes again.
    let again = client_command(
        server.addr,
        "localhost",
        &ca,
        &["--state", bob.to_str().unwrap(), "recv"],
    );
    assert!(again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        r#"{"event":"no_messages"}"#
    );
    // A failure on the device's own side has a stable code and says what to do.
    let unknown_group = "ab".repeat(20);
    let failed = client_command(
        server.addr,
        "localhost",
        &ca,
        &[
            "--state",
            bob.to_str().unwrap(),
            "send",
            &unknown_group,
            "x",
        ],
    );
    assert!(!failed.status.success());
    let error: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&failed.stdout).trim()).unwrap();
    assert_eq!(error["code"], 1001, "{error}");
    assert_eq!(error["name"], "NoSuchGroup", "{error}");
    assert!(
        error["hint"]
            .as_str()
            .is_some_and(|hint| hint.contains("recv")),
        "{error}"
    );
    assert!(server.terminate().success());
}

#[test]
fn push_listen_prints_the_wake_ups_of_an_offline_device() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let ca = data_dir.join("server-cert.pem");
    let server = ServerProcess::start(&data_dir, &["--push-allow-loopback"]);
    let state = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let run = |args: &[&str]| client_json(server.addr, "localhost", &ca, args);
    run(&["--state", &state("bob"), "register", "bob@localhost"]);
    run(&["--state", &state("alice"), "register", "alice@localhost"]);
    run(&["--state", &state("alice"), "create-group", "friends"]);

    let (mut listen, lines) = spawn_client(
        server.addr,
        &ca,
        &["--state", &state("bob"), "--json", "push-listen"],
    );
    let next = || -> serde_json::Value {
        serde_json::from_str(&lines.recv_timeout(TEST_TIMEOUT).expect("a line")).unwrap()
    };
    let listening = next();
    assert_eq!(listening["event"], "listening", "{listening}");

    // Alice adds bob to a group: his Welcome is queued, and he is woken.
    run(&[
        "--state",
        &state("alice"),
        "invite",
        "friends",
        "bob@localhost",
    ]);
    let wake = next();
    assert_eq!(wake["event"], "wake", "{wake}");
    assert_eq!(wake["vapid"], "verified");
    assert!(wake["seq"].as_u64().is_some(), "{wake}");
    let targets = run(&["--state", &state("bob"), "push-targets"]);
    assert_eq!(
        targets["push_targets"][0]["target"], listening["endpoint"],
        "{targets}"
    );

    // Ctrl-C unregisters the receiver.
    let status = Command::new("kill")
        .args(["-INT", &listen.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stopped = next();
    assert_eq!(stopped["event"], "stopped", "{stopped}");
    assert!(listen.wait().unwrap().success());
    let targets = run(&["--state", &state("bob"), "push-targets"]);
    assert_eq!(targets["push_targets"], serde_json::json!([]));
}

/// Runs `roost-client ARGS` (no flags added) and returns (exit code, stdout, stderr).
fn client_raw(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(ROOST_CLIENT).args(args).output().unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn the_client_cli_fails_fast_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let ca = data_dir.join("server-cert.pem");
    let ca = ca.to_str().unwrap();
    let server = ServerProcess::start(&data_dir, &[]);
    let addr = server.addr.to_string();
    let state = dir.path().join("bob");
    let state = state.to_str().unwrap();

    // Nothing answers: a few seconds, the address and a hint, not a 30 s "timed out".
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let started = std::time::Instant::now();
    let (status, _, stderr) = client_raw(&["--server", &silent_addr, "--ca", ca, "info"]);
    assert_eq!(status, Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains(&silent_addr) && stderr.contains("--server"),
        "{stderr}"
    );

    // An issuer this client does not trust: the hint is --ca.
    let certs = dir.path().join("certs");
    roost_certs(&certs, "localhost");
    let other_ca = certs.join("ca.pem");
    let (_, _, stderr) = client_raw(&[
        "--server",
        &addr,
        "--ca",
        other_ca.to_str().unwrap(),
        "info",
    ]);
    assert!(stderr.contains("--ca"), "{stderr}");
    // A name the certificate does not carry: the names it does carry, no Rust debug text.
    let (_, _, stderr) = client_raw(&[
        "--server",
        &addr,
        "--ca",
        ca,
        "--server-name",
        "wrong.example",
        "info",
    ]);
    assert!(
        stderr.contains("--server-name") && stderr.contains("it names localhost"),
        "{stderr}"
    );
    assert!(!stderr.contains("DnsName"), "{stderr}");

    // Global flags after the subcommand; JSON times are RFC 3339, not Unix seconds.
    let (status, stdout, stderr) = client_raw(&[
        "register",
        "bob@localhost",
        "--server",
        &addr,
        "--ca",
        ca,
        "--state",
        state,
        "--json",
    ]);
    assert_eq!(status, Some(0), "{stderr}");
    let registered: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let not_after = registered["registered"]["not_after"].as_str().unwrap();
    assert!(
        not_after.ends_with('Z') && not_after.contains('T'),
        "{not_after}"
    );

    // An empty queue is said, in text and in JSON.
    let base = ["--server", &addr, "--ca", ca, "--state", state];
    let (_, stdout, _) = client_raw(&[&base[..], &["recv"]].concat());
    assert_eq!(stdout.trim(), "no messages");
    let (_, stdout, _) = client_raw(&[&base[..], &["--json", "recv"]].concat());
    assert_eq!(stdout.trim(), r#"{"event":"no_messages"}"#);

    // A usage error with --json is one JSON document too (and exit status 2).
    let (status, stdout, _) = client_raw(&["--json", "no-such-command"]);
    assert_eq!(status, Some(2));
    let usage: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(usage["usage"], true, "{usage}");
    assert!(usage["error"].as_str().unwrap().contains("no-such-command"));

    // A group that is neither a name nor an id: said without the hex decoder's words.
    let (_, stdout, stderr) = client_raw(&[&base[..], &["--json", "send", "abc", "hi"]].concat());
    assert!(!stderr.contains("Odd number"), "{stderr}");
    let refused: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        refused["error"].as_str().unwrap().contains("group"),
        "{refused}"
    );

    // reset forgets the identity: the directory can register again.
    let (status, stdout, _) = client_raw(&[&base[..], &["--json", "reset"]].concat());
    assert_eq!(status, Some(0));
    let reset: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(reset["client_id"], "bob@localhost/1");
    assert!(!Path::new(state).join("identity.json").exists());
    let (status, _, stderr) = client_raw(&[&base[..], &["register", "bob2@localhost"]].concat());
    assert_eq!(status, Some(0), "{stderr}");
    let (status, _, stderr) = client_raw(&[
        "--state",
        dir.path().join("nobody").to_str().unwrap(),
        "reset",
    ]);
    assert_eq!(status, Some(1));
    assert!(stderr.contains("no identity"), "{stderr}");
    assert!(server.terminate().success());
}
