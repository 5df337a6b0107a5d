//! Channel-bound client authentication.
//!
//! Both ends derive the same 32 bytes from the TLS exporter of their QUIC connection; the client
//! signs them (with the client id, see `protocol::channel_binding_content`) with its Ed25519
//! signature key. The exporter differs on every connection, so a signature replayed from another
//! connection fails verification here.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::protocol::{
    channel_binding_content, AuthenticateRequest, ClientId, SignatureScheme, AUTH_EXPORTER_CONTEXT,
    AUTH_EXPORTER_LABEL, CHANNEL_BINDING_LEN,
};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the TLS exporter is unavailable on this connection")]
    NoChannelBinding,
    #[error("the signature is malformed")]
    MalformedSignature,
    #[error("the signature does not verify")]
    BadSignature,
}

/// The channel binding of `connection`: its TLS exporter under Roost's label.
pub fn channel_binding(
    connection: &quinn::Connection,
) -> Result<[u8; CHANNEL_BINDING_LEN], AuthError> {
    let mut binding = [0u8; CHANNEL_BINDING_LEN];
    connection
        .export_keying_material(&mut binding, AUTH_EXPORTER_LABEL, AUTH_EXPORTER_CONTEXT)
        .map_err(|_| AuthError::NoChannelBinding)?;
    Ok(binding)
}

/// Builds the `Authenticate` request a client sends on a connection with `binding`.
pub fn sign_authentication(
    key: &SigningKey,
    binding: &[u8; CHANNEL_BINDING_LEN],
    client: &ClientId,
) -> AuthenticateRequest {
    let signature = key.sign(&channel_binding_content(binding, client));
    AuthenticateRequest {
        client: client.clone(),
        signature_scheme: SignatureScheme::Ed25519,
        signature: signature.to_bytes().to_vec().into(),
    }
}

/// Checks that `request` was signed by `key` over this connection's `binding`.
pub fn verify_authentication(
    key: &VerifyingKey,
    binding: &[u8; CHANNEL_BINDING_LEN],
    request: &AuthenticateRequest,
) -> Result<(), AuthError> {
    let SignatureScheme::Ed25519 = request.signature_scheme;
    let signature = Signature::from_slice(request.signature.as_slice())
        .map_err(|_| AuthError::MalformedSignature)?;
    // Strict verification also refuses small-order keys and non-canonical signatures.
    key.verify_strict(
        &channel_binding_content(binding, &request.client),
        &signature,
    )
    .map_err(|_| AuthError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_binding_client_and_key() {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let binding = [7u8; CHANNEL_BINDING_LEN];
        let alice = ClientId::of("alice@a.example", 1);
        let request = sign_authentication(&key, &binding, &alice);
        verify_authentication(&key.verifying_key(), &binding, &request).unwrap();

        let other_binding = [8u8; CHANNEL_BINDING_LEN];
        assert!(verify_authentication(&key.verifying_key(), &other_binding, &request).is_err());

        let other_key = SigningKey::generate(&mut rand::rngs::OsRng);
        assert!(verify_authentication(&other_key.verifying_key(), &binding, &request).is_err());

        let mut other_client = request.clone();
        other_client.client.device_id = 2;
        assert!(verify_authentication(&key.verifying_key(), &binding, &other_client).is_err());

        let mut short = request;
        short.signature = vec![1u8; 10].into();
        assert!(matches!(
            verify_authentication(&key.verifying_key(), &binding, &short),
            Err(AuthError::MalformedSignature)
        ));
    }
}
