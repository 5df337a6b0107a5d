//! Groups hosted here: each group's public MLS state (openmls `PublicGroup`, kept as the entries of
//! its own key-value store), epoch, roles and latest GroupInfo; and which client is in which group.

use std::collections::HashSet;

use crate::store::kv::{Prefetch, ReadableTable, TableDefinition, WriteTransaction};
use tls_codec::{Deserialize, Serialize, TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use crate::protocol::ClientId;
use crate::store::rows::{key, Envelope, FullQueues, GroupMemberRow, OutgoingDelivery};
use crate::store::{Store, StoreError};

/// group id -> [`GroupRecord`] encoding.
pub(in crate::store) const GROUPS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("groups-1");
/// (user id, device id, group id) -> (leaf index, the epoch it joined at): the groups each
/// client is in. The epoch bounds which kept trees it may fetch (0 for memberships older than
/// schema 5, which knew no join epochs).
pub(in crate::store) const GROUP_MEMBERS: TableDefinition<(&str, u32, &[u8]), (u32, u64)> =
    TableDefinition::new("group-members-2");
/// Schema 4's memberships, without join epochs (migrated to [`GROUP_MEMBERS`]).
pub(in crate::store) const GROUP_MEMBERS_4: TableDefinition<(&str, u32, &[u8]), u32> =
    TableDefinition::new("group-members-1");
/// (group id, part key) -> part: a group's public MLS state, one row per part (tree, context,
/// each pending proposal, ...), each written only when it changed: a proposal does not rewrite the
/// tree. (Records written before this table hold their state inside the record.)
pub(in crate::store) const GROUP_STATE: TableDefinition<(&[u8], &[u8]), &[u8]> =
    TableDefinition::new("group-state-1");
/// Greater than any part key.
const PART_KEY_UPPER_BOUND: &[u8] = &[0xff; 256];

/// group id -> [`SendViewRecord`] encoding: what an application message needs of its group
/// (epoch, who receives), kept beside the group's full state by every change of it, so that a
/// send never decodes the group's tree.
pub(in crate::store) const SEND_VIEWS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("send-views-1");

#[derive(Debug, TlsSize, TlsSerialize, TlsDeserialize)]
struct SendViewRecord {
    epoch: u64,
    /// The clients that receive the group's messages: its members but those leaving.
    members: Vec<StoredClientRef>,
}

/// What sending an application message to a group needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendView {
    pub epoch: u64,
    /// Every client that receives the group's messages.
    pub members: Vec<ClientId>,
    /// Which of `members` read the group's log (the others, their queues).
    pub log_readers: Vec<bool>,
}

/// Writes a group's send view for `epoch` and its receiving `members`.
pub(in crate::store) fn write_send_view(
    txn: &WriteTransaction,
    group_id: &[u8],
    epoch: u64,
    members: &[GroupMemberRow],
) -> Result<(), StoreError> {
    let record = SendViewRecord {
        epoch,
        members: members
            .iter()
            .map(|row| StoredClientRef {
                user_id: row.client.user_id.as_str().as_bytes().to_vec().into(),
                device_id: row.client.device_id,
            })
            .collect(),
    };
    let encoded = record
        .tls_serialize_detached()
        .map_err(|e| StoreError::Corrupt(format!("encoding a send view: {e}")))?;
    txn.open_table(SEND_VIEWS)?
        .put(group_id, encoded.as_slice())?;
    Ok(())
}

#[derive(Debug, TlsSize, TlsSerialize, TlsDeserialize)]
struct StoredEntry {
    key: VLBytes,
    value: VLBytes,
}

#[derive(Debug, TlsSize, TlsSerialize, TlsDeserialize)]
struct StoredRole {
    user_id: VLBytes,
    admin: u8,
}

#[derive(Debug, TlsSize, TlsSerialize, TlsDeserialize)]
struct StoredClientRef {
    user_id: VLBytes,
    device_id: u32,
}

#[derive(Debug, TlsSize, TlsSerialize, TlsDeserialize)]
struct GroupRecord {
    epoch: u64,
    created_at: u64,
    roles: Vec<StoredRole>,
    leaving: Vec<StoredClientRef>,
    group_info: VLBytes,
    public_state: Vec<StoredEntry>,
}

/// The entries of a group's openmls public storage, sorted by key.
pub type PublicState = Vec<(Vec<u8>, Vec<u8>)>;

/// A group as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredGroup {
    pub epoch: u64,
    pub created_at: u64,
    /// (user id, is admin) for every user with a client in the group.
    pub roles: Vec<(String, bool)>,
    /// Clients that proposed to leave: still in the tree until a commit removes them, but no
    /// longer members for delivery.
    pub leaving: Vec<ClientId>,
    /// The current epoch's GroupInfo (an encoded `MLSMessage`).
    pub group_info: Vec<u8>,
    /// The entries of the group's openmls public storage.
    pub public_state: PublicState,
}

impl StoredGroup {
    pub(in crate::store) fn encode(&self) -> Result<Vec<u8>, StoreError> {
        GroupRecord {
            epoch: self.epoch,
            created_at: self.created_at,
            roles: self
                .roles
                .iter()
                .map(|(user_id, admin)| StoredRole {
                    user_id: user_id.as_bytes().to_vec().into(),
                    admin: u8::from(*admin),
                })
                .collect(),
            leaving: self
                .leaving
                .iter()
                .map(|client| StoredClientRef {
                    user_id: client.user_id.as_str().as_bytes().to_vec().into(),
                    device_id: client.device_id,
                })
                .collect(),
            group_info: self.group_info.clone().into(),
            // The state lives in its own rows (`GROUP_STATE`).
            public_state: Vec::new(),
        }
        .tls_serialize_detached()
        .map_err(|e| StoreError::Corrupt(format!("cannot encode a group: {e}")))
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let record = GroupRecord::tls_deserialize_exact(bytes)
            .map_err(|e| StoreError::Corrupt(format!("bad group record: {e}")))?;
        Ok(Self {
            epoch: record.epoch,
            created_at: record.created_at,
            roles: record
                .roles
                .into_iter()
                .map(|role| {
                    (
                        String::from_utf8_lossy(role.user_id.as_slice()).into_owned(),
                        role.admin == 1,
                    )
                })
                .collect(),
            leaving: record
                .leaving
                .into_iter()
                .map(|stored| {
                    let user_id = String::from_utf8_lossy(stored.user_id.as_slice());
                    ClientId::of(&user_id, stored.device_id)
                })
                .collect(),
            group_info: record.group_info.into(),
            public_state: record
                .public_state
                .into_iter()
                .map(|entry| (entry.key.into(), entry.value.into()))
                .collect(),
        })
    }
}

/// A client's place in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Membership {
    pub leaf_index: u32,
    /// The epoch of the commit that brought it in (0: the group's creation, or a membership
    /// older than schema 5).
    pub since_epoch: u64,
}

/// A group's move from one epoch to the next, with the messages that announce it.
pub struct GroupTransition {
    pub from_epoch: u64,
    pub group: StoredGroup,
    pub old_members: Vec<GroupMemberRow>,
    pub members: Vec<GroupMemberRow>,
    pub envelopes: Vec<Envelope>,
    /// Deliveries for remote members, into their homeservers' outboxes.
    pub remote: Vec<OutgoingDelivery>,
    /// The request that made this transition, remembered so that a retry is recognised.
    pub request: Option<RequestRecord>,
    /// The new epoch's TLS-encoded `RatchetTree`, kept for the joiners of a commit that adds
    /// members (their Welcomes need not carry it).
    pub joiners_tree: Option<Vec<u8>>,
}

/// A group request (commit, proposal, message) remembered for the dedupe window: a retry of the
/// same MLS message by the client that sent it gets the first answer and changes nothing.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub group_id: Vec<u8>,
    /// SHA-256 of the request's MLS message: every MLS message is unique (fresh signatures,
    /// per-message keys), so a retry is recognised by its bytes alone.
    pub digest: [u8; 32],
    pub now_ms: u64,
    /// What the request was answered with: the new epoch of a commit, the acceptance time of
    /// a message, 0 for a proposal.
    pub answer: u64,
    /// The client that sent it: only it is answered from the record.
    pub sender: ClientId,
}

/// What the dedupe window says of an MLS message a client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remembered {
    /// Not accepted within the window: a new request.
    New,
    /// Accepted from this same client, with this answer: a retry, given the first answer.
    Retry(u64),
    /// Accepted from another client: a replay of someone else's bytes. The record's answer is
    /// not for it, and the request must not be carried out again either.
    Replay,
}

/// How long a group request is remembered to recognise its retries.
pub const REQUEST_DEDUPE_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Remembered requests the maintenance purge forgets per write at most, oldest first.
const REQUESTS_FORGOTTEN_PER_WRITE: usize = 4_096;

/// Why a group change was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupRefusal {
    Exists,
    Unknown,
    /// Another commit moved the group on first.
    WrongEpoch {
        current: u64,
    },
    /// These members' queues have no room left even for handshake messages (see
    /// [`crate::store::Admission::Handshake`]); nothing was written.
    QueueFull(FullQueues),
    /// The same request was accepted before, with this answer; nothing was written again.
    Repeated(u64),
    /// The same bytes were accepted before from another client; nothing was written.
    Replayed,
    /// A client of this server that the transition brings into the group no longer exists (it
    /// was removed after the request was checked); nothing was written.
    MemberGone(ClientId),
}

impl Store {
    /// Whether a group is hosted here (its record is not decoded).
    pub async fn group_exists(&self, group_id: &[u8]) -> Result<bool, StoreError> {
        let group_id = group_id.to_vec();
        self.read(move |txn| {
            Ok(txn
                .open_table(SEND_VIEWS)?
                .get(group_id.as_slice())?
                .is_some()
                || txn.open_table(GROUPS)?.get(group_id.as_slice())?.is_some())
        })
        .await
    }

    pub async fn group(&self, group_id: &[u8]) -> Result<Option<StoredGroup>, StoreError> {
        let group_id = group_id.to_vec();
        self.read(move |txn| {
            let groups = txn.open_table(GROUPS)?;
            let Some(record) = groups.get(group_id.as_slice())? else {
                return Ok(None);
            };
            let mut group = StoredGroup::decode(record.value())?;
            if group.public_state.is_empty() {
                let parts = txn.open_table(GROUP_STATE)?;
                let range =
                    (group_id.as_slice(), &[][..])..=(group_id.as_slice(), PART_KEY_UPPER_BOUND);
                for entry in parts.range(range)? {
                    let (key, value) = entry?;
                    group
                        .public_state
                        .push((key.value().1.to_vec(), value.value().to_vec()));
                }
            }
            Ok(Some(group))
        })
        .await
    }

    /// A client's membership of a group, if it is a member.
    pub async fn group_membership(
        &self,
        client: &ClientId,
        group_id: &[u8],
    ) -> Result<Option<Membership>, StoreError> {
        let (user_id, device_id) = (client.user_id.as_str(), client.device_id);
        let (user_id, group_id) = (user_id.to_owned(), group_id.to_vec());
        self.read(move |txn| {
            Ok(txn
                .open_table(GROUP_MEMBERS)?
                .get((user_id.as_str(), device_id, group_id.as_slice()))?
                .map(|row| {
                    let (leaf_index, since_epoch) = row.value();
                    Membership {
                        leaf_index,
                        since_epoch,
                    }
                }))
        })
        .await
    }

    /// The groups any client of `user_id` is a member of, each once, with their epochs.
    pub async fn groups_of_user(&self, user_id: &str) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        self.groups_of_devices(user_id, 0..=u32::MAX).await
    }

    /// The groups a client is a member of, with their epochs.
    pub async fn groups_of(&self, client: &ClientId) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let (user_id, device_id) = (client.user_id.as_str(), client.device_id);
        self.groups_of_devices(user_id, device_id..=device_id).await
    }

    /// The groups any of `devices` of `user_id` is a member of, each once, in group id order,
    /// with their epochs.
    async fn groups_of_devices(
        &self,
        user_id: &str,
        devices: std::ops::RangeInclusive<u32>,
    ) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |txn| {
            let members = txn.open_table(GROUP_MEMBERS)?;
            let views = txn.open_table(SEND_VIEWS)?;
            let groups = txn.open_table(GROUPS)?;
            let mut ids = std::collections::BTreeSet::new();
            let range = (user_id.as_str(), *devices.start(), &[][..])
                ..=(user_id.as_str(), *devices.end(), GROUP_ID_UPPER_BOUND);
            for entry in members.range(range)? {
                ids.insert(entry?.0.value().2.to_vec());
            }
            let mut found = Vec::with_capacity(ids.len());
            for group_id in ids {
                // The epoch from the small send view; the whole record only for a group stored
                // before send views.
                if let Some(view) = views.get(group_id.as_slice())? {
                    found.push((group_id, view_epoch(view.value())?));
                } else if let Some(record) = groups.get(group_id.as_slice())? {
                    found.push((group_id, StoredGroup::decode(record.value())?.epoch));
                }
            }
            Ok(found)
        })
        .await
    }
}

/// Makes a group's state rows `entries`: a part whose bytes did not change is not written again
/// (its pages stay as they are), a part no longer there is deleted.
pub(in crate::store) fn write_state(
    txn: &WriteTransaction,
    group_id: &[u8],
    entries: &PublicState,
) -> Result<(), StoreError> {
    let mut parts = txn.open_table(GROUP_STATE)?;
    let stored: Vec<Vec<u8>> = parts
        .range((group_id, &[][..])..=(group_id, PART_KEY_UPPER_BOUND))?
        .map(|entry| entry.map(|(key, _)| key.value().1.to_vec()))
        .collect::<Result<_, _>>()?;
    for key in &stored {
        if !entries.iter().any(|(kept, _)| kept == key) {
            parts.delete((group_id, key.as_slice()))?;
        }
    }
    for (key, value) in entries {
        if key.len() > PART_KEY_UPPER_BOUND.len() {
            return Err(StoreError::Corrupt(
                "a group state part key too long".into(),
            ));
        }
        let unchanged = parts
            .get((group_id, key.as_slice()))?
            .is_some_and(|stored| stored.value() == value.as_slice());
        if !unchanged {
            parts.put((group_id, key.as_slice()), value.as_slice())?;
        }
    }
    Ok(())
}

/// The epoch of an encoded send view: its first field, a `uint64` (the view is not decoded).
fn view_epoch(view: &[u8]) -> Result<u64, StoreError> {
    view.get(..8)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("a send view without its epoch".into()))
}

/// A group's epoch, from the first field of its send view (a `uint64`, so the view is not
/// decoded), or, for a group stored before send views, from its record. `None`: no such group.
pub(in crate::store) fn current_epoch(
    txn: &WriteTransaction,
    groups: &impl ReadableTable<&'static [u8], &'static [u8]>,
    group_id: &[u8],
) -> Result<Option<u64>, StoreError> {
    if let Some(view) = txn.open_table(SEND_VIEWS)?.get(group_id)? {
        return Ok(Some(view_epoch(view.value())?));
    }
    groups
        .get(group_id)?
        .map(|record| StoredGroup::decode(record.value()).map(|group| group.epoch))
        .transpose()
}

/// (group id, request digest): the key a remembered request is found by.
type RequestKey<'a> = (&'a [u8], &'a [u8]);
/// (group id, request digest) -> (accepted at ms, answer, sender's user id, sender's device
/// id): requests within the dedupe window.
pub(in crate::store) const RECENT_REQUESTS: TableDefinition<RequestKey, (u64, u64, &str, u32)> =
    TableDefinition::new("recent-requests-2");
/// Schema 4's remembered requests, without their senders (dropped by the migration to schema 5:
/// a retry straddling that upgrade is taken as a new request).
pub(in crate::store) const RECENT_REQUESTS_4: TableDefinition<RequestKey, (u64, u64)> =
    TableDefinition::new("recent-requests-1");
/// (accepted at ms, group id, request digest): [`RECENT_REQUESTS`] oldest first, to forget them.
pub(in crate::store) const RECENT_REQUESTS_BY_TIME: TableDefinition<(u64, &[u8], &[u8]), ()> =
    TableDefinition::new("recent-requests-by-time-1");

/// Adds the row [`repeat_refusal`] reads for `record` to `reads`.
pub(in crate::store) fn request_reads(reads: &mut Prefetch, record: &RequestRecord) {
    reads.key(
        &RECENT_REQUESTS,
        (record.group_id.as_slice(), record.digest.as_slice()),
    );
}

/// Why `record` must not be carried out, if the same bytes were accepted within the dedupe
/// window: a retry by its sender ([`GroupRefusal::Repeated`], with the first answer) or a replay
/// by another client ([`GroupRefusal::Replayed`]). Checked in the transaction that acts.
pub(in crate::store) fn repeat_refusal(
    txn: &WriteTransaction,
    record: &RequestRecord,
) -> Result<Option<GroupRefusal>, StoreError> {
    let remembered = recent_answer(
        &txn.open_table(RECENT_REQUESTS)?,
        &record.group_id,
        &record.digest,
        (record.sender.user_id.as_str(), record.sender.device_id),
        record.now_ms,
    )?;
    Ok(match remembered {
        Remembered::New => None,
        Remembered::Retry(answer) => Some(GroupRefusal::Repeated(answer)),
        Remembered::Replay => Some(GroupRefusal::Replayed),
    })
}

/// What is remembered of the request `(group_id, digest)` within the window at `now_ms`, for
/// `asker` (user id, device id) sending it.
fn recent_answer(
    recent: &impl ReadableTable<RequestKey<'static>, (u64, u64, &'static str, u32)>,
    group_id: &[u8],
    digest: &[u8; 32],
    asker: (&str, u32),
    now_ms: u64,
) -> Result<Remembered, StoreError> {
    let Some(entry) = recent.get((group_id, digest.as_slice()))? else {
        return Ok(Remembered::New);
    };
    let (at, answer, user_id, device_id) = entry.value();
    Ok(if now_ms.saturating_sub(at) >= REQUEST_DEDUPE_WINDOW_MS {
        Remembered::New
    } else if (user_id, device_id) == asker {
        Remembered::Retry(answer)
    } else {
        Remembered::Replay
    })
}

/// Remembers an accepted request (the maintenance purge forgets it after the window:
/// [`Store::forget_expired_requests`]).
pub(in crate::store) fn remember_request(
    txn: &WriteTransaction,
    record: &RequestRecord,
) -> Result<(), StoreError> {
    let key = (record.group_id.as_slice(), record.digest.as_slice());
    txn.open_table(RECENT_REQUESTS)?.put(
        key,
        (
            record.now_ms,
            record.answer,
            record.sender.user_id.as_str(),
            record.sender.device_id,
        ),
    )?;
    txn.open_table(RECENT_REQUESTS_BY_TIME)?
        .put((record.now_ms, key.0, key.1), ())?;
    Ok(())
}

impl Store {
    /// Forgets the requests remembered before `now_ms` less the dedupe window, oldest first, in
    /// writes of `REQUESTS_FORGOTTEN_PER_WRITE`. Returns how many it forgot. (Answers are
    /// checked against the window when read, so one kept a little longer changes nothing.)
    pub async fn forget_expired_requests(&self, now_ms: u64) -> Result<u64, StoreError> {
        let cutoff = now_ms.saturating_sub(REQUEST_DEDUPE_WINDOW_MS);
        let mut forgotten = 0;
        loop {
            let this_write = self
                .write(move |txn| {
                    let mut by_time = txn.open_table(RECENT_REQUESTS_BY_TIME)?;
                    let expired: Vec<(u64, Vec<u8>, Vec<u8>)> = by_time
                        .range((0u64, &[][..], &[][..])..(cutoff, &[][..], &[][..]))?
                        .take(REQUESTS_FORGOTTEN_PER_WRITE)
                        .map(|entry| {
                            entry.map(|(key, _)| {
                                let (at, group, digest) = key.value();
                                (at, group.to_vec(), digest.to_vec())
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    let mut recent = txn.open_table(RECENT_REQUESTS)?;
                    for (at, group, digest) in &expired {
                        by_time.delete((*at, group.as_slice(), digest.as_slice()))?;
                        recent.delete((group.as_slice(), digest.as_slice()))?;
                    }
                    Ok(expired.len())
                })
                .await?;
            forgotten += this_write as u64;
            if this_write < REQUESTS_FORGOTTEN_PER_WRITE {
                return Ok(forgotten);
            }
        }
    }

    /// Whether a group request with this digest was accepted within the dedupe window before
    /// `now_ms`, and if so whether from `asker` (user id, device id).
    pub async fn recent_request(
        &self,
        group_id: &[u8],
        digest: [u8; 32],
        asker: &ClientId,
        now_ms: u64,
    ) -> Result<Remembered, StoreError> {
        let group_id = group_id.to_vec();
        let asker = asker.clone();
        self.read(move |txn| {
            recent_answer(
                &txn.open_table(RECENT_REQUESTS)?,
                &group_id,
                &digest,
                key(&asker),
                now_ms,
            )
        })
        .await
    }
}

/// The migration to schema 5, in its transaction: memberships gain the epoch they joined at (0
/// for those migrated, which may fetch every kept tree as before), and the requests remembered
/// without their senders are forgotten (a retry straddling the upgrade is taken as new).
pub(in crate::store) fn migrate_to_schema_5(txn: &WriteTransaction) -> Result<(), StoreError> {
    {
        let old = txn.open_table(GROUP_MEMBERS_4)?;
        let mut members = txn.open_table(GROUP_MEMBERS)?;
        for entry in old.iter()? {
            let (key, leaf) = entry?;
            members.put(key.value(), (leaf.value(), 0))?;
        }
    }
    txn.delete_table(GROUP_MEMBERS_4)?;
    txn.delete_table(RECENT_REQUESTS_4)?;
    Ok(())
}

/// Whether a group is hosted here, as the write transaction `txn` sees it.
pub(in crate::store) fn group_exists_in(
    txn: &WriteTransaction,
    group_id: &[u8],
) -> Result<bool, StoreError> {
    Ok(txn.open_table(GROUPS)?.get(group_id)?.is_some())
}

/// Stores a new group's record; `false` (nothing written) if the group exists.
pub(in crate::store) fn insert_group_in(
    txn: &WriteTransaction,
    group_id: &[u8],
    encoded: &[u8],
) -> Result<bool, StoreError> {
    let mut groups = txn.open_table(GROUPS)?;
    if groups.get(group_id)?.is_some() {
        return Ok(false);
    }
    groups.put(group_id, encoded)?;
    Ok(true)
}

/// Replaces a group's record.
pub(in crate::store) fn put_group_in(
    txn: &WriteTransaction,
    group_id: &[u8],
    encoded: &[u8],
) -> Result<(), StoreError> {
    txn.open_table(GROUPS)?.put(group_id, encoded)?;
    Ok(())
}

/// A group's epoch (`None`: no such group), as [`current_epoch`] reads it.
pub(in crate::store) fn epoch_in(
    txn: &WriteTransaction,
    group_id: &[u8],
) -> Result<Option<u64>, StoreError> {
    current_epoch(txn, &txn.open_table(GROUPS)?, group_id)
}

/// Deletes a group's record, state and send view; `false` if there was no such group. Its
/// member rows go with [`replace_members`].
pub(in crate::store) fn delete_group_in(
    txn: &WriteTransaction,
    group_id: &[u8],
) -> Result<bool, StoreError> {
    if txn.open_table(GROUPS)?.remove(group_id)?.is_none() {
        return Ok(false);
    }
    txn.open_table(GROUP_STATE)?.retain_in(
        (group_id, &[][..])..=(group_id, PART_KEY_UPPER_BOUND),
        |_, _| false,
    )?;
    txn.open_table(SEND_VIEWS)?.delete(group_id)?;
    Ok(true)
}

/// A send view as stored: the epoch and the receiving members.
pub(in crate::store) type ViewRows = (u64, Vec<ClientId>);

/// Adds the rows [`prepared_send_in`] reads to `reads`.
pub(in crate::store) fn send_view_reads(reads: &mut Prefetch, group_id: &[u8], digest: &[u8; 32]) {
    reads.key(&RECENT_REQUESTS, (group_id, digest.as_slice()));
    reads.key(&SEND_VIEWS, group_id);
}

/// Whether `asker` sent the message with `digest` to `group_id` within the dedupe window before
/// `now_ms`, and if not the group's send view: its epoch and receiving members (`None` for a
/// group not hosted here, or stored before send views existed).
pub(in crate::store) fn prepared_send_in(
    txn: &crate::store::kv::ReadTransaction,
    group_id: &[u8],
    digest: &[u8; 32],
    asker: (&str, u32),
    now_ms: u64,
) -> Result<(Remembered, Option<ViewRows>), StoreError> {
    let remembered = recent_answer(
        &txn.open_table(RECENT_REQUESTS)?,
        group_id,
        digest,
        asker,
        now_ms,
    )?;
    if remembered != Remembered::New {
        return Ok((remembered, None));
    }
    let views = txn.open_table(SEND_VIEWS)?;
    let Some(encoded) = views.get(group_id)? else {
        return Ok((Remembered::New, None));
    };
    let record = SendViewRecord::tls_deserialize_exact(encoded.value())
        .map_err(|e| StoreError::Corrupt(format!("send view: {e}")))?;
    let members: Vec<ClientId> = record
        .members
        .into_iter()
        .map(|member| {
            String::from_utf8(member.user_id.into())
                .map(|user_id| ClientId::of(&user_id, member.device_id))
                .map_err(|e| StoreError::Corrupt(format!("send view: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok((Remembered::New, Some((record.epoch, members))))
}

/// The groups hosted here that a client is a member of.
pub(in crate::store) fn hosted_groups_of_in(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let members = txn.open_table(GROUP_MEMBERS)?;
    let hosted = txn.open_table(GROUPS)?;
    let mut groups = Vec::new();
    let range = (user_id, device_id, &[][..])..=(user_id, device_id, GROUP_ID_UPPER_BOUND);
    for entry in members.range(range)? {
        let group_id = entry?.0.value().2.to_vec();
        if hosted.get(group_id.as_slice())?.is_some() {
            groups.push(group_id);
        }
    }
    Ok(groups)
}

/// Greater than any group id hosted here: every group id has a domain after its random bytes
/// (`identity::group_hub`), whose ASCII bytes are below 0xff, within the first 257 bytes.
const GROUP_ID_UPPER_BOUND: &[u8] = &[0xff; 257];

pub(in crate::store) fn replace_members(
    txn: &WriteTransaction,
    group_id: &[u8],
    old: &[GroupMemberRow],
    new: &[GroupMemberRow],
    epoch: u64,
) -> Result<(), StoreError> {
    // A member in both keeps its row, and so the epoch it joined at; a client that comes in now
    // joins at `epoch`.
    let (old_rows, new_rows): (HashSet<_>, HashSet<_>) =
        (old.iter().collect(), new.iter().collect());
    let mut members = txn.open_table(GROUP_MEMBERS)?;
    for row in old.iter().filter(|row| !new_rows.contains(row)) {
        members.delete((row.client.user_id.as_str(), row.client.device_id, group_id))?;
    }
    for row in new.iter().filter(|row| !old_rows.contains(row)) {
        members.put(
            (row.client.user_id.as_str(), row.client.device_id, group_id),
            (row.leaf_index, epoch),
        )?;
    }
    Ok(())
}

/// Forgets a deleted client's memberships (its leaf stays in each tree until a commit removes
/// it).
pub(in crate::store) fn delete_client_memberships(
    txn: &WriteTransaction,
    user_id: &str,
    device_id: u32,
) -> Result<(), StoreError> {
    txn.open_table(GROUP_MEMBERS)?.retain_in(
        (user_id, device_id, &[][..])..=(user_id, device_id, GROUP_ID_UPPER_BOUND),
        |_, _| false,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::QueueLimits;

    #[tokio::test]
    async fn requests_are_remembered_for_the_window_and_then_forgotten() {
        let (_dir, store) = crate::store::test_store();
        let record = |digest: u8, now_ms: u64| RequestRecord {
            group_id: b"group".to_vec(),
            digest: [digest; 32],
            now_ms,
            answer: 7,
            sender: ClientId::of("a@x", 1),
        };
        for (digest, at) in [(1, 1_000), (2, 2_000)] {
            let request = record(digest, at);
            store
                .write(move |txn| remember_request(txn, &request))
                .await
                .unwrap();
        }
        let sender = ("a@x", 1);
        let remembered = |group: &'static [u8], asker: (&'static str, u32), at: u64| {
            let store = store.clone();
            async move {
                store
                    .recent_request(group, [1; 32], &ClientId::of(asker.0, asker.1), at)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            remembered(b"group", sender, 5_000).await,
            Remembered::Retry(7)
        );
        // Another client sending the same bytes (another device of the same user included) is
        // not answered from the record.
        assert_eq!(
            remembered(b"group", ("b@x", 1), 5_000).await,
            Remembered::Replay
        );
        assert_eq!(
            remembered(b"group", ("a@x", 2), 5_000).await,
            Remembered::Replay
        );
        assert_eq!(remembered(b"other", sender, 5_000).await, Remembered::New);
        let late = 1_000 + REQUEST_DEDUPE_WINDOW_MS;
        assert_eq!(remembered(b"group", sender, late).await, Remembered::New);
        // The maintenance purge forgets what is past the window: both tables shrink.
        let now = 2_000 + REQUEST_DEDUPE_WINDOW_MS + 1;
        let request = record(3, now);
        store
            .write(move |txn| remember_request(txn, &request))
            .await
            .unwrap();
        assert_eq!(store.forget_expired_requests(now).await.unwrap(), 2);
        assert_eq!(store.forget_expired_requests(now).await.unwrap(), 0);
        let remembered = store
            .read(|txn| {
                Ok((
                    txn.open_table(RECENT_REQUESTS)?.len()?,
                    txn.open_table(RECENT_REQUESTS_BY_TIME)?.len()?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(remembered, (1, 1));
    }

    #[tokio::test]
    async fn a_member_keeps_the_epoch_it_joined_at_until_it_leaves() {
        let (_dir, store) = crate::store::test_store();
        let row = |user: &str, leaf| GroupMemberRow {
            client: ClientId::of(user, 1),
            leaf_index: leaf,
        };
        let steps = [
            (vec![], vec![row("a@x", 0)], 0),
            (vec![row("a@x", 0)], vec![row("a@x", 0), row("b@x", 1)], 4),
            (vec![row("a@x", 0), row("b@x", 1)], vec![row("b@x", 1)], 5),
            (vec![row("b@x", 1)], vec![row("b@x", 1), row("a@x", 0)], 9),
        ];
        let mut seen = Vec::new();
        for (old, new, epoch) in steps {
            store
                .write(move |txn| replace_members(txn, b"group", &old, &new, epoch))
                .await
                .unwrap();
            let since = |user: &'static str| {
                let store = store.clone();
                async move {
                    let membership = store
                        .group_membership(&ClientId::of(user, 1), b"group")
                        .await
                        .unwrap();
                    membership.map(|membership| membership.since_epoch)
                }
            };
            seen.push((since("a@x").await, since("b@x").await));
        }
        assert_eq!(
            seen,
            [
                (Some(0), None),
                (Some(0), Some(4)),
                (None, Some(4)),
                (Some(9), Some(4)),
            ]
        );
    }

    #[tokio::test]
    async fn a_groups_state_parts_are_rows_changed_one_by_one_and_deleted_with_it() {
        let (_dir, store) = crate::store::test_store();
        let part = |key: &str, value: &[u8]| (key.as_bytes().to_vec(), value.to_vec());
        let group = |epoch: u64, state: PublicState| StoredGroup {
            epoch,
            created_at: 1,
            roles: vec![("a@x".into(), true)],
            leaving: Vec::new(),
            group_info: vec![9],
            public_state: state,
        };
        let first = vec![part("roost:context", b"c0"), part("roost:tree", &[7; 5000])];
        store
            .create_group(b"g", group(0, first.clone()), Vec::new())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store.group(b"g").await.unwrap().unwrap().public_state,
            first
        );

        // A part changes, one is added, one goes; the record itself holds none of them.
        let second = vec![
            part("roost:context", b"c1"),
            part("roost:proposal:\0", b"p"),
        ];
        let transition = GroupTransition {
            from_epoch: 0,
            group: group(1, second.clone()),
            old_members: Vec::new(),
            members: Vec::new(),
            envelopes: Vec::new(),
            remote: Vec::new(),
            request: None,
            joiners_tree: None,
        };
        store
            .commit_group(b"g", transition, 5, QueueLimits::per_client(10, 1000))
            .await
            .unwrap()
            .unwrap();
        let stored = store.group(b"g").await.unwrap().unwrap();
        assert_eq!((stored.epoch, stored.public_state), (1, second));
        let record_len = store
            .read(|txn| {
                Ok(txn
                    .open_table(GROUPS)?
                    .get(&b"g"[..])?
                    .unwrap()
                    .value()
                    .len())
            })
            .await
            .unwrap();
        assert!(record_len < 100, "{record_len} bytes");

        store
            .delete_group(
                b"g",
                Vec::new(),
                Vec::new(),
                Vec::new(),
                6,
                QueueLimits::per_client(10, 1000),
            )
            .await
            .unwrap()
            .unwrap();
        let left = store
            .read(|txn| txn.open_table(GROUP_STATE)?.len())
            .await
            .unwrap();
        assert_eq!(left, 0);
    }
}
