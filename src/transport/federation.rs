//! Connections from peer homeservers (ALPN `roost-fed/1`). The peer's TLS client certificate was
//! verified in the handshake (pinned, or chaining to the peer CA, and in allow-list mode valid
//! for an allowed peer); its first request names its domain, which the certificate must be valid
//! for. Every later request on the connection speaks for that domain.

use std::sync::{Arc, OnceLock};

use quinn::{RecvStream, SendStream};
use rustls::pki_types::CertificateDer;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::budget::ConnectionBudget;
use super::connection::{read_request, write_encoded};
use super::Shared;
use crate::protocol::{
    close_code, decode_federation_request, encode_federation_response, ErrorCode, ErrorResponse,
    FederationRequest, FederationResponse, FederationResponseBody, MAX_REQUEST_LEN,
};
use crate::services::wire_error;

struct PeerSession {
    connection: quinn::Connection,
    leaf: CertificateDer<'static>,
    /// Set once, by `Identify`.
    domain: OnceLock<String>,
    /// Bytes of this connection's incomplete requests and unsent responses.
    budget: ConnectionBudget,
}

pub(super) async fn serve_peer(connection: quinn::Connection, shared: Arc<Shared>) {
    if shared.services.peer_trust().is_none() {
        connection.close(
            close_code::UNSUPPORTED_ALPN.into(),
            b"federation is not enabled on this server",
        );
        return;
    }
    let leaf = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certificates| certificates.first().cloned());
    let Some(leaf) = leaf else {
        connection.close(
            close_code::PEER_REFUSED.into(),
            b"a peer homeserver must present its certificate",
        );
        return;
    };
    let session = Arc::new(PeerSession {
        connection: connection.clone(),
        leaf,
        domain: OnceLock::new(),
        budget: shared.budget.connection(),
    });
    let closing = shared.shutdown.child_token();
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            _ = closing.cancelled() => break,
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(handle_peer_stream(session.clone(), shared.clone(), send, recv));
                }
                Err(e) => {
                    debug!(remote = %connection.remote_address(), "peer connection ended: {e}");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    let drained = tokio::time::timeout(shared.limits.shutdown_grace, async {
        while streams.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        streams.shutdown().await;
    }
    connection.close(close_code::SHUTTING_DOWN.into(), b"server shutting down");
}

async fn handle_peer_stream(
    session: Arc<PeerSession>,
    shared: Arc<Shared>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let timeout = shared.limits.request_timeout;
    let requests = &session.budget.requests;
    let response = match read_request(&mut recv, timeout, MAX_REQUEST_LEN, requests).await {
        Some(Ok((bytes, _reserved))) => match decode_federation_request(&bytes) {
            Ok(request) => dispatch(&session, &shared, request).await,
            Err(e) => error(e.code(), &e.public_message()),
        },
        Some(Err(refusal)) => FederationResponse::Error(refusal),
        None => return,
    };
    let bytes = match encode_federation_response(&response) {
        Ok(bytes) => bytes,
        Err(e) => {
            warn!("cannot encode a federation response: {e}");
            return;
        }
    };
    drop(response);
    if !write_encoded(&mut send, &bytes, None, timeout, &session.budget.responses).await {
        debug!("a peer does not read its responses; closing");
        session.connection.close(
            close_code::NOT_READING.into(),
            b"responses are not being read",
        );
    }
}

async fn dispatch(
    session: &PeerSession,
    shared: &Shared,
    request: FederationRequest,
) -> FederationResponse {
    if let FederationRequest::Identify(identify) = request {
        let domain = identify.domain.as_str().to_ascii_lowercase();
        if session.domain.get().is_some() {
            return error(ErrorCode::AlreadyAuthenticated, "already identified");
        }
        let vouched = shared
            .services
            .peer_trust()
            .is_some_and(|trust| trust.certificate_speaks_for(&session.leaf, &domain));
        if !shared.services.federation_allows(&domain) || !vouched {
            warn!(domain = %crate::escape::Escaped(&domain), "refused a peer that may not speak for this domain");
            return error(
                ErrorCode::PeerRefused,
                "this certificate may not speak for that domain here",
            );
        }
        if session.domain.set(domain.clone()).is_err() {
            return error(ErrorCode::AlreadyAuthenticated, "already identified");
        }
        info!(peer = %domain, "peer homeserver connected");
        return FederationResponse::Ok(FederationResponseBody::Identified);
    }
    let Some(peer) = session.domain.get() else {
        return error(ErrorCode::NotIdentified, "identify this homeserver first");
    };
    match shared.services.handle_federation(peer, request).await {
        Ok(body) => FederationResponse::Ok(body),
        Err(e) => FederationResponse::Error(wire_error(e)),
    }
}

fn error(code: ErrorCode, message: &str) -> FederationResponse {
    FederationResponse::Error(ErrorResponse::new(code, message))
}
