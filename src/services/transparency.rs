//! The key-transparency service: publishes signed tree heads of the credential log and proves
//! what they commit to. Owns the map of the newest head (in memory, rebuilt from the log at
//! start); the log itself is the store's, written with each credential (`store::credentials`).
//!
//! A head is published every interval when the log has grown, and at once when a client asks
//! about a user whose newest entry no head covers yet: a credential is provable as soon as a
//! client looks for it. On a shared store every node publishes: a head is one row per tree size,
//! written only if no head as large exists, so two nodes racing publish one head and the loser
//! adopts it (its map follows the log to the winner's size, and must reach the same root).

use std::sync::Arc;

use tokio::sync::Mutex;

use super::{Accounts, ServiceError};
use crate::clock::Clock;
use crate::config::Domain;
use crate::protocol::{
    BindingsProof, ConsistencyProof, LogPage, LogRecord, MapLeaf, MapPathEnd, MapProof,
    ProvedEntry, SignedTreeHead, TreeHead, UserHistory, MAX_HISTORY_ENTRIES, MAX_LOG_ENTRIES,
};
use crate::store::{Store, StoreError};
use crate::transparency::{bindings_hash, prefix_tree, user_key};

/// How many log records one read replays.
const REPLAY_CHUNK: u64 = 1024;

/// The map at the newest head this node knows.
#[derive(Default)]
struct MapState {
    head: Option<SignedTreeHead>,
    /// The map after the log's first `size` entries.
    size: u64,
    tree: prefix_tree::Tree,
}

pub struct Transparency {
    domain: Domain,
    store: Store,
    clock: Arc<dyn Clock>,
    accounts: Arc<Accounts>,
    /// One catch-up or publication at a time on this node.
    state: Mutex<MapState>,
}

impl Transparency {
    pub fn new(
        domain: Domain,
        store: Store,
        clock: Arc<dyn Clock>,
        accounts: Arc<Accounts>,
    ) -> Self {
        Self {
            domain,
            store,
            clock,
            accounts,
            state: Mutex::default(),
        }
    }

    /// Publishes a head every `interval` while the log grows, until `stop`.
    pub async fn run(
        &self,
        interval: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.publish().await {
                tracing::warn!(error = %e, "could not publish a transparency tree head");
            }
        }
    }

    /// The newest published head and its map (the first head is published if there is none).
    pub async fn newest(&self) -> Result<(SignedTreeHead, prefix_tree::Tree), ServiceError> {
        let mut state = self.state.lock().await;
        self.catch_up(&mut state).await?;
        if let Some(head) = &state.head {
            return Ok((head.clone(), state.tree.clone()));
        }
        drop(state);
        self.publish().await?;
        let state = self.state.lock().await;
        match &state.head {
            Some(head) => Ok((head.clone(), state.tree.clone())),
            None => Err(corrupt("no tree head after publishing")),
        }
    }

    /// Publishes a head of the whole log unless the newest head already covers it; returns the
    /// newest head either way.
    async fn publish(&self) -> Result<SignedTreeHead, ServiceError> {
        let mut state = self.state.lock().await;
        self.catch_up(&mut state).await?;
        let size = self.store.log_size().await?;
        if let Some(head) = &state.head {
            if head.head.tree_size >= size {
                return Ok(head.clone());
            }
        }
        let tree = self.replay(state.tree.clone(), state.size, size).await?;
        let head = self.accounts.active_signer().sign_head(TreeHead {
            domain: self.domain.to_text(),
            tree_size: size,
            log_root: self.store.log_root(size).await?,
            map_root: tree.root(),
            published_at: self.clock.now_ms(),
            key_id: 0, // set by the signer
        });
        let encoded = tls_codec::Serialize::tls_serialize_detached(&head)
            .map_err(|e| StoreError::Corrupt(format!("a tree head: {e}")))?;
        if self.store.publish_tree_head(size, encoded).await? {
            tracing::debug!(size, "published a transparency tree head");
            *state = MapState {
                head: Some(head.clone()),
                size,
                tree,
            };
            return Ok(head);
        }
        // Another node published one as large first: take it.
        self.catch_up(&mut state).await?;
        state
            .head
            .clone()
            .ok_or_else(|| corrupt("no tree head after publishing"))
    }

    /// Brings `state` to the newest published head, checking that the map replayed from the log
    /// has the head's root.
    async fn catch_up(&self, state: &mut MapState) -> Result<(), ServiceError> {
        let Some((size, encoded)) = self.store.latest_tree_head().await? else {
            return Ok(());
        };
        if state.head.is_some() && size <= state.size {
            return Ok(());
        }
        let head = <SignedTreeHead as tls_codec::Deserialize>::tls_deserialize_exact(&encoded)
            .map_err(|e| StoreError::Corrupt(format!("tree head {size}: {e}")))?;
        let tree = self.replay(state.tree.clone(), state.size, size).await?;
        if tree.root() != head.head.map_root {
            return Err(corrupt(&format!(
                "the map replayed to {size} entries does not have its head's root"
            )));
        }
        *state = MapState {
            head: Some(head),
            size,
            tree,
        };
        Ok(())
    }

    /// `tree`, the map after `from` entries, after the log's records `from..to`.
    async fn replay(
        &self,
        mut tree: prefix_tree::Tree,
        from: u64,
        to: u64,
    ) -> Result<prefix_tree::Tree, ServiceError> {
        let mut start = from;
        while start < to {
            let end = to.min(start + REPLAY_CHUNK);
            for update in self.store.log_map_updates(start, end).await? {
                tree = update.apply_to(&tree);
            }
            start = end;
        }
        Ok(tree)
    }

    /// `user_id`'s bindings at the newest head, proved in its map.
    pub async fn prove_bindings(&self, user_id: &str) -> Result<BindingsProof, ServiceError> {
        Ok(self.history(user_id, 0, 0).await?.bindings)
    }

    /// `user_id`'s bindings at the newest head with its entries from its `from`-th (at most
    /// `max`), each proved in the head's log. A user changed since the newest head (a credential
    /// issued a moment ago, the user deleted) gets a new head first, so that what a client looks
    /// for is provable at once.
    pub async fn history(
        &self,
        user_id: &str,
        from: u64,
        max: u32,
    ) -> Result<UserHistory, ServiceError> {
        let user: crate::identity::UserId = user_id.parse().map_err(ServiceError::InvalidUserId)?;
        if user.domain() != self.domain.as_str() {
            return Err(ServiceError::UnknownDomain(user.domain().to_owned()));
        }
        let (user_id, key) = (user.as_str(), user_key(user.as_str()));
        let max = max.min(MAX_HISTORY_ENTRIES) as usize;
        let mut published = false;
        loop {
            let (head, tree) = self.newest().await?;
            let size = head.head.tree_size;
            let (bindings, entries) = self.store.user_log_state(user_id, size, from, max).await?;
            let replayed = (bindings.entries > 0).then(|| bindings_hash(&bindings));
            // Entries after the head, or a map that no longer matches the entries (the user's
            // were redacted since: it was deleted): a new head covers them.
            let behind = tree.get(&key) != replayed
                || self.store.user_has_entries_from(user_id, size).await?;
            if behind && !published {
                self.publish().await?;
                published = true;
                continue;
            }
            if tree.get(&key) != replayed {
                return Err(corrupt(&format!(
                    "{user_id}'s entries do not replay to the map"
                )));
            }
            return Ok(UserHistory {
                bindings: BindingsProof {
                    head,
                    bindings,
                    proof: map_proof(&tree.prove(&key)),
                },
                entries: entries
                    .into_iter()
                    .map(|stored| ProvedEntry {
                        index: stored.index,
                        entry: stored.entry,
                        inclusion: stored.inclusion,
                    })
                    .collect(),
            });
        }
    }

    /// The consistency proof between two published heads of this server's log.
    pub async fn prove_consistency(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProof, ServiceError> {
        let newest = self.newest().await?.0.head.tree_size;
        if old_size > new_size || new_size > newest {
            return Err(ServiceError::UnknownTreeHead(new_size));
        }
        Ok(ConsistencyProof {
            hashes: self.store.log_consistency(old_size, new_size).await?,
        })
    }

    /// The newest head and the log's records from `start`, at most `count` (for auditors).
    pub async fn log_page(&self, start: u64, count: u32) -> Result<LogPage, ServiceError> {
        let (head, _) = self.newest().await?;
        let end = head
            .head
            .tree_size
            .min(start.saturating_add(count.min(MAX_LOG_ENTRIES).into()));
        let mut entries = Vec::new();
        for (index, bytes) in (start..).zip(self.store.log_entries(start, end.max(start)).await?) {
            entries.push(
                <LogRecord as tls_codec::Deserialize>::tls_deserialize_exact(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("log entry {index}: {e}")))?,
            );
        }
        Ok(LogPage { head, entries })
    }
}

/// The wire form of a prefix-tree proof.
fn map_proof(proof: &prefix_tree::PrefixProof) -> MapProof {
    MapProof {
        siblings: proof.siblings.clone(),
        end: match &proof.end {
            prefix_tree::PathEnd::Empty => MapPathEnd::Empty,
            prefix_tree::PathEnd::Key => MapPathEnd::User,
            prefix_tree::PathEnd::OtherKey { key, value } => MapPathEnd::OtherUser(MapLeaf {
                key: *key,
                value: *value,
            }),
        },
    }
}

fn corrupt(what: &str) -> ServiceError {
    ServiceError::Store(StoreError::Corrupt(what.to_owned()))
}
