//! The invite code parser (codes come from unauthenticated clients): never panics, and accepts
//! nothing it did not issue.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use roost::services::invites::InviteKey;

fn key() -> &'static InviteKey {
    static KEY: OnceLock<(tempfile_dir::Dir, InviteKey)> = OnceLock::new();
    &KEY.get_or_init(|| {
        let dir = tempfile_dir::Dir::new();
        let key = InviteKey::load_or_create(&dir.0).expect("invite key");
        (dir, key)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    if let Ok(code) = std::str::from_utf8(data) {
        assert!(
            key().verify(code, 0).is_err(),
            "accepted a code it never issued"
        );
    }
});

mod tempfile_dir {
    /// A directory under the system temp dir, for the invite key file.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new() -> Self {
            let path =
                std::env::temp_dir().join(format!("roost-fuzz-invite-{}", std::process::id()));
            std::fs::create_dir_all(&path).expect("temp dir");
            Self(path)
        }
    }
}
