//! Delivering one wake-up over HTTP: Web Push (RFC 8030 with RFC 8291 encryption and RFC 8292
//! VAPID) and push gateways (Matrix push-gateway API), and the rules that keep a client from
//! making the server reach internal addresses (SSRF).
//!
//! Web Push endpoints are chosen by clients, so they are checked when registered (scheme, host,
//! literal addresses) and again at every delivery, where the host's addresses are resolved by
//! our own resolver and refused if any is internal (a name cannot be re-pointed at an internal
//! address after registration). Redirects are not followed and no proxy is used. Gateways are
//! chosen by the operator and may be internal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::Url;

use crate::config::PushConfig;
use crate::escape::Escaped;
use crate::protocol::{GatewayPusher, PushTarget, WebPushSubscription, MAX_PUSH_URL_LEN};
use crate::web_push::VapidKey;

/// How long a push service keeps an undelivered wake-up (the `TTL` header): a device offline
/// longer finds its messages in its queue when it comes back.
const WAKE_TTL_SECS: u64 = 7 * 24 * 3600;
/// The `Topic` header: a push service replaces an undelivered wake-up with the next one.
const WAKE_TOPIC: &str = "roost-wake";
/// A VAPID token is signed for this long and reused until an hour before it expires.
const VAPID_TOKEN_LIFETIME_SECS: u64 = 12 * 3600;
/// Bytes of a push gateway's answer read at most.
const MAX_GATEWAY_ANSWER_LEN: usize = 64 * 1024;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// The push service says the subscription is gone (404, 410; a gateway's `rejected`), or
    /// the target now breaks the address rules: forget the target.
    Gone(String),
    /// A transient failure: try again later (after `after` if the service said).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The service refused this wake-up for good (e.g. a bad VAPID key): drop it, keep the target.
    Refused(String),
}

/// The address rules for Web Push endpoints.
#[derive(Clone, Debug)]
pub struct EndpointRules {
    allow_loopback: bool,
    allowed_hosts: Option<Vec<String>>,
}

impl EndpointRules {
    pub fn new(config: &PushConfig) -> Self {
        Self {
            allow_loopback: config.allow_loopback,
            allowed_hosts: config.allowed_hosts.clone(),
        }
    }

    /// Checks an endpoint as a client registers it: an `https` URL (plain `http` only to a
    /// loopback host when loopback is allowed), no credentials, a host the operator allows,
    /// and no internal literal address.
    pub fn check_endpoint(&self, endpoint: &str) -> Result<Url, String> {
        if endpoint.len() > MAX_PUSH_URL_LEN {
            return Err(format!(
                "the endpoint is longer than {MAX_PUSH_URL_LEN} bytes"
            ));
        }
        let url = Url::parse(endpoint).map_err(|e| format!("the endpoint is not a URL: {e}"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the endpoint must not carry credentials".into());
        }
        let host = url
            .host()
            .ok_or_else(|| "the endpoint has no host".to_owned())?;
        let loopback = match &host {
            url::Host::Domain(name) => is_loopback_name(name),
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => canonical(IpAddr::V6(*ip)).is_loopback(),
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback && self.allow_loopback => {}
            "http" => return Err("the endpoint must use https".into()),
            other => return Err(format!("the endpoint's scheme {other:?} is not https")),
        }
        match host {
            url::Host::Domain(name) => {
                if loopback && !self.allow_loopback {
                    return Err(format!("{name} is a loopback name; refused"));
                }
                if let Some(allowed) = &self.allowed_hosts {
                    if !allowed.iter().any(|rule| host_matches(rule, name)) {
                        return Err(format!("{name} is not a push host this server allows"));
                    }
                }
            }
            // An allow-list names hosts: a literal address is never on it.
            _ if self.allowed_hosts.is_some() => {
                return Err("only the push hosts this server allows, by name".into())
            }
            url::Host::Ipv4(ip) => self.check_address(IpAddr::V4(ip))?,
            url::Host::Ipv6(ip) => self.check_address(IpAddr::V6(ip))?,
        }
        Ok(url)
    }

    /// Refuses internal addresses: private, loopback (unless allowed), link-local, shared,
    /// multicast, documentation, reserved, and IPv6 forms embedding any of them.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), String> {
        let ip = canonical(ip);
        if ip.is_loopback() {
            return if self.allow_loopback {
                Ok(())
            } else {
                Err(format!("{ip} is a loopback address; refused"))
            };
        }
        if is_internal(ip) {
            return Err(format!("{ip} is an internal address; refused"));
        }
        Ok(())
    }
}

fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// `rule` is a host name, or `.suffix` for every name under it.
fn host_matches(rule: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let rule = rule.to_ascii_lowercase();
    match rule.strip_prefix('.') {
        Some(suffix) => host.ends_with(&rule) || host == suffix,
        None => host == rule,
    }
}

/// An IPv4 address written as IPv6 (mapped, compatible, NAT64, 6to4) as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let segments = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                ))
            };
            match segments {
                // IPv4-compatible (deprecated), but not :: or ::1.
                [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => embedded(hi, lo),
                // NAT64 well-known prefix 64:ff9b::/96.
                [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => embedded(hi, lo),
                // 6to4: 2002:AABB:CCDD::/48.
                [0x2002, hi, lo, ..] => embedded(hi, lo),
                _ => ip,
            }
        }
        v4 => v4,
    }
}

fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (18..20).contains(&b)) // benchmarking
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || (first == 0x2001 && v6.segments()[1] == 0) // Teredo
                || v6 == Ipv6Addr::LOCALHOST
        }
    }
}

/// Resolves push hosts for reqwest, refusing names that lead to an internal address.
struct GuardedResolver {
    rules: EndpointRules,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let rules = self.rules.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            if is_loopback_name(&host) && !rules.allow_loopback {
                return Err(format!("{host} is a loopback name; refused").into());
            }
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for address in &addresses {
                rules
                    .check_address(address.ip())
                    .map_err(|e| format!("{host}: {e}"))?;
            }
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// Sends wake-ups. Cheap to share; holds the HTTP connection pools.
pub struct PushDelivery {
    /// For client-chosen Web Push endpoints: guarded resolver, no redirects, no proxy.
    web: reqwest::Client,
    /// For operator-chosen gateways.
    gateway: reqwest::Client,
    rules: EndpointRules,
    vapid: Option<Arc<VapidKey>>,
    contact: String,
    /// Signed VAPID headers by audience, with their expiry (Unix seconds).
    tokens: Mutex<std::collections::HashMap<String, (String, u64)>>,
}

/// Why a delivery failed as the HTTP client reports it, without its chain of library text.
fn transport_failure(error: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

impl PushDelivery {
    pub fn new(
        config: &PushConfig,
        vapid: Option<Arc<VapidKey>>,
        domain: &str,
    ) -> anyhow::Result<Self> {
        let rules = EndpointRules::new(config);
        let builder = || {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
                .timeout(config.request_timeout)
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(16)
                .user_agent(concat!("roost/", env!("CARGO_PKG_VERSION")))
        };
        let web = builder()
            .dns_resolver(Arc::new(GuardedResolver {
                rules: rules.clone(),
            }))
            .build()?;
        let gateway = builder().build()?;
        Ok(Self {
            web,
            gateway,
            rules,
            vapid,
            contact: config
                .contact
                .clone()
                .unwrap_or_else(|| format!("mailto:postmaster@{domain}")),
            tokens: Mutex::default(),
        })
    }

    pub fn rules(&self) -> &EndpointRules {
        &self.rules
    }

    /// Sends one wake-up to `target`; `seq` is the queue's newest sequence number (0: none).
    pub async fn deliver(&self, target: &PushTarget, seq: u64) -> DeliveryOutcome {
        match target {
            PushTarget::WebPush(subscription) => self.web_push(subscription, seq).await,
            PushTarget::Gateway(pusher) => self.gateway_push(pusher).await,
        }
    }

    async fn web_push(&self, subscription: &WebPushSubscription, seq: u64) -> DeliveryOutcome {
        let Some(vapid) = &self.vapid else {
            return DeliveryOutcome::Refused("this server no longer sends Web Push".into());
        };
        let url = match self.rules.check_endpoint(subscription.endpoint.as_str()) {
            Ok(url) => url,
            Err(reason) => return DeliveryOutcome::Gone(reason),
        };
        // Content-free: at most the queue's newest sequence number.
        let plaintext = if seq == 0 {
            "{}".to_owned()
        } else {
            format!("{{\"seq\":{seq}}}")
        };
        let body = match crate::web_push::encrypt(
            subscription.p256dh.as_slice(),
            subscription.auth.as_slice(),
            plaintext.as_bytes(),
        ) {
            Ok(body) => body,
            Err(e) => return DeliveryOutcome::Gone(format!("cannot encrypt for it: {e}")),
        };
        let audience = url.origin().ascii_serialization();
        let mut headers = HeaderMap::new();
        headers.insert("TTL", HeaderValue::from(WAKE_TTL_SECS));
        headers.insert("Urgency", HeaderValue::from_static("high"));
        headers.insert("Topic", HeaderValue::from_static(WAKE_TOPIC));
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("aes128gcm"));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        match HeaderValue::from_str(&self.vapid_header(vapid, &audience)) {
            Ok(value) => headers.insert(AUTHORIZATION, value),
            Err(_) => return DeliveryOutcome::Refused("the VAPID header is not ASCII".into()),
        };
        let answer = self.web.post(url).headers(headers).body(body).send().await;
        match answer {
            Err(e) => DeliveryOutcome::Retry {
                reason: transport_failure(&e),
                after: None,
            },
            Ok(answer) => classify(answer.status(), retry_after(answer.headers())),
        }
    }

    /// A cached VAPID `Authorization` value for `audience`, re-signed an hour before expiry.
    fn vapid_header(&self, vapid: &VapidKey, audience: &str) -> String {
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        let mut tokens = self
            .tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((header, expires_at)) = tokens.get(audience) {
            if *expires_at > now + 3600 {
                return header.clone();
            }
        }
        if tokens.len() >= 10_000 {
            tokens.clear();
        }
        let expires_at = now + VAPID_TOKEN_LIFETIME_SECS;
        let header = vapid.authorization(audience, expires_at, &self.contact);
        tokens.insert(audience.to_owned(), (header.clone(), expires_at));
        header
    }

    async fn gateway_push(&self, pusher: &GatewayPusher) -> DeliveryOutcome {
        // Content-free: which device to wake, nothing about what waits for it.
        let document = serde_json::json!({
            "notification": {
                "prio": "high",
                "devices": [{
                    "app_id": pusher.app_id.as_str(),
                    "pushkey": pusher.pushkey.as_str(),
                }],
            }
        });
        let answer = self
            .gateway
            .post(pusher.gateway_url.as_str())
            .header(CONTENT_TYPE, "application/json")
            .body(document.to_string())
            .send()
            .await;
        let mut answer = match answer {
            Err(e) => {
                return DeliveryOutcome::Retry {
                    reason: transport_failure(&e),
                    after: None,
                }
            }
            Ok(answer) => answer,
        };
        let status = answer.status();
        if !status.is_success() {
            // The gateway itself failing says nothing about the device: never `Gone`.
            return match classify(status, retry_after(answer.headers())) {
                DeliveryOutcome::Gone(reason) => DeliveryOutcome::Refused(reason),
                other => other,
            };
        }
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = answer.chunk().await {
            if body.len() + chunk.len() > MAX_GATEWAY_ANSWER_LEN {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let rejected = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|answer| answer.get("rejected").cloned())
            .and_then(|rejected| rejected.as_array().cloned())
            .unwrap_or_default();
        if rejected
            .iter()
            .any(|key| key.as_str() == Some(pusher.pushkey.as_str()))
        {
            return DeliveryOutcome::Gone(format!(
                "the gateway rejected the pushkey for {}",
                Escaped(pusher.app_id.as_str())
            ));
        }
        DeliveryOutcome::Delivered
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// What an HTTP status from a push service means for the wake-up and its target.
fn classify(status: reqwest::StatusCode, after: Option<Duration>) -> DeliveryOutcome {
    let code = status.as_u16();
    match code {
        200..=299 => DeliveryOutcome::Delivered,
        404 | 410 => DeliveryOutcome::Gone(format!("the push service answered {code}")),
        408 | 425 | 429 | 500..=599 => DeliveryOutcome::Retry {
            reason: format!("the push service answered {code}"),
            after,
        },
        _ => DeliveryOutcome::Refused(format!("the push service answered {code}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow_loopback: bool, hosts: Option<&[&str]>) -> EndpointRules {
        EndpointRules {
            allow_loopback,
            allowed_hosts: hosts.map(|hosts| hosts.iter().map(|h| h.to_string()).collect()),
        }
    }

    #[test]
    fn internal_addresses_and_plain_http_are_refused() {
        let strict = rules(false, None);
        for refused in [
            "http://push.example.net/x",
            "ftp://push.example.net/x",
            "https://user:pw@push.example.net/x",
            "https://localhost/x",
            "https://a.localhost./x",
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://172.16.0.1/x",
            "https://192.168.1.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/x",
            "https://0.0.0.0/x",
            "https://[::1]/x",
            "https://[fe80::1]/x",
            "https://[fd00::1]/x",
            "https://[::ffff:10.0.0.1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://[64:ff9b::a9fe:a9fe]/x",
            "https://[2002:c0a8:0101::1]/x",
            "https://[ff02::1]/x",
            "https://224.0.0.1/x",
            "not a url",
        ] {
            assert!(strict.check_endpoint(refused).is_err(), "{refused} passed");
        }
        for allowed in [
            "https://push.example.net/x",
            "https://8.8.8.8/x",
            "https://[2606:4700::1111]/x",
        ] {
            assert!(strict.check_endpoint(allowed).is_ok(), "{allowed} refused");
        }
        let long = format!("https://push.example.net/{}", "a".repeat(MAX_PUSH_URL_LEN));
        assert!(strict.check_endpoint(&long).is_err());
    }

    #[test]
    fn loopback_is_allowed_only_when_asked_and_private_never() {
        let development = rules(true, None);
        for allowed in [
            "http://127.0.0.1:8080/x",
            "http://localhost:8080/x",
            "https://[::1]/x",
        ] {
            assert!(development.check_endpoint(allowed).is_ok(), "{allowed}");
        }
        for refused in ["http://10.0.0.1/x", "http://push.example.net/x"] {
            assert!(development.check_endpoint(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn an_allow_list_restricts_hosts() {
        let listed = rules(false, Some(&["fcm.googleapis.com", ".push.apple.com"]));
        assert!(listed
            .check_endpoint("https://fcm.googleapis.com/a")
            .is_ok());
        assert!(listed
            .check_endpoint("https://web.push.apple.com/a")
            .is_ok());
        assert!(listed.check_endpoint("https://evil.example/a").is_err());
        assert!(listed.check_endpoint("https://8.8.8.8/a").is_err());
        assert!(listed
            .check_endpoint("https://notpush.apple.com/a")
            .is_err());
    }

    #[test]
    fn statuses_are_classified() {
        use reqwest::StatusCode;
        assert_eq!(
            classify(StatusCode::CREATED, None),
            DeliveryOutcome::Delivered
        );
        assert!(matches!(
            classify(StatusCode::GONE, None),
            DeliveryOutcome::Gone(_)
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(3))),
            DeliveryOutcome::Retry { after: Some(_), .. }
        ));
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, None),
            DeliveryOutcome::Refused(_)
        ));
    }
}
