//! `roost-client`: a command-line client for people and scripts. `--json` makes every command
//! print one JSON object (or, on failure, `{"error": ...}`) on standard output.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;
use openmls::prelude::{BasicCredential, KeyPackageIn, ProtocolVersion};
use openmls_rust_crypto::RustCrypto;
use roost::client::groups::{is_transient, GroupClient, GroupEvent};
use roost::client::mls::DeviceMls;
use roost::client::push_receiver::WebPushReceiver;
use roost::client::queue::{HintAction, QueuePosition};
use roost::client::state::DeviceIdentity;
use roost::client::{
    add_client_request, verify_user_clients, ClientConfig, ClientError, Connection, PushStream,
};
use roost::clock::{format_utc, Clock, SystemClock};
use roost::identity::verify_member;
use roost::identity::{verify_credential, CredentialError, DomainKeys};
use roost::protocol::{
    ClaimOutcome, ClaimedKeyPackages, ClientCredential, ClientId, ErrorCode, GroupLogAppended,
    MessageKind, NewMessages, Notification, PushTarget, QueuedMessage, ServerNotice, Text,
    UserClients,
};
use serde_json::json;
use tls_codec::Deserialize as _;

#[derive(Parser)]
#[command(
    name = "roost-client",
    version,
    about = "Command-line client for a Roost homeserver"
)]
struct Cli {
    /// The homeserver's address, HOST:PORT.
    #[arg(long, global = true, default_value = "127.0.0.1:4433")]
    server: String,
    /// The name the server's certificate must carry (its domain).
    #[arg(long, global = true, default_value = "localhost")]
    server_name: String,
    /// PEM file with the CA or server certificate to trust (the default is where `roost serve`
    /// writes its self-signed certificate).
    #[arg(long, global = true, default_value = "roost-data/server-cert.pem")]
    ca: PathBuf,
    /// Directory where this client keeps its identity and keys.
    #[arg(long, global = true, default_value = "roost-client-state")]
    state: PathBuf,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
enum RoleArg {
    Admin,
    Member,
}

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
        let output = reset(&cli.state)?;
        output.print(cli.json);
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
    let result = execute(&cli, &config, &connection, server_addr).await;
    // Close even after a failure, so the server need not wait for this client to time out.
    connection.close().await;
    result?.print(cli.json);
    Ok(())
}

/// How long connecting may take before the client gives up and says why.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the server, turning the usual failures into what to do about them.
async fn connect(config: &ClientConfig, cli: &Cli) -> anyhow::Result<Connection> {
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

/// `reset`: forgets the identity, keys and groups kept in `state`.
fn reset(state: &Path) -> anyhow::Result<Output> {
    let identity = DeviceIdentity::load(state).ok();
    let mut removed = Vec::new();
    for file in [
        roost::client::state::IDENTITY_FILE,
        roost::client::mls::MLS_STORAGE_FILE,
        GroupNames::FILE,
    ] {
        let path = state.join(file);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    if removed.is_empty() {
        bail!("{} holds no identity to forget", state.display());
    }
    // The directory goes too if nothing else is in it.
    let _ = std::fs::remove_dir(state);
    let client = identity.map(|identity| identity.client.to_string());
    let text = match &client {
        Some(client) => format!(
            "forgot {client} in {}; the server still lists this device until it is removed (remove-client from another device of the user)",
            state.display()
        ),
        None => format!("forgot the identity in {}", state.display()),
    };
    Ok(Output::new(
        json!({ "reset": state.display().to_string(), "client_id": client }),
        text,
    ))
}

async fn execute(
    cli: &Cli,
    config: &ClientConfig,
    connection: &Connection,
    server_addr: SocketAddr,
) -> anyhow::Result<Output> {
    Ok(match &cli.command {
        // Handled before connecting; here for completeness.
        Command::Reset => reset(&cli.state)?,
        Command::Info => info(connection, server_addr).await?,
        Command::Register { user, invite } => {
            if DeviceIdentity::exists(&cli.state) {
                bail!(
                    "{} already holds an identity; use another --state directory",
                    cli.state.display()
                );
            }
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let registered = connection
                .register_user(user, &key, DEFAULT_CIPHERSUITE, invite.as_deref())
                .await?;
            let identity = DeviceIdentity::new(registered, key, DEFAULT_CIPHERSUITE);
            identity.save_new(&cli.state)?;
            connection
                .authenticate(&identity.client, &identity.signing_key)
                .await?;
            // A new device reads the messages of groups hosted here from their logs.
            connection.use_group_logs().await?;
            let device = Device::new(identity, &cli.state)?;
            let published = device.top_up(connection).await?;
            let identity = &device.identity;
            let keys = connection.domain_keys().await?;
            Output::new(
                json!({
                    "registered": client_json(&identity.credential, &keys),
                    "key_packages_published": published,
                }),
                format!(
                    "registered {} as client {} and published {published} KeyPackages",
                    identity.client.user_id, identity.client
                ),
            )
        }
        Command::Clients => {
            let (device, _push) = authenticate(connection, &cli.state).await?;
            let identity = &device.identity;
            let clients = connection.list_clients().await?;
            let keys = connection.domain_keys().await?;
            user_clients_output(&clients, &keys, Some(&identity.client))
        }
        Command::AddClient { approve_from } => {
            if DeviceIdentity::exists(&cli.state) {
                bail!("{} already holds an identity", cli.state.display());
            }
            let (approver, _push) = authenticate(connection, approve_from).await?;
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let request = add_client_request(
                approver.identity.client.user_id.as_str(),
                &key,
                approver.identity.ciphersuite,
            );
            let added = connection.add_client(request).await?;
            let identity = DeviceIdentity::new(added, key, approver.identity.ciphersuite);
            identity.save_new(&cli.state)?;
            let device = Device::new(identity, &cli.state)?;
            let identity = &device.identity;
            // The new device publishes its own KeyPackages, on its own connection.
            let own = Connection::connect(config).await?;
            let published = async {
                own.authenticate(&identity.client, &identity.signing_key)
                    .await?;
                own.use_group_logs().await?;
                device.top_up(&own).await
            }
            .await;
            let published = published?;
            // It joins the user's groups as it arrives.
            let joined = async {
                let groups = device.groups(&own).await?;
                let joined = groups.join_user_groups().await?;
                device.save()?;
                Ok::<_, anyhow::Error>(joined)
            }
            .await;
            own.close().await;
            let (joined, not_joined) = joined_output(joined?);
            let keys = connection.domain_keys().await?;
            Output::new(
                json!({
                    "added": client_json(&identity.credential, &keys),
                    "key_packages_published": published,
                    "joined": joined,
                    "not_joined": not_joined,
                }),
                format!(
                    "added client {} (approved by {}), published {published} KeyPackages, joined {} group(s){}",
                    identity.client,
                    approver.identity.client,
                    joined.len(),
                    not_joined_text(&not_joined),
                ),
            )
        }
        Command::RemoveClient { client } => {
            let (device, _push) = authenticate(connection, &cli.state).await?;
            let identity = &device.identity;
            let target = parse_client(client, &identity.client)?;
            connection.remove_client(&target).await?;
            if target == identity.client {
                DeviceIdentity::forget(&cli.state)?;
            }
            Output::new(
                json!({ "removed": target.to_string() }),
                format!("removed client {target}"),
            )
        }
        Command::RenewCredential => {
            let (device, _push) = authenticate(connection, &cli.state).await?;
            let mut identity = device.identity.clone();
            identity.credential = connection.renew_credential().await?;
            identity.save(&cli.state)?;
            let keys = connection.domain_keys().await?;
            Output::new(
                json!({ "renewed": client_json(&identity.credential, &keys) }),
                format!(
                    "renewed the credential of {}: valid until {}",
                    identity.client,
                    format_utc(identity.credential.content.not_after)
                ),
            )
        }
        Command::Lookup { user } => {
            let (device, _push) = authenticate(connection, &cli.state).await?;
            let clients = connection.lookup_user(user).await?;
            // Verified against the keys of the user's own homeserver (through ours).
            let keys = connection.domain_keys_of(user_domain(user)?).await?;
            user_clients_output(&clients, &keys, Some(&device.identity.client))
        }
        Command::DeleteAccount => {
            let identity = DeviceIdentity::load(&cli.state)?;
            connection
                .authenticate(&identity.client, &identity.signing_key)
                .await
                .with_context(|| format!("authenticating as {}", identity.client))?;
            connection.delete_user().await?;
            DeviceIdentity::forget(&cli.state)?;
            Output::new(
                json!({ "deleted": identity.client.user_id.as_str() }),
                format!("deleted {} and all of its data", identity.client.user_id),
            )
        }
        Command::Keypackages => {
            let _session = authenticate(connection, &cli.state).await?;
            let status = connection.key_package_status().await?;
            let clients: Vec<_> = status
                .clients
                .iter()
                .map(|stock| {
                    json!({
                        "client_id": stock.client.to_string(),
                        "remaining": stock.remaining,
                        "has_last_resort": stock.has_last_resort.0,
                    })
                })
                .collect();
            let mut text = format!(
                "KeyPackages (low watermark {}, at most {} per client):",
                status.low_watermark, status.max_per_client
            );
            for stock in &status.clients {
                let last_resort = if stock.has_last_resort.0 { "a" } else { "no" };
                text.push_str(&format!(
                    "\n  {}: {} remaining, {last_resort} last resort",
                    stock.client, stock.remaining
                ));
            }
            Output::new(
                json!({
                    "low_watermark": status.low_watermark,
                    "max_per_client": status.max_per_client,
                    "clients": clients,
                }),
                text,
            )
        }
        Command::Recv { wait } => {
            let (device, mut push) = authenticate(connection, &cli.state).await?;
            let mut reader = QueueReader::new(connection, &device, cli.json).await?;
            let mut received = reader.catch_up().await?;
            if received == 0 && *wait > 0 {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(*wait);
                while let Ok(Some(notification)) =
                    tokio::time::timeout_at(deadline, push.next()).await
                {
                    received += match notification? {
                        Notification::NewMessages(hint) => reader.on_hint(&hint).await?,
                        Notification::GroupLogAppended(hint) => reader.on_log_hint(&hint).await?,
                        _ => 0,
                    };
                    if received > 0 {
                        break;
                    }
                }
            }
            if reader.unprocessable > 0 {
                bail!(
                    "{} message(s) could never be processed and were dropped (see above)",
                    reader.unprocessable
                );
            }
            if received == 0 {
                Output::new(json!({ "event": "no_messages" }), "no messages".to_owned())
            } else {
                Output::nothing()
            }
        }
        Command::Listen => listen(cli, config, connection).await?,
        Command::PushListen { listen, keep } => {
            push_listen(cli, config, connection, *listen, *keep).await?
        }
        Command::PushTargets => {
            let _ = authenticate(connection, &cli.state).await?;
            let targets = connection.list_push_targets().await?;
            let mut text = Vec::new();
            let listed: Vec<serde_json::Value> = targets
                .iter()
                .map(|registered| {
                    let (kind, place) = match &registered.target {
                        PushTarget::WebPush(web) => ("web_push", web.endpoint.to_string()),
                        PushTarget::Gateway(gateway) => (
                            "gateway",
                            format!("{} ({})", gateway.gateway_url, gateway.app_id),
                        ),
                    };
                    let registered_at = format_utc(registered.registered_at);
                    text.push(format!(
                        "{}  {kind}  {place}  registered {registered_at}",
                        registered.target_id
                    ));
                    json!({ "target_id": registered.target_id, "kind": kind, "target": place, "registered_at": registered_at })
                })
                .collect();
            if text.is_empty() {
                text.push("no push targets".into());
            }
            Output::new(json!({ "push_targets": listed }), text.join("\n"))
        }
        Command::PushRemove { target_id } => {
            let _ = authenticate(connection, &cli.state).await?;
            connection.remove_push_target(*target_id).await?;
            Output::new(
                json!({ "removed": target_id }),
                format!("push target {target_id} removed"),
            )
        }
        Command::CreateGroup { name } => {
            let (device, _push) = authenticate(connection, &cli.state).await?;
            let group_id = device.groups(connection).await?.create_group().await?;
            device.save()?;
            let group = hex::encode(&group_id);
            if let Some(name) = name {
                GroupNames::load(&cli.state)?.insert(name, &group, &cli.state)?;
            }
            Output::new(json!({ "group": group }), group)
        }
        Command::Invite { group, user } => {
            let (device, _push) = authenticate(connection, &cli.state).await?;
            let group_id = GroupNames::load(&cli.state)?.resolve(group)?;
            let groups = device.groups(connection).await?;
            let pending = groups.pending_proposals(&group_id)?;
            let invited = caught_up(&groups, cli.json, groups.invite(&group_id, user).await)?;
            device.save()?;
            let invited: Vec<String> = invited.iter().map(ToString::to_string).collect();
            Output::new(
                json!({ "group": hex::encode(&group_id), "added": invited, "pending_proposals_committed": pending }),
                format!(
                    "added {} to {}{}",
                    invited.join(", "),
                    hex::encode(&group_id),
                    also_committed(pending)
                ),
            )
        }
        Command::Send { group, text } => {
            let (device, _push) = authenticate(connection, &cli.state).await?;
            let group_id = GroupNames::load(&cli.state)?.resolve(group)?;
            let groups = device.groups(connection).await?;
            let sent = groups.send(&group_id, text.as_bytes()).await;
            let committed = caught_up(&groups, cli.json, sent)?;
            device.save()?;
            let group = hex::encode(&group_id);
            Output::new(
                json!({ "group": group, "sent": text, "committed_epoch": committed }),
                match committed {
                    // MLS sends nothing over pending proposals: they went first.
                    Some(epoch) => format!(
                        "sent to {group}, after committing what was pending (epoch {epoch})"
                    ),
                    None => format!("sent to {group}"),
                },
            )
        }
        Command::Remove { group, user } => {
            let (device, _push) = authenticate(connection, &cli.state).await?;
            let group_id = GroupNames::load(&cli.state)?.resolve(group)?;
            let groups = device.groups(connection).await?;
            let pending = groups.pending_proposals(&group_id)?;
            let removed = groups.remove_user(&group_id, user).await;
            let removed = caught_up(&groups, cli.json, removed)?;
            device.save()?;
            let removed: Vec<String> = removed.iter().map(ToString::to_string).collect();
            Output::new(
                json!({ "group": hex::encode(&group_id), "removed": removed, "pending_proposals_committed": pending }),
                format!(
                    "removed {} from {}{}",
                    removed.join(", "),
                    hex::encode(&group_id),
                    also_committed(pending)
                ),
            )
        }
        Command::SetRole { group, user, role } => {
            let (device, _push) = authenticate(connection, &cli.state).await?;
            let group_id = GroupNames::load(&cli.state)?.resolve(group)?;
            let admin = matches!(role, RoleArg::Admin);
            let groups = device.groups(connection).await?;
            let set = groups.set_role(&group_id, user, admin).await;
            caught_up(&groups, cli.json, set)?;
            device.save()?;
            let role = if admin { "admin" } else { "member" };
            Output::new(
                json!({ "group": hex::encode(&group_id), "user": user, "role": role }),
                format!("{user} is now {role} of {}", hex::encode(&group_id)),
            )
        }
        Command::Leave { group } => {
            let (device, _push) = authenticate(connection, &cli.state).await?;
            let group_id = GroupNames::load(&cli.state)?.resolve(group)?;
            let groups = device.groups(connection).await?;
            let left = groups.leave(&group_id).await;
            caught_up(&groups, cli.json, left)?;
            device.save()?;
            Output::new(
                json!({ "group": hex::encode(&group_id), "left": true }),
                format!(
                    "left {} (the next commit removes this device)",
                    hex::encode(&group_id)
                ),
            )
        }
        Command::Commit { group } => {
            let (device, _push) = authenticate(connection, &cli.state).await?;
            let group_id = GroupNames::load(&cli.state)?.resolve(group)?;
            let groups = device.groups(connection).await?;
            let epoch = groups.commit_pending(&group_id).await;
            let epoch = caught_up(&groups, cli.json, epoch)?;
            device.save()?;
            Output::new(
                json!({ "group": hex::encode(&group_id), "epoch": epoch }),
                format!("group {} is at epoch {epoch}", hex::encode(&group_id)),
            )
        }
        Command::Sync => {
            let (device, _push) = authenticate(connection, &cli.state).await?;
            let groups = device.groups(connection).await?;
            let joined = groups.join_user_groups().await;
            device.save()?;
            let (joined, not_joined) = joined_output(joined?);
            Output::new(
                json!({ "joined": joined, "not_joined": not_joined }),
                format!(
                    "joined {} group(s){}",
                    joined.len(),
                    not_joined_text(&not_joined)
                ),
            )
        }
        Command::Resync { group } => {
            let (device, _push) = authenticate(connection, &cli.state).await?;
            let group_id = GroupNames::load(&cli.state)?.resolve(group)?;
            let groups = device.groups(connection).await?;
            let epoch = groups.resync(&group_id).await;
            device.save()?;
            let epoch = epoch?;
            Output::new(
                json!({ "group": hex::encode(&group_id), "epoch": epoch }),
                format!("rejoined {} at epoch {epoch}", hex::encode(&group_id)),
            )
        }
        Command::DeleteGroup { group } => {
            let (device, _push) = authenticate(connection, &cli.state).await?;
            let group_id = GroupNames::load(&cli.state)?.resolve(group)?;
            device
                .groups(connection)
                .await?
                .delete_group(&group_id)
                .await?;
            device.save()?;
            Output::new(
                json!({ "group": hex::encode(&group_id), "deleted": true }),
                format!("deleted group {}", hex::encode(&group_id)),
            )
        }
        Command::Members { group } => {
            let _session = authenticate(connection, &cli.state).await?;
            let group_id = GroupNames::load(&cli.state)?.resolve(group)?;
            let state = connection.get_group(&group_id).await?;
            let members: Vec<_> = state
                .members
                .iter()
                .map(|member| {
                    json!({
                        "client_id": member.client.to_string(),
                        "leaf_index": member.leaf_index,
                        "role": role_name(member.role),
                    })
                })
                .collect();
            let mut text = format!("group {} at epoch {}:", hex::encode(&group_id), state.epoch);
            for member in &state.members {
                text.push_str(&format!(
                    "\n  {} ({})",
                    member.client,
                    role_name(member.role)
                ));
            }
            Output::new(
                json!({ "group": hex::encode(&group_id), "epoch": state.epoch, "members": members }),
                text,
            )
        }
        Command::Groups => {
            let _session = authenticate(connection, &cli.state).await?;
            let names = GroupNames::load(&cli.state)?;
            let listed = connection.list_groups().await?;
            let groups: Vec<_> = listed
                .groups
                .iter()
                .map(|group| {
                    let id = hex::encode(group.group_id.as_slice());
                    json!({ "group": id, "name": names.name_of(&id), "epoch": group.epoch })
                })
                .collect();
            let unreachable: Vec<&str> = listed
                .unreachable_hubs
                .iter()
                .map(|hub| hub.as_str())
                .collect();
            let text =
                listed
                    .groups
                    .iter()
                    .map(|group| {
                        let id = hex::encode(group.group_id.as_slice());
                        match names.name_of(&id) {
                            Some(name) => format!("{id} ({name}), epoch {}", group.epoch),
                            None => format!("{id}, epoch {}", group.epoch),
                        }
                    })
                    .chain(unreachable.iter().map(|hub| {
                        format!("({hub} could not be reached: its groups are not listed)")
                    }))
                    .collect::<Vec<_>>()
                    .join("\n");
            let text = if text.is_empty() {
                "no groups".to_owned()
            } else {
                text
            };
            Output::new(
                json!({ "groups": groups, "unreachable_hubs": unreachable }),
                text,
            )
        }
        Command::Claim { user, ciphersuite } => {
            let _session = authenticate(connection, &cli.state).await?;
            let claimed = connection.claim_key_packages(user, *ciphersuite).await?;
            let keys = connection.domain_keys_of(user_domain(user)?).await?;
            claim_output(&claimed, &keys)
        }
    })
}

/// The MLS ciphersuite new devices use: MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519.
const DEFAULT_CIPHERSUITE: u16 = 0x0001;

/// What a command prints at its end: JSON with `--json`, text otherwise.
struct Output {
    json: serde_json::Value,
    text: String,
}

impl Output {
    fn new(json: serde_json::Value, text: String) -> Self {
        Self { json, text }
    }

    fn print(&self, json: bool) {
        if json {
            if !self.json.is_null() {
                println!("{}", self.json);
            }
        } else if !self.text.is_empty() {
            println!("{}", self.text);
        }
    }

    /// For commands that printed as they went.
    fn nothing() -> Self {
        Self {
            json: serde_json::Value::Null,
            text: String::new(),
        }
    }
}

/// Prints one line now: a JSON object with `--json`, text otherwise.
fn print_event(json: bool, object: serde_json::Value, text: String) {
    if json {
        println!("{object}");
    } else {
        println!("{text}");
    }
}

/// Messages fetched per request while draining the queue.
const FETCH_BATCH: u32 = 100;

/// Reads this device's queue: processes what it fetches or is pushed (MLS messages and
/// Welcomes through the device's groups, server notices as notices), prints it (one JSON object
/// per line with `--json`; application messages as `GROUP SENDER TEXT`), keeps the device's
/// state, and acknowledges it.
struct QueueReader<'a> {
    connection: &'a Connection,
    device: &'a Device,
    json: bool,
    groups: GroupClient<'a>,
    groups_made: std::time::Instant,
    position: QueuePosition,
    /// Messages dropped because they can never be processed.
    unprocessable: usize,
}

impl<'a> QueueReader<'a> {
    /// How long the reader verifies members with the same server keys and clock reading.
    const GROUPS_REFRESH: Duration = Duration::from_secs(60);

    async fn new(
        connection: &'a Connection,
        device: &'a Device,
        json: bool,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            connection,
            device,
            json,
            groups: device.groups(connection).await?,
            groups_made: std::time::Instant::now(),
            position: QueuePosition::default(),
            unprocessable: 0,
        })
    }

    /// Fetches and processes until the queue is empty. Returns how many messages there were.
    async fn catch_up(&mut self) -> anyhow::Result<usize> {
        let mut received = 0;
        loop {
            let fetched = self
                .connection
                .fetch_messages(0, FETCH_BATCH, 1 << 20)
                .await?;
            self.position.caught_up(&fetched);
            if fetched.messages.is_empty() {
                return Ok(received + self.catch_up_logs().await?);
            }
            received += fetched.messages.len();
            self.process(&fetched.messages).await?;
        }
    }

    /// Acts on a `NewMessages` hint: the messages it carries are processed without a fetch
    /// when they follow on from what is done; otherwise the queue is fetched. Returns how many
    /// messages were processed.
    async fn on_hint(&mut self, hint: &NewMessages) -> anyhow::Result<usize> {
        match self.position.on_hint(hint) {
            HintAction::Nothing => Ok(0),
            HintAction::Process(messages) => {
                self.process(messages).await?;
                Ok(messages.len())
            }
            HintAction::Fetch => self.catch_up().await,
        }
    }

    /// Processes and prints `messages`, keeps the device's state, then acknowledges
    /// everything processed, and everything that can never be processed (reported on
    /// stderr and as an `unprocessable` event, and counted in `self.unprocessable`). A failure
    /// that may pass later (the server or network) stops before the message that met it, which
    /// stays queued.
    async fn process(&mut self, messages: &[QueuedMessage]) -> anyhow::Result<()> {
        self.process_from(messages, None).await
    }

    /// As [`QueueReader::process`], for messages of the queue (`log` `None`) or of a group's log.
    async fn process_from(
        &mut self,
        messages: &[QueuedMessage],
        log: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        if self.groups_made.elapsed() > Self::GROUPS_REFRESH {
            self.groups = self.device.groups(self.connection).await?;
            self.groups_made = std::time::Instant::now();
        }
        let mut done = None;
        let mut stopped = None;
        for message in messages {
            let group_notice = message.kind == MessageKind::ServerNotice
                && matches!(
                    ServerNotice::tls_deserialize_exact(message.payload.as_slice()),
                    Ok(ServerNotice::GroupDeleted(_))
                );
            let (object, text) = if message.kind == MessageKind::ServerNotice && !group_notice {
                match notice_output(self.connection, self.device, message).await {
                    Ok(output) => output,
                    Err(e) => {
                        stopped = Some(e);
                        break;
                    }
                }
            } else {
                match self.groups.process(message).await {
                    Err(e) if is_transient(&e) => {
                        stopped = Some(e.context(format!(
                            "message #{} stays queued; run recv again",
                            message.seq
                        )));
                        break;
                    }
                    Err(e) => {
                        self.unprocessable += 1;
                        eprintln!(
                            "roost-client: message #{} can never be processed and is dropped: {e:#}",
                            message.seq
                        );
                        (
                            json!({ "seq": message.seq, "event": "unprocessable", "reason": format!("{e:#}") }),
                            format!("#{}: dropped, cannot be processed: {e:#}", message.seq),
                        )
                    }
                    Ok(event) => group_event_output(message.seq, Ok(event)),
                }
            };
            print_event(self.json, object, text);
            done = Some(message.seq);
        }
        // Group state moves with what was processed: keep it before acknowledging.
        self.device.save()?;
        if let Some(done) = done {
            match log {
                Some(group_id) => self.connection.ack_group_log(group_id, done).await?,
                None => {
                    self.connection.ack_messages(done).await?;
                    self.position.advance(done);
                }
            }
        }
        stopped.map_or(Ok(()), Err)
    }

    /// Reads every group log with unread entries (after the queue: a Welcome there comes
    /// first). Returns how many entries there were.
    async fn catch_up_logs(&mut self) -> anyhow::Result<usize> {
        let mut received = 0;
        for log in self.connection.list_group_logs().await?.logs {
            if log.has_unread() {
                received += self.read_log(log.group_id.as_slice()).await?;
            }
        }
        Ok(received)
    }

    /// Reads one group's log from this device's position on.
    async fn read_log(&mut self, group_id: &[u8]) -> anyhow::Result<usize> {
        let mut received = 0;
        loop {
            let fetched = match self
                .connection
                .fetch_group_log(group_id, 0, FETCH_BATCH, 1 << 20)
                .await
            {
                Ok(fetched) => fetched,
                // The window closed and was read to its end: nothing left.
                Err(e) if e.code() == Some(ErrorCode::NotAMember) => return Ok(received),
                Err(e) => return Err(e.into()),
            };
            if fetched.messages.is_empty() {
                return Ok(received);
            }
            received += fetched.messages.len();
            self.process_from(&fetched.messages, Some(group_id)).await?;
        }
    }

    /// Acts on a `GroupLogAppended` hint: reads that log (every log, for the hint that says
    /// more groups moved than the server tracked).
    async fn on_log_hint(&mut self, hint: &GroupLogAppended) -> anyhow::Result<usize> {
        if hint.group_id.as_slice().is_empty() {
            return self.catch_up_logs().await;
        }
        self.read_log(hint.group_id.as_slice()).await
    }
}

/// The note on a commit that carried pending proposals along with its own change.
fn also_committed(pending: usize) -> String {
    match pending {
        0 => String::new(),
        1 => " (and committed the pending proposal)".to_owned(),
        n => format!(" (and committed the {n} pending proposals)"),
    }
}

/// How a processed MLS message or Welcome prints.
fn group_event_output(seq: u64, event: anyhow::Result<GroupEvent>) -> (serde_json::Value, String) {
    match event {
        Ok(GroupEvent::Message {
            group_id,
            sender,
            text,
        }) => {
            let (group, text) = (
                hex::encode(group_id),
                String::from_utf8_lossy(&text).into_owned(),
            );
            (
                json!({ "seq": seq, "group": group, "sender": sender.to_string(), "text": text }),
                format!("{group} {sender} {text}"),
            )
        }
        Ok(GroupEvent::Joined { group_id }) => {
            let group = hex::encode(group_id);
            (
                json!({ "seq": seq, "event": "joined", "group": group }),
                format!("joined group {group}"),
            )
        }
        Ok(GroupEvent::Committed { group_id, epoch }) => {
            let group = hex::encode(group_id);
            (
                json!({ "seq": seq, "event": "commit", "group": group, "epoch": epoch }),
                format!("group {group} moved to epoch {epoch}"),
            )
        }
        Ok(GroupEvent::Removed { group_id }) => {
            let group = hex::encode(group_id);
            (
                json!({ "seq": seq, "event": "removed", "group": group }),
                format!("this device was removed from group {group}"),
            )
        }
        Ok(GroupEvent::Deleted { group_id, by }) => {
            let group = hex::encode(group_id);
            (
                json!({ "seq": seq, "event": "group_deleted", "group": group, "by": by.to_string() }),
                format!("group {group} was deleted by {by}"),
            )
        }
        Ok(GroupEvent::Proposed { group_id, by, what }) => {
            let group = hex::encode(group_id);
            let by = by.map_or_else(|| "the server".to_owned(), |client| client.to_string());
            (
                json!({ "seq": seq, "event": "proposal", "group": group, "by": by, "what": what }),
                format!("{by} proposes {what} in group {group} — run: commit {group}"),
            )
        }
        Ok(GroupEvent::InvitationLapsed { group_id, reason }) => {
            let group = hex::encode(group_id);
            (
                json!({ "seq": seq, "event": "invitation_lapsed", "group": group, "reason": reason }),
                format!(
                    "an invitation to group {group} lapsed before this device joined: {reason}"
                ),
            )
        }
        Ok(GroupEvent::OwnMessage { group_id }) => {
            let group = hex::encode(group_id);
            (
                json!({ "seq": seq, "event": "own_message", "group": group }),
                format!("#{seq}: this device's own message to group {group}"),
            )
        }
        Ok(GroupEvent::Other) => (
            json!({ "seq": seq, "event": "ignored" }),
            format!("#{seq}: nothing for this device"),
        ),
        Err(e) => {
            let failure = roost::client::local_error::failure(&e);
            let hint = failure
                .hint
                .map(|hint| format!(" ({hint})"))
                .unwrap_or_default();
            (
                json!({
                    "seq": seq,
                    "event": "error",
                    "error": format!("{e:#}"),
                    "code": failure.code,
                    "name": failure.name,
                    "hint": failure.hint,
                }),
                format!("#{seq}: cannot process: {e:#}{hint}"),
            )
        }
    }
}

/// Handles and describes a server notice.
async fn notice_output(
    connection: &Connection,
    device: &Device,
    message: &QueuedMessage,
) -> anyhow::Result<(serde_json::Value, String)> {
    let mut object = json!({ "seq": message.seq, "kind": "server_notice" });
    let mut text = format!("#{} server notice", message.seq);
    match ServerNotice::tls_deserialize_exact(message.payload.as_slice()) {
        Ok(ServerNotice::KeyPackagesLow(low)) => {
            let published = device.top_up(connection).await?;
            object["notice"] = json!({ "key_packages_low": { "remaining": low.remaining, "published": published } });
            text.push_str(&format!(
                ": KeyPackages ran low ({} left); published {published}",
                low.remaining
            ));
        }
        Ok(ServerNotice::GroupDeleted(deleted)) => {
            object["notice"] = json!({ "group_deleted": hex::encode(deleted.group_id.as_slice()) });
            text.push_str(": a group was deleted");
        }
        Ok(ServerNotice::MessagesExpired(expired)) => {
            object["notice"] = json!({ "messages_expired": { "count": expired.count, "first_seq": expired.first_seq, "last_seq": expired.last_seq } });
            text.push_str(&format!(
                ": {} messages expired unread (#{} to #{})",
                expired.count, expired.first_seq, expired.last_seq
            ));
        }
        Err(e) => {
            object["notice_error"] = json!(e.to_string());
            text.push_str(&format!(": unreadable notice ({e})"));
        }
    }
    Ok((object, text))
}

/// The groups an external join took (hex ids), and those it could not, with why (a hub that
/// could not be asked among them).
fn joined_output(
    outcomes: roost::client::rejoin::JoinedGroups,
) -> (Vec<String>, Vec<serde_json::Value>) {
    let mut joined = Vec::new();
    let mut not_joined: Vec<serde_json::Value> = outcomes
        .unreachable_hubs
        .iter()
        .map(|hub| {
            json!({
                "hub": hub,
                "error": format!("the groups at {hub} could not be listed"),
                "hint": "run `sync` again once it answers",
            })
        })
        .collect();
    for (group_id, outcome) in outcomes.groups {
        match outcome {
            Ok(_) => joined.push(hex::encode(group_id)),
            Err(e) => {
                let failure = roost::client::local_error::failure(&e);
                not_joined.push(json!({
                    "group": hex::encode(group_id),
                    "error": format!("{e:#}"),
                    "code": failure.code,
                    "hint": failure.hint,
                }))
            }
        }
    }
    (joined, not_joined)
}

fn not_joined_text(not_joined: &[serde_json::Value]) -> String {
    not_joined
        .iter()
        .map(|failed| match failed["group"].as_str() {
            Some(group) => format!("\n  not {group}: {}", failed["error"]),
            None => format!("\n  {}", failed["error"]),
        })
        .collect()
}

/// Prints what `groups` processed while catching up inside an operation (the library does
/// that when the server says the device is behind), then passes the operation's `result` on.
fn caught_up<T>(
    groups: &GroupClient<'_>,
    json: bool,
    result: anyhow::Result<T>,
) -> anyhow::Result<T> {
    for (seq, event) in groups.take_caught_up() {
        let (object, text) = group_event_output(seq, event);
        print_event(json, object, text);
    }
    result
}

/// Local names of groups (`STATE_DIR/groups.json`), for people who prefer `team` to a hex id.
struct GroupNames(std::collections::BTreeMap<String, String>);

impl GroupNames {
    const FILE: &'static str = "groups.json";

    fn load(state: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(state.join(Self::FILE)) {
            Ok(text) => Ok(Self(
                serde_json::from_str(&text).context("reading groups.json")?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self(Default::default())),
            Err(e) => Err(e).context("reading groups.json"),
        }
    }

    fn insert(mut self, name: &str, group: &str, state: &Path) -> anyhow::Result<()> {
        self.0.insert(name.to_owned(), group.to_owned());
        std::fs::write(
            state.join(Self::FILE),
            serde_json::to_string_pretty(&self.0)?,
        )
        .context("writing groups.json")
    }

    /// A group id from a local name or a hex id.
    fn resolve(&self, group: &str) -> anyhow::Result<Vec<u8>> {
        let id = self.0.get(group).map_or(group, String::as_str);
        hex::decode(id).map_err(|_| {
            anyhow::anyhow!(
                "{group:?} is neither a group name on this device nor a group id (the hex id `create-group` and `groups` print)"
            )
        })
    }

    fn name_of(&self, id: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, group)| group.as_str() == id)
            .map(|(name, _)| name.as_str())
    }
}

/// This device: its identity, its MLS side, and the state directory they live in.
struct Device {
    identity: DeviceIdentity,
    mls: DeviceMls,
    state: PathBuf,
}

impl Device {
    fn load(state: &Path) -> anyhow::Result<Self> {
        let identity = DeviceIdentity::load(state)?;
        let mls = DeviceMls::load(&identity, state)?;
        Ok(Self {
            identity,
            mls,
            state: state.to_owned(),
        })
    }

    /// A freshly registered device (its identity already saved).
    fn new(identity: DeviceIdentity, state: &Path) -> anyhow::Result<Self> {
        let mls = DeviceMls::new(&identity)?;
        Ok(Self {
            identity,
            mls,
            state: state.to_owned(),
        })
    }

    /// Saves the MLS key store (group states, KeyPackage private keys).
    fn save(&self) -> anyhow::Result<()> {
        self.mls.save(&self.state)
    }

    /// Publishes KeyPackages if the stock is low, keeping their private keys. Returns how many.
    async fn top_up(&self, connection: &Connection) -> anyhow::Result<usize> {
        let published = connection
            .top_up_key_packages(&self.identity.client, &self.mls)
            .await?;
        if published > 0 {
            self.save()?;
        }
        Ok(published)
    }

    /// The group flows of this device on `connection`.
    async fn groups<'a>(&'a self, connection: &'a Connection) -> anyhow::Result<GroupClient<'a>> {
        Ok(GroupClient::new(
            connection,
            &self.mls,
            connection.domain_keys().await?,
            now(),
        ))
    }
}

/// Loads the device in `state`, authenticates the connection as it, and (as any device coming
/// online does) tops up its KeyPackages if they run low.
async fn authenticate(
    connection: &Connection,
    state: &Path,
) -> anyhow::Result<(Device, PushStream)> {
    let device = Device::load(state)?;
    let push = connection
        .authenticate(&device.identity.client, &device.identity.signing_key)
        .await
        .with_context(|| format!("authenticating as {}", device.identity.client))?;
    device.top_up(connection).await?;
    Ok((device, push))
}

/// Why one `listen` session on a connection ended.
enum ListenEnd {
    /// Ctrl-C, or this device was removed: stop.
    Stop,
    /// The connection went away (the server restarted, the network failed): reconnect.
    Lost(String),
}

/// First and longest wait before `listen` connects again.
const RECONNECT_FIRST: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// `listen`: prints messages as they arrive until Ctrl-C or this device is removed; when the
/// connection is lost (a server restart), connects again with growing pauses and catches up.
async fn listen(cli: &Cli, config: &ClientConfig, first: &Connection) -> anyhow::Result<Output> {
    let mut own: Option<Connection> = None;
    loop {
        let connection = own.as_ref().unwrap_or(first);
        let reason = match listen_on(cli, connection).await? {
            ListenEnd::Stop => break,
            ListenEnd::Lost(reason) => reason,
        };
        let mut delay = RECONNECT_FIRST;
        let mut reason = reason;
        let reconnected = loop {
            print_event(
                cli.json,
                json!({ "event": "reconnecting", "reason": reason, "retry_in_ms": delay.as_millis() as u64 }),
                format!(
                    "connection lost ({reason}); connecting again in {:.1} s",
                    delay.as_secs_f64()
                ),
            );
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break None,
                _ = tokio::time::sleep(delay) => {}
            }
            match connect(config, cli).await {
                Ok(connection) => break Some(connection),
                Err(e) => {
                    reason = format!("{e:#}");
                    delay = (delay * 2).min(RECONNECT_MAX);
                }
            }
        };
        let Some(connection) = reconnected else { break };
        if let Some(old) = own.replace(connection) {
            old.close().await;
        }
        print_event(
            cli.json,
            json!({ "event": "reconnected" }),
            "connected again".to_owned(),
        );
    }
    if let Some(own) = own {
        own.close().await;
    }
    Ok(Output::nothing())
}

/// Whether `error` is the connection going away (worth connecting again), not a refusal.
fn is_connection_loss(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<ClientError>())
        .any(|e| {
            matches!(
                e,
                ClientError::Connection(_) | ClientError::Stream(_) | ClientError::Connect(_)
            )
        })
}

/// One `listen` session on `connection`: authenticate, catch up, print what is pushed.
async fn listen_on(cli: &Cli, connection: &Connection) -> anyhow::Result<ListenEnd> {
    let session = async {
        let (device, mut push) = authenticate(connection, &cli.state).await?;
        let mut reader = QueueReader::new(connection, &device, cli.json).await?;
        reader.catch_up().await?;
        loop {
            let notification = tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(ListenEnd::Stop),
                notification = push.next() => match notification {
                    Some(notification) => notification?,
                    None => return Ok(ListenEnd::Lost("the server closed the connection".into())),
                },
            };
            match notification {
                Notification::NewMessages(hint) => {
                    reader.on_hint(&hint).await?;
                }
                Notification::GroupLogAppended(hint) => {
                    reader.on_log_hint(&hint).await?;
                }
                Notification::KeyPackagesLow(low) => {
                    let published = device.top_up(connection).await?;
                    print_event(
                        cli.json,
                        json!({ "event": "key_packages_low", "remaining": low.remaining, "published": published }),
                        format!(
                            "KeyPackages ran low ({} left); published {published}",
                            low.remaining
                        ),
                    );
                }
                Notification::ClientRemoved(client) => {
                    print_event(
                        cli.json,
                        json!({ "event": "client_removed", "client_id": client.to_string() }),
                        format!("this device ({client}) was removed"),
                    );
                    return Ok(ListenEnd::Stop);
                }
                Notification::ServerShutdown(notice) => {
                    print_event(
                        cli.json,
                        json!({ "event": "server_shutdown", "reason": notice.reason.as_str() }),
                        format!("the server is shutting down: {}", notice.reason),
                    );
                    return Ok(ListenEnd::Lost(format!(
                        "the server shut down: {}",
                        notice.reason
                    )));
                }
            }
        }
    };
    match session.await {
        Err(e) if is_connection_loss(&e) => Ok(ListenEnd::Lost(format!("{e:#}"))),
        other => other,
    }
}

/// `push-listen`: a local Web Push receiver registered for this device, which then goes
/// offline, printing each wake-up until Ctrl-C.
async fn push_listen(
    cli: &Cli,
    config: &ClientConfig,
    connection: &Connection,
    listen: SocketAddr,
    keep: bool,
) -> anyhow::Result<Output> {
    let (device, _push) = authenticate(connection, &cli.state).await?;
    let info = connection.push_info().await?;
    if info.vapid_public_key.as_slice().is_empty() {
        bail!("the server sends no Web Push (it runs with --no-offline-push or --no-web-push)");
    }
    let mut receiver = WebPushReceiver::bind(listen, info.vapid_public_key.as_slice())
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let added = connection
        .add_push_target(PushTarget::WebPush(receiver.subscription()))
        .await
        .context("registering the receiver (does the server allow loopback push targets? `roost serve --push-allow-loopback`)")?;
    // Offline from here on: the server wakes this device through the receiver.
    connection
        .quic()
        .close(roost::protocol::close_code::NORMAL.into(), b"offline");
    print_event(
        cli.json,
        json!({ "event": "listening", "endpoint": receiver.endpoint(), "target_id": added.target_id }),
        format!(
            "listening for wake-ups at {} (push target {}); this device is now offline; Ctrl-C stops",
            receiver.endpoint(),
            added.target_id
        ),
    );
    loop {
        let wake = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            wake = receiver.next() => match wake {
                Some(wake) => wake,
                None => break,
            },
        };
        let at = format_utc(wake.received_at_ms / 1000);
        let vapid = match &wake.vapid {
            Ok(_) => "verified".to_owned(),
            Err(e) => e.to_string(),
        };
        match &wake.payload {
            Ok(_) => print_event(
                cli.json,
                json!({ "event": "wake", "seq": wake.seq(), "received_at": at, "vapid": vapid }),
                match wake.seq() {
                    Some(seq) => {
                        format!("{at}  woken: messages queued up to {seq} (VAPID {vapid})")
                    }
                    None => format!("{at}  woken: new messages (VAPID {vapid})"),
                },
            ),
            Err(e) => print_event(
                cli.json,
                json!({ "event": "undecryptable", "error": e.to_string(), "received_at": at }),
                format!("{at}  a push message that does not decrypt: {e}"),
            ),
        }
    }
    if keep {
        return Ok(Output::nothing());
    }
    let connection = Connection::connect(config).await?;
    connection
        .authenticate_without_push(&device.identity.client, &device.identity.signing_key)
        .await?;
    connection.remove_push_target(added.target_id).await?;
    connection.close().await;
    Ok(Output::new(
        json!({ "event": "stopped", "removed": added.target_id }),
        format!("push target {} removed", added.target_id),
    ))
}

/// A claim as JSON and text, each KeyPackage's leaf credential verified against `keys`.
fn claim_output(claimed: &ClaimedKeyPackages, keys: &DomainKeys) -> Output {
    let crypto = RustCrypto::default();
    let mut text = format!("claimed for {}:", claimed.user_id);
    let claims: Vec<_> = claimed
        .claims
        .iter()
        .map(|claim| {
            let (kind, bytes) = match &claim.outcome {
                ClaimOutcome::KeyPackage(bytes) => ("key_package", Some(bytes.as_slice())),
                ClaimOutcome::LastResort(bytes) => ("last_resort", Some(bytes.as_slice())),
                ClaimOutcome::Unavailable => ("none", None),
            };
            let checked = bytes.map(|bytes| {
                let key_package = KeyPackageIn::tls_deserialize_exact(bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|key_package| {
                        key_package
                            .validate(&crypto, ProtocolVersion::Mls10)
                            .map_err(|e| e.to_string())
                    })?;
                let key_ref = key_package.hash_ref(&crypto).map_err(|e| e.to_string())?;
                let leaf = key_package.leaf_node();
                let identity = BasicCredential::try_from(leaf.credential().clone())
                    .map_err(|e| e.to_string())?;
                let credential = ClientCredential::tls_deserialize_exact(identity.identity())
                    .map_err(|e| e.to_string())?;
                let member =
                    verify_member(leaf.signature_key().as_slice(), &credential, keys, now())
                        .map_err(|e| e.to_string())?;
                if member != claim.client {
                    return Err(format!("the KeyPackage belongs to {member}"));
                }
                Ok(hex::encode(key_ref.as_slice()))
            });
            let (key_ref, verified, error) = match &checked {
                Some(Ok(key_ref)) => (Some(key_ref.clone()), true, None),
                Some(Err(e)) => (None, false, Some(e.clone())),
                None => (None, false, None),
            };
            text.push_str(&format!("\n  {}: {kind}", claim.client));
            if let Some(e) = &error {
                text.push_str(&format!(" (NOT VERIFIED: {e})"));
            }
            json!({
                "client_id": claim.client.to_string(),
                "kind": kind,
                "key_package_ref": key_ref,
                "verified": verified,
                "verification_error": error,
            })
        })
        .collect();
    Output::new(
        json!({ "user": claimed.user_id.as_str(), "claims": claims }),
        text,
    )
}

/// The domain of a user id.
fn user_domain(user: &str) -> anyhow::Result<&str> {
    user.rsplit_once('@')
        .map(|(_, domain)| domain)
        .with_context(|| format!("{user:?} is not USER@DOMAIN"))
}

/// `7` (a device of `me`'s user) or `alice@a.example/7`.
fn parse_client(text: &str, me: &ClientId) -> anyhow::Result<ClientId> {
    let (user, device) = match text.rsplit_once('/') {
        Some((user, device)) => (Text::new(user)?, device),
        None => (me.user_id.clone(), text),
    };
    let device_id = device
        .parse()
        .with_context(|| format!("{text:?} is not a device id or USER/DEVICE"))?;
    Ok(ClientId {
        user_id: user,
        device_id,
    })
}

fn now() -> u64 {
    SystemClock.now()
}

/// A credential as JSON, with the outcome of verifying it against `keys` now.
fn client_json(credential: &ClientCredential, keys: &DomainKeys) -> serde_json::Value {
    let verified = verify_credential(credential, keys, now());
    credential_json(credential, &verified)
}

fn credential_json(
    credential: &ClientCredential,
    verified: &Result<ClientId, CredentialError>,
) -> serde_json::Value {
    let content = &credential.content;
    json!({
        "client_id": content.client.to_string(),
        "user": content.client.user_id.as_str(),
        "device_id": content.client.device_id,
        "verified": verified.is_ok(),
        "verification_error": verified.as_ref().err().map(ToString::to_string),
        "signature_key": hex::encode(content.signature_key.as_slice()),
        "ciphersuite": content.ciphersuite,
        "not_before": json_time(content.not_before),
        "not_after": json_time(content.not_after),
        "issuer_key_id": content.issuer_key_id,
    })
}

fn user_clients_output(clients: &UserClients, keys: &DomainKeys, me: Option<&ClientId>) -> Output {
    let verified = verify_user_clients(clients, keys, now());
    let json = json!({
        "user": clients.user_id.as_str(),
        "clients": verified.iter().map(|client| {
            let mut entry = credential_json(&client.entry.credential, &client.verified);
            entry["added_at"] = json_time(client.entry.added_at);
            entry
        }).collect::<Vec<_>>(),
    });
    let mut text = format!("{} has {} client(s):", clients.user_id, verified.len());
    for client in &verified {
        let content = &client.entry.credential.content;
        let status = match &client.verified {
            Ok(_) => format!("verified, valid until {}", format_utc(content.not_after)),
            Err(e) => format!("NOT VERIFIED: {e}"),
        };
        let this = if me == Some(&content.client) {
            " (this device)"
        } else {
            ""
        };
        text.push_str(&format!("\n  {}{this}: {status}", content.client));
    }
    Output::new(json, text)
}

fn role_name(role: roost::protocol::Role) -> &'static str {
    match role {
        roost::protocol::Role::Admin => "admin",
        roost::protocol::Role::Member => "member",
    }
}

fn registration_name(mode: roost::protocol::RegistrationMode) -> &'static str {
    match mode {
        roost::protocol::RegistrationMode::Open => "open",
        roost::protocol::RegistrationMode::Closed => "closed",
        roost::protocol::RegistrationMode::Invite => "invite",
    }
}

/// A Unix time for JSON output: RFC 3339 UTC.
fn json_time(time: u64) -> serde_json::Value {
    json!(roost::clock::format_rfc3339(time))
}

async fn info(connection: &Connection, server_addr: SocketAddr) -> anyhow::Result<Output> {
    let info = connection.server_info().await?;
    let limits = info.limits;
    let keys: Vec<_> = info
        .credential_keys
        .iter()
        .map(|key| {
            json!({
                "key_id": key.key_id,
                "public_key": hex::encode(key.public_key.as_slice()),
                // `null` for the key that signs now.
                "valid_until": (key.valid_until != u64::MAX).then(|| json_time(key.valid_until)),
            })
        })
        .collect();
    let json = json!({
        "server": server_addr.to_string(),
        "domain": info.domain.as_str(),
        "protocol_version": info.protocol_version,
        "registration": registration_name(info.registration),
        "credential_keys": keys,
        "limits": {
            "max_request_len": limits.max_request_len,
            "max_response_len": limits.max_response_len,
            "max_notification_len": limits.max_notification_len,
            "max_concurrent_streams": limits.max_concurrent_streams,
            "idle_timeout_ms": limits.idle_timeout_ms,
            "request_timeout_ms": limits.request_timeout_ms,
        },
    });
    let mut text = format!(
        "server:                 {server_addr}\n\
         domain:                 {}\n\
         protocol version:       {}\n\
         registration:           {}\n\
         max request:            {} bytes\n\
         max response:           {} bytes\n\
         max notification:       {} bytes\n\
         max concurrent streams: {}\n\
         idle timeout:           {} ms\n\
         request timeout:        {} ms",
        info.domain,
        info.protocol_version,
        registration_name(info.registration),
        limits.max_request_len,
        limits.max_response_len,
        limits.max_notification_len,
        limits.max_concurrent_streams,
        limits.idle_timeout_ms,
        limits.request_timeout_ms,
    );
    for key in &info.credential_keys {
        let validity = match key.valid_until {
            u64::MAX => "current".to_owned(),
            until => format!("retired, verifies until {}", format_utc(until)),
        };
        text.push_str(&format!(
            "\ncredential key {}:       {} ({validity})",
            key.key_id,
            hex::encode(key.public_key.as_slice()),
        ));
    }
    Ok(Output::new(json, text))
}
