//! Invite codes for `--registration invite`.
//!
//! An invite is authenticated with a key in the data directory (`invite-key`, mode 0600) and
//! recorded in the store when issued ([`issue`]), so the operator can list and revoke invites;
//! registration accepts only a recorded, unrevoked, unexpired invite with uses left. The store
//! counts each invite's uses.
//!
//! Format: `roost-invite-1.<expires_at>.<max_uses>.<nonce hex>.<mac hex>`, where the MAC is
//! HMAC-SHA256 under the invite key over everything before the last dot.

use std::fs;
use std::path::Path;

use anyhow::Context;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::clock::UnixTime;
use crate::secret_files::create_private;
use crate::store::{Store, StoreError};

/// The invite key's file in the data directory.
pub const INVITE_KEY_FILE: &str = "invite-key";
const PREFIX: &str = "roost-invite-1";
const NONCE_LEN: usize = 16;

pub struct InviteKey([u8; 32]);

/// A verified invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub nonce: Vec<u8>,
    pub max_uses: u32,
    pub expires_at: UnixTime,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    #[error("the invite code is malformed")]
    Malformed,
    #[error("the invite code was not issued by this server")]
    Forged,
    #[error("the invite code expired")]
    Expired,
    #[error("the invite code has been used as often as it allows")]
    UsedUp,
    #[error("the invite code was revoked")]
    Revoked,
}

impl InviteKey {
    /// Loads the invite key from `data_dir`, creating it if absent.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(INVITE_KEY_FILE);
        if !path.exists() {
            let mut key = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut key);
            match create_private(&path, hex::encode(key).as_bytes()) {
                Ok(()) => return Ok(Self(key)),
                // Another process created it first: use theirs.
                Err(_) if path.exists() => {}
                Err(e) => return Err(e),
            }
        }
        let contents =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let key = hex::decode(contents.trim())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .with_context(|| format!("{} is not a 32-byte hex key", path.display()))?;
        Ok(Self(key))
    }

    /// Makes an invite valid until `expires_at` for up to `max_uses` registrations (not yet
    /// recorded: see [`issue`]). Returns the code and its nonce, the invite's id.
    pub fn create(&self, expires_at: UnixTime, max_uses: u32) -> (String, Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let body = format!("{PREFIX}.{expires_at}.{max_uses}.{}", hex::encode(nonce));
        let mac = hex::encode(self.mac(&body));
        (format!("{body}.{mac}"), nonce.to_vec())
    }

    /// Checks an invite's authenticity and expiry (not its uses: the store counts those).
    pub fn verify(&self, code: &str, now: UnixTime) -> Result<Invite, InviteError> {
        let (body, mac) = code.rsplit_once('.').ok_or(InviteError::Malformed)?;
        let mac = hex::decode(mac).map_err(|_| InviteError::Malformed)?;
        let mut verifier = self.hmac();
        verifier.update(body.as_bytes());
        verifier
            .verify_slice(&mac)
            .map_err(|_| InviteError::Forged)?;
        let mut fields = body.split('.');
        let (Some(PREFIX), Some(expires_at), Some(max_uses), Some(nonce), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(InviteError::Malformed);
        };
        let invite = Invite {
            expires_at: expires_at.parse().map_err(|_| InviteError::Malformed)?,
            max_uses: max_uses.parse().map_err(|_| InviteError::Malformed)?,
            nonce: hex::decode(nonce).map_err(|_| InviteError::Malformed)?,
        };
        if now > invite.expires_at {
            return Err(InviteError::Expired);
        }
        Ok(invite)
    }

    /// A key for another purpose, derived from this one: HMAC-SHA256 of `label` (never the
    /// body of an invite, which starts with its own prefix). Every node of a domain has the
    /// invite key, so every node derives the same keys.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        self.mac(label)
            .try_into()
            .expect("HMAC-SHA256 makes 32 bytes")
    }

    fn hmac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts a 32-byte key")
    }

    fn mac(&self, body: &str) -> Vec<u8> {
        let mut mac = self.hmac();
        mac.update(body.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// Issues an invite: makes its code and records it in `store`, so that it admits users.
/// Returns the code and the invite's id (its nonce, in hex).
pub async fn issue(
    key: &InviteKey,
    store: &Store,
    now: UnixTime,
    expires_at: UnixTime,
    max_uses: u32,
) -> Result<(String, String), StoreError> {
    let (code, nonce) = key.create(expires_at, max_uses);
    let id = hex::encode(&nonce);
    store
        .record_invite(nonce, now, expires_at, max_uses)
        .await?;
    Ok((code, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invites_verify_expire_and_cannot_be_forged() {
        let dir = tempfile::tempdir().unwrap();
        let key = InviteKey::load_or_create(dir.path()).unwrap();
        let (code, nonce) = key.create(1_000, 3);
        let invite = key.verify(&code, 999).unwrap();
        assert_eq!((invite.max_uses, invite.expires_at), (3, 1_000));
        assert_eq!(invite.nonce, nonce);
        assert_eq!(key.verify(&code, 1_001), Err(InviteError::Expired));

        let more_uses = code.replacen(".3.", ".300.", 1);
        assert_eq!(key.verify(&more_uses, 999), Err(InviteError::Forged));
        let other_server = InviteKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(other_server.verify(&code, 999), Err(InviteError::Forged));
        assert_eq!(key.verify("nonsense", 0), Err(InviteError::Malformed));

        let reloaded = InviteKey::load_or_create(dir.path()).unwrap();
        assert!(
            reloaded.verify(&code, 999).is_ok(),
            "the key was not persisted"
        );
    }
}
