//! `remove-client`: removes one of this user's clients (this one too, which forgets itself).

use roost::client::state::DeviceIdentity;
use serde_json::json;

use super::Context;
use crate::device::parse_client;
use crate::output::Output;

pub async fn run(context: &Context<'_>, client: &str) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let identity = &device.identity;
    let target = parse_client(client, &identity.client)?;
    context.connection.remove_client(&target).await?;
    if target == identity.client {
        DeviceIdentity::forget(&context.cli.state)?;
    }
    Ok(Output::new(
        json!({ "removed": target.to_string() }),
        format!("removed client {target}"),
    ))
}
