//! `register`: a new user, with the device in `--state` as its first client.

use anyhow::bail;
use ed25519_dalek::SigningKey;
use roost::client::state::DeviceIdentity;
use serde_json::json;

use super::Context;
use crate::device::Device;
use crate::output::{client_json, Output};
use crate::DEFAULT_CIPHERSUITE;

pub async fn run(
    context: &Context<'_>,
    user: &str,
    invite: &Option<String>,
) -> anyhow::Result<Output> {
    let (state, connection) = (&context.cli.state, context.connection);
    if DeviceIdentity::exists(state) {
        bail!(
            "{} already holds an identity; use another --state directory",
            state.display()
        );
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let registered = connection
        .register_user(user, &key, DEFAULT_CIPHERSUITE, invite.as_deref())
        .await?;
    let identity = DeviceIdentity::new(registered, key, DEFAULT_CIPHERSUITE);
    identity.save_new(state)?;
    connection
        .authenticate(&identity.client, &identity.signing_key)
        .await?;
    // A new device reads the messages of groups hosted here from their logs.
    connection.use_group_logs().await?;
    let device = Device::new(identity, state)?;
    let published = device.top_up(connection).await?;
    let identity = &device.identity;
    let keys = connection.domain_keys().await?;
    Ok(Output::new(
        json!({
            "registered": client_json(&identity.credential, &keys),
            "key_packages_published": published,
        }),
        format!(
            "registered {} as client {} and published {published} KeyPackages",
            identity.client.user_id, identity.client
        ),
    ))
}
