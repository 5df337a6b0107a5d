//! The server's validated configuration. The binary turns CLI flags into a [`ServerConfig`];
//! nothing starts until it has been built, so a bad flag fails before any socket or file is opened.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use crate::clock::{Clock, SystemClock, SECONDS_PER_DAY};
pub use crate::identity::Domain;
use crate::protocol::{self, Limits, RegistrationMode};

/// Where the server's TLS certificate comes from.
#[derive(Clone, Debug)]
pub enum CertificateSource {
    /// PEM files given by the operator.
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate for the domain, generated into the data directory on first
    /// start and reused afterwards.
    SelfSigned,
}

/// Operational limits. Defaults suit a small production server.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Connections served at once; more are refused.
    pub max_connections: usize,
    /// Bidirectional streams (requests in flight) per connection.
    pub max_concurrent_streams: u32,
    /// A connection without traffic for this long is closed.
    pub idle_timeout: Duration,
    /// A request must arrive completely within this time after its stream opened.
    pub request_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
    /// Connections served at once from one source (an IPv4 address, an IPv6 /64).
    pub max_connections_per_source: usize,
    /// New connections (TLS handshakes) accepted per second from one source, in bursts of as many.
    pub handshakes_per_second_per_source: u32,
    /// Requests per second one authenticated client may make (all its connections together).
    pub requests_per_second_per_client: u32,
    /// Requests per second from one source on connections that have not authenticated.
    pub unauthenticated_requests_per_second_per_source: u32,
    /// Users one source may register per hour (under open registration).
    pub registrations_per_hour_per_source: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_concurrent_streams: 64,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(10),
            max_connections_per_source: 100,
            handshakes_per_second_per_source: 50,
            requests_per_second_per_client: 1_000,
            unauthenticated_requests_per_second_per_source: 100,
            registrations_per_hour_per_source: 30,
        }
    }
}

impl ServerLimits {
    /// The limits as announced to clients in `ServerInfo`.
    pub fn announced(&self) -> Limits {
        let millis = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        Limits {
            max_request_len: protocol::MAX_REQUEST_LEN as u32,
            max_response_len: protocol::MAX_RESPONSE_LEN as u32,
            max_notification_len: protocol::MAX_NOTIFICATION_LEN as u32,
            max_concurrent_streams: self.max_concurrent_streams,
            idle_timeout_ms: millis(self.idle_timeout),
            request_timeout_ms: millis(self.request_timeout),
        }
    }
}

/// Everything a server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The domain users of this server belong to (`alice@DOMAIN`).
    pub domain: Domain,
    pub listen: SocketAddr,
    /// Keys, the generated certificate, the admin socket, and the redb database unless `store`
    /// names another.
    pub data_dir: PathBuf,
    /// Where the data lives: `None` is `roost.redb` in the data directory. A PostgreSQL store may
    /// be shared by several nodes of the domain (each with a copy of the data directory's keys).
    pub store: Option<crate::store::StoreLocation>,
    pub certificate: CertificateSource,
    pub limits: ServerLimits,
    /// Whether and how new users may register.
    pub registration: RegistrationMode,
    /// How long an issued client credential is valid.
    pub credential_lifetime: Duration,
    /// How long a deleted user's id cannot be registered again.
    pub deleted_user_quarantine: Duration,
    /// KeyPackage limits.
    pub key_packages: KeyPackagePolicy,
    /// Client queue limits and retention.
    pub queues: QueuePolicy,
    /// Federation with other homeservers; `None` keeps this server to itself.
    pub federation: Option<FederationConfig>,
    /// Offline push: waking clients that are not connected.
    pub push: PushConfig,
    /// How often expired data (KeyPackages, ...) is purged.
    pub maintenance_interval: Duration,
    /// How often a transparency tree head is published while the credential log grows (one is
    /// also published at once when a client asks about a user no head covers yet).
    pub tree_head_interval: Duration,
    /// Where Prometheus scrapes `/metrics` (and `/health`) over HTTP; `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// The time the services see; tests set it.
    pub clock: Arc<dyn Clock>,
    /// Until when (Unix seconds) `roost/1` connections are served; after it every request on one
    /// is answered `UnsupportedVersion`, naming `roost/2`. `None`: served with no end.
    pub roost1_served_until: Option<crate::clock::UnixTime>,
}

/// How often tree heads are published unless the operator says otherwise.
pub const DEFAULT_TREE_HEAD_INTERVAL: Duration = Duration::from_secs(10);

/// The end of `roost/1` unless the operator says otherwise: 2027-07-01 00:00 UTC, seven months
/// after `roost/2` came (protocol-spec/core.md section 4).
pub const DEFAULT_ROOST1_SERVED_UNTIL: crate::clock::UnixTime = 1_814_400_000;

/// Which homeservers this one federates with, where they are, and how it trusts them.
#[derive(Clone, Debug, Default)]
pub struct FederationConfig {
    /// domain -> address of its homeserver.
    pub peers: std::collections::BTreeMap<String, SocketAddr>,
    /// Certificates accepted from peers. In allow-list mode `trust.allowed_domains` lists the
    /// peers; in open mode it is `None` and any peer the trust anchors vouch for may connect.
    pub trust: crate::tls::PeerTrust,
}

impl FederationConfig {
    /// Whether `domain` may federate with this server.
    pub fn allows(&self, domain: &str) -> bool {
        self.trust
            .allowed_domains
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|peer| peer == domain))
    }
}

/// Offline push (protocol-spec/push.md "Offline push"): which targets clients may register and
/// how often they are woken.
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// Whether clients may register Web Push subscriptions (the server then has a VAPID key).
    pub web_push: bool,
    /// Push gateways (Matrix push-gateway API) clients may name, by exact URL. Chosen by the
    /// operator, so they may be internal addresses.
    pub gateways: Vec<String>,
    /// Whether Web Push endpoints may be on loopback addresses (tests and development); private,
    /// link-local and other internal addresses are always refused.
    pub allow_loopback: bool,
    /// When set, Web Push endpoints must be on one of these hosts (`.example.com` also matches
    /// every name under example.com).
    pub allowed_hosts: Option<Vec<String>>,
    /// Wake-ups to one client are at least this far apart while it has not caught up.
    pub wake_interval: Duration,
    /// The VAPID `sub` claim: how a push service reaches the operator (`mailto:` or `https:`).
    /// `None`: `mailto:postmaster@DOMAIN`.
    pub contact: Option<String>,
    /// Longest time one delivery attempt (connect, send, answer) may take.
    pub request_timeout: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            web_push: true,
            gateways: Vec::new(),
            allow_loopback: false,
            allowed_hosts: None,
            wake_interval: Duration::from_secs(30),
            contact: None,
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl PushConfig {
    /// Whether any kind of offline push is on.
    pub fn enabled(&self) -> bool {
        self.web_push || !self.gateways.is_empty()
    }
}

/// Client queue limits and retention.
#[derive(Clone, Debug)]
pub struct QueuePolicy {
    /// Most messages waiting in one client's queue.
    pub max_messages: u64,
    /// Most payload bytes waiting in one client's queue.
    pub max_bytes: u64,
    /// Most payload bytes waiting in the queues of all the clients of one user.
    pub max_bytes_per_user: u64,
    /// Most payload bytes waiting in all queues of the server.
    pub max_bytes_total: u64,
    /// Messages not acknowledged within this time are deleted (and the client told).
    pub retention: Duration,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        Self {
            max_messages: 10_000,
            max_bytes: 256 * 1024 * 1024,
            max_bytes_per_user: 1024 * 1024 * 1024,
            max_bytes_total: 64 * 1024 * 1024 * 1024,
            retention: Duration::from_secs(30 * SECONDS_PER_DAY),
        }
    }
}

/// KeyPackage limits and thresholds.
#[derive(Clone, Debug)]
pub struct KeyPackagePolicy {
    /// Below this many remaining KeyPackages a client is told to publish more.
    pub low_watermark: u32,
    /// Most KeyPackages kept per client (the last resort not counted).
    pub max_per_client: u32,
    /// Claims one client may make per minute.
    pub claims_per_minute_per_claimer: u32,
    /// Claims of one user's KeyPackages per minute, by anyone.
    pub claims_per_minute_per_target: u32,
}

impl Default for KeyPackagePolicy {
    fn default() -> Self {
        Self {
            low_watermark: 10,
            max_per_client: 100,
            claims_per_minute_per_claimer: 600,
            claims_per_minute_per_target: 600,
        }
    }
}

/// Default validity of a client credential: 90 days.
pub const DEFAULT_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(90 * SECONDS_PER_DAY);
/// Default quarantine of a deleted user id: 30 days.
pub const DEFAULT_DELETED_USER_QUARANTINE: Duration = Duration::from_secs(30 * SECONDS_PER_DAY);

impl ServerConfig {
    /// A configuration with a self-signed certificate, open registration and default limits.
    pub fn new(domain: Domain, listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            domain,
            listen,
            data_dir,
            store: None,
            certificate: CertificateSource::SelfSigned,
            limits: ServerLimits::default(),
            registration: RegistrationMode::Open,
            credential_lifetime: DEFAULT_CREDENTIAL_LIFETIME,
            deleted_user_quarantine: DEFAULT_DELETED_USER_QUARANTINE,
            key_packages: KeyPackagePolicy::default(),
            queues: QueuePolicy::default(),
            federation: None,
            push: PushConfig::default(),
            maintenance_interval: Duration::from_secs(600),
            tree_head_interval: DEFAULT_TREE_HEAD_INTERVAL,
            metrics_listen: None,
            clock: Arc::new(SystemClock),
            roost1_served_until: Some(DEFAULT_ROOST1_SERVED_UNTIL),
        }
    }
}
