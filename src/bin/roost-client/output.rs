//! How results print: one JSON object with `--json`, text otherwise; the JSON and text forms of
//! credentials, client lists and group events that several commands print.

use roost::client::groups::{GroupClient, GroupEvent};
use roost::client::verify_user_clients;
use roost::clock::format_utc;
use roost::identity::{verify_credential, CredentialError, DomainKeys};
use roost::protocol::{ClientCredential, ClientId, UserClients};
use serde_json::json;

use crate::device::now;

/// What a command prints at its end: JSON with `--json`, text otherwise.
pub struct Output {
    json: serde_json::Value,
    text: String,
}

impl Output {
    pub fn new(json: serde_json::Value, text: String) -> Self {
        Self { json, text }
    }

    pub fn print(&self, json: bool) {
        if json {
            if !self.json.is_null() {
                println!("{}", self.json);
            }
        } else if !self.text.is_empty() {
            println!("{}", self.text);
        }
    }

    /// For commands that printed as they went.
    pub fn nothing() -> Self {
        Self {
            json: serde_json::Value::Null,
            text: String::new(),
        }
    }
}

/// Prints one line now: a JSON object with `--json`, text otherwise.
pub fn print_event(json: bool, object: serde_json::Value, text: String) {
    if json {
        println!("{object}");
    } else {
        println!("{text}");
    }
}

/// How a processed MLS message or Welcome prints.
pub fn group_event_output(
    seq: u64,
    event: anyhow::Result<GroupEvent>,
) -> (serde_json::Value, String) {
    let event = match event {
        Ok(event) => event,
        Err(e) => return failure_output(seq, &e),
    };
    let group = event.group_id().map(hex::encode).unwrap_or_default();
    // The event's name, what its JSON object adds to `seq`, `event` and `group`, and its text.
    let (name, fields, text) = match event {
        GroupEvent::Message { sender, text, .. } => {
            let text = String::from_utf8_lossy(&text).into_owned();
            return (
                json!({ "seq": seq, "group": group, "sender": sender.to_string(), "text": text }),
                format!("{group} {sender} {text}"),
            );
        }
        GroupEvent::Other => {
            let text = format!("#{seq}: nothing for this device");
            return (json!({ "seq": seq, "event": "ignored" }), text);
        }
        GroupEvent::Joined { .. } => ("joined", json!({}), format!("joined group {group}")),
        GroupEvent::Committed { epoch, .. } => {
            let text = format!("group {group} moved to epoch {epoch}");
            ("commit", json!({ "epoch": epoch }), text)
        }
        GroupEvent::Removed { .. } => {
            let text = format!("this device was removed from group {group}");
            ("removed", json!({}), text)
        }
        GroupEvent::Deleted { by, .. } => {
            let text = format!("group {group} was deleted by {by}");
            ("group_deleted", json!({ "by": by.to_string() }), text)
        }
        GroupEvent::Proposed { by, what, .. } => {
            let by = by.map_or_else(|| "the server".to_owned(), |client| client.to_string());
            let text = format!("{by} proposes {what} in group {group} — run: commit {group}");
            ("proposal", json!({ "by": by, "what": what }), text)
        }
        GroupEvent::InvitationLapsed { reason, .. } => {
            let text = format!(
                "an invitation to group {group} lapsed before this device joined: {reason}"
            );
            ("invitation_lapsed", json!({ "reason": reason }), text)
        }
        GroupEvent::OwnMessage { .. } => {
            let text = format!("#{seq}: this device's own message to group {group}");
            ("own_message", json!({}), text)
        }
    };
    let mut object = json!({ "seq": seq, "event": name, "group": group });
    if let (Some(object), serde_json::Value::Object(fields)) = (object.as_object_mut(), fields) {
        object.extend(fields);
    }
    (object, text)
}

/// How a message that could not be processed prints: the error, its code and what to do.
fn failure_output(seq: u64, e: &anyhow::Error) -> (serde_json::Value, String) {
    let failure = roost::client::local_error::failure(e);
    let hint = failure
        .hint
        .map(|hint| format!(" ({hint})"))
        .unwrap_or_default();
    (
        json!({
            "seq": seq,
            "event": "error",
            "error": format!("{e:#}"),
            "code": failure.code,
            "name": failure.name,
            "hint": failure.hint,
        }),
        format!("#{seq}: cannot process: {e:#}{hint}"),
    )
}

/// The groups an external join took (hex ids), and those it could not, with why (a hub that
/// could not be asked among them).
pub fn joined_output(
    outcomes: roost::client::rejoin::JoinedGroups,
) -> (Vec<String>, Vec<serde_json::Value>) {
    let mut joined = Vec::new();
    let mut not_joined: Vec<serde_json::Value> = outcomes
        .unreachable_hubs
        .iter()
        .map(|hub| {
            json!({
                "hub": hub,
                "error": format!("the groups at {hub} could not be listed"),
                "hint": "run `sync` again once it answers",
            })
        })
        .collect();
    for (group_id, outcome) in outcomes.groups {
        match outcome {
            Ok(_) => joined.push(hex::encode(group_id)),
            Err(e) => {
                let failure = roost::client::local_error::failure(&e);
                not_joined.push(json!({
                    "group": hex::encode(group_id),
                    "error": format!("{e:#}"),
                    "code": failure.code,
                    "hint": failure.hint,
                }))
            }
        }
    }
    (joined, not_joined)
}

pub fn not_joined_text(not_joined: &[serde_json::Value]) -> String {
    not_joined
        .iter()
        .map(|failed| match failed["group"].as_str() {
            Some(group) => format!("\n  not {group}: {}", failed["error"]),
            None => format!("\n  {}", failed["error"]),
        })
        .collect()
}

/// The note on a commit that carried pending proposals along with its own change.
pub fn also_committed(pending: usize) -> String {
    match pending {
        0 => String::new(),
        1 => " (and committed the pending proposal)".to_owned(),
        n => format!(" (and committed the {n} pending proposals)"),
    }
}

/// Prints what `groups` processed while catching up inside an operation (the library does
/// that when the server says the device is behind), then passes the operation's `result` on.
pub fn caught_up<T>(
    groups: &GroupClient<'_>,
    json: bool,
    result: anyhow::Result<T>,
) -> anyhow::Result<T> {
    for (seq, event) in groups.take_caught_up() {
        let (object, text) = group_event_output(seq, event);
        print_event(json, object, text);
    }
    result
}

/// A credential as JSON, with the outcome of verifying it against `keys` now.
pub fn client_json(credential: &ClientCredential, keys: &DomainKeys) -> serde_json::Value {
    let verified = verify_credential(credential, keys, now());
    credential_json(credential, &verified)
}

pub fn credential_json(
    credential: &ClientCredential,
    verified: &Result<ClientId, CredentialError>,
) -> serde_json::Value {
    let content = &credential.content;
    json!({
        "client_id": content.client.to_string(),
        "user": content.client.user_id.as_str(),
        "device_id": content.client.device_id,
        "verified": verified.is_ok(),
        "verification_error": verified.as_ref().err().map(ToString::to_string),
        "signature_key": hex::encode(content.signature_key.as_slice()),
        "ciphersuite": content.ciphersuite,
        "not_before": json_time(content.not_before),
        "not_after": json_time(content.not_after),
        "issuer_key_id": content.issuer_key_id,
    })
}

pub fn user_clients_output(
    clients: &UserClients,
    keys: &DomainKeys,
    me: Option<&ClientId>,
) -> Output {
    let verified = verify_user_clients(clients, keys, now());
    let json = json!({
        "user": clients.user_id.as_str(),
        "clients": verified.iter().map(|client| {
            let mut entry = credential_json(&client.entry.credential, &client.verified);
            entry["added_at"] = json_time(client.entry.added_at);
            entry
        }).collect::<Vec<_>>(),
    });
    let mut text = format!("{} has {} client(s):", clients.user_id, verified.len());
    for client in &verified {
        let content = &client.entry.credential.content;
        let status = match &client.verified {
            Ok(_) => format!("verified, valid until {}", format_utc(content.not_after)),
            Err(e) => format!("NOT VERIFIED: {e}"),
        };
        let this = if me == Some(&content.client) {
            " (this device)"
        } else {
            ""
        };
        text.push_str(&format!("\n  {}{this}: {status}", content.client));
    }
    Output::new(json, text)
}

pub fn role_name(role: roost::protocol::Role) -> &'static str {
    match role {
        roost::protocol::Role::Admin => "admin",
        roost::protocol::Role::Member => "member",
    }
}

/// A Unix time for JSON output: RFC 3339 UTC.
pub fn json_time(time: u64) -> serde_json::Value {
    json!(roost::clock::format_rfc3339(time))
}
