//! The test bed's API server is a real one: a CRD generated from a Rust type is served,
//! objects are created, watched and their status subresource patched, and values outside
//! the schema's bounds are refused by the server itself. The controller builds on this.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shop_testkit::testbed;

const TIMEOUT: Duration = Duration::from_secs(60);
const MANAGER: &str = "shop-testkit-smoke";

/// A small resource with a bounded field and a status subresource.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "smoke.shopstream.dev",
    version = "v1alpha1",
    kind = "Gadget",
    namespaced,
    status = "GadgetStatus"
)]
struct GadgetSpec {
    #[schemars(range(min = 1, max = 10))]
    size: u32,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
struct GadgetStatus {
    observed_size: Option<u32>,
}

async fn install_crd(client: kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let crd = Gadget::crd();
    let name = crd.metadata.name.clone().unwrap();
    crds.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    tokio::time::timeout(
        TIMEOUT,
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD established in time")
    .unwrap();
}

#[tokio::test]
async fn crd_from_rust_type_is_served_watched_and_enforced() {
    let bed = testbed();
    let client = bed.kube_client().await.unwrap();
    install_crd(client.clone()).await;
    let namespace = bed.namespace("smoke-kube").await.unwrap();
    let gadgets: Api<Gadget> = Api::namespaced(client, namespace.name());

    // Watch first, so the creation is seen as an event.
    let mut events = watcher(gadgets.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();

    let created = gadgets
        .create(
            &PostParams::default(),
            &Gadget::new("one", GadgetSpec { size: 3 }),
        )
        .await
        .unwrap();
    assert_eq!(created.spec.size, 3);

    let seen = tokio::time::timeout(TIMEOUT, events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.name_any(), "one");

    let status = serde_json::json!({
        "apiVersion": "smoke.shopstream.dev/v1alpha1",
        "kind": "Gadget",
        "status": {"observed_size": 3}
    });
    gadgets
        .patch_status("one", &PatchParams::apply(MANAGER), &Patch::Apply(&status))
        .await
        .unwrap();
    let patched = gadgets.get_status("one").await.unwrap();
    assert_eq!(
        patched.status,
        Some(GadgetStatus {
            observed_size: Some(3)
        })
    );
    assert_eq!(patched.spec.size, 3, "a status patch leaves the spec alone");

    let refused = gadgets
        .create(
            &PostParams::default(),
            &Gadget::new("too-big", GadgetSpec { size: 11 }),
        )
        .await
        .expect_err("size 11 is outside the schema's bounds");
    match refused {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains("spec.size"), "{}", status.message);
        }
        other => panic!("expected the API server to refuse, got {other}"),
    }
}
