//! The homeserver's credential-signing keys: Ed25519 keys in `DATA_DIR/credential-keys/`, one
//! file per key (`<id>.key`, mode 0600), created on first start and added by
//! `roost rotate-credential-key`. The newest key signs; older ones stay published until every
//! credential they signed has expired.
//!
//! A running server picks up a key added by `rotate-credential-key` before it signs anything
//! (it looks at the directory whenever it issues a credential), so no credential is ever signed
//! by a key after its successor was created: a replaced key's published validity (its
//! successor's creation time plus the credential lifetime) covers everything it signed.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use anyhow::{bail, Context};
use ed25519_dalek::SigningKey;

use crate::clock::UnixTime;
use crate::identity::sign_credential;
use crate::protocol::{
    ClientCredential, ClientCredentialContent, CredentialVerifyingKey, SignedTreeHead, TreeHead,
};
use crate::secret_files::{create_private, create_private_dir};

/// The directory of key files inside the data directory.
pub const CREDENTIAL_KEYS_DIR: &str = "credential-keys";

/// One credential-signing key.
#[derive(Clone)]
pub struct CredentialKey {
    pub id: u32,
    pub created_at: UnixTime,
    signing_key: SigningKey,
}

/// All of the server's credential-signing keys, oldest first; never empty.
pub struct CredentialKeys {
    dir: PathBuf,
    keys: RwLock<Vec<CredentialKey>>,
}

impl CredentialKeys {
    /// Loads the keys in `data_dir`, creating the first one if there is none.
    pub fn load_or_create(data_dir: &Path, now: UnixTime) -> anyhow::Result<Self> {
        let dir = data_dir.join(CREDENTIAL_KEYS_DIR);
        let mut keys = load_all(&dir)?;
        if keys.is_empty() {
            create_private_dir(&dir)?;
            keys.push(create_key(&dir, 1, now)?);
        }
        Ok(Self {
            dir,
            keys: RwLock::new(keys),
        })
    }

    /// Adds a new key (the next id) to `data_dir`; a running server signs with it from the next
    /// credential it issues.
    pub fn rotate(data_dir: &Path, now: UnixTime) -> anyhow::Result<u32> {
        let dir = data_dir.join(CREDENTIAL_KEYS_DIR);
        create_private_dir(&dir)?;
        let next = load_all(&dir)?.last().map_or(Ok(1), |newest| {
            newest
                .id
                .checked_add(1)
                .context("credential key ids exhausted")
        })?;
        create_key(&dir, next, now)?;
        Ok(next)
    }

    /// The key that signs new credentials: the newest, as of the last look at the directory.
    pub fn active(&self) -> CredentialKey {
        let keys = self.keys();
        // Never empty: `load_or_create` guarantees one key, and a refresh never removes one.
        keys[keys.len() - 1].clone()
    }

    /// A signer holding a copy of the newest key, to sign credentials away from `self`. Looks
    /// at the directory first, so a key added while the server runs signs at once.
    pub fn active_signer(&self) -> CredentialSigner {
        self.refresh();
        let active = self.active();
        CredentialSigner {
            key_id: active.id,
            signing_key: active.signing_key,
        }
    }

    /// Takes in keys added to the directory since the last look. A key file that cannot be read
    /// is logged and the keys known so far stay in use.
    pub fn refresh(&self) {
        let newest = self.active().id;
        match load_all(&self.dir) {
            Ok(found) if found.last().is_some_and(|key| key.id > newest) => {
                let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
                for key in found {
                    if !keys.iter().any(|known| known.id == key.id) {
                        tracing::info!(key_id = key.id, "signing credentials with a new key");
                        keys.push(key);
                    }
                }
                keys.sort_by_key(|key| key.id);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot read the credential keys"),
        }
    }

    fn keys(&self) -> RwLockReadGuard<'_, Vec<CredentialKey>> {
        // Every update leaves the list whole, even if a holder panicked.
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The signing key whose public key is `public`, if it is one of ours (for signing as the
    /// group's external sender with the key the group lists).
    pub fn signer_for(&self, public: &[u8]) -> Option<SigningKey> {
        self.keys()
            .iter()
            .find(|key| key.signing_key.verifying_key().as_bytes() == public)
            .map(|key| key.signing_key.clone())
    }

    /// The verifying keys to publish at `now`, newest first. A key replaced by a newer one stays
    /// valid for `credential_lifetime` seconds after its replacement was created (the longest a
    /// credential it signed can live), and is no longer published afterwards.
    pub fn published(
        &self,
        now: UnixTime,
        credential_lifetime: u64,
    ) -> Vec<CredentialVerifyingKey> {
        let keys = self.keys();
        let mut published = Vec::new();
        for (index, key) in keys.iter().enumerate().rev() {
            let valid_until = keys.get(index + 1).map_or(u64::MAX, |successor| {
                successor.created_at.saturating_add(credential_lifetime)
            });
            if valid_until >= now {
                published.push(CredentialVerifyingKey {
                    key_id: key.id,
                    public_key: key.signing_key.verifying_key().to_bytes().to_vec().into(),
                    valid_until,
                });
            }
        }
        published
    }
}

/// Signs credentials with one credential-signing key.
#[derive(Clone)]
pub struct CredentialSigner {
    key_id: u32,
    signing_key: SigningKey,
}

impl CredentialSigner {
    /// Signs `content`, setting its issuer key id to this key's.
    pub fn issue(&self, mut content: ClientCredentialContent) -> ClientCredential {
        content.issuer_key_id = self.key_id;
        sign_credential(&self.signing_key, content)
    }

    /// Signs a transparency tree head, setting its key id to this key's.
    pub fn sign_head(&self, mut head: TreeHead) -> SignedTreeHead {
        use ed25519_dalek::Signer;
        head.key_id = self.key_id;
        let signature = self
            .signing_key
            .sign(&crate::protocol::tree_head_signature_content(&head));
        SignedTreeHead {
            head,
            signature: signature.to_bytes().to_vec().into(),
        }
    }
}

fn key_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id}.key"))
}

fn create_key(dir: &Path, id: u32, now: UnixTime) -> anyhow::Result<CredentialKey> {
    let signing_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let contents = format!(
        "# Roost credential-signing key {id}. Private: whoever has it can impersonate every user.\n\
         created {now}\nseed {}\n",
        hex::encode(signing_key.to_bytes())
    );
    // Written aside and renamed into place, so a running server never reads half a key.
    let written = dir.join(format!("{id}.key.new"));
    create_private(&written, contents.as_bytes())?;
    fs::rename(&written, key_path(dir, id))
        .with_context(|| format!("installing credential key {id}"))?;
    Ok(CredentialKey {
        id,
        created_at: now,
        signing_key,
    })
}

/// Loads every `<id>.key` in `dir`, sorted by id. A missing directory holds no keys.
fn load_all(dir: &Path) -> anyhow::Result<Vec<CredentialKey>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(id) = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".key"))
            .and_then(|id| id.parse::<u32>().ok())
        else {
            continue;
        };
        keys.push(
            parse_key(id, &fs::read_to_string(&path)?)
                .with_context(|| format!("reading credential key {}", path.display()))?,
        );
    }
    keys.sort_by_key(|key| key.id);
    Ok(keys)
}

fn parse_key(id: u32, contents: &str) -> anyhow::Result<CredentialKey> {
    let mut created_at = None;
    let mut seed = None;
    for line in contents.lines().filter(|line| !line.starts_with('#')) {
        match line.split_once(' ') {
            Some(("created", value)) => created_at = Some(value.trim().parse()?),
            Some(("seed", value)) => {
                let bytes: [u8; 32] = hex::decode(value.trim())?
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("the seed is not 32 bytes"))?;
                seed = Some(bytes);
            }
            _ => {}
        }
    }
    let (Some(created_at), Some(seed)) = (created_at, seed) else {
        bail!("missing 'created' or 'seed' line");
    };
    Ok(CredentialKey {
        id,
        created_at,
        signing_key: SigningKey::from_bytes(&seed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_rotate_and_retire() {
        let dir = tempfile::tempdir().unwrap();
        let first = CredentialKeys::load_or_create(dir.path(), 1_000).unwrap();
        let again = CredentialKeys::load_or_create(dir.path(), 2_000).unwrap();
        assert_eq!(
            first.published(0, 0),
            again.published(0, 0),
            "the key was not reused"
        );

        assert_eq!(CredentialKeys::rotate(dir.path(), 5_000).unwrap(), 2);
        let rotated = CredentialKeys::load_or_create(dir.path(), 5_000).unwrap();
        assert_eq!(rotated.active().id, 2);
        let lifetime = 100;
        let published = rotated.published(5_050, lifetime);
        assert_eq!(
            published
                .iter()
                .map(|k| (k.key_id, k.valid_until))
                .collect::<Vec<_>>(),
            vec![(2, u64::MAX), (1, 5_100)]
        );
        assert_eq!(
            rotated.published(5_101, lifetime).len(),
            1,
            "key 1 outlived its credentials"
        );

        // A running server takes in a key added meanwhile, before it signs with the old one.
        let running = CredentialKeys::load_or_create(dir.path(), 5_000).unwrap();
        assert_eq!(CredentialKeys::rotate(dir.path(), 6_000).unwrap(), 3);
        assert_eq!(running.active().id, 2, "nothing signed yet: not looked");
        assert_eq!(running.active_signer().key_id, 3);
        assert_eq!(
            running
                .published(6_050, lifetime)
                .iter()
                .map(|k| (k.key_id, k.valid_until))
                .collect::<Vec<_>>(),
            vec![(3, u64::MAX), (2, 6_100)],
            "key 2's validity counts from key 3's creation, after which it signed nothing"
        );

        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(CREDENTIAL_KEYS_DIR).join("1.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
