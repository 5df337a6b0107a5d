//! The one path of every commit, proposal and removal: parse, answer a retry from the dedupe
//! window, load the group, run [`super::check`]'s pure check around the keys it asks for, store
//! the transition with its fan-out, and map what the store refused. What differs between the
//! three is in the check; the I/O is here, once.

use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn, ProtocolMessage};
use tls_codec::Deserialize;

use super::check::{self, invalid, Checked, CommitParts, GroupNow};
use super::Groups;
use crate::protocol::{ClientId, GroupEpoch, SendCommitRequest, SendProposalRequest};
use crate::services::ServiceError;
use crate::store::{GroupRefusal, Remembered, RequestRecord};

/// What a member, or the server itself, asks of a group.
enum Operation<'a> {
    Commit(&'a SendCommitRequest),
    Proposal(&'a SendProposalRequest),
    /// The server's own proposal to remove a client that no longer exists.
    Removal,
}

/// A client's MLS message, parsed: its group, and its digest in the dedupe window.
struct Parsed {
    group_id: Vec<u8>,
    digest: [u8; 32],
    message: ProtocolMessage,
}

/// A removal the server proposes is tried again this often when a commit lands in between.
const REMOVAL_ATTEMPTS: usize = 3;

impl Groups {
    /// A commit from `caller`: checked, ordered and fanned out; answered with the new epoch.
    pub async fn commit(
        &self,
        caller: &ClientId,
        request: SendCommitRequest,
    ) -> Result<GroupEpoch, ServiceError> {
        let parsed = parse_public(request.commit.as_slice(), "commit")?;
        let group_id = parsed.group_id.clone();
        let epoch = self
            .operate(caller, Operation::Commit(&request), Some(parsed), &group_id)
            .await?;
        Ok(GroupEpoch {
            group_id: group_id.into(),
            epoch,
        })
    }

    /// A Remove or Update proposal on its own: stored until a commit covers it, fanned out so
    /// members can commit it. A self-removal (leaving) takes the client out of delivery at once.
    pub async fn propose(
        &self,
        caller: &ClientId,
        request: SendProposalRequest,
    ) -> Result<(), ServiceError> {
        let parsed = parse_public(request.proposal.as_slice(), "proposal")?;
        let group_id = parsed.group_id.clone();
        self.operate(
            caller,
            Operation::Proposal(&request),
            Some(parsed),
            &group_id,
        )
        .await
        .map(|_| ())
    }

    /// As the group's external sender, proposes to remove `departed`, a client that no longer
    /// exists, from `group_id` (nothing if it is not a member or its removal is pending).
    pub(super) async fn propose_removal(
        &self,
        departed: &ClientId,
        group_id: &[u8],
    ) -> Result<(), ServiceError> {
        self.operate(departed, Operation::Removal, None, group_id)
            .await
            .map(|_| ())
    }

    /// Runs `operation` for `actor` (the sender; for a removal, the departed client) on
    /// `group_id`, with the client's message `parsed` (none for a removal). Returns the answer.
    async fn operate(
        &self,
        actor: &ClientId,
        operation: Operation<'_>,
        parsed: Option<Parsed>,
        group_id: &[u8],
    ) -> Result<u64, ServiceError> {
        let now_ms = self.clock.now_ms();
        let (digest, mut message) = match parsed {
            Some(parsed) => (Some(parsed.digest), Some(parsed.message)),
            None => (None, None),
        };
        if let Some(digest) = digest {
            // A retry of a request that was accepted (its answer lost) gets the first answer.
            match self.remembered(actor, group_id, digest, now_ms).await? {
                Remembered::Retry(answer) => return Ok(answer),
                Remembered::Replay => return Err(self.replay_refusal(actor, group_id).await),
                Remembered::New => {}
            }
        }
        let attempts = match operation {
            Operation::Removal => REMOVAL_ATTEMPTS,
            _ => 1,
        };
        for _ in 0..attempts {
            let group = self.load(group_id).await?;
            let now = GroupNow {
                members: super::members_of(&group.public)?,
                group,
            };
            // Only the server's own removal is tried again, and it brings no message.
            let Some(mut checked) = self.check(actor, &operation, now, message.take()).await?
            else {
                return Ok(0);
            };
            checked.transition.request = digest.map(|digest| RequestRecord {
                group_id: group_id.to_vec(),
                digest,
                now_ms,
                answer: checked.answer,
                sender: actor.clone(),
            });
            match self.store_transition(group_id, checked.transition).await? {
                Ok(()) => {
                    if let Operation::Removal = operation {
                        tracing::info!(client = %actor, group = %hex::encode(group_id), "proposed the removal of a departed client");
                    }
                    return Ok(checked.answer);
                }
                // The same request, retried while the first was being stored.
                Err(GroupRefusal::Repeated(answer)) => return Ok(answer),
                // A commit landed in between: the server proposes again at the new epoch.
                Err(GroupRefusal::WrongEpoch { .. }) if attempts > 1 => continue,
                // The group went meanwhile: nothing to remove the departed client from.
                Err(GroupRefusal::Unknown | GroupRefusal::Exists) if digest.is_none() => {
                    return Ok(0)
                }
                Err(refusal) => return Err(super::group_refusal(refusal)),
            }
        }
        Err(ServiceError::WrongEpoch { current: 0 })
    }

    /// The pure check of `operation`, with the keys it asks for fetched in between its halves.
    /// `None`: nothing to do (a removal already pending).
    async fn check(
        &self,
        actor: &ClientId,
        operation: &Operation<'_>,
        now: GroupNow,
        message: Option<ProtocolMessage>,
    ) -> Result<Option<Checked>, ServiceError> {
        let host = self.host();
        let message = || message.ok_or_else(|| invalid("the request carries no message"));
        Ok(Some(match operation {
            Operation::Commit(request) => {
                let processed = check::process(&host, &now, message()?, "commit")?;
                let staged = check::stage_commit(&host, actor, now, processed)?;
                let clients = self.verify_leaves(&staged.leaves()).await?;
                let parts = CommitParts {
                    commit: request.commit.as_slice(),
                    group_info: request.group_info.as_slice(),
                    welcome: request.welcome.as_ref().map(|welcome| welcome.as_slice()),
                };
                check::finish_commit(&host, actor, staged, &clients, parts)?
            }
            Operation::Proposal(request) => {
                let processed = check::process(&host, &now, message()?, "proposal")?;
                let staged = check::stage_proposal(actor, now, processed)?;
                let clients = self.verify_leaves(&staged.leaves()).await?;
                check::finish_proposal(actor, staged, &clients, request.proposal.as_slice())?
            }
            Operation::Removal => {
                let (sender_index, public_key) = check::server_sender(&host, &now.group.public)
                    .ok_or_else(|| invalid("the group lists no key of this server"))?;
                let signing_key = self
                    .accounts
                    .server_signer(&public_key)
                    .ok_or_else(|| invalid("this server no longer holds the group's key"))?;
                let signer = check::server_signer(&signing_key, public_key);
                return check::check_removal(&host, actor, now, (sender_index, signer));
            }
        }))
    }
}

/// A commit or proposal: an MLS message that travels as a PublicMessage.
fn parse_public(bytes: &[u8], what: &str) -> Result<Parsed, ServiceError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| invalid(&format!("the {what} does not parse: {e}")))?;
    let MlsMessageBodyIn::PublicMessage(message) = message.extract() else {
        return Err(invalid(&format!("a {what} travels as a PublicMessage")));
    };
    let message = ProtocolMessage::from(message);
    Ok(Parsed {
        group_id: message.group_id().as_slice().to_vec(),
        digest: super::request_digest(bytes),
        message,
    })
}
