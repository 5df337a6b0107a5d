//! The server's request decoder, for both client versions: never panics, and whatever it accepts
//! re-encodes to bytes that decode to the same request, with `tls_serialized_len` equal to the
//! bytes written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost::protocol::{decode_request, encode_request, Version};

fuzz_target!(|data: &[u8]| {
    for version in Version::ALL {
        if let Ok(request) = decode_request(version, data) {
            let encoded = encode_request(version, &request).expect("a decoded request encodes");
            assert_eq!(
                decode_request(version, &encoded).expect("re-decodes"),
                request
            );
            assert_eq!(
                encoded.len(),
                2 + tls_codec::Size::tls_serialized_len(&request),
                "serialized length matches the bytes written"
            );
        }
    }
});
