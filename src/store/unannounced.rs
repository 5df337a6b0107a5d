//! What a crash may have left unannounced: clients with push targets whose queue holds messages
//! newer than the last wake-up scheduled for them (the push targets' tables beside the queues').

use super::rows::key;
use super::tables::push::{self, QueueSeq};
use super::tables::queues;
use super::{Store, StoreError};

impl Store {
    /// Clients with push targets whose queue holds messages newer than the last wake-up
    /// scheduled for them, with the queue's newest sequence number.
    pub async fn unannounced_queues(&self) -> Result<Vec<QueueSeq>, StoreError> {
        self.read(|txn| {
            let mut found = Vec::new();
            for client in push::clients_with_targets(txn)? {
                let (next_seq, count) = queues::queue_extent_read(txn, key(&client))?;
                let newest = next_seq.saturating_sub(1);
                if count > 0 && newest > push::announced_read(txn, key(&client))? {
                    found.push(QueueSeq {
                        client,
                        seq: newest,
                    });
                }
            }
            Ok(found)
        })
        .await
    }
}
