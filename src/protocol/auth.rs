//! Channel-bound client authentication: what a client signs and sends.
//!
//! The client signs a value that only exists on this very QUIC connection (a TLS exporter), so a
//! signature observed on one connection is worthless on any other.

use tls_codec::{Serialize, TlsDeserialize, TlsSerialize, TlsSize, VLByteSlice, VLBytes};

use super::ClientId;

/// TLS exporter label (RFC 8446 section 7.5) both sides use to derive the channel binding.
pub const AUTH_EXPORTER_LABEL: &[u8] = b"EXPORTER-roost-client-authentication";
/// TLS exporter context for the channel binding: empty.
pub const AUTH_EXPORTER_CONTEXT: &[u8] = b"";
/// Length of the exported channel binding, in bytes.
pub const CHANNEL_BINDING_LEN: usize = 32;
/// Domain-separation label at the start of the signed content.
pub const AUTH_SIGNATURE_LABEL: &[u8] = b"roost/1 client authentication";

/// Signature schemes, numbered as TLS SignatureScheme values (RFC 8446 section 4.2.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u16)]
pub enum SignatureScheme {
    Ed25519 = 0x0807,
}

/// `Authenticate` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct AuthenticateRequest {
    /// The client the connection wants to act as.
    pub client: ClientId,
    pub signature_scheme: SignatureScheme,
    /// Signature over [`channel_binding_content`] with the client's signature key.
    pub signature: VLBytes,
}

/// `Authenticate` response body: the client the connection now acts as.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct AuthenticateResponse {
    pub client: ClientId,
}

/// The bytes a client signs to authenticate:
///
/// ```text
/// struct {
///     opaque label<V> = "roost/1 client authentication";
///     opaque channel_binding<V>;   // TLS exporter of this connection
///     ClientId client;
/// } AuthenticationContent;
/// ```
pub fn channel_binding_content(
    channel_binding: &[u8; CHANNEL_BINDING_LEN],
    client: &ClientId,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    // Writing into a Vec cannot fail, and these lengths are far below the varint limit.
    let _ = VLByteSlice(AUTH_SIGNATURE_LABEL).tls_serialize(&mut out);
    let _ = VLByteSlice(channel_binding).tls_serialize(&mut out);
    let _ = client.tls_serialize(&mut out);
    out
}
