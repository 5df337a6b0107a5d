//! The federation decoders (requests from peers, responses from peers): never panic; what they
//! accept round-trips, but for an error code newer than `roost-fed/1`, which is sent on as the
//! older code of its class (protocol-spec/core.md section 4).
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost::protocol::{
    decode_federation_request, decode_federation_response, encode_federation_request,
    encode_federation_response, ErrorResponse, FederationResponse, FederationResponseBody,
    V1_LAST_CODE,
};

/// The error a response carries, if any.
fn refusal(response: &FederationResponse) -> Option<&ErrorResponse> {
    match response {
        FederationResponse::Error(error) => Some(error),
        FederationResponse::Ok(FederationResponseBody::DeliveredBatch(batch)) => {
            batch.refusal.as_ref()
        }
        FederationResponse::Ok(_) => None,
    }
}

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
        let again = decode_federation_response(&encoded).expect("re-decodes");
        match (refusal(&response), refusal(&again)) {
            (Some(first), Some(second)) if first.code().to_u16() > V1_LAST_CODE => {
                assert!(second.code().to_u16() <= V1_LAST_CODE);
                assert_eq!(second.retry(), first.retry(), "the class is kept");
                assert_eq!(
                    encode_federation_response(&again).expect("encodes"),
                    encoded,
                    "translated once, then stable"
                );
            }
            _ => assert_eq!(again, response),
        }
    }
});
