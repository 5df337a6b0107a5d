//! The single writer thread and its group commit.

use std::sync::atomic::Ordering;

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::{StoreError, StoreStats};

/// Most writes that share one transaction; bounds the work redone when one of them fails.
const MAX_BATCH: usize = 1024;

/// A queued write, type-erased so that writes of any result type share a batch.
pub(super) trait WriteJob: Send {
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
    op: F,
    output: Option<T>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<F, T> TypedWrite<F, T> {
    pub(super) fn new(op: F, reply: oneshot::Sender<Result<T, StoreError>>) -> Self {
        Self {
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
pub(super) fn run(db: &Database, mut queue: mpsc::Receiver<Box<dyn WriteJob>>, stats: &StoreStats) {
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
        commit_batch(db, batch, stats);
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
            commit_batch(db, rest, stats);
            job.complete(Ok(()));
            return;
        }
    }
}

/// Commits `batch` as one transaction. A write that fails is answered with its error and left
/// out; the others are applied again in a fresh transaction, so no failed write is ever committed.
fn commit_batch(db: &Database, mut batch: Vec<Box<dyn WriteJob>>, stats: &StoreStats) {
    while !batch.is_empty() {
        let txn = match db
            .begin_write()
            .map_err(StoreError::from)
            .and_then(|mut txn| {
                txn.set_durability(Durability::Immediate)?;
                Ok(txn)
            }) {
            Ok(txn) => txn,
            Err(error) => {
                for job in batch {
                    job.complete(Err(error.clone()));
                }
                return;
            }
        };
        let failed = batch
            .iter_mut()
            .enumerate()
            .find_map(|(index, job)| job.apply(&txn).err().map(|e| (index, e)));
        // Totals the writes keep for the whole batch are written once, now.
        let failed = failed.or_else(|| {
            super::queues::flush_server_total(&txn)
                .err()
                .map(|error| (usize::MAX, error))
        });
        if let Some((index, error)) = failed {
            // Nothing of this batch may stand; a failing abort only means there was nothing to undo.
            super::queues::discard_server_total_delta();
            let _ = txn.abort();
            if index == usize::MAX {
                for job in batch {
                    job.complete(Err(error.clone()));
                }
                return;
            }
            batch.remove(index).complete(Err(error));
            continue;
        }
        let started = std::time::Instant::now();
        let outcome = txn.commit().map_err(StoreError::from);
        if outcome.is_ok() {
            stats
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            stats.batch_writes.observe(batch.len() as f64);
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .writes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        for job in batch {
            job.complete(outcome.clone());
        }
        return;
    }
}
