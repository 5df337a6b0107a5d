//! The client credential decoder and verifier (clients run them on every group member's MLS
//! credential): never panic; what decodes round-trips; verification of arbitrary bytes fails
//! cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost::identity::{verify_member, DomainKeys};
use roost::protocol::{ClientCredential, CredentialVerifyingKey};
use tls_codec::{Deserialize, Serialize};

fuzz_target!(|data: &[u8]| {
    let Ok(credential) = ClientCredential::tls_deserialize_exact(data) else {
        return;
    };
    let encoded = credential.tls_serialize_detached().expect("encodes");
    assert_eq!(
        ClientCredential::tls_deserialize_exact(&encoded).expect("re-decodes"),
        credential
    );
    let keys = DomainKeys {
        domain: "a.example".into(),
        keys: vec![CredentialVerifyingKey {
            key_id: credential.content.issuer_key_id,
            public_key: vec![0x42; 32].into(),
            valid_until: u64::MAX,
        }],
    };
    let leaf = credential.content.signature_key.as_slice().to_vec();
    let _ = verify_member(&leaf, &credential, &keys, 1_800_000_000);
});
