//! The server's validated configuration. The binary turns CLI flags into a [`ServerConfig`];
//! nothing starts until it has been built, so a bad flag fails before any socket or file is opened.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::{self, Limits};

/// Where the server's TLS certificate comes from.
#[derive(Clone, Debug)]
pub enum CertificateSource {
    /// PEM files given by the operator.
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate for the domain, generated into the data directory on first
    /// start and reused afterwards.
    SelfSigned,
}

/// Operational limits. Defaults suit a small production server.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Connections served at once; more are refused.
    pub max_connections: usize,
    /// Bidirectional streams (requests in flight) per connection.
    pub max_concurrent_streams: u32,
    /// A connection without traffic for this long is closed.
    pub idle_timeout: Duration,
    /// A request must arrive completely within this time after its stream opened.
    pub request_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_concurrent_streams: 64,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl ServerLimits {
    /// The limits as announced to clients in `ServerInfo`.
    pub fn announced(&self) -> Limits {
        let millis = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        Limits {
            max_request_len: protocol::MAX_REQUEST_LEN as u32,
            max_response_len: protocol::MAX_RESPONSE_LEN as u32,
            max_notification_len: protocol::MAX_NOTIFICATION_LEN as u32,
            max_concurrent_streams: self.max_concurrent_streams,
            idle_timeout_ms: millis(self.idle_timeout),
            request_timeout_ms: millis(self.request_timeout),
        }
    }
}

/// Everything a server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The domain users of this server belong to (`alice@DOMAIN`).
    pub domain: Domain,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub certificate: CertificateSource,
    pub limits: ServerLimits,
}

impl ServerConfig {
    /// A configuration with a self-signed certificate and default limits.
    pub fn new(domain: Domain, listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            domain,
            listen,
            data_dir,
            certificate: CertificateSource::SelfSigned,
            limits: ServerLimits::default(),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
