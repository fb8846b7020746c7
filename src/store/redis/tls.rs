//! TLS to Redis and the sentinels, from Tyk's `storage` fields, read and checked at start.

use super::*;

/// How connections to Redis and to the sentinels are secured (`use_ssl` and its files),
/// read and parsed once at start: a TLS address whose host and port each connection replaces
/// (redis-rs does not export the type of its parsed certificates, only addresses holding them).
pub(super) struct RedisTls {
    template: ConnectionAddr,
}

impl RedisTls {
    /// `None` without `use_ssl`. An unreadable file, or one with no PEM block of the kind
    /// expected, is an error naming its field.
    pub(super) fn load(config: &StorageConfig) -> Result<Option<Self>, ConfigError> {
        if !config.use_ssl {
            return Ok(None);
        }
        let read = |field: &str, path: &str, block: &str| -> Result<Option<Vec<u8>>, ConfigError> {
            if path.is_empty() {
                return Ok(None);
            }
            let invalid = |reason: String| ConfigError::InvalidField {
                field: field.to_owned(),
                reason,
            };
            let pem =
                std::fs::read(path).map_err(|e| invalid(format!("cannot read {path:?}: {e}")))?;
            if !String::from_utf8_lossy(&pem).contains(block) {
                return Err(invalid(format!("{path:?} holds no PEM {block}")));
            }
            Ok(Some(pem))
        };
        let root_cert = read("storage.ca_file", &config.ca_file, "CERTIFICATE-----")?;
        let client_cert = read("storage.cert_file", &config.cert_file, "CERTIFICATE-----")?;
        let client_key = read("storage.key_file", &config.key_file, "PRIVATE KEY-----")?;
        let client_tls = client_cert
            .zip(client_key)
            .map(|(client_cert, client_key)| ClientTlsConfig {
                client_cert,
                client_key,
            });
        let template = ConnectionAddr::TcpTls {
            host: String::new(),
            port: 0,
            insecure: config.ssl_insecure_skip_verify,
            tls_params: None,
        };
        // redis-rs parses certificates only while building a client. With both, the CA file is
        // parsed alone first, so that an error names the right field.
        let parse = |field: &str, certs: TlsCertificates| {
            template
                .clone()
                .into_connection_info()
                .and_then(|info| redis::Client::build_with_tls(info, certs))
                .map(|client| client.get_connection_info().addr().clone())
                .map_err(|e| ConfigError::InvalidField {
                    field: field.to_owned(),
                    reason: e.to_string(),
                })
        };
        const CLIENT_PAIR: &str = "storage.cert_file, storage.key_file";
        let certs = TlsCertificates {
            client_tls,
            root_cert,
        };
        let template = match &certs {
            TlsCertificates {
                client_tls: None,
                root_cert: None,
            } => template,
            TlsCertificates {
                client_tls: None, ..
            } => parse("storage.ca_file", certs)?,
            TlsCertificates {
                root_cert: None, ..
            } => parse(CLIENT_PAIR, certs)?,
            TlsCertificates {
                root_cert: Some(ca),
                ..
            } => {
                let root_cert = Some(ca.clone());
                let ca_alone = TlsCertificates {
                    client_tls: None,
                    root_cert,
                };
                parse("storage.ca_file", ca_alone)?;
                parse(CLIENT_PAIR, certs)?
            }
        };
        Ok(Some(Self { template }))
    }

    /// The address of `host:port` with these settings.
    pub(super) fn addr(&self, host: &str, port: u16) -> ConnectionAddr {
        match self.template.clone() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure,
                tls_params,
            },
            _ => unreachable!("RedisTls holds a TLS address"),
        }
    }
}
