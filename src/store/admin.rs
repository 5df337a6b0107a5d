//! What the operator reads across tables (counts, pages of users, the largest queues) and the
//! online backup: a copy of one read transaction into a fresh database file.

use std::path::Path;

use redb::{Database, Durability};

use super::kv::{ReadTransaction, ReadableTable, SortKey, TableDefinition, Value};
use crate::protocol::ClientId;

use super::tables::accounts::{CLIENTS, USERS};
use super::tables::federation::OUTBOX;
use super::tables::groups::GROUPS;
use super::tables::queues::{oldest_queued_at, queue_state, QUEUE_HEADS, QUEUE_REMOVED};
use super::{Store, StoreError};

/// Row counts for the operator's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub users: u64,
    pub clients: u64,
    pub groups: u64,
    pub queued_messages: u64,
    pub queued_bytes: u64,
    pub outbox_waiting: u64,
}

/// A user as listed for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRow {
    pub user_id: String,
    pub created_at: u64,
    pub clients: u32,
}

/// One client's queue, for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRow {
    pub user_id: String,
    pub device_id: u32,
    pub messages: u64,
    pub bytes: u64,
    pub oldest_queued_at_ms: Option<u64>,
}

impl Store {
    /// Row counts: O(1) table lengths, plus one pass over the queue heads (one row per client).
    pub async fn counts(&self) -> Result<StoreCounts, StoreError> {
        self.read(|txn| {
            let mut counts = StoreCounts {
                users: txn.open_table(USERS)?.len()?,
                clients: txn.open_table(CLIENTS)?.len()?,
                groups: txn.open_table(GROUPS)?.len()?,
                outbox_waiting: txn.open_table(OUTBOX)?.len()?,
                queued_bytes: super::totals::stored_server_total(txn)?,
                ..StoreCounts::default()
            };
            let (heads, removed) = (txn.open_table(QUEUE_HEADS)?, txn.open_table(QUEUE_REMOVED)?);
            for entry in heads.iter()? {
                let (_, count, _) = queue_state(&heads, &removed, entry?.0.value())?;
                counts.queued_messages += count;
            }
            Ok(counts)
        })
        .await
    }

    /// At most `limit` users in id order, after `after` when given.
    pub async fn users_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserRow>, StoreError> {
        let after = after.map(str::to_owned);
        self.read(move |txn| {
            let users = txn.open_table(USERS)?;
            let clients = txn.open_table(CLIENTS)?;
            let mut page = Vec::new();
            let range = match &after {
                Some(after) => users.range::<&str>((
                    std::ops::Bound::Excluded(after.as_str()),
                    std::ops::Bound::Unbounded,
                ))?,
                None => users.range::<&str>(..)?,
            };
            for entry in range.take(limit) {
                let (user_id, record) = entry?;
                let user_id = user_id.value().to_owned();
                let count = clients
                    .range((user_id.as_str(), 0)..=(user_id.as_str(), u32::MAX))?
                    .count();
                page.push(UserRow {
                    created_at: super::tables::accounts::user_created_at(record.value())?,
                    clients: u32::try_from(count).unwrap_or(u32::MAX),
                    user_id,
                });
            }
            Ok(page)
        })
        .await
    }

    /// When `user_id` was created; `None` for no such user.
    pub async fn user_created(&self, user_id: &str) -> Result<Option<u64>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |txn| {
            txn.open_table(USERS)?
                .get(user_id.as_str())?
                .map(|record| super::tables::accounts::user_created_at(record.value()))
                .transpose()
        })
        .await
    }

    /// The `limit` client queues holding the most bytes (then messages), largest first.
    pub async fn largest_queues(&self, limit: usize) -> Result<Vec<QueueRow>, StoreError> {
        self.read(move |txn| {
            let mut largest: Vec<QueueRow> = Vec::new();
            let (heads, removed) = (txn.open_table(QUEUE_HEADS)?, txn.open_table(QUEUE_REMOVED)?);
            for entry in heads.iter()? {
                let (key, _) = entry?;
                let (user_id, device_id) = key.value();
                let (_, messages, bytes) = queue_state(&heads, &removed, (user_id, device_id))?;
                if messages == 0 {
                    continue;
                }
                largest.push(QueueRow {
                    user_id: user_id.to_owned(),
                    device_id,
                    messages,
                    bytes,
                    oldest_queued_at_ms: None,
                });
                // Keep the list short while scanning: sort and cut whenever it doubles.
                if largest.len() >= 2 * limit.max(1) {
                    sort_queues(&mut largest);
                    largest.truncate(limit);
                }
            }
            sort_queues(&mut largest);
            largest.truncate(limit);
            for row in &mut largest {
                row.oldest_queued_at_ms = oldest_queued_at(txn, &row.user_id, row.device_id)?;
            }
            Ok(largest)
        })
        .await
    }

    /// When the oldest message waiting for a client was queued (Unix ms).
    pub async fn oldest_queued(&self, client: &ClientId) -> Result<Option<u64>, StoreError> {
        self.read_for(client, move |txn, (user_id, device_id)| {
            oldest_queued_at(txn, user_id, device_id)
        })
        .await
    }

    /// Writes a consistent copy of the store, as one read transaction sees it, into a new redb
    /// database file at `target` (which must not exist). Writers go on meanwhile: read
    /// transactions are snapshots (on PostgreSQL too, so a shared store can be copied into a
    /// file that one node serves). Returns the file's size.
    pub async fn backup_into(&self, target: &Path) -> Result<u64, StoreError> {
        let target = target.to_owned();
        self.read(move |snapshot| {
            crate::secret_files::create_private(&target, b"")
                .map_err(|e| StoreError::io(format!("{e:#}")))?;
            let copy = Database::create(&target)?;
            let mut txn = copy.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            macro_rules! copy_table {
                ($table:expr) => {
                    copy_rows(snapshot, &txn, $table)?;
                };
            }
            super::registry::for_each_table!(copy_table);
            txn.commit()?;
            drop(copy);
            Ok(std::fs::metadata(&target).map_err(StoreError::io)?.len())
        })
        .await
    }

    /// The bytes the store takes: the database file, or the PostgreSQL database's size.
    pub async fn stored_bytes(&self) -> u64 {
        match &self.backend {
            super::Backend::Redb { path, .. } => {
                std::fs::metadata(path).map_or(0, |metadata| metadata.len())
            }
            super::Backend::Postgres(database) => {
                let database = database.clone();
                tokio::task::spawn_blocking(move || database.size())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0)
            }
        }
    }
}

fn sort_queues(queues: &mut [QueueRow]) {
    queues.sort_by(|a, b| {
        (b.bytes, b.messages)
            .cmp(&(a.bytes, a.messages))
            .then_with(|| (&a.user_id, a.device_id).cmp(&(&b.user_id, b.device_id)))
    });
}

/// Copies every row of `table` from `from` into the same table in `to`.
fn copy_rows<K: SortKey, V: Value + 'static>(
    from: &ReadTransaction,
    to: &redb::WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<(), StoreError> {
    let source = from.open_table(table)?;
    let mut target = to.open_table(table)?;
    for entry in source.iter()? {
        let (key, value) = entry?;
        target.insert(key.value(), value.value())?;
    }
    Ok(())
}
