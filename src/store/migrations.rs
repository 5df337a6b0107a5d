//! Opening the database: its tables created, or an older layout migrated to this code's, in one
//! transaction that spans every family of tables.

use super::kv::WriteTransaction;
use super::tables::{federation, groups, meta, queues};
use super::totals::WriterTotals;
use super::writer::WriterBackend;
use super::{Store, StoreError};

/// The layout this code reads and writes. An older database is migrated at open, in one
/// transaction; a newer one is refused.
///
/// - 1: the first layout.
/// - 2: a payload fanned out to several queues is stored once (`queue-2`, `shared-payloads-1`,
///   `shared-payload-refs-1`).
/// - 3: the hubs of remote groups are counted (`route-hubs-1`), the hubs that welcomed each
///   client recorded (`client-hubs-1`), the bytes of all queues counted (`queue-totals-1`),
///   coalesced notices tracked (`pending-notices-1`) and group requests remembered
///   (`recent-requests-1`), the last two empty at migration.
/// - 4: each outbox delivery carries the time it was queued (`outbox-2`), for the operator's
///   view of how long deliveries to a peer have waited.
/// - 5: each membership carries the epoch it joined at (`group-members-2`), which bounds the
///   trees its client may fetch, and each remembered request its sender (`recent-requests-2`),
///   so that only the sender is answered from it.
/// - 6: the key-transparency log (`transparency-*-1`); every credential held at migration is
///   logged as issued then.
pub const SCHEMA_VERSION: u32 = 6;

impl Store {
    /// Creates the tables of a new database, or checks that an existing one has our layout.
    pub(super) fn initialise_schema(db: &mut WriterBackend) -> Result<(), StoreError> {
        // Nodes starting together on one PostgreSQL database conflict here: the loser runs again.
        let mut attempts = 0;
        loop {
            let txn = db.begin(&WriterTotals::single())?;
            match initialise_schema_in(&txn) {
                Ok(()) => match db.finish(txn, true) {
                    Err(e) if e.is_conflict() && attempts < 10 => attempts += 1,
                    outcome => return outcome,
                },
                Err(e) => {
                    let _ = db.finish(txn, false);
                    if !(e.is_conflict() && attempts < 10) {
                        return Err(e);
                    }
                    attempts += 1;
                }
            }
        }
    }
}

fn initialise_schema_in(txn: &WriteTransaction) -> Result<(), StoreError> {
    super::registry::create_all(txn)?;
    match meta::schema_version_in(txn)? {
        None => {
            // A new PostgreSQL database's first migration made schema 4's tables.
            groups::migrate_to_schema_5(txn)?;
            meta::set_schema_version_in(txn, SCHEMA_VERSION)?;
        }
        Some(SCHEMA_VERSION) => {}
        Some(from @ (1..=5)) => {
            if from == 1 {
                queues::migrate_queue_1(txn)?;
            }
            if from < 3 {
                federation::count_route_hubs(txn, &super::tables::accounts::all_clients_in(txn)?)?;
                queues::count_server_total(txn)?;
            }
            if from < 4 {
                federation::migrate_outbox_1(
                    txn,
                    crate::clock::Clock::now_ms(&crate::clock::SystemClock),
                )?;
            }
            if from < 5 {
                groups::migrate_to_schema_5(txn)?;
            }
            log_held_credentials(txn)?;
            meta::set_schema_version_in(txn, SCHEMA_VERSION)?;
            tracing::info!("database migrated from schema {from} to {SCHEMA_VERSION}");
        }
        Some(other) => {
            return Err(StoreError::Corrupt(format!(
                "database schema version {other}, this server reads {SCHEMA_VERSION}"
            )))
        }
    }
    Ok(())
}

/// Logs every credential the database holds as issued now: a database from before the log.
fn log_held_credentials(txn: &WriteTransaction) -> Result<(), StoreError> {
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    for (user_id, credential) in super::tables::accounts::all_credentials_in(txn)? {
        let issued = crate::protocol::BindingChange::Issued;
        super::credentials::log_in(txn, &user_id, issued, now, &credential)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ClientId;
    use crate::store::{Membership, OutgoingDelivery, Remembered, StoredMessage};

    /// A data directory holding a redb database at schema `version`, with what `fill` writes.
    fn legacy_database(
        version: u32,
        fill: impl FnOnce(&redb::WriteTransaction),
    ) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join(crate::store::DATABASE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(meta::META)
            .unwrap()
            .insert("schema-version", version.to_be_bytes().as_slice())
            .unwrap();
        fill(&txn);
        txn.commit().unwrap();
        dir
    }

    #[tokio::test]
    async fn a_schema_3_outbox_is_stamped_at_migration_and_reports_its_age() {
        let dir = legacy_database(3, |txn| {
            let mut old = txn.open_table(federation::OUTBOX_1).unwrap();
            old.insert(("b.example", 0), b"first".as_slice()).unwrap();
            old.insert(("b.example", 1), b"second".as_slice()).unwrap();
            drop(old);
            txn.open_table(federation::OUTBOX_HEADS)
                .unwrap()
                .insert("b.example", 2)
                .unwrap();
        });
        let before = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
        let store = Store::open(dir.path()).unwrap();
        let first = store.outbox_first("b.example", 10, 1 << 20).await.unwrap();
        assert_eq!(first, [(0, b"first".to_vec()), (1, b"second".to_vec())]);
        let status = store.outbox_status().await.unwrap();
        assert_eq!(status.len(), 1);
        assert_eq!(
            (status[0].peer.as_str(), status[0].waiting),
            ("b.example", 2)
        );
        assert!(status[0].oldest_ms >= before, "not stamped at migration");
        assert!(!store
            .table_names()
            .await
            .unwrap()
            .contains(&"outbox-1".to_owned()));

        // New deliveries carry their own time; the oldest is what the status reports.
        let groups_delivery = OutgoingDelivery {
            peer: "c.example".into(),
            delivery: b"third".to_vec(),
        };
        store
            .write(move |txn| {
                federation::outbox_in(txn, std::slice::from_ref(&groups_delivery), 5_000)
            })
            .await
            .unwrap();
        let status = store.outbox_status().await.unwrap();
        assert_eq!(status[1].peer, "c.example");
        assert_eq!((status[1].waiting, status[1].oldest_ms), (1, 5_000));
        store
            .outbox_done("b.example", vec![0, 1], None, 0)
            .await
            .unwrap();
        assert_eq!(store.outbox_status().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn schema_4_memberships_keep_every_tree_and_its_remembered_requests_are_forgotten() {
        let dir = legacy_database(4, |txn| {
            txn.open_table(groups::GROUP_MEMBERS_4)
                .unwrap()
                .insert(("a@x", 1, b"group".as_slice()), 3)
                .unwrap();
            txn.open_table(groups::RECENT_REQUESTS_4)
                .unwrap()
                .insert((b"group".as_slice(), [1u8; 32].as_slice()), (1_000, 7))
                .unwrap();
        });
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store
                .group_membership(&ClientId::of("a@x", 1), b"group")
                .await
                .unwrap(),
            Some(Membership {
                leaf_index: 3,
                since_epoch: 0
            })
        );
        assert_eq!(
            store
                .recent_request(b"group", [1; 32], &ClientId::of("a@x", 1), 2_000)
                .await
                .unwrap(),
            Remembered::New
        );
        let tables = store.table_names().await.unwrap();
        for retired in ["group-members-1", "recent-requests-1"] {
            assert!(!tables.contains(&retired.to_owned()), "{retired} is left");
        }
    }

    #[tokio::test]
    async fn a_schema_1_database_is_migrated_at_open() {
        let dir = legacy_database(1, |txn| {
            let mut record = 1_234u64.to_be_bytes().to_vec();
            record.push(2);
            record.extend_from_slice(b"hello");
            txn.open_table(queues::QUEUE_1)
                .unwrap()
                .insert(("alice@localhost", 1, 7), record.as_slice())
                .unwrap();
        });
        let store = Store::open(dir.path()).unwrap();
        let (messages, _) = store
            .fetch_messages(&ClientId::of("alice@localhost", 1), 0, 10, 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            messages,
            [StoredMessage {
                seq: 7,
                enqueued_at_ms: 1_234,
                kind: 2,
                payload: b"hello".to_vec(),
            }]
        );
        assert!(!store
            .table_names()
            .await
            .unwrap()
            .contains(&"queue-1".to_owned()));
        store.close().await;
        drop(store);
        // Reopening finds schema 2 and changes nothing.
        let store = Store::open(dir.path()).unwrap();
        let (again, _) = store
            .fetch_messages(&ClientId::of("alice@localhost", 1), 0, 10, 1 << 20)
            .await
            .unwrap();
        assert_eq!(again, messages);
    }
}
