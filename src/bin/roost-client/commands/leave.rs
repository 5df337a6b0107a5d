//! `leave`: proposes this device's removal from a group (the next commit completes it).

use serde_json::json;

use super::{Context, InGroup};
use crate::output::{caught_up, Output};

pub async fn run(context: &Context<'_>, group: &str) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let on = InGroup::new(context, &device, group).await?;
    let left = on.groups.leave(&on.group_id).await;
    caught_up(&on.groups, context.cli.json, left)?;
    on.device.save()?;
    Ok(Output::new(
        json!({ "group": on.hex_id(), "left": true }),
        format!("left {} (the next commit removes this device)", on.hex_id()),
    ))
}
