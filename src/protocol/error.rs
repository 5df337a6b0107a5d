//! Error codes: every error a peer can cause has its own stable numeric code.

use std::fmt;

use tls_codec::{Deserialize, Serialize, Size};

use super::Text;

macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        /// A stable numeric error code, `uint16` on the wire. Codes are never reused or renumbered.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub enum ErrorCode {
            $($(#[$doc])* $name,)*
            /// A code this version does not know (a newer server); kept as received.
            Unknown(u16),
        }

        impl ErrorCode {
            pub fn to_u16(self) -> u16 {
                match self {
                    $(Self::$name => $value,)*
                    Self::Unknown(value) => value,
                }
            }

            pub fn from_u16(value: u16) -> Self {
                match value {
                    $($value => Self::$name,)*
                    other => Self::Unknown(other),
                }
            }

            /// Every code this version knows, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(Self::$name,)*];
        }
    };
}

error_codes! {
    /// The request could not be decoded.
    MalformedRequest = 1,
    /// The request carries a protocol version the server does not speak.
    UnsupportedVersion = 2,
    /// The request names an operation the server does not know.
    UnknownOperation = 3,
    /// The request is larger than the server's limit.
    RequestTooLarge = 4,
    /// The request was not fully received in time.
    RequestTimeout = 5,
    /// The operation needs an authenticated connection.
    NotAuthenticated = 6,
    /// Authentication failed: unknown client, wrong key or bad signature.
    AuthenticationFailed = 7,
    /// The connection has already authenticated.
    AlreadyAuthenticated = 8,
    /// The server is shutting down and takes no new work.
    ShuttingDown = 9,
    /// The server failed; the request may be retried.
    Internal = 10,
    /// The user id does not follow the grammar (`localpart@domain`).
    InvalidUserId = 11,
    /// The user id's domain is not this server's.
    WrongDomain = 12,
    /// The user id is taken.
    UserExists = 13,
    /// The user id belonged to a deleted account and cannot be registered again yet.
    UserQuarantined = 14,
    /// The server takes no registrations.
    RegistrationClosed = 15,
    /// The server takes registrations by invitation only, and none was given.
    InviteRequired = 16,
    /// The invite code is not valid: forged, expired or used up.
    InvalidInvite = 17,
    /// The signature key is not a valid Ed25519 public key.
    InvalidKey = 18,
    /// The proof of possession of the signature key does not verify.
    InvalidProof = 19,
    /// The signature key already belongs to a client.
    KeyInUse = 20,
    /// The ciphersuite is not one the server supports.
    UnsupportedCiphersuite = 21,
    /// No such user.
    UnknownUser = 22,
    /// No such client.
    UnknownClient = 23,
    /// The user's last client cannot be removed; delete the user instead.
    LastClient = 24,
    /// The user has as many clients as allowed.
    TooManyClients = 25,
    /// The authenticated client may not do this (e.g. remove another user's client).
    Forbidden = 26,
    /// The user id's domain is not served here, and federation cannot reach it.
    UnknownDomain = 27,
    /// A KeyPackage does not parse or does not verify (signatures, MLS rules).
    InvalidKeyPackage = 28,
    /// A KeyPackage's lifetime does not cover the present, or is longer than the server allows.
    KeyPackageExpired = 29,
    /// A KeyPackage's leaf credential is not the uploading client's current credential.
    KeyPackageCredentialMismatch = 30,
    /// A KeyPackage's leaf signature key is not the uploading client's key.
    KeyPackageNotOwned = 31,
    /// A KeyPackage was already published (or appears twice in the batch).
    DuplicateKeyPackage = 32,
    /// The batch, or the client's stock with it, exceeds the per-client limit.
    TooManyKeyPackages = 33,
    /// More than one KeyPackage in the batch is marked last resort.
    MultipleLastResort = 34,
    /// Too many requests of this kind; retry later.
    RateLimited = 35,
    /// A recipient's queue is full (messages or bytes); nothing was queued for it.
    QueueFull = 36,
    /// An acknowledgement names a sequence number the queue has not assigned yet.
    InvalidSequence = 37,
    /// A group with this id exists already.
    GroupExists = 38,
    /// No such group on this server.
    UnknownGroup = 39,
    /// The authenticated client is not a member of the group.
    NotAMember = 40,
    /// The message is for an epoch other than the group's current one; `current epoch` is in the
    /// message. Catch up (fetch the queue) and retry.
    WrongEpoch = 41,
    /// The MLS message does not parse, is not of the expected kind, or fails MLS validation.
    InvalidMlsMessage = 42,
    /// The commit's new GroupInfo does not match the state the commit produces.
    GroupInfoMismatch = 43,
    /// A member's credential is not valid (issuer, key, user or validity).
    InvalidMemberCredential = 44,
    /// The Welcome does not go to exactly the clients the commit adds.
    WelcomeMismatch = 45,
    /// The member's role does not allow this (adding, removing others, changing roles).
    NotAnAdmin = 46,
    /// The commit leaves out proposals pending for its epoch; it must include all of them.
    ProposalsNotCommitted = 47,
    /// The group's last Admin cannot leave or be removed (delete the group instead).
    LastAdmin = 48,
    /// The user's homeserver cannot be reached, or is not a peer of this one.
    PeerUnavailable = 49,
    /// (Federation) the connection has not identified its homeserver yet.
    NotIdentified = 50,
    /// (Federation) the peer may not speak for that domain, or is not allowed to federate.
    PeerRefused = 51,
    /// The authenticated client was removed (or its user deleted) after its connection
    /// authenticated; nothing was done. The connection is being closed.
    ClientRemoved = 52,
    /// A proposal about this member is pending already (or the proposal can never be committed
    /// alongside those pending); commit the pending ones first.
    ProposalConflict = 53,
    /// The group id does not name this server as the group's hub (see groups.md).
    InvalidGroupId = 54,
    /// The server keeps no ratchet tree for that epoch of the group (no Welcome was sent for
    /// it, or it outlived the retention).
    TreeNotKept = 55,
    /// The push target is refused: a malformed or disallowed URL (not https, an internal
    /// address, a host the operator does not allow, a gateway not announced), bad keys, or
    /// offline push of that kind is off on this server.
    PushTargetRefused = 56,
    /// The client has as many push targets as allowed; remove one first.
    TooManyPushTargets = 57,
    /// The client has no push target with that id.
    UnknownPushTarget = 58,
    /// No tree head of that size was published, or the sizes asked for are out of order.
    UnknownTreeHead = 59,
}

/// Whether a refused request may succeed if sent again unchanged, later.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Retry {
    /// The refusal is transient (load, shutdown, a full queue, an unreachable peer): send the
    /// same request again after a while, with backoff.
    Later,
    /// The refusal is final for this request: sending it again unchanged gets the same answer.
    Never,
}

impl ErrorCode {
    /// The retry classification of protocol-spec/core.md section 6. The federation outbox, the
    /// transport and the client library all decide retries from it. A code this version does
    /// not know is treated as retryable, so that nothing is dropped on a newer peer's word.
    pub fn retry(self) -> Retry {
        match self {
            Self::RequestTimeout
            | Self::ShuttingDown
            | Self::Internal
            | Self::RateLimited
            | Self::QueueFull
            | Self::PeerUnavailable
            | Self::Unknown(_) => Retry::Later,
            _ => Retry::Never,
        }
    }

    pub fn is_retryable(self) -> bool {
        self.retry() == Retry::Later
    }

    /// The short meaning protocol-spec/core.md gives the code: what a server says when the
    /// details are not its own to tell (a library's or a peer's text).
    pub fn meaning(self) -> &'static str {
        match self {
            Self::MalformedRequest => "the request could not be decoded",
            Self::UnsupportedVersion => "the request's protocol version is not spoken here",
            Self::UnknownOperation => "the operation code is unknown to this server",
            Self::RequestTooLarge => "the request exceeds max_request_len",
            Self::RequestTimeout => "the request was not received in time",
            Self::NotAuthenticated => "the operation needs an authenticated connection",
            Self::AuthenticationFailed => "authentication failed: unknown client or bad signature",
            Self::AlreadyAuthenticated => "the connection has already authenticated",
            Self::ShuttingDown => "the server is shutting down; retry later",
            Self::Internal => "internal error; the request may be retried",
            Self::InvalidUserId => "the user id does not follow the grammar",
            Self::WrongDomain => "the user id's domain is not this server's",
            Self::UserExists => "the user id is taken",
            Self::UserQuarantined => "the user id belonged to a recently deleted account",
            Self::RegistrationClosed => "the server takes no registrations",
            Self::InviteRequired => "the server takes registrations by invitation only",
            Self::InvalidInvite => "the invite code is forged, malformed, expired or used up",
            Self::InvalidKey => "the signature key is not a valid Ed25519 public key",
            Self::InvalidProof => "the proof of possession of the signature key does not verify",
            Self::KeyInUse => "the signature key already belongs to a client",
            Self::UnsupportedCiphersuite => "the MLS ciphersuite is not supported",
            Self::UnknownUser => "no such user",
            Self::UnknownClient => "no such client",
            Self::LastClient => "a user's last client cannot be removed",
            Self::TooManyClients => "the user has as many clients as allowed",
            Self::Forbidden => "not allowed for this client",
            Self::UnknownDomain => "the domain is not served here",
            Self::InvalidKeyPackage => {
                "a KeyPackage does not parse, verify or meet the requirements"
            }
            Self::KeyPackageExpired => {
                "a KeyPackage's lifetime does not cover the present or is too long"
            }
            Self::KeyPackageCredentialMismatch => {
                "a KeyPackage does not match the client's credential"
            }
            Self::KeyPackageNotOwned => "a KeyPackage's signature key is not the client's",
            Self::DuplicateKeyPackage => "a KeyPackage was already published",
            Self::TooManyKeyPackages => "too many KeyPackages for one client",
            Self::MultipleLastResort => "more than one last-resort KeyPackage in the batch",
            Self::RateLimited => "too many requests of this kind; retry later",
            Self::QueueFull => "a recipient's queue is full",
            Self::InvalidSequence => "the sequence number was not assigned yet",
            Self::GroupExists => "a group with this id exists already",
            Self::UnknownGroup => "no such group",
            Self::NotAMember => "not a member of the group",
            Self::WrongEpoch => "the message is for another epoch: catch up and retry",
            Self::InvalidMlsMessage => "the MLS message is not valid",
            Self::GroupInfoMismatch => "the GroupInfo does not match the commit",
            Self::InvalidMemberCredential => "a member credential is not valid",
            Self::WelcomeMismatch => "the Welcome does not match the commit",
            Self::NotAnAdmin => "only an Admin of the group may do this",
            Self::ProposalsNotCommitted => "the commit leaves out pending proposals",
            Self::LastAdmin => "the group's last Admin cannot leave or be removed",
            Self::PeerUnavailable => "the peer homeserver cannot be reached",
            Self::NotIdentified => "identify the homeserver first",
            Self::PeerRefused => "the peer may not speak for that domain or user",
            Self::ClientRemoved => "the authenticated client was removed",
            Self::ProposalConflict => "a proposal about this member is pending already",
            Self::InvalidGroupId => "the group id does not name this server as its hub",
            Self::TreeNotKept => "no ratchet tree is kept for that epoch of the group",
            Self::PushTargetRefused => "the push target is refused",
            Self::TooManyPushTargets => "the client has as many push targets as allowed",
            Self::UnknownPushTarget => "the client has no push target with that id",
            Self::UnknownTreeHead => "no tree head of that size was published",
            Self::Unknown(_) => "an error this version does not know",
        }
    }
}

/// The last error code of `roost/1` (and of `roost-fed/1`): a code added after it reaches those
/// connections as an older code of the same retry class ([`ErrorResponse::code_in`]).
pub const V1_LAST_CODE: u16 = 58;

/// An error response. On `roost/2`:
/// `struct { uint16 code; RetryClass retry; uint32 retry_after_ms; opaque message<V>; }`; on
/// `roost/1` and `roost-fed/1` (this type's `tls_codec` form): `struct { uint16 code; opaque
/// message<V>; }`, the class then read from the code.
///
/// The message is for people (logs, error output); programs decide on the code and the class.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ErrorResponse {
    code: u16,
    retry: Retry,
    /// When to retry, at the soonest, in milliseconds; 0: no hint.
    retry_after_ms: u32,
    pub message: Text,
}

impl ErrorResponse {
    pub fn new(code: ErrorCode, message: &str) -> Self {
        Self {
            code: code.to_u16(),
            retry: code.retry(),
            retry_after_ms: 0,
            message: Text::truncated(message),
        }
    }

    /// The same error with a hint of when to retry (a rate limit's wait).
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1);
        self
    }

    pub fn code(&self) -> ErrorCode {
        ErrorCode::from_u16(self.code)
    }

    /// Whether the request may be sent again unchanged: as the sender said (`roost/2`), or as the
    /// code's class says (`roost/1`; a code this version does not know is retryable).
    pub fn retry(&self) -> Retry {
        self.retry
    }

    pub fn is_retryable(&self) -> bool {
        self.retry == Retry::Later
    }

    /// The soonest time to retry that the server hinted, if any.
    pub fn retry_after_hint(&self) -> Option<std::time::Duration> {
        (self.retry_after_ms > 0)
            .then(|| std::time::Duration::from_millis(self.retry_after_ms.into()))
    }

    /// Encodes the `roost/2` form.
    pub(super) fn serialize_v2<W: std::io::Write>(
        &self,
        writer: &mut W,
    ) -> Result<usize, tls_codec::Error> {
        let class: u8 = match self.retry {
            Retry::Never => 0,
            Retry::Later => 1,
        };
        Ok(self.code.tls_serialize(writer)?
            + class.tls_serialize(writer)?
            + self.retry_after_ms.tls_serialize(writer)?
            + self.message.tls_serialize(writer)?)
    }

    /// Decodes the `roost/2` form.
    pub(super) fn deserialize_v2<R: std::io::Read>(
        bytes: &mut R,
    ) -> Result<Self, tls_codec::Error> {
        let code = u16::tls_deserialize(bytes)?;
        let retry = match u8::tls_deserialize(bytes)? {
            0 => Retry::Never,
            1 => Retry::Later,
            other => {
                return Err(tls_codec::Error::DecodingError(format!(
                    "unknown retry class {other}"
                )))
            }
        };
        Ok(Self {
            code,
            retry,
            retry_after_ms: u32::tls_deserialize(bytes)?,
            message: Text::tls_deserialize(bytes)?,
        })
    }

    /// The code a connection speaking `version` is sent. `roost/1` and `roost-fed/1` carry
    /// codes up to [`V1_LAST_CODE`] only: their clients take an unknown code for a retryable one,
    /// so a newer permanent refusal would be retried for ever. A newer code (one of ours, or one
    /// a newer peer sent with its class) goes to them as `Forbidden` (permanent) or `Internal`
    /// (retryable), its class kept; the message still names it. From `roost/2` on every code is
    /// sent as it is, with its class.
    pub fn code_in(&self, version: super::Version) -> u16 {
        match version {
            super::Version::V1 if self.code > V1_LAST_CODE => match self.retry {
                Retry::Later => ErrorCode::Internal.to_u16(),
                Retry::Never => ErrorCode::Forbidden.to_u16(),
            },
            _ => self.code,
        }
    }
}

impl Size for ErrorResponse {
    fn tls_serialized_len(&self) -> usize {
        2 + self.message.tls_serialized_len()
    }
}

/// The `roost/1` and `roost-fed/1` form.
impl Serialize for ErrorResponse {
    fn tls_serialize<W: std::io::Write>(&self, writer: &mut W) -> Result<usize, tls_codec::Error> {
        Ok(self.code_in(super::Version::V1).tls_serialize(writer)?
            + self.message.tls_serialize(writer)?)
    }
}

/// The `roost/1` and `roost-fed/1` form: the class is the code's.
impl Deserialize for ErrorResponse {
    fn tls_deserialize<R: std::io::Read>(bytes: &mut R) -> Result<Self, tls_codec::Error> {
        let code = u16::tls_deserialize(bytes)?;
        Ok(Self {
            code,
            retry: ErrorCode::from_u16(code).retry(),
            retry_after_ms: 0,
            message: Text::tls_deserialize(bytes)?,
        })
    }
}

impl fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({}): {}", self.code(), self.code, self.message)
    }
}

/// Why bytes from a peer could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u16),
    #[error("unknown operation {0}")]
    UnknownOperation(u16),
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// The error code a server answers this decoding failure with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::RequestTooLarge,
            Self::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Self::UnknownOperation(_) => ErrorCode::UnknownOperation,
            Self::Malformed(_) => ErrorCode::MalformedRequest,
        }
    }
}

impl DecodeError {
    /// The message a server answers with: the codec's own text stays out of it.
    pub fn public_message(&self) -> String {
        match self {
            Self::Malformed(_) => "malformed request: it does not decode".to_owned(),
            other => other.to_string(),
        }
    }
}

impl From<tls_codec::Error> for DecodeError {
    fn from(e: tls_codec::Error) -> Self {
        Self::Malformed(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.to_u16()), "{code:?} reuses a number");
            assert_eq!(ErrorCode::from_u16(code.to_u16()), code);
        }
        assert_eq!(ErrorCode::from_u16(60_000), ErrorCode::Unknown(60_000));
    }

    #[test]
    fn the_specs_table_gives_every_code_its_name_and_class() {
        let spec = include_str!("../../protocol-spec/core.md");
        let table = &spec[spec.find("## 6. Error codes").unwrap()..spec.find("## 7.").unwrap()];
        let rows: Vec<(u16, String, String)> = table
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let code = cells.get(1)?.parse().ok()?;
                Some((
                    code,
                    cells[2].trim_matches('`').to_owned(),
                    cells[3].to_owned(),
                ))
            })
            .collect();
        assert_eq!(rows.len(), ErrorCode::ALL.len());
        for (&code, (number, name, class)) in ErrorCode::ALL.iter().zip(&rows) {
            assert_eq!(code.to_u16(), *number);
            assert_eq!(format!("{code:?}"), *name);
            let expected = if code.is_retryable() { "R" } else { "P" };
            assert_eq!(class, expected, "{name}'s class");
        }
    }

    #[test]
    fn roost_1_is_sent_only_its_own_codes_with_their_class_kept() {
        use crate::protocol::Version;
        // A roost/1 code goes to both versions unchanged; a later one goes to roost/1 as the
        // roost/1 code of its class.
        for &code in ErrorCode::ALL {
            let error = ErrorResponse::new(code, "x");
            let v1 = match (code.to_u16() <= V1_LAST_CODE, code.retry()) {
                (true, _) => code,
                (false, Retry::Later) => ErrorCode::Internal,
                (false, Retry::Never) => ErrorCode::Forbidden,
            };
            assert_eq!(error.code_in(Version::V1), v1.to_u16(), "{code:?}");
            assert_eq!(error.code_in(Version::V2), code.to_u16());
        }
        assert_eq!(
            ErrorResponse::new(ErrorCode::UnknownTreeHead, "x").code_in(Version::V1),
            ErrorCode::Forbidden.to_u16()
        );
        // Codes from a newer peer, permanent and retryable, as roost/2 carries them.
        for (class, v1_code) in [(0u8, ErrorCode::Forbidden), (1, ErrorCode::Internal)] {
            let mut wire = 70u16.to_be_bytes().to_vec();
            wire.push(class);
            wire.extend_from_slice(&0u32.to_be_bytes());
            wire.push(0);
            let newer = ErrorResponse::deserialize_v2(&mut wire.as_slice()).unwrap();
            assert_eq!(newer.code(), ErrorCode::Unknown(70));
            assert_eq!(newer.code_in(Version::V2), 70);
            let v1 = ErrorResponse::tls_deserialize_exact(newer.tls_serialize_detached().unwrap())
                .unwrap();
            assert_eq!(v1.code(), v1_code);
            assert_eq!(v1.retry(), newer.retry(), "the class is kept");
        }
        // An unknown class is refused rather than guessed.
        let wire = [0, 70, 2, 0, 0, 0, 0, 0];
        assert!(ErrorResponse::deserialize_v2(&mut wire.as_slice()).is_err());
    }
}
