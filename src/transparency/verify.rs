//! What a client or an auditor checks of what a server says about its log: a head's signature,
//! a user's bindings in a head's map, a user's history against those bindings, and that one head
//! extends another. Every function here is pure; the client library and `roost-client audit`
//! decide what to fetch and what to remember.

use ed25519_dalek::Signature;

use super::{apply, bindings_hash, entry_hash, log_tree, no_bindings, prefix_tree, user_key};
use super::{Hash, ProofError};
use crate::identity::{ed25519_key, DomainKeys};
use crate::protocol::{
    tree_head_signature_content, BindingsProof, MapPathEnd, MapProof, ProvedEntry, SignedTreeHead,
    TreeHead, UserBindings,
};

/// Why a server's statement about its log is not believed.
#[derive(Debug, thiserror::Error)]
pub enum TransparencyError {
    #[error("the tree head is for {found}, not {expected}")]
    WrongDomain { expected: String, found: String },
    #[error("the tree head is signed with key {0}, which its domain does not publish")]
    UnknownKey(u32),
    #[error("the tree head's signature does not verify")]
    BadSignature,
    #[error("the server's log went back: a head of size {seen} was seen, now one of {offered}")]
    Rollback { seen: u64, offered: u64 },
    #[error("two heads that are not one log (a fork): {0}")]
    Fork(ProofError),
    #[error("the proof of {user}'s bindings does not hold: {reason}")]
    Bindings { user: String, reason: String },
    #[error("{user}'s history does not add up: {reason}")]
    History { user: String, reason: String },
}

fn bindings_error(user: &str, reason: impl std::fmt::Display) -> TransparencyError {
    TransparencyError::Bindings {
        user: user.to_owned(),
        reason: reason.to_string(),
    }
}

fn history_error(user: &str, reason: impl std::fmt::Display) -> TransparencyError {
    TransparencyError::History {
        user: user.to_owned(),
        reason: reason.to_string(),
    }
}

/// Checks that `head` is `keys.domain`'s, signed with one of the keys it publishes.
pub fn verify_head(head: &SignedTreeHead, keys: &DomainKeys) -> Result<(), TransparencyError> {
    if head.head.domain.as_str() != keys.domain {
        return Err(TransparencyError::WrongDomain {
            expected: keys.domain.clone(),
            found: head.head.domain.as_str().to_owned(),
        });
    }
    let key = keys
        .keys
        .iter()
        .find(|key| key.key_id == head.head.key_id)
        .ok_or(TransparencyError::UnknownKey(head.head.key_id))?;
    let key =
        ed25519_key(key.public_key.as_slice()).map_err(|_| TransparencyError::BadSignature)?;
    let signature = Signature::from_slice(head.signature.as_slice())
        .map_err(|_| TransparencyError::BadSignature)?;
    key.verify_strict(&tree_head_signature_content(&head.head), &signature)
        .map_err(|_| TransparencyError::BadSignature)
}

/// Checks that `new` extends `old` (both already verified heads of one domain): not smaller, and
/// `proof` joins their log roots. A failure between two signed heads is a fork: evidence.
pub fn verify_extends(
    old: &TreeHead,
    new: &TreeHead,
    proof: &[Hash],
) -> Result<(), TransparencyError> {
    if new.tree_size < old.tree_size {
        return Err(TransparencyError::Rollback {
            seen: old.tree_size,
            offered: new.tree_size,
        });
    }
    log_tree::verify_consistency(
        old.tree_size,
        new.tree_size,
        &old.log_root,
        &new.log_root,
        proof,
    )
    .map_err(TransparencyError::Fork)?;
    if old.tree_size == new.tree_size && old.map_root != new.map_root {
        return Err(TransparencyError::Fork(ProofError::Inconsistent(
            "two map roots for one log",
        )));
    }
    Ok(())
}

/// Checks that `proof.bindings` are `user_id`'s bindings in the map of `proof.head` (whose
/// signature the caller has checked). A user with no entries proves that it has none.
pub fn verify_bindings(proof: &BindingsProof, user_id: &str) -> Result<(), TransparencyError> {
    let bindings = &proof.bindings;
    if bindings.user_id.as_str() != user_id {
        return Err(bindings_error(user_id, "the bindings are another user's"));
    }
    let present = matches!(proof.proof.end, MapPathEnd::User);
    let value = present.then(|| bindings_hash(bindings));
    prefix_tree::verify(
        &proof.head.head.map_root,
        &user_key(user_id),
        value.as_ref(),
        &prefix_proof(&proof.proof),
    )
    .map_err(|e| bindings_error(user_id, e))?;
    if !present && *bindings != no_bindings(user_id) {
        return Err(bindings_error(
            user_id,
            "the map says the user has no entries, the bindings say otherwise",
        ));
    }
    for credential in &bindings.credentials {
        if credential.content.client.user_id.as_str() != user_id {
            return Err(bindings_error(
                user_id,
                "a bound credential is another user's",
            ));
        }
    }
    Ok(())
}

/// The wire form of a map proof, as the prefix tree reads it.
pub fn prefix_proof(proof: &MapProof) -> prefix_tree::PrefixProof {
    prefix_tree::PrefixProof {
        siblings: proof.siblings.clone(),
        end: match &proof.end {
            MapPathEnd::Empty => prefix_tree::PathEnd::Empty,
            MapPathEnd::User => prefix_tree::PathEnd::Key,
            MapPathEnd::OtherUser(leaf) => prefix_tree::PathEnd::OtherKey {
                key: leaf.key,
                value: leaf.value,
            },
        },
    }
}

/// A user's history being checked page by page against verified bindings: each entry must be in
/// the head's log and the user's, in log order, and replaying them all must give the bindings.
pub struct HistoryCheck<'a> {
    head: &'a TreeHead,
    user_id: &'a str,
    replayed: UserBindings,
    last_index: Option<u64>,
}

impl<'a> HistoryCheck<'a> {
    pub fn new(head: &'a TreeHead, user_id: &'a str) -> Self {
        Self {
            head,
            user_id,
            replayed: no_bindings(user_id),
            last_index: None,
        }
    }

    /// How many of the user's entries have been checked: where the next page starts.
    pub fn checked(&self) -> u64 {
        self.replayed.entries
    }

    /// Checks the next page of entries.
    pub fn page(&mut self, entries: &[ProvedEntry]) -> Result<(), TransparencyError> {
        let user = self.user_id;
        for proved in entries {
            if self.last_index.is_some_and(|last| proved.index <= last) {
                return Err(history_error(user, "entries out of log order"));
            }
            if proved.entry.credential.content.client.user_id.as_str() != user {
                return Err(history_error(user, "an entry of another user"));
            }
            let hash = entry_hash(&proved.entry);
            log_tree::verify_inclusion(
                proved.index,
                self.head.tree_size,
                &hash,
                &proved.inclusion,
                &self.head.log_root,
            )
            .map_err(|e| history_error(user, e))?;
            apply(&mut self.replayed, proved.index, &proved.entry, &hash);
            self.last_index = Some(proved.index);
        }
        Ok(())
    }

    /// Checks that the entries replayed are the whole history `bindings` commit to.
    pub fn finish(self, bindings: &UserBindings) -> Result<UserBindings, TransparencyError> {
        if self.replayed != *bindings {
            return Err(history_error(
                self.user_id,
                "the entries do not replay to the user's bindings",
            ));
        }
        Ok(self.replayed)
    }
}
