//! Who gets what of a group's change: the envelopes for members' queues, and the member rows the
//! store keeps; envelopes for clients of other homeservers become one delivery per peer.

use std::sync::Arc;

use tls_codec::Serialize;

use super::Members;
use crate::protocol::{ClientId, DeliverRequest, DeliveryItem, MessageKind};
use crate::store::{Envelope, GroupMemberRow, OutgoingDelivery};

/// Keeps the envelopes for clients of `domain` (this server), and turns those for clients of
/// other homeservers into one delivery per peer (each message once, with its recipients).
pub(super) fn split(
    domain: &str,
    group_id: &[u8],
    envelopes: Vec<Envelope>,
) -> (Vec<Envelope>, Vec<OutgoingDelivery>) {
    let mut local = Vec::new();
    let mut per_peer: Vec<(String, Vec<DeliveryItem>)> = Vec::new();
    for envelope in envelopes {
        let peer = crate::identity::UserId::domain_of(envelope.client.user_id.as_str());
        if peer == domain {
            local.push(envelope);
            continue;
        }
        let recipient = envelope.client.clone();
        let kind = envelope.kind;
        let index = match per_peer.iter().position(|(known, _)| known == peer) {
            Some(index) => index,
            None => {
                per_peer.push((peer.to_owned(), Vec::new()));
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

pub(super) fn envelope(client: &ClientId, kind: MessageKind, payload: &Arc<Vec<u8>>) -> Envelope {
    Envelope {
        client: client.clone(),
        kind,
        admission: crate::services::queues::admission(kind, payload),
        payload: payload.clone(),
    }
}

pub(super) fn member_rows(members: &Members) -> Vec<GroupMemberRow> {
    members
        .iter()
        .map(|(client, leaf_index)| GroupMemberRow {
            client: client.clone(),
            leaf_index: *leaf_index,
        })
        .collect()
}

/// The member rows that receive messages: the tree's members but those leaving.
pub(super) fn delivery_rows(members: &Members, leaving: &[ClientId]) -> Vec<GroupMemberRow> {
    member_rows(members)
        .into_iter()
        .filter(|row| !leaving.contains(&row.client))
        .collect()
}
