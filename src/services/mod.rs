//! The services: what the server does for a decoded request once the transport knows who asks.
//!
//! Each service owns its rules and reaches storage only through the store's typed operations.
//! Services return typed errors ([`ServiceError`]); the transport maps them to wire codes.
//! They reach connected clients only through [`Sessions`], which the transport implements.

mod accounts;
pub mod admin;
mod cluster;
pub mod credential_keys;
mod federation;
mod group_state;
mod groups;
pub mod invites;
mod key_packages;
mod push;
mod push_delivery;
mod queues;
mod reach;
mod routing;
mod transparency;
mod transparency_routing;
mod wire_error;

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;

pub use accounts::Accounts;
pub use federation::Federation;
pub use groups::Groups;
pub use key_packages::{
    validate_key_package, KeyPackageRejection, KeyPackages, MAX_KEY_PACKAGE_LIFETIME,
};
pub use push::{Push, PushStats, VAPID_KEY_FILE};
pub use push_delivery::EndpointRules;
pub use queues::{Delivery, Queues};
pub use transparency::Transparency;
pub use wire_error::wire_error;

use crate::clock::UnixTime;
use crate::config::{ServerConfig, ServerLimits};
use crate::protocol::{
    ClientId, DomainKeysBody, GroupRequest, Limits, Notification, Operation, Request, ResponseBody,
    ServerInfo, Text, TransparencyQuery, CHANNEL_BINDING_LEN,
};
use crate::store::{Store, StoreError};
use invites::InviteError;

/// The lease of the maintenance purge (one node of a shared store runs it).
const MAINTENANCE_LEASE: &str = "maintenance";

/// Leases of jobs one node runs at a time.
pub(crate) mod leases {
    use crate::clock::{Clock, SystemClock};
    use crate::store::{LeaseFence, Store};

    /// Whether node `node` holds (took or renewed) the lease `name` for `duration_ms`, with
    /// the fence its job's writes carry (`None` on an unshared store, where the one node always
    /// holds every lease). A store failure counts as not holding it (the job waits a round).
    pub(crate) async fn hold(
        store: &Store,
        node: u64,
        name: &str,
        duration_ms: u64,
    ) -> Option<Option<LeaseFence>> {
        if !store.is_shared() {
            return Some(None);
        }
        match store
            .hold_lease(name, node, SystemClock.now_ms(), duration_ms)
            .await
        {
            Ok(held) => held.map(|generation| {
                Some(LeaseFence {
                    lease: name.to_owned(),
                    holder: node,
                    generation,
                })
            }),
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "cannot take a lease");
                None
            }
        }
    }
}

/// Runs CPU-heavy work (openmls verification of commits and proposals, decoding and encoding a
/// group's state: over 100 ms for a commit in a group of 1,000) without stalling the other
/// tasks of the async worker thread it is called on: on the multi-thread runtime the worker
/// hands its other tasks to another thread first (`block_in_place`); elsewhere it just runs.
pub(crate) fn cpu_bound<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// The connected clients, as the services see them (implemented by the transport).
pub trait Sessions: Send + Sync {
    /// Queues a notification for every connection of `client`; returns how many took it.
    fn notify(&self, client: &ClientId, notification: &Notification) -> usize;
    /// Closes every connection of `client` once its in-flight requests are answered.
    fn disconnect(&self, client: &ClientId);
    /// This node's connections: what layers over the sessions (the cluster's events, offline
    /// push) add to delivery does not change who is connected here.
    fn connections(&self) -> &dyn Connections;
    /// Tells every connection of `client` that `message` was queued for it (a `NewMessages`
    /// hint, carrying the message when it is small). Never blocks; a connection that has not
    /// read the previous hint gets only the latest, with the newest messages that fit. Returns
    /// how many connections it told.
    fn new_message(&self, client: &ClientId, message: &PushedMessage) -> usize;
    /// Tells every connection of the `readers` (user id, device id) that `message` was appended
    /// to the log of group `group_id` (a `GroupLogAppended` hint, coalesced per group like
    /// `NewMessages`). Never blocks.
    fn log_appended(&self, readers: &[&ClientId], group_id: &Arc<[u8]>, message: &PushedMessage);
}

/// Who is connected to this node.
pub trait Connections: Send + Sync {
    /// Whether `client` has an authenticated connection.
    fn connected(&self, client: &ClientId) -> bool;
    /// How many clients have an authenticated connection.
    fn connected_clients(&self) -> usize;
}

/// A message just queued for one client, as a `NewMessages` hint may carry it.
#[derive(Clone, Debug)]
pub struct PushedMessage {
    pub seq: u64,
    pub enqueued_at_ms: u64,
    pub kind: crate::protocol::MessageKind,
    /// Shared by every recipient of a fanned-out message.
    pub payload: Arc<Vec<u8>>,
    /// Whether `payload` is the message; `false` when it was too large to pass between nodes
    /// (the hint then only announces the message).
    pub carried: bool,
}

/// Tells the connected recipients of `envelopes` what was queued for them (`outcomes`, in the
/// same order, from the store).
fn announce_queued(
    sessions: &dyn Sessions,
    envelopes: &[crate::store::Envelope],
    outcomes: &[crate::store::Enqueued],
    enqueued_at_ms: u64,
) {
    // The group a logged message belongs to, read once per message (not per recipient).
    type GroupOfMessage = Option<(*const Vec<u8>, Option<Arc<[u8]>>)>;
    let mut group_of: GroupOfMessage = None;
    for (envelope, outcome) in envelopes.iter().zip(outcomes) {
        let kind = envelope.kind;
        let (seq, logged) = match *outcome {
            crate::store::Enqueued::Queued { seq } => (seq, false),
            crate::store::Enqueued::Logged { gseq } => (gseq, true),
            _ => continue,
        };
        let message = PushedMessage {
            seq,
            enqueued_at_ms,
            kind,
            carried: true,
            payload: envelope.payload.clone(),
        };
        if !logged {
            sessions.new_message(&envelope.client, &message);
            continue;
        }
        let key = Arc::as_ptr(&envelope.payload);
        if group_of.as_ref().is_none_or(|(known, _)| *known != key) {
            let group_id = queues::mls_group_id(&envelope.payload).map(Arc::from);
            group_of = Some((key, group_id));
        }
        if let Some((_, Some(group_id))) = &group_of {
            let reader = [&envelope.client];
            sessions.log_appended(&reader, group_id, &message);
        }
    }
}

/// Who is asking: the connection's authenticated client (if any) and its channel binding.
pub struct Caller<'a> {
    pub client: Option<&'a ClientId>,
    pub channel_binding: &'a [u8; CHANNEL_BINDING_LEN],
    /// Where the connection comes from (for per-source limits such as registrations).
    pub source: crate::rate_limit::Source,
    /// The client protocol version the connection speaks.
    pub version: crate::protocol::Version,
}

/// What a service can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("this operation needs an authenticated connection")]
    NotAuthenticated,
    #[error("{0}")]
    InvalidUserId(String),
    #[error("the user id's domain is not this server's")]
    WrongDomain,
    #[error("the user id is taken")]
    UserExists,
    #[error("the user id belonged to a deleted account; it can be registered again from {until}")]
    UserQuarantined { until: UnixTime },
    #[error("this server takes no registrations")]
    RegistrationClosed,
    #[error("this server takes registrations by invitation only")]
    InviteRequired,
    #[error("{0}")]
    InvalidInvite(InviteError),
    #[error("the signature key is not a valid Ed25519 public key")]
    InvalidKey,
    #[error("the proof of possession of the signature key does not verify")]
    InvalidProof,
    #[error("the signature key already belongs to a client")]
    KeyInUse,
    #[error("ciphersuite {0:#06x} is not supported")]
    UnsupportedCiphersuite(u16),
    #[error("no such user")]
    UnknownUser,
    #[error("no such client")]
    UnknownClient,
    #[error("a user's last client cannot be removed; delete the user instead")]
    LastClient,
    #[error("the user has as many clients as allowed")]
    TooManyClients,
    #[error("not allowed for this client")]
    Forbidden,
    #[error("domain {0} is not served here")]
    UnknownDomain(String),
    #[error("KeyPackage {index} refused: {reason}")]
    KeyPackageRejected {
        index: usize,
        reason: KeyPackageRejection,
    },
    #[error("{stock} KeyPackages would exceed the limit of {limit} per client")]
    TooManyKeyPackages { stock: usize, limit: usize },
    #[error("{bytes} bytes of KeyPackages would exceed the limit of {limit} per user")]
    TooManyKeyPackageBytes { bytes: usize, limit: usize },
    #[error("cannot acknowledge up to {up_to_seq}: the queue has assigned only up to {}", next_seq.saturating_sub(1))]
    InvalidSequence { up_to_seq: u64, next_seq: u64 },
    #[error("too many requests; retry in {} ms", retry_after.as_millis())]
    RateLimited { retry_after: std::time::Duration },
    #[error("a group with this id exists")]
    GroupExists,
    #[error("no such group")]
    UnknownGroup,
    #[error("not a member of the group")]
    NotAMember,
    #[error("the group is at epoch {current}")]
    WrongEpoch { current: u64 },
    #[error("{0}")]
    InvalidMlsMessage(String),
    #[error("the GroupInfo does not match the commit: {0}")]
    GroupInfoMismatch(String),
    #[error("a member credential is not valid: {0}")]
    InvalidMemberCredential(String),
    #[error("the Welcome does not match the commit: {0}")]
    WelcomeMismatch(String),
    #[error("only an Admin of the group may do this")]
    NotAnAdmin,
    #[error("the commit must include every proposal pending for its epoch")]
    ProposalsNotCommitted,
    #[error("the group's last Admin cannot leave or be removed; delete the group instead")]
    LastAdmin,
    #[error("the peer homeserver is unavailable: {0}")]
    PeerUnavailable(String),
    /// The peer and this server do not accept each other's certificates: a configuration
    /// matter for their operators, said as such.
    #[error("{0}")]
    PeerDeclined(String),
    #[error("identify this homeserver first")]
    NotIdentified,
    #[error("refused: {0}")]
    PeerRefused(String),
    #[error("the peer homeserver refused: {0}")]
    Peer(crate::protocol::ErrorResponse),
    #[error("a proposal about this member is pending already: {0}")]
    ProposalConflict(String),
    #[error("the group id does not name this server as the group's hub")]
    InvalidGroupId,
    #[error("no ratchet tree is kept for epoch {epoch} of the group")]
    TreeNotKept { epoch: u64 },
    #[error("{0}")]
    PushTargetRefused(String),
    #[error("a client has at most {limit} push targets; remove one first")]
    TooManyPushTargets { limit: usize },
    #[error("no such push target")]
    UnknownPushTarget,
    #[error("full queues, nothing was accepted: {}", name_some(full))]
    QueueFull { full: Vec<ClientId> },
    #[error("no tree head of size {0} was published (or the sizes are out of order)")]
    UnknownTreeHead(u64),
    #[error("operation {0:?} is handled by the transport, not a service")]
    NotAServiceOperation(Operation),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The first few of `clients`, and how many more, for a message that must stay short.
fn name_some(clients: &[ClientId]) -> String {
    const NAMED: usize = 8;
    let mut named: Vec<String> = clients
        .iter()
        .take(NAMED)
        .map(ToString::to_string)
        .collect();
    if clients.len() > NAMED {
        named.push(format!("and {} more", clients.len() - NAMED));
    }
    named.join(", ")
}

impl ServiceError {
    /// Whether the same request may succeed later, unchanged; the same classification as the
    /// wire codes these errors become (`ErrorCode::retry`), checked by a transport test.
    pub fn retry(&self) -> crate::protocol::Retry {
        use crate::protocol::Retry;
        match self {
            Self::RateLimited { .. }
            | Self::QueueFull { .. }
            | Self::PeerUnavailable(_)
            | Self::PeerDeclined(_)
            | Self::NotAServiceOperation(_) => Retry::Later,
            Self::Store(StoreError::ActorRemoved)
            | Self::Store(StoreError::DomainMismatch { .. }) => Retry::Never,
            Self::Store(_) => Retry::Later,
            Self::Peer(refusal) => refusal.retry(),
            _ => Retry::Never,
        }
    }
}

/// The services of one server.
pub struct Services {
    domain: crate::protocol::Text,
    limits: Limits,
    accounts: Arc<Accounts>,
    groups: Groups,
    federation: Option<Arc<Federation>>,
    federation_config: Option<crate::config::FederationConfig>,
    store: Store,
    outbox_wake: federation::OutboxWake,
    key_packages: KeyPackages,
    queues: Arc<Queues>,
    push: Arc<Push>,
    transparency: Arc<Transparency>,
    sessions: Arc<dyn Sessions>,
    maintenance_interval: std::time::Duration,
    tree_head_interval: std::time::Duration,
    /// This node's id among the nodes sharing the store (leases, events).
    node: u64,
    /// The way to the other nodes, on a shared store.
    cluster: Option<ClusterLink>,
    /// Events on the bus refused as not sealed by a node of this domain, stale or replayed.
    cluster_events_refused: Arc<std::sync::atomic::AtomicU64>,
}

/// What a node of a shared store needs to hear the other nodes.
struct ClusterLink {
    bus: Arc<dyn crate::store::EventBus>,
    /// This node's own connections, which other nodes' events act on.
    local: Arc<dyn Sessions>,
    /// The key events are sealed with.
    key: crate::protocol::cluster::EventKey,
}

impl Services {
    /// The store the services share.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Deletes a local user and everything of it, then removes its clients from their groups
    /// (here and at remote hubs). Acts as the user's own request while the user exists (so a
    /// concurrent deletion wins cleanly), then as the server. Returns how many clients it had.
    pub async fn delete_user(&self, user_id: &Text) -> Result<usize, ServiceError> {
        let mut departing = Vec::new();
        for client in self.accounts.user(user_id.as_str()).await?.clients {
            let client = client.credential.content.client;
            let groups = self.groups.memberships(&client).await?;
            departing.push((client, groups));
        }
        let clients: Vec<ClientId> = departing.iter().map(|(client, _)| client.clone()).collect();
        let hubs = self.hubs_of(&clients).await;
        self.accounts.delete_user(user_id).await?;
        // The server's own follow-up, now that the user is gone.
        crate::store::acting_for(None, async {
            for (client, groups) in &departing {
                self.groups.remove_departed(client, groups).await;
            }
            self.tell_hubs_of_departures(hubs, clients).await;
        })
        .await;
        Ok(departing.len())
    }

    /// Issues an invite valid until `expires_at` for `max_uses` registrations: (code, id).
    pub async fn issue_invite(
        &self,
        expires_at: UnixTime,
        max_uses: u32,
    ) -> Result<(String, String), ServiceError> {
        self.accounts.issue_invite(expires_at, max_uses).await
    }

    pub fn new(
        config: &ServerConfig,
        identity: &crate::tls::TlsIdentity,
        store: Store,
        sessions: Arc<dyn Sessions>,
        bus: Option<Arc<dyn crate::store::EventBus>>,
    ) -> anyhow::Result<Self> {
        let node = rand::random::<u64>();
        // On a shared store, what the services tell clients also goes to the other nodes.
        let local_sessions = sessions.clone();
        // Only nodes of a shared store seal events (with a key from the invite key they share).
        let bus = match bus {
            Some(bus) => {
                let invite_key = invites::InviteKey::load_or_create(&config.data_dir)?;
                let key =
                    crate::protocol::cluster::EventKey(invite_key.derive(cluster::EVENT_KEY_LABEL));
                Some((bus, key))
            }
            None => None,
        };
        let cluster_sessions = bus.as_ref().map(|(bus, key)| {
            Arc::new(cluster::ClusterSessions::new(
                sessions.clone(),
                node,
                bus.clone(),
                key.clone(),
            ))
        });
        let sessions: Arc<dyn Sessions> = match &cluster_sessions {
            Some(cluster) => cluster.clone(),
            None => sessions,
        };
        let push = Arc::new(Push::new(
            &config.push,
            &config.data_dir,
            config.domain.as_str(),
            store.clone(),
            sessions.clone(),
            cluster_sessions.clone(),
        )?);
        // Every service reaches clients through these: what no connection takes wakes the
        // client through its push targets.
        let sessions: Arc<dyn Sessions> = Arc::new(push::PushingSessions {
            inner: sessions,
            push: push.clone(),
        });
        let queues = Arc::new(Queues::new(config, store.clone(), sessions.clone()));
        let accounts = Arc::new(Accounts::new(config, store.clone(), sessions.clone())?);
        let federation = config
            .federation
            .as_ref()
            .map(|federation| Federation::new(&config.domain, federation, identity).map(Arc::new))
            .transpose()?;
        let outbox_wake = Arc::new(federation::OutboxSignal::new(cluster_sessions));
        let transparency = Arc::new(Transparency::new(
            config.domain.clone(),
            store.clone(),
            config.clock.clone(),
            accounts.clone(),
        ));
        Ok(Self {
            domain: config.domain.to_text(),
            limits: ServerLimits::announced(&config.limits),
            groups: Groups::new(
                config,
                store.clone(),
                sessions.clone(),
                accounts.clone(),
                outbox_wake.clone(),
                federation.clone(),
            ),
            federation,
            federation_config: config.federation.clone(),
            store: store.clone(),
            outbox_wake,
            accounts,
            key_packages: KeyPackages::new(config, store, queues.clone()),
            queues,
            push,
            transparency,
            sessions,
            maintenance_interval: config.maintenance_interval,
            tree_head_interval: config.tree_head_interval,
            node,
            cluster: bus.map(|(bus, key)| ClusterLink {
                bus,
                local: local_sessions,
                key,
            }),
            cluster_events_refused: Arc::default(),
        })
    }

    /// Publishes transparency tree heads on the configured interval until `stop` is cancelled.
    pub async fn run_transparency(&self, stop: tokio_util::sync::CancellationToken) {
        self.transparency.run(self.tree_head_interval, stop).await
    }

    /// Purges expired data every maintenance interval until `stop` is cancelled. On a shared
    /// store one node does it: the one holding the maintenance lease.
    pub async fn run_maintenance(&self, stop: tokio_util::sync::CancellationToken) {
        let mut ticks = tokio::time::interval(self.maintenance_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Held across two ticks, so the holder renews it before it runs out.
        let lease_ms = (self.maintenance_interval.as_millis() as u64)
            .saturating_mul(2)
            .max(1_000);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            if self.holds_lease(MAINTENANCE_LEASE, lease_ms).await {
                self.purge_expired().await;
            }
        }
        self.release_lease(MAINTENANCE_LEASE).await;
    }

    /// Whether this node holds (took or renewed) the lease `name` for `duration_ms`. Always on an
    /// unshared store: its one node runs everything.
    async fn holds_lease(&self, name: &str, duration_ms: u64) -> bool {
        leases::hold(&self.store, self.node, name, duration_ms)
            .await
            .is_some()
    }

    async fn release_lease(&self, name: &str) {
        if self.store.is_shared() {
            if let Err(e) = self.store.release_lease(name, self.node).await {
                tracing::debug!(lease = name, error = %e, "could not give a lease up");
            }
        }
    }

    /// Applies the other nodes' events to this node's connections until `stop` (nothing to do on
    /// an unshared store).
    pub async fn run_cluster(&self, stop: tokio_util::sync::CancellationToken) {
        if let Some(link) = &self.cluster {
            let targets = cluster::EventTargets {
                local: link.local.clone(),
                outbox_wake: self.outbox_wake.clone(),
                push: self.push.clone(),
            };
            let refused = self.cluster_events_refused.clone();
            let (bus, key) = (link.bus.clone(), link.key.clone());
            cluster::run_cluster_events(bus, self.node, key, targets, refused, stop).await;
        }
    }

    /// Events on the node bus refused since start: not sealed by a node of this domain, stale
    /// or replayed.
    pub fn cluster_events_refused(&self) -> u64 {
        self.cluster_events_refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// Wakes clients that are not connected through their push targets until `stop`.
    pub async fn run_push(&self, stop: tokio_util::sync::CancellationToken) {
        self.push.clone().run(stop).await;
    }

    /// Offline push's counters.
    /// `KeyPackagesLow` notices sent since the server started.
    pub fn key_package_low_notices(&self) -> u64 {
        self.key_packages.low_notices()
    }

    /// Clients with at least one authenticated connection.
    pub fn connected_clients(&self) -> usize {
        self.sessions.connections().connected_clients()
    }

    /// This server as a client of its peers, when it federates.
    pub fn federation(&self) -> Option<&Federation> {
        self.federation.as_deref()
    }

    pub fn push_stats(&self) -> &PushStats {
        self.push.stats()
    }

    /// Sends the federation outbox until `stop` (a no-op for a server that does not federate).
    pub async fn run_outbox(&self, stop: tokio_util::sync::CancellationToken) {
        if let Some(federation) = &self.federation {
            federation
                .run_outbox(self.store.clone(), &self.outbox_wake, self.node, stop)
                .await;
        }
    }

    /// Whether `peer` may federate with this server (allow-list or open federation).
    pub fn federation_allows(&self, peer: &str) -> bool {
        peer != self.domain.as_str()
            && self
                .federation_config
                .as_ref()
                .is_some_and(|config| config.allows(peer))
    }

    /// The peer trust this server federates with, if it federates.
    pub fn peer_trust(&self) -> Option<&crate::tls::PeerTrust> {
        self.federation_config.as_ref().map(|config| &config.trust)
    }

    fn own_domain_keys(&self) -> DomainKeysBody {
        DomainKeysBody {
            domain: self.domain.clone(),
            keys: self.accounts.published_keys(),
        }
    }

    /// Closes outgoing federation connections (on shutdown).
    pub fn close_federation(&self) {
        if let Some(federation) = &self.federation {
            federation.close();
        }
    }

    /// Purges expired KeyPackages, queued messages, delivery ids and remembered group requests
    /// (the maintenance task's work).
    pub async fn purge_expired(&self) {
        let purged = [
            (
                "expired KeyPackages",
                self.key_packages.purge_expired().await.map(|n| n as u64),
            ),
            ("expired queued messages", self.queues.purge_expired().await),
            (
                "delivery ids past the dedupe window",
                self.queues
                    .purge_received_deliveries()
                    .await
                    .map(|n| n as u64),
            ),
            (
                "group requests past the dedupe window",
                self.groups.forget_expired_requests().await,
            ),
        ];
        for (what, outcome) in purged {
            match outcome {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "purged {what}"),
                Err(e) => tracing::warn!(error = %e, "purging {what} failed"),
            }
        }
    }

    pub fn queues(&self) -> &Arc<Queues> {
        &self.queues
    }

    /// The signature key `client` authenticates with, if the client exists.
    pub async fn client_signature_key(
        &self,
        client: &ClientId,
    ) -> Result<Option<VerifyingKey>, ServiceError> {
        self.accounts.signature_key(client).await
    }

    /// Handles a request for `caller`. Every store write it makes for an authenticated caller
    /// checks, in its own transaction, that the caller still exists (`store::acting_for`).
    pub async fn handle(
        &self,
        caller: &Caller<'_>,
        request: Request,
    ) -> Result<ResponseBody, ServiceError> {
        let actor = caller.client.cloned();
        crate::store::acting_for(actor, self.handle_as_caller(caller, request)).await
    }

    /// The one place a client's request meets the service that serves it: a table, one arm a
    /// request (kept unformatted so that it reads as one).
    #[rustfmt::skip]
    async fn handle_as_caller(
        &self,
        caller: &Caller<'_>,
        request: Request,
    ) -> Result<ResponseBody, ServiceError> {
        use ResponseBody as Body;
        let client = || caller.client.ok_or(ServiceError::NotAuthenticated);
        let (accounts, key_packages, queues, push) = (&self.accounts, &self.key_packages, &self.queues, &self.push);
        Ok(match request {
            Request::GetServerInfo => Body::ServerInfo(self.server_info(caller)),
            Request::WhoAmI => Body::WhoAmI(client()?.clone()),
            Request::RegisterUser(r) => Body::UserRegistered(accounts.register(caller, r).await?),
            Request::AddClient(r) => Body::ClientAdded(accounts.add_client(client()?, r).await?),
            Request::ListClients => Body::Clients(accounts.list_clients(client()?).await?),
            Request::RemoveClient(r) => self.remove_client(client()?, &r.client).await?,
            Request::RenewCredential => Body::CredentialRenewed(accounts.renew_credential(client()?).await?),
            Request::LookupUser(r) => Body::UserFound(self.lookup_user(client()?, r).await?),
            Request::GetDomainKeys(r) => Body::DomainKeys(self.domain_keys(client()?, &r.domain).await?),
            Request::DeleteUser => self.delete_user(&client()?.user_id).await.map(|_| Body::UserDeleted)?,
            Request::PublishKeyPackages(r) => Body::KeyPackagesPublished(key_packages.publish(client()?, r).await?),
            Request::ClaimKeyPackages(r) => Body::KeyPackagesClaimed(self.claim_key_packages(client()?, r).await?),
            Request::KeyPackageStatus => Body::KeyPackageStatus(key_packages.status(client()?).await?),
            Request::FetchMessages(r) => Body::Messages(queues.fetch(client()?, r).await?),
            Request::AckMessages(r) => self.caught_up(client()?, queues.ack(client()?, r).await).map(|_| Body::MessagesAcked)?,
            Request::GetPushInfo => Body::PushInfo(push.info()),
            Request::AddPushTarget(r) => Body::PushTargetAdded(push.add(client()?, r).await?),
            Request::ListPushTargets => Body::PushTargets(push.list(client()?).await?),
            Request::RemovePushTarget(r) => push.remove(client()?, r.target_id).await.map(|_| Body::PushTargetRemoved)?,
            Request::UseGroupLogs => queues.use_group_logs(client()?).await.map(|_| Body::GroupLogsUsed)?,
            Request::ListGroupLogs => Body::GroupLogs(queues.list_group_logs(client()?).await?),
            Request::FetchGroupLog(r) => Body::GroupLogMessages(queues.fetch_group_log(client()?, r).await?),
            Request::AckGroupLog(r) => self.caught_up(client()?, queues.ack_group_log(client()?, r).await).map(|_| Body::GroupLogAcked)?,
            Request::CreateGroup(r) => Body::GroupCreated(self.groups.create(client()?, r).await?),
            Request::ListGroups => Body::Groups(self.list_groups(client()?, GroupRequest::ListGroups).await?),
            Request::ListUserGroups => Body::Groups(self.list_groups(client()?, GroupRequest::ListUserGroups).await?),
            Request::SendCommit(r) => self.routed_group_request(client()?, GroupRequest::SendCommit(r)).await?,
            Request::SendMessage(r) => self.routed_group_request(client()?, GroupRequest::SendMessage(r)).await?,
            Request::GetGroup(r) => self.routed_group_request(client()?, GroupRequest::GetGroup(r)).await?,
            Request::SendProposal(r) => self.routed_group_request(client()?, GroupRequest::SendProposal(r)).await?,
            Request::DeleteGroup(r) => self.routed_group_request(client()?, GroupRequest::DeleteGroup(r)).await?,
            Request::FetchGroupTree(r) => self.routed_group_request(client()?, GroupRequest::FetchGroupTree(r)).await?,
            Request::GetTreeHead(r) => self.transparency_query(TransparencyQuery::GetTreeHead(r)).await?,
            Request::ProveBindings(r) => self.transparency_query(TransparencyQuery::ProveBindings(r)).await?,
            Request::ProveConsistency(r) => self.transparency_query(TransparencyQuery::ProveConsistency(r)).await?,
            Request::FetchHistory(r) => self.transparency_query(TransparencyQuery::FetchHistory(r)).await?,
            Request::FetchLogEntries(r) => Body::LogPage(Box::new(self.transparency.log_page(r.start, r.count).await?)),
            Request::Authenticate(_) => return Err(ServiceError::NotAServiceOperation(request.operation())),
        })
    }

    fn server_info(&self, caller: &Caller<'_>) -> ServerInfo {
        ServerInfo {
            domain: self.domain.clone(),
            protocol_version: caller.version.number(),
            limits: self.limits,
            registration: self.accounts.registration(),
            credential_keys: self.accounts.published_keys(),
        }
    }

    /// What an acknowledgement leaves behind once `acked` succeeded: a client caught up needs no
    /// more wake-ups.
    fn caught_up(
        &self,
        client: &ClientId,
        acked: Result<(), ServiceError>,
    ) -> Result<(), ServiceError> {
        acked?;
        self.push.caught_up(client);
        Ok(())
    }
}
