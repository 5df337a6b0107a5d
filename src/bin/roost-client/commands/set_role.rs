//! `set-role`: makes a user an Admin or a Member of a group (Admins only).

use serde_json::json;

use super::{Context, InGroup};
use crate::output::{caught_up, Output};
use crate::RoleArg;

pub async fn run(
    context: &Context<'_>,
    group: &str,
    user: &str,
    role: RoleArg,
) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let on = InGroup::new(context, &device, group).await?;
    let admin = matches!(role, RoleArg::Admin);
    let set = on.groups.set_role(&on.group_id, user, admin).await;
    caught_up(&on.groups, context.cli.json, set)?;
    on.device.save()?;
    let role = if admin { "admin" } else { "member" };
    Ok(Output::new(
        json!({ "group": on.hex_id(), "user": user, "role": role }),
        format!("{user} is now {role} of {}", on.hex_id()),
    ))
}
