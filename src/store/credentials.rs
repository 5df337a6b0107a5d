//! Credentials and their log: registering a user, adding a client and renewing a credential,
//! each in one transaction with the transparency-log entry that records the credential it
//! issues, so that no credential is ever held without being logged. The log's reads for the
//! transparency service (roots, proofs, entries, heads) are here too.

use tls_codec::{Deserialize, Serialize};

use std::collections::HashMap;

use super::kv::{ReadTransaction, WriteTransaction};
use super::tables::{accounts, transparency};
use super::{
    AddClientRefusal, NewClient, NewUser, RegisterRefusal, RemoveClientRefusal, Store, StoreError,
};
use crate::protocol::{
    BindingChange, ClientId, LogEntry, LogRecord, RedactedEntry, UserBindings, UserRemoved,
};
use crate::transparency::Hash;
use crate::transparency::MapUpdate;

/// Appends the entry recording `change` of `user_id`'s encoded `credential`, at `now`: the
/// record `LogRecord::Entry(LogEntry { change, logged_at: now, credential })`, written as its
/// parts (the credential's bytes are already its encoding; the store does not parse them here).
pub(super) fn log_in(
    txn: &WriteTransaction,
    user_id: &str,
    change: BindingChange,
    now: u64,
    credential: &[u8],
) -> Result<u64, StoreError> {
    let mut record = Vec::with_capacity(2 + 8 + credential.len());
    record.extend_from_slice(&[transparency::WHOLE, change as u8]);
    record.extend_from_slice(&now.to_be_bytes());
    record.extend_from_slice(credential);
    transparency::append_in(txn, Some(user_id), &record)
}

/// Redacts every entry of `user_id`, whose credentials have all been revoked (its deletion):
/// each becomes what replaying it does to the map, and a last record takes the user out of the
/// map. The log keeps no user id and no key of a deleted user, and every head stays verifiable.
pub(super) fn redact_user_in(txn: &WriteTransaction, user_id: &str) -> Result<(), StoreError> {
    let user_key = crate::transparency::user_key(user_id);
    let mut bindings = crate::transparency::no_bindings(user_id);
    for index in transparency::all_user_entries_in(txn, user_id)? {
        let entry = match decode_record(&transparency::record_in(txn, index)?, index)? {
            LogRecord::Entry(entry) => entry,
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "log entry {index} of a user with entries is not whole"
                )))
            }
        };
        let leaf_hash = transparency::leaf_hash_in(txn, index)?;
        crate::transparency::apply(&mut bindings, index, &entry, &leaf_hash);
        let redacted = LogRecord::Redacted(RedactedEntry {
            leaf_hash,
            user_key,
            bindings_after: crate::transparency::bindings_hash(&bindings),
        });
        transparency::redact_in(txn, user_id, index, &encode_record(&redacted)?)?;
    }
    let removed = LogRecord::Removed(UserRemoved { user_key });
    transparency::append_in(txn, None, &encode_record(&removed)?)?;
    Ok(())
}

fn decode_record(bytes: &[u8], index: u64) -> Result<LogRecord, StoreError> {
    LogRecord::tls_deserialize_exact(bytes)
        .map_err(|e| StoreError::Corrupt(format!("log entry {index}: {e}")))
}

fn encode_record(record: &LogRecord) -> Result<Vec<u8>, StoreError> {
    record
        .tls_serialize_detached()
        .map_err(|e| StoreError::Corrupt(format!("a log record: {e}")))
}

/// A user's entry read back: its log index, the entry, its leaf hash.
type ReplayedEntry = (u64, LogEntry, Hash);

/// `user_id`'s bindings after the log's first `end` entries, and its entries among them,
/// replayed in one snapshot.
fn replay_user_in(
    txn: &ReadTransaction,
    user_id: &str,
    end: u64,
) -> Result<(UserBindings, Vec<ReplayedEntry>), StoreError> {
    let mut bindings = crate::transparency::no_bindings(user_id);
    let mut entries = Vec::new();
    for index in transparency::user_entries_in(txn, user_id, end)? {
        let LogRecord::Entry(entry) =
            decode_record(&transparency::read_record_in(txn, index)?, index)?
        else {
            return Err(StoreError::Corrupt(format!(
                "log entry {index} is not whole"
            )));
        };
        let leaf_hash = crate::transparency::entry_hash(&entry);
        crate::transparency::apply(&mut bindings, index, &entry, &leaf_hash);
        entries.push((index, entry, leaf_hash));
    }
    Ok((bindings, entries))
}

/// What records `start..end` do to the map, in order, read in one snapshot.
fn map_updates_in(
    txn: &ReadTransaction,
    start: u64,
    end: u64,
) -> Result<Vec<MapUpdate>, StoreError> {
    let mut users: HashMap<String, UserBindings> = HashMap::new();
    let mut updates = Vec::new();
    for (index, bytes) in (start..).zip(transparency::entries_in(txn, start, end)?) {
        updates.push(match decode_record(&bytes, index)? {
            LogRecord::Redacted(redacted) => MapUpdate::Set {
                key: redacted.user_key,
                value: redacted.bindings_after,
            },
            LogRecord::Removed(removed) => MapUpdate::Remove {
                key: removed.user_key,
            },
            LogRecord::Entry(entry) => {
                let user_id = entry.credential.content.client.user_id.as_str().to_owned();
                let bindings = match users.entry(user_id.clone()) {
                    std::collections::hash_map::Entry::Occupied(held) => held.into_mut(),
                    std::collections::hash_map::Entry::Vacant(vacant) => {
                        vacant.insert(replay_user_in(txn, &user_id, index)?.0)
                    }
                };
                let leaf_hash = crate::transparency::record_hash(&LogRecord::Entry(entry.clone()));
                crate::transparency::apply(bindings, index, &entry, &leaf_hash);
                MapUpdate::Set {
                    key: crate::transparency::user_key(&user_id),
                    value: crate::transparency::bindings_hash(bindings),
                }
            }
        });
    }
    Ok(updates)
}

/// A credential in the wire encoding for `user_id`'s device `device_id` with `key`, signed by
/// nobody: for tests and benchmarks that drive the store without a server's keys (the store
/// logs what it is given, and reads it back when a user is deleted).
pub fn placeholder_credential(user_id: &str, device_id: u32, key: [u8; 32]) -> Vec<u8> {
    crate::protocol::ClientCredential {
        content: crate::protocol::ClientCredentialContent {
            client: ClientId::of(user_id, device_id),
            signature_key: key.to_vec().into(),
            ciphersuite: 1,
            not_before: 0,
            not_after: u64::MAX,
            issuer_key_id: 1,
        },
        signature: vec![0; 64].into(),
    }
    .tls_serialize_detached()
    .unwrap_or_default()
}

/// One of a user's entries as the log holds it, with its inclusion proof.
pub struct StoredEntry {
    pub index: u64,
    pub entry: LogEntry,
    pub inclusion: Vec<Hash>,
}

impl Store {
    /// Creates a user and its first client, returning the credential (logged).
    pub async fn register_user(
        &self,
        mut user: NewUser,
    ) -> Result<Result<Vec<u8>, RegisterRefusal>, StoreError> {
        self.write(move |txn| {
            let registered = accounts::register_user_in(txn, &mut user)?;
            if let Ok(credential) = &registered {
                log_in(
                    txn,
                    &user.user_id,
                    BindingChange::Issued,
                    user.now,
                    credential,
                )?;
            }
            Ok(registered)
        })
        .await
    }

    /// Adds a client to an existing user, returning its device id and credential (logged).
    pub async fn add_client(
        &self,
        mut client: NewClient,
    ) -> Result<Result<(u32, Vec<u8>), AddClientRefusal>, StoreError> {
        self.write(move |txn| {
            let added = accounts::add_client_in(txn, &mut client)?;
            if let Ok((_, credential)) = &added {
                log_in(
                    txn,
                    &client.user_id,
                    BindingChange::Issued,
                    client.now,
                    credential,
                )?;
            }
            Ok(added)
        })
        .await
    }

    /// Replaces a client's credential (same key, new validity), logging the new one.
    pub async fn replace_credential(
        &self,
        client: &ClientId,
        credential: Vec<u8>,
        now: u64,
    ) -> Result<Result<(), RemoveClientRefusal>, StoreError> {
        self.write_for(client, move |txn, client| {
            let replaced = accounts::replace_credential_in(txn, client, &credential)?;
            if replaced.is_ok() {
                log_in(txn, client.0, BindingChange::Renewed, now, &credential)?;
            }
            Ok(replaced)
        })
        .await
    }

    /// How many entries the log holds.
    pub async fn log_size(&self) -> Result<u64, StoreError> {
        self.read(transparency::size_in).await
    }

    /// The RFC 9162 root of the log's first `size` entries.
    pub async fn log_root(&self, size: u64) -> Result<Hash, StoreError> {
        self.read(move |txn| transparency::tree_in(txn, size)?.root())
            .await
    }

    /// The consistency proof from the log's first `old_size` entries to its first `new_size`.
    pub async fn log_consistency(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Hash>, StoreError> {
        self.read(move |txn| transparency::tree_in(txn, new_size)?.consistency_proof(old_size))
            .await
    }

    /// Entries `start..end` of the log, each an encoded `LogRecord`.
    pub async fn log_entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(move |txn| transparency::entries_in(txn, start, end))
            .await
    }

    /// `user_id`'s bindings after the log's first `size` entries, and its entries among them
    /// from its `from`-th, at most `max`, each with its inclusion proof in that log.
    pub async fn user_log_state(
        &self,
        user_id: &str,
        size: u64,
        from: u64,
        max: usize,
    ) -> Result<(UserBindings, Vec<StoredEntry>), StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |txn| {
            let (bindings, entries) = replay_user_in(txn, &user_id, size)?;
            let mut tree = transparency::tree_in(txn, size)?;
            let from = usize::try_from(from).unwrap_or(usize::MAX);
            let mut proved = Vec::new();
            for (index, entry, _) in entries.into_iter().skip(from).take(max) {
                proved.push(StoredEntry {
                    index,
                    entry,
                    inclusion: tree.inclusion_proof(index)?,
                });
            }
            Ok((bindings, proved))
        })
        .await
    }

    /// Whether `user_id` has entries at or after log index `size`.
    pub async fn user_has_entries_from(
        &self,
        user_id: &str,
        size: u64,
    ) -> Result<bool, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |txn| {
            Ok(!transparency::user_entries_in(txn, &user_id, u64::MAX)?
                .iter()
                .all(|&index| index < size))
        })
        .await
    }

    /// What the log's records `start..end` do to the map, in order.
    pub async fn log_map_updates(
        &self,
        start: u64,
        end: u64,
    ) -> Result<Vec<MapUpdate>, StoreError> {
        self.read(move |txn| map_updates_in(txn, start, end)).await
    }

    /// The newest signed tree head, encoded, with its tree size.
    pub async fn latest_tree_head(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.read(transparency::latest_head_in).await
    }

    /// Publishes the encoded head of tree size `size`; `false` if one as large was first.
    pub async fn publish_tree_head(&self, size: u64, head: Vec<u8>) -> Result<bool, StoreError> {
        self.write(move |txn| transparency::publish_head_in(txn, size, &head))
            .await
    }
}
