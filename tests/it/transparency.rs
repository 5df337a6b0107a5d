//! Key transparency against a real server: a credential signed with the server's key but kept
//! out of its log is refused by clients (looked up, and as a member a commit adds); a forked or
//! rolled-back head is refused; a user's own device sees a device it did not add; the auditor
//! rebuilds the log; a deleted user's entries keep no trace of it.

use openmls_traits::OpenMlsProvider;
use roost::client::audit::Auditor;
use roost::client::mls::DeviceMls;
use roost::client::state::DeviceIdentity;
use roost::client::transparency::KeyTransparency;
use roost::clock::Clock;
use roost::protocol::{
    ClientCredential, ClientCredentialContent, ClientId, ClientRegistered, LogRecord,
    SignedTreeHead,
};
use roost::services::credential_keys::CredentialKeys;
use tls_codec::Deserialize;

use crate::support::{new_key, within, Device, TestServer};

/// A credential for `client` with `key`, signed with the server's own credential key (as whoever
/// took the server's keys would), but never logged.
fn forged_credential(server: &TestServer, client: ClientId, key: &[u8]) -> ClientCredential {
    forged_at(&server.dir.path().join("data"), client, key)
}

/// The credential-signing key of the server whose data is in `data_dir`, as its thief holds it.
fn stolen_signer(data_dir: &std::path::Path) -> roost::services::credential_keys::CredentialSigner {
    CredentialKeys::load_or_create(data_dir, roost::clock::SystemClock.now())
        .unwrap()
        .active_signer()
}

/// A credential for `client` with `key` signed with the key of the server whose data is in
/// `data_dir`, never logged.
fn forged_at(data_dir: &std::path::Path, client: ClientId, key: &[u8]) -> ClientCredential {
    let now = roost::clock::SystemClock.now();
    stolen_signer(data_dir).issue(ClientCredentialContent {
        client,
        signature_key: key.to_vec().into(),
        ciphersuite: 1,
        not_before: now - 60,
        not_after: now + 86_400,
        issuer_key_id: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_signed_by_the_server_but_not_logged_is_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let bob = server.register("bob@localhost").await;
    let keys = within(bob.connection.domain_keys()).await.unwrap();
    let transparency = KeyTransparency::in_memory();
    // Alice's own credential is logged.
    within(transparency.check_logged(&bob.connection, &alice.identity.credential, &keys))
        .await
        .unwrap();
    // A second credential for alice, for a key she never had, and one for her own device 1 with
    // another key: the signatures verify, the log holds neither.
    let hidden_key = new_key().verifying_key().to_bytes();
    for client in [
        ClientId::of("alice@localhost", 9),
        ClientId::of("alice@localhost", 1),
    ] {
        let forged = forged_credential(&server, client, &hidden_key);
        roost::identity::verify_credential(&forged, &keys, server.clock.now()).unwrap();
        let refused = within(transparency.check_logged(&bob.connection, &forged, &keys))
            .await
            .unwrap_err();
        assert!(
            format!("{refused:#}").contains("never bound in the log"),
            "{refused:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_member_added_with_an_unlogged_credential_is_refused_by_the_other_members() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = crate::federation::two_homeservers(dir.path()).await;
    let (alice, mut bob, group_id) = crate::federation::alice_at_a_with_bob_at_b(&a, &b).await;
    // Bob may add members: alice makes him an Admin.
    within(
        alice
            .groups()
            .await
            .set_role(&group_id, "bob@b.example", true),
    )
    .await
    .unwrap();
    bob.receive_pushed().await;
    // Whoever holds b.example's keys makes a hidden device for bob, and bob's side adds it to
    // the group hosted at a.example.
    let hidden_signing = new_key();
    let hidden = ClientId::of("bob@b.example", 7);
    let credential = forged_at(
        &dir.path().join("b.example"),
        hidden.clone(),
        &hidden_signing.verifying_key().to_bytes(),
    );
    let identity = DeviceIdentity::new(
        ClientRegistered {
            client: hidden,
            credential,
        },
        hidden_signing,
        1,
    );
    let hidden_mls = DeviceMls::new(&identity).unwrap();
    let key_package = openmls::prelude::KeyPackageIn::tls_deserialize_exact(
        hidden_mls.key_packages(1, false).unwrap()[0].as_slice(),
    )
    .unwrap()
    .validate(
        hidden_mls.provider().crypto(),
        openmls::prelude::ProtocolVersion::Mls10,
    )
    .unwrap();
    let mut group = bob.mls.group(&group_id).unwrap().unwrap();
    let commit = bob.mls.add_members(&mut group, &[key_package]).unwrap();
    // The hub checks the credential against b.example's keys, which it verifies under: it takes
    // the commit.
    within(bob.connection.send_commit(commit)).await.unwrap();
    // Alice's device asks b.example's log, through a.example, and refuses the member.
    let events = within(alice.groups().await.receive()).await.unwrap();
    let refused = events
        .iter()
        .find_map(|(_, event)| event.as_ref().err())
        .expect("the commit adding the hidden device is refused");
    assert!(
        format!("{refused:#}").contains("not provably in b.example's log"),
        "{refused:#}"
    );
    // bob's real device is in b.example's log, as alice sees it through a.example.
    let keys = within(alice.connection.domain_keys_of("b.example"))
        .await
        .unwrap();
    within(KeyTransparency::in_memory().check_logged(
        &alice.connection,
        &bob.identity.credential,
        &keys,
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_or_older_head_is_refused_and_a_newer_consistent_one_taken() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let keys = within(alice.connection.domain_keys()).await.unwrap();
    let transparency = KeyTransparency::in_memory();
    let first = within(alice.connection.tree_head("localhost"))
        .await
        .unwrap();
    within(transparency.advance(&alice.connection, &keys, &first))
        .await
        .unwrap();
    // The log grows; the newer head extends the first.
    server.register("bob@localhost").await;
    let newer = within(alice.connection.prove_bindings("bob@localhost"))
        .await
        .unwrap()
        .head;
    assert!(newer.head.tree_size > first.head.tree_size);
    within(transparency.advance(&alice.connection, &keys, &newer))
        .await
        .unwrap();
    // The first head again: a rollback.
    let rollback = within(transparency.advance(&alice.connection, &keys, &first)).await;
    assert!(
        format!("{:#}", rollback.unwrap_err()).contains("went back"),
        "an older head is refused"
    );
    // A head of the server's key for a log that is not this one (same size, another root; and
    // a larger size whose consistency proof cannot join the roots): a fork.
    let signer =
        CredentialKeys::load_or_create(&server.dir.path().join("data"), server.clock.now())
            .unwrap()
            .active_signer();
    let forged = |size: u64| -> SignedTreeHead {
        let mut head = newer.head.clone();
        head.tree_size = size;
        head.log_root = [7; 32];
        signer.sign_head(head)
    };
    for size in [newer.head.tree_size, newer.head.tree_size + 1] {
        let fork = within(transparency.advance(&alice.connection, &keys, &forged(size))).await;
        let error = format!("{:#}", fork.unwrap_err());
        assert!(
            error.contains("fork")
                || error.contains("UnknownTreeHead")
                || error.contains("tree head"),
            "{error}"
        );
    }
    assert_eq!(transparency.head("localhost"), Some(newer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_sees_a_device_of_its_user_it_did_not_add() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let keys = within(alice.connection.domain_keys()).await.unwrap();
    let transparency = KeyTransparency::in_memory();
    let own = &alice.identity.credential;
    let none = within(transparency.own_history(&alice.connection, own, &keys, &[]))
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    // A device alice adds herself is expected; one the server issues behind her back is not.
    let phone = server.add_device(&alice).await;
    let phone_key = phone
        .identity
        .credential
        .content
        .signature_key
        .as_slice()
        .to_vec();
    let hidden_key = new_key().verifying_key().to_bytes();
    let signer =
        CredentialKeys::load_or_create(&server.dir.path().join("data"), server.clock.now())
            .unwrap()
            .active_signer();
    let now = server.clock.now();
    within(server.server.store().add_client(roost::store::NewClient {
        user_id: "alice@localhost".into(),
        signature_key: hidden_key,
        now,
        max_clients: 10,
        issue_credential: Box::new(move |device_id| {
            let credential = signer.issue(ClientCredentialContent {
                client: ClientId::of("alice@localhost", device_id),
                signature_key: hidden_key.to_vec().into(),
                ciphersuite: 1,
                not_before: now - 60,
                not_after: now + 86_400,
                issuer_key_id: 0,
            });
            tls_codec::Serialize::tls_serialize_detached(&credential).unwrap()
        }),
    }))
    .await
    .unwrap()
    .unwrap();
    let reported = within(transparency.own_history(
        &alice.connection,
        own,
        &keys,
        std::slice::from_ref(&phone_key),
    ))
    .await
    .unwrap();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(
        reported[0].credential.content.signature_key.as_slice(),
        hidden_key.as_slice()
    );
    // Without the phone in the known devices, both are reported.
    let both = within(transparency.own_history(&alice.connection, own, &keys, &[]))
        .await
        .unwrap();
    assert_eq!(both.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_rebuilds_the_log_through_removals_and_deletions() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let phone = server.add_device(&alice).await;
    let carol = server.register("carol@localhost").await;
    let keys = within(alice.connection.domain_keys()).await.unwrap();
    let mut auditor = Auditor::new();
    let first = within(auditor.step(&alice.connection, &keys))
        .await
        .unwrap();
    assert_eq!(first.new_records, first.head.tree_size);
    within(alice.connection.remove_client(&phone.identity.client))
        .await
        .unwrap();
    within(alice.connection.renew_credential()).await.unwrap();
    within(carol.connection.delete_user()).await.unwrap();
    // A head covering all of it (asking about alice, changed since the newest head, publishes
    // one), then the audit.
    within(alice.connection.prove_bindings("alice@localhost"))
        .await
        .unwrap();
    let gone = within(alice.connection.prove_bindings("carol@localhost"))
        .await
        .unwrap();
    assert!(gone.bindings.credentials.is_empty() && gone.bindings.entries == 0);
    roost::transparency::verify::verify_bindings(&gone, "carol@localhost").unwrap();
    let second = within(auditor.step(&alice.connection, &keys))
        .await
        .unwrap();
    assert!(second.new_records >= 4, "{second:?}");
    // The deleted user's entries are redacted: no user id, no key left in the log.
    let page = within(alice.connection.fetch_log_entries(0, 100))
        .await
        .unwrap();
    assert!(page
        .entries
        .iter()
        .any(|r| matches!(r, LogRecord::Redacted(_))));
    assert!(page
        .entries
        .iter()
        .any(|r| matches!(r, LogRecord::Removed(_))));
    let carol_key = carol
        .identity
        .credential
        .content
        .signature_key
        .as_slice()
        .to_vec();
    for needle in [b"carol@localhost".as_slice(), carol_key.as_slice()] {
        let holding = within(server.server.store().tables_containing(needle))
            .await
            .unwrap();
        assert!(holding.is_empty(), "{holding:?}");
    }
    // Alice's history still replays to her bindings after the removal and renewal.
    let transparency = KeyTransparency::in_memory();
    let renewed = within(alice.connection.prove_bindings("alice@localhost"))
        .await
        .unwrap();
    assert_eq!(renewed.bindings.credentials.len(), 1);
    within(transparency.own_history(&alice.connection, &alice.identity.credential, &keys, &[]))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_credential_is_provable_at_once() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let keys = within(alice.connection.domain_keys()).await.unwrap();
    let transparency = KeyTransparency::in_memory();
    // Each new user is looked for the moment it exists: a head covering it is published then.
    for n in 0..5 {
        let user = format!("user{n}@localhost");
        let device: Device = server.register(&user).await;
        within(transparency.check_logged(&alice.connection, &device.identity.credential, &keys))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_registering_and_publishing_at_once_keep_one_log() {
    // What keeps the log one sequence: every append reads and extends the last entry in a
    // serializable transaction, and a head is written only for a size larger than the newest.
    let first = TestServer::start_shared(|_| {}).await;
    let second = first.start_node(|_| {}).await;
    let registering = (0..12).map(|n| {
        let node = if n % 2 == 0 { &first } else { &second };
        async move { node.register(&format!("racer{n}@localhost")).await }
    });
    let devices = futures::future::join_all(registering).await;
    // Both nodes publish at once, each asked about a user the other registered.
    let (a, b) = tokio::join!(
        devices[0].connection.prove_bindings("racer1@localhost"),
        devices[1].connection.prove_bindings("racer0@localhost"),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let keys = within(devices[0].connection.domain_keys()).await.unwrap();
    // Every credential is bound, seen through either node; the heads are one log.
    let transparency = KeyTransparency::in_memory();
    for (n, device) in devices.iter().enumerate() {
        let through = &devices[(n + 1) % devices.len()].connection;
        within(transparency.check_logged(through, &device.identity.credential, &keys))
            .await
            .unwrap();
    }
    let (older, newer) = match a.head.head.tree_size <= b.head.head.tree_size {
        true => (a.head, b.head),
        false => (b.head, a.head),
    };
    let checked = KeyTransparency::in_memory();
    within(checked.advance(&devices[0].connection, &keys, &older))
        .await
        .unwrap();
    within(checked.advance(&devices[1].connection, &keys, &newer))
        .await
        .unwrap();
    // An auditor through each node rebuilds the same log: dense, every record once.
    for device in [&devices[0], &devices[1]] {
        let audited = within(Auditor::new().step(&device.connection, &keys))
            .await
            .unwrap();
        assert!(audited.head.tree_size >= 12, "{audited:?}");
        assert_eq!(audited.new_records, audited.head.tree_size);
    }
}
