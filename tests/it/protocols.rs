//! Client protocols: HTTP/2 with prior knowledge (h2c), HTTP/1.1 keep-alive, Upgrade passthrough.

use http::{StatusCode, Version};
use http_body_util::BodyExt as _;

use crate::harness::*;

async fn gateway() -> Gw {
    crate::harness::gateway().shared_keys().start().await
}

// --- h2c ------------------------------------------------------------------------------------

#[tokio::test]
async fn h2c_request_is_authenticated_and_forwarded() {
    let gw = gateway().await;
    let mut h2 = H2::connect(gw.addr).await;
    let req = h2_request(
        "POST",
        "client.example:8443",
        &format!("/h2/path?b=2&api_key={SECRET}&a=%20x"),
        &[("x-forwarded-for", "203.0.113.1")],
        full("twelve bytes"),
    );
    let resp = h2.send(req).await;
    assert_eq!(resp.version, Version::HTTP_2);
    let id = resp
        .header("x-request-id")
        .expect("X-Request-Id")
        .to_owned();
    let echo = resp.echo();
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.uri, "/h2/path?b=2&a=%20x");
    assert_eq!(echo.body_len, 12);
    assert_eq!(echo.version, "HTTP/1.1");
    assert!(!echo.has("x-api-key"));
    assert_eq!(echo.one("x-keygate-key-id"), Some("primary"));
    assert_eq!(echo.one("x-keygate-consumer"), Some("acme"));
    assert_eq!(
        echo.all("x-forwarded-for").join(", "),
        "203.0.113.1, 127.0.0.1"
    );
    assert_eq!(echo.one("x-forwarded-proto"), Some("http"));
    // HTTP/2 has no Host header: the client's host is its :authority.
    assert_eq!(echo.one("x-forwarded-host"), Some("client.example:8443"));
    assert_eq!(echo.one("x-request-id"), Some(id.as_str()));
}

#[tokio::test]
async fn h2c_errors_are_problem_json() {
    let gw = gateway().await;
    let mut h2 = H2::connect(gw.addr).await;
    for (headers, code) in [
        (&[][..], "key_missing"),
        (&[("x-api-key", "nope")][..], "key_invalid"),
        (&[("x-api-key", SECRET_INACTIVE)][..], "key_inactive"),
        (&[("x-api-key", SECRET_EXPIRED)][..], "key_expired"),
    ] {
        let resp = h2
            .send(h2_request("GET", "gw", "/r", headers, empty()))
            .await;
        assert_eq!(resp.version, Version::HTTP_2, "{code}");
        assert_problem(&resp, 403, code);
    }
    // The same connection still carries a good request.
    let resp = h2
        .send(h2_request(
            "GET",
            "gw",
            "/r",
            &[("x-api-key", SECRET)],
            empty(),
        ))
        .await;
    assert_eq!(resp.echo().uri, "/r");
    assert_eq!(gw.hits(), 1);
}

#[tokio::test]
async fn h2c_routes_by_authority() {
    let gw = crate::harness::gateway()
        .target(target("any").path_prefix("/api"))
        .target(target("hosted").hosts(&["api.example.com"]))
        .shared_keys()
        .start()
        .await;
    let mut h2 = H2::connect(gw.addr).await;
    let key = [("x-api-key", SECRET)];
    let resp = h2
        .send(h2_request("GET", "API.Example.com:9", "/x", &key, empty()))
        .await;
    assert_eq!(resp.echo().upstream, "hosted");
    let resp = h2
        .send(h2_request("GET", "other.example", "/api/x", &key, empty()))
        .await;
    assert_eq!(resp.echo().upstream, "any");
    let resp = h2
        .send(h2_request("GET", "other.example", "/x", &key, empty()))
        .await;
    assert_problem(&resp, 404, "no_route");
}

#[tokio::test]
async fn h2c_carries_concurrent_streams_on_one_connection() {
    let gw = gateway().await;
    let h2 = H2::connect(gw.addr).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut h2 = h2.clone();
        tasks.push(tokio::spawn(async move {
            let path = format!("/stream/{i}");
            let resp = h2
                .send(h2_request(
                    "GET",
                    "gw",
                    &path,
                    &[("x-api-key", SECRET)],
                    empty(),
                ))
                .await;
            assert_eq!(resp.echo().uri, path);
        }));
    }
    for t in tasks {
        within("h2 stream", t).await.unwrap();
    }
    assert_eq!(gw.hits(), 20);
}

#[tokio::test]
async fn h2c_streams_large_bodies_both_ways() {
    let gw = gateway().await;
    let mut h2 = H2::connect(gw.addr).await;
    let size = 8 * 1024 * 1024;
    let req = h2_request(
        "PUT",
        "gw",
        "/up",
        &[("x-api-key", SECRET)],
        full(pattern(0, size)),
    );
    assert_eq!(h2.send(req).await.echo().body_len, size as u64);

    let req = h2_request(
        "GET",
        "gw",
        "/down",
        &[("x-api-key", SECRET), ("x-reply-bytes", &size.to_string())],
        empty(),
    );
    let resp = h2.send_streaming(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(count_body(resp.into_body()).await, size as u64);
}

// --- HTTP/1.1 keep-alive ------------------------------------------------------------------

#[tokio::test]
async fn http1_keep_alive_serves_many_requests_on_one_connection() {
    let gw = gateway().await;
    let mut raw = Raw::connect(gw.addr).await;
    for i in 0..5 {
        let req = format!("GET /ka/{i} HTTP/1.1\r\nHost: gw\r\nX-API-Key: {SECRET}\r\n\r\n");
        raw.write(req.as_bytes()).await;
        let echo = raw.read_response().await.echo();
        assert_eq!(echo.uri, format!("/ka/{i}"));
    }
    // A keygate error in between keeps the connection too.
    raw.write(b"GET /ka HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    assert_problem(&raw.read_response().await, 403, "key_missing");
    // Pipelined: two requests written at once, two answers in order.
    let two = format!(
        "GET /p/1 HTTP/1.1\r\nHost: gw\r\nX-API-Key: {SECRET}\r\n\r\nGET /p/2 HTTP/1.1\r\nHost: gw\r\nX-API-Key: {SECRET}\r\n\r\n"
    );
    raw.write(two.as_bytes()).await;
    assert_eq!(raw.read_response().await.echo().uri, "/p/1");
    assert_eq!(raw.read_response().await.echo().uri, "/p/2");
    // Connection: close is honoured: the answer comes, then the connection ends.
    raw.write(
        format!(
            "GET /bye HTTP/1.1\r\nHost: gw\r\nX-API-Key: {SECRET}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw.read_response().await.echo().uri, "/bye");
    let mut rest = Vec::new();
    let n = within(
        "close",
        tokio::io::AsyncReadExt::read_to_end(&mut raw.stream, &mut rest),
    )
    .await
    .unwrap_or(0);
    assert_eq!(
        n,
        0,
        "bytes after Connection: close: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// `Expect: 100-continue` (curl sends it for larger uploads): the client holds its body back
/// until it hears `100 Continue`, so keygate must let that through instead of waiting for it.
#[tokio::test]
async fn expect_100_continue_uploads_go_through() {
    let gw = gateway().await;
    let mut raw = Raw::connect(gw.addr).await;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: gw\r\nX-API-Key: {SECRET}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    );
    raw.write(head.as_bytes()).await;
    let interim = raw.read_response().await;
    assert_eq!(interim.status, StatusCode::CONTINUE);
    raw.write(b"hello").await;
    let echo = raw.read_response().await.echo();
    assert_eq!(echo.body_len, 5);
    assert_eq!(echo.method, "POST");
}

/// A refused upload is refused at once: no `100 Continue`, no waiting for the body.
#[tokio::test]
async fn expect_100_continue_without_a_key_is_refused_before_the_body() {
    let gw = gateway().await;
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(
        b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert_problem(&raw.read_response().await, 403, "key_missing");
    assert_eq!(gw.hits(), 0);
}

// --- Upgrade (WebSocket) --------------------------------------------------------------------

fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /ws?room=1 HTTP/1.1\r\n\
         Host: gw\r\n\
         Connection: Upgrade\r\n\
         Upgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         {extra}\r\n"
    )
}

/// Connects to `gw`, sends the upgrade request `req` and returns the connection, now a tunnel,
/// once keygate has answered 101.
async fn upgraded(gw: &Gw, req: &str) -> Raw {
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(req.as_bytes()).await;
    let resp = raw.read_response().await;
    assert_eq!(resp.status, StatusCode::SWITCHING_PROTOCOLS, "{resp:?}");
    raw
}

/// Reads `raw` to the end of its stream, within the harness's time limit (`what` names the
/// wait); how many bytes came.
async fn read_to_eof(raw: &mut Raw, what: &str) -> usize {
    let mut rest = Vec::new();
    within(
        what,
        tokio::io::AsyncReadExt::read_to_end(&mut raw.stream, &mut rest),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn upgrade_with_a_valid_key_passes_through_and_bytes_flow_both_ways() {
    let gw = gateway().await;
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(upgrade_request(&format!("X-API-Key: {SECRET}\r\n")).as_bytes())
        .await;
    let resp = raw.read_response().await;
    assert_eq!(resp.status, StatusCode::SWITCHING_PROTOCOLS, "{:?}", resp);
    assert_eq!(
        resp.header("upgrade")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket")
    );
    // The upstream saw the identity, not the credential.
    assert_eq!(resp.header("x-echo-key-id"), Some("primary"));
    assert_eq!(resp.header("x-echo-api-key"), Some("absent"));
    assert_eq!(gw.hits(), 1);

    // Bytes both ways, several round trips, including binary and a larger message.
    let messages: [&[u8]; 4] = [
        b"ping",
        b"\x00\xff\x81binary\r\n\r\n",
        b"x",
        &[7u8; 100_000],
    ];
    for message in messages {
        raw.write(message).await;
        let back = raw.read_exact(message.len()).await;
        assert_eq!(back, message);
    }
    // Closing our side closes the tunnel: the upstream's echo ends, and so does our stream.
    within(
        "shutdown",
        tokio::io::AsyncWriteExt::shutdown(&mut raw.stream),
    )
    .await
    .unwrap();
    assert_eq!(read_to_eof(&mut raw, "tunnel close").await, 0);
}

/// When the upstream ends its side of a tunnel, the client sees the end of the stream while its
/// own side stays open: keygate passes the half-close on with a real shutdown of the client
/// socket (a plain connection that hyper closes gets none: `close` sends the FIN).
#[tokio::test]
async fn an_upstream_half_close_reaches_the_client_while_it_can_still_send() {
    let gw = gateway().await;
    let req = upgrade_request(&format!("X-API-Key: {SECRET}\r\n")).replacen(
        "/ws?room=1",
        "/ws-half-close",
        1,
    );
    let mut raw = upgraded(&gw, &req).await;
    assert_eq!(raw.read_exact(3).await, b"bye");
    assert_eq!(
        read_to_eof(&mut raw, "the upstream's half-close").await,
        0,
        "nothing after bye"
    );
    // Our side is still open: what we send is still carried.
    within(
        "a write after the half-close",
        tokio::io::AsyncWriteExt::write_all(&mut raw.stream, b"still here"),
    )
    .await
    .unwrap();
}

/// Firefox sends `Connection: keep-alive, Upgrade`: still an upgrade, and `Upgrade` survives
/// the removal of the headers `Connection` names.
#[tokio::test]
async fn upgrade_with_a_connection_token_list_passes_through() {
    let gw = gateway().await;
    let req = upgrade_request(&format!("X-API-Key: {SECRET}\r\n")).replacen(
        "Connection: Upgrade",
        "Connection: keep-alive, Upgrade",
        1,
    );
    let mut raw = upgraded(&gw, &req).await;
    raw.write(b"both ways").await;
    assert_eq!(raw.read_exact(9).await, b"both ways");
}

#[tokio::test]
async fn upgrade_with_the_key_in_the_query_passes_through() {
    let gw = gateway().await;
    let mut raw = Raw::connect(gw.addr).await;
    let req = upgrade_request("").replacen("/ws?room=1", &format!("/ws?api_key={SECRET}"), 1);
    raw.write(req.as_bytes()).await;
    let resp = raw.read_response().await;
    assert_eq!(resp.status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.header("x-echo-key-id"), Some("primary"));
    raw.write(b"hello").await;
    assert_eq!(raw.read_exact(5).await, b"hello");
}

#[tokio::test]
async fn upgrade_without_a_valid_key_is_refused_and_never_reaches_the_upstream() {
    let gw = gateway().await;
    let resp = raw_exchange(gw.addr, upgrade_request("").as_bytes()).await;
    assert_problem(&resp, 403, "key_missing");
    let resp = raw_exchange(gw.addr, upgrade_request("X-API-Key: wrong\r\n").as_bytes()).await;
    assert_problem(&resp, 403, "key_invalid");
    let resp = raw_exchange(
        gw.addr,
        upgrade_request(&format!("X-API-Key: {SECRET_INACTIVE}\r\n")).as_bytes(),
    )
    .await;
    assert_problem(&resp, 403, "key_inactive");
    assert_eq!(gw.hits(), 0);
}

#[tokio::test]
async fn an_upstream_that_declines_the_upgrade_answers_normally() {
    let up = start_upstream_with(|_req, _| async {
        http::Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(full("no websockets here"))
            .unwrap()
    })
    .await;
    let addr = gateway_to(up.addr).await.addr;
    let mut h1 = H1::connect(addr).await;
    let req = request(
        "GET",
        "/ws",
        &[
            ("x-api-key", SECRET),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
        ],
        empty(),
    );
    let resp = h1.send_streaming(req).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"no websockets here");
}

/// An upgraded tunnel keeps its connection's place under `max_connections` and its count in
/// `keygate_open_connections` until it closes (hyper is done with the connection as soon as it
/// hands the socket to the tunnel, but the socket is still open): with `max_connections = 2`
/// and two tunnels open, a third client waits; closing one tunnel lets it in. Real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_tunnels_hold_their_place_under_max_connections() {
    use crate::harness::admin::{Files, Process, STATIC_SECRET, open_connections, poll};
    use std::time::Duration;

    let files = Files::for_binary_with("tunnel-slots", "max_connections = 2", None).await;
    let kg = Process::start(&files.config).await;
    let mut a = open_tunnel(kg.proxy, STATIC_SECRET).await;
    let mut b = open_tunnel(kg.proxy, STATIC_SECRET).await;
    echo_through(&mut a, b"a").await;
    echo_through(&mut b, b"b").await;
    let admin = kg.admin;
    poll(Duration::from_secs(5), "two open connections", async || {
        (open_connections(admin).await == 2.0).then_some(())
    })
    .await;

    let proxy = kg.proxy;
    let mut third = tokio::spawn(async move {
        let req = request("GET", "/live", &[("x-api-key", STATIC_SECRET)], empty());
        H1::connect(proxy).await.send(req).await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "a third connection was served while two tunnels were open"
    );
    assert_eq!(
        open_connections(admin).await,
        2.0,
        "the tunnels, still open"
    );
    echo_through(&mut a, b"still open").await;

    close_tunnel(&mut a, Duration::from_secs(5)).await;
    let resp = within("the third client is served once a tunnel closed", third)
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    echo_through(&mut b, b"b again").await;

    close_tunnel(&mut b, Duration::from_secs(5)).await;
    poll(Duration::from_secs(5), "no open connection", async || {
        (open_connections(admin).await == 0.0).then_some(())
    })
    .await;
    let (status, log) = kg.terminate().await;
    assert!(status.success(), "{status}: {log:#?}");
}
