//! Federation: two real homeservers on loopback, mutual TLS, remote discovery and KeyPackages.

use roost::protocol::admin::{AdminRequest, FederationStatus};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use roost::client::groups::{GroupClient, GroupEvent};
use roost::client::{verify_user_clients, ClientConfig, Connection};
use roost::clock::{Clock, ManualClock};
use roost::config::{CertificateSource, FederationConfig, ServerConfig};
use roost::protocol::{
    ClaimKeyPackagesRequest, ClaimOutcome, ClientId, ErrorCode, FederatedClaimRequest,
    FederationRequest, Text,
};
use roost::server::Server;
use roost::services::{Federation, ServiceError};
use roost::tls::{issue_development_certificate, load_certificates, PeerTrust, TlsIdentity};

use crate::support::{new_key, within, CIPHERSUITE};

/// A port free on loopback now (servers must know each other's address before they start).
use crate::support::reserved_port as free_port;

pub(crate) struct Homeserver {
    pub(crate) server: Server,
    /// The name its certificate carries (what its clients check).
    certificate_name: String,
    ca: std::path::PathBuf,
}

impl Homeserver {
    /// A server for `domain` with a certificate from the CA in `certs`, federating with `peers`.
    async fn start(
        dir: &Path,
        certs: &Path,
        domain: &str,
        listen: SocketAddr,
        peers: &[(&str, SocketAddr)],
        cert_domain: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(dir, certs, domain, listen, peers, cert_domain, |_| {}).await
    }

    /// As [`Homeserver::start`], after `adjust` has changed the configuration.
    async fn start_with(
        dir: &Path,
        certs: &Path,
        domain: &str,
        listen: SocketAddr,
        peers: &[(&str, SocketAddr)],
        cert_domain: &str,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> anyhow::Result<Self> {
        let issued = issue_development_certificate(certs, cert_domain).unwrap();
        let mut config = ServerConfig::new(domain.parse().unwrap(), listen, dir.join(domain));
        config.certificate = CertificateSource::Files {
            cert: issued.cert.clone(),
            key: issued.key.clone(),
        };
        config.clock = Arc::new(ManualClock::starting_now());
        config.federation = Some(FederationConfig {
            peers: peers.iter().map(|(d, a)| ((*d).to_owned(), *a)).collect(),
            trust: PeerTrust {
                ca: load_certificates(&issued.ca_cert).unwrap(),
                pinned: Vec::new(),
                allowed_domains: Some(peers.iter().map(|(d, _)| (*d).to_owned()).collect()),
            },
        });
        adjust(&mut config);
        Ok(Self {
            server: Server::start(config).await?,
            certificate_name: cert_domain.to_owned(),
            ca: issued.ca_cert,
        })
    }

    async fn connect(&self) -> Connection {
        let config =
            ClientConfig::new(self.server.local_addr(), &self.certificate_name, &self.ca).unwrap();
        within(Connection::connect(&config)).await.unwrap()
    }

    /// Registers `user` as a device with KeyPackages published, connected and authenticated.
    async fn device(&self, user: &str) -> FedDevice {
        let connection = self.connect().await;
        let key = new_key();
        let registered = within(connection.register_user(user, &key, CIPHERSUITE, None))
            .await
            .unwrap();
        Self::online(connection, registered, key).await
    }

    /// The device `added` with `key` (registered or added), authenticated on `connection`,
    /// with KeyPackages published.
    async fn online(
        connection: Connection,
        added: roost::protocol::ClientRegistered,
        key: ed25519_dalek::SigningKey,
    ) -> FedDevice {
        let push = within(connection.authenticate(&added.client, &key))
            .await
            .unwrap();
        let identity = roost::client::state::DeviceIdentity::new(added, key, CIPHERSUITE);
        let mls = roost::client::mls::DeviceMls::new(&identity).unwrap();
        within(connection.top_up_key_packages(&identity.client, &mls))
            .await
            .unwrap();
        FedDevice {
            connection,
            identity,
            mls,
            push,
        }
    }

    /// Adds a device to the user of `approver` (a device of this homeserver), connected and
    /// authenticated, with KeyPackages published.
    pub(crate) async fn second_device(&self, approver: &FedDevice) -> FedDevice {
        let key = new_key();
        let request = roost::client::add_client_request(
            approver.identity.client.user_id.as_str(),
            &key,
            CIPHERSUITE,
        );
        let added = within(approver.connection.add_client(request))
            .await
            .unwrap();
        Self::online(self.connect().await, added, key).await
    }

    /// Registers `user` (publishing KeyPackages) and returns its authenticated connection.
    async fn register(&self, user: &str) -> (Connection, ClientId) {
        let connection = self.connect().await;
        let key = new_key();
        let registered = within(connection.register_user(user, &key, CIPHERSUITE, None))
            .await
            .unwrap();
        let _push = within(connection.authenticate(&registered.client, &key))
            .await
            .unwrap();
        let identity = roost::client::state::DeviceIdentity::new(registered, key, CIPHERSUITE);
        let mls = roost::client::mls::DeviceMls::new(&identity).unwrap();
        within(connection.top_up_key_packages(&identity.client, &mls))
            .await
            .unwrap();
        (connection, identity.client)
    }
}

pub(crate) struct FedDevice {
    pub(crate) connection: Connection,
    pub(crate) identity: roost::client::state::DeviceIdentity,
    pub(crate) mls: roost::client::mls::DeviceMls,
    push: roost::client::PushStream,
}

impl FedDevice {
    pub(crate) async fn groups(&self) -> GroupClient<'_> {
        let keys = within(self.connection.domain_keys()).await.unwrap();
        GroupClient::new(
            &self.connection,
            &self.mls,
            keys,
            roost::clock::SystemClock.now(),
        )
    }

    /// Processes the queue; fails the test on any processing error.
    pub(crate) async fn receive(&self) -> Vec<GroupEvent> {
        within(self.groups().await.receive())
            .await
            .unwrap()
            .into_iter()
            .map(|(seq, event)| event.unwrap_or_else(|e| panic!("message {seq}: {e:#}")))
            .collect()
    }

    /// Waits for a NewMessages push, then processes the queue.
    pub(crate) async fn receive_pushed(&mut self) -> Vec<GroupEvent> {
        loop {
            match within(self.push.next()).await.unwrap().unwrap() {
                roost::protocol::Notification::NewMessages(_) => return self.receive().await,
                _ => continue,
            }
        }
    }
}

fn texts(events: &[GroupEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|event| match event {
            GroupEvent::Message { sender, text, .. } => {
                Some((sender.to_string(), String::from_utf8(text.clone()).unwrap()))
            }
            _ => None,
        })
        .collect()
}

pub(crate) async fn two_homeservers(dir: &Path) -> (Homeserver, Homeserver) {
    two_homeservers_with(dir, |_| {}).await
}

/// a.example and b.example, peers of each other, b.example's configuration changed by
/// `adjust_b`.
async fn two_homeservers_with(
    dir: &Path,
    adjust_b: impl FnOnce(&mut ServerConfig),
) -> (Homeserver, Homeserver) {
    let certs = dir.join("certs");
    let (a_addr, b_addr) = (free_port(), free_port());
    let a = Homeserver::start(
        dir,
        &certs,
        "a.example",
        a_addr,
        &[("b.example", b_addr)],
        "a.example",
    )
    .await
    .unwrap();
    let b = Homeserver::start_with(
        dir,
        &certs,
        "b.example",
        b_addr,
        &[("a.example", a_addr)],
        "b.example",
        adjust_b,
    )
    .await
    .unwrap();
    (a, b)
}

/// Alice of a.example and bob of b.example in a group hosted at a.example (bob has joined).
pub(crate) async fn alice_at_a_with_bob_at_b(
    a: &Homeserver,
    b: &Homeserver,
) -> (FedDevice, FedDevice, Vec<u8>) {
    let alice = a.device("alice@a.example").await;
    let mut bob = b.device("bob@b.example").await;
    let group_id = within(alice.groups().await.create_group()).await.unwrap();
    within(alice.groups().await.invite(&group_id, "bob@b.example"))
        .await
        .unwrap();
    let joined = bob.receive_pushed().await;
    assert!(
        joined.contains(&GroupEvent::Joined {
            group_id: group_id.clone()
        }),
        "{joined:?}"
    );
    (alice, bob, group_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_find_and_verify_users_of_another_homeserver_and_claim_their_key_packages() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_homeservers(dir.path()).await;
    let (alice, _) = a.register("alice@a.example").await;
    let (_bob, bob_client) = b.register("bob@b.example").await;

    let found = within(alice.lookup_user("bob@b.example")).await.unwrap();
    assert_eq!(found.clients.len(), 1);
    // bob's credentials verify against b.example's keys, fetched through alice's own server.
    let b_keys = within(alice.domain_keys_of("b.example")).await.unwrap();
    assert_eq!(b_keys.domain, "b.example");
    let now = roost::clock::SystemClock.now();
    for checked in verify_user_clients(&found, &b_keys, now) {
        assert_eq!(checked.verified.unwrap(), bob_client);
    }
    // ... and not against a.example's.
    let a_keys = within(alice.domain_keys_of("a.example")).await.unwrap();
    assert!(verify_user_clients(&found, &a_keys, now)[0]
        .verified
        .is_err());

    let claimed = within(alice.claim_key_packages("bob@b.example", CIPHERSUITE))
        .await
        .unwrap();
    assert_eq!(claimed.claims[0].client, bob_client);
    assert!(matches!(
        claimed.claims[0].outcome,
        ClaimOutcome::KeyPackage(_)
    ));

    // The remote server's refusals come through with their codes; unknown domains stay unknown.
    let error = within(alice.lookup_user("nobody@b.example"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::UnknownUser));
    let error = within(alice.lookup_user("carol@c.example"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::UnknownDomain));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_wrong_certificates_or_claims_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_homeservers(dir.path()).await;
    let _alice = a.register("alice@a.example").await;
    let certs = dir.path().join("certs");
    let peers = [("a.example", a.server.local_addr())];

    // A server calling itself b.example with a certificate for c.example (same CA).
    let impostor = Homeserver::start(
        &dir.path().join("impostor"),
        &certs,
        "b.example",
        free_port(),
        &peers,
        "c.example",
    )
    .await
    .unwrap();
    let (eve, _) = impostor.register("eve@b.example").await;
    let error = within(eve.lookup_user("alice@a.example"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::PeerUnavailable), "{error}");
    // Its user is told that the peer refused, and what its operator must change; not a bare
    // TLS fault.
    assert!(
        error
            .to_string()
            .contains("a.example refused this server's connection (TLS alert: bad certificate)"),
        "{error}"
    );

    // A server whose certificate comes from a CA a.example does not trust.
    let other_certs = dir.path().join("other-certs");
    let stranger = Homeserver::start(
        &dir.path().join("stranger"),
        &other_certs,
        "b.example",
        free_port(),
        &peers,
        "b.example",
    )
    .await
    .unwrap();
    let (mallory, _) = stranger.register("mallory@b.example").await;
    let error = within(mallory.lookup_user("alice@a.example"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::PeerUnavailable), "{error}");
    assert!(
        error
            .to_string()
            .contains("this server does not trust the certificate of a.example"),
        "{error}"
    );

    // The genuine b.example may not claim for users of another domain, nor call itself c.example.
    let b_identity =
        TlsIdentity::load(&certs.join("b.example.pem"), &certs.join("b.example.key")).unwrap();
    let config = FederationConfig {
        peers: peers
            .iter()
            .map(|(d, addr)| ((*d).to_owned(), *addr))
            .collect(),
        trust: PeerTrust {
            ca: load_certificates(&a.ca).unwrap(),
            pinned: Vec::new(),
            allowed_domains: None,
        },
    };
    let as_b = Federation::new(&"b.example".parse().unwrap(), &config, &b_identity).unwrap();
    let claim = FederationRequest::ClaimKeyPackages(FederatedClaimRequest {
        claimer: ClientId::of("carol@c.example", 1),
        request: ClaimKeyPackagesRequest {
            user_id: Text::new("alice@a.example").unwrap(),
            ciphersuite: CIPHERSUITE,
        },
    });
    match within(as_b.request("a.example", &claim)).await {
        Err(ServiceError::Peer(refusal)) => assert_eq!(refusal.code(), ErrorCode::PeerRefused),
        other => panic!("expected PeerRefused, got {other:?}"),
    }
    let as_c = Federation::new(&"c.example".parse().unwrap(), &config, &b_identity).unwrap();
    match within(as_c.request("a.example", &FederationRequest::GetDomainKeys)).await {
        Err(ServiceError::Peer(refusal)) => assert_eq!(refusal.code(), ErrorCode::PeerRefused),
        other => panic!("expected PeerRefused, got {other:?}"),
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_spans_two_homeservers_and_survives_one_being_down() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let (a_addr, b_addr) = (free_port(), free_port());
    let a = Homeserver::start_with(
        dir.path(),
        &certs,
        "a.example",
        a_addr,
        &[("b.example", b_addr)],
        "a.example",
        |config| config.metrics_listen = Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let b = Homeserver::start(
        dir.path(),
        &certs,
        "b.example",
        b_addr,
        &[("a.example", a_addr)],
        "b.example",
    )
    .await
    .unwrap();
    // Alice's group lives on a.example; she adds bob of b.example.
    let (alice, mut bob, group_id) = alice_at_a_with_bob_at_b(&a, &b).await;

    // Messages both ways: bob's go through b.example to the hub, alice's come back the same way.
    within(bob.groups().await.send(&group_id, b"hello from b"))
        .await
        .unwrap();
    assert_eq!(
        texts(&alice.receive().await),
        [("bob@b.example/1".to_owned(), "hello from b".to_owned())]
    );
    within(alice.groups().await.send(&group_id, b"hello from a"))
        .await
        .unwrap();
    assert_eq!(
        texts(&bob.receive_pushed().await),
        [("alice@a.example/1".to_owned(), "hello from a".to_owned())]
    );
    // A commit from the other side (bob's, relayed to the hub) is ordered and reaches alice.
    let epoch = within(bob.groups().await.commit_pending(&group_id))
        .await
        .unwrap();
    let events = alice.receive().await;
    assert!(
        events.contains(&GroupEvent::Committed {
            group_id: group_id.clone(),
            epoch
        }),
        "{events:?}"
    );

    // b.example goes down; alice keeps talking; her messages wait in a.example's outbox.
    let bob_identity = bob.identity.clone();
    let bob_mls = bob.mls.snapshot().unwrap();
    drop(bob);
    within(b.server.shutdown()).await.unwrap();
    const WHILE_AWAY: usize = 120;
    let alice_groups = alice.groups().await;
    for i in 0..WHILE_AWAY {
        within(alice_groups.send(&group_id, format!("while you were away {i}").as_bytes()))
            .await
            .unwrap();
    }
    drop(alice_groups);
    let backlog = a.server.store().outbox_backlog().await.unwrap();
    assert_eq!(backlog, [("b.example".to_owned(), WHILE_AWAY as u64)]);

    // The operator of a.example sees it: b.example not connected, the deliveries waiting since
    // they were queued, why the last attempt failed and when the next one comes.
    let admin = roost::admin::AdminClient::for_data_dir(&dir.path().join("a.example")).unwrap();
    let peer = within(async {
        loop {
            let status: FederationStatus = admin
                .request(&AdminRequest::FederationStatus)
                .await
                .unwrap();
            assert!(status.enabled);
            let peer = status.peers.into_iter().next().unwrap();
            if peer.last_error.is_some() {
                return peer;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        (peer.domain.as_str(), peer.waiting, peer.connected),
        ("b.example", WHILE_AWAY as u64, false)
    );
    assert_eq!(peer.address, Some(b_addr.to_string()));
    assert!(peer.oldest_waiting_since.is_some(), "{peer:?}");
    assert!(peer.last_delivery_at.is_some(), "{peer:?}");
    assert!(
        peer.next_attempt_at.is_some() && peer.last_error_at.is_some(),
        "{peer:?}"
    );
    // And Prometheus sees the backlog and the failure.
    let metrics = crate::support::scrape_metrics(&a.server).await;
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in {metrics}"))
            .parse()
            .unwrap()
    };
    assert_eq!(
        value(r#"roost_outbox_waiting{peer="b.example"}"#),
        WHILE_AWAY as f64
    );
    assert_eq!(value(r#"roost_peer_connected{peer="b.example"}"#), 0.0);
    assert!(value(r#"roost_peer_last_error_timestamp_seconds{peer="b.example"}"#) > 0.0);

    // b.example comes back on the same data; the outbox delivers everything, exactly once.
    let b = Homeserver::start(
        dir.path(),
        &certs,
        "b.example",
        b_addr,
        &[("a.example", a_addr)],
        "b.example",
    )
    .await
    .unwrap();
    let connection = b.connect().await;
    let push = within(connection.authenticate(&bob_identity.client, &bob_identity.signing_key))
        .await
        .unwrap();
    let mut bob = FedDevice {
        connection,
        identity: bob_identity,
        mls: bob_mls,
        push,
    };
    let mut heard = Vec::new();
    while heard.len() < WHILE_AWAY {
        heard.extend(texts(&bob.receive_pushed().await));
    }
    let expected: Vec<String> = (0..WHILE_AWAY)
        .map(|i| format!("while you were away {i}"))
        .collect();
    assert_eq!(
        heard.iter().map(|(_, text)| text).collect::<Vec<_>>(),
        expected.iter().collect::<Vec<_>>(),
        "in order"
    );
    // The backlog crossed in batches: far fewer commits at b.example than deliveries (its own
    // start, bob's fetches and acknowledgements included).
    let commits = b.server.store().stats().commits();
    assert!(
        commits < WHILE_AWAY as u64 / 4,
        "{commits} commits for {WHILE_AWAY} deliveries"
    );
    // Nothing more arrives (no duplicates), and the outbox is empty.
    assert!(bob.receive().await.is_empty());
    assert!(a.server.store().outbox_backlog().await.unwrap().is_empty());
    let status: FederationStatus = within(admin.request(&AdminRequest::FederationStatus))
        .await
        .unwrap();
    assert_eq!(
        (
            status.peers[0].waiting,
            status.peers[0].next_attempt_at.as_deref()
        ),
        (0, None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_remote_user_is_proposed_for_removal_at_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_homeservers(dir.path()).await;
    let (alice, bob, group_id) = alice_at_a_with_bob_at_b(&a, &b).await;

    within(bob.connection.delete_user()).await.unwrap();
    // The hub proposed bob's removal; alice's next commit completes it.
    alice.receive().await;
    within(alice.groups().await.commit_pending(&group_id))
        .await
        .unwrap();
    let state = within(alice.connection.get_group(&group_id)).await.unwrap();
    let members: Vec<_> = state.members.iter().map(|m| m.client.to_string()).collect();
    assert_eq!(members, ["alice@a.example/1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_lists_groups_of_every_hub_and_learns_which_hub_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_homeservers(dir.path()).await;
    let (_alice, bob, hosted_at_a) = alice_at_a_with_bob_at_b(&a, &b).await;
    let hosted_at_b = within(bob.groups().await.create_group()).await.unwrap();

    let listed = within(bob.connection.list_groups()).await.unwrap();
    let mut groups: Vec<_> = listed
        .groups
        .iter()
        .map(|g| (g.group_id.as_slice().to_vec(), g.epoch))
        .collect();
    groups.sort();
    let mut expected = vec![(hosted_at_a.clone(), 1), (hosted_at_b.clone(), 0)];
    expected.sort();
    assert_eq!(groups, expected);
    assert!(listed.unreachable_hubs.is_empty());

    // The hub goes down: bob still sees his own server's groups, and is told what is missing.
    within(a.server.shutdown()).await.unwrap();
    let listed = within(bob.connection.list_groups()).await.unwrap();
    let groups: Vec<_> = listed
        .groups
        .iter()
        .map(|g| g.group_id.as_slice().to_vec())
        .collect();
    assert_eq!(groups, [hosted_at_b]);
    let unreachable: Vec<_> = listed.unreachable_hubs.iter().map(Text::as_str).collect();
    assert_eq!(unreachable, ["a.example"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_peer_that_is_down_wait_out_one_connection_attempt_not_one_each() {
    let dir = tempfile::tempdir().unwrap();
    let issued = issue_development_certificate(&dir.path().join("certs"), "a.example").unwrap();
    let identity = TlsIdentity::load(&issued.cert, &issued.key).unwrap();
    let config = FederationConfig {
        // Nothing listens there.
        peers: [("b.example".to_owned(), free_port())]
            .into_iter()
            .collect(),
        trust: PeerTrust {
            ca: load_certificates(&issued.ca_cert).unwrap(),
            pinned: Vec::new(),
            allowed_domains: None,
        },
    };
    let federation = Federation::new(&"a.example".parse().unwrap(), &config, &identity).unwrap();
    let request = FederationRequest::GetDomainKeys;
    let outcomes = within(futures::future::join_all(
        (0..3).map(|_| federation.request("b.example", &request)),
    ))
    .await;
    let reasons: Vec<String> = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Err(ServiceError::PeerUnavailable(reason)) => reason,
            other => panic!("expected PeerUnavailable, got {other:?}"),
        })
        .collect();
    // One request made the attempt; the two queued behind it were answered from its failure.
    let waited_out = reasons
        .iter()
        .filter(|reason| reason.contains("next attempt in"))
        .count();
    assert_eq!(waited_out, 2, "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_can_trust_each_other_by_pinned_certificates_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (a_addr, b_addr) = (free_port(), free_port());
    // Each server has its own self-signed certificate; each pins the other's.
    let mut servers = Vec::new();
    let identities: Vec<_> = ["a.example", "b.example"]
        .iter()
        .map(|domain| {
            let data = dir.path().join(domain);
            std::fs::create_dir_all(&data).unwrap();
            let (_, cert) = TlsIdentity::load_or_create_self_signed(&data, domain).unwrap();
            cert
        })
        .collect();
    for (domain, listen, peer, peer_addr, peer_cert) in [
        ("a.example", a_addr, "b.example", b_addr, &identities[1]),
        ("b.example", b_addr, "a.example", a_addr, &identities[0]),
    ] {
        let mut config =
            ServerConfig::new(domain.parse().unwrap(), listen, dir.path().join(domain));
        config.federation = Some(FederationConfig {
            peers: [(peer.to_owned(), peer_addr)].into_iter().collect(),
            trust: PeerTrust {
                ca: Vec::new(),
                pinned: vec![(
                    peer.to_owned(),
                    load_certificates(peer_cert).unwrap().remove(0),
                )],
                allowed_domains: Some(vec![peer.to_owned()]),
            },
        });
        servers.push(Server::start(config).await.unwrap());
    }
    let client = ClientConfig::new(servers[0].local_addr(), "a.example", &identities[0]).unwrap();
    let alice = within(Connection::connect(&client)).await.unwrap();
    let key = new_key();
    let registered = within(alice.register_user("alice@a.example", &key, CIPHERSUITE, None))
        .await
        .unwrap();
    within(alice.authenticate(&registered.client, &key))
        .await
        .unwrap();
    let keys = within(alice.domain_keys_of("b.example")).await.unwrap();
    assert_eq!(keys.domain, "b.example");
    assert!(!keys.keys.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_remote_queue_holds_deliveries_in_the_hubs_outbox_until_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_homeservers_with(dir.path(), |config| config.queues.max_messages = 2).await;
    let (alice, bob, group_id) = alice_at_a_with_bob_at_b(&a, &b).await;

    // Bob does not read; alice sends four. b.example takes two, then refuses (retryably) what
    // does not fit: it waits in a.example's outbox instead of being dropped.
    for i in 0..4 {
        within(
            alice
                .groups()
                .await
                .send(&group_id, format!("m{i}").as_bytes()),
        )
        .await
        .unwrap();
    }
    let bob_client = bob.identity.client.clone();
    within(async {
        loop {
            let queued = b.server.store().queue_size(&bob_client).await.unwrap().0;
            let backlog = a.server.store().outbox_backlog().await.unwrap();
            if queued == 2 && backlog == [("b.example".to_owned(), 2)] {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;

    // Once bob reads, the rest arrives, in order and exactly once.
    let mut heard = Vec::new();
    within(async {
        while heard.len() < 4 {
            heard.extend(texts(&bob.receive().await));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        heard
            .iter()
            .map(|(_, text)| text.as_str())
            .collect::<Vec<_>>(),
        ["m0", "m1", "m2", "m3"]
    );
    assert!(a.server.store().outbox_backlog().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_delivers_only_into_groups_its_own_id_says_it_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_homeservers(dir.path()).await;
    let (alice, bob, group_id) = alice_at_a_with_bob_at_b(&a, &b).await;
    let deliver = |group_id: &[u8], recipient: &ClientId| {
        roost::protocol::FederationRequest::Deliver(roost::protocol::DeliverRequest {
            delivery_id: vec![7; 16].into(),
            group_id: group_id.to_vec().into(),
            items: vec![roost::protocol::DeliveryItem {
                recipients: vec![recipient.clone()],
                kind: roost::protocol::MessageKind::ServerNotice,
                payload: vec![0, 3].into(),
            }],
        })
    };
    // b.example injecting into a group hosted at a.example, as if it were its hub: refused.
    let injected = a
        .server
        .services()
        .handle_federation("b.example", deliver(&group_id, &alice.identity.client))
        .await;
    assert!(
        matches!(injected, Err(roost::services::ServiceError::PeerRefused(_))),
        "{injected:?}"
    );
    // a.example pre-claiming a group id that names c.example: refused at b.example.
    let mut foreign = group_id[..roost::identity::GROUP_ID_RANDOM_LEN].to_vec();
    foreign.extend_from_slice(b"c.example");
    let claimed = b
        .server
        .services()
        .handle_federation("a.example", deliver(&foreign, &bob.identity.client))
        .await;
    assert!(
        matches!(claimed, Err(roost::services::ServiceError::PeerRefused(_))),
        "{claimed:?}"
    );
    // Neither reached a queue.
    assert!(alice.receive().await.is_empty());
    assert!(bob.receive().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_remote_group_takes_its_route_along() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_homeservers(dir.path()).await;
    let (alice, mut bob, group_id) = alice_at_a_with_bob_at_b(&a, &b).await;
    assert_eq!(b.server.store().group_hubs().await.unwrap(), ["a.example"]);
    within(alice.groups().await.delete_group(&group_id))
        .await
        .unwrap();
    let events = bob.receive_pushed().await;
    assert!(
        events
            .iter()
            .any(|event| matches!(event, GroupEvent::Deleted { .. })),
        "{events:?}"
    );
    assert!(b.server.store().group_routes().await.unwrap().is_empty());
    assert!(b.server.store().group_hubs().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_taken_up_to_its_first_bad_delivery_and_an_oversize_batch_not_at_all() {
    use roost::protocol::{
        DeliverBatchRequest, DeliverRequest, DeliveryItem, ErrorCode, FederationRequest,
        FederationResponseBody, MessageKind, MAX_DELIVERIES_PER_BATCH,
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_homeservers(dir.path()).await;
    let (_alice, bob, group_id) = alice_at_a_with_bob_at_b(&a, &b).await;
    let notice = |id: u8, id_len: usize| DeliverRequest {
        delivery_id: vec![id; id_len].into(),
        group_id: group_id.clone().into(),
        items: vec![DeliveryItem {
            recipients: vec![bob.identity.client.clone()],
            kind: MessageKind::ServerNotice,
            payload: vec![0, 3].into(),
        }],
    };
    let batch = |deliveries| FederationRequest::DeliverBatch(DeliverBatchRequest { deliveries });
    let services = b.server.services();
    // The second delivery's id is malformed: the first is stored, nothing after the refusal.
    let answer = services
        .handle_federation(
            "a.example",
            batch(vec![notice(1, 16), notice(2, 3), notice(3, 16)]),
        )
        .await
        .unwrap();
    let FederationResponseBody::DeliveredBatch(answer) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(answer.accepted, 1);
    assert_eq!(
        answer.refusal.map(|refusal| refusal.code()),
        Some(ErrorCode::PeerRefused)
    );
    // Sent again (the hub retries from the refused one on): the first is not stored twice.
    let again = services
        .handle_federation("a.example", batch(vec![notice(1, 16), notice(3, 16)]))
        .await
        .unwrap();
    assert!(matches!(
        again,
        FederationResponseBody::DeliveredBatch(ref answer) if answer.accepted == 2 && answer.refusal.is_none()
    ));
    let queued = within(bob.connection.fetch_messages(0, 100, u32::MAX))
        .await
        .unwrap();
    assert_eq!(queued.messages.len(), 2, "deliveries 1 and 3, once each");
    // More than a batch may carry: refused as a whole.
    let oversize = (0..=MAX_DELIVERIES_PER_BATCH)
        .map(|n| notice((n % 200) as u8 + 10, 16))
        .collect();
    let refused = services
        .handle_federation("a.example", batch(oversize))
        .await;
    assert!(
        matches!(refused, Err(roost::services::ServiceError::PeerRefused(_))),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_offline_is_woken_by_its_own_homeserver_for_messages_of_a_remote_group() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_homeservers_with(dir.path(), |config| config.push.allow_loopback = true).await;
    let (alice, bob, group_id) = alice_at_a_with_bob_at_b(&a, &b).await;
    let vapid_key = within(bob.connection.push_info())
        .await
        .unwrap()
        .vapid_public_key;
    let mut receiver = roost::client::push_receiver::WebPushReceiver::bind(
        "127.0.0.1:0".parse().unwrap(),
        vapid_key.as_slice(),
    )
    .await
    .unwrap();
    within(
        bob.connection
            .add_push_target(roost::protocol::PushTarget::WebPush(
                receiver.subscription(),
            )),
    )
    .await
    .unwrap();
    let bob_client = bob.identity.client.clone();
    bob.connection.close().await;
    within(async {
        while b.server.sessions().connections(&bob_client) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await;

    // The hub (a.example) delivers to b.example, which wakes bob with its own VAPID key.
    within(alice.groups().await.send(&group_id, b"are you there?"))
        .await
        .unwrap();
    let wake = within(async {
        loop {
            let wake = receiver.next().await.unwrap();
            if wake.accepted() {
                return wake;
            }
        }
    })
    .await;
    assert!(wake.vapid.is_ok(), "{:?}", wake.vapid);
    assert!(wake.seq().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_of_two_nodes_delivers_through_whichever_node_holds_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let database = roost::store::ScratchDatabase::create().unwrap();
    let shared = |config: &mut ServerConfig| {
        config.store = Some(roost::store::StoreLocation::Postgres(database.url.clone()))
    };
    let certs = dir.path().join("certs");
    let (a1_addr, a2_addr, b_addr) = (free_port(), free_port(), free_port());
    // a.example's first node takes the outbox lease to b.example as it starts.
    let a1 = Homeserver::start_with(
        dir.path(),
        &certs,
        "a.example",
        a1_addr,
        &[("b.example", b_addr)],
        "a.example",
        shared,
    )
    .await
    .unwrap();
    let second = dir.path().join("second-node");
    crate::support::copy_keys(&dir.path().join("a.example"), &second.join("a.example"));
    let a2 = Homeserver::start_with(
        &second,
        &certs,
        "a.example",
        a2_addr,
        &[("b.example", b_addr)],
        "a.example",
        shared,
    )
    .await
    .unwrap();
    let b = Homeserver::start(
        dir.path(),
        &certs,
        "b.example",
        b_addr,
        // b.example reaches a.example through its second node (the one that stays).
        &[("a.example", a2_addr)],
        "b.example",
    )
    .await
    .unwrap();

    // Alice uses the second node: what she sends waits in the shared outbox, which the first
    // node drains when the second tells it there is work.
    let started = std::time::Instant::now();
    let (alice, mut bob, group_id) = alice_at_a_with_bob_at_b(&a2, &b).await;
    for i in 0..5 {
        within(
            alice
                .groups()
                .await
                .send(&group_id, format!("m{i}").as_bytes()),
        )
        .await
        .unwrap();
    }
    let mut heard = Vec::new();
    while heard.len() < 5 {
        heard.extend(texts(&bob.receive_pushed().await));
    }
    // Well before the first node's lease would have run out (15 s): the Welcome and the
    // messages were sent by the node holding it, told of them at once.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the node holding the outbox was not told of the deliveries ({:?})",
        started.elapsed()
    );
    // The first node goes; the second takes the outbox over once it is released.
    within(a1.server.shutdown()).await.unwrap();
    for i in 5..10 {
        within(
            alice
                .groups()
                .await
                .send(&group_id, format!("m{i}").as_bytes()),
        )
        .await
        .unwrap();
    }
    while heard.len() < 10 {
        heard.extend(texts(&bob.receive_pushed().await));
    }
    let expected: Vec<(String, String)> = (0..10)
        .map(|i| (alice.identity.client.to_string(), format!("m{i}")))
        .collect();
    assert_eq!(heard, expected, "each message once, in order");
    drop(a2);
}
