//! The transparency decoders and verifiers clients and auditors run on what a server sends:
//! bindings proofs, histories, log pages and consistency proofs. Never panic; what decodes
//! round-trips; verifying arbitrary proofs fails cleanly (the first byte picks which).
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost::protocol::{BindingsProof, ConsistencyProof, LogPage, UserHistory};
use roost::transparency::verify::{verify_bindings, verify_extends, HistoryCheck};
use roost::transparency::{log_tree, record_hash};
use tls_codec::{Deserialize, Serialize};

fn round_trips<T: Deserialize + Serialize + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<T> {
    let decoded = T::tls_deserialize_exact(data).ok()?;
    let encoded = decoded.tls_serialize_detached().expect("encodes");
    assert_eq!(
        T::tls_deserialize_exact(&encoded).expect("re-decodes"),
        decoded
    );
    Some(decoded)
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, data)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            if let Some(proof) = round_trips::<BindingsProof>(data) {
                let _ = verify_bindings(&proof, proof.bindings.user_id.as_str());
            }
        }
        1 => {
            if let Some(history) = round_trips::<UserHistory>(data) {
                let user = history.bindings.bindings.user_id.as_str();
                let mut check = HistoryCheck::new(&history.bindings.head.head, user);
                if check.page(&history.entries).is_ok() {
                    let _ = check.finish(&history.bindings.bindings);
                }
            }
        }
        2 => {
            if let Some(page) = round_trips::<LogPage>(data) {
                for record in &page.entries {
                    let _ = record_hash(record);
                }
            }
        }
        _ => {
            if data.len() < 16 {
                return;
            }
            let (sizes, rest) = data.split_at(16);
            let old = u64::from_be_bytes(sizes[..8].try_into().unwrap()) % 1_000_000;
            let new = u64::from_be_bytes(sizes[8..].try_into().unwrap()) % 1_000_000;
            if let Some(proof) = round_trips::<ConsistencyProof>(rest) {
                let _ = log_tree::verify_consistency(old, new, &[1; 32], &[2; 32], &proof.hashes);
                let _ = log_tree::verify_inclusion(old, new, &[3; 32], &proof.hashes, &[4; 32]);
                let head = |tree_size| roost::protocol::TreeHead {
                    domain: roost::protocol::Text::new("a.example").unwrap(),
                    tree_size,
                    log_root: [5; 32],
                    map_root: [6; 32],
                    published_at: 0,
                    key_id: 1,
                };
                let _ = verify_extends(&head(old), &head(new), &proof.hashes);
            }
        }
    }
});
