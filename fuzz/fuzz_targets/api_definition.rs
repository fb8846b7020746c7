//! An API definition (a file in `app_path`, or a `POST /tyk/apis` body): parsed and compiled
//! (versions, endpoint tables, regexes, schemas, rewrites) into what requests are served by.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::api::{ApiSpec, ApiTable, GatewayDefaults, parse_definition};

fuzz_target!(|data: &[u8]| {
    let Ok(definition) = parse_definition(data) else {
        return;
    };
    if let Ok(spec) = ApiSpec::from_definition(definition, &GatewayDefaults::default()) {
        let listen_path = spec.listen_path().to_owned();
        let (table, _) = ApiTable::new(vec![("fuzz.json".into(), spec)], true);
        let _ = table.route(Some("example.com"), &listen_path);
        let _ = table.route(None, "/");
    }
});
