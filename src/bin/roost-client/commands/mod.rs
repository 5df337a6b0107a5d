//! One file per subcommand, each with a `run` that does the command and returns what it prints.
//! [`execute`] picks the file; [`Context`] carries what every command that talks to the server
//! needs.

mod add_client;
mod audit;
mod check_devices;
mod claim;
mod clients;
mod commit;
mod create_group;
mod delete_account;
mod delete_group;
mod groups;
mod info;
mod invite;
mod keypackages;
mod leave;
mod listen;
mod lookup;
mod members;
mod push_listen;
mod push_remove;
mod push_targets;
mod recv;
mod register;
mod remove;
mod remove_client;
mod renew_credential;
pub mod reset;
mod resync;
mod send;
mod set_role;
mod sync;

use std::net::SocketAddr;

use roost::client::groups::GroupClient;
use roost::client::{ClientConfig, Connection, PushStream};

use crate::device::{authenticate, Device, GroupNames};
use crate::output::Output;
use crate::{Cli, Command};

/// What a command that talks to the server works with.
pub struct Context<'a> {
    pub cli: &'a Cli,
    pub config: &'a ClientConfig,
    /// The connection `run` opened (not yet authenticated).
    pub connection: &'a Connection,
    pub server_addr: SocketAddr,
}

impl Context<'_> {
    /// Authenticates the connection as the device in `--state` (topping up its KeyPackages).
    async fn authenticate(&self) -> anyhow::Result<(Device, PushStream)> {
        authenticate(self.connection, &self.cli.state).await
    }

    /// The group id that `group` names (a local name or a hex id).
    fn group_id(&self, group: &str) -> anyhow::Result<Vec<u8>> {
        GroupNames::load(&self.cli.state)?.resolve(group)
    }
}

/// A command on a group of this device: authenticated, the group named, its flows ready.
struct InGroup<'a> {
    device: &'a Device,
    group_id: Vec<u8>,
    groups: GroupClient<'a>,
}

impl<'a> InGroup<'a> {
    async fn new(
        context: &Context<'a>,
        device: &'a Device,
        group: &str,
    ) -> anyhow::Result<InGroup<'a>> {
        Ok(Self {
            device,
            group_id: context.group_id(group)?,
            groups: device.groups(context.connection).await?,
        })
    }

    fn hex_id(&self) -> String {
        hex::encode(&self.group_id)
    }
}

/// What `invite` and `remove` do: add every device of a user to a group, or remove them.
#[derive(Clone, Copy)]
enum MembershipChange<'a> {
    Add { user: &'a str },
    Remove { user: &'a str },
}

/// `invite` and `remove`: changes who is in `group`, committing the pending proposals along;
/// prints the clients added or removed.
async fn change_membership(
    context: &Context<'_>,
    group: &str,
    change: MembershipChange<'_>,
) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let on = InGroup::new(context, &device, group).await?;
    let pending = on.groups.pending_proposals(&on.group_id)?;
    let changed = match change {
        MembershipChange::Add { user } => on.groups.invite(&on.group_id, user).await,
        MembershipChange::Remove { user } => on.groups.remove_user(&on.group_id, user).await,
    };
    let changed = crate::output::caught_up(&on.groups, context.cli.json, changed)?;
    on.device.save()?;
    let (key, preposition) = match change {
        MembershipChange::Add { .. } => ("added", "to"),
        MembershipChange::Remove { .. } => ("removed", "from"),
    };
    let changed: Vec<String> = changed.iter().map(ToString::to_string).collect();
    Ok(Output::new(
        serde_json::json!({ "group": on.hex_id(), key: changed, "pending_proposals_committed": pending }),
        format!(
            "{key} {} {preposition} {}{}",
            changed.join(", "),
            on.hex_id(),
            crate::output::also_committed(pending)
        ),
    ))
}

/// Runs the command on the command line.
pub async fn execute(context: &Context<'_>) -> anyhow::Result<Output> {
    match &context.cli.command {
        // Handled before connecting; here for completeness.
        Command::Reset => reset::run(&context.cli.state),
        Command::Info => info::run(context.connection, context.server_addr).await,
        Command::Register { user, invite } => register::run(context, user, invite).await,
        Command::Clients => clients::run(context).await,
        Command::AddClient { approve_from } => add_client::run(context, approve_from).await,
        Command::RemoveClient { client } => remove_client::run(context, client).await,
        Command::RenewCredential => renew_credential::run(context).await,
        Command::CheckDevices { accept } => check_devices::run(context, *accept).await,
        Command::Audit {
            once,
            interval_secs,
        } => audit::run(context, *once, *interval_secs).await,
        Command::Lookup { user } => lookup::run(context, user).await,
        Command::DeleteAccount => delete_account::run(context).await,
        Command::Keypackages => keypackages::run(context).await,
        Command::Recv { wait } => recv::run(context, *wait).await,
        Command::Listen => listen::run(context.cli, context.config, context.connection).await,
        Command::PushListen { listen, keep } => push_listen::run(context, *listen, *keep).await,
        Command::PushTargets => push_targets::run(context).await,
        Command::PushRemove { target_id } => push_remove::run(context, *target_id).await,
        Command::CreateGroup { name } => create_group::run(context, name.as_deref()).await,
        Command::Invite { group, user } => invite::run(context, group, user).await,
        Command::Send { group, text } => send::run(context, group, text).await,
        Command::Remove { group, user } => remove::run(context, group, user).await,
        Command::SetRole { group, user, role } => set_role::run(context, group, user, *role).await,
        Command::Leave { group } => leave::run(context, group).await,
        Command::Commit { group } => commit::run(context, group).await,
        Command::Sync => sync::run(context).await,
        Command::Resync { group } => resync::run(context, group).await,
        Command::DeleteGroup { group } => delete_group::run(context, group).await,
        Command::Members { group } => members::run(context, group).await,
        Command::Groups => groups::run(context).await,
        Command::Claim { user, ciphersuite } => claim::run(context, user, *ciphersuite).await,
    }
}
