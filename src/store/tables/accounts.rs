//! Users, their clients (devices), signature keys, the quarantine of deleted user ids, and used
//! invites.
//!
//! Every operation that a rule can refuse checks before it writes, so a refusal (`Ok(Err(..))`)
//! never leaves a partial write behind.

use crate::store::kv::{ReadableTable, SortKey, Table, TableDefinition, WriteTransaction};
use sha2::{Digest, Sha256};
use tls_codec::{Deserialize, Serialize, TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use crate::protocol::ClientId;
use crate::protocol::ED25519_PUBLIC_KEY_LEN;
use crate::store::{Store, StoreError};

/// user id -> [`UserRecord`].
pub(in crate::store) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users-1");
/// (user id, device id) -> [`ClientRecord`].
pub(in crate::store) const CLIENTS: TableDefinition<(&str, u32), &[u8]> =
    TableDefinition::new("clients-1");
/// signature public key -> (user id, device id): no key serves two clients.
pub(in crate::store) const SIGNATURE_KEYS: TableDefinition<&[u8], (&str, u32)> =
    TableDefinition::new("signature-keys-1");
/// SHA-256 of a deleted user id -> deletion time. A hash, so the id itself is gone.
pub(in crate::store) const QUARANTINE: TableDefinition<&[u8], u64> =
    TableDefinition::new("quarantine-1");
/// invite nonce -> times used.
pub(in crate::store) const INVITES_USED: TableDefinition<&[u8], u32> =
    TableDefinition::new("invites-used-1");
/// invite nonce -> [`InviteRecord`]: every invite this server issued. Registration accepts only
/// invites found here and not revoked.
pub(in crate::store) const INVITES: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("invites-1");

#[derive(Debug, TlsSize, TlsSerialize, TlsDeserialize)]
struct InviteRecord {
    created_at: u64,
    expires_at: u64,
    max_uses: u32,
    /// 0 while the invite stands.
    revoked_at: u64,
}

/// An invite the server issued, as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedInvite {
    pub nonce: Vec<u8>,
    pub created_at: u64,
    pub expires_at: u64,
    pub max_uses: u32,
    pub used: u32,
    pub revoked_at: Option<u64>,
}

#[derive(Debug, TlsSize, TlsSerialize, TlsDeserialize)]
struct UserRecord {
    created_at: u64,
    /// Device ids are never reused within a user, so a removed client's id stays dead.
    next_device_id: u32,
}

#[derive(Debug, TlsSize, TlsSerialize, TlsDeserialize)]
struct ClientRecord {
    signature_key: VLBytes,
    /// The encoded `ClientCredential`.
    credential: VLBytes,
    added_at: u64,
}

/// A stored client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredClient {
    pub device_id: u32,
    pub signature_key: [u8; ED25519_PUBLIC_KEY_LEN],
    pub credential: Vec<u8>,
    pub added_at: u64,
}

/// Issues the credential of a new client once its device id is known.
pub type IssueCredential = Box<dyn FnMut(u32) -> Vec<u8> + Send>;

/// A user to create, with its first client.
pub struct NewUser {
    pub user_id: String,
    pub signature_key: [u8; ED25519_PUBLIC_KEY_LEN],
    pub now: u64,
    /// A deleted user id may be registered again this many seconds after its deletion.
    pub quarantine_secs: u64,
    /// The invite that admits the user: its nonce and how many users it may admit.
    pub invite: Option<(Vec<u8>, u32)>,
    pub issue_credential: IssueCredential,
}

/// A client to add to an existing user.
pub struct NewClient {
    pub user_id: String,
    pub signature_key: [u8; ED25519_PUBLIC_KEY_LEN],
    pub now: u64,
    pub max_clients: usize,
    pub issue_credential: IssueCredential,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterRefusal {
    UserExists,
    Quarantined {
        until: u64,
    },
    KeyInUse,
    InviteUsedUp,
    /// The invite is authentic but this server has no record of it (issued before invites were
    /// recorded, or its record was lost) or the operator revoked it.
    InviteRevoked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddClientRefusal {
    UnknownUser,
    KeyInUse,
    TooManyClients,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveClientRefusal {
    UnknownClient,
    LastClient,
}

#[cfg(test)]
impl Store {
    /// Registers `user_id` with signature key `key` (unit tests of the other tables).
    pub(in crate::store) async fn register_for_test(
        &self,
        user_id: &str,
        key: [u8; ED25519_PUBLIC_KEY_LEN],
    ) {
        self.register_user(NewUser {
            user_id: user_id.to_owned(),
            signature_key: key,
            now: 0,
            quarantine_secs: 0,
            invite: None,
            issue_credential: {
                let user_id = user_id.to_owned();
                Box::new(move |device| crate::store::placeholder_credential(&user_id, device, key))
            },
        })
        .await
        .unwrap()
        .unwrap();
    }
}

/// When the user whose [`USERS`] value is `record` was created.
pub(in crate::store) fn user_created_at(record: &[u8]) -> Result<u64, StoreError> {
    Ok(decode::<UserRecord>(record)?.created_at)
}

/// Whether the client `(user_id, device_id)` exists, as `txn` sees it.
pub(in crate::store) fn client_exists(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
) -> Result<bool, StoreError> {
    // On a shared store a removal committed meanwhile by another node makes this transaction
    // (which read the row) or the removal (which read the rows this one writes for the client)
    // fail as a serialization failure: the write runs again and finds the client gone.
    Ok(txn
        .open_table(CLIENTS)?
        .get((user_id, device_id))?
        .is_some())
}

/// The client rows, open for many lookups (a fan-out's recipients).
pub(in crate::store) struct ClientRows<'t>(Table<'t, (&'static str, u32), &'static [u8]>);

impl<'t> ClientRows<'t> {
    pub(in crate::store) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self(txn.open_table(CLIENTS)?))
    }

    pub(in crate::store) fn exists(&self, client: (&str, u32)) -> Result<bool, StoreError> {
        Ok(self.0.get(client)?.is_some())
    }
}

/// Adds a client's row to `reads` (what [`client_exists`] and [`ClientRows::exists`] read).
pub(in crate::store) fn client_reads(reads: &mut crate::store::kv::Prefetch, client: (&str, u32)) {
    reads.key(&CLIENTS, client);
}

/// The device id of a user's first client.
pub const FIRST_DEVICE_ID: u32 = 1;

/// (user id, encoded credential) of every client of every user, in user and device order (a
/// migration's walk).
pub(in crate::store) fn all_credentials_in(
    txn: &WriteTransaction,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let clients = txn.open_table(CLIENTS)?;
    let mut credentials = Vec::new();
    for entry in clients.iter()? {
        let (key, record) = entry?;
        let credential = decode::<ClientRecord>(record.value())?.credential.into();
        credentials.push((key.value().0.to_owned(), credential));
    }
    Ok(credentials)
}

/// Every client of every user (a migration's walk).
pub(in crate::store) fn all_clients_in(
    txn: &WriteTransaction,
) -> Result<Vec<(String, u32)>, StoreError> {
    txn.open_table(CLIENTS)?
        .iter()?
        .map(|entry| entry.map(|(key, _)| (key.value().0.to_owned(), key.value().1)))
        .collect()
}

impl Store {
    /// Records an invite the server just issued, so that it admits users and can be revoked.
    pub async fn record_invite(
        &self,
        nonce: Vec<u8>,
        created_at: u64,
        expires_at: u64,
        max_uses: u32,
    ) -> Result<(), StoreError> {
        self.write(move |txn| {
            let record = InviteRecord {
                created_at,
                expires_at,
                max_uses,
                revoked_at: 0,
            };
            txn.open_table(INVITES)?
                .put(nonce.as_slice(), encode(&record)?.as_slice())?;
            Ok(())
        })
        .await
    }

    /// Every invite issued, with its uses, oldest first.
    pub async fn invites(&self) -> Result<Vec<IssuedInvite>, StoreError> {
        self.read(|txn| {
            let used = txn.open_table(INVITES_USED)?;
            let mut invites = txn
                .open_table(INVITES)?
                .iter()?
                .map(|entry| {
                    let (nonce, record) = entry?;
                    let record: InviteRecord = decode(record.value())?;
                    Ok(IssuedInvite {
                        nonce: nonce.value().to_vec(),
                        created_at: record.created_at,
                        expires_at: record.expires_at,
                        max_uses: record.max_uses,
                        used: used.get(nonce.value())?.map_or(0, |n| n.value()),
                        revoked_at: (record.revoked_at != 0).then_some(record.revoked_at),
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            invites.sort_by_key(|invite| (invite.created_at, invite.nonce.clone()));
            Ok(invites)
        })
        .await
    }

    /// Revokes an invite: it admits nobody from now on. `None` if there is no such invite;
    /// revoking twice keeps the first time.
    pub async fn revoke_invite(
        &self,
        nonce: Vec<u8>,
        now: u64,
    ) -> Result<Option<IssuedInvite>, StoreError> {
        self.write(move |txn| {
            let mut invites = txn.open_table(INVITES)?;
            let Some(mut record) = decoded::<_, InviteRecord>(&invites, nonce.as_slice())? else {
                return Ok(None);
            };
            if record.revoked_at == 0 {
                record.revoked_at = now.max(1);
                invites.put(nonce.as_slice(), encode(&record)?.as_slice())?;
            }
            let used = txn
                .open_table(INVITES_USED)?
                .get(nonce.as_slice())?
                .map_or(0, |n| n.value());
            Ok(Some(IssuedInvite {
                nonce: nonce.clone(),
                created_at: record.created_at,
                expires_at: record.expires_at,
                max_uses: record.max_uses,
                used,
                revoked_at: Some(record.revoked_at),
            }))
        })
        .await
    }

    /// A user's clients in device id order; `None` if the user does not exist.
    pub async fn clients_of(&self, user_id: &str) -> Result<Option<Vec<StoredClient>>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |txn| {
            if txn.open_table(USERS)?.get(user_id.as_str())?.is_none() {
                return Ok(None);
            }
            let clients = txn.open_table(CLIENTS)?;
            let mut found = Vec::new();
            for entry in clients.range((user_id.as_str(), 0)..=(user_id.as_str(), u32::MAX))? {
                let (key, record) = entry?;
                found.push(stored_client(key.value().1, record.value())?);
            }
            Ok(Some(found))
        })
        .await
    }

    /// One client, if it exists.
    pub async fn client(&self, client: &ClientId) -> Result<Option<StoredClient>, StoreError> {
        self.read_for(client, move |txn, (user_id, device_id)| {
            txn.open_table(CLIENTS)?
                .get((user_id, device_id))?
                .map(|record| stored_client(device_id, record.value()))
                .transpose()
        })
        .await
    }
}

/// Creates a user and its first client (device [`FIRST_DEVICE_ID`]), returning the credential.
pub(in crate::store) fn register_user_in(
    txn: &WriteTransaction,
    user: &mut NewUser,
) -> Result<Result<Vec<u8>, RegisterRefusal>, StoreError> {
    {
        let quarantined_at = txn
            .open_table(QUARANTINE)?
            .get(user_id_hash(&user.user_id).as_slice())?
            .map(|deleted| deleted.value());
        if let Some(deleted_at) = quarantined_at {
            let until = deleted_at.saturating_add(user.quarantine_secs);
            if user.now < until {
                return Ok(Err(RegisterRefusal::Quarantined { until }));
            }
        }
        if txn.open_table(USERS)?.get(user.user_id.as_str())?.is_some() {
            return Ok(Err(RegisterRefusal::UserExists));
        }
        if key_in_use(txn, &user.signature_key)? {
            return Ok(Err(RegisterRefusal::KeyInUse));
        }
        if let Some((nonce, max_uses)) = &user.invite {
            let standing = match txn.open_table(INVITES)?.get(nonce.as_slice())? {
                Some(record) => decode::<InviteRecord>(record.value())?.revoked_at == 0,
                None => false,
            };
            if !standing {
                return Ok(Err(RegisterRefusal::InviteRevoked));
            }
            let mut used = txn.open_table(INVITES_USED)?;
            let uses = used.get(nonce.as_slice())?.map_or(0, |n| n.value());
            if uses >= *max_uses {
                return Ok(Err(RegisterRefusal::InviteUsedUp));
            }
            used.put(nonce.as_slice(), uses + 1)?;
        }
        txn.open_table(QUARANTINE)?
            .delete(user_id_hash(&user.user_id).as_slice())?;
        let record = UserRecord {
            created_at: user.now,
            next_device_id: FIRST_DEVICE_ID + 1,
        };
        txn.open_table(USERS)?
            .put(user.user_id.as_str(), encode(&record)?.as_slice())?;
        let credential = (user.issue_credential)(FIRST_DEVICE_ID);
        insert_client(
            txn,
            &user.user_id,
            FIRST_DEVICE_ID,
            &user.signature_key,
            &credential,
            user.now,
        )?;
        Ok(Ok(credential))
    }
}

/// Adds a client to an existing user, returning its device id and credential.
pub(in crate::store) fn add_client_in(
    txn: &WriteTransaction,
    new: &mut NewClient,
) -> Result<Result<(u32, Vec<u8>), AddClientRefusal>, StoreError> {
    let NewClient {
        user_id,
        signature_key,
        now,
        max_clients,
        issue_credential,
    } = new;
    let (signature_key, now, max_clients) = (*signature_key, *now, *max_clients);
    let mut users = txn.open_table(USERS)?;
    let Some(mut user) = decoded::<_, UserRecord>(&users, user_id.as_str())? else {
        return Ok(Err(AddClientRefusal::UnknownUser));
    };
    if key_in_use(txn, &signature_key)? {
        return Ok(Err(AddClientRefusal::KeyInUse));
    }
    if client_count(txn, user_id)? >= max_clients {
        return Ok(Err(AddClientRefusal::TooManyClients));
    }
    let device_id = user.next_device_id;
    user.next_device_id = device_id
        .checked_add(1)
        .ok_or_else(|| StoreError::Corrupt(format!("{user_id} ran out of device ids")))?;
    users.put(user_id.as_str(), encode(&user)?.as_slice())?;
    drop(users);
    let credential = issue_credential(device_id);
    insert_client(txn, user_id, device_id, &signature_key, &credential, now)?;
    Ok(Ok((device_id, credential)))
}

/// Replaces a client's credential (same key, new validity).
pub(in crate::store) fn replace_credential_in(
    txn: &WriteTransaction,
    (user_id, device_id): (&str, u32),
    credential: &[u8],
) -> Result<Result<(), RemoveClientRefusal>, StoreError> {
    let mut clients = txn.open_table(CLIENTS)?;
    let Some(mut record) = decoded::<_, ClientRecord>(&clients, (user_id, device_id))? else {
        return Ok(Err(RemoveClientRefusal::UnknownClient));
    };
    record.credential = credential.to_vec().into();
    clients.put((user_id, device_id), encode(&record)?.as_slice())?;
    Ok(Ok(()))
}

fn insert_client(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
    signature_key: &[u8; ED25519_PUBLIC_KEY_LEN],
    credential: &[u8],
    now: u64,
) -> Result<(), StoreError> {
    let record = ClientRecord {
        signature_key: signature_key.to_vec().into(),
        credential: credential.to_vec().into(),
        added_at: now,
    };
    txn.open_table(CLIENTS)?
        .put((user_id, device_id), encode(&record)?.as_slice())?;
    txn.open_table(SIGNATURE_KEYS)?
        .put(signature_key.as_slice(), (user_id, device_id))?;
    Ok(())
}

/// Forgets a client's own rows (its record and its signature key). What other tables hold for
/// it goes first (`store::removal`). Returns the encoded credential it had, if it existed.
pub(in crate::store) fn forget_client_in(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
) -> Result<Option<Vec<u8>>, StoreError> {
    let removed = txn
        .open_table(CLIENTS)?
        .remove((user_id, device_id))?
        .map(|record| decode::<ClientRecord>(record.value()))
        .transpose()?;
    let Some(record) = removed else {
        return Ok(None);
    };
    txn.open_table(SIGNATURE_KEYS)?
        .delete(record.signature_key.as_slice())?;
    Ok(Some(record.credential.into()))
}

/// The device ids of `user_id`'s clients.
pub(in crate::store) fn devices_in(
    txn: &WriteTransaction,
    user_id: &str,
) -> Result<Vec<u32>, StoreError> {
    devices(&txn.open_table(CLIENTS)?, user_id)
}

/// The device ids of `user_id`'s clients, as a read transaction sees them.
pub(in crate::store) fn devices_read(
    txn: &crate::store::kv::ReadTransaction,
    user_id: &str,
) -> Result<Vec<u32>, StoreError> {
    devices(&txn.open_table(CLIENTS)?, user_id)
}

fn devices(
    clients: &impl ReadableTable<(&'static str, u32), &'static [u8]>,
    user_id: &str,
) -> Result<Vec<u32>, StoreError> {
    let range = clients.range((user_id, 0)..=(user_id, u32::MAX))?;
    range
        .map(|entry| entry.map(|(key, _)| key.value().1))
        .collect()
}

/// Forgets a user's record; `false` if there was none.
pub(in crate::store) fn forget_user_in(
    txn: &WriteTransaction,
    user_id: &str,
) -> Result<bool, StoreError> {
    Ok(txn.open_table(USERS)?.remove(user_id)?.is_some())
}

/// Keeps a deleted user's id from being registered again, from `now` (by its hash).
pub(in crate::store) fn quarantine_in(
    txn: &WriteTransaction,
    user_id: &str,
    now: u64,
) -> Result<(), StoreError> {
    txn.open_table(QUARANTINE)?
        .put(user_id_hash(user_id).as_slice(), now)?;
    Ok(())
}

fn key_in_use(txn: &WriteTransaction, key: &[u8]) -> Result<bool, StoreError> {
    Ok(txn.open_table(SIGNATURE_KEYS)?.get(key)?.is_some())
}

pub(in crate::store) fn client_count(
    txn: &WriteTransaction,
    user_id: &str,
) -> Result<usize, StoreError> {
    let clients = txn.open_table(CLIENTS)?;
    let range = clients.range((user_id, 0)..=(user_id, u32::MAX))?;
    Ok(range.count())
}

fn stored_client(device_id: u32, bytes: &[u8]) -> Result<StoredClient, StoreError> {
    let record: ClientRecord = decode(bytes)?;
    let signature_key = record
        .signature_key
        .as_slice()
        .try_into()
        .map_err(|_| StoreError::Corrupt("stored signature key has the wrong length".into()))?;
    Ok(StoredClient {
        device_id,
        signature_key,
        credential: record.credential.into(),
        added_at: record.added_at,
    })
}

fn user_id_hash(user_id: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"roost quarantined user id\0")
        .chain_update(user_id.as_bytes())
        .finalize()
        .into()
}

fn encode(record: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    record
        .tls_serialize_detached()
        .map_err(|e| StoreError::Corrupt(format!("cannot encode a record: {e}")))
}

/// The record `table` holds under `key`, decoded; `None` if it holds none.
fn decoded<'k, K: SortKey, T: Deserialize>(
    table: &impl ReadableTable<K, &'static [u8]>,
    key: impl std::borrow::Borrow<K::SelfType<'k>>,
) -> Result<Option<T>, StoreError> {
    table
        .get(key)?
        .map(|record| decode(record.value()))
        .transpose()
}

fn decode<T: Deserialize>(bytes: &[u8]) -> Result<T, StoreError> {
    T::tls_deserialize_exact(bytes).map_err(|e| StoreError::Corrupt(format!("bad record: {e}")))
}
