//! Helpers for the hot-reload and TLS tests: temporary config directories and the ways of
//! rewriting a file, keygate with its real file watcher (in process, or as the real binary with
//! its log), bounded polling for a reload, rcgen certificates, TLS clients and a TLS upstream.
//!
//! Waiting for a reload is always a bounded poll for the expected state ([`eventually`]), never
//! a fixed sleep; asserting that something does *not* change is a poll over a bounded window
//! ([`holds_for`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::client::TlsStream;

use super::*;

/// The longest a reload may take to show. Well below the 5 s periodic content check, so that a
/// change picked up in time was (almost always) seen by the watcher, not by that fallback.
pub const RELOAD_WAIT: Duration = Duration::from_secs(3);
/// Pause between two probes of a poll.
pub const POLL_EVERY: Duration = Duration::from_millis(10);
/// How long "nothing changes" is watched for.
pub const HOLD_WINDOW: Duration = Duration::from_millis(500);
/// Most probes a poll makes, whatever the clock says.
const MAX_PROBES: usize = 5_000;

/// Probes until `probe` returns `Some`, every [`POLL_EVERY`], for at most [`RELOAD_WAIT`].
pub async fn eventually<T>(what: &str, probe: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_for(RELOAD_WAIT, what, probe).await
}

/// Like [`eventually`], with another bound.
pub async fn eventually_for<T>(
    limit: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    for _ in 0..MAX_PROBES {
        if let Some(v) = probe().await {
            return v;
        }
        if start.elapsed() >= limit {
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    panic!("not within {limit:?}: {what}");
}

/// Probes every [`POLL_EVERY`] for [`HOLD_WINDOW`]; every probe must return `Ok`.
pub async fn holds_for(what: &str, mut probe: impl AsyncFnMut() -> Result<(), String>) {
    let start = Instant::now();
    let mut probes = 0;
    for _ in 0..MAX_PROBES {
        if let Err(e) = probe().await {
            panic!("{what}: broke after {:?}: {e}", start.elapsed());
        }
        probes += 1;
        if start.elapsed() >= HOLD_WINDOW {
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    assert!(probes >= 2, "{what}: only {probes} probes in the window");
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// A fresh directory under the system's temp dir, removed with everything in it when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "keygate-live-{}-{n}-{nanos}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a config file gets its new content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// Open for writing without truncating, write, then cut to length (same inode).
    InPlace,
    /// `std::fs::write`: truncate, then write (same inode).
    Truncate,
    /// Write a temporary file beside it, then rename it over the file (new inode).
    Rename,
}

/// Gives `path` the content `bytes`, the way `how` says.
pub fn write_file(path: &Path, bytes: &[u8], how: Edit) {
    use std::io::Write as _;
    match how {
        Edit::InPlace => {
            let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            f.write_all(bytes).unwrap();
            f.set_len(bytes.len() as u64).unwrap();
            f.sync_all().unwrap();
        }
        Edit::Truncate => std::fs::write(path, bytes).unwrap(),
        Edit::Rename => {
            let name = path.file_name().unwrap().to_string_lossy();
            let tmp = path.with_file_name(format!(".{name}.tmp"));
            std::fs::write(&tmp, bytes).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
pub fn replace_file(path: &Path, bytes: &[u8]) {
    write_file(path, bytes, Edit::Rename);
}

// ---------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------

/// `[server]` on `listen` with a failed-attempt limit far above what a poll sends (polling a
/// revoked key collects `key_invalid` answers), then `more` (e.g. a `[server.tls]` table).
pub fn server_toml(listen: &str, more: &str) -> String {
    format!("[server]\nlisten = \"{listen}\"\nfailed_auth_limit = \"10000/second\"\n\n{more}\n")
}

/// A `[[targets]]` table taking any host on `/`.
pub fn target_toml(name: &str, upstream_url: &str, extra: &str) -> String {
    format!("[[targets]]\nname = \"{name}\"\nupstream = \"{upstream_url}\"\n{extra}\n\n")
}

/// A `[[keys]]` table for `secret`, stored by hash, with extra lines (e.g. `rate_limit = ...`).
pub fn key_toml(id: &str, secret: &str, extra: &str) -> String {
    format!(
        "[[keys]]\nid = \"{id}\"\nhash = \"{}\"\n{extra}\n\n",
        hash_of(secret)
    )
}

/// A whole config: `127.0.0.1:0`, one target `main` on the plain upstream `up`, then `rest`.
pub fn plain_config(up: SocketAddr, rest: &str) -> String {
    format!(
        "{}{}{rest}",
        server_toml("127.0.0.1:0", ""),
        target_toml("main", &format!("http://{up}"), "")
    )
}

// ---------------------------------------------------------------------------------------------
// keygate with its reloader, in process
// ---------------------------------------------------------------------------------------------

/// keygate serving a config file with its real reloader, on a runtime of its own.
///
/// Its own runtime, shut down in the background when this is dropped, so that a reload thread
/// that never returns (a deadlock in keygate) fails the test instead of hanging it: dropping a
/// runtime waits for its blocking threads, `shutdown_background` does not.
pub struct Gate {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Loads `path` and serves it on a fresh `127.0.0.1:0` listener with the real reloader (file
/// watcher, SIGHUP, periodic check), exactly as `keygate run` does after binding.
pub fn start_live(path: &Path) -> Gate {
    let gateway = match super::load_quiet(path) {
        Ok(g) => g,
        Err(e) => panic!("test config {} is invalid: {e:#}", path.display()),
    };
    serve_live(gateway)
}

/// Like [`start_live`], with the config already loaded (the file may have changed since).
pub fn serve_live(gateway: keygate::Gateway) -> Gate {
    watch_panics();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("keygate-live")
        .enable_all()
        .build()
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        let listener = TcpListener::from_std(listener).unwrap();
        let served = super::launch::serve(gateway, listener, None).await;
        if let Err(e) = served {
            eprintln!("keygate failed to serve: {e:#}");
        }
    });
    Gate {
        addr,
        runtime: Some(runtime),
    }
}

/// The path every probe uses.
pub const PROBE_PATH: &str = "/live";

/// A GET of [`PROBE_PATH`] with `secret` in `X-API-Key`, on a fresh connection.
pub async fn call(addr: SocketAddr, secret: &str) -> Resp {
    get(addr, PROBE_PATH, &[("x-api-key", secret)]).await
}

/// Status and keygate's problem `code` ("" for an upstream answer) of a response.
pub fn outcome(resp: &Resp) -> (u16, String) {
    let code = if resp.header("content-type") == Some("application/problem+json") {
        resp.json()["code"].as_str().unwrap_or("").to_owned()
    } else {
        String::new()
    };
    (resp.status.as_u16(), code)
}

/// Polls until `secret` gets `status` (and problem `code`, "" for an upstream answer).
pub async fn until_status(addr: SocketAddr, secret: &str, status: u16, code: &str) -> Resp {
    let want = (status, code.to_owned());
    eventually(&format!("the key to get {status} {code:?}"), async || {
        let resp = call(addr, secret).await;
        (outcome(&resp) == want).then_some(resp)
    })
    .await
}

/// Asserts for [`HOLD_WINDOW`] that every secret in `expect` keeps getting its status and code.
pub async fn keeps_status(addr: SocketAddr, expect: &[(&str, u16, &str)]) {
    holds_for("the last good config", async || {
        for (secret, status, code) in expect {
            let got = outcome(&call(addr, secret).await);
            if got != (*status, (*code).to_owned()) {
                return Err(format!(
                    "key {secret:.12}…: want {status} {code:?}, got {got:?}"
                ));
            }
        }
        Ok(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// The crypto provider of every test TLS config, as keygate's.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test certificate authority (rcgen).
pub struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
    pub der: CertificateDer<'static>,
}

/// A certificate signed by a [`Ca`], with its key.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("keygate test CA {name}"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        params.use_authority_key_identifier_extension = true;
        params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ServerAuth);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// A client configuration trusting only `cas`, offering `alpn`; TLS 1.2 only when `tls12_only`,
/// else the defaults (1.3 and 1.2).
pub fn client_config(cas: &[&Ca], alpn: &[&str], tls12_only: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.der.clone()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(provider());
    let builder = if tls12_only {
        builder
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
    } else {
        builder.with_safe_default_protocol_versions().unwrap()
    };
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr`, verified as "localhost".
pub async fn tls_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("TLS handshake")
}

/// The certificate the server presented (leaf, DER).
pub fn peer_leaf(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a peer certificate")
        .to_vec()
}

/// The ALPN protocol agreed on, as text.
pub fn alpn_of(tls: &TlsStream<TcpStream>) -> Option<String> {
    tls.get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

impl H1 {
    /// HTTP/1.1 over an established TLS connection.
    pub async fn over_tls(tls: TlsStream<TcpStream>) -> H1 {
        H1::over(tls).await
    }
}

impl H2 {
    /// HTTP/2 over an established TLS connection.
    pub async fn over_tls(tls: TlsStream<TcpStream>) -> H2 {
        H2::over(tls).await
    }
}

/// An HTTP/2 GET of `https://localhost{path}` with these headers.
pub fn h2_get(path: &str, headers: &[(&str, &str)]) -> Request<TestBody> {
    h2_request_to("GET", &format!("https://localhost{path}"), headers, empty())
}

// ---------------------------------------------------------------------------------------------
// A TLS upstream
// ---------------------------------------------------------------------------------------------

/// An HTTPS upstream (HTTP/1.1 over TLS) that answers like the echo upstream.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    /// The SNI of every completed handshake, in order.
    sni: Arc<Mutex<Vec<Option<String>>>>,
    failed: Arc<AtomicUsize>,
}

impl TlsUpstream {
    pub fn sni(&self) -> Vec<Option<String>> {
        self.sni.lock().unwrap().clone()
    }

    /// Handshakes that did not complete (e.g. the client refused the certificate).
    pub fn failed_handshakes(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }
}

/// Starts an HTTPS upstream on `127.0.0.1:0` presenting `leaf`, labelled `label` in its echoes.
pub async fn start_tls_upstream(leaf: &Leaf, label: &str) -> TlsUpstream {
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sni = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let (seen, failures) = (sni.clone(), failed.clone());
    let label: Arc<str> = label.into();
    tokio::spawn(async move {
        for _ in 0..MAX_CONNECTIONS {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let (acceptor, seen, failures, label) = (
                acceptor.clone(),
                seen.clone(),
                failures.clone(),
                label.clone(),
            );
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                };
                let name = tls.get_ref().1.server_name().map(str::to_owned);
                seen.lock().unwrap().push(name);
                let service = service_fn(move |req| {
                    let label = label.clone();
                    async move { Ok::<_, Infallible>(echo(req, peer, label).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TlsUpstream { addr, sni, failed }
}
