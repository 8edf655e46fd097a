//! The user's pod template and what the provisioner makes of it: one Pod and one Secret per
//! runner, their names and their labels. No IO besides reading the template file, so every
//! rule here is unit-tested without a cluster.
//!
//! The template is YAML in Kubernetes' own format: a Pod manifest (`apiVersion: v1`,
//! `kind: Pod`), a PodTemplate (`kind: PodTemplate` with a `template`), or a bare
//! PodTemplateSpec (`metadata` and `spec`). Fields Kubernetes does not know are an error
//! naming their path (as `kubectl --validate=strict` does), so a typo never silently drops a
//! setting. The runner pod is the template with, and only with:
//!
//! * `metadata.name` (from the runner name, see [`pod_name`]) and `metadata.namespace` (the
//!   configured one); the template's `generateName` is dropped;
//! * the provisioner's labels ([`LABEL_SCALE_SET_ID`], [`LABEL_SCALE_SET_NAME`],
//!   [`LABEL_INSTANCE`], [`LABEL_RUNNER_NAME`], [`LABEL_RUNNER_ID`]) and annotations with the
//!   exact names ([`ANNOTATION_RUNNER_NAME`], [`ANNOTATION_SCALE_SET_NAME`],
//!   [`ANNOTATION_INSTANCE`]) added to the template's own, plus the configured `labels`;
//! * `spec.restartPolicy: Never`;
//! * on the runner container: `image` and `command` when configured, `args` when configured
//!   non-empty, the configured daemon variables, [`VERSION_DEPRECATED_ENV`]`=1` and
//!   [`JIT_CONFIG_ENV`] from `secretKeyRef` to the runner's Secret (key [`SECRET_KEY`]).
//!
//! The JIT config itself is only ever in the Secret's `data`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use actions_scaleset::RunnerId;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, Pod, PodSpec, Secret, SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::Value;

use crate::config::provisioner::{
    KubernetesSettings, OWN_LABEL_PREFIX, is_dns_label, is_label_value,
};
use crate::provisioner::{JIT_CONFIG_ENV, RunnerSpec, ScaleSetIdentity, VERSION_DEPRECATED_ENV};

/// Label holding the scale set id.
pub const LABEL_SCALE_SET_ID: &str = "dev.scaleset.scale-set-id";
/// Label holding the scale set name, as a label value (see [`label_value`]).
pub const LABEL_SCALE_SET_NAME: &str = "dev.scaleset.scale-set-name";
/// Label holding the owning instance, as a label value (see [`label_value`]).
pub const LABEL_INSTANCE: &str = "dev.scaleset.instance";
/// Label holding the runner name, as a label value (see [`label_value`]).
pub const LABEL_RUNNER_NAME: &str = "dev.scaleset.runner-name";
/// Label holding the runner id GitHub assigned.
pub const LABEL_RUNNER_ID: &str = "dev.scaleset.runner-id";
/// Annotation holding the exact runner name (labels cannot hold every name).
pub const ANNOTATION_RUNNER_NAME: &str = "dev.scaleset.runner-name";
/// Annotation holding the exact scale set name.
pub const ANNOTATION_SCALE_SET_NAME: &str = "dev.scaleset.scale-set-name";
/// Annotation holding the exact owning instance.
pub const ANNOTATION_INSTANCE: &str = "dev.scaleset.instance";
/// The key of the JIT config in a runner's Secret (ARC's name for it).
pub const SECRET_KEY: &str = "jitToken";

/// Longest pod name we make: the Secret's name adds [`SECRET_SUFFIX`] and both stay within
/// a DNS label (63), so the pod's host name is its name.
const MAX_POD_NAME: usize = 63 - SECRET_SUFFIX.len();
/// Appended to the pod name to name the runner's Secret.
const SECRET_SUFFIX: &str = "-jit";

/// Why a pod template cannot be used; its `Display` names the file and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pod template {}: {field}{message}", file.display())]
pub struct TemplateError {
    /// The template file (or what stood for it).
    pub file: PathBuf,
    /// The field at fault (`spec.containers[1].image`), empty for the whole document.
    pub field: String,
    /// What is wrong, starting with `: ` when a field is named.
    message: String,
}

impl TemplateError {
    fn new(file: &Path, field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        let field = field.into();
        let message = if field.is_empty() {
            message.to_string()
        } else {
            format!(": {message}")
        };
        TemplateError {
            file: file.to_path_buf(),
            field,
            message,
        }
    }
}

/// A checked pod template: its metadata and spec, with a runner container.
#[derive(Clone, Debug, PartialEq)]
pub struct PodTemplate {
    file: PathBuf,
    metadata: ObjectMeta,
    spec: PodSpec,
    runner_container: String,
}

impl PodTemplate {
    /// Reads and checks the template at `path` whose runner container is named
    /// `runner_container`.
    ///
    /// # Errors
    /// A [`TemplateError`] naming the file and the field.
    pub fn load(path: &Path, runner_container: &str) -> Result<PodTemplate, TemplateError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TemplateError::new(path, "", format!("cannot be read: {e}")))?;
        PodTemplate::parse(&text, path, runner_container)
    }

    /// Checks the template `text` read from `file`.
    ///
    /// # Errors
    /// A [`TemplateError`] naming the file and the field.
    pub fn parse(
        text: &str,
        file: &Path,
        runner_container: &str,
    ) -> Result<PodTemplate, TemplateError> {
        let doc: Value = serde_saphyr::from_str(text)
            .map_err(|e| TemplateError::new(file, "", format!("is not YAML: {e}")))?;
        let Value::Object(mut top) = doc else {
            return Err(TemplateError::new(
                file,
                "",
                "must be a mapping (a Pod manifest or a pod template with metadata and spec)",
            ));
        };
        if let Some(v) = top.get("apiVersion")
            && v != "v1"
        {
            return Err(TemplateError::new(
                file,
                "apiVersion",
                format!("must be v1, not {v}"),
            ));
        }
        // Where the template's fields start, for error paths.
        let kind = match top.get("kind") {
            None => None,
            Some(Value::String(k)) if k == "Pod" || k == "PodTemplate" => Some(k.clone()),
            Some(other) => {
                return Err(TemplateError::new(
                    file,
                    "kind",
                    format!(
                        "must be Pod or PodTemplate (or absent for a bare template), not {other}"
                    ),
                ));
            }
        };
        // Where the template's fields start, for error paths.
        let (base, mut template) = if kind.as_deref() == Some("PodTemplate") {
            match top.remove("template") {
                Some(Value::Object(t)) => ("template.", t),
                _ => {
                    return Err(TemplateError::new(
                        file,
                        "template",
                        "missing: a PodTemplate holds its pod under `template`",
                    ));
                }
            }
        } else {
            top.remove("apiVersion");
            top.remove("kind");
            // What the API server fills in is not the template's business.
            top.remove("status");
            ("", top)
        };
        if let Some(k) = template.keys().find(|k| *k != "metadata" && *k != "spec") {
            return Err(TemplateError::new(
                file,
                format!("{base}{k}"),
                "unknown field (a pod template has metadata and spec)",
            ));
        }
        let metadata = template
            .remove("metadata")
            .unwrap_or_else(|| Value::Object(Default::default()));
        let Some(spec) = template.remove("spec") else {
            return Err(TemplateError::new(
                file,
                format!("{base}spec"),
                "missing: the pod's spec",
            ));
        };
        let metadata: ObjectMeta = typed(file, &format!("{base}metadata"), metadata)?;
        let spec: PodSpec = typed(file, &format!("{base}spec"), spec)?;
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        if !names.contains(&runner_container) {
            return Err(TemplateError::new(
                file,
                format!("{base}spec.containers"),
                format!(
                    "no container named {runner_container:?} (the runner container; found: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        }
        for (i, c) in spec.containers.iter().enumerate() {
            if !is_dns_label(&c.name) {
                return Err(TemplateError::new(
                    file,
                    format!("{base}spec.containers[{i}].name"),
                    format!("{:?} is not a container name", c.name),
                ));
            }
        }
        if let Some((k, _)) = metadata
            .labels
            .iter()
            .flatten()
            .chain(metadata.annotations.iter().flatten())
            .find(|(k, _)| k.starts_with(OWN_LABEL_PREFIX))
        {
            return Err(TemplateError::new(
                file,
                format!("{base}metadata"),
                format!(
                    "{k:?}: labels and annotations starting with {OWN_LABEL_PREFIX} are the provisioner's own"
                ),
            ));
        }
        Ok(PodTemplate {
            file: file.to_path_buf(),
            metadata,
            spec,
            runner_container: runner_container.to_string(),
        })
    }

    /// The template file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The template's pod spec.
    pub fn spec(&self) -> &PodSpec {
        &self.spec
    }

    /// The template's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
}

/// `value` as a `T`, or an error naming the field at fault under `at`. Fields `T` does not
/// know are errors too (Kubernetes' types ignore them).
fn typed<T>(file: &Path, at: &str, value: Value) -> Result<T, TemplateError>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let parsed: T = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path.is_empty() || path == "." {
            at.to_string()
        } else {
            format!("{at}.{path}")
        };
        TemplateError::new(file, field, e.into_inner())
    })?;
    let back = serde_json::to_value(&parsed)
        .map_err(|e| TemplateError::new(file, at, format!("cannot be represented: {e}")))?;
    if let Some(unknown) = unknown_field(&value, &back, at) {
        return Err(TemplateError::new(
            file,
            unknown,
            "unknown field (not part of the Kubernetes API)",
        ));
    }
    Ok(parsed)
}

/// The path of the first field of `original` that did not survive a round trip through the
/// typed value (`back`): one the type does not know.
fn unknown_field(original: &Value, back: &Value, at: &str) -> Option<String> {
    match (original, back) {
        (Value::Object(o), Value::Object(b)) => o.iter().find_map(|(k, v)| match b.get(k) {
            None if !v.is_null() => Some(format!("{at}.{k}")),
            None => None,
            Some(bv) => unknown_field(v, bv, &format!("{at}.{k}")),
        }),
        (Value::Array(o), Value::Array(b)) => o
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, bv))| unknown_field(v, bv, &format!("{at}[{i}]"))),
        _ => None,
    }
}

/// A short, stable hash of `s` (FNV-1a), for names that had to be shortened or cleaned.
fn short_hash(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// The pod name of runner `runner`: the name itself when it is a DNS label of at most 59
/// characters, else a cleaned, shortened form with a hash of the exact name (so two runner
/// names never share a pod).
pub fn pod_name(runner: &str) -> String {
    if is_dns_label(runner) && runner.len() <= MAX_POD_NAME {
        return runner.to_string();
    }
    let hash = short_hash(runner);
    let mut base = String::new();
    for c in runner.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            base.push(c);
        } else if !base.ends_with('-') {
            base.push('-');
        }
    }
    let keep = MAX_POD_NAME - hash.len() - 1;
    let base: String = base.trim_matches('-').chars().take(keep).collect();
    let base = base.trim_end_matches('-');
    if base.is_empty() {
        format!("runner-{hash}")
    } else {
        format!("{base}-{hash}")
    }
}

/// The name of the Secret holding the JIT config of the runner whose pod is `pod`.
pub fn secret_name(pod: &str) -> String {
    format!("{pod}{SECRET_SUFFIX}")
}

/// `s` as a label value: itself when it is one, else its allowed characters (others become
/// `-`), shortened, with a hash of the exact text so different texts stay different.
pub fn label_value(s: &str) -> String {
    if is_label_value(s) {
        return s.to_string();
    }
    let hash = short_hash(s);
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let base: String = cleaned.chars().take(63 - hash.len() - 1).collect();
    let base = base.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if base.is_empty() {
        hash
    } else {
        format!("{base}-{hash}")
    }
}

/// The label selector of this scale set's and instance's pods and Secrets.
pub fn selector(identity: &ScaleSetIdentity) -> String {
    format!(
        "{LABEL_SCALE_SET_ID}={},{LABEL_INSTANCE}={}",
        identity.id,
        label_value(&identity.instance)
    )
}

/// Whether `meta` marks an object as this scale set's and instance's.
pub fn is_ours(meta: &ObjectMeta, identity: &ScaleSetIdentity) -> bool {
    let Some(labels) = &meta.labels else {
        return false;
    };
    labels.get(LABEL_SCALE_SET_ID) == Some(&identity.id.to_string())
        && labels.get(LABEL_INSTANCE) == Some(&label_value(&identity.instance))
}

/// The exact runner name an object of ours stands for: its annotation, else its label, else
/// its own name.
pub fn runner_name_of(meta: &ObjectMeta) -> String {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_RUNNER_NAME))
        .or_else(|| meta.labels.as_ref().and_then(|l| l.get(LABEL_RUNNER_NAME)))
        .cloned()
        .or_else(|| meta.name.clone())
        .unwrap_or_default()
}

/// The runner id recorded on an object of ours (0 when unknown).
pub fn runner_id_of(meta: &ObjectMeta) -> RunnerId {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(LABEL_RUNNER_ID))
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// The identity labels and annotations of runner `spec` (shared by its Pod and Secret).
fn own_metadata(
    identity: &ScaleSetIdentity,
    runner: &str,
    runner_id: RunnerId,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let labels = BTreeMap::from([
        (LABEL_SCALE_SET_ID.to_string(), identity.id.to_string()),
        (
            LABEL_SCALE_SET_NAME.to_string(),
            label_value(&identity.name),
        ),
        (LABEL_INSTANCE.to_string(), label_value(&identity.instance)),
        (LABEL_RUNNER_NAME.to_string(), label_value(runner)),
        (LABEL_RUNNER_ID.to_string(), runner_id.to_string()),
    ]);
    let annotations = BTreeMap::from([
        (ANNOTATION_RUNNER_NAME.to_string(), runner.to_string()),
        (ANNOTATION_SCALE_SET_NAME.to_string(), identity.name.clone()),
        (ANNOTATION_INSTANCE.to_string(), identity.instance.clone()),
    ]);
    (labels, annotations)
}

/// The Secret holding `spec`'s JIT config, in `namespace`.
pub fn build_secret(namespace: &str, identity: &ScaleSetIdentity, spec: &RunnerSpec) -> Secret {
    let (labels, annotations) = own_metadata(identity, &spec.name, spec.runner_id);
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&pod_name(&spec.name))),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            SECRET_KEY.to_string(),
            ByteString(spec.jit_config.expose_secret().as_bytes().to_vec()),
        )])),
        immutable: Some(true),
        type_: Some("Opaque".to_string()),
        ..Default::default()
    }
}

/// The owner reference that makes a Secret go with the pod `pod` (uid `uid`).
pub fn owner_reference(pod: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_string(),
        kind: "Pod".to_string(),
        name: pod.to_string(),
        uid: uid.to_string(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// The Pod of runner `spec` from `template` under `settings`; `lookup` reads the daemon's
/// environment (for [`KubernetesSettings::env`]).
pub fn build_pod(
    template: &PodTemplate,
    settings: &KubernetesSettings,
    identity: &ScaleSetIdentity,
    spec: &RunnerSpec,
    lookup: impl Fn(&str) -> Option<String>,
) -> Pod {
    let name = pod_name(&spec.name);
    let mut metadata = template.metadata.clone();
    metadata.name = Some(name.clone());
    metadata.generate_name = None;
    metadata.namespace = Some(settings.namespace.clone());
    let (own_labels, own_annotations) = own_metadata(identity, &spec.name, spec.runner_id);
    let labels = metadata.labels.get_or_insert_with(Default::default);
    labels.extend(
        settings
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with(OWN_LABEL_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    labels.extend(own_labels);
    metadata
        .annotations
        .get_or_insert_with(Default::default)
        .extend(own_annotations);
    let mut pod_spec = template.spec.clone();
    pod_spec.restart_policy = Some("Never".to_string());
    if let Some(c) = pod_spec
        .containers
        .iter_mut()
        .find(|c| c.name == template.runner_container)
    {
        runner_container(c, settings, &secret_name(&name), lookup);
    }
    Pod {
        metadata,
        spec: Some(pod_spec),
        status: None,
    }
}

/// Sets what the provisioner owns on the runner container `c`.
fn runner_container(
    c: &mut Container,
    settings: &KubernetesSettings,
    secret: &str,
    lookup: impl Fn(&str) -> Option<String>,
) {
    if let Some(image) = &settings.image {
        c.image = Some(image.clone());
    }
    if let Some(command) = &settings.command {
        c.command = Some(vec![command.clone()]);
    }
    if !settings.args.is_empty() {
        c.args = Some(settings.args.clone());
    }
    let ours = |n: &str| n == JIT_CONFIG_ENV || n == VERSION_DEPRECATED_ENV;
    let env = c.env.get_or_insert_with(Vec::new);
    env.retain(|e| !ours(&e.name));
    for name in settings.env.iter().filter(|n| !ours(n)) {
        if let Some(value) = lookup(name) {
            env.retain(|e| &e.name != name);
            env.push(EnvVar {
                name: name.clone(),
                value: Some(value),
                value_from: None,
            });
        }
    }
    env.push(EnvVar {
        name: VERSION_DEPRECATED_ENV.to_string(),
        value: Some("1".to_string()),
        value_from: None,
    });
    env.push(EnvVar {
        name: JIT_CONFIG_ENV.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: SECRET_KEY.to_string(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use actions_scaleset::ScaleSetId;

    const TEMPLATE: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: ignored
  labels:
    app: runners
  annotations:
    team: ci
spec:
  serviceAccountName: runner
  nodeSelector:
    kubernetes.io/os: linux
  tolerations:
    - key: dedicated
      operator: Equal
      value: ci
      effect: NoSchedule
  volumes:
    - name: work
      emptyDir: {}
  containers:
    - name: runner
      image: ghcr.io/actions/actions-runner:latest
      command: ["/home/runner/run.sh"]
      env:
        - name: KEEP
          value: "yes"
        - name: ACTIONS_RUNNER_INPUT_JITCONFIG
          value: stale
      resources:
        limits:
          memory: 4Gi
          cpu: 2
      volumeMounts:
        - name: work
          mountPath: /home/runner/_work
    - name: dind
      image: docker:dind
      securityContext:
        privileged: true
status:
  phase: Running
"#;

    fn identity() -> ScaleSetIdentity {
        ScaleSetIdentity {
            id: ScaleSetId::new(3),
            name: "Linux X64".into(),
            instance: "host-a".into(),
        }
    }

    fn spec() -> RunnerSpec {
        RunnerSpec {
            name: "linux-0000abcd".into(),
            runner_id: RunnerId::new(12),
            jit_config: actions_scaleset::EncodedJitConfig::new("jit-secret-value"),
        }
    }

    fn parse(text: &str) -> Result<PodTemplate, TemplateError> {
        PodTemplate::parse(text, Path::new("/etc/pod.yaml"), "runner")
    }

    #[test]
    fn a_pod_manifest_and_a_bare_template_are_accepted() {
        let t = parse(TEMPLATE).expect("a Pod");
        assert_eq!(t.spec().containers.len(), 2);
        let bare = "metadata:\n  labels: {a: b}\nspec:\n  containers:\n    - name: runner\n      image: x\n";
        parse(bare).expect("a bare template");
        let spec_only = "spec:\n  containers:\n    - name: runner\n";
        parse(spec_only).expect("no metadata");
        let pt = "apiVersion: v1\nkind: PodTemplate\nmetadata: {name: t}\ntemplate:\n  spec:\n    containers:\n      - name: runner\n";
        parse(pt).expect("a PodTemplate");
    }

    #[test]
    fn malformed_templates_name_the_file_and_the_field() {
        let cases = [
            ("a: [unclosed", "is not YAML"),
            ("- a\n- b\n", "must be a mapping"),
            ("kind: Deployment\nspec: {}\n", "kind:"),
            ("apiVersion: v2\nkind: Pod\n", "apiVersion:"),
            ("metadata: {}\n", "spec: missing"),
            (
                "spec:\n  containers:\n    - name: main\n",
                "spec.containers: no container named \"runner\" (the runner container; found: main)",
            ),
            ("spec:\n  containers: []\n", "found: none"),
            ("spec:\n  containers: yes\n", "spec.containers:"),
            (
                "spec:\n  containers:\n    - name: runner\n      imag: x\n",
                "spec.containers[0].imag: unknown field",
            ),
            (
                "spec:\n  nodeSelecter: {a: b}\n  containers:\n    - name: runner\n",
                "spec.nodeSelecter: unknown field",
            ),
            (
                "spec:\n  containers:\n    - name: runner\n      ports:\n        - containerPort: many\n",
                "spec.containers[0].ports[0].containerPort:",
            ),
            (
                "metadata:\n  labels: {dev.scaleset.instance: x}\nspec:\n  containers:\n    - name: runner\n",
                "metadata:",
            ),
            ("spec: {}\nextra: 1\n", "extra: unknown field"),
            (
                "kind: PodTemplate\ntemplate:\n  spec:\n    containers:\n      - name: main\n",
                "template.spec.containers: no container",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.starts_with("pod template /etc/pod.yaml"), "{text}: {e}");
            assert!(e.contains(expected), "{text}: {e}");
        }
        let e =
            PodTemplate::load(Path::new("/nonexistent/pod.yaml"), "runner").expect_err("no file");
        assert!(
            e.to_string()
                .contains("/nonexistent/pod.yaml: cannot be read"),
            "{e}"
        );
    }

    #[test]
    fn the_pod_is_the_template_with_only_the_provisioners_fields_set() {
        let t = parse(TEMPLATE).expect("template");
        let mut s = KubernetesSettings::new("/etc/pod.yaml");
        s.namespace = "ci".into();
        s.env = vec!["PASSED".into(), "UNSET".into(), JIT_CONFIG_ENV.into()];
        s.labels.insert("extra".into(), "1".into());
        let lookup = |n: &str| match n {
            "PASSED" => Some("yes".to_string()),
            JIT_CONFIG_ENV => Some("from-the-daemon".to_string()),
            _ => None,
        };
        let pod = build_pod(&t, &s, &identity(), &spec(), lookup);
        let meta = &pod.metadata;
        assert_eq!(meta.name.as_deref(), Some("linux-0000abcd"));
        assert_eq!(meta.namespace.as_deref(), Some("ci"));
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(labels["app"], "runners");
        assert_eq!(labels["extra"], "1");
        assert_eq!(labels[LABEL_SCALE_SET_ID], "3");
        assert_eq!(labels[LABEL_INSTANCE], "host-a");
        assert_eq!(labels[LABEL_RUNNER_NAME], "linux-0000abcd");
        assert_eq!(labels[LABEL_RUNNER_ID], "12");
        assert!(is_label_value(&labels[LABEL_SCALE_SET_NAME]), "{labels:?}");
        let annotations = meta.annotations.clone().unwrap_or_default();
        assert_eq!(annotations["team"], "ci");
        assert_eq!(annotations[ANNOTATION_SCALE_SET_NAME], "Linux X64");
        let ps = pod.spec.clone().expect("spec");
        assert_eq!(ps.restart_policy.as_deref(), Some("Never"));
        // Everything else of the template is as it was.
        let mut expected = t.spec().clone();
        expected.restart_policy = Some("Never".into());
        expected.containers[0].env = ps.containers[0].env.clone();
        assert_eq!(ps, expected);
        let env = ps.containers[0].env.clone().unwrap_or_default();
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["KEEP", "PASSED", VERSION_DEPRECATED_ENV, JIT_CONFIG_ENV]
        );
        assert_eq!(env[2].value.as_deref(), Some("1"));
        let jit = &env[3];
        assert_eq!(jit.value, None);
        let sel = jit
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("secretKeyRef");
        assert_eq!(sel.name, "linux-0000abcd-jit");
        assert_eq!(sel.key, SECRET_KEY);
        let text = serde_json::to_string(&pod).expect("json");
        assert!(!text.contains("jit-secret-value"), "{text}");
        assert!(!text.contains("from-the-daemon"), "{text}");
        assert!(!text.contains("stale"), "{text}");
    }

    #[test]
    fn image_command_and_args_are_overridden_when_configured() {
        let t = parse(TEMPLATE).expect("template");
        let mut s = KubernetesSettings::new("/etc/pod.yaml");
        s.image = Some("runner:2".into());
        s.command = Some("/bin/sh".into());
        s.args = vec!["-c".into(), "exit 0".into()];
        let pod = build_pod(&t, &s, &identity(), &spec(), |_| None);
        let c = &pod.spec.as_ref().expect("spec").containers;
        assert_eq!(c[0].image.as_deref(), Some("runner:2"));
        assert_eq!(c[0].command, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(
            c[0].args,
            Some(vec!["-c".to_string(), "exit 0".to_string()])
        );
        // The sidecar is untouched.
        assert_eq!(c[1].image.as_deref(), Some("docker:dind"));
        assert_eq!(c[1].env, None);
    }

    #[test]
    fn the_secret_holds_the_jit_config_and_the_identity() {
        let secret = build_secret("ci", &identity(), &spec());
        assert_eq!(secret.metadata.name.as_deref(), Some("linux-0000abcd-jit"));
        assert_eq!(
            secret.data.as_ref().and_then(|d| d.get(SECRET_KEY)),
            Some(&ByteString(b"jit-secret-value".to_vec()))
        );
        assert!(is_ours(&secret.metadata, &identity()));
        assert_eq!(runner_name_of(&secret.metadata), "linux-0000abcd");
        assert_eq!(runner_id_of(&secret.metadata), RunnerId::new(12));
    }

    #[test]
    fn names_become_valid_kubernetes_names() {
        assert_eq!(pod_name("linux-0000abcd"), "linux-0000abcd");
        for name in [
            "Linux X64-0000abcd",
            "a_b",
            "___",
            &"x".repeat(100),
            "ünïcode",
        ] {
            let p = pod_name(name);
            assert!(is_dns_label(&p) && p.len() <= MAX_POD_NAME, "{name}: {p}");
            assert!(is_dns_label(&secret_name(&p)), "{p}");
        }
        assert_ne!(pod_name("A-b"), pod_name("a-b"));
        assert_ne!(pod_name("a_b"), pod_name("a.b"));
        assert_eq!(label_value("host-a"), "host-a");
        for v in ["Linux X64", "-x-", &"y".repeat(80), "é"] {
            let l = label_value(v);
            assert!(is_label_value(&l) && !l.is_empty(), "{v}: {l}");
        }
        assert_ne!(label_value("a b"), label_value("a/b"));
        assert_eq!(
            selector(&identity()),
            "dev.scaleset.scale-set-id=3,dev.scaleset.instance=host-a"
        );
    }
}
