//! Reads this device's queue and its group logs, processes what arrives, prints it and
//! acknowledges it (for `recv` and `listen`).

use std::time::Duration;

use roost::client::groups::{is_transient, GroupClient};
use roost::client::queue::{HintAction, QueuePosition};
use roost::client::Connection;
use roost::protocol::{
    ErrorCode, GroupLogAppended, MessageKind, NewMessages, QueuedMessage, ServerNotice,
};
use serde_json::json;
use tls_codec::Deserialize as _;

use crate::device::Device;
use crate::output::{group_event_output, print_event};

/// Messages fetched per request while draining the queue.
pub const FETCH_BATCH: u32 = 100;

/// Reads this device's queue: processes what it fetches or is pushed (MLS messages and
/// Welcomes through the device's groups, server notices as notices), prints it (one JSON object
/// per line with `--json`; application messages as `GROUP SENDER TEXT`), keeps the device's
/// state, and acknowledges it.
pub struct QueueReader<'a> {
    connection: &'a Connection,
    device: &'a Device,
    json: bool,
    groups: GroupClient<'a>,
    groups_made: std::time::Instant,
    position: QueuePosition,
    /// Messages dropped because they can never be processed.
    pub unprocessable: usize,
}

impl<'a> QueueReader<'a> {
    /// How long the reader verifies members with the same server keys and clock reading.
    pub const GROUPS_REFRESH: Duration = Duration::from_secs(60);

    pub async fn new(
        connection: &'a Connection,
        device: &'a Device,
        json: bool,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            connection,
            device,
            json,
            groups: device.groups(connection).await?,
            groups_made: std::time::Instant::now(),
            position: QueuePosition::default(),
            unprocessable: 0,
        })
    }

    /// Fetches and processes until the queue is empty. Returns how many messages there were.
    pub async fn catch_up(&mut self) -> anyhow::Result<usize> {
        let mut received = 0;
        loop {
            let fetched = self
                .connection
                .fetch_messages(0, FETCH_BATCH, 1 << 20)
                .await?;
            self.position.caught_up(&fetched);
            if fetched.messages.is_empty() {
                return Ok(received + self.catch_up_logs().await?);
            }
            received += fetched.messages.len();
            self.process(&fetched.messages).await?;
        }
    }

    /// Acts on a `NewMessages` hint: the messages it carries are processed without a fetch
    /// when they follow on from what is done; otherwise the queue is fetched. Returns how many
    /// messages were processed.
    pub async fn on_hint(&mut self, hint: &NewMessages) -> anyhow::Result<usize> {
        match self.position.on_hint(hint) {
            HintAction::Nothing => Ok(0),
            HintAction::Process(messages) => {
                self.process(messages).await?;
                Ok(messages.len())
            }
            HintAction::Fetch => self.catch_up().await,
        }
    }

    /// Processes and prints `messages`, keeps the device's state, then acknowledges
    /// everything processed, and everything that can never be processed (reported on
    /// stderr and as an `unprocessable` event, and counted in `self.unprocessable`). A failure
    /// that may pass later (the server or network) stops before the message that met it, which
    /// stays queued.
    pub async fn process(&mut self, messages: &[QueuedMessage]) -> anyhow::Result<()> {
        self.process_from(messages, None).await
    }

    /// As [`QueueReader::process`], for messages of the queue (`log` `None`) or of a group's log.
    pub async fn process_from(
        &mut self,
        messages: &[QueuedMessage],
        log: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        if self.groups_made.elapsed() > Self::GROUPS_REFRESH {
            self.groups = self.device.groups(self.connection).await?;
            self.groups_made = std::time::Instant::now();
        }
        let mut done = None;
        let mut stopped = None;
        for message in messages {
            let group_notice = message.kind == MessageKind::ServerNotice
                && matches!(
                    ServerNotice::tls_deserialize_exact(message.payload.as_slice()),
                    Ok(ServerNotice::GroupDeleted(_))
                );
            let (object, text) = if message.kind == MessageKind::ServerNotice && !group_notice {
                match notice_output(self.connection, self.device, message).await {
                    Ok(output) => output,
                    Err(e) => {
                        stopped = Some(e);
                        break;
                    }
                }
            } else {
                match self.groups.process(message).await {
                    Err(e) if is_transient(&e) => {
                        stopped = Some(e.context(format!(
                            "message #{} stays queued; run recv again",
                            message.seq
                        )));
                        break;
                    }
                    Err(e) => {
                        self.unprocessable += 1;
                        eprintln!(
                            "roost-client: message #{} can never be processed and is dropped: {e:#}",
                            message.seq
                        );
                        (
                            json!({ "seq": message.seq, "event": "unprocessable", "reason": format!("{e:#}") }),
                            format!("#{}: dropped, cannot be processed: {e:#}", message.seq),
                        )
                    }
                    Ok(event) => group_event_output(message.seq, Ok(event)),
                }
            };
            print_event(self.json, object, text);
            done = Some(message.seq);
        }
        // Group state moves with what was processed: keep it before acknowledging.
        self.device.save()?;
        if let Some(done) = done {
            match log {
                Some(group_id) => self.connection.ack_group_log(group_id, done).await?,
                None => {
                    self.connection.ack_messages(done).await?;
                    self.position.advance(done);
                }
            }
        }
        stopped.map_or(Ok(()), Err)
    }

    /// Reads every group log with unread entries (after the queue: a Welcome there comes
    /// first). Returns how many entries there were.
    pub async fn catch_up_logs(&mut self) -> anyhow::Result<usize> {
        let mut received = 0;
        for log in self.connection.list_group_logs().await?.logs {
            if log.has_unread() {
                received += self.read_log(log.group_id.as_slice()).await?;
            }
        }
        Ok(received)
    }

    /// Reads one group's log from this device's position on.
    pub async fn read_log(&mut self, group_id: &[u8]) -> anyhow::Result<usize> {
        let mut received = 0;
        loop {
            let fetched = match self
                .connection
                .fetch_group_log(group_id, 0, FETCH_BATCH, 1 << 20)
                .await
            {
                Ok(fetched) => fetched,
                // The window closed and was read to its end: nothing left.
                Err(e) if e.code() == Some(ErrorCode::NotAMember) => return Ok(received),
                Err(e) => return Err(e.into()),
            };
            if fetched.messages.is_empty() {
                return Ok(received);
            }
            received += fetched.messages.len();
            self.process_from(&fetched.messages, Some(group_id)).await?;
        }
    }

    /// Acts on a `GroupLogAppended` hint: reads that log (every log, for the hint that says
    /// more groups moved than the server tracked).
    pub async fn on_log_hint(&mut self, hint: &GroupLogAppended) -> anyhow::Result<usize> {
        if hint.group_id.as_slice().is_empty() {
            return self.catch_up_logs().await;
        }
        self.read_log(hint.group_id.as_slice()).await
    }
}

/// Handles and describes a server notice.
pub async fn notice_output(
    connection: &Connection,
    device: &Device,
    message: &QueuedMessage,
) -> anyhow::Result<(serde_json::Value, String)> {
    let mut object = json!({ "seq": message.seq, "kind": "server_notice" });
    let mut text = format!("#{} server notice", message.seq);
    match ServerNotice::tls_deserialize_exact(message.payload.as_slice()) {
        Ok(ServerNotice::KeyPackagesLow(low)) => {
            let published = device.top_up(connection).await?;
            object["notice"] = json!({ "key_packages_low": { "remaining": low.remaining, "published": published } });
            text.push_str(&format!(
                ": KeyPackages ran low ({} left); published {published}",
                low.remaining
            ));
        }
        Ok(ServerNotice::GroupDeleted(deleted)) => {
            object["notice"] = json!({ "group_deleted": hex::encode(deleted.group_id.as_slice()) });
            text.push_str(": a group was deleted");
        }
        Ok(ServerNotice::MessagesExpired(expired)) => {
            object["notice"] = json!({ "messages_expired": { "count": expired.count, "first_seq": expired.first_seq, "last_seq": expired.last_seq } });
            text.push_str(&format!(
                ": {} messages expired unread (#{} to #{})",
                expired.count, expired.first_seq, expired.last_seq
            ));
        }
        Err(e) => {
            object["notice_error"] = json!(e.to_string());
            text.push_str(&format!(": unreadable notice ({e})"));
        }
    }
    Ok((object, text))
}
