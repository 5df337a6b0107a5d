//! The decoder of events between the nodes of a domain: never panics, refuses oversize input
//! before decoding, and what it accepts re-encodes to the same bytes. Sealed events: whatever
//! arrives on the bus opens or is refused without a panic, and an event sealed with the key
//! opens exactly when its envelope decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost::protocol::cluster::{
    decode_cluster_event, encode_cluster_event, seal_cluster_event, EventKey, EventOpener,
    MAX_CLUSTER_EVENT_LEN,
};

fuzz_target!(|data: &[u8]| {
    let decoded = decode_cluster_event(data);
    if let Ok(envelope) = &decoded {
        assert!(data.len() <= MAX_CLUSTER_EVENT_LEN);
        assert_eq!(encode_cluster_event(envelope).as_deref(), Some(data));
    }
    let key = EventKey([7; 32]);
    let _ = EventOpener::new(key.clone()).open(data, 1_000);
    let sealed = seal_cluster_event(&key, 1_000, 1, data);
    let opened = EventOpener::new(key).open(&sealed, 1_000);
    assert_eq!(opened.ok(), decoded.ok());
});
