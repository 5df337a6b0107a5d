//! The tables the typed store operations read and write, on either backend.
//!
//! Every typed operation (the `impl Store` blocks of the sibling modules) is written once against
//! the types here — [`WriteTransaction`], [`ReadTransaction`], [`Table`], [`ReadableTable`],
//! [`AccessGuard`], [`Range`] — which mirror redb's API. On redb they are redb's own tables and
//! transactions. On PostgreSQL ([`super::postgres`]) each table is a SQL table of (sort key,
//! key, value) rows in one database transaction: the sort key is [`SortKey`]'s order-preserving
//! encoding of the key, so that SQL's `ORDER BY k` on bytes is the order redb keeps, and range
//! reads, first and last mean the same on both.
//!
//! Table definitions are redb's `TableDefinition<K, V>` (a name and two types); keys and values
//! are encoded with redb's `Key`/`Value` traits on both backends, so a table has one format.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

pub(super) use redb::{Key, TableDefinition, TableHandle, Value};

use super::postgres::{PgSession, SortRange, UnsentRow};
use super::totals::BatchTotals;
use super::StoreError;

/// A write transaction: every write of a batch (group commit) runs in one. It carries the
/// batch's own state beside the backend's transaction: what its writes moved the server's queued
/// bytes by, written once before it commits ([`BatchTotals`]).
pub(crate) struct WriteTransaction {
    backend: WriteBackend,
    totals: BatchTotals,
}

/// The backend's transaction under a [`WriteTransaction`].
#[allow(clippy::large_enum_variant)] // one per batch, never moved in a loop
pub(crate) enum WriteBackend {
    Redb(redb::WriteTransaction),
    Postgres(PgSession),
}

/// A read transaction: a consistent snapshot.
#[allow(clippy::large_enum_variant)] // one per read
pub(crate) enum ReadTransaction {
    Redb(redb::ReadTransaction),
    Postgres(PgSession),
}

/// An open table of either transaction.
pub(crate) struct Table<'t, K: SortKey, V: Value + 'static> {
    inner: Inner<'t, K, V>,
}

enum Inner<'t, K: SortKey, V: Value + 'static> {
    RedbWrite(redb::Table<'t, K, V>),
    RedbRead(redb::ReadOnlyTable<K, V>),
    Postgres {
        session: &'t PgSession,
        name: String,
        writable: bool,
        types: PhantomData<(K, V)>,
    },
}

impl<'t, K: SortKey, V: Value + 'static> Inner<'t, K, V> {
    fn postgres(session: &'t PgSession, definition: TableDefinition<K, V>, writable: bool) -> Self {
        Self::Postgres {
            session,
            name: definition.name().to_owned(),
            writable,
            types: PhantomData,
        }
    }
}

impl WriteTransaction {
    pub(crate) fn new(backend: WriteBackend, totals: BatchTotals) -> Self {
        Self { backend, totals }
    }

    /// The backend's transaction, to commit or abort (the batch's totals were written or are
    /// dropped with it).
    pub(crate) fn into_backend(self) -> WriteBackend {
        self.backend
    }

    /// The server's queued bytes as this batch moves them.
    pub(crate) fn totals(&self) -> &BatchTotals {
        &self.totals
    }

    pub(crate) fn open_table<K: SortKey, V: Value + 'static>(
        &self,
        definition: TableDefinition<K, V>,
    ) -> Result<Table<'_, K, V>, StoreError> {
        Ok(Table {
            inner: match &self.backend {
                WriteBackend::Redb(txn) => Inner::RedbWrite(txn.open_table(definition)?),
                WriteBackend::Postgres(session) => Inner::postgres(session, definition, true),
            },
        })
    }

    /// Drops a table and everything in it (a finished migration's old table).
    pub(crate) fn delete_table<K: SortKey, V: Value + 'static>(
        &self,
        definition: TableDefinition<K, V>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            WriteBackend::Redb(txn) => {
                txn.delete_table(definition)?;
            }
            WriteBackend::Postgres(session) => session.drop_table(definition.name())?,
        }
        Ok(())
    }
}

impl ReadTransaction {
    pub(crate) fn open_table<K: SortKey, V: Value + 'static>(
        &self,
        definition: TableDefinition<K, V>,
    ) -> Result<Table<'_, K, V>, StoreError> {
        Ok(Table {
            inner: match self {
                Self::Redb(txn) => Inner::RedbRead(txn.open_table(definition)?),
                Self::Postgres(session) => Inner::postgres(session, definition, false),
            },
        })
    }

    /// The names of every table the database holds.
    pub(crate) fn table_names(&self) -> Result<Vec<String>, StoreError> {
        match self {
            Self::Redb(txn) => Ok(txn
                .list_tables()?
                .map(|handle| handle.name().to_owned())
                .collect()),
            Self::Postgres(session) => session.table_names(),
        }
    }
}

/// Rows an operation will read, named before it runs: by key, or whole key ranges (each small:
/// a user's devices, a queue up to a position). The writer reads those of a whole batch in one
/// statement on PostgreSQL, so that each write's reads of them cost no round trip; a read made
/// only of them needs no transaction there ([`super::Store::read_reading`]).
#[derive(Clone, Default)]
pub(crate) struct Prefetch {
    keys: Vec<(&'static str, Vec<u8>)>,
    ranges: Vec<(&'static str, SortRange)>,
}

impl Prefetch {
    /// Adds the row `key` of `table`.
    pub(crate) fn key<K: SortKey, V: Value + 'static>(
        &mut self,
        table: &'static TableDefinition<'static, K, V>,
        key: K::SelfType<'_>,
    ) {
        self.keys.push((table.name(), sort_key::<K>(&key)));
    }

    /// Adds every row of `table` in `range` (which has an end: a range to the end of a table is
    /// not read ahead).
    pub(crate) fn range<'a, K: SortKey, V: Value + 'static, KR>(
        &mut self,
        table: &'static TableDefinition<'static, K, V>,
        range: impl RangeBounds<KR>,
    ) where
        KR: Borrow<K::SelfType<'a>>,
    {
        self.ranges
            .push((table.name(), sort_bounds::<K, KR>(&range)));
    }

    /// Adds every row `other` names.
    pub(crate) fn extend(&mut self, other: &Prefetch) {
        self.keys.extend(other.keys.iter().cloned());
        self.ranges.extend(other.ranges.iter().cloned());
    }
}

impl Prefetch {
    /// Reads the rows named in `session` (a PostgreSQL transaction's; redb's reads are local
    /// and read nothing ahead).
    fn read_in(self, session: Option<&PgSession>) -> Result<(), StoreError> {
        match session {
            Some(session) => session.prefetch_rows(self.keys, self.ranges),
            None => Ok(()),
        }
    }
}

impl WriteTransaction {
    /// Reads the rows `prefetch` names.
    pub(crate) fn prefetch(&self, prefetch: Prefetch) -> Result<(), StoreError> {
        prefetch.read_in(match &self.backend {
            WriteBackend::Redb(_) => None,
            WriteBackend::Postgres(session) => Some(session),
        })
    }
}

impl ReadTransaction {
    /// Reads the rows `prefetch` names.
    pub(crate) fn prefetch(&self, prefetch: Prefetch) -> Result<(), StoreError> {
        prefetch.read_in(match self {
            Self::Redb(_) => None,
            Self::Postgres(session) => Some(session),
        })
    }
}

/// The value of a key or value read from a table.
pub(crate) enum AccessGuard<'a, V: Value + 'static> {
    Redb(redb::AccessGuard<'a, V>),
    Owned(Vec<u8>, PhantomData<V>),
}

impl<V: Value + 'static> AccessGuard<'_, V> {
    pub(crate) fn value(&self) -> V::SelfType<'_> {
        match self {
            Self::Redb(guard) => guard.value(),
            Self::Owned(bytes, _) => V::from_bytes(bytes),
        }
    }

    fn owned(bytes: Vec<u8>) -> AccessGuard<'static, V> {
        AccessGuard::Owned(bytes, PhantomData)
    }

    fn into_owned(self) -> AccessGuard<'static, V> {
        match self {
            Self::Redb(guard) => AccessGuard::owned(V::as_bytes(&guard.value()).as_ref().to_vec()),
            Self::Owned(bytes, _) => AccessGuard::owned(bytes),
        }
    }
}

type Entry<'a, K, V> = (AccessGuard<'a, K>, AccessGuard<'a, V>);

/// The rows [`Table::extract_from_if`] removed.
pub(crate) type Extracted<K, V> = std::vec::IntoIter<Result<Entry<'static, K, V>, StoreError>>;

/// Rows read in key order, lazily.
pub(crate) enum Range<'a, K: SortKey, V: Value + 'static> {
    Redb(redb::Range<'a, K, V>),
    Postgres(PgRange<'a, K, V>),
}

impl<'a, K: SortKey, V: Value + 'static> Iterator for Range<'a, K, V> {
    type Item = Result<Entry<'a, K, V>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Redb(range) => range.next().map(|entry| {
                entry
                    .map(|(key, value)| (AccessGuard::Redb(key), AccessGuard::Redb(value)))
                    .map_err(StoreError::from)
            }),
            Self::Postgres(range) => range.next(),
        }
    }
}

/// A PostgreSQL range read: pages of rows fetched as the iteration reaches them (small at first,
/// since many reads stop after a row or two, then growing), each page starting after the last
/// sort key read, merged with the transaction's own writes in the range that it has not sent
/// yet (so a range read costs no flush of them).
pub(crate) struct PgRange<'a, K, V> {
    session: &'a PgSession,
    table: String,
    /// The next page starts at this sort key (inclusive).
    from: Vec<u8>,
    /// Rows end before this sort key; `None` reads to the end.
    before: Option<Vec<u8>>,
    page: i64,
    buffered: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// The transaction's unsent writes in the range, in key order: (sort key, the row written or
    /// `None` for a deletion).
    unsent: VecDeque<UnsentRow>,
    exhausted: bool,
    types: PhantomData<(K, V)>,
}

const FIRST_PAGE_ROWS: i64 = 8;
const MAX_PAGE_ROWS: i64 = 512;

impl<'a, K: SortKey, V: Value + 'static> PgRange<'a, K, V> {
    fn new(session: &'a PgSession, table: &str, from: Vec<u8>, before: Option<Vec<u8>>) -> Self {
        // A range the transaction read whole ahead is served from what it knows; any other is
        // read from the database, merged with the transaction's unsent writes.
        let known = session.known_range(table, &from, before.as_deref());
        let unsent = match known {
            Some(_) => VecDeque::new(),
            None => session.unsent_in(table, &from, before.as_deref()),
        };
        Self {
            session,
            table: table.to_owned(),
            exhausted: known.is_some(),
            buffered: known.unwrap_or_default(),
            unsent,
            from,
            before,
            page: FIRST_PAGE_ROWS,
            types: PhantomData,
        }
    }

    fn fetch(&mut self) -> Result<(), StoreError> {
        let rows = self.session.range_stored(
            &self.table,
            &self.from,
            self.before.as_deref(),
            self.page,
        )?;
        self.exhausted = (rows.len() as i64) < self.page;
        self.page = (self.page * 4).min(MAX_PAGE_ROWS);
        if let Some((sort_key, _, _)) = rows.last() {
            self.from = successor(sort_key.clone());
        }
        for (sort_key, key, value) in rows {
            // The transaction's own writes before this row, then the row as the transaction
            // sees it.
            self.take_unsent(|unsent| unsent < sort_key.as_slice());
            match self.unsent.front() {
                Some((unsent, _)) if *unsent == sort_key => {
                    let (_, written) = self.unsent.pop_front().expect("looked at");
                    self.buffered.extend(written);
                }
                _ => self.buffered.push_back((key, value)),
            }
        }
        if self.exhausted {
            self.take_unsent(|_| true);
        }
        Ok(())
    }

    /// Moves the unsent rows at the front for which `before` holds into the buffer (deletions
    /// yield nothing).
    fn take_unsent(&mut self, before: impl Fn(&[u8]) -> bool) {
        while self.unsent.front().is_some_and(|(key, _)| before(key)) {
            let (_, written) = self.unsent.pop_front().expect("looked at");
            self.buffered.extend(written);
        }
    }

    fn next(&mut self) -> Option<Result<Entry<'a, K, V>, StoreError>> {
        while self.buffered.is_empty() && !self.exhausted {
            if let Err(error) = self.fetch() {
                self.exhausted = true;
                return Some(Err(error));
            }
        }
        let (key, value) = self.buffered.pop_front()?;
        Some(Ok((AccessGuard::owned(key), AccessGuard::owned(value))))
    }
}

/// The smallest byte string after `bytes`.
fn successor(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.push(0);
    bytes
}

/// `range` as (first sort key, inclusive; end sort key, exclusive, if bounded).
fn sort_bounds<'a, K: SortKey, KR: Borrow<K::SelfType<'a>>>(
    range: &impl RangeBounds<KR>,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let encode = |key: &KR| {
        let mut out = Vec::new();
        K::encode_sorted(key.borrow(), &mut out);
        out
    };
    let from = match range.start_bound() {
        Bound::Included(key) => encode(key),
        Bound::Excluded(key) => successor(encode(key)),
        Bound::Unbounded => Vec::new(),
    };
    let before = match range.end_bound() {
        Bound::Included(key) => Some(successor(encode(key))),
        Bound::Excluded(key) => Some(encode(key)),
        Bound::Unbounded => None,
    };
    (from, before)
}

/// Reads of a table (of a read or a write transaction).
pub(crate) trait ReadableTable<K: SortKey, V: Value + 'static> {
    fn get<'a>(
        &self,
        key: impl Borrow<K::SelfType<'a>>,
    ) -> Result<Option<AccessGuard<'_, V>>, StoreError>;

    fn range<'a, KR>(
        &self,
        range: impl RangeBounds<KR> + 'a,
    ) -> Result<Range<'_, K, V>, StoreError>
    where
        KR: Borrow<K::SelfType<'a>> + 'a;

    fn iter(&self) -> Result<Range<'_, K, V>, StoreError> {
        self.range::<K::SelfType<'_>>(..)
    }

    fn last(&self) -> Result<Option<Entry<'_, K, V>>, StoreError>;

    fn len(&self) -> Result<u64, StoreError>;
}

impl<K: SortKey, V: Value + 'static> ReadableTable<K, V> for Table<'_, K, V> {
    fn get<'a>(
        &self,
        key: impl Borrow<K::SelfType<'a>>,
    ) -> Result<Option<AccessGuard<'_, V>>, StoreError> {
        use redb::ReadableTable as _;
        Ok(match &self.inner {
            Inner::RedbWrite(table) => table.get(key)?.map(AccessGuard::Redb),
            Inner::RedbRead(table) => table.get(key)?.map(AccessGuard::Redb),
            Inner::Postgres { session, name, .. } => session
                .get(name, &sort_key::<K>(key.borrow()))?
                .map(AccessGuard::owned),
        })
    }

    fn range<'a, KR>(&self, range: impl RangeBounds<KR> + 'a) -> Result<Range<'_, K, V>, StoreError>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        use redb::ReadableTable as _;
        Ok(match &self.inner {
            Inner::RedbWrite(table) => Range::Redb(table.range(range)?),
            Inner::RedbRead(table) => Range::Redb(table.range(range)?),
            Inner::Postgres { session, name, .. } => {
                let (from, before) = sort_bounds::<K, KR>(&range);
                Range::Postgres(PgRange::new(session, name, from, before))
            }
        })
    }

    fn last(&self) -> Result<Option<Entry<'_, K, V>>, StoreError> {
        use redb::ReadableTable as _;
        let both = |(key, value)| (AccessGuard::Redb(key), AccessGuard::Redb(value));
        Ok(match &self.inner {
            Inner::RedbWrite(table) => table.last()?.map(both),
            Inner::RedbRead(table) => table.last()?.map(both),
            Inner::Postgres { session, name, .. } => session
                .last(name)?
                .map(|(key, value)| (AccessGuard::owned(key), AccessGuard::owned(value))),
        })
    }

    fn len(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata as _;
        Ok(match &self.inner {
            Inner::RedbWrite(table) => table.len()?,
            Inner::RedbRead(table) => table.len()?,
            Inner::Postgres { session, name, .. } => session.count(name)?,
        })
    }
}

impl<K: SortKey, V: Value + 'static> Table<'_, K, V> {
    /// The table of a write transaction on PostgreSQL, or a refusal to write through a read one.
    fn writable_postgres(&self) -> Result<Option<(&PgSession, &str)>, StoreError> {
        match &self.inner {
            Inner::RedbWrite(_) => Ok(None),
            Inner::Postgres {
                session,
                name,
                writable: true,
                ..
            } => Ok(Some((session, name))),
            _ => Err(StoreError::Corrupt(
                "a write through a read transaction".into(),
            )),
        }
    }

    /// Writes `key`, not reading what it held (on PostgreSQL the write goes out with the
    /// transaction's others, at commit).
    pub(crate) fn put<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<(), StoreError> {
        if let Some((session, name)) = self.writable_postgres()? {
            let key = key.borrow();
            return session.put(
                name,
                sort_key::<K>(key),
                K::as_bytes(key).as_ref().to_vec(),
                V::as_bytes(value.borrow()).as_ref().to_vec(),
            );
        }
        let Inner::RedbWrite(table) = &mut self.inner else {
            unreachable!("writable_postgres refuses every other table");
        };
        table.insert(key, value)?;
        Ok(())
    }

    /// Deletes `key`, not reading what it held (see [`Self::put`]).
    pub(crate) fn delete<'a>(
        &mut self,
        key: impl Borrow<K::SelfType<'a>>,
    ) -> Result<(), StoreError> {
        if let Some((session, name)) = self.writable_postgres()? {
            return session.delete(name, sort_key::<K>(key.borrow()));
        }
        let Inner::RedbWrite(table) = &mut self.inner else {
            unreachable!("writable_postgres refuses every other table");
        };
        table.remove(key)?;
        Ok(())
    }

    /// Writes `key` and returns what it held (use [`Self::put`] when that is not needed: on
    /// PostgreSQL this reads the row first).
    #[must_use = "use put when the old value is not needed"]
    pub(crate) fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<Option<AccessGuard<'_, V>>, StoreError> {
        if let Some((session, name)) = self.writable_postgres()? {
            let key = key.borrow();
            return Ok(session
                .upsert(
                    name,
                    sort_key::<K>(key),
                    K::as_bytes(key).as_ref().to_vec(),
                    V::as_bytes(value.borrow()).as_ref().to_vec(),
                )?
                .map(AccessGuard::owned));
        }
        let Inner::RedbWrite(table) = &mut self.inner else {
            unreachable!("writable_postgres refuses every other table");
        };
        Ok(table.insert(key, value)?.map(AccessGuard::Redb))
    }

    /// Deletes `key` and returns what it held (use [`Self::delete`] when that is not needed).
    #[must_use = "use delete when the old value is not needed"]
    pub(crate) fn remove<'a>(
        &mut self,
        key: impl Borrow<K::SelfType<'a>>,
    ) -> Result<Option<AccessGuard<'_, V>>, StoreError> {
        if let Some((session, name)) = self.writable_postgres()? {
            return Ok(session
                .remove(name, sort_key::<K>(key.borrow()))?
                .map(AccessGuard::owned));
        }
        let Inner::RedbWrite(table) = &mut self.inner else {
            unreachable!("writable_postgres refuses every other table");
        };
        Ok(table.remove(key)?.map(AccessGuard::Redb))
    }

    /// Keeps the rows of `range` for which `keep` holds; removes the others.
    pub(crate) fn retain_in<'a, KR, F>(
        &mut self,
        range: impl RangeBounds<KR> + 'a,
        mut keep: F,
    ) -> Result<(), StoreError>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
        F: for<'f> FnMut(K::SelfType<'f>, V::SelfType<'f>) -> bool,
    {
        self.extract_from_if(range, |key, value| !keep(key, value))
            .map(drop)
    }

    /// Removes the rows of `range` for which `extract` holds and returns them, in key order.
    pub(crate) fn extract_from_if<'a, KR, F>(
        &mut self,
        range: impl RangeBounds<KR> + 'a,
        mut extract: F,
    ) -> Result<Extracted<K, V>, StoreError>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
        F: for<'f> FnMut(K::SelfType<'f>, V::SelfType<'f>) -> bool,
    {
        let mut extracted = Vec::new();
        if let Some((session, name)) = self.writable_postgres()? {
            let mut doomed = Vec::new();
            let (from, before) = sort_bounds::<K, KR>(&range);
            let mut range = PgRange::<K, V>::new(session, name, from, before);
            range.page = MAX_PAGE_ROWS;
            while let Some(entry) = range.next() {
                let (key, value) = entry?;
                if extract(key.value(), value.value()) {
                    doomed.push(sort_key::<K>(&key.value()));
                    extracted.push(Ok((key.into_owned(), value.into_owned())));
                }
            }
            for key in doomed {
                session.delete(name, key)?;
            }
            return Ok(extracted.into_iter());
        }
        let Inner::RedbWrite(table) = &mut self.inner else {
            unreachable!("writable_postgres refuses every other table");
        };
        for entry in table.extract_from_if(range, extract)? {
            let (key, value) = entry?;
            extracted.push(Ok((
                AccessGuard::Redb(key).into_owned(),
                AccessGuard::Redb(value).into_owned(),
            )));
        }
        Ok(extracted.into_iter())
    }
}

fn sort_key<K: SortKey>(key: &K::SelfType<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    K::encode_sorted(key, &mut out);
    out
}

/// A key type with an order-preserving byte encoding: comparing two encodings byte by byte gives
/// the order redb's `Key::compare` gives the keys. Integers are big-endian; byte strings and
/// strings have every 0x00 escaped as 0x00 0xFF and end with 0x00 0x01, so that a prefix sorts
/// before its extensions and a tuple's fields cannot run into each other.
pub(crate) trait SortKey: Key + 'static {
    fn encode_sorted(key: &Self::SelfType<'_>, out: &mut Vec<u8>);
}

fn encode_sorted_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    for &byte in bytes {
        out.push(byte);
        if byte == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

impl SortKey for &'static [u8] {
    fn encode_sorted(key: &&[u8], out: &mut Vec<u8>) {
        encode_sorted_bytes(key, out);
    }
}

impl SortKey for &'static str {
    fn encode_sorted(key: &&str, out: &mut Vec<u8>) {
        encode_sorted_bytes(key.as_bytes(), out);
    }
}

macro_rules! sort_key_integer {
    ($($integer:ty),*) => {$(
        impl SortKey for $integer {
            fn encode_sorted(key: &$integer, out: &mut Vec<u8>) {
                out.extend_from_slice(&key.to_be_bytes());
            }
        }
    )*};
}

sort_key_integer!(u8, u16, u32, u64);

macro_rules! sort_key_tuple {
    ($($field:ident $index:tt),*) => {
        impl<$($field: SortKey),*> SortKey for ($($field,)*) {
            fn encode_sorted(key: &Self::SelfType<'_>, out: &mut Vec<u8>) {
                $($field::encode_sorted(&key.$index, out);)*
            }
        }
    };
}

sort_key_tuple!(A 0, B 1);
sort_key_tuple!(A 0, B 1, C 2);
sort_key_tuple!(A 0, B 1, C 2, D 3);

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded<K: SortKey>(key: K::SelfType<'_>) -> Vec<u8> {
        sort_key::<K>(&key)
    }

    #[test]
    fn sort_keys_order_as_redb_orders_the_keys() {
        type K = (&'static str, u32, &'static [u8]);
        let keys: Vec<(&str, u32, &[u8])> = vec![
            ("", 0, b""),
            ("a", 0, b""),
            ("a", 0, b"\x00"),
            ("a", 0, b"\x00\x00"),
            ("a", 0, b"\x00\x01"),
            ("a", 0, b"\x01"),
            ("a", 1, b""),
            ("a", u32::MAX, b"\xff\xff"),
            ("a\u{0}", 0, b""),
            ("ab", 0, b""),
            ("b", 0, b""),
            ("\u{10FFFF}", 0, b""),
        ];
        for pair in keys.windows(2) {
            let (lower, upper) = (pair[0], pair[1]);
            assert_eq!(
                K::compare(K::as_bytes(&lower).as_ref(), K::as_bytes(&upper).as_ref()),
                std::cmp::Ordering::Less,
                "{lower:?} < {upper:?} for redb"
            );
            assert!(
                encoded::<K>(lower) < encoded::<K>(upper),
                "{lower:?} < {upper:?} encoded"
            );
        }
    }

    #[test]
    fn integer_sort_keys_are_big_endian() {
        assert!(encoded::<u64>(255) < encoded::<u64>(256));
        assert!(encoded::<(u64, u8)>((1, 255)) < encoded::<(u64, u8)>((2, 0)));
    }
}
