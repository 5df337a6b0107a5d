//! The group service (delivery service): tracks each group hosted here with an openmls
//! `PublicGroup`, verifies and orders commits, enforces roles, checks member credentials, and fans
//! MLS messages and Welcomes out to members' queues. Owns the group tables.

mod check;
mod fan_out;
mod operation;
mod rules;
mod send;

use std::sync::Arc;

use openmls::prelude::{LeafNode, ProposalStore, PublicGroup, RatchetTreeIn};
use openmls_rust_crypto::RustCrypto;
use tls_codec::{Deserialize, Serialize};

use super::group_state::GroupStateStorage;
use super::{cpu_bound, Accounts, ServiceError, Sessions};
use crate::clock::Clock;
use crate::config::{QueuePolicy, ServerConfig};
use crate::identity::{verify_member, DomainKeys, UserId};
use crate::protocol::{
    ClientId, CreateGroupRequest, DeleteGroupRequest, FetchGroupTreeRequest, GroupDeleted,
    GroupEpoch, GroupMember, GroupState, GroupTreeChunk, MessageKind, Role, ServerNotice,
    MAX_INLINE_TREE_LEN, MAX_TREE_CHUNK_LEN,
};
use crate::store::{
    Envelope, GroupRefusal, GroupTransition, QueueLimits, Remembered, Store, StoredGroup, TreeChunk,
};
use check::{corrupt, invalid, snapshot, Host};
use fan_out::{envelope, member_rows};
use rules::{
    check_group_context, group_roles, is_admin, leaf_credential, own_user_in, parse_group_info,
};

/// A group's members as (client, leaf index).
type Members = Vec<(ClientId, u32)>;

pub struct Groups {
    store: Store,
    clock: Arc<dyn Clock>,
    sessions: Arc<dyn Sessions>,
    accounts: Arc<Accounts>,
    crypto: RustCrypto,
    queues: QueuePolicy,
    domain: String,
    /// Woken whenever deliveries for peers were committed to the outbox.
    outbox_wake: super::federation::OutboxWake,
    /// For remote members' credential keys.
    federation: Option<Arc<super::Federation>>,
}

/// A group loaded for processing.
struct LoadedGroup {
    stored: StoredGroup,
    storage: GroupStateStorage,
    public: PublicGroup,
}

impl Groups {
    pub fn new(
        config: &ServerConfig,
        store: Store,
        sessions: Arc<dyn Sessions>,
        accounts: Arc<Accounts>,
        outbox_wake: super::federation::OutboxWake,
        federation: Option<Arc<super::Federation>>,
    ) -> Self {
        Self {
            outbox_wake,
            federation,
            store,
            clock: config.clock.clone(),
            sessions,
            accounts,
            crypto: RustCrypto::default(),
            queues: config.queues.clone(),
            domain: config.domain.as_str().to_owned(),
        }
    }

    /// What the dedupe window remembers of `digest` in `group_id`, for `caller` sending it.
    async fn remembered(
        &self,
        caller: &ClientId,
        group_id: &[u8],
        digest: [u8; 32],
        now_ms: u64,
    ) -> Result<Remembered, ServiceError> {
        Ok(self
            .store
            .recent_request(group_id, digest, caller, now_ms)
            .await?)
    }

    /// The answer to `caller` sending bytes another client sent first (within the dedupe window):
    /// what it would be told of any request it may not make, and nothing of the original's
    /// answer. A member is refused as the bytes' sender is another client; a non-member learns
    /// only that it is not a member.
    async fn replay_refusal(&self, caller: &ClientId, group_id: &[u8]) -> ServiceError {
        let membership = self.store.group_membership(caller, group_id).await;
        match membership {
            Ok(Some(_)) => ServiceError::Forbidden,
            Ok(None) => ServiceError::NotAMember,
            Err(e) => e.into(),
        }
    }

    /// Forgets the group requests remembered for longer than the dedupe window (maintenance).
    pub async fn forget_expired_requests(&self) -> Result<u64, ServiceError> {
        Ok(self
            .store
            .forget_expired_requests(self.clock.now_ms())
            .await?)
    }

    pub async fn create(
        &self,
        caller: &ClientId,
        request: CreateGroupRequest,
    ) -> Result<GroupEpoch, ServiceError> {
        let group_info = parse_group_info(request.group_info.as_slice())?;
        let tree = RatchetTreeIn::tls_deserialize_exact(request.ratchet_tree.as_slice())
            .map_err(|e| invalid(&format!("the ratchet tree does not parse: {e}")))?;
        let storage = GroupStateStorage::default();
        let (public, _) = PublicGroup::from_external(
            &self.crypto,
            &storage,
            tree,
            group_info,
            ProposalStore::new(),
        )
        .map_err(|e| invalid(&format!("the group state is not valid: {e}")))?;
        if public.group_context().epoch().as_u64() != 0 {
            return Err(invalid("a new group starts at epoch 0"));
        }
        let members = members_of(&public)?;
        if members.len() != 1 || members[0].0 != *caller {
            return Err(invalid(
                "a new group holds exactly one member: the creating client",
            ));
        }
        check_group_context(&self.host(), &public)?;
        let roles = group_roles(&public)?;
        if roles.admins.len() != 1 || !roles.is_admin(caller.user_id.as_str()) {
            return Err(invalid(
                "a new group's roles extension names its creator as the only Admin",
            ));
        }
        let group_id = public.group_id().as_slice().to_vec();
        if crate::identity::group_hub(&group_id)
            .as_ref()
            .map(|hub| hub.as_str())
            != Some(self.domain.as_str())
        {
            return Err(ServiceError::InvalidGroupId);
        }
        let stored = StoredGroup {
            epoch: 0,
            created_at: self.clock.now(),
            roles: vec![(caller.user_id.as_str().to_owned(), true)],
            leaving: Vec::new(),
            group_info: request.group_info.as_slice().to_vec(),
            public_state: snapshot(&storage)?,
        };
        let rows = member_rows(&members);
        self.store
            .create_group(&group_id, stored, rows)
            .await?
            .map_err(|_| ServiceError::GroupExists)?;
        tracing::info!(group = %hex::encode(&group_id), creator = %caller, "group created");
        Ok(GroupEpoch {
            group_id: group_id.into(),
            epoch: 0,
        })
    }

    /// Deletes a group (Admins only): its state is gone, every other member is told.
    pub async fn delete(
        &self,
        caller: &ClientId,
        request: DeleteGroupRequest,
    ) -> Result<(), ServiceError> {
        let group_id = request.group_id.as_slice();
        let group = self.load(group_id).await?;
        self.store
            .group_membership(caller, group_id)
            .await?
            .ok_or(ServiceError::NotAMember)?;
        if !is_admin(&group.stored, caller) {
            return Err(ServiceError::NotAnAdmin);
        }
        let members = members_of(&group.public)?;
        let notice = ServerNotice::GroupDeleted(GroupDeleted {
            group_id: group_id.to_vec().into(),
            by: caller.clone(),
        })
        .tls_serialize_detached()
        .map_err(|e| invalid(&e.to_string()))?;
        let notice = Arc::new(notice);
        let envelopes: Vec<Envelope> = members
            .iter()
            .filter(|(client, _)| client != caller)
            .map(|(client, _)| envelope(client, MessageKind::ServerNotice, &notice))
            .collect();
        let (envelopes, remote) = fan_out::split(&self.domain, group_id, envelopes);
        let now_ms = self.clock.now_ms();
        let outcomes = self
            .store
            .delete_group(
                group_id,
                member_rows(&members),
                envelopes.clone(),
                remote,
                now_ms,
                self.queue_limits(),
            )
            .await?
            .map_err(|_| ServiceError::UnknownGroup)?;
        super::announce_queued(&*self.sessions, &envelopes, &outcomes, now_ms);
        self.outbox_wake.wake();
        tracing::info!(group = %hex::encode(group_id), by = %caller, "group deleted");
        Ok(())
    }

    /// A group's members, tree and GroupInfo, for a member (or a client of a member's user).
    pub async fn get(
        &self,
        caller: &ClientId,
        group_id: &[u8],
    ) -> Result<GroupState, ServiceError> {
        let group = self.load(group_id).await?;
        let membership = self.store.group_membership(caller, group_id).await?;
        let verified = members_of(&group.public)?;
        // A client of a user in the group reads it too: what it needs to join by external
        // commit (its GroupInfo and tree).
        if membership.is_none() && !own_user_in(caller, &group, &verified) {
            return Err(ServiceError::NotAMember);
        }
        let members = verified
            .into_iter()
            .map(|(client, leaf_index)| {
                let role = if is_admin(&group.stored, &client) {
                    Role::Admin
                } else {
                    Role::Member
                };
                GroupMember {
                    client,
                    leaf_index,
                    role,
                }
            })
            .collect();
        let mut ratchet_tree = encoded_tree(&group.public)?;
        if ratchet_tree.len() > MAX_INLINE_TREE_LEN {
            // Fetched in chunks instead (FetchGroupTree), so that the answer stays small.
            ratchet_tree.clear();
        }
        Ok(GroupState {
            group_id: group_id.to_vec().into(),
            epoch: group.stored.epoch,
            members,
            ratchet_tree: ratchet_tree.into(),
            group_info: group.stored.group_info.into(),
        })
    }

    /// Part of the ratchet tree of an epoch of a group, for a member: the tree kept for the
    /// joiners of that epoch, or the current tree. A member gets the trees of the epoch it
    /// joined at and later ones, never one from before it came (that would name members who
    /// left before it).
    pub async fn tree(
        &self,
        caller: &ClientId,
        request: &FetchGroupTreeRequest,
    ) -> Result<GroupTreeChunk, ServiceError> {
        let group_id = request.group_id.as_slice();
        if !self.store.group_exists(group_id).await? {
            return Err(ServiceError::UnknownGroup);
        }
        let membership = self.store.group_membership(caller, group_id).await?;
        let Some(membership) = membership else {
            // A client of a user in the group gets the current tree, to join by external commit.
            let group = self.load(group_id).await?;
            let verified = members_of(&group.public)?;
            if !own_user_in(caller, &group, &verified) {
                return Err(ServiceError::NotAMember);
            }
            if request.epoch != group.stored.epoch {
                return Err(ServiceError::TreeNotKept {
                    epoch: request.epoch,
                });
            }
            let tree = encoded_tree(&group.public)?;
            let chunk = TreeChunk::of(&tree, request.offset as usize, MAX_TREE_CHUNK_LEN as usize);
            return tree_answer(request.epoch, request.offset, chunk);
        };
        if request.epoch < membership.since_epoch {
            return Err(ServiceError::TreeNotKept {
                epoch: request.epoch,
            });
        }
        let offset = request.offset as usize;
        let max_len = MAX_TREE_CHUNK_LEN as usize;
        let chunk = match self
            .store
            .group_tree_chunk(group_id, request.epoch, offset, max_len)
            .await?
        {
            Some(chunk) => chunk,
            None => {
                let group = self.load(group_id).await?;
                if group.stored.epoch != request.epoch {
                    return Err(ServiceError::TreeNotKept {
                        epoch: request.epoch,
                    });
                }
                TreeChunk::of(&encoded_tree(&group.public)?, offset, max_len)
            }
        };
        tree_answer(request.epoch, request.offset, chunk)
    }

    pub async fn list(&self, caller: &ClientId) -> Result<Vec<GroupEpoch>, ServiceError> {
        let groups = self.store.groups_of(caller).await?;
        Ok(group_epochs(groups))
    }

    /// The groups hosted here that any client of `caller`'s user is a member of.
    pub async fn list_of_user(&self, caller: &ClientId) -> Result<Vec<GroupEpoch>, ServiceError> {
        let groups = self.store.groups_of_user(caller.user_id.as_str()).await?;
        Ok(group_epochs(groups))
    }

    /// Whether this server hosts the group.
    pub async fn hosts(&self, group_id: &[u8]) -> Result<bool, ServiceError> {
        Ok(self.store.group_exists(group_id).await?)
    }

    /// The groups a client is a member of (before it goes, to propose its removal after).
    pub async fn memberships(&self, client: &ClientId) -> Result<Vec<Vec<u8>>, ServiceError> {
        Ok(self
            .store
            .groups_of(client)
            .await?
            .into_iter()
            .map(|(group_id, _)| group_id)
            .collect())
    }

    /// As each group's external sender, proposes to remove a client that no longer exists (it
    /// was removed, or its user deleted) from every group in `group_ids`. Members learn of it at
    /// once and the group's next commit must include it. Failures are logged, not returned: the
    /// client is gone either way.
    pub async fn remove_departed(&self, departed: &ClientId, group_ids: &[Vec<u8>]) {
        for group_id in group_ids {
            if let Err(e) = self.propose_removal(departed, group_id).await {
                tracing::warn!(
                    client = %departed,
                    group = %hex::encode(group_id),
                    error = %e,
                    "cannot propose the removal of a departed client"
                );
            }
        }
    }

    /// Stores a group's transition together with its fan-out (local queues, and one outbox
    /// delivery per peer for remote members) in one commit; then tells the connected recipients
    /// and wakes the outbox.
    async fn store_transition(
        &self,
        group_id: &[u8],
        mut transition: GroupTransition,
    ) -> Result<Result<(), GroupRefusal>, ServiceError> {
        let envelopes = std::mem::take(&mut transition.envelopes);
        let (envelopes, remote) = fan_out::split(&self.domain, group_id, envelopes);
        transition.envelopes = envelopes.clone();
        transition.remote = remote;
        let now_ms = self.clock.now_ms();
        let outcome = self
            .store
            .commit_group(group_id, transition, now_ms, self.queue_limits())
            .await?;
        if let Ok(outcomes) = &outcome {
            super::announce_queued(&*self.sessions, &envelopes, outcomes, now_ms);
            self.outbox_wake.wake();
        }
        Ok(outcome.map(|_| ()))
    }

    fn queue_limits(&self) -> QueueLimits {
        super::queues::queue_limits(&self.queues)
    }

    async fn load(&self, group_id: &[u8]) -> Result<LoadedGroup, ServiceError> {
        let stored = self
            .store
            .group(group_id)
            .await?
            .ok_or(ServiceError::UnknownGroup)?;
        let (storage, public) = cpu_bound(|| {
            let storage = GroupStateStorage::from_entries(group_id, &stored.public_state)
                .map_err(|e| corrupt(&format!("cannot read group state: {e}")))?;
            let public = storage
                .load(group_id)
                .map_err(|e| corrupt(&format!("cannot load group state: {e}")))?
                .ok_or_else(|| corrupt("stored group has no state"))?;
            Ok::<_, ServiceError>((storage, public))
        })?;
        Ok(LoadedGroup {
            stored,
            storage,
            public,
        })
    }

    /// What the pure check knows of this server.
    fn host(&self) -> Host<'_> {
        Host {
            domain: &self.domain,
            published_keys: self.accounts.published_keys(),
            crypto: &self.crypto,
        }
    }

    /// The clients `leaves` are, each verified as [`Groups::verify_leaf`] does, in order.
    async fn verify_leaves(&self, leaves: &[&LeafNode]) -> Result<Vec<ClientId>, ServiceError> {
        let mut clients = Vec::with_capacity(leaves.len());
        for leaf in leaves {
            clients.push(self.verify_leaf(leaf).await?);
        }
        Ok(clients)
    }

    /// Checks a new or changed leaf: its credential is a valid credential of this server, for a
    /// client that exists, with the leaf's signature key.
    async fn verify_leaf(&self, leaf: &LeafNode) -> Result<ClientId, ServiceError> {
        let credential = leaf_credential(leaf)?;
        let domain = UserId::domain_of(credential.content.client.user_id.as_str()).to_owned();
        if domain != self.domain {
            // A member of another homeserver: its credential must verify under that server's keys.
            let federation = self.federation.as_ref().ok_or_else(|| {
                ServiceError::InvalidMemberCredential(format!("{domain} is not a peer"))
            })?;
            let keys = DomainKeys {
                keys: federation.domain_keys(&domain).await?,
                domain,
            };
            return verify_member(
                leaf.signature_key().as_slice(),
                &credential,
                &keys,
                self.clock.now(),
            )
            .map_err(|e| ServiceError::InvalidMemberCredential(e.to_string()));
        }
        let keys = DomainKeys {
            domain: self.domain.clone(),
            keys: self.accounts.published_keys(),
        };
        let client = verify_member(
            leaf.signature_key().as_slice(),
            &credential,
            &keys,
            self.clock.now(),
        )
        .map_err(|e| ServiceError::InvalidMemberCredential(e.to_string()))?;
        let registered = self.accounts.signature_key(&client).await?;
        if registered.map(|key| key.to_bytes().to_vec())
            != Some(leaf.signature_key().as_slice().to_vec())
        {
            return Err(ServiceError::InvalidMemberCredential(format!(
                "{client} is not a registered client with this key"
            )));
        }
        Ok(client)
    }
}

fn group_refusal(refusal: GroupRefusal) -> ServiceError {
    match refusal {
        GroupRefusal::WrongEpoch { current } => ServiceError::WrongEpoch { current },
        GroupRefusal::QueueFull(full) => ServiceError::QueueFull { full },
        GroupRefusal::Unknown | GroupRefusal::Exists => ServiceError::UnknownGroup,
        GroupRefusal::MemberGone(client) => ServiceError::InvalidMemberCredential(format!(
            "{} device {} is not a registered client",
            client.user_id, client.device_id
        )),
        // Another client's bytes, sent again while the first was being stored.
        GroupRefusal::Replayed => ServiceError::Forbidden,
        // Callers that remember requests answer a repeat themselves; others never meet one.
        GroupRefusal::Repeated(_) => ServiceError::Store(crate::store::StoreError::Corrupt(
            "an unexpected repeated request".into(),
        )),
    }
}

/// Group ids with their epochs, as the wire lists them.
fn group_epochs(groups: Vec<(Vec<u8>, u64)>) -> Vec<GroupEpoch> {
    groups
        .into_iter()
        .map(|(group_id, epoch)| GroupEpoch {
            group_id: group_id.into(),
            epoch,
        })
        .collect()
}

/// The answer holding `chunk` of the tree of `epoch`, asked from `offset`.
fn tree_answer(epoch: u64, offset: u32, chunk: TreeChunk) -> Result<GroupTreeChunk, ServiceError> {
    let total_len =
        u32::try_from(chunk.total_len).map_err(|_| corrupt("a ratchet tree longer than 4 GiB"))?;
    Ok(GroupTreeChunk {
        epoch,
        total_len,
        offset,
        chunk: chunk.bytes.into(),
    })
}

/// The group's current `RatchetTree`, TLS-encoded.
fn encoded_tree(public: &PublicGroup) -> Result<Vec<u8>, ServiceError> {
    cpu_bound(|| {
        public
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(|e| invalid(&e.to_string()))
    })
}

/// The digest a group request is remembered by (`RequestRecord::digest`).
fn request_digest(mls_message: &[u8]) -> [u8; 32] {
    sha2::Digest::finalize(sha2::Digest::chain_update(
        sha2::Sha256::default(),
        mls_message,
    ))
    .into()
}

/// Every member of a group as (client, leaf index), as its leaf's credential names it (checked
/// when the leaf joined).
fn members_of(public: &PublicGroup) -> Result<Members, ServiceError> {
    let mut members = Vec::new();
    for member in public.members() {
        let leaf = public
            .leaf(member.index)
            .ok_or_else(|| corrupt("a member without a leaf"))?;
        members.push((leaf_credential(leaf)?.content.client, member.index.u32()));
    }
    Ok(members)
}
