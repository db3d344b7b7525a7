//! The live saga page in a real browser: Debian's headless Chromium, driven through chromedriver,
//! watches checkouts that the test starts over HTTP.

#![allow(clippy::unwrap_used)] // helpers of a test panic to fail it

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use support::{System, saga_id};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page may take to show what the system did.
const SHOWN_WITHIN: Duration = Duration::from_secs(30);

/// A chromedriver of this test's own, in a process group of its own so that the browser it
/// starts goes with it even when the test panics before closing the session.
struct Driver {
    child: Child,
    url: String,
    profile: PathBuf,
}

impl Driver {
    async fn start() -> Self {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: run scripts/test.sh, which installs Chromium and chromedriver \
                 (Debian packages chromium and chromium-driver)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let profile = std::env::temp_dir().join(format!("warren-chromium-{}", testkit::unique()));
        std::fs::create_dir_all(&profile).unwrap();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile,
        };
        let status = format!("{}/status", driver.url);
        testkit::within(SHOWN_WITHIN, "chromedriver to answer", async {
            loop {
                if let Ok(response) = reqwest::get(&status).await
                    && let Ok(body) = response.json::<Value>().await
                    && body["value"]["ready"] == true
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        driver
    }

    async fn browser(&self) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        .map(str::to_owned)
        .into_iter()
        .chain([format!("--user-data-dir={}", self.profile.display())]);
        let mut capabilities = Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": args.collect::<Vec<_>>()}),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Waits for a saga's row to show `state`, clicks it, and waits for its timeline to show the
/// same. (Each update redraws the row: the one clicked is the one showing the end.)
async fn open_timeline(browser: &Client, saga_id: &str, state: &str) {
    let row = shown(
        browser,
        &format!(r#"#sagas tr[data-saga-id="{saga_id}"][data-state="{state}"]"#),
    )
    .await;
    row.click().await.unwrap();
    shown(
        browser,
        &format!(r#"#timeline [data-saga-id="{saga_id}"][data-state="{state}"]"#),
    )
    .await;
}

/// Waits for an element matching `css`; on a timeout, fails with the page as it stood.
async fn shown(browser: &Client, css: &str) -> fantoccini::elements::Element {
    match browser
        .wait()
        .at_most(SHOWN_WITHIN)
        .every(Duration::from_millis(50))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(element) => element,
        Err(error) => {
            let page = browser.source().await.unwrap_or_default();
            panic!("{css} not shown ({error}); the page:\n{page}");
        }
    }
}

/// The steps of the timeline shown, as (name, state).
async fn timeline(browser: &Client) -> Vec<(String, String)> {
    let mut steps = Vec::new();
    for row in browser
        .find_all(Locator::Css("#timeline tr[data-step]"))
        .await
        .unwrap()
    {
        steps.push((
            row.attr("data-step").await.unwrap().unwrap(),
            row.attr("data-step-state").await.unwrap().unwrap(),
        ));
    }
    steps
}

fn named(steps: &[(&str, &str)]) -> Vec<(String, String)> {
    steps
        .iter()
        .map(|(name, state)| ((*name).to_owned(), (*state).to_owned()))
        .collect()
}

#[tokio::test]
async fn the_saga_page_follows_checkouts_live() {
    let mut system = System::new().await;
    system.spawn(&["all"]);
    system.ready().await;
    system
        .seed(&[("SKU-1", 1250, 10)], &[("c-1", 10_000), ("c-2", 100)])
        .await;

    let page = system
        .client
        .get(format!("{}/ui", system.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let (_, openapi) = system.get("/openapi.json").await;
    for path in ["/ui", "/ui/events", "/ui/queues"] {
        assert!(openapi["paths"][path].is_object(), "{path} is missing");
    }

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    let started = Instant::now();
    browser
        .goto(&format!("{}/ui#token={}", system.base, system.token))
        .await
        .unwrap();
    // Live: the stream is open and the first list is in, so no transition can be missed.
    shown(&browser, r#"body[data-live="true"]"#).await;

    let (status, answer) = system.checkout("c-1", &[("SKU-1", 2)], None).await;
    assert_eq!(status, 202, "{answer}");
    let happy = saga_id(&answer);
    shown(&browser, &format!(r#"#sagas tr[data-saga-id="{happy}"]"#)).await;
    open_timeline(&browser, &happy, "completed").await;
    assert_eq!(
        timeline(&browser).await,
        named(&[
            ("create_order", "succeeded"),
            ("reserve_inventory", "succeeded"),
            ("charge_payment", "succeeded"),
            ("confirm_order", "succeeded"),
        ])
    );
    // The timeline names the definition version the saga ran on, as its row records it.
    let recorded: String =
        sqlx::query_scalar("SELECT definition_version FROM sagas.sagas WHERE saga_id = $1::uuid")
            .bind(&happy)
            .fetch_one(&system.pool)
            .await
            .unwrap();
    let shown_version = shown(&browser, "#timeline [data-definition-version]")
        .await
        .attr("data-definition-version")
        .await
        .unwrap();
    assert_eq!(shown_version.as_deref(), Some(recorded.as_str()));

    // The queue panel links each queue to its page in the management UI.
    let (_, queues) = system.get("/ui/queues").await;
    assert_eq!(queues["vhost"], system.vhost.as_str(), "{queues}");
    let order = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "order.commands")
        .unwrap();
    assert_eq!(order["parked"], 0, "{queues}");
    assert_eq!(order["parked_queue"], "order.commands.dead");
    assert!(order["consumers"].as_u64().unwrap() >= 1, "{queues}");
    let management = queues["management_url"].as_str().unwrap();
    let link = shown(
        &browser,
        r#"#queues tr[data-queue="order.commands"] a.queue-link"#,
    )
    .await;
    assert_eq!(
        link.attr("href").await.unwrap().unwrap(),
        format!("{management}/#/queues/{}/order.commands", system.vhost)
    );

    // A customer who cannot pay: the row ends compensated, the timeline shows the undoing.
    let (status, answer) = system.checkout("c-2", &[("SKU-1", 1)], None).await;
    assert_eq!(status, 202, "{answer}");
    let declined = saga_id(&answer);
    open_timeline(&browser, &declined, "compensated").await;
    assert_eq!(
        timeline(&browser).await,
        named(&[
            ("create_order", "compensated"),
            ("reserve_inventory", "compensated"),
            ("charge_payment", "failed"),
            ("confirm_order", "pending"),
        ])
    );
    let error = shown(&browser, "#timeline .error").await;
    assert!(
        error.text().await.unwrap().contains("insufficient funds"),
        "the reason is shown"
    );
    // The first saga is still listed, still completed.
    shown(
        &browser,
        &format!(r#"#sagas tr[data-saga-id="{happy}"][data-state="completed"]"#),
    )
    .await;
    println!("the page followed two checkouts in {:?}", started.elapsed());
    browser.close().await.unwrap();
    drop(driver);

    // A queue that cannot be read is shown without counts; the others are still counted.
    let deleted = system
        .client
        .delete(format!(
            "{}/api/queues/{}/image.commands.dead",
            testkit::management_url(),
            system.vhost
        ))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let (status, queues) = system.get("/ui/queues").await;
    assert_eq!(status, 200, "{queues}");
    let parked: Vec<(&str, &Value)> = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["name"].as_str().unwrap(), &q["parked"]))
        .collect();
    for (name, count) in parked {
        match name {
            "image.commands" => assert!(count.is_null(), "{queues}"),
            _ => assert_eq!(count, 0, "{name}: {queues}"),
        }
    }

    system.stop().await;
}
