//! The log browser page in a real headless browser (Debian's `chromium`),
//! driven over the DevTools protocol on a pipe pair (`--remote-debugging-pipe`:
//! the browser reads commands on fd 3 and answers on fd 4). Screenshots of
//! each page go to `target/es-browser-screenshots/` (artifacts, not in git).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use evently_core::{EventStore, ExpectedVersion, Metadata, NewEvent, Payload, StreamId};
use evently_postgres::PgEventStore;
use serde_json::{json, Value};

mod support;
use support::{bank_example, drop_schema, url};

/// `es serve` on `schema`, on a free loopback port; killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(schema: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_es"))
            .env("DATABASE_URL", url())
            .env_remove("ES_TOKEN")
            .args(["--schema", schema, "serve", "--bind", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start es serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("es serve said where it listens: {line:?}"))
            .trim_end_matches('/')
            .to_owned();
        Server { child, base }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless chromium and one page of it, spoken to over the pipes.
struct Browser {
    child: Child,
    to_browser: std::io::PipeWriter,
    from_browser: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    _profile: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const WAIT: Duration = Duration::from_secs(15);

impl Browser {
    fn start() -> Browser {
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile =
            TempDir(std::env::temp_dir().join(format!("es-chromium-{}", std::process::id())));
        let (commands_read, commands_write) = std::io::pipe().unwrap();
        let (answers_read, answers_write) = std::io::pipe().unwrap();
        let (cr, aw) = {
            use std::os::fd::AsRawFd;
            (commands_read.as_raw_fd(), answers_write.as_raw_fd())
        };
        let mut command = Command::new(&binary);
        command
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-pipe",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec, only async-signal-safe calls
        // (fcntl, dup2) that move the pipe ends to fds 3 and 4.
        unsafe {
            command.pre_exec(move || {
                let a = libc::fcntl(cr, libc::F_DUPFD, 100);
                let b = libc::fcntl(aw, libc::F_DUPFD, 100);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot start {binary}: {e}; install Debian's chromium (`apt-get install -y chromium`; .ci/run does) or set CHROMIUM")
        });
        drop(commands_read);
        drop(answers_write);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(answers_read);
            let mut message = Vec::new();
            loop {
                message.clear();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if message.last() == Some(&0) {
                            message.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&message) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            to_browser: commands_write,
            from_browser: rx,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = browser.call(
            "Target.createTarget",
            json!({ "url": "about:blank" }),
            false,
        );
        let target_id = target["targetId"].as_str().expect("a target").to_owned();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
            false,
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_owned();
        browser.call("Page.enable", json!({}), true);
        browser.call("Runtime.enable", json!({}), true);
        browser
    }

    fn call(&mut self, method: &str, params: Value, in_page: bool) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if in_page {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .expect("the browser reads its pipe");
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self
                .from_browser
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {method} within {WAIT:?}"));
            if reply["id"] == json!(id) {
                if let Some(error) = reply.get("error") {
                    panic!("{method} failed: {error}");
                }
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            true,
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page. The browser is
    /// polled: it has no way to tell this test when a page's state
    /// changes.
    fn wait_for(&mut self, expression: &str) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.eval(&format!(
                "(() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }})()"
            )) == json!(true)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let html = self.eval("document.documentElement.outerHTML");
        panic!("{expression} never held; the page: {html}");
    }

    fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }), true);
        self.wait_for(&format!(
            "location.href === {} && document.readyState === 'complete'",
            json!(url)
        ));
    }

    /// Clicks the first element matching `selector` whose text is `text`,
    /// and waits for the next page.
    fn click(&mut self, selector: &str, text: &str) {
        let before = self.eval("location.href");
        let clicked = self.eval(&format!(
            "(() => {{ const a = [...document.querySelectorAll({})].find(a => a.textContent.includes({})); if (!a) return false; a.click(); return true; }})()",
            json!(selector),
            json!(text)
        ));
        assert_eq!(clicked, json!(true), "no {selector} with {text:?} to click");
        self.wait_for(&format!(
            "location.href !== {} && document.readyState === 'complete'",
            before
        ));
    }

    fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }), true);
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("image data"))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target/")
            .join("es-browser-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    fn text(&mut self, selector: &str) -> String {
        self.eval(&format!(
            "(document.querySelector({}) || {{ textContent: '' }}).textContent",
            json!(selector)
        ))
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SCRIPT: &str = r#"<script>window.pwned = 1; document.title = 'pwned'</script><img src=x onerror="window.pwned = 2">"#;

#[tokio::test]
async fn the_pages_in_a_real_browser() {
    let schema = format!("es_test_browser_{}", std::process::id());
    drop_schema(&schema).await;
    let out = Command::new(bank_example())
        .env("DATABASE_URL", url())
        .env("BANK_SCHEMA", &schema)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = PgEventStore::builder()
        .schema(&schema)
        .connect(&url())
        .await
        .unwrap();
    let hostile = json!({ "text": SCRIPT }).to_string();
    store
        .append(
            &StreamId::from("note-xss"),
            ExpectedVersion::NoStream,
            vec![NewEvent::raw(
                "Noted",
                1,
                Payload::from_json(hostile.clone()).unwrap(),
                Metadata::new(),
            )],
        )
        .await
        .unwrap();

    let server = Server::start(&schema, &[]);
    let base = server.base.clone();
    let mut b = tokio::task::spawn_blocking(Browser::start).await.unwrap();

    // The streams list, and its search.
    b.open(&format!("{base}/streams"));
    assert_eq!(
        b.eval("document.querySelectorAll('#streams tbody tr').length"),
        json!(5)
    );
    assert!(b.text("#streams").contains("account-alice"));
    b.screenshot("streams");
    b.open(&format!("{base}/streams?q=transfer"));
    assert_eq!(
        b.eval("document.querySelectorAll('#streams tbody tr').length"),
        json!(2)
    );

    // A stream, then an event, then its causation links, by clicks.
    b.open(&format!("{base}/streams"));
    b.click("a.stream-link", "transfer-t-2");
    assert_eq!(b.text("h1"), "transfer-t-2");
    b.screenshot("stream");
    b.click("#events a.event-link", "Failed");
    assert_eq!(b.text("h1"), "Failed");
    assert!(b.text("#payload").contains("the account is not open"));
    assert!(b.text("#metadata").contains("correlation_id"));
    b.screenshot("event");
    // What caused it: the transfer's start.
    b.click("#caused-by a.event-link", "transfer-t-2@1 Started");
    assert_eq!(b.text("h1"), "Started");
    // What that caused: back to the failure, and on to the refund.
    b.click("#caused a.event-link", "transfer-t-2@2 Failed");
    assert_eq!(b.text("h1"), "Failed");
    b.click("#caused a.event-link", "TransferReturned");
    assert_eq!(b.text("h1"), "TransferReturned");
    // The whole request.
    b.click("a.audit-link", "");
    assert!(b.text("h1").starts_with("Request "));
    assert!(b.text("#audit").contains("TransferSent") && b.text("#audit").contains("Reversed"));
    b.screenshot("audit");

    // A payload holding a script shows as text and does not run.
    b.open(&format!("{base}/streams/note-xss"));
    assert!(
        b.text("td.payload").contains("<script>window.pwned = 1"),
        "{}",
        b.text("td.payload")
    );
    assert_eq!(b.eval("typeof window.pwned"), json!("undefined"));
    assert_eq!(
        b.eval("document.querySelectorAll('main script, main img').length"),
        json!(0)
    );
    b.click("#events a.event-link", "Noted");
    assert!(b.text("#payload").contains("<img src=x onerror="));
    assert_eq!(b.eval("typeof window.pwned"), json!("undefined"));
    assert_ne!(b.eval("document.title"), json!("pwned"));
    b.screenshot("hostile-payload");

    // The live tail: an event appended now shows up, as text.
    b.open(&format!("{base}/tail"));
    b.wait_for("document.getElementById('tail-state').textContent === 'following the log'");
    let appended = store
        .append(
            &StreamId::from("note-live"),
            ExpectedVersion::NoStream,
            vec![NewEvent::raw(
                "Noted",
                1,
                Payload::from_json(hostile).unwrap(),
                Metadata::new(),
            )],
        )
        .await
        .unwrap();
    b.wait_for("document.querySelectorAll('#tail-rows tr').length === 1");
    let row = b.text("#tail-rows tr");
    assert!(
        row.contains(&appended[0].global_position.to_string()),
        "{row}"
    );
    assert!(
        row.contains("note-live@1") && row.contains("<script>"),
        "{row}"
    );
    assert_eq!(b.eval("typeof window.pwned"), json!("undefined"));
    b.screenshot("tail");

    // The projections with their lag.
    b.open(&format!("{base}/projections"));
    assert!(b.text("#projections").contains("view_accounts"));
    assert!(
        b.eval("document.querySelectorAll('svg.lag').length")
            .as_u64()
            .unwrap()
            >= 1
    );
    b.screenshot("projections");

    drop(b);
    drop(server);
    drop_schema(&schema).await;
}

#[tokio::test]
async fn the_page_binds_to_loopback_and_wants_its_token() {
    let schema = format!("es_test_token_{}", std::process::id());
    drop_schema(&schema).await;
    PgEventStore::builder()
        .schema(&schema)
        .connect(&url())
        .await
        .unwrap();
    let server = Server::start(&schema, &["--token", "s3cret"]);
    assert!(server.base.starts_with("http://127.0.0.1:"));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = format!("{}/streams", server.base);
    let denied = client.get(&page).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    let wrong = client.get(&page).bearer_auth("guess").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let bearer = client
        .get(&page)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    assert!(bearer.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let traded = client
        .get(format!("{page}?token=s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(traded.status(), 303);
    assert_eq!(traded.headers()["location"], "/streams");
    let cookie = traded.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let with_cookie = client
        .get(&page)
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(with_cookie.status(), 200);
    // Read-only: nothing but GET.
    let post = client
        .post(&page)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    drop(server);
    drop_schema(&schema).await;
}
