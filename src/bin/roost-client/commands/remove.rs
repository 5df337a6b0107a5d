//! `remove`: removes every device of a user from a group (Admins only).

use serde_json::json;

use super::{Context, InGroup};
use crate::output::{also_committed, caught_up, Output};

pub async fn run(context: &Context<'_>, group: &str, user: &str) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let on = InGroup::new(context, &device, group).await?;
    let pending = on.groups.pending_proposals(&on.group_id)?;
    let removed = on.groups.remove_user(&on.group_id, user).await;
    let removed = caught_up(&on.groups, context.cli.json, removed)?;
    on.device.save()?;
    let removed: Vec<String> = removed.iter().map(ToString::to_string).collect();
    Ok(Output::new(
        json!({ "group": on.hex_id(), "removed": removed, "pending_proposals_committed": pending }),
        format!(
            "removed {} from {}{}",
            removed.join(", "),
            on.hex_id(),
            also_committed(pending)
        ),
    ))
}
