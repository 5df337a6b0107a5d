//! The admin socket's request decoder and the backup file-name check: never panic, and no name
//! they accept can leave the backup directory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roost::protocol::admin::{decode_admin_request, BackupFile};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_admin_request(data) {
        // What decodes re-encodes and decodes to the same request.
        let line = serde_json::to_vec(&request).expect("encodes");
        assert_eq!(decode_admin_request(&line).expect("decodes again"), request);
    }
    if let Ok(name) = std::str::from_utf8(data) {
        let file = BackupFile {
            name: name.to_owned(),
            bytes: 0,
        };
        if file.has_safe_name() {
            let path = std::path::Path::new(name);
            assert!(path.is_relative(), "{name:?}");
            assert!(
                path.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
                "{name:?}"
            );
        }
    }
});
