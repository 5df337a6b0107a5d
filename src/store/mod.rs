//! The store: one redb database in the data directory (the default), or a PostgreSQL database
//! that several nodes of one domain share. The only module that names redb or PostgreSQL.
//!
//! Writes go through one writer thread that does group commit: the writes waiting at the moment it
//! starts a transaction share that one durable commit, and each caller is answered only after the
//! commit returned. One fsync costs about as much as a hundred small writes, so under load this
//! multiplies throughput; an idle server commits each write at once.
//!
//! Reads run on tokio's blocking pool in read transactions, which never wait for the writer.
//!
//! Services use typed operations (`impl Store` blocks), written once against `kv`'s tables,
//! which are redb's or PostgreSQL's; backend types never leave this module. The operations stand
//! on two floors:
//!
//! - `tables`, the ground floor: one file per family of tables, which owns its tables and the
//!   primitives that read and write them inside a transaction, and the operations that touch
//!   nothing else. No table file names another (`.ci/store-floors` checks it).
//! - The transactions that span families, each in a file of its own here: a group send's fan-out
//!   (`group_send`), a group's creation, commit and deletion (`group_change`), a delivery from a
//!   peer (`federation_receipt`), a client's or user's removal (`removal`), KeyPackages as a
//!   user's clients hold them (`key_package_claims`), a client's log windows
//!   (`group_log_readers`), the outbox under its lease (`outbox_done`), what push left
//!   unannounced (`unannounced`), the operator's listings and backups (`admin`) and schema
//!   migrations (`migrations`); `fan_out` is the enqueue they share.
//!
//! An operation on one client's rows runs in `write_for` or `read_for`, which hand it the client
//! as the tables key it (user id, device id); services only ever pass a `ClientId`.
//!
//! Beneath both: the writer (`writer`) and its batch state (the server's queued bytes,
//! `totals`), the backends (`kv`, `postgres`), the values that pass between floors
//! (`rows`) and the list of every table (`registry`).

mod admin;
mod credentials;
mod fan_out;
mod federation_receipt;
mod group_change;
mod group_log_readers;
mod group_send;
mod key_package_claims;
mod kv;
mod migrations;
mod outbox_done;
mod postgres;
mod registry;
mod removal;
mod rows;
mod tables;
mod totals;
mod unannounced;
mod writer;

pub use postgres::{
    round_trips as postgres_round_trips, statements_run as postgres_statements_run, PgEventBus,
    ScratchCluster, ScratchDatabase,
};

/// How the nodes of a domain tell each other of events: every node hears every payload
/// published, its own included. Best effort (events are hints; a node that lost its connection
/// misses what was sent meanwhile). [`PgEventBus`] is the one on PostgreSQL; another bus (NATS,
/// Redis) would implement the same two methods.
pub trait EventBus: Send + Sync {
    /// Sends `payloads`, in order, to every node. Blocking: call it off the async workers.
    fn publish(&self, payloads: &[Vec<u8>]) -> Result<(), StoreError>;
    /// Every payload published from now on.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Vec<u8>>;
}

pub use admin::{QueueRow, StoreCounts, UserRow};
pub use credentials::{placeholder_credential, StoredEntry};
pub use federation_receipt::{IncomingDelivery, ReceivedDeliveries};
pub use rows::{
    Admission, Enqueued, Envelope, FullQueues, GroupMemberRow, OutgoingDelivery, QueueLimits,
    HANDSHAKE_RESERVE_FACTOR,
};
pub use tables::accounts::{
    AddClientRefusal, IssueCredential, IssuedInvite, NewClient, NewUser, RegisterRefusal,
    RemoveClientRefusal, StoredClient, FIRST_DEVICE_ID,
};
pub use tables::federation::{DeliveryRefusal, PeerBacklog, MAX_ROUTES_PER_PEER};
pub use tables::group_logs::{LogCursor, LogEntries, LogRefusal};
pub use tables::group_trees::TreeChunk;
pub use tables::groups::{
    GroupRefusal, GroupTransition, Membership, PublicState, Remembered, RequestRecord, SendView,
    StoredGroup, REQUEST_DEDUPE_WINDOW_MS,
};
pub use tables::key_packages::{
    Claimed, ClientClaim, NewKeyPackage, PublishRefusal, Stock, MAX_KEY_PACKAGE_BYTES_PER_USER,
};
pub use tables::leases::LeaseFence;
pub use tables::push::{AddTargetRefusal, PendingWake, QueueSeq, WakeFinished, WakeResult};
pub use tables::queues::{ExpiredMessages, StoredMessage, FIRST_SEQ};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase};
use tokio::sync::{mpsc, oneshot};

use crate::protocol::ClientId;
use kv::{ReadTransaction, WriteTransaction};

use writer::{TypedWrite, WriteJob};

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "roost.redb";

/// Writes that may wait for the writer before callers are slowed down (back-pressure).
const WRITE_QUEUE_CAPACITY: usize = 4096;

/// What went wrong in the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database underneath failed (its file, its server, a query).
    #[error("{0}")]
    Backend(BackendError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store is closed")]
    Closed,
    #[error("the data directory belongs to domain {stored:?}, not {requested:?}")]
    DomainMismatch { stored: String, requested: String },
    /// The client a write was made for no longer exists: it was removed (or its user deleted)
    /// after its connection authenticated. Nothing of the write was committed.
    #[error("the acting client no longer exists")]
    ActorRemoved,
    /// A commit the database could not confirm on its synchronous standby in time: it may be
    /// on the primary alone, so it is not acknowledged. The same request may be sent again.
    #[error("the commit was not confirmed by the synchronous standby")]
    Unconfirmed,
    /// A read that was to be served by one statement read more (internal to the PostgreSQL
    /// backend, which then reads again in a transaction; never returned by the store).
    #[error("a read needs a snapshot")]
    ReadNeedsSnapshot,
}

tokio::task_local! {
    /// The local client the current task writes for: set by the
    /// services while they serve an authenticated client's request. Every write made meanwhile
    /// first checks, in its own transaction, that this client still exists, so a removal that
    /// lands between authentication and the write takes the client's authority with it.
    static ACTING_CLIENT: Option<ClientId>;
}

/// Runs `work` with every store write in it made for the local client `client`:
/// each write is refused with [`StoreError::ActorRemoved`] if the client no longer exists when
/// its transaction runs. `None` runs `work` as the server itself (no such check), e.g. for the
/// follow-up work of a removal, which must go on after the client is gone.
pub async fn acting_for<F: std::future::Future>(client: Option<ClientId>, work: F) -> F::Output {
    ACTING_CLIENT.scope(client, work).await
}

/// A failure of the database underneath, redb's or PostgreSQL's: opaque, so that the backends'
/// own error types stay inside the store. It says what went wrong; [`StoreError`]'s methods say
/// what may be done about it.
#[derive(Debug, Clone)]
pub struct BackendError(Arc<BackendFailure>);

#[derive(Debug)]
enum BackendFailure {
    Redb(redb::Error),
    Postgres(::postgres::Error),
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            BackendFailure::Redb(e) => write!(f, "storage failure: {e}"),
            BackendFailure::Postgres(e) => write!(f, "database failure: {e}"),
        }
    }
}

impl StoreError {
    /// A file-system failure around the database (its file, a backup's copy).
    pub(crate) fn io(error: impl std::fmt::Display) -> Self {
        redb::Error::Io(std::io::Error::other(error.to_string())).into()
    }

    fn postgres(error: ::postgres::Error) -> Self {
        Self::Backend(BackendError(Arc::new(BackendFailure::Postgres(error))))
    }

    /// A conflict with a concurrent transaction of another node: the transaction may run again.
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self, Self::Backend(BackendError(e))
            if matches!(&**e, BackendFailure::Postgres(e) if postgres::is_conflict(e)))
    }

    /// The redb database file is open in another process.
    pub fn is_database_in_use(&self) -> bool {
        matches!(self, Self::Backend(BackendError(e))
            if matches!(&**e, BackendFailure::Redb(redb::Error::DatabaseAlreadyOpen)))
    }
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        Self::Backend(BackendError(Arc::new(BackendFailure::Redb(e.into()))))
    }
}

/// Counters an operator or a test can read (the metrics endpoint exports them).
#[derive(Debug)]
pub struct StoreStats {
    commits: AtomicU64,
    writes: AtomicU64,
    conflicts: AtomicU64,
    /// Writes per committed transaction (group commit's batch size).
    pub batch_writes: prometheus_client::metrics::histogram::Histogram,
    /// Seconds each commit took (its fsync, mostly).
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for StoreStats {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
        Self {
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            // 1, 2, 4 ... 1024 (MAX_BATCH).
            batch_writes: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            // 50 µs to ~1.6 s.
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        }
    }
}

impl StoreStats {
    /// Write transactions committed.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Write operations committed (several share a commit under load).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Write batches that lost a race with another node's transaction and ran again.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }
}

/// Where a store keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// A redb database file (by default `roost.redb` in the data directory).
    Redb(PathBuf),
    /// A PostgreSQL database, by its connection URL (`postgres://...`).
    Postgres(String),
}

impl std::str::FromStr for StoreLocation {
    type Err = String;

    /// `postgres://...` or `postgresql://...`, or `redb:PATH` (a database file).
    fn from_str(text: &str) -> Result<Self, String> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Self::Postgres(text.to_owned()));
        }
        match text.strip_prefix("redb:") {
            Some(path) if !path.is_empty() => Ok(Self::Redb(PathBuf::from(path))),
            _ => Err(format!(
                "{text:?} is not a store: use postgres://USER@HOST/DATABASE or redb:PATH"
            )),
        }
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Redb(path) => write!(f, "redb:{}", path.display()),
            Self::Postgres(url) => f.write_str(&postgres::redacted(url)),
        }
    }
}

#[derive(Clone)]
enum Backend {
    Redb { db: Arc<Database>, path: PathBuf },
    Postgres(Arc<postgres::PgDatabase>),
}

/// A handle to the database. Cheap to clone; [`Store::close`] waits for the writer to finish.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    writes: mpsc::Sender<Box<dyn WriteJob>>,
    writer_thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    stats: Arc<StoreStats>,
}

impl Store {
    /// Opens (or creates) the redb database in `data_dir` and starts its writer thread.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_at(&StoreLocation::Redb(data_dir.join(DATABASE_FILE)))
    }

    /// Opens (or creates) the store at `location` (blocking: call it off the async workers).
    pub fn open_at(location: &StoreLocation) -> Result<Self, StoreError> {
        let (backend, migration_lock) = match location {
            StoreLocation::Redb(path) => {
                let db = Arc::new(open_redb(path)?);
                let path = path.clone();
                (Backend::Redb { db, path }, None)
            }
            StoreLocation::Postgres(url) => {
                let (database, lock) = postgres::PgDatabase::open(url)?;
                (Backend::Postgres(Arc::new(database)), Some(lock))
            }
        };
        let stats = Arc::new(StoreStats::default());
        let (writes, queue) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let mut writer_backend = match &backend {
            Backend::Redb { db, .. } => writer::WriterBackend::Redb(db.clone()),
            Backend::Postgres(database) => writer::WriterBackend::Postgres(database.writer()),
        };
        Self::initialise_schema(&mut writer_backend)?;
        drop(migration_lock);
        let writer_thread = std::thread::Builder::new()
            .name("roost-store-writer".into())
            .spawn({
                let stats = stats.clone();
                move || writer::run(writer_backend, queue, &stats)
            })
            .map_err(StoreError::io)?;
        Ok(Self {
            backend,
            writes,
            writer_thread: Arc::new(Mutex::new(Some(writer_thread))),
            stats,
        })
    }

    /// Where this store keeps its data.
    pub fn location(&self) -> StoreLocation {
        match &self.backend {
            Backend::Redb { path, .. } => StoreLocation::Redb(path.clone()),
            Backend::Postgres(database) => StoreLocation::Postgres(database.display.clone()),
        }
    }

    /// Whether several nodes may share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The cross-node event bus of a shared store (`None` on redb: one node, nothing to tell).
    pub fn event_bus(&self) -> Result<Option<Arc<dyn EventBus>>, StoreError> {
        match &self.backend {
            Backend::Redb { .. } => Ok(None),
            Backend::Postgres(database) => Ok(Some(database.event_bus()?)),
        }
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Stops taking writes, lets the writer commit what is queued, and waits for it to exit.
    /// Writes submitted afterwards fail with [`StoreError::Closed`]. The database file is released
    /// when the last clone of this handle is dropped.
    pub async fn close(&self) {
        // The writer commits everything queued before this request, answers it and exits.
        let (done_tx, done_rx) = oneshot::channel();
        let _ = self.writes.send(Box::new(writer::Shutdown(done_tx))).await;
        let _ = done_rx.await;
        let handle = self
            .writer_thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    /// Runs `op` in a write transaction shared with the other writes waiting now, and returns its
    /// result once that transaction has been durably committed.
    ///
    /// `op` may run more than once: when another write in the same batch fails, the batch is
    /// rolled back and the others run again in a new transaction. An `op` that returns `Err` has
    /// none of its writes committed.
    ///
    /// Inside [`acting_for`], the acting client's existence is checked first, in the same
    /// transaction.
    async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.write_reading(kv::Prefetch::default(), op).await
    }

    /// [`Self::write`] for an operation on one client's rows: `op` gets the client as the tables
    /// key it.
    async fn write_for<T, F>(&self, client: &ClientId, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(&WriteTransaction, (&str, u32)) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let client = client.clone();
        self.write(move |txn| op(txn, rows::key(&client))).await
    }

    /// [`Self::read`] for an operation on one client's rows: `op` gets the client as the tables
    /// key it.
    async fn read_for<T, F>(&self, client: &ClientId, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(&ReadTransaction, (&str, u32)) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let client = client.clone();
        self.read(move |txn| op(txn, rows::key(&client))).await
    }

    /// [`Self::write`], with the rows `op` will read named in `reads`: the writer reads them
    /// ahead with the rest of its batch's.
    async fn write_reading<T, F>(&self, reads: kv::Prefetch, op: F) -> Result<T, StoreError>
    where
        F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        // A write for a local client first checks, in its transaction, that the client exists.
        let actor = ACTING_CLIENT.try_with(Clone::clone).ok().flatten();
        let mut reads = reads;
        if let Some(actor) = &actor {
            tables::accounts::client_reads(&mut reads, rows::key(actor));
        }
        let mut op = op;
        let op = move |txn: &WriteTransaction| {
            if let Some(actor) = &actor {
                let (user_id, device_id) = rows::key(actor);
                if !tables::accounts::client_exists(txn, user_id, device_id)? {
                    return Err(StoreError::ActorRemoved);
                }
            }
            op(txn)
        };
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(Box::new(TypedWrite::new(reads, op, reply)))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `op` in a read transaction on the blocking pool, with the rows `reads` names read
    /// ahead: on PostgreSQL, a read that needs nothing more is one statement.
    async fn read_reading<T, F>(&self, reads: kv::Prefetch, op: F) -> Result<T, StoreError>
    where
        F: Fn(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        match &self.backend {
            Backend::Redb { .. } => self.read(op).await,
            Backend::Postgres(database) => {
                on_read_connection(database, move |database| database.read_reading(reads, op)).await
            }
        }
    }

    /// Runs `op` in a read transaction on the blocking pool.
    async fn read<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        match &self.backend {
            Backend::Redb { db, .. } => {
                let db = db.clone();
                tokio::task::spawn_blocking(move || op(&ReadTransaction::Redb(db.begin_read()?)))
                    .await
                    .map_err(|_| StoreError::Closed)?
            }
            Backend::Postgres(database) => {
                on_read_connection(database, move |database| database.read(op)).await
            }
        }
    }
}

/// Runs `read` on the blocking pool once one of the database's read connections is free.
async fn on_read_connection<T: Send + 'static>(
    database: &Arc<postgres::PgDatabase>,
    read: impl FnOnce(&postgres::PgDatabase) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let database = database.clone();
    let permit = database
        .read_permits
        .acquire()
        .await
        .map_err(|_| StoreError::Closed)?;
    permit.forget();
    tokio::task::spawn_blocking(move || {
        let outcome = read(&database);
        database.read_permits.add_permits(1);
        outcome
    })
    .await
    .map_err(|_| StoreError::Closed)?
}

/// Opens (or creates) a redb database file, private to the server's user.
fn open_redb(path: &Path) -> Result<Database, StoreError> {
    // Everything the server stores is private to its user: a new file is made 0600 before
    // redb fills it (redb would make it 0644), an existing one is made private.
    let private = if path.exists() {
        crate::secret_files::make_private(path, 0o600)
    } else {
        crate::secret_files::create_private(path, b"")
    };
    private.map_err(|e| StoreError::io(format!("{e:#}")))?;
    Ok(Database::create(path)?)
}

/// A store in a new temporary data directory (for the store's own tests; the directory goes
/// with the returned guard).
#[cfg(test)]
pub(crate) fn test_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}
