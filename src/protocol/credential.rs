//! Client credentials: a homeserver's signed statement that a signature key belongs to a client of
//! one of its users. Clients carry the encoded credential inside their MLS credential, so any
//! member of a group can check any other member against the issuing homeserver's published keys.

use tls_codec::{Serialize, TlsDeserialize, TlsSerialize, TlsSize, VLByteSlice, VLBytes};

use super::ClientId;

/// Domain-separation label at the start of the signed credential content.
pub const CREDENTIAL_SIGNATURE_LABEL: &[u8] = b"roost/1 client credential";
/// Length of an Ed25519 public key, in bytes.
pub const ED25519_PUBLIC_KEY_LEN: usize = 32;

/// MLS ciphersuites whose signature scheme (Ed25519) Roost clients use.
pub const SUPPORTED_CIPHERSUITES: &[u16] = &[
    0x0001, // MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
    0x0003, // MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519
];

/// What the homeserver signs.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ClientCredentialContent {
    pub client: ClientId,
    /// The client's Ed25519 signature public key (32 bytes): its MLS leaf signature key.
    pub signature_key: VLBytes,
    /// The MLS ciphersuite the key is for.
    pub ciphersuite: u16,
    /// Valid from this Unix time (seconds), inclusive.
    pub not_before: u64,
    /// Valid until this Unix time (seconds), inclusive.
    pub not_after: u64,
    /// Which of the homeserver's credential-signing keys signed it.
    pub issuer_key_id: u32,
}

/// A signed client credential.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ClientCredential {
    pub content: ClientCredentialContent,
    /// Ed25519 signature over [`credential_signature_content`].
    pub signature: VLBytes,
}

/// The bytes the homeserver signs:
/// `struct { opaque label<V> = "roost/1 client credential"; ClientCredentialContent content; }`.
pub fn credential_signature_content(content: &ClientCredentialContent) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    // Writing into a Vec cannot fail, and these lengths are far below the varint limit.
    let _ = VLByteSlice(CREDENTIAL_SIGNATURE_LABEL).tls_serialize(&mut out);
    let _ = content.tls_serialize(&mut out);
    out
}

/// A homeserver's published credential-verifying key.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct CredentialVerifyingKey {
    pub key_id: u32,
    /// Ed25519 public key, 32 bytes.
    pub public_key: VLBytes,
    /// Credentials signed with this key are accepted until this Unix time; after a rotation an
    /// old key stays listed until every credential it signed has expired.
    pub valid_until: u64,
}
