//! The key-transparency log: its entries, the hashes of its perfect subtrees (what roots and
//! proofs are made of), each user's entries, and the signed tree heads. Append-only: nothing
//! here is ever rewritten or deleted, account deletion included (a revocation is an entry).
//!
//! An entry is appended in the transaction that issues, renews or revokes the credential it
//! records, so that the log holds every credential the store ever held (`store::credentials`,
//! `store::removal`). Appends serialize on the log's last entry: on PostgreSQL two transactions
//! that append conflict and one runs again, so indices are dense and in commit order.

use crate::store::kv::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use crate::store::StoreError;
use crate::transparency::log_tree::{self, Subtree};
use crate::transparency::Hash;

/// log index -> encoded `LogRecord`: a whole entry, a user's removal, or, once its user was
/// deleted, the redaction that replaced an entry.
pub(in crate::store) const LOG_ENTRIES: TableDefinition<u64, &[u8]> =
    TableDefinition::new("transparency-log-1");
/// (level, index) -> the 32-byte hash of that perfect subtree of the log (level 0: leaf hashes).
pub(in crate::store) const LOG_SUBTREES: TableDefinition<(u8, u64), &[u8]> =
    TableDefinition::new("transparency-subtrees-1");
/// (user id, log index) -> (): the entries of each user, in log order.
pub(in crate::store) const USER_ENTRIES: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("transparency-user-entries-1");
/// tree size -> encoded `SignedTreeHead`: every head published, one per size.
pub(in crate::store) const TREE_HEADS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("transparency-heads-1");

/// `LogRecord`'s tag of a whole entry (the one record the store writes from its parts).
pub(in crate::store) const WHOLE: u8 = 1;

/// Appends `record` (an encoded `LogRecord`) to the log: its leaf and every perfect subtree it
/// completes, and, for an entry of `user`, the user's index of it. Returns its index.
pub(in crate::store) fn append_in(
    txn: &WriteTransaction,
    user: Option<&str>,
    record: &[u8],
) -> Result<u64, StoreError> {
    let mut entries = txn.open_table(LOG_ENTRIES)?;
    let index = entries.last()?.map_or(0, |(last, _)| last.value() + 1);
    entries.put(index, record)?;
    drop(entries);
    let mut subtrees = txn.open_table(LOG_SUBTREES)?;
    let completed = log_tree::completed_by(index, log_tree::leaf_hash(record), |left| {
        subtree_in(&subtrees, left.level, left.index)
    })?;
    for (subtree, hash) in completed {
        subtrees.put((subtree.level, subtree.index), hash.as_slice())?;
    }
    drop(subtrees);
    if let Some(user) = user {
        txn.open_table(USER_ENTRIES)?.put((user, index), ())?;
    }
    Ok(index)
}

/// The leaf hash of entry `index` (in a write transaction).
pub(in crate::store) fn leaf_hash_in(
    txn: &WriteTransaction,
    index: u64,
) -> Result<Hash, StoreError> {
    subtree_in(&txn.open_table(LOG_SUBTREES)?, 0, index)
}

fn subtree_in(
    subtrees: &impl ReadableTable<(u8, u64), &'static [u8]>,
    level: u8,
    index: u64,
) -> Result<Hash, StoreError> {
    let hash = subtrees
        .get((level, index))?
        .ok_or_else(|| StoreError::Corrupt(format!("log subtree {level}/{index} is missing")))?;
    hash.value()
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("log subtree {level}/{index} is not 32 bytes")))
}

/// How many entries the log holds.
pub(in crate::store) fn size_in(txn: &ReadTransaction) -> Result<u64, StoreError> {
    Ok(txn
        .open_table(LOG_ENTRIES)?
        .last()?
        .map_or(0, |(last, _)| last.value() + 1))
}

/// The log of its first `size` entries, read from its stored subtrees.
pub(in crate::store) fn tree_in<'t>(
    txn: &'t ReadTransaction,
    size: u64,
) -> Result<log_tree::Tree<impl FnMut(Subtree) -> Result<Hash, StoreError> + 't>, StoreError> {
    let subtrees = txn.open_table(LOG_SUBTREES)?;
    Ok(log_tree::Tree {
        size,
        subtree: move |subtree: Subtree| subtree_in(&subtrees, subtree.level, subtree.index),
    })
}

/// Entries `start..end` of the log, each an encoded `LogRecord`.
pub(in crate::store) fn entries_in(
    txn: &ReadTransaction,
    start: u64,
    end: u64,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let entries = txn.open_table(LOG_ENTRIES)?;
    let mut found = Vec::new();
    for entry in entries.range(start..end)? {
        found.push(entry?.1.value().to_vec());
    }
    Ok(found)
}

/// The log indices of `user_id`'s entries below `end`.
pub(in crate::store) fn user_entries_in(
    txn: &ReadTransaction,
    user_id: &str,
    end: u64,
) -> Result<Vec<u64>, StoreError> {
    user_indices(&txn.open_table(USER_ENTRIES)?, user_id, end)
}

fn user_indices(
    table: &impl ReadableTable<(&'static str, u64), ()>,
    user_id: &str,
    end: u64,
) -> Result<Vec<u64>, StoreError> {
    let mut indices = Vec::new();
    for row in table.range((user_id, 0)..(user_id, end))? {
        indices.push(row?.0.value().1);
    }
    Ok(indices)
}

/// Entry `index`, an encoded `LogRecord`.
pub(in crate::store) fn read_record_in(
    txn: &ReadTransaction,
    index: u64,
) -> Result<Vec<u8>, StoreError> {
    record(&txn.open_table(LOG_ENTRIES)?, index)
}

fn record(
    entries: &impl ReadableTable<u64, &'static [u8]>,
    index: u64,
) -> Result<Vec<u8>, StoreError> {
    entries
        .get(index)?
        .map(|record| record.value().to_vec())
        .ok_or_else(|| StoreError::Corrupt(format!("log entry {index} is missing")))
}

/// Replaces entry `index` by its redaction (an encoded `LogRecord::Redacted`), and forgets that
/// it was `user_id`'s. Its leaf, and so every root, stays as it was.
pub(in crate::store) fn redact_in(
    txn: &WriteTransaction,
    user_id: &str,
    index: u64,
    redacted: &[u8],
) -> Result<(), StoreError> {
    txn.open_table(LOG_ENTRIES)?.put(index, redacted)?;
    txn.open_table(USER_ENTRIES)?.delete((user_id, index))?;
    Ok(())
}

/// The log indices of all of `user_id`'s entries (in a write transaction).
pub(in crate::store) fn all_user_entries_in(
    txn: &WriteTransaction,
    user_id: &str,
) -> Result<Vec<u64>, StoreError> {
    user_indices(&txn.open_table(USER_ENTRIES)?, user_id, u64::MAX)
}

/// Entry `index`, an encoded `LogRecord` (in a write transaction).
pub(in crate::store) fn record_in(
    txn: &WriteTransaction,
    index: u64,
) -> Result<Vec<u8>, StoreError> {
    record(&txn.open_table(LOG_ENTRIES)?, index)
}

/// The newest tree head, encoded: (its tree size, its bytes).
pub(in crate::store) fn latest_head_in(
    txn: &ReadTransaction,
) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    Ok(txn
        .open_table(TREE_HEADS)?
        .last()?
        .map(|(size, head)| (size.value(), head.value().to_vec())))
}

/// Publishes the head of size `size`, unless a head as large was published first (by another
/// node): `false` then.
pub(in crate::store) fn publish_head_in(
    txn: &WriteTransaction,
    size: u64,
    head: &[u8],
) -> Result<bool, StoreError> {
    let mut heads = txn.open_table(TREE_HEADS)?;
    if heads
        .last()?
        .is_some_and(|(latest, _)| latest.value() >= size)
    {
        return Ok(false);
    }
    heads.put(size, head)?;
    Ok(true)
}
