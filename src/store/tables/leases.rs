//! Leases: jobs that one node of a domain runs at a time (draining a peer's outbox, the
//! maintenance purge) are run by whichever node holds the job's lease. A lease is a row (holder,
//! expiry) taken or renewed in a write transaction, so the database decides between nodes; a
//! node that dies stops renewing and another takes over once the lease expires. On redb there is
//! one node, which always holds every lease.
//!
//! Each time a lease changes hands its generation grows. A job's writes carry a [`LeaseFence`]
//! (the holder and generation it started under) and are refused, in their own transaction, once
//! the lease has another holder or generation: a node that paused past its lease (a stopped
//! process, a long drain, a clock running slow) cannot act on the job after another node took
//! it over.

use crate::store::kv::{ReadableTable, TableDefinition, WriteTransaction};
use crate::store::{Store, StoreError};

/// lease name -> (holder node id, expires at ms).
pub(in crate::store) const LEASES: TableDefinition<&str, (u64, u64)> =
    TableDefinition::new("leases-1");
/// lease name -> generation: how many times the lease changed hands (from 1).
pub(in crate::store) const LEASE_GENERATIONS: TableDefinition<&str, u64> =
    TableDefinition::new("lease-generations-1");

/// What a job's writes are fenced with: the lease they act under, as its holder took it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseFence {
    pub lease: String,
    pub holder: u64,
    pub generation: u64,
}

/// Whether `fence` still holds at `now_ms`, as `txn` sees the lease: same holder, same
/// generation, not expired.
pub(in crate::store) fn fence_holds(
    txn: &WriteTransaction,
    fence: &LeaseFence,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let lease = txn
        .open_table(LEASES)?
        .get(fence.lease.as_str())?
        .map(|lease| lease.value());
    let generation = txn
        .open_table(LEASE_GENERATIONS)?
        .get(fence.lease.as_str())?
        .map_or(0, |generation| generation.value());
    Ok(matches!(lease, Some((holder, expires_at))
        if holder == fence.holder && expires_at > now_ms && generation == fence.generation))
}

impl Store {
    /// Takes the lease `name` for node `holder` until `now_ms + duration_ms`, or renews it if
    /// `holder` has it. Returns the lease's generation while `holder` holds it, `None` while
    /// another node holds an unexpired one. The generation grows when the lease changes hands
    /// (also when it expired and its old holder takes it again).
    pub async fn hold_lease(
        &self,
        name: &str,
        holder: u64,
        now_ms: u64,
        duration_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let name = name.to_owned();
        self.write(move |txn| {
            let mut leases = txn.open_table(LEASES)?;
            let current = leases.get(name.as_str())?.map(|lease| lease.value());
            let renewal = match current {
                Some((other, expires_at)) if expires_at > now_ms => {
                    if other != holder {
                        return Ok(None);
                    }
                    true
                }
                _ => false,
            };
            leases.put(name.as_str(), (holder, now_ms.saturating_add(duration_ms)))?;
            let mut generations = txn.open_table(LEASE_GENERATIONS)?;
            let generation = generations
                .get(name.as_str())?
                .map_or(0, |generation| generation.value());
            if renewal {
                return Ok(Some(generation));
            }
            generations.put(name.as_str(), generation + 1)?;
            Ok(Some(generation + 1))
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
                leases.delete(name.as_str())?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_lease_has_one_holder_until_it_expires_or_is_released() {
        let (_dir, store) = crate::store::test_store();
        // The generation `holder` holds `name` in at `now`, for 500 ms; `None` if another holds it.
        let hold = |name, holder, now| {
            let store = &store;
            async move { store.hold_lease(name, holder, now, 500).await.unwrap() }
        };
        assert_eq!(hold("outbox:b", 1, 1_000).await, Some(1));
        assert_eq!(hold("outbox:b", 2, 1_200).await, None);
        assert_eq!(hold("outbox:c", 2, 1_200).await, Some(1));
        assert_eq!(
            hold("outbox:b", 1, 1_400).await,
            Some(1),
            "renewed: the same generation"
        );
        assert_eq!(hold("outbox:b", 2, 1_800).await, None);
        assert_eq!(
            hold("outbox:b", 2, 1_901).await,
            Some(2),
            "expired: taken over, the next generation"
        );
        store.release_lease("outbox:b", 1).await.unwrap();
        assert_eq!(hold("outbox:b", 1, 1_950).await, None, "not 1's to give");
        store.release_lease("outbox:b", 2).await.unwrap();
        assert_eq!(hold("outbox:b", 1, 1_960).await, Some(3));
    }
}
