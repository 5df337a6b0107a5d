//! Removing a client, or a user with all of its clients: one transaction that walks every family
//! of tables holding anything of the client (KeyPackages, queue, group memberships, log windows,
//! hubs, push targets) before its own rows go, and the revocation of its credential is
//! appended to the transparency log in the same transaction.

use super::kv::WriteTransaction;
use super::tables::{accounts, federation, group_logs, groups, key_packages, push, queues};
use super::{RemoveClientRefusal, Store, StoreError};
use crate::protocol::BindingChange;
use crate::protocol::ClientId;

impl Store {
    /// Removes one client, unless it is its user's last.
    pub async fn remove_client(
        &self,
        client: &ClientId,
        now: u64,
    ) -> Result<Result<(), RemoveClientRefusal>, StoreError> {
        self.write_for(client, move |txn, (user_id, device_id)| {
            if !accounts::client_exists(txn, user_id, device_id)? {
                return Ok(Err(RemoveClientRefusal::UnknownClient));
            }
            if accounts::client_count(txn, user_id)? <= 1 {
                return Ok(Err(RemoveClientRefusal::LastClient));
            }
            delete_client_in(txn, user_id, device_id, now)?;
            Ok(Ok(()))
        })
        .await
    }

    /// Deletes a user and everything it owns in one transaction, and quarantines its id from
    /// `now`. Returns the device ids that were removed; deleting a user that does not exist
    /// changes nothing and returns none.
    pub async fn delete_user(&self, user_id: &str, now: u64) -> Result<Vec<u32>, StoreError> {
        let user_id = user_id.to_owned();
        self.write(move |txn| {
            if !accounts::forget_user_in(txn, &user_id)? {
                return Ok(Vec::new());
            }
            let devices = accounts::devices_in(txn, &user_id)?;
            for &device_id in &devices {
                delete_client_in(txn, &user_id, device_id, now)?;
            }
            super::credentials::redact_user_in(txn, &user_id)?;
            accounts::quarantine_in(txn, &user_id, now)?;
            Ok(devices)
        })
        .await
    }
}

/// Deletes everything of one client, in every family of tables, then the client itself, and
/// logs its credential's revocation.
fn delete_client_in(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
    now: u64,
) -> Result<(), StoreError> {
    key_packages::delete_client_key_packages(txn, user_id, device_id)?;
    queues::delete_client_queue(txn, user_id, device_id)?;
    groups::delete_client_memberships(txn, user_id, device_id)?;
    group_logs::delete_client_windows(txn, user_id, device_id)?;
    federation::delete_client_hubs(txn, user_id, device_id)?;
    push::delete_client_push(txn, user_id, device_id)?;
    if let Some(credential) = accounts::forget_client_in(txn, user_id, device_id)? {
        super::credentials::log_in(txn, user_id, BindingChange::Revoked, now, &credential)?;
    }
    Ok(())
}
