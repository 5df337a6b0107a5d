//! KeyPackages: clients publish their own, anyone authenticated claims one per client of a user.

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use super::{ClientId, Flag, Text};

/// Largest KeyPackage a server stores, in bytes: a KeyPackage of the supported ciphersuites is
/// well under 1 KiB; the room is for larger keys of future ciphersuites, not for payloads.
pub const MAX_KEY_PACKAGE_LEN: usize = 16 * 1024;

/// `PublishKeyPackages` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct PublishKeyPackagesRequest {
    /// Each an MLS `KeyPackage` (RFC 9420 section 10), TLS-encoded.
    pub key_packages: Vec<VLBytes>,
}

/// `ClaimKeyPackages` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ClaimKeyPackagesRequest {
    pub user_id: Text,
    pub ciphersuite: u16,
}

/// What a claim got for one client.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u8)]
pub enum ClaimOutcome {
    /// A KeyPackage, now removed from the server.
    #[tls_codec(discriminant = 0)]
    KeyPackage(VLBytes),
    /// The client's last-resort KeyPackage, which stays on the server.
    #[tls_codec(discriminant = 1)]
    LastResort(VLBytes),
    /// The client has no usable KeyPackage for the ciphersuite.
    #[tls_codec(discriminant = 2)]
    Unavailable,
}

/// One client's part of a claim.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ClaimedKeyPackage {
    pub client: ClientId,
    pub outcome: ClaimOutcome,
}

/// `ClaimKeyPackages` response body: one entry per client of the user, in device id order.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ClaimedKeyPackages {
    pub user_id: Text,
    pub claims: Vec<ClaimedKeyPackage>,
}

/// One client's KeyPackage stock.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct KeyPackageStock {
    pub client: ClientId,
    /// Unexpired, unclaimed KeyPackages (the last resort not counted).
    pub remaining: u32,
    pub has_last_resort: Flag,
}

/// `KeyPackageStatus` response body (and the `PublishKeyPackages` one, for the caller alone).
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct KeyPackageStatus {
    /// Below this many remaining, the server sends `KeyPackagesLow`.
    pub low_watermark: u32,
    /// Most KeyPackages the server keeps per client (the last resort not counted).
    pub max_per_client: u32,
    pub clients: Vec<KeyPackageStock>,
}

/// Notification: a client's KeyPackage stock fell below the low watermark.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct KeyPackagesLow {
    pub client: ClientId,
    pub remaining: u32,
}
