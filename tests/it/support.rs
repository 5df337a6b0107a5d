//! Test harness: a real server on `127.0.0.1:0` with a temporary data directory.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use roost::client::{ClientConfig, Connection};
use roost::config::ServerConfig;
use roost::protocol::{ClientId, Text};
use roost::server::Server;
use tempfile::TempDir;

/// Upper bound for anything a test awaits, so that a bug fails the test instead of hanging it.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test if it takes longer than [`TEST_TIMEOUT`].
pub async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .expect("timed out")
}

pub struct TestServer {
    pub server: Server,
    pub dir: TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` has changed its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new(
            "localhost".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("data"),
        );
        adjust(&mut config);
        let server = Server::start(config).await.unwrap();
        Self { server, dir }
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

    /// Makes a client known to the server's key registry, and returns its id and key.
    pub fn add_client(&self, user: &str, device_id: u32) -> (ClientId, SigningKey) {
        let client = ClientId {
            user_id: Text::new(user).unwrap(),
            device_id,
        };
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        self.server
            .services()
            .client_keys()
            .insert(client.clone(), key.verifying_key());
        (client, key)
    }
}
