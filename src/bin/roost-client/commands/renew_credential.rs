//! `renew-credential`: a fresh credential for this device.

use roost::clock::format_utc;
use serde_json::json;

use super::Context;
use crate::output::{client_json, Output};

pub async fn run(context: &Context<'_>) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let connection = context.connection;
    let mut identity = device.identity.clone();
    identity.credential = connection.renew_credential().await?;
    identity.save(&context.cli.state)?;
    let keys = connection.domain_keys().await?;
    Ok(Output::new(
        json!({ "renewed": client_json(&identity.credential, &keys) }),
        format!(
            "renewed the credential of {}: valid until {}",
            identity.client,
            format_utc(identity.credential.content.not_after)
        ),
    ))
}
