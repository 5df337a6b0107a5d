//! The push stream.

use roost::protocol::{Notification, ServerShutdown, Text};
use roost::services::Sessions;

use crate::support::{within, TestServer};

fn notice(reason: &str) -> Notification {
    Notification::ServerShutdown(ServerShutdown {
        reason: Text::new(reason).unwrap(),
        retry_after_ms: 1,
    })
}

#[tokio::test]
async fn a_notification_reaches_every_connection_of_its_client_in_order() {
    let server = TestServer::start().await;
    let mut laptop = server.register("alice@localhost").await;
    let mut phone = server.reconnect(&laptop.identity).await;
    let _bob = server.register("bob@localhost").await;
    let alice = laptop.identity.client.clone();
    let sessions = server.server.sessions();
    assert_eq!(sessions.connections(&alice), 2);

    assert_eq!(sessions.notify(&alice, &notice("first")), 2);
    assert_eq!(sessions.notify(&alice, &notice("second")), 2);
    for push in [&mut laptop.push, &mut phone.push] {
        assert_eq!(within(push.next()).await.unwrap().unwrap(), notice("first"));
        assert_eq!(
            within(push.next()).await.unwrap().unwrap(),
            notice("second")
        );
    }
}

#[tokio::test]
async fn a_closed_connection_leaves_the_session_registry() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let client = alice.identity.client.clone();
    let sessions = server.server.sessions();
    assert_eq!(sessions.connections(&client), 1);
    within(alice.connection.close()).await;
    // No event announces the server-side cleanup: poll briefly.
    within(async {
        while sessions.connections(&client) != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await;
    assert_eq!(sessions.notify(&client, &notice("gone")), 0);
}
