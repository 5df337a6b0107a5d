//! KeyPackages: validated upload, claim-once fetch, last resort, low-stock push.

use std::collections::HashSet;

use openmls::prelude::{
    BasicCredential, Ciphersuite, CredentialWithKey, KeyPackage, KeyPackageIn, ProtocolVersion,
    SignatureScheme,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::{OpenMlsRustCrypto, RustCrypto};
use roost::client::mls::DeviceMls;
use roost::clock::{Clock, SECONDS_PER_DAY};
use roost::identity::verify_member;
use roost::protocol::{ClaimOutcome, ClientCredential, ErrorCode, Notification};
use tls_codec::{Deserialize, Serialize};

use crate::support::{code, within, Device, TestServer, CIPHERSUITE};

/// The KeyPackageRef of an encoded KeyPackage, as a member computing a Welcome would.
fn key_package_ref(bytes: &[u8]) -> Vec<u8> {
    let crypto = RustCrypto::default();
    KeyPackageIn::tls_deserialize_exact(bytes)
        .unwrap()
        .validate(&crypto, ProtocolVersion::Mls10)
        .unwrap()
        .hash_ref(&crypto)
        .unwrap()
        .as_slice()
        .to_vec()
}

async fn remaining(device: &Device) -> (u32, bool) {
    let status = within(device.connection.key_package_status())
        .await
        .unwrap();
    let stock = status
        .clients
        .iter()
        .find(|stock| stock.client == device.identity.client)
        .unwrap();
    (stock.remaining, stock.has_last_resort.0)
}

#[tokio::test]
async fn each_key_package_is_claimed_once_then_the_last_resort_is_returned_and_kept() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let bob = server.register("bob@localhost").await;
    let published = bob.publish(3, true).await;
    assert_eq!(remaining(&bob).await, (3, true));

    let keys = within(alice.connection.domain_keys()).await.unwrap();
    let mut seen = HashSet::new();
    for _ in 0..3 {
        let claimed = within(
            alice
                .connection
                .claim_key_packages("bob@localhost", CIPHERSUITE),
        )
        .await
        .unwrap();
        assert_eq!(claimed.claims.len(), 1);
        assert_eq!(claimed.claims[0].client, bob.identity.client);
        let ClaimOutcome::KeyPackage(bytes) = &claimed.claims[0].outcome else {
            panic!(
                "expected an ordinary KeyPackage, got {:?}",
                claimed.claims[0].outcome
            );
        };
        assert!(published[..3].contains(&bytes.as_slice().to_vec()));
        assert!(
            seen.insert(bytes.as_slice().to_vec()),
            "a KeyPackage was handed out twice"
        );

        // The claimer can check whose KeyPackage it is: leaf key and server-signed credential.
        let key_package = KeyPackageIn::tls_deserialize_exact(bytes.as_slice())
            .unwrap()
            .validate(&RustCrypto::default(), ProtocolVersion::Mls10)
            .unwrap();
        let leaf = key_package.leaf_node();
        let identity = BasicCredential::try_from(leaf.credential().clone()).unwrap();
        let credential = ClientCredential::tls_deserialize_exact(identity.identity()).unwrap();
        let member = verify_member(
            leaf.signature_key().as_slice(),
            &credential,
            &keys,
            server.clock.now(),
        )
        .unwrap();
        assert_eq!(member, bob.identity.client);
    }
    assert_eq!(remaining(&bob).await, (0, true));
    for _ in 0..2 {
        let claimed = within(
            alice
                .connection
                .claim_key_packages("bob@localhost", CIPHERSUITE),
        )
        .await
        .unwrap();
        match &claimed.claims[0].outcome {
            ClaimOutcome::LastResort(bytes) => assert_eq!(bytes.as_slice(), published[3]),
            other => panic!("expected the last resort, got {other:?}"),
        }
    }
    assert_eq!(remaining(&bob).await, (0, true), "the last resort is kept");
}

#[tokio::test]
async fn a_claim_covers_every_client_of_the_user() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let bob_laptop = server.register("bob@localhost").await;
    let bob_phone = server.add_device(&bob_laptop).await;
    bob_laptop.publish(1, false).await;
    let claimed = within(
        alice
            .connection
            .claim_key_packages("bob@localhost", CIPHERSUITE),
    )
    .await
    .unwrap();
    let outcomes: Vec<_> = claimed
        .claims
        .iter()
        .map(|claim| {
            (
                claim.client.clone(),
                matches!(claim.outcome, ClaimOutcome::KeyPackage(_)),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (bob_laptop.identity.client.clone(), true),
            (bob_phone.identity.client.clone(), false)
        ]
    );
    assert!(matches!(
        claimed.claims[1].outcome,
        ClaimOutcome::Unavailable
    ));

    let refused = |user: &'static str, suite: u16| {
        let connection = &alice.connection;
        async move { code(within(connection.claim_key_packages(user, suite)).await) }
    };
    assert_eq!(
        refused("nobody@localhost", CIPHERSUITE).await,
        ErrorCode::UnknownUser
    );
    assert_eq!(
        refused("bob@b.example", CIPHERSUITE).await,
        ErrorCode::UnknownDomain
    );
    assert_eq!(refused("bob", CIPHERSUITE).await, ErrorCode::InvalidUserId);
    assert_eq!(
        refused("bob@localhost", 0x0002).await,
        ErrorCode::UnsupportedCiphersuite
    );
}

#[tokio::test]
async fn every_bad_upload_is_refused_with_its_own_error_and_nothing_is_stored() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let bob = server.register("bob@localhost").await;
    bob.publish(2, true).await;
    let publish = |batch: Vec<Vec<u8>>| {
        let connection = &bob.connection;
        async move { within(connection.publish_key_packages(batch)).await }
    };
    let good = || bob.mls.key_packages(1, false).unwrap().remove(0);

    // A tampered signature (the last bytes are the KeyPackage's signature).
    let mut tampered = good();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    assert_eq!(
        code(publish(vec![tampered]).await),
        ErrorCode::InvalidKeyPackage
    );
    assert_eq!(
        code(publish(vec![vec![1, 2, 3]]).await),
        ErrorCode::InvalidKeyPackage
    );

    // Someone else's KeyPackage.
    let alices = alice.mls.key_packages(1, false).unwrap();
    assert_eq!(code(publish(alices).await), ErrorCode::KeyPackageNotOwned);

    // A credential that is not bob's current one: his credential before renewal.
    let stale_mls = DeviceMls::new(&bob.identity).unwrap();
    server.clock.advance(60);
    within(bob.connection.renew_credential()).await.unwrap();
    let stale = stale_mls.key_packages(1, false).unwrap();
    assert_eq!(
        code(publish(stale).await),
        ErrorCode::KeyPackageCredentialMismatch
    );
    let mut renewed_identity = bob.identity.clone();
    renewed_identity.credential = within(bob.connection.list_clients()).await.unwrap().clients[0]
        .credential
        .clone();
    let bob_mls = DeviceMls::new(&renewed_identity).unwrap();
    let good = || bob_mls.key_packages(1, false).unwrap().remove(0);

    // An unsupported ciphersuite (P-256), otherwise well-formed.
    let provider = OpenMlsRustCrypto::default();
    let p256 = SignatureKeyPair::new(SignatureScheme::ECDSA_SECP256R1_SHA256).unwrap();
    let encoded_credential = renewed_identity
        .credential
        .tls_serialize_detached()
        .unwrap();
    let p256_package = KeyPackage::builder()
        .build(
            Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256,
            &provider,
            &p256,
            CredentialWithKey {
                credential: BasicCredential::new(encoded_credential).into(),
                signature_key: p256.public().to_vec().into(),
            },
        )
        .unwrap()
        .key_package()
        .tls_serialize_detached()
        .unwrap();
    assert_eq!(
        code(publish(vec![p256_package]).await),
        ErrorCode::UnsupportedCiphersuite
    );

    // Duplicates: within a batch, and of one already published.
    let once = good();
    assert_eq!(
        code(publish(vec![once.clone(), once.clone()]).await),
        ErrorCode::DuplicateKeyPackage
    );
    publish(vec![once.clone()]).await.unwrap();
    assert_eq!(
        code(publish(vec![once]).await),
        ErrorCode::DuplicateKeyPackage
    );
    let after_duplicate = remaining(&bob).await;

    // Two last resorts in one batch.
    let two_last_resorts: Vec<_> = (0..2)
        .flat_map(|_| bob_mls.key_packages(0, true).unwrap())
        .collect();
    assert_eq!(
        code(publish(two_last_resorts).await),
        ErrorCode::MultipleLastResort
    );

    // Oversize: a batch beyond the per-client limit, and a stock that would exceed it.
    let oversize = bob_mls.key_packages(101, false).unwrap();
    assert_eq!(code(publish(oversize).await), ErrorCode::TooManyKeyPackages);
    let fills_over = bob_mls.key_packages(98, false).unwrap();
    assert_eq!(
        code(publish(fills_over).await),
        ErrorCode::TooManyKeyPackages
    );

    // One bad KeyPackage sinks its whole batch, and the error names it.
    let mut batch: Vec<_> = (0..4).map(|_| good()).collect();
    batch[2] = vec![0xde, 0xad];
    let error = within(bob.connection.publish_key_packages(batch))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::InvalidKeyPackage));
    assert!(error.to_string().contains("KeyPackage 2"), "{error}");

    // Expired, by the server's clock.
    let fresh = good();
    let now = server.clock.now();
    server.clock.advance(400 * SECONDS_PER_DAY);
    assert_eq!(
        code(publish(vec![fresh]).await),
        ErrorCode::KeyPackageExpired
    );
    server.clock.set(now);
    assert_eq!(
        remaining(&bob).await,
        after_duplicate,
        "a refused batch stored something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_hand_out_a_key_package_twice() {
    let server = TestServer::start().await;
    let bob = server.register("bob@localhost").await;
    let published = bob.publish(40, true).await;
    let mut claimers = Vec::new();
    for i in 0..5 {
        claimers.push(server.register(&format!("claimer{i}@localhost")).await);
    }
    let claims = claimers.iter().flat_map(|claimer| {
        (0..10).map(move |_| {
            claimer
                .connection
                .claim_key_packages("bob@localhost", CIPHERSUITE)
        })
    });
    let results = within(futures::future::join_all(claims)).await;
    let mut ordinary = HashSet::new();
    let mut last_resorts = 0;
    for result in results {
        match &result.unwrap().claims[0].outcome {
            ClaimOutcome::KeyPackage(bytes) => {
                assert!(
                    ordinary.insert(key_package_ref(bytes.as_slice())),
                    "two claims got the same KeyPackage"
                );
            }
            ClaimOutcome::LastResort(bytes) => {
                assert_eq!(bytes.as_slice(), published[40]);
                last_resorts += 1;
            }
            ClaimOutcome::Unavailable => panic!("the last resort should have been returned"),
        }
    }
    assert_eq!((ordinary.len(), last_resorts), (40, 10));
}

#[tokio::test]
async fn a_low_stock_is_pushed_and_the_client_tops_up() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let mut bob = server.register("bob@localhost").await;
    bob.publish(11, true).await;
    for _ in 0..2 {
        within(
            alice
                .connection
                .claim_key_packages("bob@localhost", CIPHERSUITE),
        )
        .await
        .unwrap();
    }
    match within(bob.push.next()).await.unwrap().unwrap() {
        Notification::KeyPackagesLow(low) => {
            assert_eq!(low.client, bob.identity.client);
            assert_eq!(low.remaining, 9);
        }
        other => panic!("expected KeyPackagesLow, got {other:?}"),
    }
    let published = within(
        bob.connection
            .top_up_key_packages(&bob.identity.client, &bob.mls),
    )
    .await
    .unwrap();
    assert_eq!(published, 21);
    assert_eq!(remaining(&bob).await, (30, true));
}

#[tokio::test]
async fn claims_are_rate_limited_per_claimer_and_per_target() {
    let server = TestServer::start_with(|config| {
        config.key_packages.claims_per_minute_per_claimer = 2;
        config.key_packages.claims_per_minute_per_target = 3;
    })
    .await;
    let alice = server.register("alice@localhost").await;
    let carol = server.register("carol@localhost").await;
    let _bob = server.register("bob@localhost").await;
    let _dave = server.register("dave@localhost").await;
    let claim = |claimer: &'static Device, user: &'static str| {
        within(claimer.connection.claim_key_packages(user, CIPHERSUITE))
    };
    let alice: &'static Device = Box::leak(Box::new(alice));
    let carol: &'static Device = Box::leak(Box::new(carol));
    claim(alice, "bob@localhost").await.unwrap();
    claim(alice, "dave@localhost").await.unwrap();
    assert_eq!(
        code(claim(alice, "dave@localhost").await),
        ErrorCode::RateLimited,
        "per claimer"
    );
    claim(carol, "bob@localhost").await.unwrap();
    claim(carol, "bob@localhost").await.unwrap();
    assert_eq!(
        code(claim(carol, "bob@localhost").await),
        ErrorCode::RateLimited,
        "per target"
    );
}

#[tokio::test]
async fn claimed_references_route_welcomes_until_expiry_and_expired_stock_is_purged() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let bob = server.register("bob@localhost").await;
    let published = bob.publish(2, false).await;
    let claimed = within(
        alice
            .connection
            .claim_key_packages("bob@localhost", CIPHERSUITE),
    )
    .await
    .unwrap();
    let ClaimOutcome::KeyPackage(bytes) = &claimed.claims[0].outcome else {
        panic!("no KeyPackage");
    };
    let store = server.server.store();
    let key_ref = key_package_ref(bytes.as_slice());
    assert_eq!(
        store
            .key_package_owner(&key_ref, server.clock.now())
            .await
            .unwrap(),
        Some(roost::protocol::ClientId::of("bob@localhost", 1))
    );

    server.clock.advance(400 * SECONDS_PER_DAY);
    assert_eq!(
        store
            .key_package_owner(&key_ref, server.clock.now())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        remaining(&bob).await,
        (0, false),
        "expired KeyPackages are not counted"
    );
    let claimed = within(
        alice
            .connection
            .claim_key_packages("bob@localhost", CIPHERSUITE),
    )
    .await
    .unwrap();
    assert!(matches!(
        claimed.claims[0].outcome,
        ClaimOutcome::Unavailable
    ));
    store
        .purge_expired_key_packages(server.clock.now())
        .await
        .unwrap();
    for key_package in &published {
        assert_eq!(
            store
                .tables_containing(&key_package_ref(key_package))
                .await
                .unwrap(),
            Vec::<String>::new()
        );
    }
}

#[tokio::test]
async fn removing_a_client_or_deleting_the_user_removes_its_key_packages() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let bob = server.register("bob@localhost").await;
    let bob_phone = server.add_device(&bob).await;
    let bob_packages = bob.publish(3, true).await;
    let phone_packages = bob_phone.publish(3, true).await;
    within(
        alice
            .connection
            .claim_key_packages("bob@localhost", CIPHERSUITE),
    )
    .await
    .unwrap();
    let store = server.server.store();

    within(bob.connection.remove_client(&bob_phone.identity.client))
        .await
        .unwrap();
    for key_package in &phone_packages {
        assert!(store
            .tables_containing(&key_package_ref(key_package))
            .await
            .unwrap()
            .is_empty());
    }
    let claimed = within(
        alice
            .connection
            .claim_key_packages("bob@localhost", CIPHERSUITE),
    )
    .await
    .unwrap();
    assert_eq!(claimed.claims.len(), 1, "the removed phone is not offered");

    within(bob.connection.delete_user()).await.unwrap();
    assert!(store
        .tables_containing(b"bob@localhost")
        .await
        .unwrap()
        .is_empty());
    for key_package in &bob_packages {
        assert!(store
            .tables_containing(&key_package_ref(key_package))
            .await
            .unwrap()
            .is_empty());
    }
}
