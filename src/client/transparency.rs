//! Key transparency on the device: the operations that ask a server about its log, and
//! [`KeyTransparency`], which checks what they answer and remembers the newest head it saw of
//! each domain. A member or a claimed KeyPackage is trusted only once its credential is among
//! its user's bindings at a head that extends every head this device saw of that domain; a
//! device also checks its own user's history for bindings it did not make
//! ([`KeyTransparency::own_history`]).
//!
//! Heads are remembered in memory, and in a file when the device has a state directory, so that
//! a server cannot show a device an older or forked log after a restart either.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{anyhow, Context};
use tls_codec::{Deserialize, Serialize};

use super::{answer, ClientError, Connection};
use crate::identity::DomainKeys;
use crate::protocol::{
    BindingChange, BindingsProof, ClientCredential, ErrorCode, FetchHistoryRequest,
    FetchLogEntriesRequest, GetTreeHeadRequest, LogEntry, LogPage, ProveBindingsRequest,
    ProveConsistencyRequest, Request, ResponseBody, SignedTreeHead, Text, UserBindings,
    UserHistory,
};
use crate::transparency::verify::{
    verify_bindings, verify_extends, verify_head, HistoryCheck, TransparencyError,
};

fn text(value: &str) -> Result<Text, ClientError> {
    Text::new(value).map_err(|e| ClientError::Config(e.to_string()))
}

impl Connection {
    /// The newest signed head of `domain`'s transparency log (ours, or a peer's through ours).
    pub async fn tree_head(&self, domain: &str) -> Result<SignedTreeHead, ClientError> {
        let request = GetTreeHeadRequest {
            domain: text(domain)?,
        };
        answer!(self, Request::GetTreeHead(request), ResponseBody::TreeHead(head) => *head)
    }

    /// `user_id`'s bindings at the newest head of its domain's log, with their proof.
    pub async fn prove_bindings(&self, user_id: &str) -> Result<BindingsProof, ClientError> {
        let request = ProveBindingsRequest {
            user_id: text(user_id)?,
        };
        answer!(self, Request::ProveBindings(request), ResponseBody::Bindings(proof) => *proof)
    }

    /// The consistency proof between the heads of sizes `old_size` and `new_size` of `domain`'s
    /// log.
    pub async fn prove_consistency(
        &self,
        domain: &str,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<[u8; 32]>, ClientError> {
        let request = ProveConsistencyRequest {
            domain: text(domain)?,
            old_size,
            new_size,
        };
        answer!(self, Request::ProveConsistency(request), ResponseBody::Consistency(proof) => proof.hashes)
    }

    /// One page of a local user's history: its bindings at the newest head and its entries
    /// from its `from`-th.
    pub async fn fetch_history(
        &self,
        user_id: &str,
        from: u64,
    ) -> Result<UserHistory, ClientError> {
        let request = FetchHistoryRequest {
            user_id: text(user_id)?,
            from,
        };
        answer!(self, Request::FetchHistory(request), ResponseBody::History(history) => *history)
    }

    /// The server's log records from `start` (at most `count`), with its newest head.
    pub async fn fetch_log_entries(&self, start: u64, count: u32) -> Result<LogPage, ClientError> {
        let request = FetchLogEntriesRequest { start, count };
        answer!(self, Request::FetchLogEntries(request), ResponseBody::LogPage(page) => *page)
    }
}

/// A binding of this device's own user that this device did not make or accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnexpectedBinding {
    pub index: u64,
    pub change: BindingChange,
    pub credential: ClientCredential,
}

/// What a device knows of the transparency logs it has checked.
pub struct KeyTransparency {
    /// The newest verified head of each domain.
    heads: Mutex<HashMap<String, SignedTreeHead>>,
    /// Users' bindings verified at a head, by user id: a credential found there needs no
    /// second round trip.
    bindings: Mutex<HashMap<String, UserBindings>>,
    /// Where the heads are kept between runs, if anywhere.
    file: Option<PathBuf>,
}

impl Default for KeyTransparency {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl KeyTransparency {
    /// Heads remembered for this process only.
    pub fn in_memory() -> Self {
        Self {
            heads: Mutex::default(),
            bindings: Mutex::default(),
            file: None,
        }
    }

    /// Heads remembered in `file` (created on the first head), read now if it exists.
    pub fn in_file(file: PathBuf) -> anyhow::Result<Self> {
        let mut heads = HashMap::new();
        match std::fs::read(&file) {
            Ok(bytes) => {
                let stored = Vec::<SignedTreeHead>::tls_deserialize_exact(&bytes)
                    .with_context(|| format!("{} is not a list of tree heads", file.display()))?;
                for head in stored {
                    heads.insert(head.head.domain.as_str().to_owned(), head);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        }
        Ok(Self {
            heads: Mutex::new(heads),
            bindings: Mutex::default(),
            file: Some(file),
        })
    }

    /// The newest head seen of `domain`.
    pub fn head(&self, domain: &str) -> Option<SignedTreeHead> {
        lock(&self.heads).get(domain).cloned()
    }

    /// Accepts `offered` as `keys.domain`'s newest head if it is signed by the domain, and
    /// extends the newest head seen before (proved through `connection`): never an older one,
    /// never a fork.
    pub async fn advance(
        &self,
        connection: &Connection,
        keys: &DomainKeys,
        offered: &SignedTreeHead,
    ) -> anyhow::Result<()> {
        verify_head(offered, keys)?;
        let Some(seen) = self.head(&keys.domain) else {
            return self.remember(offered);
        };
        let proof = match offered.head.tree_size > seen.head.tree_size {
            true => {
                connection
                    .prove_consistency(&keys.domain, seen.head.tree_size, offered.head.tree_size)
                    .await?
            }
            false => Vec::new(),
        };
        verify_extends(&seen.head, &offered.head, &proof)?;
        if offered.head.tree_size > seen.head.tree_size {
            self.remember(offered)?;
        }
        Ok(())
    }

    fn remember(&self, head: &SignedTreeHead) -> anyhow::Result<()> {
        let mut heads = lock(&self.heads);
        heads.insert(head.head.domain.as_str().to_owned(), head.clone());
        if let Some(file) = &self.file {
            let mut all: Vec<SignedTreeHead> = heads.values().cloned().collect();
            all.sort_by(|a, b| a.head.domain.as_str().cmp(b.head.domain.as_str()));
            let bytes = all.tls_serialize_detached()?;
            crate::secret_files::write_private(file, &bytes)
                .with_context(|| format!("writing {}", file.display()))?;
        }
        Ok(())
    }

    /// Checks that `credential`'s key is bound to its client in its domain's log (whose keys are
    /// `keys`): among the user's bindings at the newest head, which extends every head seen, or,
    /// for a device revoked since, in the user's proved history.
    pub async fn check_logged(
        &self,
        connection: &Connection,
        credential: &ClientCredential,
        keys: &DomainKeys,
    ) -> anyhow::Result<()> {
        let user_id = credential.content.client.user_id.as_str();
        if let Some(bindings) = lock(&self.bindings).get(user_id) {
            if crate::transparency::binds(bindings, credential) {
                return Ok(());
            }
        }
        let proof = match connection.prove_bindings(user_id).await {
            Ok(proof) => proof,
            // A server from before the log (or a peer's): there is nothing to check. A domain
            // that has shown this device a head cannot go back to that.
            Err(e)
                if e.code() == Some(ErrorCode::UnknownOperation)
                    && self.head(&keys.domain).is_none() =>
            {
                tracing::warn!(domain = %keys.domain, "the domain keeps no transparency log");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        self.advance(connection, keys, &proof.head).await?;
        verify_bindings(&proof, user_id)?;
        let bound = crate::transparency::binds(&proof.bindings, credential);
        lock(&self.bindings).insert(user_id.to_owned(), proof.bindings);
        if bound {
            return Ok(());
        }
        // Not bound now: revoked since (a member whose removal is not committed yet), or never.
        let history = self.verified_history(connection, user_id, keys).await?;
        let logged = history.iter().any(|(_, entry)| {
            entry.change != BindingChange::Revoked
                && entry.credential.content.client == credential.content.client
                && entry.credential.content.signature_key == credential.content.signature_key
        });
        if logged {
            return Ok(());
        }
        Err(anyhow!(TransparencyError::Bindings {
            user: user_id.to_owned(),
            reason: format!(
                "device {}'s key was never bound in the log (at head {}): its credential was \
                 issued outside it",
                credential.content.client.device_id, proof.head.head.tree_size
            ),
        }))
    }

    /// The whole history of this device's own user (`own.content.client.user_id`), checked
    /// against its bindings at the newest head, and the bindings in it this device did not make
    /// or accept: every credential issued or renewed after this device's own first entry whose
    /// key is not in `known` (this device's own key and those of the devices it added).
    pub async fn own_history(
        &self,
        connection: &Connection,
        own: &ClientCredential,
        keys: &DomainKeys,
        known: &[Vec<u8>],
    ) -> anyhow::Result<Vec<UnexpectedBinding>> {
        let user_id = own.content.client.user_id.as_str();
        let entries = self.verified_history(connection, user_id, keys).await?;
        let own_key = own.content.signature_key.as_slice();
        let Some(start) = entries.iter().position(|(_, entry)| {
            entry.change == BindingChange::Issued
                && entry.credential.content.signature_key.as_slice() == own_key
        }) else {
            return Err(anyhow!(TransparencyError::History {
                user: user_id.to_owned(),
                reason: "this device's own credential is not in its user's history".into(),
            }));
        };
        Ok(entries
            .into_iter()
            .skip(start + 1)
            .filter(|(_, entry)| entry.change != BindingChange::Revoked)
            .filter(|(_, entry)| {
                let key = entry.credential.content.signature_key.as_slice();
                key != own_key && !known.iter().any(|known| known.as_slice() == key)
            })
            .map(|(index, entry)| UnexpectedBinding {
                index,
                change: entry.change,
                credential: entry.credential,
            })
            .collect())
    }

    /// Every entry of `user_id`, each proved in the newest head of its domain's log, which
    /// together replay to the user's proved bindings.
    async fn verified_history(
        &self,
        connection: &Connection,
        user_id: &str,
        keys: &DomainKeys,
    ) -> anyhow::Result<Vec<(u64, LogEntry)>> {
        // The head may move on between pages: start again, a few times at most.
        for _ in 0..3 {
            let first = connection.fetch_history(user_id, 0).await?;
            let head = first.bindings.head.clone();
            self.advance(connection, keys, &head).await?;
            verify_bindings(&first.bindings, user_id)?;
            let mut check = HistoryCheck::new(&head.head, user_id);
            let mut entries = Vec::new();
            let mut page = first.entries;
            let mut moved = false;
            loop {
                check.page(&page)?;
                entries.extend(page.into_iter().map(|proved| (proved.index, proved.entry)));
                if check.checked() >= first.bindings.bindings.entries {
                    break;
                }
                let next = connection.fetch_history(user_id, check.checked()).await?;
                if next.bindings.head != head {
                    moved = true;
                    break;
                }
                if next.entries.is_empty() {
                    break;
                }
                page = next.entries;
            }
            if moved {
                continue;
            }
            check.finish(&first.bindings.bindings)?;
            return Ok(entries);
        }
        Err(anyhow!(
            "{user_id}'s log kept changing while its history was read"
        ))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
