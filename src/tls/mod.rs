//! TLS with rustls, configured from Tyk's fields: protocol versions by Tyk's numbers
//! (769-772), cipher suites by Go's names, certificates and keys from PEM files. `client`
//! builds what an API's HTTPS upstream needs; `server` the TLS listener with its certificates
//! picked by SNI.
//!
//! Only rustls's own suites and versions exist here: TLS 1.2 and 1.3, AEAD suites with
//! ECDHE. A Tyk setting that asks for something older is reported, never silently widened.

pub mod client;
pub mod server;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

/// A TLS setting that cannot be used, naming the field.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{field}: {reason}")]
pub struct TlsError {
    pub field: String,
    pub reason: String,
}

pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> TlsError {
    TlsError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// The ALPN protocols offered: `h2` first when HTTP/2 is on, then `http/1.1`.
pub(crate) fn alpn(http2: bool) -> Vec<Vec<u8>> {
    let mut protocols = Vec::with_capacity(2);
    if http2 {
        protocols.push(b"h2".to_vec());
    }
    protocols.push(b"http/1.1".to_vec());
    protocols
}

/// Tyk's protocol numbers: 771 is TLS 1.2, 772 TLS 1.3 (769 and 770, TLS 1.0 and 1.1, are
/// not offered by rustls). 0 is "no bound".
pub(crate) fn versions(
    min: u16,
    max: u16,
    min_field: &str,
    max_field: &str,
) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
    let known = |value: u16, field: &str| match value {
        0 | 769..=772 => Ok(value),
        _ => Err(invalid(
            field,
            format!("{value} is not a TLS version (771: TLS 1.2, 772: TLS 1.3)"),
        )),
    };
    let (min, max) = (known(min, min_field)?, known(max, max_field)?);
    if max != 0 && max < 771 {
        return Err(invalid(
            max_field,
            format!("{max} asks for TLS 1.1 or older, which tollgate does not speak"),
        ));
    }
    let mut offered = Vec::new();
    if min <= 771 && (max == 0 || max >= 771) {
        offered.push(&rustls::version::TLS12);
    }
    if max == 0 || max >= 772 {
        offered.push(&rustls::version::TLS13);
    }
    if offered.is_empty() {
        return Err(invalid(min_field, format!("{min} is above {max_field}")));
    }
    Ok(offered)
}

/// The ring provider with its TLS 1.2 suites cut to `names` (Go's names, as Tyk's
/// `ssl_ciphers`; case ignored). TLS 1.3 suites are always offered: TLS 1.3 has no cipher
/// choice in Go either. None left of a non-empty list is an error.
pub(crate) fn provider(names: &[String], field: &str) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if names.is_empty() {
        return Ok(Arc::new(provider));
    }
    provider
        .cipher_suites
        .retain(|s| s.tls13().is_some() || names.iter().any(|n| is_named(s, n)));
    if !provider.cipher_suites.iter().any(|s| s.tls13().is_none()) {
        return Err(invalid(
            field,
            format!(
                "none of {names:?} is a TLS 1.2 suite tollgate offers (ECDHE with AES-GCM or \
                 ChaCha20-Poly1305)"
            ),
        ));
    }
    Ok(Arc::new(provider))
}

/// The names in `names` that are no suite rustls offers (CBC, RSA key exchange, 3DES, or
/// misspelt), to be reported: Tyk skips them silently.
pub fn lacking_ciphers(names: &[String]) -> Vec<String> {
    let suites = rustls::crypto::ring::default_provider().cipher_suites;
    names
        .iter()
        .filter(|n| !suites.iter().any(|s| is_named(s, n)))
        .cloned()
        .collect()
}

/// Whether `name`, as Go names suites, is `suite`: Go drops rustls's `TLS13_` (`TLS_AES_…`)
/// and accepts the ChaCha20 suites without their `_SHA256`.
fn is_named(suite: &SupportedCipherSuite, name: &str) -> bool {
    let Some(own) = suite.suite().as_str() else {
        return false;
    };
    let own = own.replacen("TLS13_", "TLS_", 1);
    own.eq_ignore_ascii_case(name)
        || own
            .strip_suffix("_SHA256")
            .is_some_and(|legacy| legacy.ends_with("POLY1305") && legacy.eq_ignore_ascii_case(name))
}

/// Every certificate in a PEM file, in order (a leaf, then its chain).
pub(crate) fn certificates(
    path: &Path,
    field: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
    if read.is_empty() {
        return Err(invalid(
            field,
            format!("{}: no certificate in it", path.display()),
        ));
    }
    Ok(read)
}

/// The private key in a PEM file.
pub(crate) fn private_key(path: &Path, field: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        invalid(
            field,
            format!("{}: no private key read: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tyk_version_numbers_become_rustls_versions() {
        let offered = |min, max| versions(min, max, "min", "max").map(|v| v.len());
        assert_eq!(offered(0, 0), Ok(2));
        assert_eq!(
            offered(769, 0),
            Ok(2),
            "an older minimum offers what rustls has"
        );
        assert_eq!(offered(772, 0), Ok(1));
        assert_eq!(offered(0, 771), Ok(1));
        assert_eq!(offered(0, 770).unwrap_err().field, "max");
        assert_eq!(offered(5, 0).unwrap_err().field, "min");
        assert_eq!(offered(772, 771).unwrap_err().field, "min");
    }

    #[test]
    fn ciphers_are_named_as_go_names_them() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ok = names(&[
            "tls_ecdhe_rsa_with_aes_128_gcm_sha256",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
            "TLS_AES_128_GCM_SHA256",
        ]);
        assert!(lacking_ciphers(&ok).is_empty());
        let suites = provider(&ok, "f").unwrap().cipher_suites.len();
        let all = rustls::crypto::ring::default_provider().cipher_suites.len();
        assert!(suites < all, "TLS 1.2 suites cut to those named");
        let old = names(&["TLS_RSA_WITH_AES_128_CBC_SHA"]);
        assert_eq!(lacking_ciphers(&old), old);
        assert_eq!(provider(&old, "f").unwrap_err().field, "f");
    }
}
