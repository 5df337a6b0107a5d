//! `roost admin`: asks the server running on a data directory, over its admin socket.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use roost::admin::{AdminClient, AdminClientError};
use roost::protocol::admin::{
    AdminRequest, Backup, FederationStatus, InviteCreated, InviteInfo, Invites, QueuesTop, Status,
    UserDeleted, UserDetails, UsersPage, DEFAULT_ADMIN_PAGE, MAX_ADMIN_PAGE,
};

/// Which server an operator command is for, and how it prints.
#[derive(Args)]
pub struct OperatorTarget {
    /// The data directory of the server.
    #[arg(
        long,
        env = "ROOST_DATA_DIR",
        default_value = "./roost-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Print the result as one JSON document (errors as {"error": {"code", "message"}}).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Args)]
pub struct AdminArgs {
    #[command(flatten)]
    target: OperatorTarget,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Version, uptime, counts and store size.
    Status,
    /// Users: list, show, delete.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Invite codes: create, list, revoke.
    Invites {
        #[command(subcommand)]
        command: InvitesCommand,
    },
    /// Peer homeservers.
    Federation {
        #[command(subcommand)]
        command: FederationCommand,
    },
    /// Client queues.
    Queues {
        #[command(subcommand)]
        command: QueuesCommand,
    },
    /// Write a consistent copy of the data directory (database and keys) into a new directory
    /// while the server runs; restore by serving from it (`roost serve --data-dir DIR`).
    Backup {
        /// The directory to create (must not exist, or be empty).
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Users in id order, a page at a time.
    List {
        /// Start after this user id (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = DEFAULT_ADMIN_PAGE, value_parser = clap::value_parser!(u32).range(1..=MAX_ADMIN_PAGE as i64))]
        limit: u32,
    },
    /// One user: its clients, their queues, KeyPackages and push targets.
    Show { user_id: String },
    /// Delete a user and all of its data (cannot be undone).
    Delete {
        user_id: String,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
pub enum InvitesCommand {
    /// Print a new invite code.
    Create {
        /// How many users the code may register.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        uses: u32,
        /// Days until the code expires.
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..=3650))]
        valid_days: u64,
    },
    /// Every invite issued, with its uses and state.
    List,
    /// Revoke an invite: it registers nobody from now on.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum FederationCommand {
    /// Each peer: connected, deliveries waiting, last error, next attempt.
    Status,
}

#[derive(Subcommand)]
enum QueuesCommand {
    /// The largest client queues.
    Top {
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=MAX_ADMIN_PAGE as i64))]
        limit: u32,
    },
}

/// Runs an admin command; prints its result. Errors are printed by the caller, or as JSON here.
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let json = args.target.json;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(run_command(args)) {
        Ok(()) => Ok(()),
        Err(e) if json => {
            let (code, message) = match &e {
                AdminClientError::Refused(refusal) => {
                    (refusal.code.clone(), refusal.message.clone())
                }
                AdminClientError::Failed(e) => ("unreachable".to_owned(), format!("{e:#}")),
            };
            println!(
                "{}",
                serde_json::json!({ "error": { "code": code, "message": message } })
            );
            Err(anyhow::anyhow!("{message}"))
        }
        Err(e) => Err(e.into()),
    }
}

async fn run_command(args: AdminArgs) -> Result<(), AdminClientError> {
    let json = args.target.json;
    if let AdminCommand::Users {
        command: UsersCommand::Delete {
            yes: false,
            user_id,
        },
    } = &args.command
    {
        return Err(anyhow::anyhow!(
            "deleting {user_id} removes the account and all of its data for good: add --yes"
        )
        .into());
    }
    let admin = AdminClient::for_data_dir(&args.target.data_dir)?;
    match args.command {
        AdminCommand::Status => {
            let status: Status = admin.request(&AdminRequest::Status).await?;
            print(json, &status, print_status)
        }
        AdminCommand::Users { command } => match command {
            UsersCommand::List { after, limit } => {
                let page: UsersPage = admin
                    .request(&AdminRequest::UsersList { after, limit })
                    .await?;
                print(json, &page, |page| {
                    if page.users.is_empty() {
                        println!("no users");
                    }
                    for user in &page.users {
                        let devices = plural(u64::from(user.clients), "client");
                        println!(
                            "{}  {devices}  since {}",
                            user.user_id,
                            human(&user.created_at)
                        );
                    }
                    if let Some(next) = &page.next_after {
                        println!("more: --after {next}");
                    }
                })
            }
            UsersCommand::Show { user_id } => {
                let user: UserDetails = admin.request(&AdminRequest::UserShow { user_id }).await?;
                print(json, &user, print_user)
            }
            UsersCommand::Delete { user_id, .. } => {
                let deleted: UserDeleted =
                    admin.request(&AdminRequest::UserDelete { user_id }).await?;
                print(json, &deleted, |deleted| {
                    println!(
                        "deleted {} and its {}",
                        deleted.user_id,
                        plural(u64::from(deleted.clients), "client")
                    )
                })
            }
        },
        AdminCommand::Invites { command } => run_invites(&admin, command, json).await,
        AdminCommand::Federation {
            command: FederationCommand::Status,
        } => {
            let status: FederationStatus = admin.request(&AdminRequest::FederationStatus).await?;
            print(json, &status, print_federation)
        }
        AdminCommand::Queues {
            command: QueuesCommand::Top { limit },
        } => {
            let top: QueuesTop = admin.request(&AdminRequest::QueuesTop { limit }).await?;
            print(json, &top, |top| {
                if top.queues.is_empty() {
                    println!("no messages are waiting");
                }
                for queue in &top.queues {
                    let oldest = when("  ", "oldest", queue.oldest_queued_at.as_deref());
                    println!(
                        "{} device {}  {}  {} bytes{oldest}",
                        queue.user_id,
                        queue.device_id,
                        plural(queue.messages, "message"),
                        queue.bytes
                    );
                }
            })
        }
        AdminCommand::Backup { to } => {
            let backup: Backup = admin.backup(&to).await?;
            print(json, &backup, |backup| {
                let bytes: u64 = backup.files.iter().map(|file| file.bytes).sum();
                println!(
                    "backup of {} written to {}: {} ({bytes} bytes); restore with `roost serve --data-dir {}`",
                    human(&backup.taken_at),
                    to.display(),
                    plural(backup.files.len() as u64, "file"),
                    to.display()
                );
            })
        }
    }
}

/// The invite commands, also reached as `roost invite ...`.
pub async fn run_invites(
    admin: &AdminClient,
    command: InvitesCommand,
    json: bool,
) -> Result<(), AdminClientError> {
    match command {
        InvitesCommand::Create { uses, valid_days } => {
            let invite: InviteCreated = admin
                .request(&AdminRequest::InvitesCreate { uses, valid_days })
                .await?;
            print(json, &invite, |invite| println!("{}", invite.code))
        }
        InvitesCommand::List => {
            let invites: Invites = admin.request(&AdminRequest::InvitesList).await?;
            print(json, &invites, |invites| {
                if invites.invites.is_empty() {
                    println!("no invites");
                }
                for invite in &invites.invites {
                    print_invite(invite);
                }
            })
        }
        InvitesCommand::Revoke { id } => {
            let invite: InviteInfo = admin.request(&AdminRequest::InvitesRevoke { id }).await?;
            print(json, &invite, print_invite)
        }
    }
}

fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce(&T),
) -> Result<(), AdminClientError> {
    if json {
        println!(
            "{}",
            serde_json::to_string(value).map_err(anyhow::Error::from)?
        );
    } else {
        text(value);
    }
    Ok(())
}

/// An RFC 3339 time as people read it: `2026-11-29 10:00:00 UTC`.
fn human(rfc3339: &str) -> String {
    match rfc3339.strip_suffix('Z') {
        Some(time) => format!("{} UTC", time.replacen('T', " ", 1)),
        None => rfc3339.to_owned(),
    }
}

/// `{label} {time}` after `separator` when there is a time, else nothing: `, oldest 2026-...`.
fn when(separator: &str, label: &str, time: Option<&str>) -> String {
    time.map_or(String::new(), |at| {
        format!("{separator}{label} {}", human(at))
    })
}

fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

fn print_status(status: &Status) {
    let uptime = status.uptime_secs;
    println!(
        "roost {} serving {} on {}",
        status.version, status.domain, status.listen
    );
    println!(
        "up {}d {:02}h {:02}m {:02}s, since {}",
        uptime / 86_400,
        uptime / 3600 % 24,
        uptime / 60 % 60,
        uptime % 60,
        human(&status.started_at)
    );
    println!("data directory {}", status.data_dir);
    println!("registration {}", status.registration);
    println!(
        "{}, {}, {} connected, {}",
        plural(status.users, "user"),
        plural(status.clients, "client"),
        status.connected_clients,
        plural(status.groups, "group")
    );
    println!(
        "queued: {} ({} bytes); waiting for peers: {}",
        plural(status.queued_messages, "message"),
        status.queued_bytes,
        plural(status.outbox_waiting, "delivery").replace("deliverys", "deliveries")
    );
    println!("active invites: {}", status.invites_active);
    println!("database: {} bytes", status.store_bytes);
}

fn print_user(user: &UserDetails) {
    println!("{}  since {}", user.user_id, human(&user.created_at));
    println!("group memberships: {}", user.group_memberships);
    for client in &user.clients {
        println!(
            "  device {}: added {}, credential until {}, {}",
            client.device_id,
            human(&client.added_at),
            human(&client.credential_expires_at),
            if client.connected {
                "connected"
            } else {
                "not connected"
            }
        );
        let oldest = when(", ", "oldest", client.oldest_queued_at.as_deref());
        println!(
            "    queue: {} ({} bytes){oldest}",
            plural(client.queued_messages, "message"),
            client.queued_bytes
        );
        println!(
            "    KeyPackages: {}{}; push targets: {}",
            client.key_packages,
            if client.last_resort_key_package {
                " + last resort"
            } else {
                ""
            },
            client.push_targets
        );
    }
}

fn print_invite(invite: &InviteInfo) {
    let revoked = when(", ", "revoked", invite.revoked_at.as_deref());
    println!(
        "{}  {}  used {} of {}, created {}, expires {}{revoked}",
        invite.id,
        invite.state,
        invite.used,
        invite.max_uses,
        human(&invite.created_at),
        human(&invite.expires_at)
    );
}

fn print_federation(status: &FederationStatus) {
    if !status.enabled {
        println!("federation is off (no --peer, --peer-ca or --peer-cert)");
        return;
    }
    if status.peers.is_empty() {
        println!("no peers");
    }
    for peer in &status.peers {
        println!(
            "{} ({}): {}, {} waiting",
            peer.domain,
            peer.address.as_deref().unwrap_or("no longer a --peer"),
            if peer.connected {
                "connected"
            } else {
                "not connected"
            },
            peer.waiting
        );
        let lines = [
            ("oldest waiting since", &peer.oldest_waiting_since),
            ("last delivery", &peer.last_delivery_at),
            ("last error at", &peer.last_error_at),
            ("next attempt", &peer.next_attempt_at),
        ];
        for (label, time) in lines {
            if let Some(time) = time {
                println!("  {label} {}", human(time));
            }
        }
        if let Some(error) = &peer.last_error {
            println!("  last error: {error}");
        }
    }
}

/// `roost invite create` with no server running: records the invite in the store directly.
pub fn create_invite_offline(
    data_dir: &Path,
    store: Option<roost::store::StoreLocation>,
    uses: u32,
    valid_days: u64,
    json: bool,
) -> anyhow::Result<()> {
    use roost::clock::{Clock, SystemClock, SECONDS_PER_DAY};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let database = data_dir.join(roost::store::DATABASE_FILE);
    let location = match store {
        Some(location) => location,
        None if database.is_file() => roost::store::StoreLocation::Redb(database),
        None => anyhow::bail!(
            "{} holds the keys of a node whose data is elsewhere: give its --store (or ROOST_STORE), or run this while a node serves",
            data_dir.display()
        ),
    };
    runtime.block_on(async {
        let store =
            tokio::task::spawn_blocking(move || roost::store::Store::open_at(&location)).await??;
        let key = roost::services::invites::InviteKey::load_or_create(data_dir)?;
        let now = SystemClock.now();
        let expires_at = now + valid_days * SECONDS_PER_DAY;
        let issued = roost::services::invites::issue(&key, &store, now, expires_at, uses).await;
        store.close().await;
        let (code, id) = issued?;
        let created = InviteCreated {
            code,
            id,
            expires_at: roost::clock::format_rfc3339(expires_at),
            max_uses: uses,
        };
        print(json, &created, |created| println!("{}", created.code))
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
}
