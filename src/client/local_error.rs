//! Failures a device meets on its own side (not the server's refusals, which carry the wire
//! error codes of protocol-spec/core.md): each has a stable code and says what to do, so that
//! neither an app nor a person is left with a library's raw text.

use crate::client::ClientError;

/// A failure on this device, with a stable code (`code`) and a hint (`hint`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    /// The device holds no state for the group: it never joined, left, was removed, or lost it.
    #[error("this device is not in group {group}")]
    NoSuchGroup { group: String },
    /// The user named is in none of the group's leaves.
    #[error("{user} is not in the group")]
    NotInGroup { user: String },
    /// An invitation found no client of the user to add.
    #[error("{user} has no client to add: none has a KeyPackage, or all are members")]
    NothingToAdd { user: String },
    /// MLS itself (openmls) refused, with its own words.
    #[error("MLS refused: {detail}")]
    Mls { detail: String },
    /// A received message that this device can never process (acknowledged, and reported).
    #[error("cannot process a message: {detail}")]
    Unprocessable { detail: String },
}

/// The code of a failure that is neither a server refusal nor one of [`LocalError`]'s (a bug,
/// a damaged key store, a file that cannot be written).
pub const OTHER_LOCAL_FAILURE: u16 = 1000;
/// The code of a command line the CLI cannot read.
pub const USAGE_ERROR: u16 = 1006;

impl LocalError {
    /// A stable number, in a range the wire never uses (1000 and up).
    pub fn code(&self) -> u16 {
        match self {
            Self::NoSuchGroup { .. } => 1001,
            Self::NotInGroup { .. } => 1002,
            Self::NothingToAdd { .. } => 1003,
            Self::Mls { .. } => 1004,
            Self::Unprocessable { .. } => 1005,
        }
    }

    /// The code's name, as printed.
    pub fn name(&self) -> &'static str {
        match self {
            Self::NoSuchGroup { .. } => "NoSuchGroup",
            Self::NotInGroup { .. } => "NotInGroup",
            Self::NothingToAdd { .. } => "NothingToAdd",
            Self::Mls { .. } => "MlsRefused",
            Self::Unprocessable { .. } => "Unprocessable",
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::NoSuchGroup { .. } => {
                "run `recv` to join from an invitation; `groups` lists this device's groups"
            }
            Self::NotInGroup { .. } => "`members GROUP` lists who is in it",
            Self::NothingToAdd { .. } => {
                "the user's devices publish KeyPackages when they connect: try again once one has"
            }
            Self::Mls { .. } => "run `recv` to bring the group up to date, then try again",
            Self::Unprocessable { .. } => {
                "if this repeats for a group, this device's state for it broke: `resync GROUP`"
            }
        }
    }
}

/// How any failure of a client operation is reported: a code (the server's wire code, or a
/// local one), its name, whether trying again later may pass, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u16,
    pub name: String,
    pub retryable: bool,
    pub hint: Option<&'static str>,
}

/// Classifies `error` (see [`Failure`]).
pub fn failure(error: &anyhow::Error) -> Failure {
    for cause in error.chain() {
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            let retryable = client.retry() == crate::protocol::Retry::Later;
            return match client.code() {
                Some(code) => Failure {
                    code: code.to_u16(),
                    name: format!("{code:?}"),
                    retryable,
                    hint: server_hint(code),
                },
                // The network, not the server: no wire code.
                None => Failure {
                    code: OTHER_LOCAL_FAILURE,
                    name: "Unreachable".into(),
                    retryable,
                    hint: Some("check --server and that the server runs; then try again"),
                },
            };
        }
        if let Some(local) = cause.downcast_ref::<LocalError>() {
            return Failure {
                code: local.code(),
                name: local.name().into(),
                retryable: false,
                hint: Some(local.hint()),
            };
        }
    }
    Failure {
        code: OTHER_LOCAL_FAILURE,
        name: "LocalFailure".into(),
        retryable: false,
        hint: None,
    }
}

/// What to do about a server refusal a person can act on.
fn server_hint(code: crate::protocol::ErrorCode) -> Option<&'static str> {
    use crate::protocol::ErrorCode;
    Some(match code {
        ErrorCode::WrongEpoch | ErrorCode::ProposalsNotCommitted => {
            "run `recv` to bring the group up to date, then try again"
        }
        ErrorCode::NotAnAdmin => "only an Admin may do this: ask one (`members GROUP`)",
        ErrorCode::LastAdmin => "make another member an Admin first (`set-role`)",
        ErrorCode::NotAMember => "this device is not in that group (`groups` lists its groups)",
        ErrorCode::QueueFull => "a recipient's queue is full: it must read before more fits",
        ErrorCode::RateLimited => "wait a moment, then try again",
        _ => return None,
    })
}
