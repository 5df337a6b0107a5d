//! `add-client`: makes `--state` a new device of the user of an existing device, which approves
//! it; the new device publishes its KeyPackages and joins the user's groups.

use std::path::Path;

use anyhow::bail;
use ed25519_dalek::SigningKey;
use roost::client::state::DeviceIdentity;
use roost::client::{add_client_request, Connection};
use serde_json::json;

use super::Context;
use crate::device::{authenticate, Device, KnownDevices};
use crate::output::{client_json, joined_output, not_joined_text, Output};

pub async fn run(context: &Context<'_>, approve_from: &Path) -> anyhow::Result<Output> {
    let (state, connection) = (&context.cli.state, context.connection);
    if DeviceIdentity::exists(state) {
        bail!("{} already holds an identity", state.display());
    }
    let (approver, _push) = authenticate(connection, approve_from).await?;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let request = add_client_request(
        approver.identity.client.user_id.as_str(),
        &key,
        approver.identity.ciphersuite,
    );
    let added = connection.add_client(request).await?;
    // The approver vouches for the new device: its own transparency checks expect it.
    let new_key = key.verifying_key().to_bytes();
    KnownDevices::load(approve_from)?.add(&[new_key.as_slice()], approve_from)?;
    let identity = DeviceIdentity::new(added, key, approver.identity.ciphersuite);
    identity.save_new(state)?;
    let device = Device::new(identity, state)?;
    let identity = &device.identity;
    // The new device publishes its own KeyPackages, on its own connection.
    let own = Connection::connect(context.config).await?;
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
    Ok(Output::new(
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
    ))
}
