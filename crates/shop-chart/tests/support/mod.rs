//! Helpers shared by the chart's tests: running the bed's helm and kubectl, and reading
//! rendered manifests.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::Value;
use shop_testkit::testbed;

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The chart's directory as a string argument for helm.
pub fn chart() -> String {
    shop_chart::chart_dir().display().to_string()
}

/// Runs one of the bed's programs with `args` (and `stdin`, if given) to completion.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = testbed().command(program).unwrap();
    command.args(args);
    run_command(command, stdin)
}

pub fn run_command(mut command: Command, stdin: Option<&str>) -> Output {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// What a command printed, for assertion messages.
pub fn printed(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a bed program and returns its stdout; panics with its output when it fails.
pub fn run_ok(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let output = run(program, args, stdin);
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        printed(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `--set` arguments for helm.
fn set_args(sets: &[&str]) -> Vec<String> {
    sets.iter()
        .flat_map(|s| ["--set".to_owned(), (*s).to_owned()])
        .collect()
}

/// `helm template <release> <chart> --namespace <namespace> --set ...`, or its output on
/// failure.
pub fn try_template(release: &str, namespace: &str, sets: &[&str]) -> Output {
    let chart = chart();
    let sets = set_args(sets);
    let mut args = vec!["template", release, &chart, "--namespace", namespace];
    args.extend(sets.iter().map(String::as_str));
    run("helm", &args, None)
}

/// The manifests `helm template` renders (test hooks included), as YAML text.
pub fn template_text(release: &str, namespace: &str, sets: &[&str]) -> String {
    let output = try_template(release, namespace, sets);
    assert!(
        output.status.success(),
        "helm template {sets:?} failed: {}",
        printed(&output)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The rendered manifests as JSON values.
pub fn template(release: &str, namespace: &str, sets: &[&str]) -> Manifests {
    Manifests::parse(&template_text(release, namespace, sets))
}

/// Rendered manifests.
#[derive(Debug, Clone)]
pub struct Manifests(pub Vec<Value>);

impl Manifests {
    pub fn parse(yaml: &str) -> Self {
        let docs: Vec<Value> = serde_saphyr::from_str_multiple(yaml)
            .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{yaml}"));
        Self(docs.into_iter().filter(|d| !d.is_null()).collect())
    }

    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.0.iter().filter(move |d| d["kind"] == kind)
    }

    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self
            .0
            .iter()
            .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
            .collect();
        kinds.sort();
        kinds
    }

    /// The one object of `kind`; panics unless there is exactly one.
    pub fn one<'a>(&'a self, kind: &'a str) -> &'a Value {
        let all: Vec<&Value> = self.of_kind(kind).collect();
        assert_eq!(all.len(), 1, "expected one {kind}, got {}", all.len());
        all[0]
    }

    pub fn count(&self, kind: &str) -> usize {
        self.of_kind(kind).count()
    }

    pub fn typed<T: k8s_openapi::serde::de::DeserializeOwned>(&self, kind: &str) -> Vec<T> {
        self.of_kind(kind)
            .map(|d| serde_json::from_value(d.clone()).unwrap())
            .collect()
    }

    pub fn deployments(&self) -> Vec<Deployment> {
        self.typed("Deployment")
    }

    pub fn stateful_sets(&self) -> Vec<StatefulSet> {
        self.typed("StatefulSet")
    }

    /// Every Pod spec the manifests make: Deployment and StatefulSet templates and Pods,
    /// with the name of the object they come from.
    pub fn pod_specs(&self) -> Vec<(String, PodSpec)> {
        let mut specs = Vec::new();
        for d in self.deployments() {
            specs.push((
                format!("Deployment/{}", d.metadata.name.unwrap()),
                d.spec.unwrap().template.spec.unwrap(),
            ));
        }
        for s in self.stateful_sets() {
            specs.push((
                format!("StatefulSet/{}", s.metadata.name.unwrap()),
                s.spec.unwrap().template.spec.unwrap(),
            ));
        }
        for p in self.typed::<Pod>("Pod") {
            specs.push((format!("Pod/{}", p.metadata.name.unwrap()), p.spec.unwrap()));
        }
        specs
    }
}

/// A Pod spec's first container environment: name -> value (fieldRefs as
/// `fieldRef:<path>`).
pub fn env_of(spec: &PodSpec) -> std::collections::BTreeMap<String, String> {
    spec.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => format!(
                    "fieldRef:{}",
                    from.field_ref
                        .as_ref()
                        .map_or("?", |f| f.field_path.as_str())
                ),
                (None, None) => String::new(),
            };
            (e.name.clone(), value)
        })
        .collect()
}

/// A rule in a comparable form: sorted API groups, resources and verbs (names of
/// resources are not used by the controller's rules).
pub type Rule = (Vec<String>, Vec<String>, Vec<String>);

pub fn rule_set(rules: &[PolicyRule]) -> std::collections::BTreeSet<Rule> {
    let sorted = |v: &Option<Vec<String>>| {
        let mut v = v.clone().unwrap_or_default();
        v.sort();
        v
    };
    rules
        .iter()
        .map(|r| {
            assert!(
                r.resource_names.is_none() && r.non_resource_urls.is_none(),
                "unexpected rule shape: {r:?}"
            );
            (sorted(&r.api_groups), sorted(&r.resources), {
                let mut verbs = r.verbs.clone();
                verbs.sort();
                verbs
            })
        })
        .collect()
}

/// The rules of the object of `kind` in `manifests` (the first one whose name passes
/// `name`).
pub fn rules_of(manifests: &Manifests, kind: &str, name: impl Fn(&str) -> bool) -> Vec<PolicyRule> {
    let doc = manifests
        .of_kind(kind)
        .find(|d| name(d["metadata"]["name"].as_str().unwrap_or_default()))
        .unwrap_or_else(|| panic!("no matching {kind}"));
    serde_json::from_value(doc["rules"].clone()).unwrap()
}

/// The checked-in RBAC of the controller, `deploy/controller/rbac.yaml`.
pub fn written_rbac() -> Manifests {
    let path = shop_chart::chart_dir().join("../../deploy/controller/rbac.yaml");
    Manifests::parse(&std::fs::read_to_string(path).unwrap())
}

/// Makes sure the ShopPipeline CRD is served (other tests may have installed it already;
/// this only creates it when it is missing, from the chart's `crds/`).
pub fn ensure_crd() {
    let crd = "crd/shoppipelines.shopstream.dev";
    if !run("kubectl", &["get", crd], None).status.success() {
        let dir = shop_chart::chart_dir().join("crds");
        let output = run(
            "kubectl",
            &["create", "-f", &dir.display().to_string()],
            None,
        );
        assert!(
            output.status.success()
                || String::from_utf8_lossy(&output.stderr).contains("AlreadyExists"),
            "creating the CRD failed: {}",
            printed(&output)
        );
    }
    run_ok(
        "kubectl",
        &["wait", "--for=condition=Established", crd, "--timeout=60s"],
        None,
    );
}

/// Polls `check` until it returns a value; panics after `TIMEOUT` naming `what`.
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
