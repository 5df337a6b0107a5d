//! `listen`: stays connected and prints messages as they arrive, connecting again after a loss.

use std::time::Duration;

use roost::client::{ClientConfig, ClientError, Connection};
use roost::protocol::Notification;
use serde_json::json;

use crate::device::authenticate;
use crate::output::{print_event, Output};
use crate::queue_reader::QueueReader;
use crate::{connect, Cli};

/// Why one `listen` session on a connection ended.
enum ListenEnd {
    /// Ctrl-C, or this device was removed: stop.
    Stop,
    /// The connection went away (the server restarted, the network failed): reconnect.
    Lost(String),
}

/// First and longest wait before `listen` connects again.
const RECONNECT_FIRST: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// `listen`: prints messages as they arrive until Ctrl-C or this device is removed; when the
/// connection is lost (a server restart), connects again with growing pauses and catches up.
pub async fn run(cli: &Cli, config: &ClientConfig, first: &Connection) -> anyhow::Result<Output> {
    let mut own: Option<Connection> = None;
    loop {
        let connection = own.as_ref().unwrap_or(first);
        let reason = match listen_on(cli, connection).await? {
            ListenEnd::Stop => break,
            ListenEnd::Lost(reason) => reason,
        };
        let mut delay = RECONNECT_FIRST;
        let mut reason = reason;
        let reconnected = loop {
            print_event(
                cli.json,
                json!({ "event": "reconnecting", "reason": reason, "retry_in_ms": delay.as_millis() as u64 }),
                format!(
                    "connection lost ({reason}); connecting again in {:.1} s",
                    delay.as_secs_f64()
                ),
            );
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break None,
                _ = tokio::time::sleep(delay) => {}
            }
            match connect(config, cli).await {
                Ok(connection) => break Some(connection),
                Err(e) => {
                    reason = format!("{e:#}");
                    delay = (delay * 2).min(RECONNECT_MAX);
                }
            }
        };
        let Some(connection) = reconnected else { break };
        if let Some(old) = own.replace(connection) {
            old.close().await;
        }
        print_event(
            cli.json,
            json!({ "event": "reconnected" }),
            "connected again".to_owned(),
        );
    }
    if let Some(own) = own {
        own.close().await;
    }
    Ok(Output::nothing())
}

/// Whether `error` is the connection going away (worth connecting again), not a refusal.
fn is_connection_loss(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<ClientError>())
        .any(|e| {
            matches!(
                e,
                ClientError::Connection(_) | ClientError::Stream(_) | ClientError::Connect(_)
            )
        })
}

/// One `listen` session on `connection`: authenticate, catch up, print what is pushed.
async fn listen_on(cli: &Cli, connection: &Connection) -> anyhow::Result<ListenEnd> {
    let session = async {
        let (device, mut push) = authenticate(connection, &cli.state).await?;
        let mut reader = QueueReader::new(connection, &device, cli.json).await?;
        reader.catch_up().await?;
        loop {
            let notification = tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(ListenEnd::Stop),
                notification = push.next() => match notification {
                    Some(notification) => notification?,
                    None => return Ok(ListenEnd::Lost("the server closed the connection".into())),
                },
            };
            match notification {
                Notification::NewMessages(hint) => {
                    reader.on_hint(&hint).await?;
                }
                Notification::GroupLogAppended(hint) => {
                    reader.on_log_hint(&hint).await?;
                }
                Notification::KeyPackagesLow(low) => {
                    let published = device.top_up(connection).await?;
                    print_event(
                        cli.json,
                        json!({ "event": "key_packages_low", "remaining": low.remaining, "published": published }),
                        format!(
                            "KeyPackages ran low ({} left); published {published}",
                            low.remaining
                        ),
                    );
                }
                Notification::ClientRemoved(client) => {
                    print_event(
                        cli.json,
                        json!({ "event": "client_removed", "client_id": client.to_string() }),
                        format!("this device ({client}) was removed"),
                    );
                    return Ok(ListenEnd::Stop);
                }
                Notification::ServerShutdown(notice) => {
                    print_event(
                        cli.json,
                        json!({ "event": "server_shutdown", "reason": notice.reason.as_str() }),
                        format!("the server is shutting down: {}", notice.reason),
                    );
                    return Ok(ListenEnd::Lost(format!(
                        "the server shut down: {}",
                        notice.reason
                    )));
                }
            }
        }
    };
    match session.await {
        Err(e) if is_connection_loss(&e) => Ok(ListenEnd::Lost(format!("{e:#}"))),
        other => other,
    }
}
