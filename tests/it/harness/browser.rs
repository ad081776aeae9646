//! A real browser for the key console's tests (issue 15): Debian's `chromium`, headless, driven
//! over WebDriver by Debian's `chromedriver` through the `fantoccini` client.
//!
//! Every [`Browser`] is its own `chromedriver` (on a port it picks itself and prints) and its own
//! Chromium with a fresh profile directory, so tests run in parallel without sharing cookies or
//! a driver. `chromedriver` is started in a process group of its own and the whole group is
//! killed when the `Browser` is dropped, so a failing test leaves no Chromium behind.
//!
//! Without `chromium` and `chromedriver` on the machine these tests say so and pass, so that
//! `cargo test` works anywhere; under `CI` they fail instead (`.ci/run` installs both).
//!
//! Every wait is bounded ([`WAIT`]), and every helper names what it waited for in its failure.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use serde_json::{Value, json};

use super::admin::Dir;
use super::*;

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The longest a page may take to show what a test waits for.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long chromedriver may take to start listening.
const DRIVER_START: Duration = Duration::from_secs(20);
/// How long a new Chromium session may take.
const SESSION_START: Duration = Duration::from_secs(30);
/// Output lines kept from chromedriver, at most.
const MAX_DRIVER_LINES: usize = 10_000;

/// The two window sizes the console must be readable at (issue 15).
pub const DESKTOP: (u32, u32) = (1280, 800);
pub const PHONE: (u32, u32) = (390, 844);

/// False (after saying why) when chromium or chromedriver is missing and `CI` is unset.
pub fn browser_installed() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{missing:?} not installed (.ci/run installs chromium and chromium-driver)"
    );
    eprintln!("SKIPPED: {missing:?} not installed (apt-get install chromium chromium-driver)");
    false
}

/// Where the tests write their screenshots.
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
}

/// One headless Chromium session and the chromedriver that runs it.
pub struct Browser {
    pub client: Client,
    driver: Child,
    driver_log: Arc<Mutex<Vec<String>>>,
    /// The profile directory; removed after the processes are killed (field order).
    _profile: Dir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver leads its own process group and Chromium's processes are in it: one
        // signal ends them all, even when the test panicked mid-session.
        let pgid = self.driver.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Starts chromedriver on a port it picks (`--port=0`) and returns it with that port, read from
/// its "started successfully on port N" line.
fn start_driver() -> (Child, u16, Arc<Mutex<Vec<String>>>) {
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new(CHROMEDRIVER)
        .arg("--port=0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start chromedriver");
    let stdout = child.stdout.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads to the end, so chromedriver never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout)
            .lines()
            .take(MAX_DRIVER_LINES)
            .map_while(Result::ok)
        {
            if let Some(port) = line
                .split("started successfully on port ")
                .nth(1)
                .and_then(|p| p.trim_end_matches('.').trim().parse::<u16>().ok())
            {
                let _ = tx.send(port);
            }
            sink.lock().unwrap().push(line);
        }
    });
    match rx.recv_timeout(DRIVER_START) {
        Ok(port) => (child, port, log),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromedriver did not say its port within {DRIVER_START:?}: {:#?}",
                log.lock().unwrap()
            );
        }
    }
}

impl Browser {
    /// A fresh headless Chromium at 1280x800; `None` when it is not installed (see
    /// [`browser_installed`]).
    pub async fn start(name: &str) -> Option<Browser> {
        if !browser_installed() {
            return None;
        }
        let profile = Dir::new(&format!("chromium-{name}"));
        let (driver, port, driver_log) = start_driver();
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--password-store=basic".to_owned(),
            format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            // A test that leaves a confirm() open fails on its next command instead of hanging.
            "unhandledPromptBehavior": "dismiss and notify",
            "timeouts": { "script": 10_000, "pageLoad": 20_000, "implicit": 0 },
            // The console's messages (a CSP violation is one), read by `console_errors`.
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut builder = ClientBuilder::new(connector);
        builder.capabilities(caps);
        let url = format!("http://127.0.0.1:{port}");
        let connect = builder.connect(&url);
        let client = match tokio::time::timeout(SESSION_START, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!(
                "no Chromium session: {e}; chromedriver said {:#?}",
                driver_log.lock().unwrap()
            ),
            Err(_) => panic!("no Chromium session within {SESSION_START:?}"),
        };
        let browser = Browser {
            client,
            driver,
            driver_log,
            _profile: profile,
        };
        browser.set_viewport(DESKTOP).await;
        Some(browser)
    }

    /// Loads `url` and waits for its `load` event.
    pub async fn goto(&self, url: &str) {
        within(&format!("load {url}"), self.client.goto(url))
            .await
            .unwrap_or_else(|e| panic!("cannot load {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page; its return value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        within("a script", self.client.execute(script, args))
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Runs `script` in the page until it calls its last argument (the callback) with a value.
    pub async fn js_async(&self, script: &str, args: Vec<Value>) -> Value {
        within("an async script", self.client.execute_async(script, args))
            .await
            .unwrap_or_else(|e| panic!("async script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns something truthy (at most [`WAIT`]); returns that.
    pub async fn wait_js(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let start = std::time::Instant::now();
        let mut last = Value::Null;
        // Each probe is a round trip to the browser (a few ms): the count bounds it too.
        for _ in 0..2_000 {
            last = self.js(script, args.clone()).await;
            if truthy(&last) {
                return last;
            }
            if start.elapsed() >= WAIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("not within {WAIT:?}: {what} (last: {last})");
    }

    /// Waits until the element `css` is shown (in the layout, not hidden), and returns it.
    pub async fn wait_for(&self, css: &str) -> Element {
        self.wait_js(
            &format!("{css} to be shown"),
            "const e = document.querySelector(arguments[0]); return !!e && e.checkVisibility();",
            vec![json!(css)],
        )
        .await;
        self.find(css).await
    }

    /// Waits until nothing matching `css` is shown (absent or hidden).
    pub async fn wait_gone(&self, css: &str) {
        self.wait_js(
            &format!("{css} to be gone"),
            "return [...document.querySelectorAll(arguments[0])].every(e => !e.checkVisibility());",
            vec![json!(css)],
        )
        .await;
    }

    /// Whether any element matching `css` is shown now.
    pub async fn shown(&self, css: &str) -> bool {
        let v = self
            .js(
                "return [...document.querySelectorAll(arguments[0])].some(e => e.checkVisibility());",
                vec![json!(css)],
            )
            .await;
        v == json!(true)
    }

    /// Waits until `<dialog id=...>` is open.
    pub async fn wait_dialog(&self, id: &str) {
        self.wait_js(
            &format!("dialog #{id} to open"),
            "const d = document.getElementById(arguments[0]); return !!d && d.open;",
            vec![json!(id)],
        )
        .await;
    }

    /// Waits until `<dialog id=...>` is closed.
    pub async fn wait_dialog_closed(&self, id: &str) {
        self.wait_js(
            &format!("dialog #{id} to close"),
            "const d = document.getElementById(arguments[0]); return !!d && !d.open;",
            vec![json!(id)],
        )
        .await;
    }

    /// The element matching `css`, now.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
    }

    /// Clicks the element matching `css` once it is shown.
    pub async fn click_css(&self, css: &str) {
        let el = self.wait_for(css).await;
        within(&format!("click {css}"), el.click())
            .await
            .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    /// Clicks `#id` once it is shown.
    pub async fn click(&self, id: &str) {
        self.click_css(&format!("#{id}")).await;
    }

    /// Replaces the text of the input `#id` with `text`, typed as a person would.
    pub async fn fill(&self, id: &str, text: &str) {
        let el = self.wait_for(&format!("#{id}")).await;
        el.clear()
            .await
            .unwrap_or_else(|e| panic!("cannot clear #{id}: {e}"));
        within(&format!("type into #{id}"), el.send_keys(text))
            .await
            .unwrap_or_else(|e| panic!("cannot type into #{id}: {e}"));
    }

    /// The rendered text of `css` (empty when hidden).
    pub async fn text_of(&self, css: &str) -> String {
        self.find(css)
            .await
            .text()
            .await
            .unwrap_or_else(|e| panic!("no text of {css}: {e}"))
    }

    /// The `value` property of the input `css`.
    pub async fn value_of(&self, css: &str) -> String {
        let v = self
            .js(
                "const e = document.querySelector(arguments[0]); return e ? e.value : null;",
                vec![json!(css)],
            )
            .await;
        v.as_str()
            .unwrap_or_else(|| panic!("no input {css}"))
            .to_owned()
    }

    /// The whole page's visible text.
    pub async fn page_text(&self) -> String {
        let v = self.js("return document.body.innerText;", vec![]).await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Sets the window so that the page's viewport is `w` x `h` CSS pixels (the window's outer
    /// size differs from its viewport by whatever frame it has, measured here).
    pub async fn set_viewport(&self, (w, h): (u32, u32)) {
        let (mut ow, mut oh) = (w, h);
        // A resize can land after the next measure on a loaded machine: measure again, a few
        // times, before calling it impossible.
        for attempt in 0..10 {
            within("resize", self.client.set_window_size(ow, oh))
                .await
                .unwrap_or_else(|e| panic!("cannot resize to {ow}x{oh}: {e}"));
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            let inner = self
                .js("return [window.innerWidth, window.innerHeight];", vec![])
                .await;
            let (iw, ih) = (
                inner[0].as_u64().unwrap() as u32,
                inner[1].as_u64().unwrap() as u32,
            );
            if (iw, ih) == (w, h) {
                return;
            }
            ow = (ow + w).saturating_sub(iw);
            oh = (oh + h).saturating_sub(ih);
        }
        panic!("cannot get a {w}x{h} viewport");
    }

    /// Takes a screenshot of the viewport at `size` as `target/console-screenshots/
    /// {name}-{w}x{h}.png`, and returns its path. With `KEYGATE_UPDATE_SCREENSHOT=1`, the
    /// 1280x800 keys page is also copied to `docs/console.png` (README.md shows it).
    pub async fn screenshot(&self, name: &str, size: (u32, u32)) -> PathBuf {
        self.set_viewport(size).await;
        // Let the layout settle after the resize (two frames).
        self.js_async(
            "const done = arguments[arguments.length - 1];\
             requestAnimationFrame(() => requestAnimationFrame(() => done(true)));",
            vec![],
        )
        .await;
        let png = within("screenshot", self.client.screenshot())
            .await
            .unwrap_or_else(|e| panic!("no screenshot: {e}"));
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}-{}x{}.png", size.0, size.1));
        std::fs::write(&path, &png).unwrap();
        if name == "keys"
            && size == DESKTOP
            && std::env::var("KEYGATE_UPDATE_SCREENSHOT").as_deref() == Ok("1")
        {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console.png");
            std::fs::write(&docs, &png).unwrap();
        }
        path
    }

    /// Every cookie of the current page, HttpOnly ones included (WebDriver sees them all).
    pub async fn cookies(&self) -> Vec<(String, String)> {
        let all = within("cookies", self.client.get_all_cookies())
            .await
            .unwrap_or_else(|e| panic!("no cookies: {e}"));
        all.iter()
            .map(|c| (c.name().to_owned(), c.value().to_owned()))
            .collect()
    }

    /// The browser console's messages since the last call (chromedriver's log endpoint): level
    /// and text of each.
    pub async fn console_messages(&self) -> Vec<(String, String)> {
        let got = within("the browser log", self.client.issue_cmd(BrowserLog))
            .await
            .unwrap_or_else(|e| panic!("no browser log: {e}"));
        got.as_array()
            .unwrap_or_else(|| panic!("the browser log is not a list: {got}"))
            .iter()
            .map(|m| {
                (
                    m["level"].as_str().unwrap_or_default().to_owned(),
                    m["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// chromedriver's output so far (for failure messages).
    pub fn driver_log(&self) -> Vec<String> {
        self.driver_log.lock().unwrap().clone()
    }
}

/// chromedriver's `POST /session/{id}/se/log {"type":"browser"}`: the console messages
/// collected since the last read (WebDriver itself has no log command).
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

/// JavaScript's truthiness, for values a script returns.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

// ---------------------------------------------------------------------------------------------
// The console
// ---------------------------------------------------------------------------------------------

/// The console's address on the admin listener `admin`.
pub fn console_url(admin: SocketAddr) -> String {
    format!("http://{admin}/")
}

impl Browser {
    /// Opens the console at `admin` and waits for the sign-in form.
    pub async fn open_console(&self, admin: SocketAddr) {
        self.goto(&console_url(admin)).await;
        self.wait_for("#sign-in").await;
    }

    /// Types `key` into the sign-in form and submits it (the outcome is the caller's to check).
    pub async fn sign_in(&self, key: &str) {
        self.fill("admin-key", key).await;
        self.click("sign-in-button").await;
    }

    /// Signs in with `key` and waits for the keys table and the header naming who signed in;
    /// returns that header's text.
    pub async fn sign_in_ok(&self, key: &str) -> String {
        self.sign_in(key).await;
        self.wait_for("#keys-table").await;
        self.wait_for("#who").await;
        self.wait_gone("#sign-in").await;
        self.text_of("#who").await
    }

    /// Waits until the keys table has a row for key `id`.
    pub async fn wait_key_row(&self, id: &str) {
        self.wait_for(&row_css(id)).await;
    }

    /// Clicks the `data-action` button `action` in the row of key `id`.
    pub async fn key_action(&self, id: &str, action: &str) {
        self.click_css(&format!("{} [data-action=\"{action}\"]", row_css(id)))
            .await;
    }

    /// `fetch(path, init)` from the page (so with its cookie and origin); the answer's status
    /// and body text.
    pub async fn fetch(&self, path: &str, init: Value) -> (u16, String) {
        let v = self
            .js_async(
                "const done = arguments[arguments.length - 1];\
                 fetch(arguments[0], arguments[1])\
                   .then(r => r.text().then(t => done([r.status, t])))\
                   .catch(e => done([0, String(e)]));",
                vec![json!(path), init],
            )
            .await;
        (
            v[0].as_u64().unwrap() as u16,
            v[1].as_str().unwrap_or_default().to_owned(),
        )
    }
}

impl Browser {
    /// Picks the option `value` of `<select id=...>` as a person would (the page sees `change`).
    pub async fn select(&self, id: &str, value: &str) {
        self.wait_js(
            &format!("option {value:?} in #{id}"),
            "const s = document.getElementById(arguments[0]);\
             return !!s && [...s.options].some(o => o.value === arguments[1]);",
            vec![json!(id), json!(value)],
        )
        .await;
        let el = self.wait_for(&format!("#{id}")).await;
        within(
            &format!("select {value:?} in #{id}"),
            el.select_by_value(value),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot select {value:?} in #{id}: {e}"));
    }

    /// Waits for the secret dialog to hold a secret, and returns it.
    pub async fn shown_secret(&self) -> String {
        self.wait_dialog("secret-dialog").await;
        self.wait_js(
            "a secret in #secret-value",
            "return document.getElementById('secret-value').value;",
            vec![],
        )
        .await
        .as_str()
        .unwrap()
        .to_owned()
    }

    /// The attribute `attr` of every element matching `css`, in document order.
    pub async fn attrs(&self, css: &str, attr: &str) -> Vec<String> {
        let v = self
            .js(
                "return [...document.querySelectorAll(arguments[0])]\
                   .map(e => e.getAttribute(arguments[1]) || '');",
                vec![json!(css), json!(attr)],
            )
            .await;
        serde_json::from_value(v).unwrap()
    }

    /// The ids of the keys table's rows, top to bottom.
    pub async fn key_rows(&self) -> Vec<String> {
        self.attrs("#keys-table tr[data-key-id]", "data-key-id")
            .await
    }

    /// The `id` of the focused element ("" when it has none, or nothing is focused).
    pub async fn focused_id(&self) -> String {
        let v = self
            .js(
                "const a = document.activeElement; return a ? a.id : '';",
                vec![],
            )
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Presses `keys` one after another through WebDriver key actions (no element is
    /// targeted: they go wherever the focus is). With `shift`, Shift is held throughout.
    pub async fn press(&self, keys: &[char], shift: bool) {
        use fantoccini::actions::{InputSource as _, KeyAction, KeyActions};
        let shift_key: char = fantoccini::key::Key::Shift.into();
        let mut seq = KeyActions::new("keyboard".to_owned());
        if shift {
            seq = seq.then(KeyAction::Down { value: shift_key });
        }
        for &k in keys {
            seq = seq
                .then(KeyAction::Down { value: k })
                .then(KeyAction::Up { value: k });
        }
        if shift {
            seq = seq.then(KeyAction::Up { value: shift_key });
        }
        within("key actions", self.client.perform_actions(seq))
            .await
            .unwrap_or_else(|e| panic!("cannot press {keys:?}: {e}"));
    }

    /// Types `text` into whatever has the focus, through key actions.
    pub async fn type_keys(&self, text: &str) {
        let chars: Vec<char> = text.chars().collect();
        self.press(&chars, false).await;
    }

    /// Presses Tab (Shift+Tab when `back`) until `#id` has the focus, at most `max` times;
    /// returns how many presses it took.
    pub async fn tab_to(&self, id: &str, back: bool, max: usize) -> usize {
        let tab: char = fantoccini::key::Key::Tab.into();
        let mut seen = Vec::new();
        for n in 0..=max {
            let now = self.focused_id().await;
            if now == id {
                return n;
            }
            seen.push(now);
            if n < max {
                self.press(&[tab], back).await;
            }
        }
        panic!("#{id} not reached with {max} Tab presses (focus went {seen:?})");
    }
}

/// The CSS selector of key `id`'s row in the keys table.
pub fn row_css(id: &str) -> String {
    format!("#keys-table tr[data-key-id=\"{id}\"]")
}

/// keygate (the binary, on its test files) and a browser of the test's own: what every console
/// test starts.
pub struct ConsoleGate {
    pub browser: Browser,
    pub kg: Process,
    pub files: super::admin::Files,
}

impl ConsoleGate {
    /// `None` when there is no browser (the test then passes, having said so).
    pub async fn start(name: &str) -> Option<ConsoleGate> {
        ConsoleGate::start_with(name, "").await
    }

    /// With `admin_lines` at the top of the config's `[admin]` table.
    pub async fn start_with(name: &str, admin_lines: &str) -> Option<ConsoleGate> {
        if !browser_installed() {
            return None;
        }
        let files = super::admin::Files::for_binary(name, Some(super::admin::INITIAL_KEYS)).await;
        if !admin_lines.is_empty() {
            files.add_to_admin(admin_lines);
        }
        let kg = Process::start(&files.config).await;
        let browser = Browser::start(name).await?;
        Some(ConsoleGate { browser, kg, files })
    }

    /// Started, the console opened and signed in with `key`.
    pub async fn signed_in(name: &str, key: &str) -> Option<ConsoleGate> {
        let c = ConsoleGate::start(name).await?;
        c.browser.open_console(c.kg.admin).await;
        c.browser.sign_in_ok(key).await;
        Some(c)
    }

    /// Opens the console and signs in as `ops` (role admin).
    pub async fn sign_in(&self) {
        self.browser.open_console(self.kg.admin).await;
        self.browser.sign_in_ok(super::admin::ADMIN_SECRET).await;
    }

    /// The admin API as the `admin` role (`X-API-Key`).
    pub fn api(&self) -> super::admin::Api {
        self.kg.api()
    }

    /// The session cookie's value as the browser holds it.
    pub async fn session_cookie(&self) -> Option<String> {
        self.browser
            .cookies()
            .await
            .into_iter()
            .find(|(name, value)| name == "kg_session" && !value.is_empty())
            .map(|(_, value)| value)
    }

    /// The id of the one key named `name`, through the admin API (`None`: no such key).
    pub async fn key_named(&self, name: &str) -> Option<String> {
        let keys = self.api().all_keys("").await;
        let found: Vec<&Value> = keys.iter().filter(|k| k["name"] == name).collect();
        assert!(found.len() <= 1, "{} keys named {name:?}", found.len());
        found.first().map(|k| k["id"].as_str().unwrap().to_owned())
    }

    /// The ids of the keys the API lists for `query` (e.g. `&status=inactive`), every page.
    pub async fn key_ids(&self, query: &str) -> Vec<String> {
        super::admin::ids(&self.api().all_keys(query).await)
    }
}

/// RFC 3339 (whole seconds) of now + `days`.
pub fn in_days(days: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::days(days))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}
