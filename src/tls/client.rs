//! TLS to an HTTPS upstream: the settings an API resolves from `tyk.conf`
//! (`proxy_ssl_*`, `security.certificates.upstream`) and its definition
//! (`proxy.transport.ssl_*`, `upstream_certificates`), and the rustls client config built from
//! them once per upstream when definitions load.
//!
//! Server certificates are verified against the system's roots (which honour `SSL_CERT_FILE`
//! and `SSL_CERT_DIR`, as Go's do for Tyk), or webpki's when the system has none; the target's
//! host is sent as SNI and checked against the certificate.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{TlsError, alpn, certificates, invalid, private_key, provider, versions};

/// How an API reaches its HTTPS upstreams: the definition's `proxy.transport` over the
/// gateway's `proxy_ssl_*`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamTls {
    /// Either the API's or the gateway's flag (as Tyk: one is enough).
    pub insecure_skip_verify: bool,
    pub min_version: u16,
    pub max_version: u16,
    pub ciphers: Vec<String>,
    /// `proxy_enable_http2`: ALPN offers `h2` before `http/1.1`.
    pub http2: bool,
    /// Client certificates for upstream mutual TLS, host pattern → PEM file holding the
    /// certificate and its key; the API's entries first, then the gateway's.
    pub certificates: Vec<(String, String)>,
}

/// What a connection to one HTTPS upstream needs, built once.
#[derive(Debug)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl UpstreamTls {
    /// The client config for `host:port`.
    pub fn connect_to(&self, host: &str, port: u16) -> Result<ClientTls, TlsError> {
        let server_name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| invalid("proxy.target_url", format!("{host:?}: {e}")))?
            .to_owned();
        let provider = provider(&self.ciphers, "proxy.transport.ssl_ciphers")?;
        let versions = versions(
            self.min_version,
            self.max_version,
            "proxy.transport.ssl_min_version",
            "proxy.transport.ssl_max_version",
        )?;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| invalid("proxy.transport", e.to_string()))?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        } else {
            builder.with_root_certificates(system_roots())
        };
        let mut config = match self.client_certificate(host, port) {
            Some((pattern, pem)) => {
                let field = format!("upstream_certificates.{pattern}");
                let chain = certificates(Path::new(pem), &field)?;
                let key = private_key(Path::new(pem), &field)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| invalid(&field, e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn(self.http2);
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The certificate for `host:port` as Tyk picks it: an exact `host:port`, then `host`,
    /// then `*.` and the rest of the host after its first label, then `*`.
    fn client_certificate(&self, host: &str, port: u16) -> Option<(&str, &str)> {
        let with_port = format!("{host}:{port}");
        let wildcard = host.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        let candidates = [
            Some(with_port.as_str()),
            Some(host),
            wildcard.as_deref(),
            Some("*"),
        ];
        candidates.into_iter().flatten().find_map(|wanted| {
            self.certificates
                .iter()
                .find(|(pattern, _)| pattern == wanted)
                .map(|(pattern, pem)| (pattern.as_str(), pem.as_str()))
        })
    }

    /// The text that tells two settings apart, for keeping their connections apart.
    pub fn fingerprint(&self) -> String {
        format!("{self:?}")
    }
}

/// The system's trust roots, read once; webpki's when the system has none.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::warn!("reading the system's trust roots: {error}");
            }
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            Arc::new(roots)
        })
        .clone()
}

/// `ssl_insecure_skip_verify`: any certificate is taken, its signature on the handshake still
/// checked (so the connection is at least to the holder of the key it shows).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
