//! Federation state: the durable outbox of deliveries to each peer (in order, removed once the
//! peer acknowledged), the deliveries received from peers (so a retried one is stored once), and
//! which peer hosts each remote group this server's clients are in.

use crate::store::kv::{ReadableTable, TableDefinition, WriteTransaction};

use crate::protocol::ClientId;
use crate::store::rows::{FullQueues, OutgoingDelivery};
use crate::store::{Store, StoreError};

/// (peer domain, seq) -> when it was put in the outbox (Unix ms, 8 bytes big-endian) followed by
/// the encoded delivery; in the order it must be sent.
pub(in crate::store) const OUTBOX: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("outbox-2");
/// Schema 3's outbox: the encoded delivery alone. Read once, by the migration to schema 4.
pub(in crate::store) const OUTBOX_1: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("outbox-1");
/// Bytes of the enqueue time in front of each outbox value.
const OUTBOX_TIME_LEN: usize = 8;

/// Moves schema 3's outbox rows into `outbox-2`, stamped with `now_ms` (their real age was not
/// recorded), and drops the old table. Part of the migration to schema 4, in its transaction.
pub(in crate::store) fn migrate_outbox_1(
    txn: &WriteTransaction,
    now_ms: u64,
) -> Result<(), StoreError> {
    let rows: Vec<((String, u64), Vec<u8>)> = match txn.open_table(OUTBOX_1) {
        Ok(old) => old
            .iter()?
            .map(|entry| {
                entry.map(|(key, value)| {
                    let (peer, seq) = key.value();
                    ((peer.to_owned(), seq), value.value().to_vec())
                })
            })
            .collect::<Result<_, _>>()?,
        Err(e) => return Err(e),
    };
    let mut outbox = txn.open_table(OUTBOX)?;
    for ((peer, seq), delivery) in &rows {
        outbox.put((peer.as_str(), *seq), stamped(now_ms, delivery).as_slice())?;
    }
    drop(outbox);
    txn.delete_table(OUTBOX_1)?;
    Ok(())
}

fn stamped(now_ms: u64, delivery: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(OUTBOX_TIME_LEN + delivery.len());
    value.extend_from_slice(&now_ms.to_be_bytes());
    value.extend_from_slice(delivery);
    value
}

/// Splits an outbox value into its enqueue time and the delivery.
fn unstamped(value: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    let (time, delivery) = value
        .split_first_chunk::<OUTBOX_TIME_LEN>()
        .ok_or_else(|| StoreError::Corrupt("outbox value without its time".into()))?;
    Ok((u64::from_be_bytes(*time), delivery))
}

/// The deliveries waiting for one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerBacklog {
    pub peer: String,
    pub waiting: u64,
    /// When the oldest of them was put in the outbox (Unix ms).
    pub oldest_ms: u64,
}
/// peer domain -> the next outbox sequence number.
pub(in crate::store) const OUTBOX_HEADS: TableDefinition<&str, u64> =
    TableDefinition::new("outbox-heads-1");
/// (peer domain, delivery id) -> when it was received (Unix ms).
pub(in crate::store) const DELIVERIES_RECEIVED: TableDefinition<(&str, &[u8]), u64> =
    TableDefinition::new("deliveries-received-1");
/// group id -> the domain of the homeserver hosting it (groups hosted elsewhere).
pub(in crate::store) const GROUP_ROUTES: TableDefinition<&[u8], &str> =
    TableDefinition::new("group-routes-1");
/// (user id, device id, hub domain): a hub that welcomed this client into one of its groups,
/// so that the client's departure is told to exactly those hubs.
pub(in crate::store) const CLIENT_HUBS: TableDefinition<(&str, u32, &str), ()> =
    TableDefinition::new("client-hubs-1");

/// Forgets the hubs of a deleted client.
pub(in crate::store) fn delete_client_hubs(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
) -> Result<(), StoreError> {
    let mut hubs = txn.open_table(CLIENT_HUBS)?;
    let known: Vec<String> = hubs
        .range((user_id, device_id, "")..)?
        .map_while(|entry| match entry {
            Ok((key, _)) => {
                let (user, device, hub) = key.value();
                (user == user_id && device == device_id).then(|| Ok(hub.to_owned()))
            }
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
    for hub in known {
        hubs.delete((user_id, device_id, hub.as_str()))?;
    }
    Ok(())
}

/// hub domain -> how many of [`GROUP_ROUTES`] name it: the hubs to ask, without a scan.
pub(in crate::store) const ROUTE_HUBS: TableDefinition<&str, u64> =
    TableDefinition::new("route-hubs-1");

/// Fills [`ROUTE_HUBS`] from [`GROUP_ROUTES`] (the schema 3 migration).
pub(in crate::store) fn count_route_hubs(
    txn: &WriteTransaction,
    clients: &[(String, u32)],
) -> Result<(), StoreError> {
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for entry in txn.open_table(GROUP_ROUTES)?.iter()? {
        let (_, hub) = entry?;
        *counts.entry(hub.value().to_owned()).or_default() += 1;
    }
    let mut hubs = txn.open_table(ROUTE_HUBS)?;
    for (hub, count) in &counts {
        hubs.put(hub.as_str(), *count)?;
    }
    // Which hub welcomed which client was not recorded before: assume every hub may host
    // groups of every client, so no departure goes untold.
    let mut client_hubs = txn.open_table(CLIENT_HUBS)?;
    for (user_id, device_id) in clients {
        for hub in counts.keys() {
            client_hubs.put((user_id.as_str(), *device_id, hub.as_str()), ())?;
        }
    }
    Ok(())
}

/// Why a delivery from a peer was refused (nothing of it was stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryRefusal {
    /// Another peer is known to host the group.
    OtherHub(String),
    /// This server hosts the group: no peer delivers into it.
    HostedHere,
    /// These recipients' queues are full; the peer keeps the delivery and sends it again.
    QueueFull(FullQueues),
    /// The peer already hosts [`MAX_ROUTES_PER_PEER`] groups that deliver here; nothing was
    /// written.
    TooManyGroups,
}

/// Groups of one peer that deliver here, at most: each is a route kept until the hub deletes
/// the group, so a peer inventing group ids cannot grow them without end.
pub const MAX_ROUTES_PER_PEER: u64 = 100_000;

/// Appends deliveries to their peers' outboxes inside an open write transaction.
pub(in crate::store) fn outbox_in(
    txn: &WriteTransaction,
    deliveries: &[OutgoingDelivery],
    now_ms: u64,
) -> Result<(), StoreError> {
    let mut heads = txn.open_table(OUTBOX_HEADS)?;
    let mut outbox = txn.open_table(OUTBOX)?;
    for delivery in deliveries {
        let seq = heads
            .get(delivery.peer.as_str())?
            .map_or(0, |seq| seq.value());
        outbox.put(
            (delivery.peer.as_str(), seq),
            stamped(now_ms, &delivery.delivery).as_slice(),
        )?;
        heads.put(delivery.peer.as_str(), seq + 1)?;
    }
    Ok(())
}

/// The backlog of `peer`, whose next delivery will take `next_seq`: none if nothing waits.
fn peer_backlog(
    outbox: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    peer: &str,
    next_seq: u64,
) -> Result<Option<PeerBacklog>, StoreError> {
    let Some(oldest) = outbox.range((peer, 0)..=(peer, u64::MAX))?.next() else {
        return Ok(None);
    };
    let (key, value) = oldest?;
    Ok(Some(PeerBacklog {
        peer: peer.to_owned(),
        waiting: next_seq - key.value().1,
        oldest_ms: unstamped(value.value())?.0,
    }))
}

impl Store {
    /// The peers with deliveries waiting, and how many each.
    pub async fn outbox_backlog(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|txn| {
            let outbox = txn.open_table(OUTBOX)?;
            let mut backlog: Vec<(String, u64)> = Vec::new();
            for entry in outbox.iter()? {
                let (key, _) = entry?;
                let peer = key.value().0;
                match backlog.last_mut() {
                    Some((last, count)) if last == peer => *count += 1,
                    _ => backlog.push((peer.to_owned(), 1)),
                }
            }
            Ok(backlog)
        })
        .await
    }

    /// Every peer with deliveries waiting: how many, and since when (the operator's
    /// `federation status` and the metrics).
    pub async fn outbox_status(&self) -> Result<Vec<PeerBacklog>, StoreError> {
        self.read(|txn| {
            let outbox = txn.open_table(OUTBOX)?;
            let mut backlog = Vec::new();
            // A peer's deliveries are the seqs from its oldest up to its head, without gaps:
            // only the oldest are ever removed. So one row per peer tells its whole backlog,
            // whatever its length (this runs at every metrics scrape).
            for head in txn.open_table(OUTBOX_HEADS)?.iter()? {
                let (peer, next_seq) = head?;
                backlog.extend(peer_backlog(&outbox, peer.value(), next_seq.value())?);
            }
            Ok(backlog)
        })
        .await
    }

    /// The oldest deliveries waiting for `peer`, in order: at most `max_count`, and no more than
    /// `max_bytes` together unless the first alone is larger (it is returned by itself).
    pub async fn outbox_first(
        &self,
        peer: &str,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let peer = peer.to_owned();
        self.read(move |txn| {
            let outbox = txn.open_table(OUTBOX)?;
            let mut first = Vec::new();
            let mut bytes = 0;
            for entry in outbox.range((peer.as_str(), 0)..=(peer.as_str(), u64::MAX))? {
                let (key, value) = entry?;
                let (_, delivery) = unstamped(value.value())?;
                let len = delivery.len();
                if first.len() == max_count || (!first.is_empty() && bytes + len > max_bytes) {
                    break;
                }
                bytes += len;
                first.push((key.value().1, delivery.to_vec()));
            }
            Ok(first)
        })
        .await
    }

    /// Every peer hosting a group this server's clients were delivered to (and not deleted).
    pub async fn group_hubs(&self) -> Result<Vec<String>, StoreError> {
        self.read(|txn| {
            txn.open_table(ROUTE_HUBS)?
                .iter()?
                .map(|entry| Ok(entry?.0.value().to_owned()))
                .collect()
        })
        .await
    }

    /// The hubs that welcomed `(user_id, device_id)` into one of their groups.
    pub async fn client_hubs(&self, client: &ClientId) -> Result<Vec<String>, StoreError> {
        self.read_for(client, move |txn, (user_id, device_id)| {
            let hubs = txn.open_table(CLIENT_HUBS)?;
            let mut found = Vec::new();
            for entry in hubs.range((user_id, device_id, "")..)? {
                let (key, _) = entry?;
                let (user, device, hub) = key.value();
                if user != user_id || device != device_id {
                    break;
                }
                found.push(hub.to_owned());
            }
            Ok(found)
        })
        .await
    }

    /// Forgets delivery ids received before `cutoff_ms` (the dedupe window is over: their
    /// sender has long had our acknowledgement); at most `limit` a call. Returns how many.
    pub async fn purge_received_deliveries(
        &self,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.write(move |txn| {
            let mut received = txn.open_table(DELIVERIES_RECEIVED)?;
            let mut expired: Vec<(String, Vec<u8>)> = Vec::new();
            for entry in received.iter()? {
                let (key, at) = entry?;
                if at.value() < cutoff_ms {
                    let (peer, id) = key.value();
                    expired.push((peer.to_owned(), id.to_vec()));
                    if expired.len() >= limit {
                        break;
                    }
                }
            }
            for (peer, id) in &expired {
                received.delete((peer.as_str(), id.as_slice()))?;
            }
            Ok(expired.len())
        })
        .await
    }

    /// Every remote group this server's clients were delivered to, with the peer hosting it.
    pub async fn group_routes(&self) -> Result<Vec<(Vec<u8>, String)>, StoreError> {
        self.read(|txn| {
            let routes = txn.open_table(GROUP_ROUTES)?;
            let mut found = Vec::new();
            for entry in routes.iter()? {
                let (group_id, hub) = entry?;
                found.push((group_id.value().to_vec(), hub.value().to_owned()));
            }
            Ok(found)
        })
        .await
    }
}

/// Whether `peer` may deliver into `group_id` (not hosted here: the caller checked): another
/// known hub is refused, as is a new route beyond [`MAX_ROUTES_PER_PEER`]. `Ok(true)` for a
/// delivery that would open a new route.
pub(in crate::store) fn route_check_in(
    txn: &WriteTransaction,
    peer: &str,
    group_id: &[u8],
    group_deleted: bool,
) -> Result<Result<bool, DeliveryRefusal>, StoreError> {
    if group_id.is_empty() {
        return Ok(Ok(false));
    }
    let hub = txn
        .open_table(GROUP_ROUTES)?
        .get(group_id)?
        .map(|hub| hub.value().to_owned());
    if let Some(hub) = hub.as_ref().filter(|hub| *hub != peer) {
        return Ok(Err(DeliveryRefusal::OtherHub(hub.clone())));
    }
    let new_route = !group_deleted && hub.is_none();
    if new_route && routes_of(txn, peer)? >= MAX_ROUTES_PER_PEER {
        return Ok(Err(DeliveryRefusal::TooManyGroups));
    }
    Ok(Ok(new_route))
}

/// Whether the delivery `delivery_id` of `peer` was received before (within the dedupe window).
pub(in crate::store) fn received_before_in(
    txn: &WriteTransaction,
    peer: &str,
    delivery_id: &[u8],
) -> Result<bool, StoreError> {
    Ok(txn
        .open_table(DELIVERIES_RECEIVED)?
        .get((peer, delivery_id))?
        .is_some())
}

/// Records a stored delivery of `peer`: its id (for the dedupe window), the hub of each client
/// a Welcome in it made a member (`welcomed`), and the group's route (opened, or closed with a
/// deleted group).
pub(in crate::store) fn record_receipt_in(
    txn: &WriteTransaction,
    peer: &str,
    receipt: Receipt<'_>,
    now_ms: u64,
) -> Result<(), StoreError> {
    let mut client_hubs = txn.open_table(CLIENT_HUBS)?;
    for (user_id, device_id) in receipt.welcomed {
        client_hubs.put((user_id, device_id, peer), ())?;
    }
    drop(client_hubs);
    txn.open_table(DELIVERIES_RECEIVED)?
        .put((peer, receipt.delivery_id), now_ms)?;
    let group_id = receipt.group_id;
    if group_id.is_empty() {
        return Ok(());
    }
    let mut routes = txn.open_table(GROUP_ROUTES)?;
    let count = routes_of(txn, peer)?;
    let mut hubs = txn.open_table(ROUTE_HUBS)?;
    if receipt.group_deleted && routes.get(group_id)?.is_some() {
        // The route goes with its group.
        routes.delete(group_id)?;
        if count <= 1 {
            hubs.delete(peer)?;
        } else {
            hubs.put(peer, count - 1)?;
        }
    } else if receipt.new_route {
        routes.put(group_id, peer)?;
        hubs.put(peer, count + 1)?;
    }
    Ok(())
}

/// What [`record_receipt_in`] records of one delivery.
pub(in crate::store) struct Receipt<'a> {
    pub delivery_id: &'a [u8],
    pub group_id: &'a [u8],
    pub group_deleted: bool,
    pub new_route: bool,
    /// The clients a Welcome in it was queued for.
    pub welcomed: Vec<(&'a str, u32)>,
}

/// Removes deliveries the peer acknowledged (or refused for good).
pub(in crate::store) fn outbox_delete_in(
    txn: &WriteTransaction,
    peer: &str,
    seqs: &[u64],
) -> Result<(), StoreError> {
    let mut outbox = txn.open_table(OUTBOX)?;
    for &seq in seqs {
        outbox.delete((peer, seq))?;
    }
    Ok(())
}

/// How many groups of `peer` deliver here.
pub(in crate::store) fn routes_of(txn: &WriteTransaction, peer: &str) -> Result<u64, StoreError> {
    Ok(txn
        .open_table(ROUTE_HUBS)?
        .get(peer)?
        .map_or(0, |count| count.value()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Enqueued, Envelope, IncomingDelivery, QueueLimits};

    const LIMITS: QueueLimits = QueueLimits::per_client(100, 1 << 20);

    impl Store {
        /// One delivery, as a batch of one.
        #[allow(clippy::too_many_arguments)]
        async fn receive_delivery(
            &self,
            peer: &str,
            delivery_id: &[u8],
            group_id: &[u8],
            group_deleted: bool,
            envelopes: Vec<Envelope>,
            now_ms: u64,
            limits: QueueLimits,
        ) -> Result<Result<Option<Vec<Enqueued>>, DeliveryRefusal>, StoreError> {
            let delivery = IncomingDelivery {
                delivery_id: delivery_id.to_vec(),
                group_id: group_id.to_vec(),
                group_deleted,
                envelopes,
            };
            let (mut stored, refusal) = self
                .receive_deliveries(peer, vec![delivery], now_ms, limits)
                .await?;
            Ok(match refusal {
                Some(refusal) => Err(refusal),
                None => Ok(stored.pop().expect("one delivery stored")),
            })
        }
    }

    #[tokio::test]
    async fn a_batch_is_stored_in_order_up_to_its_first_refusal() {
        let (_dir, store) = crate::store::test_store();
        store.register_for_test("bob@b.example", [7; 32]).await;
        let delivery = |id: &[u8], payload_len: usize| IncomingDelivery {
            delivery_id: id.to_vec(),
            group_id: b"g1".to_vec(),
            group_deleted: false,
            envelopes: vec![Envelope::new(
                ClientId::of("bob@b.example", 1),
                crate::protocol::MessageKind::Mls,
                std::sync::Arc::new(vec![0; payload_len]),
                crate::store::Admission::MessageOrRefuseAll,
            )],
        };
        let limits = QueueLimits::per_client(100, 1_000);
        let batch = vec![
            delivery(b"id-1", 400),
            delivery(b"id-1", 400), // the same id again: acknowledged, not stored twice
            delivery(b"id-2", 400),
            delivery(b"id-3", 400), // beyond 1,000 bytes: refused
            delivery(b"id-4", 10),  // would fit, but comes after the refusal
        ];
        let (stored, refusal) = store
            .receive_deliveries("a.example", batch, 1, limits)
            .await
            .unwrap();
        assert_eq!(stored.len(), 3);
        assert!(stored[0].is_some() && stored[1].is_none() && stored[2].is_some());
        assert!(
            matches!(refusal, Some(DeliveryRefusal::QueueFull(_))),
            "{refusal:?}"
        );
        let (messages, _) = store
            .fetch_messages(&ClientId::of("bob@b.example", 1), 0, 100, 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            messages.len(),
            2,
            "id-1 and id-2, nothing after the refusal"
        );
        // The refused delivery and the one behind it are taken when sent again with room.
        let (stored, refusal) = store
            .receive_deliveries(
                "a.example",
                vec![delivery(b"id-3", 400), delivery(b"id-4", 10)],
                2,
                QueueLimits::per_client(100, 10_000),
            )
            .await
            .unwrap();
        assert_eq!((stored.len(), refusal.is_none()), (2, true));
    }

    #[tokio::test]
    async fn deliveries_are_stored_once_and_a_group_keeps_its_hub() {
        let (_dir, store) = crate::store::test_store();
        let group = b"group-1".as_slice();
        let first = store
            .receive_delivery("a.example", b"id-1", group, false, Vec::new(), 1, LIMITS)
            .await
            .unwrap();
        assert_eq!(first, Ok(Some(Vec::new())));
        let repeated = store
            .receive_delivery("a.example", b"id-1", group, false, Vec::new(), 2, LIMITS)
            .await
            .unwrap();
        assert_eq!(repeated, Ok(None), "a retried delivery is stored once");
        let hijack = store
            .receive_delivery("c.example", b"id-9", group, false, Vec::new(), 3, LIMITS)
            .await
            .unwrap();
        assert_eq!(
            hijack,
            Err(DeliveryRefusal::OtherHub("a.example".to_owned()))
        );
        assert_eq!(
            store.group_routes().await.unwrap(),
            [(group.to_vec(), "a.example".to_owned())]
        );
    }

    #[tokio::test]
    async fn a_peer_has_only_so_many_routes_and_a_refused_delivery_writes_nothing() {
        let (_dir, store) = crate::store::test_store();
        store.register_for_test("bob@b.example", [7; 32]).await;
        // The peer is one route short of the bound (as if it had delivered for that many).
        store
            .write(|txn| {
                txn.open_table(ROUTE_HUBS)?
                    .put("a.example", MAX_ROUTES_PER_PEER - 1)?;
                Ok(())
            })
            .await
            .unwrap();
        let notice = || {
            Envelope::new(
                ClientId::of("bob@b.example", 1),
                crate::protocol::MessageKind::ServerNotice,
                std::sync::Arc::new(vec![0, 3]),
                crate::store::Admission::Handshake,
            )
        };
        let receive = |id: &'static [u8], group: &'static [u8], deleted: bool| {
            store.receive_delivery("a.example", id, group, deleted, vec![notice()], 1, LIMITS)
        };
        assert!(receive(b"id-1", b"g1", false).await.unwrap().is_ok());
        assert_eq!(
            receive(b"id-2", b"g2", false).await.unwrap(),
            Err(DeliveryRefusal::TooManyGroups)
        );
        // A group it already has still delivers; the refused one left no route nor message.
        assert!(receive(b"id-3", b"g1", false).await.unwrap().is_ok());
        let routes = store.group_routes().await.unwrap();
        assert_eq!(routes, [(b"g1".to_vec(), "a.example".to_owned())]);
        let (messages, _) = store
            .fetch_messages(&ClientId::of("bob@b.example", 1), 0, 100, 1 << 20)
            .await
            .unwrap();
        assert_eq!(messages.len(), 2, "id-1 and id-3");
        // A deleted group frees its route for another.
        assert!(receive(b"id-4", b"g1", true).await.unwrap().is_ok());
        assert!(receive(b"id-5", b"g2", false).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn routes_go_with_their_group_and_delivery_ids_with_the_dedupe_window() {
        let (_dir, store) = crate::store::test_store();
        let receive = |id: &'static [u8], group: &'static [u8], deleted: bool, at: u64| {
            store.receive_delivery("a.example", id, group, deleted, Vec::new(), at, LIMITS)
        };
        receive(b"id-1", b"g1", false, 1_000)
            .await
            .unwrap()
            .unwrap();
        receive(b"id-2", b"g2", false, 5_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.group_hubs().await.unwrap(), ["a.example"]);
        receive(b"id-3", b"g1", true, 6_000).await.unwrap().unwrap();
        assert_eq!(
            store.group_routes().await.unwrap(),
            [(b"g2".to_vec(), "a.example".to_owned())]
        );
        assert_eq!(
            store.group_hubs().await.unwrap(),
            ["a.example"],
            "g2 remains"
        );
        receive(b"id-4", b"g2", true, 7_000).await.unwrap().unwrap();
        assert!(store.group_hubs().await.unwrap().is_empty());

        // Ids older than the cutoff are forgotten (a retry would be stored again); newer kept.
        assert_eq!(
            store.purge_received_deliveries(5_500, 100).await.unwrap(),
            2
        );
        assert_eq!(
            receive(b"id-3", b"g1", false, 8_000).await.unwrap(),
            Ok(None)
        );
        assert_eq!(
            receive(b"id-1", b"g1", false, 8_000).await.unwrap(),
            Ok(Some(Vec::new())),
            "forgotten after the window"
        );
    }

    #[tokio::test]
    async fn a_welcome_records_its_hub_for_the_clients_departure_and_deletion_forgets_it() {
        let (_dir, store) = crate::store::test_store();
        store.register_for_test("bob@b.example", [7; 32]).await;
        let bob = ClientId::of("bob@b.example", 1);
        let receive = |id: &'static [u8], kind| {
            let envelope = Envelope::new(
                bob.clone(),
                kind,
                std::sync::Arc::new(vec![1, 2, 3]),
                crate::store::Admission::Handshake,
            );
            store.receive_delivery("a.example", id, b"g1", false, vec![envelope], 1, LIMITS)
        };
        let hubs = || async { store.client_hubs(&bob).await.unwrap() };
        receive(b"id-1", crate::protocol::MessageKind::Mls)
            .await
            .unwrap()
            .unwrap();
        assert!(hubs().await.is_empty());
        receive(b"id-2", crate::protocol::MessageKind::Welcome)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hubs().await, ["a.example"]);
        store.delete_user("bob@b.example", 2).await.unwrap();
        assert!(hubs().await.is_empty());
    }

    #[tokio::test]
    async fn the_outbox_keeps_order_per_peer_until_acknowledged() {
        let (_dir, store) = crate::store::test_store();
        let delivery = |peer: &str, byte: u8| OutgoingDelivery {
            peer: peer.into(),
            delivery: vec![byte],
        };
        store
            .deliver(
                Vec::new(),
                None,
                vec![
                    delivery("b.example", 1),
                    delivery("c.example", 9),
                    delivery("b.example", 2),
                ],
                0,
                LIMITS,
                None,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store.outbox_backlog().await.unwrap(),
            [("b.example".to_owned(), 2), ("c.example".to_owned(), 1)]
        );
        let first = |count, bytes| store.outbox_first("b.example", count, bytes);
        let waiting = first(10, 10).await.unwrap();
        let bytes: Vec<&[u8]> = waiting.iter().map(|(_, bytes)| bytes.as_slice()).collect();
        assert_eq!(bytes, [[1], [2]], "in order, this peer's only");
        assert_eq!(
            first(1, 10).await.unwrap().len(),
            1,
            "at most the count asked for"
        );
        assert_eq!(
            first(10, 1).await.unwrap().len(),
            1,
            "at most the bytes asked for"
        );
        assert_eq!(
            first(10, 0).await.unwrap().len(),
            1,
            "the first, however large"
        );
        store
            .outbox_done("b.example", vec![waiting[0].0], None, 0)
            .await
            .unwrap();
        assert_eq!(first(10, 10).await.unwrap()[0].1, [2]);
    }
}
