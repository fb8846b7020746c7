//! One gateway node's shared state: its configuration, stores, key hasher and limiter, and
//! the routing table and policies in force, loaded from files and swapped whole on reload.
//! The request pipeline that reads it is `server`'s; the Gateway API that manages it, `admin`'s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::access_log::AccessLog;
use crate::analytics::Analytics;
use crate::api::{ApiTable, GatewayDefaults, LoadError};
use crate::auth::KeyHasher;
use crate::config::{ConfigError, GatewayConfig};
use crate::guard::KeyGuard;
use crate::limits::Limiter;
use crate::metrics::{Metrics, NodeFigures};
use crate::policy::{PolicyLoadError, PolicyTable};
use crate::store::SessionStore;
use crate::traces::Tracing;
use crate::variables::Secrets;

/// Bytes of all admin request bodies being received at once, together.
pub const ADMIN_BODIES_IN_FLIGHT: usize = 16 * 1024 * 1024;

/// The memory all admin request bodies being received may take together: each body takes its
/// bytes from here as they arrive and gives them back once read.
pub struct BodyBudget(pub Semaphore);

impl Default for BodyBudget {
    fn default() -> Self {
        Self(Semaphore::new(ADMIN_BODIES_IN_FLIGHT))
    }
}

/// Whether `given` is the gateway's `secret`, compared in constant time (an empty secret
/// matches nothing): the Gateway API's header and the status page's login both ask.
pub fn secret_matches(secret: &str, given: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let expected = Sha256::digest(secret.as_bytes());
    let given = Sha256::digest(given);
    !secret.is_empty() && bool::from(expected.ct_eq(&given))
}

/// The state one gateway node shares across connections.
pub struct Gateway {
    pub config: GatewayConfig,
    pub sessions: Arc<dyn SessionStore>,
    pub hasher: KeyHasher,
    pub limiter: Arc<Limiter>,
    pub guard: KeyGuard,
    /// Memory for admin request bodies being received.
    pub admin_bodies: BodyBudget,
    pub(crate) apis: ArcSwap<ApiTable>,
    pub(crate) policies: ArcSwap<PolicyTable>,
    load_errors: ArcSwap<Vec<String>>,
    /// The TLS listener's config (`http_server_options.use_ssl`), its certificates re-read
    /// at each reload; `None` for plain HTTP.
    pub listener_tls: Option<ArcSwap<rustls::ServerConfig>>,
    pub metrics: Arc<Metrics>,
    /// `access_logs`, when enabled.
    pub access_log: Option<AccessLog>,
    /// `enable_analytics`: records for Tyk Pump.
    pub analytics: Option<Analytics>,
    /// `opentelemetry`: the tracer, when traces are on.
    pub tracing: Option<Tracing>,
    /// The status page's sign-in token (see `status`), new with each process.
    pub status_token: String,
    reload_lock: tokio::sync::Mutex<()>,
}

impl Gateway {
    /// Builds a node and loads the API definitions in `config.app_path`; `Err` when the
    /// TLS listener's certificates cannot be used.
    pub fn new(
        config: GatewayConfig,
        sessions: Arc<dyn SessionStore>,
    ) -> Result<Arc<Self>, ConfigError> {
        let listener_tls = config.listener_tls()?.map(ArcSwap::new);
        let access_log = if config.access_logs.enabled {
            let logs = &config.access_logs;
            let log =
                AccessLog::start(&logs.template, &logs.path, config.hash_keys).map_err(|e| {
                    ConfigError::InvalidField {
                        field: "access_logs.path".into(),
                        reason: format!("{:?} cannot be opened: {e}", logs.path),
                    }
                })?;
            Some(log)
        } else {
            None
        };
        let analytics = config.enable_analytics.then(|| {
            if config.storage.kind == "memory" {
                tracing::warn!(
                    "enable_analytics: the memory store keeps no analytics; records are dropped (Tyk Pump reads them from Redis)"
                );
            }
            Analytics::start(&config.analytics_config, sessions.clone())
        });
        let otel = config.opentelemetry.effective();
        let tracing = if otel.enabled {
            Some(
                Tracing::start(otel).map_err(|reason| ConfigError::InvalidField {
                    field: "opentelemetry.endpoint".into(),
                    reason,
                })?,
            )
        } else {
            None
        };
        let limiter = Arc::new(Limiter::new(sessions.clone()));
        limiter.spawn_flusher(Duration::from_millis(500));
        let gateway = Arc::new(Self {
            limiter,
            hasher: KeyHasher::new(config.hash_keys, &config.hash_key_function),
            guard: KeyGuard::new(&config.auth_failure_limit),
            admin_bodies: BodyBudget::default(),
            sessions,
            apis: ArcSwap::from_pointee(ApiTable::default()),
            policies: ArcSwap::from_pointee(PolicyTable::default()),
            load_errors: ArcSwap::from_pointee(Vec::new()),
            listener_tls,
            metrics: Arc::new(Metrics::default()),
            access_log,
            analytics,
            tracing,
            status_token: uuid::Uuid::new_v4().simple().to_string(),
            reload_lock: tokio::sync::Mutex::new(()),
            config,
        });
        let loaded = load_all(
            &gateway.app_path(),
            &gateway.config.policies,
            &gateway.api_defaults(),
        );
        gateway.install(loaded);
        if let Some(mut asked) = gateway.sessions.reloads() {
            let node = Arc::downgrade(&gateway);
            tokio::spawn(async move {
                while asked.changed().await.is_ok() {
                    let Some(gateway) = node.upgrade() else { break };
                    tracing::info!("group reload asked for by another node");
                    gateway.reload().await;
                }
            });
        }
        Ok(gateway)
    }

    /// What this node's `tyk.conf` brings to every API definition.
    pub fn api_defaults(&self) -> GatewayDefaults {
        GatewayDefaults {
            tls: self.config.upstream_tls(),
            custom_domains: self.config.enable_custom_domains,
            endpoint_matching: self.config.path_matching(),
            secrets: Secrets::with_process_env(self.config.secrets.clone()),
            metrics: self.metrics.clone(),
        }
    }

    pub fn app_path(&self) -> PathBuf {
        PathBuf::from(&self.config.app_path)
    }

    /// The node's metrics in Prometheus's text format, the store checked for them now.
    pub async fn render_metrics(&self) -> String {
        let store = (self.sessions.health().await, self.sessions.stats());
        let (limiter_leases, limiter_pending) = self.limiter.figures();
        self.metrics.render(NodeFigures {
            store: Some(store),
            limiter_leases,
            limiter_pending,
            apis_loaded: self.apis().len() as u64,
            access_log_dropped: self.access_log.as_ref().map(AccessLog::dropped),
            spans_dropped: self.tracing.as_ref().map(Tracing::dropped_spans),
            analytics: self.analytics.as_ref().map(Analytics::figures),
        })
    }

    /// The routing table in force.
    pub fn apis(&self) -> arc_swap::Guard<Arc<ApiTable>> {
        self.apis.load()
    }

    /// The security policies in force.
    pub fn policies(&self) -> arc_swap::Guard<Arc<PolicyTable>> {
        self.policies.load()
    }

    /// Definition and policy files that failed at the last load, as `path: reason`.
    pub fn load_errors(&self) -> Arc<Vec<String>> {
        self.load_errors.load_full()
    }

    /// Reloads the API definitions and policies and swaps each table whole: requests in
    /// flight keep the tables they started with.
    pub async fn reload(&self) {
        let _serial = self.reload_lock.lock().await;
        let (dir, policies) = (self.app_path(), self.config.policies.clone());
        let defaults = self.api_defaults();
        let loaded =
            tokio::task::spawn_blocking(move || load_all(&dir, &policies, &defaults)).await;
        match loaded {
            Ok(loaded) => self.install(loaded),
            Err(e) => tracing::error!("API reload failed: {e}"),
        }
        // New certificates for new connections; open ones keep theirs. A file that cannot be
        // used keeps the ones in force.
        if let Some(current) = &self.listener_tls {
            match self.config.listener_tls() {
                Ok(Some(renewed)) => current.store(renewed),
                Ok(None) => {}
                Err(e) => tracing::error!("TLS certificates not reloaded: {e}"),
            }
        }
    }

    fn install(&self, (table, errors, policies, policy_errors): Loaded) {
        for e in &errors {
            tracing::warn!("API definition skipped: {e}");
        }
        for e in &policy_errors {
            tracing::warn!("policy skipped: {e}");
        }
        let errors: Vec<String> = errors
            .iter()
            .map(ToString::to_string)
            .chain(policy_errors.iter().map(ToString::to_string))
            .collect();
        for (id, fields) in policies.unhonoured() {
            tracing::warn!(
                policy = id,
                "policy fields not honoured by tollgate (ignored): {}",
                fields.join(", ")
            );
        }
        tracing::info!(policies = policies.len(), "policies loaded");
        self.policies.store(Arc::new(policies));
        for spec in table.specs() {
            if !spec.unhonoured.is_empty() {
                tracing::warn!(
                    api = spec.api_id(),
                    "API definition fields not honoured by tollgate (ignored): {}",
                    spec.unhonoured.join(", ")
                );
            }
        }
        tracing::info!(apis = table.len(), "API definitions loaded");
        self.apis.store(Arc::new(table));
        self.load_errors.store(Arc::new(errors));
    }
}

/// What a load reads: the routing table, the policies, and the files that failed.
type Loaded = (ApiTable, Vec<LoadError>, PolicyTable, Vec<PolicyLoadError>);

fn load_all(
    app_path: &std::path::Path,
    policies: &crate::config::PoliciesConfig,
    defaults: &GatewayDefaults,
) -> Loaded {
    let (table, errors) = ApiTable::load_dir(app_path, defaults);
    let (policies, policy_errors) = PolicyTable::load(policies);
    (table, errors, policies, policy_errors)
}
