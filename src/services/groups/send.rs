//! Application messages: the fast path. A send needs no tree and no credential: what it needs of
//! its group (the epoch, the receiving members, which of them read the group's log) is kept in a
//! small send view at every change of the group, read together with the dedupe record.

use std::sync::Arc;

use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn, ProtocolMessage};
use tls_codec::Deserialize;

use super::check::invalid;
use super::rules::is_leaving;
use super::{fan_out, members_of, Groups};
use crate::protocol::{ClientId, MessageAccepted, MessageKind, SendMessageRequest};
use crate::services::{announce_queued, PushedMessage, ServiceError};
use crate::store::{
    Admission, Enqueued, Envelope, GroupRefusal, Remembered, RequestRecord, SendView,
};

/// Where one message goes: a copy in each of these queues, once in the log for the others.
struct Recipients<'a> {
    envelopes: Vec<Envelope>,
    log_readers: Vec<&'a ClientId>,
}

impl Groups {
    /// An application message from `caller`: queued for every other member (or logged once for
    /// those that read the group's log), refused queue by queue where a queue is full.
    pub async fn send(
        &self,
        caller: &ClientId,
        request: SendMessageRequest,
    ) -> Result<MessageAccepted, ServiceError> {
        let bytes = request.message.as_slice();
        let message = application_message(bytes)?;
        let group_id = message.group_id().as_slice().to_vec();
        let digest = super::request_digest(bytes);
        let accepted_at_ms = self.clock.now_ms();
        let view = match self
            .send_view(caller, &group_id, digest, accepted_at_ms)
            .await?
        {
            Ok(view) => view,
            // A retry of a message that was accepted (its answer lost) is not queued twice.
            Err(first) => return Ok(accepted(first, Vec::new())),
        };
        if message.epoch().as_u64() != view.epoch {
            return Err(ServiceError::WrongEpoch {
                current: view.epoch,
            });
        }
        let payload = Arc::new(bytes.to_vec());
        let recipients = recipients(caller, &view, &payload);
        let request = RequestRecord {
            group_id: group_id.clone(),
            digest,
            now_ms: accepted_at_ms,
            answer: accepted_at_ms,
            sender: caller.clone(),
        };
        self.deliver(&group_id, recipients, payload, request).await
    }
}

/// An application message's bytes as openmls reads them: an MLS message carrying a
/// PrivateMessage.
fn application_message(bytes: &[u8]) -> Result<ProtocolMessage, ServiceError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| invalid(&format!("the message does not parse: {e}")))?;
    let MlsMessageBodyIn::PrivateMessage(message) = message.extract() else {
        return Err(invalid(
            "an application message travels as a PrivateMessage",
        ));
    };
    Ok(ProtocolMessage::from(message))
}

impl Groups {
    /// The send view of the group, for a member that may send (`Err`: the time this very
    /// message was accepted before).
    async fn send_view(
        &self,
        caller: &ClientId,
        group_id: &[u8],
        digest: [u8; 32],
        now_ms: u64,
    ) -> Result<Result<SendView, u64>, ServiceError> {
        let view = match self
            .store
            .prepare_send(group_id, digest, caller, now_ms)
            .await?
        {
            (Remembered::Retry(first), _) => return Ok(Err(first)),
            (Remembered::Replay, _) => return Err(self.replay_refusal(caller, group_id).await),
            (Remembered::New, Some(view)) => view,
            (Remembered::New, None) => self.send_view_from_state(group_id).await?,
        };
        // Leaving clients are not in the view: they send nothing more.
        if !view.members.contains(caller) {
            return Err(ServiceError::NotAMember);
        }
        Ok(Ok(view))
    }

    /// Stores the message for its recipients in one commit (queues, the log, peers' outboxes),
    /// then tells those connected. Application messages are refused queue by queue, never as a
    /// whole.
    async fn deliver(
        &self,
        group_id: &[u8],
        recipients: Recipients<'_>,
        payload: Arc<Vec<u8>>,
        request: RequestRecord,
    ) -> Result<MessageAccepted, ServiceError> {
        let accepted_at_ms = request.now_ms;
        let (envelopes, remote) = fan_out::split(&self.domain, group_id, recipients.envelopes);
        let queued: Vec<ClientId> = envelopes
            .iter()
            .map(|envelope| envelope.client.clone())
            .collect();
        let log_readers = recipients.log_readers;
        let log = (!log_readers.is_empty()).then(|| payload.clone());
        let limits = self.queue_limits();
        let (outcomes, logged) = match self
            .store
            .deliver(
                envelopes.clone(),
                log,
                remote,
                accepted_at_ms,
                limits,
                Some(request),
            )
            .await?
        {
            Ok(outcomes) => outcomes,
            Err(GroupRefusal::Repeated(first)) => return Ok(accepted(first, Vec::new())),
            Err(refusal) => return Err(super::group_refusal(refusal)),
        };
        self.outbox_wake.wake();
        announce_queued(&*self.sessions, &envelopes, &outcomes, accepted_at_ms);
        let mut queue_full: Vec<ClientId> = queued
            .into_iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| **outcome == Enqueued::QueueFull)
            .map(|(client, _)| client)
            .collect();
        match logged {
            Some(Enqueued::Logged { gseq }) => {
                let message = PushedMessage {
                    seq: gseq,
                    enqueued_at_ms: accepted_at_ms,
                    kind: MessageKind::Mls,
                    carried: true,
                    payload,
                };
                let group_id: Arc<[u8]> = Arc::from(group_id);
                self.sessions
                    .log_appended(&log_readers, &group_id, &message);
            }
            Some(_) => queue_full.extend(log_readers.into_iter().cloned()),
            None => {}
        }
        Ok(accepted(accepted_at_ms, queue_full))
    }

    /// The send view of a group stored before send views were kept, from its full state.
    async fn send_view_from_state(&self, group_id: &[u8]) -> Result<SendView, ServiceError> {
        let group = self.load(group_id).await?;
        let members: Vec<ClientId> = members_of(&group.public)?
            .into_iter()
            .filter(|(client, _)| !is_leaving(&group.stored, client))
            .map(|(client, _)| client)
            .collect();
        // Groups this old have no log readers: a client's window opens with a group change.
        Ok(SendView {
            epoch: group.stored.epoch,
            log_readers: vec![false; members.len()],
            members,
        })
    }
}

/// Members that read the group's log get the message once, in the log; the others a copy in
/// their queues; the sender neither.
fn recipients<'a>(caller: &ClientId, view: &'a SendView, payload: &Arc<Vec<u8>>) -> Recipients<'a> {
    let mut recipients = Recipients {
        envelopes: Vec::new(),
        log_readers: Vec::new(),
    };
    for (member, reads_log) in view.members.iter().zip(&view.log_readers) {
        if member == caller {
            continue;
        }
        if *reads_log {
            recipients.log_readers.push(member);
            continue;
        }
        recipients.envelopes.push(Envelope::new(
            member.clone(),
            MessageKind::Mls,
            payload.clone(),
            Admission::Message,
        ));
    }
    recipients
}

fn accepted(accepted_at_ms: u64, queue_full: Vec<ClientId>) -> MessageAccepted {
    MessageAccepted {
        accepted_at_ms,
        queue_full,
    }
}
