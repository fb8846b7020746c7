//! Tyk's endpoint lists, per version (`version_data.versions.<v>.extended_paths` with
//! `use_extended_paths`): `ignored` (served without auth or key limits), `black_list`
//! (refused), `white_list` (everything else refused), each entry a path pattern and a method
//! or `method_actions` (`no_action`, or `reply` with a mock response). Compiled once per API;
//! part of Tyk's `VersionCheck`, which answers them before auth.
//!
//! Matching is Tyk 5's: a pattern is a regex, unanchored, with `{name}` for one path segment
//! and `*` for any; it is tried on the path after the listen path and on the whole path, and
//! the first entry (ignored, then black, then white, each in file order) whose path and
//! method match decides.

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use regex::RegexSet;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::version::{InvalidField, invalid};

/// What the lists say of a request.
#[derive(Debug, PartialEq)]
pub enum Verdict<'a> {
    /// Nothing matched (or a list's `no_action` allowed it): it goes on.
    Pass,
    /// `ignored`: it goes on without auth, key rate limit or quota.
    Ignore,
    /// `black_list`, or not on the `white_list`.
    Forbidden,
    /// `method_actions` with `action: "reply"`: answered here.
    Reply(&'a MockReply),
}

/// A mock response: its status, `data` as the body, and its headers (no others are added).
#[derive(Debug, PartialEq)]
pub struct MockReply {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: HeaderMap,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum List {
    Ignored,
    Black,
    White,
}

#[derive(Debug)]
enum Methods {
    /// `method` empty.
    Any,
    Only(Method),
    /// `method_actions`: only the methods it names, each with its action.
    Actions(Vec<(Method, Option<MockReply>)>),
}

#[derive(Debug)]
struct Entry {
    list: List,
    methods: Methods,
}

/// One version's lists.
#[derive(Debug)]
struct Lists {
    /// Every entry's pattern, in deciding order.
    patterns: RegexSet,
    entries: Vec<Entry>,
    /// A `white_list` entry exists: what matches no entry is refused.
    whitelist: bool,
}

/// An API's endpoint lists, by version name.
#[derive(Debug)]
pub struct EndpointLists {
    by_version: HashMap<String, Lists>,
    /// For an API that is not versioned: the lists of its one version.
    unversioned: Option<Lists>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ExtendedPaths {
    ignored: Vec<EntryFields>,
    black_list: Vec<EntryFields>,
    white_list: Vec<EntryFields>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct EntryFields {
    path: String,
    method: String,
    ignore_case: bool,
    disabled: bool,
    method_actions: Option<HashMap<String, ActionFields>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ActionFields {
    action: String,
    code: u16,
    data: String,
    headers: HashMap<String, String>,
}

impl EndpointLists {
    /// The lists of `version_data`'s versions that set `use_extended_paths`; `None` when no
    /// version has an entry. For an API that is not versioned, the lists of its
    /// `default_version`, else of `Default`, else of its first version by name.
    pub fn compile(
        not_versioned: bool,
        version_data: &Map<String, Value>,
    ) -> Result<Option<Self>, InvalidField> {
        let Some(versions) = version_data.get("versions").and_then(Value::as_object) else {
            return Ok(None);
        };
        let mut by_version = HashMap::new();
        for (name, version) in versions {
            if let Some(lists) = compile_version(name, version)? {
                by_version.insert(name.clone(), lists);
            }
        }
        if by_version.is_empty() {
            return Ok(None);
        }
        let unversioned = if not_versioned {
            let default = version_data
                .get("default_version")
                .and_then(Value::as_str)
                .filter(|name| versions.contains_key(*name))
                .or(versions.contains_key("Default").then_some("Default"))
                .or(versions.keys().next().map(String::as_str));
            default.and_then(|name| by_version.remove(name))
        } else {
            None
        };
        Ok(Some(Self {
            by_version,
            unversioned,
        }))
    }

    /// The verdict on a request for `version` (`None`: the API is not versioned) with `path`
    /// and `method`, the API listening on `listen_path`.
    pub fn verdict(
        &self,
        version: Option<&str>,
        listen_path: &str,
        path: &str,
        method: &Method,
    ) -> Verdict<'_> {
        let lists = match version {
            None => self.unversioned.as_ref(),
            Some(name) => self.by_version.get(name),
        };
        match lists {
            Some(lists) => lists.verdict(listen_path, path, method),
            None => Verdict::Pass,
        }
    }
}

impl Lists {
    fn verdict(&self, listen_path: &str, path: &str, method: &Method) -> Verdict<'_> {
        let after_listen_path = match path.strip_prefix(listen_path.trim_end_matches('/')) {
            Some(rest) if rest.starts_with('/') => rest,
            Some(_) | None => "/",
        };
        let near = self.patterns.matches(after_listen_path);
        let whole = self.patterns.matches(path);
        for (i, entry) in self.entries.iter().enumerate() {
            if !near.matched(i) && !whole.matched(i) {
                continue;
            }
            let reply = match &entry.methods {
                Methods::Any => None,
                Methods::Only(only) if only == method => None,
                Methods::Only(_) => continue,
                Methods::Actions(actions) => match actions.iter().find(|(m, _)| m == method) {
                    Some((_, reply)) => reply.as_ref(),
                    None => continue,
                },
            };
            return match (reply, entry.list) {
                (Some(reply), _) => Verdict::Reply(reply),
                (None, List::Ignored) => Verdict::Ignore,
                (None, List::Black) => Verdict::Forbidden,
                (None, List::White) => Verdict::Pass,
            };
        }
        if self.whitelist {
            Verdict::Forbidden
        } else {
            Verdict::Pass
        }
    }
}

/// One version's lists, if it uses extended paths and has an enabled entry.
fn compile_version(name: &str, version: &Value) -> Result<Option<Lists>, InvalidField> {
    let base = format!("version_data.versions.{name}");
    if version.get("use_extended_paths").and_then(Value::as_bool) != Some(true) {
        return Ok(None);
    }
    let Some(paths) = version.get("extended_paths") else {
        return Ok(None);
    };
    let field = format!("{base}.extended_paths");
    let paths: ExtendedPaths = serde_path_to_error::deserialize(paths)
        .map_err(|e| invalid(&format!("{field}.{}", e.path()), e.inner().to_string()))?;
    let ignore_case = version.get("ignore_endpoint_case").and_then(Value::as_bool) == Some(true);
    let mut patterns = Vec::new();
    let mut entries = Vec::new();
    let mut whitelist = false;
    for (list, key, fields) in [
        (List::Ignored, "ignored", paths.ignored),
        (List::Black, "black_list", paths.black_list),
        (List::White, "white_list", paths.white_list),
    ] {
        for (i, entry) in fields.into_iter().enumerate() {
            if entry.disabled {
                continue;
            }
            let at = format!("{field}.{key}[{i}]");
            patterns.push(pattern(&entry.path, entry.ignore_case || ignore_case, &at)?);
            let methods = methods(&entry, &at)?;
            whitelist |= list == List::White;
            entries.push(Entry { list, methods });
        }
    }
    if entries.is_empty() {
        return Ok(None);
    }
    let patterns =
        RegexSet::new(&patterns).map_err(|e| invalid(&field, format!("patterns: {e}")))?;
    Ok(Some(Lists {
        patterns,
        entries,
        whitelist,
    }))
}

/// Tyk's path pattern as a regex: `{name}` (or `{name:regex}`) one segment, `/*/` one
/// segment, `/*` anything; the rest is regex syntax. Checked here, so that a bad one is a load
/// error naming its entry.
fn pattern(path: &str, ignore_case: bool, at: &str) -> Result<String, InvalidField> {
    if path.is_empty() {
        return Err(invalid(&format!("{at}.path"), "is empty"));
    }
    let mut regex = String::with_capacity(path.len() + 16);
    if ignore_case {
        regex.push_str("(?i)");
    }
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            break;
        };
        regex.push_str(&rest[..open]);
        match rest[open + 1..close].split_once(':') {
            Some((_, inner)) => {
                regex.push('(');
                regex.push_str(inner);
                regex.push(')');
            }
            None => regex.push_str("([^/]+)"),
        }
        rest = &rest[close + 1..];
    }
    regex.push_str(rest);
    let regex = regex.replace("/*/", "/[^/]+/").replace("/*", "/.*");
    regex::Regex::new(&regex).map_err(|e| invalid(&format!("{at}.path"), e.to_string()))?;
    Ok(regex)
}

fn methods(entry: &EntryFields, at: &str) -> Result<Methods, InvalidField> {
    let parse = |name: &str, field: &str| {
        Method::from_bytes(name.as_bytes())
            .map_err(|_| invalid(field, format!("{name:?} is not an HTTP method")))
    };
    let Some(actions) = &entry.method_actions else {
        return Ok(match entry.method.as_str() {
            "" => Methods::Any,
            name => Methods::Only(parse(name, &format!("{at}.method"))?),
        });
    };
    let mut methods = Vec::new();
    for (name, action) in actions {
        let field = format!("{at}.method_actions.{name}");
        let method = parse(name, &field)?;
        let reply = match action.action.as_str() {
            "no_action" => None,
            "reply" => Some(mock_reply(action, &field)?),
            other => {
                return Err(invalid(
                    &format!("{field}.action"),
                    format!("{other:?} is not an action (no_action or reply)"),
                ));
            }
        };
        methods.push((method, reply));
    }
    Ok(Methods::Actions(methods))
}

fn mock_reply(action: &ActionFields, field: &str) -> Result<MockReply, InvalidField> {
    let status = StatusCode::from_u16(action.code).map_err(|_| {
        invalid(
            &format!("{field}.code"),
            format!("{} is not a status", action.code),
        )
    })?;
    let mut headers = HeaderMap::new();
    for (name, value) in &action.headers {
        let at = format!("{field}.headers.{name}");
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(&at, "is not a header name"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| invalid(&at, "is not a header value"))?;
        headers.append(name, value);
    }
    Ok(MockReply {
        status,
        body: Bytes::from(action.data.clone()),
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lists(extended_paths: Value) -> EndpointLists {
        let data = json!({"not_versioned": true, "versions": {"Default": {
            "name": "Default", "use_extended_paths": true, "extended_paths": extended_paths}}});
        EndpointLists::compile(true, data.as_object().unwrap())
            .unwrap()
            .unwrap()
    }

    fn verdict<'a>(lists: &'a EndpointLists, method: &str, path: &str) -> Verdict<'a> {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        lists.verdict(None, "/api/", path, &method)
    }

    #[test]
    fn patterns_are_unanchored_regexes_with_segments_and_wildcards() {
        let l = lists(json!({"black_list": [
            {"path": "/users/{id}", "method": "GET"},
            {"path": "/files/*", "method": ""},
            {"path": "/exact$", "method": ""},
        ]}));
        assert_eq!(verdict(&l, "GET", "/api/users/7"), Verdict::Forbidden);
        assert_eq!(verdict(&l, "GET", "/api/users/7/x"), Verdict::Forbidden);
        assert_eq!(
            verdict(&l, "GET", "/api/users/"),
            Verdict::Pass,
            "{{id}} needs a segment"
        );
        assert_eq!(verdict(&l, "POST", "/api/users/7"), Verdict::Pass);
        assert_eq!(verdict(&l, "PUT", "/api/files/a/b"), Verdict::Forbidden);
        assert_eq!(verdict(&l, "GET", "/api/exact"), Verdict::Forbidden);
        assert_eq!(verdict(&l, "GET", "/api/exact/more"), Verdict::Pass);
        assert_eq!(
            verdict(&l, "GET", "/api/USERS/7"),
            Verdict::Pass,
            "case matters"
        );
    }

    #[test]
    fn the_first_matching_entry_decides_ignored_then_black_then_white() {
        let l = lists(json!({
            "ignored": [{"path": "/open", "method": "GET", "ignore_case": true}],
            "black_list": [{"path": "/open/secret", "method": "GET"}],
            "white_list": [{"path": "/fine", "method": "GET"},
                {"path": "/mock", "method_actions": {"GET": {"action": "reply", "code": 202,
                    "data": "mocked", "headers": {"x-mock": "1"}}, "POST": {"action": "no_action"}}}],
        }));
        assert_eq!(verdict(&l, "GET", "/api/OPEN/secret"), Verdict::Ignore);
        assert_eq!(verdict(&l, "GET", "/api/fine"), Verdict::Pass);
        assert_eq!(
            verdict(&l, "GET", "/api/other"),
            Verdict::Forbidden,
            "white list"
        );
        assert_eq!(verdict(&l, "POST", "/api/mock"), Verdict::Pass);
        assert_eq!(verdict(&l, "PUT", "/api/mock"), Verdict::Forbidden);
        let Verdict::Reply(reply) = verdict(&l, "GET", "/api/mock") else {
            panic!("a reply");
        };
        assert_eq!(reply.status, 202);
        assert_eq!(reply.body, "mocked");
        assert_eq!(reply.headers["x-mock"], "1");
    }

    #[test]
    fn bad_entries_are_load_errors_naming_the_field() {
        let data = |paths: Value| json!({"versions": {"v1": {"use_extended_paths": true, "extended_paths": paths}}});
        for (paths, field) in [
            (
                json!({"black_list": [{"path": "/a("}]}),
                "version_data.versions.v1.extended_paths.black_list[0].path",
            ),
            (
                json!({"white_list": [{"path": "/a", "method_actions": {"GET": {"action": "dance"}}}]}),
                "version_data.versions.v1.extended_paths.white_list[0].method_actions.GET.action",
            ),
            (
                json!({"ignored": [{"path": "/a", "method": "GE T"}]}),
                "version_data.versions.v1.extended_paths.ignored[0].method",
            ),
            (
                json!({"ignored": [{"path": 5}]}),
                "version_data.versions.v1.extended_paths.ignored[0].path",
            ),
        ] {
            let e = EndpointLists::compile(false, data(paths).as_object().unwrap()).unwrap_err();
            assert_eq!(e.field, field, "{}", e.reason);
        }
    }

    #[test]
    fn lists_off_disabled_or_empty_compile_to_nothing() {
        for version in [
            json!({"use_extended_paths": false, "extended_paths": {"black_list": [{"path": "/a"}]}}),
            json!({"use_extended_paths": true, "extended_paths": {"black_list": [{"path": "/a", "disabled": true}]}}),
            json!({"use_extended_paths": true, "extended_paths": {"ignored": [], "white_list": []}}),
        ] {
            let data = json!({"versions": {"Default": version}});
            assert!(
                EndpointLists::compile(true, data.as_object().unwrap())
                    .unwrap()
                    .is_none()
            );
        }
    }

    #[test]
    fn each_version_has_its_own_lists_and_case_setting() {
        let data = json!({"default_version": "v2", "versions": {
            "v1": {"use_extended_paths": true, "ignore_endpoint_case": true,
                "extended_paths": {"black_list": [{"path": "/users", "method": "GET"}]}},
            "v2": {"use_extended_paths": true,
                "extended_paths": {"black_list": [{"path": "/orders", "method": "GET"}]}},
        }});
        let data = data.as_object().unwrap();
        let get = Method::GET;
        let versioned = EndpointLists::compile(false, data).unwrap().unwrap();
        let at = |version, path| versioned.verdict(Some(version), "/api/", path, &get);
        assert_eq!(
            at("v1", "/api/USERS"),
            Verdict::Forbidden,
            "ignore_endpoint_case"
        );
        assert_eq!(at("v1", "/api/orders"), Verdict::Pass);
        assert_eq!(at("v2", "/api/orders"), Verdict::Forbidden);
        assert_eq!(at("v2", "/api/Orders"), Verdict::Pass);
        // Not versioned: the default_version's lists.
        let unversioned = EndpointLists::compile(true, data).unwrap().unwrap();
        let verdict = unversioned.verdict(None, "/api/", "/api/orders", &get);
        assert_eq!(verdict, Verdict::Forbidden);
    }
}
