//! `create-group`: a group with this device as its only member and Admin.

use serde_json::json;

use super::Context;
use crate::device::GroupNames;
use crate::output::Output;

pub async fn run(context: &Context<'_>, name: Option<&str>) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let group_id = device
        .groups(context.connection)
        .await?
        .create_group()
        .await?;
    device.save()?;
    let group = hex::encode(&group_id);
    if let Some(name) = name {
        let state = &context.cli.state;
        GroupNames::load(state)?.insert(name, &group, state)?;
    }
    Ok(Output::new(json!({ "group": group }), group))
}
