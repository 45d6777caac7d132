//! helm on the test bed: a chart with a Deployment installs with `--wait` and its Pod is
//! scheduled and reported Running on the kwok node. The project's chart builds on this.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use shop_testkit::testbed;

#[tokio::test]
async fn chart_installs_and_rolls_out_on_the_kwok_node() {
    let bed = testbed();
    let namespace = bed.namespace("smoke-helm").await.unwrap();
    let chart =
        shop_testkit::bed::repo_dir().join("crates/shop-testkit/tests/fixtures/smoke-chart");
    let chart = chart.to_str().unwrap();

    let output = tokio::process::Command::from(bed.command("helm").unwrap())
        .args(["install", "smoke", chart, "--namespace", namespace.name()])
        .args(["--wait", "--timeout", "2m"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "helm install failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let client = bed.kube_client().await.unwrap();
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace.name())
        .get("smoke")
        .await
        .unwrap();
    assert_eq!(deployment.status.and_then(|s| s.ready_replicas), Some(1));

    let pods = Api::<Pod>::namespaced(client, namespace.name())
        .list(&ListParams::default().labels("app.kubernetes.io/instance=smoke"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 1);
    let pod = &pods.items[0];
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("kwok-node-0")
    );
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
}
