//! A bound on how long a commit waits for the synchronous standby. PostgreSQL ends no such wait
//! by `statement_timeout`: a standby that is gone, with nobody to tell the primary to go on
//! alone (its failover manager down too), would hold every commit, and the writer thread, for
//! good. One watchdog thread cancels a commit that waited longer than
//! [`COMMIT_CONFIRMATION_TIMEOUT`]; the server then keeps it on the primary alone and warns, and
//! the store reports it as not confirmed (`PgConn::commit`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use postgres::{CancelToken, NoTls};

/// How long a commit may wait for the standby's confirmation. Longer than pg_auto_failover's
/// default `node_considered_unhealthy_timeout` (20 s), after which the primary goes on alone: a
/// standby lost while its manager works costs a wait, not a refusal.
pub(super) const COMMIT_CONFIRMATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The commits in progress, by id, with when each is given up.
#[derive(Default)]
struct CommitWatch {
    commits: Mutex<BTreeMap<u64, (Instant, CancelToken)>>,
    /// Signalled when a commit is watched while none was (the thread then waits for nothing).
    watched: Condvar,
    next_id: AtomicU64,
}

static WATCH: OnceLock<&'static CommitWatch> = OnceLock::new();

fn watch() -> &'static CommitWatch {
    WATCH.get_or_init(|| {
        let watch: &'static CommitWatch = Box::leak(Box::default());
        // Without the thread, commits are merely not bounded: nothing else depends on it.
        let _ = std::thread::Builder::new()
            .name("roost-commit-watch".into())
            .spawn(move || watch.run());
        watch
    })
}

/// One commit being watched, until dropped.
pub(super) struct Watching {
    id: u64,
}

/// Watches a commit whose connection `token` cancels.
pub(super) fn watching(token: CancelToken) -> Watching {
    let watch = watch();
    let id = watch.next_id.fetch_add(1, Ordering::Relaxed);
    let mut commits = watch.lock();
    let was_idle = commits.is_empty();
    commits.insert(id, (Instant::now() + COMMIT_CONFIRMATION_TIMEOUT, token));
    drop(commits);
    // Every deadline is the same time after its commit began, so a new one is never the
    // soonest while others wait: only a thread waiting for nothing needs waking.
    if was_idle {
        watch.watched.notify_one();
    }
    Watching { id }
}

impl Drop for Watching {
    fn drop(&mut self) {
        watch().lock().remove(&self.id);
    }
}

impl CommitWatch {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, (Instant, CancelToken)>> {
        self.commits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn run(&self) {
        let mut commits = self.lock();
        loop {
            let now = Instant::now();
            let overdue: Vec<u64> = commits
                .iter()
                .filter(|(_, (deadline, _))| *deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in overdue {
                if let Some((_, token)) = commits.remove(&id) {
                    drop(commits);
                    if let Err(e) = token.cancel_query(NoTls) {
                        tracing::warn!(error = %e, "cannot cancel a commit the standby never confirmed");
                    }
                    commits = self.lock();
                }
            }
            let soonest = commits.values().map(|(deadline, _)| *deadline).min();
            commits = match soonest {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    self.watched
                        .wait_timeout(commits, wait)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0
                }
                None => self
                    .watched
                    .wait(commits)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            };
        }
    }
}
