//! KeyPackages: each client's unclaimed stock, and the reference of every published KeyPackage
//! (claimed or not) until it expires, so that a Welcome can be routed to the client whose
//! KeyPackage it uses.

use crate::store::kv::{ReadableTable, TableDefinition, WriteTransaction};

use crate::protocol::ClientId;
use crate::store::{Store, StoreError};

/// (user id, device id, ciphersuite, KeyPackageRef) -> [`StoredKeyPackage`] encoding.
pub(in crate::store) const KEY_PACKAGES: TableDefinition<(&str, u32, u16, &[u8]), &[u8]> =
    TableDefinition::new("key-packages-1");
/// KeyPackageRef -> (user id, device id, not_after): every published KeyPackage until it expires.
pub(in crate::store) const KEY_PACKAGE_REFS: TableDefinition<&[u8], (&str, u32, u64)> =
    TableDefinition::new("key-package-refs-1");
/// (user id, device id, KeyPackageRef) -> not_after: the same, by client, for deletion and purge.
pub(in crate::store) const CLIENT_KEY_PACKAGE_REFS: TableDefinition<(&str, u32, &[u8]), u64> =
    TableDefinition::new("client-key-package-refs-1");

/// Bytes of KeyPackages one user may keep, all its clients together: room for 100 KeyPackages of
/// 1 KiB for each of `MAX_CLIENTS_PER_USER` clients, and more for larger ciphersuites' keys.
pub const MAX_KEY_PACKAGE_BYTES_PER_USER: usize = 16 * 1024 * 1024;

/// Greater than any KeyPackageRef (a hash of at most 64 bytes): the top of a range over refs.
const REF_UPPER_BOUND: &[u8] = &[0xff; 65];

/// Value of [`KEY_PACKAGES`]: `uint64 not_after; uint8 last_resort; key package bytes`.
struct StoredKeyPackage<'a> {
    not_after: u64,
    last_resort: bool,
    key_package: &'a [u8],
}

impl<'a> StoredKeyPackage<'a> {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.key_package.len());
        out.extend_from_slice(&self.not_after.to_be_bytes());
        out.push(u8::from(self.last_resort));
        out.extend_from_slice(self.key_package);
        out
    }

    fn decode(bytes: &'a [u8]) -> Result<Self, StoreError> {
        match bytes {
            [n0, n1, n2, n3, n4, n5, n6, n7, flag @ (0 | 1), key_package @ ..] => Ok(Self {
                not_after: u64::from_be_bytes([*n0, *n1, *n2, *n3, *n4, *n5, *n6, *n7]),
                last_resort: *flag == 1,
                key_package,
            }),
            _ => Err(StoreError::Corrupt("bad key package record".into())),
        }
    }
}

/// A validated KeyPackage to store.
#[derive(Clone, Debug)]
pub struct NewKeyPackage {
    pub key_package_ref: Vec<u8>,
    pub ciphersuite: u16,
    pub not_after: u64,
    pub last_resort: bool,
    pub key_package: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishRefusal {
    UnknownClient,
    /// The KeyPackage at this index of the batch is already published.
    Duplicate {
        index: usize,
    },
    /// The stock would exceed the limit.
    TooMany {
        stock: usize,
        limit: usize,
    },
    /// The bytes of all the user's KeyPackages would exceed the limit.
    TooManyBytes {
        bytes: usize,
        limit: usize,
    },
}

/// One client's stock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stock {
    pub device_id: u32,
    /// Unexpired KeyPackages that are not last resort, all ciphersuites.
    pub remaining: u32,
    pub has_last_resort: bool,
}

/// What a claim took from one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    KeyPackage(Vec<u8>),
    LastResort(Vec<u8>),
    Unavailable,
}

/// One client's part of a claim, with its stock afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientClaim {
    pub device_id: u32,
    pub claimed: Claimed,
    pub stock: Stock,
}

impl Store {
    /// The client that published the KeyPackage with this reference, while it has not expired.
    pub async fn key_package_owner(
        &self,
        key_package_ref: &[u8],
        now: u64,
    ) -> Result<Option<ClientId>, StoreError> {
        let key_package_ref = key_package_ref.to_vec();
        self.read(move |txn| {
            let refs = txn.open_table(KEY_PACKAGE_REFS)?;
            let owner = refs.get(key_package_ref.as_slice())?.and_then(|owner| {
                let (user_id, device_id, not_after) = owner.value();
                (now < not_after).then(|| ClientId::of(user_id, device_id))
            });
            Ok(owner)
        })
        .await
    }

    /// Removes every expired KeyPackage and reference. Returns how many references went.
    pub async fn purge_expired_key_packages(&self, now: u64) -> Result<usize, StoreError> {
        self.write(move |txn| {
            let expired: Vec<(String, u32, Vec<u8>)> = {
                let client_refs = txn.open_table(CLIENT_KEY_PACKAGE_REFS)?;
                let mut expired = Vec::new();
                for entry in client_refs.iter()? {
                    let (key, not_after) = entry?;
                    if now >= not_after.value() {
                        let (user_id, device_id, key_ref) = key.value();
                        expired.push((user_id.to_owned(), device_id, key_ref.to_vec()));
                    }
                }
                expired
            };
            let mut key_packages = txn.open_table(KEY_PACKAGES)?;
            let mut refs = txn.open_table(KEY_PACKAGE_REFS)?;
            let mut client_refs = txn.open_table(CLIENT_KEY_PACKAGE_REFS)?;
            for (user_id, device_id, key_ref) in &expired {
                refs.delete(key_ref.as_slice())?;
                client_refs.delete((user_id.as_str(), *device_id, key_ref.as_slice()))?;
            }
            // Stock rows of expired KeyPackages: found by scanning each affected client.
            let mut stale = Vec::new();
            let mut seen = std::collections::BTreeSet::new();
            for (user_id, device_id, _) in &expired {
                if !seen.insert((user_id.clone(), *device_id)) {
                    continue;
                }
                for entry in key_packages.range(client_range(user_id, *device_id))? {
                    let (key, value) = entry?;
                    if now >= StoredKeyPackage::decode(value.value())?.not_after {
                        let (_, _, suite, key_ref) = key.value();
                        stale.push((user_id.clone(), *device_id, suite, key_ref.to_vec()));
                    }
                }
            }
            for (user_id, device_id, suite, key_ref) in &stale {
                key_packages.delete((user_id.as_str(), *device_id, *suite, key_ref.as_slice()))?;
            }
            Ok(expired.len())
        })
        .await
    }
}

/// Deletes every KeyPackage and reference of one client (it was removed, or its user deleted).
pub(in crate::store) fn delete_client_key_packages(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
) -> Result<(), StoreError> {
    let mut key_packages = txn.open_table(KEY_PACKAGES)?;
    key_packages.retain_in(client_range(user_id, device_id), |_, _| false)?;
    let mut client_refs = txn.open_table(CLIENT_KEY_PACKAGE_REFS)?;
    let mut refs = txn.open_table(KEY_PACKAGE_REFS)?;
    let range = (user_id, device_id, &[][..])..=(user_id, device_id, REF_UPPER_BOUND);
    let mut removed = Vec::new();
    for entry in client_refs.range(range.clone())? {
        removed.push(entry?.0.value().2.to_vec());
    }
    for key_ref in &removed {
        refs.delete(key_ref.as_slice())?;
    }
    client_refs.retain_in(range, |_, _| false)?;
    Ok(())
}

type ClientRange<'a> = std::ops::RangeInclusive<(&'a str, u32, u16, &'static [u8])>;

fn client_range(user_id: &str, device_id: u32) -> ClientRange<'_> {
    (user_id, device_id, 0, &[][..])..=(user_id, device_id, u16::MAX, REF_UPPER_BOUND)
}

fn count(stock: &mut Stock, key_package: &StoredKeyPackage<'_>, now: u64) {
    if now >= key_package.not_after {
        return;
    }
    if key_package.last_resort {
        stock.has_last_resort = true;
    } else {
        stock.remaining = stock.remaining.saturating_add(1);
    }
}

/// Adds a batch of validated KeyPackages to an existing client's stock, all or none; returns
/// the stock after. A last-resort KeyPackage replaces the client's previous one for its
/// ciphersuite.
pub(in crate::store) fn publish_in(
    txn: &WriteTransaction,
    (user_id, device_id): (&str, u32),
    batch: &[NewKeyPackage],
    max_per_client: usize,
    now: u64,
) -> Result<Result<Stock, PublishRefusal>, StoreError> {
    {
        let refs = txn.open_table(KEY_PACKAGE_REFS)?;
        for (index, new) in batch.iter().enumerate() {
            if refs.get(new.key_package_ref.as_slice())?.is_some() {
                return Ok(Err(PublishRefusal::Duplicate { index }));
            }
        }
    }
    let before = stock(txn, user_id, device_id, now)?;
    let added = batch.iter().filter(|new| !new.last_resort).count();
    let stock_after = before.remaining as usize + added;
    if stock_after > max_per_client {
        return Ok(Err(PublishRefusal::TooMany {
            stock: stock_after,
            limit: max_per_client,
        }));
    }
    // Bytes of the user's KeyPackages, all clients together (replaced last resorts
    // counted: a bound, not an exact figure).
    let stored: usize = txn
        .open_table(KEY_PACKAGES)?
        .range((user_id, 0, 0, &[][..])..=(user_id, u32::MAX, u16::MAX, REF_UPPER_BOUND))?
        .map(|entry| entry.map(|(_, value)| value.value().len()))
        .sum::<Result<usize, _>>()?;
    let bytes = stored + batch.iter().map(|new| new.key_package.len()).sum::<usize>();
    if bytes > MAX_KEY_PACKAGE_BYTES_PER_USER {
        return Ok(Err(PublishRefusal::TooManyBytes {
            bytes,
            limit: MAX_KEY_PACKAGE_BYTES_PER_USER,
        }));
    }
    for new in batch.iter().filter(|new| new.last_resort) {
        remove_last_resort(txn, user_id, device_id, new.ciphersuite)?;
    }
    let mut key_packages = txn.open_table(KEY_PACKAGES)?;
    let mut refs = txn.open_table(KEY_PACKAGE_REFS)?;
    let mut client_refs = txn.open_table(CLIENT_KEY_PACKAGE_REFS)?;
    for new in batch {
        let record = StoredKeyPackage {
            not_after: new.not_after,
            last_resort: new.last_resort,
            key_package: &new.key_package,
        };
        let key_ref = new.key_package_ref.as_slice();
        key_packages.put(
            (user_id, device_id, new.ciphersuite, key_ref),
            record.encode().as_slice(),
        )?;
        refs.put(key_ref, (user_id, device_id, new.not_after))?;
        client_refs.put((user_id, device_id, key_ref), new.not_after)?;
    }
    drop((key_packages, refs, client_refs));
    Ok(Ok(stock(txn, user_id, device_id, now)?))
}

/// A client's stock, as a read transaction sees it.
pub(in crate::store) fn stock_read(
    txn: &crate::store::kv::ReadTransaction,
    user_id: &str,
    device_id: u32,
    now: u64,
) -> Result<Stock, StoreError> {
    stock_in(&txn.open_table(KEY_PACKAGES)?, (user_id, device_id), now)
}

/// A client's stock, as a write transaction sees it.
pub(in crate::store) fn stock(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
    now: u64,
) -> Result<Stock, StoreError> {
    stock_in(&txn.open_table(KEY_PACKAGES)?, (user_id, device_id), now)
}

fn stock_in(
    key_packages: &impl ReadableTable<(&'static str, u32, u16, &'static [u8]), &'static [u8]>,
    (user_id, device_id): (&str, u32),
    now: u64,
) -> Result<Stock, StoreError> {
    let mut stock = Stock {
        device_id,
        remaining: 0,
        has_last_resort: false,
    };
    for entry in key_packages.range(client_range(user_id, device_id))? {
        let (_, value) = entry?;
        count(&mut stock, &StoredKeyPackage::decode(value.value())?, now);
    }
    Ok(stock)
}

fn remove_last_resort(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
    ciphersuite: u16,
) -> Result<(), StoreError> {
    let mut key_packages = txn.open_table(KEY_PACKAGES)?;
    let range = (user_id, device_id, ciphersuite, &[][..])
        ..=(user_id, device_id, ciphersuite, REF_UPPER_BOUND);
    key_packages.retain_in(range, |_, value| {
        !StoredKeyPackage::decode(value).is_ok_and(|key_package| key_package.last_resort)
    })?;
    Ok(())
}

pub(in crate::store) fn claim_one(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
    ciphersuite: u16,
    now: u64,
) -> Result<Claimed, StoreError> {
    let mut key_packages = txn.open_table(KEY_PACKAGES)?;
    let range = (user_id, device_id, ciphersuite, &[][..])
        ..=(user_id, device_id, ciphersuite, REF_UPPER_BOUND);
    let mut expired = Vec::new();
    let mut taken = None;
    let mut last_resort = None;
    for entry in key_packages.range(range)? {
        let (key, value) = entry?;
        let record = StoredKeyPackage::decode(value.value())?;
        let key_ref = key.value().3.to_vec();
        if now >= record.not_after {
            expired.push(key_ref);
        } else if record.last_resort {
            last_resort = Some(record.key_package.to_vec());
        } else {
            taken = Some((key_ref, record.key_package.to_vec()));
            break;
        }
    }
    for key_ref in &expired {
        key_packages.delete((user_id, device_id, ciphersuite, key_ref.as_slice()))?;
    }
    drop(key_packages);
    if !expired.is_empty() {
        let mut refs = txn.open_table(KEY_PACKAGE_REFS)?;
        let mut client_refs = txn.open_table(CLIENT_KEY_PACKAGE_REFS)?;
        for key_ref in &expired {
            refs.delete(key_ref.as_slice())?;
            client_refs.delete((user_id, device_id, key_ref.as_slice()))?;
        }
    }
    Ok(match (taken, last_resort) {
        (Some((key_ref, key_package)), _) => {
            // The reference stays in KEY_PACKAGE_REFS: the Welcome that uses it is routed by it.
            txn.open_table(KEY_PACKAGES)?.delete((
                user_id,
                device_id,
                ciphersuite,
                key_ref.as_slice(),
            ))?;
            Claimed::KeyPackage(key_package)
        }
        (None, Some(key_package)) => Claimed::LastResort(key_package),
        (None, None) => Claimed::Unavailable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_user_keeps_only_so_many_bytes_of_key_packages() {
        let (_dir, store) = crate::store::test_store();
        store.register_for_test("bob@localhost", [1; 32]).await;
        let key_package = |i: u32| NewKeyPackage {
            key_package_ref: i.to_be_bytes().to_vec(),
            ciphersuite: 1,
            not_after: u64::MAX,
            last_resort: false,
            key_package: vec![0; 16 * 1024],
        };
        let per_batch = 256;
        let batches = MAX_KEY_PACKAGE_BYTES_PER_USER / (16 * 1024) / per_batch;
        // Almost the limit (the records' own bytes count too), then a batch that crosses it.
        for batch in 0..batches as u32 - 1 {
            let batch: Vec<_> = (0..per_batch as u32)
                .map(|i| key_package(batch * per_batch as u32 + i))
                .collect();
            store
                .publish_key_packages(&ClientId::of("bob@localhost", 1), batch, usize::MAX, 0)
                .await
                .unwrap()
                .unwrap();
        }
        let crossing: Vec<_> = (0..per_batch as u32)
            .map(|i| key_package(u32::MAX - i))
            .collect();
        let over = store
            .publish_key_packages(&ClientId::of("bob@localhost", 1), crossing, usize::MAX, 0)
            .await
            .unwrap();
        assert!(
            matches!(over, Err(PublishRefusal::TooManyBytes { .. })),
            "{over:?}"
        );
    }
}
