//! Small wire types shared by requests, responses and notifications.

use std::fmt;

use tls_codec::{Deserialize, Serialize, Size, TlsDeserialize, TlsSerialize, TlsSize, VLBytes};

use super::MAX_TEXT_LEN;

/// UTF-8 text of at most [`MAX_TEXT_LEN`] bytes: `opaque text<V>` on the wire.
///
/// Decoding refuses invalid UTF-8 and over-long text, so a `Text` in hand is always valid.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Text(String);

impl Text {
    /// Wraps `s`, refusing text longer than [`MAX_TEXT_LEN`] bytes.
    pub fn new(s: impl Into<String>) -> Result<Self, tls_codec::Error> {
        let s = s.into();
        if s.len() > MAX_TEXT_LEN {
            return Err(tls_codec::Error::DecodingError(format!(
                "text of {} bytes exceeds the limit of {MAX_TEXT_LEN}",
                s.len()
            )));
        }
        Ok(Self(s))
    }

    /// Wraps `s`, cutting it at a character boundary to at most [`MAX_TEXT_LEN`] bytes.
    pub fn truncated(s: &str) -> Self {
        let mut end = s.len().min(MAX_TEXT_LEN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Self(s[..end].to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Size for Text {
    fn tls_serialized_len(&self) -> usize {
        tls_codec::VLByteSlice(self.0.as_bytes()).tls_serialized_len()
    }
}

impl Serialize for Text {
    fn tls_serialize<W: std::io::Write>(&self, writer: &mut W) -> Result<usize, tls_codec::Error> {
        tls_codec::VLByteSlice(self.0.as_bytes()).tls_serialize(writer)
    }
}

impl Deserialize for Text {
    fn tls_deserialize<R: std::io::Read>(bytes: &mut R) -> Result<Self, tls_codec::Error> {
        let raw: Vec<u8> = VLBytes::tls_deserialize(bytes)?.into();
        if raw.len() > MAX_TEXT_LEN {
            return Err(tls_codec::Error::DecodingError(format!(
                "text of {} bytes exceeds the limit of {MAX_TEXT_LEN}",
                raw.len()
            )));
        }
        String::from_utf8(raw)
            .map(Self)
            .map_err(|_| tls_codec::Error::DecodingError("text is not valid UTF-8".into()))
    }
}

/// One client (device) of a user: `struct { opaque user_id<V>; uint32 device_id; }`.
///
/// Written `user@domain/device` for people.
#[derive(
    Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, TlsSize, TlsSerialize, TlsDeserialize,
)]
pub struct ClientId {
    pub user_id: Text,
    pub device_id: u32,
}

impl ClientId {
    /// Device `device_id` of `user_id` (cut to the text limit, as [`Text::truncated`] does: a
    /// user id that passed its checks is within it).
    pub fn of(user_id: &str, device_id: u32) -> Self {
        Self {
            user_id: Text::truncated(user_id),
            device_id,
        }
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.user_id, self.device_id)
    }
}

/// The limits a server enforces, as it announces them in `ServerInfo`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, TlsSize, TlsSerialize, TlsDeserialize)]
pub struct Limits {
    /// Largest request the server accepts, in bytes.
    pub max_request_len: u32,
    /// Largest response the server sends, in bytes.
    pub max_response_len: u32,
    /// Largest notification record on the push stream, in bytes.
    pub max_notification_len: u32,
    /// Bidirectional streams a connection may have open at once.
    pub max_concurrent_streams: u32,
    /// A connection with no traffic for this long is closed, in milliseconds.
    pub idle_timeout_ms: u32,
    /// A request not fully received this long after its stream opened is refused, in milliseconds.
    pub request_timeout_ms: u32,
}

/// A boolean: `uint8` 0 (false) or 1 (true); any other value is a decoding error.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Flag(pub bool);

impl Size for Flag {
    fn tls_serialized_len(&self) -> usize {
        1
    }
}

impl Serialize for Flag {
    fn tls_serialize<W: std::io::Write>(&self, writer: &mut W) -> Result<usize, tls_codec::Error> {
        u8::from(self.0).tls_serialize(writer)
    }
}

impl Deserialize for Flag {
    fn tls_deserialize<R: std::io::Read>(bytes: &mut R) -> Result<Self, tls_codec::Error> {
        match u8::tls_deserialize(bytes)? {
            0 => Ok(Self(false)),
            1 => Ok(Self(true)),
            other => Err(tls_codec::Error::DecodingError(format!(
                "a boolean must be 0 or 1, not {other}"
            ))),
        }
    }
}
