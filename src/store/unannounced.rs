//! What a crash may have left unannounced: clients with push targets whose queue holds messages
//! newer than the last wake-up scheduled for them (the push targets' tables beside the queues').

use super::tables::{push, queues};
use super::{Store, StoreError};

impl Store {
    /// Clients with push targets whose queue holds messages newer than the last wake-up
    /// scheduled for them, with the queue's newest sequence number.
    pub async fn unannounced_queues(&self) -> Result<Vec<(String, u32, u64)>, StoreError> {
        self.read(|txn| {
            let mut found = Vec::new();
            for (user_id, device_id) in push::clients_with_targets(txn)? {
                let client = (user_id.as_str(), device_id);
                let (next_seq, count) = queues::queue_extent_read(txn, client)?;
                let newest = next_seq.saturating_sub(1);
                if count > 0 && newest > push::announced_read(txn, client)? {
                    found.push((user_id, device_id, newest));
                }
            }
            Ok(found)
        })
        .await
    }
}
