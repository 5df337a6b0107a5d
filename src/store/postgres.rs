//! The PostgreSQL backend: several Roost nodes of one domain share one database.
//!
//! Each store table is a SQL table `"name" (k bytea PRIMARY KEY, kr bytea, v bytea)`: `k` is the
//! key's order-preserving encoding ([`super::kv::SortKey`]), `kr` and `v` the key and value as
//! redb encodes them. The typed operations run unchanged ([`super::kv`]).
//!
//! Concurrency between nodes is the database's: every write batch is one `REPEATABLE READ`
//! transaction, and of two transactions that change the same row only the first to commit
//! does; the other fails with a serialization failure and the writer runs its batch again, when
//! it sees the winner's rows and answers as a single node would. Every rule that two nodes could
//! break together is a change of one row both make:
//! - first commit per epoch wins: both rewrite the group's record (its epoch);
//! - a KeyPackage is handed out once: both delete its row;
//! - an invite's uses: both rewrite its use count (or both create it);
//! - a user id, a device id, a group id, a queue position, a log position, a federation
//!   delivery id: both create or rewrite the same row;
//! - the last client of a user is not removed: removals rewrite the user's record;
//! - a removed client acts no more: every write for a client holds its row (`FOR SHARE`), which
//!   its removal deletes.
//!
//! Limits that count rows (queue sizes, KeyPackages per client) may be overshot by what two nodes
//! admit at the same moment. Rows two nodes change for unrelated reasons are kept apart: a queue's
//! removals are counted apart from its head, and the server's queued bytes in one row per node.
//! Reads are `REPEATABLE READ READ ONLY` snapshots.
//!
//! The schema is created and migrated at start by numbered migrations recorded in
//! `roost_migrations`, under an advisory lock so that nodes starting together migrate once.
//!
//! Cross-node events go through `LISTEN`/`NOTIFY` ([`PgEventBus`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Statement};
use tokio::sync::broadcast;

use super::StoreError;

/// Table statements run by this process's PostgreSQL stores (each one round trip), for the
/// benchmark's account of where a write's time goes.
static STATEMENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Table statements run so far by this process's PostgreSQL stores.
pub fn statements_run() -> u64 {
    STATEMENTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The statements prepared per table (their SQL is in [`super::kv`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PgStatement {
    Get,
    GetHeld,
    Upsert,
    Remove,
    RemoveAll,
    RangeBefore,
    RangeToEnd,
    Last,
    Count,
}

const STATEMENT_KINDS: usize = 9;

/// How write batches begin. Snapshot isolation: a transaction that changes a row another
/// transaction changed and committed since its snapshot fails and runs again. Every rule that
/// spans nodes rests on such a row (see the module doc); rows a rule only reads are held with
/// [`super::kv::Table::get_held`]. (`SERIALIZABLE` would also cover rules nobody wrote down,
/// but its page-grained read tracking made half the batches of two busy nodes fail on rows
/// they did not share.)
const WRITE_ISOLATION: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ";

/// Reads that may hold a connection at once (each a blocking thread).
const MAX_READ_CONNECTIONS: usize = 8;

/// How long connecting to the database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The advisory lock key nodes take while they migrate the schema ("roost" in ASCII).
const MIGRATION_LOCK: i64 = 0x0072_6f6f_7374;

/// The NOTIFY channel of cross-node events.
const EVENT_CHANNEL: &str = "roost_events";

/// Largest event payload NOTIFY carries (PostgreSQL's limit is 8000 bytes of text; events are
/// sent base64-encoded).
const MAX_EVENT_BYTES: usize = crate::protocol::cluster::MAX_CLUSTER_EVENT_LEN;

pub(super) fn error(e: postgres::Error) -> StoreError {
    StoreError::Postgres(Arc::new(e))
}

/// Whether `error` is a conflict with a concurrent transaction, after which the transaction may
/// simply run again.
pub(super) fn is_conflict(error: &postgres::Error) -> bool {
    matches!(
        error.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE | &SqlState::T_R_DEADLOCK_DETECTED)
    )
}

/// A row of a range read: (sort key, key, value).
type RangeRow = (Vec<u8>, Vec<u8>, Vec<u8>);
/// A (key, value) row.
type Row = (Vec<u8>, Vec<u8>);

/// One connection with the statements it prepared.
pub(crate) struct PgConn {
    client: Client,
    prepared: HashMap<String, [Option<Statement>; STATEMENT_KINDS]>,
}

impl PgConn {
    pub(super) fn connect(config: &Config) -> Result<Self, StoreError> {
        let mut client = config.connect(NoTls).map_err(error)?;
        // Index scans only: a sequential scan of a small table takes a predicate lock on the
        // whole table, and every other node's write to it then conflicts with this transaction.
        client
            .batch_execute("SET enable_seqscan = off")
            .map_err(error)?;
        Ok(Self {
            client,
            prepared: HashMap::new(),
        })
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// `kept` if the server has not closed it since, else a new connection.
    fn reuse_or_connect(kept: Option<Self>, config: &Config) -> Result<Self, StoreError> {
        match kept {
            Some(conn) if !conn.is_closed() => Ok(conn),
            _ => Self::connect(config),
        }
    }

    fn statement(&mut self, table: &str, kind: PgStatement) -> Result<Statement, StoreError> {
        if let Some(statement) = self
            .prepared
            .get(table)
            .and_then(|kinds| kinds[kind as usize].clone())
        {
            return Ok(statement);
        }
        let statement = self.client.prepare(&kind.sql(table)).map_err(error)?;
        self.prepared.entry(table.to_owned()).or_default()[kind as usize] = Some(statement.clone());
        Ok(statement)
    }
}

/// A connection inside a transaction: what a [`super::kv`] table of the PostgreSQL backend
/// reads and writes through.
pub(crate) struct PgSession {
    conn: RefCell<Box<PgConn>>,
    /// A statement failed: the transaction is aborted and must not report a commit.
    failed: Cell<bool>,
}

impl PgSession {
    fn begin(mut conn: PgConn, begin: &str) -> Result<Self, Box<(StoreError, PgConn)>> {
        match conn.client.batch_execute(begin) {
            Ok(()) => Ok(Self {
                conn: RefCell::new(Box::new(conn)),
                failed: Cell::new(false),
            }),
            Err(e) => Err(Box::new((error(e), conn))),
        }
    }

    /// Runs `op` as a read transaction in this session, ends it and hands the connection back.
    fn run_read<T>(
        self,
        op: impl FnOnce(&super::kv::ReadTransaction) -> Result<T, StoreError>,
    ) -> (Result<T, StoreError>, PgConn) {
        let txn = super::kv::ReadTransaction::Postgres(self);
        let outcome = op(&txn);
        let super::kv::ReadTransaction::Postgres(session) = txn else {
            unreachable!("made above");
        };
        let (_, conn) = session.finish(false);
        (outcome, conn)
    }

    /// Commits (or rolls back) and hands the connection back.
    fn finish(self, commit: bool) -> (Result<(), StoreError>, PgConn) {
        let failed = self.failed.get();
        let mut conn = *self.conn.into_inner();
        if commit && failed {
            let _ = conn.client.batch_execute("ROLLBACK");
            return (
                Err(StoreError::Corrupt(
                    "a statement of the transaction failed".into(),
                )),
                conn,
            );
        }
        let outcome = conn
            .client
            .batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
            .map_err(error);
        (outcome, conn)
    }

    fn query(
        &self,
        table: &str,
        kind: PgStatement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        STATEMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut conn = self.conn.borrow_mut();
        let outcome = conn
            .statement(table, kind)
            .and_then(|statement| conn.client.query(&statement, params).map_err(error));
        if outcome.is_err() {
            self.failed.set(true);
        }
        outcome
    }

    pub(super) fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query(table, PgStatement::Get, &[&key])?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    pub(super) fn get_held(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query(table, PgStatement::GetHeld, &[&key])?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    pub(super) fn upsert(
        &self,
        table: &str,
        key: &[u8],
        encoded_key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query(table, PgStatement::Upsert, &[&key, &encoded_key, &value])?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    pub(super) fn remove(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query(table, PgStatement::Remove, &[&key])?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    pub(super) fn remove_all(&self, table: &str, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        if !keys.is_empty() {
            self.query(table, PgStatement::RemoveAll, &[&keys])?;
        }
        Ok(())
    }

    /// Up to `limit` rows from sort key `from` (inclusive) to `before` (exclusive): (sort key,
    /// key, value).
    pub(super) fn range(
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

    pub(super) fn last(&self, table: &str) -> Result<Option<Row>, StoreError> {
        let rows = self.query(table, PgStatement::Last, &[])?;
        Ok(rows.first().map(|row| (row.get(0), row.get(1))))
    }

    pub(super) fn count(&self, table: &str) -> Result<u64, StoreError> {
        let rows = self.query(table, PgStatement::Count, &[])?;
        Ok(rows
            .first()
            .map_or(0, |row| row.get::<_, i64>(0).max(0) as u64))
    }

    pub(super) fn drop_table(&self, table: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.borrow_mut();
        conn.prepared.remove(table);
        let outcome = conn
            .client
            .batch_execute(&format!(r#"DROP TABLE IF EXISTS "{table}""#))
            .map_err(error);
        if outcome.is_err() {
            self.failed.set(true);
        }
        outcome
    }

    pub(super) fn table_names(&self) -> Result<Vec<String>, StoreError> {
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
    /// Connects to `url`, creates or migrates the schema and returns the database handle.
    pub(super) fn open(url: &str) -> Result<Self, StoreError> {
        let mut config: Config = url.parse().map_err(error)?;
        // A database that does not answer fails the write (and the request) instead of holding
        // the writer thread for the kernel's TCP timeout; a URL may set its own.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true);
        let display = redacted(url);
        let mut conn = PgConn::connect(&config)?;
        migrate(&mut conn.client)?;
        Ok(Self {
            config,
            display,
            idle: Mutex::new(vec![conn]),
            read_permits: tokio::sync::Semaphore::new(MAX_READ_CONNECTIONS),
        })
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
        let session =
            match PgSession::begin(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") {
                Ok(session) => session,
                // A connection the server closed since it was last used: one fresh attempt.
                Err(stale) => {
                    drop(stale);
                    PgSession::begin(
                        PgConn::connect(&self.config)?,
                        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                    )
                    .map_err(|failed| failed.0)?
                }
            };
        let (outcome, conn) = session.run_read(op);
        self.give_back(conn);
        outcome
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
fn drop_off_runtime(connections: Vec<PgConn>) {
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
    pub(super) fn begin(&mut self) -> Result<super::kv::WriteTransaction, StoreError> {
        self.session(WRITE_ISOLATION)
            .map(super::kv::WriteTransaction::Postgres)
    }

    /// A session begun with `begin` on the writer's connection (a new one if it was lost).
    fn session(&mut self, begin: &str) -> Result<PgSession, StoreError> {
        let conn = PgConn::reuse_or_connect(self.conn.take().map(|conn| *conn), &self.config)?;
        PgSession::begin(conn, begin).map_err(|failed| {
            let (e, conn) = *failed;
            self.conn = Some(Box::new(conn));
            e
        })
    }

    /// Re-reads the other nodes' shares of the server's queued bytes, at most every
    /// [`SHARDS_READ_INTERVAL`] (before a batch).
    pub(super) fn refresh_other_shards(&mut self) {
        if self
            .shards_read_at
            .is_some_and(|read_at| read_at.elapsed() < SHARDS_READ_INTERVAL)
        {
            return;
        }
        match self.read(super::queues::refresh_other_shards) {
            Ok(()) => self.shards_read_at = Some(std::time::Instant::now()),
            Err(e) => tracing::warn!(error = %e, "cannot read the other nodes' queue totals"),
        }
    }

    /// Runs `op` in a short read-only transaction on the writer's connection (between batches).
    pub(super) fn read<T>(
        &mut self,
        op: impl FnOnce(&super::kv::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (outcome, conn) = self.session("BEGIN READ ONLY")?.run_read(op);
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
];

/// Applies the migrations this database has not had, one transaction each, holding an advisory
/// lock so that nodes starting at once do not race.
fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .map_err(error)?;
    let outcome = apply_migrations(client);
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    outcome
}

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

/// The tables the migrations create.
#[cfg(test)]
fn migrated_tables() -> Vec<&'static str> {
    MIGRATIONS
        .iter()
        .flat_map(|(_, _, tables)| tables.iter().copied())
        .collect()
}

/// Cross-node events over `LISTEN`/`NOTIFY`: a listening thread forwards every notification on
/// [`EVENT_CHANNEL`] to the subscribers; publishing sends one `NOTIFY` on a connection of its own.
/// A node receives its own events too: events carry their origin so that it can skip them.
pub struct PgEventBus {
    sender: broadcast::Sender<Vec<u8>>,
    publisher: Mutex<Option<PgConn>>,
    config: Config,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// Events a slow subscriber may fall behind by before it misses some (it is told it lagged).
const EVENT_BACKLOG: usize = 4096;

impl PgEventBus {
    fn start(config: &Config) -> Result<Arc<Self>, StoreError> {
        let (sender, _) = broadcast::channel(EVENT_BACKLOG);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut listener = PgConn::connect(config)?;
        listener
            .client
            .batch_execute(&format!("LISTEN {EVENT_CHANNEL}"))
            .map_err(error)?;
        let bus = Arc::new(Self {
            sender: sender.clone(),
            publisher: Mutex::new(None),
            config: config.clone(),
            stop: stop.clone(),
        });
        let config = config.clone();
        std::thread::Builder::new()
            .name("roost-event-bus".into())
            .spawn(move || listen(listener, config, sender, stop))
            .map_err(StoreError::io)?;
        Ok(bus)
    }
}

impl super::EventBus for PgEventBus {
    /// Sends `payloads` (each at most [`MAX_EVENT_BYTES`]), in order, to every node, this one
    /// included. Blocking.
    fn publish(&self, payloads: &[Vec<u8>]) -> Result<(), StoreError> {
        use base64::Engine as _;
        if let Some(payload) = payloads.iter().find(|p| p.len() > MAX_EVENT_BYTES) {
            return Err(StoreError::Corrupt(format!(
                "an event of {} bytes (at most {MAX_EVENT_BYTES})",
                payload.len()
            )));
        }
        let texts: Vec<String> = payloads
            .iter()
            .map(|payload| base64::engine::general_purpose::STANDARD_NO_PAD.encode(payload))
            .collect();
        let mut publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for attempt in 0..2 {
            let mut conn = PgConn::reuse_or_connect(publisher.take(), &self.config)?;
            // One round trip for all of them; one statement's notifications arrive in order.
            match conn.client.execute(
                "SELECT pg_notify($1, event) FROM unnest($2::text[]) WITH ORDINALITY AS e(event, n) ORDER BY n",
                &[&EVENT_CHANNEL, &texts],
            ) {
                Ok(_) => {
                    *publisher = Some(conn);
                    return Ok(());
                }
                Err(e) if attempt == 0 && conn.is_closed() => {
                    tracing::debug!(error = %e, "the event connection closed; reconnecting");
                }
                Err(e) => return Err(error(e)),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Every event published from now on.
    fn subscribe(&self) -> broadcast::Receiver<Vec<u8>> {
        self.sender.subscribe()
    }
}

impl Drop for PgEventBus {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let publisher = self
            .publisher
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        drop_off_runtime(publisher.into_iter().collect());
    }
}

/// The listening thread: forwards notifications until the bus is dropped, reconnecting (and
/// listening again) when the connection is lost.
fn listen(
    mut conn: PgConn,
    config: Config,
    sender: broadcast::Sender<Vec<u8>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use base64::Engine as _;
    use postgres::fallible_iterator::FallibleIterator as _;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        {
            let mut notifications = conn.client.notifications();
            let mut batch = notifications.timeout_iter(Duration::from_millis(250));
            loop {
                match batch.next() {
                    Ok(Some(notification)) => {
                        match base64::engine::general_purpose::STANDARD_NO_PAD
                            .decode(notification.payload())
                        {
                            Ok(payload) => {
                                let _ = sender.send(payload);
                            }
                            Err(_) => tracing::warn!("ignoring an event that is not base64"),
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "the event bus lost its connection");
                        break;
                    }
                }
            }
        }
        if conn.is_closed() {
            // Events sent while no connection listened are lost. They are hints: what they
            // announced is in the store, and a client finds it at its next fetch or hint.
            loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                match PgConn::connect(&config).and_then(|mut fresh| {
                    fresh
                        .client
                        .batch_execute(&format!("LISTEN {EVENT_CHANNEL}"))
                        .map_err(error)?;
                    Ok(fresh)
                }) {
                    Ok(fresh) => {
                        conn = fresh;
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        }
    }
}

/// A new, empty database on the PostgreSQL server of `ROOST_TEST_POSTGRES` (default
/// `postgres://postgres@127.0.0.1/postgres`, a role that may create databases), dropped with
/// everything in it when this guard goes. For tests and benchmarks: each gets a store of its own.
pub struct ScratchDatabase {
    admin: String,
    name: String,
    pub url: String,
}

impl ScratchDatabase {
    pub fn create() -> Result<Self, StoreError> {
        let admin = std::env::var("ROOST_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1/postgres".into());
        let mut url = url::Url::parse(&admin).map_err(StoreError::io)?;
        let name = format!("roost_scratch_{:016x}", rand::random::<u64>());
        url.set_path(&name);
        // On a thread of its own: the synchronous client cannot run inside the runtime.
        let (admin_url, create) = (admin.clone(), format!("CREATE DATABASE {name}"));
        std::thread::spawn(move || {
            postgres::Client::connect(&admin_url, NoTls)?.batch_execute(&create)
        })
        .join()
        .map_err(|_| StoreError::io("creating a scratch database panicked"))?
        .map_err(error)?;
        Ok(Self {
            admin,
            name,
            url: url.to_string(),
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let (admin, drop) = (
            self.admin.clone(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        let _ = std::thread::spawn(move || {
            if let Ok(mut client) = postgres::Client::connect(&admin, postgres::NoTls) {
                let _ = client.batch_execute(&drop);
            }
        })
        .join();
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
            assert!(a != b, "round {round}: both or neither held the lease");
            holders += u32::from(a);
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
}
