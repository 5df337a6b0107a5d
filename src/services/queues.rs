//! The queue service: puts messages into client queues (for the other services), lets clients
//! fetch and acknowledge them, purges what outlived the retention, and tells connected clients
//! at once. Owns the queue tables.

use std::sync::Arc;

use tls_codec::{Deserialize, Serialize};

use super::{ServiceError, Sessions};
use crate::clock::Clock;
use crate::config::{QueuePolicy, ServerConfig};
use crate::escape::Escaped;
use crate::identity::UserId;
use crate::protocol::{
    AckGroupLogRequest, AckMessagesRequest, ClientId, DeliverRequest, FetchGroupLogRequest,
    FetchMessagesRequest, FetchedMessages, GroupLogCursor, GroupLogMessages, GroupLogs,
    MessageKind, MessagesExpired, QueuedMessage, ServerNotice, MAX_FETCH_COUNT, MAX_RESPONSE_LEN,
};
use crate::store::{
    Admission, DeliveryRefusal, Enqueued, Envelope, IncomingDelivery, LogRefusal, QueueLimits,
    Store, MAX_ROUTES_PER_PEER,
};

/// Length of a delivery id (federation.md): what the receiver keeps per delivery to dedupe.
pub const DELIVERY_ID_LEN: usize = 16;
/// How long a received delivery id is kept to recognise a retry (federation.md): a hub retries
/// an unacknowledged delivery within minutes, never after this long.
pub const DELIVERY_DEDUPE_WINDOW: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 60 * 60);
/// Delivery ids forgotten per maintenance run at most (bounds that write transaction).
const DELIVERY_IDS_PURGED_PER_RUN: usize = 100_000;

/// Room kept in a fetch response for everything but the payloads.
const FETCH_OVERHEAD_ALLOWANCE: usize = 64 * 1024;
/// Per-message framing in a fetch response, counted against the byte budget.
const PER_MESSAGE_OVERHEAD: usize = 32;

/// A message for some clients.
pub struct Delivery {
    pub recipients: Vec<ClientId>,
    pub kind: MessageKind,
    pub payload: Vec<u8>,
}

pub struct Queues {
    store: Store,
    clock: Arc<dyn Clock>,
    sessions: Arc<dyn Sessions>,
    policy: QueuePolicy,
}

impl Queues {
    pub fn new(config: &ServerConfig, store: Store, sessions: Arc<dyn Sessions>) -> Self {
        Self {
            store,
            clock: config.clock.clone(),
            sessions,
            policy: config.queues.clone(),
        }
    }

    fn limits(&self) -> QueueLimits {
        super::queues::queue_limits(&self.policy)
    }

    /// Queues every delivery for its recipients in one commit, then tells the connected ones.
    /// Returns what became of each recipient, delivery by delivery.
    pub async fn deliver(
        &self,
        deliveries: Vec<Delivery>,
    ) -> Result<Vec<Vec<(ClientId, Enqueued)>>, ServiceError> {
        let mut envelopes = Vec::new();
        let mut shape = Vec::with_capacity(deliveries.len());
        for delivery in &deliveries {
            let payload = Arc::new(delivery.payload.clone());
            shape.push(delivery.recipients.len());
            for recipient in &delivery.recipients {
                envelopes.push(Envelope::new(
                    recipient.clone(),
                    delivery.kind,
                    payload.clone(),
                    admission(delivery.kind, &payload),
                ));
            }
        }
        let now_ms = self.clock.now_ms();
        let outcomes = self
            .store
            .enqueue(envelopes.clone(), now_ms, self.limits())
            .await?
            .map_err(|full| ServiceError::QueueFull { full })?;
        super::announce_queued(&*self.sessions, &envelopes, &outcomes, now_ms);
        let mut outcomes = outcomes.into_iter();
        let mut report = Vec::with_capacity(deliveries.len());
        for (delivery, count) in deliveries.iter().zip(shape) {
            let per_recipient = delivery
                .recipients
                .iter()
                .cloned()
                .zip(outcomes.by_ref().take(count))
                .collect();
            report.push(per_recipient);
        }
        Ok(report)
    }

    /// Tells `client` `notification` on its push stream, or queues `notice` for it when no
    /// connection took the notification.
    pub async fn tell(
        &self,
        client: &ClientId,
        notification: crate::protocol::Notification,
        notice: ServerNotice,
    ) -> Result<(), ServiceError> {
        if self.sessions.notify(client, &notification) == 0 {
            // Not connected (or not reading): the notice waits in its queue.
            self.notice(client, &notice).await?;
        }
        Ok(())
    }

    /// Queues a server notice for one client.
    pub async fn notice(
        &self,
        client: &ClientId,
        notice: &ServerNotice,
    ) -> Result<Enqueued, ServiceError> {
        let payload = notice
            .tls_serialize_detached()
            .map_err(|e| ServiceError::Store(crate::store::StoreError::Corrupt(e.to_string())))?;
        let report = self
            .deliver(vec![Delivery {
                recipients: vec![client.clone()],
                kind: MessageKind::ServerNotice,
                payload,
            }])
            .await?;
        Ok(report
            .first()
            .and_then(|outcomes| outcomes.first())
            .map_or(Enqueued::UnknownClient, |(_, outcome)| *outcome))
    }

    /// Stores deliveries from the homeserver of `peer` in order, each exactly once (a retried
    /// delivery id is acknowledged and ignored), in one commit, and tells the connected
    /// recipients. Stops at the first delivery it refuses: returns how many before it were
    /// stored (or had been) and why it refused that one. Every recipient must be a client of
    /// this server (`local_domain`).
    pub async fn receive_deliveries(
        &self,
        peer: &str,
        local_domain: &str,
        deliveries: Vec<DeliverRequest>,
    ) -> Result<(usize, Option<ServiceError>), ServiceError> {
        let mut checked = Vec::with_capacity(deliveries.len());
        let mut invalid = None;
        for delivery in &deliveries {
            match incoming_delivery(peer, local_domain, delivery) {
                Ok(incoming) => checked.push(incoming),
                Err(e) => {
                    invalid = Some(e);
                    break;
                }
            }
        }
        let now_ms = self.clock.now_ms();
        let (stored, refusal) = self
            .store
            .receive_deliveries(peer, checked.clone(), now_ms, self.limits())
            .await?;
        for (incoming, outcomes) in checked.iter().zip(&stored) {
            // `None`: a repeated delivery, queued the first time.
            let Some(outcomes) = outcomes else {
                continue;
            };
            let envelopes = &incoming.envelopes;
            // One line per delivery, not per recipient: a peer naming 20,000 unknown clients
            // must not write 20,000 lines (and what it named is escaped).
            let mut not_queued = envelopes.iter().zip(outcomes).filter(|(_, outcome)| {
                !matches!(outcome, Enqueued::Queued { .. } | Enqueued::Coalesced)
            });
            if let Some((first, outcome)) = not_queued.next() {
                let first = first.client.to_string();
                tracing::warn!(
                    peer = %Escaped(peer),
                    not_queued = 1 + not_queued.count(),
                    first = %Escaped(&first),
                    ?outcome,
                    "a delivery named recipients that are not clients here"
                );
            }
            super::announce_queued(&*self.sessions, envelopes, outcomes, now_ms);
        }
        let refusal = refusal.map(|refusal| match refusal {
            // A group has one hub: a second peer claiming it is refused.
            DeliveryRefusal::OtherHub(hub) => {
                ServiceError::PeerRefused(format!("that group is hosted by {hub}, not {peer}"))
            }
            DeliveryRefusal::HostedHere => {
                ServiceError::PeerRefused("that group is hosted here".into())
            }
            DeliveryRefusal::TooManyGroups => ServiceError::PeerRefused(format!(
                "{peer} already has {MAX_ROUTES_PER_PEER} groups that deliver here"
            )),
            DeliveryRefusal::QueueFull(full) => ServiceError::QueueFull { full },
        });
        Ok((stored.len(), refusal.or(invalid)))
    }

    pub async fn fetch(
        &self,
        caller: &ClientId,
        request: FetchMessagesRequest,
    ) -> Result<FetchedMessages, ServiceError> {
        let (max_count, max_bytes) = fetch_bounds(request.max_count, request.max_bytes);
        let (messages, next_seq) = self
            .store
            .fetch_messages(caller, request.from_seq, max_count, max_bytes)
            .await?;
        let messages = messages
            .into_iter()
            .map(|message| {
                let kind = MessageKind::from_u8(message.kind).ok_or_else(|| {
                    ServiceError::Store(crate::store::StoreError::Corrupt(format!(
                        "queued message of unknown kind {}",
                        message.kind
                    )))
                })?;
                Ok(QueuedMessage {
                    seq: message.seq,
                    enqueued_at_ms: message.enqueued_at_ms,
                    kind,
                    payload: message.payload.into(),
                })
            })
            .collect::<Result<_, ServiceError>>()?;
        Ok(FetchedMessages { messages, next_seq })
    }

    pub async fn ack(
        &self,
        caller: &ClientId,
        request: AckMessagesRequest,
    ) -> Result<(), ServiceError> {
        self.store
            .ack_messages(caller, request.up_to_seq)
            .await?
            .map_err(|next_seq| ServiceError::InvalidSequence {
                up_to_seq: request.up_to_seq,
                next_seq,
            })
    }

    /// From now on the caller reads the MLS messages of groups hosted here from their logs.
    pub async fn use_group_logs(&self, caller: &ClientId) -> Result<(), ServiceError> {
        self.store.use_group_logs(caller).await?;
        Ok(())
    }

    /// The group logs the caller may read, with its positions.
    pub async fn list_group_logs(&self, caller: &ClientId) -> Result<GroupLogs, ServiceError> {
        let cursors = self.store.group_log_cursors(caller).await?;
        Ok(GroupLogs {
            logs: cursors
                .into_iter()
                .map(|cursor| GroupLogCursor {
                    group_id: cursor.group_id.into(),
                    acked_gseq: cursor.acked,
                    next_gseq: cursor.next,
                    last_gseq: cursor.last.unwrap_or(0),
                })
                .collect(),
        })
    }

    /// Entries of a group log the caller may read, within the same bounds as a queue fetch.
    pub async fn fetch_group_log(
        &self,
        caller: &ClientId,
        request: FetchGroupLogRequest,
    ) -> Result<GroupLogMessages, ServiceError> {
        check_group_id_len(request.group_id.as_slice())?;
        let (max_count, max_bytes) = fetch_bounds(request.max_count, request.max_bytes);
        let read = self
            .store
            .fetch_group_log(
                caller,
                request.group_id.as_slice(),
                request.from_gseq,
                max_count,
                max_bytes,
            )
            .await?
            .map_err(|_| ServiceError::NotAMember)?;
        Ok(GroupLogMessages {
            group_id: request.group_id,
            messages: read
                .entries
                .into_iter()
                .map(|(gseq, enqueued_at_ms, payload)| QueuedMessage {
                    seq: gseq,
                    enqueued_at_ms,
                    kind: MessageKind::Mls,
                    payload: payload.into(),
                })
                .collect(),
            next_gseq: read.next,
            last_gseq: read.last.unwrap_or(0),
        })
    }

    /// Acknowledges a group log's entries up to a position for the caller.
    pub async fn ack_group_log(
        &self,
        caller: &ClientId,
        request: AckGroupLogRequest,
    ) -> Result<(), ServiceError> {
        check_group_id_len(request.group_id.as_slice())?;
        self.store
            .ack_group_log(caller, request.group_id.as_slice(), request.up_to_gseq)
            .await?
            .map_err(|refusal| match refusal {
                LogRefusal::NotAReader => ServiceError::NotAMember,
                LogRefusal::BeyondReadable { readable } => ServiceError::InvalidSequence {
                    up_to_seq: request.up_to_gseq,
                    next_seq: readable + 1,
                },
            })
    }

    /// Forgets the ids of deliveries received longer ago than `DELIVERY_DEDUPE_WINDOW`.
    pub async fn purge_received_deliveries(&self) -> Result<usize, ServiceError> {
        let window = u64::try_from(DELIVERY_DEDUPE_WINDOW.as_millis()).unwrap_or(u64::MAX);
        let cutoff = self.clock.now_ms().saturating_sub(window);
        Ok(self
            .store
            .purge_received_deliveries(cutoff, DELIVERY_IDS_PURGED_PER_RUN)
            .await?)
    }

    /// Deletes messages older than the retention and queues each affected client a
    /// `MessagesExpired` notice. Returns how many messages were deleted.
    pub async fn purge_expired(&self) -> Result<u64, ServiceError> {
        let retention_ms = u64::try_from(self.policy.retention.as_millis()).unwrap_or(u64::MAX);
        let cutoff = self.clock.now_ms().saturating_sub(retention_ms);
        let report = self.store.purge_expired_messages(cutoff).await?;
        // Log entries expire alike; their readers find the log starting later.
        let mut purged = self.store.purge_expired_log_entries(cutoff).await?;
        // The trees kept for Welcomes go with the Welcomes.
        self.store.purge_expired_group_trees(cutoff).await?;
        for expired in report {
            purged += expired.count;
            let client = expired.client;
            let notice = ServerNotice::MessagesExpired(MessagesExpired {
                count: expired.count,
                first_seq: expired.first_seq,
                last_seq: expired.last_seq,
            });
            if let Err(e) = self.notice(&client, &notice).await {
                tracing::warn!(%client, error = %e, "cannot queue the expiry notice");
            }
        }
        Ok(purged)
    }
}

/// How a message is admitted into a queue (protocol-spec/queues.md, "Full queues"): handshake
/// messages (MLS PublicMessages: commits and proposals) and Welcomes past the limits, within a
/// reserve; application messages within them; KeyPackagesLow notices coalesced.
pub(super) fn admission(kind: MessageKind, payload: &[u8]) -> Admission {
    /// `MLSMessage.wire_format` (RFC 9420 section 6) of a PublicMessage, after the version.
    const MLS_PUBLIC_MESSAGE: [u8; 2] = [0, 1];
    /// The `ServerNotice` discriminant of `KeyPackagesLow`.
    const KEY_PACKAGES_LOW: [u8; 2] = [0, 1];
    match kind {
        MessageKind::Welcome => Admission::Handshake,
        MessageKind::Mls if payload.get(2..4) == Some(&MLS_PUBLIC_MESSAGE[..]) => {
            Admission::Handshake
        }
        MessageKind::Mls => Admission::Message,
        MessageKind::ServerNotice => Admission::Notice {
            coalesce: (payload.get(..2) == Some(&KEY_PACKAGES_LOW[..])).then_some(1),
        },
    }
}

/// The group id in an MLS message's framing (PublicMessage or PrivateMessage), without
/// verifying anything else.
pub(super) fn mls_group_id(payload: &[u8]) -> Option<Vec<u8>> {
    // MLSMessage: uint16 version; uint16 wire_format; then the message, which starts with
    // opaque group_id<V> (RFC 9420 sections 6 and 6.2-6.3) for both framings.
    const PUBLIC_MESSAGE: [u8; 2] = [0, 1];
    const PRIVATE_MESSAGE: [u8; 2] = [0, 2];
    let wire_format = payload.get(2..4)?;
    if wire_format != PUBLIC_MESSAGE && wire_format != PRIVATE_MESSAGE {
        return None;
    }
    // The vector's length prefix (RFC 9420 section 2.1.2): the top two bits of its first byte
    // say whether it is 1, 2 or 4 bytes long. Read by hand: tls_codec's byte-slice reader
    // debug-asserts on a short input, and this input comes from a peer.
    let rest = payload.get(4..)?;
    let first = *rest.first()?;
    let prefix_len = match first >> 6 {
        0 => 1,
        1 => 2,
        2 => 4,
        _ => return None,
    };
    let prefix = rest.get(..prefix_len)?;
    let len = prefix[1..]
        .iter()
        .fold(usize::from(first & 0x3f), |len, byte| {
            (len << 8) | usize::from(*byte)
        });
    Some(rest.get(prefix_len..)?.get(..len)?.to_vec())
}

/// The store's queue limits from the operator's policy.
pub(super) fn queue_limits(policy: &QueuePolicy) -> QueueLimits {
    QueueLimits {
        max_messages: policy.max_messages,
        max_bytes: policy.max_bytes,
        max_user_bytes: policy.max_bytes_per_user,
        max_server_bytes: policy.max_bytes_total,
    }
}

/// How many messages, and how many payload bytes, a fetch of the queue or of a log returns at
/// most for what the client asked: the framing of each message counts against the bytes too,
/// so the response stays within the response limit whatever the client asks for.
fn fetch_bounds(max_count: u32, max_bytes: u32) -> (usize, usize) {
    let max_count = max_count.clamp(1, MAX_FETCH_COUNT) as usize;
    let budget = (max_bytes as usize).min(MAX_RESPONSE_LEN - FETCH_OVERHEAD_ALLOWANCE);
    (
        max_count,
        budget.saturating_sub(max_count * PER_MESSAGE_OVERHEAD),
    )
}

/// A group id longer than any group's is refused before it is looked up.
fn check_group_id_len(group_id: &[u8]) -> Result<(), ServiceError> {
    if group_id.len() > crate::identity::MAX_GROUP_ID_LEN {
        return Err(ServiceError::InvalidGroupId);
    }
    Ok(())
}

/// Checks a delivery from `peer` against what a peer may deliver here, and turns it into
/// envelopes for its recipients.
fn incoming_delivery(
    peer: &str,
    local_domain: &str,
    delivery: &DeliverRequest,
) -> Result<IncomingDelivery, ServiceError> {
    if delivery.delivery_id.as_slice().len() != DELIVERY_ID_LEN {
        return Err(ServiceError::PeerRefused(format!(
            "a delivery id is {DELIVERY_ID_LEN} bytes"
        )));
    }
    // A group's hub is the server its id names: a peer delivers only for groups it hosts.
    let group_id = delivery.group_id.as_slice();
    if crate::identity::group_hub(group_id)
        .as_ref()
        .map(|hub| hub.as_str())
        != Some(peer)
    {
        return Err(ServiceError::PeerRefused(format!(
            "{peer} does not host the group the delivery names"
        )));
    }
    let mut envelopes = Vec::new();
    for item in &delivery.items {
        if item.kind == MessageKind::Mls
            && mls_group_id(item.payload.as_slice()).as_deref() != Some(group_id)
        {
            return Err(ServiceError::PeerRefused(
                "a delivered MLS message is not for the delivery's group".into(),
            ));
        }
        let payload = Arc::new(item.payload.as_slice().to_vec());
        for recipient in &item.recipients {
            let user = UserId::parse_canonical(recipient.user_id.as_str())
                .map_err(ServiceError::InvalidUserId)?;
            if user.domain() != local_domain {
                return Err(ServiceError::PeerRefused(format!(
                    "{recipient} is not a client of this homeserver"
                )));
            }
            // An application message for a full queue waits in the hub's outbox.
            let admission = match admission(item.kind, &payload) {
                Admission::Message => Admission::MessageOrRefuseAll,
                other => other,
            };
            envelopes.push(Envelope::new(
                recipient.clone(),
                item.kind,
                payload.clone(),
                admission,
            ));
        }
    }
    // A delivery for nobody would only leave a route behind.
    if envelopes.is_empty() {
        return Err(ServiceError::PeerRefused(
            "a delivery names at least one recipient".into(),
        ));
    }
    // The hub telling of the group's deletion: its route goes with it.
    let group_deleted = delivery.items.iter().any(|item| {
        item.kind == MessageKind::ServerNotice
            && matches!(
                ServerNotice::tls_deserialize_exact(item.payload.as_slice()),
                Ok(ServerNotice::GroupDeleted(deleted)) if deleted.group_id.as_slice() == group_id
            )
    });
    Ok(IncomingDelivery {
        delivery_id: delivery.delivery_id.as_slice().to_vec(),
        group_id: group_id.to_vec(),
        group_deleted,
        envelopes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_id_is_read_from_mls_framing_and_garbage_reads_as_none() {
        // version 1, PublicMessage, group id "g1", then whatever follows.
        assert_eq!(
            mls_group_id(&[0, 1, 0, 1, 2, b'g', b'1', 9, 9]),
            Some(b"g1".to_vec())
        );
        assert_eq!(mls_group_id(&[0, 1, 0, 2, 0]), Some(Vec::new()));
        for garbage in [
            &[][..],
            &[0],
            &[0, 1, 0],
            &[0, 1, 0, 3, 2, b'g', b'1'],
            &[0, 1, 0, 1, 5, b'g'],
            &[0, 1, 0, 1, 0xff, 0xff],
        ] {
            assert_eq!(mls_group_id(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn handshakes_and_welcomes_use_the_reserve_and_low_stock_notices_coalesce() {
        assert_eq!(
            admission(MessageKind::Mls, &[0, 1, 0, 1]),
            Admission::Handshake
        );
        assert_eq!(
            admission(MessageKind::Mls, &[0, 1, 0, 2]),
            Admission::Message
        );
        assert_eq!(admission(MessageKind::Mls, &[]), Admission::Message);
        assert_eq!(admission(MessageKind::Welcome, &[]), Admission::Handshake);
        assert_eq!(
            admission(MessageKind::ServerNotice, &[0, 1]),
            Admission::Notice { coalesce: Some(1) }
        );
        assert_eq!(
            admission(MessageKind::ServerNotice, &[0, 3]),
            Admission::Notice { coalesce: None }
        );
    }
}
