//! Tests of the PostgreSQL backend (they need the PostgreSQL server of the README).

use crate::store::{ScratchDatabase as FreshDatabase, Store, StoreLocation};

async fn open(url: &str) -> Store {
    let location = StoreLocation::Postgres(url.to_owned());
    tokio::task::spawn_blocking(move || Store::open_at(&location))
        .await
        .unwrap()
        .unwrap()
}

#[test]
fn every_table_is_created_by_a_migration() {
    let mut migrated = super::migrated_tables();
    migrated.sort_unstable();
    let mut known: Vec<String> = Store::known_tables()
        .into_iter()
        .map(|name| name.split('<').next().unwrap_or_default().to_owned())
        .collect();
    known.sort_unstable();
    assert_eq!(migrated, known);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_database_see_each_others_writes_and_one_lease_holder() {
    let database = FreshDatabase::create().unwrap();
    let (first, second) = tokio::join!(open(&database.url), open(&database.url));
    first.bind_domain("a.example").await.unwrap();
    assert!(matches!(
        second.bind_domain("b.example").await,
        Err(crate::store::StoreError::DomainMismatch { .. })
    ));
    assert_eq!(
        second.bound_domain().await.unwrap().as_deref(),
        Some("a.example")
    );
    // Leases race through both at once: exactly one holder.
    let mut holders = 0;
    for round in 0..20u64 {
        let name = format!("job-{round}");
        let (a, b) = tokio::join!(
            first.hold_lease(&name, 1, 1_000, 60_000),
            second.hold_lease(&name, 2, 1_000, 60_000)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(
            a.is_some() != b.is_some(),
            "round {round}: both or neither held the lease"
        );
        holders += u32::from(a.is_some());
    }
    println!("node 1 won {holders} of 20 lease races");
    let mut tables = second.table_names().await.unwrap();
    tables.sort_unstable();
    assert_eq!(tables, {
        let mut migrated: Vec<String> = super::migrated_tables()
            .into_iter()
            .map(String::from)
            .collect();
        migrated.sort_unstable();
        migrated
    });
    first.close().await;
    second.close().await;
}

/// The overlay of a write transaction (rows read once, writes sent at commit, ranges merged
/// with what is unsent) against a model: every read inside the transaction and the database
/// after each commit must be what the model says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_transaction_reads_its_unsent_writes_as_the_database_would() {
    use std::collections::BTreeMap;

    use rand::{Rng, SeedableRng};

    use crate::store::kv::ReadableTable;
    use crate::store::tables::leases::LEASES;

    type Model = BTreeMap<String, (u64, u64)>;
    let database = FreshDatabase::create().unwrap();
    let store = open(&database.url).await;
    let key = |i: u64| format!("row-{i:03}");
    let mut model: Model = (0..40).map(|i| (key(i), (i, 0))).collect();
    let initial = model.clone();
    store
        .write(move |txn| {
            let mut table = txn.open_table(LEASES)?;
            for (k, v) in &initial {
                table.put(k.as_str(), *v)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    for round in 0..30u64 {
        let before = model.clone();
        let after = store
            .write(move |txn| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(round);
                let mut model = before.clone();
                // Some rows and ranges read ahead, as a batch does.
                let mut ahead = crate::store::kv::Prefetch::default();
                for _ in 0..rng.gen_range(0..6) {
                    ahead.key(&LEASES, key(rng.gen_range(0..70)).as_str());
                    let low = rng.gen_range(0..70);
                    let (from, to) = (key(low), key(low + rng.gen_range(0..20)));
                    ahead.range(&LEASES, from.as_str()..to.as_str());
                }
                txn.prefetch(ahead)?;
                let mut table = txn.open_table(LEASES)?;
                for step in 0..60 {
                    let k = key(rng.gen_range(0..70));
                    let value = (round, step);
                    match rng.gen_range(0..9) {
                        0 | 1 => {
                            table.put(k.as_str(), value)?;
                            model.insert(k, value);
                        }
                        2 => {
                            table.delete(k.as_str())?;
                            model.remove(&k);
                        }
                        3 => {
                            let old = table.insert(k.as_str(), value)?.map(|g| g.value());
                            assert_eq!(old, model.insert(k, value), "insert's old value");
                        }
                        4 => {
                            let old = table.remove(k.as_str())?.map(|g| g.value());
                            assert_eq!(old, model.remove(&k), "remove's old value");
                        }
                        5 => {
                            let got = table.get(k.as_str())?.map(|g| g.value());
                            assert_eq!(got, model.get(&k).copied(), "get {k}");
                        }
                        6 | 7 => {
                            let (a, b) = (key(rng.gen_range(0..70)), key(rng.gen_range(0..70)));
                            let (low, high) = if a <= b { (a, b) } else { (b, a) };
                            let take = rng.gen_range(1..80);
                            let read: Vec<(String, (u64, u64))> = table
                                .range(low.as_str()..high.as_str())?
                                .take(take)
                                .map(|e| e.map(|(k, v)| (k.value().to_owned(), v.value())))
                                .collect::<Result<_, _>>()?;
                            let expected: Vec<(String, (u64, u64))> = model
                                .range(low.clone()..high.clone())
                                .take(take)
                                .map(|(k, v)| (k.clone(), *v))
                                .collect();
                            assert_eq!(read, expected, "range {low}..{high}, {take} rows");
                        }
                        _ => {
                            let last = table
                                .last()?
                                .map(|(k, v)| (k.value().to_owned(), v.value()));
                            let expected = model.iter().next_back().map(|(k, v)| (k.clone(), *v));
                            assert_eq!(last, expected, "last");
                            assert_eq!(table.len()?, model.len() as u64, "len");
                        }
                    }
                }
                let odd = |_: &str, (_, step): (u64, u64)| step % 2 == 1;
                let extracted: Vec<String> = table
                    .extract_from_if(key(10).as_str()..key(30).as_str(), odd)?
                    .map(|e| e.map(|(k, _)| k.value().to_owned()))
                    .collect::<Result<_, _>>()?;
                let expected: Vec<String> = model
                    .range(key(10)..key(30))
                    .filter(|(_, (_, step))| step % 2 == 1)
                    .map(|(k, _)| k.clone())
                    .collect();
                assert_eq!(extracted, expected, "extracted");
                for k in &expected {
                    model.remove(k);
                }
                Ok(model)
            })
            .await
            .unwrap();
        let stored: Model = store
            .read(|txn| {
                let table = txn.open_table(LEASES)?;
                table
                    .iter()?
                    .map(|e| e.map(|(k, v)| (k.value().to_owned(), v.value())))
                    .collect()
            })
            .await
            .unwrap();
        assert_eq!(stored, after, "committed rows after round {round}");
        // A read served by its one read-ahead statement, and one that reads more (served
        // in a transaction instead).
        for (low, high, beyond) in [(5, 25, false), (5, 25, true)] {
            let mut ahead = crate::store::kv::Prefetch::default();
            ahead.range(&LEASES, key(low).as_str()..key(high).as_str());
            let read: Vec<(String, (u64, u64))> = store
                .read_reading(ahead, move |txn| {
                    let table = txn.open_table(LEASES)?;
                    let to = if beyond { key(high + 10) } else { key(high) };
                    table
                        .range(key(low).as_str()..to.as_str())?
                        .map(|e| e.map(|(k, v)| (k.value().to_owned(), v.value())))
                        .collect()
                })
                .await
                .unwrap();
            let to = if beyond { key(high + 10) } else { key(high) };
            let expected: Vec<(String, (u64, u64))> = after
                .range(key(low)..to)
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            assert_eq!(read, expected, "read ahead, beyond it: {beyond}");
        }
        model = after;
    }
    store.close().await;
}

#[test]
fn passwords_stay_out_of_logs() {
    assert_eq!(
        super::redacted("postgres://roost:secret@db.internal/roost"),
        "postgres://roost:***@db.internal/roost"
    );
    assert_eq!(
        super::redacted("postgres://127.0.0.1/roost"),
        "postgres://127.0.0.1/roost"
    );
}
