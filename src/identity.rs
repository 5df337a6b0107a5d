//! Identity: user ids, domains, and client credentials (issuing and verifying).
//!
//! Pure code shared by the server (which issues credentials) and the client library (which
//! verifies every member it meets): no I/O, no clock of its own (callers pass the time).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::clock::UnixTime;
use crate::protocol::{
    credential_signature_content, ClientCredential, ClientCredentialContent, ClientId,
    CredentialVerifyingKey, Text, ED25519_PUBLIC_KEY_LEN,
};

/// Longest local part of a user id, in bytes.
pub const MAX_LOCALPART_LEN: usize = 64;

/// A homeserver domain: a lower-case DNS name (`a.example`, `localhost`).
///
/// Grammar: 1 to 253 bytes; dot-separated labels of 1 to 63 characters from `a-z`, `0-9` and
/// `-`, not starting or ending with `-`. Upper case input is folded to lower case.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Domain(String);

impl Domain {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain as wire text (always within the text limit).
    pub fn to_text(&self) -> Text {
        Text::truncated(&self.0)
    }
}

impl std::fmt::Display for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Domain {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let domain = s.to_ascii_lowercase();
        if domain.is_empty() || domain.len() > 253 {
            return Err(format!("domain {s:?} must be 1 to 253 characters long"));
        }
        for label in domain.split('.') {
            let valid = (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !valid {
                return Err(format!(
                    "domain {s:?} is not a DNS name: labels are 1 to 63 of a-z, 0-9 and '-', \
                     not starting or ending with '-'"
                ));
            }
        }
        Ok(Self(domain))
    }
}

/// Random bytes at the start of every group id.
pub const GROUP_ID_RANDOM_LEN: usize = 16;
/// Longest group id: the random bytes and the longest domain.
pub const MAX_GROUP_ID_LEN: usize = GROUP_ID_RANDOM_LEN + 253;

/// A new group id for a group hosted by `hub`: [`GROUP_ID_RANDOM_LEN`] random bytes followed by
/// the hub's domain. A group's hub is fixed when the group is created, and everyone can read it
/// from the group id: no server can claim a group another one hosts.
pub fn new_group_id(hub: &Domain) -> Vec<u8> {
    let mut group_id = vec![0u8; GROUP_ID_RANDOM_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut group_id);
    group_id.extend_from_slice(hub.as_str().as_bytes());
    group_id
}

/// The domain of the homeserver hosting the group `group_id` (its hub), if the id names one in
/// the form [`new_group_id`] makes (a lower-case domain after the random bytes).
pub fn group_hub(group_id: &[u8]) -> Option<Domain> {
    if group_id.len() > MAX_GROUP_ID_LEN {
        return None;
    }
    let domain = std::str::from_utf8(group_id.get(GROUP_ID_RANDOM_LEN..)?).ok()?;
    let parsed: Domain = domain.parse().ok()?;
    (parsed.as_str() == domain).then_some(parsed)
}

/// A user id, `localpart@domain`, normalised to lower case.
///
/// Grammar: the local part is 1 to 64 characters from `a-z`, `0-9`, `.`, `_` and `-`, starting
/// with a letter or digit; the domain follows [`Domain`]'s grammar. Upper-case ASCII input is
/// folded to lower case, so `Alice@A.Example` and `alice@a.example` are the same user.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId {
    id: String,
    at: usize,
}

impl UserId {
    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn localpart(&self) -> &str {
        &self.id[..self.at]
    }

    pub fn domain(&self) -> &str {
        Self::domain_of(&self.id)
    }

    /// The domain of a user id held as text (what the store and the wire carry): what follows
    /// its `@`, or nothing for text that is not a user id. The one place a user id is split.
    pub fn domain_of(user_id: &str) -> &str {
        user_id.rsplit_once('@').map_or("", |(_, domain)| domain)
    }

    /// The user id as wire text (always within the text limit).
    pub fn to_text(&self) -> Text {
        Text::truncated(&self.id)
    }
}

impl UserId {
    /// Parses a user id that must already be in its canonical form (lowercase), as servers
    /// write them: what a peer names is matched byte for byte, so `Bob@b.example` is not taken
    /// for `bob@b.example`.
    pub fn parse_canonical(s: &str) -> Result<Self, String> {
        let user: Self = s.parse()?;
        if user.id != s {
            return Err(format!("user id {s:?} is not in canonical form ({user})"));
        }
        Ok(user)
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)
    }
}

impl std::str::FromStr for UserId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (localpart, domain) = s
            .split_once('@')
            .ok_or_else(|| format!("user id {s:?} is not localpart@domain"))?;
        let localpart = localpart.to_ascii_lowercase();
        let valid_localpart = (1..=MAX_LOCALPART_LEN).contains(&localpart.len())
            && localpart.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && localpart
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !valid_localpart {
            return Err(format!(
                "user id {s:?}: the local part must be 1 to {MAX_LOCALPART_LEN} of a-z, 0-9, \
                 '.', '_' and '-', starting with a letter or digit"
            ));
        }
        let domain: Domain = domain.parse()?;
        Ok(Self {
            at: localpart.len(),
            id: format!("{localpart}@{domain}"),
        })
    }
}

/// Why a credential does not vouch for a member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the credential is for {user}, whose domain is not {domain}")]
    WrongDomain { user: String, domain: String },
    #[error("the credential's user id is invalid: {0}")]
    InvalidUserId(String),
    #[error("the credential was signed with key {0}, which its domain does not publish")]
    UnknownIssuerKey(u32),
    #[error("the credential was signed with key {key_id}, retired at {valid_until}")]
    IssuerKeyRetired { key_id: u32, valid_until: UnixTime },
    #[error("the issuer's signature does not verify")]
    BadSignature,
    #[error("the credential expired at {not_after}")]
    Expired { not_after: UnixTime },
    #[error("the credential is valid only from {not_before}")]
    NotYetValid { not_before: UnixTime },
    #[error("the credential's signature key is not a valid Ed25519 key")]
    InvalidKey,
    #[error("the member's signature key is not the one in its credential")]
    KeyMismatch,
}

/// The credential-verifying keys a domain publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainKeys {
    pub domain: String,
    pub keys: Vec<CredentialVerifyingKey>,
}

/// Signs `content` with the credential-signing key.
pub fn sign_credential(key: &SigningKey, content: ClientCredentialContent) -> ClientCredential {
    let signature = key.sign(&credential_signature_content(&content));
    ClientCredential {
        content,
        signature: signature.to_bytes().to_vec().into(),
    }
}

/// Checks that `credential` was issued by `issuer`'s homeserver for one of its users, with a key it
/// publishes, and is valid at `now`. Returns the client it vouches for.
pub fn verify_credential(
    credential: &ClientCredential,
    issuer: &DomainKeys,
    now: UnixTime,
) -> Result<ClientId, CredentialError> {
    let content = &credential.content;
    let user: UserId = content
        .client
        .user_id
        .as_str()
        .parse()
        .map_err(CredentialError::InvalidUserId)?;
    if user.domain() != issuer.domain {
        return Err(CredentialError::WrongDomain {
            user: user.to_string(),
            domain: issuer.domain.clone(),
        });
    }
    let issuer_key = issuer
        .keys
        .iter()
        .find(|key| key.key_id == content.issuer_key_id)
        .ok_or(CredentialError::UnknownIssuerKey(content.issuer_key_id))?;
    if now > issuer_key.valid_until {
        return Err(CredentialError::IssuerKeyRetired {
            key_id: issuer_key.key_id,
            valid_until: issuer_key.valid_until,
        });
    }
    let verifying_key = ed25519_key(issuer_key.public_key.as_slice())
        .map_err(|_| CredentialError::UnknownIssuerKey(issuer_key.key_id))?;
    let signature = Signature::from_slice(credential.signature.as_slice())
        .map_err(|_| CredentialError::BadSignature)?;
    verifying_key
        .verify_strict(&credential_signature_content(content), &signature)
        .map_err(|_| CredentialError::BadSignature)?;
    if now < content.not_before {
        return Err(CredentialError::NotYetValid {
            not_before: content.not_before,
        });
    }
    if now > content.not_after {
        return Err(CredentialError::Expired {
            not_after: content.not_after,
        });
    }
    ed25519_key(content.signature_key.as_slice()).map_err(|_| CredentialError::InvalidKey)?;
    Ok(content.client.clone())
}

/// Checks a group member: its MLS leaf signature key must be the key its credential binds, and
/// the credential must verify under its homeserver's published keys at `now`.
pub fn verify_member(
    leaf_signature_key: &[u8],
    credential: &ClientCredential,
    issuer: &DomainKeys,
    now: UnixTime,
) -> Result<ClientId, CredentialError> {
    let client = verify_credential(credential, issuer, now)?;
    if credential.content.signature_key.as_slice() != leaf_signature_key {
        return Err(CredentialError::KeyMismatch);
    }
    Ok(client)
}

/// Parses an Ed25519 public key, refusing wrong lengths and weak (small-order) points.
pub fn ed25519_key(bytes: &[u8]) -> Result<VerifyingKey, InvalidKey> {
    let bytes: &[u8; ED25519_PUBLIC_KEY_LEN] = bytes.try_into().map_err(|_| InvalidKey)?;
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| InvalidKey)?;
    if key.is_weak() {
        return Err(InvalidKey);
    }
    Ok(key)
}

/// A byte string that is not a usable Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid Ed25519 public key")]
pub struct InvalidKey;

#[cfg(test)]
mod group_id_tests {
    use super::*;

    #[test]
    fn a_group_id_names_its_hub() {
        let hub: Domain = "a.example".parse().unwrap();
        let group_id = new_group_id(&hub);
        assert_eq!(group_hub(&group_id), Some(hub.clone()));
        assert_ne!(new_group_id(&hub), group_id, "random part");
        assert_eq!(group_hub(b"short"), None);
        let mut upper = group_id[..GROUP_ID_RANDOM_LEN].to_vec();
        upper.extend_from_slice(b"A.example");
        assert_eq!(group_hub(&upper), None, "only the canonical form");
        let mut bad = group_id[..GROUP_ID_RANDOM_LEN].to_vec();
        bad.extend_from_slice(b"a..example");
        assert_eq!(group_hub(&bad), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = 1_800_000_000;

    fn issuer(key: &SigningKey, domain: &str) -> DomainKeys {
        DomainKeys {
            domain: domain.into(),
            keys: vec![CredentialVerifyingKey {
                key_id: 1,
                public_key: key.verifying_key().to_bytes().to_vec().into(),
                valid_until: u64::MAX,
            }],
        }
    }

    fn credential(server: &SigningKey, member: &SigningKey, user: &str) -> ClientCredential {
        sign_credential(
            server,
            ClientCredentialContent {
                client: ClientId {
                    user_id: Text::new(user).unwrap(),
                    device_id: 1,
                },
                signature_key: member.verifying_key().to_bytes().to_vec().into(),
                ciphersuite: 1,
                not_before: NOW - 10,
                not_after: NOW + 10,
                issuer_key_id: 1,
            },
        )
    }

    fn key() -> SigningKey {
        SigningKey::generate(&mut rand::rngs::OsRng)
    }

    #[test]
    fn a_genuine_credential_verifies_for_its_member() {
        let (server, member) = (key(), key());
        let cred = credential(&server, &member, "alice@a.example");
        let leaf = member.verifying_key().to_bytes();
        let client = verify_member(&leaf, &cred, &issuer(&server, "a.example"), NOW).unwrap();
        assert_eq!(client.user_id.as_str(), "alice@a.example");
    }

    #[test]
    fn credentials_from_another_server_tampered_expired_or_for_another_key_fail() {
        let (server, member) = (key(), key());
        let cred = credential(&server, &member, "alice@a.example");
        let leaf = member.verifying_key().to_bytes();
        let keys = issuer(&server, "a.example");

        let other_server = issuer(&key(), "a.example");
        assert_eq!(
            verify_member(&leaf, &cred, &other_server, NOW),
            Err(CredentialError::BadSignature)
        );

        let mut tampered = cred.clone();
        tampered.content.client.device_id = 2;
        assert_eq!(
            verify_member(&leaf, &tampered, &keys, NOW),
            Err(CredentialError::BadSignature)
        );
        let mut tampered = cred.clone();
        tampered.content.not_after += 1_000_000;
        assert_eq!(
            verify_member(&leaf, &tampered, &keys, NOW),
            Err(CredentialError::BadSignature)
        );

        assert!(matches!(
            verify_member(&leaf, &cred, &keys, NOW + 11),
            Err(CredentialError::Expired { .. })
        ));
        assert!(matches!(
            verify_member(&leaf, &cred, &keys, NOW - 11),
            Err(CredentialError::NotYetValid { .. })
        ));

        let someone_else = key().verifying_key().to_bytes();
        assert_eq!(
            verify_member(&someone_else, &cred, &keys, NOW),
            Err(CredentialError::KeyMismatch)
        );

        // A server cannot vouch for another domain's users, even with a valid signature.
        let foreign = credential(&server, &member, "alice@b.example");
        assert!(matches!(
            verify_member(&leaf, &foreign, &keys, NOW),
            Err(CredentialError::WrongDomain { .. })
        ));

        let mut retired = keys.clone();
        retired.keys[0].valid_until = NOW - 1;
        assert!(matches!(
            verify_member(&leaf, &cred, &retired, NOW),
            Err(CredentialError::IssuerKeyRetired { .. })
        ));
        let mut unknown = cred;
        unknown.content.issuer_key_id = 9;
        assert_eq!(
            verify_member(&leaf, &unknown, &keys, NOW),
            Err(CredentialError::UnknownIssuerKey(9))
        );
    }

    #[test]
    fn user_ids_follow_the_grammar_and_fold_case() {
        let id: UserId = "Alice.B-1_x@A.Example".parse().unwrap();
        assert_eq!(id.as_str(), "alice.b-1_x@a.example");
        assert_eq!(id.localpart(), "alice.b-1_x");
        assert_eq!(id.domain(), "a.example");
        for bad in [
            "alice",
            "@a.example",
            ".alice@a.example",
            "al ice@a.example",
            "alice@",
            "alice@a..example",
            "alïce@a.example",
            "a@b@c.example",
        ] {
            assert!(bad.parse::<UserId>().is_err(), "{bad:?} accepted");
        }
        assert!(format!("{}@a.example", "a".repeat(65))
            .parse::<UserId>()
            .is_err());
        assert!(format!("{}@a.example", "a".repeat(64))
            .parse::<UserId>()
            .is_ok());
    }

    #[test]
    fn weak_and_short_keys_are_refused() {
        assert!(ed25519_key(&[0u8; 31]).is_err());
        // The identity point is a small-order key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(ed25519_key(&identity).is_err());
        assert!(ed25519_key(&key().verifying_key().to_bytes()).is_ok());
    }

    #[test]
    fn domains_are_validated_and_folded() {
        assert_eq!("A.Example".parse::<Domain>().unwrap().as_str(), "a.example");
        assert_eq!("localhost".parse::<Domain>().unwrap().as_str(), "localhost");
        for bad in [
            "",
            "a..example",
            "-a.example",
            "a_b.example",
            "a.example.",
            "é.example",
        ] {
            assert!(bad.parse::<Domain>().is_err(), "{bad:?} accepted");
        }
        assert!("a".repeat(64).parse::<Domain>().is_err());
    }
}
