//! A session record as read back from the store (whole, and as the credential requests
//! need): whatever decodes must encode and decode again to the same record, so a record
//! tollgate writes is always one it can read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::session::{Credential, SessionState};

fuzz_target!(|data: &[u8]| {
    if let Ok(session) = serde_json::from_slice::<SessionState>(data) {
        let text = serde_json::to_string(&session).expect("a decoded record encodes");
        let again: SessionState = serde_json::from_str(&text).expect("an encoded record decodes");
        assert_eq!(
            serde_json::to_string(&again).expect("encodes"),
            text,
            "a record read back differs"
        );
    }
    let _ = serde_json::from_slice::<Credential>(data);
});
