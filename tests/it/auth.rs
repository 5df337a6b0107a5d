//! Channel-bound authentication.

use roost::protocol::{ClientId, ErrorCode, Request, ResponseBody};
use roost::transport::auth::sign_authentication;

use crate::support::{new_key, within, TestServer};

#[tokio::test]
async fn the_right_key_authenticates_the_connection_for_every_later_stream() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    for _ in 0..3 {
        assert_eq!(
            within(alice.connection.who_am_i()).await.unwrap(),
            alice.identity.client
        );
    }
}

#[tokio::test]
async fn a_wrong_key_fails_and_leaves_the_connection_unauthenticated() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let connection = server.connect().await;
    let error = within(connection.authenticate(&alice.identity.client, &new_key()))
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
    let stranger = ClientId::of("mallory@localhost", 1);
    let connection = server.connect().await;
    let error = within(connection.authenticate(&stranger, &new_key()))
        .await
        .err()
        .expect("an unknown client authenticated");
    assert_eq!(error.code(), Some(ErrorCode::AuthenticationFailed));
}

#[tokio::test]
async fn a_signature_replayed_from_another_connection_fails() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let (client, key) = (&alice.identity.client, &alice.identity.signing_key);
    let victim = server.connect().await;
    let attacker = server.connect().await;
    let signed_for_victim = sign_authentication(key, &victim.channel_binding().unwrap(), client);

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
    for request in [
        Request::WhoAmI,
        Request::ListClients,
        Request::RenewCredential,
        Request::DeleteUser,
    ] {
        let error = within(connection.request(&request)).await.unwrap_err();
        assert_eq!(
            error.code(),
            Some(ErrorCode::NotAuthenticated),
            "{request:?}"
        );
    }
    let error = within(connection.lookup_user("alice@localhost"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotAuthenticated));
    // Unauthenticated operations still work.
    within(connection.server_info()).await.unwrap();
}

#[tokio::test]
async fn a_connection_authenticates_only_once() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let bob = server.register("bob@localhost").await;
    let request = sign_authentication(
        &bob.identity.signing_key,
        &alice.connection.channel_binding().unwrap(),
        &bob.identity.client,
    );
    let error = within(alice.connection.request(&Request::Authenticate(request)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::AlreadyAuthenticated));
    assert_eq!(
        within(alice.connection.who_am_i()).await.unwrap(),
        alice.identity.client
    );
}
