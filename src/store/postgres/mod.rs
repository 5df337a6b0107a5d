//! The PostgreSQL backend: several Roost nodes of one domain share one database.
//!
//! Each store table is a SQL table `"name" (k bytea PRIMARY KEY, kr bytea, v bytea)`: `k` is the
//! key's order-preserving encoding ([`super::kv::SortKey`]), `kr` and `v` the key and value as
//! redb encodes them. The typed operations run unchanged ([`super::kv`]); a write transaction
//! reads each row once and sends its writes at commit, a statement per table ([`session`]).
//!
//! Concurrency between nodes is the database's: every write batch is one `SERIALIZABLE`
//! transaction. PostgreSQL commits a set of concurrent transactions only if some serial order of
//! them gives the same outcome, and fails the others with a serialization failure; the writer
//! then runs that batch again whole, when it sees the winners' rows and answers as a single node
//! would. So each rule that holds when one writer applies the writes one after the other holds
//! across nodes too: no rule depends on which rows two transactions happen to share. The rules
//! and what keeps each are listed in protocol-spec/nodes.md; `tests/it/races.rs` races each.
//!
//! Limits that count rows (queue sizes, KeyPackages per client) are exact for the same reason.
//! The one estimate is the server-wide total of queued bytes: one row per node run, the other
//! nodes' rows re-read every 100 ms outside the write transaction, so that a queue's enqueues on
//! two nodes do not contend on one row. Reads are `REPEATABLE READ READ ONLY` snapshots: what a
//! service reads there to prepare a write is checked again by the write.
//!
//! The schema is created and migrated at start by numbered migrations recorded in
//! `roost_migrations`, under an advisory lock so that nodes starting together migrate once.
//!
//! Cross-node events go through `LISTEN`/`NOTIFY` ([`PgEventBus`], `events.rs`).

mod commit_watch;
mod conn;
mod events;
mod overlay;
mod scratch;
mod session;

pub use conn::{round_trips, statements_run};
pub use events::PgEventBus;
pub(crate) use overlay::{SortRange, UnsentRow};
pub use scratch::{ScratchCluster, ScratchDatabase};
pub(crate) use session::PgSession;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Config};

use conn::PgConn;

use super::StoreError;

/// How write batches begin. `SERIALIZABLE`: PostgreSQL's serializable snapshot isolation
/// fails one of any set of concurrent transactions whose outcome no serial order gives (a
/// write skew, an upsert re-creating a row another deleted, a read of a row another deleted),
/// and the writer runs that batch again whole. So every rule a single writer keeps holds
/// across nodes too, without a list of rows the contending transactions must share.
const WRITE_ISOLATION: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";

/// How read transactions begin: a consistent snapshot.
const READ_ISOLATION: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// Reads that may hold a connection at once (each a blocking thread).
const MAX_READ_CONNECTIONS: usize = 8;

/// How long connecting to the database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The advisory lock key nodes take while they migrate the schema ("roost" in ASCII).
const MIGRATION_LOCK: i64 = 0x0072_6f6f_7374;

pub(super) fn error(e: postgres::Error) -> StoreError {
    StoreError::postgres(e)
}

/// Whether `error` is a conflict with a concurrent transaction, after which the transaction may
/// simply run again.
pub(super) fn is_conflict(error: &postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE | &SqlState::T_R_DEADLOCK_DETECTED)
    )
}

/// The database a store on PostgreSQL uses: its connection settings and the idle connections of
/// reads.
pub(super) struct PgDatabase {
    config: Config,
    /// The URL without its password, for logs and status.
    pub(super) display: String,
    idle: Mutex<Vec<PgConn>>,
    pub(super) read_permits: tokio::sync::Semaphore,
}

impl PgDatabase {
    /// Connects to `url`, creates or migrates the SQL schema and returns the database handle,
    /// with the migration lock still held: the caller runs the store's own migration
    /// ([`super::Store::open_at`]) before dropping it, so that nodes starting at once migrate
    /// one after the other, rows and tables alike.
    pub(super) fn open(url: &str) -> Result<(Self, MigrationLock), StoreError> {
        let mut config: Config = url.parse().map_err(error)?;
        // A database that does not answer fails the write (and the request) instead of holding
        // the writer thread for the kernel's TCP timeout; a URL may set its own.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true);
        let display = redacted(url);
        let mut lock = MigrationLock::take(PgConn::connect(&config)?)?;
        apply_migrations(&mut lock.conn.client)?;
        let conn = PgConn::connect(&config)?;
        let database = Self {
            config,
            display,
            idle: Mutex::new(vec![conn]),
            read_permits: tokio::sync::Semaphore::new(MAX_READ_CONNECTIONS),
        };
        Ok((database, lock))
    }

    fn take(&self) -> Result<PgConn, StoreError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        PgConn::reuse_or_connect(idle, &self.config)
    }

    fn give_back(&self, conn: PgConn) {
        if !conn.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(conn);
        }
    }

    /// Runs `op` in a read-only snapshot (blocking; call it on the blocking pool with a read
    /// permit held).
    pub(super) fn read<T>(
        &self,
        op: impl FnOnce(&super::kv::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.take()?;
        let session = match PgSession::begin(conn, READ_ISOLATION, false) {
            Ok(session) => session,
            // A connection the server closed since it was last used: one fresh attempt.
            Err(stale) => {
                drop(stale);
                PgSession::begin(PgConn::connect(&self.config)?, READ_ISOLATION, false)
                    .map_err(|failed| failed.0)?
            }
        };
        let (outcome, conn) = session.run_read(op);
        self.give_back(conn);
        outcome
    }

    /// Runs `op` after reading the rows `reads` names. When `op` reads nothing else, that one
    /// statement is the whole read, with no transaction around it; else `op` runs again in a
    /// read transaction ([`Self::read`]).
    pub(super) fn read_reading<T>(
        &self,
        reads: super::kv::Prefetch,
        op: impl Fn(&super::kv::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let session = PgSession::unbegun(self.take()?);
        let ahead = reads.clone();
        let (outcome, conn) = session.run_read(|txn| {
            txn.prefetch(ahead)?;
            op(txn)
        });
        // A read that needed more than its one statement, or met a connection the server closed
        // since it was last used, runs again in a transaction (on a fresh connection, if so).
        let again = match &outcome {
            Err(StoreError::ReadNeedsSnapshot) => true,
            Err(_) => conn.is_closed(),
            Ok(_) => false,
        };
        self.give_back(conn);
        if !again {
            return outcome;
        }
        self.read(|txn| {
            txn.prefetch(reads)?;
            op(txn)
        })
    }

    pub(super) fn writer(&self) -> PgWriter {
        PgWriter {
            config: self.config.clone(),
            conn: None,
            shards_read_at: None,
        }
    }

    /// The size of the database in bytes.
    pub(super) fn size(&self) -> Result<u64, StoreError> {
        let mut conn = self.take()?;
        let size = conn
            .client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .map_err(error)
            .map(|row| row.get::<_, i64>(0).max(0) as u64);
        self.give_back(conn);
        size
    }

    /// Starts the cross-node event bus on its own connection.
    pub(super) fn event_bus(&self) -> Result<Arc<PgEventBus>, StoreError> {
        PgEventBus::start(&self.config)
    }
}

/// Drops connections on a thread of their own: the synchronous client's closing blocks, which it
/// refuses to do on an async worker (where the last handle to a store may go).
pub(crate) fn drop_off_runtime(connections: Vec<PgConn>) {
    if !connections.is_empty() {
        let _ = std::thread::spawn(move || drop(connections)).join();
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let idle = std::mem::take(
            self.idle
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        drop_off_runtime(idle);
    }
}

/// The writer thread's connection.
pub(super) struct PgWriter {
    config: Config,
    conn: Option<Box<PgConn>>,
    /// When the other nodes' shares of the server's queued bytes were last read.
    shards_read_at: Option<std::time::Instant>,
}

/// How often the writer re-reads the other nodes' shares of the server's queued bytes (an
/// estimate for the server-wide cap: reading them before every batch would cost three round
/// trips a batch).
const SHARDS_READ_INTERVAL: Duration = Duration::from_millis(100);

impl PgWriter {
    pub(super) fn begin(&mut self) -> Result<super::kv::WriteBackend, StoreError> {
        self.session(WRITE_ISOLATION, true)
            .map(super::kv::WriteBackend::Postgres)
    }

    /// A session begun with `begin` on the writer's connection (a new one if it was lost).
    fn session(&mut self, begin: &str, writes: bool) -> Result<PgSession, StoreError> {
        let conn = PgConn::reuse_or_connect(self.conn.take().map(|conn| *conn), &self.config)?;
        PgSession::begin(conn, begin, writes).map_err(|failed| {
            let (e, conn) = *failed;
            self.conn = Some(Box::new(conn));
            e
        })
    }

    /// Re-reads the other nodes' shares of the server's queued bytes, at most every
    /// [`SHARDS_READ_INTERVAL`] (before a batch).
    pub(super) fn refresh_other_shards(&mut self, totals: &mut super::totals::WriterTotals) {
        if self
            .shards_read_at
            .is_some_and(|read_at| read_at.elapsed() < SHARDS_READ_INTERVAL)
        {
            return;
        }
        match self.read(|txn| totals.refresh_other_shards(txn)) {
            Ok(()) => self.shards_read_at = Some(std::time::Instant::now()),
            Err(e) => tracing::warn!(error = %e, "cannot read the other nodes' queue totals"),
        }
    }

    /// Runs `op` in a short read-only transaction on the writer's connection (between batches).
    pub(super) fn read<T>(
        &mut self,
        op: impl FnOnce(&super::kv::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (outcome, conn) = self.session("BEGIN READ ONLY", false)?.run_read(op);
        self.conn = Some(Box::new(conn));
        outcome
    }

    pub(super) fn finish(&mut self, session: PgSession, commit: bool) -> Result<(), StoreError> {
        let (outcome, conn) = session.finish(commit);
        self.conn = Some(Box::new(conn));
        outcome
    }
}

/// `url` with any password replaced by `***`.
pub(super) fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// The numbered schema migrations: (version, what it does, the tables it creates). A table
/// added to the store later comes with a new migration; a unit test checks that every table the
/// code knows is created by one.
const MIGRATIONS: &[(i32, &str, &[&str])] = &[
    (
        1,
        "the tables of store schema 4",
        &[
            "meta-1",
            "users-1",
            "clients-1",
            "signature-keys-1",
            "quarantine-1",
            "invites-used-1",
            "invites-1",
            "key-packages-1",
            "key-package-refs-1",
            "client-key-package-refs-1",
            "queue-2",
            "queue-heads-1",
            "pending-notices-1",
            "queue-totals-1",
            "shared-payloads-1",
            "shared-payload-refs-1",
            "groups-1",
            "group-state-1",
            "group-members-1",
            "send-views-1",
            "recent-requests-1",
            "recent-requests-by-time-1",
            "group-trees-1",
            "group-trees-by-time-1",
            "group-logs-1",
            "group-log-1",
            "log-readers-1",
            "log-readers-by-acked-1",
            "log-clients-1",
            "outbox-2",
            "outbox-heads-1",
            "deliveries-received-1",
            "group-routes-1",
            "route-hubs-1",
            "client-hubs-1",
            "push-targets-1",
            "push-wakes-1",
            "push-woken-1",
            "leases-1",
        ],
    ),
    (
        2,
        "queue removals apart from queue heads",
        &["queue-removed-1"],
    ),
    (
        3,
        "lease generations, which fence a job's writes",
        &["lease-generations-1"],
    ),
    (
        4,
        "queue removals as enqueues last saw them",
        &["queue-removed-seen-1"],
    ),
    (
        5,
        "memberships with the epoch they joined at, remembered requests with their senders",
        &["group-members-2", "recent-requests-2"],
    ),
    (
        6,
        "the key-transparency log: entries, subtrees, users' entries, tree heads",
        &[
            "transparency-log-1",
            "transparency-subtrees-1",
            "transparency-user-entries-1",
            "transparency-heads-1",
        ],
    ),
];

/// The advisory lock under which one node at a time migrates the database, held by a connection
/// of its own; released when dropped.
pub(super) struct MigrationLock {
    conn: PgConn,
}

impl MigrationLock {
    fn take(mut conn: PgConn) -> Result<Self, StoreError> {
        conn.client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .map_err(error)?;
        Ok(Self { conn })
    }
}

impl Drop for MigrationLock {
    fn drop(&mut self) {
        // Closing the connection would release it too; this says so at once.
        let _ = self
            .conn
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    }
}

/// Applies the migrations this database has not had, one transaction each (under the
/// [`MigrationLock`]).
fn apply_migrations(client: &mut Client) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS roost_migrations (
                version integer PRIMARY KEY,
                description text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .map_err(error)?;
    let newest: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM roost_migrations",
            &[],
        )
        .map_err(error)?
        .get(0);
    if let Some(&(latest, ..)) = MIGRATIONS.last() {
        if newest > latest {
            return Err(StoreError::Corrupt(format!(
                "the database has schema migration {newest}; this server knows up to {latest}"
            )));
        }
    }
    for &(version, description, tables) in MIGRATIONS.iter().filter(|(v, ..)| *v > newest) {
        let mut txn = client.transaction().map_err(error)?;
        for table in tables {
            txn.batch_execute(&format!(
                r#"CREATE TABLE "{table}" (k bytea PRIMARY KEY, kr bytea NOT NULL, v bytea NOT NULL)
                   WITH (fillfactor = 80)"#
            ))
            .map_err(error)?;
        }
        txn.execute(
            "INSERT INTO roost_migrations (version, description) VALUES ($1, $2)",
            &[&version, &description],
        )
        .map_err(error)?;
        txn.commit().map_err(error)?;
        tracing::info!(version, description, "applied a database migration");
    }
    Ok(())
}

/// Tables an earlier migration created that the store's own migration drops once it has moved
/// their rows (`meta.rs`; schema 5's, of `groups.rs`).
#[cfg(test)]
const RETIRED_TABLES: &[&str] = &["group-members-1", "recent-requests-1"];

/// The tables the migrations create and the store still has.
#[cfg(test)]
fn migrated_tables() -> Vec<&'static str> {
    MIGRATIONS
        .iter()
        .flat_map(|(_, _, tables)| tables.iter().copied())
        .filter(|table| !RETIRED_TABLES.contains(table))
        .collect()
}

#[cfg(test)]
mod tests;
