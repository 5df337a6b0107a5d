//! Federation, outgoing side: this homeserver as a client of its peers. Connections to each peer
//! are made on demand (mutual TLS, ALPN `roost-fed/1`), identified once, cached and reused; a
//! request to a peer that cannot be reached fails with `PeerUnavailable`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::ServiceError;
use crate::config::{Domain, FederationConfig};
use crate::protocol::{
    decode_federation_response, encode_federation_request, FederationRequest, FederationResponse,
    FederationResponseBody, IdentifyRequest, ALPN_FEDERATION, MAX_RESPONSE_LEN,
};
use crate::tls::{self, TlsIdentity};

/// How long connecting to a peer may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request to a peer may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Federation {
    domain: Domain,
    config: FederationConfig,
    endpoint: quinn::Endpoint,
    connections: Mutex<HashMap<String, quinn::Connection>>,
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
        transport.keep_alive_interval(Some(Duration::from_secs(10)));
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
        })
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
                self.connections.lock().await.remove(domain);
                Err(ServiceError::PeerUnavailable(reason))
            }
            Err(other) => Err(other),
        }
    }

    async fn connection(&self, domain: &str) -> Result<quinn::Connection, ServiceError> {
        let mut connections = self.connections.lock().await;
        if let Some(connection) = connections.get(domain) {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        let address = *self
            .config
            .peers
            .get(domain)
            .ok_or_else(|| ServiceError::PeerUnavailable(format!("{domain} is not a peer")))?;
        let unreachable = |e: String| ServiceError::PeerUnavailable(format!("{domain}: {e}"));
        let connecting = self
            .endpoint
            .connect(address, domain)
            .map_err(|e| unreachable(e.to_string()))?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| unreachable("connection timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let identify = FederationRequest::Identify(IdentifyRequest {
            domain: self.domain.to_text(),
        });
        match self.exchange(&connection, &identify).await? {
            FederationResponseBody::Identified => {}
            other => return Err(unreachable(format!("unexpected answer {other:?}"))),
        }
        connections.insert(domain.to_owned(), connection.clone());
        Ok(connection)
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

    /// Closes the connections to peers (on shutdown).
    pub fn close(&self) {
        self.endpoint.close(
            crate::protocol::close_code::SHUTTING_DOWN.into(),
            b"shutting down",
        );
    }
}
