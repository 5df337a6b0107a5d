//! `invite`: adds every device of a user to a group (Admins only).

use serde_json::json;

use super::{Context, InGroup};
use crate::output::{also_committed, caught_up, Output};

pub async fn run(context: &Context<'_>, group: &str, user: &str) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let on = InGroup::new(context, &device, group).await?;
    let pending = on.groups.pending_proposals(&on.group_id)?;
    let invited = on.groups.invite(&on.group_id, user).await;
    let invited = caught_up(&on.groups, context.cli.json, invited)?;
    on.device.save()?;
    let invited: Vec<String> = invited.iter().map(ToString::to_string).collect();
    Ok(Output::new(
        json!({ "group": on.hex_id(), "added": invited, "pending_proposals_committed": pending }),
        format!(
            "added {} to {}{}",
            invited.join(", "),
            on.hex_id(),
            also_committed(pending)
        ),
    ))
}
