//! A request path's dot segments: what `normalize` resolves has none left (resolving it again
//! changes nothing) and stays absolute; what it refuses is refused with its reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::path::normalize;
use tollgate::path_pattern::after_listen_path;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    match normalize(path) {
        Ok(Some(resolved)) => {
            assert!(resolved.starts_with('/'), "{path:?} -> {resolved:?}");
            assert_eq!(
                normalize(&resolved),
                Ok(None),
                "{path:?} resolves to {resolved:?}, which still has dot segments"
            );
        }
        Ok(None) => {
            if let Some(rest) = path.strip_prefix('/') {
                assert!(
                    !rest.split('/').any(|s| s == "." || s == ".."),
                    "{path:?} left as it is"
                );
            }
        }
        Err(e) => {
            let _ = e.message();
        }
    }
    let rest = after_listen_path("/api/", path);
    assert!(rest.starts_with('/'));
});
