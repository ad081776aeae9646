//! Step 2, the credential: X-API-Key header, else the first api_key query parameter; hostile input.

use crate::harness::*;

async fn gateway() -> Gw {
    crate::harness::gateway().shared_keys().start().await
}

/// A good request still works and nothing in keygate has panicked.
async fn assert_still_serving(gw: &Gw) {
    gw.get("/still-alive").key(SECRET).echo_as("primary").await;
    assert_no_keygate_panic();
}

/// GETs each path (its key in the query) and checks keygate forwarded it as the key named.
async fn assert_each_forwarded_as<const N: usize>(gw: &Gw, cases: [(String, &str); N]) {
    for (path, key_id) in cases {
        gw.get(&path).echo_as(key_id).await;
    }
}

#[tokio::test]
async fn key_in_the_header_is_accepted() {
    let gw = gateway().await;
    gw.get("/r")
        .header("X-API-Key", SECRET)
        .echo_as("primary")
        .await;
    // Header names are case-insensitive.
    gw.get("/r")
        .header("x-api-KEY", SECRET_LONER)
        .echo_as("loner")
        .await;
}

#[tokio::test]
async fn key_in_the_query_is_accepted() {
    let gw = gateway().await;
    assert_each_forwarded_as(
        &gw,
        [
            (format!("/r?api_key={SECRET}"), "primary"),
            (format!("/r?a=1&api_key={SECRET_LONER}&b=2"), "loner"),
        ],
    )
    .await;
}

#[tokio::test]
async fn query_values_are_percent_decoded() {
    let gw = gateway().await;
    // "kg_" written as "kg%5F": the value is the decoded secret.
    let encoded = SECRET.replacen("kg_", "kg%5F", 1);
    gw.get(&format!("/r?api_key={encoded}"))
        .echo_as("primary")
        .await;
}

#[tokio::test]
async fn the_first_api_key_parameter_is_the_one_used() {
    let gw = gateway().await;
    for (path, key_id) in [
        (format!("/r?api_key={SECRET}&api_key=not-a-key"), "primary"),
        (
            format!("/r?api_key={SECRET_LONER}&api_key={SECRET}"),
            "loner",
        ),
    ] {
        gw.get(&path).echo_as(key_id).await;
    }
    gw.get(&format!("/r?api_key=not-a-key&api_key={SECRET}"))
        .problem(403, "key_invalid")
        .await;
}

#[tokio::test]
async fn no_credential_is_403_key_missing() {
    let gw = gateway().await;
    for path in [
        "/r",
        "/r?a=1",
        "/r?apikey=x",
        "/r?my_api_key=x",
        "/r?api_key=",
    ] {
        gw.get(path).problem(403, "key_missing").await;
    }
    // Another credential-looking header is not the key.
    gw.get("/r")
        .header("authorization", &format!("Bearer {SECRET}"))
        .problem(403, "key_missing")
        .await;
    assert_eq!(gw.hits(), 0, "a denied request must not reach the upstream");
}

/// `path` with `headers` is refused 403 `key_invalid`.
async fn assert_key_invalid(gw: &Gw, path: &str, headers: &[(&str, &str)]) {
    gw.get(path)
        .headers(headers)
        .problem(403, "key_invalid")
        .await;
}

#[tokio::test]
async fn key_header_given_twice_is_403_key_invalid() {
    let gw = gateway().await;
    // Twice the same valid key: ambiguous all the same.
    assert_key_invalid(&gw, "/r", &[("x-api-key", SECRET), ("x-api-key", SECRET)]).await;
    let lone = ("X-Api-Key", SECRET_LONER);
    assert_key_invalid(&gw, "/r", &[("x-api-key", SECRET), lone]).await;
    let wrong = ("x-api-key", "not-a-key");
    assert_key_invalid(&gw, "/r", &[wrong, ("x-api-key", SECRET)]).await;
    assert_eq!(gw.hits(), 0);
}

#[tokio::test]
async fn header_and_query_disagreeing_is_403_key_invalid() {
    let gw = gateway().await;
    let primary = [("x-api-key", SECRET)];
    assert_key_invalid(&gw, &format!("/r?api_key={SECRET_LONER}"), &primary).await;
    assert_key_invalid(&gw, "/r?api_key=not-a-key", &primary).await;
    let wrong = [("x-api-key", "not-a-key")];
    assert_key_invalid(&gw, &format!("/r?api_key={SECRET}"), &wrong).await;
    assert_eq!(gw.hits(), 0);
}

#[tokio::test]
async fn header_and_query_agreeing_is_fine() {
    let gw = gateway().await;
    let echo = gw
        .get(&format!("/r?api_key={SECRET}&x=1"))
        .key(SECRET)
        .echo_as("primary")
        .await;
    assert_eq!(echo.uri, "/r?x=1");
    assert!(!echo.has("x-api-key"));
}

#[tokio::test]
async fn key_header_and_query_names_come_from_the_config() {
    let gw = crate::harness::gateway()
        .server("key_header = \"X-Token\"")
        .server("key_query = \"token\"")
        .shared_keys()
        .start()
        .await;

    let echo = gw
        .get("/r?a=1")
        .header("x-token", SECRET)
        .echo_as("primary")
        .await;
    assert!(
        !echo.has("x-token"),
        "the configured key header must be stripped"
    );
    let echo = gw
        .get(&format!("/r?token={SECRET}&a=1"))
        .echo_as("primary")
        .await;
    assert_eq!(echo.uri, "/r?a=1");

    // The defaults are no longer credentials (and so are just forwarded).
    gw.get("/r")
        .key("plain-header")
        .problem(403, "key_missing")
        .await;
    gw.get("/r?api_key=plain-param")
        .problem(403, "key_missing")
        .await;
}

// --- hostile input ------------------------------------------------------------------------

#[tokio::test]
async fn an_8_kb_key_header_is_refused_without_harm() {
    let gw = gateway().await;
    let huge = "k".repeat(8 * 1024);
    gw.get("/r").key(&huge).problem(403, "key_invalid").await;
    // A valid secret with 8 KB of junk after it is not the secret.
    let padded = format!("{SECRET}{huge}");
    gw.get("/r").key(&padded).problem(403, "key_invalid").await;
    // 8 KB in another header is just a header.
    let echo = gw.get("/r").key(SECRET).header("x-big", &huge).echo().await;
    assert_eq!(echo.one("x-big").map(str::len), Some(8 * 1024));
    // 8 KB in the query.
    gw.get(&format!("/r?api_key={huge}"))
        .problem(403, "key_invalid")
        .await;
    assert_eq!(gw.hits(), 1);
    assert_still_serving(&gw).await;
}

#[tokio::test]
async fn non_utf8_bytes_in_headers_are_refused_without_harm() {
    let gw = gateway().await;
    let secret = SECRET.as_bytes();

    // A key header of bytes that are not UTF-8 (obs-text, allowed on the wire).
    let req = b"GET /r HTTP/1.1\r\nHost: gateway.test\r\nX-API-Key: \xff\xfe\x80k\xc3\x28\r\nConnection: close\r\n\r\n";
    assert_problem(&raw_exchange(gw.addr, req).await, 403, "key_invalid");

    // A valid key with a non-UTF-8 byte appended is not the key.
    let req = [
        b"GET /r HTTP/1.1\r\nHost: gateway.test\r\nX-API-Key: ".as_slice(),
        secret,
        b"\xff\r\nConnection: close\r\n\r\n",
    ]
    .concat();
    assert_problem(&raw_exchange(gw.addr, &req).await, 403, "key_invalid");

    // Non-UTF-8 Host, X-Forwarded-For, X-Request-Id and another header next to a valid key.
    let req = [
        b"GET /r HTTP/1.1\r\nHost: g\xc3\x28teway.test\r\nX-API-Key: ".as_slice(),
        secret,
        b"\r\nX-Odd: \xfe\xff\r\nX-Forwarded-For: \xff\r\nX-Request-Id: \xff\xfe\r\nConnection: close\r\n\r\n",
    ]
    .concat();
    let resp = raw_exchange(gw.addr, &req).await;
    assert!(
        resp.status.as_u16() < 500,
        "non-UTF-8 headers must not make keygate fail: {} {}",
        resp.status,
        resp.text()
    );
    // The unusable request id was replaced by one keygate made.
    let id = resp
        .header("x-request-id")
        .expect("X-Request-Id on the response");
    assert!(!id.is_empty() && id.is_ascii());
    assert_still_serving(&gw).await;
}

#[tokio::test]
async fn odd_percent_encoding_in_the_query_is_refused_without_harm() {
    let gw = gateway().await;
    for (query, code) in [
        ("api_key=%zz%", "key_invalid"),
        ("api_key=%", "key_invalid"),
        ("api_key=%%%25%2", "key_invalid"),
        ("api_key=%ff%fe%80", "key_invalid"),
        ("api_key=%00", "key_invalid"),
        ("api_key=%c3%28", "key_invalid"),
        ("api%zz_key=1&api_key=%e2%82", "key_invalid"),
        ("%=%&&==&api_key", "key_missing"),
        ("&&&", "key_missing"),
        ("=", "key_missing"),
        ("api_key", "key_missing"),
    ] {
        let resp = gw.get(&format!("/r?{query}")).send().await;
        let json = assert_problem(&resp, 403, code);
        if query.len() > 3 {
            assert!(
                !json.to_string().contains(query),
                "the query was echoed back: {json}"
            );
        }
    }
    // Odd encoding elsewhere in the query next to a valid key header: forwarded untouched.
    let echo = gw.get("/r?x=%zz%&%=%&y=%ff").key(SECRET).echo().await;
    assert_eq!(echo.uri, "/r?x=%zz%&%=%&y=%ff");
    assert_eq!(gw.hits(), 1);
    assert_still_serving(&gw).await;
}

#[tokio::test]
async fn raw_non_utf8_bytes_in_the_request_target_do_not_harm() {
    let gw = gateway().await;
    let req =
        b"GET /r?api_key=\xff\xfe HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n";
    let mut raw = Raw::connect(gw.addr).await;
    raw.write(req).await;
    // Refused one way or another (hyper answers 400 for an invalid request target); the point
    // is that the process keeps serving.
    let mut rest = Vec::new();
    let _ = within(
        "read refusal",
        tokio::io::AsyncReadExt::read_to_end(&mut raw.stream, &mut rest),
    )
    .await;
    let text = String::from_utf8_lossy(&rest);
    assert!(
        !text.starts_with("HTTP/1.1 2"),
        "must not be accepted: {text}"
    );
    assert_still_serving(&gw).await;
}
