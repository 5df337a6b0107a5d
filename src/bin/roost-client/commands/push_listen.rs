//! `push-listen`: a local Web Push receiver registered as this device's push target, which then
//! goes offline and prints each wake-up.

use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use roost::client::push_receiver::WebPushReceiver;
use roost::client::Connection;
use roost::clock::format_utc;
use roost::protocol::PushTarget;
use serde_json::json;

use super::Context;
use crate::output::{print_event, Output};

/// `push-listen`: a local Web Push receiver registered for this device, which then goes
/// offline, printing each wake-up until Ctrl-C.
pub async fn run(context: &Context<'_>, listen: SocketAddr, keep: bool) -> anyhow::Result<Output> {
    let (cli, connection) = (context.cli, context.connection);
    let (device, _push) = context.authenticate().await?;
    let info = connection.push_info().await?;
    if info.vapid_public_key.as_slice().is_empty() {
        bail!("the server sends no Web Push (it runs with --no-offline-push or --no-web-push)");
    }
    let mut receiver = WebPushReceiver::bind(listen, info.vapid_public_key.as_slice())
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let added = connection
        .add_push_target(PushTarget::WebPush(receiver.subscription()))
        .await
        .context("registering the receiver (does the server allow loopback push targets? `roost serve --push-allow-loopback`)")?;
    // Offline from here on: the server wakes this device through the receiver.
    connection
        .quic()
        .close(roost::protocol::close_code::NORMAL.into(), b"offline");
    print_event(
        cli.json,
        json!({ "event": "listening", "endpoint": receiver.endpoint(), "target_id": added.target_id }),
        format!(
            "listening for wake-ups at {} (push target {}); this device is now offline; Ctrl-C stops",
            receiver.endpoint(),
            added.target_id
        ),
    );
    loop {
        let wake = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            wake = receiver.next() => match wake {
                Some(wake) => wake,
                None => break,
            },
        };
        let at = format_utc(wake.received_at_ms / 1000);
        let vapid = match &wake.vapid {
            Ok(_) => "verified".to_owned(),
            Err(e) => e.to_string(),
        };
        match &wake.payload {
            Ok(_) => print_event(
                cli.json,
                json!({ "event": "wake", "seq": wake.seq(), "received_at": at, "vapid": vapid }),
                match wake.seq() {
                    Some(seq) => {
                        format!("{at}  woken: messages queued up to {seq} (VAPID {vapid})")
                    }
                    None => format!("{at}  woken: new messages (VAPID {vapid})"),
                },
            ),
            Err(e) => print_event(
                cli.json,
                json!({ "event": "undecryptable", "error": e.to_string(), "received_at": at }),
                format!("{at}  a push message that does not decrypt: {e}"),
            ),
        }
    }
    if keep {
        return Ok(Output::nothing());
    }
    let connection = Connection::connect(context.config).await?;
    connection
        .authenticate_without_push(&device.identity.client, &device.identity.signing_key)
        .await?;
    connection.remove_push_target(added.target_id).await?;
    connection.close().await;
    Ok(Output::new(
        json!({ "event": "stopped", "removed": added.target_id }),
        format!("push target {} removed", added.target_id),
    ))
}
