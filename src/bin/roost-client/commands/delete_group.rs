//! `delete-group`: deletes a group (Admins only).

use serde_json::json;

use super::{Context, InGroup};
use crate::output::Output;

pub async fn run(context: &Context<'_>, group: &str) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let on = InGroup::new(context, &device, group).await?;
    on.groups.delete_group(&on.group_id).await?;
    on.device.save()?;
    Ok(Output::new(
        json!({ "group": on.hex_id(), "deleted": true }),
        format!("deleted group {}", on.hex_id()),
    ))
}
