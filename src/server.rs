//! A running homeserver: opens the data directory, the store and the endpoint, wires services to
//! the transport, and shuts everything down in order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::{CertificateSource, ServerConfig};
use crate::secret_files::create_private_dir;
use crate::services::Services;
use crate::store::Store;
use crate::tls::TlsIdentity;
use crate::transport::{self, SessionRegistry, Shared};

/// A server that is accepting connections.
pub struct Server {
    local_addr: SocketAddr,
    certificate: PathBuf,
    shared: Arc<Shared>,
    store: Store,
    accept_loop: JoinHandle<()>,
    maintenance: JoinHandle<()>,
}

impl Server {
    /// Opens the data directory and the store, binds the endpoint and starts accepting.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Self> {
        create_private_dir(&config.data_dir)?;
        let (identity, certificate) = match &config.certificate {
            CertificateSource::Files { cert, key } => (TlsIdentity::load(cert, key)?, cert.clone()),
            CertificateSource::SelfSigned => {
                TlsIdentity::load_or_create_self_signed(&config.data_dir, config.domain.as_str())?
            }
        };
        let data_dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&data_dir))
            .await?
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
        store.bind_domain(config.domain.as_str()).await?;
        let sessions = Arc::new(SessionRegistry::default());
        let services = Arc::new(Services::new(
            &config,
            &identity,
            store.clone(),
            sessions.clone(),
        )?);

        let peer_trust = config
            .federation
            .as_ref()
            .map(|federation| &federation.trust);
        let endpoint_config = transport::endpoint_config(&identity, &config.limits, peer_trust)?;
        let endpoint = quinn::Endpoint::server(endpoint_config, config.listen)
            .with_context(|| format!("listening on {}", config.listen))?;
        let local_addr = endpoint.local_addr()?;
        let shared = Arc::new(Shared::new(services, sessions, config.limits.clone()));
        let accept_loop = tokio::spawn(transport::serve(endpoint, shared.clone()));
        let maintenance = tokio::spawn({
            let shared = shared.clone();
            async move {
                let stop = shared.shutdown.clone();
                tokio::join!(
                    shared.services.run_maintenance(stop.clone()),
                    shared.services.run_outbox(stop.clone()),
                    shared.services.run_push(stop),
                );
            }
        });
        info!(
            domain = %config.domain,
            listen = %local_addr,
            data_dir = %config.data_dir.display(),
            certificate = %certificate.display(),
            "serving; clients must trust the certificate"
        );
        Ok(Self {
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
