//! TLS on both sides (rustls, ring provider).
//!
//! - Listener: [`CertStore`] answers every handshake with the current certificate. The reloader
//!   re-reads the PEM files on each reload trigger and swaps in a new certificate only when it
//!   parses and matches its key, so a renewed certificate reaches new connections without a
//!   restart and a broken one changes nothing. ALPN offers `h2` and `http/1.1`; TLS 1.2 and 1.3.
//! - Upstreams: [`Connector`] is the one connector of the pooled upstream client. For an
//!   `https://` upstream it takes the target's verifier (system roots, or the target's
//!   `ca_file`) from the current snapshot and sends the upstream's host as SNI.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::Uri;
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service as _;

use crate::model::TlsFiles;
use crate::state::Published;

/// The crypto provider for both sides: ring builds with nothing but a C compiler.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Reads and checks a certificate chain and its key; also returns a digest of both files, so
/// an unchanged pair is not parsed again.
pub fn load_certified_key(files: &TlsFiles) -> Result<(Arc<CertifiedKey>, [u8; 32]), String> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| format!("{}: cannot read: {e}", p.display()));
    let (cert_pem, key_pem) = (read(&files.cert)?, read(&files.key)?);
    let digest = Sha256::new()
        .chain_update(&cert_pem)
        .chain_update(&key_pem)
        .finalize()
        .into();
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate in the file",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", files.key.display()))?;
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    Ok((Arc::new(certified), digest))
}

/// The listener's current certificate, swapped whole on reload.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    /// Digest of the files last tried, good or bad, and whether they failed.
    seen: Mutex<([u8; 32], bool)>,
}

impl CertStore {
    pub fn load(files: &TlsFiles) -> Result<CertStore, String> {
        let (key, digest) = load_certified_key(files)?;
        Ok(CertStore {
            current: ArcSwap::new(key),
            seen: Mutex::new((digest, false)),
        })
    }

    /// Re-reads `files`; swaps in the new certificate when they changed and are good. Errors
    /// are logged once per distinct content; the current certificate keeps serving.
    pub fn refresh(&self, files: &TlsFiles) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let read = std::fs::read(&files.cert).and_then(|c| Ok((c, std::fs::read(&files.key)?)));
        if let Ok((c, k)) = &read {
            let digest: [u8; 32] = Sha256::new()
                .chain_update(c)
                .chain_update(k)
                .finalize()
                .into();
            if digest == seen.0 {
                return false;
            }
        }
        match load_certified_key(files) {
            Ok((key, digest)) => {
                self.current.store(key);
                *seen = (digest, false);
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                if !seen.1 {
                    tracing::error!("TLS certificate reload failed, keeping the current one: {e}");
                }
                if let Ok((c, k)) = &read {
                    seen.0 = Sha256::new()
                        .chain_update(c)
                        .chain_update(k)
                        .finalize()
                        .into();
                }
                seen.1 = true;
                false
            }
        }
    }

    /// The rustls configuration of the listener: this store, ALPN h2 then http/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The verifier for an `https://` upstream: the system's roots, or only those in `ca_file`.
pub fn upstream_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let roots = match ca_file {
        None => system_roots()?,
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no certificate in the file", path.display()));
            }
            Arc::new(roots)
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Upstreams are spoken to in HTTP/1.1, like plain ones.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The OS trust store, read once per process.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no system CA certificates found ({} errors); install ca-certificates or set ca_file",
                    found.errors.len()
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Plain TCP for `http://` upstreams, TCP + TLS for `https://` ones.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    published: Arc<Published>,
}

impl Connector {
    pub fn new(published: Arc<Published>) -> Connector {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        // The scheme is ours to handle: TLS is added below for https.
        http.enforce_http(false);
        Connector { http, published }
    }

    /// The verifier of the target that owns this upstream, from the current snapshot.
    fn tls_for(&self, uri: &Uri) -> Option<Arc<ClientConfig>> {
        let snap = self.published.load();
        snap.targets
            .iter()
            .find(|t| t.scheme == Scheme::HTTPS && Some(&t.authority) == uri.authority())
            .and_then(|t| t.tls.clone())
    }
}

impl Connector {
    /// A new connection to `scheme://authority`: TCP (resolved, `TCP_NODELAY`), and for
    /// `https` the TLS handshake with the target's verifier, the upstream's host as SNI.
    pub async fn open(&self, scheme: &Scheme, authority: &Authority) -> Result<Stream, BoxError> {
        let https = *scheme == Scheme::HTTPS;
        let uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()?;
        let tls = if https { self.tls_for(&uri) } else { None };
        let tcp = self.http.clone().call(uri).await?.into_inner();
        if !https {
            return Ok(Stream::Plain(tcp));
        }
        let config = tls.ok_or("no TLS settings for this upstream (target removed?)")?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        Ok(Stream::Tls(Box::new(stream)))
    }
}

/// An upstream connection: plain, or TLS (boxed: rustls's state is large, plain is common).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
