//! `tyk.conf`: any bytes through the loader's steps (JSON, the unsupported-field report, the
//! typed read) and the validation: a clear error or a config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::config::GatewayConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(loaded) = GatewayConfig::from_value(value, |_| None) {
        let _ = loaded.config.validate();
        let _ = loaded.config.listen_addr();
        let _ = loaded.config.path_matching();
    }
});
