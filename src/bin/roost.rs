//! `roost`: the homeserver and its operator commands. Flags are parsed into a validated
//! configuration before anything is opened.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use roost::config::{CertificateSource, Domain, ServerConfig, ServerLimits};
use roost::server::Server;
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "roost", version, about = "Roost: an MLS homeserver over QUIC")]
struct Cli {
    /// Log filter (e.g. `info`, `debug`, `roost=trace`); RUST_LOG overrides it when set.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Write a development CA and a certificate for a domain signed by it.
    Certs {
        /// The domain the certificate is for.
        #[arg(long)]
        domain: Domain,
        /// Where to write ca.pem, ca.key, DOMAIN.pem and DOMAIN.key.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// The domain this server's users belong to (alice@DOMAIN).
    #[arg(long, default_value = "localhost")]
    domain: Domain,
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Directory for the database, keys and the generated certificate.
    #[arg(long, default_value = "./roost-data")]
    data_dir: PathBuf,
    /// PEM certificate chain; without it a self-signed certificate is generated in the data dir.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key for --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Connections served at once.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = ServerLimits::default().max_concurrent_streams, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_streams: u32,
    /// Seconds without traffic before a connection is closed.
    #[arg(long, default_value_t = ServerLimits::default().idle_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    idle_timeout_secs: u64,
    /// Seconds a client has to send a whole request.
    #[arg(long, default_value_t = ServerLimits::default().request_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=600))]
    request_timeout_secs: u64,
    /// Seconds in-flight requests get to finish on shutdown.
    #[arg(long, default_value_t = ServerLimits::default().shutdown_grace.as_secs(), value_parser = clap::value_parser!(u64).range(0..=600))]
    shutdown_grace_secs: u64,
}

impl ServeArgs {
    fn into_config(self) -> ServerConfig {
        let certificate = match (self.cert, self.key) {
            (Some(cert), Some(key)) => CertificateSource::Files { cert, key },
            _ => CertificateSource::SelfSigned,
        };
        ServerConfig {
            domain: self.domain,
            listen: self.listen,
            data_dir: self.data_dir,
            certificate,
            limits: ServerLimits {
                max_connections: self.max_connections as usize,
                max_concurrent_streams: self.max_streams,
                idle_timeout: Duration::from_secs(self.idle_timeout_secs),
                request_timeout: Duration::from_secs(self.request_timeout_secs),
                shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            },
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_level)?;
    match cli.command {
        Command::Serve(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(serve(args.into_config()))
        }
        Command::Certs { domain, out } => {
            let written = roost::tls::issue_development_certificate(&out, domain.as_str())?;
            let ca = if written.ca_created {
                "created"
            } else {
                "reused"
            };
            println!("CA ({ca}):   {}", written.ca_cert.display());
            println!("certificate: {}", written.cert.display());
            println!("key:         {}", written.key.display());
            Ok(())
        }
    }
}

async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let server = Server::start(config).await?;
    shutdown_signal().await?;
    // A second signal while shutting down gives up waiting for in-flight requests.
    tokio::select! {
        result = server.shutdown() => result,
        _ = shutdown_signal() => {
            warn!("second signal: exiting without waiting");
            std::process::exit(130);
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
        _ = terminate.recv() => {}
    }
    info!("signal received");
    Ok(())
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => tracing_subscriber::EnvFilter::try_new(from_env),
        _ => tracing_subscriber::EnvFilter::try_new(level),
    }
    .context("invalid log filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}
