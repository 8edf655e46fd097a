//! Wire types of the scale set API.
//!
//! Decoding is as tolerant as the reference client: unknown fields are ignored, `null` reads as
//! the field's default, `RunnerSetting` and `runnerSetting` are both accepted, timestamps may
//! carry seven fractional digits, have no offset (read as UTC), or be the zero time
//! `0001-01-01T00:00:00Z` (read as absent). Secrets (the message-queue token, JIT configs) are
//! held in [`SecretString`] and never printed by `Debug`.

use std::fmt;

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::ids::{RunnerGroupId, RunnerId, RunnerRequestId, ScaleSetId};

/// The runner group every scale set belongs to unless told otherwise.
pub const DEFAULT_RUNNER_GROUP: &str = "default";

/// The id of the [`DEFAULT_RUNNER_GROUP`], which needs no lookup.
pub const DEFAULT_RUNNER_GROUP_ID: RunnerGroupId = RunnerGroupId::new(1);

/// Deserializes `null` (and a missing field, with `#[serde(default)]`) as `T::default()`.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Lenient RFC 3339 timestamps.
pub(crate) mod timestamp {
    use jiff::Timestamp;
    use jiff::civil::DateTime;
    use jiff::tz::TimeZone;
    use serde::{Deserializer, Serializer};

    /// Parses a timestamp the way the service writes them; `None` for empty and zero times.
    pub(crate) fn parse(s: &str) -> Result<Option<Timestamp>, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let ts = match s.parse::<Timestamp>() {
            Ok(ts) => ts,
            Err(with_offset) => match s.parse::<DateTime>() {
                Ok(dt) => dt
                    .to_zoned(TimeZone::UTC)
                    .map_err(|e| format!("invalid timestamp {s:?}: {e}"))?
                    .timestamp(),
                Err(_) => return Err(format!("invalid timestamp {s:?}: {with_offset}")),
            },
        };
        // Go's zero time, which the reference writes for "unset".
        if ts.as_second() <= -62_135_596_800 {
            return Ok(None);
        }
        Ok(Some(ts))
    }

    /// A timestamp string (or `null`), parsed where it lies: no copy of the text.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Timestamp>, D::Error> {
        struct Text;
        impl<'de> serde::de::Visitor<'de> for Text {
            type Value = Option<Timestamp>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a timestamp string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse(v).map_err(E::custom)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_str(Text)
            }
        }
        d.deserialize_option(Text)
    }

    pub(crate) fn serialize<S: Serializer>(
        ts: &Option<Timestamp>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match ts {
            Some(ts) => s.serialize_str(&ts.to_string()),
            None => s.serialize_str("0001-01-01T00:00:00Z"),
        }
    }
}

/// Who is calling: sent to the service as a JSON `User-Agent`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SystemInfo {
    /// The calling system, e.g. `my-autoscaler`.
    pub system: String,
    /// Its version.
    pub version: String,
    /// Its commit.
    #[serde(rename = "commit_sha")]
    pub commit_sha: String,
    /// The scale set it works for, once known (0 otherwise).
    #[serde(rename = "scale_set_id")]
    pub scale_set_id: ScaleSetId,
    /// The part of the system, e.g. `listener`.
    pub subsystem: String,
}

impl SystemInfo {
    /// The `User-Agent` value: the five fields above plus this library's version and
    /// `"kind":"scaleset"`, as compact JSON in the reference's key order.
    pub fn user_agent(&self) -> String {
        #[derive(Serialize)]
        struct Ua<'a> {
            system: &'a str,
            version: &'a str,
            commit_sha: &'a str,
            scale_set_id: ScaleSetId,
            subsystem: &'a str,
            build_version: &'a str,
            build_commit_sha: &'a str,
            kind: &'a str,
        }
        let ua = Ua {
            system: &self.system,
            version: &self.version,
            commit_sha: &self.commit_sha,
            scale_set_id: self.scale_set_id,
            subsystem: &self.subsystem,
            build_version: env!("CARGO_PKG_VERSION"),
            build_commit_sha: option_env!("SCALESET_BUILD_COMMIT").unwrap_or("unknown"),
            kind: "scaleset",
        };
        serde_json::to_string(&ua).expect("a struct of strings and an integer always serializes")
    }
}

/// A scale set label.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// Label type; `System` when the client fills it in.
    #[serde(rename = "type", default, deserialize_with = "nullable")]
    pub kind: String,
    /// Label name, as used in `runs-on:`.
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
}

impl Label {
    /// A `System` label with this name.
    pub fn system(name: impl Into<String>) -> Label {
        Label {
            kind: "System".to_string(),
            name: name.into(),
        }
    }
}

/// The labels of scale set `name`: the name first (it is what `runs-on:` names), then `extra`
/// in order, without blank names and without any name already present ignoring case.
///
/// The one label rule of the workspace: [`Client::create_runner_scale_set`] applies it, and so
/// does every caller that sets labels (`scale-set create/update`, the autoscaler's
/// get-or-create), so a scale set never loses the label its workflows target.
///
/// [`Client::create_runner_scale_set`]: crate::Client::create_runner_scale_set
///
/// ```
/// use actions_scaleset::{Label, scale_set_labels};
/// let labels = scale_set_labels("linux", [Label::system("x64"), Label::system("LINUX")]);
/// let names: Vec<&str> = labels.iter().map(|l| l.name.as_str()).collect();
/// assert_eq!(names, ["linux", "x64"]);
/// ```
pub fn scale_set_labels(name: &str, extra: impl IntoIterator<Item = Label>) -> Vec<Label> {
    let mut labels: Vec<Label> = Vec::new();
    let candidates = std::iter::once(Label::system(name)).chain(extra);
    for mut label in candidates {
        label.name = label.name.trim().to_string();
        if label.name.is_empty() {
            continue;
        }
        let key = label.name.to_lowercase();
        if labels.iter().all(|l| l.name.to_lowercase() != key) {
            labels.push(label);
        }
    }
    labels
}

/// Runner settings of a scale set (sent as `RunnerSetting`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerSetting {
    /// Whether runners skip self-updates.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "is_false"
    )]
    pub disable_update: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero<T: Copy + Into<i64>>(n: &T) -> bool {
    (*n).into() == 0
}

/// Job and runner counts of a scale set.
///
/// Scale on [`total_assigned_jobs`](Self::total_assigned_jobs): it counts waiting and running jobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerScaleSetStatistic {
    /// Jobs offered to the scale set, not yet acquired (GHES).
    #[serde(default, deserialize_with = "nullable")]
    pub total_available_jobs: i64,
    /// Jobs acquired, not yet assigned.
    #[serde(default, deserialize_with = "nullable")]
    pub total_acquired_jobs: i64,
    /// Jobs assigned to the scale set: waiting for a runner or running.
    #[serde(default, deserialize_with = "nullable")]
    pub total_assigned_jobs: i64,
    /// Jobs running on a runner.
    #[serde(default, deserialize_with = "nullable")]
    pub total_running_jobs: i64,
    /// Runners registered.
    #[serde(default, deserialize_with = "nullable")]
    pub total_registered_runners: i64,
    /// Runners running a job.
    #[serde(default, deserialize_with = "nullable")]
    pub total_busy_runners: i64,
    /// Runners online and idle.
    #[serde(default, deserialize_with = "nullable")]
    pub total_idle_runners: i64,
}

/// A runner scale set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerScaleSet {
    /// Scale set id (0 before creation).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub id: ScaleSetId,
    /// Name, unique within its runner group.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    /// Runner group id.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "is_zero"
    )]
    pub runner_group_id: RunnerGroupId,
    /// Runner group name.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub runner_group_name: String,
    /// Labels workflows target with `runs-on:`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub labels: Vec<Label>,
    /// Runner settings.
    #[serde(
        rename = "RunnerSetting",
        alias = "runnerSetting",
        default,
        deserialize_with = "nullable"
    )]
    pub runner_setting: RunnerSetting,
    /// Creation time (sent as the zero time `0001-01-01T00:00:00Z` when unset, as the
    /// reference does).
    #[serde(default, with = "timestamp")]
    pub created_on: Option<Timestamp>,
    /// URL of the JIT endpoint.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub runner_jit_config_url: String,
    /// Current statistics, when the service includes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistics: Option<RunnerScaleSetStatistic>,
}

/// A partial update of a scale set: only the fields that are `Some` are sent.
///
/// Unlike the reference, an update never sends `"RunnerSetting":{}` or a zero `createdOn` the
/// caller did not ask for.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerScaleSetUpdate {
    /// New name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New runner group id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner_group_id: Option<RunnerGroupId>,
    /// New labels (an empty `type` becomes `System`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<Label>>,
    /// New runner settings.
    #[serde(rename = "RunnerSetting", skip_serializing_if = "Option::is_none")]
    pub runner_setting: Option<RunnerSetting>,
}

/// A runner group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerGroup {
    /// Group id (`default` is 1, [`DEFAULT_RUNNER_GROUP_ID`]).
    #[serde(default, deserialize_with = "nullable")]
    pub id: RunnerGroupId,
    /// Group name.
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// Number of runners.
    #[serde(default, deserialize_with = "nullable")]
    pub size: i64,
    /// Whether this is the organization's default group.
    #[serde(default, deserialize_with = "nullable")]
    pub is_default_group: bool,
}

/// A runner as the service knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerReference {
    /// Runner id.
    #[serde(default, deserialize_with = "nullable")]
    pub id: RunnerId,
    /// Runner name.
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// The scale set the runner belongs to.
    #[serde(default, deserialize_with = "nullable")]
    pub runner_scale_set_id: ScaleSetId,
}

/// Parameters of a just-in-time runner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JitRunnerSetting {
    /// Runner name (unique among the scale set's runners).
    pub name: String,
    /// Work folder (empty: the runner's default).
    pub work_folder: String,
}

/// An encoded JIT runner configuration: a secret until a runner consumes it.
#[derive(Clone)]
pub struct EncodedJitConfig(SecretString);

impl EncodedJitConfig {
    /// Wraps a JIT config string.
    pub fn new(value: impl Into<String>) -> EncodedJitConfig {
        EncodedJitConfig(SecretString::from(value.into()))
    }

    /// The base64 text to hand to the runner (`ACTIONS_RUNNER_INPUT_JITCONFIG` or `--jitconfig`).
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether the service returned no config.
    pub fn is_empty(&self) -> bool {
        self.0.expose_secret().is_empty()
    }
}

impl fmt::Debug for EncodedJitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncodedJitConfig([REDACTED])")
    }
}

impl Default for EncodedJitConfig {
    fn default() -> Self {
        EncodedJitConfig::new(String::new())
    }
}

impl<'de> Deserialize<'de> for EncodedJitConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(EncodedJitConfig::new(
            Option::<String>::deserialize(d)?.unwrap_or_default(),
        ))
    }
}

/// A JIT runner: its registration and the config that starts it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct JitRunnerConfig {
    /// The registered runner.
    #[serde(default, deserialize_with = "nullable")]
    pub runner: RunnerReference,
    /// The config to hand to the runner.
    #[serde(rename = "encodedJITConfig", default)]
    pub encoded_jit_config: EncodedJitConfig,
}

/// A message session of a scale set.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerScaleSetSession {
    /// Session id.
    #[serde(default, deserialize_with = "nullable")]
    pub session_id: Uuid,
    /// Owner name given at creation.
    #[serde(default, deserialize_with = "nullable")]
    pub owner_name: String,
    /// The scale set, when included.
    #[serde(default)]
    pub runner_scale_set: Option<RunnerScaleSet>,
    /// The long-poll URL of the message queue.
    #[serde(default, deserialize_with = "nullable")]
    pub message_queue_url: String,
    /// Bearer token for the queue and acquire calls.
    #[serde(default = "empty_secret", deserialize_with = "nullable_secret")]
    pub message_queue_access_token: SecretString,
    /// Statistics at session creation or refresh.
    #[serde(default)]
    pub statistics: Option<RunnerScaleSetStatistic>,
}

fn empty_secret() -> SecretString {
    SecretString::from(String::new())
}

fn nullable_secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    Ok(SecretString::from(
        Option::<String>::deserialize(d)?.unwrap_or_default(),
    ))
}

/// Fields shared by every job message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobMessageBase {
    /// `JobAvailable`, `JobAssigned`, `JobStarted` or `JobCompleted`.
    #[serde(default, deserialize_with = "nullable")]
    pub message_type: String,
    /// The job request id, used with acquire-jobs.
    #[serde(default, deserialize_with = "nullable")]
    pub runner_request_id: RunnerRequestId,
    /// Repository name.
    #[serde(default, deserialize_with = "nullable")]
    pub repository_name: String,
    /// Repository owner.
    #[serde(default, deserialize_with = "nullable")]
    pub owner_name: String,
    /// Job id (a string on the wire; a number is accepted too).
    #[serde(default, deserialize_with = "string_or_number")]
    pub job_id: String,
    /// `{owner}/{repo}/.github/workflows/{file}@{ref}`.
    #[serde(default, deserialize_with = "nullable")]
    pub job_workflow_ref: String,
    /// Job display name.
    #[serde(default, deserialize_with = "nullable")]
    pub job_display_name: String,
    /// Workflow run id.
    #[serde(default, deserialize_with = "nullable")]
    pub workflow_run_id: i64,
    /// Triggering event.
    #[serde(default, deserialize_with = "nullable")]
    pub event_name: String,
    /// Labels the job asked for.
    #[serde(default, deserialize_with = "nullable")]
    pub request_labels: Vec<String>,
    /// When the job was queued.
    #[serde(default, with = "timestamp")]
    pub queue_time: Option<Timestamp>,
    /// When the job was assigned to the scale set.
    #[serde(default, with = "timestamp")]
    pub scale_set_assign_time: Option<Timestamp>,
    /// When the job was assigned to a runner.
    #[serde(default, with = "timestamp")]
    pub runner_assign_time: Option<Timestamp>,
    /// When the job finished.
    #[serde(default, with = "timestamp")]
    pub finish_time: Option<Timestamp>,
}

/// A string, or a number written as its decimal text (`jobId` has been both); `null` or
/// absent is empty. Decoded without an intermediate `serde_json::Value`.
pub(crate) fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Text;
    impl<'de> serde::de::Visitor<'de> for Text {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a number")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
            Ok(serde_json::Number::from_f64(v).map_or_else(String::new, |n| n.to_string()))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<String, E> {
            Ok(String::new())
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<String, E> {
            Ok(String::new())
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
            d.deserialize_any(Text)
        }
    }
    d.deserialize_any(Text)
}

/// A job offered to the scale set (GHES); acquire it to have it assigned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobAvailable {
    /// Common fields.
    #[serde(flatten)]
    pub base: JobMessageBase,
    /// URL to acquire the job.
    #[serde(default, deserialize_with = "nullable")]
    pub acquire_job_url: String,
}

/// A job assigned to the scale set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobAssigned {
    /// Common fields.
    #[serde(flatten)]
    pub base: JobMessageBase,
}

/// A job that started on one of the scale set's runners.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStarted {
    /// Common fields.
    #[serde(flatten)]
    pub base: JobMessageBase,
    /// Runner id.
    #[serde(default, deserialize_with = "nullable")]
    pub runner_id: RunnerId,
    /// Runner name (correlate runners by this, not by `runnerRequestId`).
    #[serde(default, deserialize_with = "nullable")]
    pub runner_name: String,
}

/// A job that finished (or was canceled before a runner took it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobCompleted {
    /// Common fields.
    #[serde(flatten)]
    pub base: JobMessageBase,
    /// Result, e.g. `succeeded`, `failed`, `canceled`.
    #[serde(default, deserialize_with = "nullable")]
    pub result: String,
    /// Runner id (0 when no runner took the job).
    #[serde(default, deserialize_with = "nullable")]
    pub runner_id: RunnerId,
    /// Runner name (empty when no runner took the job).
    #[serde(default, deserialize_with = "nullable")]
    pub runner_name: String,
}

/// The jobs offered to a scale set and not yet acquired, as the `acquirablejobs` call answers
/// them: `{"count": n, "value": [JobAvailable...]}` (a 204 reads as an empty list).
///
/// Only GHES offers jobs (`JobAvailable`, then acquire); on github.com jobs are assigned
/// directly and this list is normally empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquirableJobList {
    /// How many jobs the service says the list holds.
    #[serde(default, deserialize_with = "nullable")]
    pub count: i64,
    /// The jobs, each a `JobAvailable` message (sent as `value`).
    #[serde(rename = "value", default, deserialize_with = "nullable")]
    pub jobs: Vec<JobAvailable>,
}

/// A list answer `{"count": n, "value": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub(crate) struct ListResponse<T> {
    #[serde(default)]
    pub(crate) count: Option<i64>,
    #[serde(default = "Vec::new", deserialize_with = "nullable_vec")]
    pub(crate) value: Vec<T>,
}

fn nullable_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(labels: &[Label]) -> Vec<&str> {
        labels.iter().map(|l| l.name.as_str()).collect()
    }

    #[test]
    fn the_name_is_always_the_first_label() {
        assert_eq!(names(&scale_set_labels("linux", [])), ["linux"]);
        let extra = [Label::system("x64"), Label::system("linux")];
        assert_eq!(names(&scale_set_labels("linux", extra)), ["linux", "x64"]);
        // Case-insensitive de-duplication keeps the first spelling; blanks are dropped; a
        // caller's label type is kept.
        let extra = [
            Label::system("X64"),
            Label::system(" "),
            Label::system("x64"),
            Label {
                kind: "User".into(),
                name: "gpu".into(),
            },
            Label::system("Linux"),
        ];
        let got = scale_set_labels("linux", extra);
        assert_eq!(names(&got), ["linux", "X64", "gpu"]);
        assert_eq!(got[0].kind, "System");
        assert_eq!(got[2].kind, "User");
    }

    // Behaviour 7 of the issue: tolerant decoding.
    #[test]
    fn scale_set_decoding_is_tolerant() {
        let json = r#"{"id":7,"name":"my-set","runnerGroupId":1,"runnerGroupName":null,
            "labels":[{"type":"System","name":"my-set"}],"runnerSetting":{"disableUpdate":true},
            "createdOn":"2025-01-01T10:00:00.1234567Z","unknownField":{"x":1},"statistics":null}"#;
        let s: RunnerScaleSet = serde_json::from_str(json).expect("decodes");
        assert_eq!(s.id, ScaleSetId::new(7));
        assert!(s.runner_setting.disable_update);
        assert_eq!(s.runner_group_name, "");
        assert_eq!(
            s.created_on.map(|t| t.subsec_nanosecond()),
            Some(123_456_700)
        );
        let upper: RunnerScaleSet = serde_json::from_str(
            r#"{"RunnerSetting":{"disableUpdate":true},"createdOn":"0001-01-01T00:00:00Z"}"#,
        )
        .expect("decodes");
        assert!(upper.runner_setting.disable_update);
        assert_eq!(upper.created_on, None);
        let no_offset: RunnerScaleSet =
            serde_json::from_str(r#"{"createdOn":"2025-01-01T10:00:00"}"#).expect("decodes");
        assert_eq!(
            no_offset.created_on.map(|t| t.as_second()),
            Some(1_735_725_600)
        );
    }

    #[test]
    fn create_body_matches_the_reference_shape() {
        let s = RunnerScaleSet {
            name: "my-set".into(),
            runner_group_id: RunnerGroupId::new(1),
            labels: vec![Label::system("my-set")],
            runner_setting: RunnerSetting {
                disable_update: true,
            },
            ..Default::default()
        };
        let got: serde_json::Value = serde_json::to_value(&s).expect("serializes");
        let want: serde_json::Value = serde_json::from_str(
            r#"{"name":"my-set","runnerGroupId":1,"labels":[{"type":"System","name":"my-set"}],"RunnerSetting":{"disableUpdate":true},"createdOn":"0001-01-01T00:00:00Z"}"#,
        )
        .expect("fixture");
        assert_eq!(got, want);
    }

    #[test]
    fn user_agent_is_json_in_reference_order() {
        let info = SystemInfo {
            system: "sys".into(),
            version: "1.0".into(),
            commit_sha: "abc".into(),
            scale_set_id: ScaleSetId::new(7),
            subsystem: "listener".into(),
        };
        let ua = info.user_agent();
        assert!(ua.starts_with(r#"{"system":"sys","version":"1.0","commit_sha":"abc","scale_set_id":7,"subsystem":"listener","build_version":""#), "{ua}");
        assert!(ua.ends_with(r#","kind":"scaleset"}"#), "{ua}");
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let jit: JitRunnerConfig = serde_json::from_str(
            r#"{"runner":{"id":1,"name":"r"},"encodedJITConfig":"SECRET-JIT"}"#,
        )
        .expect("decodes");
        assert!(!format!("{jit:?}").contains("SECRET-JIT"));
        assert_eq!(jit.encoded_jit_config.expose_secret(), "SECRET-JIT");
        let session: RunnerScaleSetSession = serde_json::from_str(
            r#"{"sessionId":"11111111-2222-3333-4444-555555555555","messageQueueAccessToken":"SECRET-MQ"}"#,
        )
        .expect("decodes");
        assert!(!format!("{session:?}").contains("SECRET-MQ"));
    }

    #[test]
    fn acquirable_jobs_keep_the_wire_shape() {
        let json = r#"{"count":1,"value":[{"messageType":"JobAvailable","runnerRequestId":5,"acquireJobUrl":"https://x/acquirejobs","requestLabels":["linux"]}]}"#;
        let list: AcquirableJobList = serde_json::from_str(json).expect("decodes");
        assert_eq!(list.count, 1);
        assert_eq!(list.jobs[0].base.runner_request_id, RunnerRequestId::new(5));
        assert_eq!(list.jobs[0].acquire_job_url, "https://x/acquirejobs");
        let back = serde_json::to_value(&list).expect("encodes");
        assert_eq!(back["count"], 1);
        assert_eq!(back["value"][0]["runnerRequestId"], 5);
        assert_eq!(back["value"][0]["acquireJobUrl"], "https://x/acquirejobs");
        let empty: AcquirableJobList =
            serde_json::from_str(r#"{"count":0,"value":null}"#).expect("decodes");
        assert!(empty.jobs.is_empty());
        let only_count: AcquirableJobList =
            serde_json::from_str(r#"{"count":0}"#).expect("decodes");
        assert_eq!(only_count, AcquirableJobList::default());
    }

    #[test]
    fn job_id_accepts_numbers() {
        let j: JobStarted = serde_json::from_str(
            r#"{"messageType":"JobStarted","jobId":12,"runnerId":3,"runnerName":"r","queueTime":null}"#,
        )
        .expect("decodes");
        assert_eq!(j.base.job_id, "12");
        assert_eq!(j.runner_name, "r");
    }
}
