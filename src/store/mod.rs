//! The store: one redb database in the data directory. The only module that names redb.
//!
//! Writes go through one writer thread that does group commit: the writes waiting at the moment it
//! starts a transaction share that one `Durability::Immediate` commit, and each caller is answered
//! only after the commit returned. One fsync costs about as much as a hundred small writes, so under
//! load this multiplies throughput; an idle server commits each write at once.
//!
//! Reads run on tokio's blocking pool in read transactions, which never wait for the writer.
//!
//! Services use typed operations (`impl Store` blocks, one file per service's tables); redb types
//! never leave this module.

mod accounts;
mod admin;
mod federation;
mod group_logs;
mod group_trees;
mod groups;
mod key_packages;
mod meta;
mod push;
mod queues;
mod tables;
mod writer;

pub use accounts::{
    AddClientRefusal, IssueCredential, IssuedInvite, NewUser, RegisterRefusal, RemoveClientRefusal,
    StoredClient, FIRST_DEVICE_ID,
};
pub use admin::{QueueRow, StoreCounts, UserRow};
pub use federation::{
    DeliveryRefusal, IncomingDelivery, OutgoingDelivery, PeerBacklog, ReceivedDeliveries,
};
pub use group_logs::{LogCursor, LogEntries, LogRefusal};
pub use group_trees::TreeChunk;
pub use groups::{
    GroupMemberRow, GroupRefusal, GroupTransition, PublicState, RequestRecord, SendView,
    StoredGroup, REQUEST_DEDUPE_WINDOW_MS,
};
pub use key_packages::{
    Claimed, ClientClaim, NewKeyPackage, PublishRefusal, Stock, MAX_KEY_PACKAGE_BYTES_PER_USER,
};
pub use push::{AddTargetRefusal, PendingWake, WakeResult};
pub use queues::{
    Admission, Enqueued, Envelope, ExpiredMessages, FullQueues, QueueLimits, StoredMessage,
    FIRST_SEQ, HANDSHAKE_RESERVE_FACTOR,
};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use redb::{Database, ReadTransaction, ReadableDatabase, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use writer::{TypedWrite, WriteJob};

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "roost.redb";

/// Writes that may wait for the writer before callers are slowed down (back-pressure).
const WRITE_QUEUE_CAPACITY: usize = 4096;

/// What went wrong in the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage failure: {0}")]
    Backend(Arc<redb::Error>),
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
}

tokio::task_local! {
    /// The local client the current task writes for, as (user id, device id): set by the
    /// services while they serve an authenticated client's request. Every write made meanwhile
    /// first checks, in its own transaction, that this client still exists, so a removal that
    /// lands between authentication and the write takes the client's authority with it.
    static ACTING_CLIENT: Option<(String, u32)>;
}

/// Runs `work` with every store write in it made for the local client `(user_id, device_id)`:
/// each write is refused with [`StoreError::ActorRemoved`] if the client no longer exists when
/// its transaction runs. `None` runs `work` as the server itself (no such check), e.g. for the
/// follow-up work of a removal, which must go on after the client is gone.
pub async fn acting_for<F: std::future::Future>(
    client: Option<(String, u32)>,
    work: F,
) -> F::Output {
    ACTING_CLIENT.scope(client, work).await
}

impl StoreError {
    /// A file-system failure around the database (its file, a backup's copy).
    pub(crate) fn io(error: impl std::fmt::Display) -> Self {
        Self::Backend(Arc::new(redb::Error::Io(std::io::Error::other(
            error.to_string(),
        ))))
    }
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        Self::Backend(Arc::new(e.into()))
    }
}

/// Counters an operator or a test can read (the metrics endpoint exports them).
#[derive(Debug)]
pub struct StoreStats {
    commits: AtomicU64,
    writes: AtomicU64,
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
}

/// A handle to the database. Cheap to clone; [`Store::close`] waits for the writer to finish.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    writes: mpsc::Sender<Box<dyn WriteJob>>,
    writer_thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    stats: Arc<StoreStats>,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the database in `data_dir` and starts its writer thread.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(DATABASE_FILE);
        // Everything the server stores is private to its user: a new file is made 0600 before
        // redb fills it (redb would make it 0644), an existing one is made private.
        let private = if path.exists() {
            crate::secret_files::make_private(&path, 0o600)
        } else {
            crate::secret_files::create_private(&path, b"")
        };
        private.map_err(|e| StoreError::io(format!("{e:#}")))?;
        let db = Arc::new(Database::create(&path)?);
        let stats = Arc::new(StoreStats::default());
        let (writes, queue) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let writer_thread = std::thread::Builder::new()
            .name("roost-store-writer".into())
            .spawn({
                let db = db.clone();
                let stats = stats.clone();
                move || writer::run(&db, queue, &stats)
            })
            .map_err(|e| StoreError::Backend(Arc::new(redb::Error::Io(e))))?;
        let store = Self {
            db,
            writes,
            writer_thread: Arc::new(Mutex::new(Some(writer_thread))),
            stats,
            path,
        };
        store.initialise_schema()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
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
    async fn write<T, F>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let actor = ACTING_CLIENT.try_with(Clone::clone).ok().flatten();
        let checked = move |txn: &WriteTransaction| {
            if let Some((user_id, device_id)) = &actor {
                if !accounts::client_exists(txn, user_id, *device_id)? {
                    return Err(StoreError::ActorRemoved);
                }
            }
            op(txn)
        };
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(Box::new(TypedWrite::new(checked, reply)))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `op` in a read transaction on the blocking pool.
    async fn read<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || op(&db.begin_read()?))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}
