//! The key's record: Tyk's `SessionState` JSON shape.
//!
//! Owns the field names and types that Tyk stores under `apikey-<hash>`. Fields tollgate does
//! not model are carried verbatim in `extra` so that rewriting a record never drops them.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use indexmap::IndexMap;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::rights::UrlRight;
use crate::variables::meta_value;

/// Tyk's session object. Field names and JSON types follow `user.SessionState`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SessionState {
    pub last_check: i64,
    #[serde(serialize_with = "go_number")]
    pub allowance: f64,
    #[serde(serialize_with = "go_number")]
    pub rate: f64,
    #[serde(serialize_with = "go_number")]
    pub per: f64,
    pub expires: i64,
    pub quota_max: i64,
    pub quota_renews: i64,
    pub quota_remaining: i64,
    pub quota_renewal_rate: i64,
    /// In the record's own order.
    pub access_rights: IndexMap<String, AccessDefinition>,
    pub org_id: String,
    pub is_inactive: bool,
    pub meta_data: Value,
    pub tags: Vec<String>,
    pub alias: String,
    /// Always a string, as Tyk's schema has it (`null` in a body is read as `""`).
    pub certificate: String,
    /// Security policies whose rules the key takes (see `policy`), by id.
    pub apply_policies: Vec<String>,
    /// Tyk's older single policy id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub apply_policy_id: String,
    /// Unix seconds after which the record is removed from the store (0: never).
    pub session_lifetime: i64,
    /// tollgate's check of the raw key (see [`KeyVerifier`]); Tyk ignores the field.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tollgate_key_verifier: String,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

/// Binds a record to its raw key: the first 128 bits of the key's SHA-256, as 32 hex digits
/// in the record's `tollgate_key_verifier`. The storage id (a 32- or 64-bit murmur hash for
/// most Tyk keys) can be inverted or guessed; this cannot, so a request is let through only
/// when its key matches the verifier, whatever its hash. Records written by Tyk have none.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyVerifier([u8; 16]);

impl KeyVerifier {
    pub fn of(raw_key: &str) -> Self {
        let digest = sha2::Sha256::digest(raw_key.as_bytes());
        let mut first = [0; 16];
        first.copy_from_slice(&digest[..16]);
        Self(first)
    }

    /// Whether `raw_key` is the key this verifier was made from, in constant time.
    pub fn matches(&self, raw_key: &str) -> bool {
        bool::from(self.0.ct_eq(&Self::of(raw_key).0))
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0; 16];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl fmt::Debug for KeyVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyVerifier(..)")
    }
}

/// What the request path reads of a stored key: its access (shared between keys with the
/// same one) and its verifier, which is the key's own.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    pub access: Arc<KeyAccess>,
    /// `None` for a record written without one (by Tyk): bound to its key by hash alone.
    pub verifier: Option<KeyVerifier>,
}

/// One entry of `access_rights`: which API (and versions) a key may call.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AccessDefinition {
    pub api_name: String,
    pub api_id: String,
    pub versions: Vec<String>,
    pub allowed_urls: Vec<Value>,
    /// Per-API limits that override the key-level ones (Tyk's `APILimit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<ApiLimit>,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

/// Tyk's `APILimit`: the rate and quota fields of a session, scoped to one API.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ApiLimit {
    #[serde(serialize_with = "go_number")]
    pub rate: f64,
    #[serde(serialize_with = "go_number")]
    pub per: f64,
    pub quota_max: i64,
    pub quota_renews: i64,
    pub quota_remaining: i64,
    pub quota_renewal_rate: i64,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

/// What the request path needs of a session: whether it may call an API, and under which
/// limits. A node caches this instead of the whole record (about a fifth of its memory), so
/// the same memory holds several times the keys and a lookup touches fewer cache lines.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyAccess {
    pub is_inactive: bool,
    /// Unix seconds after which the key no longer works (0: never).
    pub expires: i64,
    /// The key's own limits.
    pub limits: Limits,
    /// `access_rights`, by API id, in the record's order.
    apis: Box<[ApiAccess]>,
    /// `apply_policies` (and `apply_policy_id`): applied when a request is checked.
    pub policies: Box<[Box<str>]>,
    /// `meta_data`'s members that Tyk's `$tyk_meta.` variables can render, as rendered.
    pub meta: Box<[(Box<str>, Box<str>)]>,
    /// `tags` and `alias`, which analytics records carry.
    pub tags: Box<[Box<str>]>,
    pub alias: Box<str>,
}

/// Rate and quota settings: a session's own, or an API's in `access_rights[api].limit`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub rate: f64,
    pub per: f64,
    pub quota_max: i64,
    pub quota_renewal_rate: i64,
}

/// One API a key may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiAccess {
    api_id: Box<str>,
    /// Per-API limits that override the key's own.
    pub limit: Option<Limits>,
    /// The versions the key may call (read for versioned APIs only).
    pub versions: Box<[Box<str>]>,
    /// When not empty, the only paths and methods the key may call (see `rights`).
    pub allowed_urls: Box<[UrlRight]>,
}

/// Hashes what `==` compares, floats by their bits (a NaN limit then equals nothing, itself
/// included, which only keeps such an access from being shared).
impl Hash for KeyAccess {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.is_inactive.hash(state);
        self.expires.hash(state);
        self.limits.hash(state);
        for api in &self.apis {
            api.api_id.hash(state);
            api.limit.hash(state);
            api.versions.hash(state);
            api.allowed_urls.hash(state);
        }
        self.policies.hash(state);
        self.meta.hash(state);
        self.tags.hash(state);
        self.alias.hash(state);
    }
}

impl Hash for Limits {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.rate.to_bits().hash(state);
        self.per.to_bits().hash(state);
        self.quota_max.hash(state);
        self.quota_renewal_rate.hash(state);
    }
}

impl KeyAccess {
    /// True when `expires` is set and lies before `now` (Unix seconds).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires > 0 && self.expires < now
    }

    /// A key without access rights (Tyk's master key) may call every API.
    pub fn is_master(&self) -> bool {
        self.apis.is_empty()
    }

    /// `access_rights`, in order.
    pub fn apis(&self) -> &[ApiAccess] {
        &self.apis
    }

    /// The same key with `apis` as its access rights and no policies left to apply.
    pub fn with_apis(&self, apis: Vec<ApiAccess>) -> Self {
        Self {
            apis: apis.into_boxed_slice(),
            policies: Box::new([]),
            ..self.clone()
        }
    }

    /// Sets `meta_data`'s members over the key's own, as Tyk's apply merges a policy's
    /// `meta_data` into the key's (a member whose value does not render, such as a boolean,
    /// leaves the variable empty).
    pub fn merge_meta(&mut self, meta_data: &Value) {
        let Value::Object(members) = meta_data else {
            return;
        };
        let mut meta = std::mem::take(&mut self.meta).into_vec();
        for (name, value) in members {
            meta.retain(|(known, _)| **known != **name);
            if let Some(rendered) = meta_value(value) {
                meta.push((name.as_str().into(), rendered.into()));
            }
        }
        self.meta = meta.into_boxed_slice();
    }

    /// Adds `tags` the key does not have yet (a policy's, as Tyk's apply unites them).
    pub fn add_tags(&mut self, tags: &[String]) {
        let new: Vec<&String> = tags
            .iter()
            .filter(|t| !self.tags.iter().any(|known| **known == ***t))
            .collect();
        if new.is_empty() {
            return;
        }
        let mut all = std::mem::take(&mut self.tags).into_vec();
        all.extend(new.into_iter().map(|t| t.as_str().into()));
        self.tags = all.into_boxed_slice();
    }

    /// The key's access to `api_id`, if it has any. A linear scan: keys name a few APIs, and
    /// their ids sit in one allocation.
    pub fn access_to(&self, api_id: &str) -> Option<&ApiAccess> {
        self.apis.iter().find(|a| &*a.api_id == api_id)
    }
}

impl ApiAccess {
    pub fn api_id(&self) -> &str {
        &self.api_id
    }

    /// One `access_rights` entry as requests read it.
    pub fn from_definition(api_id: &str, access: &AccessDefinition) -> Self {
        Self {
            api_id: api_id.into(),
            limit: access.limit.as_ref().map(|l| Limits {
                rate: l.rate,
                per: l.per,
                quota_max: l.quota_max,
                quota_renewal_rate: l.quota_renewal_rate,
            }),
            versions: access.versions.iter().map(|v| v.as_str().into()).collect(),
            // An entry that is not `{"url", "methods"}` allows nothing.
            allowed_urls: access
                .allowed_urls
                .iter()
                .map(|v| {
                    serde_json::from_value(v.clone())
                        .unwrap_or_else(|_| UrlRight::new("", Vec::new()))
                })
                .collect(),
        }
    }
}

/// `meta_data`'s members as `$tyk_meta.` variables render them.
fn rendered_meta(meta_data: &Value) -> Box<[(Box<str>, Box<str>)]> {
    match meta_data {
        Value::Object(members) => members
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().into(), meta_value(v)?.into())))
            .collect(),
        _ => Box::new([]),
    }
}

/// `apply_policies`, then `apply_policy_id` if it is not among them.
fn policy_ids(apply_policies: &[String], apply_policy_id: &str) -> Box<[Box<str>]> {
    let mut ids: Vec<Box<str>> = apply_policies.iter().map(|p| p.as_str().into()).collect();
    if !apply_policy_id.is_empty() && !apply_policies.iter().any(|p| p == apply_policy_id) {
        ids.push(apply_policy_id.into());
    }
    ids.into_boxed_slice()
}

impl From<&SessionState> for KeyAccess {
    fn from(session: &SessionState) -> Self {
        Self {
            is_inactive: session.is_inactive,
            expires: session.expires,
            limits: Limits {
                rate: session.rate,
                per: session.per,
                quota_max: session.quota_max,
                quota_renewal_rate: session.quota_renewal_rate,
            },
            apis: session
                .access_rights
                .iter()
                .map(|(api_id, access)| ApiAccess::from_definition(api_id, access))
                .collect(),
            policies: policy_ids(&session.apply_policies, &session.apply_policy_id),
            meta: rendered_meta(&session.meta_data),
            tags: session.tags.iter().map(|t| t.as_str().into()).collect(),
            alias: session.alias.as_str().into(),
        }
    }
}

/// A float as Go's `encoding/json` writes it: a whole number without a fraction (`1000`, not
/// `1000.0`), so that records read the same whichever gateway wrote them.
fn go_number<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    // Below 2^53 a whole f64 is exactly an i64.
    if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 {
        serializer.serialize_i64(*value as i64)
    } else {
        serializer.serialize_f64(*value)
    }
}

/// Fields of a record that tollgate does not model, kept as the JSON text they came in: the
/// object's members without its braces, in one allocation (a cached Tyk session has some 30).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExtraFields(Box<str>);

impl ExtraFields {
    fn push(members: &mut Vec<u8>, key: &str, value: &RawValue) {
        if !members.is_empty() {
            members.push(b',');
        }
        // The key arrives unescaped; writing a str as JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *members, key);
        members.push(b':');
        members.extend_from_slice(value.get().as_bytes());
    }
}

impl Serialize for ExtraFields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let object = format!("{{{}}}", self.0);
        let members: IndexMap<Cow<'_, str>, &RawValue> =
            serde_json::from_str(&object).map_err(serde::ser::Error::custom)?;
        serializer.collect_map(members)
    }
}

/// A field value where Tyk's `null` (written for empty lists and maps) means the default.
struct OrDefault<T>(T);

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for OrDefault<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self(
            Option::<T>::deserialize(deserializer)?.unwrap_or_default(),
        ))
    }
}

/// An object key, borrowed from the input where it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// `Deserialize` for a record: the named fields are read straight into the struct (`null`
/// as the default) and any other field, with `keep`, into `extra` as raw JSON, or with `skip`
/// passed over (its syntax still checked). Serde's `flatten` buffered the whole object and
/// decoded it twice: for a 1.2 KB Tyk record, 63,400 instead of 48,100 instructions
/// (callgrind), and 7.4 KB instead of 1.7 KB in memory with `Value` trees.
macro_rules! deserialize_record {
    ($rest:ident $record:ident { $($field:ident),* $(,)? }) => {
        impl<'de> Deserialize<'de> for $record {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct RecordVisitor;
                impl<'de> Visitor<'de> for RecordVisitor {
                    type Value = $record;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str(concat!("a ", stringify!($record), " object"))
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$record, A::Error> {
                        let mut record = $record::default();
                        deserialize_record!(@declare $rest extra);
                        while let Some(Key(key)) = map.next_key()? {
                            match key.as_ref() {
                                $(stringify!($field) => {
                                    record.$field = map.next_value::<OrDefault<_>>()?.0
                                })*
                                _ => deserialize_record!(@other $rest, map, extra, key),
                            }
                        }
                        deserialize_record!(@finish $rest, record, extra);
                        Ok(record)
                    }
                }
                deserializer.deserialize_map(RecordVisitor)
            }
        }
    };
    (@declare keep $extra:ident) => {
        let mut $extra = Vec::new();
    };
    (@declare skip $extra:ident) => {};
    (@other keep, $map:ident, $extra:ident, $key:ident) => {{
        let value: Box<RawValue> = $map.next_value()?;
        ExtraFields::push(&mut $extra, &$key, &value);
    }};
    (@other skip, $map:ident, $extra:ident, $key:ident) => {{
        $map.next_value::<IgnoredAny>()?;
    }};
    (@finish keep, $record:ident, $extra:ident) => {
        let extra = String::from_utf8($extra).map_err(serde::de::Error::custom)?;
        $record.extra = ExtraFields(extra.into_boxed_str());
    };
    (@finish skip, $record:ident, $extra:ident) => {};
}

deserialize_record!(keep SessionState {
    last_check,
    allowance,
    rate,
    per,
    expires,
    quota_max,
    quota_renews,
    quota_remaining,
    quota_renewal_rate,
    access_rights,
    org_id,
    is_inactive,
    meta_data,
    tags,
    alias,
    certificate,
    apply_policies,
    apply_policy_id,
    session_lifetime,
    tollgate_key_verifier,
});
deserialize_record!(keep AccessDefinition {
    api_name,
    api_id,
    versions,
    allowed_urls,
    limit,
});
deserialize_record!(keep ApiLimit {
    rate,
    per,
    quota_max,
    quota_renews,
    quota_remaining,
    quota_renewal_rate,
});

/// The fields of a stored record that make a [`KeyAccess`]: a cache miss decodes these
/// alone, instead of a whole [`SessionState`] only to keep a few of its fields.
#[derive(Default)]
struct AccessRecord {
    is_inactive: bool,
    expires: i64,
    rate: f64,
    per: f64,
    quota_max: i64,
    quota_renewal_rate: i64,
    access_rights: AccessList,
    apply_policies: Vec<String>,
    apply_policy_id: String,
    meta_data: Value,
    tags: Vec<String>,
    alias: String,
    tollgate_key_verifier: String,
}

/// `access_rights`, keeping each API's limit only.
#[derive(Default)]
struct AccessList(Vec<ApiAccess>);

#[derive(Default)]
struct AccessEntry {
    limit: Option<Limits>,
    versions: Vec<String>,
    allowed_urls: Vec<UrlRight>,
}

deserialize_record!(skip AccessRecord {
    is_inactive,
    expires,
    rate,
    per,
    quota_max,
    quota_renewal_rate,
    access_rights,
    apply_policies,
    apply_policy_id,
    meta_data,
    tags,
    alias,
    tollgate_key_verifier,
});
deserialize_record!(skip AccessEntry {
    limit,
    versions,
    allowed_urls
});
deserialize_record!(skip Limits {
    rate,
    per,
    quota_max,
    quota_renewal_rate,
});

impl<'de> Deserialize<'de> for AccessList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = AccessList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an access_rights object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AccessList, A::Error> {
                let mut apis = Vec::with_capacity(map.size_hint().unwrap_or(1));
                while let Some((Key(api_id), entry)) = map.next_entry::<_, AccessEntry>()? {
                    // A name given twice keeps its first place and its last value, as the
                    // whole record's map does.
                    let access = ApiAccess {
                        api_id: api_id.as_ref().into(),
                        limit: entry.limit,
                        versions: entry
                            .versions
                            .into_iter()
                            .map(String::into_boxed_str)
                            .collect(),
                        allowed_urls: entry.allowed_urls.into_boxed_slice(),
                    };
                    match apis
                        .iter_mut()
                        .find(|a: &&mut ApiAccess| *a.api_id == *api_id)
                    {
                        Some(known) => *known = access,
                        None => apis.push(access),
                    }
                }
                Ok(AccessList(apis))
            }
        }
        deserializer.deserialize_map(ListVisitor)
    }
}

/// Decodes what requests need straight from a stored record (see [`AccessRecord`]).
impl<'de> Deserialize<'de> for Credential {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let record = AccessRecord::deserialize(deserializer)?;
        let verifier =
            verifier_field(&record.tollgate_key_verifier).map_err(serde::de::Error::custom)?;
        let access = KeyAccess {
            is_inactive: record.is_inactive,
            expires: record.expires,
            limits: Limits {
                rate: record.rate,
                per: record.per,
                quota_max: record.quota_max,
                quota_renewal_rate: record.quota_renewal_rate,
            },
            apis: record.access_rights.0.into_boxed_slice(),
            policies: policy_ids(&record.apply_policies, &record.apply_policy_id),
            meta: rendered_meta(&record.meta_data),
            tags: record.tags.iter().map(|t| t.as_str().into()).collect(),
            alias: record.alias.into_boxed_str(),
        };
        Ok(Self {
            access: Arc::new(access),
            verifier,
        })
    }
}

/// `tollgate_key_verifier` as stored: empty for none, else 32 hex digits.
fn verifier_field(text: &str) -> Result<Option<KeyVerifier>, &'static str> {
    if text.is_empty() {
        return Ok(None);
    }
    KeyVerifier::from_hex(text)
        .map(Some)
        .ok_or("tollgate_key_verifier: not 32 hex digits")
}

impl From<&SessionState> for Credential {
    fn from(session: &SessionState) -> Self {
        Self {
            access: Arc::new(KeyAccess::from(session)),
            // An unreadable verifier matches no key (no SHA-256 begins with 16 zero bytes
            // that anyone can find), rather than leave the record bound by its hash alone.
            verifier: verifier_field(&session.tollgate_key_verifier)
                .unwrap_or(Some(KeyVerifier([0; 16]))),
        }
    }
}

/// Current Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let raw = r#"{"rate":10,"per":1,"hmac_enabled":false,"monitor":{"trigger_limits":null},
            "access_rights":{"1":{"api_id":"1","api_name":"x","versions":["Default"],"allowed_urls":null,"restricted_types":[]}},
            "tags":null,"meta_data":{"a":1}}"#;
        let s: SessionState = serde_json::from_str(raw).unwrap();
        assert_eq!(s.rate, 10.0);
        assert!(s.tags.is_empty());
        let back = serde_json::to_value(&s).unwrap();
        assert_eq!(back["hmac_enabled"], Value::Bool(false));
        assert_eq!(back["monitor"]["trigger_limits"], Value::Null);
        assert_eq!(
            back["access_rights"]["1"]["restricted_types"],
            serde_json::json!([])
        );
        assert_eq!(back["meta_data"]["a"], 1);

        // Escaped keys and values, and records built from a JSON value rather than text.
        let raw = serde_json::json!({"we\"ird\u{e9}": "line\nbreak", "access_rights": {"1": {"limit": {"rate": 5, "set_by_policy": true}}}});
        let s: SessionState = serde_json::from_value(raw.clone()).unwrap();
        let back = serde_json::to_value(&s).unwrap();
        assert_eq!(back["we\"ird\u{e9}"], "line\nbreak");
        assert_eq!(back["access_rights"]["1"]["limit"]["set_by_policy"], true);
        let again: SessionState = serde_json::from_value(back).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn written_as_tyk_writes_it() {
        let raw = r#"{"rate":1000,"per":1.5,"allowance":0,"certificate":null,
            "access_rights":{"1":{"limit":{"rate":10.0,"per":60}}}}"#;
        let s: SessionState = serde_json::from_str(raw).unwrap();
        let text = serde_json::to_string(&s).unwrap();
        for part in [
            r#""rate":1000,"#,
            r#""per":1.5"#,
            r#""allowance":0,"#,
            r#""certificate":"""#,
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
        assert!(text.contains(r#""limit":{"rate":10,"per":60"#), "{text}");
    }

    #[test]
    fn access_rights_keep_the_record_order() {
        let raw = r#"{"access_rights":{"b":{"api_id":"b"},"a":{"api_id":"a"}}}"#;
        let s: SessionState = serde_json::from_str(raw).unwrap();
        let access = KeyAccess::from(&s);
        assert!(access.access_to("a").is_some() && access.access_to("c").is_none());
        let back = serde_json::to_string(&s).unwrap();
        assert!(back.find(r#""b":"#) < back.find(r#""a":"#), "{back}");
    }

    #[test]
    fn wrong_types_are_rejected() {
        assert!(serde_json::from_str::<SessionState>(r#"{"rate":"fast"}"#).is_err());
        assert!(serde_json::from_str::<SessionState>(r#"{"access_rights":[]}"#).is_err());
        assert!(serde_json::from_str::<SessionState>(r#"{"hmac_enabled":tru}"#).is_err());
        let raw = r#"{"access_rights":{"1":{"limit":{"rate":"x"}}}}"#;
        let de = &mut serde_json::Deserializer::from_str(raw);
        let err = serde_path_to_error::deserialize::<_, SessionState>(de).unwrap_err();
        assert_eq!(err.path().to_string(), "access_rights.1.limit.rate");
    }

    #[test]
    fn access_decoded_from_a_record_is_the_access_of_the_whole_record() {
        let records = [
            include_str!("../tests/fixtures/seed_key.json"),
            r#"{"rate":5,"per":1,"quota_max":100,"quota_renewal_rate":60,"expires":7,"is_inactive":true,
                "access_rights":{"1":{"api_id":"1","limit":{"rate":2,"per":10,"quota_max":-1,"x":[1]}},"2":{"limit":null}}}"#,
            r#"{"access_rights":null,"rate":null,"tags":null,"meta_data":{"access_rights":{"9":{}}}}"#,
            r#"{"access_rights":{"b":{"limit":{"rate":1}},"a\u00e9":{},"b":{"limit":{"rate":3}}}}"#,
            "{}",
        ];
        for raw in records {
            let whole = Credential::from(&serde_json::from_str::<SessionState>(raw).unwrap());
            assert_eq!(
                serde_json::from_str::<Credential>(raw).unwrap(),
                whole,
                "{raw}"
            );
        }
        let twice = serde_json::from_str::<Credential>(records[3])
            .unwrap()
            .access;
        assert_eq!(twice.apis.len(), 2);
        assert_eq!(twice.access_to("b").unwrap().limit.unwrap().rate, 3.0);
        assert!(twice.access_to("a\u{e9}").is_some());

        for broken in [
            r#"{"rate":"fast"}"#,
            r#"{"access_rights":[]}"#,
            r#"{"access_rights":{"1":{"limit":{"per":"x"}}}}"#,
            r#"{"hmac_enabled":tru}"#,
            r#"{"rate":1"#,
            r#"{"tollgate_key_verifier":"abc"}"#,
        ] {
            assert!(
                serde_json::from_str::<Credential>(broken).is_err(),
                "{broken}"
            );
        }
    }

    #[test]
    fn a_verifier_matches_its_own_key_only() {
        let v = KeyVerifier::of("mycustomkey");
        assert!(v.matches("mycustomkey"));
        assert!(!v.matches("mycustomkey2") && !v.matches(""));
        let raw = format!(r#"{{"tollgate_key_verifier":"{}"}}"#, v.to_hex());
        let read: Credential = serde_json::from_str(&raw).unwrap();
        assert_eq!(read.verifier, Some(v));
        let whole: SessionState = serde_json::from_str(&raw).unwrap();
        assert_eq!(Credential::from(&whole).verifier, Some(v));
        assert_eq!(
            serde_json::from_str::<Credential>("{}").unwrap().verifier,
            None
        );
        // One that cannot be read binds the record to no key at all.
        let bad = SessionState {
            tollgate_key_verifier: "zz".into(),
            ..Default::default()
        };
        assert!(!Credential::from(&bad).verifier.unwrap().matches(""));
    }

    #[test]
    fn expiry() {
        let s = SessionState {
            expires: 100,
            ..Default::default()
        };
        let access = KeyAccess::from(&s);
        assert!(access.is_expired(101));
        assert!(!access.is_expired(99));
        assert!(!KeyAccess::from(&SessionState::default()).is_expired(i64::MAX));
    }

    #[test]
    fn access_keeps_the_limits_requests_need() {
        let raw = r#"{"rate":5,"per":1,"quota_max":100,"quota_renewal_rate":60,"expires":7,
            "access_rights":{"1":{"api_id":"1","limit":{"rate":2,"per":10,"quota_max":-1}},"2":{}}}"#;
        let access = KeyAccess::from(&serde_json::from_str::<SessionState>(raw).unwrap());
        assert_eq!(access.expires, 7);
        assert_eq!(
            access.limits,
            Limits {
                rate: 5.0,
                per: 1.0,
                quota_max: 100,
                quota_renewal_rate: 60
            }
        );
        assert_eq!(access.access_to("1").unwrap().limit.unwrap().per, 10.0);
        assert!(access.access_to("2").unwrap().limit.is_none());
    }
}
