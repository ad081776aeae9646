//! Step 6, forwarding: what the upstream sees, what comes back, and streaming both ways.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use tokio::sync::Notify;

use crate::harness::*;

async fn gateway() -> Gw {
    crate::harness::gateway().shared_keys().start().await
}

// --- the credential never travels on -------------------------------------------------------

#[tokio::test]
async fn upstream_never_sees_the_key_header() {
    let gw = gateway().await;
    let echo = gw.get("/r").header("X-API-Key", SECRET).echo().await;
    assert!(!echo.has("x-api-key"), "{:?}", echo.headers);
    assert_eq!(echo.uri, "/r");
}

#[tokio::test]
async fn upstream_never_sees_the_api_key_pair_and_the_rest_of_the_query_is_byte_identical() {
    let gw = gateway().await;
    for (sent, expected) in [
        (
            format!("/p?b=2&api_key={SECRET}&a=%20x&c"),
            "/p?b=2&a=%20x&c",
        ),
        (format!("/p?api_key={SECRET}"), "/p"),
        (
            format!("/p?api_key={SECRET}&z=%2F%2f&y=a+b"),
            "/p?z=%2F%2f&y=a+b",
        ),
        (format!("/p?z=1&&api_key={SECRET}"), "/p?z=1&"),
        (
            format!("/a/b%2Fc/?q=%E2%82%AC&api_key={SECRET}&q=2"),
            "/a/b%2Fc/?q=%E2%82%AC&q=2",
        ),
        // Every api_key pair goes, not only the one that was used.
        (
            format!("/p?api_key={SECRET}&x=1&api_key=another-secret"),
            "/p?x=1",
        ),
        // A name that decodes to api_key authenticates, so it is a credential too.
        (format!("/p?api%5Fkey={SECRET}&x=1"), "/p?x=1"),
        // Names that merely contain it are not the parameter.
        (
            format!("/p?my_api_key=1&api_key={SECRET}&api_keys=2"),
            "/p?my_api_key=1&api_keys=2",
        ),
    ] {
        let echo = gw.get(&sent).echo().await;
        assert_eq!(echo.uri, expected, "sent {sent}");
        assert_eq!(echo.one("x-keygate-key-id"), Some("primary"));
    }
}

#[tokio::test]
async fn a_query_without_the_key_is_forwarded_untouched() {
    let gw = gateway().await;
    gw.assert_paths_reach_the_upstream_unchanged(
        SECRET,
        &[
            "/p?",
            "/p?b=2&a=%20x&c",
            "/p?&&x==y&%41=%zz",
            "/p?q=a+b&q=%2B",
            "/p/%7Euser",
        ],
    )
    .await;
}

#[tokio::test]
async fn method_path_and_body_are_forwarded() {
    let gw = gateway().await;
    let mut h1 = H1::connect(gw.addr).await;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let req = request(
            method,
            "/things/7",
            &[("x-api-key", SECRET)],
            full("hello world"),
        );
        let echo = h1.send(req).await.echo();
        assert_eq!(echo.method, method);
        assert_eq!(echo.uri, "/things/7");
        assert_eq!(echo.body_len, 11);
    }
}

#[tokio::test]
async fn head_is_forwarded_and_answered_without_a_body() {
    let gw = gateway().await;
    let resp = H1::connect(gw.addr)
        .await
        .send(request("HEAD", "/r", &[("x-api-key", SECRET)], empty()))
        .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-upstream"), Some("main"));
    assert!(resp.body.is_empty());
    assert_eq!(gw.hits(), 1);
}

#[tokio::test]
async fn an_absolute_form_request_target_is_stripped_and_forwarded_in_origin_form() {
    let gw = gateway().await;
    let req = format!(
        "GET http://gateway.test/abs?x=1&api_key={SECRET} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n"
    );
    let echo = raw_exchange(gw.addr, req.as_bytes()).await.echo();
    assert_eq!(echo.uri, "/abs?x=1");
    assert_eq!(echo.one("x-keygate-key-id"), Some("primary"));
}

// --- headers --------------------------------------------------------------------------------

/// A raw HTTP/1.1 `GET target` with Host and the primary key, then `lines` (each ending in
/// CRLF) exactly as given.
fn raw_get(target: &str, lines: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {SECRET}\r\n{lines}\r\n")
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed() {
    let gw = gateway().await;
    // Raw bytes, so that every header is on the wire exactly as written.
    let req = raw_get(
        "/hop",
        "Connection: keep-alive, X-Custom-Hop, x-other-hop\r\n\
         X-Custom-Hop: one\r\n\
         X-Other-Hop: two\r\n\
         Keep-Alive: timeout=5, max=100\r\n\
         TE: trailers\r\n\
         Trailer: X-Checksum\r\n\
         Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
         Proxy-Connection: keep-alive\r\n\
         X-End-To-End: kept\r\n",
    );
    let mut raw = Raw::connect(gw.addr).await;
    let echo = raw.exchange(req.as_bytes()).await.echo();
    for gone in [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "x-custom-hop",
        "x-other-hop",
    ] {
        assert!(
            !echo.has(gone),
            "{gone} reached the upstream: {:?}",
            echo.all(gone)
        );
    }
    assert_eq!(echo.one("x-end-to-end"), Some("kept"));

    // The client's connection stays open (it asked for keep-alive).
    let again = raw_get("/again", "");
    assert_eq!(raw.exchange(again.as_bytes()).await.echo().uri, "/again");
}

#[tokio::test]
async fn hop_by_hop_headers_of_the_response_are_removed() {
    let gw = gateway().await;
    let req = raw_get(
        "/r",
        "X-Reply-Header: Connection: X-Up-Hop\r\n\
         X-Reply-Header: X-Up-Hop: 1\r\n\
         X-Reply-Header: Keep-Alive: timeout=9\r\n\
         X-Reply-Header: Proxy-Authenticate: Basic realm=up\r\n\
         X-Reply-Header: X-Up-Kept: yes\r\n",
    );
    let resp = raw_exchange(gw.addr, req.as_bytes()).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-up-kept"), Some("yes"));
    for gone in ["x-up-hop", "keep-alive", "proxy-authenticate"] {
        assert!(
            resp.header(gone).is_none(),
            "{gone} came back: {:?}",
            resp.headers
        );
    }
}

#[tokio::test]
async fn incoming_x_keygate_headers_are_replaced_by_keygates_own() {
    let gw = gateway().await;
    let forged = [
        ("X-Keygate-Key-Id", "admin"),
        ("x-keygate-key-id", "root"),
        ("X-Keygate-Consumer", "bigcorp"),
        ("X-Keygate-Anything", "x"),
        ("x-keygate-", "y"),
    ];

    // A key with a consumer: both identity headers, each exactly once, with our values.
    let mut headers = vec![("x-api-key", SECRET)];
    headers.extend(forged);
    let echo = gw.get("/r").headers(&headers).echo_as("primary").await;
    assert_eq!(echo.one("x-keygate-consumer"), Some("acme"));
    assert!(!echo.has("x-keygate-anything"));
    assert!(!echo.has("x-keygate-"));

    // A key without a consumer: no consumer header at all, even a forged one.
    let mut headers = vec![("x-api-key", SECRET_LONER)];
    headers.extend(forged);
    let echo = gw.get("/r").headers(&headers).echo_as("loner").await;
    assert!(
        !echo.has("x-keygate-consumer"),
        "{:?}",
        echo.all("x-keygate-consumer")
    );
    let keygate_headers: Vec<_> = echo
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-keygate-"))
        .collect();
    assert_eq!(keygate_headers.len(), 1, "{keygate_headers:?}");
}

#[tokio::test]
async fn key_id_and_consumer_are_set_for_the_upstream() {
    let gw = gateway().await;
    let echo = gw.get("/r").key(SECRET).echo_as("primary").await;
    assert_eq!(echo.one("x-keygate-consumer"), Some("acme"));
    let echo = gw.get("/r").key(SECRET_LONER).echo_as("loner").await;
    assert!(!echo.has("x-keygate-consumer"));
}

/// All values of a header as one comma-separated list (however many lines they came on).
fn joined(echo: &Echo, name: &str) -> String {
    echo.all(name).join(", ")
}

#[tokio::test]
async fn x_forwarded_for_gets_the_client_address_appended() {
    let gw = gateway().await;
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[], "127.0.0.1"),
        (
            &[("x-forwarded-for", "203.0.113.9")],
            "203.0.113.9, 127.0.0.1",
        ),
        (
            &[
                ("x-forwarded-for", "198.51.100.1"),
                ("x-forwarded-for", "198.51.100.2, 2001:db8::1"),
            ],
            "198.51.100.1, 198.51.100.2, 2001:db8::1, 127.0.0.1",
        ),
    ];
    for (sent, expected) in cases {
        let echo = gw.get("/r").key(SECRET).headers(sent).echo().await;
        assert_eq!(joined(&echo, "x-forwarded-for"), expected, "sent {sent:?}");
    }
}

#[tokio::test]
async fn x_forwarded_proto_and_host_are_set() {
    let gw = gateway().await;
    let echo = gw
        .get("/r")
        .host("Client.Example:8443")
        .key(SECRET)
        .echo()
        .await;
    assert_eq!(echo.one("x-forwarded-proto"), Some("http"));
    assert_eq!(echo.one("x-forwarded-host"), Some("Client.Example:8443"));

    // Set, not appended to: a client cannot claim https or another host.
    let echo = gw
        .get("/r")
        .host("real.example")
        .key(SECRET)
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "forged.example")
        .echo()
        .await;
    assert_eq!(echo.one("x-forwarded-proto"), Some("http"));
    assert_eq!(echo.one("x-forwarded-host"), Some("real.example"));
}

#[tokio::test]
async fn upstream_gets_its_own_host_unless_preserve_host() {
    let gw = gateway().await;
    let echo = gw.get("/r").host("client.example").key(SECRET).echo().await;
    let upstream = gw.up("main").addr.to_string();
    assert_eq!(echo.one("host"), Some(upstream.as_str()));
}

#[tokio::test]
async fn preserve_host_gives_the_upstream_the_clients_host() {
    let gw = crate::harness::gateway()
        .target(target("main").line("preserve_host = true"))
        .shared_keys()
        .start()
        .await;
    let echo = gw.get("/r").host("client.example").key(SECRET).echo().await;
    assert_eq!(echo.one("host"), Some("client.example"));
    assert_eq!(echo.one("x-forwarded-host"), Some("client.example"));
}

#[tokio::test]
async fn x_request_id_is_made_when_absent_and_returned() {
    let gw = gateway().await;
    let resp = gw.get("/r").key(SECRET).send().await;
    let id = resp
        .header("x-request-id")
        .expect("X-Request-Id on the response")
        .to_owned();
    assert!(!id.is_empty());
    assert_eq!(resp.echo().one("x-request-id"), Some(id.as_str()));

    let other = gw.get("/r").key(SECRET).send().await;
    assert_ne!(
        other.header("x-request-id"),
        Some(id.as_str()),
        "request ids must differ"
    );

    // Errors carry one too, the same in the header and the body.
    let denied = gw.get("/r").send().await;
    let json = assert_problem(&denied, 403, "key_missing");
    assert_ne!(json["request_id"].as_str(), Some(id.as_str()));
}

#[tokio::test]
async fn a_client_supplied_x_request_id_is_kept_and_returned() {
    let gw = gateway().await;
    let resp = gw
        .get("/r")
        .key(SECRET)
        .header("x-request-id", "client-req-42")
        .send()
        .await;
    assert_eq!(resp.header("x-request-id"), Some("client-req-42"));
    assert_eq!(resp.echo().one("x-request-id"), Some("client-req-42"));

    let denied = gw
        .get("/r")
        .header("x-request-id", "client-req-43")
        .send()
        .await;
    let json = assert_problem(&denied, 403, "key_missing");
    assert_eq!(json["request_id"], "client-req-43");
}

// --- the response -------------------------------------------------------------------------

#[tokio::test]
async fn upstream_status_headers_and_body_come_back() {
    let gw = gateway().await;
    let resp = gw
        .get("/made")
        .key(SECRET)
        .header("x-reply-status", "201")
        .header("x-reply-header", "X-Up: one")
        .header("x-reply-header", "Set-Cookie: a=1")
        .header("x-reply-header", "Set-Cookie: b=2")
        .header("x-reply-header", "Location: /made/1")
        .send()
        .await;
    assert_eq!(resp.status, StatusCode::CREATED);
    assert_eq!(resp.header("x-up"), Some("one"));
    assert_eq!(resp.header("x-upstream"), Some("main"));
    assert_eq!(resp.header("location"), Some("/made/1"));
    let cookies: Vec<_> = resp.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let echo: Echo = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(echo.uri, "/made");
}

#[tokio::test]
async fn upstream_errors_pass_through_as_they_are() {
    let gw = gateway().await;
    for status in [400u16, 403, 404, 500, 502, 503, 504] {
        let resp = gw
            .get("/r")
            .key(SECRET)
            .header("x-reply-status", &status.to_string())
            .send()
            .await;
        assert_eq!(resp.status.as_u16(), status);
        // Not a keygate problem: the upstream's own body and type.
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.header("x-upstream"), Some("main"));
        let echo: Echo = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(echo.uri, "/r");
    }
}

// --- streaming ------------------------------------------------------------------------------

const EIGHT_MB: usize = 8 * 1024 * 1024;

#[tokio::test]
async fn an_8_mb_upload_with_content_length_arrives_whole() {
    let gw = gateway().await;
    let req = request(
        "POST",
        "/upload",
        &[("x-api-key", SECRET)],
        full(pattern(0, EIGHT_MB)),
    );
    let echo = H1::connect(gw.addr).await.send(req).await.echo();
    assert_eq!(echo.body_len, EIGHT_MB as u64);
    assert_eq!(
        echo.one("content-length"),
        Some(EIGHT_MB.to_string().as_str())
    );
}

#[tokio::test]
async fn an_8_mb_chunked_upload_arrives_whole() {
    let gw = gateway().await;
    let (tx, body) = channel_body(4);
    tokio::spawn(async move {
        let chunk = 256 * 1024;
        for i in 0..EIGHT_MB / chunk {
            if tx.send(pattern(i * chunk, chunk)).await.is_err() {
                break;
            }
        }
    });
    let req = request("PUT", "/upload", &[("x-api-key", SECRET)], body);
    let echo = H1::connect(gw.addr).await.send(req).await.echo();
    assert_eq!(echo.body_len, EIGHT_MB as u64);
    assert_eq!(echo.method, "PUT");
}

/// An upstream that answers as soon as the first bytes of the body arrive, then reports the
/// total when the body ends. Through a gateway that buffered uploads whole, the first answer
/// could never come before the client finished sending.
#[tokio::test]
async fn an_upload_streams_to_the_upstream_before_it_ends() {
    let up = start_upstream_with(|req, _| async move {
        let mut body = req.into_body();
        let (tx, reply) = channel_body(4);
        tokio::spawn(async move {
            let mut total = 0u64;
            let mut announced = false;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data() {
                    total += d.len() as u64;
                    if !announced && total > 0 {
                        announced = true;
                        let _ = tx.send(Bytes::from_static(b"receiving\n")).await;
                    }
                }
            }
            let _ = tx.send(Bytes::from(format!("total={total}\n"))).await;
        });
        Response::new(reply)
    })
    .await;
    let addr = gateway_to(up.addr).await.addr;

    let (tx, body) = channel_body(4);
    let mut h1 = H1::connect(addr).await;
    let first = 64 * 1024;
    tx.send(pattern(0, first)).await.unwrap();
    let req = request("POST", "/upload", &[("x-api-key", SECRET)], body);
    let resp = within_for(
        Duration::from_secs(10),
        "the upstream's answer while the upload is still open",
        h1.send_streaming(req),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut reply = resp.into_body();
    let line = within_for(Duration::from_secs(10), "first reply line", reply.frame())
        .await
        .expect("reply ended")
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(&line[..], b"receiving\n");

    // Now send the rest of the 8 MB and close the body.
    let rest = tokio::spawn(async move {
        let chunk = 256 * 1024;
        let mut sent = first;
        while sent < EIGHT_MB {
            let n = chunk.min(EIGHT_MB - sent);
            tx.send(pattern(sent, n)).await.unwrap();
            sent += n;
        }
    });
    let mut text = Vec::new();
    while let Some(frame) = within("reply frame", reply.frame()).await {
        if let Ok(d) = frame.unwrap().into_data() {
            text.extend_from_slice(&d);
        }
    }
    rest.await.unwrap();
    assert_eq!(
        String::from_utf8(text).unwrap(),
        format!("total={EIGHT_MB}\n")
    );
}

#[tokio::test]
async fn a_large_response_streams_back_whole() {
    let gw = gateway().await;
    let total = 16 * 1024 * 1024;
    let req = request(
        "GET",
        "/download",
        &[("x-api-key", SECRET), ("x-reply-bytes", &total.to_string())],
        empty(),
    );
    let resp = H1::connect(gw.addr).await.send_streaming(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let (mut n, mut ok) = (0usize, true);
    while let Some(frame) = within("download frame", body.frame()).await {
        if let Ok(d) = frame.unwrap().into_data() {
            ok &= d == pattern(n, d.len());
            n += d.len();
        }
    }
    assert_eq!(n, total);
    assert!(ok, "the bytes changed on the way");
}

/// The upstream sends 1 MB and then waits for the test's go-ahead before the rest: the client
/// can only see the first megabyte if keygate streams the response instead of buffering it.
#[tokio::test]
async fn a_response_streams_back_before_it_ends() {
    let go = Arc::new(Notify::new());
    let release = go.clone();
    let total = 8 * 1024 * 1024;
    let first = 1024 * 1024;
    let up = start_upstream_with(move |_req, _| {
        let go = go.clone();
        async move {
            let (tx, body) = channel_body(2);
            tokio::spawn(async move {
                if tx.send(pattern(0, first)).await.is_err() {
                    return;
                }
                go.notified().await;
                let mut sent = first;
                while sent < total {
                    let n = (64 * 1024).min(total - sent);
                    if tx.send(pattern(sent, n)).await.is_err() {
                        return;
                    }
                    sent += n;
                }
            });
            Response::new(body)
        }
    })
    .await;
    let addr = gateway_to(up.addr).await.addr;

    let req = request("GET", "/slow", &[("x-api-key", SECRET)], empty());
    let resp = within_for(
        Duration::from_secs(10),
        "response head while the upstream holds back",
        H1::connect(addr).await.send_streaming(req),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut n = 0;
    // Bounded: every frame carries at least one byte.
    for _ in 0..first {
        if n >= first {
            break;
        }
        let frame = within_for(Duration::from_secs(10), "the first megabyte", body.frame())
            .await
            .expect("body ended early")
            .unwrap();
        n += frame.into_data().map_or(0, |d| d.len());
    }
    assert_eq!(n, first);
    release.notify_one();
    while let Some(frame) = within("rest of the body", body.frame()).await {
        n += frame.unwrap().into_data().map_or(0, |d| d.len());
    }
    assert_eq!(n, total);
}

// --- connections ----------------------------------------------------------------------------

#[tokio::test]
async fn several_requests_on_one_client_connection() {
    let gw = gateway().await;
    let mut h1 = H1::connect(gw.addr).await;
    for i in 0..10 {
        let path = format!("/seq/{i}?n={i}");
        let echo = h1
            .send(request("GET", &path, &[("x-api-key", SECRET)], empty()))
            .await
            .echo();
        assert_eq!(echo.uri, path);
    }
    // Denials do not close the connection either.
    assert_problem(
        &h1.send(request("GET", "/r", &[], empty())).await,
        403,
        "key_missing",
    );
    let echo = h1
        .send(request("GET", "/after", &[("x-api-key", SECRET)], empty()))
        .await
        .echo();
    assert_eq!(echo.uri, "/after");
    assert!(!h1.is_closed());
    assert_eq!(gw.hits(), 11);
}

/// Upstream connections are pooled: sequential requests mostly reuse one connection, which the
/// upstream sees as the same peer address.
#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let gw = gateway().await;
    let mut h1 = H1::connect(gw.addr).await;
    let mut peers = HashSet::new();
    let requests = 10;
    for _ in 0..requests {
        let echo = h1
            .send(request("GET", "/pool", &[("x-api-key", SECRET)], empty()))
            .await
            .echo();
        peers.insert(echo.peer);
    }
    assert!(
        peers.len() < requests,
        "every request opened a new upstream connection: {peers:?}"
    );
    // Separate client connections share the pool too.
    for _ in 0..requests {
        peers.insert(gw.get("/pool").key(SECRET).echo().await.peer);
    }
    assert!(peers.len() < 2 * requests, "{peers:?}");
}
