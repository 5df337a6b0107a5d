//! Error codes: every error a peer can cause has its own stable numeric code.

use std::fmt;

use tls_codec::{TlsDeserialize, TlsSerialize, TlsSize};

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
            Self::Unknown(_) => "an error this version does not know",
        }
    }
}

/// The body of an error response: `struct { uint16 code; opaque message<V>; }`.
///
/// The message is for people (logs, error output); programs decide on the code.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ErrorResponse {
    code: u16,
    pub message: Text,
}

impl ErrorResponse {
    pub fn new(code: ErrorCode, message: &str) -> Self {
        Self {
            code: code.to_u16(),
            message: Text::truncated(message),
        }
    }

    pub fn code(&self) -> ErrorCode {
        ErrorCode::from_u16(self.code)
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
}
