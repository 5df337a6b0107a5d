//! Channel-bound authentication.

use ed25519_dalek::SigningKey;
use roost::protocol::{ClientId, ErrorCode, Request, ResponseBody, Text};
use roost::transport::auth::sign_authentication;

use crate::support::{within, TestServer};

#[tokio::test]
async fn the_right_key_authenticates_the_connection_for_every_later_stream() {
    let server = TestServer::start().await;
    let (client, key) = server.add_client("alice@localhost", 1);
    let connection = server.connect().await;
    within(connection.authenticate(&client, &key))
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(within(connection.who_am_i()).await.unwrap(), client);
    }
}

#[tokio::test]
async fn a_wrong_key_fails_and_leaves_the_connection_unauthenticated() {
    let server = TestServer::start().await;
    let (client, _key) = server.add_client("alice@localhost", 1);
    let impostor = SigningKey::generate(&mut rand::rngs::OsRng);
    let connection = server.connect().await;
    let error = within(connection.authenticate(&client, &impostor))
        .await
        .err()
        .expect("a wrong key authenticated");
    assert_eq!(error.code(), Some(ErrorCode::AuthenticationFailed));
    let error = within(connection.who_am_i()).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotAuthenticated));
}

#[tokio::test]
async fn an_unknown_client_fails_like_a_wrong_key() {
    let server = TestServer::start().await;
    let stranger = ClientId {
        user_id: Text::new("mallory@localhost").unwrap(),
        device_id: 1,
    };
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let connection = server.connect().await;
    let error = within(connection.authenticate(&stranger, &key))
        .await
        .err()
        .expect("an unknown client authenticated");
    assert_eq!(error.code(), Some(ErrorCode::AuthenticationFailed));
}

#[tokio::test]
async fn a_signature_replayed_from_another_connection_fails() {
    let server = TestServer::start().await;
    let (client, key) = server.add_client("alice@localhost", 1);
    let victim = server.connect().await;
    let attacker = server.connect().await;
    let signed_for_victim = sign_authentication(&key, &victim.channel_binding().unwrap(), &client);

    let replayed =
        within(attacker.request(&Request::Authenticate(signed_for_victim.clone()))).await;
    assert_eq!(
        replayed.unwrap_err().code(),
        Some(ErrorCode::AuthenticationFailed)
    );
    assert_eq!(
        within(attacker.who_am_i()).await.unwrap_err().code(),
        Some(ErrorCode::NotAuthenticated)
    );
    // The same signature is valid on the connection it was made for.
    let accepted = within(victim.request(&Request::Authenticate(signed_for_victim))).await;
    assert!(matches!(accepted, Ok(ResponseBody::Authenticated(_))));
}

#[tokio::test]
async fn an_unauthenticated_connection_cannot_do_authenticated_operations() {
    let server = TestServer::start().await;
    let connection = server.connect().await;
    let error = within(connection.who_am_i()).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotAuthenticated));
    // Unauthenticated operations still work.
    within(connection.server_info()).await.unwrap();
}

#[tokio::test]
async fn a_connection_authenticates_only_once() {
    let server = TestServer::start().await;
    let (alice, alice_key) = server.add_client("alice@localhost", 1);
    let (bob, bob_key) = server.add_client("bob@localhost", 1);
    let connection = server.connect().await;
    within(connection.authenticate(&alice, &alice_key))
        .await
        .unwrap();
    let request = sign_authentication(&bob_key, &connection.channel_binding().unwrap(), &bob);
    let error = within(connection.request(&Request::Authenticate(request)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::AlreadyAuthenticated));
    assert_eq!(within(connection.who_am_i()).await.unwrap(), alice);
}
