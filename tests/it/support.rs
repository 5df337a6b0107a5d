//! Test harness: a real server on `127.0.0.1:0` with a temporary data directory.
//!
//! The suite runs on either store backend: redb by default, and with `ROOST_TEST_STORE=postgres`
//! every test server gets a fresh PostgreSQL database of its own (dropped at the end). Tests of
//! several nodes sharing one database ([`TestServer::start_shared`], [`TestServer::start_node`])
//! use PostgreSQL whatever the setting.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use roost::client::mls::DeviceMls;
use roost::client::state::DeviceIdentity;
use roost::client::{add_client_request, ClientConfig, Connection, PushStream};
use roost::clock::ManualClock;
use roost::config::ServerConfig;
use roost::server::Server;
use roost::store::{ScratchDatabase, StoreLocation};
use tempfile::TempDir;

/// Upper bound for anything a test awaits, so that a bug fails the test instead of hanging it.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The ciphersuite test devices use.
pub const CIPHERSUITE: u16 = 0x0001;

/// Awaits `future`, failing the test if it takes longer than [`TEST_TIMEOUT`].
pub async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .expect("timed out")
}

pub fn new_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

pub struct TestServer {
    pub server: Server,
    pub dir: TempDir,
    /// The server's clock: tests move it.
    pub clock: Arc<ManualClock>,
    /// The PostgreSQL database the server keeps its data in (shared by the nodes started from
    /// it); `None` on redb.
    pub database: Option<Arc<ScratchDatabase>>,
}

/// Whether this run of the suite keeps its servers' data in PostgreSQL (`ROOST_TEST_STORE`).
pub fn on_postgres() -> bool {
    match std::env::var("ROOST_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("redb") | Err(_) => false,
        Ok(other) => panic!("ROOST_TEST_STORE={other}: use redb or postgres"),
    }
}

fn scratch_database() -> Arc<ScratchDatabase> {
    Arc::new(ScratchDatabase::create().expect(
        "a PostgreSQL server on 127.0.0.1:5432 that postgres may create databases on (.ci/run starts it)",
    ))
}

/// A registered device, connected and authenticated.
pub struct Device {
    pub connection: Connection,
    pub identity: DeviceIdentity,
    pub push: PushStream,
    pub mls: DeviceMls,
}

impl Device {
    /// Makes and publishes `count` KeyPackages (and a last-resort one); returns them.
    pub async fn publish(&self, count: usize, last_resort: bool) -> Vec<Vec<u8>> {
        let key_packages = self.mls.key_packages(count, last_resort).unwrap();
        within(self.connection.publish_key_packages(key_packages.clone()))
            .await
            .unwrap();
        key_packages
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` has changed its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::starting_now());
        Self::start_in(dir, clock, adjust).await
    }

    pub async fn start_in(
        dir: TempDir,
        clock: Arc<ManualClock>,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let database = on_postgres().then(scratch_database);
        Self::start_on(dir, clock, database, adjust).await
    }

    /// Starts a server keeping its data in a new PostgreSQL database, whichever backend the
    /// suite runs on: the first node of a domain that [`start_node`](Self::start_node) grows.
    pub async fn start_shared(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::starting_now());
        Self::start_on(dir, clock, Some(scratch_database()), adjust).await
    }

    /// Starts another node of this server's domain: the same PostgreSQL database and a copy of
    /// its data directory's keys and certificate, as an operator would deploy it.
    pub async fn start_node(&self, adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let database = self
            .database
            .clone()
            .expect("nodes share a PostgreSQL database: start the first with start_shared");
        let dir = tempfile::tempdir().unwrap();
        copy_keys(&self.dir.path().join("data"), &dir.path().join("data"));
        Self::start_on(dir, self.clock.clone(), Some(database), adjust).await
    }

    async fn start_on(
        dir: TempDir,
        clock: Arc<ManualClock>,
        database: Option<Arc<ScratchDatabase>>,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let mut config = ServerConfig::new(
            "localhost".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("data"),
        );
        config.clock = clock.clone();
        config.store = database
            .as_ref()
            .map(|database| StoreLocation::Postgres(database.url.clone()));
        adjust(&mut config);
        let server = Server::start(config).await.unwrap();
        Self {
            server,
            dir,
            clock,
            database,
        }
    }

    /// Shuts the server down gracefully and starts a new one on the same data directory and clock.
    pub async fn restart(self) -> Self {
        self.restart_with(|_| {}).await
    }

    /// [`restart`](Self::restart), the new server's configuration changed by `adjust`.
    pub async fn restart_with(self, adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let Self {
            server,
            dir,
            clock,
            database,
        } = self;
        within(server.shutdown()).await.unwrap();
        Self::start_on(dir, clock, database, adjust).await
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(
            self.server.local_addr(),
            "localhost",
            self.server.certificate_path(),
        )
        .unwrap()
    }

    pub async fn connect(&self) -> Connection {
        within(Connection::connect(&self.client_config()))
            .await
            .unwrap()
    }

    /// Registers `user` with a new device, and connects and authenticates it.
    pub async fn register(&self, user: &str) -> Device {
        let connection = self.connect().await;
        let key = new_key();
        let registered = within(connection.register_user(user, &key, CIPHERSUITE, None))
            .await
            .unwrap();
        let identity = DeviceIdentity::new(registered, key, CIPHERSUITE);
        self.authenticated(connection, identity).await
    }

    /// Adds a new device to `approver`'s user, and connects and authenticates it.
    pub async fn add_device(&self, approver: &Device) -> Device {
        let key = new_key();
        let request =
            add_client_request(approver.identity.client.user_id.as_str(), &key, CIPHERSUITE);
        let added = within(approver.connection.add_client(request))
            .await
            .unwrap();
        let identity = DeviceIdentity::new(added, key, CIPHERSUITE);
        self.authenticated(self.connect().await, identity).await
    }

    /// Connects a new connection as an existing device.
    pub async fn reconnect(&self, identity: &DeviceIdentity) -> Device {
        self.authenticated(self.connect().await, identity.clone())
            .await
    }

    async fn authenticated(&self, connection: Connection, identity: DeviceIdentity) -> Device {
        let push = within(connection.authenticate(&identity.client, &identity.signing_key))
            .await
            .unwrap();
        if std::env::var_os("ROOST_TEST_GROUP_LOGS").is_some() {
            within(connection.use_group_logs()).await.unwrap();
        }
        let mls = DeviceMls::new(&identity).unwrap();
        Device {
            connection,
            identity,
            push,
            mls,
        }
    }
}

/// Registers `user` on the server `config` reaches (any server: in-process or a binary),
/// authenticates the connection without a push stream, and publishes the device's KeyPackages.
pub async fn register_device(
    config: &ClientConfig,
    user: &str,
) -> (Connection, DeviceIdentity, DeviceMls) {
    let connection = within(Connection::connect(config)).await.unwrap();
    let key = new_key();
    let registered = within(connection.register_user(user, &key, CIPHERSUITE, None))
        .await
        .unwrap();
    let identity = DeviceIdentity::new(registered, key, CIPHERSUITE);
    within(connection.authenticate_without_push(&identity.client, &identity.signing_key))
        .await
        .unwrap();
    let mls = DeviceMls::new(&identity).unwrap();
    within(connection.top_up_key_packages(&identity.client, &mls))
        .await
        .unwrap();
    (connection, identity, mls)
}

/// The server's error code of a refused request (failing the test if it was not refused).
pub fn code<T: std::fmt::Debug>(
    result: Result<T, roost::client::ClientError>,
) -> roost::protocol::ErrorCode {
    match result {
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("not a server error: {e}")),
        Ok(value) => panic!("expected an error, got {value:?}"),
    }
}

/// Copies a node's data directory (keys, certificate) to `to`, for another node of its domain.
pub fn copy_keys(from: &std::path::Path, to: &std::path::Path) {
    roost::server::copy_node_keys(from, to).unwrap();
}

/// A loopback address whose UDP port is free now and lies below the kernel's ephemeral range
/// (32768 and up on Linux), for servers that must know each other's address before either
/// starts, or that restart on the same address. A port taken from the ephemeral range could be
/// handed to a parallel test's `:0` bind between this check and the server's own bind; ports
/// here are only ever chosen by this function, which a counter keeps from repeating within the
/// process and the process id spreads across processes.
pub fn reserved_port() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(1_009) % SPAN;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + offset) % SPAN) as u16;
        if let Ok(socket) = std::net::UdpSocket::bind(("127.0.0.1", port)) {
            return socket.local_addr().unwrap();
        }
    }
}

/// The text of `server`'s Prometheus endpoint (`metrics_listen` must be set).
pub async fn scrape_metrics(server: &Server) -> String {
    let address = server.metrics_addr().expect("metrics are served");
    within(async {
        reqwest::get(format!("http://{address}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
    .await
}
