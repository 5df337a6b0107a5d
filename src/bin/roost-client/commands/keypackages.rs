//! `keypackages`: this user's KeyPackage stock, after topping this device up.

use serde_json::json;

use super::Context;
use crate::output::Output;

pub async fn run(context: &Context<'_>) -> anyhow::Result<Output> {
    let _session = context.authenticate().await?;
    let status = context.connection.key_package_status().await?;
    let clients: Vec<_> = status
        .clients
        .iter()
        .map(|stock| {
            json!({
                "client_id": stock.client.to_string(),
                "remaining": stock.remaining,
                "has_last_resort": stock.has_last_resort.0,
            })
        })
        .collect();
    let mut text = format!(
        "KeyPackages (low watermark {}, at most {} per client):",
        status.low_watermark, status.max_per_client
    );
    for stock in &status.clients {
        let last_resort = if stock.has_last_resort.0 { "a" } else { "no" };
        text.push_str(&format!(
            "\n  {}: {} remaining, {last_resort} last resort",
            stock.client, stock.remaining
        ));
    }
    Ok(Output::new(
        json!({
            "low_watermark": status.low_watermark,
            "max_per_client": status.max_per_client,
            "clients": clients,
        }),
        text,
    ))
}
