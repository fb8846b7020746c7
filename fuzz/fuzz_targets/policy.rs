//! A policy (a file of `policies.policy_path`, or a `POST /tyk/policies` body): parsed, put
//! in a table and asked what it leaves out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::policy::{PolicyTable, parse_policy};

fuzz_target!(|data: &[u8]| {
    let Ok(policy) = parse_policy(data) else {
        return;
    };
    let _ = policy.unhonoured();
    let table = PolicyTable::new(vec![policy]);
    let _ = table.unhonoured();
});
