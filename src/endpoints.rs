//! A version's endpoint table (`version_data.versions.<v>`): its `extended_paths` entries,
//! used with `use_extended_paths`, and its version-wide header and size settings, compiled
//! once per API. A request is matched against every entry's pattern once (plain-text ones
//! compared as text, the others in regex sets); each stage then takes the first entry of its
//! kind whose method matches (see `pipeline`).
//!
//! The lists: `ignored` (served without auth or key limits), `black_list` (refused),
//! `white_list` (everything else refused), each entry a method or `method_actions`
//! (`no_action`, or `reply` with a mock response); the first list entry (ignored, then black,
//! then white) whose path and method match decides. Other kinds (`transform_headers`,
//! `transform_response_headers`, `url_rewrites`, `hard_timeouts`, `size_limits`,
//! `method_transforms`, `circuit_breakers`, `validate_json`, `internal`) match their `method` exactly, as in Tyk: one left empty matches none.
//!
//! Matching is Tyk 5's: a pattern is a regex, unanchored, with `{name}` for one path segment
//! and `*` for any; it is tried on the path after the listen path and on the whole path.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use regex::RegexSet;
use regex_syntax::hir::{Look, LookSet};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::breaker::Breaker;
use crate::headers::HeaderEdit;
use crate::json_validation::JsonValidation;
use crate::path_pattern::{LiteralPattern, PathMatching, after_listen_path};
use crate::rewrite::{RewriteFields, UrlRewrite};
use crate::tls::client::UpstreamTls;
use crate::variables::Secrets;
use crate::version::{InvalidField, invalid};

/// What the lists say of a request.
#[derive(Debug, Clone, Copy, PartialEq)]
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
    /// A list entry's `method` left empty.
    Any,
    Only(Method),
    /// `method_actions`: only the methods it names, each with its action.
    Actions(Vec<(Method, Option<MockReply>)>),
    /// Not a list entry, and `method` left empty: never matches, as in Tyk.
    Never,
}

/// What an entry does when it matches.
#[derive(Debug)]
enum Action {
    List(List),
    /// `internal`: reachable only by Tyk's looping (`tyk://`), which tollgate does not do,
    /// so refused to every request, as Tyk refuses one that did not loop.
    Internal,
    /// `transform_headers`.
    RequestHeaders(HeaderEdit),
    /// `transform_response_headers`.
    ResponseHeaders(HeaderEdit),
    /// `url_rewrites`.
    Rewrite(Box<UrlRewrite>),
    /// `hard_timeouts`: the upstream's time to answer.
    HardTimeout(Duration),
    /// `size_limits`: the largest request body, in bytes.
    SizeLimit(u64),
    /// `method_transforms`: the method the upstream gets.
    MethodTransform(Method),
    /// `circuit_breakers`.
    CircuitBreaker(Breaker),
    /// `validate_json`.
    ValidateJson(Box<JsonValidation>),
    /// `track_endpoints`: analytics record the entry's path (and `TrackPath`).
    Track(Box<str>),
    /// `do_not_track_endpoints`: no analytics record.
    DoNotTrack,
}

#[derive(Debug)]
struct Entry {
    methods: Methods,
    action: Action,
}

impl Entry {
    /// What a list entry says of a request by `method` whose path it matched (`None`: not
    /// one of its methods, so the next entry decides).
    fn listed(&self, method: &Method) -> Option<Verdict<'_>> {
        let Action::List(list) = self.action else {
            return None;
        };
        let reply = match &self.methods {
            Methods::Any => None,
            Methods::Only(only) if only == method => None,
            Methods::Only(_) | Methods::Never => return None,
            Methods::Actions(actions) => actions.iter().find(|(m, _)| m == method)?.1.as_ref(),
        };
        Some(match (reply, list) {
            (Some(reply), _) => Verdict::Reply(reply),
            (None, List::Ignored) => Verdict::Ignore,
            (None, List::Black) => Verdict::Forbidden,
            (None, List::White) => Verdict::Pass,
        })
    }
}

/// One version's entries and settings.
#[derive(Debug)]
pub struct VersionPaths {
    /// Every entry's pattern, split by whether it can be tried on the whole path alone.
    patterns: Patterns,
    entries: Vec<Entry>,
    /// A `white_list` entry exists: what matches no list entry is refused.
    whitelist: bool,
    /// `global_headers_remove` and `global_headers`, unless `global_headers_disabled`.
    pub request_headers: HeaderEdit,
    /// `global_response_headers_remove` and `global_response_headers`, unless
    /// `global_response_headers_disabled`.
    pub response_headers: HeaderEdit,
    /// `global_size_limit`, unless `global_size_limit_disabled` (bytes; `None`: no limit).
    pub size_limit: Option<u64>,
}

/// Which kinds of work a table's versions ask for, so that a pipeline holds only the
/// stages its API uses.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Uses {
    pub lists: bool,
    pub request_headers: bool,
    pub response_headers: bool,
    pub rewrites: bool,
    pub size_limits: bool,
    pub method_transforms: bool,
    pub hard_timeouts: bool,
    pub circuit_breakers: bool,
}

/// An API's endpoint tables, by version name.
#[derive(Debug)]
pub struct EndpointTable {
    by_version: HashMap<String, VersionPaths>,
    /// For an API that is not versioned: the table of its one version.
    unversioned: Option<VersionPaths>,
    uses: Uses,
}

/// A version's patterns, tried on the path after the listen path and on the whole path.
/// A plain-text pattern is compared as text. Of the others, a pattern that looks at neither
/// its start's context nor the haystack's start (no `^`, `\A`, `\b`) matches the whole path
/// wherever it matches the path after the listen path (its suffix), so the whole path alone
/// answers for it: one scan instead of two.
#[derive(Debug)]
struct Patterns {
    /// Plain-text patterns, and the entry each is of.
    literals: Box<[(LiteralPattern, u32)]>,
    /// Patterns free of such looks, and the entry each is of.
    anywhere: RegexSet,
    anywhere_entries: Box<[u32]>,
    /// The others (all of them with `enable_path_prefix_matching`), tried on both paths.
    start_bound: RegexSet,
    start_bound_entries: Box<[u32]>,
}

impl Patterns {
    fn compile(patterns: &[String]) -> Result<Self, regex::Error> {
        let (mut literals, mut anywhere, mut start_bound) = (Vec::new(), Vec::new(), Vec::new());
        let end_looks = LookSet::singleton(Look::End)
            .insert(Look::EndLF)
            .insert(Look::EndCRLF);
        for (i, pattern) in patterns.iter().enumerate() {
            let entry = i as u32;
            let hir = regex_syntax::parse(pattern).ok();
            if let Some(literal) = hir.as_ref().and_then(LiteralPattern::of_hir) {
                literals.push((literal, entry));
                continue;
            }
            let looks = hir.map_or(LookSet::full(), |hir| hir.properties().look_set());
            let side = if looks.subtract(end_looks).is_empty() {
                &mut anywhere
            } else {
                &mut start_bound
            };
            side.push((entry, pattern.as_str()));
        }
        let set = |side: &[(u32, &str)]| RegexSet::new(side.iter().map(|(_, p)| *p));
        Ok(Self {
            literals: literals.into(),
            anywhere: set(&anywhere)?,
            anywhere_entries: anywhere.iter().map(|(i, _)| *i).collect(),
            start_bound: set(&start_bound)?,
            start_bound_entries: start_bound.iter().map(|(i, _)| *i).collect(),
        })
    }

    /// The entries whose pattern matches `near` (the path after the listen path) or `whole`,
    /// in entry order.
    fn hits(&self, entries: usize, near: &str, whole: &str) -> Hits {
        let mut hits = Hits::for_entries(entries);
        for (literal, entry) in &*self.literals {
            if literal.is_match(near) || literal.is_match(whole) {
                hits.insert(*entry);
            }
        }
        // `is_match` first: most requests match few entries, and it neither allocates nor
        // runs on past the first match as `matches` does.
        let mut scan = |set: &RegexSet, entries: &[u32], path: &str| {
            if set.is_match(path) {
                for i in set.matches(path).iter() {
                    hits.insert(entries[i]);
                }
            }
        };
        if !self.anywhere_entries.is_empty() {
            scan(&self.anywhere, &self.anywhere_entries, whole);
            if !whole.ends_with(near) {
                scan(&self.anywhere, &self.anywhere_entries, near);
            }
        }
        if !self.start_bound_entries.is_empty() {
            scan(&self.start_bound, &self.start_bound_entries, near);
            scan(&self.start_bound, &self.start_bound_entries, whole);
        }
        hits
    }
}

/// A request matched against a version's patterns.
pub struct Matched<'p> {
    paths: &'p VersionPaths,
    /// For each kind of entry other than lists, the first hit of that kind for the
    /// request's method (`NO_ENTRY`: none), so that each stage's lookup is one index.
    first: [u32; KINDS],
    /// What the first list entry whose path and method match says, if one does.
    listed: Option<Verdict<'p>>,
}

/// The kinds of entry other than lists, each answered by the first of its entries whose path
/// and method match.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Internal,
    RequestHeaders,
    ResponseHeaders,
    Rewrite,
    HardTimeout,
    SizeLimit,
    MethodTransform,
    CircuitBreaker,
    ValidateJson,
    Track,
    DoNotTrack,
}

const KINDS: usize = 11;
const NO_ENTRY: u32 = u32::MAX;

impl Action {
    fn kind(&self) -> Option<Kind> {
        Some(match self {
            Self::List(_) => return None,
            Self::Internal => Kind::Internal,
            Self::RequestHeaders(_) => Kind::RequestHeaders,
            Self::ResponseHeaders(_) => Kind::ResponseHeaders,
            Self::Rewrite(_) => Kind::Rewrite,
            Self::HardTimeout(_) => Kind::HardTimeout,
            Self::SizeLimit(_) => Kind::SizeLimit,
            Self::MethodTransform(_) => Kind::MethodTransform,
            Self::CircuitBreaker(_) => Kind::CircuitBreaker,
            Self::ValidateJson(_) => Kind::ValidateJson,
            Self::Track(_) => Kind::Track,
            Self::DoNotTrack => Kind::DoNotTrack,
        })
    }
}

/// The entries whose pattern matched, each once, read in entry order: a bit an entry, held
/// inline for tables of up to 128 entries.
enum Hits {
    Inline([u64; INLINE_WORDS]),
    Spilled(Box<[u64]>),
}

const INLINE_WORDS: usize = 2;

impl Hits {
    /// None yet, of a table of `entries` entries.
    fn for_entries(entries: usize) -> Self {
        let words = entries.div_ceil(64);
        if words <= INLINE_WORDS {
            Self::Inline([0; INLINE_WORDS])
        } else {
            Self::Spilled(vec![0; words].into())
        }
    }

    fn words(&self) -> &[u64] {
        match self {
            Self::Inline(words) => words,
            Self::Spilled(words) => words,
        }
    }

    fn insert(&mut self, entry: u32) {
        let words = match self {
            Self::Inline(words) => &mut words[..],
            Self::Spilled(words) => &mut words[..],
        };
        words[entry as usize / 64] |= 1 << (entry % 64);
    }

    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words().iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                let bit = (bits != 0).then(|| bits.trailing_zeros())?;
                bits &= bits - 1;
                Some(w as u32 * 64 + bit)
            })
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct VersionFields {
    use_extended_paths: bool,
    ignore_endpoint_case: bool,
    global_headers: Map<String, Value>,
    global_headers_remove: Vec<String>,
    global_headers_disabled: bool,
    global_response_headers: Map<String, Value>,
    global_response_headers_remove: Vec<String>,
    global_response_headers_disabled: bool,
    global_size_limit: i64,
    global_size_limit_disabled: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ExtendedPaths {
    ignored: Vec<ListFields>,
    black_list: Vec<ListFields>,
    white_list: Vec<ListFields>,
    transform_headers: Vec<HeaderFields>,
    transform_response_headers: Vec<HeaderFields>,
    url_rewrites: Vec<RewriteFields>,
    hard_timeouts: Vec<TimeoutFields>,
    size_limits: Vec<SizeFields>,
    method_transforms: Vec<MethodFields>,
    internal: Vec<InternalFields>,
    circuit_breakers: Vec<BreakerFields>,
    validate_json: Vec<ValidateFields>,
    track_endpoints: Vec<InternalFields>,
    do_not_track_endpoints: Vec<InternalFields>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ValidateFields {
    path: String,
    method: String,
    disabled: bool,
    schema: Value,
    error_response_code: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct BreakerFields {
    path: String,
    method: String,
    disabled: bool,
    threshold_percent: f64,
    samples: i64,
    return_to_service_after: i64,
    disable_half_open_state: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct InternalFields {
    path: String,
    method: String,
    disabled: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ListFields {
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

#[derive(Deserialize, Default)]
#[serde(default)]
struct HeaderFields {
    path: String,
    method: String,
    disabled: bool,
    delete_headers: Vec<String>,
    add_headers: Map<String, Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TimeoutFields {
    path: String,
    method: String,
    disabled: bool,
    timeout: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SizeFields {
    path: String,
    method: String,
    disabled: bool,
    size_limit: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MethodFields {
    path: String,
    method: String,
    disabled: bool,
    to_method: String,
}

/// What an API's endpoint entries are compiled with besides their own fields.
#[derive(Clone, Copy)]
pub struct EntryContext<'a> {
    /// The API's, for a rewrite to an HTTPS host.
    pub tls: &'a UpstreamTls,
    /// The gateway's path matching (`ignore_endpoint_case` and the prefix and suffix switches).
    pub matching: PathMatching,
    /// The values of secrets in header values and rewrites.
    pub secrets: &'a Secrets,
    /// The API's `header_injector` response processor, applied after each version's own
    /// response headers.
    pub response_injector: &'a HeaderEdit,
}

impl EndpointTable {
    /// The tables of `version_data`'s versions; `None` when no version asks for anything.
    /// For an API that is not versioned, the table of its `default_version`, else of
    /// `Default`, else of its first version by name. Also returns the variables in header
    /// values and rewrites that tollgate leaves empty, by field.
    pub fn compile(
        not_versioned: bool,
        version_data: &Map<String, Value>,
        context: EntryContext<'_>,
    ) -> Result<Option<(Self, Vec<String>)>, InvalidField> {
        let Some(versions) = version_data.get("versions").and_then(Value::as_object) else {
            return Ok(None);
        };
        let mut by_version = HashMap::new();
        let mut unfilled = Vec::new();
        for (name, version) in versions {
            if let Some(paths) = compile_version(name, version, context, &mut unfilled)? {
                by_version.insert(name.clone(), paths);
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
            let Some(paths) = default.and_then(|name| by_version.remove(name)) else {
                return Ok(None);
            };
            by_version.clear();
            Some(paths)
        } else {
            None
        };
        let mut uses = Uses::default();
        for paths in by_version.values().chain(&unversioned) {
            paths.add_uses(&mut uses);
        }
        let table = Self {
            by_version,
            unversioned,
            uses,
        };
        Ok(Some((table, unfilled)))
    }

    pub fn uses(&self) -> Uses {
        self.uses
    }

    /// The table for `version` (`None`: the API is not versioned).
    pub fn for_version(&self, version: Option<&str>) -> Option<&VersionPaths> {
        match version {
            None => self.unversioned.as_ref(),
            Some(name) => self.by_version.get(name),
        }
    }
}

impl VersionPaths {
    /// Matches `path` (of an API listening on `listen_path`) and `method` against every
    /// entry.
    pub fn matched(&self, listen_path: &str, path: &str, method: &Method) -> Matched<'_> {
        let mut first = [NO_ENTRY; KINDS];
        let mut listed = None;
        if !self.entries.is_empty() {
            let near = after_listen_path(listen_path, path);
            let hits = self.patterns.hits(self.entries.len(), near, path);
            for i in hits.iter() {
                let entry = &self.entries[i as usize];
                match (entry.action.kind(), &entry.methods) {
                    (Some(kind), Methods::Only(only))
                        if only == method && first[kind as usize] == NO_ENTRY =>
                    {
                        first[kind as usize] = i;
                    }
                    (None, _) if listed.is_none() => listed = entry.listed(method),
                    _ => {}
                }
            }
        }
        Matched {
            paths: self,
            first,
            listed,
        }
    }

    fn add_uses(&self, uses: &mut Uses) {
        uses.lists |= self.any(|a| matches!(a, Action::List(_) | Action::Internal));
        uses.request_headers |= !self.request_headers.is_empty()
            || self.any(|a| matches!(a, Action::RequestHeaders(_)));
        uses.response_headers |= !self.response_headers.is_empty()
            || self.any(|a| matches!(a, Action::ResponseHeaders(_)));
        uses.rewrites |= self.any(|a| matches!(a, Action::Rewrite(_)));
        uses.size_limits |=
            self.size_limit.is_some() || self.any(|a| matches!(a, Action::SizeLimit(_)));
        uses.method_transforms |= self.any(|a| matches!(a, Action::MethodTransform(_)));
        uses.hard_timeouts |= self.any(|a| matches!(a, Action::HardTimeout(_)));
        uses.circuit_breakers |= self.any(|a| matches!(a, Action::CircuitBreaker(_)));
    }

    fn any(&self, kind: impl Fn(&Action) -> bool) -> bool {
        self.entries.iter().any(|e| kind(&e.action))
    }
}

impl<'p> Matched<'p> {
    pub fn paths(&self) -> &'p VersionPaths {
        self.paths
    }

    /// The lists' verdict on the request (an `internal` entry that matches refuses first).
    pub fn verdict(&self) -> Verdict<'p> {
        if self.first(Kind::Internal).is_some() {
            return Verdict::Forbidden;
        }
        match self.listed {
            Some(verdict) => verdict,
            None if self.paths.whitelist => Verdict::Forbidden,
            None => Verdict::Pass,
        }
    }

    /// The first entry of `kind` for the request's method.
    fn first(&self, kind: Kind) -> Option<&'p Action> {
        let i = self.first[kind as usize];
        (i != NO_ENTRY).then(|| &self.paths.entries[i as usize].action)
    }

    pub fn request_headers(&self) -> Option<&'p HeaderEdit> {
        match self.first(Kind::RequestHeaders)? {
            Action::RequestHeaders(edit) => Some(edit),
            _ => None,
        }
    }

    pub fn response_headers(&self) -> Option<&'p HeaderEdit> {
        match self.first(Kind::ResponseHeaders)? {
            Action::ResponseHeaders(edit) => Some(edit),
            _ => None,
        }
    }

    pub fn rewrite(&self) -> Option<&'p UrlRewrite> {
        match self.first(Kind::Rewrite)? {
            Action::Rewrite(rewrite) => Some(rewrite),
            _ => None,
        }
    }

    pub fn hard_timeout(&self) -> Option<Duration> {
        match self.first(Kind::HardTimeout)? {
            Action::HardTimeout(timeout) => Some(*timeout),
            _ => None,
        }
    }

    pub fn size_limit(&self) -> Option<u64> {
        match self.first(Kind::SizeLimit)? {
            Action::SizeLimit(limit) => Some(*limit),
            _ => None,
        }
    }

    pub fn circuit_breaker(&self) -> Option<&'p Breaker> {
        match self.first(Kind::CircuitBreaker)? {
            Action::CircuitBreaker(breaker) => Some(breaker),
            _ => None,
        }
    }

    pub fn validate_json(&self) -> Option<&'p JsonValidation> {
        match self.first(Kind::ValidateJson)? {
            Action::ValidateJson(validation) => Some(validation),
            _ => None,
        }
    }

    /// The method the upstream gets instead of the request's.
    pub fn method_transform(&self) -> Option<&'p Method> {
        match self.first(Kind::MethodTransform)? {
            Action::MethodTransform(to) => Some(to),
            _ => None,
        }
    }

    /// `track_endpoints`: the path analytics record the request under.
    pub fn tracked_path(&self) -> Option<&'p str> {
        match self.first(Kind::Track)? {
            Action::Track(path) => Some(path),
            _ => None,
        }
    }

    /// `do_not_track_endpoints`: no analytics record.
    pub fn not_tracked(&self) -> bool {
        self.first(Kind::DoNotTrack).is_some()
    }
}

/// One version's table, if it asks for anything.
fn compile_version(
    name: &str,
    version: &Value,
    context: EntryContext<'_>,
    unfilled: &mut Vec<String>,
) -> Result<Option<VersionPaths>, InvalidField> {
    let base = format!("version_data.versions.{name}");
    let fields: VersionFields = serde_path_to_error::deserialize(version)
        .map_err(|e| invalid(&format!("{base}.{}", e.path()), e.inner().to_string()))?;
    let globals = |disabled: bool, remove: &[String], set: &Map<String, Value>, names| {
        if disabled {
            return Ok((HeaderEdit::default(), Vec::new()));
        }
        HeaderEdit::compile(remove, set, names, context.secrets)
    };
    let (request_headers, missing) = globals(
        fields.global_headers_disabled,
        &fields.global_headers_remove,
        &fields.global_headers,
        (&base, "global_headers_remove", "global_headers"),
    )?;
    unfilled.extend(missing);
    let (response_headers, missing) = globals(
        fields.global_response_headers_disabled,
        &fields.global_response_headers_remove,
        &fields.global_response_headers,
        (
            &base,
            "global_response_headers_remove",
            "global_response_headers",
        ),
    )?;
    unfilled.extend(missing);
    let response_headers = if fields.global_response_headers_disabled {
        response_headers
    } else {
        response_headers.then(context.response_injector)
    };
    let size_limit = match fields.global_size_limit {
        _ if fields.global_size_limit_disabled => None,
        n if n > 0 => Some(n as u64),
        _ => None,
    };
    let mut patterns = Vec::new();
    let mut entries = Vec::new();
    if fields.use_extended_paths
        && let Some(paths) = version.get("extended_paths")
    {
        let field = format!("{base}.extended_paths");
        let paths: ExtendedPaths = serde_path_to_error::deserialize(paths)
            .map_err(|e| invalid(&format!("{field}.{}", e.path()), e.inner().to_string()))?;
        let mut table = Compiling {
            field: &field,
            matching: PathMatching {
                ignore_case: fields.ignore_endpoint_case || context.matching.ignore_case,
                ..context.matching
            },
            patterns: &mut patterns,
            entries: &mut entries,
        };
        table.add_lists(paths.ignored, paths.black_list, paths.white_list)?;
        for (key, list) in [
            ("transform_headers", paths.transform_headers),
            (
                "transform_response_headers",
                paths.transform_response_headers,
            ),
        ] {
            for (i, entry) in list.into_iter().enumerate() {
                let at = format!("{field}.{key}[{i}]");
                let (edit, missing) = HeaderEdit::compile(
                    &entry.delete_headers,
                    &entry.add_headers,
                    (&at, "delete_headers", "add_headers"),
                    context.secrets,
                )?;
                unfilled.extend(missing);
                let action = match key {
                    "transform_headers" => Action::RequestHeaders(edit),
                    _ => Action::ResponseHeaders(edit),
                };
                table.add(&at, (&entry.path, &entry.method, entry.disabled), action)?;
            }
        }
        for (i, entry) in paths.url_rewrites.iter().enumerate() {
            let at = format!("{field}.url_rewrites[{i}]");
            if entry.disabled {
                continue;
            }
            let (rewrite, missing) = UrlRewrite::compile(entry, &at, context.tls, context.secrets)?;
            unfilled.extend(missing);
            let action = Action::Rewrite(Box::new(rewrite));
            table.add(&at, (&entry.path, &entry.method, false), action)?;
        }
        for (i, entry) in paths.hard_timeouts.into_iter().enumerate() {
            let at = format!("{field}.hard_timeouts[{i}]");
            if entry.timeout <= 0 {
                continue;
            }
            let action = Action::HardTimeout(Duration::from_secs(entry.timeout as u64));
            table.add(&at, (&entry.path, &entry.method, entry.disabled), action)?;
        }
        for (i, entry) in paths.size_limits.into_iter().enumerate() {
            let at = format!("{field}.size_limits[{i}]");
            if entry.size_limit <= 0 {
                continue;
            }
            let action = Action::SizeLimit(entry.size_limit as u64);
            table.add(&at, (&entry.path, &entry.method, entry.disabled), action)?;
        }
        for (i, entry) in paths.internal.into_iter().enumerate() {
            let at = format!("{field}.internal[{i}]");
            let entry_fields = (&*entry.path, &*entry.method, entry.disabled);
            table.add(&at, entry_fields, Action::Internal)?;
        }
        for (i, entry) in paths.track_endpoints.into_iter().enumerate() {
            let at = format!("{field}.track_endpoints[{i}]");
            let entry_fields = (&*entry.path, &*entry.method, entry.disabled);
            table.add(&at, entry_fields, Action::Track(entry.path.as_str().into()))?;
        }
        for (i, entry) in paths.do_not_track_endpoints.into_iter().enumerate() {
            let at = format!("{field}.do_not_track_endpoints[{i}]");
            let entry_fields = (&*entry.path, &*entry.method, entry.disabled);
            table.add(&at, entry_fields, Action::DoNotTrack)?;
        }
        for (i, entry) in paths.circuit_breakers.into_iter().enumerate() {
            let at = format!("{field}.circuit_breakers[{i}]");
            if !(entry.threshold_percent > 0.0 && entry.threshold_percent <= 1.0) {
                return Err(invalid(
                    &format!("{at}.threshold_percent"),
                    "must be a fraction above 0 and at most 1 (0.5 is 50%)",
                ));
            }
            let breaker = Breaker::new(
                entry.threshold_percent,
                entry.samples.max(1) as u64,
                Duration::from_secs(entry.return_to_service_after.max(1) as u64),
                entry.disable_half_open_state,
            );
            let action = Action::CircuitBreaker(breaker);
            table.add(&at, (&entry.path, &entry.method, entry.disabled), action)?;
        }
        for (i, entry) in paths.validate_json.into_iter().enumerate() {
            let at = format!("{field}.validate_json[{i}]");
            if entry.disabled {
                continue;
            }
            let validation =
                JsonValidation::compile(&entry.schema, entry.error_response_code, &at)?;
            let action = Action::ValidateJson(Box::new(validation));
            table.add(&at, (&entry.path, &entry.method, false), action)?;
        }
        for (i, entry) in paths.method_transforms.into_iter().enumerate() {
            let at = format!("{field}.method_transforms[{i}]");
            let field = format!("{at}.to_method");
            let to = parse_method(&entry.to_method.to_ascii_uppercase(), &field)?;
            // Tyk's list: any other method (HEAD too) is refused per request there.
            if !["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"].contains(&to.as_str()) {
                return Err(invalid(
                    &field,
                    format!("{to} is not one of GET, POST, PUT, DELETE, OPTIONS, PATCH"),
                ));
            }
            let action = Action::MethodTransform(to);
            table.add(&at, (&entry.path, &entry.method, entry.disabled), action)?;
        }
    }
    let whitelist = entries
        .iter()
        .any(|e| matches!(e.action, Action::List(List::White)));
    let paths = VersionPaths {
        patterns: Patterns::compile(&patterns)
            .map_err(|e| invalid(&format!("{base}.extended_paths"), format!("patterns: {e}")))?,
        entries,
        whitelist,
        request_headers,
        response_headers,
        size_limit,
    };
    let empty = paths.entries.is_empty()
        && paths.request_headers.is_empty()
        && paths.response_headers.is_empty()
        && paths.size_limit.is_none();
    Ok((!empty).then_some(paths))
}

/// A version's entries as they are compiled.
struct Compiling<'a> {
    field: &'a str,
    matching: PathMatching,
    patterns: &'a mut Vec<String>,
    entries: &'a mut Vec<Entry>,
}

impl Compiling<'_> {
    fn add_lists(
        &mut self,
        ignored: Vec<ListFields>,
        black: Vec<ListFields>,
        white: Vec<ListFields>,
    ) -> Result<(), InvalidField> {
        for (list, key, fields) in [
            (List::Ignored, "ignored", ignored),
            (List::Black, "black_list", black),
            (List::White, "white_list", white),
        ] {
            for (i, entry) in fields.into_iter().enumerate() {
                if entry.disabled {
                    continue;
                }
                let at = format!("{}.{key}[{i}]", self.field);
                let matching = PathMatching {
                    ignore_case: entry.ignore_case || self.matching.ignore_case,
                    ..self.matching
                };
                self.patterns.push(pattern(&entry.path, matching, &at)?);
                let methods = list_methods(&entry, &at)?;
                self.entries.push(Entry {
                    methods,
                    action: Action::List(list),
                });
            }
        }
        Ok(())
    }

    /// Adds an entry of a kind other than a list: `(path, method, disabled)`.
    fn add(
        &mut self,
        at: &str,
        (path, method, disabled): (&str, &str, bool),
        action: Action,
    ) -> Result<(), InvalidField> {
        if disabled {
            return Ok(());
        }
        self.patterns.push(pattern(path, self.matching, at)?);
        let methods = match method {
            "" => Methods::Never,
            name => Methods::Only(parse_method(name, &format!("{at}.method"))?),
        };
        self.entries.push(Entry { methods, action });
        Ok(())
    }
}

/// Tyk's path pattern as a regex: `{name}` (or `{name:regex}`) one segment, `/*/` one
/// segment, `/*` anything; the rest is regex syntax; anchored as `matching` says (Tyk's
/// `PreparePathRegexp`). Checked here, so that a bad one is a load error naming its entry.
fn pattern(path: &str, matching: PathMatching, at: &str) -> Result<String, InvalidField> {
    if path.is_empty() {
        return Err(invalid(&format!("{at}.path"), "is empty"));
    }
    let mut regex = String::with_capacity(path.len() + 16);
    if matching.ignore_case {
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
    let regex = matching.anchor(path, regex.replace("/*/", "/[^/]+/").replace("/*", "/.*"));
    regex::Regex::new(&regex).map_err(|e| invalid(&format!("{at}.path"), e.to_string()))?;
    Ok(regex)
}

fn parse_method(name: &str, field: &str) -> Result<Method, InvalidField> {
    Method::from_bytes(name.as_bytes())
        .map_err(|_| invalid(field, format!("{name:?} is not an HTTP method")))
}

fn list_methods(entry: &ListFields, at: &str) -> Result<Methods, InvalidField> {
    let Some(actions) = &entry.method_actions else {
        return Ok(match entry.method.as_str() {
            "" => Methods::Any,
            name => Methods::Only(parse_method(name, &format!("{at}.method"))?),
        });
    };
    let mut methods = Vec::new();
    for (name, action) in actions {
        let field = format!("{at}.method_actions.{name}");
        let method = parse_method(name, &field)?;
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

    fn compile(not_versioned: bool, data: &Value) -> Result<Option<EndpointTable>, InvalidField> {
        let context = EntryContext {
            tls: &UpstreamTls::default(),
            matching: PathMatching::default(),
            secrets: &Secrets::default(),
            response_injector: &HeaderEdit::default(),
        };
        EndpointTable::compile(not_versioned, data.as_object().unwrap(), context)
            .map(|table| table.map(|(table, _)| table))
    }

    #[test]
    fn plain_text_patterns_are_compared_and_the_others_scanned_once_or_on_both_paths() {
        let patterns = [
            "/users", "^/users$", r"\bapi\b", "/$", "(?i)X{2}", "/user.$",
        ];
        let p = Patterns::compile(&patterns.map(String::from)).unwrap();
        let literals: Vec<u32> = p.literals.iter().map(|(_, i)| *i).collect();
        assert_eq!(literals, [0, 1, 3]);
        assert_eq!(&*p.anywhere_entries, [4, 5]);
        assert_eq!(&*p.start_bound_entries, [2]);
        let hits = |near, whole| {
            p.hits(patterns.len(), near, whole)
                .iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(hits("/users", "/api/users"), [0, 1, 2, 5]);
        assert_eq!(hits("/xx", "/api/xx"), [2, 4]);
        // A path after the listen path that is not the whole path's end (`/api` on `/api/`).
        assert_eq!(hits("/", "/api"), [2, 3]);
    }

    fn lists(extended_paths: Value) -> EndpointTable {
        let data = json!({"not_versioned": true, "versions": {"Default": {
            "name": "Default", "use_extended_paths": true, "extended_paths": extended_paths}}});
        compile(true, &data).unwrap().unwrap()
    }

    fn at<'a>(
        table: &'a EndpointTable,
        version: Option<&str>,
        method: &Method,
        path: &str,
    ) -> Matched<'a> {
        table
            .for_version(version)
            .unwrap()
            .matched("/api/", path, method)
    }

    fn verdict<'a>(table: &'a EndpointTable, method: &str, path: &str) -> Verdict<'a> {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        at(table, None, &method, path).verdict()
    }

    #[test]
    fn the_first_entry_decides_whether_its_pattern_is_text_or_a_regex_in_a_big_table() {
        // `ignored` entries come before `black_list` ones: a regex ignored entry wins over a
        // plain-text black one.
        let l = lists(json!({
            "ignored": [{"path": "/users/{id}", "method": "GET"}],
            "black_list": [{"path": "/users/1", "method": "GET"}, {"path": "^/old$", "method": ""}],
        }));
        assert_eq!(verdict(&l, "GET", "/api/users/1"), Verdict::Ignore);
        assert_eq!(verdict(&l, "GET", "/old"), Verdict::Forbidden);
        // More entries than the hits held inline.
        let many: Vec<Value> = (0..200)
            .map(|i| json!({"path": format!("/b{i}$"), "method": "GET"}))
            .collect();
        let l = lists(json!({"black_list": many}));
        assert_eq!(verdict(&l, "GET", "/api/b199"), Verdict::Forbidden);
        assert_eq!(verdict(&l, "GET", "/api/b64"), Verdict::Forbidden);
        assert_eq!(verdict(&l, "GET", "/api/b200"), Verdict::Pass);
        assert_eq!(verdict(&l, "POST", "/api/b199"), Verdict::Pass);
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
            let e = compile(false, &data(paths)).unwrap_err();
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
            assert!(compile(true, &data).unwrap().is_none());
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
        let get = Method::GET;
        let versioned = compile(false, &data).unwrap().unwrap();
        let at = |version, path| at(&versioned, Some(version), &get, path).verdict();
        assert_eq!(
            at("v1", "/api/USERS"),
            Verdict::Forbidden,
            "ignore_endpoint_case"
        );
        assert_eq!(at("v1", "/api/orders"), Verdict::Pass);
        assert_eq!(at("v2", "/api/orders"), Verdict::Forbidden);
        assert_eq!(at("v2", "/api/Orders"), Verdict::Pass);
        // Not versioned: the default_version's lists.
        let unversioned = compile(true, &data).unwrap().unwrap();
        let verdict = super::tests::at(&unversioned, None, &get, "/api/orders").verdict();
        assert_eq!(verdict, Verdict::Forbidden);
    }
}
