//! The Web Push receiver's decoders: an `aes128gcm` push message body and a VAPID
//! `Authorization` header from whoever reaches the endpoint. Never panic; a body made by the
//! encrypter for the receiver's keys decrypts to its plaintext.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use roost::web_push::{decrypt, encrypt, verify_authorization, SubscriptionKeys, VapidKey};

fn keys() -> &'static (SubscriptionKeys, VapidKey) {
    static KEYS: OnceLock<(SubscriptionKeys, VapidKey)> = OnceLock::new();
    KEYS.get_or_init(|| (SubscriptionKeys::generate(), VapidKey::generate()))
}

fuzz_target!(|data: &[u8]| {
    let (subscription, vapid) = keys();
    let _ = decrypt(subscription, data);
    if let Ok(header) = std::str::from_utf8(data) {
        let _ = verify_authorization(header, vapid.public_key(), "https://push.example", 1_000);
    }
    if data.len() <= roost::web_push::MAX_PLAINTEXT_LEN {
        let body = encrypt(&subscription.public, &subscription.auth, data).expect("encrypts");
        assert_eq!(decrypt(subscription, &body).expect("decrypts"), data);
    }
});
