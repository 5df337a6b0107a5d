//! Delivering one wake-up over HTTP: Web Push (RFC 8030 with RFC 8291 encryption and RFC 8292
//! VAPID) and push gateways (Matrix push-gateway API), and the rules that keep a client from
//! making the server reach internal addresses (SSRF).
//!
//! Web Push endpoints are chosen by clients, so they are checked when registered (scheme, host,
//! literal addresses) and again at every delivery, where the host's addresses are resolved by
//! our own resolver and refused if any is internal (a name cannot be re-pointed at an internal
//! address after registration). Redirects are not followed and no proxy is used. Gateways are
//! chosen by the operator and may be internal.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::Url;

use super::reach::{reach, Reach};
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
            url::Host::Ipv4(ip) => reach(IpAddr::V4(*ip)) == Reach::Loopback,
            url::Host::Ipv6(ip) => reach(IpAddr::V6(*ip)) == Reach::Loopback,
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

    /// Refuses every address but public ones (`reach`: the IANA special-purpose registries),
    /// and loopback unless allowed.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), String> {
        match reach(ip) {
            Reach::Public => Ok(()),
            Reach::Loopback if self.allow_loopback => Ok(()),
            Reach::Loopback => Err(format!("{ip} is a loopback address; refused")),
            Reach::Internal => Err(format!("{ip} is an internal address; refused")),
        }
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

/// A push host's name led to an address the rules refuse: its target is forgotten, as one that
/// breaks the rules at registration would have been refused.
#[derive(Debug)]
struct RefusedAddress(String);

impl std::fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RefusedAddress {}

/// The refusal of our resolver, if that is why `error` happened.
fn refused_address(error: &reqwest::Error) -> Option<&RefusedAddress> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<RefusedAddress>() {
            return Some(refused);
        }
        source = cause.source();
    }
    None
}

/// Resolves push hosts for reqwest, refusing names that lead to an internal address.
struct GuardedResolver {
    rules: EndpointRules,
    lookup: Lookup,
}

/// Resolves a host name to its addresses: the system's resolver, or a test's table.
type Lookup = Arc<
    dyn Fn(String) -> futures::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>
        + Send
        + Sync,
>;

fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) })
    })
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let rules = self.rules.clone();
        let lookup = self.lookup.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            if is_loopback_name(&host) && !rules.allow_loopback {
                return Err(Box::new(RefusedAddress(format!(
                    "{host} is a loopback name; refused"
                ))) as _);
            }
            let addresses = lookup(host.clone()).await?;
            for address in &addresses {
                rules
                    .check_address(address.ip())
                    .map_err(|e| RefusedAddress(format!("{host} resolves to {e}")))?;
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
        Self::with_lookup(config, vapid, domain, system_lookup())
    }

    /// With `lookup` resolving Web Push hosts (the system's resolver in [`Self::new`]).
    fn with_lookup(
        config: &PushConfig,
        vapid: Option<Arc<VapidKey>>,
        domain: &str,
        lookup: Lookup,
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
                lookup,
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
            Err(e) => match refused_address(&e) {
                Some(refused) => DeliveryOutcome::Gone(refused.to_string()),
                None => DeliveryOutcome::Retry {
                    reason: transport_failure(&e),
                    after: None,
                },
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
        // (endpoint, whether development admits it)
        let verdicts = [
            ("http://127.0.0.1:8080/x", true),
            ("http://localhost:8080/x", true),
            ("https://[::1]/x", true),
            ("http://10.0.0.1/x", false),
            ("http://push.example.net/x", false),
        ];
        for (endpoint, admitted) in verdicts {
            let verdict = development.check_endpoint(endpoint);
            assert_eq!(verdict.is_ok(), admitted, "{endpoint}: {verdict:?}");
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

    /// A name that passed at registration but leads to an internal address at wake-up: the
    /// wake-up is not sent and the target is reported gone (so it is forgotten). Resolution is
    /// a table here, as the test machine's DNS is not ours to point.
    #[tokio::test]
    async fn a_name_resolving_to_an_internal_address_at_wake_up_is_gone() {
        for (address, allow_loopback) in [
            ("10.0.0.1:443", false),
            ("[::ffff:0:7f00:1]:443", true),
            ("127.0.0.1:443", false),
        ] {
            let address: SocketAddr = address.parse().unwrap();
            let lookup: Lookup = Arc::new(move |_host| Box::pin(async move { Ok(vec![address]) }));
            let config = PushConfig {
                web_push: true,
                allow_loopback,
                ..PushConfig::default()
            };
            let vapid = Some(Arc::new(VapidKey::generate()));
            let delivery = PushDelivery::with_lookup(&config, vapid, "a.example", lookup).unwrap();
            let keys = crate::web_push::SubscriptionKeys::generate();
            let target = PushTarget::WebPush(WebPushSubscription {
                endpoint: crate::protocol::Text::new("https://push.example.net/w/1").unwrap(),
                p256dh: keys.public.to_vec().into(),
                auth: keys.auth.to_vec().into(),
            });
            assert!(delivery
                .rules()
                .check_endpoint("https://push.example.net/w/1")
                .is_ok());
            match delivery.deliver(&target, 3).await {
                DeliveryOutcome::Gone(reason) => {
                    assert!(reason.contains("push.example.net"), "{reason}")
                }
                other => panic!("{address}: {other:?}"),
            }
        }
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
