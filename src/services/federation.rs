//! Federation, outgoing side: this homeserver as a client of its peers. Connections to each peer
//! are made on demand (mutual TLS, ALPN `roost-fed/1`), identified once, cached and reused; a
//! request to a peer that cannot be reached fails with `PeerUnavailable`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tls_codec::Deserialize;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::ServiceError;
use crate::clock::UnixTime;
use crate::config::{Domain, FederationConfig};
use crate::protocol::{
    decode_federation_response, encode_federation_request, CredentialVerifyingKey,
    DeliverBatchRequest, DeliverRequest, FederationRequest, FederationResponse,
    FederationResponseBody, IdentifyRequest, ALPN_FEDERATION, MAX_DELIVERIES_PER_BATCH,
    MAX_REQUEST_LEN, MAX_RESPONSE_LEN,
};
use crate::store::Store;
use crate::tls::{self, TlsIdentity};

/// How long connecting to a peer may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer connection may be silent before it counts as dead.
const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle peer connection proves it is alive.
const PEER_KEEP_ALIVE: Duration = Duration::from_millis(500);
/// Delivery bytes sent in one batch at most, leaving room in the request limit for framing.
const MAX_BATCH_BYTES: usize = MAX_REQUEST_LEN - 64 * 1024;
/// How long a request to a peer may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Federation {
    domain: Domain,
    config: FederationConfig,
    endpoint: quinn::Endpoint,
    /// One slot per peer, each with its own lock: connecting to a peer that is down holds only
    /// that peer's slot, so requests to the other peers go on meanwhile.
    connections: Mutex<HashMap<String, Arc<Mutex<PeerSlot>>>>,
    /// Peers' credential-verifying keys, with when they were fetched.
    domain_keys: Mutex<HashMap<String, (std::time::Instant, Vec<CredentialVerifyingKey>)>>,
    /// What each peer's outbox worker last saw, for the operator.
    progress: std::sync::Mutex<HashMap<String, OutboxProgress>>,
}

/// What the outbox worker of one peer last saw (Unix seconds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxProgress {
    pub last_delivery_at: Option<UnixTime>,
    /// When the last attempt failed, and why.
    pub last_error: Option<(UnixTime, String)>,
    /// While the peer cannot be reached: when the worker tries again.
    pub next_attempt_at: Option<UnixTime>,
}

/// What this server knows of its connection to one peer.
#[derive(Default)]
struct PeerSlot {
    connection: Option<quinn::Connection>,
    /// After a failed connection attempt: until when requests fail at once instead of each
    /// waiting out another connection timeout, and why.
    unreachable: Option<(tokio::time::Instant, Unreachable)>,
    /// The wait after the last failed attempt (doubles on each failure, reset on success).
    backoff: Option<Duration>,
}

/// Why the last connection attempt to a peer failed.
enum Unreachable {
    /// It did not answer, or the connection broke.
    Down(String),
    /// It refused our certificate, or we refused its (said to the client as it is).
    Declined(String),
}

/// How long a peer's credential-verifying keys are reused before they are fetched again.
const DOMAIN_KEYS_TTL: Duration = Duration::from_secs(300);
/// After a first failed connection attempt, how long requests to that peer fail at once (the
/// window doubles with each further failure, up to `MAX_RETRY_DELAY`).
const FIRST_UNREACHABLE_WINDOW: Duration = Duration::from_secs(1);
/// First wait before delivering again to a peer that could not be reached.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Longest wait between two attempts to deliver to an unreachable peer.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// The name of a TLS alert (RFC 8446 section 6), as the peer sent it.
fn tls_alert_name(alert: u8) -> String {
    match alert {
        42 => "bad certificate".into(),
        43 => "unsupported certificate".into(),
        44 => "certificate revoked".into(),
        45 => "certificate expired".into(),
        46 => "certificate unknown".into(),
        48 => "unknown CA".into(),
        49 => "access denied".into(),
        116 => "certificate required".into(),
        120 => "no application protocol".into(),
        other => format!("alert {other}"),
    }
}

/// How long a node's hold on a peer's outbox lasts unless renewed (each drain renews it).
const OUTBOX_LEASE: Duration = Duration::from_secs(15);

/// The lease of `peer`'s outbox.
fn outbox_lease(peer: &str) -> String {
    format!("outbox:{peer}")
}

/// Wakes the outbox workers when deliveries were committed. Every worker sees every wake, and a
/// wake that comes while a worker is busy is not lost: it finds it when it next waits.
pub type OutboxWake = Arc<OutboxSignal>;

/// The outbox workers' wake-up: this node's workers, and on a shared store the other nodes' (one
/// of which may hold a peer's outbox lease).
pub struct OutboxSignal {
    changed: tokio::sync::watch::Sender<()>,
    cluster: Option<Arc<super::cluster::ClusterSessions>>,
}

impl OutboxSignal {
    pub(crate) fn new(cluster: Option<Arc<super::cluster::ClusterSessions>>) -> Self {
        Self {
            changed: tokio::sync::watch::Sender::new(()),
            cluster,
        }
    }

    /// Deliveries were committed here: wake the workers of every node.
    pub fn wake(&self) {
        self.changed.send_replace(());
        if let Some(cluster) = &self.cluster {
            cluster.announce_outbox_work();
        }
    }

    /// Another node committed deliveries: wake this node's workers.
    pub(crate) fn wake_here(&self) {
        self.changed.send_replace(());
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<()> {
        self.changed.subscribe()
    }
}

impl Federation {
    pub fn new(
        domain: &Domain,
        config: &FederationConfig,
        identity: &TlsIdentity,
    ) -> anyhow::Result<Self> {
        let tls = tls::peer_client_config(identity, &config.trust, ALPN_FEDERATION)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // A peer that died is noticed within PEER_IDLE_TIMEOUT (not at the next request's
        // 15 s timeout): keep-alives every fraction of it keep a live connection open.
        transport
            .keep_alive_interval(Some(PEER_KEEP_ALIVE))
            .max_idle_timeout(Some(PEER_IDLE_TIMEOUT.try_into()?));
        client_config.transport_config(Arc::new(transport));
        let any_ipv6 = config.peers.values().any(SocketAddr::is_ipv6);
        let bind: SocketAddr = if any_ipv6 {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(client_config);
        Ok(Self {
            domain: domain.clone(),
            config: config.clone(),
            endpoint,
            connections: Mutex::new(HashMap::new()),
            domain_keys: Mutex::new(HashMap::new()),
            progress: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The configured peers and their addresses.
    pub fn peers(&self) -> impl Iterator<Item = (&String, &SocketAddr)> {
        self.config.peers.iter()
    }

    /// Whether this server holds an open connection to `domain` now (a peer being connected to
    /// counts as not connected).
    pub async fn connected(&self, domain: &str) -> bool {
        let Some(slot) = self.connections.lock().await.get(domain).cloned() else {
            return false;
        };
        let Ok(slot) = slot.try_lock() else {
            return false;
        };
        slot.connection
            .as_ref()
            .is_some_and(|connection| connection.close_reason().is_none())
    }

    /// What the outbox worker of `domain` last saw.
    pub fn progress(&self, domain: &str) -> OutboxProgress {
        self.progress_of(domain, |progress| progress.clone())
    }

    fn progress_of<T>(&self, domain: &str, f: impl FnOnce(&mut OutboxProgress) -> T) -> T {
        let mut progress = self
            .progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(progress.entry(domain.to_owned()).or_default())
    }

    /// Whether `domain` is a peer this server can reach.
    pub fn knows(&self, domain: &str) -> bool {
        self.config.peers.contains_key(domain)
    }

    /// Sends `request` to the homeserver of `domain` and returns its answer. The peer's own
    /// refusals come back as `ServiceError::Peer` with the peer's code and message.
    pub async fn request(
        &self,
        domain: &str,
        request: &FederationRequest,
    ) -> Result<FederationResponseBody, ServiceError> {
        let connection = self.connection(domain).await?;
        match self.exchange(&connection, request).await {
            Ok(body) => Ok(body),
            Err(ServiceError::PeerUnavailable(reason)) => {
                // The cached connection may have died: forget it so the next request reconnects.
                self.slot(domain).await.lock().await.connection = None;
                Err(ServiceError::PeerUnavailable(reason))
            }
            Err(other) => Err(other),
        }
    }

    /// The connection slot of peer `domain`.
    async fn slot(&self, domain: &str) -> Arc<Mutex<PeerSlot>> {
        self.connections
            .lock()
            .await
            .entry(domain.to_owned())
            .or_default()
            .clone()
    }

    async fn connection(&self, domain: &str) -> Result<quinn::Connection, ServiceError> {
        // Checked first, so that only configured peers ever get a slot.
        let address = *self
            .config
            .peers
            .get(domain)
            .ok_or_else(|| ServiceError::PeerUnavailable(format!("{domain} is not a peer")))?;
        let slot = self.slot(domain).await;
        let mut slot = slot.lock().await;
        if let Some(connection) = &slot.connection {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        if let Some((until, reason)) = &slot.unreachable {
            let now = tokio::time::Instant::now();
            if now < *until {
                return Err(match reason {
                    Unreachable::Declined(text) => ServiceError::PeerDeclined(text.clone()),
                    Unreachable::Down(text) => ServiceError::PeerUnavailable(format!(
                        "{domain}: {text}; next attempt in {:.1} s",
                        (*until - now).as_secs_f64()
                    )),
                });
            }
        }
        match self.connect(domain, address).await {
            Ok(connection) => {
                *slot = PeerSlot {
                    connection: Some(connection.clone()),
                    ..PeerSlot::default()
                };
                Ok(connection)
            }
            Err(e @ (ServiceError::PeerUnavailable(_) | ServiceError::PeerDeclined(_))) => {
                let backoff = slot
                    .backoff
                    .map_or(FIRST_UNREACHABLE_WINDOW, |d| (d * 2).min(MAX_RETRY_DELAY));
                slot.backoff = Some(backoff);
                let (reason, error) = match e {
                    ServiceError::PeerDeclined(text) => (
                        Unreachable::Declined(text.clone()),
                        ServiceError::PeerDeclined(text),
                    ),
                    other => {
                        let text = match other {
                            ServiceError::PeerUnavailable(text) => text,
                            other => other.to_string(),
                        };
                        (
                            Unreachable::Down(text.clone()),
                            ServiceError::PeerUnavailable(format!("{domain}: {text}")),
                        )
                    }
                };
                slot.unreachable = Some((tokio::time::Instant::now() + backoff, reason));
                Err(error)
            }
            // The peer answered and refused us: nothing to wait out, it is told as it is.
            Err(refused) => Err(refused),
        }
    }

    /// Connects to `domain`'s homeserver at `address` and identifies this server.
    async fn connect(
        &self,
        domain: &str,
        address: SocketAddr,
    ) -> Result<quinn::Connection, ServiceError> {
        let unreachable = |e: String| ServiceError::PeerUnavailable(e);
        let connecting = self
            .endpoint
            .connect(address, domain)
            .map_err(|e| unreachable(e.to_string()))?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| unreachable("connection timed out".into()))?
            .map_err(|e| {
                self.handshake_failure(domain, &e)
                    .unwrap_or_else(|| unreachable(e.to_string()))
            })?;
        let identify = FederationRequest::Identify(IdentifyRequest {
            domain: self.domain.to_text(),
        });
        match self.exchange(&connection, &identify).await {
            Ok(FederationResponseBody::Identified) => Ok(connection),
            Ok(other) => Err(unreachable(format!("unexpected answer {other:?}"))),
            // In TLS 1.3 the peer checks our certificate after our side of the handshake is
            // done: its refusal closes the connection under the first request.
            Err(e) => Err(connection
                .close_reason()
                .and_then(|reason| self.handshake_failure(domain, &reason))
                .unwrap_or(e)),
        }
    }

    /// A TLS refusal, in words the operator can act on: `domain` refused our certificate (its
    /// alert), or we refused its.
    fn handshake_failure(
        &self,
        domain: &str,
        error: &quinn::ConnectionError,
    ) -> Option<ServiceError> {
        let crypto_alert = |code: quinn::TransportErrorCode| {
            let code = u64::from(code);
            (0x100..0x200).contains(&code).then(|| (code - 0x100) as u8)
        };
        match error {
            quinn::ConnectionError::ConnectionClosed(close) => {
                let alert = crypto_alert(close.error_code)?;
                tracing::warn!(
                    peer = domain,
                    alert = tls_alert_name(alert),
                    "a peer homeserver refused this server's certificate"
                );
                Some(ServiceError::PeerDeclined(format!(
                    "{domain} refused this server's connection (TLS alert: {}): its operator must accept {} as a peer (--peer or --federation open) and trust its certificate (--peer-ca or --peer-cert)",
                    tls_alert_name(alert),
                    self.domain
                )))
            }
            quinn::ConnectionError::TransportError(e) => {
                crypto_alert(e.code)?;
                tracing::warn!(peer = domain, error = %e, "the certificate of a peer homeserver is not trusted here");
                Some(ServiceError::PeerDeclined(format!(
                    "this server does not trust the certificate of {domain} (check --peer-ca or --peer-cert)"
                )))
            }
            _ => None,
        }
    }

    async fn exchange(
        &self,
        connection: &quinn::Connection,
        request: &FederationRequest,
    ) -> Result<FederationResponseBody, ServiceError> {
        let unreachable = |e: String| ServiceError::PeerUnavailable(e);
        let bytes = encode_federation_request(request).map_err(|e| unreachable(e.to_string()))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(&bytes).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            recv.read_to_end(MAX_RESPONSE_LEN)
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|_| unreachable("the peer did not answer in time".into()))?
        .map_err(unreachable)?;
        match decode_federation_response(&response).map_err(|e| unreachable(e.to_string()))? {
            FederationResponse::Ok(body) => Ok(body),
            FederationResponse::Error(error) => Err(ServiceError::Peer(error)),
        }
    }

    /// The credential-verifying keys of peer `domain` (cached for a while).
    pub async fn domain_keys(
        &self,
        domain: &str,
    ) -> Result<Vec<CredentialVerifyingKey>, ServiceError> {
        if let Some((fetched, keys)) = self.domain_keys.lock().await.get(domain) {
            if fetched.elapsed() < DOMAIN_KEYS_TTL {
                return Ok(keys.clone());
            }
        }
        match self
            .request(domain, &FederationRequest::GetDomainKeys)
            .await?
        {
            FederationResponseBody::DomainKeys(body) if body.domain.as_str() == domain => {
                self.domain_keys.lock().await.insert(
                    domain.to_owned(),
                    (std::time::Instant::now(), body.keys.clone()),
                );
                Ok(body.keys)
            }
            other => Err(ServiceError::PeerUnavailable(format!(
                "{domain} answered {other:?} for its keys"
            ))),
        }
    }

    /// Sends the outbox until `stop`: one worker per peer, so a peer that is down delays no
    /// other. Each sends its peer's deliveries in order and removes each once the peer
    /// acknowledged it; while the peer cannot be reached it retries with growing delays.
    pub async fn run_outbox(
        &self,
        store: Store,
        wake: &OutboxWake,
        node: u64,
        stop: CancellationToken,
    ) {
        match store.outbox_backlog().await {
            Ok(backlog) => {
                for (peer, waiting) in backlog.iter().filter(|(peer, _)| !self.knows(peer)) {
                    tracing::warn!(%peer, waiting, "deliveries wait for a domain that is no longer a peer (--peer)");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
        }
        let workers = self
            .config
            .peers
            .keys()
            .map(|peer| self.run_peer_outbox(&store, peer, node, wake.subscribe(), &stop));
        futures::future::join_all(workers).await;
        if store.is_shared() {
            // Give the leases up, so that another node takes the outboxes over at once.
            for peer in self.config.peers.keys() {
                let _ = store.release_lease(&outbox_lease(peer), node).await;
            }
        }
    }

    /// The outbox worker of `peer`: drains, then waits to be woken; after a failure, waits
    /// `FIRST_RETRY_DELAY`, doubling up to `MAX_RETRY_DELAY`.
    ///
    /// On a shared store, the node holding the peer's outbox lease drains it; the others wait to
    /// be woken or for the lease to run out (its holder stopped renewing it).
    async fn run_peer_outbox(
        &self,
        store: &Store,
        peer: &str,
        node: u64,
        mut wake: tokio::sync::watch::Receiver<()>,
        stop: &CancellationToken,
    ) {
        let mut retry_delay: Option<Duration> = None;
        let lease = outbox_lease(peer);
        loop {
            // Marked seen before draining: a wake that comes during the drain is kept for later.
            wake.borrow_and_update();
            let Some(fence) =
                super::leases::hold(store, node, &lease, OUTBOX_LEASE.as_millis() as u64).await
            else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    woken = wake.changed() => if woken.is_err() { return },
                    _ = tokio::time::sleep(OUTBOX_LEASE) => {}
                }
                continue;
            };
            // Stopping mid-delivery is safe: a delivery not yet marked done is sent again at
            // the next start, and the peer stores it once (delivery ids).
            let drained = tokio::select! {
                _ = stop.cancelled() => return,
                drained = self.drain_peer(store, peer, fence.as_ref()) => drained,
            };
            match drained {
                Ok(()) => {
                    retry_delay = None;
                    self.progress_of(peer, |progress| progress.next_attempt_at = None);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        woken = wake.changed() => if woken.is_err() { return },
                    }
                }
                Err(e) => {
                    let delay =
                        retry_delay.map_or(FIRST_RETRY_DELAY, |d| (d * 2).min(MAX_RETRY_DELAY));
                    retry_delay = Some(delay);
                    let waiting = store.outbox_backlog().await.ok().and_then(|backlog| {
                        backlog.into_iter().find(|(p, _)| p == peer).map(|(_, n)| n)
                    });
                    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
                    self.progress_of(peer, |progress| {
                        progress.last_error = Some((now, e.to_string()));
                        progress.next_attempt_at = Some(now + delay.as_secs().max(1));
                    });
                    tracing::warn!(%peer, waiting, error = %crate::escape::Escaped(&e), retry_in = ?delay, "the peer did not take a delivery; deliveries wait in the outbox");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Sends everything waiting for `peer`, in order, in batches (`DeliverBatch`: one round trip
    /// and one commit on each side for up to `MAX_DELIVERIES_PER_BATCH` deliveries), removing
    /// what the peer acknowledged. A peer that does not know batches gets one `Deliver` each.
    ///
    /// On a shared store `fence` is the outbox lease this drain runs under: it is renewed before
    /// each batch, and the drain stops once the lease is lost or changed hands; removals are
    /// fenced in their own transaction. (A batch sent in the instant after a renewal by a node
    /// that then lost the lease reaches the peer twice at most, and the peer stores it once.)
    async fn drain_peer(
        &self,
        store: &Store,
        peer: &str,
        fence: Option<&crate::store::LeaseFence>,
    ) -> Result<(), ServiceError> {
        let mut batches = true;
        loop {
            if let Some(fence) = fence {
                let renewed = super::leases::hold(
                    store,
                    fence.holder,
                    &fence.lease,
                    OUTBOX_LEASE.as_millis() as u64,
                )
                .await;
                if renewed.as_ref().and_then(Option::as_ref) != Some(fence) {
                    tracing::info!(%peer, "this node no longer holds the peer's outbox lease; it stops draining");
                    return Ok(());
                }
            }
            let max_count = if batches { MAX_DELIVERIES_PER_BATCH } else { 1 };
            let waiting = store.outbox_first(peer, max_count, MAX_BATCH_BYTES).await?;
            if waiting.is_empty() {
                return Ok(());
            }
            let mut deliveries = Vec::with_capacity(waiting.len());
            for (_, bytes) in &waiting {
                deliveries.push(
                    DeliverRequest::tls_deserialize_exact(bytes.as_slice()).map_err(|e| {
                        ServiceError::Store(crate::store::StoreError::Corrupt(e.to_string()))
                    })?,
                );
            }
            let (accepted, refusal) = if batches {
                let batch = FederationRequest::DeliverBatch(DeliverBatchRequest { deliveries });
                match self.request(peer, &batch).await {
                    Ok(FederationResponseBody::DeliveredBatch(answer)) => {
                        (answer.accepted as usize, answer.refusal)
                    }
                    Err(ServiceError::Peer(refusal))
                        if refusal.code() == crate::protocol::ErrorCode::UnknownOperation =>
                    {
                        tracing::info!(%peer, "the peer does not take delivery batches; sending one delivery at a time");
                        batches = false;
                        continue;
                    }
                    Ok(other) => {
                        return Err(ServiceError::PeerUnavailable(format!("answered {other:?}")))
                    }
                    Err(e) => return Err(e),
                }
            } else {
                let delivery = deliveries.into_iter().next().expect("one delivery waits");
                match self
                    .request(peer, &FederationRequest::Deliver(delivery))
                    .await
                {
                    Ok(FederationResponseBody::Delivered) => (1, None),
                    Err(ServiceError::Peer(refusal)) => (0, Some(refusal)),
                    Ok(other) => {
                        return Err(ServiceError::PeerUnavailable(format!("answered {other:?}")))
                    }
                    Err(e) => return Err(e),
                }
            };
            if accepted > waiting.len() || (accepted < waiting.len() && refusal.is_none()) {
                return Err(ServiceError::PeerUnavailable(format!(
                    "accepted {accepted} of a batch of {} without saying why not the rest",
                    waiting.len()
                )));
            }
            if accepted > 0 {
                let now = crate::clock::Clock::now(&crate::clock::SystemClock);
                self.progress_of(peer, |progress| progress.last_delivery_at = Some(now));
            }
            let mut done: Vec<u64> = waiting[..accepted].iter().map(|(seq, _)| *seq).collect();
            let mut retry_later = None;
            if let Some(refusal) = refusal {
                // Refused for good by the specification's classification (not a transient
                // failure, nor a full queue the peer wants us to keep it for): drop it, loudly.
                if refusal.code().retry() == crate::protocol::Retry::Never {
                    tracing::error!(%peer, refusal = %crate::escape::Escaped(&refusal), "a peer refused a delivery for good; dropping it");
                    done.push(waiting[accepted].0);
                } else {
                    retry_later = Some(ServiceError::Peer(refusal));
                }
            }
            let now_ms = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
            if !store
                .outbox_done(peer, done, fence.cloned(), now_ms)
                .await?
            {
                tracing::info!(%peer, "the peer's outbox lease changed hands during a delivery; the new holder goes on");
                return Ok(());
            }
            if let Some(refusal) = retry_later {
                return Err(refusal);
            }
        }
    }

    /// Closes the connections to peers (on shutdown).
    pub fn close(&self) {
        self.endpoint.close(
            crate::protocol::close_code::SHUTTING_DOWN.into(),
            b"shutting down",
        );
    }
}
