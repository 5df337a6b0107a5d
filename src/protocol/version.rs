//! Versions of the client protocol and how they are told apart on the wire.
//!
//! A connection's version is fixed by the ALPN chosen in its TLS handshake (`roost/1`,
//! `roost/2`); every request and response envelope and the push stream header carry its number,
//! and a message whose number is not the connection's is refused. What differs between versions
//! is listed in protocol-spec/core.md section 4; here it is the error response's form
//! ([`super::ErrorResponse`]) and the error codes a version may carry ([`super::ErrorCode::in_version`]).

/// A version of the client protocol (`roost/N`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Version {
    /// `roost/1`: errors as `code` and `message`; codes 1 to 58 only.
    V1,
    /// `roost/2`: errors carry their retry class and a retry-after hint.
    V2,
}

impl Version {
    /// The newest version, the one this library's client offers first.
    pub const LATEST: Self = Self::V2;
    /// Every version this code speaks, newest (most preferred) first: the server's ALPN order
    /// and the client's offer.
    pub const ALL: [Self; 2] = [Self::V2, Self::V1];

    /// The number carried in envelopes and the push stream header.
    pub fn number(self) -> u16 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }

    pub fn from_number(number: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.number() == number)
    }

    /// The ALPN identifier that negotiates this version.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Self::V1 => b"roost/1",
            Self::V2 => b"roost/2",
        }
    }

    pub fn from_alpn(alpn: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.alpn() == alpn)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "roost/{}", self.number())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_alpns_name_one_version_each() {
        for version in Version::ALL {
            assert_eq!(Version::from_number(version.number()), Some(version));
            assert_eq!(Version::from_alpn(version.alpn()), Some(version));
            assert_eq!(version.to_string().as_bytes(), version.alpn());
        }
        assert_eq!(Version::from_number(0), None);
        assert_eq!(Version::from_number(3), None);
        assert_eq!(Version::from_alpn(b"roost-fed/1"), None);
        assert_eq!(Version::ALL[0], Version::LATEST);
    }
}
