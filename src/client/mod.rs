//! The client library: connect to a homeserver over QUIC, authenticate, make requests, receive
//! pushed notifications. Used by `roost-client`, the tests and the benchmarks.
//!
//! Every request runs on its own bidirectional stream, so requests on one [`Connection`] proceed
//! concurrently. [`state`] keeps a device's identity on disk for the command-line client.

pub mod audit;
pub mod groups;
pub mod local_error;
pub mod mls;
pub mod push_receiver;
pub mod queue;
mod receive;
pub mod rejoin;
pub mod state;
pub mod transparency;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use rustls::pki_types::CertificateDer;

use crate::clock::UnixTime;
use crate::identity::{verify_credential, CredentialError, DomainKeys};
use crate::protocol::{
    add_client_proof_content, register_proof_content, AckMessagesRequest, AddClientRequest,
    ClaimKeyPackagesRequest, ClaimedKeyPackages, ClientCredential, ClientEntry, ClientRegistered,
    CreateGroupRequest, FetchGroupTreeRequest, FetchMessagesRequest, FetchedMessages,
    GetGroupRequest, GroupEpoch, GroupList, GroupState, KeyPackageStatus, LookupUserRequest,
    MessageAccepted, PublishKeyPackagesRequest, RegisterUserRequest, RemoveClientRequest,
    SendCommitRequest, SendMessageRequest, Text, UserClients,
};
use crate::protocol::{
    close_code, decode_notification, decode_push_header, decode_response, encode_request, ClientId,
    DecodeError, ErrorCode, ErrorResponse, Notification, Request, Response, ResponseBody,
    ServerInfo, Version, CHANNEL_BINDING_LEN, MAX_NOTIFICATION_LEN, MAX_RESPONSE_LEN,
    NOTIFICATION_LENGTH_PREFIX_LEN, PUSH_HEADER_LEN,
};
use crate::protocol::{
    AckGroupLogRequest, DeleteGroupRequest, FetchGroupLogRequest, GetDomainKeysRequest,
    GroupLogMessages, GroupLogs, SendProposalRequest,
};
use crate::tls;
use crate::transport::auth::{channel_binding, sign_authentication};

/// How often an idle connection sends a keep-alive, well inside any sane server idle timeout.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Where to connect and whom to trust.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub server_addr: SocketAddr,
    /// The name the server's certificate must carry (its domain).
    pub server_name: String,
    /// Certificates (CA or the server's own) the client trusts.
    pub trusted: Vec<CertificateDer<'static>>,
    /// The ALPNs to offer, preferred first: every version this library speaks, newest first
    /// ([`Version::ALL`]), unless testing something else. The server picks the newest it serves,
    /// and the connection speaks that version.
    pub alpns: Vec<Vec<u8>>,
    /// Whether to let the server open the push stream (one unidirectional stream). A client
    /// that only fetches may grant none.
    pub accept_push: bool,
}

impl ClientConfig {
    /// A configuration trusting the certificates in the PEM file `trusted`.
    pub fn new(
        server_addr: SocketAddr,
        server_name: impl Into<String>,
        trusted: &Path,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            server_addr,
            server_name: server_name.into(),
            trusted: tls::load_certificates(trusted)?,
            alpns: Version::ALL.iter().map(|v| v.alpn().to_vec()).collect(),
            accept_push: true,
        })
    }
}

/// What can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid client configuration: {0}")]
    Config(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream failed: {0}")]
    Stream(String),
    #[error("the server refused: {0}")]
    Server(ErrorResponse),
    #[error("the server sent something this client cannot read: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The server's error code, if the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server(e) => Some(e.code()),
            _ => None,
        }
    }

    /// Whether sending the same request again later may succeed: the server's classification
    /// of its refusal (protocol-spec/core.md section 6), and yes for a lost connection.
    pub fn retry(&self) -> crate::protocol::Retry {
        use crate::protocol::Retry;
        match self {
            Self::Server(e) => e.retry(),
            Self::Connect(_) | Self::Connection(_) | Self::Stream(_) => Retry::Later,
            Self::Config(_) | Self::Protocol(_) => Retry::Never,
        }
    }

    /// The soonest time to retry that the server hinted (`roost/2`; a rate limit's wait).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Server(e) => e.retry_after_hint(),
            _ => None,
        }
    }
}

/// Sends a request until it is answered or refused for good: after a failure that may pass
/// (`ClientError::retry`), the very same request is sent again, a few times, with growing
/// pauses. Safe for group sends: the server recognises a retried commit, proposal or message by
/// its bytes and answers it without acting twice (protocol-spec/groups.md, "Retries").
pub async fn with_retries<T, F, Fut>(mut request: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    const PAUSES: [Duration; 3] = [
        Duration::from_millis(100),
        Duration::from_millis(400),
        Duration::from_millis(1600),
    ];
    let mut pauses = PAUSES.iter();
    loop {
        match request().await {
            // A full queue drains only when its owner reads: not within these pauses.
            Err(e)
                if e.retry() == crate::protocol::Retry::Later
                    && e.code() != Some(ErrorCode::QueueFull) =>
            {
                match pauses.next() {
                    // Not sooner than the server asked (at most our longest pause: a longer
                    // wait is the caller's to decide).
                    Some(pause) => {
                        let asked = e.retry_after().unwrap_or_default().min(PAUSES[2]);
                        tokio::time::sleep((*pause).max(asked)).await
                    }
                    None => return Err(e),
                }
            }
            answered => return answered,
        }
    }
}

impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> Self {
        Self::Protocol(e.to_string())
    }
}

/// A connection to a homeserver.
pub struct Connection {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    /// The version the handshake chose: every envelope on the connection carries it.
    version: Version,
}

impl Connection {
    pub async fn connect(config: &ClientConfig) -> Result<Self, ClientError> {
        let tls = tls::client_config(&config.trusted, &config.alpns)
            .map_err(|e| ClientError::Config(format!("{e:#}")))?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let mut quinn_config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
            // The server opens exactly one unidirectional stream: the push stream.
            .max_concurrent_uni_streams(u32::from(config.accept_push).into());
        quinn_config.transport_config(Arc::new(transport));

        let bind: SocketAddr = if config.server_addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|e| ClientError::Connect(e.to_string()))?;
        endpoint.set_default_client_config(quinn_config);
        let connection = endpoint
            .connect(config.server_addr, &config.server_name)
            .map_err(|e| ClientError::Connect(e.to_string()))?
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        // A server that chose no client version (a test's other ALPN) is spoken to in the newest.
        let version = connection
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.protocol)
            .and_then(|alpn| Version::from_alpn(&alpn))
            .unwrap_or(Version::LATEST);
        Ok(Self {
            endpoint,
            connection,
            version,
        })
    }

    /// The protocol version this connection speaks (the newest both sides serve).
    pub fn version(&self) -> Version {
        self.version
    }

    /// Sends `request` on a new stream and returns the response body, or the server's error.
    pub async fn request(&self, request: &Request) -> Result<ResponseBody, ClientError> {
        let bytes = encode_request(self.version, request)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        match self.request_raw(&bytes).await? {
            Response::Ok(body) => Ok(body),
            Response::Error(e) => Err(ClientError::Server(e)),
        }
    }

    /// Sends `bytes` as a request, whatever they are, and decodes the response. For tools and
    /// tests that need to send what [`Connection::request`] would never encode.
    pub async fn request_raw(&self, bytes: &[u8]) -> Result<Response, ClientError> {
        let (mut send, mut recv) = self.connection.open_bi().await?;
        // A server refusing an oversize request stops reading; its answer still comes back.
        if send.write_all(bytes).await.is_ok() {
            let _ = send.finish();
        }
        let response = recv
            .read_to_end(MAX_RESPONSE_LEN)
            .await
            .map_err(|e| ClientError::Stream(e.to_string()))?;
        Ok(decode_response(self.version, &response)?)
    }

    /// The server's domain, protocol version and limits.
    pub async fn server_info(&self) -> Result<ServerInfo, ClientError> {
        answer!(self, Request::GetServerInfo, ServerInfo)
    }

    /// Authenticates this connection as `client` with its signature key, and returns the push
    /// stream the server opens for it.
    pub async fn authenticate(
        &self,
        client: &ClientId,
        key: &SigningKey,
    ) -> Result<PushStream, ClientError> {
        let request = sign_authentication(key, &self.channel_binding()?, client);
        match self.request(&Request::Authenticate(request)).await? {
            ResponseBody::Authenticated(_) => {}
            other => return Err(unexpected(&other)),
        }
        let mut stream = self.connection.accept_uni().await?;
        let mut header = [0u8; PUSH_HEADER_LEN];
        stream
            .read_exact(&mut header)
            .await
            .map_err(|e| ClientError::Stream(e.to_string()))?;
        decode_push_header(self.version, header)?;
        Ok(PushStream { stream })
    }

    /// Authenticates this connection as `client` without taking the push stream: for clients
    /// that only fetch (a connection that grants the server no unidirectional stream is still
    /// authenticated, protocol-spec/authentication.md).
    pub async fn authenticate_without_push(
        &self,
        client: &ClientId,
        key: &SigningKey,
    ) -> Result<(), ClientError> {
        let request = sign_authentication(key, &self.channel_binding()?, client);
        answer!(self, Request::Authenticate(request), ResponseBody::Authenticated(_) => ())
    }

    /// The client this connection is authenticated as.
    pub async fn who_am_i(&self) -> Result<ClientId, ClientError> {
        answer!(self, Request::WhoAmI, WhoAmI)
    }

    /// Registers `user_id` with its first client, whose signature key is `key`. The proof of
    /// possession is bound to this connection.
    pub async fn register_user(
        &self,
        user_id: &str,
        key: &SigningKey,
        ciphersuite: u16,
        invite: Option<&str>,
    ) -> Result<ClientRegistered, ClientError> {
        let signature_key = key.verifying_key().to_bytes();
        let proof = key.sign(&register_proof_content(
            &self.channel_binding()?,
            user_id,
            &signature_key,
            ciphersuite,
        ));
        let invite = invite
            .map(Text::new)
            .transpose()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let request = RegisterUserRequest {
            user_id: Text::new(user_id).map_err(|e| ClientError::Config(e.to_string()))?,
            signature_key: signature_key.to_vec().into(),
            ciphersuite,
            invite,
            proof: proof.to_bytes().to_vec().into(),
        };
        answer!(self, Request::RegisterUser(request), UserRegistered)
    }

    /// Adds a client to the authenticated user. `request` comes from [`add_client_request`], made
    /// on the new device.
    pub async fn add_client(
        &self,
        request: AddClientRequest,
    ) -> Result<ClientRegistered, ClientError> {
        answer!(self, Request::AddClient(request), ClientAdded)
    }

    /// The authenticated user's clients.
    pub async fn list_clients(&self) -> Result<UserClients, ClientError> {
        answer!(self, Request::ListClients, Clients)
    }

    /// Removes one of the authenticated user's clients.
    pub async fn remove_client(&self, client: &ClientId) -> Result<(), ClientError> {
        let request = RemoveClientRequest {
            client: client.clone(),
        };
        answer!(self, Request::RemoveClient(request), ResponseBody::ClientRemoved => ())
    }

    /// A fresh credential for the authenticated client.
    pub async fn renew_credential(&self) -> Result<ClientCredential, ClientError> {
        answer!(self, Request::RenewCredential, CredentialRenewed)
    }

    /// A user's clients with their credentials (unverified: see [`verify_user_clients`]).
    pub async fn lookup_user(&self, user_id: &str) -> Result<UserClients, ClientError> {
        let request = LookupUserRequest {
            user_id: Text::new(user_id).map_err(|e| ClientError::Config(e.to_string()))?,
        };
        answer!(self, Request::LookupUser(request), UserFound)
    }

    /// Deletes the authenticated user with all its clients and data. The server closes this
    /// connection afterwards.
    pub async fn delete_user(&self) -> Result<(), ClientError> {
        answer!(self, Request::DeleteUser, ResponseBody::UserDeleted => ())
    }

    /// Publishes KeyPackages (TLS-encoded MLS KeyPackages) for the authenticated client.
    pub async fn publish_key_packages(
        &self,
        key_packages: Vec<Vec<u8>>,
    ) -> Result<KeyPackageStatus, ClientError> {
        let request = PublishKeyPackagesRequest {
            key_packages: key_packages.into_iter().map(Into::into).collect(),
        };
        answer!(
            self,
            Request::PublishKeyPackages(request),
            KeyPackagesPublished
        )
    }

    /// Takes one KeyPackage of `ciphersuite` for every client of `user_id`.
    pub async fn claim_key_packages(
        &self,
        user_id: &str,
        ciphersuite: u16,
    ) -> Result<ClaimedKeyPackages, ClientError> {
        let request = ClaimKeyPackagesRequest {
            user_id: Text::new(user_id).map_err(|e| ClientError::Config(e.to_string()))?,
            ciphersuite,
        };
        answer!(self, Request::ClaimKeyPackages(request), KeyPackagesClaimed)
    }

    /// The KeyPackage stock of the authenticated user's clients.
    pub async fn key_package_status(&self) -> Result<KeyPackageStatus, ClientError> {
        answer!(self, Request::KeyPackageStatus, KeyPackageStatus)
    }

    /// Publishes KeyPackages for `me` when its stock is below the server's low watermark (up to
    /// [`KEY_PACKAGE_TARGET`], within the server's limit), and a last-resort KeyPackage when it
    /// has none. Returns how many were published.
    pub async fn top_up_key_packages(
        &self,
        me: &ClientId,
        mls: &mls::DeviceMls,
    ) -> Result<usize, ClientError> {
        let status = self.key_package_status().await?;
        let Some(stock) = status.clients.iter().find(|stock| &stock.client == me) else {
            return Err(ClientError::Protocol(format!(
                "{me} is missing from its own status"
            )));
        };
        let target = KEY_PACKAGE_TARGET.min(status.max_per_client);
        let count = if stock.remaining < status.low_watermark {
            target.saturating_sub(stock.remaining) as usize
        } else {
            0
        };
        let last_resort = !stock.has_last_resort.0;
        if count == 0 && !last_resort {
            return Ok(0);
        }
        let key_packages = mls
            .key_packages(count, last_resort)
            .map_err(|e| ClientError::Config(format!("{e:#}")))?;
        let published = key_packages.len();
        self.publish_key_packages(key_packages).await?;
        Ok(published)
    }

    /// Up to `max_count` queued messages from `from_seq` on, within about `max_bytes` of payload
    /// (at least one message if any is queued).
    pub async fn fetch_messages(
        &self,
        from_seq: u64,
        max_count: u32,
        max_bytes: u32,
    ) -> Result<FetchedMessages, ClientError> {
        let request = FetchMessagesRequest {
            from_seq,
            max_count,
            max_bytes,
        };
        answer!(self, Request::FetchMessages(request), Messages)
    }

    /// Deletes the queued messages up to and including `up_to_seq`.
    pub async fn ack_messages(&self, up_to_seq: u64) -> Result<(), ClientError> {
        match self
            .request(&Request::AckMessages(AckMessagesRequest { up_to_seq }))
            .await?
        {
            ResponseBody::MessagesAcked => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// From now on, read the MLS messages of groups hosted on this server from their logs
    /// (protocol-spec/queues.md, "Group logs") instead of the queue.
    pub async fn use_group_logs(&self) -> Result<(), ClientError> {
        answer!(self, Request::UseGroupLogs, ResponseBody::GroupLogsUsed => ())
    }

    /// The group logs this client may read, with its positions.
    pub async fn list_group_logs(&self) -> Result<GroupLogs, ClientError> {
        answer!(self, Request::ListGroupLogs, GroupLogs)
    }

    /// Up to `max_count` entries of a group's log from `from_gseq` on (0: after this client's
    /// acknowledged position), within about `max_bytes` of payload.
    pub async fn fetch_group_log(
        &self,
        group_id: &[u8],
        from_gseq: u64,
        max_count: u32,
        max_bytes: u32,
    ) -> Result<GroupLogMessages, ClientError> {
        let request = FetchGroupLogRequest {
            group_id: group_id.to_vec().into(),
            from_gseq,
            max_count,
            max_bytes,
        };
        answer!(self, Request::FetchGroupLog(request), GroupLogMessages)
    }

    /// Acknowledges a group log's entries up to and including `up_to_gseq`.
    pub async fn ack_group_log(&self, group_id: &[u8], up_to_gseq: u64) -> Result<(), ClientError> {
        let request = AckGroupLogRequest {
            group_id: group_id.to_vec().into(),
            up_to_gseq,
        };
        answer!(self, Request::AckGroupLog(request), ResponseBody::GroupLogAcked => ())
    }

    /// What offline push the server offers: its VAPID key and the gateways it allows.
    pub async fn push_info(&self) -> Result<crate::protocol::PushInfo, ClientError> {
        answer!(self, Request::GetPushInfo, PushInfo)
    }

    /// Registers a push target that wakes this client while it is not connected (the same
    /// endpoint again replaces the earlier registration).
    pub async fn add_push_target(
        &self,
        target: crate::protocol::PushTarget,
    ) -> Result<crate::protocol::PushTargetAdded, ClientError> {
        let request = crate::protocol::AddPushTargetRequest { target };
        answer!(self, Request::AddPushTarget(request), PushTargetAdded)
    }

    /// This client's push targets.
    pub async fn list_push_targets(
        &self,
    ) -> Result<Vec<crate::protocol::RegisteredPushTarget>, ClientError> {
        answer!(
            self,
            Request::ListPushTargets,
            ResponseBody::PushTargets(targets) => targets.targets
        )
    }

    /// Forgets one of this client's push targets.
    pub async fn remove_push_target(&self, target_id: u64) -> Result<(), ClientError> {
        let request = crate::protocol::RemovePushTargetRequest { target_id };
        answer!(self, Request::RemovePushTarget(request), ResponseBody::PushTargetRemoved => ())
    }

    /// Registers a new group (this device alone) with the server.
    pub async fn create_group(
        &self,
        request: CreateGroupRequest,
    ) -> Result<GroupEpoch, ClientError> {
        answer!(self, Request::CreateGroup(request), GroupCreated)
    }

    /// Sends a commit (with its Welcome and GroupInfo).
    pub async fn send_commit(&self, request: SendCommitRequest) -> Result<GroupEpoch, ClientError> {
        answer!(self, Request::SendCommit(request), CommitAccepted)
    }

    /// Sends an application message.
    pub async fn send_message(
        &self,
        request: SendMessageRequest,
    ) -> Result<MessageAccepted, ClientError> {
        answer!(self, Request::SendMessage(request), MessageAccepted)
    }

    /// A group's members, tree and GroupInfo (members only).
    pub async fn get_group(&self, group_id: &[u8]) -> Result<GroupState, ClientError> {
        let request = GetGroupRequest {
            group_id: group_id.to_vec().into(),
        };
        answer!(self, Request::GetGroup(request), Group)
    }

    /// The encoded `RatchetTree` of `group_id` at `epoch` (the epoch of a Welcome that came
    /// without it, or the current one), fetched in chunks. Members only.
    pub async fn fetch_group_tree(
        &self,
        group_id: &[u8],
        epoch: u64,
    ) -> Result<Vec<u8>, ClientError> {
        /// A tree larger than this is refused rather than buffered (about 100,000 members).
        const MAX_TREE_LEN: usize = 64 * 1024 * 1024;
        let mut tree = Vec::new();
        loop {
            let request = FetchGroupTreeRequest {
                group_id: group_id.to_vec().into(),
                epoch,
                offset: u32::try_from(tree.len())
                    .map_err(|_| ClientError::Protocol("a ratchet tree too large".into()))?,
            };
            let chunk = match self.request(&Request::FetchGroupTree(request)).await? {
                ResponseBody::GroupTree(chunk) => chunk,
                other => return Err(unexpected(&other)),
            };
            let total_len = chunk.total_len as usize;
            if chunk.epoch != epoch
                || chunk.offset as usize != tree.len()
                || total_len > MAX_TREE_LEN
                || tree.len() + chunk.chunk.as_slice().len() > total_len
                || (chunk.chunk.as_slice().is_empty() && tree.len() < total_len)
            {
                return Err(ClientError::Protocol(format!(
                    "a ratchet tree chunk that does not fit: epoch {}, offset {}, {} of {} bytes",
                    chunk.epoch,
                    chunk.offset,
                    chunk.chunk.as_slice().len(),
                    chunk.total_len
                )));
            }
            if tree.is_empty() {
                tree.reserve_exact(total_len);
            }
            tree.extend_from_slice(chunk.chunk.as_slice());
            if tree.len() == total_len {
                return Ok(tree);
            }
        }
    }

    /// Sends a proposal on its own (leaving, or an Admin's removal).
    pub async fn send_proposal(&self, request: SendProposalRequest) -> Result<(), ClientError> {
        answer!(self, Request::SendProposal(request), ResponseBody::ProposalAccepted => ())
    }

    /// Deletes a group (Admins only).
    pub async fn delete_group(&self, group_id: &[u8]) -> Result<(), ClientError> {
        let request = DeleteGroupRequest {
            group_id: group_id.to_vec().into(),
        };
        answer!(self, Request::DeleteGroup(request), ResponseBody::GroupDeleted => ())
    }

    /// The groups this client is in.
    pub async fn list_groups(&self) -> Result<GroupList, ClientError> {
        answer!(self, Request::ListGroups, Groups)
    }

    /// The groups any client of this device's user is in (here and at the hubs this server
    /// hears from), for a new device to join them by external commit.
    pub async fn list_user_groups(&self) -> Result<GroupList, ClientError> {
        answer!(self, Request::ListUserGroups, Groups)
    }

    /// The credential-verifying keys of any domain: this server's, or a peer's through it.
    pub async fn domain_keys_of(&self, domain: &str) -> Result<DomainKeys, ClientError> {
        let request = GetDomainKeysRequest {
            domain: Text::new(domain).map_err(|e| ClientError::Config(e.to_string()))?,
        };
        match self.request(&Request::GetDomainKeys(request)).await? {
            ResponseBody::DomainKeys(keys) => Ok(DomainKeys {
                domain: keys.domain.as_str().to_owned(),
                keys: keys.keys,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// The credential-verifying keys of the server's domain, from `GetServerInfo`.
    pub async fn domain_keys(&self) -> Result<DomainKeys, ClientError> {
        let info = self.server_info().await?;
        Ok(DomainKeys {
            domain: info.domain.as_str().to_owned(),
            keys: info.credential_keys,
        })
    }

    /// This connection's channel binding, the value an `Authenticate` signature covers.
    pub fn channel_binding(&self) -> Result<[u8; CHANNEL_BINDING_LEN], ClientError> {
        channel_binding(&self.connection).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// The underlying QUIC connection, for tools and tests that drive streams by hand.
    pub fn quic(&self) -> &quinn::Connection {
        &self.connection
    }

    /// Resolves when the connection closes, with the reason.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.connection.closed().await
    }

    /// Closes the connection and waits until the server has been told.
    pub async fn close(self) {
        self.connection.close(close_code::NORMAL.into(), b"done");
        self.endpoint.wait_idle().await;
    }
}

/// Builds the request that adds a new device to `user_id`: made on the new device (which holds
/// `new_key`), sent by an authenticated device of the same user.
pub fn add_client_request(
    user_id: &str,
    new_key: &SigningKey,
    ciphersuite: u16,
) -> AddClientRequest {
    let signature_key = new_key.verifying_key().to_bytes();
    let proof = new_key.sign(&add_client_proof_content(
        user_id,
        &signature_key,
        ciphersuite,
    ));
    AddClientRequest {
        signature_key: signature_key.to_vec().into(),
        ciphersuite,
        proof: proof.to_bytes().to_vec().into(),
    }
}

/// How many KeyPackages a device keeps on its server when it tops up.
pub const KEY_PACKAGE_TARGET: u32 = 30;

/// A client of a looked-up user, with the outcome of verifying its credential.
#[derive(Clone, Debug)]
pub struct VerifiedClient {
    pub entry: ClientEntry,
    pub verified: Result<ClientId, CredentialError>,
}

/// Verifies every credential of `clients` against the keys of the user's domain at `now`, and
/// checks each vouches for that user.
pub fn verify_user_clients(
    clients: &UserClients,
    keys: &DomainKeys,
    now: UnixTime,
) -> Vec<VerifiedClient> {
    clients
        .clients
        .iter()
        .map(|entry| {
            let verified = verify_credential(&entry.credential, keys, now).and_then(|client| {
                if client.user_id == clients.user_id {
                    Ok(client)
                } else {
                    Err(CredentialError::WrongDomain {
                        user: client.user_id.to_string(),
                        domain: keys.domain.clone(),
                    })
                }
            });
            VerifiedClient {
                entry: entry.clone(),
                verified,
            }
        })
        .collect()
}

/// Sends a request and returns the value its expected answer carries, or a protocol error for any
/// other answer: `answer!(client, Request::Name(body), Variant)` for the value of
/// `ResponseBody::Variant`, or `answer!(client, request, ResponseBody::Pattern => value)`.
macro_rules! answer {
    ($client:expr, $request:expr, $variant:ident) => {
        answer!($client, $request, ResponseBody::$variant(value) => value)
    };
    ($client:expr, $request:expr, $expected:pat => $value:expr) => {
        match $client.request(&$request).await? {
            $expected => Ok($value),
            other => Err($crate::client::unexpected(&other)),
        }
    };
}
pub(crate) use answer;

pub(crate) fn unexpected(body: &ResponseBody) -> ClientError {
    ClientError::Protocol(format!("unexpected response body {body:?}"))
}

/// The server's push stream: notifications, in order, as they come.
pub struct PushStream {
    stream: quinn::RecvStream,
}

impl PushStream {
    /// The next notification; `None` once the server has finished the stream. Notification kinds
    /// this client does not know are skipped.
    pub async fn next(&mut self) -> Option<Result<Notification, ClientError>> {
        loop {
            let mut prefix = [0u8; NOTIFICATION_LENGTH_PREFIX_LEN];
            match self.stream.read_exact(&mut prefix).await {
                Ok(()) => {}
                Err(quinn::ReadExactError::FinishedEarly(0)) => return None,
                Err(e) => return Some(Err(ClientError::Stream(e.to_string()))),
            }
            let len = u32::from_be_bytes(prefix) as usize;
            if len > MAX_NOTIFICATION_LEN {
                return Some(Err(ClientError::Protocol(format!(
                    "notification of {len} bytes exceeds the limit of {MAX_NOTIFICATION_LEN}"
                ))));
            }
            let mut body = vec![0u8; len];
            if let Err(e) = self.stream.read_exact(&mut body).await {
                return Some(Err(ClientError::Stream(e.to_string())));
            }
            match decode_notification(&body) {
                Ok(Some(notification)) => return Some(Ok(notification)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
}
