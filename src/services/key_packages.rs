//! The KeyPackage service: validated uploads, claim-once fetches with a last-resort fallback,
//! stock reports and low-stock notifications. Owns the KeyPackage tables.

use std::sync::Arc;

use openmls::prelude::{
    BasicCredential, CredentialType, ExtensionType, KeyPackageIn, KeyPackageVerifyError,
    ProtocolVersion,
};
use openmls_rust_crypto::RustCrypto;
use tls_codec::Deserialize;

use super::{Queues, ServiceError};
use crate::clock::Clock;
use crate::config::{Domain, ServerConfig};
use crate::identity::UserId;
use crate::protocol::{
    ClaimKeyPackagesRequest, ClaimOutcome, ClaimedKeyPackage, ClaimedKeyPackages, ClientId, Flag,
    KeyPackageStatus, KeyPackageStock, KeyPackagesLow, Notification, PublishKeyPackagesRequest,
    ServerNotice, MAX_KEY_PACKAGE_LEN, ROLES_EXTENSION_TYPE, SUPPORTED_CIPHERSUITES,
};
use crate::rate_limit::RateLimiter;
use crate::store::{Claimed, NewKeyPackage, PublishRefusal, Stock, Store, StoredClient};

/// Longest KeyPackage lifetime the server accepts (`not_after - not_before`), in seconds: a
/// KeyPackage that claims to live longer is refused (RFC 9420 section 7.2 asks for a limit).
pub const MAX_KEY_PACKAGE_LIFETIME: u64 = 366 * 24 * 60 * 60;

/// Why one KeyPackage of a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyPackageRejection {
    #[error("it is not a valid KeyPackage: {0}")]
    Invalid(String),
    #[error("its lifetime does not cover the present or is too long: {0}")]
    Expired(String),
    #[error("its leaf credential is not this client's current credential")]
    CredentialMismatch,
    #[error("its leaf signature key is not this client's key")]
    NotOwned,
    #[error("it was already published")]
    Duplicate,
    #[error("ciphersuite {0:#06x} is not supported")]
    UnsupportedCiphersuite(u16),
    #[error("it is a second KeyPackage marked last resort")]
    MultipleLastResort,
    #[error("its leaf does not announce a capability every group requires: {0}")]
    MissingCapability(&'static str),
    #[error("its ciphersuite {key_package:#06x} is not its credential's ({credential:#06x})")]
    CiphersuiteMismatch { key_package: u16, credential: u16 },
}

pub struct KeyPackages {
    domain: Domain,
    store: Store,
    clock: Arc<dyn Clock>,
    low_watermark: u32,
    max_per_client: usize,
    claims_per_claimer: RateLimiter<String>,
    claims_per_target: RateLimiter<String>,
    queues: Arc<Queues>,
    /// `KeyPackagesLow` notices sent (pushed or queued), for the metrics.
    low_notices: std::sync::atomic::AtomicU64,
}

impl KeyPackages {
    /// `KeyPackagesLow` notices sent since the server started.
    pub fn low_notices(&self) -> u64 {
        self.low_notices.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn new(config: &ServerConfig, store: Store, queues: Arc<Queues>) -> Self {
        Self {
            domain: config.domain.clone(),
            store,
            clock: config.clock.clone(),
            low_watermark: config.key_packages.low_watermark,
            max_per_client: config.key_packages.max_per_client as usize,
            claims_per_claimer: RateLimiter::per_minute(
                config.key_packages.claims_per_minute_per_claimer,
            ),
            claims_per_target: RateLimiter::per_minute(
                config.key_packages.claims_per_minute_per_target,
            ),
            queues,
            low_notices: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub async fn publish(
        &self,
        caller: &ClientId,
        request: PublishKeyPackagesRequest,
    ) -> Result<KeyPackageStatus, ServiceError> {
        let batch = request.key_packages;
        if batch.len() > self.max_per_client {
            return Err(ServiceError::TooManyKeyPackages {
                stock: batch.len(),
                limit: self.max_per_client,
            });
        }
        let owner = self
            .store
            .client(caller)
            .await?
            .ok_or(ServiceError::UnknownClient)?;
        let now = self.clock.now();
        // Signature checks are CPU work: off the async workers, so that a batch of a hundred
        // KeyPackages does not stall other connections' requests.
        let validated = tokio::task::spawn_blocking(move || validate_batch(&batch, &owner, now))
            .await
            .map_err(|_| ServiceError::Store(crate::store::StoreError::Closed))??;
        let stock = self
            .store
            .publish_key_packages(caller, validated, self.max_per_client, now)
            .await?
            .map_err(|refusal| match refusal {
                PublishRefusal::UnknownClient => ServiceError::UnknownClient,
                PublishRefusal::Duplicate { index } => ServiceError::KeyPackageRejected {
                    index,
                    reason: KeyPackageRejection::Duplicate,
                },
                PublishRefusal::TooManyBytes { bytes, limit } => {
                    ServiceError::TooManyKeyPackageBytes { bytes, limit }
                }
                PublishRefusal::TooMany { stock, limit } => {
                    ServiceError::TooManyKeyPackages { stock, limit }
                }
            })?;
        Ok(self.status_of(caller.user_id.as_str(), vec![stock]))
    }

    pub async fn claim(
        &self,
        caller: &ClientId,
        request: ClaimKeyPackagesRequest,
    ) -> Result<ClaimedKeyPackages, ServiceError> {
        let user: UserId = request
            .user_id
            .as_str()
            .parse()
            .map_err(ServiceError::InvalidUserId)?;
        if user.domain() != self.domain.as_str() {
            return Err(ServiceError::UnknownDomain(user.domain().to_owned()));
        }
        if !SUPPORTED_CIPHERSUITES.contains(&request.ciphersuite) {
            return Err(ServiceError::UnsupportedCiphersuite(request.ciphersuite));
        }
        self.claims_per_claimer
            .check(&caller.to_string())
            .and_then(|()| self.claims_per_target.check(&user.as_str().to_owned()))
            .map_err(|retry_after| ServiceError::RateLimited { retry_after })?;
        let claims = self
            .store
            .claim_key_packages(user.as_str(), request.ciphersuite, self.clock.now())
            .await?
            .ok_or(ServiceError::UnknownUser)?;
        let user_id = user.to_text();
        let mut out = Vec::with_capacity(claims.len());
        for claim in claims {
            let client = ClientId {
                user_id: user_id.clone(),
                device_id: claim.device_id,
            };
            if claim.stock.remaining < self.low_watermark {
                self.low_notices
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let low = KeyPackagesLow {
                    client: client.clone(),
                    remaining: claim.stock.remaining,
                };
                let notification = Notification::KeyPackagesLow(low.clone());
                self.queues
                    .tell(&client, notification, ServerNotice::KeyPackagesLow(low))
                    .await?;
            }
            let outcome = match claim.claimed {
                Claimed::KeyPackage(bytes) => ClaimOutcome::KeyPackage(bytes.into()),
                Claimed::LastResort(bytes) => ClaimOutcome::LastResort(bytes.into()),
                Claimed::Unavailable => ClaimOutcome::Unavailable,
            };
            out.push(ClaimedKeyPackage { client, outcome });
        }
        Ok(ClaimedKeyPackages {
            user_id,
            claims: out,
        })
    }

    /// The stock of every client of the caller's user.
    pub async fn status(&self, caller: &ClientId) -> Result<KeyPackageStatus, ServiceError> {
        let user_id = caller.user_id.as_str();
        let stocks = self
            .store
            .key_package_stock(user_id, self.clock.now())
            .await?;
        Ok(self.status_of(user_id, stocks))
    }

    /// Purges expired KeyPackages and references; returns how many references went.
    pub async fn purge_expired(&self) -> Result<usize, ServiceError> {
        Ok(self
            .store
            .purge_expired_key_packages(self.clock.now())
            .await?)
    }

    fn status_of(&self, user_id: &str, stocks: Vec<Stock>) -> KeyPackageStatus {
        let user_id = crate::protocol::Text::truncated(user_id);
        KeyPackageStatus {
            low_watermark: self.low_watermark,
            max_per_client: self.max_per_client as u32,
            clients: stocks
                .into_iter()
                .map(|stock| KeyPackageStock {
                    client: ClientId {
                        user_id: user_id.clone(),
                        device_id: stock.device_id,
                    },
                    remaining: stock.remaining,
                    has_last_resort: Flag(stock.has_last_resort),
                })
                .collect(),
        }
    }
}

/// Checks a batch of uploaded KeyPackages, refusing it at the first that fails.
fn validate_batch(
    batch: &[tls_codec::VLBytes],
    owner: &StoredClient,
    now: u64,
) -> Result<Vec<NewKeyPackage>, ServiceError> {
    let crypto = RustCrypto::default();
    let mut validated: Vec<NewKeyPackage> = Vec::with_capacity(batch.len());
    for (index, bytes) in batch.iter().enumerate() {
        let rejected = |reason| ServiceError::KeyPackageRejected { index, reason };
        let new = validate_key_package(&crypto, bytes.as_slice(), owner, now).map_err(rejected)?;
        if validated
            .iter()
            .any(|seen| seen.key_package_ref == new.key_package_ref)
        {
            return Err(rejected(KeyPackageRejection::Duplicate));
        }
        if new.last_resort
            && validated
                .iter()
                .any(|seen| seen.last_resort && seen.ciphersuite == new.ciphersuite)
        {
            return Err(rejected(KeyPackageRejection::MultipleLastResort));
        }
        validated.push(new);
    }
    Ok(validated)
}

/// Checks one uploaded KeyPackage against MLS and against its uploader (`owner`) at `now`.
/// Pure: reachable from a fuzz target.
pub fn validate_key_package(
    crypto: &RustCrypto,
    bytes: &[u8],
    owner: &StoredClient,
    now: u64,
) -> Result<NewKeyPackage, KeyPackageRejection> {
    if bytes.len() > MAX_KEY_PACKAGE_LEN {
        return Err(KeyPackageRejection::Invalid(format!(
            "larger than {MAX_KEY_PACKAGE_LEN} bytes"
        )));
    }
    let key_package_in = KeyPackageIn::tls_deserialize_exact(bytes)
        .map_err(|e| KeyPackageRejection::Invalid(format!("does not parse: {e}")))?;
    let key_package = key_package_in
        .validate(crypto, ProtocolVersion::Mls10)
        .map_err(|e| match e {
            KeyPackageVerifyError::LifetimeError(e) => KeyPackageRejection::Expired(e.to_string()),
            other => KeyPackageRejection::Invalid(other.to_string()),
        })?;
    let ciphersuite = u16::from(key_package.ciphersuite());
    if !SUPPORTED_CIPHERSUITES.contains(&ciphersuite) {
        return Err(KeyPackageRejection::UnsupportedCiphersuite(ciphersuite));
    }
    // openmls checked the lifetime against the system clock; the service's clock decides.
    let lifetime = key_package.life_time();
    let (not_before, not_after) = (lifetime.not_before(), lifetime.not_after());
    if now < not_before || now >= not_after {
        return Err(KeyPackageRejection::Expired(format!(
            "valid from {not_before} until {not_after}, now is {now}"
        )));
    }
    if not_after.saturating_sub(not_before) > MAX_KEY_PACKAGE_LIFETIME {
        return Err(KeyPackageRejection::Expired(format!(
            "lifetime longer than {MAX_KEY_PACKAGE_LIFETIME} seconds"
        )));
    }
    let leaf = key_package.leaf_node();
    if leaf.signature_key().as_slice() != owner.signature_key {
        return Err(KeyPackageRejection::NotOwned);
    }
    let credential = leaf.credential();
    let current = credential.credential_type() == CredentialType::Basic
        && BasicCredential::try_from(credential.clone())
            .is_ok_and(|basic| basic.identity() == owner.credential.as_slice());
    if !current {
        return Err(KeyPackageRejection::CredentialMismatch);
    }
    let credential = <crate::protocol::ClientCredential as Deserialize>::tls_deserialize_exact(
        owner.credential.as_slice(),
    )
    .map_err(|_| KeyPackageRejection::CredentialMismatch)?;
    if credential.content.ciphersuite != ciphersuite {
        return Err(KeyPackageRejection::CiphersuiteMismatch {
            key_package: ciphersuite,
            credential: credential.content.ciphersuite,
        });
    }
    // What groups require of every member (protocol-spec/groups.md): refused now, rather than
    // claimed (used up) and then refused in the invite.
    let capabilities = leaf.capabilities();
    if !capabilities
        .extensions()
        .contains(&ExtensionType::Unknown(ROLES_EXTENSION_TYPE))
    {
        return Err(KeyPackageRejection::MissingCapability(
            "the roles extension (0xF0A1)",
        ));
    }
    if !capabilities.credentials().contains(&CredentialType::Basic) {
        return Err(KeyPackageRejection::MissingCapability(
            "the basic credential type",
        ));
    }
    let key_package_ref = key_package
        .hash_ref(crypto)
        .map_err(|e| KeyPackageRejection::Invalid(e.to_string()))?;
    Ok(NewKeyPackage {
        key_package_ref: key_package_ref.as_slice().to_vec(),
        ciphersuite,
        not_after,
        last_resort: key_package.last_resort(),
        key_package: bytes.to_vec(),
    })
}
