//! KeyPackages as a client's user holds them: published by an existing client, claimed one per
//! client of a user, and the stock of each (the client list is the accounts' tables).

use super::tables::accounts;
use super::tables::key_packages::{self, ClientClaim, NewKeyPackage, PublishRefusal, Stock};
use super::{Store, StoreError};
use crate::protocol::ClientId;

impl Store {
    /// Adds a batch of validated KeyPackages to a client's stock, all or none. A last-resort
    /// KeyPackage replaces the client's previous one for its ciphersuite.
    pub async fn publish_key_packages(
        &self,
        client: &ClientId,
        batch: Vec<NewKeyPackage>,
        max_per_client: usize,
        now: u64,
    ) -> Result<Result<Stock, PublishRefusal>, StoreError> {
        self.write_for(client, move |txn, (user_id, device_id)| {
            if !accounts::client_exists(txn, user_id, device_id)? {
                return Ok(Err(PublishRefusal::UnknownClient));
            }
            let client = (user_id, device_id);
            key_packages::publish_in(txn, client, &batch, max_per_client, now)
        })
        .await
    }

    /// Takes one KeyPackage of `ciphersuite` from every client of `user_id`, in one transaction:
    /// an unexpired ordinary one (removed), else the last resort (kept), else none. Expired
    /// KeyPackages met on the way are purged. `None` if the user does not exist.
    pub async fn claim_key_packages(
        &self,
        user_id: &str,
        ciphersuite: u16,
        now: u64,
    ) -> Result<Option<Vec<ClientClaim>>, StoreError> {
        let user_id = user_id.to_owned();
        self.write(move |txn| {
            let devices = accounts::devices_in(txn, &user_id)?;
            if devices.is_empty() {
                return Ok(None);
            }
            let mut claims = Vec::with_capacity(devices.len());
            for device_id in devices {
                let claimed = key_packages::claim_one(txn, &user_id, device_id, ciphersuite, now)?;
                claims.push(ClientClaim {
                    device_id,
                    claimed,
                    stock: key_packages::stock(txn, &user_id, device_id, now)?,
                });
            }
            Ok(Some(claims))
        })
        .await
    }

    /// The stock of every client of `user_id` (empty for an unknown user).
    pub async fn key_package_stock(
        &self,
        user_id: &str,
        now: u64,
    ) -> Result<Vec<Stock>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |txn| {
            accounts::devices_read(txn, &user_id)?
                .into_iter()
                .map(|device_id| key_packages::stock_read(txn, &user_id, device_id, now))
                .collect()
        })
        .await
    }
}
