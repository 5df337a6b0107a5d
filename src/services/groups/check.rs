//! The pure check every commit, proposal and removal goes through: from the group's state, the
//! message, the keys it needs and the time, to the group's transition or a refusal. It does no
//! I/O: [`super::operation`] loads the group, fetches keys and stores the transition around it.
//!
//! It runs in two halves because the leaves a message brings (new members, changed leaves),
//! whose credentials need keys (a peer's, perhaps) and a look at the registered clients, are known
//! only once openmls has processed the message: a `stage_*` function processes it and applies
//! every rule that needs no keys, naming the leaves; the matching `finish_*` takes the clients
//! those leaves were verified to be and makes the transition. openmls errors are mapped here, in
//! [`mls_error`] and [`processing_refusal`], and nowhere else.

use std::sync::Arc;

use openmls::prelude::{
    BasicCredential, ExternalProposal, ExternalSender, LeafNode, LeafNodeIndex, MlsMessageBodyIn,
    MlsMessageIn, ProcessedMessage, ProcessedMessageContent, Proposal, ProtocolMessage,
    PublicGroup, PublicProcessMessageError, QueuedProposal, Sender, SenderExtensionIndex,
    SignatureScheme, StagedCommit, ValidationError,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::{OpenMlsRustCrypto, RustCrypto};
use tls_codec::{Deserialize, Serialize};

use super::fan_out::{delivery_rows, envelope, member_rows};
use super::rules::{
    check_external_commit, check_group_context, check_group_info, check_member_commit,
    check_sender_is_caller, check_welcome, conflicting_proposal, group_roles, is_admin, is_leaving,
};
use super::{LoadedGroup, Members};
use crate::protocol::{ClientId, CredentialVerifyingKey, MessageKind};
use crate::services::group_state::GroupStateStorage;
use crate::services::{cpu_bound, ServiceError};
use crate::store::{Admission, Envelope, GroupTransition, PublicState, StoredGroup};

/// What the check knows of this server: its domain, the credential keys it publishes (one of
/// them is its external-sender key in every group it hosts) and openmls' crypto provider.
pub(super) struct Host<'a> {
    pub domain: &'a str,
    pub published_keys: Vec<CredentialVerifyingKey>,
    pub crypto: &'a RustCrypto,
}

/// A group as the check sees it: loaded, with its members (their credentials were verified when
/// they joined).
pub(super) struct GroupNow {
    pub group: LoadedGroup,
    pub members: Members,
}

/// A checked operation: the transition to store, and what its sender is answered.
pub(super) struct Checked {
    pub transition: GroupTransition,
    /// The new epoch of a commit; 0 for a proposal or removal.
    pub answer: u64,
}

/// A commit processed and checked as far as needs no keys.
pub(super) struct StagedCommitCheck {
    now: GroupNow,
    staged: Box<StagedCommit>,
    /// The committer's signature key: it finds the committer's leaf in the new epoch's tree.
    committer_key: Vec<u8>,
    /// Each added member's leaf, with its KeyPackage's reference (what the Welcome names).
    added: Vec<(LeafNode, Vec<u8>)>,
    /// Each Update's new leaf, with the member that proposed it.
    updates: Vec<(LeafNode, ClientId)>,
    /// The committer's own new leaf, if its path changed it.
    path_leaf: Option<LeafNode>,
}

impl StagedCommitCheck {
    /// The leaves whose clients `finish_commit` needs, in the order it takes them.
    pub fn leaves(&self) -> Vec<&LeafNode> {
        self.added
            .iter()
            .map(|(leaf, _)| leaf)
            .chain(self.updates.iter().map(|(leaf, _)| leaf))
            .chain(self.path_leaf.as_ref())
            .collect()
    }
}

/// The first half of a commit's check, once [`process`] has checked its epoch and openmls has
/// validated it: the sender, and the rules of a member's or an external commit.
pub(super) fn stage_commit(
    host: &Host<'_>,
    caller: &ClientId,
    now: GroupNow,
    processed: ProcessedMessage,
) -> Result<StagedCommitCheck, ServiceError> {
    let sender = processed.sender().clone();
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        return Err(invalid("the message is not a commit"));
    };
    // The committer's leaf in the new epoch's tree, by its signature key once merged (a member
    // keeps its leaf; a client joining by external commit takes a free one).
    let committer_key = match sender {
        Sender::Member(sender_leaf) => {
            check_sender_is_caller(&now.members, sender_leaf, caller)?;
            check_member_commit(caller, &now.group, sender_leaf, &staged)?;
            now.group
                .public
                .leaf(sender_leaf)
                .map(|leaf| leaf.signature_key().as_slice().to_vec())
                .ok_or_else(|| invalid("the committer has no leaf"))?
        }
        Sender::NewMemberCommit => {
            check_external_commit(caller, &now.group, &now.members, &staged)?;
            staged
                .update_path_leaf_node()
                .map(|leaf| leaf.signature_key().as_slice().to_vec())
                .ok_or_else(|| invalid("an external commit carries a path"))?
        }
        _ => return Err(invalid("only members commit here")),
    };
    let mut added = Vec::new();
    for add in staged.add_proposals() {
        let key_package = add.add_proposal().key_package();
        let key_ref = key_package
            .hash_ref(host.crypto)
            .map_err(|e| mls_error("hashing an added KeyPackage", e))?;
        added.push((key_package.leaf_node().clone(), key_ref.as_slice().to_vec()));
    }
    // Updates (proposed by reference; checked on arrival too): each new leaf's credential must
    // still be its proposer's.
    let mut updates = Vec::new();
    for queued in staged.queued_proposals() {
        if let (Proposal::Update(update), Sender::Member(proposer)) =
            (queued.proposal(), queued.sender())
        {
            let proposer = now
                .members
                .iter()
                .find(|(_, leaf)| *leaf == proposer.u32())
                .map(|(client, _)| client.clone())
                .ok_or_else(|| invalid("an Update's proposer is not a member"))?;
            updates.push((update.leaf_node().clone(), proposer));
        }
    }
    let path_leaf = staged.update_path_leaf_node().cloned();
    Ok(StagedCommitCheck {
        now,
        staged,
        committer_key,
        added,
        updates,
        path_leaf,
    })
}

/// The commit as `SendCommit` carries it, beside the MLS message itself.
pub(super) struct CommitParts<'a> {
    pub commit: &'a [u8],
    pub group_info: &'a [u8],
    pub welcome: Option<&'a [u8]>,
}

/// The second half of a commit's check: the new leaves are their clients', the commit merges,
/// its GroupInfo and Welcome match it, a group keeps an Admin; then the transition, with the
/// commit for every old member but the committer and the Welcome for exactly the added clients.
pub(super) fn finish_commit(
    host: &Host<'_>,
    caller: &ClientId,
    check: StagedCommitCheck,
    clients: &[ClientId],
    parts: CommitParts<'_>,
) -> Result<Checked, ServiceError> {
    let StagedCommitCheck {
        now: GroupNow {
            mut group,
            members: old_members,
        },
        staged,
        committer_key,
        added,
        updates,
        path_leaf,
    } = check;
    let (added_clients, rest) = clients.split_at(added.len());
    check_changed_leaves(caller, &updates, rest, path_leaf.is_some())?;
    merge(host, &mut group, staged, &committer_key, parts.group_info)?;
    let new_epoch = group.public.group_context().epoch().as_u64();
    let added: Vec<(ClientId, Vec<u8>)> = added_clients
        .iter()
        .cloned()
        .zip(added.into_iter().map(|(_, key_ref)| key_ref))
        .collect();
    let welcome = checked_welcome(parts.welcome, &added)?;
    let members = super::members_of(&group.public)?;
    let roles = roles_of(&group.public, &members)?;
    let leaving: Vec<ClientId> = group
        .stored
        .leaving
        .iter()
        .filter(|leaving| members.iter().any(|(client, _)| client == *leaving))
        .cloned()
        .collect();
    let mut envelopes = commit_envelopes(caller, &old_members, &members, parts.commit);
    // The joiners' tree is kept on the server: their Welcomes need not carry it.
    let joiners_tree = match welcome {
        Some(_) => Some(super::encoded_tree(&group.public)?),
        None => None,
    };
    if let Some(welcome) = welcome {
        let welcome = Arc::new(welcome.to_vec());
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
        leaving,
        group_info: parts.group_info.to_vec(),
        public_state: snapshot(&group.storage)?,
    };
    Ok(Checked {
        transition: transition(
            group.stored.epoch,
            stored,
            (&old_members, &members),
            envelopes,
            joiners_tree,
        ),
        answer: new_epoch,
    })
}

/// Each Update's new leaf must still be its proposer's, and the committer's new leaf (if its
/// path changed it) the committer's: `clients` are those leaves' verified clients, in that order.
fn check_changed_leaves(
    caller: &ClientId,
    updates: &[(LeafNode, ClientId)],
    clients: &[ClientId],
    path_changed: bool,
) -> Result<(), ServiceError> {
    let (update_clients, path_client) = clients.split_at(updates.len());
    for ((_, proposer), client) in updates.iter().zip(update_clients) {
        if client != proposer {
            return Err(ServiceError::InvalidMemberCredential(
                "an Update's new leaf is for another client".into(),
            ));
        }
    }
    if path_changed && path_client.first() != Some(caller) {
        return Err(ServiceError::InvalidMemberCredential(
            "the committer's new leaf is for another client".into(),
        ));
    }
    Ok(())
}

/// Merges the staged commit into the group, then checks what the new epoch must hold: the
/// committer's GroupInfo for it, and this server's place in the group's context.
fn merge(
    host: &Host<'_>,
    group: &mut LoadedGroup,
    staged: Box<StagedCommit>,
    committer_key: &[u8],
    group_info: &[u8],
) -> Result<(), ServiceError> {
    cpu_bound(|| {
        group
            .public
            .merge_commit(&group.storage, *staged)
            .map_err(|e| invalid(&format!("the commit cannot be merged: {e}")))?;
        let committer = group
            .public
            .members()
            .find(|member| member.signature_key == committer_key)
            .map(|member| member.index)
            .ok_or_else(|| invalid("the committer has no leaf in the new epoch"))?;
        check_group_info(host, &group.public, committer, group_info)?;
        check_group_context(host, &group.public)
    })
}

/// The Welcome a commit must carry exactly when it adds members, to exactly those added.
fn checked_welcome<'a>(
    welcome: Option<&'a [u8]>,
    added: &[(ClientId, Vec<u8>)],
) -> Result<Option<&'a [u8]>, ServiceError> {
    match (welcome, added.is_empty()) {
        (None, true) => Ok(None),
        (Some(welcome), false) => {
            cpu_bound(|| check_welcome(welcome, added))?;
            Ok(Some(welcome))
        }
        (None, false) => Err(ServiceError::WelcomeMismatch(
            "the commit adds members but carries no Welcome".into(),
        )),
        (Some(_), true) => Err(ServiceError::WelcomeMismatch(
            "the commit adds nobody but carries a Welcome".into(),
        )),
    }
}

/// Roles are what the group context's roles extension says, for the users still in the group;
/// a group with members keeps at least one Admin.
fn roles_of(public: &PublicGroup, members: &Members) -> Result<Vec<(String, bool)>, ServiceError> {
    let listed = group_roles(public)?;
    let mut roles: Vec<(String, bool)> = Vec::new();
    for (client, _) in members {
        let user = client.user_id.as_str();
        if !roles.iter().any(|(known, _)| known == user) {
            roles.push((user.to_owned(), listed.is_admin(user)));
        }
    }
    if !members.is_empty() && !roles.iter().any(|(_, admin)| *admin) {
        return Err(ServiceError::LastAdmin);
    }
    Ok(roles)
}

/// The commit goes to everyone who was a member (removed ones learn of their removal) but the
/// committing client. A client this commit removes gets it only if its queue has room: it is
/// out either way, and a removed client that never reads must not be able to stop its own
/// removal.
fn commit_envelopes(
    caller: &ClientId,
    old_members: &Members,
    members: &Members,
    commit: &[u8],
) -> Vec<Envelope> {
    let payload = Arc::new(commit.to_vec());
    old_members
        .iter()
        .filter(|(client, _)| client != caller)
        .map(|(client, _)| {
            let mut envelope = envelope(client, MessageKind::Mls, &payload);
            if !members.iter().any(|(member, _)| member == client) {
                envelope.admission = Admission::HandshakeIfRoom;
            }
            envelope
        })
        .collect()
}

/// A proposal processed and checked as far as needs no keys.
pub(super) struct StagedProposalCheck {
    now: GroupNow,
    queued: Box<QueuedProposal>,
    leaving: Vec<ClientId>,
    /// An Update's new leaf, which must carry the proposer's own credential.
    update_leaf: Option<LeafNode>,
}

impl StagedProposalCheck {
    /// The leaves whose clients `finish_proposal` needs.
    pub fn leaves(&self) -> Vec<&LeafNode> {
        self.update_leaf.iter().collect()
    }
}

/// The first half of a proposal's check, once [`process`] has checked its epoch and openmls has
/// validated it: the sender, that it can be committed beside what is pending, and the proposer's
/// role. A self-removal (leaving) takes the proposer out of delivery at once, unless it is the
/// last Admin.
pub(super) fn stage_proposal(
    caller: &ClientId,
    now: GroupNow,
    processed: ProcessedMessage,
) -> Result<StagedProposalCheck, ServiceError> {
    let Sender::Member(sender_leaf) = *processed.sender() else {
        return Err(invalid("only members propose here"));
    };
    check_sender_is_caller(&now.members, sender_leaf, caller)?;
    let ProcessedMessageContent::ProposalMessage(queued) = processed.into_content() else {
        return Err(invalid("the message is not a proposal"));
    };
    // A proposal that could never be committed alongside those pending is refused now, rather
    // than blocking every later commit: one proposal per member's leaf.
    let pending = pending_proposals(&now.group)?;
    if let Some(conflict) = conflicting_proposal(&pending, sender_leaf, queued.proposal()) {
        return Err(ServiceError::ProposalConflict(conflict.into()));
    }
    let stored = &now.group.stored;
    let mut leaving = stored.leaving.clone();
    let mut update_leaf = None;
    match queued.proposal() {
        Proposal::Remove(remove) if remove.removed() == sender_leaf => {
            let admins_left = now.members.iter().any(|(client, _)| {
                client != caller && is_admin(stored, client) && !is_leaving(stored, client)
            });
            if is_admin(stored, caller) && !admins_left {
                return Err(ServiceError::LastAdmin);
            }
            leaving.push(caller.clone());
        }
        Proposal::Remove(_) if !is_admin(stored, caller) => return Err(ServiceError::NotAnAdmin),
        Proposal::Remove(_) => {}
        // The new leaf must carry the proposer's own valid credential: garbage would make every
        // later commit fail, and another member's credential would let the proposer pass for
        // that member.
        Proposal::Update(update) => update_leaf = Some(update.leaf_node().clone()),
        _ => {
            return Err(invalid(
                "only Remove and Update proposals are accepted on their own",
            ))
        }
    }
    Ok(StagedProposalCheck {
        now,
        queued,
        leaving,
        update_leaf,
    })
}

/// The second half of a proposal's check: an Update's leaf is the proposer's; then the
/// transition that keeps the proposal pending and sends it to the members who stay.
pub(super) fn finish_proposal(
    caller: &ClientId,
    check: StagedProposalCheck,
    clients: &[ClientId],
    proposal: &[u8],
) -> Result<Checked, ServiceError> {
    if check.update_leaf.is_some() && clients.first() != Some(caller) {
        return Err(ServiceError::InvalidMemberCredential(
            "an Update's new leaf must carry the proposer's own credential".into(),
        ));
    }
    pending_transition(check.now, *check.queued, check.leaving, caller, proposal)
}

/// The whole check of the server's own proposal to remove `departed` (a client that no longer
/// exists), signed with `signer` as the group's external sender at position `sender_index`.
/// `None`: nothing to do (not a member, or its removal is pending already).
pub(super) fn check_removal(
    host: &Host<'_>,
    departed: &ClientId,
    now: GroupNow,
    (sender_index, signer): (u32, SignatureKeyPair),
) -> Result<Option<Checked>, ServiceError> {
    let Some(leaf) = now
        .members
        .iter()
        .find(|(client, _)| client == departed)
        .map(|(_, leaf)| *leaf)
    else {
        return Ok(None);
    };
    // Its removal is pending already (it was leaving, or an Admin proposed it): a second Remove
    // of the same leaf could never be committed.
    let removal_pending = pending_proposals(&now.group)?.iter().any(|(_, queued)| {
        matches!(queued.proposal(), Proposal::Remove(remove) if remove.removed().u32() == leaf)
    });
    if removal_pending {
        return Ok(None);
    }
    let public = &now.group.public;
    let proposal = ExternalProposal::new_remove::<OpenMlsRustCrypto>(
        LeafNodeIndex::new(leaf),
        public.group_id().clone(),
        public.group_context().epoch(),
        &signer,
        SenderExtensionIndex::new(sender_index),
    )
    .map_err(|e| mls_error("making the removal proposal", e))?
    .tls_serialize_detached()
    .map_err(|e| mls_error("encoding the removal proposal", e))?;
    // The server records its own proposal like any other, so commits can cover it.
    let MlsMessageBodyIn::PublicMessage(message) = MlsMessageIn::tls_deserialize_exact(&proposal)
        .map_err(|e| mls_error("decoding the removal proposal", e))?
        .extract()
    else {
        return Err(invalid("an external proposal is not a PublicMessage"));
    };
    let epoch = now.group.stored.epoch;
    let processed = cpu_bound(|| {
        now.group
            .public
            .process_message(host.crypto, ProtocolMessage::from(message))
    })
    .map_err(|e| processing_refusal("server's own proposal", e, epoch))?;
    let ProcessedMessageContent::ProposalMessage(queued) = processed.into_content() else {
        return Err(invalid("the server's own proposal is not a proposal"));
    };
    let mut leaving = now.group.stored.leaving.clone();
    leaving.push(departed.clone());
    pending_transition(now, *queued, leaving, departed, &proposal).map(Some)
}

/// The transition of a proposal that stays pending until a commit covers it: sent to the
/// members who stay, but its sender.
fn pending_transition(
    now: GroupNow,
    queued: QueuedProposal,
    leaving: Vec<ClientId>,
    sender: &ClientId,
    proposal: &[u8],
) -> Result<Checked, ServiceError> {
    let GroupNow { mut group, members } = now;
    group
        .public
        .add_proposal(&group.storage, queued)
        .map_err(|e| mls_error("storing the proposal", e))?;
    let payload = Arc::new(proposal.to_vec());
    let envelopes: Vec<Envelope> = members
        .iter()
        .filter(|(client, _)| client != sender && !is_leaving(&group.stored, client))
        .map(|(client, _)| envelope(client, MessageKind::Mls, &payload))
        .collect();
    let stored = StoredGroup {
        leaving,
        public_state: snapshot(&group.storage)?,
        ..group.stored.clone()
    };
    Ok(Checked {
        transition: transition(
            group.stored.epoch,
            stored,
            (&members, &members),
            envelopes,
            None,
        ),
        answer: 0,
    })
}

/// The transition of a group from `from_epoch` to `group`, with its members before and after
/// (`rows`; those the group lists as leaving receive nothing more) and what goes to their queues.
fn transition(
    from_epoch: u64,
    group: StoredGroup,
    (old_members, members): (&Members, &Members),
    envelopes: Vec<Envelope>,
    joiners_tree: Option<Vec<u8>>,
) -> GroupTransition {
    GroupTransition {
        from_epoch,
        old_members: member_rows(old_members),
        members: delivery_rows(members, &group.leaving),
        group,
        envelopes,
        remote: Vec::new(),
        request: None,
        joiners_tree,
    }
}

/// This server's position in a group's external senders, and the public key it is listed with
/// (one of its credential keys, with its domain as the credential identity).
pub(super) fn server_sender(host: &Host<'_>, public: &PublicGroup) -> Option<(u32, Vec<u8>)> {
    let senders = public.group_context().extensions().external_senders()?;
    let ours: Vec<(Vec<u8>, Vec<u8>)> = host
        .published_keys
        .iter()
        .filter_map(|key| {
            let sender = ExternalSender::new(
                key.public_key.as_slice().into(),
                BasicCredential::new(host.domain.as_bytes().to_vec()).into(),
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

/// The signer of the server's own proposals, from its Ed25519 credential key.
pub(super) fn server_signer(
    signing_key: &ed25519_dalek::SigningKey,
    public_key: Vec<u8>,
) -> SignatureKeyPair {
    SignatureKeyPair::from_raw(
        SignatureScheme::ED25519,
        signing_key.to_bytes().to_vec(),
        public_key,
    )
}

/// The proposals pending in a group, as openmls keeps them.
pub(super) fn pending_proposals(
    group: &LoadedGroup,
) -> Result<Vec<(openmls::prelude::hash_ref::ProposalRef, QueuedProposal)>, ServiceError> {
    group
        .public
        .queued_proposals(&group.storage)
        .map_err(|e| corrupt(&format!("reading pending proposals: {e}")))
}

/// The group state openmls keeps, as the store keeps it.
pub(super) fn snapshot(storage: &GroupStateStorage) -> Result<PublicState, ServiceError> {
    Ok(cpu_bound(|| storage.to_entries()))
}

/// A client's message at the group's epoch, processed by openmls (its signature, membership
/// tag and content checked against the group's state): the first step of every commit's and
/// proposal's check.
pub(super) fn process(
    host: &Host<'_>,
    now: &GroupNow,
    message: ProtocolMessage,
    what: &str,
) -> Result<ProcessedMessage, ServiceError> {
    let epoch = now.group.stored.epoch;
    if message.epoch().as_u64() != epoch {
        return Err(ServiceError::WrongEpoch { current: epoch });
    }
    cpu_bound(|| now.group.public.process_message(host.crypto, message))
        .map_err(|e| processing_refusal(what, e, epoch))
}

/// A message openmls refused to process: at the wrong epoch (the sender is behind), or not
/// valid.
fn processing_refusal(what: &str, error: PublicProcessMessageError, epoch: u64) -> ServiceError {
    match error {
        PublicProcessMessageError::ValidationError(ValidationError::WrongEpoch) => {
            ServiceError::WrongEpoch { current: epoch }
        }
        other => invalid(&format!("the {what} is not valid: {other}")),
    }
}

/// An openmls operation that failed on input that had passed its checks.
fn mls_error(doing: &str, error: impl std::fmt::Display) -> ServiceError {
    invalid(&format!("{doing}: {error}"))
}

pub(super) fn invalid(reason: &str) -> ServiceError {
    ServiceError::InvalidMlsMessage(reason.to_owned())
}

pub(super) fn corrupt(reason: &str) -> ServiceError {
    ServiceError::Store(crate::store::StoreError::Corrupt(reason.to_owned()))
}
