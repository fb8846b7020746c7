//! The key's record: Tyk's `SessionState` JSON shape.
//!
//! Owns the field names and types that Tyk stores under `apikey-<hash>`. Fields tollgate does
//! not model are carried in `extra` so that rewriting a record never drops them.

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Tyk's session object. Field names and JSON types follow `user.SessionState`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SessionState {
    #[serde(default, deserialize_with = "null_default")]
    pub last_check: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub allowance: f64,
    #[serde(default, deserialize_with = "null_default")]
    pub rate: f64,
    #[serde(default, deserialize_with = "null_default")]
    pub per: f64,
    #[serde(default, deserialize_with = "null_default")]
    pub expires: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub quota_max: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub quota_renews: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub quota_remaining: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub quota_renewal_rate: i64,
    /// In the record's own order; sized to its entries, as a cache holds many records.
    #[serde(default, deserialize_with = "compact_map")]
    pub access_rights: IndexMap<String, AccessDefinition>,
    #[serde(default, deserialize_with = "null_default")]
    pub org_id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub is_inactive: bool,
    #[serde(default)]
    pub meta_data: Value,
    #[serde(default, deserialize_with = "null_default")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub alias: String,
    /// Unix seconds after which the record is removed from the store (0: never).
    #[serde(default, deserialize_with = "null_default")]
    pub session_lifetime: i64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `access_rights`: which API (and versions) a key may call.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AccessDefinition {
    #[serde(default, deserialize_with = "null_default")]
    pub api_name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub api_id: String,
    #[serde(default, deserialize_with = "null_default")]
    pub versions: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub allowed_urls: Vec<Value>,
    /// Per-API limits that override the key-level ones (Tyk's `APILimit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<ApiLimit>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Tyk's `APILimit`: the rate and quota fields of a session, scoped to one API.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ApiLimit {
    #[serde(default, deserialize_with = "null_default")]
    pub rate: f64,
    #[serde(default, deserialize_with = "null_default")]
    pub per: f64,
    #[serde(default, deserialize_with = "null_default")]
    pub quota_max: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub quota_renews: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub quota_remaining: i64,
    #[serde(default, deserialize_with = "null_default")]
    pub quota_renewal_rate: i64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SessionState {
    /// True when `expires` is set and lies before `now` (Unix seconds).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires > 0 && self.expires < now
    }

    /// The access definition for `api_id`, if the key has one.
    pub fn access_to(&self, api_id: &str) -> Option<&AccessDefinition> {
        self.access_rights.get(api_id)
    }
}

/// Tyk writes `null` for empty lists and maps; treat it as the type's default.
fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `null_default` for maps, without the spare room that growing while parsing leaves.
fn compact_map<'de, D, V>(deserializer: D) -> Result<IndexMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    let mut map: IndexMap<String, V> = null_default(deserializer)?;
    map.shrink_to_fit();
    Ok(map)
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
    }

    #[test]
    fn access_rights_keep_the_record_order() {
        let raw = r#"{"access_rights":{"b":{"api_id":"b"},"a":{"api_id":"a"}}}"#;
        let s: SessionState = serde_json::from_str(raw).unwrap();
        assert_eq!(s.access_to("a").unwrap().api_id, "a");
        let back = serde_json::to_string(&s).unwrap();
        assert!(back.find(r#""b":"#) < back.find(r#""a":"#), "{back}");
    }

    #[test]
    fn wrong_types_are_rejected() {
        assert!(serde_json::from_str::<SessionState>(r#"{"rate":"fast"}"#).is_err());
        assert!(serde_json::from_str::<SessionState>(r#"{"access_rights":[]}"#).is_err());
    }

    #[test]
    fn expiry() {
        let s = SessionState {
            expires: 100,
            ..Default::default()
        };
        assert!(s.is_expired(101));
        assert!(!s.is_expired(99));
        assert!(!SessionState::default().is_expired(i64::MAX));
    }
}
