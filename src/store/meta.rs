//! The `meta` table: facts about the database itself (schema version, the domain it serves).

use super::kv::{ReadableTable, TableDefinition, WriteTransaction};
use super::writer::WriterBackend;

use super::{Store, StoreError};

/// Key-value facts about the database. Versioned name: a new layout gets a new table.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta-1");

const SCHEMA_VERSION_KEY: &str = "schema-version";
const DOMAIN_KEY: &str = "domain";

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
pub const SCHEMA_VERSION: u32 = 5;

impl Store {
    /// Creates the tables of a new database, or checks that an existing one has our layout.
    pub(super) fn initialise_schema(db: &mut WriterBackend) -> Result<(), StoreError> {
        // Nodes starting together on one PostgreSQL database conflict here: the loser runs again.
        let mut attempts = 0;
        loop {
            let txn = db.begin()?;
            match Self::initialise_schema_in(&txn) {
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

    fn initialise_schema_in(txn: &WriteTransaction) -> Result<(), StoreError> {
        super::tables::create_all(txn)?;
        {
            let mut meta = txn.open_table(META)?;
            let stored = meta
                .get(SCHEMA_VERSION_KEY)?
                .map(|v| decode_u32(v.value()))
                .transpose()?;
            match stored {
                None => {
                    // A new PostgreSQL database's first migration made schema 4's tables.
                    super::groups::migrate_to_schema_5(txn)?;
                    meta.put(SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_be_bytes().as_slice())?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(from @ (1..=4)) => {
                    if from == 1 {
                        super::queues::migrate_queue_1(txn)?;
                    }
                    if from < 3 {
                        super::federation::count_route_hubs(txn)?;
                        super::queues::count_server_total(txn)?;
                    }
                    if from < 4 {
                        super::federation::migrate_outbox_1(
                            txn,
                            crate::clock::Clock::now_ms(&crate::clock::SystemClock),
                        )?;
                    }
                    super::groups::migrate_to_schema_5(txn)?;
                    meta.put(SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_be_bytes().as_slice())?;
                    tracing::info!("database migrated from schema {from} to {SCHEMA_VERSION}");
                }
                Some(other) => {
                    return Err(StoreError::Corrupt(format!(
                        "database schema version {other}, this server reads {SCHEMA_VERSION}"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Binds the database to `domain` on first use, and refuses a database made for another
    /// domain: its users, keys and groups would all name the wrong server.
    pub async fn bind_domain(&self, domain: &str) -> Result<(), StoreError> {
        let requested = domain.to_owned();
        self.write(move |txn| {
            let mut meta = txn.open_table(META)?;
            let stored = meta
                .get(DOMAIN_KEY)?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned());
            match stored {
                None => {
                    meta.put(DOMAIN_KEY, requested.as_bytes())?;
                    Ok(())
                }
                Some(stored) if stored == requested => Ok(()),
                Some(stored) => Err(StoreError::DomainMismatch {
                    stored,
                    requested: requested.clone(),
                }),
            }
        })
        .await
    }

    /// The domain the database is bound to, if any.
    pub async fn bound_domain(&self) -> Result<Option<String>, StoreError> {
        self.read(|txn| {
            let meta = txn.open_table(META)?;
            let domain = meta
                .get(DOMAIN_KEY)?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned());
            Ok(domain)
        })
        .await
    }
}

/// The domain the database is bound to, as the write transaction `txn` sees it.
pub(super) fn domain_in(txn: &WriteTransaction) -> Result<Option<String>, StoreError> {
    Ok(txn
        .open_table(META)?
        .get(DOMAIN_KEY)?
        .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
}

fn decode_u32(bytes: &[u8]) -> Result<u32, StoreError> {
    bytes
        .try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("meta value is not a u32".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test-only write: one row in the meta table.
    async fn put(store: &Store, key: String, value: Vec<u8>) -> Result<(), StoreError> {
        store
            .write(move |txn| {
                txn.open_table(META)?.put(key.as_str(), value.as_slice())?;
                Ok(())
            })
            .await
    }

    async fn get(store: &Store, key: &str) -> Option<Vec<u8>> {
        let key = key.to_owned();
        store
            .read(move |txn| {
                Ok(txn
                    .open_table(META)?
                    .get(key.as_str())?
                    .map(|v| v.value().to_vec()))
            })
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        const N: usize = 500;
        let before = store.stats().commits();
        let writes = (0..N).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { put(&store, format!("k{i}"), vec![i as u8; 64]).await })
        });
        for write in writes.collect::<Vec<_>>() {
            write.await.unwrap().unwrap();
        }
        let commits = store.stats().commits() - before;
        println!("{N} concurrent writes took {commits} commits");
        assert!(commits >= 1);
        assert!(
            commits <= (N / 10) as u64,
            "{N} concurrent writes took {commits} commits: group commit is not batching"
        );
        assert_eq!(store.stats().writes(), N as u64);
        store.close().await;
        drop(store);

        let reopened = Store::open(dir.path()).unwrap();
        for i in [0, N / 2, N - 1] {
            assert_eq!(
                get(&reopened, &format!("k{i}")).await,
                Some(vec![i as u8; 64])
            );
        }
    }

    #[tokio::test]
    async fn a_failing_write_is_not_committed_and_does_not_sink_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = put(&store, "good".into(), b"1".to_vec());
        let bad = store.write(|txn| {
            txn.open_table(META)?.put("bad", b"1".as_slice())?;
            Err::<(), _>(StoreError::Corrupt("refused".into()))
        });
        let (good, bad) = tokio::join!(good, bad);
        good.unwrap();
        assert!(matches!(bad, Err(StoreError::Corrupt(_))));
        assert_eq!(get(&store, "good").await, Some(b"1".to_vec()));
        assert_eq!(get(&store, "bad").await, None);
    }

    #[tokio::test]
    async fn a_database_bound_to_one_domain_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.bind_domain("a.example").await.unwrap();
        store.bind_domain("a.example").await.unwrap();
        assert!(matches!(
            store.bind_domain("b.example").await,
            Err(StoreError::DomainMismatch { .. })
        ));
        assert_eq!(
            store.bound_domain().await.unwrap().as_deref(),
            Some("a.example")
        );
    }

    #[tokio::test]
    async fn writes_after_close_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.close().await;
        assert!(matches!(
            put(&store, "late".into(), vec![]).await,
            Err(StoreError::Closed)
        ));
    }
}
