//! The client's response decoder: never panics; what it accepts round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost::protocol::{decode_response, encode_response};

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = decode_response(data) {
        let encoded = encode_response(&response).expect("a decoded response encodes");
        assert_eq!(decode_response(&encoded).expect("re-decodes"), response);
        assert_eq!(
            encoded.len(),
            2 + tls_codec::Size::tls_serialized_len(&response),
            "serialized length matches the bytes written"
        );
    }
});
