//! `resync`: rejoins a group by external commit in place of this device's own leaf.

use serde_json::json;

use super::{Context, InGroup};
use crate::output::Output;

pub async fn run(context: &Context<'_>, group: &str) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let on = InGroup::new(context, &device, group).await?;
    let epoch = on.groups.resync(&on.group_id).await;
    on.device.save()?;
    let epoch = epoch?;
    Ok(Output::new(
        json!({ "group": on.hex_id(), "epoch": epoch }),
        format!("rejoined {} at epoch {epoch}", on.hex_id()),
    ))
}
