//! The web dashboard in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`; scripts/test.sh installs them) driven over the W3C WebDriver protocol,
//! against a real `lth-coordinator` (tokens on, Postgres) running a real CPU sweep on the bundled
//! digits with a real `lth-worker daemon`, and checked through `lthctl status`.
//!
//! Issue 14's "done when": the sweeps page lists the sweep; the sweep page's progress advances live
//! without a reload; the accuracy plot has one series per metric and one point per level; pausing
//! from the page pauses the sweep; a viewer token gets no buttons and its forged POST is refused.
//! And the retry button: a sweep whose dataset file is missing on the worker fails; its owner (a
//! submitter) sees the button, the file is put in place, Retry re-queues the failed jobs and the
//! sweep then succeeds with second attempts (lthctl status and the jobs table say so); an admin
//! sees the button on someone else's sweep, a viewer and another owner's submitter do not, and
//! their POSTs are refused.
//!
//! Needs `chromedriver` and `chromium` on PATH (or LTH_CHROMEDRIVER / LTH_CHROMIUM); without them
//! the test fails and says how to install them (it never skips).

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{bin, free_port, Proc, TestDb};
use lth_testkit::{Coordinator, CoordinatorOptions};

fn worker_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lth-worker"))
}

fn lthctl_bin() -> PathBuf {
    bin("lthctl")
}

fn token_line(role: &str, name: &str, token: &str) -> String {
    format!("{role} {name} sha256:{}\n", hex::encode(Sha256::digest(token.as_bytes())))
}

/// Starts the coordinator (on ports it picks itself) and returns it with its gRPC and HTTP URLs.
fn start_coordinator(dir: &Path, db: &str, auth_file: &Path) -> (Coordinator, String, String) {
    let opts = CoordinatorOptions::new(db, &dir.join("artifacts"))
        .args(["--auth-file", auth_file.to_str().unwrap(), "--heartbeat-seconds", "1", "--reap-interval-seconds", "1"]);
    let c = Coordinator::start("coordinator", &dir.join("coordinator.log"), &opts);
    let (grpc, http) = (c.url(), format!("http://{}", c.http.expect("the HTTP port")));
    (c, grpc, http)
}

fn lthctl(grpc: &str, token: &str, args: &[&str]) -> String {
    let out = Command::new(lthctl_bin()).args(args).env("LTH_COORDINATOR", grpc).env("LTH_TOKEN", token).output().expect("run lthctl");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "lthctl {args:?} failed: {text}");
    text
}

fn submit(dir: &Path, grpc: &str, token: &str, name: &str, metrics: &str, levels: u32, length: &str) -> i64 {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "name = \"{name}\"\nmodel = \"lenet300100\"\ndataset = {{ name = \"digits\" }}\nmetrics = [{metrics}]\nrates = [0.2]\nseeds = [1]\nlevels = {levels}\nmax_attempts = 2\n\
             [recipe]\nlength = \"{length}\"\nbatch_size = 64\nlr = 0.05\nmomentum = 0.9\nrewind = \"0it\"\ncheckpoint_every = \"10it\"\n"
        ),
    )
    .unwrap();
    let out = lthctl(grpc, token, &["submit", file.to_str().unwrap()]);
    let id = out.split("submitted sweep ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok());
    id.unwrap_or_else(|| panic!("no sweep id in lthctl's output: {out}"))
}

/// A safetensors dataset of two classes of 8×8 images (bright top / bright bottom half), written
/// byte by byte: `train_images`/`test_images` (N×8×8 uint8) and int64 labels.
fn write_safetensors(path: &Path, train: usize, test: usize) {
    let pixels = |class: usize, i: usize| -> Vec<u8> {
        (0..64).map(|p| (if (p < 32) == (class == 0) { 200u8 } else { 30 }).wrapping_add(((p * 7 + i * 13) % 23) as u8)).collect()
    };
    let mut tensors: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = Vec::new();
    for (images, labels, n) in [("train_images", "train_labels", train), ("test_images", "test_labels", test)] {
        let x: Vec<u8> = (0..n).flat_map(|i| pixels(i % 2, i)).collect();
        let y: Vec<u8> = (0..n).flat_map(|i| ((i % 2) as i64).to_le_bytes()).collect();
        tensors.push((images, "U8", vec![n, 8, 8], x));
        tensors.push((labels, "I64", vec![n], y));
    }
    let (mut header, mut offset) = (serde_json::Map::new(), 0);
    for (name, dtype, shape, data) in &tensors {
        header.insert(name.to_string(), json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.len()]}));
        offset += data.len();
    }
    let mut head = Value::Object(header).to_string();
    while !head.len().is_multiple_of(8) {
        head.push(' ');
    }
    let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
    bytes.extend(head.as_bytes());
    for (_, _, _, data) in &tensors {
        bytes.extend(data);
    }
    std::fs::write(path, bytes).unwrap();
}

/// A sweep on a safetensors file at `data` (on the worker; not checked at submit): 2 jobs (dense
/// and one level), one attempt each, so a missing file fails the sweep at once.
fn submit_on_file(dir: &Path, grpc: &str, token: &str, name: &str, data: &Path) -> i64 {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "name = \"{name}\"\nmodel = \"lenet300100\"\nmetrics = [\"magnitude\"]\nrates = [0.5]\nseeds = [1]\nlevels = 1\nmax_attempts = 1\n\
             [dataset]\nname = \"safetensors\"\npath = {:?}\n\
             [recipe]\nlength = \"2ep\"\nbatch_size = 16\nlr = 0.05\nrewind = \"0it\"\naugment = false\ncheckpoint_every = \"0it\"\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = lthctl(grpc, token, &["submit", file.to_str().unwrap()]);
    let id = out.split("submitted sweep ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok());
    id.unwrap_or_else(|| panic!("no sweep id in lthctl's output: {out}"))
}

/// POSTs `body` to `path` from the page (the browser's own cookies and origin); the status code.
async fn page_post(browser: &Browser, path: &str, body: &str) -> Value {
    browser
        .cmd(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({"script": format!(
                "var done = arguments[0]; \
                 fetch({path:?}, {{method: 'POST', headers: {{'content-type': 'application/x-www-form-urlencoded'}}, body: {body:?}}}).then(function (r) {{ done(r.status); }});"
            ), "args": []})),
        )
        .await
}

fn status_state(grpc: &str, token: &str, id: i64) -> String {
    let out = lthctl(grpc, token, &["status", &id.to_string()]);
    // "sweep 2 \"name\": paused  (lenet300100 on digits)"
    let first = out.lines().next().unwrap_or("");
    first.split("\": ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("").to_string()
}

// ---------------------------------------------------------------------------------------------
// A minimal W3C WebDriver client (JSON over HTTP).
// ---------------------------------------------------------------------------------------------

struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: Proc,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start(dir: &Path) -> Browser {
        let driver = std::env::var("LTH_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());

        // chromedriver takes a port number; a free one is picked for it.
        let port = free_port();
        let log = dir.join("chromedriver.log");
        if Command::new(&driver).arg("--version").output().is_err() {
            panic!("cannot run {driver}. Install headless Chromium: apt-get install -y chromium chromium-driver (scripts/test.sh does)");
        }
        let proc = Proc::spawn("chromedriver", Command::new(&driver).arg(format!("--port={port}")), &log);
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(t0.elapsed() < Duration::from_secs(30), "chromedriver did not answer within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut options = json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"]});
        // Debian's chromedriver finds /usr/bin/chromium itself; LTH_CHROMIUM picks another.
        if let Ok(binary) = std::env::var("LTH_CHROMIUM") {
            options["binary"] = json!(binary);
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}});
        let resp = Self::call(&http, reqwest::Method::POST, &format!("{base}/session"), Some(caps)).await;
        let session = resp["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {resp}")).to_string();
        Browser { http, base, session, _driver: proc }
    }

    async fn call(http: &reqwest::Client, method: reqwest::Method, url: &str, body: Option<Value>) -> Value {
        let mut req = http.request(method, url).header("content-type", "application/json");
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("WebDriver {url}: {e}"));
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert!(status.is_success(), "WebDriver {url} answered {status}: {v}");
        v["value"].clone()
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        Self::call(&self.http, method, &format!("{}/session/{}{path}", self.base, self.session), body).await
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": script, "args": [] }))).await
    }

    async fn find(&self, css: &str) -> String {
        let v = self.cmd(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await;
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {v}")).to_string()
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/click"), Some(json!({}))).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/value"), Some(json!({ "text": text }))).await;
    }

    /// Saves a PNG of the window to `$LTH_DASH_SHOTS/{name}.png` when that variable is set (to
    /// look at the pages; the test checks nothing in the picture).
    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("LTH_DASH_SHOTS") else { return };
        use base64::Engine;
        let png = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(PathBuf::from(dir).join(format!("{name}.png")), bytes).unwrap();
    }

    async fn delete_cookies(&self) {
        self.cmd(reqwest::Method::DELETE, "/cookie", None).await;
    }

    async fn login(&self, http: &str, token: &str, next: &str) {
        self.goto(&format!("{http}{next}")).await;
        let path = self.js("return location.pathname").await;
        assert_eq!(path, "/login", "a page without a session must send the browser to the login form");
        self.type_into("#token", token).await;
        self.click("#login").await;
        self.wait_js(&format!("return location.pathname === {:?}", next.split('?').next().unwrap()), Duration::from_secs(10), "the login to land on the page").await;
    }

    /// Waits until `script` returns true.
    async fn wait_js(&self, script: &str, within: Duration, what: &str) {
        let t0 = Instant::now();
        loop {
            if self.js(script).await == Value::Bool(true) {
                return;
            }
            assert!(t0.elapsed() < within, "waited {within:?} for {what} ({script})");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

}

impl Drop for Browser {
    fn drop(&mut self) {
        let (http, url) = (self.http.clone(), format!("{}/session/{}", self.base, self.session));
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async { let _ = http.delete(url).send().await; })
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium_follows_pauses_and_refuses_a_viewer() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create("lth_dash").await;
    let (admin, viewer, worker, submitter) = ("lth_admin_dash_test", "lth_viewer_dash_test", "lth_worker_dash_test", "lth_submitter_dash_test");
    let auth = dir.path().join("auth");
    std::fs::write(
        &auth,
        token_line("admin", "alice", admin) + &token_line("viewer", "victor", viewer) + &token_line("worker", "pool", worker) + &token_line("submitter", "sam", submitter),
    )
    .unwrap();
    let (_coord, grpc, http) = start_coordinator(dir.path(), &db.url, &auth);

    let mut wcmd = Command::new(worker_bin());
    wcmd.args(["daemon", "--coordinator", &grpc, "--worker-id", "w1", "--gpus", "none"])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["--job-threads", "1", "--poll-seconds", "0.2", "--progress-seconds", "0.3", "--kill-grace-seconds", "1"])
        .env("LTH_TOKEN", worker)
        .env("LTH_LOG", "info");
    let _worker = Proc::spawn("worker", &mut wcmd, &dir.path().join("worker.log"));

    // Sweep f (sam's) names a dataset file that is not there yet: its jobs fail at once, before
    // sweep a's start (the worker claims the oldest ready job first).
    let data = dir.path().join("data").join("two-classes.safetensors");
    let f = submit_on_file(dir.path(), &grpc, submitter, "dash-f", &data);
    let a = submit(dir.path(), &grpc, admin, "dash-a", "\"magnitude\", \"l1\"", 3, "2ep");
    let browser = Browser::start(dir.path()).await;

    // Sweeps page, after the login form.
    browser.login(&http, admin, "/").await;
    browser.wait_js(&format!("return !!document.querySelector('#sweeps tr[data-sweep=\"{a}\"]')"), Duration::from_secs(5), "the sweeps page to list the sweep").await;

    // Sweep page: progress advances live, without a reload.
    browser.goto(&format!("{http}/sweeps/{a}")).await;
    let origin = browser.js("return performance.timeOrigin").await;
    let before: i64 = browser.js("return Number(document.getElementById('c-succeeded').textContent)").await.as_i64().unwrap();
    let levels = 3;
    let total_jobs = 1 + 2 * levels; // the dense job and 3 levels of 2 metrics
    assert!(before < total_jobs, "the sweep finished before the page could watch it ({before} jobs succeeded)");
    browser
        .wait_js(&format!("return Number(document.getElementById('c-succeeded').textContent) > {before}"), Duration::from_secs(240), "the succeeded count to advance live")
        .await;
    assert_eq!(browser.js("return performance.timeOrigin").await, origin, "the page reloaded: progress must come over the live stream");
    assert!(browser.js("return Number(document.querySelector('.sweep').dataset.updates || 0)").await.as_i64().unwrap() > 0);

    // At the end: the accuracy plot has one series per metric with one point per level (0..=3),
    // refreshed on the page itself.
    browser.wait_js("return document.querySelector('.sweep').dataset.state === 'succeeded'", Duration::from_secs(300), "the page to show the sweep succeeded").await;
    browser
        .wait_js(
            "var s = document.querySelectorAll('svg.accuracy g.series'); return s.length === 2 && Array.from(s).every(function (g) { return g.querySelectorAll('circle.pt').length === 4; })",
            Duration::from_secs(15),
            "the accuracy plot to show 2 series of 4 points",
        )
        .await;
    assert_eq!(browser.js("return performance.timeOrigin").await, origin, "the page reloaded");
    let metrics = browser.js("return Array.from(document.querySelectorAll('svg.accuracy g.series')).map(function (g) { return g.dataset.metric; }).join(',')").await;
    assert_eq!(metrics, "magnitude,l1");
    assert_eq!(status_state(&grpc, admin, a), "succeeded");

    // Pausing from the page pauses the sweep (lthctl status says so).
    let b = submit(dir.path(), &grpc, admin, "dash-b", "\"magnitude\"", 4, "20ep");
    browser.goto(&format!("{http}/sweeps/{b}")).await;
    browser.click("#btn-pause").await;
    browser.wait_js("return document.querySelector('.sweep') && document.querySelector('.sweep').dataset.state === 'paused'", Duration::from_secs(10), "the page to show the sweep paused").await;
    assert_eq!(status_state(&grpc, admin, b), "paused");

    // A viewer sees no buttons, and a forged POST with its own session's CSRF token is refused.
    browser.delete_cookies().await;
    browser.login(&http, viewer, &format!("/sweeps/{b}")).await;
    assert_eq!(browser.js("return !!document.getElementById('btn-resume')").await, Value::Bool(false));
    assert_eq!(browser.js("return !!document.getElementById('read-only')").await, Value::Bool(true));
    let code = browser
        .cmd(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({"script": format!(
                "var done = arguments[0]; var csrf = document.querySelector('header input[name=csrf]').value; \
                 fetch('/sweeps/{b}/control', {{method: 'POST', headers: {{'content-type': 'application/x-www-form-urlencoded'}}, body: 'action=resume&csrf=' + csrf}}).then(function (r) {{ done(r.status); }});"
            ), "args": []})),
        )
        .await;
    assert_eq!(code, json!(403), "a viewer's POST must be refused");
    assert_eq!(status_state(&grpc, admin, b), "paused", "the viewer's refused resume changed nothing");

    // Sweep f failed (its file is missing). The viewer sees no retry button there either, and its
    // retry POST is refused.
    assert_eq!(status_state(&grpc, admin, f), "failed");
    browser.goto(&format!("{http}/sweeps/{f}")).await;
    assert_eq!(browser.js("return !!document.getElementById('btn-retry')").await, Value::Bool(false), "a viewer must get no retry button");
    assert_eq!(browser.js("return !!document.getElementById('read-only')").await, Value::Bool(true));
    let csrf = browser.js("return document.querySelector('header input[name=csrf]').value").await;
    let code = page_post(&browser, &format!("/sweeps/{f}/control"), &format!("action=retry&csrf={}", csrf.as_str().unwrap())).await;
    assert_eq!(code, json!(403), "a viewer's retry must be refused");
    assert_eq!(status_state(&grpc, admin, f), "failed", "the viewer's refused retry changed nothing");

    // A POST from another origin is refused even with an admin session.
    browser.delete_cookies().await;
    browser.login(&http, admin, &format!("/sweeps/{b}")).await;
    let csrf = browser.js("return document.querySelector('input[name=csrf]').value").await;
    let cookie = browser.cmd(reqwest::Method::GET, "/cookie/lth_session", None).await;
    assert_eq!(cookie["httpOnly"], json!(true), "the session cookie must be HttpOnly: {cookie}");
    assert_eq!(cookie["sameSite"], json!("Strict"), "the session cookie must be SameSite=Strict: {cookie}");
    let forged = reqwest::Client::new()
        .post(format!("{http}/sweeps/{b}/control"))
        .header("cookie", format!("lth_session={}", cookie["value"].as_str().unwrap()))
        .header("origin", "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("action=resume&csrf={}", csrf.as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    assert_eq!(status_state(&grpc, admin, b), "paused");

    // The admin sees the retry button on sam's failed sweep: enabled, counting both failed jobs.
    browser.goto(&format!("{http}/sweeps/{f}")).await;
    assert_eq!(browser.js("var b = document.getElementById('btn-retry'); return !!b && !b.disabled && b.dataset.failed === '2'").await, Value::Bool(true), "the admin's retry button");
    // ... but not on a sweep with nothing failed (b is paused, none failed): there it is disabled.
    browser.goto(&format!("{http}/sweeps/{b}")).await;
    assert_eq!(browser.js("var b = document.getElementById('btn-retry'); return !!b && b.disabled").await, Value::Bool(true), "retry is disabled without failed jobs");

    // Sam, a submitter: no buttons on alice's sweep b, a refused retry there; the button on its own f.
    browser.delete_cookies().await;
    browser.login(&http, submitter, &format!("/sweeps/{b}")).await;
    assert_eq!(browser.js("return !!document.getElementById('btn-retry') || !!document.getElementById('btn-resume')").await, Value::Bool(false), "a submitter gets no buttons on another owner's sweep");
    let csrf = browser.js("return document.querySelector('header input[name=csrf]').value").await;
    let code = page_post(&browser, &format!("/sweeps/{b}/control"), &format!("action=retry&csrf={}", csrf.as_str().unwrap())).await;
    assert_eq!(code, json!(403), "a submitter may not retry another owner's sweep");
    browser.goto(&format!("{http}/sweeps/{f}")).await;
    browser.screenshot("sweep-failed-retry").await;
    let failed_status = lthctl(&grpc, submitter, &["status", &f.to_string()]);
    assert!(failed_status.contains(&format!("lthctl retry {f}")), "lthctl status names the retry: {failed_status}");

    // The cause goes away (the file appears on the worker); Retry on the page re-queues both jobs.
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    write_safetensors(&data, 32, 16);
    browser.click("#btn-retry").await;
    browser.wait_js("return !!document.getElementById('retried')", Duration::from_secs(10), "the page to come back after the retry").await;
    assert_eq!(browser.js("return document.getElementById('retried').dataset.jobs").await, json!("2"), "both failed jobs re-queued");
    let t0 = Instant::now();
    while status_state(&grpc, submitter, f) != "succeeded" {
        assert!(t0.elapsed() < Duration::from_secs(120), "the retried sweep did not succeed: {}", lthctl(&grpc, submitter, &["status", &f.to_string()]));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The same jobs ran again: the dense job's first attempt failed, its second succeeded, and
    // the level job (failed with its parent, never claimed) ran once.
    let pool = db.pool().await;
    let jobs: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT kind, state, attempt FROM jobs WHERE sweep_id = $1 ORDER BY id").bind(f).fetch_all(&pool).await.unwrap();
    assert_eq!(jobs, vec![("dense".into(), "succeeded".into(), 2), ("level".into(), "succeeded".into(), 1)]);
    let outcomes: Vec<(i32, String)> =
        sqlx::query_as("SELECT a.attempt, a.outcome FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE j.sweep_id = $1 AND j.parent_job_id IS NULL ORDER BY a.attempt").bind(f).fetch_all(&pool).await.unwrap();
    assert_eq!(outcomes, vec![(1, "failed".to_string()), (2, "succeeded".to_string())], "the dense job's attempts");
    pool.close().await;
    let _ = std::io::stderr().flush();
}
