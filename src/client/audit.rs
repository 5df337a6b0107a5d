//! An auditor of a homeserver's transparency log: it follows the server's heads, checks each
//! extends the last (the consistency proof), reads every record of the log, and rebuilds the log
//! tree and the map itself, so that a head whose roots are not those of its log is caught. What
//! `roost-client audit` runs.

use std::collections::HashMap;

use anyhow::{bail, Context};

use super::transparency::KeyTransparency;
use super::Connection;
use crate::identity::DomainKeys;
use crate::protocol::{LogRecord, TreeHead, UserBindings, MAX_LOG_ENTRIES};
use crate::transparency::log_tree::{self, Subtree};
use crate::transparency::{
    apply, bindings_hash, no_bindings, prefix_tree, record_hash, user_key, Hash,
};

/// What one audit step found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audited {
    /// The head checked.
    pub head: TreeHead,
    /// Records read and replayed in this step.
    pub new_records: u64,
}

/// An auditor's copy of one server's log.
#[derive(Default)]
pub struct Auditor {
    heads: KeyTransparency,
    /// The perfect subtrees of the records read so far.
    subtrees: HashMap<Subtree, Hash>,
    size: u64,
    map: prefix_tree::Tree,
    /// Each user's bindings, by map key, as the records replay them.
    users: HashMap<Hash, UserBindings>,
}

impl Auditor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the log up to the server's newest head and checks that head: signed by `keys`, an
    /// extension of the last head audited (a consistency proof), and with the roots of the log
    /// as read.
    pub async fn step(
        &mut self,
        connection: &Connection,
        keys: &DomainKeys,
    ) -> anyhow::Result<Audited> {
        let start = self.size;
        let mut page = connection
            .fetch_log_entries(self.size, MAX_LOG_ENTRIES)
            .await?;
        let head = page.head.clone();
        self.heads
            .advance(connection, keys, &head)
            .await
            .context("the server's newest head")?;
        while self.size < head.head.tree_size {
            if page.entries.is_empty() {
                bail!(
                    "the server serves no record {} of a log of {}",
                    self.size,
                    head.head.tree_size
                );
            }
            for record in &page.entries {
                self.replay(record)?;
                if self.size == head.head.tree_size {
                    break;
                }
            }
            if self.size < head.head.tree_size {
                page = connection
                    .fetch_log_entries(self.size, MAX_LOG_ENTRIES)
                    .await?;
            }
        }
        let log_root = log_tree::Tree {
            size: self.size,
            subtree: |subtree: Subtree| {
                self.subtrees
                    .get(&subtree)
                    .copied()
                    .ok_or_else(|| anyhow::anyhow!("no subtree {subtree:?}"))
            },
        }
        .root()?;
        if log_root != head.head.log_root {
            bail!(
                "the head of size {} has a log root that is not its log's",
                head.head.tree_size
            );
        }
        if self.map.root() != head.head.map_root {
            bail!(
                "the head of size {} has a map root that is not its log's",
                head.head.tree_size
            );
        }
        Ok(Audited {
            head: head.head,
            new_records: self.size - start,
        })
    }

    /// Appends one record to the copy of the log and applies it to the map.
    fn replay(&mut self, record: &LogRecord) -> anyhow::Result<()> {
        let index = self.size;
        let leaf = record_hash(record);
        let subtrees = &self.subtrees;
        let completed = log_tree::completed_by(index, leaf, |left| {
            subtrees
                .get(&left)
                .copied()
                .context("a subtree the log should have")
        })?;
        self.subtrees.extend(completed);
        match record {
            LogRecord::Entry(entry) => {
                let user_id = entry.credential.content.client.user_id.as_str();
                let key = user_key(user_id);
                let bindings = self
                    .users
                    .entry(key)
                    .or_insert_with(|| no_bindings(user_id));
                apply(bindings, index, entry, &leaf);
                self.map = self.map.insert(&key, &bindings_hash(bindings));
            }
            LogRecord::Redacted(redacted) => {
                // A deleted user's entry: what it did is all the log keeps of it.
                self.users.remove(&redacted.user_key);
                self.map = self
                    .map
                    .insert(&redacted.user_key, &redacted.bindings_after);
            }
            LogRecord::Removed(removed) => {
                self.users.remove(&removed.user_key);
                self.map = self.map.remove(&removed.user_key);
            }
        }
        self.size += 1;
        Ok(())
    }
}
