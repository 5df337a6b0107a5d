//! A Web Push receiver on this machine: an HTTP endpoint that plays the push service for one
//! subscription, decrypts each wake-up (RFC 8291) and checks its VAPID token (RFC 8292) against
//! the homeserver's key. `roost-client push-listen` and the tests use it; a real device would
//! register the subscription of its browser or UnifiedPush distributor instead.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::clock::{Clock, SystemClock};
use crate::protocol::{Text, WebPushSubscription};
use crate::web_push::{SubscriptionKeys, VapidClaims, WebPushError};

/// Largest push message body read (Web Push messages are at most 4 KiB).
const MAX_BODY_LEN: usize = 8 * 1024;
/// Wake-ups that may wait for [`WebPushReceiver::next`] before more are answered 429.
const WAITING_WAKES: usize = 1024;

/// One push message that reached the receiver.
#[derive(Debug, Clone)]
pub struct ReceivedWake {
    /// The decrypted payload, or why it did not decrypt.
    pub payload: Result<Vec<u8>, WebPushError>,
    /// The VAPID token's claims, or why it did not check out.
    pub vapid: Result<VapidClaims, WebPushError>,
    /// The `Authorization` header as sent (for a check of one's own).
    pub authorization: String,
    /// The `TTL`, `Topic` and `Urgency` headers.
    pub ttl: Option<u64>,
    pub topic: Option<String>,
    pub urgency: Option<String>,
    /// When it arrived (Unix ms).
    pub received_at_ms: u64,
    /// The HTTP status the receiver answered: 201 for a wake-up taken; what
    /// [`WebPushReceiver::answer_with`] set; 401 for a bad VAPID token.
    pub answered_with: u16,
}

impl ReceivedWake {
    /// Whether the receiver took it as a push service would (2xx, checked token).
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.answered_with)
    }
}

impl ReceivedWake {
    /// The queue sequence number the wake-up announces, if it decrypted and carries one.
    pub fn seq(&self) -> Option<u64> {
        let payload = self.payload.as_ref().ok()?;
        serde_json::from_slice::<serde_json::Value>(payload)
            .ok()?
            .get("seq")?
            .as_u64()
    }
}

struct Shared {
    keys: SubscriptionKeys,
    path: String,
    audience: String,
    vapid_key: Vec<u8>,
    status: AtomicU16,
    wakes: mpsc::Sender<ReceivedWake>,
}

/// A running receiver; stops when dropped.
pub struct WebPushReceiver {
    shared: Arc<Shared>,
    endpoint: String,
    local_addr: SocketAddr,
    wakes: mpsc::Receiver<ReceivedWake>,
    _server: JoinSet<()>,
}

impl WebPushReceiver {
    /// Listens on `addr` (a loopback address) with a fresh subscription whose messages must be
    /// signed by `vapid_key` (the homeserver's, from `GetPushInfo`).
    pub async fn bind(addr: SocketAddr, vapid_key: &[u8]) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let token: [u8; 16] = rand::random();
        let path = format!("/push/{}", hex::encode(token));
        let audience = format!("http://{local_addr}");
        let endpoint = format!("{audience}{path}");
        let (sender, wakes) = mpsc::channel(WAITING_WAKES);
        let shared = Arc::new(Shared {
            keys: SubscriptionKeys::generate(),
            path,
            audience,
            vapid_key: vapid_key.to_vec(),
            status: AtomicU16::new(StatusCode::CREATED.as_u16()),
            wakes: sender,
        });
        let mut server = JoinSet::new();
        server.spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            shared,
            endpoint,
            local_addr,
            wakes,
            _server: server,
        })
    }

    /// The subscription to register with `AddPushTarget`.
    pub fn subscription(&self) -> WebPushSubscription {
        WebPushSubscription {
            endpoint: Text::truncated(&self.endpoint),
            p256dh: self.shared.keys.public.to_vec().into(),
            auth: self.shared.keys.auth.to_vec().into(),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Answer push messages from now on with `status` (201 by default): 410 says the
    /// subscription is gone, 429 or 5xx ask to retry. Every message is still handed to
    /// [`next`](Self::next), with the status it was answered with.
    pub fn answer_with(&self, status: u16) {
        self.shared.status.store(status, Ordering::Relaxed);
    }

    /// The next push message (answered with any status); `None` once the receiver stopped.
    pub async fn next(&mut self) -> Option<ReceivedWake> {
        self.wakes.recv().await
    }

    /// A wake-up that already arrived, without waiting.
    pub fn try_next(&mut self) -> Option<ReceivedWake> {
        self.wakes.try_recv().ok()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

async fn answer(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != hyper::Method::POST || request.uri().path() != shared.path {
        return reply(StatusCode::NOT_FOUND);
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = header("authorization").unwrap_or_default();
    let ttl = header("ttl").and_then(|ttl| ttl.parse().ok());
    let topic = header("topic");
    let urgency = header("urgency");
    if header("content-encoding").as_deref() != Some("aes128gcm") {
        return reply(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let Ok(body) = Limited::new(request.into_body(), MAX_BODY_LEN)
        .collect()
        .await
    else {
        return reply(StatusCode::PAYLOAD_TOO_LARGE);
    };
    let status =
        StatusCode::from_u16(shared.status.load(Ordering::Relaxed)).unwrap_or(StatusCode::CREATED);
    let now_ms = SystemClock.now_ms();
    let mut wake = ReceivedWake {
        payload: crate::web_push::decrypt(&shared.keys, &body.to_bytes()),
        vapid: crate::web_push::verify_authorization(
            &authorization,
            &shared.vapid_key,
            &shared.audience,
            now_ms / 1000,
        ),
        authorization,
        ttl,
        topic,
        urgency,
        received_at_ms: now_ms,
        answered_with: status.as_u16(),
    };
    if wake.vapid.is_err() {
        // A push service refuses what is not signed by the key the subscription names.
        wake.answered_with = StatusCode::UNAUTHORIZED.as_u16();
    }
    let status = StatusCode::from_u16(wake.answered_with).unwrap_or(status);
    match shared.wakes.try_send(wake) {
        Ok(()) => reply(status),
        Err(_) => reply(StatusCode::TOO_MANY_REQUESTS),
    }
}
