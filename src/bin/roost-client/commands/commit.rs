//! `commit`: commits the proposals pending in a group.

use serde_json::json;

use super::{Context, InGroup};
use crate::output::{caught_up, Output};

pub async fn run(context: &Context<'_>, group: &str) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let on = InGroup::new(context, &device, group).await?;
    let epoch = on.groups.commit_pending(&on.group_id).await;
    let epoch = caught_up(&on.groups, context.cli.json, epoch)?;
    on.device.save()?;
    Ok(Output::new(
        json!({ "group": on.hex_id(), "epoch": epoch }),
        format!("group {} is at epoch {epoch}", on.hex_id()),
    ))
}
