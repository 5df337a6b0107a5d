//! One client connection: its streams, its authentication state and its push stream.

use crate::metrics::{Outcome, PeerKind};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use quinn::{ReadToEndError, RecvStream, SendStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, warn};

use super::auth::{channel_binding, verify_authentication};
use super::budget::{ConnectionBudget, Pool, Reservation};
use super::sessions::PushFeed;
use super::sources::{Source, SourceSlot};
use super::Shared;
use crate::escape::Escaped;
use crate::protocol::{
    close_code, decode_request, encode_notification_record, encode_push_header, encode_response,
    AuthenticateRequest, AuthenticateResponse, ClientId, ErrorCode, ErrorResponse, Notification,
    Request, Response, ResponseBody, Version, ALPN_FEDERATION, CHANNEL_BINDING_LEN,
    MAX_REQUEST_LEN, MAX_RESPONSE_LEN, MAX_UNAUTHENTICATED_REQUEST_LEN, STREAM_REFUSED,
};
use crate::services::{wire_error, Caller, ServiceError};
use tokio_util::sync::CancellationToken;

/// How long the push writer may take to hand its last records to the peer when closing.
const PUSH_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn handle(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
    _source_slot: SourceSlot,
) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(e) => {
            debug!(%remote, "handshake failed: {e}");
            return;
        }
    };
    let alpn = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    let version = alpn.as_deref().and_then(Version::from_alpn);
    match (version, alpn.as_deref()) {
        (Some(version), _) => {
            let _counted = shared.metrics.connection(PeerKind::Client);
            shared.metrics.client_version(version);
            serve_client(connection, shared, version).await
        }
        (None, Some(ALPN_FEDERATION)) => {
            let _counted = shared.metrics.connection(PeerKind::Peer);
            super::federation::serve_peer(connection, shared).await
        }
        _ => connection.close(
            close_code::UNSUPPORTED_ALPN.into(),
            b"unsupported application protocol",
        ),
    }
}

/// A client connection's state, shared by its stream tasks.
struct Session {
    connection: quinn::Connection,
    /// The client protocol version the handshake chose; every envelope on it carries it.
    version: Version,
    /// The connection's TLS exporter value that authentication signatures cover.
    channel_binding: [u8; CHANNEL_BINDING_LEN],
    /// Set once, by a successful `Authenticate`; every later stream acts as this client.
    client: OnceLock<ClientId>,
    /// Cancelled when the connection must wind down: server shutdown or client removed.
    closing: CancellationToken,
    push_writer: Mutex<Option<JoinHandle<()>>>,
    /// Bytes of this connection's incomplete requests and unsent responses.
    budget: ConnectionBudget,
    /// Where the connection comes from (for the per-source limits).
    source: Source,
}

async fn serve_client(connection: quinn::Connection, shared: Arc<Shared>, version: Version) {
    let channel_binding = match channel_binding(&connection) {
        Ok(binding) => binding,
        Err(e) => {
            error!("{e}");
            connection.close(close_code::SHUTTING_DOWN.into(), b"internal error");
            return;
        }
    };
    let session = Arc::new(Session {
        connection: connection.clone(),
        version,
        channel_binding,
        client: OnceLock::new(),
        closing: shared.shutdown.child_token(),
        push_writer: Mutex::new(None),
        budget: shared.budget.connection(),
        source: Source::of(connection.remote_address().ip()),
    });
    let mut streams = JoinSet::new();
    let closed_by_peer = loop {
        tokio::select! {
            _ = session.closing.cancelled() => break false,
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(handle_stream(session.clone(), shared.clone(), send, recv));
                }
                Err(e) => {
                    debug!(remote = %connection.remote_address(), "connection ended: {e}");
                    break true;
                }
            },
            Some(finished) = streams.join_next(), if !streams.is_empty() => {
                if let Err(e) = finished {
                    if e.is_panic() {
                        error!("a stream task panicked: {e}");
                    }
                }
            }
        }
    };

    // Requests already received get to finish, up to the grace period.
    let drained = tokio::time::timeout(shared.limits.shutdown_grace, async {
        while streams.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("in-flight requests did not finish within the grace period; cancelling them");
        streams.shutdown().await;
    }

    if let Some(client) = session.client.get() {
        // Closing the queue lets the writer send what is queued (a shutdown notice) and finish.
        shared.sessions.unregister(client, connection.stable_id());
    }
    let push_writer = session
        .push_writer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some(mut writer) = push_writer {
        if closed_by_peer
            || tokio::time::timeout(PUSH_FLUSH_TIMEOUT, &mut writer)
                .await
                .is_err()
        {
            writer.abort();
        }
    }
    if !closed_by_peer {
        if shared.shutdown.is_cancelled() {
            connection.close(close_code::SHUTTING_DOWN.into(), b"server shutting down");
        } else {
            connection.close(close_code::CLIENT_REMOVED.into(), b"client removed");
        }
    }
}

/// Reads one request, answers it, finishes the stream.
async fn handle_stream(
    session: Arc<Session>,
    shared: Arc<Shared>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    // Before authentication only small requests make sense (registration, authentication).
    let max_len = if session.client.get().is_some() {
        MAX_REQUEST_LEN
    } else {
        MAX_UNAUTHENTICATED_REQUEST_LEN
    };
    let timeout = shared.limits.request_timeout;
    let read = read_request(&mut recv, timeout, max_len, &session.budget.requests).await;
    let (response, reservation) = match (read, shared.versions.retired(session.version)) {
        // A version past its end: every request gets the one refusal that says so.
        (Some(Ok(_)), Some(why)) => (error_response(ErrorCode::UnsupportedVersion, &why), None),
        (Some(Ok((bytes, request_bytes))), None) => {
            match decode_request(session.version, &bytes) {
                Ok(request) => {
                    // The request's bytes (and their reservation) are not kept while it runs.
                    drop((bytes, request_bytes));
                    answer(&session, &shared, request).await
                }
                Err(e) => (error_response(e.code(), &e.public_message()), None),
            }
        }
        (Some(Err(refusal)), _) => (Response::Error(refusal), None),
        (None, _) => return,
    };
    let bytes = encode_checked(session.version, &response);
    drop(response);
    if !write_encoded(
        &mut send,
        &bytes,
        reservation,
        timeout,
        &session.budget.responses,
    )
    .await
    {
        // The client does not read what it asked for: it holds our memory for nothing.
        debug!(remote = %session.connection.remote_address(), "client does not read its responses; closing");
        session.connection.close(
            close_code::NOT_READING.into(),
            b"responses are not being read",
        );
    }
}

/// Handles a decoded request, counting it, with room for its answer reserved before the work
/// that makes it.
async fn answer(
    session: &Session,
    shared: &Shared,
    request: Request,
) -> (Response, Option<Reservation>) {
    let started = std::time::Instant::now();
    let operation = request.operation();
    let reservation = session
        .budget
        .responses
        .reserve(response_reservation(&request))
        .await;
    let response = session.dispatch(shared, request).await;
    let outcome = match &response {
        Response::Ok(_) => Outcome::Ok,
        Response::Error(error) => Outcome::Error(error.code()),
    };
    shared
        .metrics
        .request(operation, outcome, started.elapsed());
    (response, Some(reservation))
}

/// Bytes to reserve for the answer to `request` before handling it: what the request can ask
/// for at most, or a small default that is topped up after encoding if needed.
fn response_reservation(request: &Request) -> usize {
    /// Enough for every answer but the few that carry data sets.
    const SMALL_RESPONSE: usize = 16 * 1024;
    /// Enough for a data set of a typical size (a group of a few hundred, a user's devices).
    const DATA_SET_RESPONSE: usize = 256 * 1024;
    match request {
        Request::FetchMessages(fetch) => (fetch.max_bytes as usize)
            .saturating_add(SMALL_RESPONSE)
            .min(MAX_RESPONSE_LEN),
        // Answers that carry data sets are usually far below the response limit: reserving the
        // limit would let a few dozen of them hold the whole server budget. Larger ones are
        // topped up once encoded.
        // A tree chunk is about as large as it may be, but for a tree's last chunk.
        Request::FetchGroupTree(_) => crate::protocol::MAX_TREE_CHUNK_LEN as usize + SMALL_RESPONSE,
        Request::GetGroup(_)
        | Request::ClaimKeyPackages(_)
        | Request::LookupUser(_)
        | Request::ListClients
        | Request::ListGroups => DATA_SET_RESPONSE,
        _ => SMALL_RESPONSE,
    }
}

/// Reads a whole request of at most `max_len` bytes within `timeout`, every byte reserved in
/// `budget` first (so incomplete requests cannot pin unbounded memory). A refusal (too slow, too
/// large) stops the stream and is returned for the caller to answer; `None` means the peer reset
/// the stream and gets no answer.
pub(super) async fn read_request(
    recv: &mut RecvStream,
    timeout: Duration,
    max_len: usize,
    budget: &Pool,
) -> Option<Result<(Vec<u8>, Vec<Reservation>), ErrorResponse>> {
    /// Bytes read at a time.
    const CHUNK: usize = 16 * 1024;
    let read = async {
        // A request's first chunk draws on the server's budget only; a request that grows
        // beyond it reserves the rest of `max_len` at once, from its connection's budget too, so
        // no two large requests ever wait on each other holding half their bytes.
        let mut reserved = vec![budget.reserve_shared(CHUNK).await];
        let mut reserved_len = CHUNK;
        let mut bytes = Vec::new();
        loop {
            match recv.read_chunk(CHUNK, true).await {
                Ok(Some(chunk)) => {
                    let len = bytes.len() + chunk.bytes.len();
                    if len > max_len {
                        return Err(ReadToEndError::TooLong);
                    }
                    if len > reserved_len {
                        reserved.push(budget.reserve(max_len - reserved_len).await);
                        reserved_len = max_len;
                    }
                    bytes.extend_from_slice(&chunk.bytes);
                }
                Ok(None) => return Ok((bytes, reserved)),
                Err(e) => return Err(ReadToEndError::Read(e)),
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_elapsed) => {
            let _ = recv.stop(STREAM_REFUSED.into());
            Some(Err(ErrorResponse::new(
                ErrorCode::RequestTimeout,
                "the request was not received in time",
            )))
        }
        Ok(Err(ReadToEndError::TooLong)) => {
            let _ = recv.stop(STREAM_REFUSED.into());
            Some(Err(ErrorResponse::new(
                ErrorCode::RequestTooLarge,
                &format!("requests are limited to {max_len} bytes here"),
            )))
        }
        Ok(Err(ReadToEndError::Read(e))) => {
            debug!("request stream failed: {e}");
            None
        }
        Ok(Ok(read)) => Some(Ok(read)),
    }
}

/// The encoded response, or an internal error if it cannot be encoded within the limit.
fn encode_checked(version: Version, response: &Response) -> Vec<u8> {
    match encode_response(version, response) {
        Ok(bytes) if bytes.len() <= MAX_RESPONSE_LEN => bytes,
        Ok(bytes) => {
            error!(
                len = bytes.len(),
                "response exceeds the response size limit"
            );
            encode_internal_error(version)
        }
        Err(e) => {
            error!("cannot encode response: {e}");
            encode_internal_error(version)
        }
    }
}

/// Writes an encoded response within `timeout`, with its bytes reserved in `budget` (topping up
/// `reservation` if the response came out larger), finishes the stream, and waits (up to
/// `timeout`) until the peer has it all, so that a graceful shutdown cannot cut it off. Returns
/// false if the peer did not take the response in time.
pub(super) async fn write_encoded(
    send: &mut SendStream,
    bytes: &[u8],
    reservation: Option<Reservation>,
    timeout: Duration,
    budget: &Pool,
) -> bool {
    let written = tokio::time::timeout(timeout, async {
        // Only what the response needs beyond what was reserved before it was made.
        let reserved = reservation.as_ref().map_or(0, Reservation::bytes);
        let _extra = budget.reserve(bytes.len().saturating_sub(reserved)).await;
        let result = send.write_all(bytes).await;
        // Handed to quinn, whose send window bounds what it keeps: ours is free again.
        drop(reservation);
        result
    })
    .await;
    match written {
        Err(_elapsed) => {
            let _ = send.reset(STREAM_REFUSED.into());
            return false;
        }
        Ok(Err(e)) => {
            debug!("cannot write response: {e}");
            return true;
        }
        Ok(Ok(())) => {}
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(timeout, send.stopped()).await;
    true
}

fn encode_internal_error(version: Version) -> Vec<u8> {
    // An error response with a short fixed message always encodes.
    encode_response(
        version,
        &error_response(ErrorCode::Internal, "internal error"),
    )
    .unwrap_or_default()
}

fn error_response(code: ErrorCode, message: &str) -> Response {
    Response::Error(ErrorResponse::new(code, message))
}

fn service_error_response(e: ServiceError) -> Response {
    Response::Error(wire_error(e))
}

impl Session {
    async fn dispatch(&self, shared: &Shared, request: Request) -> Response {
        if let Request::Authenticate(request) = request {
            return self.authenticate(shared, request).await;
        }
        let caller = Caller {
            client: self.client.get(),
            channel_binding: &self.channel_binding,
            source: self.source,
            version: self.version,
        };
        let allowed = match caller.client {
            Some(client) => shared.client_requests.check(client),
            None => shared.sources.allow_unauthenticated_request(self.source),
        };
        if let Err(retry_after) = allowed {
            return service_error_response(ServiceError::RateLimited { retry_after });
        }
        if request.operation().requires_authentication() && caller.client.is_none() {
            return error_response(
                ErrorCode::NotAuthenticated,
                "this operation needs an authenticated connection",
            );
        }
        match shared.services.handle(&caller, request).await {
            Ok(body) => Response::Ok(body),
            Err(e) => service_error_response(e),
        }
    }

    async fn authenticate(&self, shared: &Shared, request: AuthenticateRequest) -> Response {
        if self.client.get().is_some() {
            return error_response(
                ErrorCode::AlreadyAuthenticated,
                "this connection is already authenticated",
            );
        }
        let key = match shared.services.client_signature_key(&request.client).await {
            Ok(key) => key,
            Err(e) => return service_error_response(e),
        };
        // One answer for an unknown client and a bad signature: no probing for client ids.
        let verified = key.is_some_and(|key| {
            verify_authentication(&key, &self.channel_binding, &request).is_ok()
        });
        if !verified {
            debug!(client = %Escaped(&request.client), "authentication failed");
            return error_response(
                ErrorCode::AuthenticationFailed,
                "authentication failed: unknown client or bad signature",
            );
        }
        let client = request.client;
        if self.client.set(client.clone()).is_err() {
            return error_response(
                ErrorCode::AlreadyAuthenticated,
                "this connection is already authenticated",
            );
        }
        // Registered before anything else can happen to this connection, so that removing the
        // client closes it whether or not a push stream ever opens.
        let feed =
            shared
                .sessions
                .register(&client, self.connection.stable_id(), self.closing.clone());
        // The removal may have committed between the key lookup above and the registration, and
        // then its disconnect found nothing to close: look again now that a disconnect would.
        match shared.services.client_signature_key(&client).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                self.closing.cancel();
                return error_response(
                    ErrorCode::AuthenticationFailed,
                    "authentication failed: unknown client or bad signature",
                );
            }
            Err(e) => {
                self.closing.cancel();
                return service_error_response(e);
            }
        }
        // The push stream opens in the background: a client that grants the server no
        // unidirectional stream is still authenticated (everything pushed can be fetched) and
        // still closed when it is removed.
        let connection = self.connection.clone();
        let timeout = shared.limits.request_timeout;
        let writer_client = client.clone();
        let version = self.version;
        let writer = tokio::spawn(async move {
            match open_push_stream(&connection, version, timeout).await {
                Ok(mut stream) => write_notifications(&mut stream, feed).await,
                Err(e) => debug!(client = %writer_client, "no push stream: {e}"),
            }
        });
        *self
            .push_writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(writer);
        debug!(%client, "authenticated");
        Response::Ok(ResponseBody::Authenticated(AuthenticateResponse { client }))
    }
}

/// Opens the push stream and writes its header, within `timeout`.
async fn open_push_stream(
    connection: &quinn::Connection,
    version: Version,
    timeout: Duration,
) -> anyhow::Result<SendStream> {
    tokio::time::timeout(timeout, async {
        let mut stream = connection.open_uni().await?;
        stream.write_all(&encode_push_header(version)).await?;
        anyhow::Ok(stream)
    })
    .await?
}

/// Writes pushed notifications, and a `NewMessages` hint whenever the client's queue grows,
/// until the registry drops the connection; then finishes the stream.
async fn write_notifications(stream: &mut SendStream, mut feed: PushFeed) {
    loop {
        let notifications = tokio::select! {
            // Drain explicit notifications first: a shutdown notice must not wait behind hints.
            biased;
            notification = feed.notifications.recv() => match notification {
                Some(notification) => vec![notification],
                None => break,
            },
            () = feed.hint.ready() => {
                let queue = feed.hint.take().map(Notification::NewMessages);
                let logs = feed.hint.take_group_hints().into_iter().map(Notification::GroupLogAppended);
                queue.into_iter().chain(logs).collect()
            }
        };
        for notification in notifications {
            match encode_notification_record(&notification) {
                Ok(record) => {
                    if let Err(e) = stream.write_all(&record).await {
                        debug!("push stream closed: {e}");
                        return;
                    }
                }
                Err(e) => error!("cannot encode notification: {e}"),
            }
        }
    }
    let _ = stream.finish();
    let _ = tokio::time::timeout(PUSH_FLUSH_TIMEOUT, stream.stopped()).await;
}
