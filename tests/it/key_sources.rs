//! `[server] key_sources`: the key from a header, a query parameter, `Authorization: Bearer` or
//! a cookie, in the order listed; each place stripped before forwarding, only the key taken out;
//! two places with different keys refused; config mistakes named at their line. And the
//! checksum of generated secrets: a mistyped one is refused, older secrets keep working.
//!
//! The echo upstream reflects every header it received and the harness fails any response that
//! carries a test secret, so every admitted request here also proves no key reached the upstream.

use std::time::Duration;

use serde_json::json;

use crate::harness::admin::*;
use crate::harness::live::key_toml;
use crate::harness::*;

/// Every kind of place, not in the default order.
const ALL: &str = r#"key_sources = ["cookie:kg_key", "bearer", "query:token", "header:X-Key"]"#;

async fn all_places() -> Gw {
    gateway().server(ALL).shared_keys().start().await
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

#[tokio::test]
async fn the_key_is_read_from_each_listed_place() {
    let gw = all_places().await;
    let echo = gw
        .get("/r?a=1")
        .header("cookie", &format!("kg_key={SECRET}"))
        .echo_as("primary")
        .await;
    assert!(!echo.has("cookie"), "{echo:?}");
    gw.get("/r")
        .header("authorization", &bearer(SECRET_LONER))
        .echo_as("loner")
        .await;
    // The scheme is case-insensitive (RFC 6750 / RFC 9110 11.1).
    gw.get("/r")
        .header("authorization", &format!("bEARER {SECRET}"))
        .echo_as("primary")
        .await;
    let echo = gw
        .get(&format!("/r?a=1&token={SECRET}&b=2"))
        .echo_as("primary")
        .await;
    assert_eq!(echo.uri, "/r?a=1&b=2");
    gw.get("/r")
        .header("x-key", SECRET_LONER)
        .echo_as("loner")
        .await;
    // Over HTTP/2 too.
    gw.get("/r")
        .h2()
        .header("authorization", &bearer(SECRET))
        .echo_as("primary")
        .await;
    gw.get("/r")
        .h2()
        .header("cookie", &format!("kg_key={SECRET}"))
        .echo_as("primary")
        .await;
}

#[tokio::test]
async fn places_not_listed_are_not_read_and_reach_the_upstream_untouched() {
    let gw = all_places().await;
    // The defaults are no longer places for the key.
    gw.get(&format!("/r?api_key={SECRET}"))
        .problem(403, "key_missing")
        .await;
    gw.get("/r").key(SECRET).problem(403, "key_missing").await;
    gw.get("/r")
        .header("cookie", &format!("other={SECRET}"))
        .problem(403, "key_missing")
        .await;
    assert_eq!(gw.hits(), 0);

    // By default neither Authorization nor cookies are read: they are the upstream's.
    let gw = gateway().shared_keys().start().await;
    let echo = gw
        .get("/r")
        .key(SECRET)
        .header("authorization", "Bearer an-upstream-token")
        .header("cookie", "kg_key=not-read; a=1")
        .echo_as("primary")
        .await;
    assert_eq!(echo.all("authorization"), ["Bearer an-upstream-token"]);
    assert_eq!(echo.all("cookie"), ["kg_key=not-read; a=1"]);
}

#[tokio::test]
async fn every_place_is_stripped_and_only_the_key_leaves() {
    let gw = all_places().await;
    let echo = gw
        .get(&format!("/r?token={SECRET}&q=%20x"))
        .header("x-key", SECRET)
        .header("authorization", "Basic dXNlcjpwYXNz")
        .header("authorization", &bearer(SECRET))
        .header(
            "cookie",
            &format!("theme=dark;kg_key={SECRET};  sid=\"a b\"; empty=; lang=en"),
        )
        .header("x-other", "kept")
        .echo_as("primary")
        .await;
    assert_eq!(echo.uri, "/r?q=%20x");
    assert_only_the_key_left(&echo);

    // The key cookie first, last, or alone.
    for (cookie, forwarded) in [
        (format!("kg_key={SECRET}; a=1; b=2"), vec!["a=1; b=2"]),
        (format!("a=1; b=2; kg_key={SECRET}"), vec!["a=1; b=2"]),
        (format!("kg_key={SECRET}"), vec![]),
    ] {
        let echo = gw
            .get("/r")
            .header("cookie", &cookie)
            .echo_as("primary")
            .await;
        assert_eq!(echo.all("cookie"), forwarded, "{cookie}");
    }
    // A Basic login alone, with the key elsewhere, goes through as it came.
    let echo = gw
        .get("/r")
        .header("x-key", SECRET)
        .header("authorization", "Basic dXNlcjpwYXNz")
        .echo_as("primary")
        .await;
    assert_eq!(echo.all("authorization"), ["Basic dXNlcjpwYXNz"]);
}

#[tokio::test]
async fn an_h2_client_s_split_cookies_are_each_stripped() {
    let gw = all_places().await;
    let echo = gw
        .get("/r")
        .h2()
        .header("cookie", "a=1")
        .header("cookie", &format!("kg_key={SECRET}"))
        .header("cookie", &format!("b=2; kg_key={SECRET}"))
        .header("cookie", "c=\"3\"")
        .echo_as("primary")
        .await;
    let cookies = echo.all("cookie");
    // However the cookies are sent on to the HTTP/1.1 upstream, every other one is there, in
    // order, and the key is not.
    let joined = cookies.join("; ");
    assert_eq!(joined, "a=1; b=2; c=\"3\"", "{cookies:?}");
}

#[tokio::test]
async fn two_places_with_different_keys_are_403_key_invalid() {
    let gw = all_places().await;
    let cookie = |s: &str| ("cookie".to_owned(), format!("kg_key={s}"));
    let auth = |s: &str| ("authorization".to_owned(), bearer(s));
    let header = |s: &str| ("x-key".to_owned(), s.to_owned());
    for (path, headers) in [
        ("/r".to_owned(), vec![cookie(SECRET), auth(SECRET_LONER)]),
        ("/r".to_owned(), vec![auth(SECRET), header(SECRET_LONER)]),
        (format!("/r?token={SECRET}"), vec![cookie(SECRET_LONER)]),
        (format!("/r?token={SECRET}"), vec![header("not-a-key")]),
        // The same cookie twice with two values.
        ("/r".to_owned(), vec![cookie(SECRET), cookie(SECRET_LONER)]),
        // Two bearer tokens: as ambiguous as the key header twice.
        ("/r".to_owned(), vec![auth(SECRET), auth(SECRET)]),
    ] {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        gw.get(&path).headers(&h).problem(403, "key_invalid").await;
    }
    assert_eq!(gw.hits(), 0);
    // The same key in every place is fine.
    gw.get(&format!("/r?token={SECRET}"))
        .header("x-key", SECRET)
        .header("authorization", &bearer(SECRET))
        .header("cookie", &format!("kg_key={SECRET}"))
        .echo_as("primary")
        .await;
}

#[tokio::test]
async fn hostile_values_in_every_place_are_refused_without_harm() {
    let gw = all_places().await;
    let huge = "k".repeat(8 * 1024);
    gw.get("/r")
        .header("authorization", &bearer(&huge))
        .problem(403, "key_invalid")
        .await;
    gw.get("/r")
        .header("cookie", &format!("kg_key={huge}"))
        .problem(403, "key_invalid")
        .await;
    for cookie in ["kg_key", "=;;;=", "kg_key=\"\"", ";kg_key=;"] {
        gw.get("/r")
            .header("cookie", cookie)
            .problem(403, "key_missing")
            .await;
    }
    let req = b"GET /r HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer \xff\xfe\r\nCookie: kg_key=\xff; a=\x80\r\nConnection: close\r\n\r\n";
    assert_problem(&raw_exchange(gw.addr, req).await, 403, "key_invalid");
    gw.get("/r")
        .header("x-key", SECRET)
        .echo_as("primary")
        .await;
    assert_no_keygate_panic();
}

// --- the config, on the binary ------------------------------------------------------------

/// The 1-based line of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in\n{text}"))
        + 1
}

/// `keygate check` on a config whose `[server]` starts with `lines` fails; its stderr.
async fn check_fails(name: &str, lines: &str) -> (String, String) {
    let files = Files::for_binary_with(name, lines, None).await;
    let out = keygate_cmd(&files.config, &["check"]).await;
    assert!(!out.status.success(), "keygate check passed with {lines}");
    let text = std::fs::read_to_string(&files.config).unwrap();
    (text, crate::harness::admin::text(&out.stderr))
}

#[tokio::test]
async fn key_sources_with_key_header_or_key_query_is_an_error_naming_both_lines() {
    for other in ["key_header = \"X-Token\"", "key_query = \"token\""] {
        let (config, stderr) = check_fails(
            "sources-both",
            &format!("{other}\nkey_sources = [\"bearer\"]"),
        )
        .await;
        let field = other.split(' ').next().unwrap();
        let at = line_of(&config, "key_sources");
        let want = format!(
            "keygate.toml:{at}:15: [server]: key_sources: cannot be used with {field} (line {})",
            line_of(&config, other)
        );
        assert!(stderr.contains(&want), "want {want:?} in\n{stderr}");
    }
}

#[tokio::test]
async fn an_invalid_source_is_an_error_at_its_line() {
    for (entry, says) in [
        ("\"cookie:\"", "non-empty cookie name"),
        ("\"header:X Key\"", "is not a valid header name"),
        ("\"basic\"", "expected \"header:NAME\""),
        ("\"header:Authorization\"", "use \"bearer\""),
        ("\"bearer\"", "listed twice (first at line"),
    ] {
        let (config, stderr) = check_fails(
            "sources-bad",
            &format!("key_sources = [\n  \"bearer\",\n  {entry}, # here\n]"),
        )
        .await;
        let want = format!(
            "keygate.toml:{}:3: [server]: key_sources: {entry}",
            line_of(&config, "# here")
        );
        assert!(stderr.contains(&want), "want {want:?} in\n{stderr}");
        assert!(stderr.contains(says), "want {says:?} in\n{stderr}");
    }
}

// --- the binary: every place, the access log, checksummed secrets ---------------------------

/// The binary on files with every kind of place; stdout (the access log) collected.
async fn binary(name: &str) -> (Files, Process) {
    let sources = r#"key_sources = ["query:token", "bearer", "cookie:kg_key", "header:X-Key"]"#;
    let files = Files::for_binary_with(name, sources, None).await;
    let kg = Process::start_with(&files.config, "trace", true).await;
    (files, kg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_binary_no_place_s_key_reaches_the_upstream_or_the_logs() {
    let (_files, kg) = binary("sources-log").await;
    let p = kg.proxy;
    let wrong = "kg_wrong_bm90QUtleUF0QWxsRm9yVGhpc1Rlc3RPbmx5XzAwMQ";
    type Request<'r> = (&'r str, String, Vec<(&'r str, String)>);
    let requests: [Request<'_>; 5] = [
        (
            "r-query",
            format!("{PROBE}?token={STATIC_SECRET}&a=1"),
            vec![],
        ),
        (
            "r-bearer",
            PROBE.to_owned(),
            vec![("authorization", bearer(STATIC_SECRET))],
        ),
        (
            "r-cookie",
            PROBE.to_owned(),
            vec![("cookie", format!("a=1; kg_key={STATIC_SECRET}"))],
        ),
        (
            "r-header",
            PROBE.to_owned(),
            vec![("x-key", STATIC_SECRET.to_owned())],
        ),
        (
            "r-wrong",
            format!("{PROBE}?token={wrong}"),
            vec![("cookie", format!("kg_key={wrong}"))],
        ),
    ];
    for (id, path, headers) in &requests {
        let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.push(("x-request-id", id));
        let resp = get(p, path, &h).await;
        assert_none_of(&resp, [STATIC_SECRET, wrong]);
        if *id == "r-wrong" {
            assert_problem(&resp, 403, "key_invalid");
        } else {
            assert_eq!(resp.echo().one("x-keygate-key-id"), Some(STATIC_ID), "{id}");
        }
    }
    let lines = poll(Duration::from_secs(10), "5 access log lines", async || {
        let out = kg.stdout();
        (out.len() >= 5).then_some(out)
    })
    .await;
    let query_line = lines.iter().find(|l| l.contains("r-query")).unwrap();
    assert!(
        query_line.contains(&format!("{PROBE}?token=REDACTED&a=1")),
        "{query_line}"
    );
    let wrong_line = lines.iter().find(|l| l.contains("r-wrong")).unwrap();
    assert!(wrong_line.contains("key_invalid"), "{wrong_line}");
    let (status, stderr, stdout) = kg.terminate_drained().await;
    assert!(status.success(), "{stderr:#?}");
    for secret in [STATIC_SECRET, wrong] {
        let body = secret.splitn(3, '_').nth(2).unwrap();
        for line in stdout.iter().chain(&stderr) {
            assert!(
                !line.contains(secret) && !line.contains(body),
                "a secret is in the output: {line}"
            );
        }
    }
}

/// One character of a generated secret's random part changed.
fn mistyped(secret: &str) -> String {
    let at = secret.len() - 10;
    let c = if &secret[at..=at] == "x" { "y" } else { "x" };
    format!("{}{c}{}", &secret[..at], &secret[at + 1..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_key_works_in_every_place_and_a_mistyped_one_is_key_invalid() {
    let (_files, kg) = binary("sources-checksum").await;
    let (_, secret) = kg.api().create_key(json!({ "id": "made" })).await;
    assert_generated_secret(&secret, "kg_");
    let p = kg.proxy;
    for (path, headers) in [
        (format!("{PROBE}?token={secret}"), vec![]),
        (PROBE.to_owned(), vec![("authorization", bearer(&secret))]),
        (
            PROBE.to_owned(),
            vec![("cookie", format!("kg_key={secret}"))],
        ),
        (PROBE.to_owned(), vec![("x-key", secret.clone())]),
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = get(p, &path, &h).await;
        assert_none_of(&resp, [secret.as_str()]);
        assert_eq!(
            resp.echo().one("x-keygate-key-id"),
            Some("made"),
            "{path} {h:?}"
        );
    }
    let typo = mistyped(&secret);
    assert_ne!(typo, secret);
    assert_problem(
        &get(p, PROBE, &[("x-key", &typo)]).await,
        403,
        "key_invalid",
    );
    // Older secrets (43 URL-safe base64 characters after the prefix) keep working.
    let resp = get(p, PROBE, &[("x-key", STATIC_SECRET)]).await;
    assert_eq!(resp.echo().one("x-keygate-key-id"), Some(STATIC_ID));
    kg.terminate_cleanly().await;
}

/// A secret of the generated shape made here from the README's description, with a valid
/// checksum: `kg_`, 32 base62 characters, their checksum.
fn forged(random: &str) -> String {
    assert_eq!(random.len(), 32);
    let signed = format!("kg_{random}");
    format!("{signed}{}", readme_checksum(&signed))
}

/// A key whose stored hash is that of a mistyped secret is still refused: the checksum is
/// checked before any lookup. The README's checksum, computed here, is the one keygate checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stored_for_a_bad_checksum_is_never_looked_up() {
    let good = forged("abcdefghijklmnopqrstuvwxyzABCDEF");
    let typo = mistyped(&good);
    let files = Files::for_binary_with("sources-lookup", "", None).await;
    files.append_to_config(&key_toml("good", &good, ""));
    files.append_to_config(&key_toml("typo", &typo, ""));
    files.append_to_config(&format!(
        "[[keys]]\nid = \"typed-in\"\nsecret = \"{}\"\n",
        mistyped(&forged("0123456789ABCDEFGHIJKLMNOPQRSTUV"))
    ));
    // A plaintext secret that can never work is a warning at its line, not an error.
    let out = keygate_cmd(&files.config, &["check"]).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let config = std::fs::read_to_string(&files.config).unwrap();
    let want = format!(
        "keygate.toml:{}:10: warning: key \"typed-in\": secret has the shape of a generated secret",
        line_of(&config, "id = \"typed-in\"") + 1
    );
    assert!(stderr.contains(&want), "want {want:?} in\n{stderr}");
    assert_eq!(stderr.matches("checksum is wrong").count(), 1, "{stderr}");

    let kg = Process::start(&files.config).await;
    let resp = get(kg.proxy, PROBE, &[("x-api-key", &good)]).await;
    assert_eq!(resp.echo().one("x-keygate-key-id"), Some("good"));
    let refused = get(kg.proxy, PROBE, &[("x-api-key", &typo)]).await;
    assert_problem(&refused, 403, "key_invalid");
    kg.terminate_cleanly().await;
}

/// The example config's commented `key_sources` line, switched on in place of `key_header` and
/// `key_query`, loads, and reads the four kinds of place in that order.
#[test]
fn the_example_s_key_sources_line_works_when_switched_on() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keygate.toml");
    let example = std::fs::read_to_string(&path).unwrap();
    let mut switched = String::new();
    let mut found = false;
    for line in example.lines() {
        if line.starts_with("key_header = ") || line.starts_with("key_query = ") {
            continue;
        }
        if let Some(on) = line.strip_prefix("# key_sources = ") {
            found = true;
            switched.push_str(&format!("key_sources = {on}\n"));
            continue;
        }
        switched.push_str(line);
        switched.push('\n');
    }
    assert!(
        found,
        "no commented key_sources line in config/keygate.toml"
    );
    let loaded = keygate::config::parse(&switched, &path).unwrap();
    let list = loaded.snapshot.server.key_sources.list().to_vec();
    use keygate::proxy::credential::KeySource;
    assert_eq!(
        list,
        [
            KeySource::Header(http::HeaderName::from_static("x-api-key")),
            KeySource::Query("api_key".into()),
            KeySource::Bearer,
            KeySource::Cookie("kg_key".into()),
        ]
    );
    // And with key_header still set, the same line is an error.
    let both = example.replace("# key_sources = ", "key_sources = ");
    assert!(keygate::config::parse(&both, &path).is_err());
}

/// The verify listener (forward-auth) reads the key from the same places: the call's headers
/// (which the calling proxy copies from the client's) and the original URI's query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verify_listener_reads_every_listed_place() {
    let sources = r#"key_sources = ["query:token", "bearer", "cookie:kg_key", "header:X-Key"]"#;
    let files = Files::for_binary_with("sources-verify", sources, None).await;
    files.append_to_config(
        "[verify]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n",
    );
    let mut kg = Process::start(&files.config).await;
    let verify = kg.wait_addr("verify listening").await;
    let uri = |q: &str| ("x-forwarded-uri", format!("{PROBE}{q}"));
    let cases: [(&str, Vec<(&str, String)>); 4] = [
        ("query", vec![uri(&format!("?a=1&token={STATIC_SECRET}"))]),
        (
            "bearer",
            vec![uri(""), ("authorization", bearer(STATIC_SECRET))],
        ),
        (
            "cookie",
            vec![uri(""), ("cookie", format!("x=1; kg_key={STATIC_SECRET}"))],
        ),
        ("header", vec![uri(""), ("x-key", STATIC_SECRET.to_owned())]),
    ];
    for (what, headers) in cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = get(verify, "/", &h).await;
        assert_eq!(resp.status, 200, "{what}: {}", resp.text());
        assert_eq!(resp.header("x-keygate-key-id"), Some(STATIC_ID), "{what}");
    }
    let mixed = [
        uri(&format!("?token={STATIC_SECRET}")),
        ("authorization", bearer("kg_other")),
    ];
    let h: Vec<(&str, &str)> = mixed.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_problem(&get(verify, "/", &h).await, 403, "key_invalid");
    kg.terminate_cleanly().await;
}

// --- the binary: what the upstream receives ------------------------------------------------

/// `headers` as the request helpers take them.
fn pairs<'h>(headers: &'h [(&str, String)]) -> Vec<(&'h str, &'h str)> {
    headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// On the binary, every place that carried the key is taken out and nothing else: the query
/// parameter, the key header, the bearer `Authorization` (a Basic one beside it is the
/// upstream's) and the key cookie, every other cookie byte kept, separators included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_binary_every_place_is_stripped_and_only_the_key_leaves() {
    let (files, kg) = binary("sources-strip").await;
    let p = kg.proxy;
    let headers = [
        ("x-key", STATIC_SECRET.to_owned()),
        ("authorization", "Basic dXNlcjpwYXNz".to_owned()),
        ("authorization", bearer(STATIC_SECRET)),
        (
            "cookie",
            format!("theme=dark;kg_key={STATIC_SECRET};  sid=\"a b\"; empty=; lang=en"),
        ),
        ("x-other", "kept".to_owned()),
    ];
    let path = format!("{PROBE}?token={STATIC_SECRET}&q=%20x");
    let resp = get(p, &path, &pairs(&headers)).await;
    assert_none_of(&resp, [STATIC_SECRET]);
    let echo = resp.echo();
    assert_eq!(echo.one("x-keygate-key-id"), Some(STATIC_ID));
    assert_eq!(echo.uri, format!("{PROBE}?q=%20x"));
    assert_only_the_key_left(&echo);

    // The key cookie first, last, or alone.
    for (cookie, forwarded) in [
        (
            format!("kg_key={STATIC_SECRET}; a=1; b=2"),
            vec!["a=1; b=2"],
        ),
        (
            format!("a=1;b=\"2\"; kg_key={STATIC_SECRET}"),
            vec!["a=1;b=\"2\""],
        ),
        (format!("kg_key={STATIC_SECRET}"), vec![]),
    ] {
        let resp = get(p, PROBE, &[("cookie", &cookie)]).await;
        let echo = resp.echo();
        assert_eq!(echo.one("x-keygate-key-id"), Some(STATIC_ID), "{cookie}");
        assert_eq!(echo.all("cookie"), forwarded, "{cookie}");
    }
    // A Basic login alone, with the key elsewhere, goes through as it came.
    let resp = get(
        p,
        PROBE,
        &[
            ("x-key", STATIC_SECRET),
            ("authorization", "Basic dXNlcjpwYXNz"),
        ],
    )
    .await;
    let echo = resp.echo();
    assert_eq!(echo.one("x-keygate-key-id"), Some(STATIC_ID));
    assert_eq!(echo.all("authorization"), ["Basic dXNlcjpwYXNz"]);
    assert_eq!(files.up.hits(), 5);
    kg.terminate_cleanly().await;
}

/// On the binary, `Authorization` is the upstream's unless `bearer` is a listed place: with the
/// key in a header or a cookie, a bearer token of the upstream's own reaches it untouched, and
/// so do the cookies that are not the key's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_binary_authorization_is_kept_when_bearer_is_not_a_place() {
    let sources = r#"key_sources = ["header:X-Key", "cookie:kg_key"]"#;
    let files = Files::for_binary_with("sources-no-bearer", sources, None).await;
    let kg = Process::start(&files.config).await;
    let token = "Bearer an-upstream-token";
    for (place, value) in [
        ("x-key", STATIC_SECRET.to_owned()),
        ("cookie", format!("a=1; kg_key={STATIC_SECRET}; b=2")),
    ] {
        let resp = get(
            kg.proxy,
            PROBE,
            &[(place, &value), ("authorization", token)],
        )
        .await;
        assert_none_of(&resp, [STATIC_SECRET]);
        let echo = resp.echo();
        assert_eq!(echo.one("x-keygate-key-id"), Some(STATIC_ID), "{place}");
        assert_eq!(echo.all("authorization"), [token], "{place}");
        if place == "cookie" {
            assert_eq!(echo.all("cookie"), ["a=1; b=2"]);
        }
    }
    // By default (no key_sources) neither Authorization nor cookies are places: both arrive as
    // they were sent, a cookie named like the key's included.
    let files = Files::for_binary_with("sources-default", "", None).await;
    let kg_default = Process::start(&files.config).await;
    let resp = get(
        kg_default.proxy,
        PROBE,
        &[
            ("x-api-key", STATIC_SECRET),
            ("authorization", token),
            ("cookie", "kg_key=not-read; a=1"),
        ],
    )
    .await;
    let echo = resp.echo();
    assert_eq!(echo.one("x-keygate-key-id"), Some(STATIC_ID));
    assert_eq!(echo.all("authorization"), [token]);
    assert_eq!(echo.all("cookie"), ["kg_key=not-read; a=1"]);
    kg.terminate_cleanly().await;
    kg_default.terminate_cleanly().await;
}

/// On the binary in proxy mode, two places carrying two different valid keys are 403
/// `key_invalid` (neither key is picked), and nothing reaches the upstream; the same key in
/// every place passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_binary_two_places_with_different_keys_are_key_invalid() {
    let (files, kg) = binary("sources-two").await;
    let (_, other) = kg.api().create_key(json!({ "id": "second" })).await;
    let p = kg.proxy;
    let cookie = |s: &str| ("cookie", format!("kg_key={s}"));
    let auth = |s: &str| ("authorization", bearer(s));
    let header = |s: &str| ("x-key", s.to_owned());
    for (path, headers) in [
        (PROBE.to_owned(), vec![cookie(STATIC_SECRET), auth(&other)]),
        (PROBE.to_owned(), vec![auth(STATIC_SECRET), header(&other)]),
        (
            format!("{PROBE}?token={other}"),
            vec![cookie(STATIC_SECRET)],
        ),
        (
            format!("{PROBE}?token={STATIC_SECRET}"),
            vec![header(&other)],
        ),
        (
            PROBE.to_owned(),
            vec![cookie(STATIC_SECRET), cookie(&other)],
        ),
    ] {
        let resp = get(p, &path, &pairs(&headers)).await;
        assert_none_of(&resp, [STATIC_SECRET, other.as_str()]);
        assert_problem(&resp, 403, "key_invalid");
    }
    assert_eq!(files.up.hits(), 0);
    let path = format!("{PROBE}?token={other}");
    let same = [cookie(&other), auth(&other), header(&other)];
    let resp = get(p, &path, &pairs(&same)).await;
    assert_eq!(resp.echo().one("x-keygate-key-id"), Some("second"));
    kg.terminate_cleanly().await;
}

// --- the README's secret-scanning pattern and checksum snippet -----------------------------

/// The README's "Secret scanning" section: its pattern (the first fenced block) and its Python
/// checksum snippet (the first `python` block), as a reader would copy them.
fn readme_scanning() -> (String, String) {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split_once("### Secret scanning\n")
        .expect("no \"### Secret scanning\" in README.md")
        .1;
    let section = section.split("\n#").next().unwrap();
    let block = |fence: &str| {
        let from = section
            .split_once(fence)
            .unwrap_or_else(|| panic!("no {fence:?} block under Secret scanning"))
            .1;
        from.split_once("\n```").unwrap().0.to_owned()
    };
    (block("\n```\n").trim().to_owned(), block("\n```python\n"))
}

/// Whole secrets `pattern` finds in `text`.
fn found<'t>(pattern: &regex::Regex, text: &'t str) -> Vec<&'t str> {
    pattern.find_iter(text).map(|m| m.as_str()).collect()
}

/// The README's pattern finds every secret keygate generates (the admin API's and the `keys
/// generate` command's, with the default prefix and another), whole, in surrounding text, and no
/// near-miss; its Python snippet accepts each of them and refuses each mistyped one. Needs
/// python3 for the second part: without it, and without `CI`, that part is skipped with a note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_s_pattern_and_checksum_snippet_hold_for_generated_secrets() {
    let (pattern, snippet) = readme_scanning();
    assert!(pattern.contains("kg_"), "{pattern}");
    let default = regex::Regex::new(&pattern).unwrap();
    let acme = regex::Regex::new(&pattern.replace("kg_", "acme_live_")).unwrap();

    let files = Files::for_binary_with("sources-readme", "", None).await;
    let kg = Process::start(&files.config).await;
    let mut secrets = Vec::new();
    for i in 0..4 {
        let (_, secret) = kg
            .api()
            .create_key(json!({ "id": format!("made-{i}") }))
            .await;
        secrets.push(secret);
    }
    kg.terminate_cleanly().await;
    let generate = async |prefix: &str| {
        let out = keygate_cmd(&files.config, &["keys", "generate", "--prefix", prefix]).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).lines().next().unwrap().to_owned()
    };
    for _ in 0..4 {
        secrets.push(generate("kg_").await);
    }
    let others = [generate("acme_live_").await, generate("acme_live_").await];

    for (pattern, secret) in secrets
        .iter()
        .map(|s| (&default, s))
        .chain(others.iter().map(|s| (&acme, s)))
    {
        // Alone, in a line of config, in a URL's query, in JSON.
        for text in [
            secret.clone(),
            format!("KEY={secret}\n"),
            format!("https://api.example.com/x?api_key={secret}&a=1"),
            format!("{{\"secret\":\"{secret}\"}}"),
        ] {
            assert_eq!(found(pattern, &text), [secret.as_str()], "{text}");
        }
        let random = &secret[secret.len() - 38..];
        let prefix = &secret[..secret.len() - 38];
        // Near-misses: a character short or over, glued to a word, another prefix, an older
        // secret's shape (base64 with `-` or `_`).
        for near in [
            secret[..secret.len() - 1].to_owned(),
            format!("{secret}x"),
            format!("{secret}_"),
            format!("x{secret}"),
            format!("kx_{random}"),
            format!("{prefix}{}-{}", &random[..10], &random[11..]),
            format!("{prefix}{}_{}", &random[..10], &random[11..]),
        ] {
            assert!(found(pattern, &near).is_empty(), "{pattern} found {near}");
        }
    }
    assert!(found(&default, &format!("{STATIC_SECRET} {}", others[0])).is_empty());

    // The Python snippet, as the README gives it, on the same secrets and their typos.
    let python = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "{snippet}\nimport sys\nfor s in sys.argv[1:]:\n    print(checksum_ok(s))\n"
        ))
        .args(secrets.iter().chain(&others))
        .args(secrets.iter().chain(&others).map(|s| mistyped(s)))
        .output();
    let out = match python {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
            eprintln!("python3 is not installed: the README's checksum snippet was not run");
            return;
        }
        Err(e) => panic!("cannot run python3: {e}"),
    };
    assert!(out.status.success(), "{}", text(&out.stderr));
    let n = secrets.len() + others.len();
    let mut want = vec!["True"; n];
    want.extend(vec!["False"; n]);
    assert_eq!(text(&out.stdout).lines().collect::<Vec<_>>(), want);
}

/// What the upstream got from the request both stripping tests send (the key in `X-Key`, as a
/// bearer token beside a Basic login, and as the `kg_key` cookie among others): everything but
/// the key, byte for byte.
fn assert_only_the_key_left(echo: &Echo) {
    assert!(!echo.has("x-key"), "{echo:?}");
    // The Basic login is the upstream's; only the bearer token was the key.
    assert_eq!(echo.all("authorization"), ["Basic dXNlcjpwYXNz"]);
    // Every other cookie byte for byte, separators included.
    assert_eq!(
        echo.all("cookie"),
        ["theme=dark;  sid=\"a b\"; empty=; lang=en"]
    );
    assert_eq!(echo.one("x-other"), Some("kept"));
}
