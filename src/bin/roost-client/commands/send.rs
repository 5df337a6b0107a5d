//! `send`: a text message to a group.

use serde_json::json;

use super::{Context, InGroup};
use crate::output::{caught_up, Output};

pub async fn run(context: &Context<'_>, group: &str, text: &str) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let on = InGroup::new(context, &device, group).await?;
    let sent = on.groups.send(&on.group_id, text.as_bytes()).await;
    let committed = caught_up(&on.groups, context.cli.json, sent)?;
    on.device.save()?;
    let group = on.hex_id();
    Ok(Output::new(
        json!({ "group": group, "sent": text, "committed_epoch": committed }),
        match committed {
            // MLS sends nothing over pending proposals: they went first.
            Some(epoch) => {
                format!("sent to {group}, after committing what was pending (epoch {epoch})")
            }
            None => format!("sent to {group}"),
        },
    ))
}
