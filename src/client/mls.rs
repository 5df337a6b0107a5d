//! A device's MLS side: its openmls provider (crypto and the key store holding the private parts
//! of its KeyPackages and groups), its signer and its MLS credential (the server-issued
//! `ClientCredential`, carried as the identity of an MLS basic credential).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, CredentialWithKey, ExtensionType, KeyPackage,
    SignatureScheme,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider;
use tls_codec::{Deserialize, Serialize, VLBytes};

use super::state::DeviceIdentity;
use crate::protocol::{ClientId, ROLES_EXTENSION_TYPE};
use crate::secret_files::write_private;

/// The file in a device's state directory that holds its MLS key store.
pub const MLS_STORAGE_FILE: &str = "mls-storage.bin";

pub struct DeviceMls {
    client: ClientId,
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    /// The Ed25519 seed behind `signer`, to make copies of it.
    signing_seed: [u8; 32],
    credential: CredentialWithKey,
    ciphersuite: Ciphersuite,
}

impl DeviceMls {
    /// The MLS side of `identity`, with an empty key store.
    pub fn new(identity: &DeviceIdentity) -> anyhow::Result<Self> {
        let ciphersuite = Ciphersuite::try_from(identity.ciphersuite)
            .map_err(|_| anyhow::anyhow!("unknown ciphersuite {:#06x}", identity.ciphersuite))?;
        let public = identity.signing_key.verifying_key().to_bytes().to_vec();
        let signer = SignatureKeyPair::from_raw(
            SignatureScheme::ED25519,
            identity.signing_key.to_bytes().to_vec(),
            public.clone(),
        );
        let encoded_credential = identity.credential.tls_serialize_detached()?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(encoded_credential).into(),
            signature_key: public.into(),
        };
        Ok(Self {
            client: identity.client.clone(),
            provider: OpenMlsRustCrypto::default(),
            signer,
            signing_seed: identity.signing_key.to_bytes(),
            credential,
            ciphersuite,
        })
    }

    /// The MLS side of `identity` with the key store saved in `state_dir` (empty if none was).
    pub fn load(identity: &DeviceIdentity, state_dir: &Path) -> anyhow::Result<Self> {
        let mls = Self::new(identity)?;
        let path = state_dir.join(MLS_STORAGE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let entries = Vec::<(VLBytes, VLBytes)>::tls_deserialize_exact(bytes)
                    .with_context(|| format!("reading {}", path.display()))?;
                let mut values = mls
                    .provider
                    .storage()
                    .values
                    .write()
                    .map_err(|_| anyhow::anyhow!("MLS key store lock poisoned"))?;
                values.extend(
                    entries
                        .into_iter()
                        .map(|(key, value)| (Vec::from(key), Vec::from(value))),
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        Ok(mls)
    }

    /// Saves the key store into `state_dir` (mode 0600: it holds private keys).
    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let entries: Vec<(VLBytes, VLBytes)> = {
            let values = self
                .provider
                .storage()
                .values
                .read()
                .map_err(|_| anyhow::anyhow!("MLS key store lock poisoned"))?;
            let values: &HashMap<Vec<u8>, Vec<u8>> = &values;
            values
                .iter()
                .map(|(key, value)| (key.clone().into(), value.clone().into()))
                .collect()
        };
        write_private(
            &state_dir.join(MLS_STORAGE_FILE),
            &entries.tls_serialize_detached()?,
        )
    }

    /// A copy of this device's MLS side, key store included (as if saved and loaded again).
    pub fn snapshot(&self) -> anyhow::Result<Self> {
        let copy = Self {
            client: self.client.clone(),
            provider: OpenMlsRustCrypto::default(),
            signer: SignatureKeyPair::from_raw(
                SignatureScheme::ED25519,
                self.signing_seed.to_vec(),
                self.signer.public().to_vec(),
            ),
            signing_seed: self.signing_seed,
            credential: self.credential.clone(),
            ciphersuite: self.ciphersuite,
        };
        let values = self
            .provider
            .storage()
            .values
            .read()
            .map_err(|_| anyhow::anyhow!("MLS key store lock poisoned"))?
            .clone();
        *copy
            .provider
            .storage()
            .values
            .write()
            .map_err(|_| anyhow::anyhow!("MLS key store lock poisoned"))? = values;
        Ok(copy)
    }

    /// Makes `count` KeyPackages (and a last-resort one when `last_resort`), keeping their
    /// private keys in the key store. Returns them TLS-encoded, ready to publish.
    pub fn key_packages(&self, count: usize, last_resort: bool) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(count + usize::from(last_resort));
        for index in 0..count + usize::from(last_resort) {
            // Every extension a KeyPackage carries must be in its leaf's capabilities.
            let mut builder = KeyPackage::builder().leaf_node_capabilities(self.capabilities());
            if index == count {
                builder = builder.mark_as_last_resort();
            }
            let bundle = builder
                .build(
                    self.ciphersuite,
                    &self.provider,
                    &self.signer,
                    self.credential.clone(),
                )
                .context("creating a KeyPackage")?;
            out.push(bundle.key_package().tls_serialize_detached()?);
        }
        Ok(out)
    }

    /// The leaf capabilities this device announces.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities::builder()
            .extensions(vec![
                ExtensionType::LastResort,
                ExtensionType::Unknown(ROLES_EXTENSION_TYPE),
            ])
            .build()
    }

    /// The client this device is.
    pub fn client(&self) -> &ClientId {
        &self.client
    }

    pub fn provider(&self) -> &OpenMlsRustCrypto {
        &self.provider
    }

    pub fn signer(&self) -> &SignatureKeyPair {
        &self.signer
    }

    pub fn credential(&self) -> &CredentialWithKey {
        &self.credential
    }

    pub fn ciphersuite(&self) -> Ciphersuite {
        self.ciphersuite
    }
}
