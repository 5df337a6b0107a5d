//! Key transparency: the verifiable log of every credential the server signs. Pure: the trees,
//! their proofs and what a verifier checks, shared by the server (which builds and proves) and
//! clients and auditors (which verify). `protocol-spec/transparency.md` is the contract.
//!
//! Two trees, both in every signed tree head:
//! - the **log** ([`log_tree`]): RFC 9162's Merkle tree over every [`LogEntry`] in order (a
//!   credential issued, renewed or revoked), with inclusion and consistency proofs;
//! - the **map** ([`prefix_tree`]): one leaf per user, keyed by a hash of the user id, whose value
//!   commits to the user's current credentials and a hash chain over all of the user's entries
//!   ([`UserBindings`]). It is a function of the log: an auditor replays the log and must find
//!   the map root of every head.
//!
//! A lookup proves a user's current credentials (or that the user has none) against a head; a
//! consistency proof shows a head extends an earlier one, so a server cannot show one user
//! two different logs without two inconsistent heads, which any client or auditor holding both
//! detects.

pub mod log_tree;
pub mod prefix_tree;
pub mod verify;

use sha2::{Digest, Sha256};
use tls_codec::{Serialize, VLByteSlice};

use crate::protocol::{BindingChange, ClientCredential, LogEntry, LogRecord, Text, UserBindings};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Domain-separation label of a user's key in the map.
pub const USER_KEY_LABEL: &[u8] = b"roost/1 transparency user";
/// Domain-separation label of a signed tree head.
pub const TREE_HEAD_LABEL: &[u8] = b"roost/1 tree head";

/// Why a proof does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("malformed proof: {0}")]
    Malformed(&'static str),
    #[error("the proof does not hold: {0}")]
    Inconsistent(&'static str),
}

/// A user's key in the map: SHA-256 of
/// `struct { opaque label<V> = "roost/1 transparency user"; opaque user_id<V>; }`.
pub fn user_key(user_id: &str) -> Hash {
    let mut content = Vec::with_capacity(64);
    let _ = VLByteSlice(USER_KEY_LABEL).tls_serialize(&mut content);
    let _ = VLByteSlice(user_id.as_bytes()).tls_serialize(&mut content);
    Sha256::digest(&content).into()
}

/// The log's leaf hash of a record: RFC 9162's of its encoding, or for a redacted entry the one
/// the whole entry had.
pub fn record_hash(record: &LogRecord) -> Hash {
    match record {
        LogRecord::Redacted(redacted) => redacted.leaf_hash,
        whole => log_tree::leaf_hash(&whole.tls_serialize_detached().unwrap_or_default()),
    }
}

/// The leaf hash of a whole entry (its record's).
pub fn entry_hash(entry: &LogEntry) -> Hash {
    record_hash(&LogRecord::Entry(entry.clone()))
}

/// What one log record does to the map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapUpdate {
    /// The user with this key now has bindings with this hash.
    Set { key: Hash, value: Hash },
    /// The user with this key leaves the map.
    Remove { key: Hash },
}

impl MapUpdate {
    pub fn apply_to(&self, tree: &prefix_tree::Tree) -> prefix_tree::Tree {
        match self {
            MapUpdate::Set { key, value } => tree.insert(key, value),
            MapUpdate::Remove { key } => tree.remove(key),
        }
    }
}

/// The value hash of a user's leaf in the map: SHA-256 of the encoded [`UserBindings`].
pub fn bindings_hash(bindings: &UserBindings) -> Hash {
    Sha256::digest(bindings.tls_serialize_detached().unwrap_or_default()).into()
}

/// The next link of a user's history chain: SHA-256(previous || uint64 index || entry hash).
pub fn chain(previous: &Hash, index: u64, entry_hash: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(index.to_be_bytes());
    hasher.update(entry_hash);
    hasher.finalize().into()
}

/// A user's state before any entry: no credentials, an empty history.
pub fn no_bindings(user_id: &str) -> UserBindings {
    UserBindings {
        user_id: Text::truncated(user_id),
        entries: 0,
        history: [0; 32],
        credentials: Vec::new(),
    }
}

/// `bindings` after log entry `index` (one of this user's): the credential it issues or renews
/// takes its device's place, the one it revokes leaves, and the history grows by the entry.
pub fn apply(bindings: &mut UserBindings, index: u64, entry: &LogEntry, entry_hash: &Hash) {
    let device = entry.credential.content.client.device_id;
    bindings
        .credentials
        .retain(|held| held.content.client.device_id != device);
    if entry.change != BindingChange::Revoked {
        let at = bindings
            .credentials
            .partition_point(|held| held.content.client.device_id < device);
        bindings.credentials.insert(at, entry.credential.clone());
    }
    bindings.entries += 1;
    bindings.history = chain(&bindings.history, index, entry_hash);
}

/// Whether `bindings` bind `credential`'s key to its client: one of the current credentials
/// names the same client and the same signature key. (A credential renewed since carries the
/// same key: the earlier one, still in the client's MLS leaves, binds the same.)
pub fn binds(bindings: &UserBindings, credential: &ClientCredential) -> bool {
    bindings.credentials.iter().any(|held| {
        held.content.client == credential.content.client
            && held.content.signature_key == credential.content.signature_key
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tls_codec::Serialize;

    use super::log_tree::{self, Subtree};
    use super::*;
    use crate::protocol::{ClientCredentialContent, ClientId};

    fn credential(user: &str, device: u32) -> ClientCredential {
        ClientCredential {
            content: ClientCredentialContent {
                client: ClientId::of(user, device),
                signature_key: vec![device as u8; 32].into(),
                ciphersuite: 1,
                not_before: 0,
                not_after: 1,
                issuer_key_id: 1,
            },
            signature: vec![0; 64].into(),
        }
    }

    /// The proofs a client fetches for one user of a server with 10,000 users (two devices each,
    /// one renewed: 30,000 entries) stay a few kilobytes: printed, and bounded here.
    #[test]
    fn proofs_for_ten_thousand_users_stay_small() {
        const USERS: usize = 10_000;
        let mut subtrees: HashMap<Subtree, Hash> = HashMap::new();
        let mut leaves = 0u64;
        let mut map = prefix_tree::Tree::default();
        let mut users: Vec<UserBindings> = Vec::new();
        let mut append = |subtrees: &mut HashMap<Subtree, Hash>, leaf: Hash| -> u64 {
            let index = leaves;
            let completed =
                log_tree::completed_by(index, leaf, |left| Ok::<_, ()>(subtrees[&left]));
            subtrees.extend(completed.unwrap());
            leaves += 1;
            index
        };
        for n in 0..USERS {
            let user_id = format!("user{n}@a.example");
            let mut bindings = no_bindings(&user_id);
            for (device, change) in [
                (1, BindingChange::Issued),
                (2, BindingChange::Issued),
                (2, BindingChange::Renewed),
            ] {
                let entry = LogEntry {
                    change,
                    logged_at: 0,
                    credential: credential(&user_id, device),
                };
                let leaf = entry_hash(&entry);
                let index = append(&mut subtrees, leaf);
                apply(&mut bindings, index, &entry, &leaf);
            }
            map = map.insert(&user_key(&user_id), &bindings_hash(&bindings));
            users.push(bindings);
        }
        let mut tree = log_tree::Tree {
            size: leaves,
            subtree: |subtree: Subtree| Ok::<_, ()>(subtrees[&subtree]),
        };
        let log_root = tree.root().unwrap();
        let (mut map_sizes, mut inclusion_sizes) = (Vec::new(), Vec::new());
        for n in (0..USERS).step_by(97) {
            let bindings = &users[n];
            let key = user_key(bindings.user_id.as_str());
            let proof = map.prove(&key);
            prefix_tree::verify(&map.root(), &key, Some(&bindings_hash(bindings)), &proof).unwrap();
            let wire = crate::protocol::MapProof {
                siblings: proof.siblings.clone(),
                end: crate::protocol::MapPathEnd::User,
            };
            map_sizes.push(wire.tls_serialize_detached().unwrap().len());
            let index = (n * 3) as u64;
            let path = tree.inclusion_proof(index).unwrap();
            let entry = LogEntry {
                change: BindingChange::Issued,
                logged_at: 0,
                credential: credential(bindings.user_id.as_str(), 1),
            };
            log_tree::verify_inclusion(index, leaves, &entry_hash(&entry), &path, &log_root)
                .unwrap();
            inclusion_sizes.push(path.len() * 32);
        }
        let bindings_len = users[0].tls_serialize_detached().unwrap().len();
        let consistency = tree.consistency_proof(leaves / 3).unwrap().len() * 32;
        let (map_max, inclusion_max) = (
            *map_sizes.iter().max().unwrap(),
            *inclusion_sizes.iter().max().unwrap(),
        );
        let map_mean = map_sizes.iter().sum::<usize>() / map_sizes.len();
        println!(
            "{USERS} users, {leaves} log entries: map proof {map_mean} bytes on average, \
             {map_max} at most; a user's bindings {bindings_len} bytes (two devices); \
             inclusion proof {inclusion_max} bytes; consistency proof {consistency} bytes"
        );
        // log2(10,000) is about 13: a path a few levels longer than that, 32 bytes a level.
        assert!(map_max < 32 * 32, "map proofs of {map_max} bytes");
        assert!(
            inclusion_max <= 32 * 15,
            "inclusion proofs of {inclusion_max} bytes"
        );
        assert!(
            consistency <= 32 * 30,
            "a consistency proof of {consistency} bytes"
        );
    }
}
