//! The public MLS state of a group hosted here, as the server keeps it between requests: the
//! parts openmls' `PublicGroup` stores (ratchet tree, group context, interim transcript hash,
//! confirmation tag, pending proposals), each encoded in MessagePack with structs as arrays.
//!
//! Roost owns this encoding: it is about a third of openmls' JSON storage (which writes every
//! byte of every key as a decimal number and every field name), and much cheaper to decode,
//! which every commit and proposal does. Groups stored in the JSON form (openmls'
//! `MemoryStorage` entries) still load, and are written back in this one by their next change.

use std::sync::RwLock;

use openmls::ciphersuite::hash_ref::ProposalRef;
use openmls::group::GroupId;
use openmls::prelude::{PublicGroup, QueuedProposal};
use openmls_memory_storage::MemoryStorage;
use openmls_traits::public_storage::PublicStorageProvider;
use openmls_traits::storage::{traits, CURRENT_VERSION};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::PublicState;

/// Entry keys of the parts (the first marks the encoding: a state without it is openmls'
/// JSON storage).
const TREE: &[u8] = b"roost:tree";
const CONTEXT: &[u8] = b"roost:context";
const INTERIM_TRANSCRIPT_HASH: &[u8] = b"roost:interim-transcript-hash";
const CONFIRMATION_TAG: &[u8] = b"roost:confirmation-tag";
/// Followed by the proposal's position in the queue (`u32`, big-endian); the value is the
/// encoded (proposal reference, queued proposal).
const PROPOSAL: &[u8] = b"roost:proposal:";

/// A state part that cannot be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("group state: {0}")]
pub struct GroupStateError(String);

#[derive(Default)]
struct Parts {
    tree: Option<Vec<u8>>,
    context: Option<Vec<u8>>,
    interim_transcript_hash: Option<Vec<u8>>,
    confirmation_tag: Option<Vec<u8>>,
    /// Encoded (reference, proposal), in queue order.
    proposals: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One group's public state, for openmls to read and write during a request.
#[derive(Default)]
pub struct GroupStateStorage {
    parts: RwLock<Parts>,
}

fn encode(value: &impl Serialize) -> Result<Vec<u8>, GroupStateError> {
    rmp_serde::to_vec(value).map_err(|e| GroupStateError(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, GroupStateError> {
    rmp_serde::from_slice(bytes).map_err(|e| GroupStateError(e.to_string()))
}

fn decode_part<T: DeserializeOwned>(part: &Option<Vec<u8>>) -> Result<Option<T>, GroupStateError> {
    part.as_deref().map(decode).transpose()
}

impl GroupStateStorage {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Parts> {
        // Parts are replaced whole: a panic elsewhere cannot leave one half-written.
        self.parts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Parts> {
        self.parts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state stored as `entries` (in this encoding, or openmls' JSON storage) of the group
    /// `group_id`.
    pub fn from_entries(group_id: &[u8], entries: &PublicState) -> Result<Self, GroupStateError> {
        if !entries.iter().any(|(key, _)| key.as_slice() == TREE) {
            return Self::from_json_storage(group_id, entries);
        }
        let mut parts = Parts::default();
        let mut proposals = Vec::new();
        for (key, value) in entries {
            match key.as_slice() {
                TREE => parts.tree = Some(value.clone()),
                CONTEXT => parts.context = Some(value.clone()),
                INTERIM_TRANSCRIPT_HASH => parts.interim_transcript_hash = Some(value.clone()),
                CONFIRMATION_TAG => parts.confirmation_tag = Some(value.clone()),
                key if key.starts_with(PROPOSAL) => {
                    let position: [u8; 4] = key[PROPOSAL.len()..]
                        .try_into()
                        .map_err(|_| GroupStateError("a proposal key without its place".into()))?;
                    let (reference, proposal): (Vec<u8>, Vec<u8>) = decode(value)?;
                    proposals.push((u32::from_be_bytes(position), reference, proposal));
                }
                other => {
                    return Err(GroupStateError(format!(
                        "unknown part {}",
                        String::from_utf8_lossy(other)
                    )))
                }
            }
        }
        proposals.sort_by_key(|(position, _, _)| *position);
        parts.proposals = proposals
            .into_iter()
            .map(|(_, reference, proposal)| (reference, proposal))
            .collect();
        Ok(Self {
            parts: RwLock::new(parts),
        })
    }

    /// Reads a group kept in openmls' JSON storage, part by part, into this encoding.
    fn from_json_storage(group_id: &[u8], entries: &PublicState) -> Result<Self, GroupStateError> {
        let json = MemoryStorage::default();
        json.values
            .write()
            .map_err(|_| GroupStateError("storage lock poisoned".into()))?
            .extend(entries.iter().cloned());
        let group_id = GroupId::from_slice(group_id);
        let converted = Self::default();
        let failed = |e: openmls_memory_storage::MemoryStorageError| GroupStateError(e.to_string());
        if let Some(tree) =
            PublicStorageProvider::tree::<_, openmls::treesync::TreeSync>(&json, &group_id)
                .map_err(failed)?
        {
            converted.write_tree(&group_id, &tree)?;
        }
        if let Some(context) =
            PublicStorageProvider::group_context::<_, openmls::group::GroupContext>(
                &json, &group_id,
            )
            .map_err(failed)?
        {
            converted.write_context(&group_id, &context)?;
        }
        if let Some(hash) = PublicStorageProvider::interim_transcript_hash::<
            _,
            openmls::group::InterimTranscriptHash,
        >(&json, &group_id)
        .map_err(failed)?
        {
            converted.write_interim_transcript_hash(&group_id, &hash)?;
        }
        if let Some(tag) = PublicStorageProvider::confirmation_tag::<
            _,
            openmls::messages::ConfirmationTag,
        >(&json, &group_id)
        .map_err(failed)?
        {
            converted.write_confirmation_tag(&group_id, &tag)?;
        }
        for (reference, proposal) in
            PublicStorageProvider::queued_proposals::<_, ProposalRef, QueuedProposal>(
                &json, &group_id,
            )
            .map_err(failed)?
        {
            converted.queue_proposal(&group_id, &reference, &proposal)?;
        }
        Ok(converted)
    }

    /// The entries to store (sorted by key).
    pub fn to_entries(&self) -> PublicState {
        let parts = self.read();
        let mut entries: PublicState = [
            (TREE, &parts.tree),
            (CONTEXT, &parts.context),
            (INTERIM_TRANSCRIPT_HASH, &parts.interim_transcript_hash),
            (CONFIRMATION_TAG, &parts.confirmation_tag),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_vec(), value.clone()?)))
        .collect();
        for (position, (reference, proposal)) in parts.proposals.iter().enumerate() {
            let mut key = PROPOSAL.to_vec();
            key.extend_from_slice(&(position as u32).to_be_bytes());
            // Encoding a pair of byte vectors cannot fail.
            let value = encode(&(reference, proposal)).unwrap_or_default();
            entries.push((key, value));
        }
        entries.sort();
        entries
    }

    /// Loads the group openmls keeps here.
    pub fn load(&self, group_id: &[u8]) -> Result<Option<PublicGroup>, GroupStateError> {
        PublicGroup::load(self, &GroupId::from_slice(group_id))
    }
}

/// The three methods of [`PublicStorageProvider`] for a part kept whole (`$field` of [`Parts`],
/// whose type is bound by `$bound`): write it, read it, delete it.
macro_rules! whole_part {
    ($field:ident: $bound:ident, $write:ident, $read:ident, $delete:ident) => {
        fn $write<G: traits::GroupId<CURRENT_VERSION>, T: traits::$bound<CURRENT_VERSION>>(
            &self,
            _group_id: &G,
            value: &T,
        ) -> Result<(), GroupStateError> {
            let encoded = encode(value)?;
            self.write().$field = Some(encoded);
            Ok(())
        }

        fn $read<G: traits::GroupId<CURRENT_VERSION>, T: traits::$bound<CURRENT_VERSION>>(
            &self,
            _group_id: &G,
        ) -> Result<Option<T>, GroupStateError> {
            decode_part(&self.read().$field)
        }

        fn $delete<G: traits::GroupId<CURRENT_VERSION>>(
            &self,
            _group_id: &G,
        ) -> Result<(), GroupStateError> {
            self.write().$field = None;
            Ok(())
        }
    };
}

impl PublicStorageProvider<CURRENT_VERSION> for GroupStateStorage {
    type PublicError = GroupStateError;

    whole_part!(tree: TreeSync, write_tree, tree, delete_tree);
    whole_part!(context: GroupContext, write_context, group_context, delete_context);
    whole_part!(
        interim_transcript_hash: InterimTranscriptHash,
        write_interim_transcript_hash,
        interim_transcript_hash,
        delete_interim_transcript_hash
    );
    whole_part!(
        confirmation_tag: ConfirmationTag,
        write_confirmation_tag,
        confirmation_tag,
        delete_confirmation_tag
    );

    fn queue_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _group_id: &G,
        reference: &R,
        proposal: &P,
    ) -> Result<(), GroupStateError> {
        let (reference, proposal) = (encode(reference)?, encode(proposal)?);
        let mut parts = self.write();
        // Queuing the same proposal again replaces it (as openmls' own storage does).
        parts.proposals.retain(|(queued, _)| *queued != reference);
        parts.proposals.push((reference, proposal));
        Ok(())
    }

    fn queued_proposals<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _group_id: &G,
    ) -> Result<Vec<(R, P)>, GroupStateError> {
        self.read()
            .proposals
            .iter()
            .map(|(reference, proposal)| Ok((decode(reference)?, decode(proposal)?)))
            .collect()
    }

    fn remove_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _group_id: &G,
        reference: &R,
    ) -> Result<(), GroupStateError> {
        let reference = encode(reference)?;
        self.write()
            .proposals
            .retain(|(queued, _)| *queued != reference);
        Ok(())
    }

    fn clear_proposal_queue<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _group_id: &G,
    ) -> Result<(), GroupStateError> {
        self.write().proposals.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openmls::prelude::{
        BasicCredential, CredentialWithKey, KeyPackage, MlsGroup, MlsGroupCreateConfig,
        ProposalStore,
    };
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;
    use openmls_traits::OpenMlsProvider;

    use super::*;

    /// A group of `size` members built by a client, as the server first gets it: (group id,
    /// its public state in openmls' JSON storage).
    fn json_state(size: usize) -> (Vec<u8>, PublicState) {
        let ciphersuite =
            openmls::prelude::Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
        let member = |name: String| {
            let provider = OpenMlsRustCrypto::default();
            let signer = SignatureKeyPair::new(ciphersuite.signature_algorithm()).unwrap();
            let credential = CredentialWithKey {
                credential: BasicCredential::new(name.into_bytes()).into(),
                signature_key: signer.public().into(),
            };
            (provider, signer, credential)
        };
        let (provider, signer, credential) = member("creator".into());
        let mut group = MlsGroup::new(
            &provider,
            &signer,
            &MlsGroupCreateConfig::builder()
                .ciphersuite(ciphersuite)
                .build(),
            credential,
        )
        .unwrap();
        let key_packages: Vec<KeyPackage> = (1..size)
            .map(|i| {
                let (provider, signer, credential) = member(format!("member {i}"));
                KeyPackage::builder()
                    .build(ciphersuite, &provider, &signer, credential)
                    .unwrap()
                    .key_package()
                    .clone()
            })
            .collect();
        group
            .add_members(&provider, &signer, &key_packages)
            .unwrap();
        group.merge_pending_commit(&provider).unwrap();
        let group_info = group
            .export_group_info(provider.crypto(), &signer, false)
            .unwrap();
        let openmls::prelude::MlsMessageBodyIn::GroupInfo(group_info) =
            openmls::prelude::MlsMessageIn::from(group_info).extract()
        else {
            unreachable!()
        };
        let json = MemoryStorage::default();
        PublicGroup::from_external(
            provider.crypto(),
            &json,
            group.export_ratchet_tree().into(),
            group_info,
            ProposalStore::new(),
        )
        .unwrap();
        let entries = json.values.read().unwrap().clone().into_iter().collect();
        (group.group_id().as_slice().to_vec(), entries)
    }

    #[test]
    fn a_json_group_converts_and_the_compact_form_round_trips_at_a_third_of_the_size() {
        let (group_id, json) = json_state(50);
        let from_json = GroupStateStorage::from_entries(&group_id, &json).unwrap();
        let original = from_json.load(&group_id).unwrap().unwrap();
        let compact = from_json.to_entries();
        let reloaded = GroupStateStorage::from_entries(&group_id, &compact)
            .unwrap()
            .load(&group_id)
            .unwrap()
            .unwrap();
        assert_eq!(reloaded.group_context(), original.group_context());
        assert_eq!(
            reloaded.export_ratchet_tree(),
            original.export_ratchet_tree()
        );
        assert_eq!(reloaded.confirmation_tag(), original.confirmation_tag());
        let size = |entries: &PublicState| -> usize {
            entries
                .iter()
                .map(|(key, value)| key.len() + value.len())
                .sum()
        };
        eprintln!(
            "50 members: compact {} B, JSON {} B",
            size(&compact),
            size(&json)
        );
        assert!(
            size(&compact) * 3 < size(&json),
            "compact {} bytes, JSON {} bytes",
            size(&compact),
            size(&json)
        );
        // Written back, the state is the same bytes again (nothing depends on map order).
        assert_eq!(
            GroupStateStorage::from_entries(&group_id, &compact)
                .unwrap()
                .to_entries(),
            compact
        );
    }

    #[test]
    fn damaged_state_is_an_error_not_a_panic() {
        let (group_id, json) = json_state(2);
        let compact = GroupStateStorage::from_entries(&group_id, &json)
            .unwrap()
            .to_entries();
        for cut in [0, 1, 7] {
            let mut damaged = compact.clone();
            for (_, value) in &mut damaged {
                value.truncate(cut);
            }
            let storage = GroupStateStorage::from_entries(&group_id, &damaged).unwrap();
            assert!(storage.load(&group_id).is_err());
        }
        let mut unknown = compact.clone();
        unknown.push((b"roost:other".to_vec(), vec![1]));
        assert!(GroupStateStorage::from_entries(&group_id, &unknown).is_err());
    }
}
