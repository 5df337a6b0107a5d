//! The single writer thread and its group commit.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, Durability};
use tokio::sync::{mpsc, oneshot};

use super::kv::{Prefetch, WriteBackend, WriteTransaction};
use super::postgres::PgWriter;
use super::totals::WriterTotals;
use super::{StoreError, StoreStats};

/// Times a batch that lost to another node's concurrent transaction runs again before its
/// writes are answered with the conflict.
const MAX_CONFLICT_RETRIES: u32 = 100;

/// Where the writer commits.
#[allow(clippy::large_enum_variant)] // one, owned by the writer thread
pub(super) enum WriterBackend {
    Redb(Arc<Database>),
    Postgres(PgWriter),
}

impl WriterBackend {
    /// A write transaction for one batch, which keeps the server's total in `totals`' row.
    pub(super) fn begin(&mut self, totals: &WriterTotals) -> Result<WriteTransaction, StoreError> {
        let backend = match self {
            Self::Redb(db) => {
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                WriteBackend::Redb(txn)
            }
            Self::Postgres(writer) => writer.begin()?,
        };
        Ok(WriteTransaction::new(backend, totals.batch()))
    }

    pub(super) fn finish(&mut self, txn: WriteTransaction, commit: bool) -> Result<(), StoreError> {
        match (self, txn.into_backend()) {
            (Self::Redb(_), WriteBackend::Redb(txn)) => {
                if commit {
                    txn.commit()?;
                } else {
                    // A failing abort only means there was nothing to undo.
                    let _ = txn.abort();
                }
                Ok(())
            }
            (Self::Postgres(writer), WriteBackend::Postgres(session)) => {
                writer.finish(session, commit)
            }
            _ => Err(StoreError::Corrupt(
                "a transaction of another backend".into(),
            )),
        }
    }
}

/// Most writes that share one transaction; bounds the work redone when one of them fails.
const MAX_BATCH: usize = 1024;

/// A queued write, type-erased so that writes of any result type share a batch.
pub(super) trait WriteJob: Send {
    /// Adds the rows the write will read to `prefetch`, for the batch to read them ahead.
    fn prefetch(&self, _prefetch: &mut Prefetch) {}
    /// Applies the write to `txn`. On `Err` the whole transaction is rolled back.
    fn apply(&mut self, txn: &WriteTransaction) -> Result<(), StoreError>;
    /// Answers the caller: `Ok` once the transaction holding this write is committed.
    fn complete(self: Box<Self>, outcome: Result<(), StoreError>);
    /// A request for the writer to stop after what is queued before it.
    fn is_shutdown(&self) -> bool {
        false
    }
}

pub(super) struct TypedWrite<F, T> {
    reads: Prefetch,
    op: F,
    output: Option<T>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<F, T> TypedWrite<F, T> {
    pub(super) fn new(
        reads: Prefetch,
        op: F,
        reply: oneshot::Sender<Result<T, StoreError>>,
    ) -> Self {
        Self {
            reads,
            op,
            output: None,
            reply,
        }
    }
}

impl<F, T> WriteJob for TypedWrite<F, T>
where
    F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send,
    T: Send,
{
    fn prefetch(&self, prefetch: &mut Prefetch) {
        prefetch.extend(&self.reads);
    }

    fn apply(&mut self, txn: &WriteTransaction) -> Result<(), StoreError> {
        self.output = Some((self.op)(txn)?);
        Ok(())
    }

    fn complete(self: Box<Self>, outcome: Result<(), StoreError>) {
        let Self { output, reply, .. } = *self;
        let answer = outcome.and_then(|()| {
            output.ok_or_else(|| StoreError::Corrupt("write completed without output".into()))
        });
        // The caller may have gone away (its request was cancelled); the write stands regardless.
        let _ = reply.send(answer);
    }
}

/// Sent by `Store::close`: answered once every write queued before it is committed.
pub(super) struct Shutdown(pub(super) oneshot::Sender<()>);

impl WriteJob for Shutdown {
    fn apply(&mut self, _: &WriteTransaction) -> Result<(), StoreError> {
        Ok(())
    }

    fn complete(self: Box<Self>, _: Result<(), StoreError>) {
        let _ = self.0.send(());
    }

    fn is_shutdown(&self) -> bool {
        true
    }
}

/// The writer loop: take what is waiting, commit it as one transaction, answer, repeat.
pub(super) fn run(
    mut db: WriterBackend,
    mut queue: mpsc::Receiver<Box<dyn WriteJob>>,
    stats: &StoreStats,
) {
    // On a shared store other nodes' writers move the server's total too: this one keeps its
    // share in a row of its own.
    let mut totals = match db {
        WriterBackend::Postgres(_) => WriterTotals::sharded(),
        WriterBackend::Redb(_) => WriterTotals::single(),
    };
    let mut shutdown = None;
    while let Some(first) = queue.blocking_recv() {
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            if job.is_shutdown() {
                shutdown = Some(job);
                break;
            }
            batch.push(job);
            if batch.len() < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        commit_batch(&mut db, batch, stats, &mut totals);
        if let Some(job) = shutdown.take() {
            queue.close();
            // Writes that raced with the shutdown request were accepted into the channel: commit
            // them too rather than drop them unanswered.
            let mut rest = Vec::new();
            while let Ok(job) = queue.try_recv() {
                if !job.is_shutdown() {
                    rest.push(job);
                }
            }
            commit_batch(&mut db, rest, stats, &mut totals);
            job.complete(Ok(()));
            return;
        }
    }
}

/// Commits `batch`, answering each write once its transaction committed. A write that fails is
/// answered with its error and left out; the others are applied again in a fresh transaction, so
/// no failed write is ever committed. A batch that lost to a concurrent transaction (another
/// node's, on a shared store) runs again, split in two halves committed one after the other:
/// a smaller transaction is less likely to meet a concurrent one again, and the writer's other
/// work does not wait behind a large batch losing race after race.
fn commit_batch(
    db: &mut WriterBackend,
    batch: Vec<Box<dyn WriteJob>>,
    stats: &StoreStats,
    totals: &mut WriterTotals,
) {
    let mut pending = std::collections::VecDeque::from([batch]);
    let mut conflicts = 0;
    while let Some(mut batch) = pending.pop_front() {
        if batch.is_empty() {
            continue;
        }
        match attempt(db, &mut batch, stats, totals) {
            Attempt::Committed => {
                for job in batch {
                    job.complete(Ok(()));
                }
            }
            Attempt::Conflict(error) if conflicts >= MAX_CONFLICT_RETRIES => {
                for job in batch {
                    job.complete(Err(error.clone()));
                }
            }
            Attempt::Conflict(_) => {
                conflicts += 1;
                stats.conflicts.fetch_add(1, Ordering::Relaxed);
                back_off(conflicts);
                if batch.len() > 1 {
                    let second = batch.split_off(batch.len() / 2);
                    pending.push_front(second);
                }
                pending.push_front(batch);
            }
            Attempt::WriteFailed(index, error) => {
                batch.remove(index).complete(Err(error));
                pending.push_front(batch);
            }
            Attempt::Failed(error) => {
                for job in batch {
                    job.complete(Err(error.clone()));
                }
            }
        }
    }
}

/// How one transaction of a batch ended.
enum Attempt {
    Committed,
    /// It lost to a concurrent transaction: nothing of it stands; it may run again.
    Conflict(StoreError),
    /// The write at this index failed: nothing of the batch stands.
    WriteFailed(usize, StoreError),
    /// The transaction could not begin, read ahead or commit.
    Failed(StoreError),
}

/// Applies `batch` in one transaction and commits it.
fn attempt(
    db: &mut WriterBackend,
    batch: &mut [Box<dyn WriteJob>],
    stats: &StoreStats,
    totals: &mut WriterTotals,
) -> Attempt {
    if let WriterBackend::Postgres(writer) = db {
        writer.refresh_other_shards(totals);
    }
    let txn = match db.begin(totals) {
        Ok(txn) => txn,
        Err(error) => return Attempt::Failed(error),
    };
    // What the whole batch reads first (its acting clients, the rows its writes named) is read
    // in one statement (on PostgreSQL).
    let mut prefetch = Prefetch::default();
    for job in batch.iter() {
        job.prefetch(&mut prefetch);
    }
    let failed = txn
        .prefetch(prefetch)
        .err()
        .map(|error| (usize::MAX, error))
        .or_else(|| {
            batch
                .iter_mut()
                .enumerate()
                .find_map(|(index, job)| job.apply(&txn).err().map(|e| (index, e)))
        })
        // Totals the writes keep for the whole batch are written once, now.
        .or_else(|| {
            txn.totals()
                .flush(&txn)
                .err()
                .map(|error| (usize::MAX, error))
        });
    if let Some((index, error)) = failed {
        // Nothing of this batch may stand (its totals go with its transaction).
        let _ = db.finish(txn, false);
        return match index {
            _ if error.is_conflict() => Attempt::Conflict(error),
            usize::MAX => Attempt::Failed(error),
            index => Attempt::WriteFailed(index, error),
        };
    }
    let started = std::time::Instant::now();
    match db.finish(txn, true) {
        Ok(()) => {
            stats
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            stats.batch_writes.observe(batch.len() as f64);
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .writes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            Attempt::Committed
        }
        Err(error) if error.is_conflict() => Attempt::Conflict(error),
        Err(error) => Attempt::Failed(error),
    }
}

/// A short, growing, jittered pause before a batch that lost a conflict runs again, so that two
/// nodes retrying the same rows do not collide in lockstep.
fn back_off(attempt: u32) {
    use rand::Rng as _;
    if attempt == 1 {
        // The winner has usually committed by the time the loser hears of it.
        return;
    }
    let ceiling_us = 200u64 << attempt.min(4);
    std::thread::sleep(Duration::from_micros(
        rand::thread_rng().gen_range(ceiling_us / 2..=ceiling_us),
    ));
}
