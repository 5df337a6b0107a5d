//! Offline push: the push targets a client registers so that the server can wake it when it is
//! not connected (operations 29 to 32, protocol-spec/push.md "Offline push").

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use super::Text;

/// Push targets one client may have at once.
pub const MAX_PUSH_TARGETS_PER_CLIENT: usize = 4;
/// Longest push endpoint or gateway URL, in bytes.
pub const MAX_PUSH_URL_LEN: usize = 1024;
/// A Web Push subscription's P-256 public key: an uncompressed point (0x04 || x || y).
pub const WEB_PUSH_KEY_LEN: usize = 65;
/// A Web Push subscription's authentication secret.
pub const WEB_PUSH_AUTH_LEN: usize = 16;
/// Longest push-gateway app id or pushkey, in bytes.
pub const MAX_PUSHKEY_LEN: usize = 512;

/// A Web Push subscription (RFC 8030 endpoint, RFC 8291 keys).
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct WebPushSubscription {
    /// The push resource URL the server POSTs wake-ups to (`https://...`).
    pub endpoint: Text,
    /// The subscription's P-256 public key (`p256dh`), uncompressed: 65 bytes.
    pub p256dh: VLBytes,
    /// The subscription's authentication secret (`auth`): 16 bytes.
    pub auth: VLBytes,
}

/// A device registered with a push gateway (Matrix push-gateway style) that the operator
/// allowed; the gateway forwards the wake-up to APNs, FCM or the like.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct GatewayPusher {
    /// One of the gateway URLs the server announces in `PushInfo`, exactly.
    pub gateway_url: Text,
    /// The app the gateway knows the device by (e.g. `org.example.roost.ios`).
    pub app_id: Text,
    /// The device's token for that app (APNs device token, FCM registration token, ...).
    pub pushkey: Text,
}

/// Where a wake-up goes.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u8)]
pub enum PushTarget {
    #[tls_codec(discriminant = 1)]
    WebPush(WebPushSubscription),
    #[tls_codec(discriminant = 2)]
    Gateway(GatewayPusher),
}

impl PushTarget {
    /// What identifies the target among a client's: registering a target with the same
    /// endpoint (or the same gateway, app and pushkey) again replaces it.
    pub fn identity(&self) -> (&str, &str, &str) {
        match self {
            Self::WebPush(web) => (web.endpoint.as_str(), "", ""),
            Self::Gateway(gateway) => (
                gateway.gateway_url.as_str(),
                gateway.app_id.as_str(),
                gateway.pushkey.as_str(),
            ),
        }
    }
}

/// `GetPushInfo` response body: what offline push this server offers.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct PushInfo {
    /// The server's VAPID public key (RFC 8292), an uncompressed P-256 point; empty when the
    /// server does not send Web Push.
    pub vapid_public_key: VLBytes,
    /// The push gateways a `GatewayPusher` may name.
    pub gateways: Vec<Text>,
    /// Most targets per client.
    pub max_targets_per_client: u32,
    /// Wake-ups to one client are at least this far apart while it has not caught up.
    pub wake_interval_ms: u32,
}

/// `AddPushTarget` request body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct AddPushTargetRequest {
    pub target: PushTarget,
}

/// A push target as the server keeps it.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct RegisteredPushTarget {
    /// Chosen by the server; names the target in `RemovePushTarget`.
    pub target_id: u64,
    /// When it was registered (Unix seconds).
    pub registered_at: u64,
    pub target: PushTarget,
}

/// `AddPushTarget` response body.
#[derive(Clone, Copy, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct PushTargetAdded {
    pub target_id: u64,
    /// Whether it replaced a target with the same endpoint (same `target_id`).
    pub replaced: super::Flag,
}

/// `ListPushTargets` response body.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct PushTargets {
    pub targets: Vec<RegisteredPushTarget>,
}

/// `RemovePushTarget` request body.
#[derive(Clone, Copy, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct RemovePushTargetRequest {
    pub target_id: u64,
}
