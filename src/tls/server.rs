//! The TLS listener's configuration, from Tyk's `http_server_options`: `use_ssl`, the
//! certificates (`certificates` with their `domain_name`, and `ssl_certificates`, PEM files
//! with a certificate and its key), `min_version` / `max_version` and `ssl_ciphers`.
//!
//! The certificate for a handshake is picked by the name the client sends (SNI) as Go picks
//! it for Tyk: a `domain_name` equal to it, then one equal to it with its first label as
//! `*`, then the first of `ssl_certificates` whose own names cover it; else (no SNI, or no
//! match) the first certificate configured.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use super::{TlsError, alpn, certificates, invalid, private_key, provider, versions};

/// One entry of `http_server_options.certificates`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CertificateFiles {
    pub domain_name: String,
    pub cert_file: String,
    pub key_file: String,
}

/// What of `http_server_options` the TLS listener reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenerTlsSettings<'a> {
    pub certificates: &'a [CertificateFiles],
    pub ssl_certificates: &'a [String],
    pub min_version: u16,
    pub max_version: u16,
    pub ciphers: &'a [String],
    /// `enable_http2`: ALPN offers `h2` before `http/1.1`.
    pub http2: bool,
}

/// Builds the listener's rustls config, reading every certificate and key now: a file that
/// cannot be used is an error naming its field.
pub fn listener_config(settings: &ListenerTlsSettings<'_>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider(settings.ciphers, "http_server_options.ssl_ciphers")?;
    let versions = versions(
        settings.min_version,
        settings.max_version,
        "http_server_options.min_version",
        "http_server_options.max_version",
    )?;
    let mut named = Vec::new();
    for (i, files) in settings.certificates.iter().enumerate() {
        let field = format!("http_server_options.certificates[{i}]");
        let chain = certificates(Path::new(&files.cert_file), &format!("{field}.cert_file"))?;
        let key = private_key(Path::new(&files.key_file), &format!("{field}.key_file"))?;
        let key = certified(chain, key, &provider, &field)?;
        named.push((files.domain_name.to_ascii_lowercase(), key));
    }
    let mut covering = Vec::new();
    for (i, pem) in settings.ssl_certificates.iter().enumerate() {
        let field = format!("http_server_options.ssl_certificates[{i}]");
        let chain = certificates(Path::new(pem), &field)?;
        let key = private_key(Path::new(pem), &field)?;
        covering.push(certified(chain, key, &provider, &field)?);
    }
    let Some(default) = named.first().map(|(_, k)| k).or(covering.first()).cloned() else {
        return Err(invalid(
            "http_server_options.certificates",
            "use_ssl is on but no certificate is configured (certificates or ssl_certificates)",
        ));
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| invalid("http_server_options", e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ByServerName {
            named,
            covering,
            default,
        }));
    config.alpn_protocols = alpn(settings.http2);
    Ok(Arc::new(config))
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    field: &str,
) -> Result<Arc<CertifiedKey>, TlsError> {
    CertifiedKey::from_der(chain, key, provider)
        .map(Arc::new)
        .map_err(|e| invalid(field, format!("the key does not fit the certificate: {e}")))
}

/// The certificates by the names they serve (see the module's doc for the order).
#[derive(Debug)]
struct ByServerName {
    /// `certificates`, by `domain_name` (lower case).
    named: Vec<(String, Arc<CertifiedKey>)>,
    /// `ssl_certificates`, which serve the names in themselves.
    covering: Vec<Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ByServerName {
    fn pick(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let sni = sni.to_ascii_lowercase();
        let by_domain = |wanted: &str| {
            self.named
                .iter()
                .find(|(name, _)| name == wanted)
                .map(|(_, key)| key)
        };
        let wildcard = sni.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        by_domain(&sni)
            .or_else(|| wildcard.as_deref().and_then(by_domain))
            .or_else(|| {
                let name = ServerName::try_from(sni.as_str()).ok()?;
                self.covering.iter().find(|key| {
                    key.end_entity_cert()
                        .ok()
                        .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                        .is_some_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
                })
            })
    }
}

impl ResolvesServerCert for ByServerName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let picked = hello.server_name().and_then(|sni| self.pick(sni));
        Some(picked.unwrap_or(&self.default).clone())
    }
}
