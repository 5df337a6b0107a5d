//! `push-targets`: this device's push targets.

use roost::clock::format_utc;
use roost::protocol::PushTarget;
use serde_json::json;

use super::Context;
use crate::output::Output;

pub async fn run(context: &Context<'_>) -> anyhow::Result<Output> {
    let _ = context.authenticate().await?;
    let targets = context.connection.list_push_targets().await?;
    let mut text = Vec::new();
    let listed: Vec<serde_json::Value> = targets
        .iter()
        .map(|registered| {
            let (kind, place) = match &registered.target {
                PushTarget::WebPush(web) => ("web_push", web.endpoint.to_string()),
                PushTarget::Gateway(gateway) => (
                    "gateway",
                    format!("{} ({})", gateway.gateway_url, gateway.app_id),
                ),
            };
            let registered_at = format_utc(registered.registered_at);
            text.push(format!(
                "{}  {kind}  {place}  registered {registered_at}",
                registered.target_id
            ));
            json!({ "target_id": registered.target_id, "kind": kind, "target": place, "registered_at": registered_at })
        })
        .collect();
    if text.is_empty() {
        text.push("no push targets".into());
    }
    Ok(Output::new(
        json!({ "push_targets": listed }),
        text.join("\n"),
    ))
}
