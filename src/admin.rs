//! The Gateway API under `/tyk/` (keys, apis, reload) and the `/hello` and `/ready` probes,
//! with Tyk's routes, statuses and bodies.
//!
//! Owns the admin secret check and request-body validation; stores keys through the
//! [`SessionStore`](crate::store::SessionStore) trait and definitions through `api`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::SemaphorePermit;

use crate::admin_body::{ADMIN_BODY_TIMEOUT, AdminBody};
use crate::api::{self, ApiSpec};
use crate::counting::api_counter;
use crate::files;
use crate::gateway::{BodyBudget, Gateway};
use crate::policy;
use crate::response::{Body, buffered_response, json_response, status_error};
use crate::session::{KeyVerifier, SessionState, unix_now};
use crate::status;
use crate::store::StoreError;

/// Largest admin request body accepted.
pub const MAX_ADMIN_BODY: usize = 4 * 1024 * 1024;
/// Whether `path` is served by this module rather than proxied.
pub fn owns(config: &crate::config::GatewayConfig, path: &str) -> bool {
    path.starts_with("/tyk/")
        || path == "/tyk"
        || path == METRICS_PATH
        || status::owns(path)
        || path.strip_prefix('/').is_some_and(|p| {
            p == config.health_check_endpoint_name || p == config.readiness_check_endpoint_name
        })
}

/// Where Prometheus scrapes the node (see `metrics`).
pub const METRICS_PATH: &str = "/metrics";

fn modified(key: &str, action: &str) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({"key": key, "status": "ok", "action": action}),
    )
}

fn method_not_allowed() -> Response<Body> {
    status_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

fn malformed(reason: impl std::fmt::Display) -> Response<Body> {
    Rejected::malformed(reason).into_response()
}

/// An admin request refused before it touched anything.
struct Rejected {
    status: StatusCode,
    message: String,
}

impl Rejected {
    fn malformed(reason: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!("Request malformed: {reason}"),
        }
    }

    /// Tyk's answer to a body it cannot read on `/tyk/keys/create` and `/preview`: 500.
    fn unmarshalling_failed(self) -> Self {
        match self.message.strip_prefix("Request malformed") {
            Some(detail) if self.status == StatusCode::BAD_REQUEST => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("Unmarshalling failed{detail}"),
            },
            _ => self,
        }
    }

    fn into_response(self) -> Response<Body> {
        status_error(self.status, &self.message)
    }
}

fn store_failure(e: &StoreError) -> Response<Body> {
    tracing::warn!("key store error in admin API: {e}");
    // A record that cannot be read is a fault of the data, not an outage.
    let status = match e {
        StoreError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        StoreError::Unavailable(_) | StoreError::NotDurable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    status_error(status, &e.to_string())
}

/// Routes one admin or probe request.
pub async fn handle(gw: &Arc<Gateway>, req: Request<impl AdminBody>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let name = path.trim_start_matches('/');
    if name == gw.config.health_check_endpoint_name {
        return match *req.method() {
            Method::GET | Method::HEAD => hello(gw).await,
            _ => method_not_allowed(),
        };
    }
    if name == gw.config.readiness_check_endpoint_name {
        return ready(gw).await;
    }
    if status::owns(&path) {
        return status::handle(gw, req).await;
    }
    if path == METRICS_PATH {
        return match *req.method() {
            Method::GET | Method::HEAD => metrics(gw).await,
            _ => method_not_allowed(),
        };
    }
    if !authorised(&gw.config.secret, &req) {
        return status_error(
            StatusCode::FORBIDDEN,
            "Attempted administrative access with invalid or missing key!",
        );
    }
    let segments: Vec<&str> = path
        .trim_start_matches("/tyk")
        .trim_matches('/')
        .split('/')
        .collect();
    let query = Query::parse(req.uri().query());
    let method = req.method().clone();
    match (segments.as_slice(), method) {
        (["keys"], Method::GET) => list_keys(gw).await,
        (["keys"] | ["keys", "create"], Method::POST) => {
            match read_json::<SessionState>(gw, req).await {
                Ok(session) => create_key(gw, session, &query).await,
                Err(rejected) => rejected.unmarshalling_failed().into_response(),
            }
        }
        // Validates a key's body and shows the session it would make; stores nothing.
        (["keys", "preview"], Method::POST) => match read_json::<SessionState>(gw, req).await {
            Ok(mut session) => {
                session.tollgate_key_verifier.clear();
                json_response(StatusCode::OK, &session)
            }
            Err(rejected) => rejected.unmarshalling_failed().into_response(),
        },
        (["keys", key], method) => {
            let key = (*key).to_owned();
            if !valid_key_name(&key) {
                return status_error(
                    StatusCode::BAD_REQUEST,
                    "Key must be 1-1024 visible ASCII characters",
                );
            }
            match method {
                Method::GET => get_key(gw, &key, &query).await,
                Method::DELETE => delete_key(gw, &key, &query).await,
                Method::POST | Method::PUT => match read_json::<SessionState>(gw, req).await {
                    Ok(session) => put_key(gw, &key, session, method == Method::POST, &query).await,
                    Err(rejected) => rejected.into_response(),
                },
                _ => method_not_allowed(),
            }
        }
        (["apis"], Method::GET) => list_apis(gw),
        (["apis"], Method::POST) => match read_body(gw, req).await {
            Ok(body) => write_api(gw, None, &body).await,
            Err(rejected) => rejected.into_response(),
        },
        (["apis", id], method) => {
            let id = (*id).to_owned();
            match method {
                Method::GET => get_api(gw, &id),
                Method::PUT => match read_body(gw, req).await {
                    Ok(body) => write_api(gw, Some(&id), &body).await,
                    Err(rejected) => rejected.into_response(),
                },
                Method::DELETE => delete_api(gw, &id).await,
                _ => method_not_allowed(),
            }
        }
        (["policies"], Method::GET) => list_policies(gw),
        (["policies"], Method::POST) => match read_body(gw, req).await {
            Ok(body) => write_policy(gw, None, &body).await,
            Err(rejected) => rejected.into_response(),
        },
        (["policies", id], method) => {
            let id = (*id).to_owned();
            match method {
                Method::GET => get_policy(gw, &id),
                Method::PUT => match read_body(gw, req).await {
                    Ok(body) => write_policy(gw, Some(&id), &body).await,
                    Err(rejected) => rejected.into_response(),
                },
                Method::DELETE => delete_policy(gw, &id).await,
                _ => method_not_allowed(),
            }
        }
        (["reload"] | ["reload", "group"], Method::GET) => {
            if segments.len() == 2 {
                gw.sessions.announce_reload().await;
            }
            if query.flag("block") {
                gw.reload().await;
            } else {
                let gw = gw.clone();
                tokio::spawn(async move { gw.reload().await });
            }
            json_response(StatusCode::OK, &json!({"status": "ok", "message": ""}))
        }
        (["keys" | "apis" | "policies" | "reload", ..], _) => method_not_allowed(),
        _ => status_error(StatusCode::NOT_FOUND, "Not found"),
    }
}

/// Compares SHA-256 digests in constant time, so neither content nor length leaks.
fn authorised<B>(secret: &str, req: &Request<B>) -> bool {
    let given = req
        .headers()
        .get("x-tyk-authorization")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    crate::gateway::secret_matches(secret, given)
}

fn valid_key_name(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= crate::auth::MAX_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_graphic())
}

struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(query: Option<&str>) -> Self {
        let pairs = query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (p.to_owned(), String::new()),
            })
            .collect();
        Self { pairs }
    }

    fn flag(&self, name: &str) -> bool {
        self.pairs
            .iter()
            .any(|(k, v)| k == name && matches!(v.as_str(), "true" | "1"))
    }

    /// Tyk's reading of `hashed`: any value that is not empty (`?hashed=false` included).
    fn non_empty(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| !v.is_empty())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The whole request body, within [`MAX_ADMIN_BODY`], [`ADMIN_BODY_TIMEOUT`] and the
/// node's [`BodyBudget`].
async fn read_body(gw: &Gateway, req: Request<impl AdminBody>) -> Result<Bytes, Rejected> {
    let collected = collect_within(&gw.admin_bodies, req.into_body());
    match tokio::time::timeout(ADMIN_BODY_TIMEOUT, collected).await {
        Ok(read) => read,
        Err(_) => Err(Rejected {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!(
                "Request body not received within {} s",
                ADMIN_BODY_TIMEOUT.as_secs()
            ),
        }),
    }
}

async fn collect_within(budget: &BodyBudget, mut body: impl AdminBody) -> Result<Bytes, Rejected> {
    let mut bytes = BytesMut::new();
    let mut held: Option<SemaphorePermit<'_>> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let e: Box<dyn std::error::Error + Send + Sync> = e.into();
            Rejected::malformed(format!("body could not be read: {e}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if bytes.len() + data.len() > MAX_ADMIN_BODY {
            return Err(Rejected {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!("Request body over {} bytes", MAX_ADMIN_BODY),
            });
        }
        // Within MAX_ADMIN_BODY, so the count fits.
        let permit = budget
            .0
            .try_acquire_many(data.len() as u32)
            .map_err(|_| Rejected {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "Too many admin request bodies being received; try again".into(),
            })?;
        match &mut held {
            Some(held) => held.merge(permit),
            None => held = Some(permit),
        }
        bytes.extend_from_slice(&data);
    }
    Ok(bytes.freeze())
}

async fn read_json<T: serde::de::DeserializeOwned>(
    gw: &Gateway,
    req: Request<impl AdminBody>,
) -> Result<T, Rejected> {
    let body = read_body(gw, req).await?;
    // Read as a JSON tree first: serde_json bounds its depth (128), where the typed read
    // keeps the fields tollgate does not model as raw text of any depth, which then could
    // not be read back as a tree.
    parse_with_path::<Value>(&body)?;
    parse_with_path(&body)
}

/// `body` as a `T`, a failure naming the field at fault.
fn parse_with_path<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Rejected> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            Rejected::malformed(inner)
        } else {
            Rejected::malformed(format!("{path}: {inner}"))
        }
    })
}

// ---- keys ----

async fn list_keys(gw: &Gateway) -> Response<Body> {
    if gw.hasher.enabled() && !gw.config.enable_hashed_keys_listing {
        return status_error(
            StatusCode::NOT_FOUND,
            "Hashed key listing is disabled in config (enable_hashed_keys_listing)",
        );
    }
    match gw.sessions.list().await {
        Ok(keys) => json_response(StatusCode::OK, &json!({ "keys": keys })),
        Err(e) => store_failure(&e),
    }
}

/// One place a key may be stored: the text its id is made from (`None` when addressed by
/// its hash), and the id.
struct StoredForm {
    text: Option<String>,
    id: String,
}

/// Where a key named in a URL may be stored, in the order Tyk looks: with `?hashed`, the
/// URL holds the id; otherwise, for each organisation the key may belong to (`org`, or
/// `?org_id=`, or those of the loaded APIs), the token made from the name, then the name
/// itself.
fn stored_forms(
    gw: &Gateway,
    name: &str,
    query: &Query,
    org: Option<&str>,
) -> Result<Vec<StoredForm>, Rejected> {
    if query.non_empty("hashed") {
        if !gw.hasher.enabled() {
            return Err(Rejected {
                status: StatusCode::BAD_REQUEST,
                message: "Key requested by hash but key hashing is not enabled.".into(),
            });
        }
        return Ok(vec![StoredForm {
            text: None,
            id: name.to_owned(),
        }]);
    }
    let orgs: Vec<String> = match org.or(query.get("org_id")) {
        Some(org) => vec![org.to_owned()],
        None => gw
            .apis()
            .specs()
            .iter()
            .map(|s| s.definition.org_id.clone())
            .collect(),
    };
    let mut texts: Vec<String> = orgs
        .iter()
        .map(|org| gw.hasher.candidates(org, name).0.into_owned())
        .collect();
    texts.push(name.to_owned());
    // Orgs (and so their tokens) may repeat; each id is asked for once.
    let mut forms: Vec<StoredForm> = Vec::with_capacity(texts.len());
    for text in texts {
        let id = gw.hasher.storage_id(&text).into_owned();
        if !forms.iter().any(|f| f.id == id) {
            forms.push(StoredForm {
                text: Some(text),
                id,
            });
        }
    }
    Ok(forms)
}

/// The first of `forms` that holds a record, with the record.
async fn find_key(
    gw: &Gateway,
    forms: Vec<StoredForm>,
) -> Result<Option<(StoredForm, Arc<SessionState>)>, StoreError> {
    for form in forms {
        if let Some(session) = gw.sessions.get(&form.id).await? {
            return Ok(Some((form, session)));
        }
    }
    Ok(None)
}

async fn get_key(gw: &Gateway, key: &str, query: &Query) -> Response<Body> {
    let forms = match stored_forms(gw, key, query, None) {
        Ok(forms) => forms,
        Err(rejected) => return rejected.into_response(),
    };
    match find_key(gw, forms).await {
        Ok(Some((form, session))) => {
            let mut session = (*session).clone();
            // tollgate's own field, not part of Tyk's session object.
            session.tollgate_key_verifier.clear();
            live_quota(gw, &form.id, &mut session).await;
            json_response(StatusCode::OK, &session)
        }
        Ok(None) => status_error(StatusCode::NOT_FOUND, "Key not found"),
        Err(e) => store_failure(&e),
    }
}

/// Fills in the quota counters as they stand now (the record holds them as last written).
async fn live_quota(gw: &Gateway, key_id: &str, session: &mut SessionState) {
    if session.quota_max > 0
        && let Ok(Some((used, renews))) = gw.sessions.quota_used(key_id).await
    {
        session.quota_remaining = (session.quota_max - used).max(0);
        session.quota_renews = renews;
    }
    for (api_id, access) in session.access_rights.iter_mut() {
        if let Some(limit) = access.limit.as_mut().filter(|l| l.quota_max > 0)
            && let Ok(Some((used, renews))) =
                gw.sessions.quota_used(&api_counter(api_id, key_id)).await
        {
            limit.quota_remaining = (limit.quota_max - used).max(0);
            limit.quota_renews = renews;
        }
    }
}

/// Removes every form of the key, as Tyk removes both the name and its token.
async fn delete_key(gw: &Gateway, key: &str, query: &Query) -> Response<Body> {
    let forms = match stored_forms(gw, key, query, None) {
        Ok(forms) => forms,
        Err(rejected) => return rejected.into_response(),
    };
    let mut deleted = false;
    for form in forms {
        match gw.sessions.delete(&form.id).await {
            Ok(existed) => deleted |= existed,
            Err(e) => return store_failure(&e),
        }
    }
    if deleted {
        modified(key, "deleted")
    } else {
        status_error(StatusCode::NOT_FOUND, "There is no such key found")
    }
}

/// Whether `session` may be written: one without access rights (a master key, which may call
/// every API) only with `allow_master_keys`.
fn master_key_refused(gw: &Gateway, session: &SessionState) -> bool {
    session.access_rights.is_empty()
        && session.apply_policies.is_empty()
        && session.apply_policy_id.is_empty()
        && !gw.config.allow_master_keys
}

/// A key naming a policy that is not loaded is refused before anything is stored. A new key
/// takes the longest `key_expires_in` of its policies when it sets no expiry of its own.
fn check_policies(gw: &Gateway, session: &mut SessionState, new: bool) -> Result<(), Rejected> {
    let policies = gw.policies();
    let named = session
        .apply_policies
        .iter()
        .chain(std::iter::once(&session.apply_policy_id).filter(|id| !id.is_empty()));
    let mut expires_in = 0;
    for id in named {
        match policies.get(id) {
            Some(policy) => expires_in = expires_in.max(policy.key_expires_in),
            None => {
                return Err(Rejected::malformed(format!(
                    "apply_policies: policy {id:?} not found"
                )));
            }
        }
    }
    if new && session.expires == 0 && expires_in > 0 {
        session.expires = unix_now() + expires_in;
    }
    Ok(())
}

async fn create_key(gw: &Gateway, mut session: SessionState, query: &Query) -> Response<Body> {
    if let Err(rejected) = check_policies(gw, &mut session, true) {
        return rejected.into_response();
    }
    if master_key_refused(gw, &session) {
        return status_error(
            StatusCode::BAD_REQUEST,
            "Failed to create key, keys must have at least one Access Rights record set.",
        );
    }
    let key = gw.hasher.generate(&session.org_id);
    let id = gw.hasher.storage_id(&key).into_owned();
    store_key(gw, &key, id, session, KeyWrite::Added, query).await
}

async fn put_key(
    gw: &Gateway,
    key: &str,
    mut session: SessionState,
    create: bool,
    query: &Query,
) -> Response<Body> {
    if query.non_empty("hashed") {
        return status_error(
            StatusCode::BAD_REQUEST,
            "Keys are written by their name, not by hash",
        );
    }
    if let Err(rejected) = check_policies(gw, &mut session, create) {
        return rejected.into_response();
    }
    if master_key_refused(gw, &session) {
        return status_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Failed to create key, ensure security settings are correct.",
        );
    }
    let expired = session.expires > 1 && session.expires < unix_now();
    if create {
        if key.len() < gw.config.min_token_length {
            return status_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "Key must be at least {} characters (min_token_length)",
                    gw.config.min_token_length
                ),
            );
        }
        // As Tyk: an expiry already past when a key is created means none.
        if expired {
            session.expires = 0;
        }
        let token = gw.hasher.token(&session.org_id, key);
        let id = gw.hasher.storage_id(&token).into_owned();
        return store_key(gw, &token, id, session, KeyWrite::Added, query).await;
    }
    let forms = match stored_forms(gw, key, query, Some(&session.org_id)) {
        Ok(forms) => forms,
        Err(rejected) => return rejected.into_response(),
    };
    let (form, existing) = match find_key(gw, forms).await {
        Ok(Some(found)) => found,
        Ok(None) => return status_error(StatusCode::NOT_FOUND, "Key is not found"),
        Err(e) => return store_failure(&e),
    };
    // An expiry already past keeps the key's current one.
    if expired {
        session.expires = existing.expires;
    }
    let text = form.text.unwrap_or_else(|| key.to_owned());
    store_key(gw, &text, form.id, session, KeyWrite::Modified, query).await
}

/// What a key write did, as Tyk words it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyWrite {
    Added,
    Modified,
}

/// Stores `session` for the key `text` under `id`, bound to `text` by its verifier.
async fn store_key(
    gw: &Gateway,
    text: &str,
    id: String,
    mut session: SessionState,
    write: KeyWrite,
    query: &Query,
) -> Response<Body> {
    if !query.flag("suppress_reset") {
        // A written key starts a fresh quota period, as in Tyk.
        session.quota_remaining = session.quota_max;
        if session.quota_renewal_rate > 0 {
            session.quota_renews = unix_now() + session.quota_renewal_rate;
        }
    }
    // Whatever the body said: the record is bound to the key it is written for.
    session.tollgate_key_verifier = KeyVerifier::of(text).to_hex();
    let ttl = record_lifetime(gw, &session);
    if let Err(e) = gw.sessions.set(&id, &session, ttl).await {
        return store_failure(&e);
    }
    if !query.flag("suppress_reset") {
        let counters = std::iter::once(id.clone()).chain(
            session
                .access_rights
                .keys()
                .map(|api_id| api_counter(api_id, &id)),
        );
        for counter in counters {
            if let Err(e) = gw.sessions.reset_quota(&counter).await {
                return store_failure(&e);
            }
        }
    }
    let action = match write {
        KeyWrite::Added => "added",
        KeyWrite::Modified => "modified",
    };
    let mut body = json!({"key": text, "status": "ok", "action": action});
    // Tyk names the hash only when a key is added.
    if gw.hasher.enabled() && write == KeyWrite::Added {
        body["key_hash"] = Value::String(id);
    }
    json_response(StatusCode::OK, &body)
}

/// How long the store keeps a record, as Tyk's `Lifetime`: `global_session_lifetime` when
/// `force_global_session_lifetime` is on; else the key's own `session_lifetime`; else the
/// longest `session_lifetime` of the APIs it may call. `None` keeps it until deleted.
fn record_lifetime(gw: &Gateway, session: &SessionState) -> Option<Duration> {
    let seconds = if gw.config.force_global_session_lifetime {
        gw.config.global_session_lifetime
    } else if session.session_lifetime > 0 {
        session.session_lifetime
    } else {
        let apis = gw.apis();
        session
            .access_rights
            .keys()
            .filter_map(|id| apis.get(id))
            .map(|spec| spec.definition.session_lifetime)
            .max()
            .unwrap_or(0)
    };
    (seconds > 0).then(|| Duration::from_secs(seconds as u64))
}

// ---- apis ----

fn list_apis(gw: &Gateway) -> Response<Body> {
    let apis = gw.apis();
    let list: Vec<&api::ApiDefinition> = apis.specs().iter().map(|s| &s.definition).collect();
    json_response(StatusCode::OK, &list)
}

fn get_api(gw: &Gateway, id: &str) -> Response<Body> {
    match gw.apis().get(id) {
        Some(spec) => json_response(StatusCode::OK, &spec.definition),
        None => status_error(StatusCode::NOT_FOUND, "API not found"),
    }
}

/// The id a definition or policy written through the API is stored under, in its `field`: the
/// URL's for a `PUT` (a body naming another is refused), the body's or a new one for a
/// `POST`. Answers the file name it is written to.
fn settle_id(field: &str, id: &mut String, path_id: Option<&str>) -> Result<String, Rejected> {
    match path_id {
        Some(url) if id.is_empty() => *id = url.to_owned(),
        Some(url) if id != url => {
            return Err(Rejected::malformed(format!(
                "{field}: {id:?} does not match the URL's {url:?}"
            )));
        }
        None if id.is_empty() => *id = uuid::Uuid::new_v4().simple().to_string(),
        _ => {}
    }
    files::file_name_for(id).ok_or_else(|| {
        Rejected::malformed(format!(
            "{field}: use letters, digits, '-', '_' and '.' (at most 128)"
        ))
    })
}

/// `POST /tyk/apis` (`path_id` None) or `PUT /tyk/apis/{id}`: validate, then write the file
/// atomically; the change takes effect at the next reload.
async fn write_api(gw: &Gateway, path_id: Option<&str>, body: &[u8]) -> Response<Body> {
    let mut definition = match api::parse_definition(body) {
        Ok(d) => d,
        Err(e) => return malformed(e),
    };
    let file_name = match settle_id("api_id", &mut definition.api_id, path_id) {
        Ok(file_name) => file_name,
        Err(rejected) => return rejected.into_response(),
    };
    let id = definition.api_id.clone();
    if let Err(e) = ApiSpec::from_definition(definition.clone(), &gw.api_defaults()) {
        return malformed(e);
    }
    let dir = gw.app_path();
    let create = path_id.is_none();
    let written = tokio::task::spawn_blocking(move || {
        match (api::find_definition_file(&dir, &definition.api_id), create) {
            (Some(_), true) => Ok(WriteOutcome::Exists),
            (None, false) => Ok(WriteOutcome::Missing),
            (Some(path), false) => {
                api::write_definition(&path, &definition).map(|_| WriteOutcome::Written)
            }
            (None, true) => api::write_definition(&dir.join(file_name), &definition)
                .map(|_| WriteOutcome::Written),
        }
    })
    .await;
    write_answer(
        written,
        &id,
        create,
        "API with this api_id already exists",
        "API not found",
    )
}

/// The answer to writing a definition or policy file: `exists` and `missing` are what a
/// `POST` of a known id and a `PUT` of an unknown one are told.
fn write_answer(
    written: Result<std::io::Result<WriteOutcome>, tokio::task::JoinError>,
    id: &str,
    create: bool,
    exists: &str,
    missing: &str,
) -> Response<Body> {
    match written {
        Ok(Ok(WriteOutcome::Written)) => modified(id, if create { "added" } else { "modified" }),
        Ok(Ok(WriteOutcome::Exists)) => status_error(StatusCode::CONFLICT, exists),
        Ok(Ok(WriteOutcome::Missing)) => status_error(StatusCode::NOT_FOUND, missing),
        Ok(Err(e)) => file_failure(&e),
        Err(e) => file_failure(&e),
    }
}

enum WriteOutcome {
    Written,
    Exists,
    Missing,
}

fn file_failure(e: &dyn std::fmt::Display) -> Response<Body> {
    tracing::error!("Gateway API file error: {e}");
    status_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "File object creation failed, write error.",
    )
}

/// As Tyk: only the file Tyk would have written for the id (`<app_path>/<api_id>.json`) is
/// removed; a definition held in any other file (a hand-written `app_sample.json`) is kept,
/// and the answer is 500 "Delete failed".
async fn delete_api(gw: &Gateway, id: &str) -> Response<Body> {
    if gw.apis().get(id).is_none() {
        return status_error(StatusCode::NOT_FOUND, "API not found");
    }
    let Some(file_name) = files::file_name_for(id) else {
        return status_error(StatusCode::BAD_REQUEST, "Invalid API ID");
    };
    remove_written_file(gw.app_path().join(file_name), id).await
}

/// Removes a file the Gateway API wrote for `id`; one that is not there is Tyk's 500 "Delete
/// failed".
async fn remove_written_file(path: PathBuf, id: &str) -> Response<Body> {
    match tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await {
        Ok(Ok(())) => modified(id, "deleted"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            status_error(StatusCode::INTERNAL_SERVER_ERROR, "Delete failed")
        }
        Ok(Err(e)) => file_failure(&e),
        Err(e) => file_failure(&e),
    }
}

// ---- policies ----

fn list_policies(gw: &Gateway) -> Response<Body> {
    let policies = gw.policies();
    let list: Vec<&policy::PolicyDefinition> = policies.all().into_iter().map(|p| &**p).collect();
    json_response(StatusCode::OK, &list)
}

fn get_policy(gw: &Gateway, id: &str) -> Response<Body> {
    match gw.policies().get(id) {
        Some(policy) => json_response(StatusCode::OK, &**policy),
        None => status_error(StatusCode::NOT_FOUND, "Policy not found"),
    }
}

/// Where policies are written: `policies.policy_path`, one file per policy.
fn policy_dir(gw: &Gateway) -> Option<PathBuf> {
    let dir = &gw.config.policies.policy_path;
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

fn no_policy_dir() -> Response<Body> {
    status_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "policies.policy_path is not set: policies are written as files there",
    )
}

/// `POST /tyk/policies` (`path_id` None) or `PUT /tyk/policies/{id}`: validate, then write
/// `<policy_path>/<id>.json` atomically; the change takes effect at the next reload.
async fn write_policy(gw: &Gateway, path_id: Option<&str>, body: &[u8]) -> Response<Body> {
    let Some(dir) = policy_dir(gw) else {
        return no_policy_dir();
    };
    let mut definition = match policy::parse_policy(body) {
        Ok(p) => p,
        Err(reason) => return malformed(reason),
    };
    let file_name = match settle_id("id", &mut definition.id, path_id) {
        Ok(file_name) => file_name,
        Err(rejected) => return rejected.into_response(),
    };
    let id = definition.id.clone();
    let create = path_id.is_none();
    let path = dir.join(file_name);
    let written = tokio::task::spawn_blocking(move || {
        match (path.exists(), create) {
            (true, true) => return Ok(WriteOutcome::Exists),
            (false, false) => return Ok(WriteOutcome::Missing),
            _ => {}
        }
        let bytes = serde_json::to_vec_pretty(&definition).map_err(std::io::Error::other)?;
        files::write_atomically(&path, &bytes).map(|_| WriteOutcome::Written)
    })
    .await;
    write_answer(
        written,
        &id,
        create,
        "Policy with this id already exists",
        "Policy not found",
    )
}

async fn delete_policy(gw: &Gateway, id: &str) -> Response<Body> {
    let Some(dir) = policy_dir(gw) else {
        return no_policy_dir();
    };
    let Some(file_name) = files::file_name_for(id) else {
        return status_error(StatusCode::BAD_REQUEST, "Invalid policy ID");
    };
    remove_written_file(dir.join(file_name), id).await
}

// ---- probes ----

/// `/metrics`: unauthenticated like the probes (it names API ids and the store's master,
/// never a key or a path).
async fn metrics(gw: &Gateway) -> Response<Body> {
    let text = gw.render_metrics().await;
    let mut response = buffered_response(StatusCode::OK, text);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
    );
    response
}

async fn hello(gw: &Gateway) -> Response<Body> {
    let health = gw.sessions.health().await;
    let load_errors = gw.load_errors();
    let status = if !health.reachable {
        "fail"
    } else if !load_errors.is_empty() {
        "warn"
    } else {
        "pass"
    };
    let component = if health.mode == "memory" {
        "memory"
    } else {
        "redis"
    };
    let mut store = json!({
        "status": if health.reachable { "pass" } else { "fail" },
        "componentType": "datastore",
        "time": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    });
    if let (Value::Object(map), Value::Object(extra)) = (&mut store, json!(health)) {
        map.extend(extra);
    }
    let counts = gw.guard.counts();
    let mut details = json!({
        component: store,
        "keys": {
            "status": "pass",
            "componentType": "system",
            "weakly_bound_requests": counts.weakly_bound_requests,
            "refused_for_failures": counts.refused_for_failures,
        },
    });
    if !load_errors.is_empty() {
        details["apis"] =
            json!({"status": "warn", "componentType": "system", "output": *load_errors});
    }
    let unhonoured: serde_json::Map<String, Value> = gw
        .apis()
        .specs()
        .into_iter()
        .filter(|spec| !spec.unhonoured.is_empty())
        .map(|spec| (spec.api_id().to_owned(), json!(spec.unhonoured)))
        .collect();
    if !unhonoured.is_empty() {
        details["apis"]["componentType"] = json!("system");
        details["apis"]["unhonoured_fields"] = Value::Object(unhonoured);
    }
    let policies = gw.policies();
    let unapplied: serde_json::Map<String, Value> = policies
        .unhonoured()
        .into_iter()
        .map(|(id, fields)| (id.to_owned(), json!(fields)))
        .collect();
    if !unapplied.is_empty() {
        details["policies"] =
            json!({"status": "warn", "componentType": "system", "unhonoured_fields": unapplied});
    }
    json_response(
        StatusCode::OK,
        &json!({
            "status": status,
            "version": concat!("tollgate/", env!("CARGO_PKG_VERSION")),
            "description": "Tyk GW",
            "details": details,
        }),
    )
}

async fn ready(gw: &Gateway) -> Response<Body> {
    let health = gw.sessions.health().await;
    if health.reachable {
        json_response(StatusCode::OK, &json!({"status": "pass"}))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "fail", "message": "Key store unavailable"}),
        )
    }
}
