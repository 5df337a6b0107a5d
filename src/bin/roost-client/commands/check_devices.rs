//! `check-devices`: reads this user's whole history in the server's transparency log, proved
//! against the newest head, and reports every device bound since this one that it did not add
//! or accept: a device someone else (another of the user's devices, or whoever controls the
//! server) made.

use serde_json::json;

use super::Context;
use crate::device::KnownDevices;
use crate::output::Output;

pub async fn run(context: &Context<'_>, accept: bool) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let state = &context.cli.state;
    let known = KnownDevices::load(state)?;
    let keys = context.connection.domain_keys().await?;
    let unexpected = device
        .transparency()?
        .own_history(
            context.connection,
            &device.identity.credential,
            &keys,
            &known.keys(),
        )
        .await?;
    let reported: Vec<serde_json::Value> = unexpected
        .iter()
        .map(|binding| {
            json!({
                "client": binding.credential.content.client.to_string(),
                "signature_key": hex::encode(binding.credential.content.signature_key.as_slice()),
                "change": format!("{:?}", binding.change).to_lowercase(),
                "log_index": binding.index,
            })
        })
        .collect();
    let text = match unexpected.is_empty() {
        true => "no device of this user that this device did not add".to_owned(),
        false => unexpected
            .iter()
            .map(|binding| {
                format!(
                    "NOT ADDED BY THIS DEVICE: {} key {} ({:?} at log entry {})",
                    binding.credential.content.client,
                    hex::encode(binding.credential.content.signature_key.as_slice()),
                    binding.change,
                    binding.index
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    };
    if accept {
        let accepted: Vec<&[u8]> = unexpected
            .iter()
            .map(|binding| binding.credential.content.signature_key.as_slice())
            .collect();
        known.add(&accepted, state)?;
    }
    Ok(Output::new(
        json!({ "unexpected": reported, "accepted": accept && !unexpected.is_empty() }),
        text,
    ))
}
