//! Offline push: clients register push targets (Web Push subscriptions, devices behind an
//! operator's push gateway); when something is queued for a client that has no authenticated
//! connection, the server wakes it through each target. Owns the push tables and the VAPID key.
//!
//! The send path only hands the client to this service ([`Push::wake`], a map insert under a
//! lock, and nothing at all for clients without targets). One task, [`Push::run`], does the
//! rest off the send path:
//! - **coalescing**: at most one wake-up per client per `wake_interval` while it has not caught
//!   up (acknowledged, or connected); messages in between are announced once, at the end of the
//!   interval, if the client is still away;
//! - **durability**: a wake-up is written to the outbox (`store::push`) before it is sent and
//!   deleted when it was delivered or given up on, so a crash does not lose it; at start the
//!   queues of clients with targets are compared with the last wake-up scheduled for them, which
//!   covers messages queued just before a crash;
//! - **delivery**: at most [`MAX_IN_FLIGHT`] HTTP requests at once, retries with exponential
//!   backoff (or the service's `Retry-After`) for [`MAX_ATTEMPTS`], and a target the push service
//!   reports gone is deleted.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::push_delivery::{DeliveryOutcome, PushDelivery};
use super::{PushedMessage, ServiceError, Sessions};
use crate::clock::{Clock, SystemClock};
use crate::config::PushConfig;
use crate::escape::Escaped;
use crate::protocol::{
    AddPushTargetRequest, ClientId, Notification, PushInfo, PushTarget, PushTargetAdded,
    PushTargets, Text, MAX_PUSHKEY_LEN, MAX_PUSH_TARGETS_PER_CLIENT,
};
use crate::secret_files::create_private;
use crate::store::{AddTargetRefusal, PendingWake, QueueSeq, Store, WakeFinished, WakeResult};
use crate::web_push::VapidKey;

/// The server's VAPID key file in the data directory.
pub const VAPID_KEY_FILE: &str = "vapid.key";
/// Wake-up requests in flight at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// Attempts at one wake-up before it is given up (its messages stay queued).
pub const MAX_ATTEMPTS: u32 = 10;
/// How long the worker lets hand-overs gather before it takes them in.
const GATHER: Duration = Duration::from_millis(10);
/// How long the worker lets finished attempts gather before it records them.
const SETTLE_GATHER: Duration = Duration::from_millis(2);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// One target of one client.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct TargetKey {
    client: ClientId,
    target_id: u64,
}

impl TargetKey {
    fn of(wake: &PendingWake) -> Self {
        Self {
            client: wake.client.clone(),
            target_id: wake.target.target_id,
        }
    }

    /// What became of the wake-up of this target.
    fn finished(self, result: WakeResult) -> WakeFinished {
        WakeFinished {
            client: self.client,
            target_id: self.target_id,
            result,
        }
    }
}

fn wall_ms() -> u64 {
    SystemClock.now_ms()
}

/// What the send path hands over, taken by the worker in one go.
#[derive(Default)]
struct Inbox {
    /// Clients to wake, with the newest queue sequence number to announce (0: none).
    wake: HashMap<ClientId, u64>,
    /// Clients that caught up: their coalescing window and pending wake-ups end.
    caught_up: HashSet<ClientId>,
}

pub struct Push {
    store: Store,
    config: PushConfig,
    /// The transport's sessions: who is connected.
    sessions: Arc<dyn Sessions>,
    vapid: Option<Arc<VapidKey>>,
    delivery: Arc<PushDelivery>,
    /// The clients with at least one target: the send path's only question.
    registered: RwLock<HashSet<ClientId>>,
    /// The other nodes of a shared store, told when a client's targets change here.
    cluster: Option<Arc<super::cluster::ClusterSessions>>,
    inbox: Mutex<Inbox>,
    ready: Notify,
    stats: PushStats,
}

/// Counters an operator, a test or the benchmark can read.
#[derive(Debug, Default)]
pub struct PushStats {
    pub delivered: std::sync::atomic::AtomicU64,
    pub failed_attempts: std::sync::atomic::AtomicU64,
    pub targets_gone: std::sync::atomic::AtomicU64,
}

/// Loads the server's VAPID key from `data_dir`, creating it on first start.
fn load_or_create_vapid_key(data_dir: &Path) -> anyhow::Result<VapidKey> {
    let path = data_dir.join(VAPID_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let hex_secret = text
                .lines()
                .find_map(|line| line.strip_prefix("secret "))
                .context("no `secret` line")
                .and_then(|secret| Ok(hex::decode(secret.trim())?))
                .with_context(|| format!("reading the VAPID key {}", path.display()))?;
            VapidKey::from_bytes(&hex_secret)
                .with_context(|| format!("reading the VAPID key {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = VapidKey::generate();
            let contents = format!(
                "# Roost VAPID key (RFC 8292): identifies this server to Web Push services.\n\
                 # Private. Replacing it invalidates every Web Push subscription made for it.\n\
                 secret {}\n",
                hex::encode(key.secret_bytes())
            );
            create_private(&path, contents.as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl Push {
    pub(crate) fn new(
        config: &PushConfig,
        data_dir: &Path,
        domain: &str,
        store: Store,
        sessions: Arc<dyn Sessions>,
        cluster: Option<Arc<super::cluster::ClusterSessions>>,
    ) -> anyhow::Result<Self> {
        let vapid = if config.web_push {
            Some(Arc::new(load_or_create_vapid_key(data_dir)?))
        } else {
            None
        };
        let delivery = Arc::new(PushDelivery::new(config, vapid.clone(), domain)?);
        Ok(Self {
            store,
            config: config.clone(),
            sessions,
            vapid,
            delivery,
            registered: RwLock::default(),
            cluster,
            inbox: Mutex::default(),
            ready: Notify::new(),
            stats: PushStats::default(),
        })
    }

    pub fn stats(&self) -> &PushStats {
        &self.stats
    }

    /// `GetPushInfo`.
    pub fn info(&self) -> PushInfo {
        PushInfo {
            vapid_public_key: self
                .vapid
                .as_ref()
                .map_or_else(Vec::new, |key| key.public_key().to_vec())
                .into(),
            gateways: self
                .config
                .gateways
                .iter()
                .map(|url| Text::truncated(url))
                .collect(),
            max_targets_per_client: MAX_PUSH_TARGETS_PER_CLIENT as u32,
            wake_interval_ms: u32::try_from(self.config.wake_interval.as_millis())
                .unwrap_or(u32::MAX),
        }
    }

    /// `AddPushTarget`: checks the target against the server's rules and keeps it.
    pub async fn add(
        &self,
        caller: &ClientId,
        request: AddPushTargetRequest,
    ) -> Result<PushTargetAdded, ServiceError> {
        let refused = |reason: String| Err(ServiceError::PushTargetRefused(reason));
        match &request.target {
            PushTarget::WebPush(subscription) => {
                if self.vapid.is_none() {
                    return refused("this server does not send Web Push".into());
                }
                if let Err(reason) = self
                    .delivery
                    .rules()
                    .check_endpoint(subscription.endpoint.as_str())
                {
                    return refused(reason);
                }
                if let Err(e) = crate::web_push::check_subscription(
                    subscription.p256dh.as_slice(),
                    subscription.auth.as_slice(),
                ) {
                    return refused(e.to_string());
                }
            }
            PushTarget::Gateway(pusher) => {
                if !self
                    .config
                    .gateways
                    .iter()
                    .any(|url| url == pusher.gateway_url.as_str())
                {
                    return refused(format!(
                        "{} is not a push gateway of this server (GetPushInfo lists them)",
                        Escaped(pusher.gateway_url.as_str())
                    ));
                }
                for (name, value) in [("app_id", &pusher.app_id), ("pushkey", &pusher.pushkey)] {
                    if value.as_str().is_empty() || value.as_str().len() > MAX_PUSHKEY_LEN {
                        return refused(format!("{name} must be 1 to {MAX_PUSHKEY_LEN} bytes"));
                    }
                }
            }
        }
        let added = self
            .store
            .add_push_target(
                caller,
                request.target,
                SystemClock.now(),
                MAX_PUSH_TARGETS_PER_CLIENT,
            )
            .await?
            .map_err(
                |AddTargetRefusal::TooMany { limit }| ServiceError::TooManyPushTargets { limit },
            )?;
        self.set_registered(caller, true);
        self.tell_other_nodes(caller);
        Ok(added)
    }

    /// `ListPushTargets`.
    pub async fn list(&self, caller: &ClientId) -> Result<PushTargets, ServiceError> {
        Ok(PushTargets {
            targets: self.store.push_targets(caller).await?,
        })
    }

    /// `RemovePushTarget`.
    pub async fn remove(&self, caller: &ClientId, target_id: u64) -> Result<(), ServiceError> {
        if !self.store.remove_push_target(caller, target_id).await? {
            return Err(ServiceError::UnknownPushTarget);
        }
        self.refresh_registered(caller).await;
        self.tell_other_nodes(caller);
        Ok(())
    }

    /// On a shared store, tells the other nodes that `client`'s targets changed (they wake the
    /// clients they know to have targets).
    fn tell_other_nodes(&self, client: &ClientId) {
        if let Some(cluster) = &self.cluster {
            cluster.announce_push_targets_changed(client);
        }
    }

    /// Re-reads whether the client still has targets.
    pub(super) async fn refresh_registered(&self, client: &ClientId) {
        if let Ok(targets) = self.store.push_targets(client).await {
            self.set_registered(client, !targets.is_empty());
        }
    }

    fn set_registered(&self, client: &ClientId, has_targets: bool) {
        let mut registered = self
            .registered
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !has_targets {
            registered.remove(client);
        } else if !registered.contains(client) {
            registered.insert(client.clone());
        }
    }

    /// Hands a client that was sent something while not connected to the worker. Never waits
    /// for I/O; costs one set lookup for a client without targets.
    pub fn wake(&self, client: &ClientId, seq: u64) {
        if self.has_targets(client) {
            self.enqueue_wakes([(client, seq)]);
        }
    }

    fn has_targets(&self, client: &ClientId) -> bool {
        self.registered
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(client)
    }

    /// The readers of a group log entry that have targets and no connection.
    fn wake_readers(&self, readers: &[&ClientId]) {
        let waking: Vec<&ClientId> = {
            let registered = self
                .registered
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if registered.is_empty() {
                return;
            }
            readers
                .iter()
                .copied()
                .filter(|reader| registered.contains(*reader))
                .collect()
        };
        let offline: Vec<(&ClientId, u64)> = waking
            .into_iter()
            .filter(|reader| !self.is_connected(reader))
            .map(|reader| (reader, 0))
            .collect();
        if !offline.is_empty() {
            self.enqueue_wakes(offline);
        }
    }

    fn enqueue_wakes<'a>(&self, clients: impl IntoIterator<Item = (&'a ClientId, u64)>) {
        let mut inbox = self.lock_inbox();
        for (client, seq) in clients {
            match inbox.wake.get_mut(client) {
                Some(newest) => *newest = (*newest).max(seq),
                None => {
                    inbox.wake.insert(client.clone(), seq);
                }
            }
        }
        drop(inbox);
        self.ready.notify_one();
    }

    /// The client acknowledged what it was sent: the next message wakes it at once.
    pub fn caught_up(&self, client: &ClientId) {
        if !self.has_targets(client) {
            return;
        }
        self.lock_inbox().caught_up.insert(client.clone());
        self.ready.notify_one();
    }

    /// The client was removed: no wake-up for it any more (its targets went with it).
    pub fn forget(&self, client: &ClientId) {
        if !self.has_targets(client) {
            return;
        }
        self.set_registered(client, false);
        let mut inbox = self.lock_inbox();
        inbox.wake.remove(client);
        inbox.caught_up.insert(client.clone());
        drop(inbox);
        self.ready.notify_one();
    }

    fn lock_inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_connected(&self, client: &ClientId) -> bool {
        self.sessions.connections().connected(client)
    }

    /// Wakes clients until `stop` is cancelled (see the module doc).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if !self.config.enabled() {
            return;
        }
        let mut worker = Worker::default();
        match self.start_up().await {
            Ok(pending) => {
                for wake in pending {
                    worker.schedule(wake);
                }
            }
            Err(e) => warn!(error = %e, "offline push could not read its outbox"),
        }
        loop {
            self.step(&mut worker).await;
            let next = worker.next_due();
            let sleep = next.map(|due_ms| Duration::from_millis(due_ms.saturating_sub(wall_ms())));
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.ready.notified() => {
                    // Let a burst gather: one round takes in a whole fan-out, however many
                    // recipients it has, instead of a round per recipient.
                    tokio::time::sleep(GATHER).await;
                }
                Some(result) = worker.in_flight.join_next(), if !worker.in_flight.is_empty() => {
                    if let Ok(result) = result {
                        worker.results.push(result);
                    }
                    // Let the attempts finishing about now come in too: their outbox rows are
                    // settled in one write rather than one write each.
                    tokio::time::sleep(SETTLE_GATHER).await;
                }
                _ = tokio::time::sleep(sleep.unwrap_or(Duration::from_secs(3600))), if sleep.is_some() => {}
            }
        }
        // Attempts in flight are dropped: their outbox rows stay for the next start.
        worker.in_flight.abort_all();
    }

    /// Loads the clients with targets, the outbox, and what a crash may have left unannounced.
    async fn start_up(&self) -> Result<Vec<PendingWake>, ServiceError> {
        for client in self.store.clients_with_push_targets().await? {
            self.set_registered(&client, true);
        }
        let pending = self.store.pending_wakes().await?;
        let unannounced = self.store.unannounced_queues().await?;
        if !pending.is_empty() || !unannounced.is_empty() {
            info!(
                pending = pending.len(),
                unannounced = unannounced.len(),
                "offline push resumes its wake-ups"
            );
        }
        self.enqueue_wakes(unannounced.iter().map(|queue| (&queue.client, queue.seq)));
        Ok(pending)
    }

    /// One round of the worker: results in, inbox in, due wake-ups out.
    async fn step(&self, worker: &mut Worker) {
        while let Some(Ok(result)) = worker.in_flight.try_join_next() {
            worker.results.push(result);
        }
        let now = wall_ms();
        let mut finished = Vec::new();
        for (wake, outcome) in std::mem::take(&mut worker.results) {
            finished.push(self.settle(worker, wake, outcome, now));
        }

        let inbox = std::mem::take(&mut *self.lock_inbox());
        let interval = u64::try_from(self.config.wake_interval.as_millis()).unwrap_or(u64::MAX);
        let mut cancelled = Vec::new();
        for client in inbox.caught_up {
            worker.gates.remove(&client);
            if worker.drop_client(&client) {
                cancelled.push(client);
            }
        }
        let mut to_schedule: Vec<QueueSeq> = Vec::new();
        for (client, seq) in inbox.wake {
            // A client within its window is only noted (the common case in a burst: no
            // session lookup); one outside it is woken unless it connected meanwhile.
            if let Some(gate) = worker.gates.get_mut(&client) {
                if now < gate.opened_ms.saturating_add(interval) {
                    gate.deferred = Some(gate.deferred.unwrap_or(0).max(seq));
                    continue;
                }
            }
            if self.is_connected(&client) {
                continue;
            }
            worker.open_gate(client.clone(), now, interval);
            to_schedule.push(QueueSeq { client, seq });
        }
        // Windows that ended: their coalesced messages are announced if the client stayed away.
        while let Some(client) = worker.pop_ended_gate(now, interval) {
            let deferred = worker
                .gates
                .get_mut(&client)
                .and_then(|gate| gate.deferred.take());
            match deferred {
                Some(seq) if !self.is_connected(&client) => {
                    worker.open_gate(client.clone(), now, interval);
                    to_schedule.push(QueueSeq { client, seq });
                }
                _ => {
                    worker.gates.remove(&client);
                }
            }
        }

        if !finished.is_empty() {
            if let Err(e) = self.store.finish_wakes(finished).await {
                warn!(error = %e, "offline push could not record its deliveries");
            }
        }
        for client in cancelled {
            if let Err(e) = self.store.cancel_wakes(&client).await {
                warn!(error = %e, "offline push could not cancel wake-ups");
            }
        }
        if !to_schedule.is_empty() {
            let clients: Vec<ClientId> = to_schedule
                .iter()
                .map(|queue| queue.client.clone())
                .collect();
            match self.store.schedule_wakes(to_schedule, now).await {
                Ok(pending) => {
                    let woken: HashSet<&ClientId> =
                        pending.iter().map(|wake| &wake.client).collect();
                    // A client whose targets went meanwhile (removed, deleted) is forgotten.
                    for client in clients.iter().filter(|client| !woken.contains(client)) {
                        self.set_registered(client, false);
                    }
                    for wake in pending {
                        worker.schedule(wake);
                    }
                }
                Err(e) => warn!(error = %e, "offline push could not schedule wake-ups"),
            }
        }
        self.launch_due(worker).await;
        self.forget_gone_targets(worker).await;
    }

    /// Starts the attempts that are due, up to [`MAX_IN_FLIGHT`].
    async fn launch_due(&self, worker: &mut Worker) {
        let now = wall_ms();
        let mut cancelled = Vec::new();
        while worker.in_flight.len() < MAX_IN_FLIGHT {
            let Some(key) = worker.pop_due(now) else {
                break;
            };
            let Some(wake) = worker.pending.get(&key) else {
                continue;
            };
            if self.is_connected(&wake.client) {
                // It is reading its queue now: the wake-up is moot.
                worker.pending.remove(&key);
                cancelled.push(key.finished(WakeResult::Done));
                continue;
            }
            let wake = wake.clone();
            worker.sending.insert(key);
            let delivery = self.delivery.clone();
            worker.in_flight.spawn(async move {
                let outcome = delivery.deliver(&wake.target.target, wake.seq).await;
                (wake, outcome)
            });
        }
        if !cancelled.is_empty() {
            if let Err(e) = self.store.finish_wakes(cancelled).await {
                warn!(error = %e, "offline push could not record its deliveries");
            }
        }
    }

    /// What an attempt's outcome does to its wake-up: the outbox change to record.
    fn settle(
        &self,
        worker: &mut Worker,
        wake: PendingWake,
        outcome: DeliveryOutcome,
        now: u64,
    ) -> WakeFinished {
        use std::sync::atomic::Ordering::Relaxed;
        let key = TargetKey::of(&wake);
        worker.sending.remove(&key);
        let client = || {
            let user_id = wake.client.user_id.as_str();
            format!("{}/{}", Escaped(user_id), wake.client.device_id)
        };
        let result = match outcome {
            DeliveryOutcome::Delivered => {
                self.stats.delivered.fetch_add(1, Relaxed);
                debug!(client = %client(), "woken");
                WakeResult::Done
            }
            DeliveryOutcome::Gone(reason) => {
                self.stats.targets_gone.fetch_add(1, Relaxed);
                info!(client = %client(), %reason, "push target gone; forgotten");
                WakeResult::TargetGone
            }
            DeliveryOutcome::Refused(reason) => {
                self.stats.failed_attempts.fetch_add(1, Relaxed);
                warn!(client = %client(), %reason, "wake-up refused by the push service");
                WakeResult::Done
            }
            DeliveryOutcome::Retry { reason, after } => {
                self.stats.failed_attempts.fetch_add(1, Relaxed);
                let attempts = wake.attempts.saturating_add(1);
                if attempts >= MAX_ATTEMPTS {
                    warn!(client = %client(), %reason, attempts, "wake-up given up");
                    WakeResult::Done
                } else {
                    let backoff = after.unwrap_or_else(|| {
                        Duration::from_secs(1u64 << attempts.min(20)).min(MAX_BACKOFF)
                    });
                    let due_ms = now + u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
                    debug!(client = %client(), %reason, attempts, "wake-up will be retried");
                    WakeResult::Retry { due_ms, attempts }
                }
            }
        };
        match result {
            WakeResult::Retry { due_ms, attempts } => {
                let mut retried = wake.clone();
                retried.due_ms = due_ms;
                retried.attempts = attempts;
                // Retried only while still wanted: the client may have caught up (or been
                // removed) during the attempt. A newer sequence number goes with the retry.
                if let Some(known) = worker.pending.get(&key) {
                    retried.seq = retried.seq.max(known.seq);
                    worker.schedule(retried);
                }
            }
            WakeResult::Done if worker.pending.get(&key).is_some_and(|w| w.seq > wake.seq) => {
                // Something newer was scheduled while this attempt was out: it is still due.
                if let Some(newer) = worker.pending.get(&key).cloned() {
                    worker.schedule(newer);
                }
                return key.finished(WakeResult::Retry {
                    due_ms: now,
                    attempts: 0,
                });
            }
            WakeResult::Done | WakeResult::TargetGone => {
                worker.pending.remove(&key);
            }
        }
        if result == WakeResult::TargetGone {
            worker.targets_gone.push(wake.client.clone());
        }
        key.finished(result)
    }

    /// After targets went: forget clients left without any.
    async fn forget_gone_targets(&self, worker: &mut Worker) {
        for client in std::mem::take(&mut worker.targets_gone) {
            self.refresh_registered(&client).await;
        }
    }
}

/// One client's coalescing window.
struct Gate {
    /// When the last wake-up was scheduled (Unix ms).
    opened_ms: u64,
    /// The newest sequence number of what came during the window, to announce at its end.
    deferred: Option<u64>,
}

/// The worker's own state: never shared, never locked.
#[derive(Default)]
pub(super) struct Worker {
    /// Wake-ups waiting (for their due time, or for an attempt in flight).
    pending: HashMap<TargetKey, PendingWake>,
    /// (due, key), soonest first; entries whose wake-up moved on are skipped.
    due: BinaryHeap<std::cmp::Reverse<(u64, TargetKey)>>,
    /// Targets with an attempt in flight.
    sending: HashSet<TargetKey>,
    gates: HashMap<ClientId, Gate>,
    /// (end of window, client), soonest first; entries of windows reopened since are skipped.
    gate_ends: BinaryHeap<std::cmp::Reverse<(u64, ClientId)>>,
    in_flight: JoinSet<(PendingWake, DeliveryOutcome)>,
    results: Vec<(PendingWake, DeliveryOutcome)>,
    targets_gone: Vec<ClientId>,
}

impl Worker {
    fn schedule(&mut self, wake: PendingWake) {
        let key = TargetKey::of(&wake);
        self.due.push(std::cmp::Reverse((wake.due_ms, key.clone())));
        self.pending.insert(key, wake);
    }

    /// The next wake-up due by `now` that is not being sent.
    fn pop_due(&mut self, now: u64) -> Option<TargetKey> {
        let (pending, sending) = (&self.pending, &self.sending);
        pop_current(&mut self.due, now, |due_ms, key| {
            let current = pending.get(key).is_some_and(|wake| wake.due_ms == due_ms);
            current && !sending.contains(key)
        })
    }

    /// When the worker must look again: the soonest wake-up or end of a coalescing window.
    fn next_due(&self) -> Option<u64> {
        let wake = self
            .due
            .peek()
            .map(|std::cmp::Reverse((due_ms, _))| *due_ms);
        let window = self
            .gate_ends
            .peek()
            .map(|std::cmp::Reverse((end_ms, _))| *end_ms);
        wake.into_iter().chain(window).min()
    }

    /// Opens (or reopens) `client`'s coalescing window at `now`.
    fn open_gate(&mut self, client: ClientId, now: u64, interval: u64) {
        let end = now.saturating_add(interval);
        self.gate_ends
            .push(std::cmp::Reverse((end, client.clone())));
        self.gates.insert(
            client,
            Gate {
                opened_ms: now,
                deferred: None,
            },
        );
    }

    /// A client whose window ended by `now` (each window once).
    fn pop_ended_gate(&mut self, now: u64, interval: u64) -> Option<ClientId> {
        let gates = &self.gates;
        pop_current(&mut self.gate_ends, now, |end_ms, client| {
            gates
                .get(client)
                .is_some_and(|gate| gate.opened_ms.saturating_add(interval) == end_ms)
        })
    }

    /// Forgets a client's pending wake-ups; whether it had any.
    fn drop_client(&mut self, client: &ClientId) -> bool {
        let before = self.pending.len();
        self.pending.retain(|key, _| key.client != *client);
        before != self.pending.len()
    }
}

/// Pops the soonest entry of `heap` due by `now` that `current` still wants, skipping (and
/// dropping) those it does not: entries are never updated in place, only superseded.
fn pop_current<K: Ord>(
    heap: &mut BinaryHeap<std::cmp::Reverse<(u64, K)>>,
    now: u64,
    current: impl Fn(u64, &K) -> bool,
) -> Option<K> {
    while heap
        .peek()
        .is_some_and(|std::cmp::Reverse((due, _))| *due <= now)
    {
        let std::cmp::Reverse((due, key)) = heap.pop()?;
        if current(due, &key) {
            return Some(key);
        }
    }
    None
}

/// The sessions the services use: the transport's, plus offline push for clients that have no
/// connection when something is queued for them.
pub struct PushingSessions {
    pub inner: Arc<dyn Sessions>,
    pub push: Arc<Push>,
}

impl Sessions for PushingSessions {
    fn notify(&self, client: &ClientId, notification: &Notification) -> usize {
        self.inner.notify(client, notification)
    }

    fn disconnect(&self, client: &ClientId) {
        // Only a removed client is disconnected: its wake-ups go with it.
        self.push.forget(client);
        self.inner.disconnect(client)
    }

    fn connections(&self) -> &dyn super::Connections {
        self.inner.connections()
    }

    fn new_message(&self, client: &ClientId, message: &PushedMessage) -> usize {
        let reached = self.inner.new_message(client, message);
        if reached == 0 {
            self.push.wake(client, message.seq);
        }
        reached
    }

    fn log_appended(&self, readers: &[&ClientId], group_id: &Arc<[u8]>, message: &PushedMessage) {
        self.inner.log_appended(readers, group_id, message);
        self.push.wake_readers(readers);
    }
}
