//! Tyk's security policies: loading them (`policies.policy_path`, a directory of policy files,
//! or `policies.policy_record_name`, one file mapping ids to policies), and applying the ones
//! a key names (`apply_policies`) when a request is checked, with Tyk's rules for combining
//! them. Applied per request (from a memo per table), so that a changed policy changes every
//! key that uses it at once, with no key rewritten.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::PoliciesConfig;
use crate::files;
use crate::honoured;
use crate::rights::UrlRight;
use crate::session::{AccessDefinition, ApiAccess, KeyAccess, Limits};

/// A policy as Tyk's files hold it. Fields tollgate does not read are kept as they came.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PolicyDefinition {
    pub id: String,
    pub name: String,
    pub org_id: String,
    pub rate: f64,
    pub per: f64,
    pub quota_max: i64,
    pub quota_renewal_rate: i64,
    pub access_rights: IndexMap<String, AccessDefinition>,
    pub partitions: Partitions,
    pub is_inactive: bool,
    /// Seconds a key created with this policy lives (0: no expiry).
    pub key_expires_in: i64,
    /// Tyk's Dashboard flag; a policy that is not active is not applied.
    pub active: bool,
    pub tags: Vec<String>,
    pub meta_data: Value,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The fields of an `access_rights` entry that policies apply.
const APPLIED_ACCESS_FIELDS: [&str; 5] =
    ["api_id", "api_name", "versions", "allowed_urls", "limit"];

impl PolicyDefinition {
    /// The fields this policy uses that tollgate does not apply, named for the load's warning:
    /// its fields tollgate does not model (`throttle_*` and the rest), and the fields of its
    /// access rights other than those policies apply.
    pub fn unhonoured(&self) -> Vec<String> {
        let mut found: Vec<String> = self
            .extra
            .iter()
            .filter(|(_, value)| honoured::in_use(value))
            .map(|(name, _)| name.clone())
            .collect();
        for (api_id, access) in &self.access_rights {
            if let Ok(Value::Object(fields)) = serde_json::to_value(access) {
                found.extend(
                    fields
                        .iter()
                        .filter(|(name, value)| {
                            !APPLIED_ACCESS_FIELDS.contains(&name.as_str())
                                && honoured::in_use(value)
                        })
                        .map(|(name, _)| format!("access_rights.{api_id}.{name}")),
                );
            }
        }
        found
    }
}

impl Default for PolicyDefinition {
    fn default() -> Self {
        Self {
            id: String::new(),
            name: String::new(),
            org_id: String::new(),
            rate: 0.0,
            per: 0.0,
            quota_max: 0,
            quota_renewal_rate: 0,
            access_rights: IndexMap::new(),
            partitions: Partitions::default(),
            is_inactive: false,
            key_expires_in: 0,
            active: true,
            tags: Vec::new(),
            meta_data: Value::Null,
            extra: Map::new(),
        }
    }
}

/// Which parts of a key a policy sets; none set means all but `per_api`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Partitions {
    pub quota: bool,
    pub rate_limit: bool,
    pub acl: bool,
    pub per_api: bool,
    pub complexity: bool,
}

/// Why a key's policies let it call nothing (Tyk refuses such a key with 403 "Access to this
/// API has been disallowed").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRefused {
    #[error("policy not found: {0:?}")]
    NotFound(String),
    #[error("key has no valid policies to be applied")]
    NoneValid,
    /// Tyk refuses a policy of another organisation than the API's: applying it would let
    /// one organisation's policy grant access to another's API.
    #[error("attempting to apply policy from different organisation to key")]
    OtherOrg,
}

/// A key's access with its policies applied, and the organisations of the policies used.
#[derive(Clone)]
struct Applied {
    access: Arc<KeyAccess>,
    orgs: Box<[Box<str>]>,
}

/// The policies in force, by id.
pub struct PolicyTable {
    by_id: HashMap<String, Arc<PolicyDefinition>>,
    /// Applied accesses by the address of the access they were made from, which each entry
    /// keeps alive (so an address is never reused while it is a key here).
    applied: quick_cache::sync::Cache<usize, (Arc<KeyAccess>, Applied)>,
}

/// Distinct key accesses whose applied form is remembered.
const APPLIED_ENTRIES: usize = 4096;

/// A policy file that could not be loaded, or a policy in one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct PolicyLoadError {
    pub path: PathBuf,
    pub reason: String,
}

impl Default for PolicyTable {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl PolicyTable {
    pub fn new(policies: Vec<PolicyDefinition>) -> Self {
        Self {
            by_id: policies
                .into_iter()
                .map(|p| (p.id.clone(), Arc::new(p)))
                .collect(),
            applied: quick_cache::sync::Cache::new(APPLIED_ENTRIES),
        }
    }

    /// Loads what `config` names; files or entries that cannot be read are reported by path
    /// and field, and the others still load.
    pub fn load(config: &PoliciesConfig) -> (Self, Vec<PolicyLoadError>) {
        let mut errors = Vec::new();
        let mut policies = Vec::new();
        if !config.policy_path.is_empty() {
            let dir = Path::new(&config.policy_path);
            let paths = files::json_files(dir).unwrap_or_else(|e| {
                errors.push(PolicyLoadError {
                    path: dir.to_owned(),
                    reason: e.to_string(),
                });
                Vec::new()
            });
            for path in paths {
                match read_policy(&path) {
                    Ok(policy) => policies.push(policy),
                    Err(reason) => errors.push(PolicyLoadError { path, reason }),
                }
            }
        } else if !config.policy_record_name.is_empty() {
            let path = PathBuf::from(&config.policy_record_name);
            match read_policy_map(&path) {
                Ok(map) => policies.extend(map.into_values()),
                Err(reason) => errors.push(PolicyLoadError { path, reason }),
            }
        }
        (Self::new(policies), errors)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<PolicyDefinition>> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Each policy's fields that tollgate does not apply, for those that have any, by id.
    pub fn unhonoured(&self) -> Vec<(&str, Vec<String>)> {
        self.all()
            .into_iter()
            .map(|p| (p.id.as_str(), p.unhonoured()))
            .filter(|(_, fields)| !fields.is_empty())
            .collect()
    }

    /// Policies by id.
    pub fn all(&self) -> Vec<&Arc<PolicyDefinition>> {
        let mut all: Vec<_> = self.by_id.values().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// `access` with the policies it names applied, for an API of `api_org`; `access` itself
    /// when it names none.
    pub fn apply(
        &self,
        access: &Arc<KeyAccess>,
        api_org: &str,
    ) -> Result<Arc<KeyAccess>, PolicyRefused> {
        if access.policies.is_empty() {
            return Ok(access.clone());
        }
        let address = Arc::as_ptr(access) as usize;
        let applied = match self.applied.get(&address) {
            Some((source, applied)) if Arc::ptr_eq(&source, access) => applied,
            _ => {
                let applied = self.combine(access)?;
                self.applied
                    .insert(address, (access.clone(), applied.clone()));
                applied
            }
        };
        if applied.orgs.iter().any(|org| **org != *api_org) {
            return Err(PolicyRefused::OtherOrg);
        }
        Ok(applied.access)
    }

    /// Tyk's `Apply`: a missing policy is skipped among several and refuses a key that names
    /// only it; rate, quota and access rights come from the policies that set them (the
    /// highest rate, the largest quota, the union of access rights with their versions and
    /// URL rights merged); `is_inactive` from any; each policy's `meta_data` set over the
    /// key's, in the key's order of policies; their `tags` added to the key's.
    fn combine(&self, key: &KeyAccess) -> Result<Applied, PolicyRefused> {
        let mut found = Vec::with_capacity(key.policies.len());
        for id in &key.policies {
            match self.by_id.get(&**id).filter(|p| p.active) {
                Some(policy) => found.push(policy),
                None if key.policies.len() == 1 => {
                    return Err(PolicyRefused::NotFound(id.to_string()));
                }
                None => {}
            }
        }
        let mut rights: Vec<ApiAccess> = Vec::new();
        let mut acl_set = false;
        let mut limits = key.limits;
        let (mut rate_set, mut quota_set) = (false, false);
        let mut inactive = key.is_inactive;
        for policy in &found {
            let p = policy.partitions;
            // As Tyk's: a policy partitioned on complexity alone (GraphQL query depth, which
            // tollgate does not apply) sets none of the rest.
            let all = !(p.quota || p.rate_limit || p.acl || p.per_api || p.complexity);
            inactive |= policy.is_inactive;
            if p.per_api {
                acl_set = true;
                for (api_id, access) in &policy.access_rights {
                    let mut api = ApiAccess::from_definition(api_id, access);
                    // Per-API limits: the entry's own, else the policy's.
                    if api.limit.is_none() {
                        api.limit = Some(policy_limits(policy));
                    }
                    merge_access(&mut rights, api);
                }
                continue;
            }
            if all || p.acl {
                acl_set = true;
                for (api_id, access) in &policy.access_rights {
                    merge_access(&mut rights, ApiAccess::from_definition(api_id, access));
                }
            }
            if all || p.rate_limit {
                // The first policy to set a rate sets it; a later one only with a faster one.
                let faster = policy.rate > 0.0
                    && policy.per > 0.0
                    && (limits.rate <= 0.0 || limits.per / limits.rate > policy.per / policy.rate);
                if !rate_set || faster {
                    limits.rate = policy.rate;
                    limits.per = policy.per;
                }
                rate_set = true;
            }
            if all || p.quota {
                let larger = |current: i64, new: i64| current != -1 && (new == -1 || new > current);
                if !quota_set || larger(limits.quota_max, policy.quota_max) {
                    limits.quota_max = policy.quota_max;
                }
                if !quota_set || policy.quota_renewal_rate > limits.quota_renewal_rate {
                    limits.quota_renewal_rate = policy.quota_renewal_rate;
                }
                quota_set = true;
            }
        }
        let apis = if acl_set { rights } else { key.apis().to_vec() };
        if apis.is_empty() {
            return Err(PolicyRefused::NoneValid);
        }
        let mut applied = key.with_apis(apis);
        applied.limits = limits;
        applied.is_inactive = inactive;
        for policy in &found {
            applied.merge_meta(&policy.meta_data);
            applied.add_tags(&policy.tags);
        }
        let mut orgs: Vec<Box<str>> = Vec::new();
        for policy in &found {
            if !orgs.iter().any(|org| **org == *policy.org_id) {
                orgs.push(policy.org_id.as_str().into());
            }
        }
        Ok(Applied {
            access: Arc::new(applied),
            orgs: orgs.into(),
        })
    }
}

fn policy_limits(policy: &PolicyDefinition) -> Limits {
    Limits {
        rate: policy.rate,
        per: policy.per,
        quota_max: policy.quota_max,
        quota_renewal_rate: policy.quota_renewal_rate,
    }
}

/// Adds `api` to `rights`, merging with an entry for the same API: versions and URL rights
/// are united (a URL's methods too, as Tyk's `MergeAllowedURLs`).
fn merge_access(rights: &mut Vec<ApiAccess>, api: ApiAccess) {
    let Some(known) = rights.iter_mut().find(|a| a.api_id() == api.api_id()) else {
        rights.push(api);
        return;
    };
    let mut versions = known.versions.to_vec();
    for v in api.versions.iter() {
        if !versions.contains(v) {
            versions.push(v.clone());
        }
    }
    known.versions = versions.into_boxed_slice();
    let mut urls: Vec<UrlRight> = known.allowed_urls.to_vec();
    for right in api.allowed_urls.iter() {
        match urls.iter_mut().find(|u| u.pattern() == right.pattern()) {
            Some(same) => *same = same.with_methods_of(right),
            None => urls.push(right.clone()),
        }
    }
    known.allowed_urls = urls.into_boxed_slice();
    if known.limit.is_none() {
        known.limit = api.limit;
    }
}

/// Parses policy JSON, naming the field at fault.
pub fn parse_policy(bytes: &[u8]) -> Result<PolicyDefinition, String> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })
}

fn read_policy(path: &Path) -> Result<PolicyDefinition, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let policy = parse_policy(&bytes)?;
    if policy.id.is_empty() {
        return Err("id: must be set".into());
    }
    Ok(policy)
}

/// `policy_record_name`: ids to policies; the map's key is the policy's id.
fn read_policy_map(path: &Path) -> Result<IndexMap<String, PolicyDefinition>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let mut map: IndexMap<String, PolicyDefinition> = serde_path_to_error::deserialize(de)
        .map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })?;
    for (id, policy) in map.iter_mut() {
        policy.id = id.clone();
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionState;
    use serde_json::json;

    fn policy(value: Value) -> PolicyDefinition {
        serde_json::from_value(value).unwrap()
    }

    fn key(policies: &[&str]) -> Arc<KeyAccess> {
        let session: SessionState = serde_json::from_value(json!({
            "rate": 1, "per": 1, "apply_policies": policies
        }))
        .unwrap();
        Arc::new(KeyAccess::from(&session))
    }

    #[test]
    fn policies_combine_as_tyk_combines_them() {
        let table = PolicyTable::new(vec![
            policy(
                json!({"id": "slow", "rate": 10, "per": 60, "quota_max": 100, "quota_renewal_rate": 60,
                "access_rights": {"a": {"api_id": "a", "versions": ["v1"],
                    "allowed_urls": [{"url": "/x", "methods": ["GET"]}]}}}),
            ),
            policy(json!({"id": "fast", "rate": 100, "per": 1, "quota_max": -1,
                "access_rights": {"a": {"api_id": "a", "versions": ["v2"],
                    "allowed_urls": [{"url": "/x", "methods": ["POST"]}]}, "b": {"api_id": "b"}}})),
            policy(json!({"id": "off", "is_inactive": true, "partitions": {"quota": true}})),
        ]);
        let applied = table.apply(&key(&["slow", "fast"]), "").unwrap();
        assert_eq!(
            (applied.limits.rate, applied.limits.per),
            (100.0, 1.0),
            "highest rate"
        );
        assert_eq!(applied.limits.quota_max, -1, "unlimited beats any quota");
        let a = applied.access_to("a").unwrap();
        assert_eq!(&*a.versions, &["v1".into(), "v2".into()] as &[Box<str>]);
        let x = crate::rights::RequestPath {
            whole: "/x",
            listen_path: "/",
        };
        let allows = |method| a.allowed_urls[0].allows(method, x, Default::default());
        assert!(allows("POST") && allows("GET"));
        assert!(applied.access_to("b").is_some());
        assert!(applied.policies.is_empty());
        // The memo answers the same access with the same applied copy.
        let access = key(&["slow"]);
        assert!(Arc::ptr_eq(
            &table.apply(&access, "").unwrap(),
            &table.apply(&access, "").unwrap()
        ));

        assert!(table.apply(&key(&["slow", "off"]), "").unwrap().is_inactive);
        // A policy of another organisation than the API's grants nothing, memo or not.
        assert_eq!(
            table.apply(&access, "other-org").unwrap_err(),
            PolicyRefused::OtherOrg
        );
        assert_eq!(
            table.apply(&key(&["gone"]), "").unwrap_err(),
            PolicyRefused::NotFound("gone".into())
        );
        assert!(
            table.apply(&key(&["gone", "slow"]), "").is_ok(),
            "skipped among others"
        );
        assert_eq!(
            table.apply(&key(&["off"]), "").unwrap_err(),
            PolicyRefused::NoneValid,
            "a quota-only policy grants no API"
        );
    }

    #[test]
    fn fields_policies_do_not_apply_are_named() {
        let p = policy(
            json!({"id": "p", "rate": 5, "per": 1, "throttle_interval": 10,
            "tags": ["gold"], "meta_data": {}, "max_query_depth": -1,
            "access_rights": {"a": {"api_id": "a", "versions": ["v1"], "restricted_types": [{"name": "x"}]}}}),
        );
        let mut found = p.unhonoured();
        found.sort();
        assert_eq!(
            found,
            [
                "access_rights.a.restricted_types",
                "max_query_depth",
                "throttle_interval"
            ]
        );
        let plain = policy(
            json!({"id": "q", "rate": 5, "per": 1, "throttle_interval": 0,
            "access_rights": {"a": {"api_id": "a", "allowed_urls": [], "limit": null}}}),
        );
        assert!(plain.unhonoured().is_empty());
    }

    #[test]
    fn a_policy_map_names_its_policies_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policies.json");
        std::fs::write(
            &path,
            json!({"gold": {"rate": 5, "per": 1}, "silver": {"id": "ignored"}}).to_string(),
        )
        .unwrap();
        let config = PoliciesConfig {
            policy_record_name: path.to_string_lossy().into_owned(),
            ..Default::default()
        };
        let (table, errors) = PolicyTable::load(&config);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(table.get("gold").unwrap().rate, 5.0);
        assert!(table.get("silver").is_some() && table.get("ignored").is_none());
        std::fs::write(&path, r#"{"gold": {"rate": "fast"}}"#).unwrap();
        let (table, errors) = PolicyTable::load(&config);
        assert!(table.is_empty());
        assert!(errors[0].reason.contains("gold.rate"), "{errors:?}");
    }

    #[test]
    fn an_inactive_policy_is_not_applied() {
        let table = PolicyTable::new(vec![policy(
            json!({"id": "off", "active": false, "access_rights": {"a": {"api_id": "a"}}}),
        )]);
        assert_eq!(
            table.apply(&key(&["off"]), "").unwrap_err(),
            PolicyRefused::NotFound("off".into())
        );
    }

    #[test]
    fn a_policy_partitioned_on_complexity_alone_sets_no_rate_quota_or_rights() {
        let table = PolicyTable::new(vec![
            policy(json!({"id": "depth", "rate": 500, "per": 1, "quota_max": 5,
                "partitions": {"complexity": true},
                "access_rights": {"b": {"api_id": "b"}}})),
            policy(json!({"id": "acl", "partitions": {"acl": true},
                "access_rights": {"a": {"api_id": "a"}}})),
        ]);
        let applied = table.apply(&key(&["depth", "acl"]), "").unwrap();
        assert_eq!((applied.limits.rate, applied.limits.per), (1.0, 1.0));
        assert!(applied.access_to("a").is_some());
        assert!(applied.access_to("b").is_none());
    }

    #[test]
    fn policies_meta_data_is_set_over_the_keys_in_order() {
        let table = PolicyTable::new(vec![
            policy(
                json!({"id": "a", "meta_data": {"tier": "silver", "region": "eu", "flag": "x"},
                "access_rights": {"a": {"api_id": "a"}}}),
            ),
            policy(json!({"id": "b", "meta_data": {"tier": "gold", "flag": true}})),
        ]);
        let session: SessionState = serde_json::from_value(json!({
            "apply_policies": ["a", "b"], "meta_data": {"tier": "bronze", "user": "u1"}
        }))
        .unwrap();
        let applied = table
            .apply(&Arc::new(KeyAccess::from(&session)), "")
            .unwrap();
        let meta: Vec<(&str, &str)> = applied.meta.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(meta, [("user", "u1"), ("region", "eu"), ("tier", "gold")]);
    }

    #[test]
    fn per_api_limits_come_from_the_policy() {
        let table = PolicyTable::new(vec![policy(json!({"id": "p", "rate": 5, "per": 1,
            "partitions": {"per_api": true},
            "access_rights": {"a": {"api_id": "a"}, "b": {"api_id": "b", "limit": {"rate": 50, "per": 1}}}}))]);
        let applied = table.apply(&key(&["p"]), "").unwrap();
        assert_eq!(applied.access_to("a").unwrap().limit.unwrap().rate, 5.0);
        assert_eq!(applied.access_to("b").unwrap().limit.unwrap().rate, 50.0);
    }
}
