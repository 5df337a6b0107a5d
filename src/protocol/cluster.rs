//! Events between the nodes of one domain that share a PostgreSQL store: what one node's services
//! do to clients that may be connected to another node (hints of new messages, notifications,
//! disconnection) and work for a job another node may run (the federation outbox).
//!
//! ```text
//! struct { uint64 origin; ClusterEvent event; } ClusterEnvelope;
//! ```
//!
//! An event travels sealed ([`seal_cluster_event`]) as the payload of one PostgreSQL `NOTIFY`:
//!
//! ```text
//! struct {
//!     opaque tag[32];      /* HMAC-SHA256(event key, the rest) */
//!     uint64 sent_at_ms;   /* when the sending node sealed it */
//!     uint64 seq;          /* per origin, increasing */
//!     ClusterEnvelope envelope;
//! } SealedClusterEvent;
//! ```
//!
//! Anyone who can connect to the database can `NOTIFY`, so a node acts only on events sealed
//! with the key the nodes of its domain share, sent recently, and newer than the last one it
//! took from the same origin ([`EventOpener`]). Events are decoded like any other input: size
//! checked first, the tag before anything else, every byte consumed.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;
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

/// The bytes a seal adds to an event: the tag, the time and the sequence number.
pub const SEAL_LEN: usize = 32 + 8 + 8;

/// The largest sealed event.
pub const MAX_SEALED_CLUSTER_EVENT_LEN: usize = MAX_CLUSTER_EVENT_LEN + SEAL_LEN;

/// How far an event's time may be from the receiving node's clock (behind or ahead): older ones
/// are refused as replays, so the nodes' clocks must agree to within this.
pub const EVENT_FRESHNESS_MS: u64 = 30_000;

/// Origins an [`EventOpener`] remembers the last sequence number of (nodes come and go: one
/// origin per node run).
const MAX_KNOWN_ORIGINS: usize = 1_024;

/// The key that seals the events of a domain's nodes (every node derives it from a secret of the
/// data directory they share).
#[derive(Clone)]
pub struct EventKey(pub [u8; 32]);

impl EventKey {
    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a 32-byte key")
    }
}

/// Seals an encoded [`ClusterEnvelope`] (see [`encode_cluster_event`]) for the bus.
pub fn seal_cluster_event(key: &EventKey, sent_at_ms: u64, seq: u64, event: &[u8]) -> Vec<u8> {
    let mut sealed = Vec::with_capacity(SEAL_LEN + event.len());
    sealed.extend_from_slice(&[0; 32]);
    sealed.extend_from_slice(&sent_at_ms.to_be_bytes());
    sealed.extend_from_slice(&seq.to_be_bytes());
    sealed.extend_from_slice(event);
    let mut mac = key.mac();
    mac.update(&sealed[32..]);
    sealed[..32].copy_from_slice(&mac.finalize().into_bytes());
    sealed
}

/// Why a node did not act on an event.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefusedEvent {
    #[error("the event is not sealed with this domain's key")]
    Forged,
    #[error("the event was sent {age_ms} ms from now, outside the freshness window")]
    Stale { age_ms: i64 },
    #[error("the event repeats sequence number {seq} of its origin")]
    Replayed { seq: u64 },
    #[error("the event does not decode: {0}")]
    Malformed(#[from] DecodeError),
}

/// Opens sealed events: checks each one's tag, time and sequence number, then decodes it.
pub struct EventOpener {
    key: EventKey,
    /// The last sequence number taken from each origin, and when.
    last_seq: HashMap<u64, (u64, u64)>,
}

impl EventOpener {
    pub fn new(key: EventKey) -> Self {
        Self {
            key,
            last_seq: HashMap::new(),
        }
    }

    /// The event in `sealed`, if a node of this domain sent it within the freshness window of
    /// `now_ms` and it is newer than the last one taken from its origin.
    pub fn open(&mut self, sealed: &[u8], now_ms: u64) -> Result<ClusterEnvelope, RefusedEvent> {
        if sealed.len() > MAX_SEALED_CLUSTER_EVENT_LEN {
            return Err(DecodeError::TooLarge {
                len: sealed.len(),
                limit: MAX_SEALED_CLUSTER_EVENT_LEN,
            }
            .into());
        }
        if sealed.len() < SEAL_LEN {
            return Err(RefusedEvent::Forged);
        }
        let (tag, signed) = sealed.split_at(32);
        let mut mac = self.key.mac();
        mac.update(signed);
        mac.verify_slice(tag).map_err(|_| RefusedEvent::Forged)?;
        let sent_at_ms = u64::from_be_bytes(signed[..8].try_into().expect("8 bytes"));
        let seq = u64::from_be_bytes(signed[8..16].try_into().expect("8 bytes"));
        let age_ms = now_ms as i64 - sent_at_ms as i64;
        if age_ms.unsigned_abs() > EVENT_FRESHNESS_MS {
            return Err(RefusedEvent::Stale { age_ms });
        }
        let envelope = decode_cluster_event(&signed[16..])?;
        match self.last_seq.get(&envelope.origin) {
            Some(&(last, _)) if seq <= last => return Err(RefusedEvent::Replayed { seq }),
            _ => {}
        }
        if self.last_seq.len() >= MAX_KNOWN_ORIGINS {
            // An origin silent for the freshness window can only send new events (its old ones
            // are stale by now): forget it.
            self.last_seq
                .retain(|_, (_, seen_at)| now_ms.saturating_sub(*seen_at) <= EVENT_FRESHNESS_MS);
        }
        if self.last_seq.len() < MAX_KNOWN_ORIGINS || self.last_seq.contains_key(&envelope.origin) {
            self.last_seq.insert(envelope.origin, (seq, now_ms));
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientId {
        ClientId::of("bob@b.example", 3)
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

    #[test]
    fn sealed_events_open_once_and_only_with_the_key_while_fresh() {
        let key = EventKey([7; 32]);
        let envelope = ClusterEnvelope {
            origin: 9,
            event: ClusterEvent::Disconnect(client()),
        };
        let event = encode_cluster_event(&envelope).unwrap();
        let now = 1_700_000_000_000;
        let mut opener = EventOpener::new(key.clone());
        let sealed = seal_cluster_event(&key, now, 1, &event);
        assert_eq!(opener.open(&sealed, now + 5).unwrap(), envelope);
        assert_eq!(
            opener.open(&sealed, now + 6),
            Err(RefusedEvent::Replayed { seq: 1 })
        );
        let next = seal_cluster_event(&key, now, 2, &event);
        assert_eq!(opener.open(&next, now + 7).unwrap(), envelope);
        // Another key, a flipped byte anywhere, a truncation: forged.
        let forged = seal_cluster_event(&EventKey([8; 32]), now, 3, &event);
        assert_eq!(opener.open(&forged, now), Err(RefusedEvent::Forged));
        for index in 0..next.len() {
            let mut tampered = seal_cluster_event(&key, now, 3, &event);
            tampered[index] ^= 1;
            assert_eq!(opener.open(&tampered, now), Err(RefusedEvent::Forged));
        }
        assert_eq!(opener.open(&next[..20], now), Err(RefusedEvent::Forged));
        // Old or from the future: refused, whatever its sequence number.
        let old = seal_cluster_event(&key, now - EVENT_FRESHNESS_MS - 1, 4, &event);
        assert!(matches!(
            opener.open(&old, now),
            Err(RefusedEvent::Stale { .. })
        ));
        let ahead = seal_cluster_event(&key, now + EVENT_FRESHNESS_MS + 1, 5, &event);
        assert!(matches!(
            opener.open(&ahead, now),
            Err(RefusedEvent::Stale { .. })
        ));
        // A sealed event with trailing bytes inside the seal does not decode.
        let mut longer = event.clone();
        longer.push(0);
        let trailing = seal_cluster_event(&key, now, 6, &longer);
        assert!(matches!(
            opener.open(&trailing, now),
            Err(RefusedEvent::Malformed(_))
        ));
    }
}
