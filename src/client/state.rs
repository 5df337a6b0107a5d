//! A device's identity on disk: its user, device id, signature key and credential, in
//! `STATE_DIR/identity.json` (mode 0600: it holds the private key).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use tls_codec::{Deserialize as _, Serialize as _};

use crate::protocol::{ClientCredential, ClientId, ClientRegistered, Text};
use crate::secret_files::{create_private_dir, write_private};

pub const IDENTITY_FILE: &str = "identity.json";

/// A registered device.
#[derive(Clone, Debug)]
pub struct DeviceIdentity {
    pub client: ClientId,
    pub signing_key: SigningKey,
    pub credential: ClientCredential,
    pub ciphersuite: u16,
}

#[derive(Serialize, Deserialize)]
struct IdentityFile {
    user_id: String,
    device_id: u32,
    ciphersuite: u16,
    /// Ed25519 seed, hex.
    signing_key: String,
    /// TLS-encoded `ClientCredential`, hex.
    credential: String,
}

impl DeviceIdentity {
    pub fn new(registered: ClientRegistered, signing_key: SigningKey, ciphersuite: u16) -> Self {
        Self {
            client: registered.client,
            signing_key,
            credential: registered.credential,
            ciphersuite,
        }
    }

    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(IDENTITY_FILE)
    }

    /// Whether `state_dir` already holds an identity.
    pub fn exists(state_dir: &Path) -> bool {
        Self::path(state_dir).exists()
    }

    pub fn load(state_dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(state_dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no identity in {} (register or add this device first)",
                state_dir.display()
            )
        })?;
        let file: IdentityFile =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let seed: [u8; 32] = hex::decode(&file.signing_key)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .with_context(|| format!("{}: bad signing key", path.display()))?;
        let credential = hex::decode(&file.credential)
            .ok()
            .and_then(|bytes| ClientCredential::tls_deserialize_exact(bytes).ok())
            .with_context(|| format!("{}: bad credential", path.display()))?;
        Ok(Self {
            client: ClientId {
                user_id: Text::new(file.user_id)?,
                device_id: file.device_id,
            },
            signing_key: SigningKey::from_bytes(&seed),
            credential,
            ciphersuite: file.ciphersuite,
        })
    }

    /// Writes the identity, refusing to overwrite another one.
    pub fn save_new(&self, state_dir: &Path) -> anyhow::Result<()> {
        if Self::exists(state_dir) {
            bail!(
                "{} already holds an identity; use another --state directory",
                state_dir.display()
            );
        }
        self.save(state_dir)
    }

    /// Writes the identity (replacing the stored one, e.g. after renewing the credential).
    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        create_private_dir(state_dir)?;
        let file = IdentityFile {
            user_id: self.client.user_id.as_str().to_owned(),
            device_id: self.client.device_id,
            ciphersuite: self.ciphersuite,
            signing_key: hex::encode(self.signing_key.to_bytes()),
            credential: hex::encode(self.credential.tls_serialize_detached()?),
        };
        write_private(
            &Self::path(state_dir),
            serde_json::to_string_pretty(&file)?.as_bytes(),
        )
    }

    /// Removes the identity (after the server deleted the client or its user).
    pub fn forget(state_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(state_dir);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }
}
