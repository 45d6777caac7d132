//! The controller works with exactly the RBAC written down in
//! `deploy/controller/rbac.yaml`: the test grants those rules (no more) to a fresh
//! ServiceAccount and runs the controller with that account's token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Event, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::Value;
use shop_controller::crd::{ShopPipeline, ShopPipelineSpec};
use shop_testkit::testbed;
use support::{Controller, eventually, install_crd, three_deployments};

/// The rules of the ClusterRole and the Role in the checked-in RBAC file.
fn written_rules() -> (Vec<PolicyRule>, Vec<PolicyRule>) {
    let path = shop_testkit::bed::repo_dir().join("deploy/controller/rbac.yaml");
    let docs: Vec<Value> =
        serde_saphyr::from_str_multiple(&std::fs::read_to_string(path).unwrap()).unwrap();
    let rules = |kind: &str| -> Vec<PolicyRule> {
        let doc = docs.iter().find(|d| d["kind"] == kind).unwrap();
        serde_json::from_value(doc["rules"].clone()).unwrap()
    };
    (rules("ClusterRole"), rules("Role"))
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

fn account(namespace: &str) -> Vec<Subject> {
    vec![Subject {
        kind: "ServiceAccount".into(),
        name: "shop-controller".into(),
        namespace: Some(namespace.into()),
        ..Subject::default()
    }]
}

/// A client that authenticates as the namespace's `shop-controller` ServiceAccount.
async fn client_as_service_account(admin: Client, namespace: &str) -> Client {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin, namespace);
    accounts
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: meta("shop-controller"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = eventually("a token", async || {
        accounts
            .create_token_request("shop-controller", &PostParams::default(), &request)
            .await
            .ok()
    })
    .await
    .status
    .unwrap()
    .token;
    let kubeconfig = Kubeconfig::read_from(testbed().kubeconfig().unwrap()).unwrap();
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info = AuthInfo {
        token: Some(token.into()),
        ..AuthInfo::default()
    };
    Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_written_rbac_is_enough_to_run_the_controller() {
    let bed = testbed();
    let admin = bed.kube_client().await.unwrap();
    install_crd(admin.clone()).await;
    let namespace = bed.namespace("ctl-rbac").await.unwrap();
    let ns = namespace.name().to_owned();

    let (cluster_rules, lease_rules) = written_rules();
    let name = format!("{ns}-shop-controller");
    let role_ref = |kind: &str, name: &str| RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: kind.into(),
        name: name.into(),
    };
    let pp = PostParams::default();
    let cluster_roles: Api<ClusterRole> = Api::all(admin.clone());
    cluster_roles
        .create(
            &pp,
            &ClusterRole {
                metadata: meta(&name),
                rules: Some(cluster_rules),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    cluster_bindings
        .create(
            &pp,
            &ClusterRoleBinding {
                metadata: meta(&name),
                role_ref: role_ref("ClusterRole", &name),
                subjects: Some(account(&ns)),
            },
        )
        .await
        .unwrap();
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(
            &pp,
            &Role {
                metadata: meta("leader-election"),
                rules: Some(lease_rules),
            },
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(
            &pp,
            &RoleBinding {
                metadata: meta("leader-election"),
                role_ref: role_ref("Role", "leader-election"),
                subjects: Some(account(&ns)),
            },
        )
        .await
        .unwrap();

    let client = client_as_service_account(admin.clone(), &ns).await;
    let control = bed.topic("control", 1).await.unwrap();
    let heartbeats = bed.topic("heartbeats", 1).await.unwrap();
    let controller = Controller::start_with("rbac-controller", client, &ns, &control, &heartbeats);

    let pipelines: Api<ShopPipeline> = Api::namespaced(admin.clone(), &ns);
    let spec = ShopPipelineSpec {
        orders_per_second: 3.0,
        payment_failure_ratio: 0.1,
        paused: false,
        seed: None,
        replicas: None,
        partitions: Some(1),
    };
    pipelines
        .create(&pp, &ShopPipeline::new("rbac", spec))
        .await
        .unwrap();

    three_deployments(&admin, &ns, "rbac").await;
    eventually("a status written by the ServiceAccount", async || {
        let status = pipelines.get_status("rbac").await.ok()?.status?;
        (status.observed_generation == Some(1)).then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    eventually("an event recorded by the ServiceAccount", async || {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ControlPublished"))
            .then_some(())
    })
    .await;
    controller.stop().await;
    cluster_bindings
        .delete(&name, &Default::default())
        .await
        .unwrap();
    cluster_roles
        .delete(&name, &Default::default())
        .await
        .unwrap();
}
