//! The group service (delivery service): tracks each group hosted here with an openmls
//! `PublicGroup`, verifies and orders commits, enforces roles, checks member credentials, and fans
//! MLS messages and Welcomes out to members' queues. Owns the group tables.

use std::collections::BTreeSet;
use std::sync::Arc;

use openmls::prelude::{
    BasicCredential, ExtensionType, ExternalProposal, ExternalSender, LeafNode, LeafNodeIndex,
    MlsMessageBodyIn, MlsMessageIn, ProcessedMessageContent, Proposal, ProposalStore,
    ProtocolMessage, PublicGroup, PublicProcessMessageError, RatchetTreeIn, Sender,
    SenderExtensionIndex, SignatureScheme, StagedCommit, ValidationError,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_rust_crypto::RustCrypto;
use tls_codec::{Deserialize, Serialize};

use super::group_state::GroupStateStorage;
use super::{cpu_bound, Accounts, ServiceError, Sessions};
use crate::clock::Clock;
use crate::config::{QueuePolicy, ServerConfig};
use crate::identity::{verify_member, DomainKeys};
use crate::protocol::{
    ClientCredential, ClientId, CreateGroupRequest, DeleteGroupRequest, DeliverRequest,
    DeliveryItem, FetchGroupTreeRequest, GetGroupRequest, GroupDeleted, GroupEpoch, GroupMember,
    GroupRoles, GroupState, GroupTreeChunk, MessageAccepted, MessageKind, Role, SendCommitRequest,
    SendMessageRequest, SendProposalRequest, ServerNotice, MAX_INLINE_TREE_LEN, MAX_TREE_CHUNK_LEN,
    ROLES_EXTENSION_TYPE,
};
use crate::store::{
    Admission, Enqueued, Envelope, GroupMemberRow, GroupRefusal, GroupTransition, OutgoingDelivery,
    PublicState, QueueLimits, Remembered, RequestRecord, SendView, Store, StoredGroup, TreeChunk,
};

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
        let asker = (caller.user_id.as_str(), caller.device_id);
        Ok(self
            .store
            .recent_request(group_id, digest, asker, now_ms)
            .await?)
    }

    /// The answer to `caller` sending bytes another client sent first (within the dedupe window):
    /// what it would be told of any request it may not make, and nothing of the original's
    /// answer. A member is refused as the bytes' sender is another client; a non-member learns
    /// only that it is not a member.
    async fn replay_refusal(&self, caller: &ClientId, group_id: &[u8]) -> ServiceError {
        let membership = self
            .store
            .group_membership(caller.user_id.as_str(), caller.device_id, group_id)
            .await;
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
            .map_err(|e| invalid(format!("the ratchet tree does not parse: {e}")))?;
        let storage = GroupStateStorage::default();
        let (public, _) = PublicGroup::from_external(
            &self.crypto,
            &storage,
            tree,
            group_info,
            ProposalStore::new(),
        )
        .map_err(|e| invalid(format!("the group state is not valid: {e}")))?;
        if public.group_context().epoch().as_u64() != 0 {
            return Err(invalid("a new group starts at epoch 0".into()));
        }
        let members = self.verified_members(&public).await?;
        if members.len() != 1 || members[0].0 != *caller {
            return Err(invalid(
                "a new group holds exactly one member: the creating client".into(),
            ));
        }
        self.check_group_context(&public)?;
        let roles = group_roles(&public)?;
        if roles.admins.len() != 1 || !roles.is_admin(caller.user_id.as_str()) {
            return Err(invalid(
                "a new group's roles extension names its creator as the only Admin".into(),
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

    pub async fn commit(
        &self,
        caller: &ClientId,
        request: SendCommitRequest,
    ) -> Result<GroupEpoch, ServiceError> {
        let message = MlsMessageIn::tls_deserialize_exact(request.commit.as_slice())
            .map_err(|e| invalid(format!("the commit does not parse: {e}")))?;
        let public_message = match message.extract() {
            MlsMessageBodyIn::PublicMessage(message) => message,
            _ => return Err(invalid("a commit travels as a PublicMessage".into())),
        };
        let protocol_message = ProtocolMessage::from(public_message);
        let group_id = protocol_message.group_id().as_slice().to_vec();
        // A retry of a commit that was accepted (its answer lost) gets the first answer.
        let digest = request_digest(request.commit.as_slice());
        let now_ms = self.clock.now_ms();
        match self.remembered(caller, &group_id, digest, now_ms).await? {
            Remembered::Retry(epoch) => {
                return Ok(GroupEpoch {
                    group_id: group_id.into(),
                    epoch,
                })
            }
            Remembered::Replay => return Err(self.replay_refusal(caller, &group_id).await),
            Remembered::New => {}
        }
        let mut group = self.load(&group_id).await?;
        let from_epoch = group.stored.epoch;
        if protocol_message.epoch().as_u64() != from_epoch {
            return Err(ServiceError::WrongEpoch {
                current: from_epoch,
            });
        }
        let old_members = self.verified_members(&group.public).await?;
        let processed = cpu_bound(|| group.public.process_message(&self.crypto, protocol_message))
            .map_err(|e| match e {
                PublicProcessMessageError::ValidationError(ValidationError::WrongEpoch) => {
                    ServiceError::WrongEpoch {
                        current: from_epoch,
                    }
                }
                other => invalid(format!("the commit is not valid: {other}")),
            })?;
        let sender = processed.sender().clone();
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(invalid("the message is not a commit".into()));
        };
        // The committer's leaf in the new epoch's tree, by its signature key once merged (a
        // member keeps its leaf; a client joining by external commit takes a free one).
        let committer_key = match sender {
            Sender::Member(sender_leaf) => {
                check_sender_is_caller(&old_members, sender_leaf, caller)?;
                self.check_member_commit(caller, &group, sender_leaf, &staged)?;
                group
                    .public
                    .leaf(sender_leaf)
                    .map(|leaf| leaf.signature_key().as_slice().to_vec())
                    .ok_or_else(|| invalid("the committer has no leaf".into()))?
            }
            Sender::NewMemberCommit => {
                self.check_external_commit(caller, &group, &old_members, &staged)?;
                staged
                    .update_path_leaf_node()
                    .map(|leaf| leaf.signature_key().as_slice().to_vec())
                    .ok_or_else(|| invalid("an external commit carries a path".into()))?
            }
            _ => return Err(invalid("only members commit here".into())),
        };
        // Additions: each new member's credential checked, Welcome refs collected.
        let mut added = Vec::new();
        for add in staged.add_proposals() {
            let key_package = add.add_proposal().key_package();
            let client = self.verify_leaf(key_package.leaf_node()).await?;
            let key_ref = key_package
                .hash_ref(&self.crypto)
                .map_err(|e| invalid(e.to_string()))?;
            added.push((client, key_ref.as_slice().to_vec()));
        }
        // Updates (proposed by reference; checked on arrival too): each new leaf's credential
        // must still be its proposer's.
        for queued in staged.queued_proposals() {
            if let (Proposal::Update(update), Sender::Member(proposer)) =
                (queued.proposal(), queued.sender())
            {
                let proposer = old_members
                    .iter()
                    .find(|(_, leaf)| *leaf == proposer.u32())
                    .map(|(client, _)| client)
                    .ok_or_else(|| invalid("an Update's proposer is not a member".into()))?;
                if self.verify_leaf(update.leaf_node()).await? != *proposer {
                    return Err(ServiceError::InvalidMemberCredential(
                        "an Update's new leaf is for another client".into(),
                    ));
                }
            }
        }
        // A changed leaf of the committer: its credential must still vouch for the committer.
        if let Some(leaf) = staged.update_path_leaf_node() {
            if self.verify_leaf(leaf).await? != *caller {
                return Err(ServiceError::InvalidMemberCredential(
                    "the committer's new leaf is for another client".into(),
                ));
            }
        }

        cpu_bound(|| {
            group
                .public
                .merge_commit(&group.storage, *staged)
                .map_err(|e| invalid(format!("the commit cannot be merged: {e}")))?;
            let committer = group
                .public
                .members()
                .find(|member| member.signature_key == committer_key)
                .map(|member| member.index)
                .ok_or_else(|| invalid("the committer has no leaf in the new epoch".into()))?;
            self.check_group_info(&group.public, committer, request.group_info.as_slice())?;
            self.check_group_context(&group.public)
        })?;
        let new_epoch = group.public.group_context().epoch().as_u64();

        let welcome = match (&request.welcome, added.is_empty()) {
            (None, true) => None,
            (Some(welcome), false) => {
                cpu_bound(|| self.check_welcome(welcome.as_slice(), &added))?;
                Some(welcome.as_slice().to_vec())
            }
            (None, false) => {
                return Err(ServiceError::WelcomeMismatch(
                    "the commit adds members but carries no Welcome".into(),
                ))
            }
            (Some(_), true) => {
                return Err(ServiceError::WelcomeMismatch(
                    "the commit adds nobody but carries a Welcome".into(),
                ))
            }
        };

        let members = self.verified_members(&group.public).await?;
        // Roles are what the group context's roles extension says, for the users still in it.
        let listed = group_roles(&group.public)?;
        let mut roles: Vec<(String, bool)> = Vec::new();
        for (client, _) in &members {
            let user = client.user_id.as_str();
            if !roles.iter().any(|(known, _)| known == user) {
                roles.push((user.to_owned(), listed.is_admin(user)));
            }
        }
        if !members.is_empty() && !roles.iter().any(|(_, admin)| *admin) {
            return Err(ServiceError::LastAdmin);
        }
        let leaving: Vec<(String, u32)> = group
            .stored
            .leaving
            .iter()
            .filter(|(user, device)| {
                members.iter().any(|(client, _)| {
                    client.user_id.as_str() == user && client.device_id == *device
                })
            })
            .cloned()
            .collect();

        // The commit goes to everyone who was a member (removed ones learn of their removal)
        // but the committing client; the Welcome to exactly the added clients.
        // A client this commit removes gets it only if its queue has room: it is out either way,
        // and a removed client that never reads must not be able to stop its own removal.
        let commit_payload = Arc::new(request.commit.as_slice().to_vec());
        let mut envelopes: Vec<Envelope> = old_members
            .iter()
            .filter(|(client, _)| client != caller)
            .map(|(client, _)| {
                let mut envelope = envelope(client, MessageKind::Mls, &commit_payload);
                if !members.iter().any(|(member, _)| member == client) {
                    envelope.admission = Admission::HandshakeIfRoom;
                }
                envelope
            })
            .collect();
        // The joiners' tree is kept on the server: their Welcomes need not carry it.
        let joiners_tree = match welcome {
            Some(_) => Some(encoded_tree(&group.public)?),
            None => None,
        };
        if let Some(welcome) = welcome {
            let welcome = Arc::new(welcome);
            envelopes.extend(
                added
                    .iter()
                    .map(|(client, _)| envelope(client, MessageKind::Welcome, &welcome)),
            );
        }
        let stored = StoredGroup {
            epoch: new_epoch,
            created_at: group.stored.created_at,
            roles,
            leaving: leaving.clone(),
            group_info: request.group_info.as_slice().to_vec(),
            public_state: snapshot(&group.storage)?,
        };
        let request = RequestRecord {
            group_id: group_id.clone(),
            digest,
            now_ms,
            answer: new_epoch,
            user_id: caller.user_id.as_str().to_owned(),
            device_id: caller.device_id,
        };
        let epoch = match self
            .store_transition(
                &group_id,
                GroupTransition {
                    from_epoch,
                    group: stored,
                    old_members: member_rows(&old_members),
                    members: delivery_rows(&members, &leaving),
                    envelopes,
                    remote: Vec::new(),
                    request: Some(request),
                    joiners_tree,
                },
            )
            .await?
        {
            Ok(()) => new_epoch,
            // The same commit, retried while the first was being stored.
            Err(GroupRefusal::Repeated(epoch)) => epoch,
            Err(refusal) => return Err(group_refusal(refusal)),
        };
        Ok(GroupEpoch {
            group_id: group_id.into(),
            epoch,
        })
    }

    /// The rules of a member's commit: every pending proposal carried (but those MLS leaves
    /// out), and each proposal within the committer's role.
    fn check_member_commit(
        &self,
        caller: &ClientId,
        group: &LoadedGroup,
        sender_leaf: LeafNodeIndex,
        staged: &StagedCommit,
    ) -> Result<(), ServiceError> {
        let admin = is_admin(&group.stored, caller);

        // Every proposal pending for this epoch must be in the commit, but those MLS itself
        // leaves out (RFC 9420 section 12.2, as openmls does): the committer's own Updates and
        // Updates of leaves that a pending Remove takes out.
        let pending = group
            .public
            .queued_proposals(&group.storage)
            .map_err(|e| corrupt(&format!("reading pending proposals: {e}")))?;
        let removed: BTreeSet<LeafNodeIndex> = pending
            .iter()
            .filter_map(|(_, queued)| match queued.proposal() {
                Proposal::Remove(remove) => Some(remove.removed()),
                _ => None,
            })
            .collect();
        let pending: BTreeSet<Vec<u8>> = pending
            .into_iter()
            .filter(|(_, queued)| match (queued.proposal(), queued.sender()) {
                (Proposal::Update(_), Sender::Member(proposer)) => {
                    *proposer != sender_leaf && !removed.contains(proposer)
                }
                _ => true,
            })
            .map(|(reference, _)| reference.as_slice().to_vec())
            .collect();
        let covered: BTreeSet<Vec<u8>> = staged
            .queued_proposals()
            .map(|queued| queued.proposal_reference_ref().as_slice().to_vec())
            .collect();
        if !pending.is_subset(&covered) {
            return Err(ServiceError::ProposalsNotCommitted);
        }

        // Roles: the committer's own proposals follow its role; proposals by reference were
        // checked when they were proposed. Anyone may remove (or update) their own leaf.
        let committer = Sender::Member(sender_leaf);
        for queued in staged.queued_proposals() {
            let own = *queued.sender() == committer;
            match queued.proposal() {
                Proposal::Add(_) | Proposal::GroupContextExtensions(_) if !admin => {
                    return Err(ServiceError::NotAnAdmin)
                }
                Proposal::Remove(remove) => {
                    let self_removal = matches!(
                        queued.sender(),
                        Sender::Member(proposer) if *proposer == remove.removed()
                    );
                    if own && !self_removal && !admin {
                        return Err(ServiceError::NotAnAdmin);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The rules of an external commit (RFC 9420 section 12.4.3.2), which a client uses to join
    /// a group its user is in (a new device) or to rejoin one whose state it lost (resync): its
    /// user must have another client in the group, it may remove only its own old leaf, and it
    /// changes nothing else (no additions, no roles). Pending proposals cannot ride in an
    /// external commit, so one waits until a member has committed them.
    fn check_external_commit(
        &self,
        caller: &ClientId,
        group: &LoadedGroup,
        old_members: &[(ClientId, u32)],
        staged: &StagedCommit,
    ) -> Result<(), ServiceError> {
        // The caller itself (a resync), or another client of its user that stays.
        let vouched = old_members.iter().any(|(client, _)| {
            client == caller
                || (client.user_id == caller.user_id && !is_leaving(&group.stored, client))
        });
        if !vouched {
            return Err(ServiceError::Forbidden);
        }
        let pending = group
            .public
            .queued_proposals(&group.storage)
            .map_err(|e| corrupt(&format!("reading pending proposals: {e}")))?;
        if !pending.is_empty() {
            return Err(ServiceError::ProposalsNotCommitted);
        }
        let own_leaves: Vec<u32> = old_members
            .iter()
            .filter(|(client, _)| client == caller)
            .map(|(_, leaf)| *leaf)
            .collect();
        let mut removed_own = 0;
        for queued in staged.queued_proposals() {
            match queued.proposal() {
                Proposal::ExternalInit(_) => {}
                Proposal::Remove(remove) if own_leaves.contains(&remove.removed().u32()) => {
                    removed_own += 1;
                }
                // Anything else would let a device's rejoin change the group: refused.
                _ => return Err(ServiceError::Forbidden),
            }
        }
        // A client still in the group rejoins only in place of its old leaf.
        if removed_own != own_leaves.len() {
            return Err(ServiceError::Forbidden);
        }
        Ok(())
    }

    /// A Remove or Update proposal on its own: stored until a commit covers it, fanned out so
    /// members can commit it. A self-removal (leaving) takes the client out of delivery at once.
    pub async fn propose(
        &self,
        caller: &ClientId,
        request: SendProposalRequest,
    ) -> Result<(), ServiceError> {
        let message = MlsMessageIn::tls_deserialize_exact(request.proposal.as_slice())
            .map_err(|e| invalid(format!("the proposal does not parse: {e}")))?;
        let public_message = match message.extract() {
            MlsMessageBodyIn::PublicMessage(message) => message,
            _ => return Err(invalid("a proposal travels as a PublicMessage".into())),
        };
        let protocol_message = ProtocolMessage::from(public_message);
        let group_id = protocol_message.group_id().as_slice().to_vec();
        let digest = request_digest(request.proposal.as_slice());
        let now_ms = self.clock.now_ms();
        match self.remembered(caller, &group_id, digest, now_ms).await? {
            Remembered::Retry(_) => return Ok(()),
            Remembered::Replay => return Err(self.replay_refusal(caller, &group_id).await),
            Remembered::New => {}
        }
        let mut group = self.load(&group_id).await?;
        let epoch = group.stored.epoch;
        if protocol_message.epoch().as_u64() != epoch {
            return Err(ServiceError::WrongEpoch { current: epoch });
        }
        let members = self.verified_members(&group.public).await?;
        let processed = cpu_bound(|| group.public.process_message(&self.crypto, protocol_message))
            .map_err(|e| invalid(format!("the proposal is not valid: {e}")))?;
        let Sender::Member(sender_leaf) = *processed.sender() else {
            return Err(invalid("only members propose here".into()));
        };
        check_sender_is_caller(&members, sender_leaf, caller)?;
        let ProcessedMessageContent::ProposalMessage(queued) = processed.into_content() else {
            return Err(invalid("the message is not a proposal".into()));
        };
        // A proposal that could never be committed alongside those pending is refused now,
        // rather than blocking every later commit: one proposal per member's leaf.
        let pending = group
            .public
            .queued_proposals(&group.storage)
            .map_err(|e| corrupt(&format!("reading pending proposals: {e}")))?;
        if let Some(conflict) = conflicting_proposal(&pending, sender_leaf, queued.proposal()) {
            return Err(ServiceError::ProposalConflict(conflict.into()));
        }
        let mut leaving = group.stored.leaving.clone();
        match queued.proposal() {
            Proposal::Remove(remove) if remove.removed() == sender_leaf => {
                let admins_left = members.iter().any(|(client, _)| {
                    client != caller
                        && is_admin(&group.stored, client)
                        && !is_leaving(&group.stored, client)
                });
                if is_admin(&group.stored, caller) && !admins_left {
                    return Err(ServiceError::LastAdmin);
                }
                leaving.push((caller.user_id.as_str().to_owned(), caller.device_id));
            }
            Proposal::Remove(_) => {
                if !is_admin(&group.stored, caller) {
                    return Err(ServiceError::NotAnAdmin);
                }
            }
            Proposal::Update(update) => {
                // The new leaf must carry the proposer's own valid credential: garbage would
                // make every later commit fail, and another member's credential would let the
                // proposer pass for that member.
                if self.verify_leaf(update.leaf_node()).await? != *caller {
                    return Err(ServiceError::InvalidMemberCredential(
                        "an Update's new leaf must carry the proposer's own credential".into(),
                    ));
                }
            }
            _ => {
                return Err(invalid(
                    "only Remove and Update proposals are accepted on their own".into(),
                ))
            }
        }
        group
            .public
            .add_proposal(&group.storage, *queued)
            .map_err(|e| corrupt(&format!("storing the proposal: {e}")))?;
        let payload = Arc::new(request.proposal.as_slice().to_vec());
        let envelopes: Vec<Envelope> = members
            .iter()
            .filter(|(client, _)| client != caller && !is_leaving(&group.stored, client))
            .map(|(client, _)| envelope(client, MessageKind::Mls, &payload))
            .collect();
        let stored = StoredGroup {
            leaving: leaving.clone(),
            public_state: snapshot(&group.storage)?,
            ..group.stored.clone()
        };
        let request = RequestRecord {
            group_id: group_id.clone(),
            digest,
            now_ms,
            answer: 0,
            user_id: caller.user_id.as_str().to_owned(),
            device_id: caller.device_id,
        };
        match self
            .store_transition(
                &group_id,
                GroupTransition {
                    from_epoch: epoch,
                    group: stored,
                    old_members: member_rows(&members),
                    members: delivery_rows(&members, &leaving),
                    envelopes,
                    remote: Vec::new(),
                    request: Some(request),
                    joiners_tree: None,
                },
            )
            .await?
        {
            Ok(()) | Err(GroupRefusal::Repeated(_)) => Ok(()),
            Err(refusal) => Err(group_refusal(refusal)),
        }
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
            .group_membership(caller.user_id.as_str(), caller.device_id, group_id)
            .await?
            .ok_or(ServiceError::NotAMember)?;
        if !is_admin(&group.stored, caller) {
            return Err(ServiceError::NotAnAdmin);
        }
        let members = self.verified_members(&group.public).await?;
        let notice = ServerNotice::GroupDeleted(GroupDeleted {
            group_id: group_id.to_vec().into(),
            by: caller.clone(),
        })
        .tls_serialize_detached()
        .map_err(|e| invalid(e.to_string()))?;
        let notice = Arc::new(notice);
        let envelopes: Vec<Envelope> = members
            .iter()
            .filter(|(client, _)| client != caller)
            .map(|(client, _)| envelope(client, MessageKind::ServerNotice, &notice))
            .collect();
        let (envelopes, remote) = self.split(group_id, envelopes);
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

    pub async fn send(
        &self,
        caller: &ClientId,
        request: SendMessageRequest,
    ) -> Result<MessageAccepted, ServiceError> {
        let message = MlsMessageIn::tls_deserialize_exact(request.message.as_slice())
            .map_err(|e| invalid(format!("the message does not parse: {e}")))?;
        let private_message = match message.extract() {
            MlsMessageBodyIn::PrivateMessage(message) => message,
            _ => {
                return Err(invalid(
                    "an application message travels as a PrivateMessage".into(),
                ))
            }
        };
        let protocol_message = ProtocolMessage::from(private_message);
        let group_id = protocol_message.group_id().as_slice().to_vec();
        // A retry of a message that was accepted (its answer lost) is not queued twice.
        // What a send needs of its group is kept in a small record at every change of the group
        // (its epoch and receiving members): no tree or credential is decoded here. The same
        // read tells whether this very message was accepted before.
        let digest = request_digest(request.message.as_slice());
        let accepted_at_ms = self.clock.now_ms();
        let asker = (caller.user_id.as_str(), caller.device_id);
        let view = match self
            .store
            .prepare_send(&group_id, digest, asker, accepted_at_ms)
            .await?
        {
            (Remembered::Retry(first), _) => {
                return Ok(MessageAccepted {
                    accepted_at_ms: first,
                    queue_full: Vec::new(),
                })
            }
            (Remembered::Replay, _) => return Err(self.replay_refusal(caller, &group_id).await),
            (Remembered::New, Some(view)) => view,
            (Remembered::New, None) => self.send_view_from_state(&group_id).await?,
        };
        let is_caller = |(user_id, device_id): &(String, u32)| {
            user_id == caller.user_id.as_str() && *device_id == caller.device_id
        };
        // Leaving clients are not in the view: they send nothing more.
        if !view.members.iter().any(is_caller) {
            return Err(ServiceError::NotAMember);
        }
        if protocol_message.epoch().as_u64() != view.epoch {
            return Err(ServiceError::WrongEpoch {
                current: view.epoch,
            });
        }
        let payload = Arc::new(request.message.as_slice().to_vec());
        // Members that read the group's log get the message once, in the log; the others a copy
        // in their queues.
        let mut log_readers = Vec::new();
        let mut envelopes = Vec::new();
        for (member, reads_log) in view.members.iter().zip(&view.log_readers) {
            if is_caller(member) {
                continue;
            }
            if *reads_log {
                log_readers.push(member);
                continue;
            }
            envelopes.push(Envelope {
                user_id: member.0.clone(),
                device_id: member.1,
                kind: MessageKind::Mls as u8,
                admission: Admission::Message,
                payload: payload.clone(),
            });
        }
        let (envelopes, remote) = self.split(&group_id, envelopes);
        let recipients: Vec<ClientId> = envelopes.iter().map(super::envelope_client).collect();
        let request = RequestRecord {
            group_id: group_id.clone(),
            digest,
            now_ms: accepted_at_ms,
            answer: accepted_at_ms,
            user_id: caller.user_id.as_str().to_owned(),
            device_id: caller.device_id,
        };
        // Application messages are refused queue by queue, never as a whole.
        let log = (!log_readers.is_empty()).then(|| payload.clone());
        let (outcomes, logged) = match self
            .store
            .deliver(
                envelopes.clone(),
                log,
                remote,
                accepted_at_ms,
                self.queue_limits(),
                Some(request),
            )
            .await?
        {
            Ok(outcomes) => outcomes,
            Err(GroupRefusal::Repeated(first)) => {
                return Ok(MessageAccepted {
                    accepted_at_ms: first,
                    queue_full: Vec::new(),
                })
            }
            Err(refusal) => return Err(group_refusal(refusal)),
        };
        self.outbox_wake.wake();
        super::announce_queued(&*self.sessions, &envelopes, &outcomes, accepted_at_ms);
        let mut queue_full: Vec<ClientId> = recipients
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| **outcome == Enqueued::QueueFull)
            .map(|(client, _)| client.clone())
            .collect();
        match logged {
            Some(Enqueued::Logged { gseq }) => {
                let group_id: Arc<[u8]> = Arc::from(group_id.as_slice());
                let message = super::PushedMessage {
                    seq: gseq,
                    enqueued_at_ms: accepted_at_ms,
                    kind: MessageKind::Mls,
                    carried: true,
                    payload: payload.clone(),
                };
                let readers: Vec<(&str, u32)> = log_readers
                    .iter()
                    .map(|(user_id, device_id)| (user_id.as_str(), *device_id))
                    .collect();
                self.sessions.log_appended(&readers, &group_id, &message);
            }
            Some(_) => queue_full.extend(log_readers.iter().map(|(user_id, device_id)| ClientId {
                user_id: crate::protocol::Text::truncated(user_id),
                device_id: *device_id,
            })),
            None => {}
        }
        Ok(MessageAccepted {
            accepted_at_ms,
            queue_full,
        })
    }

    /// The send view of a group stored before send views were kept, from its full state.
    async fn send_view_from_state(&self, group_id: &[u8]) -> Result<SendView, ServiceError> {
        let group = self.load(group_id).await?;
        let members: Vec<(String, u32)> = self
            .verified_members(&group.public)
            .await?
            .into_iter()
            .filter(|(client, _)| !is_leaving(&group.stored, client))
            .map(|(client, _)| (client.user_id.as_str().to_owned(), client.device_id))
            .collect();
        // Groups this old have no log readers: a client's window opens with a group change.
        Ok(SendView {
            epoch: group.stored.epoch,
            log_readers: vec![false; members.len()],
            members,
        })
    }

    pub async fn get(
        &self,
        caller: &ClientId,
        request: GetGroupRequest,
    ) -> Result<GroupState, ServiceError> {
        let group_id = request.group_id.as_slice();
        let group = self.load(group_id).await?;
        let membership = self
            .store
            .group_membership(caller.user_id.as_str(), caller.device_id, group_id)
            .await?;
        let verified = self.verified_members(&group.public).await?;
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
        request: FetchGroupTreeRequest,
    ) -> Result<GroupTreeChunk, ServiceError> {
        let group_id = request.group_id.as_slice();
        if !self.store.group_exists(group_id).await? {
            return Err(ServiceError::UnknownGroup);
        }
        let membership = self
            .store
            .group_membership(caller.user_id.as_str(), caller.device_id, group_id)
            .await?;
        let Some(membership) = membership else {
            // A client of a user in the group gets the current tree, to join by external commit.
            let group = self.load(group_id).await?;
            let verified = self.verified_members(&group.public).await?;
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
        let groups = self
            .store
            .groups_of(caller.user_id.as_str(), caller.device_id)
            .await?;
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
            .groups_of(client.user_id.as_str(), client.device_id)
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

    async fn propose_removal(
        &self,
        departed: &ClientId,
        group_id: &[u8],
    ) -> Result<(), ServiceError> {
        // A commit may land in between: then propose again at the new epoch.
        const ATTEMPTS: usize = 3;
        for _ in 0..ATTEMPTS {
            let mut group = self.load(group_id).await?;
            let members = self.verified_members(&group.public).await?;
            let Some(leaf) = members
                .iter()
                .find(|(client, _)| client == departed)
                .map(|(_, leaf)| *leaf)
            else {
                return Ok(());
            };
            // Its removal is pending already (it was leaving, or an Admin proposed it): a
            // second Remove of the same leaf could never be committed.
            let pending = group
                .public
                .queued_proposals(&group.storage)
                .map_err(|e| corrupt(&format!("reading pending proposals: {e}")))?;
            let removal_pending = pending.iter().any(|(_, queued)| {
                matches!(queued.proposal(), Proposal::Remove(remove) if remove.removed().u32() == leaf)
            });
            if removal_pending {
                return Ok(());
            }
            let (sender_index, public_key) = self
                .server_sender(&group.public)
                .ok_or_else(|| invalid("the group lists no key of this server".into()))?;
            let signing_key = self
                .accounts
                .server_signer(&public_key)
                .ok_or_else(|| invalid("this server no longer holds the group's key".into()))?;
            let signer = SignatureKeyPair::from_raw(
                SignatureScheme::ED25519,
                signing_key.to_bytes().to_vec(),
                public_key,
            );
            let proposal = ExternalProposal::new_remove::<OpenMlsRustCrypto>(
                LeafNodeIndex::new(leaf),
                group.public.group_id().clone(),
                group.public.group_context().epoch(),
                &signer,
                SenderExtensionIndex::new(sender_index),
            )
            .map_err(|e| invalid(format!("cannot make the proposal: {e}")))?
            .tls_serialize_detached()
            .map_err(|e| invalid(e.to_string()))?;
            // The server records its own proposal like any other, so commits can cover it.
            let MlsMessageBodyIn::PublicMessage(message) =
                MlsMessageIn::tls_deserialize_exact(proposal.as_slice())
                    .map_err(|e| invalid(e.to_string()))?
                    .extract()
            else {
                return Err(invalid(
                    "an external proposal is not a PublicMessage".into(),
                ));
            };
            let processed = cpu_bound(|| {
                group
                    .public
                    .process_message(&self.crypto, ProtocolMessage::from(message))
            })
            .map_err(|e| invalid(format!("the server's own proposal: {e}")))?;
            let ProcessedMessageContent::ProposalMessage(queued) = processed.into_content() else {
                return Err(invalid(
                    "the server's own proposal is not a proposal".into(),
                ));
            };
            group
                .public
                .add_proposal(&group.storage, *queued)
                .map_err(|e| corrupt(&format!("storing the proposal: {e}")))?;
            let mut leaving = group.stored.leaving.clone();
            leaving.push((departed.user_id.as_str().to_owned(), departed.device_id));
            let payload = Arc::new(proposal);
            let envelopes: Vec<Envelope> = members
                .iter()
                .filter(|(client, _)| client != departed && !is_leaving(&group.stored, client))
                .map(|(client, _)| envelope(client, MessageKind::Mls, &payload))
                .collect();
            let epoch = group.stored.epoch;
            let stored = StoredGroup {
                leaving: leaving.clone(),
                public_state: snapshot(&group.storage)?,
                ..group.stored.clone()
            };
            let transition = GroupTransition {
                from_epoch: epoch,
                group: stored,
                old_members: member_rows(&members),
                members: delivery_rows(&members, &leaving),
                envelopes,
                remote: Vec::new(),
                request: None,
                joiners_tree: None,
            };
            match self.store_transition(group_id, transition).await? {
                Ok(()) => {
                    tracing::info!(client = %departed, group = %hex::encode(group_id), "proposed the removal of a departed client");
                    return Ok(());
                }
                Err(GroupRefusal::WrongEpoch { .. }) => continue,
                Err(GroupRefusal::Unknown | GroupRefusal::Exists) => return Ok(()),
                Err(
                    refusal @ (GroupRefusal::QueueFull(_)
                    | GroupRefusal::Repeated(_)
                    | GroupRefusal::Replayed
                    | GroupRefusal::MemberGone { .. }),
                ) => return Err(group_refusal(refusal)),
            }
        }
        Err(ServiceError::WrongEpoch { current: 0 })
    }

    /// This server's position in a group's external senders, and the public key it is listed
    /// with (one of the server's credential keys, with its domain as the credential identity).
    fn server_sender(&self, public: &PublicGroup) -> Option<(u32, Vec<u8>)> {
        let senders = public.group_context().extensions().external_senders()?;
        let ours: Vec<(Vec<u8>, Vec<u8>)> = self
            .accounts
            .published_keys()
            .into_iter()
            .filter_map(|key| {
                let sender = ExternalSender::new(
                    key.public_key.as_slice().into(),
                    BasicCredential::new(self.domain.as_bytes().to_vec()).into(),
                );
                let encoded = sender.tls_serialize_detached().ok()?;
                Some((key.public_key.as_slice().to_vec(), encoded))
            })
            .collect();
        senders.iter().enumerate().find_map(|(index, sender)| {
            let encoded = sender.tls_serialize_detached().ok()?;
            ours.iter()
                .find(|(_, candidate)| *candidate == encoded)
                .map(|(public_key, _)| (index as u32, public_key.clone()))
        })
    }

    /// Stores a group's transition together with its fan-out (local queues, and one outbox
    /// delivery per peer for remote members) in one commit; then tells the connected recipients
    /// and wakes the outbox.
    async fn store_transition(
        &self,
        group_id: &[u8],
        mut transition: GroupTransition,
    ) -> Result<Result<(), GroupRefusal>, ServiceError> {
        let (envelopes, remote) = self.split(group_id, std::mem::take(&mut transition.envelopes));
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

    /// Keeps the envelopes for clients of this server, and turns those for clients of other
    /// homeservers into one delivery per peer (each message once, with its recipient clients).
    fn split(
        &self,
        group_id: &[u8],
        envelopes: Vec<Envelope>,
    ) -> (Vec<Envelope>, Vec<OutgoingDelivery>) {
        let mut local = Vec::new();
        let mut per_peer: Vec<(String, Vec<DeliveryItem>)> = Vec::new();
        for envelope in envelopes {
            let domain = envelope
                .user_id
                .rsplit_once('@')
                .map_or("", |(_, domain)| domain)
                .to_owned();
            if domain == self.domain {
                local.push(envelope);
                continue;
            }
            let recipient = super::envelope_client(&envelope);
            let kind = match envelope.kind {
                1 => MessageKind::Welcome,
                2 => MessageKind::ServerNotice,
                _ => MessageKind::Mls,
            };
            let index = match per_peer.iter().position(|(peer, _)| *peer == domain) {
                Some(index) => index,
                None => {
                    per_peer.push((domain, Vec::new()));
                    per_peer.len() - 1
                }
            };
            let items = &mut per_peer[index].1;
            match items.iter_mut().find(|item| {
                item.kind == kind && item.payload.as_slice() == envelope.payload.as_slice()
            }) {
                Some(item) => item.recipients.push(recipient),
                None => items.push(DeliveryItem {
                    recipients: vec![recipient],
                    kind,
                    payload: envelope.payload.as_slice().to_vec().into(),
                }),
            }
        }
        let remote = per_peer
            .into_iter()
            .filter_map(|(peer, items)| {
                let mut delivery_id = vec![0u8; 16];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut delivery_id);
                let delivery = DeliverRequest {
                    delivery_id: delivery_id.into(),
                    group_id: group_id.to_vec().into(),
                    items,
                };
                let encoded = delivery.tls_serialize_detached().ok()?;
                Some(OutgoingDelivery {
                    peer,
                    delivery: encoded,
                })
            })
            .collect();
        (local, remote)
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

    /// Every member as (client, leaf index), each leaf's credential verified.
    async fn verified_members(
        &self,
        public: &PublicGroup,
    ) -> Result<Vec<(ClientId, u32)>, ServiceError> {
        let mut members = Vec::new();
        for member in public.members() {
            let leaf = public
                .leaf(member.index)
                .ok_or_else(|| corrupt("a member without a leaf"))?;
            members.push((self.credential_client(leaf)?, member.index.u32()));
        }
        Ok(members)
    }

    /// The client a leaf's credential names, without checking it (for existing members).
    fn credential_client(&self, leaf: &LeafNode) -> Result<ClientId, ServiceError> {
        Ok(leaf_credential(leaf)?.content.client)
    }

    /// Checks a new or changed leaf: its credential is a valid credential of this server, for a
    /// client that exists, with the leaf's signature key.
    async fn verify_leaf(&self, leaf: &LeafNode) -> Result<ClientId, ServiceError> {
        let credential = leaf_credential(leaf)?;
        let domain = credential
            .content
            .client
            .user_id
            .as_str()
            .rsplit_once('@')
            .map_or("", |(_, domain)| domain)
            .to_owned();
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

    /// What every group hosted here must keep in its context, from creation on: this server as
    /// an external sender (so it can remove departed clients) and the roles extension, which
    /// every member must support (`required_capabilities`), so that a member without it can
    /// never be added and roles can always be changed.
    fn check_group_context(&self, public: &PublicGroup) -> Result<(), ServiceError> {
        if self.server_sender(public).is_none() {
            return Err(invalid(
                "the group must list this server as its external sender".into(),
            ));
        }
        let roles_required = public.required_capabilities().is_some_and(|required| {
            required
                .extension_types()
                .contains(&ExtensionType::Unknown(ROLES_EXTENSION_TYPE))
        });
        if !roles_required {
            return Err(invalid(
                "the group's required capabilities must include the roles extension".into(),
            ));
        }
        group_roles(public).map(|_| ())
    }

    /// The GroupInfo a commit carries must be the committer's, for the epoch the commit makes:
    /// signed by the committer's leaf, with the committed group context and confirmation tag
    /// (and, if it carries a ratchet tree, the merged tree). Checked field by field on the
    /// encoding (RFC 9420 section 12.4.3: the signed part is `group_context`, `extensions`,
    /// `confirmation_tag`, `signer`), with one signature verification: the tree the server holds
    /// is not verified again (that cost a signature verification per member and was most of a
    /// commit in a large group).
    fn check_group_info(
        &self,
        merged: &PublicGroup,
        committer: LeafNodeIndex,
        bytes: &[u8],
    ) -> Result<(), ServiceError> {
        use openmls::ciphersuite::signable::Verifiable;
        use openmls::ciphersuite::signature::OpenMlsSignaturePublicKey;
        use tls_codec::Size;

        let mismatch = |why: &str| ServiceError::GroupInfoMismatch(why.to_owned());
        let encoding = |e: tls_codec::Error| corrupt(&format!("encoding a GroupInfo part: {e}"));
        let group_info = parse_group_info(bytes)?;
        let encoded = group_info.tls_serialize_detached().map_err(encoding)?;
        let context = merged
            .group_context()
            .tls_serialize_detached()
            .map_err(encoding)?;
        let extensions_len = group_info.extensions().tls_serialized_len();
        let tag = merged
            .confirmation_tag()
            .tls_serialize_detached()
            .map_err(encoding)?;
        let signature_len = Verifiable::signature(&group_info).tls_serialized_len();
        let rest = encoded
            .strip_prefix(context.as_slice())
            .ok_or_else(|| mismatch("its group context is not the committed one"))?;
        let rest = rest
            .get(extensions_len..)
            .ok_or_else(|| mismatch("it is cut short"))?;
        let rest = rest
            .strip_prefix(tag.as_slice())
            .ok_or_else(|| mismatch("its confirmation tag is not the commit's"))?;
        let signer = match rest {
            [a, b, c, d, signature @ ..] if signature.len() == signature_len => {
                u32::from_be_bytes([*a, *b, *c, *d])
            }
            _ => return Err(mismatch("it is not laid out as a GroupInfo")),
        };
        if signer != committer.u32() {
            return Err(mismatch("it is not signed by the committer"));
        }
        if let Some(tree) = group_info.extensions().ratchet_tree() {
            let carried = tree
                .ratchet_tree()
                .tls_serialize_detached()
                .map_err(encoding)?;
            let held = merged
                .export_ratchet_tree()
                .tls_serialize_detached()
                .map_err(encoding)?;
            if carried != held {
                return Err(mismatch("its ratchet tree is not the committed one"));
            }
        }
        let leaf = merged
            .leaf(committer)
            .ok_or_else(|| mismatch("the committer has no leaf"))?;
        let key = OpenMlsSignaturePublicKey::new(
            leaf.signature_key().as_slice().to_vec().into(),
            merged.ciphersuite().signature_algorithm(),
        )
        .map_err(|_| mismatch("the committer's signature key is unusable"))?;
        group_info
            .verify(&self.crypto, &key)
            .map_err(|_| mismatch("its signature does not verify"))?;
        Ok(())
    }

    /// A Welcome must go to exactly the KeyPackages the commit adds.
    fn check_welcome(
        &self,
        bytes: &[u8],
        added: &[(ClientId, Vec<u8>)],
    ) -> Result<(), ServiceError> {
        let message = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|e| ServiceError::WelcomeMismatch(format!("it does not parse: {e}")))?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err(ServiceError::WelcomeMismatch("it is not a Welcome".into()));
        };
        let in_welcome: BTreeSet<Vec<u8>> = welcome
            .secrets()
            .iter()
            .map(|secrets| secrets.new_member().as_slice().to_vec())
            .collect();
        let in_commit: BTreeSet<Vec<u8>> =
            added.iter().map(|(_, key_ref)| key_ref.clone()).collect();
        if in_welcome != in_commit || in_welcome.len() != welcome.secrets().len() {
            return Err(ServiceError::WelcomeMismatch(
                "its recipients are not the KeyPackages the commit adds".into(),
            ));
        }
        Ok(())
    }
}

/// Why `proposal` from `sender` cannot join the proposals `pending` (a commit could never hold
/// both: RFC 9420 section 12.2 allows one proposal per leaf, a Remove winning over an Update).
fn conflicting_proposal(
    pending: &[(
        openmls::prelude::hash_ref::ProposalRef,
        openmls::prelude::QueuedProposal,
    )],
    sender: LeafNodeIndex,
    proposal: &Proposal,
) -> Option<&'static str> {
    let removal_pending = |leaf: LeafNodeIndex| {
        pending.iter().any(|(_, queued)| {
            matches!(queued.proposal(), Proposal::Remove(remove) if remove.removed() == leaf)
        })
    };
    let update_pending = |leaf: LeafNodeIndex| {
        pending.iter().any(|(_, queued)| {
            matches!(queued.proposal(), Proposal::Update(_))
                && *queued.sender() == Sender::Member(leaf)
        })
    };
    match proposal {
        Proposal::Remove(remove) if removal_pending(remove.removed()) => {
            Some("the member's removal is proposed already")
        }
        Proposal::Update(_) if removal_pending(sender) => Some("the proposer's removal is pending"),
        Proposal::Update(_) if update_pending(sender) => {
            Some("the proposer has an Update pending already")
        }
        _ => None,
    }
}

/// The roles extension of a group's context.
fn group_roles(public: &PublicGroup) -> Result<GroupRoles, ServiceError> {
    let extension = public
        .group_context()
        .extensions()
        .unknown(ROLES_EXTENSION_TYPE)
        .ok_or_else(|| invalid("the group context has no roles extension".into()))?;
    let roles = GroupRoles::tls_deserialize_exact(&extension.0)
        .map_err(|e| invalid(format!("the roles extension does not parse: {e}")))?;
    // Roles are compared byte for byte: only canonical (lower-case) user ids can name a user.
    for admin in &roles.admins {
        let canonical = admin
            .as_str()
            .parse::<crate::identity::UserId>()
            .is_ok_and(|user| user.as_str() == admin.as_str());
        if !canonical {
            return Err(invalid(
                "the roles extension names a user id not in its canonical lower-case form".into(),
            ));
        }
    }
    Ok(roles)
}

fn group_refusal(refusal: GroupRefusal) -> ServiceError {
    match refusal {
        GroupRefusal::WrongEpoch { current } => ServiceError::WrongEpoch { current },
        GroupRefusal::QueueFull(full) => ServiceError::QueueFull {
            full: full
                .into_iter()
                .map(|(user_id, device_id)| ClientId {
                    user_id: crate::protocol::Text::truncated(&user_id),
                    device_id,
                })
                .collect(),
        },
        GroupRefusal::Unknown | GroupRefusal::Exists => ServiceError::UnknownGroup,
        GroupRefusal::MemberGone { user_id, device_id } => ServiceError::InvalidMemberCredential(
            format!("{user_id} device {device_id} is not a registered client"),
        ),
        // Another client's bytes, sent again while the first was being stored.
        GroupRefusal::Replayed => ServiceError::Forbidden,
        // Callers that remember requests answer a repeat themselves; others never meet one.
        GroupRefusal::Repeated(_) => ServiceError::Store(crate::store::StoreError::Corrupt(
            "an unexpected repeated request".into(),
        )),
    }
}

/// Checks that the member at `sender_leaf` (a handshake's signer) is `caller`: a member may
/// not send another's commit or proposal as its own (`Forbidden`).
fn check_sender_is_caller(
    members: &[(ClientId, u32)],
    sender_leaf: LeafNodeIndex,
    caller: &ClientId,
) -> Result<(), ServiceError> {
    let sender = members
        .iter()
        .find(|(_, leaf)| *leaf == sender_leaf.u32())
        .map(|(client, _)| client)
        .ok_or_else(|| invalid("the sender is not a member".into()))?;
    if sender != caller {
        return Err(ServiceError::Forbidden);
    }
    Ok(())
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

/// Whether another client of `caller`'s user is in the group (and not leaving it): what lets
/// a new device of the user, or one that lost its state, read the group and join it by external
/// commit.
fn own_user_in(caller: &ClientId, group: &LoadedGroup, members: &[(ClientId, u32)]) -> bool {
    members
        .iter()
        .any(|(client, _)| client.user_id == caller.user_id && !is_leaving(&group.stored, client))
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

fn is_leaving(group: &StoredGroup, client: &ClientId) -> bool {
    group
        .leaving
        .iter()
        .any(|(user, device)| user == client.user_id.as_str() && *device == client.device_id)
}

/// The member rows that receive messages: the tree's members but those leaving.
fn delivery_rows(members: &[(ClientId, u32)], leaving: &[(String, u32)]) -> Vec<GroupMemberRow> {
    member_rows(members)
        .into_iter()
        .filter(|row| {
            !leaving
                .iter()
                .any(|(user, device)| *user == row.user_id && *device == row.device_id)
        })
        .collect()
}

fn is_admin(group: &StoredGroup, client: &ClientId) -> bool {
    group
        .roles
        .iter()
        .any(|(user, admin)| *admin && user == client.user_id.as_str())
}

fn envelope(client: &ClientId, kind: MessageKind, payload: &Arc<Vec<u8>>) -> Envelope {
    Envelope {
        user_id: client.user_id.as_str().to_owned(),
        device_id: client.device_id,
        kind: kind as u8,
        admission: super::queues::admission(kind, payload),
        payload: payload.clone(),
    }
}

fn member_rows(members: &[(ClientId, u32)]) -> Vec<GroupMemberRow> {
    members
        .iter()
        .map(|(client, leaf_index)| GroupMemberRow {
            user_id: client.user_id.as_str().to_owned(),
            device_id: client.device_id,
            leaf_index: *leaf_index,
        })
        .collect()
}

/// The `ClientCredential` inside a leaf's basic credential.
fn leaf_credential(leaf: &LeafNode) -> Result<ClientCredential, ServiceError> {
    let basic = BasicCredential::try_from(leaf.credential().clone()).map_err(|_| {
        ServiceError::InvalidMemberCredential("a leaf credential is not a basic credential".into())
    })?;
    ClientCredential::tls_deserialize_exact(basic.identity()).map_err(|e| {
        ServiceError::InvalidMemberCredential(format!("a leaf credential does not parse: {e}"))
    })
}

fn parse_group_info(
    bytes: &[u8],
) -> Result<openmls::messages::group_info::VerifiableGroupInfo, ServiceError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| invalid(format!("the GroupInfo does not parse: {e}")))?;
    match message.extract() {
        MlsMessageBodyIn::GroupInfo(group_info) => Ok(group_info),
        _ => Err(invalid(
            "expected an MLSMessage carrying a GroupInfo".into(),
        )),
    }
}

/// The group's current `RatchetTree`, TLS-encoded.
fn encoded_tree(public: &PublicGroup) -> Result<Vec<u8>, ServiceError> {
    cpu_bound(|| {
        public
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(|e| invalid(e.to_string()))
    })
}

fn snapshot(storage: &GroupStateStorage) -> Result<PublicState, ServiceError> {
    Ok(cpu_bound(|| storage.to_entries()))
}

/// The digest a group request is remembered by (`RequestRecord::digest`).
fn request_digest(mls_message: &[u8]) -> [u8; 32] {
    sha2::Digest::finalize(sha2::Digest::chain_update(
        sha2::Sha256::default(),
        mls_message,
    ))
    .into()
}

fn invalid(reason: String) -> ServiceError {
    ServiceError::InvalidMlsMessage(reason)
}

fn corrupt(reason: &str) -> ServiceError {
    ServiceError::Store(crate::store::StoreError::Corrupt(reason.to_owned()))
}
