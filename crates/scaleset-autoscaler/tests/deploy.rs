//! `deploy/kubernetes`: a typo in a manifest fails the suite.
//!
//! * Every YAML document under the directory deserializes into its k8s-openapi type *and*
//!   serializes back to the same tree: k8s-openapi ignores fields it does not know, so a
//!   misspelt or misplaced field would otherwise pass silently.
//! * The kustomization lists files that exist, and every manifest but the example Secret;
//!   `kubectl kustomize` (when kubectl is installed) renders objects that pass the same
//!   check.
//! * The ConfigMap's TOML passes the daemon's own config loader (leader election on, the
//!   metrics port the probes use), its pod templates the provisioner's own loader, and the
//!   Deployment mounts what the TOML names.
//! * The Role allows exactly what the provisioner and the Lease use.
#![cfg(feature = "kubernetes")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use scaleset_autoscaler::config::{Config, ProvisionerConfig};
use scaleset_autoscaler::provisioner::kubernetes::PodTemplate;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// Every `*.yaml` file of the directory, by file name, with its text.
fn yaml_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(deploy_dir())
        .expect("deploy/kubernetes exists")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .map(|p| {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a UTF-8 file name")
                .to_string();
            let text = std::fs::read_to_string(&p).expect("readable");
            (name, text)
        })
        .collect();
    files.sort();
    files
}

fn documents(file: &str, text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("{file}: not YAML: {e}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// Deserializes `doc` as `T` (naming the field on failure) and checks the round trip.
fn typed<T: DeserializeOwned + Serialize>(file: &str, doc: &Value) -> T {
    let t: T = serde_path_to_error::deserialize(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: {}: {}", e.path(), e.inner()));
    let back = serde_json::to_value(&t).expect("k8s-openapi types serialize");
    if let Some(path) = first_difference(doc, &back, String::new()) {
        panic!(
            "{file}: {path} does not survive a round trip through k8s-openapi (a misspelt or misplaced field?)"
        );
    }
    t
}

/// Where `a` and `b` first differ, as a path.
fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(u), Some(v)) => first_difference(u, v, format!("{at}.{k}")),
                _ => Some(format!("{at}.{k}")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_difference(u, v, format!("{at}[{i}]"))),
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(if at.is_empty() { ".".into() } else { at }),
    }
}

/// The typed objects of the directory.
#[derive(Default)]
struct Objects {
    deployments: Vec<Deployment>,
    roles: Vec<Role>,
    config_maps: Vec<ConfigMap>,
    kinds: Vec<String>,
}

fn check_object(file: &str, doc: &Value, out: &mut Objects) {
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    out.kinds.push(kind.to_string());
    match (api, kind) {
        ("v1", "Namespace") => drop(typed::<Namespace>(file, doc)),
        ("v1", "ServiceAccount") => drop(typed::<ServiceAccount>(file, doc)),
        ("v1", "ConfigMap") => out.config_maps.push(typed(file, doc)),
        ("v1", "Secret") => drop(typed::<Secret>(file, doc)),
        ("apps/v1", "Deployment") => out.deployments.push(typed(file, doc)),
        ("rbac.authorization.k8s.io/v1", "Role") => out.roles.push(typed(file, doc)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => drop(typed::<RoleBinding>(file, doc)),
        _ => panic!("{file}: no check for {api} {kind}; add its k8s-openapi type here"),
    }
}

/// Checks every manifest file; the kustomization's listed resources.
fn check_directory() -> (Objects, Vec<String>) {
    let mut objects = Objects::default();
    let mut resources = Vec::new();
    let mut manifests = Vec::new();
    for (file, text) in yaml_files() {
        if file == "kustomization.yaml" {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields, rename_all = "camelCase")]
            #[allow(dead_code)]
            struct Kustomization {
                api_version: String,
                kind: String,
                namespace: Option<String>,
                #[serde(default)]
                labels: Vec<Value>,
                resources: Vec<String>,
                #[serde(default)]
                images: Vec<Value>,
            }
            let k: Kustomization =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(k.kind, "Kustomization");
            resources = k.resources;
            continue;
        }
        manifests.push(file.clone());
        for doc in documents(&file, &text) {
            check_object(&file, &doc, &mut objects);
        }
    }
    for r in &resources {
        assert!(
            deploy_dir().join(r).is_file(),
            "kustomization.yaml lists {r}, which is not there"
        );
    }
    for m in &manifests {
        assert!(
            resources.contains(m) || m.ends_with(".example.yaml"),
            "{m} is not in kustomization.yaml's resources (name it *.example.yaml if it is meant to stay out)"
        );
    }
    (objects, resources)
}

#[test]
fn every_manifest_is_a_valid_kubernetes_object_and_the_kustomization_lists_them() {
    let (objects, _) = check_directory();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Secret",
    ] {
        assert!(
            objects.kinds.iter().any(|k| k == kind),
            "no {kind} in deploy/kubernetes"
        );
    }
}

#[test]
fn the_kustomization_renders_valid_objects_when_kubectl_is_there() {
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy_dir())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIPPED: kubectl is not installed ({e}); the files were checked one by one");
            return;
        }
    };
    assert!(
        out.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let mut objects = Objects::default();
    for doc in documents("kubectl kustomize", &text) {
        assert_eq!(
            doc["metadata"]["namespace"].as_str().or(Some("scaleset")),
            Some("scaleset")
        );
        check_object("kubectl kustomize", &doc, &mut objects);
    }
    assert_eq!(objects.deployments.len(), 1);
    assert!(
        !objects.kinds.iter().any(|k| k == "Secret"),
        "no credentials in the kustomization"
    );
}

fn config_map() -> ConfigMap {
    let (objects, _) = check_directory();
    objects
        .config_maps
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some("scaleset-config"))
        .expect("the ConfigMap scaleset-config")
}

fn deployment() -> Deployment {
    let (objects, _) = check_directory();
    objects
        .deployments
        .into_iter()
        .next()
        .expect("a Deployment")
}

#[test]
fn the_config_map_holds_a_config_the_daemon_loads_and_templates_the_provisioner_loads() {
    let cm = config_map();
    let data = cm.data.clone().expect("the ConfigMap has data");
    let toml = data.get("scaleset.toml").expect("scaleset.toml");
    let config = Config::from_toml_str(toml).unwrap_or_else(|e| panic!("scaleset.toml: {e}"));
    let le = config
        .leader_election
        .as_ref()
        .filter(|l| l.enabled)
        .expect("leader election is on");
    let settings = le
        .settings(&config, "scaleset-abc")
        .expect("leader election settings");
    assert_eq!(
        (settings.namespace.as_str(), settings.lease_name.as_str()),
        ("scaleset", "scaleset")
    );
    assert_eq!(config.metrics.addr.as_deref(), Some("0.0.0.0:9090"));

    let dir = std::env::temp_dir().join(format!("scaleset-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for s in &config.scale_sets {
        let ProvisionerConfig::Kubernetes(k) = &s.provisioner else {
            panic!("scale set {} is not on Kubernetes", s.name);
        };
        assert_eq!(
            k.namespace, "scaleset",
            "runners live beside the daemon (one Role)"
        );
        let file = k
            .pod_template
            .strip_prefix("/etc/scaleset/")
            .unwrap_or_else(|_| {
                panic!(
                    "{} is not in the ConfigMap's mount",
                    k.pod_template.display()
                )
            });
        let file = file.to_str().expect("UTF-8");
        assert!(data.contains_key(file), "the ConfigMap has no {file}");
    }
    let mut templates = 0;
    for (key, text) in &data {
        if key.ends_with(".yaml") {
            let path = dir.join(key);
            std::fs::write(&path, text).expect("written");
            let t = PodTemplate::load(&path, "runner").unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(t.file(), path.as_path());
            templates += 1;
        }
    }
    assert_eq!(templates, 2, "the runner template and its dind variant");
    let dind = serde_saphyr::from_str::<Value>(&data["runner-pod-dind.yaml"]).expect("YAML");
    assert_eq!(
        dind["spec"]["initContainers"][0]["restartPolicy"], "Always",
        "a native sidecar"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_deployment_runs_two_replicas_probed_on_the_daemons_routes_with_the_config_mounted() {
    let d = deployment();
    let spec = d.spec.expect("a spec");
    assert_eq!(spec.replicas, Some(2), "a leader and a hot standby");
    let pod = spec.template.spec.expect("a pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("scaleset"));
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap_or_default();
    let config_arg = args
        .iter()
        .position(|a| a == "--config")
        .map(|i| args[i + 1].clone())
        .expect("run --config");
    assert_eq!(args[0], "run");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "config")
        .expect("the config mount");
    assert!(
        config_arg.starts_with(&format!("{}/", mount.mount_path)),
        "{config_arg}"
    );
    let port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"));
    assert_eq!(
        port.map(|p| p.container_port),
        Some(9090),
        "the TOML's metrics.addr port"
    );
    let path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert!(
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some(),
        "resource requests"
    );
    let annotations = spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get("prometheus.io/port").map(String::as_str),
        Some("9090")
    );
}

#[test]
fn the_role_allows_exactly_what_the_daemon_uses() {
    let (objects, _) = check_directory();
    let role = objects.roles.first().expect("a Role");
    let mut got: Vec<(String, String, Vec<String>)> = role
        .rules
        .iter()
        .flatten()
        .flat_map(|r| {
            let groups = r.api_groups.clone().unwrap_or_default();
            let mut verbs = r.verbs.clone();
            verbs.sort();
            let resources = r.resources.clone().unwrap_or_default();
            groups.into_iter().flat_map(move |g| {
                let verbs = verbs.clone();
                resources
                    .clone()
                    .into_iter()
                    .map(move |res| (g.clone(), res, verbs.clone()))
            })
        })
        .collect();
    got.sort();
    let want = |g: &str, r: &str, v: &[&str]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        (g.to_string(), r.to_string(), v)
    };
    let mut expected = vec![
        // The provisioner: create, watch (list + watch), look up and delete runner pods.
        want("", "pods", &["create", "delete", "get", "list", "watch"]),
        // The JIT config Secrets: create, the owner reference (merge patch), the orphan
        // sweep (list, metadata only), delete.
        want("", "secrets", &["create", "delete", "list", "patch"]),
        // Leader election: read, create, renew/take over (PUT).
        want(
            "coordination.k8s.io",
            "leases",
            &["create", "get", "update"],
        ),
    ];
    expected.sort();
    assert_eq!(got, expected);
}

#[test]
fn the_readmes_kubernetes_toml_example_loads() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let section = readme
        .split("### Kubernetes\n")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("a Kubernetes section");
    let toml = section
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a TOML example");
    let config = Config::from_toml_str(&format!(
        "[connection]\nurl = \"https://github.com/o\"\n{toml}"
    ))
    .unwrap_or_else(|e| panic!("the README's TOML: {e}"));
    let s = config
        .leader_election
        .as_ref()
        .expect("leader election")
        .settings(&config, "pod")
        .expect("settings");
    assert_eq!(
        (s.lease_name.as_str(), s.namespace.as_str()),
        ("scaleset", "ci")
    );
    assert!(section.contains("kubectl apply -k deploy/kubernetes"));
}
