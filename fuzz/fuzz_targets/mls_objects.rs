//! What the server parses of client-sent MLS objects before it trusts anything: MLSMessages
//! (commits, proposals, application messages, Welcomes, GroupInfos), ratchet trees, and the
//! Roost structures that ride inside them (`RoostRoles`) or beside them (`ServerNotice`). Never
//! panic; whatever decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn, RatchetTreeIn};
use roost::protocol::{GroupRoles, ServerNotice};
use tls_codec::{Deserialize, Serialize};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = MlsMessageIn::tls_deserialize_exact(data) {
        // The server branches on what the message carries.
        match message.extract() {
            MlsMessageBodyIn::PublicMessage(_)
            | MlsMessageBodyIn::PrivateMessage(_)
            | MlsMessageBodyIn::Welcome(_)
            | MlsMessageBodyIn::GroupInfo(_)
            | MlsMessageBodyIn::KeyPackage(_) => {}
        }
    }
    let _ = RatchetTreeIn::tls_deserialize_exact(data);
    if let Ok(roles) = GroupRoles::tls_deserialize_exact(data) {
        assert_eq!(roles.tls_serialize_detached().expect("encodes"), data);
    }
    if let Ok(notice) = ServerNotice::tls_deserialize_exact(data) {
        assert_eq!(notice.tls_serialize_detached().expect("encodes"), data);
    }
});
