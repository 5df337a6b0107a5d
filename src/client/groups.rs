//! A device's MLS groups, driven through its homeserver: create, invite, remove, set roles,
//! leave, commit and send, catching up by itself when the server says the device is behind.
//! Every member met is checked against its homeserver's credential keys. What arrives is
//! processed in `receive.rs`; joining by external commit is `rejoin.rs`.

use anyhow::{anyhow, bail, Context};
use openmls::prelude::{
    BasicCredential, Extension, ExtensionType, Extensions, ExternalSender, GroupContext, GroupId,
    KeyPackage, KeyPackageIn, LeafNodeIndex, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig,
    ProtocolVersion, RequiredCapabilitiesExtension, Sender, UnknownExtension,
    PURE_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls_traits::OpenMlsProvider;
use tls_codec::{Deserialize, Serialize};

use super::local_error::LocalError;
use super::mls::DeviceMls;
use super::transparency::KeyTransparency;
use super::{ClientError, Connection};
use crate::clock::UnixTime;
use crate::identity::{verify_member, DomainKeys};
use crate::protocol::{
    ClaimOutcome, ClientCredential, ClientId, CreateGroupRequest, ErrorCode, GroupRoles,
    SendCommitRequest, SendMessageRequest, SendProposalRequest, ROLES_EXTENSION_TYPE,
};

/// Epochs whose secrets a device keeps after moving on, so that an application message sent
/// just before a commit overtook it (normal traffic in MLS: the sender had not seen the commit)
/// is still read. Eight commits in the time a message is in flight is far more than a group
/// sees; an older message is reported as unreadable. Each kept epoch costs its secret tree
/// (about a kilobyte per hundred members), and is forward secrecy given up for that long.
pub const MAX_PAST_EPOCHS: usize = 8;

/// What processing one queued message produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// This device joined a group from a Welcome.
    Joined { group_id: Vec<u8> },
    /// An application message.
    Message {
        group_id: Vec<u8>,
        sender: ClientId,
        text: Vec<u8>,
    },
    /// This device's own application message, as the group's log gives it to every reader
    /// (its sender included): already known here, nothing to show.
    OwnMessage { group_id: Vec<u8> },
    /// A commit moved a group to a new epoch.
    Committed { group_id: Vec<u8>, epoch: u64 },
    /// A commit removed this device from the group.
    Removed { group_id: Vec<u8> },
    /// An Admin deleted the group.
    Deleted { group_id: Vec<u8>, by: ClientId },
    /// A proposal now waits for a commit (any member's `commit` includes it).
    Proposed {
        group_id: Vec<u8>,
        /// Who proposed: a member, or `None` for the server (a departed client's removal).
        by: Option<ClientId>,
        /// What it proposes, for people: "to leave", "to remove bob@localhost/2", ...
        what: String,
    },
    /// This device was invited, but the group was deleted, or the device removed again, before
    /// it could join (the server no longer gives it the group's tree).
    InvitationLapsed { group_id: Vec<u8>, reason: String },
    /// Something that is not for this device's groups (or a server notice).
    Other,
}

impl GroupEvent {
    /// The group the event is about (`None` for [`GroupEvent::Other`]).
    pub fn group_id(&self) -> Option<&[u8]> {
        match self {
            Self::Joined { group_id }
            | Self::Message { group_id, .. }
            | Self::OwnMessage { group_id }
            | Self::Committed { group_id, .. }
            | Self::Removed { group_id }
            | Self::Deleted { group_id, .. }
            | Self::Proposed { group_id, .. }
            | Self::InvitationLapsed { group_id, .. } => Some(group_id),
            Self::Other => None,
        }
    }
}

/// Whether a failure to process a queued message may pass if tried again later (the server or
/// the network failed meanwhile): such a message must not be acknowledged. Anything else can
/// never be processed, and is acknowledged and reported.
pub fn is_transient(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<ClientError>()
            .is_some_and(|e| e.retry() == crate::protocol::Retry::Later)
    })
}

/// Whether fetching a Welcome's tree failed because the invitation is over: the group is gone,
/// or this device is no longer a member, or the tree outlived the server's retention.
pub(super) fn invitation_lapsed(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ClientError>(),
            Some(ClientError::Server(refusal)) if matches!(
                refusal.code(),
                ErrorCode::UnknownGroup | ErrorCode::NotAMember | ErrorCode::TreeNotKept
            )
        )
    })
}

impl DeviceMls {
    fn create_config(&self, server: &DomainKeys) -> anyhow::Result<MlsGroupCreateConfig> {
        let roles = GroupRoles {
            admins: vec![self.client().user_id.clone()],
        };
        // The homeserver may propose removals (of deleted clients) as the group's external sender.
        let server_key = server
            .keys
            .first()
            .context("the server publishes no credential key")?;
        let external_senders = vec![ExternalSender::new(
            server_key.public_key.as_slice().into(),
            BasicCredential::new(server.domain.as_bytes().to_vec()).into(),
        )];
        Ok(MlsGroupCreateConfig::builder()
            .with_group_context_extensions(context_extensions(&roles, external_senders)?)
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .ciphersuite(self.ciphersuite())
            .capabilities(self.capabilities())
            // Welcomes travel without the tree (at 10,000 members it is megabytes): the server
            // keeps the tree of every epoch that adds members for its joiners.
            .use_ratchet_tree_extension(false)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .build())
    }

    pub(crate) fn join_config(&self) -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .build()
    }

    /// A new group with this device alone, and the request that registers it with the server
    /// (whose keys are `server`).
    pub fn new_group(&self, server: &DomainKeys) -> anyhow::Result<(MlsGroup, CreateGroupRequest)> {
        // The group id names the server that hosts the group (protocol-spec/groups.md).
        let hub: crate::identity::Domain = server
            .domain
            .parse()
            .map_err(|e| anyhow!("the server's domain: {e}"))?;
        let group = MlsGroup::new_with_group_id(
            self.provider(),
            self.signer(),
            &self.create_config(server)?,
            GroupId::from_slice(&crate::identity::new_group_id(&hub)),
            self.credential().clone(),
        )
        .context("creating the MLS group")?;
        let group_info = group
            .export_group_info(self.provider().crypto(), self.signer(), false)
            .context("exporting the GroupInfo")?
            .tls_serialize_detached()?;
        let ratchet_tree = group.export_ratchet_tree().tls_serialize_detached()?;
        Ok((
            group,
            CreateGroupRequest {
                group_info: group_info.into(),
                ratchet_tree: ratchet_tree.into(),
            },
        ))
    }

    /// A group this device is in, from its key store (a group stored under an older
    /// configuration, e.g. keeping no past epochs, is given the current one).
    pub fn group(&self, group_id: &[u8]) -> anyhow::Result<Option<MlsGroup>> {
        let group = MlsGroup::load(self.provider().storage(), &GroupId::from_slice(group_id))
            .map_err(|e| anyhow!("loading group state: {e}"))?;
        let Some(mut group) = group else {
            return Ok(None);
        };
        let config = self.join_config();
        if *group.configuration() != config {
            group
                .set_configuration(self.provider().storage(), &config)
                .map_err(|e| anyhow!("updating the group's configuration: {e}"))?;
        }
        Ok(Some(group))
    }

    /// Stages a commit adding `key_packages` (already verified), and returns what to send.
    pub fn add_members(
        &self,
        group: &mut MlsGroup,
        key_packages: &[KeyPackage],
    ) -> anyhow::Result<SendCommitRequest> {
        self.commit(group, key_packages, &[], None)
    }

    /// Stages a commit that adds `key_packages`, removes the leaves `removed`, and includes every
    /// pending proposal (the server refuses a commit that leaves one out); returns what to send.
    pub fn commit(
        &self,
        group: &mut MlsGroup,
        key_packages: &[KeyPackage],
        removed: &[LeafNodeIndex],
        roles: Option<&GroupRoles>,
    ) -> anyhow::Result<SendCommitRequest> {
        let external_senders = group
            .extensions()
            .external_senders()
            .cloned()
            .unwrap_or_default();
        let mut builder = group
            .commit_builder()
            .consume_proposal_store(true)
            .propose_adds(key_packages.iter().cloned())
            .propose_removals(removed.iter().copied());
        if let Some(roles) = roles {
            builder = builder
                .propose_group_context_extensions(context_extensions(roles, external_senders)?)
                .map_err(|e| anyhow!("proposing the new roles: {e}"))?;
        }
        let bundle = builder
            .load_psks(self.provider().storage())
            .map_err(|e| anyhow!("building the commit: {e}"))?
            // The server checks every commit against the GroupInfo of the epoch it creates.
            .create_group_info(true)
            .build(
                self.provider().rand(),
                self.provider().crypto(),
                self.signer(),
                |_| true,
            )
            .map_err(|e| anyhow!("building the commit: {e}"))?
            .stage_commit(self.provider())
            .map_err(|e| anyhow!("staging the commit: {e}"))?;
        let (commit, welcome, group_info) = bundle.into_messages();
        Ok(SendCommitRequest {
            commit: commit.tls_serialize_detached()?.into(),
            welcome: welcome
                .map(|welcome| welcome.tls_serialize_detached())
                .transpose()?
                .map(Into::into),
            group_info: group_info
                .context("openmls produced no GroupInfo for the commit")?
                .tls_serialize_detached()?
                .into(),
        })
    }

    /// Encrypts an application message for `group`.
    pub fn encrypt(&self, group: &mut MlsGroup, text: &[u8]) -> anyhow::Result<SendMessageRequest> {
        let message = group
            .create_message(self.provider(), self.signer(), text)
            .context("encrypting the message")?;
        Ok(SendMessageRequest {
            message: message.tls_serialize_detached()?.into(),
        })
    }
}

/// The member a leaf credential names, verified against `keys` at `now` (the leaf's signature
/// key must be the credential's).
pub fn verify_leaf_member(
    credential: &openmls::prelude::Credential,
    signature_key: &[u8],
    keys: &DomainKeys,
    now: UnixTime,
) -> anyhow::Result<ClientId> {
    let basic = BasicCredential::try_from(credential.clone())
        .map_err(|_| anyhow!("the member's credential is not a basic credential"))?;
    let credential = ClientCredential::tls_deserialize_exact(basic.identity())
        .context("the member's credential is not a Roost client credential")?;
    verify_member(signature_key, &credential, keys, now).context("the member's credential")
}

/// Checks every member of `group` against `keys`; returns them in leaf order.
pub fn verify_group_members(
    group: &MlsGroup,
    keys: &DomainKeys,
    now: UnixTime,
) -> anyhow::Result<Vec<ClientId>> {
    group
        .members()
        .map(|member| verify_leaf_member(&member.credential, &member.signature_key, keys, now))
        .collect()
}

/// The group flows a device runs against its homeserver.
pub struct GroupClient<'a> {
    pub connection: &'a Connection,
    pub mls: &'a DeviceMls,
    /// The keys of this device's own homeserver.
    pub keys: DomainKeys,
    pub now: UnixTime,
    /// Other homeservers' keys, fetched through this device's homeserver as members appear.
    remote_keys: tokio::sync::Mutex<std::collections::HashMap<String, DomainKeys>>,
    /// Members verified so far, by the SHA-256 of their credential and leaf signature key: with
    /// the same keys and the same `now` the answer cannot change, and an add to a group of
    /// 10,000 would otherwise verify 10,000 signatures again.
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], ClientId>>,
    /// What catching up inside another operation processed (a send or a commit that found this
    /// device behind), acknowledged and not yet shown: [`GroupClient::receive`] returns it first,
    /// [`GroupClient::take_caught_up`] on its own.
    caught_up: std::sync::Mutex<Vec<(u64, anyhow::Result<GroupEvent>)>>,
    /// The transparency logs a member's credential must be provably in, and the heads seen.
    transparency: std::sync::Arc<KeyTransparency>,
}

/// Which members of a group a check takes as trusted already.
pub(super) enum Trusted {
    /// Every member (the group as this device holds it).
    All,
    /// The members with these credentials (the group before a commit).
    These(std::collections::HashSet<Vec<u8>>),
    /// None (a group being joined).
    Nobody,
}

impl Trusted {
    /// The members of `group` now.
    pub(super) fn members_of(group: &MlsGroup) -> Self {
        Self::These(
            group
                .members()
                .map(|member| member.credential.serialized_content().to_vec())
                .collect(),
        )
    }

    fn covers(&self, credential: &openmls::prelude::Credential) -> bool {
        match self {
            Trusted::All => true,
            Trusted::These(credentials) => credentials.contains(credential.serialized_content()),
            Trusted::Nobody => false,
        }
    }
}

/// How many times an operation catches up and tries again when the server says this device is
/// behind, before it gives up (each time, another member's commit came first).
const CATCH_UP_ATTEMPTS: usize = 4;

/// Whether the server refused because this device has not processed what it holds: another
/// commit moved the group on (`WrongEpoch`), or proposals wait that the commit does not carry
/// (`ProposalsNotCommitted`). Processing the queue, then building the request again, passes.
pub fn is_behind(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause
                .downcast_ref::<ClientError>()
                .and_then(ClientError::code),
            Some(ErrorCode::WrongEpoch | ErrorCode::ProposalsNotCommitted)
        )
    })
}

/// Verified members remembered by one [`GroupClient`] at most (then it starts afresh).
const VERIFIED_MEMBERS_KEPT: usize = 200_000;

impl<'a> GroupClient<'a> {
    pub fn new(
        connection: &'a Connection,
        mls: &'a DeviceMls,
        keys: DomainKeys,
        now: UnixTime,
    ) -> Self {
        Self {
            connection,
            mls,
            keys,
            now,
            remote_keys: Default::default(),
            verified: Default::default(),
            caught_up: Default::default(),
            transparency: Default::default(),
        }
    }

    /// The same flows checking members against `transparency` (the device's remembered heads)
    /// instead of a fresh memory of its own.
    pub fn with_transparency(mut self, transparency: std::sync::Arc<KeyTransparency>) -> Self {
        self.transparency = transparency;
        self
    }

    /// What catching up inside earlier operations processed and nobody was shown yet.
    pub fn take_caught_up(&self) -> Vec<(u64, anyhow::Result<GroupEvent>)> {
        std::mem::take(
            &mut *self
                .caught_up
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Processes the queue and logs before attempt `attempt` (from 2) of an operation the
    /// server found behind, keeping what they held for the caller to show. When nothing has
    /// arrived yet (the commit that moved the group on is still on its way from the hub's
    /// homeserver), it waits a little, longer at each attempt, and looks again.
    async fn catch_up(&self, attempt: usize) -> anyhow::Result<()> {
        let mut events = self.receive_new().await?;
        if events.is_empty() {
            let exponent = u32::try_from(attempt.saturating_sub(2))
                .unwrap_or(u32::MAX)
                .min(4);
            tokio::time::sleep(std::time::Duration::from_millis(100 * 4u64.pow(exponent))).await;
            events = self.receive_new().await?;
        }
        self.caught_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(events);
        Ok(())
    }

    /// Builds a commit with `build` on the group's current state, sends it and merges it once
    /// accepted. When the server says this device is behind ([`is_behind`]), it catches up and
    /// builds the commit again on the new state. Returns the group at its new epoch.
    async fn commit_caught_up(
        &self,
        group_id: &[u8],
        build: impl Fn(&mut MlsGroup) -> anyhow::Result<SendCommitRequest>,
    ) -> anyhow::Result<MlsGroup> {
        let mut attempt = 1;
        loop {
            let mut group = self.member_group(group_id)?;
            let request = build(&mut group)?;
            match self.send_commit(&mut group, request).await {
                Ok(()) => return Ok(group),
                Err(e) if is_behind(&e) && attempt < CATCH_UP_ATTEMPTS => {
                    attempt += 1;
                    self.catch_up(attempt).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The local state of a group this device is in.
    fn member_group(&self, group_id: &[u8]) -> anyhow::Result<MlsGroup> {
        self.mls.group(group_id)?.ok_or_else(|| {
            anyhow::Error::new(LocalError::NoSuchGroup {
                group: hex::encode(group_id),
            })
        })
    }

    /// The credential-verifying keys of `domain`.
    async fn keys_for(&self, domain: &str) -> anyhow::Result<DomainKeys> {
        if domain == self.keys.domain {
            return Ok(self.keys.clone());
        }
        let mut cache = self.remote_keys.lock().await;
        if let Some(keys) = cache.get(domain) {
            return Ok(keys.clone());
        }
        let keys = self.connection.domain_keys_of(domain).await?;
        cache.insert(domain.to_owned(), keys.clone());
        Ok(keys)
    }

    /// The member a leaf credential names, verified against its own homeserver's keys.
    pub(super) async fn verify(
        &self,
        credential: &openmls::prelude::Credential,
        signature_key: &[u8],
    ) -> anyhow::Result<ClientId> {
        let basic = BasicCredential::try_from(credential.clone())
            .map_err(|_| anyhow!("the member's credential is not a basic credential"))?;
        let digest: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
            sha2::Digest::chain_update(sha2::Sha256::default(), basic.identity()),
            signature_key,
        ))
        .into();
        if let Some(client) = self.verified_lock().get(&digest) {
            return Ok(client.clone());
        }
        let parsed = ClientCredential::tls_deserialize_exact(basic.identity())
            .context("the member's credential is not a Roost client credential")?;
        let domain = crate::identity::UserId::domain_of(parsed.content.client.user_id.as_str());
        if domain.is_empty() {
            anyhow::bail!("the member's user id has no domain");
        }
        let domain = domain.to_owned();
        let keys = self.keys_for(&domain).await?;
        let client = verify_leaf_member(credential, signature_key, &keys, self.now)?;
        let mut verified = self.verified_lock();
        if verified.len() >= VERIFIED_MEMBERS_KEPT {
            verified.clear();
        }
        verified.insert(digest, client.clone());
        Ok(client)
    }

    fn verified_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<[u8; 32], ClientId>> {
        // The map holds only finished verifications: a panic elsewhere leaves it consistent.
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks every member of `group` (already trusted: its credentials' signatures only);
    /// returns them in leaf order.
    pub(super) async fn verify_members(&self, group: &MlsGroup) -> anyhow::Result<Vec<ClientId>> {
        self.verify_members_logged(group, &Trusted::All).await
    }

    /// Checks every member of `group`, and that those not `trusted` yet are provably in their
    /// domain's transparency log: a member this device takes in must be one its user's own
    /// devices can see. A member trusted before is not asked again, so that one whose device was
    /// revoked since stays until its removal is committed.
    pub(super) async fn verify_members_logged(
        &self,
        group: &MlsGroup,
        trusted: &Trusted,
    ) -> anyhow::Result<Vec<ClientId>> {
        let mut members = Vec::new();
        for member in group.members() {
            members.push(match trusted.covers(&member.credential) {
                true => {
                    self.verify(&member.credential, &member.signature_key)
                        .await?
                }
                false => {
                    self.verify_logged(&member.credential, &member.signature_key)
                        .await?
                }
            });
        }
        Ok(members)
    }

    /// [`Self::verify`], and the credential is among its user's bindings in its domain's log.
    pub(super) async fn verify_logged(
        &self,
        credential: &openmls::prelude::Credential,
        signature_key: &[u8],
    ) -> anyhow::Result<ClientId> {
        let client = self.verify(credential, signature_key).await?;
        let basic = BasicCredential::try_from(credential.clone())
            .map_err(|_| anyhow!("the member's credential is not a basic credential"))?;
        let parsed = ClientCredential::tls_deserialize_exact(basic.identity())
            .context("the member's credential is not a Roost client credential")?;
        let domain = crate::identity::UserId::domain_of(parsed.content.client.user_id.as_str());
        let keys = self.keys_for(domain).await?;
        // Signed by the domain is not enough: the credential must be in its log, where its
        // user's own devices would see it.
        self.transparency
            .check_logged(self.connection, &parsed, &keys)
            .await
            .with_context(|| format!("{client}'s credential is not provably in {domain}'s log"))?;
        Ok(client)
    }

    /// Creates a group with this device alone; returns its id.
    pub async fn create_group(&self) -> anyhow::Result<Vec<u8>> {
        let (group, request) = self.mls.new_group(&self.keys)?;
        self.connection.create_group(request).await?;
        Ok(group.group_id().as_slice().to_vec())
    }

    /// Adds every client of `user_id` that has a KeyPackage: claims them, checks each one's
    /// credential, commits, and merges once the server accepted the commit. On `WrongEpoch` the
    /// pending commit is discarded and the error returned: process the queue and try again.
    pub async fn invite(&self, group_id: &[u8], user_id: &str) -> anyhow::Result<Vec<ClientId>> {
        self.invite_many(group_id, &[user_id]).await
    }

    /// As [`GroupClient::invite`] for several users in one commit: fails if any of them has no
    /// client to add.
    pub async fn invite_many(
        &self,
        group_id: &[u8],
        user_ids: &[&str],
    ) -> anyhow::Result<Vec<ClientId>> {
        let group = self.member_group(group_id)?;
        let members = self.verify_members(&group).await?;
        let mut key_packages = Vec::new();
        let mut invited = Vec::new();
        for user_id in user_ids {
            let claimed = self
                .connection
                .claim_key_packages(user_id, u16::from(self.mls.ciphersuite()))
                .await?;
            let invited_before = invited.len();
            // Clients already in the group (this device itself, when inviting its own user) stay.
            for claim in claimed
                .claims
                .iter()
                .filter(|claim| !members.contains(&claim.client))
            {
                let bytes = match &claim.outcome {
                    ClaimOutcome::KeyPackage(bytes) | ClaimOutcome::LastResort(bytes) => bytes,
                    ClaimOutcome::Unavailable => continue,
                };
                let key_package = KeyPackageIn::tls_deserialize_exact(bytes.as_slice())
                    .context("a claimed KeyPackage does not parse")?
                    .validate(self.mls.provider().crypto(), ProtocolVersion::Mls10)
                    .context("a claimed KeyPackage is not valid")?;
                let leaf = key_package.leaf_node();
                let member = self
                    .verify_logged(leaf.credential(), leaf.signature_key().as_slice())
                    .await?;
                if member != claim.client {
                    bail!(
                        "the KeyPackage offered for {} belongs to {member}",
                        claim.client
                    );
                }
                key_packages.push(key_package);
                invited.push(member);
            }
            if invited.len() == invited_before {
                return Err(LocalError::NothingToAdd {
                    user: (*user_id).to_owned(),
                }
                .into());
            }
        }
        drop(group);
        // Behind, the commit is built again on the new state with the same KeyPackages (a client
        // someone else added meanwhile makes the commit invalid: it is reported).
        self.commit_caught_up(group_id, |group| self.mls.add_members(group, &key_packages))
            .await?;
        Ok(invited)
    }

    /// Sends a commit built by `build`, merging it once accepted; on refusal the pending commit is
    /// discarded and the error returned.
    async fn send_commit(
        &self,
        group: &mut MlsGroup,
        request: SendCommitRequest,
    ) -> anyhow::Result<()> {
        let sent = super::with_retries(|| self.connection.send_commit(request.clone())).await;
        match sent {
            Ok(_) => group
                .merge_pending_commit(self.mls.provider())
                .context("merging the accepted commit"),
            Err(e) => {
                group
                    .clear_pending_commit(self.mls.provider().storage())
                    .map_err(|e| anyhow!("discarding the refused commit: {e}"))?;
                Err(e.into())
            }
        }
    }

    /// Removes every client of `user_id` from the group (Admins only, or oneself).
    pub async fn remove_user(
        &self,
        group_id: &[u8],
        user_id: &str,
    ) -> anyhow::Result<Vec<ClientId>> {
        let group = self.member_group(group_id)?;
        let mut removed = Vec::new();
        let mut credentials = Vec::new();
        let members: Vec<_> = group.members().collect();
        for member in members {
            let client = self
                .verify(&member.credential, &member.signature_key)
                .await?;
            if client.user_id.as_str() == user_id {
                credentials.push(member.credential);
                removed.push(client);
            }
        }
        if credentials.is_empty() {
            return Err(LocalError::NotInGroup {
                user: user_id.to_owned(),
            }
            .into());
        }
        // Their leaves are found again on the state each attempt builds on.
        self.commit_caught_up(group_id, |group| {
            let leaves: Vec<LeafNodeIndex> = group
                .members()
                .filter(|member| credentials.contains(&member.credential))
                .map(|member| member.index)
                .collect();
            // A removed Admin leaves the roles extension too.
            let mut roles = group_roles(group)?;
            roles.admins.retain(|admin| admin.as_str() != user_id);
            self.mls.commit(group, &[], &leaves, Some(&roles))
        })
        .await?;
        Ok(removed)
    }

    /// Makes `user_id` an Admin or a Member of the group (Admins only), by a commit that changes
    /// the group context's roles extension.
    pub async fn set_role(
        &self,
        group_id: &[u8],
        user_id: &str,
        admin: bool,
    ) -> anyhow::Result<()> {
        let group = self.member_group(group_id)?;
        let members = self.verify_members(&group).await?;
        if !members
            .iter()
            .any(|client| client.user_id.as_str() == user_id)
        {
            return Err(LocalError::NotInGroup {
                user: user_id.to_owned(),
            }
            .into());
        }
        let user = crate::protocol::Text::new(user_id).map_err(|e| anyhow!("{e}"))?;
        self.commit_caught_up(group_id, |group| {
            let mut roles = group_roles(group)?;
            roles.admins.retain(|listed| *listed != user);
            if admin {
                roles.admins.push(user.clone());
            }
            self.mls.commit(group, &[], &[], Some(&roles))
        })
        .await?;
        Ok(())
    }

    /// The roles the group context states, as this device sees them.
    pub fn roles(&self, group_id: &[u8]) -> anyhow::Result<GroupRoles> {
        group_roles(&self.member_group(group_id)?)
    }

    /// Commits the proposals pending in the group (e.g. a member's leaving), catching up first
    /// if proposals wait on the server that this device has not seen.
    pub async fn commit_pending(&self, group_id: &[u8]) -> anyhow::Result<u64> {
        let group = self
            .commit_caught_up(group_id, |group| self.mls.commit(group, &[], &[], None))
            .await?;
        Ok(group.epoch().as_u64())
    }

    /// Proposes to leave the group; the next commit by any member removes this device. The server
    /// stops delivering the group's messages to it at once.
    pub async fn leave(&self, group_id: &[u8]) -> anyhow::Result<()> {
        let mut attempt = 1;
        loop {
            match self.propose_leaving(group_id).await {
                Err(e) if is_behind(&e) && attempt < CATCH_UP_ATTEMPTS => {
                    attempt += 1;
                    self.catch_up(attempt).await?;
                }
                outcome => return outcome,
            }
        }
    }

    /// One attempt of [`GroupClient::leave`] at the group's current epoch.
    async fn propose_leaving(&self, group_id: &[u8]) -> anyhow::Result<()> {
        let mut group = self.member_group(group_id)?;
        let proposal = group
            .leave_group(self.mls.provider(), self.mls.signer())
            .map_err(|e| LocalError::Mls {
                detail: format!("proposing to leave: {e}"),
            })?;
        let request = SendProposalRequest {
            proposal: proposal.tls_serialize_detached()?.into(),
        };
        let sent = super::with_retries(|| self.connection.send_proposal(request.clone())).await;
        if let Err(e) = sent {
            // The server refused it: it must not linger as a pending proposal of ours.
            let own = Sender::Member(group.own_leaf_index());
            let refs: Vec<_> = group
                .pending_proposals()
                .filter(|queued| *queued.sender() == own)
                .map(|queued| queued.proposal_reference_ref().clone())
                .collect();
            for reference in refs {
                group
                    .remove_pending_proposal(self.mls.provider().storage(), &reference)
                    .map_err(|e| anyhow!("withdrawing the refused proposal: {e}"))?;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Deletes the group on the server (Admins only) and forgets it here.
    pub async fn delete_group(&self, group_id: &[u8]) -> anyhow::Result<()> {
        self.connection.delete_group(group_id).await?;
        self.forget(group_id)
    }

    /// How many proposals wait in `group_id` for a commit (any commit of this device includes
    /// them all).
    pub fn pending_proposals(&self, group_id: &[u8]) -> anyhow::Result<usize> {
        Ok(self
            .mls
            .group(group_id)?
            .map_or(0, |group| group.pending_proposals().count()))
    }

    /// Forgets a group's local state (after leaving it, or after it was deleted).
    pub fn forget(&self, group_id: &[u8]) -> anyhow::Result<()> {
        if let Some(mut group) = self.mls.group(group_id)? {
            group
                .delete(self.mls.provider().storage())
                .map_err(|e| anyhow!("forgetting the group: {e}"))?;
        }
        Ok(())
    }

    /// Encrypts and sends `text` to `group_id`. MLS sends no application message while
    /// proposals are pending (a member's leave, say): they are committed first, and the new
    /// epoch returned. A send that a commit overtook (`WrongEpoch`) catches up and is encrypted
    /// again for the new epoch: the message is never lost to a commit.
    pub async fn send(&self, group_id: &[u8], text: &[u8]) -> anyhow::Result<Option<u64>> {
        let mut committed = None;
        let mut attempt = 1;
        loop {
            let mut group = self.member_group(group_id)?;
            if group.pending_proposals().next().is_some() {
                group = self
                    .commit_caught_up(group_id, |group| self.mls.commit(group, &[], &[], None))
                    .await?;
                committed = Some(group.epoch().as_u64());
            }
            let request = self.mls.encrypt(&mut group, text)?;
            match super::with_retries(|| self.connection.send_message(request.clone())).await {
                Ok(_) => return Ok(committed),
                Err(e)
                    if e.code() == Some(ErrorCode::WrongEpoch) && attempt < CATCH_UP_ATTEMPTS =>
                {
                    attempt += 1;
                    self.catch_up(attempt).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The group context extensions: `roles`, the external senders (the homeserver), and the
/// requirement that every member supports the roles extension (which MLS asks of a group-context
/// extension that commits may change).
fn context_extensions(
    roles: &GroupRoles,
    external_senders: Vec<ExternalSender>,
) -> anyhow::Result<Extensions<GroupContext>> {
    Extensions::from_vec(vec![
        Extension::ExternalSenders(external_senders),
        Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
            &[ExtensionType::Unknown(ROLES_EXTENSION_TYPE)],
            &[],
            &[],
        )),
        Extension::Unknown(
            ROLES_EXTENSION_TYPE,
            UnknownExtension(roles.tls_serialize_detached()?),
        ),
    ])
    .map_err(|e| anyhow!("the roles extension: {e}"))
}

/// The signature key a Roost credential states.
pub(super) fn credential_key(credential: &openmls::prelude::Credential) -> anyhow::Result<Vec<u8>> {
    let basic = BasicCredential::try_from(credential.clone())
        .map_err(|_| anyhow!("the sender's credential is not a basic credential"))?;
    let parsed = ClientCredential::tls_deserialize_exact(basic.identity())
        .context("the sender's credential is not a Roost client credential")?;
    Ok(parsed.content.signature_key.as_slice().to_vec())
}

/// The roles extension of a group's context.
pub fn group_roles(group: &MlsGroup) -> anyhow::Result<GroupRoles> {
    let extension = group
        .extensions()
        .unknown(ROLES_EXTENSION_TYPE)
        .context("the group has no roles extension")?;
    GroupRoles::tls_deserialize_exact(&extension.0).context("the roles extension does not parse")
}
