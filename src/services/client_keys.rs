//! Client signature keys known to the server, for connection authentication.
//!
//! Until the accounts service lands this is an in-memory registry that tests fill; the accounts
//! service replaces it with registered clients read from the store.

use std::collections::HashMap;
use std::sync::RwLock;

use ed25519_dalek::VerifyingKey;

use crate::protocol::ClientId;

#[derive(Default)]
pub struct ClientKeyRegistry {
    keys: RwLock<HashMap<ClientId, VerifyingKey>>,
}

impl ClientKeyRegistry {
    /// Records that `client` authenticates with `key`.
    pub fn insert(&self, client: ClientId, key: VerifyingKey) {
        self.keys
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(client, key);
    }

    pub fn signature_key(&self, client: &ClientId) -> Option<VerifyingKey> {
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(client)
            .copied()
    }
}
