//! The named scenarios. Each measures the server through the real client library (or the store
//! directly, for `enqueue` and `fanout`) and records its figures beside a ceiling from the same run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use roost::client::groups::{GroupClient, GroupEvent};
use roost::client::{ClientConfig, Connection};
use roost::protocol::Notification;
use roost::store::{Admission, Envelope, NewUser, QueueLimits, Store};
use tokio::sync::Mutex;

use crate::harness::{self, BenchServer, FederatedPair, RawQuicServer};
use crate::report::{percentile_ms, Better, Figure, Report, Series};

/// How much work each scenario does: `--quick` (a smoke test, under a minute in all) or full.
#[derive(Clone, Debug)]
pub struct Scale {
    pub quick: bool,
    /// Group sizes for `group-size`; empty for the defaults.
    pub group_sizes: Vec<usize>,
}

impl Scale {
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// What every scenario of one run shares: the report it adds its figures to, the ceilings
/// measured so far, how much work to do, and the server to measure if it is not started here.
pub struct Run<'a> {
    pub report: Report,
    pub ceilings: Ceilings,
    pub scale: &'a Scale,
    pub remote: Option<&'a ClientConfig>,
}

/// Ceilings measured once per run and shared by the scenarios that compare against them.
#[derive(Default)]
pub struct Ceilings {
    /// Raw redb: batch size -> (values per second, bytes written per value).
    redb: BTreeMap<usize, (f64, Option<f64>)>,
    /// Raw quinn: requests in flight -> (requests per second, sorted latencies).
    quinn: BTreeMap<usize, (f64, Vec<Duration>)>,
}

impl Ceilings {
    fn redb(&mut self, batch: usize, scale: &Scale) -> anyhow::Result<(f64, Option<f64>)> {
        if let Some(known) = self.redb.get(&batch) {
            return Ok(*known);
        }
        // Enough values for a few hundred commits, at least.
        let values = (batch * scale.pick(50, 300)).clamp(scale.pick(200, 1_000), 50_000);
        let measured = harness::redb_ceiling(batch, values)?;
        self.redb.insert(batch, measured);
        Ok(measured)
    }

    async fn quinn(
        &mut self,
        in_flight: usize,
        scale: &Scale,
    ) -> anyhow::Result<(f64, Vec<Duration>)> {
        if let Some(known) = self.quinn.get(&in_flight) {
            return Ok(known.clone());
        }
        let server = RawQuicServer::start()?;
        let connection = Arc::new(Connection::connect(&server.client_config()?).await?);
        let requests = (in_flight * scale.pick(200, 1_000)).min(scale.pick(5_000, 20_000));
        let measured = harness::request_rate(requests, in_flight, move || {
            let connection = connection.clone();
            async move {
                // The same steps as the client library's request, without Roost's codec.
                let (mut send, mut recv) = connection.quic().open_bi().await?;
                send.write_all(&[0u8; 16]).await?;
                send.finish()?;
                recv.read_to_end(64 * 1024).await?;
                Ok(())
            }
        })
        .await?;
        server.stop();
        self.quinn.insert(in_flight, measured.clone());
        Ok(measured)
    }
}

/// `baseline`: this machine's ceilings, and Roost's simplest request beside raw quinn.
pub async fn baseline(run: &mut Run<'_>) -> anyhow::Result<()> {
    const S: &str = "baseline";
    for batch in [1, 100] {
        let (rate, bytes) = run.ceilings.redb(batch, run.scale)?;
        run.report.record(Figure::new(
            S,
            format!("raw redb, 1 KiB values, {batch} per commit"),
            rate,
            "values/s",
            Better::Higher,
        ));
        if let Some(bytes) = bytes {
            run.report.record(Figure::new(
                S,
                format!("raw redb, bytes written per value, {batch} per commit"),
                bytes,
                "B",
                Better::Lower,
            ));
        }
    }
    const IN_FLIGHT: usize = 64;
    let (raw_rate, raw_latencies) = run.ceilings.quinn(IN_FLIGHT, run.scale).await?;
    run.report.record(Figure::new(
        S,
        format!("raw quinn, one stream per request, {IN_FLIGHT} in flight"),
        raw_rate,
        "requests/s",
        Better::Higher,
    ));
    let (_, single) = run.ceilings.quinn(1, run.scale).await?;
    run.report.record(Figure::ms(
        S,
        "raw quinn, request round trip p50, 1 in flight",
        percentile_ms(&single, 50),
    ));

    let server = BenchServer::start(None).await?;
    let connection = Arc::new(Connection::connect(&server.client_config).await?);
    let requests = run.scale.pick(5_000, 20_000);
    let (rate, latencies) = harness::request_rate(requests, IN_FLIGHT, move || {
        let connection = connection.clone();
        async move { Ok(connection.server_info().await.map(|_| ())?) }
    })
    .await?;
    run.report.record(
        Figure::new(
            S,
            format!("GetServerInfo over one connection, {IN_FLIGHT} in flight"),
            rate,
            "requests/s",
            Better::Higher,
        )
        .against("raw quinn", raw_rate),
    );
    run.report.record(
        Figure::ms(
            S,
            format!("GetServerInfo p50, {IN_FLIGHT} in flight"),
            percentile_ms(&latencies, 50),
        )
        .against("raw quinn", percentile_ms(&raw_latencies, 50)),
    );
    server.stop().await;
    Ok(())
}

/// Per-client limits that never refuse: the store scenarios measure writing, not admission.
const UNLIMITED: QueueLimits = QueueLimits::per_client(u64::MAX, u64::MAX);

/// A store in a temporary directory with `count` users (one client each), and their ids.
async fn store_with_users(count: usize) -> anyhow::Result<(tempfile::TempDir, Store, Vec<String>)> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let mut users = Vec::with_capacity(count);
    for i in 0..count {
        let user_id = format!("user{i}@localhost");
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&(i as u64).to_be_bytes());
        store
            .register_user(NewUser {
                user_id: user_id.clone(),
                signature_key: key,
                now: 0,
                quarantine_secs: 0,
                invite: None,
                issue_credential: {
                    let user_id = user_id.clone();
                    Box::new(move |device| {
                        roost::store::placeholder_credential(&user_id, device, key)
                    })
                },
            })
            .await?
            .map_err(|refused| anyhow::anyhow!("registering {user_id}: {refused:?}"))?;
        users.push(user_id);
    }
    Ok((dir, store, users))
}

fn envelope(user_id: &str, payload: &Arc<Vec<u8>>) -> Envelope {
    Envelope {
        client: roost::protocol::ClientId::of(user_id, 1),
        kind: roost::protocol::MessageKind::Mls,
        payload: payload.clone(),
        admission: Admission::Message,
    }
}

/// `enqueue`: many concurrent single-message enqueues through the group-commit writer, beside raw
/// redb committing the same values in batches of the size the writer reached.
pub async fn enqueue(run: &mut Run<'_>) -> anyhow::Result<()> {
    const S: &str = "enqueue";
    const WRITERS: usize = 200;
    let per_writer = run.scale.pick(20, 100);
    let (_dir, store, users) = store_with_users(200).await?;
    let payload = Arc::new(vec![0x5a; 1024]);
    let commits = store.stats().commits();
    let start = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            let envelope = envelope(&users[writer % users.len()], &payload);
            tokio::spawn(async move {
                for _ in 0..per_writer {
                    store
                        .enqueue(vec![envelope.clone()], 0, UNLIMITED)
                        .await?
                        .map_err(|full| anyhow::anyhow!("refused: {full:?}"))?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = start.elapsed();
    store.close().await;
    let messages = WRITERS * per_writer;
    let commits = store.stats().commits() - commits;
    let rate = messages as f64 / elapsed.as_secs_f64();
    let per_commit = messages as f64 / commits as f64;
    let (ceiling, _) = run
        .ceilings
        .redb(per_commit.round().max(1.0) as usize, run.scale)?;
    run.report.record(Figure::new(
        S,
        "messages per commit reached",
        per_commit,
        "messages",
        Better::Higher,
    ));
    run.report.record(
        Figure::new(
            S,
            format!("{WRITERS} concurrent writers, 1 KiB messages"),
            rate,
            "messages/s",
            Better::Higher,
        )
        .against("raw redb, same batch", ceiling),
    );
    Ok(())
}

/// `fanout`: one message to 1,000 queues in one commit, at three sizes.
pub async fn fanout(run: &mut Run<'_>) -> anyhow::Result<()> {
    const S: &str = "fanout";
    const QUEUES: usize = 1_000;
    let rounds = run.scale.pick(5, 20);
    let (_dir, store, users) = store_with_users(QUEUES).await?;
    let (ceiling_rate, ceiling_bytes) = run.ceilings.redb(QUEUES, run.scale)?;
    for size in [64, 1024, 16 * 1024] {
        let payload = Arc::new(vec![0xa5; size]);
        let mut timings = Vec::with_capacity(rounds);
        let written = harness::bytes_written();
        for _ in 0..rounds {
            let envelopes = users.iter().map(|user| envelope(user, &payload)).collect();
            let start = Instant::now();
            store
                .enqueue(envelopes, 0, UNLIMITED)
                .await?
                .map_err(|full| anyhow::anyhow!("refused: {full:?}"))?;
            timings.push(start.elapsed());
        }
        let written = harness::bytes_written()
            .zip(written)
            .map(|(after, before)| after - before);
        timings.sort();
        let per_recipient_us = percentile_ms(&timings, 50) * 1000.0 / QUEUES as f64;
        run.report.record(
            Figure::new(
                S,
                format!("{size}-byte message to {QUEUES} queues, per recipient (median)"),
                per_recipient_us,
                "µs",
                Better::Lower,
            )
            .against("raw redb 1 KiB, 1,000 per commit", 1e6 / ceiling_rate),
        );
        if let (Some(written), Some(ceiling)) = (written, ceiling_bytes) {
            let per_recipient = written as f64 / (rounds * QUEUES) as f64;
            run.report.record(
                Figure::new(
                    S,
                    format!("{size}-byte message, bytes written per recipient"),
                    per_recipient,
                    "B",
                    Better::Lower,
                )
                .against("raw redb 1 KiB, 1,000 per commit", ceiling),
            );
        }
    }
    store.close().await;
    Ok(())
}

/// A device that waits on its push stream and records, for each message, how long after its
/// sender started sending it arrived.
struct Receiver {
    latencies: Vec<Duration>,
}

/// `send`: pairs of devices in 1:1 groups, each sender sending one message after another while
/// its peer takes them from the push stream and acknowledges them.
pub async fn send(run: &mut Run<'_>) -> anyhow::Result<()> {
    const S: &str = "send";
    let pairs = run.scale.pick(4, 16);
    let messages = run.scale.pick(100, 500);
    let server = BenchServer::start(run.remote).await?;
    let config = server.client_config.clone();
    let load = send_load_on(pairs, messages, &config).await?;
    let written = server.local().and(load.written);
    let rate = load.rate(pairs, messages);
    let (total, latencies) = (pairs * messages, load.latencies);
    let (quinn_rate, _) = run.ceilings.quinn(pairs, run.scale).await?;
    let (_, quinn_single) = run.ceilings.quinn(1, run.scale).await?;
    run.report.record(
        Figure::new(
            S,
            format!("{pairs} senders in 1:1 groups, acknowledged messages"),
            rate,
            "messages/s",
            Better::Higher,
        )
        .against(format!("raw quinn, {pairs} in flight"), quinn_rate),
    );
    for p in [50, 99] {
        run.report.record(
            Figure::ms(
                S,
                format!("send -> push latency p{p}"),
                percentile_ms(&latencies, p),
            )
            .against("raw quinn round trip", percentile_ms(&quinn_single, p)),
        );
    }
    if let Some(written) = written {
        let (_, ceiling) = run.ceilings.redb(pairs, run.scale)?;
        let per_message = written as f64 / total as f64;
        match ceiling {
            Some(ceiling) => run.report.record(
                Figure::new(
                    S,
                    "bytes written per message, concurrent senders",
                    per_message,
                    "B",
                    Better::Lower,
                )
                .against(format!("raw redb 1 KiB, {pairs} per commit"), ceiling),
            ),
            None => run.report.record(Figure::new(
                S,
                "bytes written per message, concurrent senders",
                per_message,
                "B",
                Better::Lower,
            )),
        }
    }
    server.stop().await;
    Ok(())
}

/// What a send load measured.
pub struct SendLoad {
    /// From the first send to the last acknowledged one.
    pub elapsed: Duration,
    /// Send -> push hint at the receiver, sorted.
    pub latencies: Vec<Duration>,
    /// Send -> the server's acknowledgement at the sender (the message durable), sorted.
    pub acknowledgements: Vec<Duration>,
    /// Bytes this process wrote to disk while the messages were sent (its servers' stores).
    pub written: Option<u64>,
}

impl SendLoad {
    pub fn rate(&self, pairs: usize, messages: usize) -> f64 {
        (pairs * messages) as f64 / self.elapsed.as_secs_f64()
    }
}

/// [`send_load`] with every sender and receiver on the one server `config` reaches.
pub async fn send_load_on(
    pairs: usize,
    messages: usize,
    config: &ClientConfig,
) -> anyhow::Result<SendLoad> {
    let one = std::slice::from_ref(config);
    send_load(pairs, messages, one, one).await
}

/// `pairs` senders each send `messages` messages, back to back, in a 1:1 group with a receiver
/// that is told by push and acknowledges. Pair `i` connects its sender to `senders[i % len]`
/// and its receiver to `receivers[i % len]` (the nodes of one domain, or one server).
pub async fn send_load(
    pairs: usize,
    messages: usize,
    senders_at: &[ClientConfig],
    receivers_at: &[ClientConfig],
) -> anyhow::Result<SendLoad> {
    let run = format!("{:x}", rand::random::<u32>());
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for pair in 0..pairs {
        let config = &senders_at[pair % senders_at.len()];
        let receiver_config = &receivers_at[pair % receivers_at.len()];
        let sender = harness::device(
            config,
            &format!("s{pair}-{run}@{}", config.server_name),
            false,
            0,
        )
        .await?;
        let receiver_name = format!("r{pair}-{run}@{}", receiver_config.server_name);
        let mut receiver = harness::device(receiver_config, &receiver_name, true, 2).await?;
        let group_id = sender.one_to_one(&receiver_name).await?;
        // The Welcome is waiting: take it off the queue so only the measured messages remain.
        let waiting = receiver.connection.fetch_messages(0, 100, 1 << 20).await?;
        if let Some(last) = waiting.messages.last() {
            receiver.connection.ack_messages(last.seq).await?;
        }
        let push = receiver.push.take().context("no push stream")?;
        senders.push((sender, group_id));
        receivers.push((receiver.connection, push));
    }
    // Send start times per pair, in order: receivers match the n-th arrival to the n-th start.
    let starts: Vec<Arc<Mutex<Vec<Instant>>>> = (0..pairs).map(|_| Default::default()).collect();
    let receiving: Vec<_> = receivers
        .into_iter()
        .zip(starts.iter().cloned())
        .map(|((connection, mut push), starts)| {
            tokio::spawn(async move {
                let mut receiver = Receiver {
                    latencies: Vec::with_capacity(messages),
                };
                let mut first_seq = None;
                while receiver.latencies.len() < messages {
                    let Some(notification) = push.next().await else {
                        anyhow::bail!("the push stream ended");
                    };
                    let Notification::NewMessages(hint) = notification? else {
                        continue;
                    };
                    let arrived = Instant::now();
                    let first = *first_seq.get_or_insert(
                        hint.latest_seq
                            .saturating_sub(hint.messages.len().max(1) as u64 - 1),
                    );
                    let received = (hint.latest_seq + 1 - first) as usize;
                    let starts = starts.lock().await;
                    while receiver.latencies.len() < received.min(starts.len()) {
                        receiver
                            .latencies
                            .push(arrived - starts[receiver.latencies.len()]);
                    }
                    drop(starts);
                    connection.ack_messages(hint.latest_seq).await?;
                }
                anyhow::Ok(receiver)
            })
        })
        .collect();
    let written = harness::bytes_written();
    let start = Instant::now();
    let sending: Vec<_> = senders
        .into_iter()
        .zip(starts)
        .map(|((sender, group_id), starts)| {
            tokio::spawn(async move {
                let groups = sender.groups().await?;
                let mut acknowledgements = Vec::with_capacity(messages);
                for i in 0..messages {
                    let sent = Instant::now();
                    starts.lock().await.push(sent);
                    groups
                        .send(&group_id, format!("message {i}").as_bytes())
                        .await?;
                    acknowledgements.push(sent.elapsed());
                }
                anyhow::Ok(acknowledgements)
            })
        })
        .collect();
    let mut acknowledgements = Vec::with_capacity(pairs * messages);
    for task in sending {
        acknowledgements.extend(task.await??);
    }
    let elapsed = start.elapsed();
    acknowledgements.sort();
    let written = harness::bytes_written()
        .zip(written)
        .map(|(after, before)| after - before);
    let mut latencies = Vec::new();
    for task in receiving {
        let receiver = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .context("receivers did not get every message within 30 s")???;
        latencies.extend(receiver.latencies);
    }
    latencies.sort();
    Ok(SendLoad {
        elapsed,
        latencies,
        acknowledgements,
        written,
    })
}

/// Figures of one group size, kept to compare the larger sizes against the smallest.
#[derive(Clone, Copy)]
struct GroupFigures {
    send_p50: f64,
    add_ms: f64,
}

/// `group-size`: one member sends to groups of growing size; the others are offline devices.
pub async fn group_size(run: &mut Run<'_>) -> anyhow::Result<()> {
    const S: &str = "group-size";
    let sizes: Vec<usize> = if run.scale.group_sizes.is_empty() {
        run.scale.pick(vec![2, 100], vec![2, 100, 1_000, 10_000])
    } else {
        run.scale.group_sizes.clone()
    };
    // Members reading their queues (one copy each), then members reading group logs (one copy).
    for logs in [false, true] {
        let mut smallest: Option<GroupFigures> = None;
        for &size in &sizes {
            match group_of(run, size, logs, smallest).await {
                Ok(figures) => {
                    smallest.get_or_insert(figures);
                }
                Err(e) => run.report.failed(
                    S,
                    format!("{size} members{}", mode_name(logs)),
                    format!("{e:#}"),
                ),
            }
        }
    }
    Ok(())
}

/// How a figure names the members' way of reading.
fn mode_name(logs: bool) -> &'static str {
    if logs {
        " reading group logs"
    } else {
        ""
    }
}

async fn group_of(
    run: &mut Run<'_>,
    size: usize,
    logs: bool,
    smallest: Option<GroupFigures>,
) -> anyhow::Result<GroupFigures> {
    // Fewer messages to the largest groups read through queues: each writes a queue record per
    // member (tens of MB per message at 10,000).
    let messages = run.scale.pick(100, 300).min((300_000 / size).max(20));
    let at = GroupSize {
        size,
        mode: mode_name(logs),
    };
    let server = BenchServer::start(run.remote).await?;
    let config = server.client_config.clone();
    let tag = format!("{:x}", rand::random::<u32>());
    let domain = config.server_name.clone();
    let sender = harness::device(&config, &format!("sender-{tag}@{domain}"), false, 0).await?;
    // The members, and one more, online, to measure an add commit and its join at this size.
    let names: Vec<String> = (0..size - 1)
        .map(|i| format!("m{i}-{tag}@{domain}"))
        .collect();
    harness::offline_members(&config, &names, logs).await?;
    let joiner_name = format!("joiner-{tag}@{domain}");
    let joiner = harness::device(&config, &joiner_name, false, 1).await?;
    let groups = sender.groups().await?;
    let group_id = groups.create_group().await?;
    fill_group(&mut run.report, &at, &groups, &group_id, &names).await?;
    let sends = measure_sends(&server, &sender, &groups, &group_id, messages, logs).await?;
    let add_ms = measure_add_and_join(
        &mut run.report,
        &at,
        &groups,
        &group_id,
        &joiner,
        &joiner_name,
    )
    .await?;
    let this = GroupFigures {
        send_p50: percentile_ms(&sends.latencies, 50),
        add_ms,
    };
    report_group(&mut run.report, &at, &sends, this, smallest.unwrap_or(this));
    if let Some(written) = sends.written {
        let per_message = written as f64 / messages as f64;
        report_bytes_written(run, &at, per_message)?;
    }
    server.stop().await;
    Ok(this)
}

/// The group size a figure is for, and the members' way of reading.
struct GroupSize {
    size: usize,
    mode: &'static str,
}

impl GroupSize {
    /// A figure's name at this size.
    fn name(&self, what: &str) -> String {
        format!("{} members{}: {what}", self.size, self.mode)
    }
}

/// Adds `names` to the group, a hundred per commit, and reports how long it took.
async fn fill_group(
    report: &mut Report,
    at: &GroupSize,
    groups: &GroupClient<'_>,
    group_id: &[u8],
    names: &[String],
) -> anyhow::Result<()> {
    const ADDS_PER_COMMIT: usize = 100;
    let filling = Instant::now();
    let mut added = 1;
    for batch in names.chunks(ADDS_PER_COMMIT) {
        let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
        groups
            .invite_many(group_id, &batch)
            .await
            .with_context(|| format!("adding members beyond {added}"))?;
        added += batch.len();
    }
    report.record(Figure::new(
        GROUP_SIZE,
        at.name(&format!("filled ({ADDS_PER_COMMIT} adds per commit)")),
        filling.elapsed().as_secs_f64(),
        "s",
        Better::Lower,
    ));
    Ok(())
}

/// How long sends to one group took, sorted.
struct SendTimes {
    /// The server's part: messages encrypted beforehand.
    latencies: Vec<Duration>,
    /// End to end: the client encrypting each.
    end_to_end: Vec<Duration>,
    /// Bytes the server wrote to disk for the pre-encrypted messages (a local server only).
    written: Option<u64>,
}

/// Times `messages` sends at the server, then a quarter as many end to end.
async fn measure_sends(
    server: &BenchServer,
    sender: &harness::Device,
    groups: &GroupClient<'_>,
    group_id: &[u8],
    messages: usize,
    logs: bool,
) -> anyhow::Result<SendTimes> {
    // The server's part: messages encrypted beforehand, so that what is timed is the request
    // (the client library loads the group's whole state for every message it encrypts, which at
    // 1,000 members costs the client as much again: see the end-to-end figure).
    let mut group = sender.mls.group(group_id)?.context("the sender's group")?;
    let requests = (0..messages)
        .map(|i| {
            sender
                .mls
                .encrypt(&mut group, format!("message {i}").as_bytes())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    drop(group);
    let mut latencies = Vec::with_capacity(messages);
    let written = server.local().and(harness::bytes_written());
    let profiled = harness::profile_phase(if logs {
        "group-send-logs"
    } else {
        "group-send"
    });
    for request in requests {
        let start = Instant::now();
        sender.connection.send_message(request).await?;
        latencies.push(start.elapsed());
    }
    drop(profiled);
    let written = harness::bytes_written()
        .zip(written)
        .map(|(after, before)| after - before);
    latencies.sort();
    let mut end_to_end = Vec::new();
    for i in 0..messages / 4 {
        let start = Instant::now();
        groups.send(group_id, format!("e2e {i}").as_bytes()).await?;
        end_to_end.push(start.elapsed());
    }
    end_to_end.sort();
    Ok(SendTimes {
        latencies,
        end_to_end,
        written,
    })
}

/// One add commit to the group (the joiner), and the join from its Welcome (the tree of its
/// epoch fetched from the server, then verified), which is reported. Returns the add's time.
async fn measure_add_and_join(
    report: &mut Report,
    at: &GroupSize,
    groups: &GroupClient<'_>,
    group_id: &[u8],
    joiner: &harness::Device,
    joiner_name: &str,
) -> anyhow::Result<f64> {
    let profiled = harness::profile_phase("group-add");
    let start = Instant::now();
    groups
        .invite(group_id, joiner_name)
        .await
        .context("the measured add")?;
    let add_ms = start.elapsed().as_secs_f64() * 1000.0;
    drop(profiled);
    let joining = joiner.groups().await?;
    let start = Instant::now();
    let events = joining.receive().await.context("the joiner's queue")?;
    let join_ms = start.elapsed().as_secs_f64() * 1000.0;
    match events.first() {
        Some((_, Ok(GroupEvent::Joined { .. }))) => {}
        other => anyhow::bail!("the joiner did not join: {other:?}"),
    }
    report.record(Figure::ms(
        GROUP_SIZE,
        at.name("join from a Welcome (tree fetched from the server)"),
        join_ms,
    ));
    Ok(add_ms)
}

/// The send and add figures at this size, beside those of the smallest group (`base`).
fn report_group(
    report: &mut Report,
    at: &GroupSize,
    sends: &SendTimes,
    this: GroupFigures,
    base: GroupFigures,
) {
    report.record(
        Figure::ms(
            GROUP_SIZE,
            at.name("send p50 at the server (pre-encrypted), one sender"),
            this.send_p50,
        )
        .against("2 members", base.send_p50),
    );
    report.record(Figure::ms(
        GROUP_SIZE,
        at.name("send p50 end to end, the client encrypting each"),
        percentile_ms(&sends.end_to_end, 50),
    ));
    report.record(Figure::ms(
        GROUP_SIZE,
        at.name("send p99, one sender"),
        percentile_ms(&sends.latencies, 99),
    ));
    report.record(
        Figure::ms(GROUP_SIZE, at.name("add commit"), this.add_ms)
            .against("2 members", base.add_ms),
    );
}

/// Bytes written to disk per message sent, beside raw redb writing 1 KiB per commit.
fn report_bytes_written(run: &mut Run<'_>, at: &GroupSize, per_message: f64) -> anyhow::Result<()> {
    let figure = Figure::new(
        GROUP_SIZE,
        at.name("bytes written per message, one per commit"),
        per_message,
        "B",
        Better::Lower,
    );
    run.report.record(match run.ceilings.redb(1, run.scale)?.1 {
        Some(ceiling) => figure.against("raw redb 1 KiB, 1 per commit", ceiling),
        None => figure,
    });
    Ok(())
}

/// The scenario the group-size figures belong to.
const GROUP_SIZE: &str = "group-size";

/// `federation`: senders at a.example in groups with members at b.example, sending without pause;
/// how fast the hub accepts, how fast b.example receives, and the hub's outbox backlog over time.
pub async fn federation(run: &mut Run<'_>) -> anyhow::Result<()> {
    let Run { report, scale, .. } = run;
    let pairs = scale.pick(2, 8);
    let sending_for = Duration::from_secs(scale.pick(4, 20));
    let pair = FederatedPair::start().await?;
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (senders, receiving) = federated_pairs(&pair, pairs, &received).await?;
    // Everything before the measured traffic (Welcomes) is not counted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let counted_from = received.load(std::sync::atomic::Ordering::Relaxed);
    let received_since = || received.load(std::sync::atomic::Ordering::Relaxed) - counted_from;
    let store = pair.a.store().clone();
    let outbox = || async {
        let backlog = store.outbox_backlog().await?;
        anyhow::Ok(backlog.iter().map(|(_, waiting)| *waiting).sum::<u64>())
    };
    let start = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sending = send_without_pause(senders, &stop, &accepted);
    let mut backlog = Vec::new();
    while start.elapsed() < sending_for {
        backlog.push((start.elapsed().as_secs_f64(), outbox().await? as f64));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.cancel();
    for task in sending {
        task.await??;
    }
    let sent_for = start.elapsed();
    let accepted = accepted.load(std::sync::atomic::Ordering::Relaxed);
    let delivered_while_sending = received_since();
    let backlog_at_stop = outbox().await?;
    // How long the hub needs to catch up once the senders stop.
    let draining = Instant::now();
    while received_since() < accepted {
        if draining.elapsed() > Duration::from_secs(120) {
            anyhow::bail!(
                "b.example did not receive every message within 120 s of the senders stopping"
            );
        }
        backlog.push((start.elapsed().as_secs_f64(), outbox().await? as f64));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let figures = FederationFigures {
        pairs,
        accept_rate: accepted as f64 / sent_for.as_secs_f64(),
        delivery_rate: delivered_while_sending as f64 / sent_for.as_secs_f64(),
        backlog_at_stop,
        drained_in: draining.elapsed(),
        backlog,
    };
    report_federation(report, figures);
    for task in receiving {
        task.abort();
    }
    pair.stop().await;
    Ok(())
}

/// A sender at a.example and its group.
type FederatedSender = (harness::Device, Vec<u8>);

/// `pairs` senders at a.example, each in a group with a receiver at b.example that counts what
/// it is pushed into `received` and acknowledges it (the tasks returned).
async fn federated_pairs(
    pair: &FederatedPair,
    pairs: usize,
    received: &Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<(Vec<FederatedSender>, Vec<tokio::task::JoinHandle<()>>)> {
    let mut senders = Vec::new();
    let mut receiving = Vec::new();
    for i in 0..pairs {
        let sender =
            harness::device(&pair.a_client, &format!("alice{i}@a.example"), false, 0).await?;
        let bob = format!("bob{i}@b.example");
        let mut receiver = harness::device(&pair.b_client, &bob, true, 2).await?;
        let group_id = sender.one_to_one(&bob).await?;
        let mut push = receiver.push.take().context("no push stream")?;
        let received = received.clone();
        receiving.push(tokio::spawn(async move {
            let mut acked = 0;
            while let Some(notification) = push.next().await {
                let Ok(Notification::NewMessages(hint)) = notification else {
                    continue;
                };
                if hint.latest_seq > acked {
                    received.fetch_add(
                        hint.latest_seq - acked,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    acked = hint.latest_seq;
                    let _ = receiver.connection.ack_messages(acked).await;
                }
            }
        }));
        senders.push((sender, group_id));
    }
    Ok((senders, receiving))
}

/// Each sender sends to its group until `stop`, counting what the hub accepted.
fn send_without_pause(
    senders: Vec<FederatedSender>,
    stop: &tokio_util::sync::CancellationToken,
    accepted: &Arc<std::sync::atomic::AtomicU64>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
    senders
        .into_iter()
        .map(|(sender, group_id)| {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            tokio::spawn(async move {
                let groups = sender.groups().await?;
                let mut i = 0u64;
                while !stop.is_cancelled() {
                    groups
                        .send(&group_id, format!("message {i}").as_bytes())
                        .await?;
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    i += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect()
}

/// What the federation scenario measured.
struct FederationFigures {
    pairs: usize,
    accept_rate: f64,
    delivery_rate: f64,
    backlog_at_stop: u64,
    drained_in: Duration,
    /// The hub's outbox backlog over time: (seconds since the start, deliveries waiting).
    backlog: Vec<(f64, f64)>,
}

fn report_federation(report: &mut Report, figures: FederationFigures) {
    const S: &str = "federation";
    report.record(Figure::new(
        S,
        format!("{} senders at the hub, accepted messages", figures.pairs),
        figures.accept_rate,
        "messages/s",
        Better::Higher,
    ));
    report.record(
        Figure::new(
            S,
            "received at the peer while sending",
            figures.delivery_rate,
            "messages/s",
            Better::Higher,
        )
        .against("accepted at the hub", figures.accept_rate),
    );
    report.record(Figure::new(
        S,
        "hub outbox backlog when the senders stopped",
        figures.backlog_at_stop as f64,
        "deliveries",
        Better::Lower,
    ));
    report.record(Figure::new(
        S,
        "time to drain after the senders stopped",
        figures.drained_in.as_secs_f64(),
        "s",
        Better::Lower,
    ));
    report.series(Series {
        scenario: S,
        name: "hub outbox backlog".into(),
        unit: "deliveries",
        points: figures.backlog,
    });
}

/// `connections`: resident memory per idle authenticated connection of a server in a child
/// process, beside a raw quinn server holding as many idle connections.
pub async fn connections(run: &mut Run<'_>) -> anyhow::Result<()> {
    let Run { report, scale, .. } = run;
    const S: &str = "connections";
    let count = scale.pick(200, 2_000);
    let roost = crate::child::Child::spawn(crate::child::Kind::Roost)?;
    let config = roost.client_config()?;
    let mut held = Vec::with_capacity(count);
    // A few first, so that what every server allocates once is in the baseline.
    for i in 0..10 {
        held.push(harness::device(&config, &format!("warm{i}@localhost"), true, 0).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = harness::resident_bytes(roost.pid())?;
    for i in 0..count {
        held.push(harness::device(&config, &format!("idle{i}@localhost"), true, 0).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_connection =
        (harness::resident_bytes(roost.pid())?.saturating_sub(before)) as f64 / count as f64;
    drop(held);

    let raw = crate::child::Child::spawn(crate::child::Kind::RawQuic)?;
    let raw_config = raw.client_config()?;
    let mut held = Vec::with_capacity(count);
    for _ in 0..10 {
        held.push(Connection::connect(&raw_config).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = harness::resident_bytes(raw.pid())?;
    for _ in 0..count {
        held.push(Connection::connect(&raw_config).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let raw_per_connection =
        (harness::resident_bytes(raw.pid())?.saturating_sub(before)) as f64 / count as f64;
    drop(held);
    report.record(
        Figure::new(
            S,
            format!("server memory per idle authenticated connection ({count})"),
            per_connection / 1024.0,
            "KiB",
            Better::Lower,
        )
        .against("raw quinn idle connection", raw_per_connection / 1024.0),
    );
    Ok(())
}
