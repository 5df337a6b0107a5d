//! `lookup`: a user's clients, verified against the keys of the user's own homeserver.

use super::Context;
use crate::device::user_domain;
use crate::output::{user_clients_output, Output};

pub async fn run(context: &Context<'_>, user: &str) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let clients = context.connection.lookup_user(user).await?;
    // Verified against the keys of the user's own homeserver (through ours).
    let keys = context
        .connection
        .domain_keys_of(user_domain(user)?)
        .await?;
    Ok(user_clients_output(
        &clients,
        &keys,
        Some(&device.identity.client),
    ))
}
