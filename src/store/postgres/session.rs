//! A connection and the transaction running on it: what a [`super::super::kv`] table of the
//! PostgreSQL backend reads and writes through.
//!
//! A write transaction keeps what it knows of its rows in an overlay: rows it read (present or
//! absent) and rows it wrote. A read of a known row costs no round trip; a write costs none until
//! the transaction commits (or until it reads a range, the last row or the size of that table),
//! when each table's writes go out in one multi-row statement. So a batch of writes that share a
//! commit costs a few statements per table it changed, not one per row. Serializability is
//! PostgreSQL's whatever the order writes reach it within the transaction: its checks are made
//! against everything the transaction read and wrote, at the latest at `COMMIT`.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Statement};

use super::error;
use crate::store::StoreError;

/// Table statements run by this process's PostgreSQL stores, for the benchmark's account of
/// where a write's time goes.
static STATEMENTS: AtomicU64 = AtomicU64::new(0);
/// Round trips to the database of this process's PostgreSQL stores: table statements, and
/// each `BEGIN`, `COMMIT` and `ROLLBACK`.
static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

/// Table statements run so far by this process's PostgreSQL stores.
pub fn statements_run() -> u64 {
    STATEMENTS.load(Ordering::Relaxed)
}

/// Round trips to the database made so far by this process's PostgreSQL stores.
pub fn round_trips() -> u64 {
    ROUND_TRIPS.load(Ordering::Relaxed)
}

/// A row of a range read: (sort key, key, value).
pub(crate) type RangeRow = (Vec<u8>, Vec<u8>, Vec<u8>);
/// A (key, value) row.
pub(crate) type Row = (Vec<u8>, Vec<u8>);
/// A row a write transaction wrote and has not sent: (sort key, the (key, value) written, or
/// `None` for a deletion).
pub(crate) type UnsentRow = (Vec<u8>, Option<Row>);

/// The statements prepared per table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PgStatement {
    Get,
    PutAll,
    RemoveAll,
    RangeBefore,
    RangeToEnd,
    Last,
    Count,
}

const STATEMENT_KINDS: usize = 7;

impl PgStatement {
    /// The SQL of this statement for `table` (a quoted identifier).
    fn sql(self, table: &str) -> String {
        match self {
            Self::Get => format!(r#"SELECT v FROM "{table}" WHERE k = $1"#),
            Self::PutAll => format!(
                r#"INSERT INTO "{table}" (k, kr, v)
                   SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[])
                   ON CONFLICT (k) DO UPDATE SET kr = EXCLUDED.kr, v = EXCLUDED.v"#
            ),
            Self::RemoveAll => format!(r#"DELETE FROM "{table}" WHERE k = ANY($1)"#),
            Self::RangeBefore => format!(
                r#"SELECT k, kr, v FROM "{table}" WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3"#
            ),
            Self::RangeToEnd => {
                format!(r#"SELECT k, kr, v FROM "{table}" WHERE k >= $1 ORDER BY k LIMIT $2"#)
            }
            Self::Last => format!(r#"SELECT kr, v FROM "{table}" ORDER BY k DESC LIMIT 1"#),
            Self::Count => format!(r#"SELECT count(*) FROM "{table}""#),
        }
    }
}

/// One connection with the statements it prepared.
pub(crate) struct PgConn {
    pub(super) client: Client,
    prepared: HashMap<String, [Option<Statement>; STATEMENT_KINDS]>,
    /// Statements reading rows of several tables at once, by their list of tables.
    prepared_reads: HashMap<Vec<String>, Statement>,
}

/// Most multi-table read statements a connection keeps prepared (each is one combination of
/// tables a batch read ahead; there are few).
const MAX_PREPARED_READS: usize = 64;

impl PgConn {
    pub(crate) fn connect(config: &Config) -> Result<Self, StoreError> {
        let mut client = config.connect(NoTls).map_err(error)?;
        // Index scans only: a sequential scan of a small table takes a predicate lock on the
        // whole table, and every other node's write to it then conflicts with this transaction.
        client
            .batch_execute("SET enable_seqscan = off")
            .map_err(error)?;
        Ok(Self {
            client,
            prepared: HashMap::new(),
            prepared_reads: HashMap::new(),
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// `kept` if the server has not closed it since, else a new connection.
    pub(crate) fn reuse_or_connect(
        kept: Option<Self>,
        config: &Config,
    ) -> Result<Self, StoreError> {
        match kept {
            Some(conn) if !conn.is_closed() => Ok(conn),
            _ => Self::connect(config),
        }
    }

    /// Runs `sql` (no parameters, no rows), counting the round trip.
    fn execute_plain(&mut self, sql: &str) -> Result<(), StoreError> {
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        self.client.batch_execute(sql).map_err(error)
    }

    fn statement(&mut self, table: &str, kind: PgStatement) -> Result<Statement, StoreError> {
        if let Some(statement) = self
            .prepared
            .get(table)
            .and_then(|kinds| kinds[kind as usize].clone())
        {
            return Ok(statement);
        }
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        let statement = self.client.prepare(&kind.sql(table)).map_err(error)?;
        self.prepared.entry(table.to_owned()).or_default()[kind as usize] = Some(statement.clone());
        Ok(statement)
    }
}

impl PgConn {
    /// The statement reading the rows of `tables` whose keys are in its arrays `$1`, `$2`...
    /// (one per table, in order): rows of (table index, sort key, value).
    fn read_statement(&mut self, tables: &[String]) -> Result<Statement, StoreError> {
        if let Some(statement) = self.prepared_reads.get(tables) {
            return Ok(statement.clone());
        }
        let sql = tables
            .iter()
            .enumerate()
            .map(|(index, table)| {
                format!(
                    r#"SELECT {index}::int4, k, v FROM "{table}" WHERE k = ANY(${})"#,
                    index + 1
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        let statement = self.client.prepare(&sql).map_err(error)?;
        if self.prepared_reads.len() >= MAX_PREPARED_READS {
            self.prepared_reads.clear();
        }
        self.prepared_reads
            .insert(tables.to_vec(), statement.clone());
        Ok(statement)
    }
}

/// What a write transaction knows of one row.
enum Known {
    /// Read: the table has no such row.
    Absent,
    /// Read: the row's value.
    Present(Vec<u8>),
    /// Written by this transaction and not sent yet: (key as redb encodes it, value).
    Put(Vec<u8>, Vec<u8>),
    /// Deleted by this transaction and not sent yet.
    Deleted,
}

impl Known {
    fn value(&self) -> Option<&[u8]> {
        match self {
            Self::Present(value) | Self::Put(_, value) => Some(value),
            Self::Absent | Self::Deleted => None,
        }
    }

    fn is_unsent(&self) -> bool {
        matches!(self, Self::Put(..) | Self::Deleted)
    }
}

/// A write transaction's rows of one table, by sort key.
#[derive(Default)]
struct TableOverlay {
    rows: HashMap<Vec<u8>, Known>,
    unsent: usize,
}

impl TableOverlay {
    fn record(&mut self, sort_key: Vec<u8>, known: Known) {
        let now_unsent = known.is_unsent();
        let was_unsent = self
            .rows
            .insert(sort_key, known)
            .is_some_and(|old| old.is_unsent());
        match (was_unsent, now_unsent) {
            (false, true) => self.unsent += 1,
            (true, false) => self.unsent -= 1,
            _ => {}
        }
    }

    /// The unsent writes, as (rows to upsert: sort keys, keys, values; sort keys to delete), now
    /// marked as sent.
    #[allow(clippy::type_complexity)]
    fn take_unsent(&mut self) -> ((Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<u8>>), Vec<Vec<u8>>) {
        let mut puts = (Vec::new(), Vec::new(), Vec::new());
        let mut deletes = Vec::new();
        if self.unsent == 0 {
            return (puts, deletes);
        }
        for (sort_key, known) in &mut self.rows {
            match std::mem::replace(known, Known::Absent) {
                Known::Put(key, value) => {
                    puts.0.push(sort_key.clone());
                    puts.1.push(key);
                    puts.2.push(value.clone());
                    *known = Known::Present(value);
                }
                Known::Deleted => deletes.push(sort_key.clone()),
                sent => *known = sent,
            }
        }
        self.unsent = 0;
        (puts, deletes)
    }
}

/// A connection inside a transaction.
pub(crate) struct PgSession {
    conn: RefCell<Box<PgConn>>,
    /// The first statement that failed: the transaction is aborted and must not report a commit.
    failed: RefCell<Option<StoreError>>,
    /// A write transaction's rows, by table; `None` in a read transaction.
    overlay: Option<RefCell<HashMap<String, TableOverlay>>>,
}

impl PgSession {
    /// Begins a transaction with `begin` on `conn`; `writes` keeps an overlay of its rows.
    pub(crate) fn begin(
        mut conn: PgConn,
        begin: &str,
        writes: bool,
    ) -> Result<Self, Box<(StoreError, PgConn)>> {
        match conn.execute_plain(begin) {
            Ok(()) => Ok(Self {
                conn: RefCell::new(Box::new(conn)),
                failed: RefCell::new(None),
                overlay: writes.then(Default::default),
            }),
            Err(e) => Err(Box::new((e, conn))),
        }
    }

    /// Runs `op` as a read transaction in this session, ends it and hands the connection back.
    pub(crate) fn run_read<T>(
        self,
        op: impl FnOnce(&crate::store::kv::ReadTransaction) -> Result<T, StoreError>,
    ) -> (Result<T, StoreError>, PgConn) {
        let txn = crate::store::kv::ReadTransaction::Postgres(self);
        let outcome = op(&txn);
        let crate::store::kv::ReadTransaction::Postgres(session) = txn else {
            unreachable!("made above");
        };
        let (_, conn) = session.finish(false);
        (outcome, conn)
    }

    /// Sends what is unsent and commits, or rolls back; hands the connection back.
    pub(crate) fn finish(self, commit: bool) -> (Result<(), StoreError>, PgConn) {
        let sent = if commit { self.send_all() } else { Ok(()) };
        let failed = self.failed.borrow_mut().take();
        let mut conn = *self.conn.into_inner();
        if let Some(failure) = failed.or(sent.err()).filter(|_| commit) {
            let _ = conn.execute_plain("ROLLBACK");
            return (Err(failure), conn);
        }
        let outcome = conn.execute_plain(if commit { "COMMIT" } else { "ROLLBACK" });
        (outcome, conn)
    }

    /// Runs a prepared table statement. A failure aborts the transaction: it is remembered, so
    /// that the transaction cannot commit even if the caller dropped the error.
    fn query(
        &self,
        table: &str,
        kind: PgStatement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        STATEMENTS.fetch_add(1, Ordering::Relaxed);
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conn.borrow_mut();
        let outcome = conn
            .statement(table, kind)
            .and_then(|statement| conn.client.query(&statement, params).map_err(error));
        if let Err(e) = &outcome {
            self.failed.borrow_mut().get_or_insert_with(|| e.clone());
        }
        outcome
    }

    fn overlay_writes(&self) -> Result<&RefCell<HashMap<String, TableOverlay>>, StoreError> {
        self.overlay
            .as_ref()
            .ok_or_else(|| StoreError::Corrupt("a write through a read transaction".into()))
    }

    /// What this transaction knows of a row: `None` if it must ask the database.
    fn known(&self, table: &str, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let overlay = self.overlay.as_ref()?.borrow();
        let known = overlay.get(table)?.rows.get(key)?;
        Some(known.value().map(<[u8]>::to_vec))
    }

    fn remember(&self, table: &str, key: Vec<u8>, known: Known) {
        if let Some(overlay) = &self.overlay {
            overlay
                .borrow_mut()
                .entry(table.to_owned())
                .or_default()
                .record(key, known);
        }
    }

    pub(crate) fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(known) = self.known(table, key) {
            return Ok(known);
        }
        let rows = self.query(table, PgStatement::Get, &[&key])?;
        let value: Option<Vec<u8>> = rows.first().map(|row| row.get(0));
        let known = value.clone().map_or(Known::Absent, Known::Present);
        self.remember(table, key.to_vec(), known);
        Ok(value)
    }

    /// Reads the rows `keys` names, of any tables, that this transaction does not know yet, in
    /// one statement.
    pub(crate) fn prefetch_rows(
        &self,
        keys: Vec<(&'static str, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        if self.overlay.is_none() {
            return Ok(());
        }
        let mut by_table: std::collections::BTreeMap<&str, Vec<Vec<u8>>> = Default::default();
        for (table, key) in keys {
            if self.known(table, &key).is_none() {
                by_table.entry(table).or_default().push(key);
            }
        }
        if by_table.is_empty() {
            return Ok(());
        }
        for wanted in by_table.values_mut() {
            wanted.sort_unstable();
            wanted.dedup();
        }
        let tables: Vec<String> = by_table.keys().map(|table| (*table).to_owned()).collect();
        let arrays: Vec<&Vec<Vec<u8>>> = by_table.values().collect();
        let params: Vec<&(dyn ToSql + Sync)> = arrays
            .iter()
            .map(|keys| *keys as &(dyn ToSql + Sync))
            .collect();
        STATEMENTS.fetch_add(1, Ordering::Relaxed);
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        let rows = {
            let mut conn = self.conn.borrow_mut();
            let outcome = conn
                .read_statement(&tables)
                .and_then(|statement| conn.client.query(&statement, &params).map_err(error));
            if let Err(e) = &outcome {
                self.failed.borrow_mut().get_or_insert_with(|| e.clone());
            }
            outcome?
        };
        let mut found: HashMap<(usize, Vec<u8>), Vec<u8>> = rows
            .iter()
            .map(|row| {
                let index: i32 = row.get(0);
                ((index as usize, row.get(1)), row.get(2))
            })
            .collect();
        for (index, (table, keys)) in by_table.into_iter().enumerate() {
            for key in keys {
                let known = found
                    .remove(&(index, key.clone()))
                    .map_or(Known::Absent, Known::Present);
                self.remember(table, key, known);
            }
        }
        Ok(())
    }

    /// Writes a row (sent at commit, or before this table is next read in a range).
    pub(crate) fn put(
        &self,
        table: &str,
        key: Vec<u8>,
        encoded_key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.overlay_writes()?;
        self.remember(table, key, Known::Put(encoded_key, value));
        Ok(())
    }

    /// Deletes a row (sent like [`Self::put`]).
    pub(crate) fn delete(&self, table: &str, key: Vec<u8>) -> Result<(), StoreError> {
        self.overlay_writes()?;
        self.remember(table, key, Known::Deleted);
        Ok(())
    }

    /// Writes a row and returns its previous value.
    pub(crate) fn upsert(
        &self,
        table: &str,
        key: Vec<u8>,
        encoded_key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let old = self.get(table, &key)?;
        self.put(table, key, encoded_key, value)?;
        Ok(old)
    }

    /// Deletes a row and returns its value, if it had one.
    pub(crate) fn remove(&self, table: &str, key: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        let old = self.get(table, &key)?;
        if old.is_some() {
            self.delete(table, key)?;
        }
        Ok(old)
    }

    /// Sends the unsent writes of `table`: one statement for its new and changed rows, one for
    /// its deleted rows.
    fn send(&self, table: &str) -> Result<(), StoreError> {
        let Some(overlay) = &self.overlay else {
            return Ok(());
        };
        let ((sort_keys, keys, values), deletes) = match overlay.borrow_mut().get_mut(table) {
            Some(rows) => rows.take_unsent(),
            None => return Ok(()),
        };
        if !sort_keys.is_empty() {
            self.query(table, PgStatement::PutAll, &[&sort_keys, &keys, &values])?;
        }
        if !deletes.is_empty() {
            self.query(table, PgStatement::RemoveAll, &[&deletes])?;
        }
        Ok(())
    }

    /// Sends every table's unsent writes (before `COMMIT`).
    fn send_all(&self) -> Result<(), StoreError> {
        let tables: Vec<String> = match &self.overlay {
            Some(overlay) => overlay
                .borrow()
                .iter()
                .filter(|(_, rows)| rows.unsent > 0)
                .map(|(table, _)| table.clone())
                .collect(),
            None => return Ok(()),
        };
        for table in tables {
            self.send(&table)?;
        }
        Ok(())
    }

    /// This transaction's unsent writes to `table` from sort key `from` (inclusive) to `before`
    /// (exclusive), in key order: (sort key, (key, value) written, or `None` if deleted).
    pub(crate) fn unsent_in(
        &self,
        table: &str,
        from: &[u8],
        before: Option<&[u8]>,
    ) -> VecDeque<UnsentRow> {
        let Some(overlay) = &self.overlay else {
            return VecDeque::new();
        };
        let overlay = overlay.borrow();
        let Some(rows) = overlay.get(table).filter(|rows| rows.unsent > 0) else {
            return VecDeque::new();
        };
        let within = |key: &[u8]| key >= from && before.is_none_or(|before| key < before);
        let mut unsent: Vec<UnsentRow> = rows
            .rows
            .iter()
            .filter(|(key, _)| within(key))
            .filter_map(|(key, known)| match known {
                Known::Put(encoded_key, value) => {
                    Some((key.clone(), Some((encoded_key.clone(), value.clone()))))
                }
                Known::Deleted => Some((key.clone(), None)),
                Known::Absent | Known::Present(_) => None,
            })
            .collect();
        unsent.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        unsent.into()
    }

    /// Up to `limit` rows from sort key `from` (inclusive) to `before` (exclusive) as the
    /// database holds them, without this transaction's unsent writes ([`Self::unsent_in`]
    /// has those): (sort key, key, value).
    pub(crate) fn range_stored(
        &self,
        table: &str,
        from: &[u8],
        before: Option<&[u8]>,
        limit: i64,
    ) -> Result<Vec<RangeRow>, StoreError> {
        let rows = match before {
            Some(before) => self.query(table, PgStatement::RangeBefore, &[&from, &before, &limit]),
            None => self.query(table, PgStatement::RangeToEnd, &[&from, &limit]),
        }?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect())
    }

    pub(crate) fn last(&self, table: &str) -> Result<Option<Row>, StoreError> {
        self.send(table)?;
        let rows = self.query(table, PgStatement::Last, &[])?;
        Ok(rows.first().map(|row| (row.get(0), row.get(1))))
    }

    pub(crate) fn count(&self, table: &str) -> Result<u64, StoreError> {
        self.send(table)?;
        let rows = self.query(table, PgStatement::Count, &[])?;
        Ok(rows
            .first()
            .map_or(0, |row| row.get::<_, i64>(0).max(0) as u64))
    }

    pub(crate) fn drop_table(&self, table: &str) -> Result<(), StoreError> {
        if let Some(overlay) = &self.overlay {
            overlay.borrow_mut().remove(table);
        }
        let mut conn = self.conn.borrow_mut();
        conn.prepared.remove(table);
        let outcome = conn.execute_plain(&format!(r#"DROP TABLE IF EXISTS "{table}""#));
        if let Err(e) = &outcome {
            self.failed.borrow_mut().get_or_insert_with(|| e.clone());
        }
        outcome
    }

    pub(crate) fn table_names(&self) -> Result<Vec<String>, StoreError> {
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        let rows = self
            .conn
            .borrow_mut()
            .client
            .query(
                "SELECT table_name::text FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name <> 'roost_migrations'",
                &[],
            )
            .map_err(error)?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}
