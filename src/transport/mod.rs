//! The transport: the QUIC endpoint, TLS, one task per connection and one per stream,
//! channel-bound authentication and the push stream.
//!
//! It knows nothing of accounts or groups: it decodes a request, asks [`Services`] to handle it as
//! the connection's authenticated client, and encodes the answer. It is the only layer that turns
//! errors into wire error codes; it logs the whole error and tells the peer a code and a short
//! message, never internal details.

pub(crate) mod admin;
pub mod auth;
pub mod budget;
mod connection;
mod federation;
pub mod sessions;
pub mod sources;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

pub use sessions::SessionRegistry;

use crate::config::ServerLimits;
use crate::protocol::{self, close_code, Notification, ServerShutdown, Text};
use crate::services::Services;
use crate::tls::{self, TlsIdentity};

/// Bytes a peer may have in flight towards us on one connection (all streams together).
const CONNECTION_RECEIVE_WINDOW: u32 = 2 * protocol::MAX_REQUEST_LEN as u32;
/// Bytes quinn keeps for one connection until the peer acknowledges them.
const CONNECTION_SEND_WINDOW: u64 = 2 * protocol::MAX_RESPONSE_LEN as u64;

/// How long a closing endpoint waits for its peers to acknowledge the close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) services: Arc<Services>,
    pub(crate) sessions: Arc<SessionRegistry>,
    pub(crate) limits: ServerLimits,
    pub(crate) shutdown: CancellationToken,
    /// The server-wide memory budgets of incomplete requests and unsent responses.
    pub(crate) budget: budget::ServerBudget,
    /// Connections, handshakes and unauthenticated requests per source.
    pub(crate) sources: sources::SourceLimits,
    /// Requests per authenticated client, over all its connections.
    pub(crate) client_requests: crate::rate_limit::RateLimiter<crate::protocol::ClientId>,
    /// Requests, connections and refusals, counted for the metrics endpoint.
    pub(crate) metrics: crate::metrics::TransportMetrics,
    /// Which client protocol versions are still served.
    pub(crate) versions: VersionPolicy,
}

/// How long each client protocol version is served (protocol-spec/core.md section 4).
#[derive(Clone, Debug)]
pub(crate) struct VersionPolicy {
    /// The end of `roost/1`, in Unix seconds; `None`: no end.
    pub(crate) roost1_served_until: Option<crate::clock::UnixTime>,
    pub(crate) clock: Arc<dyn crate::clock::Clock>,
}

impl VersionPolicy {
    /// Why requests on a connection of `version` are no longer served, if they are not: the
    /// message of the `UnsupportedVersion` they get.
    pub(crate) fn retired(&self, version: protocol::Version) -> Option<String> {
        let until = match version {
            protocol::Version::V1 => self.roost1_served_until?,
            protocol::Version::V2 => return None,
        };
        (self.clock.now() >= until).then(|| {
            format!(
                "{version} was served here until {}; this server speaks {}: use a client \
                 that offers it",
                crate::clock::format_utc(until),
                protocol::Version::LATEST
            )
        })
    }
}

impl Shared {
    pub(crate) fn new(
        services: Arc<Services>,
        sessions: Arc<SessionRegistry>,
        limits: ServerLimits,
        metrics: crate::metrics::TransportMetrics,
        versions: VersionPolicy,
    ) -> Self {
        Self {
            metrics,
            versions,
            services,
            sessions,
            sources: sources::SourceLimits::new(&limits),
            client_requests: crate::rate_limit::RateLimiter::new(
                limits.requests_per_second_per_client,
                Duration::from_secs(1),
            ),
            limits,
            shutdown: CancellationToken::new(),
            budget: budget::ServerBudget::default(),
        }
    }

    /// Tells every authenticated client that the server is going away, then stops taking work.
    /// The notice is queued before any connection sees the cancellation, so it goes out first.
    pub(crate) fn begin_shutdown(&self, reason: &str) {
        let notice = Notification::ServerShutdown(ServerShutdown {
            reason: Text::truncated(reason),
            retry_after_ms: 5_000,
        });
        let told = self.sessions.broadcast(&notice);
        info!(connections = told, "shutting down: {reason}");
        self.shutdown.cancel();
    }
}

/// The quinn server configuration: TLS 1.3 with the client versions' ALPNs (newest first, so a
/// client offering several gets the newest) and federation's, and the stream and idle limits.
pub(crate) fn endpoint_config(
    identity: &TlsIdentity,
    limits: &ServerLimits,
    peers: Option<&tls::PeerTrust>,
) -> anyhow::Result<quinn::ServerConfig> {
    let alpns: Vec<&[u8]> = protocol::Version::ALL
        .iter()
        .map(|version| version.alpn())
        .chain([protocol::ALPN_FEDERATION])
        .collect();
    let tls = tls::server_config(identity, &alpns, peers)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("TLS configuration unusable for QUIC")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let transport = Arc::get_mut(&mut config.transport).context("fresh transport config")?;
    transport
        // Flow control sized from the request limit: quinn buffers at most one request's worth
        // per stream and a few per connection (what was read is held by the budgets instead).
        .stream_receive_window(quinn::VarInt::from_u32(protocol::MAX_REQUEST_LEN as u32))
        .receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(CONNECTION_SEND_WINDOW)
        .max_concurrent_bidi_streams(limits.max_concurrent_streams.into())
        // Clients never open unidirectional streams; the push stream goes server -> client.
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(
            limits
                .idle_timeout
                .try_into()
                .context("idle timeout out of range")?,
        ));
    Ok(config)
}

/// Accepts connections until shutdown, then waits for every connection task to wind down.
pub(crate) async fn serve(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(shared.limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let source = sources::Source::of(incoming.remote_address().ip());
                // Cheapest first: a refusal costs no handshake.
                if !shared.sources.allow_handshake(source) {
                    shared.sources.log_refusal(source, "too many new connections per second");
                    shared.metrics.refused("handshake_rate");
                    incoming.refuse();
                    continue;
                }
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    shared.sources.log_refusal(source, "the server's connection limit is reached");
                    shared.metrics.refused("server_connection_limit");
                    incoming.refuse();
                    continue;
                };
                match shared.sources.connection_slot(source) {
                    Some(slot) => {
                        connections.spawn(connection::handle(incoming, shared.clone(), permit, slot));
                    }
                    None => {
                        shared.sources.log_refusal(source, "too many connections from this source");
                        shared.metrics.refused("source_connection_limit");
                        // Completed and closed, so the client learns why (handshakes are limited).
                        connections.spawn(async move {
                            if let Ok(connection) = incoming.await {
                                connection.close(
                                    close_code::TOO_MANY_CONNECTIONS.into(),
                                    b"too many connections from this source",
                                );
                            }
                            drop(permit);
                        });
                    }
                }
            }
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                report_panic(finished);
            }
        }
    }
    // Refuse new connections (promptly, so their clients need not time out) while the open ones
    // finish their requests.
    loop {
        tokio::select! {
            finished = connections.join_next() => match finished {
                Some(finished) => report_panic(finished),
                None => break,
            },
            Some(incoming) = endpoint.accept() => incoming.refuse(),
        }
    }
    endpoint.close(close_code::SHUTTING_DOWN.into(), b"server shutting down");
    if tokio::time::timeout(CLOSE_TIMEOUT, endpoint.wait_idle())
        .await
        .is_err()
    {
        debug!("peers did not acknowledge the close in time");
    }
}

fn report_panic(finished: Result<(), tokio::task::JoinError>) {
    if let Err(e) = finished {
        if e.is_panic() {
            error!("a connection task panicked: {e}");
        }
    }
}
