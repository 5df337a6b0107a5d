//! Leases: jobs that one node of a domain runs at a time (draining a peer's outbox, the
//! maintenance purge, the push wake-ups) are run by whichever node holds the job's lease. A
//! lease is a row (holder, expiry) taken or renewed in a write transaction, so the database
//! decides between nodes; a node that dies stops renewing and another takes over once the lease
//! expires. On redb there is one node, which always holds every lease.

use super::kv::{ReadableTable, TableDefinition};
use super::{Store, StoreError};

/// lease name -> (holder node id, expires at ms).
pub(super) const LEASES: TableDefinition<&str, (u64, u64)> = TableDefinition::new("leases-1");

impl Store {
    /// Takes the lease `name` for node `holder` until `now_ms + duration_ms`, or renews it if
    /// `holder` has it. Returns whether `holder` holds it now: `false` while another node holds
    /// an unexpired one.
    pub async fn hold_lease(
        &self,
        name: &str,
        holder: u64,
        now_ms: u64,
        duration_ms: u64,
    ) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |txn| {
            let mut leases = txn.open_table(LEASES)?;
            let current = leases.get(name.as_str())?.map(|lease| lease.value());
            if let Some((other, expires_at)) = current {
                if other != holder && expires_at > now_ms {
                    return Ok(false);
                }
            }
            leases.insert(name.as_str(), (holder, now_ms.saturating_add(duration_ms)))?;
            Ok(true)
        })
        .await
    }

    /// Gives the lease `name` up if `holder` has it (at shutdown, so another node takes over at
    /// once).
    pub async fn release_lease(&self, name: &str, holder: u64) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(move |txn| {
            let mut leases = txn.open_table(LEASES)?;
            let held = leases
                .get(name.as_str())?
                .is_some_and(|lease| lease.value().0 == holder);
            if held {
                leases.remove(name.as_str())?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lease_has_one_holder_until_it_expires_or_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.hold_lease("outbox:b", 1, 1_000, 500).await.unwrap());
        assert!(!store.hold_lease("outbox:b", 2, 1_200, 500).await.unwrap());
        assert!(store.hold_lease("outbox:c", 2, 1_200, 500).await.unwrap());
        assert!(
            store.hold_lease("outbox:b", 1, 1_400, 500).await.unwrap(),
            "renewed"
        );
        assert!(!store.hold_lease("outbox:b", 2, 1_800, 500).await.unwrap());
        assert!(
            store.hold_lease("outbox:b", 2, 1_901, 500).await.unwrap(),
            "expired"
        );
        store.release_lease("outbox:b", 1).await.unwrap();
        assert!(
            !store.hold_lease("outbox:b", 1, 1_950, 500).await.unwrap(),
            "not 1's to give"
        );
        store.release_lease("outbox:b", 2).await.unwrap();
        assert!(store.hold_lease("outbox:b", 1, 1_960, 500).await.unwrap());
    }
}
