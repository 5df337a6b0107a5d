//! `recv`: fetches, prints and acknowledges this device's queued messages, waiting a while for
//! one if there are none.

use std::time::Duration;

use anyhow::bail;
use roost::protocol::Notification;
use serde_json::json;

use super::Context;
use crate::output::Output;
use crate::queue_reader::QueueReader;

pub async fn run(context: &Context<'_>, wait: u64) -> anyhow::Result<Output> {
    let (device, mut push) = context.authenticate().await?;
    let mut reader = QueueReader::new(context.connection, &device, context.cli.json).await?;
    let mut received = reader.catch_up().await?;
    if received == 0 && wait > 0 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        while let Ok(Some(notification)) = tokio::time::timeout_at(deadline, push.next()).await {
            received += match notification? {
                Notification::NewMessages(hint) => reader.on_hint(&hint).await?,
                Notification::GroupLogAppended(hint) => reader.on_log_hint(&hint).await?,
                _ => 0,
            };
            if received > 0 {
                break;
            }
        }
    }
    if reader.unprocessable > 0 {
        bail!(
            "{} message(s) could never be processed and were dropped (see above)",
            reader.unprocessable
        );
    }
    Ok(if received == 0 {
        Output::new(json!({ "event": "no_messages" }), "no messages".to_owned())
    } else {
        Output::nothing()
    })
}
