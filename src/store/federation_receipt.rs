//! A delivery from a peer homeserver, stored exactly once: checked against the groups hosted here
//! and the peer's routes, queued for its recipients, and recorded (its id, the group's route, the
//! hubs that welcomed each client) in one transaction.

use super::fan_out;
use super::kv::WriteTransaction;
use super::rows::{Enqueued, Envelope, QueueLimits};
use super::tables::federation::{self, DeliveryRefusal, Receipt};
use super::tables::groups;
use super::{Store, StoreError};
use crate::protocol::MessageKind;

impl Store {
    /// Stores deliveries from `peer` in order, each exactly once, in one commit: queues each one's
    /// envelopes and records that `peer` hosts its group. Stops at the first refusal: returns
    /// the outcomes of the deliveries before it (`None` for one received before) and the
    /// refusal, which stored nothing of its delivery (not even the delivery id, so the peer may
    /// send it again).
    pub async fn receive_deliveries(
        &self,
        peer: &str,
        deliveries: Vec<IncomingDelivery>,
        now_ms: u64,
        limits: QueueLimits,
    ) -> Result<ReceivedDeliveries, StoreError> {
        let peer = peer.to_owned();
        self.write(move |txn| {
            let mut stored = Vec::with_capacity(deliveries.len());
            for delivery in &deliveries {
                match receive_delivery_in(txn, &peer, delivery, now_ms, limits)? {
                    Ok(outcomes) => stored.push(outcomes),
                    Err(refusal) => return Ok((stored, Some(refusal))),
                }
            }
            Ok((stored, None))
        })
        .await
    }
}

/// A delivery from a peer, checked and turned into envelopes, ready to store.
#[derive(Clone, Debug)]
pub struct IncomingDelivery {
    pub delivery_id: Vec<u8>,
    pub group_id: Vec<u8>,
    /// It carries the hub's notice that the group was deleted: the route goes with it.
    pub group_deleted: bool,
    pub envelopes: Vec<Envelope>,
}

/// What [`Store::receive_deliveries`] did: per stored delivery its outcomes (`None`: received
/// before), then the refusal that stopped it, if one did.
pub type ReceivedDeliveries = (Vec<Option<Vec<Enqueued>>>, Option<DeliveryRefusal>);

/// Stores one delivery from `peer` exactly once inside an open write transaction (see
/// [`Store::receive_deliveries`]).
fn receive_delivery_in(
    txn: &WriteTransaction,
    peer: &str,
    delivery: &IncomingDelivery,
    now_ms: u64,
    limits: QueueLimits,
) -> Result<Result<Option<Vec<Enqueued>>, DeliveryRefusal>, StoreError> {
    let group_id = delivery.group_id.as_slice();
    if !group_id.is_empty() && groups::group_exists_in(txn, group_id)? {
        return Ok(Err(DeliveryRefusal::HostedHere));
    }
    let new_route = match federation::route_check_in(txn, peer, group_id, delivery.group_deleted)? {
        Ok(new_route) => new_route,
        Err(refusal) => return Ok(Err(refusal)),
    };
    if federation::received_before_in(txn, peer, &delivery.delivery_id)? {
        return Ok(Ok(None));
    }
    // Queued first: a refusal must leave nothing written.
    let envelopes = &delivery.envelopes;
    let outcomes = match fan_out::enqueue(txn, envelopes, now_ms, limits)? {
        Ok(outcomes) => outcomes,
        Err(full) => return Ok(Err(DeliveryRefusal::QueueFull(full))),
    };
    // A Welcome makes its recipient a member of a group this peer hosts.
    let welcomed = envelopes
        .iter()
        .zip(&outcomes)
        .filter(|(envelope, outcome)| {
            envelope.kind == MessageKind::Welcome && matches!(outcome, Enqueued::Queued { .. })
        })
        .map(|(envelope, _)| envelope.key())
        .collect();
    let receipt = Receipt {
        delivery_id: &delivery.delivery_id,
        group_id,
        group_deleted: delivery.group_deleted,
        new_route,
        welcomed,
    };
    federation::record_receipt_in(txn, peer, receipt, now_ms)?;
    Ok(Ok(Some(outcomes)))
}
