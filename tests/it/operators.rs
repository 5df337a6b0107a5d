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

#[test]
fn serve_flags_come_from_the_environment_and_a_certificate_for_another_name_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    crate::cli::roost_certs(&certs, "b.example");
    let data_dir = dir.path().join("data");
    let output = Command::new(ROOST)
        .arg("serve")
        .env_remove("RUST_LOG")
        .env("ROOST_DOMAIN", "a.example")
        .env("ROOST_LISTEN", "127.0.0.1:0")
        .env("ROOST_DATA_DIR", &data_dir)
        .env("ROOST_CERT", certs.join("b.example.pem"))
        .env("ROOST_KEY", certs.join("b.example.key"))
        .env("ROOST_LOG_FORMAT", "json")
        // Not a number: the flag parser must have read it from the environment.
        .env("ROOST_MAX_CONNECTIONS", "many")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("many"), "{}", stderr(&output));

    let mut child = Command::new(ROOST)
        .arg("serve")
        .env_remove("RUST_LOG")
        .env("ROOST_DOMAIN", "a.example")
        .env("ROOST_LISTEN", "127.0.0.1:0")
        .env("ROOST_DATA_DIR", &data_dir)
        .env("ROOST_CERT", certs.join("b.example.pem"))
        .env("ROOST_KEY", certs.join("b.example.key"))
        .env("ROOST_LOG_FORMAT", "json")
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
