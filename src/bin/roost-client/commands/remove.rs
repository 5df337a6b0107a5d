//! `remove`: removes every device of a user from a group (Admins only).

use super::{membership_output, Context, InGroup};
use crate::output::{caught_up, Output};

pub async fn run(context: &Context<'_>, group: &str, user: &str) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let on = InGroup::new(context, &device, group).await?;
    let pending = on.groups.pending_proposals(&on.group_id)?;
    let removed = on.groups.remove_user(&on.group_id, user).await;
    let removed = caught_up(&on.groups, context.cli.json, removed)?;
    on.device.save()?;
    Ok(membership_output(
        &on,
        &removed,
        pending,
        ("removed", "removed", "from"),
    ))
}
