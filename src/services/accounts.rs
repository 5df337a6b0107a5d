//! The accounts and identity service: registration, clients (devices), credentials, discovery and
//! account deletion. Owns the users, clients, signature-key, quarantine and invite tables.

use std::sync::Arc;

use ed25519_dalek::{Signature, VerifyingKey};

use super::{Caller, ServiceError, Sessions};
use crate::clock::{Clock, UnixTime};
use crate::config::{Domain, ServerConfig};
use crate::identity::{ed25519_key, UserId};
use crate::protocol::{
    add_client_proof_content, register_proof_content, AddClientRequest, ClientCredential,
    ClientCredentialContent, ClientEntry, ClientId, ClientRegistered, CredentialVerifyingKey,
    Notification, RegisterUserRequest, RegistrationMode, UserClients, ED25519_PUBLIC_KEY_LEN,
    MAX_CLIENTS_PER_USER, SUPPORTED_CIPHERSUITES,
};
use crate::services::credential_keys::CredentialKeys;
use crate::services::invites::{InviteError, InviteKey};
use crate::store::{
    AddClientRefusal, NewClient, NewUser, RegisterRefusal, RemoveClientRefusal, Store, StoredClient,
};

/// Credentials are backdated by this much, so that a verifier whose clock is a little behind the
/// server's does not see a fresh credential as not yet valid.
const CLOCK_SKEW_ALLOWANCE: u64 = 5 * 60;

pub struct Accounts {
    domain: Domain,
    store: Store,
    clock: Arc<dyn Clock>,
    sessions: Arc<dyn Sessions>,
    keys: CredentialKeys,
    invites: InviteKey,
    registration: RegistrationMode,
    credential_lifetime: u64,
    quarantine: u64,
    /// Registrations per source per hour, under open registration.
    registrations: crate::rate_limit::RateLimiter<crate::rate_limit::Source>,
}

impl Accounts {
    pub fn new(
        config: &ServerConfig,
        store: Store,
        sessions: Arc<dyn Sessions>,
    ) -> anyhow::Result<Self> {
        let now = config.clock.now();
        Ok(Self {
            domain: config.domain.clone(),
            store,
            clock: config.clock.clone(),
            sessions,
            keys: CredentialKeys::load_or_create(&config.data_dir, now)?,
            invites: InviteKey::load_or_create(&config.data_dir)?,
            registration: config.registration,
            credential_lifetime: config.credential_lifetime.as_secs(),
            quarantine: config.deleted_user_quarantine.as_secs(),
            registrations: crate::rate_limit::RateLimiter::new(
                config.limits.registrations_per_hour_per_source,
                std::time::Duration::from_secs(60 * 60),
            ),
        })
    }

    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    pub fn registration(&self) -> RegistrationMode {
        self.registration
    }

    /// The credential-verifying keys to publish now.
    pub fn published_keys(&self) -> Vec<CredentialVerifyingKey> {
        self.keys
            .published(self.clock.now(), self.credential_lifetime)
    }

    /// The key that signs credentials now, which signs the transparency log's heads too.
    pub fn active_signer(&self) -> crate::services::credential_keys::CredentialSigner {
        self.keys.active_signer()
    }

    /// The server's own signing key with public key `public`, if it has it.
    pub fn server_signer(&self, public: &[u8]) -> Option<ed25519_dalek::SigningKey> {
        self.keys.signer_for(public)
    }

    /// The domain this server serves.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The signature key `client` authenticates with, if the client exists.
    pub async fn signature_key(
        &self,
        client: &ClientId,
    ) -> Result<Option<VerifyingKey>, ServiceError> {
        let Some(stored) = self.store.client(client).await? else {
            return Ok(None);
        };
        Ok(ed25519_key(&stored.signature_key).ok())
    }

    pub async fn register(
        &self,
        caller: &Caller<'_>,
        request: RegisterUserRequest,
    ) -> Result<ClientRegistered, ServiceError> {
        let user = self.local_user_id(request.user_id.as_str(), ServiceError::WrongDomain)?;
        let now = self.clock.now();
        let invite = match (self.registration, &request.invite) {
            (RegistrationMode::Closed, _) => return Err(ServiceError::RegistrationClosed),
            (RegistrationMode::Open, _) => {
                // Anyone may register: but one source only so many accounts an hour.
                self.registrations
                    .check(&caller.source)
                    .map_err(|retry_after| ServiceError::RateLimited { retry_after })?;
                None
            }
            (RegistrationMode::Invite, None) => return Err(ServiceError::InviteRequired),
            (RegistrationMode::Invite, Some(code)) => {
                let invite = self
                    .invites
                    .verify(code.as_str(), now)
                    .map_err(ServiceError::InvalidInvite)?;
                Some((invite.nonce, invite.max_uses))
            }
        };
        let key = checked_key(request.signature_key.as_slice(), request.ciphersuite)?;
        verify_proof(
            &key,
            // The proof covers the user id exactly as the client sent it.
            &register_proof_content(
                caller.channel_binding,
                request.user_id.as_str(),
                key.as_bytes(),
                request.ciphersuite,
            ),
            request.proof.as_slice(),
        )?;

        let issue = self.credential_issuer(&user, key.to_bytes(), request.ciphersuite, now);
        let outcome = self
            .store
            .register_user(NewUser {
                user_id: user.to_string(),
                signature_key: key.to_bytes(),
                now,
                quarantine_secs: self.quarantine,
                invite,
                issue_credential: Box::new(issue),
            })
            .await?;
        let credential = outcome.map_err(|refusal| match refusal {
            RegisterRefusal::UserExists => ServiceError::UserExists,
            RegisterRefusal::Quarantined { until } => ServiceError::UserQuarantined { until },
            RegisterRefusal::KeyInUse => ServiceError::KeyInUse,
            RegisterRefusal::InviteUsedUp => ServiceError::InvalidInvite(InviteError::UsedUp),
            RegisterRefusal::InviteRevoked => ServiceError::InvalidInvite(InviteError::Revoked),
        })?;
        tracing::info!(user = %user, "user registered");
        registered(&credential)
    }

    pub async fn add_client(
        &self,
        caller: &ClientId,
        request: AddClientRequest,
    ) -> Result<ClientRegistered, ServiceError> {
        let user = self.local_user_id(caller.user_id.as_str(), ServiceError::Forbidden)?;
        let key = checked_key(request.signature_key.as_slice(), request.ciphersuite)?;
        verify_proof(
            &key,
            &add_client_proof_content(user.as_str(), key.as_bytes(), request.ciphersuite),
            request.proof.as_slice(),
        )?;
        let now = self.clock.now();
        let issue = self.credential_issuer(&user, key.to_bytes(), request.ciphersuite, now);
        let (_, credential) = self
            .store
            .add_client(NewClient {
                user_id: user.to_string(),
                signature_key: key.to_bytes(),
                now,
                max_clients: MAX_CLIENTS_PER_USER,
                issue_credential: Box::new(issue),
            })
            .await?
            .map_err(|refusal| match refusal {
                // The caller's user vanished under it: it was deleted a moment ago.
                AddClientRefusal::UnknownUser => ServiceError::UnknownUser,
                AddClientRefusal::KeyInUse => ServiceError::KeyInUse,
                AddClientRefusal::TooManyClients => ServiceError::TooManyClients,
            })?;
        registered(&credential)
    }

    /// Issues an invite valid until `expires_at` for `max_uses` registrations: (code, id).
    pub async fn issue_invite(
        &self,
        expires_at: UnixTime,
        max_uses: u32,
    ) -> Result<(String, String), ServiceError> {
        Ok(crate::services::invites::issue(
            &self.invites,
            &self.store,
            self.clock.now(),
            expires_at,
            max_uses,
        )
        .await?)
    }

    pub async fn list_clients(&self, caller: &ClientId) -> Result<UserClients, ServiceError> {
        self.user(caller.user_id.as_str()).await
    }

    /// A local user's clients; `UnknownUser` if there is no such user.
    pub async fn user(&self, user_id: &str) -> Result<UserClients, ServiceError> {
        self.user_clients(user_id)
            .await?
            .ok_or(ServiceError::UnknownUser)
    }

    pub async fn lookup(&self, user_id: &str) -> Result<UserClients, ServiceError> {
        let user: UserId = user_id.parse().map_err(ServiceError::InvalidUserId)?;
        if user.domain() != self.domain.as_str() {
            return Err(ServiceError::UnknownDomain(user.domain().to_owned()));
        }
        self.user_clients(user.as_str())
            .await?
            .ok_or(ServiceError::UnknownUser)
    }

    pub async fn remove_client(
        &self,
        caller: &ClientId,
        target: &ClientId,
    ) -> Result<(), ServiceError> {
        if target.user_id != caller.user_id {
            return Err(ServiceError::Forbidden);
        }
        self.store
            .remove_client(target, self.clock.now())
            .await?
            .map_err(|refusal| match refusal {
                RemoveClientRefusal::UnknownClient => ServiceError::UnknownClient,
                RemoveClientRefusal::LastClient => ServiceError::LastClient,
            })?;
        tracing::info!(client = %target, by = %caller, "client removed");
        self.evict(target);
        Ok(())
    }

    pub async fn renew_credential(
        &self,
        caller: &ClientId,
    ) -> Result<ClientCredential, ServiceError> {
        let user = self.local_user_id(caller.user_id.as_str(), ServiceError::Forbidden)?;
        let client = ClientId {
            user_id: user.to_text(),
            device_id: caller.device_id,
        };
        let stored = self
            .store
            .client(&client)
            .await?
            .ok_or(ServiceError::UnknownClient)?;
        let old = decode_credential(&stored.credential)?;
        let now = self.clock.now();
        let issue =
            self.credential_issuer(&user, stored.signature_key, old.content.ciphersuite, now);
        let encoded = issue(caller.device_id);
        self.store
            .replace_credential(&client, encoded.clone(), now)
            .await?
            .map_err(|_| ServiceError::UnknownClient)?;
        decode_credential(&encoded)
    }

    pub async fn delete_user(&self, user_id: &crate::protocol::Text) -> Result<(), ServiceError> {
        let removed = self
            .store
            .delete_user(user_id.as_str(), self.clock.now())
            .await?;
        tracing::info!(user = %user_id, clients = removed.len(), "user deleted");
        for device_id in removed {
            self.evict(&ClientId {
                user_id: user_id.clone(),
                device_id,
            });
        }
        Ok(())
    }

    /// Tells a removed client and closes its connections (after their in-flight requests).
    fn evict(&self, client: &ClientId) {
        self.sessions
            .notify(client, &Notification::ClientRemoved(client.clone()));
        self.sessions.disconnect(client);
    }

    async fn user_clients(&self, user_id: &str) -> Result<Option<UserClients>, ServiceError> {
        let Some(stored) = self.store.clients_of(user_id).await? else {
            return Ok(None);
        };
        let clients = stored
            .iter()
            .map(|client: &StoredClient| {
                Ok(ClientEntry {
                    credential: decode_credential(&client.credential)?,
                    added_at: client.added_at,
                })
            })
            .collect::<Result<_, ServiceError>>()?;
        Ok(Some(UserClients {
            user_id: crate::protocol::Text::truncated(user_id),
            clients,
        }))
    }

    /// Parses a user id of this server's domain; `foreign` is the error for another domain.
    fn local_user_id(&self, user_id: &str, foreign: ServiceError) -> Result<UserId, ServiceError> {
        let user: UserId = user_id.parse().map_err(ServiceError::InvalidUserId)?;
        if user.domain() != self.domain.as_str() {
            return Err(foreign);
        }
        Ok(user)
    }

    /// A closure that issues the encoded credential of `user`'s client with `key`, once the
    /// store has picked the device id.
    fn credential_issuer(
        &self,
        user: &UserId,
        key: [u8; ED25519_PUBLIC_KEY_LEN],
        ciphersuite: u16,
        now: u64,
    ) -> impl Fn(u32) -> Vec<u8> + Send + 'static {
        // Sign with a snapshot of what the closure needs; the store calls it on its writer thread.
        let signer = self.keys.active_signer();
        let user_id = user.to_text();
        let not_after = now.saturating_add(self.credential_lifetime);
        move |device_id| {
            let credential = signer.issue(ClientCredentialContent {
                client: ClientId {
                    user_id: user_id.clone(),
                    device_id,
                },
                signature_key: key.to_vec().into(),
                ciphersuite,
                not_before: now.saturating_sub(CLOCK_SKEW_ALLOWANCE),
                not_after,
                issuer_key_id: 0, // set by the signer
            });
            tls_codec::Serialize::tls_serialize_detached(&credential).unwrap_or_default()
        }
    }
}

fn registered(encoded: &[u8]) -> Result<ClientRegistered, ServiceError> {
    let credential = decode_credential(encoded)?;
    Ok(ClientRegistered {
        client: credential.content.client.clone(),
        credential,
    })
}

fn decode_credential(encoded: &[u8]) -> Result<ClientCredential, ServiceError> {
    <ClientCredential as tls_codec::Deserialize>::tls_deserialize_exact(encoded).map_err(|e| {
        ServiceError::Store(crate::store::StoreError::Corrupt(format!(
            "stored credential: {e}"
        )))
    })
}

/// Checks a new client's key and ciphersuite.
fn checked_key(key: &[u8], ciphersuite: u16) -> Result<VerifyingKey, ServiceError> {
    if !SUPPORTED_CIPHERSUITES.contains(&ciphersuite) {
        return Err(ServiceError::UnsupportedCiphersuite(ciphersuite));
    }
    ed25519_key(key).map_err(|_| ServiceError::InvalidKey)
}

/// Checks a proof of possession: `key`'s signature over `content`.
fn verify_proof(key: &VerifyingKey, content: &[u8], proof: &[u8]) -> Result<(), ServiceError> {
    let signature = Signature::from_slice(proof).map_err(|_| ServiceError::InvalidProof)?;
    key.verify_strict(content, &signature)
        .map_err(|_| ServiceError::InvalidProof)
}
