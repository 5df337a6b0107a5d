//! The ratchet trees that joiners need: the tree of every epoch whose commit added members, kept
//! so that Welcomes can travel without it (at 10,000 members a tree is megabytes; a commit request
//! carrying it twice could not be sent). A joiner fetches the tree of its Welcome's epoch in
//! chunks (`FetchGroupTree`). Kept for the queue retention (as long as the Welcome can wait in a
//! queue) and deleted with the group.

use crate::store::kv::{ReadableTable, TableDefinition, WriteTransaction};

use crate::store::{Store, StoreError};

/// (group id, epoch) -> accepted-at (Unix ms, big-endian `u64`) followed by the epoch's
/// TLS-encoded `RatchetTree`.
pub(in crate::store) const GROUP_TREES: TableDefinition<(&[u8], u64), &[u8]> =
    TableDefinition::new("group-trees-1");
/// (accepted-at ms, group id, epoch) -> (): the trees in the order they expire.
pub(in crate::store) const GROUP_TREES_BY_TIME: TableDefinition<(u64, &[u8], u64), ()> =
    TableDefinition::new("group-trees-by-time-1");

/// Trees deleted per maintenance run at most (bounds that write transaction).
const TREES_PURGED_PER_RUN: usize = 256;

/// Keeps `tree` as the tree of `group_id` at `epoch`, accepted at `now_ms`.
pub(in crate::store) fn keep_tree_in(
    txn: &WriteTransaction,
    group_id: &[u8],
    epoch: u64,
    now_ms: u64,
    tree: &[u8],
) -> Result<(), StoreError> {
    let mut value = Vec::with_capacity(8 + tree.len());
    value.extend_from_slice(&now_ms.to_be_bytes());
    value.extend_from_slice(tree);
    txn.open_table(GROUP_TREES)?
        .put((group_id, epoch), value.as_slice())?;
    txn.open_table(GROUP_TREES_BY_TIME)?
        .put((now_ms, group_id, epoch), ())?;
    Ok(())
}

/// Deletes every tree kept for `group_id`.
pub(in crate::store) fn delete_trees_in(
    txn: &WriteTransaction,
    group_id: &[u8],
) -> Result<(), StoreError> {
    let mut trees = txn.open_table(GROUP_TREES)?;
    let mut by_time = txn.open_table(GROUP_TREES_BY_TIME)?;
    let kept: Vec<(u64, u64)> = trees
        .range((group_id, 0)..=(group_id, u64::MAX))?
        .map(|entry| {
            let (key, value) = entry?;
            Ok((key.value().1, accepted_at(value.value())?))
        })
        .collect::<Result<_, StoreError>>()?;
    for (epoch, at) in kept {
        trees.delete((group_id, epoch))?;
        by_time.delete((at, group_id, epoch))?;
    }
    Ok(())
}

fn accepted_at(value: &[u8]) -> Result<u64, StoreError> {
    value
        .get(..8)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("a kept tree without its time".into()))
}

/// Part of a kept tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeChunk {
    /// The length of the whole tree encoding.
    pub total_len: usize,
    /// Bytes from the asked offset on (empty at or past the end).
    pub bytes: Vec<u8>,
}

impl TreeChunk {
    /// Up to `max_len` bytes of `tree` from `offset`.
    pub fn of(tree: &[u8], offset: usize, max_len: usize) -> Self {
        let start = offset.min(tree.len());
        let end = start.saturating_add(max_len).min(tree.len());
        Self {
            total_len: tree.len(),
            bytes: tree[start..end].to_vec(),
        }
    }
}

impl Store {
    /// Up to `max_len` bytes from `offset` of the tree kept for `group_id` at `epoch`, if one is.
    pub async fn group_tree_chunk(
        &self,
        group_id: &[u8],
        epoch: u64,
        offset: usize,
        max_len: usize,
    ) -> Result<Option<TreeChunk>, StoreError> {
        let group_id = group_id.to_vec();
        self.read(move |txn| {
            let trees = txn.open_table(GROUP_TREES)?;
            let Some(value) = trees.get((group_id.as_slice(), epoch))? else {
                return Ok(None);
            };
            accepted_at(value.value())?;
            Ok(Some(TreeChunk::of(&value.value()[8..], offset, max_len)))
        })
        .await
    }

    /// Deletes trees kept since before `cutoff_ms` (the retention: the Welcomes they were for
    /// are gone from the queues by then). Returns how many it deleted.
    pub async fn purge_expired_group_trees(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        self.write(move |txn| {
            let mut by_time = txn.open_table(GROUP_TREES_BY_TIME)?;
            let expired: Vec<(u64, Vec<u8>, u64)> = by_time
                .range((0, &[][..], 0)..(cutoff_ms, &[][..], 0))?
                .take(TREES_PURGED_PER_RUN)
                .map(|entry| {
                    entry.map(|(key, _)| {
                        let (at, group_id, epoch) = key.value();
                        (at, group_id.to_vec(), epoch)
                    })
                })
                .collect::<Result<_, _>>()?;
            let mut trees = txn.open_table(GROUP_TREES)?;
            for (at, group_id, epoch) in &expired {
                by_time.delete((*at, group_id.as_slice(), *epoch))?;
                trees.delete((group_id.as_slice(), *epoch))?;
            }
            Ok(expired.len() as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_kept_tree_is_read_in_chunks_and_goes_with_its_group_or_its_time() {
        let (_dir, store) = crate::store::test_store();
        let tree: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let (kept, other) = (tree.clone(), tree.clone());
        store
            .write(move |txn| {
                keep_tree_in(txn, b"group-a", 3, 1_000, &kept)?;
                keep_tree_in(txn, b"group-a", 5, 2_000, &kept)?;
                keep_tree_in(txn, b"group-b", 1, 3_000, &other)
            })
            .await
            .unwrap();

        // The bytes of a tree from `offset`, 4 KiB at most; `None` if that tree is not kept.
        let chunk = |group: &'static [u8], epoch, offset| {
            let store = &store;
            async move {
                let chunk = store.group_tree_chunk(group, epoch, offset, 4096).await;
                chunk.unwrap().map(|chunk| chunk.bytes)
            }
        };
        let first = store
            .group_tree_chunk(b"group-a", 3, 0, 4096)
            .await
            .unwrap();
        let first = first.expect("kept");
        assert_eq!(
            (first.total_len, first.bytes.as_slice()),
            (10_000, &tree[..4096])
        );
        assert_eq!(chunk(b"group-a", 3, 8192).await.unwrap(), tree[8192..]);
        assert!(chunk(b"group-a", 3, 20_000).await.unwrap().is_empty());
        assert_eq!(chunk(b"group-a", 4, 0).await, None);

        // Expiry goes by time: only the tree kept before the cutoff goes.
        assert_eq!(store.purge_expired_group_trees(1_500).await.unwrap(), 1);
        assert_eq!(chunk(b"group-a", 3, 0).await, None);
        assert!(chunk(b"group-a", 5, 0).await.is_some());

        // Deleting a group's trees leaves the others' and no time index behind.
        store
            .write(|txn| delete_trees_in(txn, b"group-a"))
            .await
            .unwrap();
        assert_eq!(chunk(b"group-a", 5, 0).await, None);
        assert!(chunk(b"group-b", 1, 0).await.is_some());
        assert_eq!(store.purge_expired_group_trees(u64::MAX).await.unwrap(), 1);
        assert!(store.tables_containing(b"group-").await.unwrap().is_empty());
    }
}
