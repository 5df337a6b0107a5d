//! The client's response decoder, for both client versions: never panics; what it accepts
//! round-trips, but for a `roost/1` error whose code is newer than `roost/1`, which is sent on
//! as the `roost/1` code of its class.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost::protocol::{
    decode_response, encode_response, ErrorCode, Response, Retry, Version, V1_LAST_CODE,
};

fuzz_target!(|data: &[u8]| {
    for version in Version::ALL {
        if let Ok(response) = decode_response(version, data) {
            let encoded = encode_response(version, &response).expect("a decoded response encodes");
            let again = decode_response(version, &encoded).expect("re-decodes");
            match (&response, &again) {
                (Response::Error(first), Response::Error(second))
                    if version == Version::V1 && first.code().to_u16() > V1_LAST_CODE =>
                {
                    // Sent on as the roost/1 code of its class: Internal for a retryable one,
                    // Forbidden for a permanent one (a code this version knows, like 59).
                    let expected = match first.retry() {
                        Retry::Later => ErrorCode::Internal,
                        Retry::Never => ErrorCode::Forbidden,
                    };
                    assert_eq!(second.code(), expected);
                    assert_eq!(second.retry(), first.retry());
                }
                _ => assert_eq!(again, response),
            }
        }
    }
});
