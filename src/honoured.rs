//! Which parts of a Tyk API definition tollgate honours, so that none is ignored silently.
//!
//! Two answers for a definition: an auth method it asks for that tollgate does not have, which
//! refuses the whole definition (serving it with weaker or no auth would open it), and the
//! fields it uses that tollgate does not honour, which are reported at load and in `/hello`.

use serde_json::{Map, Value};

/// Flags that turn on an auth method tollgate does not implement, with the method's name.
const UNSUPPORTED_AUTH: [(&str, &str); 9] = [
    ("use_mutual_tls_auth", "mutual TLS"),
    ("enable_jwt", "JWT"),
    ("use_basic_auth", "basic auth"),
    ("enable_signature_checking", "HMAC request signing"),
    ("use_oauth2", "OAuth 2.0"),
    ("use_openid", "OpenID Connect"),
    ("enable_coprocess_auth", "plugin (coprocess) auth"),
    ("use_go_plugin_auth", "Go plugin auth"),
    ("custom_plugin_auth_enabled", "custom plugin auth"),
];

/// Fields tollgate honours, as dotted paths (`*` stands for any name).
const HONOURED: &[&str] = &[
    "name",
    "api_id",
    "org_id",
    "slug",
    "active",
    "enable_batch_request_support",
    // Analytics (read when `enable_analytics` is on).
    "do_not_track",
    "tags",
    "expire_analytics_after",
    "enable_detailed_recording",
    // The `header_injector` processor is applied; any other is reported by `headers`.
    "response_processors",
    "use_keyless",
    "use_standard_auth",
    "auth.auth_header_name",
    "auth.use_param",
    "auth.param_name",
    "auth.use_cookie",
    "auth.cookie_name",
    "auth_configs.authToken.auth_header_name",
    "auth_configs.authToken.use_param",
    "auth_configs.authToken.param_name",
    "auth_configs.authToken.use_cookie",
    "auth_configs.authToken.cookie_name",
    "auth_configs.authToken.name",
    "proxy.listen_path",
    "proxy.target_url",
    "proxy.strip_listen_path",
    "proxy.preserve_host_header",
    "proxy.transport.ssl_insecure_skip_verify",
    "proxy.transport.ssl_min_version",
    "proxy.transport.ssl_max_version",
    "proxy.transport.ssl_ciphers",
    "upstream_certificates.*",
    "upstream_certificates_disabled",
    "version_data.not_versioned",
    "version_data.default_version",
    "version_data.versions.*.name",
    "version_data.versions.*.expires",
    "version_data.versions.*.override_target",
    "definition.location",
    "definition.key",
    "definition.strip_path",
    "definition.strip_versioning_data",
    "definition.url_versioning_pattern",
    "definition.fallback_to_default",
    // Only the switch: any extended path in use is reported by its own name.
    "version_data.versions.*.use_extended_paths",
    "version_data.versions.*.ignore_endpoint_case",
    // The endpoint lists' entries (`[]`: each element of the list).
    "version_data.versions.*.extended_paths.ignored[].path",
    "version_data.versions.*.extended_paths.ignored[].method",
    "version_data.versions.*.extended_paths.ignored[].ignore_case",
    "version_data.versions.*.extended_paths.ignored[].disabled",
    "version_data.versions.*.extended_paths.ignored[].method_actions.*.action",
    "version_data.versions.*.extended_paths.ignored[].method_actions.*.code",
    "version_data.versions.*.extended_paths.ignored[].method_actions.*.data",
    "version_data.versions.*.extended_paths.ignored[].method_actions.*.headers",
    "version_data.versions.*.extended_paths.black_list[].path",
    "version_data.versions.*.extended_paths.black_list[].method",
    "version_data.versions.*.extended_paths.black_list[].ignore_case",
    "version_data.versions.*.extended_paths.black_list[].disabled",
    "version_data.versions.*.extended_paths.black_list[].method_actions.*.action",
    "version_data.versions.*.extended_paths.black_list[].method_actions.*.code",
    "version_data.versions.*.extended_paths.black_list[].method_actions.*.data",
    "version_data.versions.*.extended_paths.black_list[].method_actions.*.headers",
    "version_data.versions.*.extended_paths.white_list[].path",
    "version_data.versions.*.extended_paths.white_list[].method",
    "version_data.versions.*.extended_paths.white_list[].ignore_case",
    "version_data.versions.*.extended_paths.white_list[].disabled",
    "version_data.versions.*.extended_paths.white_list[].method_actions.*.action",
    "version_data.versions.*.extended_paths.white_list[].method_actions.*.code",
    "version_data.versions.*.extended_paths.white_list[].method_actions.*.data",
    "version_data.versions.*.extended_paths.white_list[].method_actions.*.headers",
    // Version-wide header and size settings, and the transforms of `extended_paths`.
    "version_data.versions.*.global_headers",
    "version_data.versions.*.global_headers_remove",
    "version_data.versions.*.global_headers_disabled",
    "version_data.versions.*.global_response_headers",
    "version_data.versions.*.global_response_headers_remove",
    "version_data.versions.*.global_response_headers_disabled",
    "version_data.versions.*.global_size_limit",
    "version_data.versions.*.global_size_limit_disabled",
    "version_data.versions.*.extended_paths.transform_headers[].path",
    "version_data.versions.*.extended_paths.transform_headers[].method",
    "version_data.versions.*.extended_paths.transform_headers[].disabled",
    "version_data.versions.*.extended_paths.transform_headers[].delete_headers",
    "version_data.versions.*.extended_paths.transform_headers[].add_headers",
    "version_data.versions.*.extended_paths.transform_response_headers[].path",
    "version_data.versions.*.extended_paths.transform_response_headers[].method",
    "version_data.versions.*.extended_paths.transform_response_headers[].disabled",
    "version_data.versions.*.extended_paths.transform_response_headers[].delete_headers",
    "version_data.versions.*.extended_paths.transform_response_headers[].add_headers",
    "version_data.versions.*.extended_paths.url_rewrites[].path",
    "version_data.versions.*.extended_paths.url_rewrites[].method",
    "version_data.versions.*.extended_paths.url_rewrites[].disabled",
    "version_data.versions.*.extended_paths.url_rewrites[].match_pattern",
    "version_data.versions.*.extended_paths.url_rewrites[].rewrite_to",
    "version_data.versions.*.extended_paths.url_rewrites[].triggers[].on",
    "version_data.versions.*.extended_paths.url_rewrites[].triggers[].rewrite_to",
    "version_data.versions.*.extended_paths.url_rewrites[].triggers[].options.header_matches.*.match_rx",
    "version_data.versions.*.extended_paths.url_rewrites[].triggers[].options.header_matches.*.reverse",
    "version_data.versions.*.extended_paths.url_rewrites[].triggers[].options.query_val_matches.*.match_rx",
    "version_data.versions.*.extended_paths.url_rewrites[].triggers[].options.query_val_matches.*.reverse",
    "version_data.versions.*.extended_paths.url_rewrites[].triggers[].options.path_part_matches.*.match_rx",
    "version_data.versions.*.extended_paths.url_rewrites[].triggers[].options.path_part_matches.*.reverse",
    "version_data.versions.*.extended_paths.url_rewrites[].triggers[].options.session_meta_matches.*.match_rx",
    "version_data.versions.*.extended_paths.url_rewrites[].triggers[].options.session_meta_matches.*.reverse",
    "version_data.versions.*.extended_paths.url_rewrites[].triggers[].options.request_context_matches.*.match_rx",
    "version_data.versions.*.extended_paths.url_rewrites[].triggers[].options.request_context_matches.*.reverse",
    "version_data.versions.*.extended_paths.url_rewrites[].triggers[].options.payload_matches.match_rx",
    "version_data.versions.*.extended_paths.url_rewrites[].triggers[].options.payload_matches.reverse",
    "version_data.versions.*.extended_paths.hard_timeouts[].path",
    "version_data.versions.*.extended_paths.hard_timeouts[].method",
    "version_data.versions.*.extended_paths.hard_timeouts[].disabled",
    "version_data.versions.*.extended_paths.hard_timeouts[].timeout",
    "version_data.versions.*.extended_paths.size_limits[].path",
    "version_data.versions.*.extended_paths.size_limits[].method",
    "version_data.versions.*.extended_paths.size_limits[].disabled",
    "version_data.versions.*.extended_paths.size_limits[].size_limit",
    "version_data.versions.*.extended_paths.method_transforms[].path",
    "version_data.versions.*.extended_paths.method_transforms[].method",
    "version_data.versions.*.extended_paths.method_transforms[].disabled",
    "version_data.versions.*.extended_paths.method_transforms[].to_method",
    "version_data.versions.*.extended_paths.internal[].path",
    "version_data.versions.*.extended_paths.internal[].method",
    "version_data.versions.*.extended_paths.internal[].disabled",
    "version_data.versions.*.extended_paths.circuit_breakers[].path",
    "version_data.versions.*.extended_paths.circuit_breakers[].method",
    "version_data.versions.*.extended_paths.circuit_breakers[].disabled",
    "version_data.versions.*.extended_paths.circuit_breakers[].threshold_percent",
    "version_data.versions.*.extended_paths.circuit_breakers[].samples",
    "version_data.versions.*.extended_paths.circuit_breakers[].return_to_service_after",
    "version_data.versions.*.extended_paths.circuit_breakers[].disable_half_open_state",
    "version_data.versions.*.extended_paths.track_endpoints[].path",
    "version_data.versions.*.extended_paths.track_endpoints[].method",
    "version_data.versions.*.extended_paths.track_endpoints[].disabled",
    "version_data.versions.*.extended_paths.do_not_track_endpoints[].path",
    "version_data.versions.*.extended_paths.do_not_track_endpoints[].method",
    "version_data.versions.*.extended_paths.do_not_track_endpoints[].disabled",
    "version_data.versions.*.extended_paths.validate_json[].path",
    "version_data.versions.*.extended_paths.validate_json[].method",
    "version_data.versions.*.extended_paths.validate_json[].disabled",
    "version_data.versions.*.extended_paths.validate_json[].schema",
    "version_data.versions.*.extended_paths.validate_json[].error_response_code",
    "enable_context_vars",
    // CORS, the IP lists, and what reaches the upstream.
    "CORS.enable",
    "CORS.allowed_origins",
    "CORS.allowed_methods",
    "CORS.allowed_headers",
    "CORS.exposed_headers",
    "CORS.allow_credentials",
    "CORS.max_age",
    "CORS.options_passthrough",
    "enable_ip_whitelisting",
    "allowed_ips",
    "enable_ip_blacklisting",
    "blacklisted_ips",
    "ip_access_control_disabled",
    "strip_auth_data",
    "proxy.disable_strip_slash",
    "domain",
    "domain_disabled",
    "disable_rate_limit",
    "disable_quota",
    "session_lifetime",
    "global_rate_limit.rate",
    "global_rate_limit.per",
    "global_rate_limit.disabled",
    // Nothing is recorded for analytics, so "do not record" holds.
    "do_not_track",
    // Database ids of Tyk's Dashboard: nothing for a gateway to do.
    "id",
    "_id",
];

/// Settings of an auth method, which do nothing while the method is off (and a definition
/// whose method is on is refused anyway): by field-name prefix.
const AUTH_METHOD_SETTINGS: &[&str] = &[
    // Every method's entry in `auth_configs` but the auth token's, whose fields are read.
    "auth_configs.basic",
    "auth_configs.coprocess",
    "auth_configs.hmac",
    "auth_configs.jwt",
    "auth_configs.oauth",
    "auth_configs.oidc",
    "jwt_",
    "hmac_",
    "basic_auth",
    "openid_options",
    "oauth_meta",
    "notifications",
    "client_certificates",
    "custom_middleware.auth_check",
];

/// The flag and method of an auth method `definition` turns on that tollgate lacks.
pub fn unsupported_auth(definition: &Map<String, Value>) -> Option<(&'static str, &'static str)> {
    UNSUPPORTED_AUTH
        .into_iter()
        .find(|(flag, _)| definition.get(*flag).and_then(Value::as_bool) == Some(true))
}

/// The fields `definition` uses that tollgate does not honour: the shortest dotted path of each
/// part that holds a value other than an empty one (`null`, `false`, `0`, `""`, `[]`, `{}`,
/// or an object switched off by an `enable…: false` member).
pub fn unhonoured(definition: &Map<String, Value>) -> Vec<String> {
    let versioned = definition
        .get("version_data")
        .and_then(|v| v.get("not_versioned"))
        .and_then(Value::as_bool)
        == Some(false);
    let mut found = Vec::new();
    for (name, value) in definition {
        // How requests choose a version matters to versioned APIs only.
        if !versioned && name == "definition" {
            continue;
        }
        walk(name, name, value, &mut found);
    }
    found
}

/// Looks for unhonoured parts of `value`: `path` is matched against [`HONOURED`] (a list's
/// elements as `list[]`), `shown` is the path reported (`list[2]`).
fn walk(path: &str, shown: &str, value: &Value, found: &mut Vec<String>) {
    if is_empty(value)
        || is_honoured(path)
        || AUTH_METHOD_SETTINGS.iter().any(|p| path.starts_with(p))
    {
        return;
    }
    match value {
        Value::Object(members) if HONOURED.iter().any(|h| covers_below(h, path)) => {
            for (name, member) in members {
                walk(
                    &format!("{path}.{name}"),
                    &format!("{shown}.{name}"),
                    member,
                    found,
                );
            }
        }
        Value::Array(items)
            if HONOURED
                .iter()
                .any(|h| covers_below(h, &format!("{path}[]"))) =>
        {
            let element = format!("{path}[]");
            for (i, item) in items.iter().enumerate() {
                walk(&element, &format!("{shown}[{i}]"), item, found);
            }
        }
        _ => found.push(shown.to_owned()),
    }
}

/// Whether `honoured` (a pattern) names `path`.
fn is_honoured(path: &str) -> bool {
    HONOURED.iter().any(|h| pattern_matches(h, path))
}

/// Whether `honoured` names something inside `path`, which must then be looked into.
fn covers_below(honoured: &str, path: &str) -> bool {
    let depth = path.split('.').count();
    let parts: Vec<&str> = honoured.split('.').collect();
    parts.len() > depth && pattern_matches(&parts[..depth].join("."), path)
}

fn pattern_matches(pattern: &str, path: &str) -> bool {
    let (mut p, mut q) = (pattern.split('.'), path.split('.'));
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == "*" || a == b => {}
            _ => return false,
        }
    }
}

/// Whether `value` holds anything but an empty value (see [`unhonoured`]).
pub fn in_use(value: &Value) -> bool {
    !is_empty(value)
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(members) => {
            let switched_off = members
                .iter()
                .filter(|(k, _)| k.starts_with("enable"))
                .all(|(_, v)| v == &Value::Bool(false))
                && members.keys().any(|k| k.starts_with("enable"));
            switched_off || members.values().all(is_empty)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_seed_sample_uses_nothing_unhonoured() {
        let sample = object(
            serde_json::from_str(include_str!("../tests/fixtures/app_sample.json")).unwrap(),
        );
        assert_eq!(unhonoured(&sample), Vec::<String>::new());
        assert_eq!(unsupported_auth(&sample), None);
    }

    #[test]
    fn fields_in_use_are_named_by_their_shortest_unhonoured_path() {
        let definition = object(json!({
            "api_id": "1",
            "proxy": {"listen_path": "/x/", "target_url": "http://u", "transport": {"ssl_ciphers": ["a"], "proxy_url": "http://p"}},
            "CORS": {"enable": false, "allowed_origins": ["*"]},
            "cache_options": {"enable_cache": true, "cache_timeout": 60},
            "enable_batch_request_support": true,
            "global_rate_limit": {"rate": 0, "per": 0},
            "hmac_allowed_clock_skew": -1,
            "uptime_tests": {"check_list": [], "config": {"recheck_wait": 0}},
            "version_data": {"not_versioned": true, "versions": {"Default": {
                "name": "Default", "expires": "3000-01-02 15:04", "use_extended_paths": true,
                "extended_paths": {"ignored": [],
                    "black_list": [{"path": "/admin", "method": "GET"},
                        {"path": "/x", "method_actions": {"GET": {"action": "reply", "code": 200,
                            "headers": {"x-a": "1"}, "delay": 5}}}],
                    "transform_headers": [{"path": "/x", "method": "GET", "add_headers": {"a": "b"}}],
                    "url_rewrites": [{"path": "/x", "match_pattern": "x", "rewrite_to": "/y",
                        "triggers": [{"on": "any", "rewrite_to": "/z", "options": {
                            "header_matches": {"x-a": {"match_rx": "a"}},
                            "payload_matches": {"match_rx": "secret"}}}]}],
                    "cache": ["/x"]}}}},
            "domain": "api.example.com",
            "enable_batch_request_support": true,
        }));
        let mut found = unhonoured(&definition);
        found.sort();
        assert_eq!(
            found,
            [
                "cache_options",
                "proxy.transport.proxy_url",
                "version_data.versions.Default.extended_paths.black_list[1].method_actions.GET.delay",
                "version_data.versions.Default.extended_paths.cache",
            ]
        );
    }

    #[test]
    fn the_auth_tokens_own_settings_are_read_and_the_others_are_not_reported() {
        let definition = object(json!({
            "auth_configs": {
                "authToken": {"auth_header_name": "x-key", "use_certificate": true},
                "jwt": {"auth_header_name": "Authorization", "use_param": true},
                "basic": {"auth_header_name": "Authorization"},
            },
        }));
        assert_eq!(
            unhonoured(&definition),
            ["auth_configs.authToken.use_certificate"]
        );
    }

    #[test]
    fn an_auth_method_tollgate_lacks_is_named() {
        let mtls = object(json!({"use_keyless": true, "use_mutual_tls_auth": true}));
        assert_eq!(
            unsupported_auth(&mtls),
            Some(("use_mutual_tls_auth", "mutual TLS"))
        );
        let off = object(json!({"enable_jwt": false, "use_basic_auth": false}));
        assert_eq!(unsupported_auth(&off), None);
    }
}
