//! `roost`: the homeserver and its operator commands. Flags are parsed into a validated
//! configuration before anything is opened.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use roost::clock::{Clock, SystemClock, SECONDS_PER_DAY};
use roost::config::{
    CertificateSource, Domain, FederationConfig, KeyPackagePolicy, PushConfig, QueuePolicy,
    ServerConfig, ServerLimits,
};
use roost::protocol::RegistrationMode;
use roost::server::Server;
use roost::services::credential_keys::CredentialKeys;
use tracing::{info, warn};

mod admin;

#[derive(Parser)]
#[command(name = "roost", version, about = "Roost: an MLS homeserver over QUIC")]
struct Cli {
    /// Log filter (e.g. `info`, `debug`, `roost=trace`); RUST_LOG overrides it when set.
    #[arg(long, global = true, env = "ROOST_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// How log lines are written to stderr: `text` for people, `json` (one object per line) for
    /// log collectors.
    #[arg(
        long,
        global = true,
        env = "ROOST_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the `serve` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the homeserver until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Add a new credential-signing key to a data directory; the server signs with it from its
    /// next start, and keeps publishing the old one until the credentials it signed expire.
    RotateCredentialKey {
        #[arg(long, env = "ROOST_DATA_DIR", default_value = "./roost-data")]
        data_dir: PathBuf,
    },
    /// Invite codes for `--registration invite` (the same as `roost admin invites`; `create`
    /// also works while no server runs).
    Invite {
        #[command(flatten)]
        target: admin::OperatorTarget,
        /// The store of a node whose data lives elsewhere than its data directory
        /// (`postgres://...`): where `invite create` records the invite when no server runs.
        #[arg(long, env = "ROOST_STORE", global = true)]
        store: Option<roost::store::StoreLocation>,
        #[command(subcommand)]
        command: admin::InvitesCommand,
    },
    /// Ask the running server: status, users, invites, federation, queues, backups.
    Admin(admin::AdminArgs),
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Which peer homeservers may federate.
#[derive(Clone, Copy, clap::ValueEnum)]
enum FederationMode {
    /// Only the domains named with --peer.
    AllowList,
    /// Any homeserver whose certificate the trust anchors vouch for.
    Open,
}

/// Who may register.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Registration {
    /// Anyone.
    Open,
    /// Nobody.
    Closed,
    /// Whoever has an invite code from `roost invite create`.
    Invite,
}

#[derive(Args)]
struct ServeArgs {
    /// The domain this server's users belong to (alice@DOMAIN).
    #[arg(long, env = "ROOST_DOMAIN", default_value = "localhost")]
    domain: Domain,
    /// UDP address to listen on.
    #[arg(long, env = "ROOST_LISTEN", default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Directory for the database, keys and the generated certificate.
    #[arg(long, env = "ROOST_DATA_DIR", default_value = "./roost-data")]
    data_dir: PathBuf,
    /// Where the data lives: `postgres://USER@HOST/DATABASE` (a database several nodes of the
    /// domain share; each node needs a copy of the data directory's keys) or `redb:FILE`.
    /// Default: roost.redb in the data directory.
    #[arg(long, env = "ROOST_STORE")]
    store: Option<roost::store::StoreLocation>,
    /// PEM certificate chain; without it a self-signed certificate is generated in the data dir.
    #[arg(long, env = "ROOST_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key for --cert.
    #[arg(long, env = "ROOST_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// Connections served at once.
    #[arg(long, env = "ROOST_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Connections served at once from one source address (IPv6: one /64).
    #[arg(long, env = "ROOST_MAX_CONNECTIONS_PER_SOURCE", default_value_t = ServerLimits::default().max_connections_per_source as u32, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_source: u32,
    /// New connections accepted per second from one source address.
    #[arg(long, env = "ROOST_HANDSHAKES_PER_SECOND_PER_SOURCE", default_value_t = ServerLimits::default().handshakes_per_second_per_source, value_parser = clap::value_parser!(u32).range(1..))]
    handshakes_per_second_per_source: u32,
    /// Requests per second one authenticated client may make.
    #[arg(long, env = "ROOST_REQUESTS_PER_SECOND_PER_CLIENT", default_value_t = ServerLimits::default().requests_per_second_per_client, value_parser = clap::value_parser!(u32).range(1..))]
    requests_per_second_per_client: u32,
    /// Requests per second from one source address before authentication.
    #[arg(long, env = "ROOST_UNAUTHENTICATED_REQUESTS_PER_SECOND_PER_SOURCE", default_value_t = ServerLimits::default().unauthenticated_requests_per_second_per_source, value_parser = clap::value_parser!(u32).range(1..))]
    unauthenticated_requests_per_second_per_source: u32,
    /// Users one source address may register per hour (open registration).
    #[arg(long, env = "ROOST_REGISTRATIONS_PER_HOUR_PER_SOURCE", default_value_t = ServerLimits::default().registrations_per_hour_per_source)]
    registrations_per_hour_per_source: u32,
    /// Requests in flight per connection.
    #[arg(long, env = "ROOST_MAX_STREAMS", default_value_t = ServerLimits::default().max_concurrent_streams, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_streams: u32,
    /// Seconds without traffic before a connection is closed.
    #[arg(long, env = "ROOST_IDLE_TIMEOUT_SECS", default_value_t = ServerLimits::default().idle_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    idle_timeout_secs: u64,
    /// Seconds a client has to send a whole request.
    #[arg(long, env = "ROOST_REQUEST_TIMEOUT_SECS", default_value_t = ServerLimits::default().request_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=600))]
    request_timeout_secs: u64,
    /// Who may register new users.
    #[arg(long, env = "ROOST_REGISTRATION", value_enum, default_value = "open")]
    registration: Registration,
    /// Days an issued client credential is valid.
    #[arg(long, env = "ROOST_CREDENTIAL_LIFETIME_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=3650))]
    credential_lifetime_days: u64,
    /// Days a deleted user's id cannot be registered again.
    #[arg(long, env = "ROOST_DELETED_USER_QUARANTINE_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3650))]
    deleted_user_quarantine_days: u64,
    /// Below this many KeyPackages a client is told to publish more.
    #[arg(long, env = "ROOST_KEY_PACKAGE_LOW_WATERMARK", default_value_t = KeyPackagePolicy::default().low_watermark)]
    key_package_low_watermark: u32,
    /// Most KeyPackages kept per client (the last resort not counted).
    #[arg(long, env = "ROOST_MAX_KEY_PACKAGES_PER_CLIENT", default_value_t = KeyPackagePolicy::default().max_per_client, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max_key_packages_per_client: u32,
    /// KeyPackage claims one client may make per minute.
    #[arg(long, env = "ROOST_CLAIMS_PER_MINUTE", default_value_t = KeyPackagePolicy::default().claims_per_minute_per_claimer, value_parser = clap::value_parser!(u32).range(1..))]
    claims_per_minute: u32,
    /// Claims of one user's KeyPackages per minute, by anyone.
    #[arg(long, env = "ROOST_CLAIMS_PER_MINUTE_PER_USER", default_value_t = KeyPackagePolicy::default().claims_per_minute_per_target, value_parser = clap::value_parser!(u32).range(1..))]
    claims_per_minute_per_user: u32,
    /// Most messages waiting in one client's queue.
    #[arg(long, env = "ROOST_MAX_QUEUE_MESSAGES", default_value_t = QueuePolicy::default().max_messages, value_parser = clap::value_parser!(u64).range(1..))]
    max_queue_messages: u64,
    /// Most payload bytes waiting in one client's queue.
    #[arg(long, env = "ROOST_MAX_QUEUE_BYTES", default_value_t = QueuePolicy::default().max_bytes, value_parser = clap::value_parser!(u64).range(1..))]
    max_queue_bytes: u64,
    /// Most payload bytes waiting in the queues of all the clients of one user.
    #[arg(long, env = "ROOST_MAX_QUEUE_BYTES_PER_USER", default_value_t = QueuePolicy::default().max_bytes_per_user, value_parser = clap::value_parser!(u64).range(1..))]
    max_queue_bytes_per_user: u64,
    /// Most payload bytes waiting in all queues of this server.
    #[arg(long, env = "ROOST_MAX_QUEUE_BYTES_TOTAL", default_value_t = QueuePolicy::default().max_bytes_total, value_parser = clap::value_parser!(u64).range(1..))]
    max_queue_bytes_total: u64,
    /// Days a message waits for its client before it is deleted unread (the client is told).
    #[arg(long, env = "ROOST_MESSAGE_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3650))]
    message_retention_days: u64,
    /// A peer homeserver: DOMAIN=HOST:PORT (repeatable). Also its entry in the allow-list.
    #[arg(long = "peer", env = "ROOST_PEER", value_delimiter = ',', value_parser = parse_peer)]
    peers: Vec<(String, SocketAddr)>,
    /// PEM file of a CA that signs peer homeservers' certificates.
    #[arg(long, env = "ROOST_PEER_CA")]
    peer_ca: Option<PathBuf>,
    /// A peer's pinned certificate: DOMAIN=PEM-FILE (repeatable).
    #[arg(long = "peer-cert", env = "ROOST_PEER_CERT", value_delimiter = ',', value_parser = parse_pinned)]
    pinned: Vec<(String, PathBuf)>,
    /// Which peers may federate.
    #[arg(
        long,
        env = "ROOST_FEDERATION",
        value_enum,
        default_value = "allow-list"
    )]
    federation: FederationMode,
    /// Seconds between purges of expired data.
    #[arg(long, env = "ROOST_MAINTENANCE_INTERVAL_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    maintenance_interval_secs: u64,
    /// Seconds between transparency tree heads while the credential log grows (a head is also
    /// published at once when a client asks about a user no head covers yet).
    #[arg(long, env = "ROOST_TREE_HEAD_INTERVAL_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    tree_head_interval_secs: u64,
    /// Turn offline push off: no Web Push, no gateways; clients cannot register push targets.
    #[arg(long, env = "ROOST_NO_OFFLINE_PUSH")]
    no_offline_push: bool,
    /// Turn Web Push off (gateways stay on if any are given).
    #[arg(long, env = "ROOST_NO_WEB_PUSH")]
    no_web_push: bool,
    /// A push gateway (Matrix push-gateway API) clients may register devices with, by exact
    /// URL, e.g. https://push.example.org/_matrix/push/v1/notify (repeatable).
    #[arg(long = "push-gateway", env = "ROOST_PUSH_GATEWAY", value_delimiter = ',', value_parser = parse_gateway)]
    push_gateways: Vec<String>,
    /// Allow Web Push endpoints on loopback addresses (tests and development only).
    #[arg(long, env = "ROOST_PUSH_ALLOW_LOOPBACK")]
    push_allow_loopback: bool,
    /// Only allow Web Push endpoints on this host; `.example.com` allows every name under
    /// example.com (repeatable). Default: any public host.
    #[arg(
        long = "push-allowed-host",
        env = "ROOST_PUSH_ALLOWED_HOST",
        value_delimiter = ','
    )]
    push_allowed_hosts: Vec<String>,
    /// Seconds between two wake-ups of one client that has not caught up.
    #[arg(long, env = "ROOST_PUSH_WAKE_INTERVAL_SECS", default_value_t = PushConfig::default().wake_interval.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86_400))]
    push_wake_interval_secs: u64,
    /// The contact push services see in the VAPID token (mailto: or https: URL).
    /// Default: mailto:postmaster@DOMAIN.
    #[arg(long, env = "ROOST_PUSH_CONTACT", value_parser = parse_contact)]
    push_contact: Option<String>,
    /// Serve Prometheus metrics (`/metrics`) and a health check (`/health`) over plain HTTP on
    /// this TCP address, e.g. 127.0.0.1:9464. Off by default; do not expose it publicly.
    #[arg(long, env = "ROOST_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// The day (YYYY-MM-DD, from 00:00 UTC) from which clients of the protocol's version 1
    /// (ALPN roost/1) get UnsupportedVersion for every request, naming roost/2; `never` keeps
    /// serving them.
    #[arg(long, env = "ROOST_ROOST1_UNTIL", default_value = "2027-07-01", value_parser = parse_served_until)]
    roost1_until: ServedUntil,
    /// Seconds in-flight requests get to finish on shutdown.
    #[arg(long, env = "ROOST_SHUTDOWN_GRACE_SECS", default_value_t = ServerLimits::default().shutdown_grace.as_secs(), value_parser = clap::value_parser!(u64).range(0..=600))]
    shutdown_grace_secs: u64,
}

/// Until when a protocol version is served: a Unix time, or no end.
#[derive(Clone, Copy, Debug)]
struct ServedUntil(Option<roost::clock::UnixTime>);

fn parse_served_until(text: &str) -> Result<ServedUntil, String> {
    if text == "never" {
        return Ok(ServedUntil(None));
    }
    let fields: Vec<&str> = text.split('-').collect();
    let parsed = match fields[..] {
        [year, month, day] if year.len() == 4 && month.len() == 2 && day.len() == 2 => {
            match (year.parse(), month.parse(), day.parse()) {
                (Ok(year), Ok(month), Ok(day)) => roost::clock::unix_midnight(year, month, day),
                _ => None,
            }
        }
        _ => None,
    };
    parsed
        .map(|time| ServedUntil(Some(time)))
        .ok_or_else(|| format!("{text:?} is not a day (YYYY-MM-DD) or `never`"))
}

fn parse_peer(text: &str) -> Result<(String, SocketAddr), String> {
    let (domain, address) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not DOMAIN=HOST:PORT"))?;
    let domain: Domain = domain.parse()?;
    let address = std::net::ToSocketAddrs::to_socket_addrs(address)
        .map_err(|e| format!("{address:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address:?} has no address"))?;
    Ok((domain.as_str().to_owned(), address))
}

fn parse_gateway(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return Err(format!("{text:?} is not an http(s) URL"));
    }
    if text.len() > roost::protocol::MAX_PUSH_URL_LEN {
        return Err(format!("{text:?} is too long"));
    }
    Ok(text.to_owned())
}

fn parse_contact(text: &str) -> Result<String, String> {
    if text.starts_with("mailto:") || text.starts_with("https://") {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not a mailto: or https: URL"))
    }
}

fn parse_pinned(text: &str) -> Result<(String, PathBuf), String> {
    let (domain, path) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not DOMAIN=PEM-FILE"))?;
    let domain: Domain = domain.parse()?;
    Ok((domain.as_str().to_owned(), PathBuf::from(path)))
}

impl ServeArgs {
    fn federation(&self) -> anyhow::Result<Option<FederationConfig>> {
        let open = matches!(self.federation, FederationMode::Open);
        if self.peers.is_empty() && self.peer_ca.is_none() && self.pinned.is_empty() && !open {
            return Ok(None);
        }
        let ca = match &self.peer_ca {
            Some(path) => roost::tls::load_certificates(path)?,
            None => Vec::new(),
        };
        let mut pinned = Vec::new();
        for (domain, path) in &self.pinned {
            let certificate = roost::tls::load_certificates(path)?
                .into_iter()
                .next()
                .with_context(|| format!("no certificate in {}", path.display()))?;
            pinned.push((domain.clone(), certificate));
        }
        if ca.is_empty() && pinned.is_empty() {
            anyhow::bail!("federation needs --peer-ca or --peer-cert to know whom to trust");
        }
        let peers: std::collections::BTreeMap<_, _> = self.peers.iter().cloned().collect();
        let allowed_domains = (!open).then(|| peers.keys().cloned().collect());
        Ok(Some(FederationConfig {
            peers,
            trust: roost::tls::PeerTrust {
                ca,
                pinned,
                allowed_domains,
            },
        }))
    }

    fn into_config(self) -> anyhow::Result<ServerConfig> {
        let federation = self.federation()?;
        let certificate = match (self.cert, self.key) {
            (Some(cert), Some(key)) => CertificateSource::Files { cert, key },
            _ => CertificateSource::SelfSigned,
        };
        Ok(ServerConfig {
            domain: self.domain,
            listen: self.listen,
            data_dir: self.data_dir,
            store: self.store,
            certificate,
            limits: ServerLimits {
                max_connections: self.max_connections as usize,
                max_concurrent_streams: self.max_streams,
                idle_timeout: Duration::from_secs(self.idle_timeout_secs),
                request_timeout: Duration::from_secs(self.request_timeout_secs),
                shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
                max_connections_per_source: self.max_connections_per_source as usize,
                handshakes_per_second_per_source: self.handshakes_per_second_per_source,
                requests_per_second_per_client: self.requests_per_second_per_client,
                unauthenticated_requests_per_second_per_source: self
                    .unauthenticated_requests_per_second_per_source,
                registrations_per_hour_per_source: self.registrations_per_hour_per_source,
            },
            registration: match self.registration {
                Registration::Open => RegistrationMode::Open,
                Registration::Closed => RegistrationMode::Closed,
                Registration::Invite => RegistrationMode::Invite,
            },
            credential_lifetime: Duration::from_secs(
                self.credential_lifetime_days * SECONDS_PER_DAY,
            ),
            deleted_user_quarantine: Duration::from_secs(
                self.deleted_user_quarantine_days * SECONDS_PER_DAY,
            ),
            key_packages: KeyPackagePolicy {
                low_watermark: self.key_package_low_watermark,
                max_per_client: self.max_key_packages_per_client,
                claims_per_minute_per_claimer: self.claims_per_minute,
                claims_per_minute_per_target: self.claims_per_minute_per_user,
            },
            queues: QueuePolicy {
                max_messages: self.max_queue_messages,
                max_bytes: self.max_queue_bytes,
                max_bytes_per_user: self.max_queue_bytes_per_user,
                max_bytes_total: self.max_queue_bytes_total,
                retention: Duration::from_secs(self.message_retention_days * SECONDS_PER_DAY),
            },
            push: PushConfig {
                web_push: !self.no_offline_push && !self.no_web_push,
                gateways: if self.no_offline_push {
                    Vec::new()
                } else {
                    self.push_gateways
                },
                allow_loopback: self.push_allow_loopback,
                allowed_hosts: (!self.push_allowed_hosts.is_empty())
                    .then_some(self.push_allowed_hosts),
                wake_interval: Duration::from_secs(self.push_wake_interval_secs),
                contact: self.push_contact,
                ..PushConfig::default()
            },
            maintenance_interval: Duration::from_secs(self.maintenance_interval_secs),
            tree_head_interval: Duration::from_secs(self.tree_head_interval_secs),
            metrics_listen: self.metrics_listen,
            federation,
            clock: Arc::new(SystemClock),
            roost1_served_until: self.roost1_until.0,
        })
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match init_logging(&cli.log_level, cli.log_format).and_then(|()| run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes on one line, as an operator reads it; never a backtrace.
            eprintln!("roost: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(serve(args.into_config()?))
        }
        Command::RotateCredentialKey { data_dir } => {
            roost::server::require_data_dir(&data_dir)?;
            let id = CredentialKeys::rotate(&data_dir, SystemClock.now())?;
            println!("added credential-signing key {id}; restart the server to sign with it");
            Ok(())
        }
        Command::Invite {
            target,
            store,
            command,
        } => invite(&target.data_dir, store, target.json, command),
        Command::Admin(args) => admin::run(args),
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

/// `roost invite ...`: through the running server's admin socket; with no server running,
/// `create` records the invite in the store itself.
fn invite(
    data_dir: &std::path::Path,
    store: Option<roost::store::StoreLocation>,
    json: bool,
    command: admin::InvitesCommand,
) -> anyhow::Result<()> {
    roost::server::require_data_dir(data_dir)?;
    // A server runs if its socket takes a connection (a stale socket refuses one).
    let running = std::os::unix::net::UnixStream::connect(
        data_dir.join(roost::protocol::admin::ADMIN_SOCKET_FILE),
    )
    .is_ok();
    match command {
        admin::InvitesCommand::Create { uses, valid_days } if !running => {
            admin::create_invite_offline(data_dir, store, uses, valid_days, json)
        }
        command => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(async {
                    let client = roost::admin::AdminClient::for_data_dir(data_dir)?;
                    admin::run_invites(&client, command, json).await
                })
                .map_err(anyhow::Error::from)
        }
    }
}

async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    // The handlers are installed before anything starts: a SIGTERM that comes while the server
    // starts (or just after it logged that it serves) shuts it down gracefully, not by the
    // signal's default action.
    let mut signals = ShutdownSignals::install()?;
    let server = Server::start(config).await?;
    signals.next().await;
    // A second signal while shutting down gives up waiting for in-flight requests.
    tokio::select! {
        result = server.shutdown() => result,
        _ = signals.next() => {
            warn!("second signal: exiting without waiting");
            std::process::exit(130);
        }
    }
}

/// SIGINT and SIGTERM, caught from the moment they are installed.
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// Resolves on the next SIGINT or SIGTERM.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        info!("signal received");
    }
}

fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => tracing_subscriber::EnvFilter::try_new(from_env),
        _ => tracing_subscriber::EnvFilter::try_new(level),
    }
    .context("invalid log filter")?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Timestamps in RFC 3339 UTC, the level, the target, the message and its fields as
        // top-level keys: what Loki, Elasticsearch and journald's JSON readers expect.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    Ok(())
}
