//! `sync`: joins, by external commit, every group of this device's user that it is not in.

use serde_json::json;

use super::Context;
use crate::output::{joined_output, not_joined_text, Output};

pub async fn run(context: &Context<'_>) -> anyhow::Result<Output> {
    let (device, _push) = context.authenticate().await?;
    let groups = device.groups(context.connection).await?;
    let joined = groups.join_user_groups().await;
    device.save()?;
    let (joined, not_joined) = joined_output(joined?);
    Ok(Output::new(
        json!({ "joined": joined, "not_joined": not_joined }),
        format!(
            "joined {} group(s){}",
            joined.len(),
            not_joined_text(&not_joined)
        ),
    ))
}
