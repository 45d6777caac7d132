//! A real browser for tests: headless Chromium driven over WebDriver by chromedriver,
//! both from Debian's packages (`chromium`, `chromium-driver`; `testbed/browser.sh`
//! installs them).
//!
//! Only the few WebDriver commands the tests need are here: open a page, run a script in
//! it, take a screenshot. chromedriver runs on a free loopback port in a process group of
//! its own, and the whole group (Chromium included) is stopped when the [`Browser`] drops.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::process::{free_port, test_log};

/// The chromedriver binary: `SHOPSTREAM_CHROMEDRIVER` (the test bed's env file sets it),
/// else Debian's `/usr/bin/chromedriver`.
pub fn chromedriver() -> PathBuf {
    std::env::var_os("SHOPSTREAM_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"))
}

/// One headless Chromium session.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: Client<HttpConnector, Full<Bytes>>,
    profile: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a `width`×`height`
    /// window.
    pub async fn start(width: u32, height: u32) -> anyhow::Result<Self> {
        let binary = chromedriver();
        if !binary.exists() {
            bail!(
                "{} not found: install Debian's chromium and chromium-driver \
                 (`testbed/browser.sh install`, which `make test` runs)",
                binary.display()
            );
        }
        let port = free_port();
        let driver = Command::new(&binary)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(test_log(&format!("chromedriver-{port}")))
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let profile = std::env::temp_dir().join(format!("shopstream-chromium-{port}"));
        let mut browser = Self {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            http: Client::builder(TokioExecutor::new()).build_http(),
            profile,
        };
        browser.wait_until_ready().await?;
        let mut args = vec![
            "--headless=new".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", browser.profile.display()),
        ];
        // Chromium's sandbox needs user namespaces, which root in a container may lack.
        if is_root() {
            args.push("--no-sandbox".to_owned());
        }
        let mut options = json!({ "args": args });
        if let Some(chromium) = std::env::var_os("SHOPSTREAM_CHROMIUM") {
            options["binary"] = json!(PathBuf::from(chromium));
        }
        let created = browser
            .call(
                "POST",
                "/session",
                Some(json!({
                    "capabilities": { "alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": options,
                    }}
                })),
            )
            .await
            .context("creating a Chromium session")?;
        browser.session = created["sessionId"]
            .as_str()
            .context("no sessionId in the new session")?
            .to_owned();
        Ok(browser)
    }

    async fn wait_until_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(status) = self.call("GET", "/status", None).await
                && status["ready"] == json!(true)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("chromedriver at {} not ready after 30 s", self.base);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens `url` and waits until it has loaded.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns
    /// what it returns.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let value = self.session_call("GET", "/screenshot", None).await?;
        let text = value.as_str().context("screenshot is not a string")?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .context("decoding the screenshot")
    }

    async fn session_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await
    }

    /// One WebDriver command; returns its `value`, or the WebDriver error as an error.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json; charset=utf-8")
            .body(Full::new(body))?;
        let response = tokio::time::timeout(Duration::from_secs(60), self.http.request(request))
            .await
            .with_context(|| format!("{method} {path}: no answer in 60 s"))??;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let reply: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{method} {path}: {}", String::from_utf8_lossy(&bytes)))?;
        if !status.is_success() {
            bail!("{method} {path}: {status}: {}", reply["value"]);
        }
        Ok(reply["value"].clone())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the Chromium it started share the process group.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.driver.wait();
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}
