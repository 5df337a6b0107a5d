//! Accounts and identity: registration, devices, credentials, discovery, deletion.

use ed25519_dalek::Signer;
use roost::client::{add_client_request, verify_user_clients};
use roost::clock::{Clock, SECONDS_PER_DAY};
use roost::identity::verify_member;
use roost::protocol::{
    close_code, register_proof_content, ClientId, ErrorCode, Notification, RegisterUserRequest,
    RegistrationMode, Request, Text, MAX_CLIENTS_PER_USER,
};
use roost::services::invites::InviteKey;

use crate::support::{code, new_key, within, Device, TestServer, CIPHERSUITE};

/// Waits for the server to close `device`'s connection, and returns the close code.
pub(crate) async fn closed_with(device: &Device) -> quinn::VarInt {
    match within(device.connection.closed()).await {
        quinn::ConnectionError::ApplicationClosed(close) => close.error_code,
        other => panic!("unexpected close: {other}"),
    }
}

#[tokio::test]
async fn users_register_link_devices_look_each_other_up_and_verify_credentials() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let alice_phone = server.add_device(&alice).await;
    let bob = server.register("Bob@LocalHost").await;
    assert_eq!(
        bob.identity.client.user_id.as_str(),
        "bob@localhost",
        "ids fold case"
    );
    assert_eq!(alice_phone.identity.client.device_id, 2);

    let keys = within(bob.connection.domain_keys()).await.unwrap();
    let found = within(bob.connection.lookup_user("alice@localhost"))
        .await
        .unwrap();
    assert_eq!(found.user_id.as_str(), "alice@localhost");
    assert_eq!(found.clients.len(), 2);
    let now = server.clock.now();
    for checked in verify_user_clients(&found, &keys, now) {
        assert!(checked.verified.is_ok(), "{:?}", checked.verified);
    }
    // As a group member would: the leaf signature key must be the one the credential binds.
    let phone_leaf_key = alice_phone.identity.signing_key.verifying_key().to_bytes();
    let phone_entry = found
        .clients
        .iter()
        .find(|entry| entry.credential.content.client == alice_phone.identity.client)
        .unwrap();
    verify_member(&phone_leaf_key, &phone_entry.credential, &keys, now).unwrap();
    assert!(verify_member(
        &alice.identity.signing_key.verifying_key().to_bytes(),
        &phone_entry.credential,
        &keys,
        now
    )
    .is_err());

    let own = within(alice_phone.connection.list_clients()).await.unwrap();
    assert_eq!(own, found);
    // The new device authenticates with its own key.
    assert_eq!(
        within(alice_phone.connection.who_am_i()).await.unwrap(),
        alice_phone.identity.client
    );
}

#[tokio::test]
async fn registration_refuses_bad_ids_keys_proofs_and_taken_ids() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let connection = server.connect().await;
    let register = |user: &'static str, key: ed25519_dalek::SigningKey, suite: u16| {
        let connection = &connection;
        async move { within(connection.register_user(user, &key, suite, None)).await }
    };

    assert_eq!(
        code(register("alice@localhost", new_key(), CIPHERSUITE).await),
        ErrorCode::UserExists
    );
    assert_eq!(
        code(register("ALICE@localhost", new_key(), CIPHERSUITE).await),
        ErrorCode::UserExists
    );
    for bad in [
        "alice",
        "al ice@localhost",
        ".alice@localhost",
        "alice@local_host",
    ] {
        let key = new_key();
        let result = within(connection.register_user(bad, &key, CIPHERSUITE, None)).await;
        assert_eq!(code(result), ErrorCode::InvalidUserId, "{bad}");
    }
    assert_eq!(
        code(register("carol@elsewhere.example", new_key(), CIPHERSUITE).await),
        ErrorCode::WrongDomain
    );
    assert_eq!(
        code(register("carol@localhost", new_key(), 0x0002).await),
        ErrorCode::UnsupportedCiphersuite
    );
    assert_eq!(
        code(
            register(
                "carol@localhost",
                alice.identity.signing_key.clone(),
                CIPHERSUITE
            )
            .await
        ),
        ErrorCode::KeyInUse
    );

    // Hand-made requests for what the client library would never send.
    let binding = connection.channel_binding().unwrap();
    let key = new_key();
    let public = key.verifying_key().to_bytes();
    let proof = |signer: &ed25519_dalek::SigningKey, binding: &[u8]| {
        signer
            .sign(&register_proof_content(
                binding,
                "carol@localhost",
                &public,
                CIPHERSUITE,
            ))
            .to_bytes()
            .to_vec()
    };
    let request = |signature_key: Vec<u8>, proof: Vec<u8>| {
        Request::RegisterUser(RegisterUserRequest {
            user_id: Text::new("carol@localhost").unwrap(),
            signature_key: signature_key.into(),
            ciphersuite: CIPHERSUITE,
            invite: None,
            proof: proof.into(),
        })
    };
    let short_key = public[..31].to_vec();
    assert_eq!(
        code(within(connection.request(&request(short_key, proof(&key, &binding)))).await),
        ErrorCode::InvalidKey
    );
    let mut small_order = vec![0u8; 32];
    small_order[0] = 1;
    assert_eq!(
        code(within(connection.request(&request(small_order, proof(&key, &binding)))).await),
        ErrorCode::InvalidKey
    );
    assert_eq!(
        code(
            within(connection.request(&request(public.to_vec(), proof(&new_key(), &binding))))
                .await
        ),
        ErrorCode::InvalidProof,
        "a proof signed by another key"
    );
    let other_connection = server.connect().await;
    let replayed = proof(&key, &other_connection.channel_binding().unwrap());
    assert_eq!(
        code(within(connection.request(&request(public.to_vec(), replayed))).await),
        ErrorCode::InvalidProof,
        "a proof made for another connection"
    );
    // None of the refusals registered anything.
    let lookup = within(alice.connection.lookup_user("carol@localhost")).await;
    assert_eq!(code(lookup), ErrorCode::UnknownUser);
    within(connection.request(&request(public.to_vec(), proof(&key, &binding))))
        .await
        .unwrap();
}

#[tokio::test]
async fn closed_registration_refuses_everyone() {
    let server =
        TestServer::start_with(|config| config.registration = RegistrationMode::Closed).await;
    let connection = server.connect().await;
    let info = within(connection.server_info()).await.unwrap();
    assert_eq!(info.registration, RegistrationMode::Closed);
    let result =
        within(connection.register_user("alice@localhost", &new_key(), CIPHERSUITE, None)).await;
    assert_eq!(code(result), ErrorCode::RegistrationClosed);
}

#[tokio::test]
async fn invite_registration_needs_a_genuine_recorded_unrevoked_unexpired_unused_invite() {
    let server =
        TestServer::start_with(|config| config.registration = RegistrationMode::Invite).await;
    let invites = InviteKey::load_or_create(&server.dir.path().join("data")).unwrap();
    let now = server.clock.now();
    let issue = |uses| server.server.services().issue_invite(now + 60, uses);
    let (single_use, _) = issue(1).await.unwrap();
    let (short_lived, _) = issue(5).await.unwrap();
    let (revoked, revoked_id) = issue(5).await.unwrap();
    // Signed with this server's key, but never recorded: not an invite the operator can see.
    let (unrecorded, _) = invites.create(now + 60, 1);
    let (forged, _) = InviteKey::load_or_create(tempfile::tempdir().unwrap().path())
        .unwrap()
        .create(now + 60, 1);
    let connection = server.connect().await;
    let register = |user: &'static str, invite: Option<String>| {
        let connection = &connection;
        async move {
            within(connection.register_user(user, &new_key(), CIPHERSUITE, invite.as_deref())).await
        }
    };

    assert_eq!(
        code(register("a@localhost", None).await),
        ErrorCode::InviteRequired
    );
    assert_eq!(
        code(register("a@localhost", Some(forged)).await),
        ErrorCode::InvalidInvite
    );
    assert_eq!(
        code(register("a@localhost", Some("garbage".into())).await),
        ErrorCode::InvalidInvite
    );
    assert_eq!(
        code(register("a@localhost", Some(unrecorded)).await),
        ErrorCode::InvalidInvite
    );
    let revoked_at = server
        .server
        .store()
        .revoke_invite(hex::decode(&revoked_id).unwrap(), now)
        .await
        .unwrap()
        .unwrap()
        .revoked_at;
    assert_eq!(revoked_at, Some(now));
    assert_eq!(
        code(register("a@localhost", Some(revoked)).await),
        ErrorCode::InvalidInvite
    );
    register("a@localhost", Some(single_use.clone()))
        .await
        .unwrap();
    assert_eq!(
        code(register("b@localhost", Some(single_use)).await),
        ErrorCode::InvalidInvite
    );
    register("b@localhost", Some(short_lived.clone()))
        .await
        .unwrap();
    server.clock.advance(61);
    assert_eq!(
        code(register("c@localhost", Some(short_lived)).await),
        ErrorCode::InvalidInvite
    );
}

#[tokio::test]
async fn adding_a_client_needs_the_new_keys_proof_and_respects_the_cap() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let bob = server.register("bob@localhost").await;

    let key = new_key();
    let mut bad_proof = add_client_request("alice@localhost", &key, CIPHERSUITE);
    bad_proof.proof = add_client_request("alice@localhost", &new_key(), CIPHERSUITE).proof;
    assert_eq!(
        code(within(alice.connection.add_client(bad_proof)).await),
        ErrorCode::InvalidProof
    );
    // A proof made for bob's account does not add the key to alice's.
    let for_bob = add_client_request("bob@localhost", &key, CIPHERSUITE);
    assert_eq!(
        code(within(alice.connection.add_client(for_bob)).await),
        ErrorCode::InvalidProof
    );
    let taken = add_client_request("alice@localhost", &bob.identity.signing_key, CIPHERSUITE);
    assert_eq!(
        code(within(alice.connection.add_client(taken)).await),
        ErrorCode::KeyInUse
    );

    for _ in 1..MAX_CLIENTS_PER_USER {
        let request = add_client_request("alice@localhost", &new_key(), CIPHERSUITE);
        within(alice.connection.add_client(request)).await.unwrap();
    }
    let one_too_many = add_client_request("alice@localhost", &new_key(), CIPHERSUITE);
    assert_eq!(
        code(within(alice.connection.add_client(one_too_many)).await),
        ErrorCode::TooManyClients
    );
    let listed = within(alice.connection.list_clients()).await.unwrap();
    assert_eq!(listed.clients.len(), MAX_CLIENTS_PER_USER);
}

#[tokio::test]
async fn removing_a_client_tells_it_closes_it_and_forgets_its_key() {
    let server = TestServer::start().await;
    let laptop = server.register("alice@localhost").await;
    let mut phone = server.add_device(&laptop).await;
    let bob = server.register("bob@localhost").await;

    // Not someone else's client, not an unknown one.
    let result = within(laptop.connection.remove_client(&bob.identity.client)).await;
    assert_eq!(code(result), ErrorCode::Forbidden);
    assert_eq!(
        within(bob.connection.list_clients())
            .await
            .unwrap()
            .clients
            .len(),
        1
    );
    let unknown = ClientId {
        user_id: laptop.identity.client.user_id.clone(),
        device_id: 77,
    };
    assert_eq!(
        code(within(laptop.connection.remove_client(&unknown)).await),
        ErrorCode::UnknownClient
    );

    within(laptop.connection.remove_client(&phone.identity.client))
        .await
        .unwrap();
    assert_eq!(
        within(phone.push.next()).await.unwrap().unwrap(),
        Notification::ClientRemoved(phone.identity.client.clone())
    );
    assert_eq!(closed_with(&phone).await, close_code::CLIENT_REMOVED.into());
    let again = server.connect().await;
    let result =
        within(again.authenticate(&phone.identity.client, &phone.identity.signing_key)).await;
    assert_eq!(code(result.map(|_| ())), ErrorCode::AuthenticationFailed);

    // The last client stays; device ids are not reused.
    assert_eq!(
        code(within(laptop.connection.remove_client(&laptop.identity.client)).await),
        ErrorCode::LastClient
    );
    let tablet = server.add_device(&laptop).await;
    assert_eq!(tablet.identity.client.device_id, 3);
}

#[tokio::test]
async fn a_renewed_credential_lasts_longer_and_still_verifies() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let before = alice.identity.credential.content.not_after;
    server.clock.advance(10 * SECONDS_PER_DAY);
    let renewed = within(alice.connection.renew_credential()).await.unwrap();
    assert_eq!(renewed.content.not_after, before + 10 * SECONDS_PER_DAY);
    assert_eq!(
        renewed.content.signature_key,
        alice.identity.credential.content.signature_key
    );
    let keys = within(alice.connection.domain_keys()).await.unwrap();
    let leaf = alice.identity.signing_key.verifying_key().to_bytes();
    verify_member(&leaf, &renewed, &keys, server.clock.now()).unwrap();
    let listed = within(alice.connection.list_clients()).await.unwrap();
    assert_eq!(
        listed.clients[0].credential, renewed,
        "the renewal was not stored"
    );
}

#[tokio::test]
async fn lookup_tells_unknown_users_bad_ids_and_foreign_domains_apart() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let lookup = |user: &'static str| within(alice.connection.lookup_user(user));
    assert_eq!(
        code(lookup("nobody@localhost").await),
        ErrorCode::UnknownUser
    );
    assert_eq!(code(lookup("not an id").await), ErrorCode::InvalidUserId);
    assert_eq!(
        code(lookup("bob@b.example").await),
        ErrorCode::UnknownDomain
    );
    assert_eq!(lookup("ALICE@localhost").await.unwrap().clients.len(), 1);
}

#[tokio::test]
async fn deleting_a_user_leaves_nothing_behind_and_quarantines_the_id() {
    let server = TestServer::start().await;
    let laptop = server.register("alice@localhost").await;
    let phone = server.add_device(&laptop).await;
    let bob = server.register("bob@localhost").await;
    let store = server.server.store();
    assert_eq!(
        store.table_names().await.unwrap().len(),
        roost::store::Store::known_tables().len(),
        "every table in the file is one the deletion scan covers"
    );
    let traces = [
        b"alice@localhost".to_vec(),
        laptop
            .identity
            .signing_key
            .verifying_key()
            .to_bytes()
            .to_vec(),
        phone
            .identity
            .signing_key
            .verifying_key()
            .to_bytes()
            .to_vec(),
    ];
    assert!(!store
        .tables_containing(&traces[0])
        .await
        .unwrap()
        .is_empty());

    within(laptop.connection.delete_user()).await.unwrap();
    for device in [&laptop, &phone] {
        assert_eq!(closed_with(device).await, close_code::CLIENT_REMOVED.into());
    }
    for trace in &traces {
        assert_eq!(
            store.tables_containing(trace).await.unwrap(),
            Vec::<String>::new()
        );
    }
    assert_eq!(
        code(within(bob.connection.lookup_user("alice@localhost")).await),
        ErrorCode::UnknownUser
    );
    // Bob is untouched.
    assert_eq!(
        within(bob.connection.list_clients())
            .await
            .unwrap()
            .clients
            .len(),
        1
    );

    // Deleting again changes nothing.
    assert_eq!(
        store
            .delete_user("alice@localhost", server.clock.now())
            .await
            .unwrap(),
        Vec::<u32>::new()
    );

    // Nobody takes the id over during the quarantine; afterwards it is free again.
    let connection = server.connect().await;
    let register = || async {
        let key = new_key();
        within(connection.register_user("alice@localhost", &key, CIPHERSUITE, None)).await
    };
    assert_eq!(code(register().await), ErrorCode::UserQuarantined);
    server.clock.advance(30 * SECONDS_PER_DAY - 1);
    assert_eq!(code(register().await), ErrorCode::UserQuarantined);
    server.clock.advance(1);
    let fresh = register().await.unwrap();
    assert_eq!(fresh.client.device_id, 1);
}

#[tokio::test]
async fn accounts_survive_a_restart_and_deletion_stays_deleted() {
    let harness = TestServer::start().await;
    let alice = harness.register("alice@localhost").await;
    let bob = harness.register("bob@localhost").await;
    within(bob.connection.delete_user()).await.unwrap();
    let alice_identity = alice.identity.clone();
    drop(alice);
    let restarted = harness.restart().await;
    let alice = restarted.reconnect(&alice_identity).await;
    assert_eq!(
        within(alice.connection.list_clients())
            .await
            .unwrap()
            .clients
            .len(),
        1
    );
    assert_eq!(
        code(within(alice.connection.lookup_user("bob@localhost")).await),
        ErrorCode::UnknownUser
    );
    let connection = restarted.connect().await;
    let result =
        within(connection.register_user("bob@localhost", &new_key(), CIPHERSUITE, None)).await;
    assert_eq!(
        code(result),
        ErrorCode::UserQuarantined,
        "the quarantine was not persisted"
    );
}
