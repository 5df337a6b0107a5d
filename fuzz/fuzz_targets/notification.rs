//! The client's push-stream decoders (header and record body): never panic; what they accept
//! round-trips through the record encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost::protocol::{
    decode_notification, decode_push_header, encode_notification_record, Version,
    NOTIFICATION_LENGTH_PREFIX_LEN, PUSH_HEADER_LEN,
};

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.get(..PUSH_HEADER_LEN) {
        for version in Version::ALL {
            let _ = decode_push_header(version, header.try_into().expect("two bytes"));
        }
    }
    if let Ok(Some(notification)) = decode_notification(data) {
        let record = encode_notification_record(&notification).expect("encodes");
        let body = &record[NOTIFICATION_LENGTH_PREFIX_LEN..];
        assert_eq!(
            decode_notification(body).expect("re-decodes"),
            Some(notification)
        );
    }
});
