//! What the scenarios share: servers started for the run, registered devices, the raw redb and
//! raw quinn ceilings, and what the kernel says the process wrote.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use roost::client::groups::GroupClient;
use roost::client::mls::DeviceMls;
use roost::client::state::DeviceIdentity;
use roost::client::{ClientConfig, Connection, PushStream};
use roost::clock::{Clock, SystemClock};
use roost::config::{CertificateSource, FederationConfig, ServerConfig};
use roost::server::Server;

/// The ciphersuite bench devices use (MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519).
pub const CIPHERSUITE: u16 = 0x0001;

/// Registrations, connections and KeyPackage uploads done at once while preparing a scenario.
const SETUP_CONCURRENCY: usize = 16;

/// Where the scenarios' clients go: a server this run started, or one given with `--server`.
pub enum Target {
    Local(Box<Server>),
    Remote,
}

/// A server under test and how clients reach it.
pub struct BenchServer {
    pub target: Target,
    pub client_config: ClientConfig,
    /// The data directory of a local server (kept until the server stops).
    _dir: Option<tempfile::TempDir>,
}

impl BenchServer {
    /// A fresh server for `localhost` on loopback, or the `--server` the run targets.
    pub async fn start(remote: Option<&ClientConfig>) -> anyhow::Result<Self> {
        if let Some(config) = remote {
            return Ok(Self {
                target: Target::Remote,
                client_config: config.clone(),
                _dir: None,
            });
        }
        let dir = tempfile::tempdir()?;
        let config = ServerConfig::new(
            "localhost".parse().map_err(anyhow::Error::msg)?,
            "127.0.0.1:0".parse()?,
            dir.path().join("data"),
        );
        let server = Server::start(unthrottled(config)).await?;
        let client_config =
            ClientConfig::new(server.local_addr(), "localhost", server.certificate_path())?;
        Ok(Self {
            target: Target::Local(Box::new(server)),
            client_config,
            _dir: Some(dir),
        })
    }

    /// The local server, if this run started it.
    pub fn local(&self) -> Option<&Server> {
        match &self.target {
            Target::Local(server) => Some(server),
            Target::Remote => None,
        }
    }

    pub async fn stop(self) {
        if let Target::Local(server) = self.target {
            let _ = server.shutdown().await;
        }
    }
}

/// `config` with the per-source and per-client limits lifted: one local source drives the whole
/// load, and those limits would measure themselves, not the server.
pub fn unthrottled(mut config: ServerConfig) -> ServerConfig {
    config.limits.requests_per_second_per_client = u32::MAX;
    config.limits.unauthenticated_requests_per_second_per_source = u32::MAX;
    config.limits.registrations_per_hour_per_source = u32::MAX;
    config.limits.handshakes_per_second_per_source = u32::MAX;
    config.limits.max_connections_per_source = usize::MAX;
    config.limits.max_connections = 1_000_000;
    config.key_packages.claims_per_minute_per_claimer = u32::MAX;
    config.key_packages.claims_per_minute_per_target = u32::MAX;
    config
}

/// Two servers, `a.example` and `b.example`, federating with each other on loopback.
pub struct FederatedPair {
    pub a: Server,
    pub b: Server,
    pub a_client: ClientConfig,
    pub b_client: ClientConfig,
    _dir: tempfile::TempDir,
}

impl FederatedPair {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let certs = dir.path().join("certs");
        let (a_addr, b_addr) = (free_port()?, free_port()?);
        let a = federated(
            dir.path(),
            &certs,
            "a.example",
            a_addr,
            ("b.example", b_addr),
        )
        .await?;
        let b = federated(
            dir.path(),
            &certs,
            "b.example",
            b_addr,
            ("a.example", a_addr),
        )
        .await?;
        let ca = certs.join("ca.pem");
        Ok(Self {
            a_client: ClientConfig::new(a.local_addr(), "a.example", &ca)?,
            b_client: ClientConfig::new(b.local_addr(), "b.example", &ca)?,
            a,
            b,
            _dir: dir,
        })
    }

    pub async fn stop(self) {
        let _ = self.a.shutdown().await;
        let _ = self.b.shutdown().await;
    }
}

async fn federated(
    dir: &Path,
    certs: &Path,
    domain: &str,
    listen: SocketAddr,
    peer: (&str, SocketAddr),
) -> anyhow::Result<Server> {
    let issued = roost::tls::issue_development_certificate(certs, domain)?;
    let mut config = ServerConfig::new(
        domain.parse().map_err(anyhow::Error::msg)?,
        listen,
        dir.join(domain),
    );
    config.certificate = CertificateSource::Files {
        cert: issued.cert.clone(),
        key: issued.key.clone(),
    };
    config.federation = Some(FederationConfig {
        peers: [(peer.0.to_owned(), peer.1)].into_iter().collect(),
        trust: roost::tls::PeerTrust {
            ca: roost::tls::load_certificates(&issued.ca_cert)?,
            pinned: Vec::new(),
            allowed_domains: Some(vec![peer.0.to_owned()]),
        },
    });
    Server::start(unthrottled(config)).await
}

/// A port free on loopback now (federating servers must know each other's address up front).
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// A registered device with its own connection, authenticated.
pub struct Device {
    pub connection: Connection,
    pub mls: DeviceMls,
    pub push: Option<PushStream>,
}

impl Device {
    /// This device's group flows, with its homeserver's credential keys.
    pub async fn groups(&self) -> anyhow::Result<GroupClient<'_>> {
        let keys = self.connection.domain_keys().await?;
        Ok(GroupClient::new(
            &self.connection,
            &self.mls,
            keys,
            SystemClock.now(),
        ))
    }

    /// A group this device creates with `peer` invited: a 1:1 conversation. Returns its id.
    pub async fn one_to_one(&self, peer: &str) -> anyhow::Result<Vec<u8>> {
        let groups = self.groups().await?;
        let group_id = groups.create_group().await?;
        groups.invite(&group_id, peer).await?;
        Ok(group_id)
    }
}

/// Registers `user`, authenticates (taking the push stream when `push`), and publishes
/// `key_packages` KeyPackages.
pub async fn device(
    config: &ClientConfig,
    user: &str,
    push: bool,
    key_packages: usize,
) -> anyhow::Result<Device> {
    let connection = Connection::connect(config).await?;
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let registered = connection
        .register_user(user, &key, CIPHERSUITE, None)
        .await
        .with_context(|| format!("registering {user}"))?;
    let identity = DeviceIdentity::new(registered, key, CIPHERSUITE);
    let push = if push {
        Some(
            connection
                .authenticate(&identity.client, &identity.signing_key)
                .await?,
        )
    } else {
        connection
            .authenticate_without_push(&identity.client, &identity.signing_key)
            .await?;
        None
    };
    let mls = DeviceMls::new(&identity)?;
    if key_packages > 0 {
        connection
            .publish_key_packages(mls.key_packages(key_packages, false)?)
            .await?;
    }
    Ok(Device {
        connection,
        mls,
        push,
    })
}

/// Registers the users `names` with one KeyPackage each, several at once (reading group logs
/// when `logs`), and closes their connections: members that are offline.
pub async fn offline_members(
    config: &ClientConfig,
    names: &[String],
    logs: bool,
) -> anyhow::Result<()> {
    let mut registering = futures::stream::iter(names.iter().map(|name| async move {
        let device = device(config, name, false, 1).await?;
        if logs {
            device.connection.use_group_logs().await?;
        }
        device.connection.close().await;
        anyhow::Ok(())
    }))
    .buffer_unordered(SETUP_CONCURRENCY);
    while let Some(done) = registering.next().await {
        done?;
    }
    Ok(())
}

/// Bytes this process has caused to be written to storage so far (`write_bytes` of
/// `/proc/self/io`: counted when pages are dirtied, so it includes redb's copy-on-write pages and
/// its fsynced headers). `None` where the kernel does not say.
pub fn bytes_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes: "))
        .and_then(|value| value.trim().parse().ok())
}

/// CPU seconds this process has used (user and system, all threads), from `/proc/self/stat`
/// (in clock ticks of 10 ms).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which may hold spaces) closed by ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// Resident memory of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib * 1024)
}

/// The raw redb ceiling: 1 KiB values committed in batches of `batch` with immediate durability,
/// on the same disk as the servers' data. Returns (values per second, bytes written per value).
pub fn redb_ceiling(batch: usize, values: usize) -> anyhow::Result<(f64, Option<f64>)> {
    use redb::{Database, Durability, TableDefinition};
    const TABLE: TableDefinition<(&str, u32, u64), &[u8]> = TableDefinition::new("ceiling");
    let dir = tempfile::tempdir()?;
    let db = Database::create(dir.path().join("ceiling.redb"))?;
    let value = vec![0x5a; 1024];
    let written_before = bytes_written();
    let start = Instant::now();
    let mut written = 0u64;
    while (written as usize) < values {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut table = txn.open_table(TABLE)?;
            for _ in 0..batch {
                let user = format!("user{}@localhost", written % 200);
                table.insert((user.as_str(), 1, written), value.as_slice())?;
                written += 1;
            }
        }
        txn.commit()?;
    }
    let rate = written as f64 / start.elapsed().as_secs_f64();
    let per_value = match (written_before, bytes_written()) {
        (Some(before), Some(after)) => Some((after - before) as f64 / written as f64),
        _ => None,
    };
    Ok((rate, per_value))
}

/// ALPN of the raw quinn ceiling server.
const RAW_ALPN: &[u8] = b"roost-bench-raw";

/// A bare quinn server on loopback: each bidirectional stream is read to its end and answered
/// with 16 bytes. The ceiling for one-stream-per-request traffic.
pub struct RawQuicServer {
    endpoint: quinn::Endpoint,
    pub addr: SocketAddr,
    pub certificate: PathBuf,
    _dir: tempfile::TempDir,
}

impl RawQuicServer {
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (identity, certificate) =
            roost::tls::TlsIdentity::load_or_create_self_signed(dir.path(), "localhost")?;
        let tls = roost::tls::server_config(&identity, &[RAW_ALPN], None)?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // As many requests in flight per connection as a Roost server allows by default.
        transport.max_concurrent_bidi_streams(
            roost::config::ServerLimits::default()
                .max_concurrent_streams
                .into(),
        );
        config.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse()?)?;
        let addr = endpoint.local_addr()?;
        tokio::spawn(accept_raw(endpoint.clone()));
        Ok(Self {
            endpoint,
            addr,
            certificate,
            _dir: dir,
        })
    }

    /// A client configuration for it.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        Self::client_config_for(self.addr, &self.certificate)
    }

    /// A client configuration for a raw server at `addr` with `certificate`.
    pub fn client_config_for(addr: SocketAddr, certificate: &Path) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::new(addr, "localhost", certificate)?;
        config.alpns = vec![RAW_ALPN.to_vec()];
        config.accept_push = false;
        Ok(config)
    }

    pub fn stop(&self) {
        self.endpoint.close(0u32.into(), b"done");
    }
}

async fn accept_raw(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                tokio::spawn(async move {
                    if recv.read_to_end(64 * 1024).await.is_ok() {
                        let _ = send.write_all(&[0u8; 16]).await;
                        let _ = send.finish();
                    }
                });
            }
        });
    }
}

/// Runs `requests` requests over `connection` with `in_flight` at once; returns (requests per
/// second, sorted latencies).
pub async fn request_rate<F, Fut>(
    requests: usize,
    in_flight: usize,
    request: F,
) -> anyhow::Result<(f64, Vec<Duration>)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(requests / in_flight);
                for _ in 0..requests / in_flight {
                    let sent = Instant::now();
                    request().await?;
                    latencies.push(sent.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let rate = latencies.len() as f64 / start.elapsed().as_secs_f64();
    latencies.sort();
    Ok((rate, latencies))
}

/// Profiling one phase: with `ROOST_BENCH_PERF_CTL=FIFO` and `ROOST_BENCH_PROFILE=PHASE`, the
/// phase named PHASE tells `perf record --control fifo:FIFO -D -1` when to record (see
/// BENCHMARKS.md). Returns a guard that stops the recording when dropped.
pub fn profile_phase(phase: &str) -> Option<ProfiledPhase> {
    let wanted = std::env::var("ROOST_BENCH_PROFILE").ok()?;
    if wanted != phase {
        return None;
    }
    let control = std::env::var("ROOST_BENCH_PERF_CTL").ok()?;
    let mut fifo = std::fs::OpenOptions::new().write(true).open(control).ok()?;
    std::io::Write::write_all(&mut fifo, b"enable\n").ok()?;
    Some(ProfiledPhase { fifo })
}

pub struct ProfiledPhase {
    fifo: std::fs::File,
}

impl Drop for ProfiledPhase {
    fn drop(&mut self) {
        let _ = std::io::Write::write_all(&mut self.fifo, b"disable\n");
    }
}
