//! The live view in a real browser: the controller binary runs against the test bed, a
//! pipeline's services run as local processes, and headless Chromium (over WebDriver)
//! opens the controller's page once. The page lists the pipeline; after `kubectl patch`
//! of the rate it shows the new RATE and then the measured rate following it, without a
//! reload (a marker set in the page after it loaded is still there at the end).
//!
//! A screenshot of the page at that moment is saved as `target/screenshots/live-view.png`;
//! the README shows one made by this test (`docs/images/live-view.png`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use shop_controller::crd::{ShopPipeline, ShopPipelineSpec};
use shop_testkit::browser::Browser;
use shop_testkit::{free_port, testbed};
use support::{ControllerProcess, install_crd, start_services, three_deployments, within};

/// The text of the pipeline card's field `field`, or `None` while the page does not show
/// the pipeline.
async fn field(browser: &Browser, pipeline: &str, field: &str) -> Option<String> {
    let script = "const card = document.querySelector(`[data-pipeline=\"${arguments[0]}\"]`); \
                  const cell = card && card.querySelector(`[data-field=\"${arguments[1]}\"]`); \
                  return cell ? cell.textContent : null;";
    match browser
        .execute(script, vec![json!(pipeline), json!(field)])
        .await
        .unwrap()
    {
        Value::String(text) => Some(text),
        _ => None,
    }
}

/// Waits until the page shows RATE `rate` and a measured rate within 10 % of it.
async fn page_follows(browser: &Browser, pipeline: &str, rate: f64) -> f64 {
    within(
        Duration::from_secs(60),
        &format!("the page to show RATE {rate}"),
        async || {
            let shown: f64 = field(browser, pipeline, "rate").await?.parse().ok()?;
            (shown == rate).then_some(())
        },
    )
    .await;
    within(
        Duration::from_secs(120),
        &format!("the page's measured rate to follow {rate}"),
        async || {
            let observed: f64 = field(browser, pipeline, "observed").await?.parse().ok()?;
            ((observed - rate).abs() <= rate * 0.1).then_some(observed)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_view_in_a_browser_follows_a_patched_rate() {
    shop_runtime::telemetry::init_for_tests();
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let namespace = bed.namespace("ctl-live-view").await.unwrap();
    let ns = namespace.name().to_owned();
    let control = bed.topic("control", 1).await.unwrap();
    let heartbeats = bed.topic("heartbeats", 1).await.unwrap();
    let port = free_port();
    let _controller = ControllerProcess::start(port, &ns, &control, &heartbeats);

    let pipelines: Api<ShopPipeline> = Api::namespaced(client.clone(), &ns);
    let spec = ShopPipelineSpec {
        orders_per_second: 20.0,
        payment_failure_ratio: 0.25,
        paused: false,
        seed: Some(7),
        replicas: None,
        partitions: Some(2),
    };
    pipelines
        .create(&PostParams::default(), &ShopPipeline::new("shop", spec))
        .await
        .unwrap();
    let created = three_deployments(&client, &ns, "shop").await;
    let _services = start_services(&created, &control, &heartbeats);

    let browser = Browser::start(1280, 720).await.unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    within(
        Duration::from_secs(30),
        "the controller's page",
        async || browser.goto(&url).await.ok(),
    )
    .await;
    // Set once; a reload of the page would clear it.
    browser
        .execute("window.openedOnce = true; return null;", vec![])
        .await
        .unwrap();
    let key = format!("{ns}/shop");
    page_follows(&browser, &key, 20.0).await;
    // The sparkline draws the measurements as they come.
    let sparkline = "const card = document.querySelector(`[data-pipeline=\"${arguments[0]}\"]`); \
                     const line = card && card.querySelector('[data-field=\"observed-history\"] polyline'); \
                     return line ? Number(line.getAttribute('data-points')) : 0;";
    within(
        Duration::from_secs(60),
        "three points in the sparkline",
        async || {
            let points = browser.execute(sparkline, vec![json!(key)]).await.ok()?;
            (points.as_u64()? >= 3).then_some(())
        },
    )
    .await;

    let command = bed.command("kubectl").unwrap();
    let patched = tokio::process::Command::from(command)
        .args(["--namespace", &ns, "patch", "sp", "shop", "--type", "merge"])
        .args(["-p", r#"{"spec":{"ordersPerSecond":60}}"#])
        .output()
        .await
        .unwrap();
    assert!(
        patched.status.success(),
        "kubectl patch: {}",
        String::from_utf8_lossy(&patched.stderr)
    );
    let observed = page_follows(&browser, &key, 60.0).await;

    let still_open = browser
        .execute("return window.openedOnce === true;", vec![])
        .await
        .unwrap();
    assert_eq!(still_open, json!(true), "the page was reloaded");
    assert_eq!(
        field(&browser, &key, "effective-rate").await.as_deref(),
        Some("60"),
        "the effective rate on the page"
    );

    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let dir = shop_testkit::bed::repo_dir().join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("live-view.png"), &png).unwrap();
    eprintln!(
        "page showed RATE 60 and measured {observed} orders/s; screenshot in {}",
        dir.join("live-view.png").display()
    );
}
