//! The enrollment page in a real browser against the real system: Debian's headless Chromium,
//! driven over WebDriver by `chromedriver`, on the page the gateway serves, with the three
//! services running on LocalStack. It shows a submission completing with its points, one rolled
//! back once the bonus budget is spent, a server-side field error shown next to its field after
//! one request, a double click enrolling once, and a retry after a lost answer enrolling once
//! (the same `Idempotency-Key`), and the page following the saga without its events stream (and
//! backing off when the gateway does not hold its reads either), and, with confirmation
//! required, a person confirming through the mailed link in another tab; it
//! saves a screenshot of a finished timeline to `target/enrollment-page.png` (and, with
//! `UPDATE_SCREENSHOT=1`, to `docs/enrollment-page.png`, which README shows).
//!
//! Needs `chromium` and `chromedriver` on the PATH (Debian: `apt-get install chromium
//! chromium-driver`; `.ci/run` installs them). Without them the test fails, saying so.

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use testkit::{Backend, DEADLINE, Options, Patience, Poll, Process, Shown, System, eventually};

const INSTALL: &str = "install Debian's chromium and chromium-driver (apt-get update && apt-get install -y \
                       chromium chromium-driver); .ci/run does";

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Chromium under chromedriver, both gone on drop.
struct Browser {
    client: Client,
    /// A test that fails leaves its WebDriver session open: dropping the process stops
    /// chromedriver's whole process group, Chromium included, so no browser outlives the test.
    _driver: Process,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let chromium = on_path(&["chromium", "chromium-browser"])
            .unwrap_or_else(|| panic!("the browser test needs Chromium, which is not on the PATH: {INSTALL}"));
        let chromedriver = on_path(&["chromedriver"])
            .unwrap_or_else(|| panic!("the browser test needs chromedriver, which is not on the PATH: {INSTALL}"));
        let port = testkit::free_port();
        let profile = tempfile::tempdir().expect("a profile directory");
        // Its output (and Chromium's) goes to a file beside the profile, not into the test's.
        let mut driver = Process::new("chromedriver", &chromedriver)
            .arg(format!("--port={port}"))
            .log_file(profile.path().join("chromedriver.log"));
        driver
            .start()
            .unwrap_or_else(|e| panic!("starting {}: {e:#}", chromedriver.display()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--window-size=820,760",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let webdriver = format!("http://127.0.0.1:{port}");
        let what = format!("a WebDriver session from chromedriver on {webdriver}");
        let patience = Patience::within(Duration::from_secs(30)).every(Duration::from_millis(200));
        let client = eventually(&what, patience, async || {
            let attempt = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&webdriver)
                .await;
            match attempt {
                Ok(client) => Poll::Ready(client),
                Err(e) => Poll::Pending(Shown(e)),
            }
        })
        .await
        .unwrap();
        Self {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    /// Reads the element's text, or nothing when it is not on the page.
    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until the element's text satisfies `ready`; returns it. Fails after [`DEADLINE`].
    async fn wait_text(&self, css: &str, ready: impl Fn(&str) -> bool) -> String {
        let waited = eventually(&format!("the expected text in {css}"), DEADLINE, async || {
            let text = self.text(css).await;
            Poll::ready_if(ready(&text), text.clone(), text)
        })
        .await;
        match waited {
            Ok(text) => text,
            Err(timed_out) => panic!("{timed_out}; page: {}", self.text("main").await),
        }
    }

    /// Loads the page afresh and types into the form.
    async fn fill(&self, url: &str, name: &str, email: &str) {
        self.client.goto(url).await.expect("the page loads");
        let field = |id: &'static str| async move {
            self.client
                .wait()
                .for_element(Locator::Id(id))
                .await
                .expect("form field")
        };
        field("name").await.send_keys(name).await.expect("type the name");
        field("email").await.send_keys(email).await.expect("type the e-mail");
    }

    async fn script(&self, js: &str) -> Value {
        self.client.execute(js, vec![]).await.expect("script runs")
    }

    /// Requests the page made to submit enrollments (the Resource Timing API lists each).
    async fn submissions(&self) -> u64 {
        self.script(
            "return performance.getEntriesByType('resource')
               .filter(e => new URL(e.name).pathname === '/api/enrollments').length;",
        )
        .await
        .as_u64()
        .expect("a count")
    }

    /// The statuses the timeline shows, in order.
    async fn timeline(&self) -> Vec<String> {
        let statuses = self
            .script("return Array.from(document.querySelectorAll('#timeline li'), li => li.dataset.status);")
            .await;
        serde_json::from_value(statuses).expect("statuses")
    }
}

async fn count(system: &System, sql: &str, bind: &str) -> i64 {
    testkit::scalar_i64(&system.gateway().pool, sql, bind).await
}

/// Customers the customer-api holds for `email`: one per submitted enrollment that got that far
/// (the gateway keeps no address once the `Enroll` is relayed).
async fn customers_with(system: &System, email: &str) -> i64 {
    testkit::scalar_i64(
        &system.customer.as_ref().unwrap().pool,
        "SELECT COUNT(*) FROM customers WHERE email = $1",
        email,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_enrolls_through_the_page() {
    // The browser first: without one, fail at once with how to install it.
    let browser = Browser::start().await;
    // The budget lets exactly one 500-point bonus through: the second enrollment rolls back.
    let system = System::start(
        Backend::Sqlite,
        Options {
            bonus_budget_points: Some(500),
            ..Options::default()
        },
    )
    .await;
    let page = system.url("/");
    let run = uuid::Uuid::new_v4().simple().to_string();

    // An address the browser's own e-mail check accepts but the gateway refuses (no dotted
    // domain): the 422's message appears next to the field, after exactly one request.
    browser.fill(&page, "Ada Lovelace", "a@b").await;
    browser
        .client
        .find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let message = browser.wait_text("#email-error", |t| !t.is_empty()).await;
    assert!(message.contains("domain"), "{message}");
    let email = browser.client.find(Locator::Id("email")).await.unwrap();
    assert_eq!(email.attr("aria-invalid").await.unwrap().as_deref(), Some("true"));
    assert_eq!(
        email.attr("aria-describedby").await.unwrap().as_deref(),
        Some("email-error")
    );
    assert_eq!(browser.submissions().await, 1, "one request left the page");
    assert_eq!(
        count(&system, "SELECT COUNT(*) FROM enrollments WHERE $1 = $1", "").await,
        0
    );

    // A valid submission follows the saga live to its outcome, with the points.
    let first = format!("ada-{run}@example.com");
    browser.fill(&page, "Ada Lovelace", &first).await;
    browser
        .client
        .find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let outcome = browser.wait_text("#outcome", |t| !t.is_empty()).await;
    assert!(
        outcome.starts_with("Completed") && outcome.contains("500 bonus points"),
        "{outcome}"
    );
    assert_eq!(browser.timeline().await, ["pending", "enrolled", "completed"]);
    let steps = browser.text("#timeline").await;
    assert!(steps.contains("took"), "each step shows how long it took: {steps}");
    assert!(!browser.text("#announce").await.is_empty(), "the outcome is announced");
    // Every run saves the finished timeline under target/; with UPDATE_SCREENSHOT=1 it also
    // replaces the one README shows (docs/), which is otherwise left as committed.
    let screenshot = browser.client.screenshot().await.expect("a screenshot");
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![manifest.join("../target/enrollment-page.png")];
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        paths.push(manifest.join("../docs/enrollment-page.png"));
    }
    for path in paths {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &screenshot).expect("save the screenshot");
    }

    // The budget is spent: the next enrollment is undone, and the page says why.
    let second = format!("grace-{run}@example.com");
    browser.fill(&page, "Grace Hopper", &second).await;
    browser
        .client
        .find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let outcome = browser.wait_text("#outcome", |t| !t.is_empty()).await;
    assert!(outcome.starts_with("Rolled back: "), "{outcome}");
    assert!(outcome.len() > "Rolled back: ".len() + 5, "a reason follows: {outcome}");
    eprintln!("the page says: {outcome}");
    assert_eq!(browser.timeline().await.last().map(String::as_str), Some("rolled_back"));

    // A double click submits once.
    let third = format!("alan-{run}@example.com");
    browser.fill(&page, "Alan Turing", &third).await;
    browser
        .script("const b = document.getElementById('submit'); b.click(); b.click(); return null;")
        .await;
    browser.wait_text("#outcome", |t| !t.is_empty()).await;
    assert_eq!(browser.submissions().await, 1, "the second click sent nothing");
    assert_eq!(customers_with(&system, &third).await, 1);
    assert_eq!(
        count(&system, "SELECT COUNT(*) FROM enrollments WHERE $1 = $1", "").await,
        3
    );

    // A retry after a lost answer reuses the submission's key: the request reached the gateway,
    // the page saw a network failure, the person pressed Enroll again, and one enrollment exists.
    let fourth = format!("edsger-{run}@example.com");
    browser.fill(&page, "Edsger Dijkstra", &fourth).await;
    browser
        .script(
            "const real = window.fetch; window.sentKeys = []; let lost = false;
             window.fetch = async (url, init) => {
               if (url === '/api/enrollments') window.sentKeys.push(init.headers['Idempotency-Key']);
               const response = await real(url, init);
               if (url === '/api/enrollments' && !lost) { lost = true; throw new TypeError('lost'); }
               return response;
             };
             return null;",
        )
        .await;
    browser
        .client
        .find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let error = browser.wait_text("#form-error", |t| !t.is_empty()).await;
    assert!(error.contains("try again"), "{error}");
    browser
        .client
        .find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_text("#outcome", |t| !t.is_empty()).await;
    let keys = browser.script("return window.sentKeys;").await;
    let keys: Vec<String> = serde_json::from_value(keys).expect("keys");
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0], keys[1], "the retry reused the submission's Idempotency-Key");
    assert_eq!(customers_with(&system, &fourth).await, 1);

    // Where the events stream is refused, the page follows the saga with held GETs instead.
    let fifth = format!("barbara-{run}@example.com");
    browser.fill(&page, "Barbara Liskov", &fifth).await;
    browser
        .script(
            "window.EventSource = class {
               constructor() { this.readyState = 2; this.handlers = []; this.refused = setTimeout(() => this.handlers.forEach(h => h()), 50); }
               addEventListener(type, handler) { if (type === 'error') this.handlers.push(handler); }
               close() {}
             };
             window.EventSource.CLOSED = 2;
             return null;",
        )
        .await;
    browser
        .client
        .find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let outcome = browser.wait_text("#outcome", |t| !t.is_empty()).await;
    assert!(outcome.starts_with("Rolled back: "), "{outcome}");
    assert_eq!(browser.timeline().await.first().map(String::as_str), Some("pending"));
    assert_eq!(browser.timeline().await.last().map(String::as_str), Some("rolled_back"));

    browser.client.clone().close().await.expect("the browser closes");
    system.stop().await;
}

/// The page without a stream (refused) and without held answers (no place to wait), on a saga
/// that cannot move (no bus): it must not hammer the gateway with GETs, but back off.
/// With confirmation required: the page says where the mail went and refuses a resend too soon;
/// the link from the mail, opened in another tab, confirms with one press (its token gone from
/// the address bar); the first tab's timeline goes on to the outcome by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_confirms_through_the_mail() {
    let browser = Browser::start().await;
    let system = System::start(
        Backend::Sqlite,
        Options {
            email_confirmation: gateway::EmailConfirmation::Required,
            ..Options::default()
        },
    )
    .await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let email = format!("ada-{run}@example.com");
    browser.fill(&system.url("/"), "Ada Lovelace", &email).await;
    browser
        .client
        .find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let waiting = browser.wait_text("#confirmation-text", |t| !t.is_empty()).await;
    assert!(waiting.contains("a…@example.com"), "{waiting}");
    browser
        .client
        .find(Locator::Id("resend"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let note = browser.wait_text("#resend-note", |t| !t.is_empty()).await;
    assert!(note.contains("less than a minute"), "{note}");

    // The mail's link, opened in another tab on this gateway (the test's gateway is not on the
    // link's origin): the token is in the fragment.
    let mail = testkit::mail::wait_for_one(&email).await;
    let token = mail.token().expect("a confirmation link").to_owned();
    let first_tab = browser.client.window().await.unwrap();
    let second_tab = browser.client.new_window(true).await.unwrap();
    browser.client.switch_to_window(second_tab.handle).await.unwrap();
    browser
        .client
        .goto(&system.url(&format!("/confirm#{token}")))
        .await
        .unwrap();
    let button = browser.client.wait().for_element(Locator::Id("confirm")).await.unwrap();
    let address = browser.script("return location.href;").await;
    assert!(
        !address.as_str().unwrap().contains(&token),
        "the token stays in the address bar: {address}"
    );
    let (_, before) = system.get_json("/api/enrollments?status=awaiting_confirmation").await;
    assert_eq!(
        before["enrollments"].as_array().map(Vec::len),
        Some(1),
        "opening the page confirmed: {before}"
    );
    button.click().await.unwrap();
    let confirmed = browser.wait_text("#outcome", |t| !t.is_empty()).await;
    assert!(confirmed.starts_with("Confirmed"), "{confirmed}");

    browser.client.switch_to_window(first_tab).await.unwrap();
    let outcome = browser.wait_text("#outcome", |t| !t.is_empty()).await;
    assert!(outcome.starts_with("Completed"), "{outcome}");
    assert_eq!(
        browser.timeline().await,
        ["pending", "awaiting_confirmation", "confirmed", "enrolled", "completed"]
    );
    assert!(
        browser.text("#confirmation").await.is_empty(),
        "the confirmation panel is gone"
    );
    browser.client.clone().close().await.expect("the browser closes");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_backs_off_when_the_gateway_does_not_hold_its_requests() {
    let browser = Browser::start().await;
    let api = testkit::api::GatewayApi::with_config(
        Backend::Sqlite,
        gateway::Config {
            max_event_streams: 0,
            max_waiting_requests: 0,
            ..testkit::gateway_config()
        },
    )
    .await;
    let server = testkit::api::Served::start(api.router.clone()).await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    browser
        .fill(&server.url("/"), "Patient Page", &format!("patient-{run}@example.com"))
        .await;
    browser
        .client
        .find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let reads = async || {
        browser
            .script(
                "return performance.getEntriesByType('resource').filter(e => {
                   const path = new URL(e.name).pathname;
                   return path.startsWith('/api/enrollments/') && !path.endsWith('/events');
                 }).length;",
            )
            .await
            .as_u64()
            .expect("a count")
    };
    eventually(
        "the page to fall back to reading the enrollment",
        DEADLINE,
        async || {
            let n = reads().await;
            Poll::ready_if(n >= 1, (), n)
        },
    )
    .await
    .unwrap();
    // A measurement window, not a wait for a condition: how many reads the page makes in it.
    // Backing off from 2 s (doubling, with up to half again of jitter) allows at most 3 in 6 s;
    // a page that asks again at once makes hundreds.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let n = reads().await;
    assert!(n <= 4, "the page read the enrollment {n} times in 6 s");
    server.stop().await;
}
