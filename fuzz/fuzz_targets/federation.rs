//! The federation decoders (requests from peers, responses from peers): never panic; what they
//! accept round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost::protocol::{
    decode_federation_request, decode_federation_response, encode_federation_request,
    encode_federation_response,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_federation_request(data) {
        let encoded = encode_federation_request(&request).expect("encodes");
        assert_eq!(
            decode_federation_request(&encoded).expect("re-decodes"),
            request
        );
    }
    if let Ok(response) = decode_federation_response(data) {
        let encoded = encode_federation_response(&response).expect("encodes");
        assert_eq!(
            decode_federation_response(&encoded).expect("re-decodes"),
            response
        );
    }
});
