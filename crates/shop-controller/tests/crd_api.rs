//! The generated CRD on the test bed's real API server: valid pipelines are stored,
//! invalid ones are refused by the server itself, unknown fields are pruned, and
//! `kubectl get sp` shows the printer columns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use shop_controller::crd::ShopPipeline;
use shop_testkit::testbed;
use support::install_crd;

fn pipeline(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "shopstream.dev/v1alpha1",
        "kind": "ShopPipeline",
        "metadata": {"name": name},
        "spec": spec,
    })
}

async fn create(api: &Api<kube::core::DynamicObject>, object: Value) -> Result<(), kube::Error> {
    let object = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object)
        .await
        .map(|_| ())
}

fn refusal(result: Result<(), kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        other => panic!("expected the API server to refuse, got {other:?}"),
    }
}

#[tokio::test]
async fn api_server_enforces_the_shop_pipeline_schema() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let namespace = bed.namespace("crd").await.unwrap();
    let resource = kube::core::ApiResource::erase::<ShopPipeline>(&());
    let api: Api<kube::core::DynamicObject> =
        Api::namespaced_with(client.clone(), namespace.name(), &resource);

    // Valid, with an unknown field that the structural schema prunes.
    let mut valid = pipeline(
        "demo",
        json!({"ordersPerSecond": 20.5, "paymentFailureRatio": 0.1, "partitions": 3,
               "replicas": {"payments": 2}, "colour": "blue"}),
    );
    create(&api, valid.clone()).await.unwrap();
    let typed: Api<ShopPipeline> = Api::namespaced(client, namespace.name());
    let stored = typed.get("demo").await.unwrap();
    assert_eq!(stored.spec.orders_per_second, 20.5);
    let replicas = stored.spec.replicas();
    assert_eq!(
        (replicas.orders, replicas.payments, replicas.notifications),
        (1, 2, 1)
    );
    let raw = api.get("demo").await.unwrap();
    assert!(
        raw.data["spec"].get("colour").is_none(),
        "unknown field pruned"
    );

    for (name, spec, field) in [
        (
            "rate-high",
            json!({"ordersPerSecond": 100001, "paymentFailureRatio": 0.1}),
            "ordersPerSecond",
        ),
        (
            "rate-negative",
            json!({"ordersPerSecond": -1, "paymentFailureRatio": 0.1}),
            "ordersPerSecond",
        ),
        (
            "ratio-high",
            json!({"ordersPerSecond": 1, "paymentFailureRatio": 1.5}),
            "paymentFailureRatio",
        ),
        (
            "replicas-negative",
            json!({"ordersPerSecond": 1, "paymentFailureRatio": 0, "replicas": {"orders": -1}}),
            "replicas.orders",
        ),
        (
            "partitions-zero",
            json!({"ordersPerSecond": 1, "paymentFailureRatio": 0, "partitions": 0}),
            "partitions",
        ),
        (
            "rate-missing",
            json!({"paymentFailureRatio": 0}),
            "ordersPerSecond",
        ),
    ] {
        let message = refusal(create(&api, pipeline(name, spec)).await);
        assert!(message.contains(field), "{name}: {message}");
    }

    // CEL transition rule: partitions can grow but never shrink. (Server-side apply refuses
    // unknown fields outright instead of pruning them.)
    valid["spec"].as_object_mut().unwrap().remove("colour");
    valid["spec"]["partitions"] = json!(6);
    let grow = PatchParams::apply("shop-controller-tests").force();
    api.patch("demo", &grow, &Patch::Apply(&valid))
        .await
        .unwrap();
    valid["spec"]["partitions"] = json!(2);
    let shrink = api
        .patch("demo", &grow, &Patch::Apply(&valid))
        .await
        .map(|_| ());
    assert!(refusal(shrink).contains("partitions can only grow"));
}

#[tokio::test]
async fn kubectl_get_sp_shows_the_printer_columns() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let namespace = bed.namespace("crd-columns").await.unwrap();
    let resource = kube::core::ApiResource::erase::<ShopPipeline>(&());
    let api: Api<kube::core::DynamicObject> =
        Api::namespaced_with(client, namespace.name(), &resource);
    create(
        &api,
        pipeline(
            "demo",
            json!({"ordersPerSecond": 20, "paymentFailureRatio": 0.1}),
        ),
    )
    .await
    .unwrap();

    let output = bed
        .command("kubectl")
        .unwrap()
        .args(["get", "sp", "--namespace", namespace.name()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8(output.stdout).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "RATE", "FAILURE", "OBSERVED", "LAG", "READY", "AGE"]
    );
    assert!(
        table.lines().nth(1).unwrap().starts_with("demo "),
        "{table}"
    );
}

/// A pipeline's name ends up in label values (`app.kubernetes.io/instance`), which hold at
/// most 63 characters: a longer name is refused at `kubectl apply`, not discovered when
/// its Deployments cannot be created.
#[tokio::test]
async fn a_name_too_long_for_a_label_value_is_refused() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let namespace = bed.namespace("crd-name").await.unwrap();
    let resource = kube::core::ApiResource::erase::<ShopPipeline>(&());
    let api: Api<kube::core::DynamicObject> =
        Api::namespaced_with(client, namespace.name(), &resource);
    let spec = json!({"ordersPerSecond": 1, "paymentFailureRatio": 0.1});
    let longest = "p".repeat(shop_controller::crd::MAX_NAME_LENGTH);
    create(&api, pipeline(&longest, spec.clone()))
        .await
        .unwrap();
    let too_long = format!("{longest}q");
    let message = refusal(create(&api, pipeline(&too_long, spec)).await);
    assert!(message.contains("63 characters"), "{message}");
}

/// A pipeline created without `partitions` has topics of the default size: setting a
/// smaller count later is a shrink and refused; a larger one is growth.
#[tokio::test]
async fn partitions_cannot_shrink_below_the_default_they_were_created_with() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let namespace = bed.namespace("crd-partitions").await.unwrap();
    let resource = kube::core::ApiResource::erase::<ShopPipeline>(&());
    let api: Api<kube::core::DynamicObject> =
        Api::namespaced_with(client, namespace.name(), &resource);
    let spec = json!({"ordersPerSecond": 1, "paymentFailureRatio": 0.1});
    create(&api, pipeline("defaulted", spec)).await.unwrap();
    let merge = |partitions: i32| json!({"spec": {"partitions": partitions}});
    let shrink = api
        .patch(
            "defaulted",
            &PatchParams::default(),
            &Patch::Merge(&merge(2)),
        )
        .await
        .map(|_| ());
    assert!(refusal(shrink).contains("partitions can only grow"));
    api.patch(
        "defaulted",
        &PatchParams::default(),
        &Patch::Merge(&merge(8)),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn status_conditions_are_metav1_conditions_one_per_type() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let namespace = bed.namespace("crd-conditions").await.unwrap();
    let resource = kube::core::ApiResource::erase::<ShopPipeline>(&());
    let api: Api<kube::core::DynamicObject> =
        Api::namespaced_with(client.clone(), namespace.name(), &resource);
    create(
        &api,
        pipeline(
            "demo",
            json!({"ordersPerSecond": 1, "paymentFailureRatio": 0}),
        ),
    )
    .await
    .unwrap();
    let condition = |type_: &str, status: &str| {
        json!({"type": type_, "status": status, "reason": "Test", "message": "",
               "lastTransitionTime": "2026-12-01T00:00:00Z"})
    };
    let patch_status = async |conditions: Value| {
        api.patch_status(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": conditions}})),
        )
        .await
        .map(|_| ())
    };

    patch_status(json!([
        condition("Ready", "True"),
        condition("Applied", "Unknown")
    ]))
    .await
    .unwrap();
    let typed: Api<ShopPipeline> = Api::namespaced(client, namespace.name());
    let status = typed.get_status("demo").await.unwrap().status.unwrap();
    assert_eq!(
        status.conditions[0].last_transition_time.0.as_second(),
        k8s_openapi::jiff::Timestamp::from_second(1_796_083_200)
            .unwrap()
            .as_second(),
        "lastTransitionTime is a typed time"
    );

    let duplicate = patch_status(json!([
        condition("Ready", "True"),
        condition("Ready", "False")
    ]));
    assert!(
        refusal(duplicate.await).contains("Duplicate value"),
        "one condition per type (list-map keyed by type)"
    );
    let unknown_status = patch_status(json!([condition("Ready", "Maybe")]));
    assert!(
        refusal(unknown_status.await).contains("supported values"),
        "status is True, False or Unknown"
    );
}
