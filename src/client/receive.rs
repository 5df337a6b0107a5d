//! What a device receives: fetching its queue and its groups' logs, processing each message
//! (Welcomes, commits, proposals, application messages of the current or a kept past epoch, server
//! notices) and acknowledging what was processed or can never be.

use anyhow::{anyhow, bail, Context};
use openmls::prelude::{
    BasicCredential, KeyPackageBundle, KeyPackageRef, MlsGroup, MlsMessageBodyIn, MlsMessageIn,
    ProcessedMessage, ProcessedMessageContent, Proposal, ProtocolMessage, QueuedProposal,
    RatchetTreeIn, Sender, StagedWelcome,
};
use openmls_traits::storage::StorageProvider;
use openmls_traits::OpenMlsProvider;
use tls_codec::Deserialize;

use super::groups::{
    credential_key, invitation_lapsed, is_transient, GroupClient, GroupEvent, MAX_PAST_EPOCHS,
};
use super::local_error::LocalError;
use super::ClientError;
use crate::protocol::{ClientCredential, MessageKind, QueuedMessage, ServerNotice};

impl GroupClient<'_> {
    /// Processes one queued message.
    pub async fn process(&self, message: &QueuedMessage) -> anyhow::Result<GroupEvent> {
        let parsed = MlsMessageIn::tls_deserialize_exact(message.payload.as_slice());
        match (message.kind, parsed) {
            (MessageKind::Welcome, Ok(parsed)) => {
                let MlsMessageBodyIn::Welcome(welcome) = parsed.extract() else {
                    bail!("a Welcome message holds something else");
                };
                self.join(welcome).await
            }
            (MessageKind::Mls, Ok(parsed)) => {
                let protocol_message: ProtocolMessage = match parsed.extract() {
                    MlsMessageBodyIn::PublicMessage(message) => message.into(),
                    MlsMessageBodyIn::PrivateMessage(message) => message.into(),
                    _ => bail!("an MLS message of an unexpected kind"),
                };
                self.process_mls(protocol_message).await
            }
            (MessageKind::ServerNotice, _) => {
                match ServerNotice::tls_deserialize_exact(message.payload.as_slice()) {
                    Ok(ServerNotice::GroupDeleted(deleted)) => {
                        let group_id = deleted.group_id.as_slice().to_vec();
                        self.forget(&group_id)?;
                        Ok(GroupEvent::Deleted {
                            group_id,
                            by: deleted.by,
                        })
                    }
                    _ => Ok(GroupEvent::Other),
                }
            }
            (_, Err(e)) => Err(anyhow!("a queued message does not parse: {e}")),
        }
    }

    /// Processes an MLS message of one of this device's groups: of its current epoch, or an
    /// application message of a kept past one.
    async fn process_mls(&self, message: ProtocolMessage) -> anyhow::Result<GroupEvent> {
        let group_id = message.group_id().as_slice().to_vec();
        let Some(mut group) = self.mls.group(&group_id)? else {
            return Ok(GroupEvent::Other);
        };
        let (epoch, current) = (message.epoch().as_u64(), group.epoch().as_u64());
        // Application messages of the kept past epochs are read (a commit overtook them); a
        // handshake of a past epoch was superseded by the commit that ended it.
        if let (true, ProtocolMessage::PublicMessage(handshake)) = (epoch < current, &message) {
            // A group's log gives every reader every message, its own commits too. An external
            // commit of a past epoch can only be this device's own join: any other would have
            // taken it through that epoch.
            let sender = handshake.sender();
            if *sender == Sender::Member(group.own_leaf_index())
                || *sender == Sender::NewMemberCommit
            {
                return Ok(GroupEvent::OwnMessage { group_id });
            }
            return Err(LocalError::Unprocessable {
                detail: format!("a commit or proposal of epoch {epoch}, which this device has passed (it is at {current})"),
            }
            .into());
        }
        let processed = group
            .process_message(self.mls.provider(), message)
            .map_err(|e| LocalError::Unprocessable {
                detail: if epoch + MAX_PAST_EPOCHS as u64 <= current {
                    format!("a message of epoch {epoch}: older than the {MAX_PAST_EPOCHS} past epochs this device keeps (it is at {current})")
                } else {
                    format!("an MLS message of epoch {epoch}: {e}")
                },
            })?;
        self.take_processed(&mut group, group_id, processed).await
    }

    /// Acts on what openmls made of a message of `group`: shows an application message,
    /// merges a commit, keeps a proposal for the next commit.
    async fn take_processed(
        &self,
        group: &mut MlsGroup,
        group_id: Vec<u8>,
        processed: ProcessedMessage,
    ) -> anyhow::Result<GroupEvent> {
        let sender = processed.credential().clone();
        let sender_key = group
            .members()
            .find(|member| member.credential == sender)
            .map(|member| member.signature_key);
        match processed.into_content() {
            ProcessedMessageContent::OwnPrivateMessage => Ok(GroupEvent::OwnMessage { group_id }),
            ProcessedMessageContent::ApplicationMessage(application) => {
                let sender = match sender_key {
                    Some(key) => self.verify(&sender, &key).await?,
                    // Sent in a past epoch by a member the commit since removed: openmls checked
                    // the signature against that epoch's leaf; the credential (checked when that
                    // leaf joined) vouches for its own key.
                    None => self.verify(&sender, &credential_key(&sender)?).await?,
                };
                Ok(GroupEvent::Message {
                    group_id,
                    sender,
                    text: application.into_bytes(),
                })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let removed = staged.self_removed();
                let before = super::groups::Trusted::members_of(group);
                group
                    .merge_staged_commit(self.mls.provider(), *staged)
                    .context("merging a commit")?;
                if removed {
                    // Nothing more can happen in it; a later Welcome starts afresh.
                    self.forget(&group_id)?;
                    return Ok(GroupEvent::Removed { group_id });
                }
                // Those the commit added must be in their logs.
                self.verify_members_logged(group, &before).await?;
                Ok(GroupEvent::Committed {
                    group_id,
                    epoch: group.epoch().as_u64(),
                })
            }
            ProcessedMessageContent::ProposalMessage(proposal) => {
                let by = match proposal.sender() {
                    Sender::Member(_) => {
                        let key = sender_key.context("the proposer is not a member")?;
                        Some(self.verify(&sender, &key).await?)
                    }
                    _ => None,
                };
                let what = proposal_for_people(group, &proposal);
                group
                    .store_pending_proposal(self.mls.provider().storage(), *proposal)
                    .map_err(|e| anyhow!("storing a proposal: {e}"))?;
                Ok(GroupEvent::Proposed { group_id, by, what })
            }
            _ => Ok(GroupEvent::Other),
        }
    }

    async fn join(&self, welcome: openmls::prelude::Welcome) -> anyhow::Result<GroupEvent> {
        // Decrypting the Welcome takes its KeyPackage out of the key store; it goes back if the
        // tree cannot be fetched now, so that the Welcome (left queued) can be tried again.
        let key_package = self.welcome_key_package(&welcome)?;
        let joining = StagedWelcome::build_from_welcome(
            self.mls.provider(),
            &self.mls.join_config(),
            welcome,
        )
        .context("decrypting the Welcome")?;
        let info = joining.processed_welcome().unverified_group_info();
        // A Welcome carries the tree of its epoch (the ratchet tree extension), or the server
        // keeps it (protocol-spec/groups.md, "Trees for joiners").
        let joining = if info.extensions().ratchet_tree().is_some() {
            joining
        } else {
            let (group_id, epoch) = (info.group_id().as_slice().to_vec(), info.epoch().as_u64());
            let fetched = self
                .connection
                .fetch_group_tree(&group_id, epoch)
                .await
                .with_context(|| format!("fetching the group's tree of epoch {epoch}"));
            let tree = match fetched {
                Ok(tree) => tree,
                Err(e) if invitation_lapsed(&e) => {
                    return Ok(GroupEvent::InvitationLapsed {
                        group_id,
                        reason: format!("{e:#}"),
                    })
                }
                Err(e) => {
                    if let (true, Some((reference, bundle))) = (is_transient(&e), key_package) {
                        self.mls
                            .provider()
                            .storage()
                            .write_key_package(&reference, &bundle)
                            .map_err(|e| anyhow!("restoring a KeyPackage: {e}"))?;
                    }
                    return Err(e);
                }
            };
            joining.with_ratchet_tree(
                RatchetTreeIn::tls_deserialize_exact(tree)
                    .context("the group's ratchet tree does not parse")?,
            )
        };
        // The server routes a Welcome only to a KeyPackage a commit adds, so whatever this
        // device still holds of the group (it was removed, or left, or missed its removal) is
        // over: the Welcome replaces it.
        let group = joining
            .replace_old_group()
            .build()
            .context("checking the Welcome")?
            .into_group(self.mls.provider())
            .context("joining from the Welcome")?;
        self.verify_members_logged(&group, &super::groups::Trusted::Nobody)
            .await?;
        Ok(GroupEvent::Joined {
            group_id: group.group_id().as_slice().to_vec(),
        })
    }

    /// The KeyPackage (with its private keys) that `welcome` is for, if this device holds it.
    fn welcome_key_package(
        &self,
        welcome: &openmls::prelude::Welcome,
    ) -> anyhow::Result<Option<(KeyPackageRef, KeyPackageBundle)>> {
        for secrets in welcome.secrets() {
            let reference = secrets.new_member();
            let bundle: Option<KeyPackageBundle> = self
                .mls
                .provider()
                .storage()
                .key_package(&reference)
                .map_err(|e| anyhow!("reading the key store: {e}"))?;
            if let Some(bundle) = bundle {
                return Ok(Some((reference, bundle)));
            }
        }
        Ok(None)
    }

    /// Fetches and processes the whole queue, acknowledging what was processed or can never
    /// be processed (reported as an `Err` event). A transient failure ([`is_transient`]) stops
    /// it: the messages from that one on stay queued, and the failure is returned.
    pub async fn receive(&self) -> anyhow::Result<Vec<(u64, anyhow::Result<GroupEvent>)>> {
        let mut events = self.take_caught_up();
        events.extend(self.receive_new().await?);
        Ok(events)
    }

    /// What [`GroupClient::receive`] fetches and processes anew.
    pub(super) async fn receive_new(
        &self,
    ) -> anyhow::Result<Vec<(u64, anyhow::Result<GroupEvent>)>> {
        // The queue first: a Welcome there makes this device a member before it reads the
        // group's log, and what was queued before the device read logs comes before them.
        let mut events = self.receive_from(ReadFrom::Queue).await?;
        for log in self.connection.list_group_logs().await?.logs {
            if log.has_unread() {
                events.extend(self.receive_log(log.group_id.as_slice()).await?);
            }
        }
        Ok(events)
    }

    /// Processes one group's log from this device's acknowledged position on, acknowledging
    /// what it processed. Events carry log positions.
    pub async fn receive_log(
        &self,
        group_id: &[u8],
    ) -> anyhow::Result<Vec<(u64, anyhow::Result<GroupEvent>)>> {
        self.receive_from(ReadFrom::Log(group_id)).await
    }

    /// Fetches and processes `from` until nothing is left, acknowledging what was processed or
    /// can never be processed; a transient failure stops it before the message that met it.
    async fn receive_from(
        &self,
        from: ReadFrom<'_>,
    ) -> anyhow::Result<Vec<(u64, anyhow::Result<GroupEvent>)>> {
        let mut events = Vec::new();
        loop {
            let messages = match from {
                ReadFrom::Queue => {
                    self.connection
                        .fetch_messages(0, 100, 1 << 20)
                        .await?
                        .messages
                }
                ReadFrom::Log(group_id) => {
                    match self
                        .connection
                        .fetch_group_log(group_id, 0, 100, 1 << 20)
                        .await
                    {
                        Ok(fetched) => fetched.messages,
                        // The window closed and was read to its end (by another connection,
                        // or just now): nothing left to read.
                        Err(e) if e.code() == Some(crate::protocol::ErrorCode::NotAMember) => {
                            return Ok(events)
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            if messages.is_empty() {
                return Ok(events);
            }
            let mut done = None;
            for message in &messages {
                let event = self.process(message).await;
                if matches!(&event, Err(e) if is_transient(e)) {
                    if let Some(done) = done {
                        self.acknowledge(from, done).await?;
                    }
                    return Err(event.unwrap_err().context(match from {
                        ReadFrom::Queue => format!(
                            "message {} stays queued; processing it failed for now",
                            message.seq
                        ),
                        ReadFrom::Log(_) => format!(
                            "log entry {} stays unacknowledged; processing it failed for now",
                            message.seq
                        ),
                    }));
                }
                events.push((message.seq, event));
                done = Some(message.seq);
            }
            if let Some(done) = done {
                self.acknowledge(from, done).await?;
            }
        }
    }

    async fn acknowledge(&self, from: ReadFrom<'_>, up_to: u64) -> Result<(), ClientError> {
        match from {
            ReadFrom::Queue => self.connection.ack_messages(up_to).await,
            ReadFrom::Log(group_id) => self.connection.ack_group_log(group_id, up_to).await,
        }
    }
}

/// What a proposal proposes, for people: "to leave", "to remove bob@localhost/2", ...
fn proposal_for_people(group: &MlsGroup, proposal: &QueuedProposal) -> String {
    match proposal.proposal() {
        Proposal::Remove(remove) if Sender::Member(remove.removed()) == *proposal.sender() => {
            "to leave".to_owned()
        }
        Proposal::Remove(remove) => {
            let removed = group
                .member_at(remove.removed())
                .and_then(|member| BasicCredential::try_from(member.credential).ok())
                .and_then(|basic| ClientCredential::tls_deserialize_exact(basic.identity()).ok())
                .map_or_else(
                    || format!("leaf {}", remove.removed().u32()),
                    |credential| credential.content.client.to_string(),
                );
            format!("to remove {removed}")
        }
        Proposal::Update(_) => "to update its keys".to_owned(),
        _ => "a change".to_owned(),
    }
}

/// Where a device reads its messages from: its queue, or one group's log.
#[derive(Clone, Copy)]
enum ReadFrom<'g> {
    Queue,
    Log(&'g [u8]),
}
