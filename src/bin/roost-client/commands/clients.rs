//! `clients`: this user's clients, their credentials verified.

use super::Context;
use crate::output::{user_clients_output, Output};

pub async fn run(context: &Context<'_>) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let clients = context.connection.list_clients().await?;
    let keys = context.connection.domain_keys().await?;
    Ok(user_clients_output(
        &clients,
        &keys,
        Some(&device.identity.client),
    ))
}
