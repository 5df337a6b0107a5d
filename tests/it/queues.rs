//! Durable client queues and realtime push.

use roost::client::queue::{HintAction, QueuePosition};
use roost::clock::SECONDS_PER_DAY;
use roost::protocol::{
    ClientId, ErrorCode, MessageKind, Notification, ServerNotice, MAX_FETCH_COUNT, MAX_PUSHED_BYTES,
};
use roost::services::Delivery;
use roost::store::Enqueued;
use tls_codec::Deserialize;

use crate::support::{code, within, Device, TestServer};

/// Queues `payload` for `recipients` through the queue service, as the group service will.
async fn deliver(server: &TestServer, recipients: &[&ClientId], payload: &[u8]) -> Vec<Enqueued> {
    let delivery = Delivery {
        recipients: recipients.iter().map(|client| (*client).clone()).collect(),
        kind: MessageKind::Mls,
        payload: payload.to_vec(),
    };
    let report = within(server.server.services().queues().deliver(vec![delivery]))
        .await
        .unwrap();
    report[0].iter().map(|(_, outcome)| *outcome).collect()
}

async fn fetch_all(device: &Device) -> Vec<(u64, Vec<u8>)> {
    let fetched = within(
        device
            .connection
            .fetch_messages(0, MAX_FETCH_COUNT, u32::MAX),
    )
    .await
    .unwrap();
    fetched
        .messages
        .into_iter()
        .map(|message| (message.seq, message.payload.into()))
        .collect()
}

#[tokio::test]
async fn messages_arrive_in_order_and_stay_until_acknowledged() {
    let server = TestServer::start().await;
    let bob = server.register("bob@localhost").await;
    for i in 0..5u8 {
        assert_eq!(
            deliver(&server, &[&bob.identity.client], &[i]).await,
            [Enqueued::Queued {
                seq: u64::from(i) + 1
            }]
        );
    }
    let expected: Vec<_> = (0..5u8).map(|i| (u64::from(i) + 1, vec![i])).collect();
    assert_eq!(fetch_all(&bob).await, expected);
    // Fetching again without acknowledging returns the same messages (at-least-once).
    assert_eq!(fetch_all(&bob).await, expected);

    within(bob.connection.ack_messages(3)).await.unwrap();
    assert_eq!(fetch_all(&bob).await, expected[3..]);
    // Acknowledging again is harmless; acknowledging what was never assigned is refused.
    within(bob.connection.ack_messages(3)).await.unwrap();
    assert_eq!(
        code(within(bob.connection.ack_messages(6)).await),
        ErrorCode::InvalidSequence
    );
    assert_eq!(fetch_all(&bob).await, expected[3..]);

    // from_seq skips without deleting; next_seq tells what comes next.
    let fetched = within(bob.connection.fetch_messages(5, 10, u32::MAX))
        .await
        .unwrap();
    assert_eq!(fetched.messages.len(), 1);
    assert_eq!(fetched.next_seq, 6);
    within(bob.connection.ack_messages(5)).await.unwrap();
    assert!(fetch_all(&bob).await.is_empty());
    assert_eq!(
        deliver(&server, &[&bob.identity.client], b"next").await,
        [Enqueued::Queued { seq: 6 }]
    );
}

#[tokio::test]
async fn a_fetch_is_bounded_by_count_and_bytes_but_returns_at_least_one_message() {
    let server = TestServer::start().await;
    let bob = server.register("bob@localhost").await;
    for _ in 0..10 {
        deliver(&server, &[&bob.identity.client], &[7u8; 100_000]).await;
    }
    let by_count = within(bob.connection.fetch_messages(0, 3, u32::MAX))
        .await
        .unwrap();
    assert_eq!(by_count.messages.len(), 3);
    let by_bytes = within(bob.connection.fetch_messages(0, 10, 250_000))
        .await
        .unwrap();
    assert_eq!(by_bytes.messages.len(), 2);
    let tiny = within(bob.connection.fetch_messages(0, 10, 1))
        .await
        .unwrap();
    assert_eq!(tiny.messages.len(), 1);
    let everything = within(bob.connection.fetch_messages(0, MAX_FETCH_COUNT, u32::MAX))
        .await
        .unwrap();
    assert_eq!(everything.messages.len(), 10);
}

#[tokio::test]
async fn every_connection_hears_of_new_messages_at_once() {
    let server = TestServer::start().await;
    let mut laptop = server.register("bob@localhost").await;
    let mut phone = server.reconnect(&laptop.identity).await;
    let client = laptop.identity.client.clone();
    deliver(&server, &[&client], b"hello").await;
    for push in [&mut laptop.push, &mut phone.push] {
        match within(push.next()).await.unwrap().unwrap() {
            Notification::NewMessages(new) => {
                assert_eq!(new.latest_seq, 1);
                // Small: it rides along, so the client needs no fetch.
                let carried: Vec<_> = new
                    .messages
                    .iter()
                    .map(|m| (m.seq, m.kind, m.payload.as_slice()))
                    .collect();
                assert_eq!(carried, [(1, MessageKind::Mls, &b"hello"[..])]);
            }
            other => panic!("expected NewMessages, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_connected_client_processes_what_the_hint_carries_without_fetching() {
    let server = TestServer::start().await;
    let mut bob = server.register("bob@localhost").await;
    let client = bob.identity.client.clone();
    let mut position = QueuePosition::default();
    let fetched = within(bob.connection.fetch_messages(0, MAX_FETCH_COUNT, u32::MAX))
        .await
        .unwrap();
    position.caught_up(&fetched);

    for text in [&b"one"[..], b"two", b"three"] {
        deliver(&server, &[&client], text).await;
        let hint = loop {
            match within(bob.push.next()).await.unwrap().unwrap() {
                Notification::NewMessages(hint) => break hint,
                _ => continue,
            }
        };
        let HintAction::Process(messages) = position.on_hint(&hint) else {
            panic!("the hint should carry what follows on: {hint:?}");
        };
        assert_eq!(messages.last().unwrap().payload.as_slice(), text);
        within(bob.connection.ack_messages(hint.latest_seq))
            .await
            .unwrap();
        position.advance(hint.latest_seq);
    }
    assert_eq!(position.done(), 3);
    assert!(
        fetch_all(&bob).await.is_empty(),
        "acknowledged from the hints alone"
    );
}

#[tokio::test]
async fn a_large_message_is_announced_not_carried_and_stays_queued_until_acknowledged() {
    let server = TestServer::start().await;
    let mut bob = server.register("bob@localhost").await;
    let client = bob.identity.client.clone();
    let large = vec![7u8; MAX_PUSHED_BYTES + 1];
    deliver(&server, &[&client], &large).await;
    match within(bob.push.next()).await.unwrap().unwrap() {
        Notification::NewMessages(new) => {
            assert_eq!((new.latest_seq, new.messages.len()), (1, 0));
        }
        other => panic!("expected NewMessages, got {other:?}"),
    }
    deliver(&server, &[&client], b"small").await;
    match within(bob.push.next()).await.unwrap().unwrap() {
        Notification::NewMessages(new) => {
            assert_eq!(new.latest_seq, 2);
            assert_eq!(new.messages[0].payload.as_slice(), b"small");
        }
        other => panic!("expected NewMessages, got {other:?}"),
    }
    // Carried or not, both wait in the queue until acknowledged.
    assert_eq!(fetch_all(&bob).await, [(1, large), (2, b"small".to_vec())]);
}

#[tokio::test]
async fn a_slow_reader_gets_the_latest_hint_and_slows_nobody() {
    let server = TestServer::start().await;
    let mut slow = server.register("slow@localhost").await;
    let fast = server.register("fast@localhost").await;
    // The slow client reads nothing while a thousand messages are queued for both.
    for i in 0..1000u32 {
        deliver(
            &server,
            &[&slow.identity.client, &fast.identity.client],
            &i.to_be_bytes(),
        )
        .await;
    }
    assert_eq!(
        within(fast.connection.fetch_messages(0, MAX_FETCH_COUNT, u32::MAX))
            .await
            .unwrap()
            .messages
            .len(),
        1000
    );
    // Hints only move forward (coalesced ones are skipped, never reordered), and the latest one
    // always arrives.
    let mut latest = 0;
    while latest < 1000 {
        match within(slow.push.next()).await.unwrap().unwrap() {
            Notification::NewMessages(new) => {
                assert!(
                    new.latest_seq > latest,
                    "hint {} after {latest}",
                    new.latest_seq
                );
                latest = new.latest_seq;
            }
            other => panic!("expected NewMessages, got {other:?}"),
        }
    }
    assert_eq!(latest, 1000);
}

#[tokio::test]
async fn a_full_queue_refuses_that_recipient_only() {
    let server = TestServer::start_with(|config| config.queues.max_messages = 2).await;
    let alice = server.register("alice@localhost").await;
    let bob = server.register("bob@localhost").await;
    deliver(&server, &[&bob.identity.client], b"1").await;
    deliver(&server, &[&bob.identity.client], b"2").await;
    let outcomes = deliver(
        &server,
        &[&alice.identity.client, &bob.identity.client],
        b"3",
    )
    .await;
    assert_eq!(outcomes, [Enqueued::Queued { seq: 1 }, Enqueued::QueueFull]);
    assert_eq!(
        fetch_all(&bob).await.len(),
        2,
        "nothing was dropped to make room"
    );
    within(bob.connection.ack_messages(2)).await.unwrap();
    assert_eq!(
        deliver(&server, &[&bob.identity.client], b"4").await,
        [Enqueued::Queued { seq: 3 }]
    );
}

#[tokio::test]
async fn queues_survive_a_restart() {
    let server = TestServer::start().await;
    let bob = server.register("bob@localhost").await;
    deliver(&server, &[&bob.identity.client], b"kept").await;
    let identity = bob.identity.clone();
    drop(bob);
    let server = server.restart().await;
    let bob = server.reconnect(&identity).await;
    assert_eq!(fetch_all(&bob).await, [(1, b"kept".to_vec())]);
}

#[tokio::test]
async fn expired_messages_are_purged_and_the_client_is_told_how_many() {
    let server = TestServer::start().await;
    let bob = server.register("bob@localhost").await;
    for _ in 0..3 {
        deliver(&server, &[&bob.identity.client], b"old").await;
    }
    server.clock.advance(30 * SECONDS_PER_DAY + 1);
    deliver(&server, &[&bob.identity.client], b"new").await;
    within(server.server.services().purge_expired()).await;
    let fetched = within(bob.connection.fetch_messages(0, 10, u32::MAX))
        .await
        .unwrap();
    let kinds: Vec<_> = fetched.messages.iter().map(|m| (m.seq, m.kind)).collect();
    assert_eq!(
        kinds,
        [(4, MessageKind::Mls), (5, MessageKind::ServerNotice)]
    );
    match ServerNotice::tls_deserialize_exact(fetched.messages[1].payload.as_slice()).unwrap() {
        ServerNotice::MessagesExpired(expired) => {
            assert_eq!(
                (expired.count, expired.first_seq, expired.last_seq),
                (3, 1, 3)
            );
        }
        other => panic!("expected MessagesExpired, got {other:?}"),
    }
}

#[tokio::test]
async fn an_offline_clients_low_key_package_notice_waits_in_its_queue() {
    let server = TestServer::start().await;
    let alice = server.register("alice@localhost").await;
    let bob = server.register("bob@localhost").await;
    bob.publish(10, false).await;
    let bob_identity = bob.identity.clone();
    within(bob.connection.close()).await;
    // Wait until the server has let go of bob's connection, so the notice cannot be pushed.
    while server.server.sessions().connections(&bob_identity.client) > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    within(
        alice
            .connection
            .claim_key_packages("bob@localhost", crate::support::CIPHERSUITE),
    )
    .await
    .unwrap();
    let bob = server.reconnect(&bob_identity).await;
    let fetched = within(bob.connection.fetch_messages(0, 10, u32::MAX))
        .await
        .unwrap();
    assert_eq!(fetched.messages.len(), 1);
    assert_eq!(fetched.messages[0].kind, MessageKind::ServerNotice);
    match ServerNotice::tls_deserialize_exact(fetched.messages[0].payload.as_slice()).unwrap() {
        ServerNotice::KeyPackagesLow(low) => assert_eq!(low.remaining, 9),
        other => panic!("expected KeyPackagesLow, got {other:?}"),
    }
}

#[tokio::test]
async fn deleting_the_user_deletes_its_queues() {
    let server = TestServer::start().await;
    let bob = server.register("bob@localhost").await;
    deliver(
        &server,
        &[&bob.identity.client],
        b"a very recognisable payload",
    )
    .await;
    let store = server.server.store();
    assert!(!store
        .tables_containing(b"a very recognisable payload")
        .await
        .unwrap()
        .is_empty());
    within(bob.connection.delete_user()).await.unwrap();
    assert!(store
        .tables_containing(b"a very recognisable payload")
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .tables_containing(b"bob@localhost")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_fetch_of_zero_messages_counts_as_one() {
    let server = TestServer::start().await;
    let bob = server.register("bob@localhost").await;
    deliver(&server, &[&bob.identity.client], b"first").await;
    deliver(&server, &[&bob.identity.client], b"second").await;
    let fetched = within(bob.connection.fetch_messages(0, 0, u32::MAX))
        .await
        .unwrap();
    assert_eq!(fetched.messages.len(), 1, "max_count 0 is read as 1");
    assert_eq!(fetched.messages[0].payload.as_slice(), b"first");
}
