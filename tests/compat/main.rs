//! The previous release's client against this server (protocol-spec/core.md section 4).
//!
//! `roost-client` and `roost` of the previous release are built from the source vendored beside
//! this file (tests/compat/README.md says which commit and why) into the shared target
//! directory, once per run. The previous client then drives the current server as its users
//! would: register, groups, join, send, receive, federation, in groups mixed with the current
//! `roost-client`; it speaks `roost/1`, the current client `roost/2`. And the current server and
//! client work with a homeserver of the previous release (federation, and `roost/1` spoken by
//! the current client to the previous server).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use roost::clock::ManualClock;
use roost::config::{CertificateSource, FederationConfig, ServerConfig};
use roost::server::Server;
use roost::tls::{issue_development_certificate, load_certificates, PeerTrust};
use serde_json::Value;

/// The commit of the previous release, as vendored.
const PREVIOUS_RELEASE: &str = "ae07409";
/// How long a device waits for what it expects to receive.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// The previous release's binaries, built once for the whole run.
struct PreviousRelease {
    client: PathBuf,
    server: PathBuf,
}

fn previous() -> &'static PreviousRelease {
    static BUILT: OnceLock<PreviousRelease> = OnceLock::new();
    BUILT.get_or_init(|| build_previous_release().unwrap_or_else(|e| panic!("{e}")))
}

fn build_previous_release() -> Result<PreviousRelease, String> {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`: the previous release shares the target directory,
    // so its dependencies (the same versions) are not built again.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .ok_or("no target directory")?;
    let source = target.join("compat").join(PREVIOUS_RELEASE);
    let manifest = source.join("roost-previous").join("Cargo.toml");
    let tarball = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/compat")
        .join(format!("roost-previous-{PREVIOUS_RELEASE}.tar.gz"));
    // Unpacked again whenever the vendored tarball is not the one unpacked last.
    let vendored = std::fs::read(&tarball).map_err(|e| format!("{}: {e}", tarball.display()))?;
    let unpacked_from = source.join("unpacked-from.tar.gz");
    if std::fs::read(&unpacked_from).ok().as_deref() != Some(&vendored[..]) {
        let _ = std::fs::remove_dir_all(&source);
        std::fs::create_dir_all(&source).map_err(|e| e.to_string())?;
        run(std::process::Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&source))?;
        std::fs::write(&unpacked_from, &vendored).map_err(|e| e.to_string())?;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = std::process::Command::new(cargo);
    // What cargo set for this test process (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ...) is not
    // passed on: build scripts watch some of these (`rerun-if-env-changed`), and seeing them
    // change would rebuild shared dependencies for the next cargo run in this target directory.
    const SET_FOR_TESTS: [&str; 9] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|key| {
            SET_FOR_TESTS.contains(&key)
                || key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_EXE_")
        }) {
            build.env_remove(key);
        }
    }
    run(build
        .args(["build", "--quiet", "--bin", "roost-client-previous"])
        .args(["--bin", "roost-previous", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target))?;
    let built = target.join("debug");
    Ok(PreviousRelease {
        client: built.join("roost-client-previous"),
        server: built.join("roost-previous"),
    })
}

fn run(command: &mut std::process::Command) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A homeserver of this code, in process, with a certificate of the development CA in `certs`.
struct Homeserver {
    server: Server,
    domain: String,
    ca: PathBuf,
}

impl Homeserver {
    async fn start(
        dir: &Path,
        domain: &str,
        listen: SocketAddr,
        peers: &[(&str, SocketAddr)],
    ) -> Self {
        let certs = dir.join("certs");
        let issued = issue_development_certificate(&certs, domain).unwrap();
        let mut config = ServerConfig::new(domain.parse().unwrap(), listen, dir.join(domain));
        config.certificate = CertificateSource::Files {
            cert: issued.cert.clone(),
            key: issued.key.clone(),
        };
        config.clock = Arc::new(ManualClock::starting_now());
        if !peers.is_empty() {
            config.federation = Some(FederationConfig {
                peers: peers.iter().map(|(d, a)| ((*d).to_owned(), *a)).collect(),
                trust: PeerTrust {
                    ca: load_certificates(&issued.ca_cert).unwrap(),
                    pinned: Vec::new(),
                    allowed_domains: Some(peers.iter().map(|(d, _)| (*d).to_owned()).collect()),
                },
            });
        }
        Self {
            server: Server::start(config).await.unwrap(),
            domain: domain.to_owned(),
            ca: issued.ca_cert,
        }
    }

    /// A device of `release` with its state in `state`, talking to this server.
    fn device(&self, release: Release, state: PathBuf) -> Device {
        Device {
            release,
            server: self.server.local_addr(),
            server_name: self.domain.clone(),
            ca: self.ca.clone(),
            state,
        }
    }
}

/// A homeserver of the previous release: its `roost serve` in a process of its own, killed when
/// dropped.
struct PreviousHomeserver {
    child: std::process::Child,
    addr: SocketAddr,
    domain: String,
    ca: PathBuf,
}

impl PreviousHomeserver {
    fn start(dir: &Path, domain: &str, listen: SocketAddr, peer: (&str, SocketAddr)) -> Self {
        use std::io::BufRead as _;
        let issued = issue_development_certificate(&dir.join("certs"), domain).unwrap();
        let mut child = std::process::Command::new(&previous().server)
            .arg("serve")
            .args([
                "--domain",
                domain,
                "--listen",
                &listen.to_string(),
                "--data-dir",
            ])
            .arg(dir.join(domain))
            .arg("--cert")
            .arg(&issued.cert)
            .arg("--key")
            .arg(&issued.key)
            .args(["--peer", &format!("{}={}", peer.0, peer.1), "--peer-ca"])
            .arg(&issued.ca_cert)
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // It is serving once it logs the address it bound (`listen=ADDR`).
        let stderr = child.stderr.take().unwrap();
        let (bound, serving) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut bound = Some(bound);
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("listen=") {
                    if let Some(bound) = bound.take() {
                        let _ = bound.send(());
                    }
                }
            }
        });
        serving
            .recv_timeout(RECEIVE_TIMEOUT)
            .expect("the previous release's server never said it was serving");
        Self {
            child,
            addr: listen,
            domain: domain.to_owned(),
            ca: issued.ca_cert,
        }
    }

    fn device(&self, release: Release, state: PathBuf) -> Device {
        Device {
            release,
            server: self.addr,
            server_name: self.domain.clone(),
            ca: self.ca.clone(),
            state,
        }
    }
}

impl Drop for PreviousHomeserver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug)]
enum Release {
    Previous,
    Current,
}

/// One device: a state directory and the `roost-client` that owns it.
struct Device {
    release: Release,
    server: SocketAddr,
    server_name: String,
    ca: PathBuf,
    state: PathBuf,
}

impl Device {
    /// Runs one command with `--json` and returns the objects it printed, failing the test if
    /// it failed.
    async fn run(&self, args: &[&str]) -> Vec<Value> {
        let program = match self.release {
            Release::Previous => previous().client.clone(),
            Release::Current => PathBuf::from(env!("CARGO_BIN_EXE_roost-client")),
        };
        let mut command = std::process::Command::new(program);
        command
            .arg("--server")
            .arg(self.server.to_string())
            .arg("--server-name")
            .arg(&self.server_name)
            .arg("--ca")
            .arg(&self.ca)
            .arg("--state")
            .arg(&self.state)
            .arg("--json")
            .args(args);
        let release = self.release;
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{release:?} roost-client {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
            .collect()
    }

    async fn register(&self, user: &str) {
        let printed = self.run(&["register", user]).await;
        assert!(!printed.is_empty(), "{printed:?}");
    }

    /// Creates a group and returns its id (hex).
    async fn create_group(&self, name: &str) -> String {
        let printed = self.run(&["create-group", name]).await;
        printed[0]["group"]
            .as_str()
            .unwrap_or_else(|| panic!("{printed:?}"))
            .to_owned()
    }

    /// Receives until every event `wanted` accepts has been seen (each at least once).
    async fn receive_until(&self, wanted: &[&dyn Fn(&Value) -> bool]) -> Vec<Value> {
        let deadline = Instant::now() + RECEIVE_TIMEOUT;
        let mut seen = Vec::new();
        while !wanted.iter().all(|want| seen.iter().any(want)) {
            assert!(
                Instant::now() < deadline,
                "{:?} did not receive what it waited for; got {seen:?}",
                self.release
            );
            seen.extend(self.run(&["recv", "--wait", "5"]).await);
        }
        seen
    }
}

fn joined(group: &str) -> impl Fn(&Value) -> bool + '_ {
    move |event| event["event"] == "joined" && event["group"] == group
}

fn message<'a>(
    group: &'a str,
    sender_user: &'a str,
    text: &'a str,
) -> impl Fn(&Value) -> bool + 'a {
    move |event| {
        event["group"] == group
            && event["text"] == text
            && event["sender"]
                .as_str()
                .is_some_and(|sender| sender.starts_with(sender_user))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_previous_client_holds_groups_with_current_clients_on_one_server() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        Homeserver::start(dir.path(), "a.example", "127.0.0.1:0".parse().unwrap(), &[]).await;
    let alice = server.device(Release::Previous, dir.path().join("alice"));
    let bob = server.device(Release::Current, dir.path().join("bob"));
    let carol = server.device(Release::Previous, dir.path().join("carol"));

    // The previous client speaks roost/1, the current one roost/2, to the same server.
    let info = alice.run(&["info"]).await;
    assert_eq!(info[0]["protocol_version"], 1, "{info:?}");
    assert_eq!(bob.run(&["info"]).await[0]["protocol_version"], 2);

    alice.register("alice@a.example").await;
    bob.register("bob@a.example").await;
    carol.register("carol@a.example").await;
    // Lookups verify credentials across the releases.
    let found = alice.run(&["lookup", "bob@a.example"]).await;
    assert_eq!(found[0]["clients"][0]["verified"], true, "{found:?}");

    // A group of the previous client, joined by a current and a previous client.
    let team = alice.create_group("team").await;
    alice.run(&["invite", "team", "bob@a.example"]).await;
    alice.run(&["invite", "team", "carol@a.example"]).await;
    bob.receive_until(&[&joined(&team)]).await;
    carol.receive_until(&[&joined(&team)]).await;
    bob.run(&["send", &team, "hello from bob"]).await;
    alice.run(&["send", "team", "hello from alice"]).await;
    alice
        .receive_until(&[&message(&team, "bob@a.example", "hello from bob")])
        .await;
    carol
        .receive_until(&[
            &message(&team, "bob@a.example", "hello from bob"),
            &message(&team, "alice@a.example", "hello from alice"),
        ])
        .await;
    bob.receive_until(&[&message(&team, "alice@a.example", "hello from alice")])
        .await;

    // A group of the current client (its Welcome without the tree), joined by the previous one.
    let club = bob.create_group("club").await;
    bob.run(&["invite", "club", "alice@a.example"]).await;
    alice.receive_until(&[&joined(&club)]).await;
    bob.run(&["send", "club", "welcome alice"]).await;
    alice
        .receive_until(&[&message(&club, "bob@a.example", "welcome alice")])
        .await;
    alice.run(&["send", &club, "thanks bob"]).await;
    bob.receive_until(&[&message(&club, "alice@a.example", "thanks bob")])
        .await;

    // Roles and members read the same in both releases.
    let members = alice.run(&["members", &club]).await;
    assert_eq!(
        members[0]["members"].as_array().unwrap().len(),
        2,
        "{members:?}"
    );
}

/// alice@a.example makes a group and invites bob@b.example and dave@b.example; each of the three
/// sends once and the other two read it.
async fn team_across_two_homeservers(alice: &Device, bob: &Device, dave: &Device) {
    let team = alice.create_group("team").await;
    alice.run(&["invite", "team", "bob@b.example"]).await;
    alice.run(&["invite", "team", "dave@b.example"]).await;
    bob.receive_until(&[&joined(&team)]).await;
    dave.receive_until(&[&joined(&team)]).await;
    alice.run(&["send", "team", "hello b"]).await;
    bob.run(&["send", &team, "hello from bob"]).await;
    dave.run(&["send", &team, "hello from dave"]).await;
    alice
        .receive_until(&[
            &message(&team, "bob@b.example", "hello from bob"),
            &message(&team, "dave@b.example", "hello from dave"),
        ])
        .await;
    bob.receive_until(&[
        &message(&team, "alice@a.example", "hello b"),
        &message(&team, "dave@b.example", "hello from dave"),
    ])
    .await;
    dave.receive_until(&[
        &message(&team, "alice@a.example", "hello b"),
        &message(&team, "bob@b.example", "hello from bob"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_previous_client_talks_across_federation_with_current_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (a_addr, b_addr) = (reserved_port(), reserved_port());
    let a = Homeserver::start(dir.path(), "a.example", a_addr, &[("b.example", b_addr)]).await;
    let b = Homeserver::start(dir.path(), "b.example", b_addr, &[("a.example", a_addr)]).await;
    let alice = a.device(Release::Previous, dir.path().join("alice"));
    let bob = b.device(Release::Previous, dir.path().join("bob"));
    let dave = b.device(Release::Current, dir.path().join("dave"));
    alice.register("alice@a.example").await;
    bob.register("bob@b.example").await;
    dave.register("dave@b.example").await;

    // Remote discovery and KeyPackages through the previous client's own server.
    let found = alice.run(&["lookup", "bob@b.example"]).await;
    assert_eq!(found[0]["clients"][0]["verified"], true, "{found:?}");

    team_across_two_homeservers(&alice, &bob, &dave).await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_current_homeserver_and_client_work_with_a_homeserver_of_the_previous_release() {
    let dir = tempfile::tempdir().unwrap();
    let (a_addr, b_addr) = (reserved_port(), reserved_port());
    let a = Homeserver::start(dir.path(), "a.example", a_addr, &[("b.example", b_addr)]).await;
    let b = PreviousHomeserver::start(dir.path(), "b.example", b_addr, ("a.example", a_addr));
    let alice = a.device(Release::Current, dir.path().join("alice"));
    let bob = b.device(Release::Previous, dir.path().join("bob"));
    // The current client on the previous server: it offers roost/2 and roost/1 and gets roost/1.
    let dave = b.device(Release::Current, dir.path().join("dave"));
    assert_eq!(dave.run(&["info"]).await[0]["protocol_version"], 1);
    alice.register("alice@a.example").await;
    bob.register("bob@b.example").await;
    dave.register("dave@b.example").await;
    let found = alice.run(&["lookup", "bob@b.example"]).await;
    assert_eq!(found[0]["clients"][0]["verified"], true, "{found:?}");

    // A group hosted by the current homeserver, with members on the previous one.
    team_across_two_homeservers(&alice, &bob, &dave).await;

    // A group hosted by the previous homeserver, with a member on the current one.
    let club = dave.create_group("club").await;
    dave.run(&["invite", "club", "alice@a.example"]).await;
    alice.receive_until(&[&joined(&club)]).await;
    dave.run(&["send", "club", "welcome alice"]).await;
    alice
        .receive_until(&[&message(&club, "dave@b.example", "welcome alice")])
        .await;
    alice.run(&["send", &club, "thanks dave"]).await;
    dave.receive_until(&[&message(&club, "alice@a.example", "thanks dave")])
        .await;
    drop((a, b));
}

/// A loopback address whose UDP port is free now and lies below the kernel's ephemeral range,
/// so that no parallel `:0` bind takes it before the server that must know it up front binds it
/// (the same rule as the integration suite's `support::reserved_port`).
fn reserved_port() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Another range than the integration suite's, in case both ever run at once.
    let start = std::process::id().wrapping_mul(1_009) % 2_000;
    loop {
        let port = 14_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 2_000;
        if let Ok(socket) = std::net::UdpSocket::bind(("127.0.0.1", port as u16)) {
            return socket.local_addr().unwrap();
        }
    }
}
