//! Offline push: each client's push targets, and the wake-up outbox (one row per target that
//! must be woken, with its retry state), so that a crash between a message being queued and its
//! wake-up being delivered does not lose the need to wake.

use crate::store::kv::{ReadableTable, TableDefinition, WriteTransaction};
use tls_codec::{Deserialize, Serialize};

use crate::protocol::ClientId;
use crate::protocol::{PushTarget, PushTargetAdded, RegisteredPushTarget};
use crate::store::rows::key as key_of;
use crate::store::{Store, StoreError};

/// (user id, device id, target id) -> the encoded `RegisteredPushTarget`.
pub(in crate::store) const PUSH_TARGETS: TableDefinition<(&str, u32, u64), &[u8]> =
    TableDefinition::new("push-targets-1");

/// (user id, device id, target id) -> (queue sequence number to announce, 0 if none; when the
/// next attempt is due, Unix ms; attempts made). A row exists while the target must be woken.
pub(in crate::store) const PUSH_WAKES: TableDefinition<(&str, u32, u64), (u64, u64, u32)> =
    TableDefinition::new("push-wakes-1");

/// (user id, device id) -> the newest queue sequence number a wake-up was scheduled for: what
/// the start-up check compares the queue with, for messages queued just before a crash.
pub(in crate::store) const PUSH_WOKEN: TableDefinition<(&str, u32), u64> =
    TableDefinition::new("push-woken-1");

/// Why a push target was not added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddTargetRefusal {
    TooMany { limit: usize },
}

/// A wake-up waiting to be delivered to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWake {
    pub client: ClientId,
    pub target: RegisteredPushTarget,
    /// The queue's newest sequence number when the wake-up was scheduled (0: none to tell).
    pub seq: u64,
    pub due_ms: u64,
    pub attempts: u32,
}

/// The newest sequence number of a client's queue, to announce in a wake-up (0: none to tell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSeq {
    pub client: ClientId,
    pub seq: u64,
}

/// What became of a wake-up of one of a client's targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeFinished {
    pub client: ClientId,
    pub target_id: u64,
    pub result: WakeResult,
}

/// What became of one wake-up attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeResult {
    /// Delivered, or given up on: the row goes.
    Done,
    /// Try again at `due_ms`.
    Retry { due_ms: u64, attempts: u32 },
    /// The push service says the target no longer exists: the target and its row go.
    TargetGone,
}

fn client_range(user_id: &str, device_id: u32) -> std::ops::RangeInclusive<(&str, u32, u64)> {
    (user_id, device_id, 0)..=(user_id, device_id, u64::MAX)
}

fn decode_target(bytes: &[u8]) -> Result<RegisteredPushTarget, StoreError> {
    RegisteredPushTarget::tls_deserialize_exact(bytes)
        .map_err(|e| StoreError::Corrupt(format!("bad push target: {e}")))
}

fn targets_in(
    table: &impl ReadableTable<(&'static str, u32, u64), &'static [u8]>,
    user_id: &str,
    device_id: u32,
) -> Result<Vec<RegisteredPushTarget>, StoreError> {
    let mut targets = Vec::new();
    for entry in table.range(client_range(user_id, device_id))? {
        targets.push(decode_target(entry?.1.value())?);
    }
    Ok(targets)
}

/// Deletes a client's push targets and wake-ups (with the client).
pub(in crate::store) fn delete_client_push(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
) -> Result<(), StoreError> {
    txn.open_table(PUSH_TARGETS)?
        .retain_in(client_range(user_id, device_id), |_, _| false)?;
    txn.open_table(PUSH_WAKES)?
        .retain_in(client_range(user_id, device_id), |_, _| false)?;
    txn.open_table(PUSH_WOKEN)?.delete((user_id, device_id))?;
    Ok(())
}

/// Every client with at least one push target, each once (the table is in client order).
/// The sequence number of the newest message a wake-up was scheduled for, for a client.
pub(in crate::store) fn announced_read(
    txn: &crate::store::kv::ReadTransaction,
    client: (&str, u32),
) -> Result<u64, StoreError> {
    Ok(txn
        .open_table(PUSH_WOKEN)?
        .get(client)?
        .map_or(0, |v| v.value()))
}

/// Every client with at least one push target, in key order.
pub(in crate::store) fn clients_with_targets(
    txn: &crate::store::kv::ReadTransaction,
) -> Result<Vec<ClientId>, StoreError> {
    let mut clients: Vec<ClientId> = Vec::new();
    for entry in txn.open_table(PUSH_TARGETS)?.iter()? {
        let (key, _) = entry?;
        let (user_id, device_id, _) = key.value();
        if clients
            .last()
            .is_none_or(|last| key_of(last) != (user_id, device_id))
        {
            clients.push(ClientId::of(user_id, device_id));
        }
    }
    Ok(clients)
}

impl Store {
    /// Adds `target` for the client, or replaces the client's target with the same identity
    /// (endpoint; gateway, app and pushkey), keeping its id. At most `limit` targets.
    pub async fn add_push_target(
        &self,
        client: &ClientId,
        target: PushTarget,
        registered_at: u64,
        limit: usize,
    ) -> Result<Result<PushTargetAdded, AddTargetRefusal>, StoreError> {
        self.write_for(client, move |txn, (user_id, device_id)| {
            let mut table = txn.open_table(PUSH_TARGETS)?;
            let existing = targets_in(&table, user_id, device_id)?;
            let same = existing
                .iter()
                .find(|known| known.target.identity() == target.identity());
            let (target_id, replaced) = match same {
                Some(known) => (known.target_id, true),
                None if existing.len() >= limit => {
                    return Ok(Err(AddTargetRefusal::TooMany { limit }))
                }
                None => {
                    // Random, so that ids say nothing about other clients' targets.
                    let mut id = 0;
                    while id == 0 || existing.iter().any(|known| known.target_id == id) {
                        id = rand::random::<u64>() >> 11; // exact in a JSON number
                    }
                    (id, false)
                }
            };
            let record = RegisteredPushTarget {
                target_id,
                registered_at,
                target: target.clone(),
            };
            let bytes = record
                .tls_serialize_detached()
                .map_err(|e| StoreError::Corrupt(format!("cannot encode a push target: {e}")))?;
            table.put((user_id, device_id, target_id), bytes.as_slice())?;
            Ok(Ok(PushTargetAdded {
                target_id,
                replaced: crate::protocol::Flag(replaced),
            }))
        })
        .await
    }

    /// The client's push targets.
    pub async fn push_targets(
        &self,
        client: &ClientId,
    ) -> Result<Vec<RegisteredPushTarget>, StoreError> {
        self.read_for(client, move |txn, (user_id, device_id)| {
            targets_in(&txn.open_table(PUSH_TARGETS)?, user_id, device_id)
        })
        .await
    }

    /// Removes one of the client's targets (and its wake-up); whether it existed.
    pub async fn remove_push_target(
        &self,
        client: &ClientId,
        target_id: u64,
    ) -> Result<bool, StoreError> {
        self.write_for(client, move |txn, (user_id, device_id)| {
            let key = (user_id, device_id, target_id);
            txn.open_table(PUSH_WAKES)?.delete(key)?;
            Ok(txn.open_table(PUSH_TARGETS)?.remove(key)?.is_some())
        })
        .await
    }

    /// Every client with at least one push target.
    pub async fn clients_with_push_targets(&self) -> Result<Vec<ClientId>, StoreError> {
        self.read(clients_with_targets).await
    }

    /// Schedules a wake-up, due at `now_ms`, for every target of each client in `clients`,
    /// announcing its queue's sequence number. A target with a wake-up pending keeps
    /// its retry state and gets the newer sequence number. Returns the wake-ups now pending for
    /// those clients.
    pub async fn schedule_wakes(
        &self,
        clients: Vec<QueueSeq>,
        now_ms: u64,
    ) -> Result<Vec<PendingWake>, StoreError> {
        self.write(move |txn| {
            let targets = txn.open_table(PUSH_TARGETS)?;
            let mut wakes = txn.open_table(PUSH_WAKES)?;
            let mut woken = txn.open_table(PUSH_WOKEN)?;
            let mut pending = Vec::new();
            for QueueSeq { client, seq } in &clients {
                let ((user_id, device_id), seq) = (key_of(client), *seq);
                for target in targets_in(&targets, user_id, device_id)? {
                    let key = (user_id, device_id, target.target_id);
                    let (seq, due_ms, attempts) = match wakes.get(key)?.map(|v| v.value()) {
                        Some((known, due_ms, attempts)) => (known.max(seq), due_ms, attempts),
                        None => (seq, now_ms, 0),
                    };
                    wakes.put(key, (seq, due_ms, attempts))?;
                    pending.push(PendingWake {
                        client: client.clone(),
                        target,
                        seq,
                        due_ms,
                        attempts,
                    });
                }
                let announced = woken.get((user_id, device_id))?.map_or(0, |v| v.value());
                if seq > announced {
                    woken.put((user_id, device_id), seq)?;
                }
            }
            Ok(pending)
        })
        .await
    }

    /// Every wake-up pending (at start-up).
    pub async fn pending_wakes(&self) -> Result<Vec<PendingWake>, StoreError> {
        self.read(|txn| {
            let targets = txn.open_table(PUSH_TARGETS)?;
            txn.open_table(PUSH_WAKES)?
                .iter()?
                .map(|entry| {
                    let (key, value) = entry?;
                    let (user_id, device_id, target_id) = key.value();
                    let (seq, due_ms, attempts) = value.value();
                    // A wake-up whose target went meanwhile is not pending.
                    let Some(target) = targets.get((user_id, device_id, target_id))? else {
                        return Ok(None);
                    };
                    Ok(Some(PendingWake {
                        client: ClientId::of(user_id, device_id),
                        target: decode_target(target.value())?,
                        seq,
                        due_ms,
                        attempts,
                    }))
                })
                .filter_map(Result::transpose)
                .collect()
        })
        .await
    }

    /// Records what became of wake-up attempts.
    pub async fn finish_wakes(&self, results: Vec<WakeFinished>) -> Result<(), StoreError> {
        self.write(move |txn| {
            let mut wakes = txn.open_table(PUSH_WAKES)?;
            let mut targets = txn.open_table(PUSH_TARGETS)?;
            for finished in &results {
                let (user_id, device_id) = key_of(&finished.client);
                let key = (user_id, device_id, finished.target_id);
                match finished.result {
                    WakeResult::Done => {
                        wakes.delete(key)?;
                    }
                    WakeResult::Retry { due_ms, attempts } => {
                        // Only a wake-up still pending is rescheduled: the client may have
                        // caught up, or the target gone, meanwhile.
                        let seq = wakes.get(key)?.map(|v| v.value().0);
                        if let Some(seq) = seq {
                            wakes.put(key, (seq, due_ms, attempts))?;
                        }
                    }
                    WakeResult::TargetGone => {
                        wakes.delete(key)?;
                        targets.delete(key)?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Drops the wake-ups pending for a client that caught up (connected, or acknowledged).
    pub async fn cancel_wakes(&self, client: &ClientId) -> Result<(), StoreError> {
        self.write_for(client, move |txn, (user_id, device_id)| {
            txn.open_table(PUSH_WAKES)?
                .retain_in(client_range(user_id, device_id), |_, _| false)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{GatewayPusher, Text, WebPushSubscription};

    /// `client`'s queue at `seq`, the one client to wake.
    fn at_seq(client: &ClientId, seq: u64) -> Vec<QueueSeq> {
        vec![QueueSeq {
            client: client.clone(),
            seq,
        }]
    }

    fn web(endpoint: &str) -> PushTarget {
        PushTarget::WebPush(WebPushSubscription {
            endpoint: Text::new(endpoint).unwrap(),
            p256dh: vec![4; 65].into(),
            auth: vec![1; 16].into(),
        })
    }

    #[tokio::test]
    async fn targets_are_bounded_replaced_by_endpoint_and_deleted_with_their_wakes() {
        let (_dir, store) = crate::store::test_store();
        let alice = ClientId::of("a@x", 1);
        let add = |target, at| store.add_push_target(&alice, target, at, 2);
        let targets = |device| {
            let (store, client) = (&store, ClientId::of("a@x", device));
            async move { store.push_targets(&client).await.unwrap().len() }
        };
        let first = add(web("https://p/1"), 10).await.unwrap().unwrap();
        assert!(!first.replaced.0);
        let again = add(web("https://p/1"), 11).await.unwrap().unwrap();
        assert_eq!((again.target_id, again.replaced.0), (first.target_id, true));
        let gateway = PushTarget::Gateway(GatewayPusher {
            gateway_url: Text::new("https://gw").unwrap(),
            app_id: Text::new("app").unwrap(),
            pushkey: Text::new("key").unwrap(),
        });
        add(gateway, 12).await.unwrap().unwrap();
        assert_eq!(
            add(web("https://p/2"), 13).await.unwrap(),
            Err(AddTargetRefusal::TooMany { limit: 2 })
        );
        assert_eq!(targets(1).await, 2);
        assert_eq!(targets(2).await, 0);

        let pending = store
            .schedule_wakes(at_seq(&alice, 5), 1_000)
            .await
            .unwrap();
        assert_eq!(pending.len(), 2);
        assert!(pending
            .iter()
            .all(|wake| wake.seq == 5 && wake.attempts == 0));
        let retry = WakeResult::Retry {
            due_ms: 3_000,
            attempts: 1,
        };
        store
            .finish_wakes(vec![WakeFinished {
                client: alice.clone(),
                target_id: first.target_id,
                result: retry,
            }])
            .await
            .unwrap();
        // A newer message keeps the retry schedule and raises the sequence number.
        let pending = store
            .schedule_wakes(at_seq(&alice, 9), 2_000)
            .await
            .unwrap();
        let web_wake = pending
            .iter()
            .find(|wake| wake.target.target_id == first.target_id)
            .unwrap();
        assert_eq!(
            (web_wake.seq, web_wake.due_ms, web_wake.attempts),
            (9, 3_000, 1)
        );
        store
            .finish_wakes(vec![WakeFinished {
                client: alice.clone(),
                target_id: first.target_id,
                result: WakeResult::TargetGone,
            }])
            .await
            .unwrap();
        assert_eq!(targets(1).await, 1);
        assert_eq!(store.pending_wakes().await.unwrap().len(), 1);
        store.cancel_wakes(&ClientId::of("a@x", 1)).await.unwrap();
        assert_eq!(store.pending_wakes().await.unwrap(), vec![]);
        store
            .schedule_wakes(at_seq(&alice, 10), 4_000)
            .await
            .unwrap();
        store
            .write(|txn| delete_client_push(txn, "a@x", 1))
            .await
            .unwrap();
        assert_eq!(
            store.tables_containing(b"a@x").await.unwrap(),
            Vec::<String>::new()
        );
    }

    #[tokio::test]
    async fn queues_newer_than_their_last_wake_up_are_found_at_start() {
        let (_dir, store) = crate::store::test_store();
        store.register_for_test("b@x", [7; 32]).await;
        let device = crate::store::FIRST_DEVICE_ID;
        let bob = ClientId::of("b@x", device);
        store
            .add_push_target(&ClientId::of("b@x", device), web("https://p/1"), 10, 4)
            .await
            .unwrap()
            .unwrap();
        let limits = crate::store::QueueLimits {
            max_messages: 100,
            max_bytes: 1 << 20,
            max_user_bytes: 1 << 20,
            max_server_bytes: 1 << 30,
        };
        let enqueue = |payload: &'static [u8]| {
            let envelope = crate::store::Envelope::new(
                ClientId::of("b@x", device),
                crate::protocol::MessageKind::Welcome,
                std::sync::Arc::new(payload.to_vec()),
                crate::store::Admission::Message,
            );
            store.enqueue(vec![envelope], 1_000, limits)
        };
        let unannounced = || async { store.unannounced_queues().await.unwrap() };
        assert_eq!(unannounced().await, vec![]);
        enqueue(b"one").await.unwrap().unwrap();
        // Queued, and the server stopped before it scheduled the wake-up.
        assert_eq!(unannounced().await, at_seq(&bob, 1));
        store.schedule_wakes(at_seq(&bob, 1), 2_000).await.unwrap();
        assert_eq!(unannounced().await, vec![]);
        enqueue(b"two").await.unwrap().unwrap();
        assert_eq!(unannounced().await, at_seq(&bob, 2));
        // What the client acknowledged needs no wake-up.
        store
            .ack_messages(&ClientId::of("b@x", device), 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(unannounced().await, vec![]);
    }
}
