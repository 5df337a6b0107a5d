//! The prefix tree: a Merkle tree over 256-bit keys (one per user) that proves what a key holds,
//! or that it holds nothing, against one root. A key's path is its bits, most significant
//! first; a subtree with one key in it is that key's leaf, wherever it is, so the tree is as deep
//! as the keys' common prefixes need (about log2 of the number of keys), not 256.
//!
//! - an empty subtree hashes to 32 zero bytes;
//! - a subtree holding only `key` with value hash `value` hashes to
//!   SHA-256(0x02 || key || value);
//! - any other subtree hashes to SHA-256(0x03 || left || right).
//!
//! Versions share structure: inserting copies the one path it changes ([`Arc`] nodes), so every
//! published root stays readable while the next is built.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{Hash, ProofError};

pub const EMPTY: Hash = [0; 32];
/// Keys are 256 bits: no path is longer.
pub const MAX_DEPTH: usize = 256;

#[derive(Debug)]
enum Node {
    Leaf { key: Hash, value: Hash },
    Branch { hash: Hash, left: Tree, right: Tree },
}

/// One version of the tree; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Tree(Option<Arc<Node>>);

/// Where a key's path ends: what the proof's root is folded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathEnd {
    /// An empty subtree: the key holds nothing.
    Empty,
    /// The key's own leaf (its value is the verifier's to supply).
    Key,
    /// The one other key in the subtree on the key's path: the key holds nothing.
    OtherKey { key: Hash, value: Hash },
}

/// A key's path from the root: the sibling of each node on it, the root's child's sibling first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixProof {
    pub siblings: Vec<Hash>,
    pub end: PathEnd,
}

pub fn leaf_hash(key: &Hash, value: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x02]);
    hasher.update(key);
    hasher.update(value);
    hasher.finalize().into()
}

fn branch_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x03]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// Bit `depth` of `key`, most significant first: `true` goes right.
fn bit(key: &Hash, depth: usize) -> bool {
    key[depth / 8] & (0x80 >> (depth % 8)) != 0
}

impl Tree {
    pub fn root(&self) -> Hash {
        match self.0.as_deref() {
            None => EMPTY,
            Some(Node::Leaf { key, value }) => leaf_hash(key, value),
            Some(Node::Branch { hash, .. }) => *hash,
        }
    }

    /// This tree with `key` holding `value` (replacing what it held).
    pub fn insert(&self, key: &Hash, value: &Hash) -> Tree {
        self.insert_at(0, key, value)
    }

    fn insert_at(&self, depth: usize, key: &Hash, value: &Hash) -> Tree {
        match self.0.as_deref() {
            None => leaf(*key, *value),
            Some(Node::Leaf { key: held, .. }) if held == key => leaf(*key, *value),
            Some(Node::Leaf { .. }) => branch_of_two(depth, self.clone(), leaf(*key, *value), key),
            Some(Node::Branch { left, right, .. }) => {
                if bit(key, depth) {
                    branch(left.clone(), right.insert_at(depth + 1, key, value))
                } else {
                    branch(left.insert_at(depth + 1, key, value), right.clone())
                }
            }
        }
    }

    /// This tree without `key` (the same tree if it held nothing). A branch left with one leaf
    /// below it becomes that leaf, so the tree stays the one its keys define.
    pub fn remove(&self, key: &Hash) -> Tree {
        self.remove_at(0, key)
    }

    fn remove_at(&self, depth: usize, key: &Hash) -> Tree {
        match self.0.as_deref() {
            None => Tree::default(),
            Some(Node::Leaf { key: held, .. }) if held == key => Tree::default(),
            Some(Node::Leaf { .. }) => self.clone(),
            Some(Node::Branch { left, right, .. }) => {
                let (left, right) = match bit(key, depth) {
                    true => (left.clone(), right.remove_at(depth + 1, key)),
                    false => (left.remove_at(depth + 1, key), right.clone()),
                };
                match (left.0.as_deref(), right.0.as_deref()) {
                    (None, Some(Node::Leaf { .. })) => right,
                    (Some(Node::Leaf { .. }), None) => left,
                    (None, None) => Tree::default(),
                    _ => branch(left, right),
                }
            }
        }
    }

    /// The value hash `key` holds, if any.
    pub fn get(&self, key: &Hash) -> Option<Hash> {
        let mut node = self;
        for depth in 0..=MAX_DEPTH {
            match node.0.as_deref()? {
                Node::Leaf { key: held, value } => return (held == key).then_some(*value),
                Node::Branch { left, right, .. } => {
                    node = if bit(key, depth) { right } else { left };
                }
            }
        }
        None
    }

    /// The proof of what `key` holds (or that it holds nothing).
    pub fn prove(&self, key: &Hash) -> PrefixProof {
        let mut siblings = Vec::new();
        let mut node = self;
        loop {
            match node.0.as_deref() {
                None => {
                    return PrefixProof {
                        siblings,
                        end: PathEnd::Empty,
                    }
                }
                Some(Node::Leaf { key: held, value }) => {
                    let end = match held == key {
                        true => PathEnd::Key,
                        false => PathEnd::OtherKey {
                            key: *held,
                            value: *value,
                        },
                    };
                    return PrefixProof { siblings, end };
                }
                Some(Node::Branch { left, right, .. }) => {
                    let (next, sibling) = match bit(key, siblings.len()) {
                        true => (right, left),
                        false => (left, right),
                    };
                    siblings.push(sibling.root());
                    node = next;
                }
            }
        }
    }
}

fn leaf(key: Hash, value: Hash) -> Tree {
    Tree(Some(Arc::new(Node::Leaf { key, value })))
}

fn branch(left: Tree, right: Tree) -> Tree {
    let hash = branch_hash(&left.root(), &right.root());
    Tree(Some(Arc::new(Node::Branch { hash, left, right })))
}

/// The subtree at `depth` holding the leaves `held` and `new` (different keys), `new_key`
/// being the second's.
fn branch_of_two(depth: usize, held: Tree, new: Tree, new_key: &Hash) -> Tree {
    let Some(Node::Leaf { key: held_key, .. }) = held.0.as_deref() else {
        unreachable!("branch_of_two is given a leaf")
    };
    let held_key = *held_key;
    // The keys differ, so they part before the last bit.
    let parting = (depth..MAX_DEPTH)
        .find(|&d| bit(&held_key, d) != bit(new_key, d))
        .unwrap_or(MAX_DEPTH - 1);
    let mut subtree = match bit(new_key, parting) {
        true => branch(held, new),
        false => branch(new, held),
    };
    for d in (depth..parting).rev() {
        subtree = match bit(new_key, d) {
            true => branch(Tree::default(), subtree),
            false => branch(subtree, Tree::default()),
        };
    }
    subtree
}

/// Checks `proof` against `root`: `Ok(true)` if `key` holds `value`, `Ok(false)` if it holds
/// nothing; an error if the proof is not of this root (or `value` is given for an absent key).
pub fn verify(
    root: &Hash,
    key: &Hash,
    value: Option<&Hash>,
    proof: &PrefixProof,
) -> Result<bool, ProofError> {
    let depth = proof.siblings.len();
    if depth > MAX_DEPTH {
        return Err(ProofError::Malformed("a prefix proof deeper than 256"));
    }
    let (mut hash, present) = match (&proof.end, value) {
        (PathEnd::Key, Some(value)) => (leaf_hash(key, value), true),
        (PathEnd::Key, None) => {
            return Err(ProofError::Inconsistent(
                "the key is present: its value is needed",
            ))
        }
        (PathEnd::Empty, _) => (EMPTY, false),
        (PathEnd::OtherKey { key: other, value }, _) => {
            let shares_path = other != key && (0..depth).all(|d| bit(other, d) == bit(key, d));
            if !shares_path {
                return Err(ProofError::Inconsistent(
                    "the proof ends at a key off the searched key's path",
                ));
            }
            (leaf_hash(other, value), false)
        }
    };
    for (d, sibling) in proof.siblings.iter().enumerate().rev() {
        hash = match bit(key, d) {
            true => branch_hash(sibling, &hash),
            false => branch_hash(&hash, sibling),
        };
    }
    if hash != *root {
        return Err(ProofError::Inconsistent(
            "the prefix proof leads to another root",
        ));
    }
    if value.is_some() && !present {
        return Err(ProofError::Inconsistent("the key holds nothing"));
    }
    Ok(present)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Hash {
        Sha256::digest(i.to_be_bytes()).into()
    }

    fn value(i: u32, version: u8) -> Hash {
        Sha256::digest([&i.to_be_bytes()[..], &[version]].concat()).into()
    }

    /// The root from the definition: the subtree of `keys` (sorted) at `depth`.
    fn reference_root(entries: &[(Hash, Hash)], depth: usize) -> Hash {
        match entries {
            [] => EMPTY,
            [(key, value)] => leaf_hash(key, value),
            _ => {
                let split = entries.partition_point(|(key, _)| !bit(key, depth));
                branch_hash(
                    &reference_root(&entries[..split], depth + 1),
                    &reference_root(&entries[split..], depth + 1),
                )
            }
        }
    }

    #[test]
    fn roots_are_the_definitions_and_every_key_proves_its_value() {
        let mut tree = Tree::default();
        let mut entries = std::collections::BTreeMap::new();
        for i in 0..300 {
            let version = (i % 3) as u8;
            let k = key(i % 200);
            tree = tree.insert(&k, &value(i, version));
            entries.insert(k, value(i, version));
        }
        let sorted: Vec<(Hash, Hash)> = entries.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(tree.root(), reference_root(&sorted, 0));
        let root = tree.root();
        for (k, v) in &entries {
            let proof = tree.prove(k);
            assert_eq!(verify(&root, k, Some(v), &proof), Ok(true));
            assert!(verify(&root, k, Some(&value(9999, 0)), &proof).is_err());
            assert!(proof.siblings.len() < 30, "{} deep", proof.siblings.len());
        }
        for absent in 1000..1100 {
            let k = key(absent);
            let proof = tree.prove(&k);
            assert_eq!(verify(&root, &k, None, &proof), Ok(false));
            assert!(verify(&root, &k, Some(&value(0, 0)), &proof).is_err());
        }
    }

    #[test]
    fn removing_keys_gives_the_tree_of_those_left() {
        let mut tree = Tree::default();
        for i in 0..120 {
            tree = tree.insert(&key(i), &value(i, 0));
        }
        let mut left = std::collections::BTreeMap::new();
        for i in 0..120 {
            if i % 3 == 0 {
                tree = tree.remove(&key(i));
            } else {
                left.insert(key(i), value(i, 0));
            }
        }
        tree = tree.remove(&key(5000));
        let sorted: Vec<(Hash, Hash)> = left.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(tree.root(), reference_root(&sorted, 0));
        let root = tree.root();
        assert_eq!(
            verify(&root, &key(3), None, &tree.prove(&key(3))),
            Ok(false)
        );
        let all_gone = (0..120).fold(tree, |tree, i| tree.remove(&key(i)));
        assert_eq!(all_gone.root(), EMPTY);
    }

    #[test]
    fn an_old_version_is_unchanged_by_later_inserts() {
        let first = Tree::default().insert(&key(1), &value(1, 0));
        let root = first.root();
        let second = first
            .insert(&key(2), &value(2, 0))
            .insert(&key(1), &value(1, 1));
        assert_eq!(first.root(), root);
        assert_eq!(first.get(&key(1)), Some(value(1, 0)));
        assert_eq!(second.get(&key(1)), Some(value(1, 1)));
        assert_eq!(first.get(&key(2)), None);
    }

    #[test]
    fn a_proof_of_absence_cannot_hide_a_present_key() {
        let tree = (0..50).fold(Tree::default(), |tree, i| {
            tree.insert(&key(i), &value(i, 0))
        });
        let root = tree.root();
        let present = key(7);
        // Claiming the path ends empty, or at another key, where key 7's leaf is.
        let mut proof = tree.prove(&present);
        proof.end = PathEnd::Empty;
        assert!(verify(&root, &present, None, &proof).is_err());
        proof.end = PathEnd::OtherKey {
            key: key(8),
            value: value(8, 0),
        };
        assert!(verify(&root, &present, None, &proof).is_err());
        // A shorter path (stopping at a branch) leads elsewhere.
        let mut short = tree.prove(&present);
        short.siblings.pop();
        short.end = PathEnd::Empty;
        assert!(verify(&root, &present, None, &short).is_err());
    }
}
