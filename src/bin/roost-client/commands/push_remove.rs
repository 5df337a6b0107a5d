//! `push-remove`: removes one of this device's push targets.

use serde_json::json;

use super::Context;
use crate::output::Output;

pub async fn run(context: &Context<'_>, target_id: u64) -> anyhow::Result<Output> {
    let _ = context.authenticate().await?;
    context.connection.remove_push_target(target_id).await?;
    Ok(Output::new(
        json!({ "removed": target_id }),
        format!("push target {target_id} removed"),
    ))
}
