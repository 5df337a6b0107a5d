//! Events between the nodes of one domain that share a PostgreSQL store: what one node's services
//! do to clients that may be connected to another node (hints of new messages, notifications,
//! disconnection) and work for a job another node may run (the federation outbox).
//!
//! ```text
//! struct { uint64 origin; ClusterEvent event; } ClusterEnvelope;
//! ```
//!
//! An event travels as the payload of one PostgreSQL `NOTIFY` (at most
//! [`MAX_CLUSTER_EVENT_LEN`] bytes). Only nodes write them, but they are decoded like any other
//! input: size checked first, every byte consumed.

use tls_codec::{Deserialize, Serialize, TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use super::{ClientId, DecodeError, MessageKind, Notification};

/// The largest encoded event (PostgreSQL's NOTIFY payload limit, less the base64 expansion).
pub const MAX_CLUSTER_EVENT_LEN: usize = 5_600;

/// An event and the node that sent it (each node skips its own).
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ClusterEnvelope {
    pub origin: u64,
    pub event: ClusterEvent,
}

#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u8)]
pub enum ClusterEvent {
    /// A message was queued for `client` (a `NewMessages` hint on its connections).
    #[tls_codec(discriminant = 1)]
    NewMessage(QueuedHint),
    /// A message was appended to the log of `group_id`, which `readers` read.
    #[tls_codec(discriminant = 2)]
    LogAppended(LogAppendedHint),
    /// A notification for every connection of `client`.
    #[tls_codec(discriminant = 3)]
    Notify(ClientNotification),
    /// `client` was removed: close its connections.
    #[tls_codec(discriminant = 4)]
    Disconnect(ClientId),
    /// Deliveries were queued for peer homeservers: whichever node drains the outbox sends them.
    #[tls_codec(discriminant = 5)]
    OutboxWork,
    /// `client` added or removed a push target: nodes re-read whether it has any.
    #[tls_codec(discriminant = 6)]
    PushTargetsChanged(ClientId),
}

/// A message as a hint carries it; no `payload` when the message was too large for an event:
/// the hint then only announces it.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct HintedMessage {
    pub seq: u64,
    pub enqueued_at_ms: u64,
    pub kind: MessageKind,
    pub payload: Option<VLBytes>,
}

#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct QueuedHint {
    pub client: ClientId,
    pub message: HintedMessage,
}

#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct LogAppendedHint {
    pub readers: Vec<ClientId>,
    pub group_id: VLBytes,
    pub message: HintedMessage,
}

#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ClientNotification {
    pub client: ClientId,
    pub notification: Notification,
}

/// Encodes `envelope`, or `None` if it is larger than an event may be.
pub fn encode_cluster_event(envelope: &ClusterEnvelope) -> Option<Vec<u8>> {
    envelope
        .tls_serialize_detached()
        .ok()
        .filter(|bytes| bytes.len() <= MAX_CLUSTER_EVENT_LEN)
}

pub fn decode_cluster_event(bytes: &[u8]) -> Result<ClusterEnvelope, DecodeError> {
    if bytes.len() > MAX_CLUSTER_EVENT_LEN {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit: MAX_CLUSTER_EVENT_LEN,
        });
    }
    Ok(ClusterEnvelope::tls_deserialize_exact(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Text;

    fn client() -> ClientId {
        ClientId {
            user_id: Text::new("bob@b.example").unwrap(),
            device_id: 3,
        }
    }

    #[test]
    fn events_round_trip_and_refuse_trailing_bytes_and_oversize() {
        let message = HintedMessage {
            seq: 7,
            enqueued_at_ms: 1_700_000_000_000,
            kind: MessageKind::Mls,
            payload: Some(vec![1, 2, 3].into()),
        };
        for event in [
            ClusterEvent::NewMessage(QueuedHint {
                client: client(),
                message: message.clone(),
            }),
            ClusterEvent::LogAppended(LogAppendedHint {
                readers: vec![client(), client()],
                group_id: vec![9; 32].into(),
                message,
            }),
            ClusterEvent::Disconnect(client()),
            ClusterEvent::OutboxWork,
            ClusterEvent::PushTargetsChanged(client()),
        ] {
            let envelope = ClusterEnvelope { origin: 42, event };
            let bytes = encode_cluster_event(&envelope).unwrap();
            assert_eq!(decode_cluster_event(&bytes).unwrap(), envelope);
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode_cluster_event(&longer).is_err());
        }
        let huge = ClusterEnvelope {
            origin: 1,
            event: ClusterEvent::NewMessage(QueuedHint {
                client: client(),
                message: HintedMessage {
                    seq: 1,
                    enqueued_at_ms: 1,
                    kind: MessageKind::Mls,
                    payload: Some(vec![0; MAX_CLUSTER_EVENT_LEN].into()),
                },
            }),
        };
        assert!(encode_cluster_event(&huge).is_none());
        assert!(matches!(
            decode_cluster_event(&vec![0; MAX_CLUSTER_EVENT_LEN + 1]),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
