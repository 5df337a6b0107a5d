//! The list of every table in the database: created at open (so reads never meet a missing
//! table) and scanned by [`Store::tables_containing`], so that a test can prove what a deletion
//! left behind. A new table goes into [`for_each_table!`] or those guarantees do not cover it.

use super::kv::{
    ReadTransaction, ReadableTable, SortKey, TableDefinition, Value, WriteTransaction,
};

use super::{Store, StoreError};

/// Calls `$action!(definition)` for every table of the store.
macro_rules! for_each_table {
    ($action:ident) => {{
        $action!(super::tables::meta::META);
        $action!(super::tables::accounts::USERS);
        $action!(super::tables::accounts::CLIENTS);
        $action!(super::tables::accounts::SIGNATURE_KEYS);
        $action!(super::tables::accounts::QUARANTINE);
        $action!(super::tables::accounts::INVITES_USED);
        $action!(super::tables::accounts::INVITES);
        $action!(super::tables::key_packages::KEY_PACKAGES);
        $action!(super::tables::key_packages::KEY_PACKAGE_REFS);
        $action!(super::tables::key_packages::CLIENT_KEY_PACKAGE_REFS);
        $action!(super::tables::queues::QUEUE);
        $action!(super::tables::queues::QUEUE_HEADS);
        $action!(super::tables::queues::QUEUE_REMOVED);
        $action!(super::tables::queues::QUEUE_REMOVED_SEEN);
        $action!(super::tables::queues::PENDING_NOTICES);
        $action!(super::totals::QUEUE_TOTALS);
        $action!(super::tables::queues::SHARED_PAYLOADS);
        $action!(super::tables::queues::SHARED_PAYLOAD_REFS);
        $action!(super::tables::groups::GROUPS);
        $action!(super::tables::groups::GROUP_STATE);
        $action!(super::tables::groups::GROUP_MEMBERS);
        $action!(super::tables::groups::SEND_VIEWS);
        $action!(super::tables::groups::RECENT_REQUESTS);
        $action!(super::tables::groups::RECENT_REQUESTS_BY_TIME);
        $action!(super::tables::group_trees::GROUP_TREES);
        $action!(super::tables::group_trees::GROUP_TREES_BY_TIME);
        $action!(super::tables::group_logs::GROUP_LOGS);
        $action!(super::tables::group_logs::GROUP_LOG);
        $action!(super::tables::group_logs::LOG_READERS);
        $action!(super::tables::group_logs::LOG_READERS_BY_ACKED);
        $action!(super::tables::group_logs::LOG_CLIENTS);
        $action!(super::tables::federation::OUTBOX);
        $action!(super::tables::federation::OUTBOX_HEADS);
        $action!(super::tables::federation::DELIVERIES_RECEIVED);
        $action!(super::tables::federation::GROUP_ROUTES);
        $action!(super::tables::federation::ROUTE_HUBS);
        $action!(super::tables::federation::CLIENT_HUBS);
        $action!(super::tables::push::PUSH_TARGETS);
        $action!(super::tables::push::PUSH_WAKES);
        $action!(super::tables::push::PUSH_WOKEN);
        $action!(super::tables::leases::LEASES);
        $action!(super::tables::leases::LEASE_GENERATIONS);
        $action!(super::tables::transparency::LOG_ENTRIES);
        $action!(super::tables::transparency::LOG_SUBTREES);
        $action!(super::tables::transparency::USER_ENTRIES);
        $action!(super::tables::transparency::TREE_HEADS);
    }};
}

pub(super) use for_each_table;

/// Creates every table that does not exist yet.
pub(super) fn create_all(txn: &WriteTransaction) -> Result<(), StoreError> {
    macro_rules! create {
        ($table:expr) => {
            txn.open_table($table)?;
        };
    }
    for_each_table!(create);
    Ok(())
}

/// Whether any key or value of `table` contains `needle`.
fn contains<K: SortKey, V: Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
    needle: &[u8],
) -> Result<bool, StoreError> {
    let table = txn.open_table(table)?;
    for entry in table.iter()? {
        let (key, value) = entry?;
        if has_subslice(K::as_bytes(&key.value()).as_ref(), needle)
            || has_subslice(V::as_bytes(&value.value()).as_ref(), needle)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn has_subslice(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

impl Store {
    /// The names of the tables holding `needle` anywhere in a key or a value. A full scan, for
    /// tests and for an operator checking that a deletion left nothing behind.
    pub async fn tables_containing(&self, needle: &[u8]) -> Result<Vec<String>, StoreError> {
        let needle = needle.to_vec();
        self.read(move |txn| {
            let mut found = Vec::new();
            macro_rules! scan {
                ($table:expr) => {
                    if contains(txn, $table, &needle)? {
                        found.push($table.to_string());
                    }
                };
            }
            for_each_table!(scan);
            Ok(found)
        })
        .await
    }

    /// The names of every table in the database file.
    pub async fn table_names(&self) -> Result<Vec<String>, StoreError> {
        self.read(|txn| txn.table_names()).await
    }

    /// The names of the tables this code knows (and scans).
    pub fn known_tables() -> Vec<String> {
        let mut names = Vec::new();
        macro_rules! name {
            ($table:expr) => {
                names.push($table.to_string());
            };
        }
        for_each_table!(name);
        names
    }
}
