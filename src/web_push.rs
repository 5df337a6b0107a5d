//! Web Push message encryption (RFC 8291, `aes128gcm` of RFC 8188) and VAPID (RFC 8292): the
//! server encrypts a wake-up for a subscription and signs the push service's token; a receiver
//! (the `push-listen` command, the tests, any Web Push client) decrypts and checks. Pure: no I/O.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes128Gcm;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

use crate::protocol::{WEB_PUSH_AUTH_LEN, WEB_PUSH_KEY_LEN};

/// The record size announced in the `aes128gcm` header: every wake-up fits in one record.
pub const RECORD_SIZE: u32 = 4096;
/// Bytes of the `aes128gcm` header: salt, record size, key id length, key id (the sender's key).
pub const HEADER_LEN: usize = 16 + 4 + 1 + WEB_PUSH_KEY_LEN;
/// The longest plaintext [`encrypt`] takes: one record, with its delimiter and tag.
pub const MAX_PLAINTEXT_LEN: usize = RECORD_SIZE as usize - 1 - TAG_LEN;
/// The longest push message body [`decrypt`] reads: one record of [`RECORD_SIZE`].
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + RECORD_SIZE as usize;
/// The longest `Authorization` header [`verify_authorization`] reads.
pub const MAX_AUTHORIZATION_LEN: usize = 4096;
/// The longest VAPID token lifetime a push service accepts (RFC 8292 section 2).
pub const MAX_VAPID_LIFETIME_SECS: u64 = 24 * 3600;

const TAG_LEN: usize = 16;
/// The delimiter after the plaintext of the last (here: only) record (RFC 8188 section 2).
const LAST_RECORD_DELIMITER: u8 = 2;

/// Why a Web Push message or token does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebPushError {
    #[error("the key is not a P-256 point")]
    InvalidKey,
    #[error("the authentication secret is not {WEB_PUSH_AUTH_LEN} bytes")]
    InvalidAuthSecret,
    #[error("longer than one record")]
    TooLong,
    #[error("the message is malformed: {0}")]
    Malformed(&'static str),
    #[error("the message does not decrypt with this subscription's keys")]
    Undecryptable,
    #[error("the VAPID token is invalid: {0}")]
    InvalidToken(&'static str),
}

/// A subscription's key pair as its receiver holds it: the private key stays with the device.
pub struct SubscriptionKeys {
    secret: SecretKey,
    /// `p256dh`: the uncompressed public key handed to the server.
    pub public: [u8; WEB_PUSH_KEY_LEN],
    /// `auth`: the shared authentication secret handed to the server.
    pub auth: [u8; WEB_PUSH_AUTH_LEN],
}

impl SubscriptionKeys {
    pub fn generate() -> Self {
        let secret = SecretKey::random(&mut rand::rngs::OsRng);
        let mut auth = [0u8; WEB_PUSH_AUTH_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut auth);
        Self::from_parts(secret, auth)
    }

    /// Keys from a private scalar and an auth secret (kept by a receiver between runs).
    pub fn from_bytes(secret: &[u8], auth: [u8; WEB_PUSH_AUTH_LEN]) -> Result<Self, WebPushError> {
        let secret = SecretKey::from_slice(secret).map_err(|_| WebPushError::InvalidKey)?;
        Ok(Self::from_parts(secret, auth))
    }

    fn from_parts(secret: SecretKey, auth: [u8; WEB_PUSH_AUTH_LEN]) -> Self {
        let public = uncompressed(&secret.public_key());
        Self {
            secret,
            public,
            auth,
        }
    }

    /// The private scalar (for a receiver that keeps its subscription between runs).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes().into()
    }
}

fn uncompressed(key: &PublicKey) -> [u8; WEB_PUSH_KEY_LEN] {
    let point = key.to_encoded_point(false);
    let mut out = [0u8; WEB_PUSH_KEY_LEN];
    out.copy_from_slice(point.as_bytes());
    out
}

/// Checks that `p256dh` is an uncompressed P-256 point and `auth` a 16-byte secret.
pub fn check_subscription(p256dh: &[u8], auth: &[u8]) -> Result<(), WebPushError> {
    parse_point(p256dh)?;
    if auth.len() != WEB_PUSH_AUTH_LEN {
        return Err(WebPushError::InvalidAuthSecret);
    }
    Ok(())
}

fn parse_point(bytes: &[u8]) -> Result<PublicKey, WebPushError> {
    if bytes.len() != WEB_PUSH_KEY_LEN || bytes[0] != 0x04 {
        return Err(WebPushError::InvalidKey);
    }
    PublicKey::from_sec1_bytes(bytes).map_err(|_| WebPushError::InvalidKey)
}

/// HMAC-SHA-256 of `parts` under `key`: HKDF-Extract, and HKDF-Expand of one block.
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The content-encryption key and nonce of RFC 8291 section 3.4 and RFC 8188 section 2.2.
fn derive(
    ecdh_secret: &[u8],
    auth: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
    salt: &[u8],
) -> ([u8; 16], [u8; 12]) {
    let prk_key = hmac(auth, &[ecdh_secret]);
    let ikm = hmac(&prk_key, &[b"WebPush: info\0", ua_public, as_public, &[1]]);
    let prk = hmac(salt, &[&ikm]);
    let cek = hmac(&prk, &[b"Content-Encoding: aes128gcm\0", &[1]]);
    let nonce = hmac(&prk, &[b"Content-Encoding: nonce\0", &[1]]);
    let mut key = [0u8; 16];
    key.copy_from_slice(&cek[..16]);
    let mut iv = [0u8; 12];
    iv.copy_from_slice(&nonce[..12]);
    (key, iv)
}

/// Encrypts `plaintext` for the subscription (`p256dh`, `auth`) with a fresh sender key and
/// salt: the body of an RFC 8030 push message with `Content-Encoding: aes128gcm`.
pub fn encrypt(p256dh: &[u8], auth: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, WebPushError> {
    let sender = SecretKey::random(&mut rand::rngs::OsRng);
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
    encrypt_with(&sender, &salt, p256dh, auth, plaintext)
}

fn encrypt_with(
    sender: &SecretKey,
    salt: &[u8; 16],
    p256dh: &[u8],
    auth: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, WebPushError> {
    check_subscription(p256dh, auth)?;
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(WebPushError::TooLong);
    }
    let receiver = parse_point(p256dh)?;
    let ecdh = p256::ecdh::diffie_hellman(sender.to_nonzero_scalar(), receiver.as_affine());
    let as_public = uncompressed(&sender.public_key());
    let (key, nonce) = derive(ecdh.raw_secret_bytes(), auth, p256dh, &as_public, salt);
    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    record.push(LAST_RECORD_DELIMITER);
    let sealed = Aes128Gcm::new(&key.into())
        .encrypt(&nonce.into(), record.as_slice())
        .map_err(|_| WebPushError::TooLong)?;
    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
    out.extend_from_slice(salt);
    out.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    out.push(WEB_PUSH_KEY_LEN as u8);
    out.extend_from_slice(&as_public);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Decrypts an `aes128gcm` push message body for `keys` (a single record, as Web Push sends).
pub fn decrypt(keys: &SubscriptionKeys, body: &[u8]) -> Result<Vec<u8>, WebPushError> {
    if body.len() > MAX_MESSAGE_LEN {
        return Err(WebPushError::TooLong);
    }
    if body.len() < HEADER_LEN + TAG_LEN + 1 {
        return Err(WebPushError::Malformed("shorter than its header"));
    }
    let (salt, rest) = body.split_at(16);
    let (record_size, rest) = rest.split_at(4);
    let record_size = u32::from_be_bytes(record_size.try_into().expect("4 bytes"));
    let (&key_id_len, rest) = rest.split_first().expect("checked above");
    if usize::from(key_id_len) != WEB_PUSH_KEY_LEN {
        return Err(WebPushError::Malformed("the key id is not a P-256 point"));
    }
    let (as_public, sealed) = rest.split_at(WEB_PUSH_KEY_LEN);
    if sealed.len() > record_size as usize {
        return Err(WebPushError::Malformed("more than one record"));
    }
    let sender = parse_point(as_public)?;
    let ecdh = p256::ecdh::diffie_hellman(keys.secret.to_nonzero_scalar(), sender.as_affine());
    let (key, nonce) = derive(
        ecdh.raw_secret_bytes(),
        &keys.auth,
        &keys.public,
        as_public,
        salt,
    );
    let mut record = Aes128Gcm::new(&key.into())
        .decrypt(
            &nonce.into(),
            Payload {
                msg: sealed,
                aad: b"",
            },
        )
        .map_err(|_| WebPushError::Undecryptable)?;
    // Padding: zeros after the delimiter; the delimiter of a last record is 2.
    let end = record
        .iter()
        .rposition(|&byte| byte != 0)
        .ok_or(WebPushError::Malformed("no record delimiter"))?;
    if record[end] != LAST_RECORD_DELIMITER {
        return Err(WebPushError::Malformed("not the last record"));
    }
    record.truncate(end);
    Ok(record)
}

/// The server's VAPID key (RFC 8292): identifies it to push services.
pub struct VapidKey {
    signing: SigningKey,
    public: [u8; WEB_PUSH_KEY_LEN],
}

impl VapidKey {
    pub fn generate() -> Self {
        Self::from_secret(SecretKey::random(&mut rand::rngs::OsRng))
    }

    pub fn from_bytes(secret: &[u8]) -> Result<Self, WebPushError> {
        Ok(Self::from_secret(
            SecretKey::from_slice(secret).map_err(|_| WebPushError::InvalidKey)?,
        ))
    }

    fn from_secret(secret: SecretKey) -> Self {
        let public = uncompressed(&secret.public_key());
        Self {
            signing: SigningKey::from(secret),
            public,
        }
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes().into()
    }

    /// The public key as push services and clients see it: an uncompressed point.
    pub fn public_key(&self) -> &[u8; WEB_PUSH_KEY_LEN] {
        &self.public
    }

    /// The `Authorization` header value for a push to `audience` (the endpoint's origin),
    /// valid until `expires_at` (Unix seconds): `vapid t=<JWT>, k=<public key>`.
    pub fn authorization(&self, audience: &str, expires_at: u64, subject: &str) -> String {
        let header = BASE64URL.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({ "aud": audience, "exp": expires_at, "sub": subject });
        let claims = BASE64URL.encode(claims.to_string());
        let signed = format!("{header}.{claims}");
        let signature: Signature = self.signing.sign(signed.as_bytes());
        format!(
            "vapid t={signed}.{}, k={}",
            BASE64URL.encode(signature.to_bytes()),
            BASE64URL.encode(self.public)
        )
    }
}

/// The claims of a VAPID token that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VapidClaims {
    pub audience: String,
    pub expires_at: u64,
    pub subject: String,
}

/// Checks an `Authorization: vapid t=..., k=...` header as a push service would: the key is
/// `expected_key`, the ES256 signature verifies, the audience is `audience`, and the token is
/// neither expired at `now` nor valid for more than 24 hours.
pub fn verify_authorization(
    header: &str,
    expected_key: &[u8],
    audience: &str,
    now: u64,
) -> Result<VapidClaims, WebPushError> {
    if header.len() > MAX_AUTHORIZATION_LEN {
        return Err(WebPushError::InvalidToken("longer than any token"));
    }
    let params = header
        .strip_prefix("vapid ")
        .ok_or(WebPushError::InvalidToken("not the vapid scheme"))?;
    let (mut token, mut key) = (None, None);
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", value)) => token = Some(value),
            Some(("k", value)) => key = Some(value),
            _ => {}
        }
    }
    let token = token.ok_or(WebPushError::InvalidToken("no t parameter"))?;
    let key = BASE64URL
        .decode(key.ok_or(WebPushError::InvalidToken("no k parameter"))?)
        .map_err(|_| WebPushError::InvalidToken("k is not base64url"))?;
    if key != expected_key {
        return Err(WebPushError::InvalidToken("signed by another key"));
    }
    let verifying = VerifyingKey::from_sec1_bytes(&key).map_err(|_| WebPushError::InvalidKey)?;
    let (signed, signature) = token
        .rsplit_once('.')
        .ok_or(WebPushError::InvalidToken("not a JWT"))?;
    let signature = BASE64URL
        .decode(signature)
        .ok()
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .ok_or(WebPushError::InvalidToken("malformed signature"))?;
    verifying
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| WebPushError::InvalidToken("the signature does not verify"))?;
    let (header, claims) = signed
        .split_once('.')
        .ok_or(WebPushError::InvalidToken("not a JWT"))?;
    let json = |part: &str| -> Result<serde_json::Value, WebPushError> {
        let bytes = BASE64URL
            .decode(part)
            .map_err(|_| WebPushError::InvalidToken("a part is not base64url"))?;
        serde_json::from_slice(&bytes).map_err(|_| WebPushError::InvalidToken("a part is not JSON"))
    };
    if json(header)?["alg"] != "ES256" {
        return Err(WebPushError::InvalidToken("not ES256"));
    }
    let claims = json(claims)?;
    let claimed = VapidClaims {
        audience: claims["aud"].as_str().unwrap_or_default().to_owned(),
        expires_at: claims["exp"].as_u64().unwrap_or(0),
        subject: claims["sub"].as_str().unwrap_or_default().to_owned(),
    };
    if claimed.audience != audience {
        return Err(WebPushError::InvalidToken("for another audience"));
    }
    if claimed.expires_at <= now || claimed.expires_at > now + MAX_VAPID_LIFETIME_SECS {
        return Err(WebPushError::InvalidToken("expired, or valid for too long"));
    }
    Ok(claimed)
}

/// Base64url without padding, as Web Push writes keys and secrets.
pub fn base64url(bytes: &[u8]) -> String {
    BASE64URL.encode(bytes)
}

/// Decodes base64url with or without padding.
pub fn from_base64url(text: &str) -> Option<Vec<u8>> {
    BASE64URL.decode(text.trim_end_matches('=')).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> Vec<u8> {
        from_base64url(text).unwrap()
    }

    // RFC 8291 section 5 (Push Message Encryption Example).
    const PLAINTEXT: &[u8] = b"When I grow up, I want to be a watermelon";
    const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
    const UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
    const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
    const MESSAGE: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";

    fn rfc_receiver() -> SubscriptionKeys {
        let auth: [u8; 16] = b64(AUTH).try_into().unwrap();
        let keys = SubscriptionKeys::from_bytes(&b64(UA_PRIVATE), auth).unwrap();
        assert_eq!(keys.public.to_vec(), b64(UA_PUBLIC));
        keys
    }

    #[test]
    fn encryption_matches_the_rfc_8291_example() {
        let sender = SecretKey::from_slice(&b64(AS_PRIVATE)).unwrap();
        let salt: [u8; 16] = b64(SALT).try_into().unwrap();
        let receiver = rfc_receiver();
        let body = encrypt_with(&sender, &salt, &receiver.public, &receiver.auth, PLAINTEXT);
        assert_eq!(base64url(&body.unwrap()), MESSAGE);
    }

    #[test]
    fn decryption_reads_the_rfc_8291_example_and_our_own() {
        let receiver = rfc_receiver();
        assert_eq!(decrypt(&receiver, &b64(MESSAGE)).unwrap(), PLAINTEXT);
        let ours = encrypt(&receiver.public, &receiver.auth, b"{\"seq\":7}").unwrap();
        assert_eq!(decrypt(&receiver, &ours).unwrap(), b"{\"seq\":7}");
    }

    #[test]
    fn tampered_or_foreign_messages_are_errors_not_panics() {
        let receiver = rfc_receiver();
        let mut tampered = b64(MESSAGE);
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            decrypt(&receiver, &tampered),
            Err(WebPushError::Undecryptable)
        );
        let other = SubscriptionKeys::generate();
        assert_eq!(
            decrypt(&other, &b64(MESSAGE)),
            Err(WebPushError::Undecryptable)
        );
        for len in 0..HEADER_LEN + 20 {
            assert!(decrypt(&receiver, &b64(MESSAGE)[..len]).is_err());
        }
        assert!(encrypt(
            &receiver.public,
            &receiver.auth,
            &[0; MAX_PLAINTEXT_LEN + 1]
        )
        .is_err());
        assert!(encrypt(&[4; 65], &receiver.auth, b"x").is_err());
        assert!(encrypt(&receiver.public, &[0; 15], b"x").is_err());
    }

    #[test]
    fn vapid_tokens_verify_for_their_key_audience_and_time_only() {
        let key = VapidKey::generate();
        let header = key.authorization("https://push.example.net", 1_000 + 3600, "mailto:a@b");
        let claims =
            verify_authorization(&header, key.public_key(), "https://push.example.net", 1_000)
                .unwrap();
        assert_eq!(claims.subject, "mailto:a@b");
        let other = VapidKey::generate();
        for (header, key, audience, now) in [
            (
                &header,
                other.public_key(),
                "https://push.example.net",
                1_000,
            ),
            (&header, key.public_key(), "https://evil.example", 1_000),
            (&header, key.public_key(), "https://push.example.net", 5_000),
        ] {
            assert!(verify_authorization(header, key, audience, now).is_err());
        }
        let forged = header.replacen("vapid t=e", "vapid t=f", 1);
        assert!(
            verify_authorization(&forged, key.public_key(), "https://push.example.net", 1_000)
                .is_err()
        );
        let reloaded = VapidKey::from_bytes(&key.secret_bytes()).unwrap();
        assert_eq!(reloaded.public_key(), key.public_key());
    }
}
