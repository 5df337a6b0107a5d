//! `invite`: adds every device of a user to a group (Admins only).

use super::{membership_output, Context, InGroup};
use crate::output::{caught_up, Output};

pub async fn run(context: &Context<'_>, group: &str, user: &str) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let on = InGroup::new(context, &device, group).await?;
    let pending = on.groups.pending_proposals(&on.group_id)?;
    let invited = on.groups.invite(&on.group_id, user).await;
    let invited = caught_up(&on.groups, context.cli.json, invited)?;
    on.device.save()?;
    Ok(membership_output(
        &on,
        &invited,
        pending,
        ("added", "added", "to"),
    ))
}
