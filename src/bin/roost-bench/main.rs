//! `roost-bench`: Roost's figures beside this machine's ceilings.
//!
//! Starts fresh servers on loopback (or targets `--server` for the scenarios that only need a
//! client), runs the named scenarios and prints every figure beside the ceiling it is measured
//! against, measured in the same run: raw redb for what the store writes, raw quinn for what
//! crosses the network, the smallest group for what should not grow with the group. See
//! BENCHMARKS.md for what each scenario measures and what limits it.

mod child;
mod harness;
mod nodes;
mod offline_push;
mod report;
mod scenarios;
mod transparency;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, ValueEnum};
use roost::client::ClientConfig;

use report::Report;
use scenarios::{Ceilings, Run, Scale};

#[derive(Parser, Debug)]
#[command(
    name = "roost-bench",
    version,
    about = "Roost's figures beside this machine's ceilings"
)]
struct Cli {
    /// Scenarios to run, in this order (all when none is named).
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// Less work per scenario: the whole bench in under a minute (a smoke test, not figures).
    #[arg(long)]
    quick: bool,
    /// Print the report as one JSON document on standard output (the table still goes to
    /// standard error unless --quiet).
    #[arg(long)]
    json: bool,
    /// Print no table.
    #[arg(long)]
    quiet: bool,
    /// Group sizes for `group-size` (default 2,100,1000,10000; with --quick 2,100).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(2..=100_000))]
    group_sizes: Vec<u32>,
    /// Run everything this many times and report each figure's median.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,
    /// Run `send` and `group-size` against this server instead of a fresh one (registration must
    /// be open; the server's rate limits apply). Other scenarios need a local server and are
    /// skipped.
    #[arg(long, requires = "ca")]
    server: Option<std::net::SocketAddr>,
    /// The name the `--server`'s certificate carries (its domain).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// PEM file with the certificate (or CA) that `--server` is trusted by.
    #[arg(long)]
    ca: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Baseline,
    Enqueue,
    Fanout,
    Send,
    GroupSize,
    Federation,
    Connections,
    Push,
    Nodes,
    Transparency,
}

impl Scenario {
    fn needs_local_server(self) -> bool {
        !matches!(self, Scenario::Send | Scenario::GroupSize)
    }
}

static QUIET: AtomicBool = AtomicBool::new(false);

/// Whether figures are printed as they are measured.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some(child::CHILD_ARG) {
        return child::run(&args.next().unwrap_or_default());
    }
    let cli = Cli::parse();
    QUIET.store(cli.quiet, Ordering::Relaxed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&cli))?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

async fn run(cli: &Cli) -> anyhow::Result<Report> {
    let remote = match (&cli.server, &cli.ca) {
        (Some(addr), Some(ca)) => Some(ClientConfig::new(*addr, &cli.server_name, ca)?),
        _ => None,
    };
    let scenarios = if cli.scenarios.is_empty() {
        Scenario::value_variants().to_vec()
    } else {
        cli.scenarios.clone()
    };
    let scale = Scale {
        quick: cli.quick,
        group_sizes: cli.group_sizes.iter().map(|&size| size as usize).collect(),
    };
    let mut runs = Vec::new();
    for number in 1..=cli.runs {
        if cli.runs > 1 && !quiet() {
            eprintln!("-- run {number} of {}", cli.runs);
        }
        let mut run = Run {
            report: Report::default(),
            ceilings: Ceilings::default(),
            scale: &scale,
            remote: remote.as_ref(),
        };
        for &scenario in &scenarios {
            if remote.is_some() && scenario.needs_local_server() {
                if !quiet() {
                    eprintln!("{scenario:?}: skipped (needs a server this run starts)");
                }
                continue;
            }
            let done = match scenario {
                Scenario::Baseline => scenarios::baseline(&mut run).await,
                Scenario::Enqueue => scenarios::enqueue(&mut run).await,
                Scenario::Fanout => scenarios::fanout(&mut run).await,
                Scenario::Send => scenarios::send(&mut run).await,
                Scenario::GroupSize => scenarios::group_size(&mut run).await,
                Scenario::Federation => scenarios::federation(&mut run).await,
                Scenario::Connections => scenarios::connections(&mut run).await,
                Scenario::Push => offline_push::push(&mut run).await,
                Scenario::Nodes => nodes::nodes(&mut run).await,
                Scenario::Transparency => transparency::transparency(&mut run).await,
            };
            if let Err(e) = done {
                anyhow::bail!("scenario {scenario:?} failed: {e:#}");
            }
        }
        runs.push(run.report);
    }
    let report = Report::median_of(runs);
    if cli.runs > 1 && !quiet() {
        eprintln!("-- median of {} runs", cli.runs);
        report.print_table();
    }
    Ok(report)
}
