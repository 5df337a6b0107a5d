//! `roost-client`: a command-line client for people and scripts. `--json` makes every command
//! print one JSON object (or, on failure, `{"error": ...}`) on standard output.
//!
//! Laid out as cargo lays out its own commands: this file parses the command line and connects,
//! `commands/` holds one file per subcommand, and the parts they share are beside it: the device
//! kept in `--state` (`device.rs`), the queue and log reader (`queue_reader.rs`) and how results
//! print (`output.rs`).

mod commands;
mod device;
mod output;
mod queue_reader;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use roost::client::{ClientConfig, ClientError, Connection};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "roost-client",
    version,
    about = "Command-line client for a Roost homeserver"
)]
pub(crate) struct Cli {
    /// The homeserver's address, HOST:PORT.
    #[arg(long, global = true, default_value = "127.0.0.1:4433")]
    pub(crate) server: String,
    /// The name the server's certificate must carry (its domain).
    #[arg(long, global = true, default_value = "localhost")]
    pub(crate) server_name: String,
    /// PEM file with the CA or server certificate to trust (the default is where `roost serve`
    /// writes its self-signed certificate).
    #[arg(long, global = true, default_value = "roost-data/server-cert.pem")]
    pub(crate) ca: PathBuf,
    /// Directory where this client keeps its identity and keys.
    #[arg(long, global = true, default_value = "roost-client-state")]
    pub(crate) state: PathBuf,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Show the server's domain, protocol version, limits and credential keys.
    Info,
    /// Register a new user with this device (state in --state) as its first client.
    Register {
        /// The user id, localpart@domain.
        user: String,
        /// An invite code, if the server takes registrations by invitation.
        #[arg(long)]
        invite: Option<String>,
    },
    /// List this user's clients (devices), with their verified credentials.
    Clients,
    /// Make --state a new device of the user whose device is in --approve-from.
    AddClient {
        /// The state directory of an existing device of the user, which approves the new one.
        #[arg(long)]
        approve_from: PathBuf,
    },
    /// Remove one of this user's clients: a device id, or USER/DEVICE.
    RemoveClient { client: String },
    /// Get a fresh credential for this device.
    RenewCredential,
    /// Check this user's history in the server's transparency log: report every device that
    /// this one did not add (or accept before).
    CheckDevices {
        /// Accept the devices reported: they are not reported again.
        #[arg(long)]
        accept: bool,
    },
    /// Audit the server's transparency log: follow its tree heads, check each extends the last,
    /// and rebuild the log and the map from its records to check their roots.
    Audit {
        /// Check the newest head once and exit.
        #[arg(long)]
        once: bool,
        /// Seconds between checks when following.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        interval_secs: u64,
    },
    /// Find a user's clients and verify their credentials against the server's keys.
    Lookup { user: String },
    /// Delete this user, all its clients and all its data.
    DeleteAccount,
    /// Show this user's KeyPackage stock (after topping this device up).
    Keypackages,
    /// Fetch, print and acknowledge this device's queued messages.
    Recv {
        /// If the queue is empty, wait up to this many seconds for a message to arrive.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Stay connected and print messages as they arrive (until Ctrl-C or the server closes).
    Listen,
    /// Create a group with this device as its only member (and Admin); prints its id.
    CreateGroup {
        /// A local name for the group, usable instead of its id in later commands.
        name: Option<String>,
    },
    /// Add every device of a user to a group (Admins only).
    Invite { group: String, user: String },
    /// Send a text message to a group.
    Send { group: String, text: String },
    /// Remove every device of a user from a group (Admins only).
    Remove { group: String, user: String },
    /// Make a user an Admin or a Member of a group (Admins only).
    SetRole {
        group: String,
        user: String,
        #[arg(value_enum)]
        role: RoleArg,
    },
    /// Leave a group (the next commit by any member completes it).
    Leave { group: String },
    /// Commit the proposals pending in a group (e.g. someone's leaving).
    Commit { group: String },
    /// Join, by external commit, every group this device's user is in that the device is not
    /// (`add-client` does this for a new device).
    Sync,
    /// Rejoin a group by external commit in place of this device's own leaf, after its state
    /// for the group was lost or broke.
    Resync { group: String },
    /// Delete a group (Admins only).
    DeleteGroup { group: String },
    /// Show a group's members with their roles, credentials verified.
    Members { group: String },
    /// List the groups this device is in.
    Groups,
    /// Run a Web Push receiver on this machine, register it as this device's push target, go
    /// offline, and print each wake-up the server sends (until Ctrl-C, which unregisters it).
    /// The server must allow loopback push targets (`roost serve --push-allow-loopback`).
    PushListen {
        /// Where the receiver listens (a loopback address; port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Leave the target registered on exit.
        #[arg(long)]
        keep: bool,
    },
    /// List this device's push targets.
    PushTargets,
    /// Remove one of this device's push targets (its id, from `push-targets`).
    PushRemove { target_id: u64 },
    /// Forget the identity in --state (its keys, groups and group names), so that the directory
    /// can register or be added again. Local only: the server still lists the device until it
    /// is removed (`remove-client` from another device of the user).
    Reset,
    /// Claim one KeyPackage per client of a user (consumes them; for scripts and debugging).
    Claim {
        user: String,
        /// The MLS ciphersuite.
        #[arg(long, default_value_t = DEFAULT_CIPHERSUITE)]
        ciphersuite: u16,
    },
}

/// A group role on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum RoleArg {
    Admin,
    Member,
}

/// The MLS ciphersuite new devices use: MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519.
const DEFAULT_CIPHERSUITE: u16 = 0x0001;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let json = cli.json;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(json, &anyhow::Error::from(e)),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(json, &e),
    }
}

/// A command line clap refused: with `--json` anywhere on it, one JSON document on stdout too.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let wants_json = std::env::args_os().any(|arg| arg == "--json");
    if !wants_json
        || matches!(
            error.kind(),
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
        )
    {
        error.exit();
    }
    let rendered = error.render().to_string();
    let summary = rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    println!(
        "{}",
        json!({
            "error": summary,
            "code": roost::client::local_error::USAGE_ERROR,
            "name": "Usage",
            "retryable": false,
            "usage": true,
            "hint": "`roost-client help COMMAND` shows how a command is written",
        })
    );
    eprint!("{rendered}");
    ExitCode::from(2)
}

fn fail(json: bool, error: &anyhow::Error) -> ExitCode {
    let failure = roost::client::local_error::failure(error);
    if json {
        println!(
            "{}",
            json!({
                "error": format!("{error:#}"),
                "code": failure.code,
                "name": failure.name,
                "retryable": failure.retryable,
                "hint": failure.hint,
            })
        );
    }
    eprintln!("roost-client: {error:#}");
    if let Some(hint) = failure.hint {
        eprintln!("roost-client: {hint}");
    }
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Reset = cli.command {
        // Local only: no connection.
        commands::reset::run(&cli.state)?.print(cli.json);
        return Ok(());
    }
    let server_addr = tokio::net::lookup_host(&cli.server)
        .await
        .with_context(|| format!("cannot resolve the server address {:?}", cli.server))?
        .next()
        .with_context(|| format!("{} has no address", cli.server))?;
    let config = ClientConfig::new(server_addr, &cli.server_name, &cli.ca).with_context(|| {
        format!(
            "cannot load the certificate to trust from {} (give the server's certificate or its CA with --ca FILE; a local `roost serve` writes DATA_DIR/server-cert.pem)",
            cli.ca.display()
        )
    })?;
    let connection = connect(&config, &cli).await?;
    let context = commands::Context {
        cli: &cli,
        config: &config,
        connection: &connection,
        server_addr,
    };
    let result = commands::execute(&context).await;
    // Close even after a failure, so the server need not wait for this client to time out.
    connection.close().await;
    result?.print(cli.json);
    Ok(())
}

/// How long connecting may take before the client gives up and says why.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the server, turning the usual failures into what to do about them.
pub(crate) async fn connect(config: &ClientConfig, cli: &Cli) -> anyhow::Result<Connection> {
    let address = config.server_addr;
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(config)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(explain_connect_error(&e, cli, address)),
        Err(_) => bail!(
            "no answer from {address} within {} s: is a Roost server running there? (choose the server with --server HOST:PORT)",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

/// A connection failure in words a user can act on.
fn explain_connect_error(error: &ClientError, cli: &Cli, address: SocketAddr) -> anyhow::Error {
    let text = error.to_string();
    if text.contains("UnknownIssuer") || text.contains("unknown issuer") {
        return anyhow::anyhow!(
            "the certificate of the server at {address} is not signed by what {} holds: give the server's certificate or its CA with --ca FILE (a local `roost serve` writes DATA_DIR/server-cert.pem)",
            cli.ca.display()
        );
    }
    if text.contains("not valid for name") {
        // rustls lists the names as `DnsName("a.example")`: keep the names only.
        let names: Vec<&str> = text
            .split("DnsName(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        let valid = if names.is_empty() {
            String::new()
        } else {
            format!(" (it names {})", names.join(", "))
        };
        return anyhow::anyhow!(
            "the certificate of the server at {address} is not valid for {:?}{valid}: set --server-name to the server's domain",
            cli.server_name
        );
    }
    if text.contains("Expired") || text.contains("expired") {
        return anyhow::anyhow!("the certificate of the server at {address} has expired");
    }
    if text.contains("timed out") {
        return anyhow::anyhow!(
            "no answer from {address}: is a Roost server running there? (choose the server with --server HOST:PORT)"
        );
    }
    anyhow::anyhow!("cannot connect to {address}: {text}")
}
