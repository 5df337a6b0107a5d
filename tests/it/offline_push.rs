//! Offline push: devices without a connection are woken through Web Push (a real HTTP receiver
//! decrypting RFC 8291 and checking the VAPID token) or an operator's push gateway.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use roost::client::push_receiver::{ReceivedWake, WebPushReceiver};
use roost::client::state::DeviceIdentity;
use roost::client::ClientConfig;
use roost::config::ServerConfig;
use roost::protocol::{
    ClientId, ErrorCode, GatewayPusher, MessageKind, PushTarget, Text, WebPushSubscription,
};
use roost::services::Delivery;

use crate::cli::ServerProcess;
use crate::support::{code, new_key, within, Device, TestServer, CIPHERSUITE};

fn loopback_push(config: &mut ServerConfig) {
    config.push.allow_loopback = true;
}

/// A receiver for `device`'s subscription, registered as its push target.
async fn subscribe(device: &Device) -> WebPushReceiver {
    let info = within(device.connection.push_info()).await.unwrap();
    assert_eq!(info.vapid_public_key.as_slice().len(), 65);
    let receiver = WebPushReceiver::bind(
        "127.0.0.1:0".parse().unwrap(),
        info.vapid_public_key.as_slice(),
    )
    .await
    .unwrap();
    within(
        device
            .connection
            .add_push_target(PushTarget::WebPush(receiver.subscription())),
    )
    .await
    .unwrap();
    receiver
}

/// Waits until `condition` holds: for counters the server moves after the event a test saw.
async fn until(condition: impl Fn() -> bool) {
    within(async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// Closes the device's connection and waits until the server no longer counts it connected.
async fn go_offline(server: &TestServer, device: Device) -> DeviceIdentity {
    let Device {
        connection,
        identity,
        ..
    } = device;
    connection.close().await;
    within(async {
        while server.server.sessions().connections(&identity.client) > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    identity
}

/// Queues `payload` for `client` through the queue service; returns its sequence number.
async fn deliver(server: &TestServer, client: &ClientId, payload: &[u8]) -> u64 {
    let delivery = Delivery {
        recipients: vec![client.clone()],
        kind: MessageKind::Mls,
        payload: payload.to_vec(),
    };
    let report = within(server.server.services().queues().deliver(vec![delivery]))
        .await
        .unwrap();
    match report[0][0].1 {
        roost::store::Enqueued::Queued { seq } => seq,
        other => panic!("not queued: {other:?}"),
    }
}

/// The next push message the receiver took (answered 2xx).
async fn next_wake(receiver: &mut WebPushReceiver) -> ReceivedWake {
    loop {
        let wake = within(receiver.next()).await.unwrap();
        if wake.accepted() {
            return wake;
        }
    }
}

/// Checks the VAPID token of `wake` with ring (not the code that signed it) against the key the
/// server publishes, and that the payload is the content-free wake-up.
fn assert_genuine_and_content_free(wake: &ReceivedWake, vapid_key: &[u8], seq: Option<u64>) {
    let claims = wake.vapid.as_ref().expect("the VAPID token checks out");
    assert!(claims.subject.starts_with("mailto:"));
    let token = wake
        .authorization
        .strip_prefix("vapid t=")
        .and_then(|rest| rest.split(',').next())
        .unwrap();
    let (signed, signature) = token.rsplit_once('.').unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, vapid_key)
        .verify(signed.as_bytes(), &BASE64URL.decode(signature).unwrap())
        .expect("ES256 signature by the published VAPID key");

    let payload: serde_json::Value =
        serde_json::from_slice(wake.payload.as_ref().expect("decrypts")).unwrap();
    let fields: Vec<&String> = payload.as_object().unwrap().keys().collect();
    match seq {
        Some(seq) => {
            assert_eq!(fields, ["seq"], "nothing but the queue position");
            assert_eq!(wake.seq(), Some(seq));
        }
        None => assert!(fields.is_empty(), "{payload}"),
    }
    assert!(wake.ttl.is_some_and(|ttl| ttl > 0));
    assert_eq!(wake.urgency.as_deref(), Some("high"));
    assert!(
        wake.topic.is_some(),
        "a topic lets the push service coalesce"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_is_woken_once_per_interval_with_nothing_but_its_queue_position() {
    let server = TestServer::start_with(|config| {
        loopback_push(config);
        config.push.wake_interval = Duration::from_secs(2);
    })
    .await;
    let bob = server.register("bob@localhost").await;
    let vapid_key = within(bob.connection.push_info())
        .await
        .unwrap()
        .vapid_public_key
        .as_slice()
        .to_vec();
    let mut receiver = subscribe(&bob).await;
    let targets = within(bob.connection.list_push_targets()).await.unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(
        targets[0].target,
        PushTarget::WebPush(receiver.subscription())
    );
    let bob = go_offline(&server, bob).await.client;

    let first_seq = deliver(&server, &bob, b"secret one").await;
    let first = next_wake(&mut receiver).await;
    assert_genuine_and_content_free(&first, &vapid_key, Some(first_seq));

    // A burst within the interval: announced once, at its end, with the newest position.
    let mut last_seq = 0;
    for i in 0..5u8 {
        last_seq = deliver(&server, &bob, &[i; 100]).await;
    }
    let second = next_wake(&mut receiver).await;
    assert_genuine_and_content_free(&second, &vapid_key, Some(last_seq));
    assert!(
        second.received_at_ms >= first.received_at_ms + 1_900,
        "coalesced for the interval: {} ms apart",
        second.received_at_ms - first.received_at_ms
    );
    assert!(receiver.try_next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_device_is_not_woken_and_catching_up_ends_the_interval() {
    let server = TestServer::start_with(loopback_push).await;
    let connected = server.register("bob@localhost").await;
    let mut connected_receiver = subscribe(&connected).await;
    let away = server.add_device(&connected).await;
    let mut away_receiver = subscribe(&away).await;
    let away = go_offline(&server, away).await;

    let to_both = Delivery {
        recipients: vec![connected.identity.client.clone(), away.client.clone()],
        kind: MessageKind::Mls,
        payload: b"hello".to_vec(),
    };
    within(server.server.services().queues().deliver(vec![to_both]))
        .await
        .unwrap();
    assert_eq!(next_wake(&mut away_receiver).await.seq(), Some(1));
    // Both were decided in the same round: the connected device was told on its push stream.
    let stats = server.server.services().push_stats();
    until(|| stats.delivered.load(Relaxed) == 1).await;
    assert!(connected_receiver.try_next().is_none());
    assert_eq!(stats.delivered.load(Relaxed), 1);

    // The woken device catches up (acknowledges) and leaves again: the next message wakes it at
    // once, although the 30-second interval has not passed.
    let back = server.reconnect(&away).await;
    within(back.connection.ack_messages(1)).await.unwrap();
    let away = go_offline(&server, back).await;
    let seq = deliver(&server, &away.client, b"again").await;
    let wake = within(async {
        loop {
            let wake = next_wake(&mut away_receiver).await;
            if wake.seq() == Some(seq) {
                return wake;
            }
        }
    })
    .await;
    assert!(wake.accepted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_the_push_service_reports_gone_is_forgotten() {
    let server = TestServer::start_with(loopback_push).await;
    let bob = server.register("bob@localhost").await;
    let mut receiver = subscribe(&bob).await;
    receiver.answer_with(410);
    let identity = go_offline(&server, bob).await;
    deliver(&server, &identity.client, b"hello").await;
    assert_eq!(within(receiver.next()).await.unwrap().answered_with, 410);
    let stats = server.server.services().push_stats();
    until(|| stats.targets_gone.load(Relaxed) > 0).await;
    let bob = server.reconnect(&identity).await;
    // The outbox write that forgets it may land just after the counter moved.
    within(async {
        while !bob.connection.list_push_targets().await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_up_that_failed_is_retried_and_survives_a_restart() {
    let server = TestServer::start_with(loopback_push).await;
    let bob = server.register("bob@localhost").await;
    let mut receiver = subscribe(&bob).await;
    receiver.answer_with(503);
    let identity = go_offline(&server, bob).await;
    let seq = deliver(&server, &identity.client, b"hello").await;
    assert_eq!(within(receiver.next()).await.unwrap().answered_with, 503);

    let server = server.restart_with(loopback_push).await;
    receiver.answer_with(201);
    let wake = next_wake(&mut receiver).await;
    assert_eq!(wake.seq(), Some(seq));
    let stats = server.server.services().push_stats();
    until(|| stats.delivered.load(Relaxed) == 1).await;
}

/// The release path: the `roost` binary killed with SIGKILL after a message was queued and
/// before its wake-up got through wakes the device once restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_before_the_wake_up_got_through_wakes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let flags = ["--push-allow-loopback"];
    let server = ServerProcess::start(&data_dir, &flags);
    let config =
        ClientConfig::new(server.addr, "localhost", &data_dir.join("server-cert.pem")).unwrap();
    let connect = || async {
        within(roost::client::Connection::connect(&config))
            .await
            .unwrap()
    };

    // Bob: one KeyPackage and a last-resort one, so a claim leaves him below the low watermark
    // and the server queues him a KeyPackagesLow notice.
    let bob_connection = connect().await;
    let bob_key = new_key();
    let registered =
        within(bob_connection.register_user("bob@localhost", &bob_key, CIPHERSUITE, None))
            .await
            .unwrap();
    let bob = DeviceIdentity::new(registered, bob_key, CIPHERSUITE);
    within(bob_connection.authenticate_without_push(&bob.client, &bob.signing_key))
        .await
        .unwrap();
    let mls = roost::client::mls::DeviceMls::new(&bob).unwrap();
    within(bob_connection.publish_key_packages(mls.key_packages(1, true).unwrap()))
        .await
        .unwrap();
    let info = within(bob_connection.push_info()).await.unwrap();
    let mut receiver = WebPushReceiver::bind(
        "127.0.0.1:0".parse().unwrap(),
        info.vapid_public_key.as_slice(),
    )
    .await
    .unwrap();
    receiver.answer_with(503);
    within(bob_connection.add_push_target(PushTarget::WebPush(receiver.subscription())))
        .await
        .unwrap();
    bob_connection.close().await;

    let (alice, _, _) = crate::support::register_device(&config, "alice@localhost").await;
    within(alice.claim_key_packages("bob@localhost", CIPHERSUITE))
        .await
        .unwrap();
    // The server tried, the push service failed: the wake-up waits in the outbox.
    assert_eq!(within(receiver.next()).await.unwrap().answered_with, 503);
    server.kill_9();

    receiver.answer_with(201);
    let _server = ServerProcess::start(&data_dir, &flags);
    let wake = next_wake(&mut receiver).await;
    assert_eq!(wake.seq(), Some(1), "the KeyPackagesLow notice");
    assert!(wake.vapid.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_log_readers_are_woken_too() {
    let server = TestServer::start_with(loopback_push).await;
    let alice = server.register("alice@localhost").await;
    let bob = server.register("bob@localhost").await;
    within(bob.connection.use_group_logs()).await.unwrap();
    bob.publish(2, true).await;
    let admin = crate::groups::groups(&server, &alice).await;
    let group_id = within(admin.create_group()).await.unwrap();
    within(admin.invite_many(&group_id, &["bob@localhost"]))
        .await
        .unwrap();
    crate::groups::receive(&server, &bob).await;
    let mut receiver = subscribe(&bob).await;
    go_offline(&server, bob).await;

    within(admin.send(&group_id, b"secret words"))
        .await
        .unwrap();
    let wake = next_wake(&mut receiver).await;
    // A log entry has no queue position to tell.
    let payload = wake.payload.as_ref().unwrap();
    assert_eq!(payload.as_slice(), b"{}");
}

fn web_push(endpoint: &str, p256dh: Vec<u8>, auth: Vec<u8>) -> PushTarget {
    PushTarget::WebPush(WebPushSubscription {
        endpoint: Text::new(endpoint).unwrap(),
        p256dh: p256dh.into(),
        auth: auth.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_targets_at_internal_addresses_or_with_bad_keys_are_refused() {
    let server = TestServer::start().await;
    let bob = server.register("bob@localhost").await;
    let keys = roost::web_push::SubscriptionKeys::generate();
    let good_key = keys.public.to_vec();
    let good_auth = keys.auth.to_vec();
    for endpoint in [
        "http://127.0.0.1:9/push",
        "https://localhost/push",
        "https://10.0.0.1/push",
        "https://192.168.0.1/push",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/push",
        "https://[fd00::1]/push",
        "https://[::ffff:127.0.0.1]/push",
        "http://push.example.net/push",
        "file:///etc/passwd",
        "https://user:password@push.example.net/push",
        "nonsense",
    ] {
        let target = web_push(endpoint, good_key.clone(), good_auth.clone());
        assert_eq!(
            code(within(bob.connection.add_push_target(target)).await),
            ErrorCode::PushTargetRefused,
            "{endpoint}"
        );
    }
    let endpoint = "https://push.example.net/push/1";
    for (p256dh, auth) in [
        (good_key[..64].to_vec(), good_auth.clone()),
        (vec![4; 65], good_auth.clone()),
        (good_key.clone(), good_auth[..15].to_vec()),
    ] {
        assert_eq!(
            code(
                within(
                    bob.connection
                        .add_push_target(web_push(endpoint, p256dh, auth))
                )
                .await
            ),
            ErrorCode::PushTargetRefused
        );
    }
    let gateway = PushTarget::Gateway(GatewayPusher {
        gateway_url: Text::new("http://127.0.0.1:9/_matrix/push/v1/notify").unwrap(),
        app_id: Text::new("app").unwrap(),
        pushkey: Text::new("token").unwrap(),
    });
    assert_eq!(
        code(within(bob.connection.add_push_target(gateway)).await),
        ErrorCode::PushTargetRefused,
        "only the operator's gateways"
    );

    // A few targets per client, the same endpoint replacing itself.
    let mut ids = Vec::new();
    for i in 0..roost::protocol::MAX_PUSH_TARGETS_PER_CLIENT {
        let target = web_push(
            &format!("https://push.example.net/push/{i}"),
            good_key.clone(),
            good_auth.clone(),
        );
        ids.push(
            within(bob.connection.add_push_target(target))
                .await
                .unwrap()
                .target_id,
        );
    }
    let again = within(bob.connection.add_push_target(web_push(
        "https://push.example.net/push/0",
        good_key.clone(),
        good_auth.clone(),
    )))
    .await
    .unwrap();
    assert_eq!((again.target_id, again.replaced.0), (ids[0], true));
    assert_eq!(
        code(
            within(bob.connection.add_push_target(web_push(
                "https://push.example.net/push/extra",
                good_key.clone(),
                good_auth.clone()
            )))
            .await
        ),
        ErrorCode::TooManyPushTargets
    );
    within(bob.connection.remove_push_target(ids[1]))
        .await
        .unwrap();
    assert_eq!(
        code(within(bob.connection.remove_push_target(ids[1])).await),
        ErrorCode::UnknownPushTarget
    );
    assert_eq!(
        within(bob.connection.list_push_targets())
            .await
            .unwrap()
            .len(),
        roost::protocol::MAX_PUSH_TARGETS_PER_CLIENT - 1
    );
    // Another client's targets are not this one's to remove.
    let carol = server.register("carol@localhost").await;
    assert_eq!(
        code(within(carol.connection.remove_push_target(ids[0])).await),
        ErrorCode::UnknownPushTarget
    );

    // Deleting the account deletes its targets.
    within(bob.connection.delete_user()).await.unwrap();
    assert!(
        within(server.server.store().tables_containing(b"push.example.net"))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_offline_push_takes_no_targets() {
    let server = TestServer::start_with(|config| config.push.web_push = false).await;
    let bob = server.register("bob@localhost").await;
    let info = within(bob.connection.push_info()).await.unwrap();
    assert!(info.vapid_public_key.as_slice().is_empty());
    assert!(info.gateways.is_empty());
    let keys = roost::web_push::SubscriptionKeys::generate();
    let target = web_push(
        "https://push.example.net/push",
        keys.public.to_vec(),
        keys.auth.to_vec(),
    );
    assert_eq!(
        code(within(bob.connection.add_push_target(target)).await),
        ErrorCode::PushTargetRefused
    );
    assert!(!server
        .dir
        .path()
        .join("data")
        .join(roost::services::VAPID_KEY_FILE)
        .exists());
}

/// What a push gateway received: the JSON documents.
type Received = Arc<Mutex<Vec<serde_json::Value>>>;

/// A push gateway on loopback that records what it gets and rejects the pushkeys in `rejected`.
async fn gateway(rejected: Vec<String>) -> (String, Received, tokio::sync::mpsc::Receiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/_matrix/push/v1/notify",
        listener.local_addr().unwrap()
    );
    let received: Received = Arc::default();
    let (arrived, arrivals) = tokio::sync::mpsc::channel(64);
    let documents = received.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (documents, arrived, rejected) =
                (documents.clone(), arrived.clone(), rejected.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (documents, arrived, rejected) =
                            (documents.clone(), arrived.clone(), rejected.clone());
                        async move {
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            documents
                                .lock()
                                .unwrap()
                                .push(serde_json::from_slice(&body).unwrap());
                            let _ = arrived.send(()).await;
                            let answer = serde_json::json!({ "rejected": rejected }).to_string();
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                                answer,
                            ))))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, received, arrivals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_gateway_is_told_which_device_to_wake_and_nothing_else() {
    let (url, received, mut arrivals) = gateway(vec!["gone-token".into()]).await;
    let server = TestServer::start_with(|config| config.push.gateways = vec![url.clone()]).await;
    let bob = server.register("bob@localhost").await;
    let info = within(bob.connection.push_info()).await.unwrap();
    assert_eq!(info.gateways, vec![Text::new(url.clone()).unwrap()]);
    let pusher = |pushkey: &str| {
        PushTarget::Gateway(GatewayPusher {
            gateway_url: Text::new(url.clone()).unwrap(),
            app_id: Text::new("org.example.roost").unwrap(),
            pushkey: Text::new(pushkey).unwrap(),
        })
    };
    within(bob.connection.add_push_target(pusher("device-token")))
        .await
        .unwrap();
    within(bob.connection.add_push_target(pusher("gone-token")))
        .await
        .unwrap();
    let bob = go_offline(&server, bob).await;
    deliver(&server, &bob.client, b"secret").await;
    within(arrivals.recv()).await.unwrap();
    within(arrivals.recv()).await.unwrap();

    let documents = received.lock().unwrap().clone();
    let mut pushkeys: Vec<&str> = Vec::new();
    for document in &documents {
        let notification = document["notification"].as_object().unwrap();
        let mut fields: Vec<&String> = notification.keys().collect();
        fields.sort();
        assert_eq!(
            fields,
            ["devices", "prio"],
            "no sender, room or content: {document}"
        );
        let device = &notification["devices"][0];
        assert_eq!(device["app_id"], "org.example.roost");
        pushkeys.push(device["pushkey"].as_str().unwrap());
    }
    pushkeys.sort();
    assert_eq!(pushkeys, ["device-token", "gone-token"]);

    // The gateway rejected one pushkey: that target is forgotten, the other stays.
    let stats = server.server.services().push_stats();
    until(|| stats.targets_gone.load(Relaxed) > 0).await;
    let bob = server.reconnect(&bob).await;
    within(async {
        while bob.connection.list_push_targets().await.unwrap().len() != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_target_added_through_one_node_is_woken_for_messages_queued_by_another() {
    let first = TestServer::start_shared(loopback_push).await;
    let second = first.start_node(loopback_push).await;
    // Bob's target is added through the second node, after the first started (and read which
    // clients have targets): the first learns of it from the second's event.
    let bob = second.register("bob@localhost").await;
    let mut receiver = subscribe(&bob).await;
    let bob = go_offline(&second, bob).await.client;
    let wake = within(async {
        loop {
            let seq = deliver(&first, &bob, b"from the first node").await;
            match tokio::time::timeout(Duration::from_millis(250), receiver.next()).await {
                Ok(Some(wake)) if wake.accepted() => return (wake, seq),
                Ok(None) => panic!("the receiver stopped"),
                _ => continue,
            }
        }
    })
    .await;
    assert!(wake.0.seq().is_some_and(|seq| seq <= wake.1));
}
