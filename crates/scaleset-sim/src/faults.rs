//! Fault descriptions and the pending-fault store.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The endpoint classes faults are matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EndpointClass {
    /// GitHub REST (`/api/v3/...`): installation token, registration token, runner-registration.
    Github,
    /// Scale-set CRUD and runner groups (`/_apis/runtime/runnerscalesets[/{id}]`, `runnergroups/`).
    Scaleset,
    /// `generatejitconfig`.
    Jit,
    /// Runner (agent) endpoints under `/_apis/distributedtask/pools/{pool}/agents`.
    Runner,
    /// Session create / refresh / delete.
    Session,
    /// Message-queue GET (long poll) and DELETE.
    Message,
    /// `acquirejobs` and `acquirablejobs`.
    Acquire,
    /// The simulated runner's own API (`/_sim/runner/...`).
    SimRunner,
    /// Matches every class (only valid in a fault's `class` field).
    Any,
}

impl EndpointClass {
    /// Classify a request path; `None` for the control API (never faulted, never logged).
    pub fn classify(path: &str) -> Option<Self> {
        if path.starts_with("/_sim/runner/") {
            return Some(Self::SimRunner);
        }
        if path.starts_with("/_sim") {
            return None;
        }
        if path.starts_with("/api/v3/") {
            return Some(Self::Github);
        }
        if path.starts_with("/_broker/") {
            return Some(Self::Message);
        }
        if path.contains("/_apis/distributedtask/") {
            return Some(Self::Runner);
        }
        if path.contains("/sessions") {
            return Some(Self::Session);
        }
        if path.ends_with("/acquirejobs") || path.ends_with("/acquirablejobs") {
            return Some(Self::Acquire);
        }
        if path.ends_with("/generatejitconfig") {
            return Some(Self::Jit);
        }
        if path.contains("/_apis/") {
            return Some(Self::Scaleset);
        }
        None
    }

    fn matches(self, actual: Self) -> bool {
        self == Self::Any || self == actual
    }
}

fn one() -> u32 {
    1
}

/// A fault to inject. JSON form: an object with `"kind"` plus the variant's fields in
/// camelCase, e.g. `{"kind":"status","class":"session","method":"POST","status":503}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum Fault {
    /// Delay requests of a class before they are handled.
    Latency {
        /// Class to delay.
        class: EndpointClass,
        /// Optional HTTP method filter (e.g. `"GET"`).
        #[serde(default)]
        method: Option<String>,
        /// Delay in milliseconds.
        delay_ms: u64,
        /// How many requests to delay; `None` = until cleared.
        #[serde(default)]
        count: Option<u32>,
        /// Handle the request first and delay only its answer (the handling completes even
        /// when the client hangs up meanwhile): a client timeout then loses an answer whose
        /// effect (a registered runner, a created session) is real.
        #[serde(default)]
        after: bool,
    },
    /// The next `count` requests answer `status` with an Actions exception body.
    Status {
        /// Class to fault.
        class: EndpointClass,
        /// Optional HTTP method filter.
        #[serde(default)]
        method: Option<String>,
        /// How many requests (default 1).
        #[serde(default = "one")]
        count: u32,
        /// HTTP status to answer.
        status: u16,
        /// Exception `typeName` (default `GitHub.Actions.Sim.InjectedFaultException`).
        #[serde(default)]
        type_name: Option<String>,
        /// Exception message (default "injected fault").
        #[serde(default)]
        message: Option<String>,
        /// Optional `Retry-After` header value in seconds.
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// The next `count` responses get a UTF-8 BOM (`EF BB BF`) before their body.
    Bom {
        /// Class to fault.
        class: EndpointClass,
        /// Optional HTTP method filter.
        #[serde(default)]
        method: Option<String>,
        /// How many responses (default 1).
        #[serde(default = "one")]
        count: u32,
    },
    /// The next `count` responses keep their status but carry a malformed JSON body.
    MalformedJson {
        /// Class to fault.
        class: EndpointClass,
        /// Optional HTTP method filter.
        #[serde(default)]
        method: Option<String>,
        /// How many responses (default 1).
        #[serde(default = "one")]
        count: u32,
    },
    /// The next `count` responses keep their status but the body is cut in half.
    TruncatedJson {
        /// Class to fault.
        class: EndpointClass,
        /// Optional HTTP method filter.
        #[serde(default)]
        method: Option<String>,
        /// How many responses (default 1).
        #[serde(default = "one")]
        count: u32,
    },
    /// The next `count` requests answer 200 with an empty body (the handler still runs).
    EmptyBody {
        /// Class to fault.
        class: EndpointClass,
        /// Optional HTTP method filter.
        #[serde(default)]
        method: Option<String>,
        /// How many responses (default 1).
        #[serde(default = "one")]
        count: u32,
    },
    /// The next `count` requests get no answer: the connection is closed.
    DropConnection {
        /// Class to fault.
        class: EndpointClass,
        /// Optional HTTP method filter.
        #[serde(default)]
        method: Option<String>,
        /// How many requests (default 1).
        #[serde(default = "one")]
        count: u32,
    },
    /// Expire the message-queue token of the session(s) of a scale set (all when absent):
    /// the next poll/delete/acquire answers 401.
    ExpireQueueToken {
        /// Scale set, or all.
        #[serde(default)]
        scale_set_id: Option<i64>,
    },
    /// Invalidate every admin token issued so far: the next tenant call answers 401.
    ExpireAdminToken,
    /// A foreign session holds the scale set: session create answers 409 until released.
    ForeignSession {
        /// Scale set to hold.
        scale_set_id: i64,
        /// Owner name reported (informational).
        #[serde(default)]
        owner_name: Option<String>,
    },
    /// Release a foreign session placed by [`Fault::ForeignSession`].
    ReleaseForeignSession {
        /// Scale set to release.
        scale_set_id: i64,
    },
    /// Evict the session(s) of a scale set (all when absent): refresh answers 404
    /// `RunnerAdminException`, polls answer 401.
    EvictSession {
        /// Scale set, or all.
        #[serde(default)]
        scale_set_id: Option<i64>,
    },
    /// Delete a scale set server-side.
    DeleteScaleSet {
        /// Scale set to delete.
        scale_set_id: i64,
    },
    /// The next `count` created sessions have an empty `messageQueueUrl`.
    EmptyMessageQueueUrl {
        /// How many sessions (default 1).
        #[serde(default = "one")]
        count: u32,
    },
    /// The next `count` simulated runners to come online never do (they hang until killed).
    RunnerNeverOnline {
        /// How many runners (default 1).
        #[serde(default = "one")]
        count: u32,
    },
    /// The next `count` simulated runners to come online crash halfway through their job
    /// (exit non-zero without reporting; the sim fails the job after the heartbeat timeout).
    RunnerCrashMidJob {
        /// How many runners (default 1).
        #[serde(default = "one")]
        count: u32,
    },
    /// The next `count` simulated runners to come online crash before taking a job (exit
    /// non-zero after coming online; no job was started, so none fails: an assigned job
    /// waits for another runner).
    RunnerCrashBeforeJob {
        /// How many runners (default 1).
        #[serde(default = "one")]
        count: u32,
    },
    /// The next `count` simulated runners to come online run their job to the end and
    /// report it `failed` (the job's own result is ignored), then exit 0 like a runner
    /// whose job's steps failed.
    RunnerFailJob {
        /// How many runners (default 1).
        #[serde(default = "one")]
        count: u32,
    },
}

/// What a response-shaping fault does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(
    tag = "action",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub(crate) enum ResponseAction {
    Status {
        status: u16,
        type_name: String,
        message: String,
        retry_after: Option<u64>,
    },
    Bom,
    MalformedJson,
    TruncatedJson,
    EmptyBody,
    DropConnection,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResponseRule {
    pub class: EndpointClass,
    pub method: Option<String>,
    pub remaining: u32,
    #[serde(flatten)]
    pub action: ResponseAction,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LatencyRule {
    pub class: EndpointClass,
    pub method: Option<String>,
    pub delay_ms: u64,
    pub remaining: Option<u32>,
    pub after: bool,
}

/// The latency a request gets: before it is handled, and after (before its answer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Latency {
    pub before: Duration,
    pub after: Duration,
}

/// Pending request-level faults.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FaultStore {
    pub latency: Vec<LatencyRule>,
    pub responses: Vec<ResponseRule>,
}

fn method_matches(filter: &Option<String>, method: &str) -> bool {
    filter
        .as_deref()
        .is_none_or(|m| m.eq_ignore_ascii_case(method))
}

impl FaultStore {
    pub(crate) fn take_latency(&mut self, class: EndpointClass, method: &str) -> Latency {
        let (mut before, mut after) = (0u64, 0u64);
        for rule in &mut self.latency {
            if rule.class.matches(class) && method_matches(&rule.method, method) {
                if let Some(r) = rule.remaining.as_mut() {
                    if *r == 0 {
                        continue;
                    }
                    *r -= 1;
                }
                let total = if rule.after { &mut after } else { &mut before };
                *total = total.saturating_add(rule.delay_ms);
            }
        }
        self.latency.retain(|r| r.remaining != Some(0));
        Latency {
            before: Duration::from_millis(before),
            after: Duration::from_millis(after),
        }
    }

    pub(crate) fn take_response(
        &mut self,
        class: EndpointClass,
        method: &str,
    ) -> Option<ResponseAction> {
        let idx = self.responses.iter().position(|r| {
            r.remaining > 0 && r.class.matches(class) && method_matches(&r.method, method)
        })?;
        let rule = &mut self.responses[idx];
        rule.remaining -= 1;
        let action = rule.action.clone();
        if rule.remaining == 0 {
            self.responses.remove(idx);
        }
        Some(action)
    }
}
