//! A running homeserver: opens the data directory, the store and the endpoint, wires services to
//! the transport, and shuts everything down in order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::clock::{Clock, SystemClock};
use crate::config::{CertificateSource, ServerConfig};
use crate::metrics::Metrics;
use crate::secret_files::create_private_dir;
use crate::services::admin::{Admin, ServerFacts};
use crate::services::Services;
use crate::store::{Store, StoreLocation, DATABASE_FILE};
use crate::tls::TlsIdentity;
use crate::transport::{self, SessionRegistry, Shared};

/// Checks that `dir` is the data directory of a Roost server: it exists and holds the database.
/// The operator commands call it first, so a mistyped `--data-dir` is an error rather than a new,
/// empty directory whose keys no server uses.
pub fn require_data_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        anyhow::bail!(
            "the data directory {} does not exist (give the --data-dir of a server that has run)",
            dir.display()
        );
    }
    // A node of a shared (PostgreSQL) store keeps only its keys here.
    let keys = crate::services::credential_keys::CREDENTIAL_KEYS_DIR;
    if !dir.join(DATABASE_FILE).is_file() && !dir.join(keys).is_dir() {
        anyhow::bail!(
            "{} holds no Roost data (no {DATABASE_FILE}, no {keys}): give the --data-dir of a server that has run",
            dir.display()
        );
    }
    Ok(())
}

/// Copies the data directory of a node of a shared store (its keys and certificate) to `to`, the
/// data directory of another node of the domain: everything but the admin socket and a redb
/// database. What an operator does with `cp -r` on a stopped node, for tests and benchmarks.
pub fn copy_node_keys(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    std::fs::create_dir_all(to)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_node_keys(&entry.path(), &target)?;
        } else if kind.is_file() && entry.file_name() != DATABASE_FILE {
            std::fs::copy(entry.path(), &target)?;
        } else if !kind.is_socket() && !kind.is_file() {
            return Err(std::io::Error::other(format!(
                "{} is neither a file nor a directory",
                entry.path().display()
            )));
        }
    }
    Ok(())
}

/// Removes everything inside `dir`, keeping `dir`.
fn empty_directory(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// A server that is accepting connections.
pub struct Server {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    certificate: PathBuf,
    shared: Arc<Shared>,
    store: Store,
    accept_loop: JoinHandle<()>,
    maintenance: JoinHandle<()>,
}

impl Server {
    /// Binds the endpoint, opens the data directory and the store, and starts accepting.
    ///
    /// The UDP port is bound before anything is written, and a data directory this call created
    /// is removed again if the start fails, so a failed start leaves nothing half-made behind.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Self> {
        let socket = std::net::UdpSocket::bind(config.listen)
            .with_context(|| format!("listening on {}", config.listen))?;
        let metrics_listener = match config.metrics_listen {
            Some(address) => Some(crate::metrics::bind(address).await?),
            None => None,
        };
        // A directory that did not exist, or was empty (one a service manager made for us), is
        // left as it was found if the start fails.
        let created = !config.data_dir.exists();
        let was_empty = std::fs::read_dir(&config.data_dir)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(false);
        let data_dir = config.data_dir.clone();
        let started = Self::start_on(config, socket, metrics_listener).await;
        if started.is_err() && (created || was_empty) {
            let undone = if created {
                std::fs::remove_dir_all(&data_dir)
            } else {
                empty_directory(&data_dir)
            };
            if let Err(e) = undone {
                warn!(data_dir = %data_dir.display(), "could not undo what the failed start wrote in the data directory: {e}");
            }
        }
        started
    }

    async fn start_on(
        config: ServerConfig,
        socket: std::net::UdpSocket,
        metrics_listener: Option<tokio::net::TcpListener>,
    ) -> anyhow::Result<Self> {
        let (identity, certificate) = load_identity(&config)?;
        let store = open_store(&config).await?;
        let sessions = Arc::new(SessionRegistry::default());
        // On a shared store, the bus to the other nodes of the domain (its own connection).
        let bus = tokio::task::spawn_blocking({
            let store = store.clone();
            move || store.event_bus()
        })
        .await??;
        let services = Arc::new(Services::new(
            &config,
            &identity,
            store.clone(),
            sessions.clone(),
            bus,
        )?);

        let peer_trust = config
            .federation
            .as_ref()
            .map(|federation| &federation.trust);
        let endpoint_config = transport::endpoint_config(&identity, &config.limits, peer_trust)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(endpoint_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .with_context(|| format!("listening on {}", config.listen))?;
        let local_addr = endpoint.local_addr()?;
        let admin = Arc::new(Admin::new(
            services.clone(),
            ServerFacts {
                listen: local_addr,
                data_dir: config.data_dir.clone(),
                started_at: SystemClock.now(),
                started: std::time::Instant::now(),
            },
        ));
        let transport_metrics = crate::metrics::TransportMetrics::default();
        let metrics = Arc::new(Metrics::new(services.clone(), &transport_metrics));
        let metrics_addr = match &metrics_listener {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };
        let shared = Arc::new(Shared::new(
            services,
            sessions,
            config.limits.clone(),
            transport_metrics,
            transport::VersionPolicy {
                roost1_served_until: config.roost1_served_until,
                clock: config.clock.clone(),
            },
        ));
        let accept_loop = tokio::spawn(transport::serve(endpoint, shared.clone()));
        let side = SideServices {
            admin_socket: bind_admin_socket(&config),
            admin,
            metrics_listener,
            metrics,
        };
        let maintenance = tokio::spawn(side.run(shared.clone()));
        if let Some(address) = metrics_addr {
            info!(metrics = %address, "serving metrics at /metrics and /health");
        }
        info!(
            domain = %config.domain,
            listen = %local_addr,
            data_dir = %config.data_dir.display(),
            store = %store.location(),
            certificate = %certificate.display(),
            "serving; clients must trust the certificate"
        );
        Ok(Self {
            metrics_addr,
            local_addr,
            certificate,
            shared,
            store,
            accept_loop,
            maintenance,
        })
    }

    /// The address the endpoint is bound to (with the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the metrics endpoint is bound to, when it is served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The server's certificate file: what clients trust.
    pub fn certificate_path(&self) -> &Path {
        &self.certificate
    }

    pub fn services(&self) -> &Services {
        &self.shared.services
    }

    pub fn sessions(&self) -> &SessionRegistry {
        &self.shared.sessions
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Graceful shutdown: tells connected clients, stops accepting, lets in-flight requests
    /// finish (up to the grace period), closes connections, then closes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shared.begin_shutdown("the server is shutting down");
        self.accept_loop.await.context("the accept loop failed")?;
        self.maintenance
            .await
            .context("the maintenance task failed")?;
        self.store.close().await;
        info!("shut down");
        Ok(())
    }
}

/// The TLS identity the server presents, with the certificate file it came from: the operator's
/// files, or a self-signed certificate kept in the data directory (made on first start).
fn load_identity(config: &ServerConfig) -> anyhow::Result<(TlsIdentity, PathBuf)> {
    let identity = match &config.certificate {
        CertificateSource::Files { cert, key } => {
            Some((TlsIdentity::load(cert, key)?, cert.clone()))
        }
        CertificateSource::SelfSigned => None,
    };
    create_private_dir(&config.data_dir)?;
    let (identity, certificate) = match identity {
        Some(loaded) => loaded,
        None => TlsIdentity::load_or_create_self_signed(&config.data_dir, config.domain.as_str())?,
    };
    if !crate::tls::certificate_names(&identity.cert_chain[0], config.domain.as_str()) {
        warn!(
            certificate = %certificate.display(),
            domain = %config.domain,
            "the certificate does not name the domain: clients and peers that check it against the domain will refuse it"
        );
    }
    Ok((identity, certificate))
}

/// Opens the store (redb in the data directory unless another is configured) and binds it to
/// the server's domain; a store another process holds is refused in words an operator can act on.
async fn open_store(config: &ServerConfig) -> anyhow::Result<Store> {
    let location = config
        .store
        .clone()
        .unwrap_or_else(|| StoreLocation::Redb(config.data_dir.join(DATABASE_FILE)));
    let store = tokio::task::spawn_blocking({
        let location = location.clone();
        move || Store::open_at(&location)
    })
    .await?
    .map_err(|e| {
        if !e.is_database_in_use() {
            return anyhow::Error::new(e).context(format!("opening the store {location}"));
        }
        match &location {
            StoreLocation::Redb(path) if path.parent() == Some(&*config.data_dir) => {
                anyhow::anyhow!(
                    "another roost process is using the data directory {}",
                    config.data_dir.display()
                )
            }
            _ => anyhow::anyhow!("another roost process is using the database {location}"),
        }
    })?;
    store.bind_domain(config.domain.as_str()).await?;
    Ok(store)
}

/// The admin socket is a convenience: a server that cannot bind it (a data directory path
/// longer than a socket address allows, say) serves clients without it.
fn bind_admin_socket(config: &ServerConfig) -> Option<tokio::net::UnixListener> {
    match transport::admin::bind(&config.data_dir) {
        Ok(listener) => Some(listener),
        Err(e) => {
            warn!("no admin socket, `roost admin` will not reach this server: {e:#}");
            None
        }
    }
}

/// What runs beside the client endpoint until shutdown: the admin socket, the metrics endpoint.
struct SideServices {
    admin_socket: Option<tokio::net::UnixListener>,
    admin: Arc<Admin>,
    metrics_listener: Option<tokio::net::TcpListener>,
    metrics: Arc<Metrics>,
}

impl SideServices {
    /// Runs them, with the services' background work (maintenance, outbox, push, cluster),
    /// until the server shuts down.
    async fn run(self, shared: Arc<Shared>) {
        let stop = shared.shutdown.clone();
        let admin = async {
            if let Some(listener) = self.admin_socket {
                transport::admin::serve(listener, self.admin, stop.clone()).await;
            }
        };
        let metrics = async {
            if let Some(listener) = self.metrics_listener {
                crate::metrics::serve(listener, self.metrics, stop.clone()).await;
            }
        };
        tokio::join!(
            shared.services.run_maintenance(stop.clone()),
            shared.services.run_transparency(stop.clone()),
            shared.services.run_outbox(stop.clone()),
            shared.services.run_push(stop.clone()),
            shared.services.run_cluster(stop.clone()),
            admin,
            metrics,
        );
    }
}
