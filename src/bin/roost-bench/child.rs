//! Servers in child processes, so that their memory can be read apart from the clients'.
//!
//! The bench runs itself as `roost-bench __child roost|raw-quic`: the child starts the server,
//! prints `ADDR CERTIFICATE_PATH` on one line, and stops when its standard input closes (when the
//! parent exits or drops the [`Child`], whichever comes first).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::Context;
use roost::client::ClientConfig;

use crate::harness::{BenchServer, RawQuicServer};

/// The hidden subcommand that runs a child server.
pub const CHILD_ARG: &str = "__child";

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Roost,
    RawQuic,
}

impl Kind {
    fn arg(self) -> &'static str {
        match self {
            Kind::Roost => "roost",
            Kind::RawQuic => "raw-quic",
        }
    }
}

/// A running child server.
pub struct Child {
    process: std::process::Child,
    kind: Kind,
    addr: SocketAddr,
    certificate: PathBuf,
}

impl Child {
    pub fn spawn(kind: Kind) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the bench executable")?;
        let mut process = Command::new(exe)
            .args([CHILD_ARG, kind.arg()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a child server")?;
        let stdout = process.stdout.take().context("no child stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let (addr, certificate) = line
            .trim()
            .split_once(' ')
            .with_context(|| format!("the child server said {line:?}"))?;
        Ok(Self {
            process,
            kind,
            addr: addr.parse()?,
            certificate: certificate.into(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        match self.kind {
            Kind::Roost => ClientConfig::new(self.addr, "localhost", &self.certificate),
            Kind::RawQuic => RawQuicServer::client_config_for(self.addr, &self.certificate),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The child's side: serve until standard input closes.
pub fn run(kind: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let announce = |addr: SocketAddr, certificate: &std::path::Path| -> anyhow::Result<()> {
            let mut stdout = std::io::stdout();
            writeln!(stdout, "{addr} {}", certificate.display())?;
            stdout.flush()?;
            Ok(())
        };
        let wait_for_parent = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        });
        match kind {
            "roost" => {
                let server = BenchServer::start(None).await?;
                let local = server.local().context("a local server")?;
                announce(local.local_addr(), local.certificate_path())?;
                let _ = wait_for_parent.await;
                server.stop().await;
            }
            "raw-quic" => {
                let server = RawQuicServer::start()?;
                announce(server.addr, &server.certificate)?;
                let _ = wait_for_parent.await;
                server.stop();
            }
            other => anyhow::bail!("unknown child server {other:?}"),
        }
        Ok(())
    })
}
