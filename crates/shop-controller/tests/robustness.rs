//! An object the controller cannot read does not stop it: it is reported Degraded with
//! reason InvalidObject, and the other pipelines keep being reconciled.
//!
//! To store such an object the test loosens the CRD's schema for a moment (as an older
//! version of the CRD might have allowed), then restores the generated one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::{Api, CustomResourceExt};
use serde_json::json;
use shop_controller::crd::ShopPipeline;
use shop_testkit::testbed;
use support::{Controller, eventually, install_crd, three_deployments};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_pipeline_is_degraded_and_does_not_stop_the_others() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let namespace = bed.namespace("ctl-robust").await.unwrap();
    let ns = namespace.name().to_owned();

    // A looser schema that lets a string through where the controller wants a number.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut loose = ShopPipeline::crd();
    let schema = loose.spec.versions[0]
        .schema
        .as_mut()
        .unwrap()
        .open_api_v3_schema
        .as_mut()
        .unwrap();
    let spec = schema.properties.as_mut().unwrap().get_mut("spec").unwrap();
    *spec = JSONSchemaProps {
        type_: Some("object".into()),
        x_kubernetes_preserve_unknown_fields: Some(true),
        ..JSONSchemaProps::default()
    };
    let apply = PatchParams::apply("shop-controller-tests").force();
    crds.patch(
        "shoppipelines.shopstream.dev",
        &apply,
        &Patch::Apply(&loose),
    )
    .await
    .unwrap();

    let resource = kube::core::ApiResource::erase::<ShopPipeline>(&());
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    for (name, rate) in [("broken", json!("fast")), ("good", json!(5))] {
        let object = json!({
            "apiVersion": "shopstream.dev/v1alpha1", "kind": "ShopPipeline",
            "metadata": {"name": name},
            "spec": {"ordersPerSecond": rate, "paymentFailureRatio": 0.1},
        });
        eventually("the loose schema to be served", async || {
            let object: DynamicObject = serde_json::from_value(object.clone()).unwrap();
            dynamic.create(&PostParams::default(), &object).await.ok()
        })
        .await;
    }
    install_crd(client.clone()).await;

    let control = bed.topic("control", 1).await.unwrap();
    let heartbeats = bed.topic("heartbeats", 1).await.unwrap();
    let controller = Controller::start(&ns, &control, &heartbeats).await;

    three_deployments(&client, &ns, "good").await;
    let degraded = eventually("the broken pipeline reported", async || {
        let object = dynamic.get_status("broken").await.ok()?;
        let conditions = object
            .data
            .get("status")?
            .get("conditions")?
            .as_array()?
            .clone();
        conditions
            .into_iter()
            .find(|c| c["type"] == "Degraded" && c["status"] == "True")
    })
    .await;
    assert_eq!(degraded["reason"], "InvalidObject");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("cannot read spec"),
        "{degraded}"
    );
    controller.stop().await;
}
