//! `push`: offline push. How fast a server wakes offline devices through Web Push (beside raw
//! HTTP POSTs to the same receiver), and what waking costs the send path (fan-outs to offline
//! devices with push targets beside the same fan-outs to devices without).

use std::sync::Arc;
use std::time::{Duration, Instant};

use roost::client::push_receiver::WebPushReceiver;
use roost::client::ClientConfig;
use roost::config::ServerConfig;
use roost::protocol::{ClientId, MessageKind, PushTarget};
use roost::server::Server;
use roost::services::Delivery;

use crate::harness;
use crate::report::{Better, Figure};
use crate::scenarios::Run;

const S: &str = "push";
/// Requests the raw HTTP ceiling keeps in flight: as many as the server's push worker.
const RAW_IN_FLIGHT: usize = 64;

/// A local server whose Web Push may target loopback.
async fn push_server(dir: &tempfile::TempDir) -> anyhow::Result<(Server, ClientConfig)> {
    let mut config = ServerConfig::new(
        "localhost".parse().map_err(anyhow::Error::msg)?,
        "127.0.0.1:0".parse()?,
        dir.path().join("data"),
    );
    config.push.allow_loopback = true;
    let server = Server::start(harness::unthrottled(config)).await?;
    let client = ClientConfig::new(server.local_addr(), "localhost", server.certificate_path())?;
    Ok((server, client))
}

/// Registers `count` pairs of devices, one of each pair with `receiver`'s subscription as its
/// push target, the other without (registered in turn, so that neither set is the older in the
/// store). All go offline. Returns (with targets, without).
async fn offline_devices(
    server: &Server,
    config: &ClientConfig,
    count: usize,
    receiver: &WebPushReceiver,
) -> anyhow::Result<(Vec<ClientId>, Vec<ClientId>)> {
    let (mut with_targets, mut without) = (Vec::new(), Vec::new());
    for i in 0..count {
        for targeted in [true, false] {
            let prefix = if targeted { "w" } else { "u" };
            let device =
                harness::device(config, &format!("{prefix}{i}@localhost"), false, 0).await?;
            if targeted {
                device
                    .connection
                    .add_push_target(PushTarget::WebPush(receiver.subscription()))
                    .await?;
            }
            let client = device.connection.who_am_i().await?;
            device.connection.close().await;
            if targeted {
                with_targets.push(client);
            } else {
                without.push(client);
            }
        }
    }
    for client in with_targets.iter().chain(&without) {
        while server.sessions().connections(client) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok((with_targets, without))
}

/// Seconds, and CPU seconds of the whole process, to fan `messages` messages out, one commit
/// each, to `recipients`.
async fn fan_out(
    server: &Server,
    recipients: &[ClientId],
    messages: usize,
) -> anyhow::Result<(f64, f64)> {
    let start = Instant::now();
    let cpu = harness::cpu_seconds().unwrap_or(0.0);
    for i in 0..messages {
        let delivery = Delivery {
            recipients: recipients.to_vec(),
            kind: MessageKind::Mls,
            payload: format!("message {i}").into_bytes(),
        };
        server.services().queues().deliver(vec![delivery]).await?;
    }
    let cpu = harness::cpu_seconds().unwrap_or(0.0) - cpu;
    Ok((start.elapsed().as_secs_f64(), cpu))
}

pub async fn push(run: &mut Run<'_>) -> anyhow::Result<()> {
    let Run { report, scale, .. } = run;
    let devices = scale.pick(100, 1_000);
    let dir = tempfile::tempdir()?;
    let (server, config) = push_server(&dir).await?;
    let vapid = {
        let connection = roost::client::Connection::connect(&config).await?;
        let info = connection.push_info().await?;
        connection.close().await;
        info.vapid_public_key.as_slice().to_vec()
    };
    let mut receiver = WebPushReceiver::bind("127.0.0.1:0".parse()?, &vapid).await?;
    let (woken, unwoken) = offline_devices(&server, &config, devices, &receiver).await?;

    // Wake-ups per second: one message queued for every device at once.
    let start = Instant::now();
    fan_out(&server, &woken, 1).await?;
    let mut arrived = 0;
    while arrived < devices {
        let wake = tokio::time::timeout(Duration::from_secs(60), receiver.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the receiver stopped"))?;
        anyhow::ensure!(wake.accepted(), "a wake-up was refused: {wake:?}");
        arrived += 1;
    }
    let rate = devices as f64 / start.elapsed().as_secs_f64();
    // The devices without targets get the same message: both sets' queues look alike.
    fan_out(&server, &unwoken, 1).await?;
    let ceiling = raw_posts(devices).await?;
    report.record(
        Figure::new(
            S,
            format!("wake-ups of {devices} offline devices, queued at once"),
            rate,
            "wake-ups/s",
            Better::Higher,
        )
        .against(
            format!("raw HTTP POSTs to the same receiver, {RAW_IN_FLIGHT} in flight"),
            ceiling,
        ),
    );

    // The send path: fan-outs to offline devices with push targets (each woken once, then
    // coalesced) beside the same fan-outs to offline devices without. Alternated, so that the
    // disk's moods fall on both alike.
    let recipients = scale.pick(20, 100);
    let messages = scale.pick(20, 100);
    const ROUNDS: usize = 6;
    let (mut with_push, mut without) = ((0.0, 0.0), (0.0, 0.0));
    let add = |sum: &mut (f64, f64), (wall, cpu): (f64, f64)| {
        sum.0 += wall;
        sum.1 += cpu;
    };
    for round in 0..ROUNDS {
        let pushed = &woken[round * recipients % devices..][..recipients.min(devices)];
        let plain = &unwoken[round * recipients % devices..][..recipients.min(devices)];
        // Each goes first every other round: neither gets the fresher file or the warmer cache.
        if round % 2 == 0 {
            add(&mut with_push, fan_out(&server, pushed, messages).await?);
            add(&mut without, fan_out(&server, plain, messages).await?);
        } else {
            add(&mut without, fan_out(&server, plain, messages).await?);
            add(&mut with_push, fan_out(&server, pushed, messages).await?);
        }
    }
    let per_message = |seconds: f64| seconds * 1000.0 / (ROUNDS * messages) as f64;
    report.record(
        Figure::ms(
            S,
            format!("fan-out to {recipients} offline devices with push targets, per message"),
            per_message(with_push.0),
        )
        .against(
            "the same to devices without push targets",
            per_message(without.0),
        ),
    );
    report.record(
        Figure::ms(
            S,
            "CPU time per message, the same fan-outs",
            per_message(with_push.1),
        )
        .against(
            "the same to devices without push targets",
            per_message(without.1),
        ),
    );
    server.shutdown().await?;
    Ok(())
}

/// Raw HTTP: `count` Web Push POSTs (encrypted, VAPID-signed in advance) to `receiver` with
/// reqwest, [`RAW_IN_FLIGHT`] at a time; returns requests per second.
async fn raw_posts(count: usize) -> anyhow::Result<f64> {
    let vapid = roost::web_push::VapidKey::generate();
    let mut receiver = WebPushReceiver::bind("127.0.0.1:0".parse()?, vapid.public_key()).await?;
    let subscription = receiver.subscription();
    let origin = format!("http://{}", receiver.local_addr());
    let exp = roost::clock::Clock::now(&roost::clock::SystemClock) + 3600;
    let authorization = vapid.authorization(&origin, exp, "mailto:bench@localhost");
    let body = roost::web_push::encrypt(
        subscription.p256dh.as_slice(),
        subscription.auth.as_slice(),
        b"{\"seq\":1}",
    )?;
    let client = reqwest::Client::new();
    let endpoint: Arc<str> = Arc::from(receiver.endpoint());
    let semaphore = Arc::new(tokio::sync::Semaphore::new(RAW_IN_FLIGHT));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let permit = semaphore.clone().acquire_owned().await?;
        let (client, endpoint, body, authorization) = (
            client.clone(),
            endpoint.clone(),
            body.clone(),
            authorization.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            client
                .post(&*endpoint)
                .header("TTL", "60")
                .header("Content-Encoding", "aes128gcm")
                .header("Authorization", authorization)
                .body(body)
                .send()
                .await
                .map(|answer| answer.status())
        });
    }
    let mut taken = 0;
    while taken < count {
        tokio::select! {
            Some(done) = tasks.join_next() => {
                let status = done??;
                anyhow::ensure!(status.is_success(), "the receiver answered {status}");
            }
            Some(wake) = receiver.next() => {
                anyhow::ensure!(wake.accepted(), "the receiver refused: {wake:?}");
                taken += 1;
            }
        }
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}
