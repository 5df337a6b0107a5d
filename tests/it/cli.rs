//! The real binaries: `roost serve` under signals, `roost certs`, `roost-client info`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::TEST_TIMEOUT;

const ROOST: &str = env!("CARGO_BIN_EXE_roost");
const ROOST_CLIENT: &str = env!("CARGO_BIN_EXE_roost-client");

/// A `roost serve` process; killed if the test ends early.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(ROOST)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
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

    fn terminate(mut self) -> std::process::ExitStatus {
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

fn client_json(
    addr: SocketAddr,
    server_name: &str,
    ca: &Path,
    command: &[&str],
) -> serde_json::Value {
    let output = Command::new(ROOST_CLIENT)
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
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "roost-client {command:?} failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
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
    assert_eq!(info["protocol_version"], 1);
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

#[test]
fn certs_share_one_ca_and_serve_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let certs = |domain: &str| {
        let status = Command::new(ROOST)
            .args(["certs", "--domain", domain, "--out"])
            .arg(&out)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    };
    certs("a.example");
    let ca = std::fs::read(out.join("ca.pem")).unwrap();
    certs("b.example");
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
        let cert = out.join(format!("{domain}.pem"));
        let key = out.join(format!("{domain}.key"));
        let server = ServerProcess::start(
            &data_dir,
            &[
                "--domain",
                domain,
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
        );
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
