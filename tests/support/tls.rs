//! Certificates made by `openssl` for a test (a CA, and certificates it issues), and a TLS
//! front: a TLS server that forwards each connection's bytes to a plain address, as an HTTPS
//! upstream in front of the built-in one.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A test CA in its own directory; `issue` makes certificates signed by it.
pub struct TestCa {
    pub dir: tempfile::TempDir,
}

const NEW_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

impl TestCa {
    pub fn new() -> Self {
        let ca = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        ca.openssl(
            &[
                &["req", "-x509"][..],
                &NEW_KEY,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=tollgate test CA",
                ],
            ]
            .concat(),
        );
        ca
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl (run scripts/test to install it): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `<name>.crt` and `<name>.key` signed by the CA with the X.509 v3 `extensions` (the
    /// only version rustls accepts), and `<name>.pem` holding both.
    pub fn issue(&self, name: &str, extensions: &str) {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        std::fs::write(self.dir.path().join(&ext), extensions).unwrap();
        let subject = format!("/CN=tollgate test {name}");
        self.openssl(
            &[
                &["req"][..],
                &NEW_KEY,
                &["-keyout", &key, "-out", &csr, "-subj", &subject],
            ]
            .concat(),
        );
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
        let both = [
            std::fs::read(self.dir.path().join(&crt)).unwrap(),
            std::fs::read(self.dir.path().join(&key)).unwrap(),
        ]
        .concat();
        std::fs::write(self.dir.path().join(format!("{name}.pem")), both).unwrap();
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn issue_server(&self, name: &str) {
        self.issue(
            name,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
    }

    pub fn issue_client(&self, name: &str) {
        self.issue(name, "extendedKeyUsage=clientAuth\n");
    }

    /// The path of one of its files (`ca.crt`, `<name>.crt`, `<name>.key`, `<name>.pem`).
    pub fn file(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }
}

/// A TLS server on a free loopback port forwarding every connection to `backend`; with a
/// client CA, it asks for (and requires) a client certificate that CA issued. It offers
/// ALPN `h2` and `http/1.1`, passing the bytes on whichever the client picks.
pub struct TlsFront {
    pub addr: SocketAddr,
    /// Connections whose handshake succeeded.
    pub handshakes: Arc<AtomicUsize>,
    /// Of those, the ones that agreed on `h2`.
    pub http2: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsFront {
    pub async fn start(
        cert: &str,
        key: &str,
        client_ca: Option<&str>,
        backend: SocketAddr,
    ) -> Self {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).unwrap() {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let http2 = Arc::new(AtomicUsize::new(0));
        let counted = handshakes.clone();
        let counted_http2 = http2.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let counted = counted.clone();
                let counted_http2 = counted_http2.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        counted_http2.fetch_add(1, Ordering::SeqCst);
                    }
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Self {
            addr,
            handshakes,
            http2,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
