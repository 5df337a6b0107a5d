//! Accounts and identity: registration, clients (devices), discovery, deletion.

use tls_codec::{Serialize, TlsDeserialize, TlsSerialize, TlsSize, VLByteSlice, VLBytes};

use super::{ClientCredential, ClientId, Text};

/// Label of the proof of possession in `RegisterUser`.
pub const REGISTER_PROOF_LABEL: &[u8] = b"roost/1 register user";
/// Label of the proof of possession in `AddClient`.
pub const ADD_CLIENT_PROOF_LABEL: &[u8] = b"roost/1 add client";

/// Most clients (devices) a user may have at once.
pub const MAX_CLIENTS_PER_USER: usize = 100;

/// How the server takes registrations, as announced in `ServerInfo`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u8)]
pub enum RegistrationMode {
    Open = 0,
    Closed = 1,
    Invite = 2,
}

/// `RegisterUser` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct RegisterUserRequest {
    pub user_id: Text,
    /// The first client's Ed25519 signature public key, 32 bytes.
    pub signature_key: VLBytes,
    pub ciphersuite: u16,
    /// An invite code, when the server takes registrations by invitation.
    pub invite: Option<Text>,
    /// The key's signature over [`register_proof_content`].
    pub proof: VLBytes,
}

/// `AddClient` request body: a new client (device) for the authenticated client's user.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct AddClientRequest {
    /// The new client's Ed25519 signature public key, 32 bytes.
    pub signature_key: VLBytes,
    pub ciphersuite: u16,
    /// The new key's signature over [`add_client_proof_content`].
    pub proof: VLBytes,
}

/// Response body of `RegisterUser` and `AddClient`: the new client and its credential.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ClientRegistered {
    pub client: ClientId,
    pub credential: ClientCredential,
}

/// One client of a user, as `ListClients` and `LookupUser` return it.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ClientEntry {
    pub credential: ClientCredential,
    /// When the client was added (Unix seconds).
    pub added_at: u64,
}

/// Response body of `ListClients` and `LookupUser`.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct UserClients {
    pub user_id: Text,
    pub clients: Vec<ClientEntry>,
}

/// `RemoveClient` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct RemoveClientRequest {
    pub client: ClientId,
}

/// `LookupUser` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct LookupUserRequest {
    pub user_id: Text,
}

/// What a new user's first key signs:
/// `struct { opaque label<V>; opaque channel_binding<V>; opaque user_id<V>;
///           opaque signature_key<V>; uint16 ciphersuite; }`.
pub fn register_proof_content(
    channel_binding: &[u8],
    user_id: &str,
    signature_key: &[u8],
    ciphersuite: u16,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    // Writing into a Vec cannot fail, and these lengths are far below the varint limit.
    let _ = VLByteSlice(REGISTER_PROOF_LABEL).tls_serialize(&mut out);
    let _ = VLByteSlice(channel_binding).tls_serialize(&mut out);
    let _ = VLByteSlice(user_id.as_bytes()).tls_serialize(&mut out);
    let _ = VLByteSlice(signature_key).tls_serialize(&mut out);
    out.extend_from_slice(&ciphersuite.to_be_bytes());
    out
}

/// What a new client's key signs to be added:
/// `struct { opaque label<V>; opaque user_id<V>; opaque signature_key<V>; uint16 ciphersuite; }`.
pub fn add_client_proof_content(user_id: &str, signature_key: &[u8], ciphersuite: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let _ = VLByteSlice(ADD_CLIENT_PROOF_LABEL).tls_serialize(&mut out);
    let _ = VLByteSlice(user_id.as_bytes()).tls_serialize(&mut out);
    let _ = VLByteSlice(signature_key).tls_serialize(&mut out);
    out.extend_from_slice(&ciphersuite.to_be_bytes());
    out
}
