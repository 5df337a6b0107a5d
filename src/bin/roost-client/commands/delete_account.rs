//! `delete-account`: deletes this user, all its clients and all its data.

use anyhow::Context as _;
use roost::client::state::DeviceIdentity;
use serde_json::json;

use super::Context;
use crate::output::Output;

pub async fn run(context: &Context<'_>) -> anyhow::Result<Output> {
    let (state, connection) = (&context.cli.state, context.connection);
    let identity = DeviceIdentity::load(state)?;
    connection
        .authenticate(&identity.client, &identity.signing_key)
        .await
        .with_context(|| format!("authenticating as {}", identity.client))?;
    connection.delete_user().await?;
    DeviceIdentity::forget(state)?;
    Ok(Output::new(
        json!({ "deleted": identity.client.user_id.as_str() }),
        format!("deleted {} and all of its data", identity.client.user_id),
    ))
}
