//! The server's queued bytes: one figure that every enqueue and deletion moves (queues and group
//! logs alike), against which the server-wide cap is checked. Kept per writer batch, as explicit
//! state of the batch's transaction: its writes move [`BatchTotals`], and the writer writes the
//! net change once, just before the batch commits, instead of once per write (one row every
//! enqueue would touch).

use std::cell::Cell;

use super::kv::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use super::StoreError;

/// "" -> payload bytes queued in all queues and logs; on a shared store, one more row per
/// writer, its shard (see [`SHARD_PREFIX`]).
pub(crate) const QUEUE_TOTALS: TableDefinition<&str, u64> = TableDefinition::new("queue-totals-1");
const SERVER_TOTAL: &str = "";

/// The server's total on a shared store is kept in shards, one per writer (node run): a key
/// starting with this, which no user id does. Each node changes only its own shard, so the
/// total that every write batch moves is not one row that every node's transactions fight over.
/// A shard holds its writer's net change as a wrapping `u64` (it may be negative).
const SHARD_PREFIX: &str = "\u{1}";

/// What a writer knows of the server's total between batches: the row it keeps its share in,
/// and the other writers' shares as last read.
pub(crate) struct WriterTotals {
    /// [`SERVER_TOTAL`], or this writer's own shard on a shared store.
    row: String,
    /// The other shards' sum as last read (outside the write transaction: reading them inside
    /// would make every node's batches conflict), on a shared store.
    other_shards: u64,
}

impl WriterTotals {
    /// The one writer of a store: it keeps the whole total.
    pub(crate) fn single() -> Self {
        Self {
            row: SERVER_TOTAL.to_owned(),
            other_shards: 0,
        }
    }

    /// One of several writers sharing a store: it keeps its share in a shard of its own.
    pub(crate) fn sharded() -> Self {
        Self {
            row: format!("{SHARD_PREFIX}{:016x}", rand::random::<u64>()),
            other_shards: 0,
        }
    }

    /// Re-reads the other writers' shards (before a batch, on a shared store; an estimate: the
    /// server-wide cap is a safety limit, not an exact quota).
    pub(crate) fn refresh_other_shards(&mut self, txn: &ReadTransaction) -> Result<(), StoreError> {
        self.other_shards = sum_total_rows(txn, Some(&self.row))?;
        Ok(())
    }

    /// The totals of the next batch.
    pub(crate) fn batch(&self) -> BatchTotals {
        BatchTotals {
            row: self.row.clone(),
            other_shards: self.other_shards,
            pending: Cell::new(0),
        }
    }
}

/// The server's total as one batch moves it.
pub(crate) struct BatchTotals {
    row: String,
    other_shards: u64,
    /// Bytes the batch's writes have added (and, negative, removed) so far.
    pending: Cell<i128>,
}

impl BatchTotals {
    /// Payload bytes queued in all queues and logs, counting the batch's writes so far.
    pub(crate) fn server_total(&self, txn: &WriteTransaction) -> Result<u64, StoreError> {
        let stored = self.own_total(txn)?.wrapping_add(self.other_shards) as i64;
        let total = i128::from(stored) + self.pending.get();
        Ok(u64::try_from(total.max(0)).unwrap_or(u64::MAX))
    }

    /// Moves the server's total by `added` bytes in and `removed` out.
    pub(crate) fn adjust(&self, added: u64, removed: u64) {
        self.pending
            .set(self.pending.get() + i128::from(added) - i128::from(removed));
    }

    /// Writes the batch's net change into `txn` (the writer, before it commits).
    pub(crate) fn flush(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let pending = self.pending.get();
        if pending == 0 {
            return Ok(());
        }
        let own = self.own_total(txn)?;
        let total = if self.row.is_empty() {
            // The one writer's total: never below zero.
            u64::try_from((i128::from(own) + pending).max(0)).unwrap_or(u64::MAX)
        } else {
            own.wrapping_add(pending as u64)
        };
        txn.open_table(QUEUE_TOTALS)?
            .put(self.row.as_str(), total)?;
        self.pending.set(0);
        Ok(())
    }

    /// This writer's row of the server's total, as stored.
    fn own_total(&self, txn: &WriteTransaction) -> Result<u64, StoreError> {
        Ok(txn
            .open_table(QUEUE_TOTALS)?
            .get(self.row.as_str())?
            .map_or(0, |total| total.value()))
    }
}

/// The wrapping sum of the rows of the server's total (`""` and every shard), but `except`.
fn sum_total_rows(txn: &ReadTransaction, except: Option<&str>) -> Result<u64, StoreError> {
    // Every row of the total sorts before this; every user id after it.
    const AFTER_SHARDS: &str = "\u{2}";
    let mut total = 0u64;
    for entry in txn
        .open_table(QUEUE_TOTALS)?
        .range(SERVER_TOTAL..AFTER_SHARDS)?
    {
        let (key, value) = entry?;
        if Some(key.value()) != except {
            total = total.wrapping_add(value.value());
        }
    }
    Ok(total)
}

/// Payload bytes queued in all queues and logs, as `txn` sees them (every shard).
pub(crate) fn stored_server_total(txn: &ReadTransaction) -> Result<u64, StoreError> {
    Ok(sum_total_rows(txn, None)?.min(i64::MAX as u64))
}

/// Sets the server's total to `total` (the schema 3 migration, which counts it).
pub(crate) fn set_server_total(txn: &WriteTransaction, total: u64) -> Result<(), StoreError> {
    txn.open_table(QUEUE_TOTALS)?.put(SERVER_TOTAL, total)?;
    Ok(())
}
