//! The push stream: a header, then length-delimited notification records.
//!
//! ```text
//! struct { uint16 version; } PushStreamHeader;
//! struct { uint32 length; opaque notification[length]; } NotificationRecord;
//! ```
//!
//! The length prefix lets a client skip a notification kind it does not know.

use tls_codec::{Deserialize, Serialize, TlsDeserialize, TlsSerialize, TlsSize};

use super::{
    ClientId, DecodeError, GroupLogAppended, KeyPackagesLow, NewMessages, Text, Version,
    MAX_NOTIFICATION_LEN,
};

/// Length of the push stream header, in bytes.
pub const PUSH_HEADER_LEN: usize = 2;
/// Length of a notification record's length prefix, in bytes.
pub const NOTIFICATION_LENGTH_PREFIX_LEN: usize = 4;

/// The server is shutting down: no new requests are taken, the connection closes soon.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct ServerShutdown {
    pub reason: Text,
    /// A hint: try to reconnect after this many milliseconds.
    pub retry_after_ms: u32,
}

/// A record on the push stream. Notifications are hints: everything they announce can also be
/// fetched with a request.
#[derive(Clone, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
#[repr(u16)]
pub enum Notification {
    #[tls_codec(discriminant = 1)]
    ServerShutdown(ServerShutdown),
    /// This client was removed (by another client of its user, or with its account); the
    /// connection closes next.
    #[tls_codec(discriminant = 2)]
    ClientRemoved(ClientId),
    /// This client's KeyPackage stock fell below the server's low watermark: publish more.
    #[tls_codec(discriminant = 3)]
    KeyPackagesLow(KeyPackagesLow),
    /// Messages are waiting in this client's queue.
    #[tls_codec(discriminant = 4)]
    NewMessages(NewMessages),
    /// Entries were appended to a group log this client reads.
    #[tls_codec(discriminant = 5)]
    GroupLogAppended(GroupLogAppended),
}

/// The bytes that open a push stream on a connection speaking `version`.
pub fn encode_push_header(version: Version) -> [u8; PUSH_HEADER_LEN] {
    version.number().to_be_bytes()
}

/// Checks that a push stream header carries the connection's `version`.
pub fn decode_push_header(
    version: Version,
    header: [u8; PUSH_HEADER_LEN],
) -> Result<(), DecodeError> {
    match u16::from_be_bytes(header) {
        number if number == version.number() => Ok(()),
        other => Err(DecodeError::UnsupportedVersion(other)),
    }
}

/// Encodes one notification as a record: length prefix and body.
pub fn encode_notification_record(
    notification: &Notification,
) -> Result<Vec<u8>, tls_codec::Error> {
    let body = notification.tls_serialize_detached()?;
    if body.len() > MAX_NOTIFICATION_LEN {
        return Err(tls_codec::Error::EncodingError(format!(
            "notification of {} bytes exceeds the limit of {MAX_NOTIFICATION_LEN}",
            body.len()
        )));
    }
    let mut record = Vec::with_capacity(NOTIFICATION_LENGTH_PREFIX_LEN + body.len());
    record.extend_from_slice(&(body.len() as u32).to_be_bytes());
    record.extend_from_slice(&body);
    Ok(record)
}

/// Decodes a record body (the bytes after the length prefix). An unknown notification kind is
/// `Ok(None)`: the client skips it.
pub fn decode_notification(body: &[u8]) -> Result<Option<Notification>, DecodeError> {
    if body.len() > MAX_NOTIFICATION_LEN {
        return Err(DecodeError::TooLarge {
            len: body.len(),
            limit: MAX_NOTIFICATION_LEN,
        });
    }
    match Notification::tls_deserialize_exact(body) {
        Ok(notification) => Ok(Some(notification)),
        Err(tls_codec::Error::UnknownValue(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let n = Notification::ServerShutdown(ServerShutdown {
            reason: Text::new("maintenance").unwrap(),
            retry_after_ms: 5000,
        });
        let record = encode_notification_record(&n).unwrap();
        let len = u32::from_be_bytes(record[..4].try_into().unwrap()) as usize;
        assert_eq!(len, record.len() - NOTIFICATION_LENGTH_PREFIX_LEN);
        assert_eq!(decode_notification(&record[4..]).unwrap(), Some(n));
    }

    #[test]
    fn unknown_kind_is_skipped_and_garbage_is_an_error() {
        assert_eq!(decode_notification(&[0xab, 0xcd, 1, 2, 3]).unwrap(), None);
        assert!(decode_notification(&[0, 1, 0xff]).is_err());
        assert!(decode_push_header(Version::V1, [0, 9]).is_err());
        for version in Version::ALL {
            assert!(decode_push_header(version, encode_push_header(version)).is_ok());
        }
        assert!(decode_push_header(Version::V1, encode_push_header(Version::V2)).is_err());
    }
}
