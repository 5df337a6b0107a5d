//! `nodes`: the `send` load (1:1 groups, every message pushed to its receiver and acknowledged)
//! on one node on redb, one node on PostgreSQL, and two nodes sharing one PostgreSQL database
//! with each sender on one node and its receiver on the other (every message crosses nodes, its
//! push through `LISTEN`/`NOTIFY`), and one node on a PostgreSQL primary with a synchronous
//! standby (pg_auto_failover, both on this machine): what an acknowledged write on two copies
//! costs. Figures are ratios against one node on redb or on one PostgreSQL, measured in the same
//! run; BENCHMARKS.md says what limits each.

use roost::client::ClientConfig;
use roost::config::ServerConfig;
use roost::server::Server;
use roost::store::{ScratchCluster, ScratchDatabase, StoreLocation};

use crate::harness::{self, BenchServer};
use crate::report::{percentile_ms, Better, Figure, Report};
use crate::scenarios::{send_load, send_load_on, Run, SendLoad};

const S: &str = "nodes";

/// A node of `localhost` keeping its data in the PostgreSQL database `url` names, with
/// `data_dir` for its keys.
async fn node(url: &str, data_dir: std::path::PathBuf) -> anyhow::Result<Server> {
    let mut config = ServerConfig::new(
        "localhost".parse().map_err(anyhow::Error::msg)?,
        "127.0.0.1:0".parse()?,
        data_dir,
    );
    config.store = Some(StoreLocation::Postgres(url.to_owned()));
    Server::start(harness::unthrottled(config)).await
}

fn client_config(server: &Server) -> anyhow::Result<ClientConfig> {
    ClientConfig::new(server.local_addr(), "localhost", server.certificate_path())
}

pub async fn nodes(run: &mut Run<'_>) -> anyhow::Result<()> {
    let Run { report, scale, .. } = run;
    let load = LoadSize {
        pairs: scale.pick(4, 16),
        messages: scale.pick(50, 300),
    };
    let pairs = load.pairs;
    let redb = BenchServer::start(None).await?;
    let config = redb.client_config.clone();
    let on_redb = load.figures(&send_load_on(pairs, load.messages, &config).await?);
    redb.stop().await;
    report.record(Figure::new(
        S,
        format!("one node on redb, {pairs} senders: acknowledged messages"),
        on_redb.rate,
        "messages/s",
        Better::Higher,
    ));

    let databases = tokio::task::spawn_blocking(|| {
        Ok::<_, roost::store::StoreError>((ScratchDatabase::create()?, ScratchDatabase::create()?))
    })
    .await?;
    let (single_database, shared_database) = match databases {
        Ok(databases) => databases,
        Err(e) => {
            report.failed(S, "PostgreSQL", format!("no PostgreSQL to measure on: {e}"));
            return Ok(());
        }
    };
    let dir = tempfile::tempdir()?;
    let single = one_node(
        report,
        &load,
        node(&single_database.url, dir.path().join("single")).await?,
    )
    .await?;
    report.record(
        Figure::new(
            S,
            format!("one node on PostgreSQL, {pairs} senders: acknowledged messages"),
            single.rate,
            "messages/s",
            Better::Higher,
        )
        .against("one node on redb", on_redb.rate),
    );
    let pair = two_nodes(report, &load, &shared_database, &dir).await?;
    report.record(
        Figure::new(
            S,
            format!("two nodes on one PostgreSQL, {pairs} senders, every message crossing nodes"),
            pair.rate,
            "messages/s",
            Better::Higher,
        )
        .against("one node on PostgreSQL", single.rate),
    );
    report.record(
        Figure::ms(
            S,
            "send -> push latency p50, one node on PostgreSQL",
            single.push_p50,
        )
        .against("one node on redb", on_redb.push_p50),
    );
    report.record(
        Figure::ms(
            S,
            "send -> push latency p50, two nodes (push through NOTIFY)",
            pair.push_p50,
        )
        .against("one node on PostgreSQL", single.push_p50),
    );
    drop((single_database, shared_database));
    replicated(report, &load, &single, &dir).await
}

/// One node on a primary with a synchronous standby, beside one node on one PostgreSQL
/// (`single`, measured in the same run).
async fn replicated(
    report: &mut Report,
    load: &LoadSize,
    single: &LoadFigures,
    dir: &tempfile::TempDir,
) -> anyhow::Result<()> {
    const REPLICATED: &str = "one node on a synchronous pair";
    let cluster = match tokio::task::spawn_blocking(ScratchCluster::start).await? {
        Ok(cluster) => cluster,
        Err(e) => {
            report.failed(S, REPLICATED, format!("no replicated PostgreSQL: {e:#}"));
            return Ok(());
        }
    };
    let server = node(&cluster.url(), dir.path().join("replicated")).await?;
    let config = client_config(&server)?;
    let pairs = load.pairs;
    let figures = load.figures(&send_load_on(pairs, load.messages, &config).await?);
    server.shutdown().await?;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    report.record(
        Figure::new(
            S,
            format!("{REPLICATED}, {pairs} senders: acknowledged messages"),
            figures.rate,
            "messages/s",
            Better::Higher,
        )
        .against("one node on PostgreSQL", single.rate),
    );
    for (what, replicated, alone) in [
        ("p50", figures.acknowledged_p50, single.acknowledged_p50),
        ("p99", figures.acknowledged_p99, single.acknowledged_p99),
    ] {
        report.record(
            Figure::ms(
                S,
                format!("send -> acknowledged {what}, {REPLICATED}"),
                replicated,
            )
            .against("one node on PostgreSQL", alone),
        );
    }
    Ok(())
}

/// How much load each case carries: sender/receiver pairs, messages per sender.
struct LoadSize {
    pairs: usize,
    messages: usize,
}

/// What one case of the load measured.
struct LoadFigures {
    /// Acknowledged messages per second.
    rate: f64,
    /// Send -> push at the receiver, ms.
    push_p50: f64,
    /// Send -> the server's acknowledgement at the sender, ms.
    acknowledged_p50: f64,
    acknowledged_p99: f64,
}

impl LoadSize {
    fn figures(&self, load: &SendLoad) -> LoadFigures {
        LoadFigures {
            rate: load.rate(self.pairs, self.messages),
            push_p50: percentile_ms(&load.latencies, 50),
            acknowledged_p50: percentile_ms(&load.acknowledgements, 50),
            acknowledged_p99: percentile_ms(&load.acknowledgements, 99),
        }
    }
}

/// The load on `single`, one node on PostgreSQL, and what each message cost in statements,
/// round trips and transactions (reported). Returns the load's figures.
async fn one_node(
    report: &mut Report,
    load: &LoadSize,
    single: Server,
) -> anyhow::Result<LoadFigures> {
    let config = client_config(&single)?;
    let (statements, round_trips, commits) = (
        roost::store::postgres_statements_run(),
        roost::store::postgres_round_trips(),
        single.store().stats().commits(),
    );
    let figures = load.figures(&send_load_on(load.pairs, load.messages, &config).await?);
    // Setting the pairs up is a small part: per message, the send and its acknowledgement.
    let sent = (load.pairs * load.messages) as f64;
    let per_message = [
        (
            "table statements",
            roost::store::postgres_statements_run() - statements,
        ),
        (
            "round trips (statements, BEGIN, COMMIT)",
            roost::store::postgres_round_trips() - round_trips,
        ),
        (
            "write transactions",
            single.store().stats().commits() - commits,
        ),
    ];
    for (what, count) in per_message {
        report.record(Figure::new(
            S,
            format!("one node on PostgreSQL: {what} per message sent and acknowledged"),
            count as f64 / sent,
            "",
            Better::Lower,
        ));
    }
    single.shutdown().await?;
    Ok(figures)
}

/// Two nodes sharing one PostgreSQL database, each sender on one and its receiver on the other;
/// the share of write batches that ran again after a conflict is reported. Returns the load's
/// figures.
async fn two_nodes(
    report: &mut Report,
    load: &LoadSize,
    database: &ScratchDatabase,
    dir: &tempfile::TempDir,
) -> anyhow::Result<LoadFigures> {
    let first = node(&database.url, dir.path().join("node-1")).await?;
    roost::server::copy_node_keys(&dir.path().join("node-1"), &dir.path().join("node-2"))?;
    let second = node(&database.url, dir.path().join("node-2")).await?;
    let (at_first, at_second) = (client_config(&first)?, client_config(&second)?);
    let crossing = send_load(
        load.pairs,
        load.messages,
        &[at_first.clone(), at_second.clone()],
        &[at_second, at_first],
    )
    .await?;
    let stats = |server: &Server| {
        let stats = server.store().stats();
        (stats.writes(), stats.conflicts())
    };
    let ((writes_1, conflicts_1), (writes_2, conflicts_2)) = (stats(&first), stats(&second));
    report.record(Figure::new(
        S,
        "two nodes: write batches run again after a conflict, per 100 writes",
        100.0 * (conflicts_1 + conflicts_2) as f64 / (writes_1 + writes_2).max(1) as f64,
        "",
        Better::Lower,
    ));
    first.shutdown().await?;
    second.shutdown().await?;
    Ok(load.figures(&crossing))
}
