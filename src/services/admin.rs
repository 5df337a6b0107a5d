//! The operator's view and levers on a running server: what `roost admin` asks over the admin
//! socket (`protocol-spec/admin.md`). Each request is answered from the store and the other
//! services; a deletion goes through the same path as the user's own `DeleteUser`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::clock::{format_rfc3339, UnixTime, SECONDS_PER_DAY};
use crate::identity::UserId;
use crate::protocol::admin::{
    AdminError, AdminRequest, ClientDetails, FederationStatus, InviteCreated, InviteInfo, Invites,
    PeerStatus, QueueInfo, QueuesTop, Status, UserDeleted, UserDetails, UserSummary, UsersPage,
    MAX_ADMIN_PAGE,
};
use crate::protocol::{RegistrationMode, Text};
use crate::store::IssuedInvite;

use super::{ServiceError, Services};

/// What the admin service knows of the server it runs in.
pub struct ServerFacts {
    pub listen: std::net::SocketAddr,
    pub data_dir: PathBuf,
    pub started_at: UnixTime,
    pub started: std::time::Instant,
}

pub struct Admin {
    services: Arc<Services>,
    facts: ServerFacts,
}

/// Longest an invite may be valid, in days.
pub const MAX_INVITE_DAYS: u64 = 3650;

impl Admin {
    pub fn new(services: Arc<Services>, facts: ServerFacts) -> Self {
        Self { services, facts }
    }

    pub fn data_dir(&self) -> &Path {
        &self.facts.data_dir
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Answers every request but `Backup` (the transport streams that one) with its result as
    /// JSON.
    pub async fn handle(&self, request: AdminRequest) -> Result<serde_json::Value, AdminError> {
        let value = match request {
            AdminRequest::Status => to_json(self.status().await?),
            AdminRequest::UsersList { after, limit } => {
                to_json(self.users_list(after, limit).await?)
            }
            AdminRequest::UserShow { user_id } => to_json(self.user_show(&user_id).await?),
            AdminRequest::UserDelete { user_id } => to_json(self.user_delete(&user_id).await?),
            AdminRequest::InvitesCreate { uses, valid_days } => {
                to_json(self.invites_create(uses, valid_days).await?)
            }
            AdminRequest::InvitesList => to_json(self.invites_list().await?),
            AdminRequest::InvitesRevoke { id } => to_json(self.invites_revoke(&id).await?),
            AdminRequest::FederationStatus => to_json(self.federation_status().await?),
            AdminRequest::QueuesTop { limit } => to_json(self.queues_top(limit).await?),
            AdminRequest::Backup => {
                return Err(AdminError::new(
                    "bad_request",
                    "a backup is streamed by the transport",
                ))
            }
        };
        Ok(value)
    }

    fn now(&self) -> UnixTime {
        self.services.accounts.clock().now()
    }

    async fn status(&self) -> Result<Status, AdminError> {
        let store = &self.services.store;
        let counts = store.counts().await.map_err(internal)?;
        let now = self.now();
        let invites_active = store
            .invites()
            .await
            .map_err(internal)?
            .iter()
            .filter(|invite| invite_state(invite, now) == "active")
            .count() as u64;
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            domain: self.services.domain.as_str().to_owned(),
            listen: self.facts.listen.to_string(),
            data_dir: self.facts.data_dir.display().to_string(),
            started_at: format_rfc3339(self.facts.started_at),
            uptime_secs: self.facts.started.elapsed().as_secs(),
            registration: match self.services.accounts.registration() {
                RegistrationMode::Open => "open",
                RegistrationMode::Closed => "closed",
                RegistrationMode::Invite => "invite",
            }
            .to_owned(),
            users: counts.users,
            clients: counts.clients,
            groups: counts.groups,
            connected_clients: self.services.sessions.connections().connected_clients() as u64,
            queued_messages: counts.queued_messages,
            queued_bytes: counts.queued_bytes,
            outbox_waiting: counts.outbox_waiting,
            invites_active,
            store_bytes: store.stored_bytes().await,
        })
    }

    async fn users_list(&self, after: Option<String>, limit: u32) -> Result<UsersPage, AdminError> {
        let limit = limit.clamp(1, MAX_ADMIN_PAGE) as usize;
        // One more than asked, to know whether a next page exists.
        let mut rows = self
            .services
            .store
            .users_page(after.as_deref(), limit + 1)
            .await
            .map_err(internal)?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok(UsersPage {
            next_after: more
                .then(|| rows.last().map(|row| row.user_id.clone()))
                .flatten(),
            users: rows
                .into_iter()
                .map(|row| UserSummary {
                    user_id: row.user_id,
                    created_at: format_rfc3339(row.created_at),
                    clients: row.clients,
                })
                .collect(),
        })
    }

    /// Parses `user_id` and checks that it is a user of this server.
    fn local_user(&self, user_id: &str) -> Result<UserId, AdminError> {
        let user: UserId = user_id
            .parse()
            .map_err(|e| AdminError::new("bad_request", format!("{user_id:?}: {e}")))?;
        if user.domain() != self.services.domain.as_str() {
            return Err(AdminError::new(
                "not_local_user",
                format!(
                    "{user_id} is not a user of this server ({})",
                    self.services.domain.as_str()
                ),
            ));
        }
        Ok(user)
    }

    async fn user_show(&self, user_id: &str) -> Result<UserDetails, AdminError> {
        let user = self.local_user(user_id)?;
        let store = &self.services.store;
        let created_at = store
            .user_created(user.as_str())
            .await
            .map_err(internal)?
            .ok_or_else(|| unknown_user(user.as_str()))?;
        let clients = self
            .services
            .accounts
            .user(user.as_str())
            .await
            .map_err(|e| match e {
                ServiceError::UnknownUser => unknown_user(user.as_str()),
                other => internal(other),
            })?;
        let stock = store
            .key_package_stock(user.as_str(), self.now())
            .await
            .map_err(internal)?;
        let mut details = Vec::new();
        let mut group_memberships = 0;
        for entry in clients.clients {
            let content = &entry.credential.content;
            let device_id = content.client.device_id;
            let (queued_messages, queued_bytes) =
                store.queue_size(&content.client).await.map_err(internal)?;
            let oldest = store
                .oldest_queued(&content.client)
                .await
                .map_err(internal)?;
            let client_stock = stock.iter().find(|s| s.device_id == device_id);
            group_memberships += store
                .groups_of(&content.client)
                .await
                .map_err(internal)?
                .len() as u64;
            details.push(ClientDetails {
                device_id,
                added_at: format_rfc3339(entry.added_at),
                credential_expires_at: format_rfc3339(content.not_after),
                connected: self
                    .services
                    .sessions
                    .connections()
                    .connected(&content.client),
                queued_messages,
                queued_bytes,
                oldest_queued_at: oldest.map(|ms| format_rfc3339(ms / 1000)),
                key_packages: client_stock.map_or(0, |s| u64::from(s.remaining)),
                last_resort_key_package: client_stock.is_some_and(|s| s.has_last_resort),
                push_targets: store
                    .push_targets(&content.client)
                    .await
                    .map_err(internal)?
                    .len() as u64,
            });
        }
        Ok(UserDetails {
            user_id: user.to_string(),
            created_at: format_rfc3339(created_at),
            clients: details,
            group_memberships,
        })
    }

    async fn user_delete(&self, user_id: &str) -> Result<UserDeleted, AdminError> {
        let user = self.local_user(user_id)?;
        let clients = self
            .services
            .delete_user(&Text::truncated(user.as_str()))
            .await
            .map_err(|e| match e {
                ServiceError::UnknownUser => unknown_user(user.as_str()),
                other => internal(other),
            })?;
        tracing::info!(user = %user, clients, "user deleted by the operator");
        Ok(UserDeleted {
            user_id: user.to_string(),
            clients: clients as u32,
        })
    }

    async fn invites_create(
        &self,
        uses: u32,
        valid_days: u64,
    ) -> Result<InviteCreated, AdminError> {
        if uses == 0 {
            return Err(AdminError::new(
                "bad_request",
                "an invite needs at least one use",
            ));
        }
        if !(1..=MAX_INVITE_DAYS).contains(&valid_days) {
            return Err(AdminError::new(
                "bad_request",
                format!("an invite is valid for 1 to {MAX_INVITE_DAYS} days"),
            ));
        }
        let expires_at = self.now() + valid_days * SECONDS_PER_DAY;
        let (code, id) = self
            .services
            .issue_invite(expires_at, uses)
            .await
            .map_err(internal)?;
        Ok(InviteCreated {
            code,
            id,
            expires_at: format_rfc3339(expires_at),
            max_uses: uses,
        })
    }

    async fn invites_list(&self) -> Result<Invites, AdminError> {
        let now = self.now();
        let invites = self.services.store.invites().await.map_err(internal)?;
        Ok(Invites {
            invites: invites
                .iter()
                .map(|invite| invite_info(invite, now))
                .collect(),
        })
    }

    async fn invites_revoke(&self, id: &str) -> Result<InviteInfo, AdminError> {
        let unknown = || AdminError::new("unknown_invite", format!("no invite has the id {id:?}"));
        let nonce = hex::decode(id).map_err(|_| unknown())?;
        let now = self.now();
        let revoked = self
            .services
            .store
            .revoke_invite(nonce, now)
            .await
            .map_err(internal)?
            .ok_or_else(unknown)?;
        tracing::info!(invite = id, "invite revoked by the operator");
        Ok(invite_info(&revoked, now))
    }

    async fn federation_status(&self) -> Result<FederationStatus, AdminError> {
        let backlog = self
            .services
            .store
            .outbox_status()
            .await
            .map_err(internal)?;
        let Some(federation) = &self.services.federation else {
            return Ok(FederationStatus {
                enabled: false,
                peers: Vec::new(),
            });
        };
        let mut peers = Vec::new();
        let mut domains: Vec<(String, Option<String>)> = federation
            .peers()
            .map(|(domain, address)| (domain.clone(), Some(address.to_string())))
            .collect();
        for waiting in &backlog {
            if !domains.iter().any(|(domain, _)| domain == &waiting.peer) {
                domains.push((waiting.peer.clone(), None));
            }
        }
        for (domain, address) in domains {
            let waiting = backlog.iter().find(|b| b.peer == domain);
            let progress = federation.progress(&domain);
            peers.push(PeerStatus {
                connected: federation.connected(&domain).await,
                address,
                waiting: waiting.map_or(0, |b| b.waiting),
                oldest_waiting_since: waiting.map(|b| format_rfc3339(b.oldest_ms / 1000)),
                last_delivery_at: progress.last_delivery_at.map(format_rfc3339),
                last_error: progress.last_error.as_ref().map(|(_, e)| e.clone()),
                last_error_at: progress
                    .last_error
                    .as_ref()
                    .map(|(at, _)| format_rfc3339(*at)),
                next_attempt_at: progress.next_attempt_at.map(format_rfc3339),
                domain,
            });
        }
        Ok(FederationStatus {
            enabled: true,
            peers,
        })
    }

    async fn queues_top(&self, limit: u32) -> Result<QueuesTop, AdminError> {
        let limit = limit.clamp(1, MAX_ADMIN_PAGE) as usize;
        let rows = self
            .services
            .store
            .largest_queues(limit)
            .await
            .map_err(internal)?;
        Ok(QueuesTop {
            queues: rows
                .into_iter()
                .map(|row| QueueInfo {
                    user_id: row.user_id,
                    device_id: row.device_id,
                    messages: row.messages,
                    bytes: row.bytes,
                    oldest_queued_at: row.oldest_queued_at_ms.map(|ms| format_rfc3339(ms / 1000)),
                })
                .collect(),
        })
    }
}

fn invite_state(invite: &IssuedInvite, now: UnixTime) -> &'static str {
    if invite.revoked_at.is_some() {
        "revoked"
    } else if now > invite.expires_at {
        "expired"
    } else if invite.used >= invite.max_uses {
        "used_up"
    } else {
        "active"
    }
}

fn invite_info(invite: &IssuedInvite, now: UnixTime) -> InviteInfo {
    InviteInfo {
        id: hex::encode(&invite.nonce),
        created_at: format_rfc3339(invite.created_at),
        expires_at: format_rfc3339(invite.expires_at),
        max_uses: invite.max_uses,
        used: invite.used,
        revoked_at: invite.revoked_at.map(format_rfc3339),
        state: invite_state(invite, now).to_owned(),
    }
}

fn to_json(value: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

fn unknown_user(user_id: &str) -> AdminError {
    AdminError::new("unknown_user", format!("{user_id} has no account here"))
}

/// An internal failure: logged in full, told in short.
fn internal(error: impl std::fmt::Display) -> AdminError {
    tracing::error!(error = %error, "an admin request failed");
    AdminError::new("internal", format!("the server failed: {error}"))
}
