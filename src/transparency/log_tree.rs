//! The log tree: RFC 9162's Merkle tree over the log's entries (section 2.1), its inclusion and
//! consistency proofs, and their verification. The tree is read through the hashes of its
//! perfect subtrees (a leaf is one of size 1), which is what the store keeps: appending a leaf
//! completes at most one perfect subtree per level, so the log stores about two hashes an entry,
//! and a root or a proof reads O(log n) of them.

use sha2::{Digest, Sha256};

use super::{Hash, ProofError};

/// The hash of a leaf: SHA-256(0x00 || entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(entry);
    hasher.finalize().into()
}

/// The hash of an interior node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The perfect subtree at `level` (2^level leaves) and `index` (its position among those of its
/// level): the leaves `index << level .. (index + 1) << level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subtree {
    pub level: u8,
    pub index: u64,
}

/// The perfect subtrees that appending leaf `index` (with hash `leaf`) completes, with their
/// hashes, lowest first: the leaf itself, then each subtree whose last leaf it is. The right
/// half of each is the one below it; its left half, asked of `stored`, was complete before.
pub fn completed_by<E>(
    index: u64,
    leaf: Hash,
    mut stored: impl FnMut(Subtree) -> Result<Hash, E>,
) -> Result<Vec<(Subtree, Hash)>, E> {
    let completed = (index + 1).trailing_zeros() as u8;
    let mut hash = leaf;
    let mut subtrees = Vec::with_capacity(usize::from(completed) + 1);
    for level in 0..=completed {
        let subtree = Subtree {
            level,
            index: index >> level,
        };
        if level > 0 {
            let left = stored(Subtree {
                level: level - 1,
                index: subtree.index * 2,
            })?;
            hash = node_hash(&left, &hash);
        }
        subtrees.push((subtree, hash));
    }
    Ok(subtrees)
}

/// A tree of `size` leaves as far as its perfect subtrees' hashes are known: `subtree` answers
/// for any perfect subtree within the first `size` leaves.
pub struct Tree<F> {
    pub size: u64,
    pub subtree: F,
}

impl<E, F> Tree<F>
where
    F: FnMut(Subtree) -> Result<Hash, E>,
{
    /// The tree's root (RFC 9162 MTH).
    pub fn root(&mut self) -> Result<Hash, E> {
        if self.size == 0 {
            return Ok(empty_root());
        }
        self.range_hash(0, self.size)
    }

    /// The inclusion proof of leaf `index` (RFC 9162 PATH), leaf's sibling first.
    pub fn inclusion_proof(&mut self, index: u64) -> Result<Vec<Hash>, E> {
        let mut path = Vec::new();
        if index < self.size {
            self.path(index, 0, self.size, &mut path)?;
        }
        Ok(path)
    }

    /// The consistency proof from the tree's first `old_size` leaves to all of it (RFC 9162
    /// PROOF); empty when `old_size` is 0 or the whole tree.
    pub fn consistency_proof(&mut self, old_size: u64) -> Result<Vec<Hash>, E> {
        let mut proof = Vec::new();
        if old_size > 0 && old_size < self.size {
            self.subproof(old_size, 0, self.size, true, &mut proof)?;
        }
        Ok(proof)
    }

    /// MTH of leaves `start..end` (non-empty), from the perfect subtrees that make it up.
    fn range_hash(&mut self, start: u64, end: u64) -> Result<Hash, E> {
        let len = end - start;
        if len.is_power_of_two() && start.is_multiple_of(len) {
            return (self.subtree)(Subtree {
                level: len.trailing_zeros() as u8,
                index: start / len,
            });
        }
        let split = split_point(len);
        let left = self.range_hash(start, start + split)?;
        let right = self.range_hash(start + split, end)?;
        Ok(node_hash(&left, &right))
    }

    fn path(&mut self, index: u64, start: u64, end: u64, path: &mut Vec<Hash>) -> Result<(), E> {
        let len = end - start;
        if len == 1 {
            return Ok(());
        }
        let split = split_point(len);
        if index < start + split {
            self.path(index, start, start + split, path)?;
            path.push(self.range_hash(start + split, end)?);
        } else {
            self.path(index, start + split, end, path)?;
            path.push(self.range_hash(start, start + split)?);
        }
        Ok(())
    }

    fn subproof(
        &mut self,
        old_size: u64,
        start: u64,
        end: u64,
        whole_old_tree: bool,
        proof: &mut Vec<Hash>,
    ) -> Result<(), E> {
        let len = end - start;
        if old_size == len {
            if !whole_old_tree {
                proof.push(self.range_hash(start, end)?);
            }
            return Ok(());
        }
        let split = split_point(len);
        if old_size <= split {
            self.subproof(old_size, start, start + split, whole_old_tree, proof)?;
            proof.push(self.range_hash(start + split, end)?);
        } else {
            self.subproof(old_size - split, start + split, end, false, proof)?;
            proof.push(self.range_hash(start, start + split)?);
        }
        Ok(())
    }
}

/// The largest power of two smaller than `len` (which is at least 2).
fn split_point(len: u64) -> u64 {
    1 << (63 - (len - 1).leading_zeros())
}

/// Checks that the leaf with hash `leaf` is leaf `index` of the tree of `size` leaves whose root
/// is `root` (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    path: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Inconsistent("the leaf is outside the tree"));
    }
    let (mut node, mut last) = (index, size - 1);
    let mut hash = *leaf;
    for sibling in path {
        if last == 0 {
            return Err(ProofError::Inconsistent("the inclusion proof is too long"));
        }
        if node & 1 == 1 || node == last {
            hash = node_hash(sibling, &hash);
            while node & 1 == 0 && node != 0 {
                node >>= 1;
                last >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        node >>= 1;
        last >>= 1;
    }
    if last != 0 {
        return Err(ProofError::Inconsistent("the inclusion proof is too short"));
    }
    if hash != *root {
        return Err(ProofError::Inconsistent(
            "the inclusion proof leads to another root",
        ));
    }
    Ok(())
}

/// Checks that the tree of `old_size` leaves with root `old_root` is the first `old_size` leaves
/// of the tree of `new_size` leaves with root `new_root` (RFC 9162 section 2.1.4.2). A tree is
/// consistent with itself (empty proof, same root) and every tree with the empty one.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::Inconsistent("the tree shrank"));
    }
    if old_size == new_size {
        return match (proof.is_empty(), old_root == new_root) {
            (true, true) => Ok(()),
            (true, false) => Err(ProofError::Inconsistent(
                "two different roots for one tree size",
            )),
            (false, _) => Err(ProofError::Inconsistent("a proof between equal sizes")),
        };
    }
    if old_size == 0 {
        return match proof.is_empty() {
            true => Ok(()),
            false => Err(ProofError::Inconsistent("a proof from the empty tree")),
        };
    }
    let mut path = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::Inconsistent("an empty consistency proof"));
    };
    let (mut node, mut last) = (old_size - 1, new_size - 1);
    while node & 1 == 1 {
        node >>= 1;
        last >>= 1;
    }
    let (mut old_hash, mut new_hash) = (*first, *first);
    for hash in rest {
        if last == 0 {
            return Err(ProofError::Inconsistent(
                "the consistency proof is too long",
            ));
        }
        if node & 1 == 1 || node == last {
            old_hash = node_hash(hash, &old_hash);
            new_hash = node_hash(hash, &new_hash);
            while node & 1 == 0 && node != 0 {
                node >>= 1;
                last >>= 1;
            }
        } else {
            new_hash = node_hash(&new_hash, hash);
        }
        node >>= 1;
        last >>= 1;
    }
    if last != 0 {
        return Err(ProofError::Inconsistent(
            "the consistency proof is too short",
        ));
    }
    if old_hash != *old_root || new_hash != *new_root {
        return Err(ProofError::Inconsistent(
            "the consistency proof does not join the two roots",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use super::*;

    /// The perfect subtrees of `leaves`, as the store keeps them.
    fn subtrees(leaves: &[Hash]) -> HashMap<Subtree, Hash> {
        let mut nodes = HashMap::new();
        for (index, leaf) in leaves.iter().enumerate() {
            let completed = completed_by(index as u64, *leaf, |left| {
                Ok::<_, Infallible>(nodes[&left])
            });
            nodes.extend(completed.unwrap());
        }
        nodes
    }

    /// RFC 9162's MTH, straight from its definition.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let split = split_point(n as u64) as usize;
                node_hash(
                    &reference_root(&leaves[..split]),
                    &reference_root(&leaves[split..]),
                )
            }
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    fn tree(
        nodes: &HashMap<Subtree, Hash>,
        size: u64,
    ) -> Tree<impl FnMut(Subtree) -> Result<Hash, Infallible> + '_> {
        Tree {
            size,
            subtree: move |subtree| Ok(nodes[&subtree]),
        }
    }

    #[test]
    fn roots_from_stored_subtrees_are_rfc_9162_roots() {
        let all = leaves(70);
        let nodes = subtrees(&all);
        for size in 0..=70 {
            let root = tree(&nodes, size as u64).root().unwrap();
            assert_eq!(root, reference_root(&all[..size]), "size {size}");
        }
    }

    #[test]
    fn the_rfc_6962_test_vector_root() {
        // RFC 6962's reference implementation's test tree (the same hashing as RFC 9162): its
        // eight leaves and the root of all eight.
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let all: Vec<Hash> = inputs.iter().map(|input| leaf_hash(input)).collect();
        let nodes = subtrees(&all);
        assert_eq!(
            hex::encode(tree(&nodes, 8).root().unwrap()),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
        assert_eq!(
            hex::encode(tree(&nodes, 1).root().unwrap()),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn every_inclusion_proof_verifies_and_a_wrong_one_does_not() {
        let all = leaves(37);
        let nodes = subtrees(&all);
        for size in 1..=37u64 {
            let root = tree(&nodes, size).root().unwrap();
            for index in 0..size {
                let path = tree(&nodes, size).inclusion_proof(index).unwrap();
                let leaf = &all[index as usize];
                verify_inclusion(index, size, leaf, &path, &root).unwrap();
                let other = &all[(index as usize + 1) % all.len()];
                assert!(verify_inclusion(index, size, other, &path, &root).is_err());
                if index + 1 < size {
                    assert!(verify_inclusion(index + 1, size, leaf, &path, &root).is_err());
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_a_forked_tree_does_not() {
        let all = leaves(33);
        let nodes = subtrees(&all);
        let mut forked = all.clone();
        forked[3] = leaf_hash(b"a leaf the first tree did not have");
        let forked_nodes = subtrees(&forked);
        for new_size in 1..=33u64 {
            let new_root = tree(&nodes, new_size).root().unwrap();
            for old_size in 0..=new_size {
                let old_root = tree(&nodes, old_size).root().unwrap();
                let proof = tree(&nodes, new_size).consistency_proof(old_size).unwrap();
                verify_consistency(old_size, new_size, &old_root, &new_root, &proof)
                    .unwrap_or_else(|e| panic!("{old_size} -> {new_size}: {e}"));
                if old_size > 3 {
                    let forked_root = tree(&forked_nodes, old_size).root().unwrap();
                    assert!(
                        verify_consistency(old_size, new_size, &forked_root, &new_root, &proof)
                            .is_err(),
                        "a fork at {old_size} -> {new_size} passed"
                    );
                }
            }
        }
        let root = tree(&nodes, 8).root().unwrap();
        assert!(verify_consistency(9, 8, &root, &root, &[]).is_err());
    }
}
