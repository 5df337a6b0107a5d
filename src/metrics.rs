//! Metrics for Prometheus: what the server counts as it works (requests, latencies, connections,
//! refusals, commits) and what it reads at each scrape (users, queues, outboxes, push), served in
//! the OpenMetrics text format on `--metrics-listen` with `/health` beside it.
//!
//! Counting on the hot path is a few atomic adds (prometheus-client families, labels that are
//! `Copy` enums encoded only at scrape). Everything that needs the store is read when scraped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::protocol::{ErrorCode, Operation};
use crate::rate_limit::{ConnectionSlots, Source};
use crate::services::Services;

/// Connections held at once, in all and per source (an IPv4 address or IPv6 /64). Past either,
/// a new connection is closed as soon as it is accepted: the listener never stops accepting,
/// so connections that send their request slowly cannot keep a scraper waiting in the
/// backlog, and one source cannot take every slot.
const MAX_CONNECTIONS: usize = 512;
const MAX_CONNECTIONS_PER_SOURCE: usize = 8;
/// A scrape's request headers must arrive within this, and its whole exchange end within
/// [`SCRAPE_DEADLINE`]: a slow sender or a reader that never reads holds its slot no longer.
const SCRAPE_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const SCRAPE_DEADLINE: Duration = Duration::from_secs(15);
/// Answers rendered at once (each reads the store).
const MAX_RENDERS: usize = 4;

/// An operation, as a label value (its name).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct OperationLabel(pub Operation);

impl EncodeLabelValue for OperationLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(encoder, "{:?}", self.0)
    }
}

/// How a request ended: `ok` or its error code's name.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error(ErrorCode),
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Self::Ok => encoder.write_str("ok"),
            Self::Error(ErrorCode::Unknown(code)) => write!(encoder, "error_{code}"),
            Self::Error(code) => write!(encoder, "{code:?}"),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub operation: OperationLabel,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: OperationLabel,
}

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum PeerKind {
    Client,
    Peer,
}

impl EncodeLabelValue for PeerKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Client => "client",
            Self::Peer => "peer",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: PeerKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// What the transport counts as it works. Cheap to clone (shared counters).
#[derive(Clone, Debug)]
pub struct TransportMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<OperationLabels, Histogram>,
    pub connections_open: Family<KindLabels, Gauge>,
    pub connections_accepted: Family<KindLabels, Counter>,
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// Client connections by the protocol version their handshake chose (when to retire one).
    pub client_connections: Family<VersionLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: u16,
}

impl Default for TransportMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            // 100 µs to ~6.5 s.
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
            }),
            connections_open: Family::default(),
            connections_accepted: Family::default(),
            connections_refused: Family::default(),
            client_connections: Family::default(),
        }
    }
}

impl TransportMetrics {
    /// Counts one answered request and its time.
    pub fn request(&self, operation: Operation, outcome: Outcome, took: Duration) {
        let operation = OperationLabel(operation);
        self.requests
            .get_or_create(&RequestLabels { operation, outcome })
            .inc();
        self.request_seconds
            .get_or_create(&OperationLabels { operation })
            .observe(took.as_secs_f64());
    }

    /// Counts an open connection until the returned guard is dropped.
    pub fn connection(&self, kind: PeerKind) -> ConnectionGuard {
        let labels = KindLabels { kind };
        self.connections_accepted.get_or_create(&labels).inc();
        let open = self.connections_open.get_or_create(&labels).clone();
        open.inc();
        ConnectionGuard(open)
    }

    /// Counts a client connection of `version`.
    pub fn client_version(&self, version: crate::protocol::Version) {
        self.client_connections
            .get_or_create(&VersionLabels {
                version: version.number(),
            })
            .inc();
    }

    pub fn refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

/// Keeps a connection counted in `roost_connections_open`.
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The registry: the transport's counters, the store's histograms and the values read at each
/// scrape.
pub struct Metrics {
    registry: Registry,
    scraped: Arc<ScrapedValues>,
    services: Arc<Services>,
}

impl Metrics {
    pub fn new(services: Arc<Services>, transport: &TransportMetrics) -> Self {
        let mut registry = Registry::with_prefix("roost");
        let stats = services.store().stats();
        // Each metric: its name, the handle the registry encodes, and its help text.
        macro_rules! register {
            ($($name:literal => $metric:expr, $help:literal;)*) => {
                $(registry.register($name, $help, $metric.clone());)*
            };
        }
        register! {
            "requests" => transport.requests,
                "Client requests answered, by operation and outcome (ok or the error code)";
            "request_duration_seconds" => transport.request_seconds,
                "Time from a client request's arrival to its answer, by operation";
            "connections_open" => transport.connections_open,
                "QUIC connections open now, clients and peer homeservers";
            "connections_accepted" => transport.connections_accepted,
                "QUIC connections accepted (handshake completed)";
            "client_connections" => transport.client_connections,
                "Client connections accepted, by the protocol version they speak (1: roost/1, 2: roost/2)";
            "connections_refused" => transport.connections_refused,
                "Connections refused by a limit, by reason";
            "store_commit_writes" => stats.batch_writes,
                "Writes per committed store transaction (group-commit batch size)";
            "store_commit_duration_seconds" => stats.commit_seconds,
                "Time each store commit took";
        }
        let scraped = Arc::new(ScrapedValues::default());
        registry.register_collector(Box::new(scraped.clone()));
        Self {
            registry,
            scraped,
            services,
        }
    }

    /// The metrics in the OpenMetrics text format, with the store's values read now.
    pub async fn render(&self) -> String {
        let values = read_values(&self.services).await;
        *self
            .scraped
            .values
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = values;
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            warn!("encoding the metrics failed");
        }
        text
    }

    /// Whether the server can serve: its store answers a read.
    pub async fn healthy(&self) -> bool {
        self.services.store().bound_domain().await.is_ok()
    }
}

/// One value read at scrape time.
#[derive(Clone, Debug)]
struct Value {
    name: &'static str,
    help: &'static str,
    counter: bool,
    labels: Vec<(&'static str, String)>,
    value: f64,
}

/// The values of the last scrape, encoded by the registry as a collector.
#[derive(Debug, Default)]
struct ScrapedValues {
    values: Mutex<Vec<Value>>,
}

impl Collector for ScrapedValues {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let values = self
            .values
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut index = 0;
        while index < values.len() {
            // Values of one name are consecutive: one descriptor, one sample per label set.
            let first = &values[index];
            let same = values[index..]
                .iter()
                .take_while(|value| value.name == first.name)
                .count();
            let kind = if first.counter {
                prometheus_client::metrics::MetricType::Counter
            } else {
                prometheus_client::metrics::MetricType::Gauge
            };
            let mut family = encoder.encode_descriptor(first.name, first.help, None, kind)?;
            for value in &values[index..index + same] {
                let labels: Vec<(&str, &str)> = value
                    .labels
                    .iter()
                    .map(|(key, label)| (*key, label.as_str()))
                    .collect();
                let sample = family.encode_family(&labels)?;
                if value.counter {
                    ConstCounter::new(value.value).encode(sample)?;
                } else {
                    ConstGauge::new(value.value).encode(sample)?;
                }
            }
            index += same;
        }
        Ok(())
    }
}

/// Reads what the scrape reports from the store and the services.
async fn read_values(services: &Services) -> Vec<Value> {
    let mut values = Values::default();
    store_gauges(services, &mut values).await;
    values.gauge(
        "connected_clients",
        "Clients with at least one authenticated connection",
        vec![],
        services.connected_clients() as f64,
    );
    federation_gauges(services, &mut values).await;
    counters(services, &mut values);
    values.0
}

/// The values of one scrape, as they are read.
#[derive(Default)]
struct Values(Vec<Value>);

impl Values {
    fn gauge(&mut self, name: &'static str, help: &'static str, labels: Labels, value: f64) {
        self.0.push(Value {
            name,
            help,
            counter: false,
            labels,
            value,
        })
    }

    fn counter(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.0.push(Value {
            name,
            help,
            counter: true,
            labels: vec![],
            value: value as f64,
        })
    }
}

type Labels = Vec<(&'static str, String)>;

/// What the store holds: users, clients, groups, queued messages, the file's size.
async fn store_gauges(services: &Services, values: &mut Values) {
    let store = services.store();
    match store.counts().await {
        Ok(counts) => {
            let counted = [
                ("users", "Registered users", counts.users),
                ("clients", "Registered clients (devices)", counts.clients),
                ("groups", "Groups hosted here", counts.groups),
                (
                    "queued_messages",
                    "Messages waiting in client queues",
                    counts.queued_messages,
                ),
                (
                    "queued_bytes",
                    "Payload bytes waiting in client queues",
                    counts.queued_bytes,
                ),
            ];
            for (name, help, count) in counted {
                values.gauge(name, help, vec![], count as f64);
            }
        }
        Err(e) => debug!("metrics: the store's counts are unavailable: {e}"),
    }
    values.gauge(
        "store_file_bytes",
        "Size of the database file",
        vec![],
        store.stored_bytes().await as f64,
    );
}

/// Per peer homeserver: what waits in the outbox for it, and how its connection fares.
async fn federation_gauges(services: &Services, values: &mut Values) {
    let Some(federation) = services.federation() else {
        return;
    };
    let now_ms = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    let backlog = services.store().outbox_status().await.unwrap_or_default();
    let peers: Vec<String> = federation
        .peers()
        .map(|(domain, _)| domain.clone())
        .collect();
    for peer in &peers {
        let waiting = backlog.iter().find(|b| &b.peer == peer);
        let progress = federation.progress(peer);
        let label = || vec![("peer", peer.clone())];
        values.gauge(
            "outbox_waiting",
            "Deliveries waiting in the outbox for a peer homeserver",
            label(),
            waiting.map_or(0.0, |b| b.waiting as f64),
        );
        values.gauge(
            "outbox_oldest_age_seconds",
            "Age of the oldest delivery waiting for a peer (0 when none waits)",
            label(),
            waiting.map_or(0.0, |b| now_ms.saturating_sub(b.oldest_ms) as f64 / 1000.0),
        );
        values.gauge(
            "peer_connected",
            "1 while this server holds an open connection to the peer",
            label(),
            f64::from(u8::from(federation.connected(peer).await)),
        );
        values.gauge(
            "peer_last_error_timestamp_seconds",
            "When delivering to the peer last failed (Unix time; 0: not since start)",
            label(),
            progress.last_error.map_or(0.0, |(at, _)| at as f64),
        );
    }
}

/// What the services and the store counted since the server started.
fn counters(services: &Services, values: &mut Values) {
    use std::sync::atomic::Ordering::Relaxed;
    let push = services.push_stats();
    let stats = services.store().stats();
    let counters = [
        (
            "push_wakeups_delivered",
            "Wake-ups a push service or gateway accepted",
            push.delivered.load(Relaxed),
        ),
        (
            "push_attempts_failed",
            "Wake-up attempts that failed (retried later)",
            push.failed_attempts.load(Relaxed),
        ),
        (
            "push_targets_gone",
            "Push targets forgotten because their push service said they are gone",
            push.targets_gone.load(Relaxed),
        ),
        (
            "key_packages_low_notices",
            "KeyPackagesLow notices sent to clients whose stock ran low",
            services.key_package_low_notices(),
        ),
        ("store_commits", "Store transactions committed", stats.commits()),
        (
            "store_writes",
            "Store writes committed (several share a commit under load)",
            stats.writes(),
        ),
        (
            "store_conflicts",
            "Write batches run again after losing a race with another node's transaction",
            stats.conflicts(),
        ),
        (
            "cluster_events_refused",
            "Events on the node bus refused: not sealed by a node of this domain, stale or replayed",
            services.cluster_events_refused(),
        ),
    ];
    for (name, help, value) in counters {
        values.counter(name, help, value);
    }
}

/// Binds the metrics listener (before anything else is created, so a bad address fails the
/// start cleanly).
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(address)
        .await
        .with_context(|| format!("listening for metrics on {address}"))
}

/// Serves `GET /metrics` and `GET /health` until `stop`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let sources = ConnectionSlots::new(MAX_CONNECTIONS_PER_SOURCE);
    let renders = Arc::new(Semaphore::new(MAX_RENDERS));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!("metrics accept failed: {e}");
                    continue;
                }
            },
        };
        // Over either bound, the stream is dropped here: closed at once.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let Some(slot) = sources.slot(Source::of(peer.ip())) else {
            continue;
        };
        let (metrics, renders, stop) = (metrics.clone(), renders.clone(), stop.clone());
        tokio::spawn(async move {
            let _held = (permit, slot);
            let service = hyper::service::service_fn(move |request| {
                let (metrics, renders) = (metrics.clone(), renders.clone());
                async move {
                    let _rendering = renders.acquire_owned().await;
                    Ok::<_, std::convert::Infallible>(answer(&metrics, request).await)
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(SCRAPE_HEADER_TIMEOUT)
                .keep_alive(false);
            let connection =
                builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(SCRAPE_DEADLINE, connection) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn answer(metrics: &Metrics, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let respond = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        response
    };
    if request.method() != hyper::Method::GET {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render().await,
        ),
        "/health" => {
            if metrics.healthy().await {
                respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    "the store is not answering\n".into(),
                )
            }
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /metrics or /health\n".into(),
        ),
    }
}
