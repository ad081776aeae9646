//! TLS on both sides over real sockets, with certificates made in the test (rcgen): ALPN h2 and http/1.1, TLS 1.2, a certificate swap seen by new connections, https upstreams with a private CA, stalled handshakes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::{StatusCode, Version};
use rustls::ProtocolVersion;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

use crate::harness::live::*;
use crate::harness::*;

const SECRET_TLS: &str = "kg_live_tls_dGxzU2VjcmV0Rm9yVGxzVGVzdHNPbmx5MDE";

/// keygate with a TLS listener whose certificate lives in `<dir>/tls/`, a plain echo upstream
/// behind it, and one key.
struct TlsGate {
    /// First, so that keygate stops before its directory goes.
    _gate: Gate,
    dir: TempDir,
    addr: SocketAddr,
    _up: Upstream,
}

impl TlsGate {
    async fn start(name: &str, leaf: &Leaf, tls_extra: &str) -> TlsGate {
        let dir = TempDir::new(name);
        std::fs::create_dir(dir.join("tls")).unwrap();
        std::fs::write(dir.join("tls/cert.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("tls/key.pem"), &leaf.key_pem).unwrap();
        let up = start_upstream("main").await;
        let tls =
            format!("[server.tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n{tls_extra}\n");
        let config = format!(
            "{}{}{}",
            server_toml("127.0.0.1:0", &tls),
            target_toml("main", &format!("http://{}", up.addr), ""),
            key_toml("tls", SECRET_TLS, "")
        );
        let path = dir.join("keygate.toml");
        std::fs::write(&path, config).unwrap();
        let gate = start_live(&path);
        TlsGate {
            addr: gate.addr,
            _gate: gate,
            dir,
            _up: up,
        }
    }

    /// A new CA and a gate (`tls_extra` in `[server.tls]`) on a leaf it signed for
    /// `localhost`; both named `name`.
    async fn for_localhost(name: &str, tls_extra: &str) -> (Ca, TlsGate) {
        let ca = Ca::new(name);
        let gate = TlsGate::start(name, &ca.leaf(&["localhost"]), tls_extra).await;
        (ca, gate)
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("tls/cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("tls/key.pem")
    }
}

/// An HTTP/1.1 GET with the key, over `conn`: must reach the upstream over https.
async fn h1_call(conn: &mut H1, path: &str) -> Echo {
    let resp = conn
        .send(request("GET", path, &[("x-api-key", SECRET_TLS)], empty()))
        .await;
    assert_eq!(resp.version, Version::HTTP_11);
    let echo = resp.echo();
    assert_eq!(echo.one("x-forwarded-proto"), Some("https"));
    assert_eq!(echo.one("x-keygate-key-id"), Some("tls"));
    echo
}

/// An HTTP/2 GET with the key, over `conn`: must reach the upstream over https.
async fn h2_call(conn: &mut H2, path: &str) -> Echo {
    let resp = conn.send(h2_get(path, &[("x-api-key", SECRET_TLS)])).await;
    assert_eq!(resp.version, Version::HTTP_2);
    let echo = resp.echo();
    assert_eq!(echo.one("x-forwarded-proto"), Some("https"));
    assert_eq!(echo.one("x-keygate-key-id"), Some("tls"));
    echo
}

// --- the listener -----------------------------------------------------------------------------

#[tokio::test]
async fn a_client_offering_h2_negotiates_h2_and_is_served() {
    let (ca, gate) = TlsGate::for_localhost("alpn-h2", "").await;
    let tls = tls_connect(gate.addr, client_config(&[&ca], &["h2", "http/1.1"], false)).await;
    assert_eq!(alpn_of(&tls).as_deref(), Some("h2"));
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    let mut h2 = H2::over_tls(tls).await;
    for i in 0..3 {
        assert_eq!(
            h2_call(&mut h2, &format!("/h2/{i}")).await.uri,
            format!("/h2/{i}")
        );
    }
    // A keygate denial over h2 too.
    let denied = h2
        .send(h2_get("/h2", &[("x-api-key", "kg_wrong_0000")]))
        .await;
    assert_problem(&denied, 403, "key_invalid");
    assert_no_keygate_panic();
}

#[tokio::test]
async fn a_client_offering_only_http11_negotiates_http11_and_is_served() {
    let (ca, gate) = TlsGate::for_localhost("alpn-h1", "").await;
    let tls = tls_connect(gate.addr, client_config(&[&ca], &["http/1.1"], false)).await;
    assert_eq!(alpn_of(&tls).as_deref(), Some("http/1.1"));
    let mut h1 = H1::over_tls(tls).await;
    for i in 0..3 {
        assert_eq!(
            h1_call(&mut h1, &format!("/h1/{i}")).await.uri,
            format!("/h1/{i}")
        );
    }
    // A body on the same connection: keygate's own HTTP/1.1 server hands it, and the rest of
    // the connection, to hyper's under TLS too.
    let post = h1
        .send(request(
            "POST",
            "/h1/body",
            &[("x-api-key", SECRET_TLS)],
            full("hello"),
        ))
        .await;
    assert_eq!(post.echo().body_len, 5);
    assert_eq!(h1_call(&mut h1, "/h1/after").await.uri, "/h1/after");

    // No ALPN at all: HTTP/1.1.
    let tls = tls_connect(gate.addr, client_config(&[&ca], &[], false)).await;
    assert_eq!(alpn_of(&tls), None);
    h1_call(&mut H1::over_tls(tls).await, "/no-alpn").await;
    assert_no_keygate_panic();
}

#[tokio::test]
async fn tls12_is_accepted() {
    let (ca, gate) = TlsGate::for_localhost("tls12", "").await;
    let tls = tls_connect(gate.addr, client_config(&[&ca], &["h2"], true)).await;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    assert_eq!(alpn_of(&tls).as_deref(), Some("h2"));
    h2_call(&mut H2::over_tls(tls).await, "/v12").await;
}

/// A renewed certificate (from another CA, files written beside and renamed over) reaches new
/// connections without a restart, while a connection opened before keeps working. A broken
/// certificate file then changes nothing; the next good one is picked up.
#[tokio::test]
async fn a_swapped_certificate_is_served_to_new_connections() {
    let (ca1, ca2) = (Ca::new("first"), Ca::new("second"));
    let leaf1 = ca1.leaf(&["localhost"]);
    let leaf2 = ca2.leaf(&["localhost"]);
    let gate = TlsGate::start("cert-swap", &leaf1, "").await;
    let client = client_config(&[&ca1, &ca2], &["http/1.1"], false);

    let tls = tls_connect(gate.addr, client.clone()).await;
    assert_eq!(peer_leaf(&tls), leaf1.der.to_vec());
    let mut before = H1::over_tls(tls).await;
    h1_call(&mut before, "/before").await;

    replace_file(&gate.cert(), leaf2.cert_pem.as_bytes());
    replace_file(&gate.key(), leaf2.key_pem.as_bytes());
    // Every handshake during the swap succeeds, with the old pair or the new one.
    let presented = async |gate: &TlsGate| {
        let tls = tls_connect(gate.addr, client.clone()).await;
        (peer_leaf(&tls), tls)
    };
    let tls = eventually("the new certificate on a new connection", async || {
        let (leaf, tls) = presented(&gate).await;
        assert!(
            leaf == leaf1.der.to_vec() || leaf == leaf2.der.to_vec(),
            "a certificate that is neither the old nor the new one"
        );
        (leaf == leaf2.der.to_vec()).then_some(tls)
    })
    .await;
    h1_call(&mut H1::over_tls(tls).await, "/after").await;
    // The connection from before the swap is still served.
    h1_call(&mut before, "/before-again").await;
    assert!(!before.is_closed());

    // A broken certificate: new connections keep getting the last good one.
    let broken = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGUgYXQgYWxs\n-----END CERTIFICATE-----\n";
    replace_file(&gate.cert(), broken.as_bytes());
    holds_for("the last good certificate", async || {
        let (leaf, tls) = presented(&gate).await;
        if leaf != leaf2.der.to_vec() {
            return Err("another certificate was presented".into());
        }
        drop(tls);
        Ok(())
    })
    .await;

    // And the next good pair is picked up.
    let leaf3 = ca1.leaf(&["localhost"]);
    replace_file(&gate.cert(), leaf3.cert_pem.as_bytes());
    replace_file(&gate.key(), leaf3.key_pem.as_bytes());
    let tls = eventually("the fixed certificate", async || {
        let (leaf, tls) = presented(&gate).await;
        (leaf == leaf3.der.to_vec()).then_some(tls)
    })
    .await;
    h1_call(&mut H1::over_tls(tls).await, "/fixed").await;
    h1_call(&mut before, "/before-still").await;
    assert_no_keygate_panic();
}

// --- stalled handshakes -----------------------------------------------------------------------

/// Clients that connect and never start a handshake hold sockets, not the server.
#[tokio::test]
async fn stalled_handshakes_do_not_hold_up_other_clients() {
    let (ca, gate) = TlsGate::for_localhost("stalled-others", "").await;
    let mut stalled = Vec::new();
    for _ in 0..32 {
        stalled.push(
            within("connect", TcpStream::connect(gate.addr))
                .await
                .unwrap(),
        );
    }
    let client = client_config(&[&ca], &["h2", "http/1.1"], false);
    for i in 0..3 {
        let tls = within_for(
            Duration::from_secs(2),
            "a handshake beside stalled ones",
            tls_connect(gate.addr, client.clone()),
        )
        .await;
        let resp = H2::over_tls(tls)
            .await
            .send(h2_get(
                &format!("/beside/{i}"),
                &[("x-api-key", SECRET_TLS)],
            ))
            .await;
        assert_eq!(resp.status, StatusCode::OK);
    }
    drop(stalled);
}

/// `[server.tls] handshake_timeout` bounds a handshake that never starts (it used to be a fixed
/// 10 s whatever the config said); meanwhile other clients are served.
#[tokio::test]
async fn a_stalled_handshake_is_dropped_after_the_configured_handshake_timeout() {
    let (ca, gate) =
        TlsGate::for_localhost("stalled-timeout", "handshake_timeout = \"300ms\"").await;
    let mut raw = within("connect", TcpStream::connect(gate.addr))
        .await
        .unwrap();
    let started = Instant::now();

    // Meanwhile, other clients are served.
    let tls = tls_connect(gate.addr, client_config(&[&ca], &["http/1.1"], false)).await;
    h1_call(&mut H1::over_tls(tls).await, "/meanwhile").await;

    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), raw.read(&mut buf)).await;
    match read {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("keygate sent {n} bytes to a client that sent none"),
        Err(_) => panic!(
            "a handshake stalled for {:?} is still open (handshake_timeout = 300ms)",
            started.elapsed()
        ),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
}

// --- https upstreams --------------------------------------------------------------------------

/// keygate (plain listener) in front of `upstream_url`, with `target_extra` on the target.
async fn gate_to(name: &str, upstream_url: &str, target_extra: &str, ca: &Ca) -> (TempDir, Gate) {
    let dir = TempDir::new(name);
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    let config = format!(
        "{}{}{}",
        server_toml("127.0.0.1:0", ""),
        target_toml("secure", upstream_url, target_extra),
        key_toml("tls", SECRET_TLS, "")
    );
    let path = dir.join("keygate.toml");
    std::fs::write(&path, config).unwrap();
    (dir, start_live(&path))
}

/// An https upstream labelled `secure` on a leaf for `localhost` from a new private CA, and
/// keygate (files for `name`) in front of it, `target_extra` on the target: the upstream, the
/// directory and keygate.
async fn gate_to_a_private_ca_upstream(
    name: &str,
    target_extra: &str,
) -> (TlsUpstream, TempDir, Gate) {
    let ca = Ca::new(name);
    let up = start_tls_upstream(&ca.leaf(&["localhost"]), "secure").await;
    let url = format!("https://localhost:{}", up.addr.port());
    let (dir, gate) = gate_to(name, &url, target_extra, &ca).await;
    (up, dir, gate)
}

#[tokio::test]
async fn an_https_upstream_is_verified_against_its_ca_file_with_sni() {
    let (up, _dir, gate) = gate_to_a_private_ca_upstream("https-ca", "ca_file = \"ca.pem\"").await;
    let addr = gate.addr;

    for i in 0..3 {
        let echo = get(addr, &format!("/secure/{i}"), &[("x-api-key", SECRET_TLS)])
            .await
            .echo();
        assert_eq!(echo.upstream, "secure");
        assert_eq!(echo.uri, format!("/secure/{i}"));
        assert_eq!(echo.one("x-forwarded-proto"), Some("http"));
        assert_eq!(echo.one("x-keygate-key-id"), Some("tls"));
        assert!(!echo.has("x-api-key"));
    }
    let sni = up.sni();
    assert!(!sni.is_empty());
    assert!(
        sni.iter().all(|s| s.as_deref() == Some("localhost")),
        "SNI sent: {sni:?}"
    );
    assert_eq!(up.failed_handshakes(), 0);
    assert_no_keygate_panic();
}

#[tokio::test]
async fn an_https_upstream_from_a_private_ca_fails_against_the_system_roots() {
    let (up, _dir, gate) = gate_to_a_private_ca_upstream("https-system", "").await;
    let addr = gate.addr;

    let resp = get(addr, "/secure", &[("x-api-key", SECRET_TLS)]).await;
    assert_problem(&resp, 502, "upstream_unavailable");
    assert!(up.sni().is_empty(), "a handshake completed: {:?}", up.sni());
    eventually("the upstream to see the refused handshake", async || {
        (up.failed_handshakes() > 0).then_some(())
    })
    .await;
    assert_no_keygate_panic();
}
