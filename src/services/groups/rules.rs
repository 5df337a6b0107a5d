//! The rules a group hosted here keeps, as pure functions of its state and an MLS message: which
//! proposals a commit must carry and who may make them, what an external commit may do, what a
//! group's context must hold, and that a commit's GroupInfo and Welcome are the commit's own.
//! [`super::check`] applies them.

use std::collections::BTreeSet;

use openmls::prelude::{
    BasicCredential, ExtensionType, LeafNode, LeafNodeIndex, MlsMessageBodyIn, MlsMessageIn,
    Proposal, PublicGroup, Sender, StagedCommit,
};
use tls_codec::{Deserialize, Serialize};

use super::check::{corrupt, invalid, pending_proposals, server_sender, Host};
use super::{LoadedGroup, Members};
use crate::protocol::{ClientCredential, ClientId, GroupRoles, ROLES_EXTENSION_TYPE};
use crate::services::ServiceError;
use crate::store::StoredGroup;

/// The rules of a member's commit: every pending proposal carried (but those MLS leaves
/// out), and each proposal within the committer's role.
pub(super) fn check_member_commit(
    caller: &ClientId,
    group: &LoadedGroup,
    sender_leaf: LeafNodeIndex,
    staged: &StagedCommit,
) -> Result<(), ServiceError> {
    let admin = is_admin(&group.stored, caller);

    // Every proposal pending for this epoch must be in the commit, but those MLS itself
    // leaves out (RFC 9420 section 12.2, as openmls does): the committer's own Updates and
    // Updates of leaves that a pending Remove takes out.
    let pending = pending_proposals(group)?;
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
pub(super) fn check_external_commit(
    caller: &ClientId,
    group: &LoadedGroup,
    old_members: &Members,
    staged: &StagedCommit,
) -> Result<(), ServiceError> {
    // The caller itself (a resync), or another client of its user that stays.
    let vouched = old_members.iter().any(|(client, _)| {
        client == caller || (client.user_id == caller.user_id && !is_leaving(&group.stored, client))
    });
    if !vouched {
        return Err(ServiceError::Forbidden);
    }
    let pending = pending_proposals(group)?;
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

/// What every group hosted here must keep in its context, from creation on: this server as
/// an external sender (so it can remove departed clients) and the roles extension, which
/// every member must support (`required_capabilities`), so that a member without it can
/// never be added and roles can always be changed.
pub(super) fn check_group_context(
    host: &Host<'_>,
    public: &PublicGroup,
) -> Result<(), ServiceError> {
    if server_sender(host, public).is_none() {
        return Err(invalid(
            "the group must list this server as its external sender",
        ));
    }
    let roles_required = public.required_capabilities().is_some_and(|required| {
        required
            .extension_types()
            .contains(&ExtensionType::Unknown(ROLES_EXTENSION_TYPE))
    });
    if !roles_required {
        return Err(invalid(
            "the group's required capabilities must include the roles extension",
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
pub(super) fn check_group_info(
    host: &Host<'_>,
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
        .verify(host.crypto, &key)
        .map_err(|_| mismatch("its signature does not verify"))?;
    Ok(())
}

/// A Welcome must go to exactly the KeyPackages the commit adds.
pub(super) fn check_welcome(
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
    let in_commit: BTreeSet<Vec<u8>> = added.iter().map(|(_, key_ref)| key_ref.clone()).collect();
    if in_welcome != in_commit || in_welcome.len() != welcome.secrets().len() {
        return Err(ServiceError::WelcomeMismatch(
            "its recipients are not the KeyPackages the commit adds".into(),
        ));
    }
    Ok(())
}

/// Why `proposal` from `sender` cannot join the proposals `pending` (a commit could never hold
/// both: RFC 9420 section 12.2 allows one proposal per leaf, a Remove winning over an Update).
pub(super) fn conflicting_proposal(
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
pub(super) fn group_roles(public: &PublicGroup) -> Result<GroupRoles, ServiceError> {
    let extension = public
        .group_context()
        .extensions()
        .unknown(ROLES_EXTENSION_TYPE)
        .ok_or_else(|| invalid("the group context has no roles extension"))?;
    let roles = GroupRoles::tls_deserialize_exact(&extension.0)
        .map_err(|e| invalid(&format!("the roles extension does not parse: {e}")))?;
    // Roles are compared byte for byte: only canonical (lower-case) user ids can name a user.
    for admin in &roles.admins {
        let canonical = admin
            .as_str()
            .parse::<crate::identity::UserId>()
            .is_ok_and(|user| user.as_str() == admin.as_str());
        if !canonical {
            return Err(invalid(
                "the roles extension names a user id not in its canonical lower-case form",
            ));
        }
    }
    Ok(roles)
}

/// Checks that the member at `sender_leaf` (a handshake's signer) is `caller`: a member may
/// not send another's commit or proposal as its own (`Forbidden`).
pub(super) fn check_sender_is_caller(
    members: &Members,
    sender_leaf: LeafNodeIndex,
    caller: &ClientId,
) -> Result<(), ServiceError> {
    let sender = members
        .iter()
        .find(|(_, leaf)| *leaf == sender_leaf.u32())
        .map(|(client, _)| client)
        .ok_or_else(|| invalid("the sender is not a member"))?;
    if sender != caller {
        return Err(ServiceError::Forbidden);
    }
    Ok(())
}

/// Whether another client of `caller`'s user is in the group (and not leaving it): what lets
/// a new device of the user, or one that lost its state, read the group and join it by external
/// commit.
pub(super) fn own_user_in(caller: &ClientId, group: &LoadedGroup, members: &Members) -> bool {
    members
        .iter()
        .any(|(client, _)| client.user_id == caller.user_id && !is_leaving(&group.stored, client))
}

pub(super) fn is_leaving(group: &StoredGroup, client: &ClientId) -> bool {
    group.leaving.contains(client)
}

pub(super) fn is_admin(group: &StoredGroup, client: &ClientId) -> bool {
    group
        .roles
        .iter()
        .any(|(user, admin)| *admin && user == client.user_id.as_str())
}

/// The `ClientCredential` inside a leaf's basic credential.
pub(super) fn leaf_credential(leaf: &LeafNode) -> Result<ClientCredential, ServiceError> {
    let basic = BasicCredential::try_from(leaf.credential().clone()).map_err(|_| {
        ServiceError::InvalidMemberCredential("a leaf credential is not a basic credential".into())
    })?;
    ClientCredential::tls_deserialize_exact(basic.identity()).map_err(|e| {
        ServiceError::InvalidMemberCredential(format!("a leaf credential does not parse: {e}"))
    })
}

pub(super) fn parse_group_info(
    bytes: &[u8],
) -> Result<openmls::messages::group_info::VerifiableGroupInfo, ServiceError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| invalid(&format!("the GroupInfo does not parse: {e}")))?;
    match message.extract() {
        MlsMessageBodyIn::GroupInfo(group_info) => Ok(group_info),
        _ => Err(invalid("expected an MLSMessage carrying a GroupInfo")),
    }
}
