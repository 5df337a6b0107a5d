//! The services: what the server does for a decoded request once the transport knows who asks.
//!
//! Each service owns its rules and reaches storage only through the store's typed operations.
//! Services return typed errors; the transport maps them to wire codes.

mod client_keys;

pub use client_keys::ClientKeyRegistry;

use ed25519_dalek::VerifyingKey;

use crate::config::ServerLimits;
use crate::protocol::{
    ClientId, Limits, Request, ResponseBody, ServerInfo, Text, PROTOCOL_VERSION,
};
use crate::store::{Store, StoreError};

/// What a service can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("this operation needs an authenticated connection")]
    NotAuthenticated,
    #[error("operation {0:?} is handled by the transport, not a service")]
    NotAServiceOperation(crate::protocol::Operation),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The services of one server.
pub struct Services {
    domain: Text,
    limits: Limits,
    #[allow(dead_code)] // the accounts, queue and group services keep their state here
    store: Store,
    client_keys: ClientKeyRegistry,
}

impl Services {
    pub fn new(domain: &str, limits: &ServerLimits, store: Store) -> Result<Self, StoreError> {
        Ok(Self {
            domain: Text::new(domain).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            limits: limits.announced(),
            store,
            client_keys: ClientKeyRegistry::default(),
        })
    }

    /// The registry of client signature keys that authentication checks against.
    pub fn client_keys(&self) -> &ClientKeyRegistry {
        &self.client_keys
    }

    /// The signature key `client` authenticates with, if the client exists.
    pub async fn client_signature_key(
        &self,
        client: &ClientId,
    ) -> Result<Option<VerifyingKey>, ServiceError> {
        Ok(self.client_keys.signature_key(client))
    }

    /// Handles a request. `caller` is the client the connection authenticated as, if any.
    pub async fn handle(
        &self,
        caller: Option<&ClientId>,
        request: Request,
    ) -> Result<ResponseBody, ServiceError> {
        match request {
            Request::GetServerInfo => Ok(ResponseBody::ServerInfo(ServerInfo {
                domain: self.domain.clone(),
                protocol_version: PROTOCOL_VERSION,
                limits: self.limits,
            })),
            Request::WhoAmI => caller
                .cloned()
                .map(ResponseBody::WhoAmI)
                .ok_or(ServiceError::NotAuthenticated),
            Request::Authenticate(_) => {
                Err(ServiceError::NotAServiceOperation(request.operation()))
            }
        }
    }
}
