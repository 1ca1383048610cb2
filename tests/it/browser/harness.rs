//! The browser harness: `chromedriver` on a free port, headless Chromium
//! sessions through fantoccini, waiting on page conditions with deadlines,
//! the WebSocket frames a browser received (from DevTools' view of the
//! network, not from inside the page), and failure artifacts (a screenshot
//! and the page source of every open tab) under `target/browser-artifacts/`.
//!
//! A journey is written as an `async` block returning [`Outcome`] and run by
//! [`Journey::run`], which turns an `Err` or a panic into artifacts plus a
//! failure that names them, and always closes every WebDriver session;
//! dropping the [`Journey`] stops chromedriver and whatever it started.

use std::{
    fmt::Display,
    future::Future,
    io::Write,
    net::TcpStream,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use fantoccini::{
    actions::{InputSource, KeyAction, KeyActions},
    key::Key,
    Client, ClientBuilder, Locator,
};
use futures_util::FutureExt;
use serde_json::{json, Value};

use crate::helpers::{free_port, poll, poll_blocking, TestApp, COOKIE, PASSWORD, POLL};

/// Defines `state()`: the text of the chat's connection pill
/// (`#conn-state`), lower case and without its ellipsis; null without one.
const STATE: &str = "const state = () => { const pill = document.getElementById('conn-state');
    return pill ? pill.textContent.replace('…', '').trim().toLowerCase() : null; };";

/// What a journey step returns: `Err` says what did not happen.
pub type Outcome<T = ()> = Result<T, String>;

/// Fails the journey with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}
pub(crate) use ensure;

/// Adds what was being done to an error.
pub trait Ctx<T> {
    fn ctx(self, what: impl Display) -> Outcome<T>;
}

impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl Display) -> Outcome<T> {
        self.map_err(|err| format!("{what}: {err}"))
    }
}

/// How long a page condition may take unless a step says otherwise.
/// Generous for a loaded 2-core machine; a passing test never waits this long.
pub const PAGE_DEADLINE: Duration = Duration::from_secs(10);
/// The longest one journey may run before it counts as hung.
const JOURNEY_DEADLINE: Duration = Duration::from_secs(120);

/// Browser journeys share this: each runs its own chromedriver, browsers,
/// Redis and instances, but several Chromiums at once starve a 2-core
/// machine (and the timing-sensitive tests running beside them), so at most
/// this many journeys drive browsers at a time. Measured on 2 cores with
/// `--test-threads 8`: one at a time, the seven journeys take 55-60 s; two
/// at a time about 40 s, but an integration test beside them failed on
/// timing. Since then: fifteen journeys (with the two of the CLI tests),
/// one at a time, about 90 s with `--test-threads 2`.
static BROWSER_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

// ------------------------------------------------------------ binaries --

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

fn missing(what: &str) -> ! {
    panic!(
        "the browser tests need {what}, which is not installed. Install Chromium and its WebDriver with \
         `sudo apt-get install chromium chromium-driver` (Debian/Ubuntu), or run `scripts/test` as root, \
         which installs them."
    )
}

/// The Chromium binary: `$CHROMIUM` if set, else `chromium` on the PATH.
fn chromium_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    on_path("chromium").unwrap_or_else(|| missing("`chromium` (the browser)"))
}

fn chromedriver_binary() -> PathBuf {
    on_path("chromedriver").unwrap_or_else(|| missing("`chromedriver` (package chromium-driver)"))
}

// --------------------------------------------------------- chromedriver --

/// A `chromedriver` child in its own process group, so that stopping it
/// also stops every Chromium it started.
struct Driver {
    port: u16,
    child: Child,
}

impl Driver {
    async fn start(log: &Path) -> Driver {
        let binary = chromedriver_binary();
        for _ in 0..5 {
            let port = free_port();
            let log_file = std::fs::File::create(log).expect("chromedriver log file");
            let mut cmd = Command::new(&binary);
            cmd.arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log file"))
                .stderr(log_file);
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let child = cmd.spawn().unwrap_or_else(|err| panic!("cannot run {}: {err}", binary.display()));
            let mut driver = Driver { port, child };
            if driver.ready().await {
                return driver;
            }
            // Most likely the port was taken meanwhile; `driver` is dropped (killed).
        }
        panic!("chromedriver did not become ready on a free port (its log: {})", log.display());
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until `GET /status` says ready, or the process ends.
    async fn ready(&mut self) -> bool {
        let http = reqwest::Client::new();
        let status = format!("{}/status", self.url());
        let child = &mut self.child;
        let ready = poll(Duration::from_secs(15), || {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            let request = http.get(&status).timeout(Duration::from_secs(2)).send();
            async move {
                if exited {
                    return Some(false);
                }
                let body = request.await.ok()?.json::<Value>().await.ok()?;
                (body["value"]["ready"] == true).then_some(true)
            }
        })
        .await;
        ready == Some(true)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Ask it to quit its sessions (and their browsers) first.
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = write!(stream, "GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        }
        poll_blocking(Duration::from_secs(3), || self.child.try_wait().ok().flatten());
        // Whatever is left of its process group (Chromium helpers included).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --------------------------------------------------------------- journey --

/// One browser test: its chromedriver, its browsers, its artifacts.
pub struct Journey {
    name: String,
    driver: Driver,
    scratch: tempfile::TempDir,
    browsers: Mutex<Vec<Chrome>>,
    _slot: tokio::sync::SemaphorePermit<'static>,
}

impl Journey {
    /// Waits for a browser slot and starts chromedriver.
    pub async fn start(name: &str) -> Journey {
        // Fail on a missing browser before waiting for anything.
        chromium_binary();
        chromedriver_binary();
        let slot = BROWSER_SLOTS.acquire().await.expect("the semaphore is never closed");
        forget_old_artifacts(name);
        let scratch = tempfile::tempdir().expect("temp dir");
        let driver = Driver::start(&scratch.path().join("chromedriver.log")).await;
        Journey { name: name.to_owned(), driver, scratch, browsers: Mutex::new(Vec::new()), _slot: slot }
    }

    /// A new browser: its own WebDriver session, Chromium process and
    /// profile (so its own cookie jar).
    pub async fn browser(&self, name: &str) -> Outcome<Chrome> {
        self.browser_with(name, &[]).await
    }

    /// A new browser started with `switches` beside the usual ones (a host
    /// mapping, a certificate to accept).
    pub async fn browser_with(&self, name: &str, switches: &[String]) -> Outcome<Chrome> {
        let profile = self.scratch.path().join(format!("profile-{name}"));
        std::fs::create_dir_all(&profile).ctx("creating a browser profile directory")?;
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .chain(switches.iter().cloned())
        .collect::<Vec<_>>();
        // The performance log carries DevTools' network events, the
        // WebSocket frames among them (see `Chrome::frames_received`).
        let caps = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": { "performance": "ALL" },
            "goog:chromeOptions": {
                "binary": chromium_binary(),
                "args": args,
                "perfLoggingPrefs": { "enableNetwork": true, "enablePage": false },
            },
        });
        let caps = match caps {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.driver.url())
            .await
            .ctx(format!("starting browser {name} through chromedriver"))?;
        let chrome = Chrome { name: name.to_owned(), client, received: Arc::default() };
        self.browsers.lock().unwrap().push(chrome.clone());
        Ok(chrome)
    }

    /// Runs the journey. On an `Err`, a panic or a hang, saves a screenshot
    /// and the source of every tab of every browser, then fails naming
    /// them. Every WebDriver session is closed either way; chromedriver
    /// stops when the journey is dropped (also while unwinding).
    pub async fn run(&self, journey: impl Future<Output = Outcome>) {
        let outcome = tokio::time::timeout(JOURNEY_DEADLINE, AssertUnwindSafe(journey).catch_unwind()).await;
        let failure = match outcome {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(message))) => Some(message),
            Ok(Err(panic)) => Some(panic_message(&panic)),
            Err(_) => Some(format!("the journey did not finish within {JOURNEY_DEADLINE:?}")),
        };
        let saved = match &failure {
            Some(_) => self.save_artifacts().await,
            None => Vec::new(),
        };
        let browsers = std::mem::take(&mut *self.browsers.lock().unwrap());
        for chrome in browsers {
            let _ = tokio::time::timeout(Duration::from_secs(5), chrome.client.close()).await;
        }
        if let Some(message) = failure {
            panic!("{message}\nbrowser artifacts:\n  {}", saved.join("\n  "));
        }
    }

    async fn save_artifacts(&self) -> Vec<String> {
        let dir = artifacts_dir();
        if let Err(err) = std::fs::create_dir_all(&dir) {
            return vec![format!("(could not create {}: {err})", dir.display())];
        }
        let mut saved = Vec::new();
        let log = dir.join(format!("{}-chromedriver.log", self.name));
        if std::fs::copy(self.scratch.path().join("chromedriver.log"), &log).is_ok() {
            saved.push(log.display().to_string());
        }
        let browsers = self.browsers.lock().unwrap().clone();
        for chrome in browsers {
            let prefix = format!("{}-{}", self.name, chrome.name);
            match tokio::time::timeout(Duration::from_secs(15), chrome.save_artifacts(&dir, &prefix)).await {
                Ok(paths) => saved.extend(paths),
                Err(_) => saved.push(format!("({prefix}: the browser did not answer)")),
            }
        }
        saved
    }
}

fn artifacts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("browser-artifacts")
}

/// Removes what an earlier failed run of this journey left, so that the
/// directory only ever shows the latest failures.
fn forget_old_artifacts(journey: &str) {
    let prefix = format!("{journey}-");
    if let Ok(entries) = std::fs::read_dir(artifacts_dir()) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_owned()
    }
}

// ---------------------------------------------------------------- chrome --

/// One browser session. Clones share the session.
#[derive(Clone)]
pub struct Chrome {
    pub name: String,
    pub client: Client,
    /// Every WebSocket frame received so far, in order: chromedriver's
    /// performance log empties on each read, so what was read is kept here.
    received: Arc<Mutex<Vec<Value>>>,
}

impl Chrome {
    async fn save_artifacts(&self, dir: &Path, prefix: &str) -> Vec<String> {
        let mut saved = Vec::new();
        let tabs = self.client.windows().await.unwrap_or_default();
        let several = tabs.len() > 1;
        let tabs = if tabs.is_empty() { vec![None] } else { tabs.into_iter().map(Some).collect() };
        for (i, tab) in tabs.into_iter().enumerate() {
            let stem = if several { format!("{prefix}-tab{}", i + 1) } else { prefix.to_owned() };
            if let Some(tab) = tab {
                if several {
                    let _ = self.client.switch_to_window(tab).await;
                }
            }
            let url = self.client.current_url().await.map(|u| u.to_string()).unwrap_or_default();
            match self.client.screenshot().await {
                Ok(png) => saved.push(write_artifact(dir, &format!("{stem}.png"), &png)),
                Err(err) => saved.push(format!("({stem}.png: {err})")),
            }
            match self.client.source().await {
                Ok(html) => saved.push(write_artifact(dir, &format!("{stem}.html"), html.as_bytes())),
                Err(err) => saved.push(format!("({stem}.html: {err})")),
            }
            if let Some(last) = saved.last_mut() {
                last.push_str(&format!("  [{url}]"));
            }
        }
        saved
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> Outcome {
        self.client.goto(url).await.ctx(format!("{}: opening {url}", self.name))
    }

    /// Runs `script` in the page and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Outcome<Value> {
        self.client.execute(script, args).await.ctx(format!("{}: running script `{script}`", self.name))
    }

    /// Polls `script` until it returns something other than `null`, `false`
    /// or `undefined` and returns that. Script errors (a page in the middle
    /// of navigating) count as "not yet".
    pub async fn until_js(&self, what: &str, deadline: Duration, script: &str, args: Vec<Value>) -> Outcome<Value> {
        let last = std::cell::RefCell::new(Value::Null);
        let found = poll(deadline, || async {
            match self.client.execute(script, args.clone()).await {
                Ok(Value::Null) | Ok(Value::Bool(false)) => None,
                Ok(value) => Some(value),
                Err(err) => {
                    *last.borrow_mut() = Value::String(format!("script error: {err}"));
                    None
                }
            }
        })
        .await;
        match found {
            Some(value) => Ok(value),
            None => {
                let path = self.path().await.unwrap_or_else(|e| e);
                Err(format!(
                    "{}: timed out after {deadline:?} waiting for {what} (page {path}, last answer {})",
                    self.name,
                    last.into_inner()
                ))
            }
        }
    }

    /// Presses keys as a person would, on whatever has focus: each
    /// character of `keys` down and up in turn (fantoccini's [`Key`] values
    /// for Tab, Enter, Escape…). No element is addressed.
    pub async fn keys(&self, keys: &str) -> Outcome {
        let mut seq = KeyActions::new("keyboard".to_owned());
        for c in keys.chars() {
            seq = seq.then(KeyAction::Down { value: c }).then(KeyAction::Up { value: c });
        }
        self.client.perform_actions(seq).await.ctx(format!("{}: pressing keys {keys:?}", self.name))
    }

    /// Presses `key` while holding `modifier` (Shift+Tab).
    pub async fn chord(&self, modifier: Key, key: Key) -> Outcome {
        let (m, k) = (char::from(modifier), char::from(key));
        let seq = KeyActions::new("keyboard".to_owned())
            .then(KeyAction::Down { value: m })
            .then(KeyAction::Down { value: k })
            .then(KeyAction::Up { value: k })
            .then(KeyAction::Up { value: m });
        self.client.perform_actions(seq).await.ctx(format!("{}: pressing a chord", self.name))
    }

    /// The `id` of the focused element ("" for one without, or the body).
    pub async fn focused(&self) -> Outcome<String> {
        let v =
            self.js("const e = document.activeElement; return e && e !== document.body ? e.id : '';", vec![]).await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Sends a Chrome DevTools Protocol command to the current tab through
    /// chromedriver (`POST /session/{id}/goog/cdp/execute`). Emulations set
    /// this way (time zone, colour scheme, viewport) last across navigations
    /// of the tab.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Outcome<Value> {
        let command = Chromedriver { path: "goog/cdp/execute", body: json!({ "cmd": cmd, "params": params }) };
        self.client.issue_cmd(command).await.ctx(format!("{}: DevTools {cmd}", self.name))
    }

    /// The JSON text frames of `kind` (their `type`) that this browser's
    /// WebSockets have received, oldest first, in every tab. Read from
    /// DevTools' network events (chromedriver's performance log): what
    /// arrived on the wire, whatever the page made of it.
    pub async fn frames_received(&self, kind: &str) -> Outcome<Vec<Value>> {
        let command = Chromedriver { path: "se/log", body: json!({ "type": "performance" }) };
        let log = self.client.issue_cmd(command).await.ctx(format!("{}: reading the performance log", self.name))?;
        let mut received = self.received.lock().unwrap();
        for entry in log.as_array().into_iter().flatten() {
            let Some(event) = entry["message"].as_str().and_then(|m| serde_json::from_str::<Value>(m).ok()) else {
                continue;
            };
            let event = &event["message"];
            let response = &event["params"]["response"];
            // Opcode 1: a text frame.
            if event["method"] != "Network.webSocketFrameReceived" || response["opcode"] != 1 {
                continue;
            }
            if let Some(frame) = response["payloadData"].as_str().and_then(|p| serde_json::from_str(p).ok()) {
                received.push(frame);
            }
        }
        Ok(received.iter().filter(|frame| frame["type"] == kind).cloned().collect())
    }

    /// Makes the tab report `zone` (an IANA name) as its time zone.
    pub async fn time_zone(&self, zone: &str) -> Outcome {
        self.cdp("Emulation.setTimezoneOverride", json!({ "timezoneId": zone })).await.map(drop)
    }

    /// Makes `prefers-color-scheme` match `scheme` (`light` or `dark`).
    pub async fn color_scheme(&self, scheme: &str) -> Outcome {
        let features = json!([{ "name": "prefers-color-scheme", "value": scheme }]);
        self.cdp("Emulation.setEmulatedMedia", json!({ "features": features })).await.map(drop)
    }

    /// Sets the viewport to `width` × `height` CSS pixels; `mobile` also
    /// honours the page's `<meta name=viewport>` as a phone does.
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) -> Outcome {
        let params = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile });
        self.cdp("Emulation.setDeviceMetricsOverride", params).await.map(drop)
    }

    /// Saves a PNG of the viewport at `path`.
    pub async fn screenshot_to(&self, path: &Path) -> Outcome {
        let png = self.client.screenshot().await.ctx(format!("{}: taking a screenshot", self.name))?;
        std::fs::write(path, png).ctx(format!("writing {}", path.display()))
    }

    /// The path of the current page.
    pub async fn path(&self) -> Outcome<String> {
        let url = self.client.current_url().await.ctx(format!("{}: reading the URL", self.name))?;
        Ok(url.path().to_owned())
    }

    /// Waits until the browser shows `path`.
    pub async fn wait_path(&self, path: &str, deadline: Duration) -> Outcome {
        let at = std::cell::RefCell::new(String::new());
        let arrived = poll(deadline, || async {
            let now = self.path().await.unwrap_or_else(|e| e);
            let here = now == path;
            *at.borrow_mut() = now;
            here.then_some(())
        })
        .await;
        arrived.ok_or_else(|| {
            format!("{}: timed out after {deadline:?} waiting to be at {path}; at {}", self.name, at.into_inner())
        })
    }

    /// Waits for an element to exist.
    pub async fn wait_for(&self, css: &str) -> Outcome<fantoccini::elements::Element> {
        self.client
            .wait()
            .at_most(PAGE_DEADLINE)
            .every(POLL)
            .for_element(Locator::Css(css))
            .await
            .ctx(format!("{}: waiting for `{css}`", self.name))
    }

    /// Replaces the text of an input.
    pub async fn fill(&self, css: &str, text: &str) -> Outcome {
        let field = self.wait_for(css).await?;
        field.clear().await.ctx(format!("{}: clearing `{css}`", self.name))?;
        field.send_keys(text).await.ctx(format!("{}: typing into `{css}`", self.name))
    }

    pub async fn click(&self, css: &str) -> Outcome {
        let element = self.wait_for(css).await?;
        element.click().await.ctx(format!("{}: clicking `{css}`", self.name))
    }

    /// The text of an element.
    pub async fn text(&self, css: &str) -> Outcome<String> {
        let element = self.wait_for(css).await?;
        element.text().await.ctx(format!("{}: reading `{css}`", self.name))
    }

    /// The `textContent` of every element matching `css`, in document order.
    pub async fn texts(&self, css: &str) -> Outcome<Vec<String>> {
        let value = self
            .js("return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent);", vec![json!(css)])
            .await?;
        serde_json::from_value(value).ctx(format!("{}: reading the texts of `{css}`", self.name))
    }

    /// Waits until the texts of `css` satisfy `check`; returns them.
    pub async fn until_texts(
        &self,
        what: &str,
        css: &str,
        deadline: Duration,
        check: impl Fn(&[String]) -> bool,
    ) -> Outcome<Vec<String>> {
        let last = std::cell::RefCell::new(Ok(Vec::new()));
        let found = poll(deadline, || async {
            let texts = self.texts(css).await;
            let done = texts.as_ref().ok().filter(|t| check(t)).cloned();
            *last.borrow_mut() = texts;
            done
        })
        .await;
        found.ok_or_else(|| {
            format!(
                "{}: timed out after {deadline:?} waiting for {what}; `{css}` reads {:?}",
                self.name,
                last.into_inner()
            )
        })
    }

    /// The chat's connection state as its header says it to the reader
    /// (`Connected` → `connected`, `Reconnecting…` → `reconnecting`), or
    /// `None` on a page without one.
    pub async fn state(&self) -> Outcome<Option<String>> {
        let value = self.js(&format!("{STATE} return state();"), vec![]).await?;
        Ok(value.as_str().map(str::to_owned))
    }

    /// Waits until the chat's header says `state`.
    pub async fn wait_state(&self, state: &str, deadline: Duration) -> Outcome {
        let script = format!("{STATE} return state() === arguments[0];");
        self.until_js(&format!("the chat to be {state}"), deadline, &script, vec![json!(state)]).await.map(drop)
    }

    /// Waits until the chat's header says something other than `state`.
    pub async fn wait_not_state(&self, state: &str, deadline: Duration) -> Outcome {
        let script = format!("{STATE} const now = state(); return now !== null && now !== arguments[0];");
        self.until_js(&format!("the chat to stop being {state}"), deadline, &script, vec![json!(state)]).await.map(drop)
    }

    /// Registers `username` through the real form on `app` and waits for
    /// the lobby to be connected.
    pub async fn register(&self, app: &TestApp, username: &str) -> Outcome {
        self.enter_chat(app, "/register", "#register-submit", username).await
    }

    /// Signs in through the real form on `app` and waits for the lobby to
    /// be connected.
    pub async fn login(&self, app: &TestApp, username: &str) -> Outcome {
        self.enter_chat(app, "/login", "#login-submit", username).await
    }

    /// Fills the username/password form at `path`, submits it and waits for
    /// a connected lobby.
    async fn enter_chat(&self, app: &TestApp, path: &str, submit: &str, username: &str) -> Outcome {
        self.enter_chat_at(&app.url(path), submit, username).await
    }

    /// Registers `username` through the real form at `origin` (a proxy's)
    /// and waits for the lobby to be connected.
    pub async fn register_at(&self, origin: &str, username: &str) -> Outcome {
        self.enter_chat_at(&format!("{origin}/register"), "#register-submit", username).await
    }

    /// Fills the username/password form at `url`, submits it and waits for
    /// a connected lobby.
    async fn enter_chat_at(&self, url: &str, submit: &str, username: &str) -> Outcome {
        self.goto(url).await?;
        self.fill("#username", username).await?;
        self.fill("#password", PASSWORD).await?;
        self.click(submit).await?;
        self.wait_path("/chat/lobby", PAGE_DEADLINE).await?;
        self.wait_state("connected", PAGE_DEADLINE).await
    }

    /// Types a message and clicks Send.
    pub async fn send(&self, body: &str) -> Outcome {
        self.fill("#message-input", body).await?;
        self.click("#send").await
    }

    /// Types a message and presses Enter.
    pub async fn send_with_enter(&self, body: &str) -> Outcome {
        self.fill("#message-input", &format!("{body}{}", Key::Enter)).await
    }

    /// The bodies of the messages the server has confirmed (they have an
    /// id and are not pending), in page order.
    pub async fn confirmed_bodies(&self) -> Outcome<Vec<String>> {
        self.texts("#messages li.msg[data-id]:not(.pending) .msg-body").await
    }

    /// Waits until every one of `bodies` is shown confirmed.
    pub async fn wait_confirmed(&self, bodies: &[&str], deadline: Duration) -> Outcome<Vec<String>> {
        self.until_texts(
            &format!("messages {bodies:?} to be shown confirmed"),
            "#messages li.msg[data-id]:not(.pending) .msg-body",
            deadline,
            |shown| bodies.iter().all(|b| shown.iter().any(|s| s == b)),
        )
        .await
    }

    /// Runs one of the client's unit-test scripts (`browser/js/*.js`,
    /// which answer `{failures, checks}` through WebDriver's asynchronous
    /// execute) on the current page; fails on any failure, or on fewer
    /// than `at_least` checks (a script that stopped early).
    pub async fn unit_tests(&self, what: &str, script: &str, at_least: u64) -> Outcome {
        let result = self.client.execute_async(script, vec![]).await.ctx(format!("running {what}"))?;
        let failures = result["failures"].as_array().cloned().unwrap_or_default();
        println!("{what}: {} checks, {} failed", result["checks"], failures.len());
        ensure!(failures.is_empty() && result["checks"].as_u64().unwrap_or(0) >= at_least, "{what}: {result:#}");
        Ok(())
    }

    /// The value of the session cookie (HttpOnly, so read through WebDriver).
    pub async fn session_id(&self) -> Outcome<String> {
        let cookie =
            self.client.get_named_cookie(COOKIE).await.ctx(format!("{}: reading the {COOKIE} cookie", self.name))?;
        Ok(cookie.value().to_owned())
    }
}

/// One of chromedriver's own commands beside W3C WebDriver's:
/// `POST /session/{id}/{path}` with a JSON body (a DevTools command, the
/// performance log).
#[derive(Debug)]
struct Chromedriver {
    path: &'static str,
    body: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Chromedriver {
    fn endpoint(&self, base: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/{}", session_id.unwrap_or_default(), self.path))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

fn write_artifact(dir: &Path, file: &str, bytes: &[u8]) -> String {
    let path = dir.join(file);
    match std::fs::write(&path, bytes) {
        Ok(()) => path.display().to_string(),
        Err(err) => format!("({}: {err})", path.display()),
    }
}
