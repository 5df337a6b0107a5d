//! One connection to the database, with the statements it prepared, and the counts of what
//! this process's connections sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use postgres::{Client, Config, NoTls, Statement};

use super::error;
use crate::store::StoreError;

/// Table statements run by this process's PostgreSQL stores, for the benchmark's account of
/// where a write's time goes.
pub(super) static STATEMENTS: AtomicU64 = AtomicU64::new(0);
/// Round trips to the database of this process's PostgreSQL stores: table statements, and
/// each `BEGIN`, `COMMIT` and `ROLLBACK`.
pub(super) static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

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
            Self::Get => format!(r#"SELECT kr, v FROM "{table}" WHERE k = $1"#),
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

/// What one read-ahead statement reads of a table: rows by key, whole ranges, or both.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct ReadShape {
    pub(super) table: String,
    pub(super) keys: bool,
    pub(super) ranges: bool,
}

/// Whether `notice` is PostgreSQL's warning that a commit stopped waiting for synchronous
/// replication (`syncrep.c`): the transaction is committed locally but maybe not on a standby.
fn is_unreplicated_commit(notice: &postgres::error::DbError) -> bool {
    notice.message().contains("synchronous replication")
        || notice
            .detail()
            .is_some_and(|detail| detail.contains("committed locally"))
}

/// One connection with the statements it prepared.
pub(crate) struct PgConn {
    pub(super) client: Client,
    /// Set when the server warned that a commit stopped waiting for the synchronous standby:
    /// the transaction committed on the primary alone.
    unconfirmed: Arc<AtomicBool>,
    pub(super) prepared: HashMap<String, [Option<Statement>; STATEMENT_KINDS]>,
    /// Read-ahead statements, by what they read of which tables.
    prepared_reads: HashMap<Vec<ReadShape>, Statement>,
}

/// Most read-ahead statements a connection keeps prepared (each is one combination of tables a
/// batch read ahead; there are few).
const MAX_PREPARED_READS: usize = 64;

impl PgConn {
    pub(crate) fn connect(config: &Config) -> Result<Self, StoreError> {
        let unconfirmed = Arc::new(AtomicBool::new(false));
        let mut config = config.clone();
        let warned = unconfirmed.clone();
        config.notice_callback(move |notice| {
            if is_unreplicated_commit(&notice) {
                warned.store(true, Ordering::Relaxed);
            }
            tracing::debug!(
                severity = notice.severity(),
                message = notice.message(),
                "database notice"
            );
        });
        let mut client = config.connect(NoTls).map_err(error)?;
        // Index scans only: a sequential scan of a small table takes a predicate lock on the
        // whole table, and every other node's write to it then conflicts with this transaction.
        // Prepared statements are planned once: every statement here is a primary-key lookup
        // or range, whose plan no parameter changes.
        client
            .batch_execute("SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan")
            .map_err(error)?;
        Ok(Self {
            client,
            unconfirmed,
            prepared: HashMap::new(),
            prepared_reads: HashMap::new(),
        })
    }

    /// Commits the transaction. A commit still waiting for the synchronous standby after
    /// [`super::commit_watch::COMMIT_CONFIRMATION_TIMEOUT`] is cancelled: the server then keeps
    /// it on the primary alone, and it is reported as [`StoreError::Unconfirmed`], so that
    /// nothing of it is acknowledged (a retry of the same request finds it done, as after a lost
    /// answer).
    pub(super) fn commit(&mut self) -> Result<(), StoreError> {
        self.unconfirmed.store(false, Ordering::Relaxed);
        let watching = super::commit_watch::watching(self.client.cancel_token());
        let committed = self.execute_plain("COMMIT");
        drop(watching);
        committed?;
        if self.unconfirmed.swap(false, Ordering::Relaxed) {
            return Err(StoreError::Unconfirmed);
        }
        Ok(())
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
    pub(super) fn execute_plain(&mut self, sql: &str) -> Result<(), StoreError> {
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        self.client.batch_execute(sql).map_err(error)
    }

    pub(super) fn statement(
        &mut self,
        table: &str,
        kind: PgStatement,
    ) -> Result<Statement, StoreError> {
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

    /// The statement reading what `shapes` say, in order: a branch per table's keys (an array
    /// parameter) and per table's ranges (two array parameters: froms and befores),
    /// giving rows of (branch, sort key, key, value).
    pub(super) fn read_statement(&mut self, shapes: &[ReadShape]) -> Result<Statement, StoreError> {
        if let Some(statement) = self.prepared_reads.get(shapes) {
            return Ok(statement.clone());
        }
        let mut branches = Vec::new();
        let mut parameter = 0;
        for shape in shapes {
            let table = &shape.table;
            if shape.keys {
                parameter += 1;
                branches.push(format!(
                    r#"SELECT {}::int4, k, kr, v FROM "{table}" WHERE k = ANY(${parameter})"#,
                    branches.len()
                ));
            }
            if shape.ranges {
                let (froms, befores) = (parameter + 1, parameter + 2);
                parameter += 2;
                // Both bounds in the index condition: the scan reads (and, for serializable
                // checks, locks) the range and nothing past it.
                branches.push(format!(
                    r#"SELECT {}::int4, t.k, t.kr, t.v FROM "{table}" t
                       JOIN unnest(${froms}::bytea[], ${befores}::bytea[]) AS r(low, high)
                       ON t.k >= r.low AND t.k < r.high"#,
                    branches.len()
                ));
            }
        }
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        let statement = self
            .client
            .prepare(&branches.join(" UNION ALL "))
            .map_err(error)?;
        if self.prepared_reads.len() >= MAX_PREPARED_READS {
            self.prepared_reads.clear();
        }
        self.prepared_reads
            .insert(shapes.to_vec(), statement.clone());
        Ok(statement)
    }
}
