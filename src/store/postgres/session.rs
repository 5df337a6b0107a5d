//! A connection and the transaction running on it: what a [`super::super::kv`] table of the
//! PostgreSQL backend reads and writes through.
//!
//! A transaction keeps what it knows of its rows in an overlay ([`super::overlay`]): rows it
//! read (present or absent), ranges it read whole, and rows it wrote. A read of a known row or
//! within a range read whole costs no round trip. The rows a batch will read can be named ahead
//! and read in one statement ([`PgSession::prefetch_rows`]). A write costs no round trip until
//! the transaction commits (or reads the last row or the size of that table), when each table's
//! writes go out in one multi-row statement; a range read merges them in. So a batch of writes
//! that share a commit costs a few statements per table it changed, not one per row.
//! Serializability is PostgreSQL's whatever the order writes reach it within the transaction:
//! its checks are made against everything the transaction read and wrote, at the latest at
//! `COMMIT`.
//!
//! A read whose rows are all named ahead needs no transaction: one statement sees one snapshot
//! ([`PgSession::unbegun`]).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;

use postgres::types::ToSql;

use super::conn::{PgConn, PgStatement, RangeRow, ReadShape, ROUND_TRIPS, STATEMENTS};
use super::error;
use super::overlay::{Known, Row, SortRange, TableOverlay, UnsentRow};
use crate::store::StoreError;

/// What a read-ahead asks of one table.
#[derive(Default)]
struct TableReads {
    keys: Vec<Vec<u8>>,
    ranges: Vec<SortRange>,
}

/// A connection inside a transaction.
pub(crate) struct PgSession {
    conn: RefCell<Box<PgConn>>,
    /// The first statement that failed: the transaction is aborted and must not report a commit.
    failed: RefCell<Option<StoreError>>,
    /// What the transaction knows of its rows, by table.
    overlay: RefCell<HashMap<String, TableOverlay>>,
    /// Whether it may write.
    writes: bool,
    /// Whether `BEGIN` was sent: a session that was not begun may run one read-ahead statement
    /// and serve reads from it, nothing else.
    begun: bool,
    /// The one statement of a session not begun was run.
    read_ahead: Cell<bool>,
}

impl PgSession {
    /// Begins a transaction with `begin` on `conn`; `writes` lets it write.
    pub(crate) fn begin(
        mut conn: PgConn,
        begin: &str,
        writes: bool,
    ) -> Result<Self, Box<(StoreError, PgConn)>> {
        match conn.execute_plain(begin) {
            Ok(()) => Ok(Self::on(conn, writes, true)),
            Err(e) => Err(Box::new((e, conn))),
        }
    }

    /// A read session with no transaction: it runs one read-ahead statement (its own snapshot)
    /// and serves reads of what it read; any other read fails with
    /// [`StoreError::ReadNeedsSnapshot`] (the caller reads again in a transaction).
    pub(crate) fn unbegun(conn: PgConn) -> Self {
        Self::on(conn, false, false)
    }

    fn on(conn: PgConn, writes: bool, begun: bool) -> Self {
        Self {
            conn: RefCell::new(Box::new(conn)),
            failed: RefCell::new(None),
            overlay: RefCell::default(),
            writes,
            begun,
            read_ahead: Cell::new(false),
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
        let begun = self.begun;
        let mut conn = *self.conn.into_inner();
        if !begun {
            return (Ok(()), conn);
        }
        if let Some(failure) = failed.or(sent.err()).filter(|_| commit) {
            let _ = conn.execute_plain("ROLLBACK");
            return (Err(failure), conn);
        }
        let outcome = if commit {
            conn.commit()
        } else {
            conn.execute_plain("ROLLBACK")
        };
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
        if !self.begun {
            return Err(StoreError::ReadNeedsSnapshot);
        }
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

    fn writable(&self) -> Result<(), StoreError> {
        match self.writes {
            true => Ok(()),
            false => Err(StoreError::Corrupt(
                "a write through a read transaction".into(),
            )),
        }
    }

    /// What this transaction knows of a row: `None` if it must ask the database.
    fn known(&self, table: &str, key: &[u8]) -> Option<Option<Row>> {
        let overlay = self.overlay.borrow();
        let known = overlay.get(table)?.get(key)?;
        Some(known.row().cloned())
    }

    fn remember(&self, table: &str, key: Vec<u8>, known: Known) {
        self.overlay
            .borrow_mut()
            .entry(table.to_owned())
            .or_default()
            .record(key, known);
    }

    pub(crate) fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(known) = self.known(table, key) {
            return Ok(known.map(|(_, value)| value));
        }
        let rows = self.query(table, PgStatement::Get, &[&key])?;
        let row: Option<Row> = rows.first().map(|row| (row.get(0), row.get(1)));
        let value = row.as_ref().map(|(_, value)| value.clone());
        self.remember(
            table,
            key.to_vec(),
            row.map_or(Known::Absent, Known::Present),
        );
        Ok(value)
    }

    /// Reads, in one statement, the rows `keys` names and every row of `ranges`, of any tables,
    /// that this transaction does not know yet; a session not begun runs it as its one
    /// statement.
    pub(crate) fn prefetch_rows(
        &self,
        keys: Vec<(&'static str, Vec<u8>)>,
        ranges: Vec<(&'static str, SortRange)>,
    ) -> Result<(), StoreError> {
        let mut by_table: BTreeMap<&str, TableReads> = BTreeMap::new();
        for (table, key) in keys {
            if self.known(table, &key).is_none() {
                by_table.entry(table).or_default().keys.push(key);
            }
        }
        // Only bounded ranges are read ahead (every one named is); an unbounded one is read when
        // the operation reads it.
        for (table, range) in ranges.into_iter().filter(|(_, range)| range.1.is_some()) {
            let known = self
                .overlay
                .borrow()
                .get(table)
                .is_some_and(|rows| rows.rows_in(&range.0, range.1.as_deref()).is_some());
            if !known {
                by_table.entry(table).or_default().ranges.push(range);
            }
        }
        if by_table.is_empty() {
            return Ok(());
        }
        if !self.begun && self.read_ahead.replace(true) {
            return Err(StoreError::ReadNeedsSnapshot);
        }
        let rows = self.run_read_ahead(&mut by_table)?;
        self.record_read_ahead(by_table, rows);
        Ok(())
    }

    /// The read-ahead statement of `by_table` (its key lists sorted and deduplicated first):
    /// rows of (branch, sort key, key, value).
    fn run_read_ahead(
        &self,
        by_table: &mut BTreeMap<&str, TableReads>,
    ) -> Result<Vec<postgres::Row>, StoreError> {
        let mut shapes = Vec::new();
        let mut arrays: Vec<Box<dyn ToSql + Sync>> = Vec::new();
        for (table, reads) in by_table.iter_mut() {
            reads.keys.sort_unstable();
            reads.keys.dedup();
            shapes.push(ReadShape {
                table: (*table).to_owned(),
                keys: !reads.keys.is_empty(),
                ranges: !reads.ranges.is_empty(),
            });
            if !reads.keys.is_empty() {
                arrays.push(Box::new(reads.keys.clone()));
            }
            if !reads.ranges.is_empty() {
                let froms: Vec<Vec<u8>> = reads.ranges.iter().map(|r| r.0.clone()).collect();
                let befores: Vec<Vec<u8>> = reads
                    .ranges
                    .iter()
                    .map(|r| r.1.clone().unwrap_or_default())
                    .collect();
                arrays.push(Box::new(froms));
                arrays.push(Box::new(befores));
            }
        }
        let params: Vec<&(dyn ToSql + Sync)> = arrays.iter().map(|array| &**array).collect();
        STATEMENTS.fetch_add(1, Ordering::Relaxed);
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conn.borrow_mut();
        let outcome = conn
            .read_statement(&shapes)
            .and_then(|statement| conn.client.query(&statement, &params).map_err(error));
        if let Err(e) = &outcome {
            self.failed.borrow_mut().get_or_insert_with(|| e.clone());
        }
        outcome
    }

    /// Records what a read-ahead read: each key named (present or absent), each range whole.
    fn record_read_ahead(&self, by_table: BTreeMap<&str, TableReads>, rows: Vec<postgres::Row>) {
        // Branches in the statement's order: a table's keys, then its ranges.
        let mut branch_tables = Vec::new();
        for (table, reads) in &by_table {
            if !reads.keys.is_empty() {
                branch_tables.push(*table);
            }
            if !reads.ranges.is_empty() {
                branch_tables.push(*table);
            }
        }
        let mut overlay = self.overlay.borrow_mut();
        let mut found: HashMap<(&str, Vec<u8>), Row> = HashMap::new();
        for row in &rows {
            let branch: i32 = row.get(0);
            let table = branch_tables[branch as usize];
            found.insert((table, row.get(1)), (row.get(2), row.get(3)));
        }
        for (table, reads) in by_table {
            let rows = overlay.entry(table.to_owned()).or_default();
            for key in reads.keys {
                let known = found
                    .remove(&(table, key.clone()))
                    .map_or(Known::Absent, Known::Present);
                rows.record_read(key, known);
            }
            for range in reads.ranges {
                rows.record_complete(range);
            }
        }
        // Rows of ranges (a key branch's rows were all taken above).
        for ((table, key), row) in found {
            overlay
                .entry(table.to_owned())
                .or_default()
                .record_read(key, Known::Present(row));
        }
    }

    /// Writes a row (sent at commit, or before this table's last row or size is read).
    pub(crate) fn put(
        &self,
        table: &str,
        key: Vec<u8>,
        encoded_key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.writable()?;
        self.remember(table, key, Known::Put((encoded_key, value)));
        Ok(())
    }

    /// Deletes a row (sent like [`Self::put`]).
    pub(crate) fn delete(&self, table: &str, key: Vec<u8>) -> Result<(), StoreError> {
        self.writable()?;
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
        self.writable()?;
        let old = self.get(table, &key)?;
        self.put(table, key, encoded_key, value)?;
        Ok(old)
    }

    /// Deletes a row and returns its value, if it had one.
    pub(crate) fn remove(&self, table: &str, key: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        self.writable()?;
        let old = self.get(table, &key)?;
        if old.is_some() {
            self.delete(table, key)?;
        }
        Ok(old)
    }

    /// Sends the unsent writes of `table`: one statement for its new and changed rows, one for
    /// its deleted rows.
    fn send(&self, table: &str) -> Result<(), StoreError> {
        let unsent = match self.overlay.borrow_mut().get_mut(table) {
            Some(rows) => rows.take_unsent(),
            None => return Ok(()),
        };
        if !unsent.sort_keys.is_empty() {
            let params: [&(dyn ToSql + Sync); 3] =
                [&unsent.sort_keys, &unsent.keys, &unsent.values];
            self.query(table, PgStatement::PutAll, &params)?;
        }
        if !unsent.deletes.is_empty() {
            self.query(table, PgStatement::RemoveAll, &[&unsent.deletes])?;
        }
        Ok(())
    }

    /// Sends every table's unsent writes (before `COMMIT`), tables in name order (see
    /// [`super::overlay::TableOverlay::take_unsent`]).
    fn send_all(&self) -> Result<(), StoreError> {
        let mut tables: Vec<String> = self
            .overlay
            .borrow()
            .iter()
            .filter(|(_, rows)| rows.has_unsent())
            .map(|(table, _)| table.clone())
            .collect();
        tables.sort_unstable();
        for table in tables {
            self.send(&table)?;
        }
        Ok(())
    }

    /// The rows from sort key `from` to `before` as this transaction sees them, if it read that
    /// range whole ahead (see [`Self::prefetch_rows`]): no round trip.
    pub(crate) fn known_range(
        &self,
        table: &str,
        from: &[u8],
        before: Option<&[u8]>,
    ) -> Option<VecDeque<Row>> {
        self.overlay.borrow().get(table)?.rows_in(from, before)
    }

    /// This transaction's unsent writes to `table` from sort key `from` (inclusive) to `before`
    /// (exclusive), in key order.
    pub(crate) fn unsent_in(
        &self,
        table: &str,
        from: &[u8],
        before: Option<&[u8]>,
    ) -> VecDeque<UnsentRow> {
        self.overlay
            .borrow()
            .get(table)
            .map(|rows| rows.unsent_in(from, before))
            .unwrap_or_default()
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
        self.overlay.borrow_mut().remove(table);
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
