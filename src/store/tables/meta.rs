//! The `meta` table: facts about the database itself (schema version, the domain it serves).

use crate::store::kv::{ReadableTable, TableDefinition, WriteTransaction};

use crate::store::{Store, StoreError};

/// Key-value facts about the database. Versioned name: a new layout gets a new table.
pub(in crate::store) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta-1");

const SCHEMA_VERSION_KEY: &str = "schema-version";
const DOMAIN_KEY: &str = "domain";

/// The schema version the database holds (`None`: a new database).
pub(in crate::store) fn schema_version_in(
    txn: &WriteTransaction,
) -> Result<Option<u32>, StoreError> {
    txn.open_table(META)?
        .get(SCHEMA_VERSION_KEY)?
        .map(|v| decode_u32(v.value()))
        .transpose()
}

/// Records that the database holds schema `version`.
pub(in crate::store) fn set_schema_version_in(
    txn: &WriteTransaction,
    version: u32,
) -> Result<(), StoreError> {
    txn.open_table(META)?
        .put(SCHEMA_VERSION_KEY, version.to_be_bytes().as_slice())?;
    Ok(())
}

impl Store {
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
pub(in crate::store) fn domain_in(txn: &WriteTransaction) -> Result<Option<String>, StoreError> {
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
        let (dir, store) = crate::store::test_store();
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
        let (_dir, store) = crate::store::test_store();
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
        let (_dir, store) = crate::store::test_store();
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
        let (_dir, store) = crate::store::test_store();
        store.close().await;
        assert!(matches!(
            put(&store, "late".into(), vec![]).await,
            Err(StoreError::Closed)
        ));
    }
}
