//! Kubernetes on the test bed: clients for its API server and namespaces that are deleted
//! when the test ends.

use anyhow::Context;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::{TestBed, cleanup_on_own_thread, unique_name};

/// Label on every namespace a test creates, to find leftovers of killed test runs.
pub const TEST_LABEL: &str = "shopstream.dev/test";

impl TestBed {
    /// A client for the bed's API server, as the kubeconfig's (admin) user.
    pub async fn kube_client(&self) -> anyhow::Result<Client> {
        client_for(self.kubeconfig()?).await
    }

    /// Creates a namespace with a unique name starting with `prefix`, deleted on drop.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<TestNamespace> {
        let name = unique_name(prefix);
        let namespaces: Api<Namespace> = Api::all(self.kube_client().await?);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_LABEL.to_owned(), "true".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(TestNamespace {
            name,
            kubeconfig: self.kubeconfig()?.to_owned(),
        })
    }
}

async fn client_for(kubeconfig: &std::path::Path) -> anyhow::Result<Client> {
    let file = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", kubeconfig.display()))?;
    Client::try_from(config).context("creating a Kubernetes client")
}

/// A namespace that exists for the duration of a test. Deleting it removes everything the
/// test created inside (the namespace controller does that after the test has moved on).
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    kubeconfig: std::path::PathBuf,
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let (name, kubeconfig) = (self.name.clone(), self.kubeconfig.clone());
        cleanup_on_own_thread(format!("namespace {name}"), move || async move {
            let namespaces: Api<Namespace> = Api::all(client_for(&kubeconfig).await?);
            namespaces
                .delete(&name, &DeleteParams::background())
                .await?;
            Ok(())
        });
    }
}
