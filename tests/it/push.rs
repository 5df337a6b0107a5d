//! The push stream.

use roost::protocol::{Notification, ServerShutdown, Text};

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
    let (alice, key) = server.add_client("alice@localhost", 1);
    let (bob, bob_key) = server.add_client("bob@localhost", 1);
    let laptop = server.connect().await;
    let phone = server.connect().await;
    let bobs = server.connect().await;
    let mut laptop_push = within(laptop.authenticate(&alice, &key)).await.unwrap();
    let mut phone_push = within(phone.authenticate(&alice, &key)).await.unwrap();
    let _bob_push = within(bobs.authenticate(&bob, &bob_key)).await.unwrap();
    assert_eq!(server.server.push().connections(&alice), 2);

    assert_eq!(server.server.push().notify(&alice, &notice("first")), 2);
    assert_eq!(server.server.push().notify(&alice, &notice("second")), 2);
    for push in [&mut laptop_push, &mut phone_push] {
        assert_eq!(within(push.next()).await.unwrap().unwrap(), notice("first"));
        assert_eq!(
            within(push.next()).await.unwrap().unwrap(),
            notice("second")
        );
    }
}

#[tokio::test]
async fn a_closed_connection_leaves_the_push_hub() {
    let server = TestServer::start().await;
    let (alice, key) = server.add_client("alice@localhost", 1);
    let connection = server.connect().await;
    let _push = within(connection.authenticate(&alice, &key)).await.unwrap();
    assert_eq!(server.server.push().connections(&alice), 1);
    within(connection.close()).await;
    within(async {
        while server.server.push().connections(&alice) != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await;
    assert_eq!(server.server.push().notify(&alice, &notice("gone")), 0);
}
