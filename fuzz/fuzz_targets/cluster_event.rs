//! The decoder of events between the nodes of a domain: never panics, refuses oversize input
//! before decoding, and what it accepts re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost::protocol::cluster::{decode_cluster_event, encode_cluster_event, MAX_CLUSTER_EVENT_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = decode_cluster_event(data) {
        assert!(data.len() <= MAX_CLUSTER_EVENT_LEN);
        assert_eq!(encode_cluster_event(&envelope).as_deref(), Some(data));
    }
});
