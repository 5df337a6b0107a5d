//! The admin protocol: what `roost admin` and a running server say to each other over the Unix
//! socket `DATA_DIR/admin.sock` (`protocol-spec/admin.md`).
//!
//! A connection carries one request: one line of JSON (at most [`MAX_ADMIN_REQUEST_LEN`] bytes,
//! ending in `\n`), answered by one line of JSON — `{"ok": RESULT}` or
//! `{"error": {"code": CODE, "message": TEXT}}` — after which the server closes the connection.
//! A backup's answer line is followed by the bytes of the files it lists. Times are RFC 3339 UTC
//! strings (`2026-11-29T10:00:00Z`).
//!
//! JSON rather than the TLS presentation language of the QUIC protocol: the socket is local,
//! reached only by the server's own user, and an operator can speak it with `socat` and `jq`.

use serde::{Deserialize, Serialize};

/// The socket's file name in the data directory.
pub const ADMIN_SOCKET_FILE: &str = "admin.sock";
/// Longest request line, newline included.
pub const MAX_ADMIN_REQUEST_LEN: usize = 64 * 1024;
/// Longest answer line (a backup's file bytes come after it and are not counted).
pub const MAX_ADMIN_RESPONSE_LEN: usize = 16 * 1024 * 1024;
/// Most rows one `users_list` or `queues_top` answer carries.
pub const MAX_ADMIN_PAGE: u32 = 1000;
/// Rows when a request does not say.
pub const DEFAULT_ADMIN_PAGE: u32 = 100;

fn default_page() -> u32 {
    DEFAULT_ADMIN_PAGE
}

/// One request, tagged by `op`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    /// The server at a glance: [`Status`].
    Status,
    /// Users in id order, `limit` at most, after `after` when given: [`UsersPage`].
    UsersList {
        #[serde(default)]
        after: Option<String>,
        #[serde(default = "default_page")]
        limit: u32,
    },
    /// One user and its clients: [`UserDetails`].
    UserShow { user_id: String },
    /// Deletes a user and all of its data, as its own `DeleteUser` would: [`UserDeleted`].
    UserDelete { user_id: String },
    /// Issues an invite code: [`InviteCreated`].
    InvitesCreate { uses: u32, valid_days: u64 },
    /// Every invite issued: [`Invites`].
    InvitesList,
    /// Revokes the invite `id`: [`InviteInfo`].
    InvitesRevoke { id: String },
    /// Each peer homeserver's connection and outbox: [`FederationStatus`].
    FederationStatus,
    /// The `limit` largest client queues, by bytes: [`QueuesTop`].
    QueuesTop {
        #[serde(default = "default_page")]
        limit: u32,
    },
    /// A consistent copy of the data directory: [`Backup`], then the files' bytes.
    Backup,
}

/// The answer line: exactly one of `ok` and `error`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<AdminError>,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code})")]
pub struct AdminError {
    /// Stable, for scripts: `bad_request`, `unknown_user`, `not_local_user`,
    /// `unknown_invite`, `busy`, `internal`.
    pub code: String,
    /// For people.
    pub message: String,
}

impl AdminError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// Decodes a request line (without its newline), checking its size first.
pub fn decode_admin_request(line: &[u8]) -> Result<AdminRequest, AdminError> {
    if line.len() >= MAX_ADMIN_REQUEST_LEN {
        return Err(AdminError::new(
            "bad_request",
            format!("the request is longer than {MAX_ADMIN_REQUEST_LEN} bytes"),
        ));
    }
    serde_json::from_slice(line)
        .map_err(|e| AdminError::new("bad_request", format!("not an admin request: {e}")))
}

/// `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub domain: String,
    pub listen: String,
    pub data_dir: String,
    pub started_at: String,
    pub uptime_secs: u64,
    pub registration: String,
    pub users: u64,
    pub clients: u64,
    pub groups: u64,
    /// Authenticated client connections now.
    pub connected_clients: u64,
    pub queued_messages: u64,
    pub queued_bytes: u64,
    /// Deliveries waiting in the outbox for peer homeservers.
    pub outbox_waiting: u64,
    pub invites_active: u64,
    /// The database file's size.
    pub store_bytes: u64,
}

/// One user in `users_list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    pub user_id: String,
    pub created_at: String,
    pub clients: u32,
}

/// `users_list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsersPage {
    pub users: Vec<UserSummary>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// One client in `user_show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientDetails {
    pub device_id: u32,
    pub added_at: String,
    pub credential_expires_at: String,
    pub connected: bool,
    pub queued_messages: u64,
    pub queued_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_queued_at: Option<String>,
    pub key_packages: u64,
    pub last_resort_key_package: bool,
    pub push_targets: u64,
}

/// `user_show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDetails {
    pub user_id: String,
    pub created_at: String,
    pub clients: Vec<ClientDetails>,
    /// Group memberships of all its clients.
    pub group_memberships: u64,
}

/// `user_delete`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDeleted {
    pub user_id: String,
    pub clients: u32,
}

/// `invites_create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteCreated {
    pub code: String,
    pub id: String,
    pub expires_at: String,
    pub max_uses: u32,
}

/// One invite in `invites_list`, and the answer to `invites_revoke`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteInfo {
    pub id: String,
    pub created_at: String,
    pub expires_at: String,
    pub max_uses: u32,
    pub used: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// `active`, `used_up`, `expired` or `revoked`.
    pub state: String,
}

/// `invites_list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invites {
    pub invites: Vec<InviteInfo>,
}

/// One peer in `federation_status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub domain: String,
    /// The configured address; absent for a domain that is no longer a `--peer` but still has
    /// deliveries waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub connected: bool,
    /// Deliveries waiting in the outbox.
    pub waiting: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_waiting_since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
    /// When the outbox tries again after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
}

/// `federation_status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationStatus {
    pub enabled: bool,
    pub peers: Vec<PeerStatus>,
}

/// One queue in `queues_top`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    pub user_id: String,
    pub device_id: u32,
    pub messages: u64,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_queued_at: Option<String>,
}

/// `queues_top`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuesTop {
    pub queues: Vec<QueueInfo>,
}

/// One file of a backup, in the order its bytes follow the answer line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// A path relative to the data directory, `/`-separated, without `..`.
    pub name: String,
    pub bytes: u64,
}

/// `backup`: the answer line lists the files; their bytes follow, back to back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    pub taken_at: String,
    pub files: Vec<BackupFile>,
}

impl BackupFile {
    /// Whether `name` is a safe relative path to write a backup file to: no root, no `..`, no
    /// empty or hidden-dot components, at most two levels (`credential-keys/1.key`).
    pub fn has_safe_name(&self) -> bool {
        let parts: Vec<&str> = self.name.split('/').collect();
        parts.len() <= 2
            && parts.iter().all(|part| {
                !part.is_empty()
                    && !part.starts_with('.')
                    && part.len() <= 255
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused_with_a_reason() {
        for request in [
            AdminRequest::Status,
            AdminRequest::UsersList {
                after: Some("a@x".into()),
                limit: 5,
            },
            AdminRequest::UserShow {
                user_id: "a@x".into(),
            },
            AdminRequest::UserDelete {
                user_id: "a@x".into(),
            },
            AdminRequest::InvitesCreate {
                uses: 2,
                valid_days: 7,
            },
            AdminRequest::InvitesList,
            AdminRequest::InvitesRevoke { id: "00".into() },
            AdminRequest::FederationStatus,
            AdminRequest::QueuesTop { limit: 3 },
            AdminRequest::Backup,
        ] {
            let line = serde_json::to_vec(&request).unwrap();
            assert_eq!(decode_admin_request(&line).unwrap(), request);
        }
        assert_eq!(
            decode_admin_request(br#"{"op":"users_list"}"#).unwrap(),
            AdminRequest::UsersList {
                after: None,
                limit: DEFAULT_ADMIN_PAGE
            }
        );
        for bad in [
            &br#"{"op":"format_disk"}"#[..],
            br#"{"op":"user_show"}"#,
            br#"{"op":"user_show","user_id":7}"#,
            b"not json",
            b"",
        ] {
            assert_eq!(decode_admin_request(bad).unwrap_err().code, "bad_request");
        }
        let long = vec![b' '; MAX_ADMIN_REQUEST_LEN];
        assert!(decode_admin_request(&long)
            .unwrap_err()
            .message
            .contains("longer"));
    }

    #[test]
    fn backup_file_names_cannot_escape_the_target_directory() {
        let named = |name: &str| BackupFile {
            name: name.into(),
            bytes: 0,
        };
        for good in ["roost.redb", "credential-keys/1.key", "invite-key"] {
            assert!(named(good).has_safe_name(), "{good}");
        }
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../b",
            "",
            "a//b",
            ".hidden",
            "a/b/c",
            "a\\b",
        ] {
            assert!(!named(bad).has_safe_name(), "{bad}");
        }
    }
}
