//! The key console's session API as a browser uses it, without a browser: sign in with an
//! admin key for the `kg_session` cookie, then send requests with the cookie, the CSRF token
//! and the headers a browser adds (`Origin`, `Sec-Fetch-Site`), over plain HTTP or TLS.
//!
//! Every request goes on a fresh connection with `Host` set to the admin listener's address, as
//! a browser at `http://127.0.0.1:<port>/` sends it; the listener's own origin is
//! [`Console::origin`].

use rustls::ClientConfig;
use serde_json::Value;

use super::admin::expect;
use super::live::tls_connect;
use super::*;

/// The admin listener as a browser talks to it.
#[derive(Clone)]
pub struct Console {
    pub addr: SocketAddr,
    /// `Some`: HTTPS, trusting this client configuration (verified as `localhost`).
    tls: Option<Arc<ClientConfig>>,
    /// Over TLS: HTTP/2 (the client configuration must offer `h2`), as a browser speaks it.
    h2: bool,
}

impl Console {
    /// The admin listener at `addr`, over plain HTTP.
    pub fn plain(addr: SocketAddr) -> Console {
        Console {
            addr,
            tls: None,
            h2: false,
        }
    }

    /// The admin listener at `addr`, over HTTPS with `config`.
    pub fn tls(addr: SocketAddr, config: Arc<ClientConfig>) -> Console {
        Console {
            addr,
            tls: Some(config),
            h2: false,
        }
    }

    /// The admin listener at `addr`, over HTTPS with `config` (which must offer ALPN `h2`),
    /// speaking HTTP/2: `Host` is then the request's `:authority`.
    pub fn tls_h2(addr: SocketAddr, config: Arc<ClientConfig>) -> Console {
        Console {
            addr,
            tls: Some(config),
            h2: true,
        }
    }

    /// The `Host` a browser sends: `127.0.0.1:<port>`, or `localhost:<port>` over TLS (the name
    /// the test certificates are for).
    pub fn host(&self) -> String {
        match self.tls {
            None => self.addr.to_string(),
            Some(_) => format!("localhost:{}", self.addr.port()),
        }
    }

    /// The listener's own origin, as a browser on the console's page sends it.
    pub fn origin(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// Sends `method path` with exactly `headers` (plus `Host`, and `Content-Type` with a
    /// body) on a fresh connection.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        let host = self.host();
        let mut all: Vec<(&str, &str)> = Vec::new();
        if !self.h2 {
            all.push(("host", host.as_str()));
        }
        all.extend_from_slice(headers);
        if body.is_some() {
            all.push(("content-type", "application/json"));
        }
        let body = body.map_or_else(empty, |b| full(b.to_owned()));
        match &self.tls {
            None => {
                let req = request(method, path, &all, body);
                H1::connect(self.addr).await.send(req).await
            }
            Some(config) => {
                let tls = tls_connect(self.addr, config.clone()).await;
                if self.h2 {
                    let uri = format!("https://{host}{path}");
                    let resp = H2::over_tls(tls)
                        .await
                        .send(h2_request_to(method, &uri, &all, body))
                        .await;
                    assert_eq!(resp.version, Version::HTTP_2, "not HTTP/2");
                    resp
                } else {
                    let req = request(method, path, &all, body);
                    H1::over_tls(tls).await.send(req).await
                }
            }
        }
    }

    /// `POST /v1/session` with `secret`, from the console's own page (own `Origin`,
    /// `Sec-Fetch-Site: same-origin`).
    pub async fn sign_in(&self, secret: &str) -> Resp {
        let origin = self.origin();
        let body = serde_json::json!({ "key": secret }).to_string();
        self.send(
            "POST",
            "/v1/session",
            &[("origin", &origin), ("sec-fetch-site", "same-origin")],
            Some(&body),
        )
        .await
    }

    /// [`Console::sign_in`], which must answer 200 with a session cookie.
    pub async fn session(&self, secret: &str) -> Session {
        let resp = self.sign_in(secret).await;
        let body = expect(&resp, 200);
        let cookie = SetCookie::of(&resp);
        assert_eq!(cookie.name, COOKIE, "{cookie:?}");
        assert!(!cookie.value.is_empty(), "an empty session cookie");
        let csrf = body["csrf_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no csrf_token in {body}"))
            .to_owned();
        Session {
            console: self.clone(),
            token: cookie.value.clone(),
            csrf,
            body,
            sign_in_headers: resp.headers.clone(),
            set_cookie: cookie,
        }
    }
}

/// The session cookie's name.
pub const COOKIE: &str = "kg_session";

/// A `Set-Cookie` header, taken apart.
#[derive(Debug, Clone)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    /// The attributes as sent (`Path=/`, `HttpOnly`, ...), in order.
    pub attrs: Vec<String>,
}

impl SetCookie {
    /// The response's one `Set-Cookie` (it must have exactly one).
    #[track_caller]
    pub fn of(resp: &Resp) -> SetCookie {
        let all: Vec<&str> = resp
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(all.len(), 1, "expected one Set-Cookie, got {all:?}");
        let mut parts = all[0].split(';').map(str::trim);
        let (name, value) = parts
            .next()
            .and_then(|p| p.split_once('='))
            .unwrap_or_else(|| panic!("no name=value in Set-Cookie {:?}", all[0]));
        SetCookie {
            name: name.to_owned(),
            value: value.to_owned(),
            attrs: parts.map(str::to_owned).collect(),
        }
    }

    /// Its attributes, sorted.
    pub fn sorted_attrs(&self) -> Vec<String> {
        let mut a = self.attrs.clone();
        a.sort();
        a
    }
}

/// A signed-in browser: the cookie and the CSRF token from the sign-in answer.
pub struct Session {
    pub console: Console,
    /// The cookie's value.
    pub token: String,
    pub csrf: String,
    /// The sign-in answer and its headers.
    pub body: Value,
    pub sign_in_headers: http::HeaderMap,
    pub set_cookie: SetCookie,
}

impl Session {
    /// `Cookie: kg_session=<token>`.
    pub fn cookie(&self) -> String {
        format!("{COOKIE}={}", self.token)
    }

    /// Sends with the cookie and exactly `headers` besides.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Resp {
        let cookie = self.cookie();
        let mut all: Vec<(&str, &str)> = vec![("cookie", cookie.as_str())];
        all.extend_from_slice(headers);
        let body = body.map(Value::to_string);
        self.console.send(method, path, &all, body.as_deref()).await
    }

    /// A read as the page makes it: the cookie, `Sec-Fetch-Site: same-origin`.
    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[("sec-fetch-site", "same-origin")], None)
            .await
    }

    /// A change as the page makes it: the cookie, the CSRF token, the own `Origin` and
    /// `Sec-Fetch-Site: same-origin`.
    pub async fn change(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let origin = self.console.origin();
        let headers = [
            ("x-csrf-token", self.csrf.as_str()),
            ("origin", origin.as_str()),
            ("sec-fetch-site", "same-origin"),
        ];
        self.send(method, path, &headers, body).await
    }

    /// `DELETE /v1/session` as the page makes it.
    pub async fn sign_out(&self) -> Resp {
        self.change("DELETE", "/v1/session", None).await
    }
}
