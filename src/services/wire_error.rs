//! How a service error goes on the wire: its error code, and a message that carries only what
//! this server composed (a library's or a peer's text is logged, never passed on).

use tracing::{debug, error};

use super::{KeyPackageRejection, ServiceError};
use crate::escape::Escaped;
use crate::protocol::{ErrorCode, ErrorResponse};
use crate::store::StoreError;

/// The wire error for a service error: its code and a short message. Internal failures are
/// logged in full and described to the peer as nothing more than "internal error".
pub fn wire_error(e: ServiceError) -> ErrorResponse {
    let code = match &e {
        ServiceError::NotAuthenticated => ErrorCode::NotAuthenticated,
        ServiceError::InvalidUserId(_) => ErrorCode::InvalidUserId,
        ServiceError::WrongDomain => ErrorCode::WrongDomain,
        ServiceError::UserExists => ErrorCode::UserExists,
        ServiceError::UserQuarantined { .. } => ErrorCode::UserQuarantined,
        ServiceError::RegistrationClosed => ErrorCode::RegistrationClosed,
        ServiceError::InviteRequired => ErrorCode::InviteRequired,
        ServiceError::InvalidInvite(_) => ErrorCode::InvalidInvite,
        ServiceError::InvalidKey => ErrorCode::InvalidKey,
        ServiceError::InvalidProof => ErrorCode::InvalidProof,
        ServiceError::KeyInUse => ErrorCode::KeyInUse,
        ServiceError::UnsupportedCiphersuite(_) => ErrorCode::UnsupportedCiphersuite,
        ServiceError::UnknownUser => ErrorCode::UnknownUser,
        ServiceError::UnknownClient => ErrorCode::UnknownClient,
        ServiceError::LastClient => ErrorCode::LastClient,
        ServiceError::TooManyClients => ErrorCode::TooManyClients,
        ServiceError::Forbidden => ErrorCode::Forbidden,
        ServiceError::UnknownDomain(_) => ErrorCode::UnknownDomain,
        ServiceError::KeyPackageRejected { reason, .. } => match reason {
            KeyPackageRejection::Invalid(_) => ErrorCode::InvalidKeyPackage,
            KeyPackageRejection::Expired(_) => ErrorCode::KeyPackageExpired,
            KeyPackageRejection::CredentialMismatch => ErrorCode::KeyPackageCredentialMismatch,
            KeyPackageRejection::NotOwned => ErrorCode::KeyPackageNotOwned,
            KeyPackageRejection::Duplicate => ErrorCode::DuplicateKeyPackage,
            KeyPackageRejection::UnsupportedCiphersuite(_) => ErrorCode::UnsupportedCiphersuite,
            KeyPackageRejection::MultipleLastResort => ErrorCode::MultipleLastResort,
            KeyPackageRejection::MissingCapability(_) => ErrorCode::InvalidKeyPackage,
            KeyPackageRejection::CiphersuiteMismatch { .. } => {
                ErrorCode::KeyPackageCredentialMismatch
            }
        },
        ServiceError::TooManyKeyPackages { .. } | ServiceError::TooManyKeyPackageBytes { .. } => {
            ErrorCode::TooManyKeyPackages
        }
        ServiceError::RateLimited { .. } => ErrorCode::RateLimited,
        ServiceError::InvalidSequence { .. } => ErrorCode::InvalidSequence,
        ServiceError::GroupExists => ErrorCode::GroupExists,
        ServiceError::UnknownGroup => ErrorCode::UnknownGroup,
        ServiceError::NotAMember => ErrorCode::NotAMember,
        ServiceError::WrongEpoch { .. } => ErrorCode::WrongEpoch,
        ServiceError::InvalidMlsMessage(_) => ErrorCode::InvalidMlsMessage,
        ServiceError::GroupInfoMismatch(_) => ErrorCode::GroupInfoMismatch,
        ServiceError::InvalidMemberCredential(_) => ErrorCode::InvalidMemberCredential,
        ServiceError::WelcomeMismatch(_) => ErrorCode::WelcomeMismatch,
        ServiceError::NotAnAdmin => ErrorCode::NotAnAdmin,
        ServiceError::ProposalsNotCommitted => ErrorCode::ProposalsNotCommitted,
        ServiceError::LastAdmin => ErrorCode::LastAdmin,
        ServiceError::PeerUnavailable(_) | ServiceError::PeerDeclined(_) => {
            ErrorCode::PeerUnavailable
        }
        ServiceError::NotIdentified => ErrorCode::NotIdentified,
        ServiceError::PeerRefused(_) => ErrorCode::PeerRefused,
        // A peer's refusal is passed on with the peer's code (its text stays in our log).
        ServiceError::Peer(refusal) => refusal.code(),
        ServiceError::ProposalConflict(_) => ErrorCode::ProposalConflict,
        ServiceError::InvalidGroupId => ErrorCode::InvalidGroupId,
        ServiceError::TreeNotKept { .. } => ErrorCode::TreeNotKept,
        ServiceError::UnknownTreeHead(_) => ErrorCode::UnknownTreeHead,
        ServiceError::PushTargetRefused(_) => ErrorCode::PushTargetRefused,
        ServiceError::TooManyPushTargets { .. } => ErrorCode::TooManyPushTargets,
        ServiceError::UnknownPushTarget => ErrorCode::UnknownPushTarget,
        ServiceError::QueueFull { .. } => ErrorCode::QueueFull,
        ServiceError::Store(StoreError::Closed) => ErrorCode::ShuttingDown,
        ServiceError::Store(StoreError::ActorRemoved) => ErrorCode::ClientRemoved,
        ServiceError::NotAServiceOperation(_) | ServiceError::Store(_) => {
            error!(error = ?e, "request failed");
            return ErrorResponse::new(ErrorCode::Internal, "internal error");
        }
    };
    let response = ErrorResponse::new(code, &public_message(code, &e));
    match e {
        // roost/2 carries the wait in the response itself (roost/1 only in the message).
        ServiceError::RateLimited { retry_after } => response.retry_after(retry_after),
        _ => response,
    }
}

/// The message sent with a refusal: only what this server composed. A library's error text
/// (openmls, tls_codec) or a peer's message is logged, never passed on.
fn public_message(code: ErrorCode, e: &ServiceError) -> String {
    let with_details = || {
        debug!(error = %Escaped(e), "request refused");
        // Our own description comes first, the library's text after the first ": ".
        let text = e.to_string();
        text.split_once(": ")
            .map_or(text.clone(), |(ours, _)| ours.to_owned())
    };
    match e {
        ServiceError::Peer(_) => {
            debug!(error = %Escaped(e), "a peer refused a relayed request");
            format!("the peer homeserver refused: {}", code.meaning())
        }
        ServiceError::PeerUnavailable(_) => {
            debug!(error = %Escaped(e), "a peer could not be reached");
            code.meaning().to_owned()
        }
        ServiceError::InvalidMlsMessage(_)
        | ServiceError::GroupInfoMismatch(_)
        | ServiceError::WelcomeMismatch(_) => with_details(),
        ServiceError::KeyPackageRejected {
            index,
            reason: KeyPackageRejection::Invalid(_) | KeyPackageRejection::Expired(_),
        } => {
            debug!(error = %Escaped(e), "KeyPackage refused");
            format!("KeyPackage {index} refused: {}", code.meaning())
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::ClientId;

    fn samples() -> Vec<ServiceError> {
        let client = ClientId::of("bob@localhost", 1);
        vec![
            ServiceError::RateLimited {
                retry_after: Duration::from_secs(1),
            },
            ServiceError::QueueFull { full: vec![client] },
            ServiceError::PeerUnavailable("down".into()),
            ServiceError::Peer(ErrorResponse::new(ErrorCode::QueueFull, "full")),
            ServiceError::Peer(ErrorResponse::new(ErrorCode::UnknownUser, "who")),
            ServiceError::Store(StoreError::Closed),
            ServiceError::Store(StoreError::Corrupt("x".into())),
            ServiceError::Store(StoreError::ActorRemoved),
            ServiceError::WrongEpoch { current: 3 },
            ServiceError::InvalidMlsMessage("the commit is not valid: openmls says X".into()),
            ServiceError::UnknownGroup,
            ServiceError::ProposalConflict("pending".into()),
        ]
    }

    #[test]
    fn a_service_error_and_its_wire_code_agree_on_retrying() {
        for error in samples() {
            let retry = error.retry();
            let wire = wire_error(error);
            assert_eq!(wire.code().retry(), retry, "{wire}");
        }
    }

    #[test]
    fn library_and_peer_text_is_not_passed_on() {
        let wire = wire_error(ServiceError::InvalidMlsMessage(
            "the commit is not valid: openmls says X".into(),
        ));
        assert_eq!(wire.message.as_str(), "the commit is not valid");
        let wire = wire_error(ServiceError::Peer(ErrorResponse::new(
            ErrorCode::UnknownUser,
            "secret peer detail",
        )));
        assert_eq!(wire.code(), ErrorCode::UnknownUser);
        assert!(!wire.message.as_str().contains("secret"), "{wire}");
        let wire = wire_error(ServiceError::Store(StoreError::Corrupt("disk".into())));
        assert_eq!(wire.message.as_str(), "internal error");
    }
}
