//! Stores for tests and benchmarks that go with them: a scratch database on a PostgreSQL server
//! ([`ScratchDatabase`]), and a replicated PostgreSQL built on this machine for the occasion
//! ([`ScratchCluster`]).

mod cluster;

pub use cluster::ScratchCluster;

use postgres::NoTls;

use super::error;
use crate::store::StoreError;

/// A new, empty database on the PostgreSQL server of `ROOST_TEST_POSTGRES` (default
/// `postgres://postgres@127.0.0.1/postgres`, a role that may create databases), dropped with
/// everything in it when this guard goes. For tests and benchmarks: each gets a store of its own.
pub struct ScratchDatabase {
    admin: String,
    name: String,
    pub url: String,
}

impl ScratchDatabase {
    pub fn create() -> Result<Self, StoreError> {
        let admin = std::env::var("ROOST_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1/postgres".into());
        let mut url = url::Url::parse(&admin).map_err(StoreError::io)?;
        let name = format!("roost_scratch_{:016x}", rand::random::<u64>());
        url.set_path(&name);
        // On a thread of its own: the synchronous client cannot run inside the runtime.
        let (admin_url, create) = (admin.clone(), format!("CREATE DATABASE {name}"));
        std::thread::spawn(move || {
            postgres::Client::connect(&admin_url, NoTls)?.batch_execute(&create)
        })
        .join()
        .map_err(|_| StoreError::io("creating a scratch database panicked"))?
        .map_err(error)?;
        Ok(Self {
            admin,
            name,
            url: url.to_string(),
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let (admin, drop) = (
            self.admin.clone(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        let _ = std::thread::spawn(move || {
            if let Ok(mut client) = postgres::Client::connect(&admin, postgres::NoTls) {
                let _ = client.batch_execute(&drop);
            }
        })
        .join();
    }
}
