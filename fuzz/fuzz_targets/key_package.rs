//! The server's KeyPackage validation (uploads come from any authenticated client): never
//! panics on arbitrary bytes, and accepts nothing that is not signed by the owner's key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openmls_rust_crypto::RustCrypto;
use roost::services::validate_key_package;
use roost::store::StoredClient;

fuzz_target!(|data: &[u8]| {
    let owner = StoredClient {
        device_id: 1,
        // No KeyPackage can be signed for this key: nobody knows its private key.
        signature_key: [0x42; 32],
        credential: vec![1, 2, 3],
        added_at: 0,
    };
    let crypto = RustCrypto::default();
    assert!(validate_key_package(&crypto, data, &owner, 1_800_000_000).is_err());
});
