//! Properties of every decoder of untrusted input in the library: the message envelope and
//! its body, the job messages, the config URL, the service's error bodies, the GitHub App
//! private key and the typed ids. Each must return, never panic, on any input; where an
//! encoding exists, decoding what was encoded gives the value back. The cargo-fuzz targets in
//! `fuzz/` check the same properties for longer (see RELIABILITY.md).

use actions_scaleset::{
    ApiError, Envelope, Error, JOB_MESSAGES_TYPE, JobAssigned, JobAvailable, JobCompleted,
    JobMessage, JobMessageBase, JobStarted, MessageId, PemJwtSigner, RunnerGroupId, RunnerId,
    RunnerRequestId, RunnerScaleSetStatistic, ScaleSetId, Scope, ServiceException, Url, parse_body,
    parse_envelope, parse_github_config_from_url,
};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use proptest::prelude::*;
use serde_json::{Value, json};

/// `input` parsed as a config URL, a failing test case when it is refused.
fn parsed(input: &str) -> Result<actions_scaleset::GitHubConfig, TestCaseError> {
    parse_github_config_from_url(input).map_err(|e| TestCaseError::fail(e.to_string()))
}

/// Keys the decoders look for, so that generated objects reach past the first field lookup.
const KEYS: &[&str] = &[
    "messageId",
    "messageType",
    "statistics",
    "body",
    "runnerRequestId",
    "jobId",
    "runnerId",
    "runnerName",
    "result",
    "queueTime",
    "requestLabels",
    "acquireJobUrl",
    "totalAssignedJobs",
    "typeName",
    "message",
];

const TYPES: &[&str] = &[
    "RunnerScaleSetJobMessages",
    "JobAvailable",
    "JobAssigned",
    "JobStarted",
    "JobCompleted",
];

/// Any JSON value, with object keys and strings drawn mostly from what the decoders know.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(TYPES).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        Just(Value::from("0001-01-01T00:00:00Z")),
        Just(Value::from("2025-01-01T00:00:00.1234567")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(KEYS).prop_map(str::to_string),
                        any::<String>()
                    ],
                    inner.clone()
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            // A JSON document inside a string, as the envelope's body is.
            inner.prop_map(|v| Value::String(v.to_string())),
        ]
    })
}

fn timestamp() -> impl Strategy<Value = Option<jiff::Timestamp>> {
    // Year 1 (after Go's zero time, which reads as "unset") to year 9999.
    prop::option::of(
        (-62_135_596_799i64..=253_402_300_799, 0i32..1_000_000_000).prop_map(|(s, ns)| {
            jiff::Timestamp::new(s, ns).expect("seconds and nanoseconds within jiff's range")
        }),
    )
}

fn base(message_type: &'static str) -> impl Strategy<Value = JobMessageBase> {
    (
        any::<i64>(),
        any::<String>(),
        any::<String>(),
        any::<String>(),
        any::<i64>(),
        prop::collection::vec(any::<String>(), 0..3),
        timestamp(),
        timestamp(),
    )
        .prop_map(
            move |(id, repo, job_id, name, run, labels, queued, finished)| JobMessageBase {
                message_type: message_type.to_string(),
                runner_request_id: RunnerRequestId::new(id),
                repository_name: repo,
                owner_name: name.clone(),
                job_id,
                job_workflow_ref: format!("o/r/.github/workflows/{name}@main"),
                job_display_name: name,
                workflow_run_id: run,
                event_name: "push".to_string(),
                request_labels: labels,
                queue_time: queued,
                scale_set_assign_time: None,
                runner_assign_time: queued,
                finish_time: finished,
            },
        )
}

fn job_message() -> impl Strategy<Value = JobMessage> {
    prop_oneof![
        (base("JobAvailable"), any::<String>()).prop_map(|(base, url)| JobMessage::Available(
            JobAvailable {
                base,
                acquire_job_url: url
            }
        )),
        base("JobAssigned").prop_map(|base| JobMessage::Assigned(JobAssigned { base })),
        (base("JobStarted"), any::<i64>(), any::<String>()).prop_map(|(base, id, name)| {
            JobMessage::Started(JobStarted {
                base,
                runner_id: RunnerId::new(id),
                runner_name: name,
            })
        }),
        (
            base("JobCompleted"),
            any::<String>(),
            any::<i64>(),
            any::<String>()
        )
            .prop_map(
                |(base, result, id, name)| JobMessage::Completed(JobCompleted {
                    base,
                    result,
                    runner_id: RunnerId::new(id),
                    runner_name: name,
                })
            ),
    ]
}

fn to_json(job: &JobMessage) -> Value {
    match job {
        JobMessage::Available(j) => serde_json::to_value(j),
        JobMessage::Assigned(j) => serde_json::to_value(j),
        JobMessage::Started(j) => serde_json::to_value(j),
        JobMessage::Completed(j) => serde_json::to_value(j),
    }
    .expect("job messages serialize")
}

fn statistics() -> impl Strategy<Value = RunnerScaleSetStatistic> {
    prop::array::uniform7(any::<i64>()).prop_map(|n| RunnerScaleSetStatistic {
        total_available_jobs: n[0],
        total_acquired_jobs: n[1],
        total_assigned_jobs: n[2],
        total_running_jobs: n[3],
        total_registered_runners: n[4],
        total_busy_runners: n[5],
        total_idle_runners: n[6],
    })
}

proptest! {
    #[test]
    fn an_envelope_of_any_bytes_does_not_panic(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_envelope(&raw);
    }

    #[test]
    fn an_envelope_of_any_json_does_not_panic(value in json_value()) {
        if let Ok(Envelope::Message(m)) = parse_envelope(value.to_string().as_bytes()) {
            prop_assert_eq!(m.message_type, JOB_MESSAGES_TYPE);
        }
    }

    #[test]
    fn an_envelope_with_any_fields_keeps_its_id(
        id in any::<i64>(),
        statistics in json_value(),
        body in json_value(),
    ) {
        let raw = json!({
            "messageId": id,
            "messageType": JOB_MESSAGES_TYPE,
            "statistics": statistics,
            "body": body,
        });
        match parse_envelope(raw.to_string().as_bytes()) {
            Ok(Envelope::Message(m)) => prop_assert_eq!(m.message_id, MessageId::new(id)),
            other => prop_assert!(false, "an envelope with an id was refused: {:?}", other),
        }
    }

    #[test]
    fn an_encoded_envelope_decodes_back(
        id in any::<i64>(),
        statistics in statistics(),
        jobs in prop::collection::vec(job_message(), 0..6),
    ) {
        let body = Value::Array(jobs.iter().map(to_json).collect()).to_string();
        let raw = json!({
            "messageId": id,
            "messageType": JOB_MESSAGES_TYPE,
            "statistics": statistics,
            "body": body,
        });
        match parse_envelope(raw.to_string().as_bytes()) {
            Ok(Envelope::Message(m)) => {
                prop_assert_eq!(m.message_id, MessageId::new(id));
                prop_assert_eq!(m.statistics, Some(statistics));
                prop_assert!(m.problems.is_empty(), "{:?}", m.problems);
                prop_assert_eq!(m.jobs, jobs);
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn a_body_of_any_text_does_not_panic(body in any::<String>()) {
        let _ = parse_body(&body);
    }

    #[test]
    fn a_body_of_any_json_array_does_not_panic(elements in prop::collection::vec(json_value(), 0..8)) {
        let n = elements.len();
        let (jobs, problems) = parse_body(&Value::Array(elements).to_string())
            .expect("an array is a body");
        prop_assert!(jobs.len() + problems.len() <= n);
    }

    #[test]
    fn encoded_job_messages_decode_back(jobs in prop::collection::vec(job_message(), 0..8)) {
        let body = Value::Array(jobs.iter().map(to_json).collect()).to_string();
        let (decoded, problems) = parse_body(&body).expect("an array is a body");
        prop_assert!(problems.is_empty(), "{:?}", problems);
        prop_assert_eq!(decoded, jobs);
    }

    #[test]
    fn job_messages_of_an_unknown_type_are_skipped(kind in "[A-Za-z]{0,12}", id in any::<i64>()) {
        prop_assume!(!TYPES.contains(&kind.as_str()));
        let body = json!([{"messageType": kind, "runnerRequestId": id}]).to_string();
        let (jobs, problems) = parse_body(&body).expect("an array is a body");
        prop_assert!(jobs.is_empty() && problems.is_empty());
    }
}

/// `s` with every byte but ASCII letters and digits percent-encoded.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("github.com".to_string()),
        Just("www.github.com".to_string()),
        Just("github.localhost".to_string()),
        "[a-z][a-z0-9]{0,8}\\.ghe\\.com",
        "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5}){0,2}(:[1-9][0-9]{0,3})?",
    ]
}

/// A name as GitHub allows it for owners and repositories (never `enterprises`, which makes a
/// two-segment path an enterprise).
fn slug() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9._-]{0,38}".prop_filter("not the enterprises keyword", |s| {
        !s.eq_ignore_ascii_case("enterprises")
    })
}

proptest! {
    #[test]
    fn a_config_url_of_any_text_does_not_panic(input in any::<String>()) {
        check_config_url(&input)?;
        check_config_url(&format!("https://{input}"))?;
        check_config_url(&format!("https://github.com/{input}"))?;
    }

    #[test]
    fn a_config_url_of_url_like_text_does_not_panic(
        input in "(https?://)?[a-z.:@\\[\\]0-9]{0,12}(/[a-zA-Z.%0-9?#+ \\t\\x00-\\x1f]{0,6}){0,4}/{0,2}"
    ) {
        check_config_url(&input)?;
    }

    #[test]
    fn a_repository_url_parses_back_to_its_parts(
        scheme in prop::sample::select(&["http", "https"][..]),
        host in host(),
        owner in slug(),
        repo in slug(),
        slash in prop::bool::ANY,
    ) {
        let input = format!("{scheme}://{host}/{owner}/{repo}{}", if slash { "/" } else { "" });
        let c = parsed(&input)?;
        prop_assert_eq!(c.scope, Scope::Repository);
        prop_assert_eq!((c.enterprise.as_str(), c.organization.as_str(), c.repository.as_str()),
            ("", owner.as_str(), repo.as_str()));
        prop_assert_eq!(c.config_url.as_str(), input.trim_end_matches('/'));
    }

    #[test]
    fn an_organization_url_parses_back_to_its_parts(host in host(), org in slug()) {
        let c = parsed(&format!("https://{host}/{org}"))?;
        prop_assert_eq!(c.scope, Scope::Organization);
        prop_assert_eq!(c.organization, org);
        prop_assert!(c.enterprise.is_empty() && c.repository.is_empty());
    }

    #[test]
    fn an_enterprise_url_parses_back_to_its_parts(
        host in host(),
        upper in prop::collection::vec(any::<bool>(), 11),
        enterprise in slug(),
    ) {
        // `enterprises` in any ASCII case (the keyword matches ASCII case-insensitively only).
        let keyword: String = "enterprises"
            .chars()
            .zip(upper)
            .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
            .collect();
        let c = parsed(&format!("https://{host}/{keyword}/{enterprise}/"))?;
        prop_assert_eq!(c.scope, Scope::Enterprise);
        prop_assert_eq!(c.enterprise, enterprise);
        prop_assert!(c.organization.is_empty() && c.repository.is_empty());
    }

    #[test]
    fn percent_encoded_names_decode_back(owner in ".{1,12}", repo in ".{1,12}") {
        // `.` and `..` are dot segments however they are encoded.
        for name in [&owner, &repo] {
            prop_assume!(!matches!(name.as_str(), "." | ".."));
        }
        prop_assume!(!owner.eq_ignore_ascii_case("enterprises"));
        let input = format!("https://github.com/{}/{}", percent_encode(&owner), percent_encode(&repo));
        let c = parsed(&input)?;
        prop_assert_eq!(c.organization, owner);
        prop_assert_eq!(c.repository, repo);
    }
}

/// A config URL parses or is refused; a parsed one has no trailing `/`, parses back to itself
/// and gives its API URL and registration-token path.
fn check_config_url(input: &str) -> Result<(), TestCaseError> {
    match parse_github_config_from_url(input) {
        Ok(c) => {
            prop_assert!(!c.config_url.as_str().ends_with('/'), "{}", c.config_url);
            let again = parse_github_config_from_url(c.config_url.as_str()).map_err(|e| {
                TestCaseError::fail(format!("{} no longer parses: {e}", c.config_url))
            })?;
            prop_assert_eq!(&again, &c);
            let _ = c.github_api_url("/actions/runner-registration");
            let _ = c.registration_token_path();
        }
        Err(e) => {
            prop_assert!(matches!(e, Error::InvalidConfigUrl { .. }), "{e:?}");
        }
    }
    Ok(())
}

fn api_error(status: u16, plain: bool, body: &[u8]) -> ApiError {
    let mut headers = HeaderMap::new();
    if plain {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    let url = Url::parse("https://user:hunter2@tenant.example/_apis/runtime/runnerscalesets")
        .expect("a static URL");
    let status = StatusCode::from_u16(status).expect("a status in 100..=599");
    ApiError::new(&Method::POST, &url, status, &headers, body)
}

proptest! {
    #[test]
    fn an_error_of_any_status_and_body_does_not_panic(
        status in 100u16..600,
        plain in prop::bool::ANY,
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let api = api_error(status, plain, &body);
        prop_assert!(api.body().len() <= 1024 + '…'.len_utf8());
        prop_assert!(!api.url().contains("hunter2"));
        let error = Error::from_response(api);
        prop_assert_eq!(error.status(), Some(status));
        let text = format!("{error} {error:?}");
        prop_assert!(!text.contains("hunter2"));
        let _ = (error.kind(), error.is_retryable());
    }

    #[test]
    fn an_error_of_any_json_body_does_not_panic(status in 100u16..600, body in json_value()) {
        let error = Error::from_response(api_error(status, false, body.to_string().as_bytes()));
        let _ = error.to_string();
    }

    #[test]
    fn a_service_exception_is_read_back(
        status in 400u16..600,
        type_name in any::<String>(),
        message in any::<String>(),
    ) {
        prop_assume!(!type_name.is_empty() || !message.is_empty());
        let body = json!({"typeName": type_name, "message": message}).to_string();
        let error = Error::from_response(api_error(status, false, body.as_bytes()));
        let expected = ServiceException { type_name, message };
        prop_assert_eq!(error.exception(), Some(&expected));
        if status == 429 && !expected.type_name.contains("Exception") {
            prop_assert!(matches!(error, Error::RateLimited(_)), "{error:?}");
        }
    }
}

proptest! {
    // Every rejected key costs a parse attempt and an RSA check: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_pem_key_of_any_text_does_not_panic(text in any::<String>()) {
        prop_assert!(PemJwtSigner::from_pem(&text).is_err());
    }

    #[test]
    fn an_armoured_key_of_any_bytes_is_refused_without_quoting_them(
        label in prop::sample::select(&["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "RSA PUBLIC KEY"][..]),
        der in prop::collection::vec(any::<u8>(), 16..600),
    ) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let lines: Vec<&str> = b64.as_bytes().chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        let pem = format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"));
        match PemJwtSigner::from_pem(&pem) {
            Ok(_) => prop_assert!(false, "random bytes made a signing key"),
            Err(e) => {
                let text = format!("{e} {e:?}");
                prop_assert!(!text.contains(&b64[..16]), "the error quotes the key: {text}");
            }
        }
    }
}

proptest! {
    #[test]
    fn ids_print_and_parse_back(n in any::<i64>()) {
        prop_assert_eq!(n.to_string().parse::<ScaleSetId>(), Ok(ScaleSetId::new(n)));
        prop_assert_eq!(n.to_string().parse::<RunnerId>(), Ok(RunnerId::new(n)));
        prop_assert_eq!(n.to_string().parse::<RunnerGroupId>(), Ok(RunnerGroupId::new(n)));
        prop_assert_eq!(n.to_string().parse::<MessageId>(), Ok(MessageId::new(n)));
        prop_assert_eq!(n.to_string().parse::<RunnerRequestId>(), Ok(RunnerRequestId::new(n)));
        prop_assert_eq!(ScaleSetId::new(n).to_string(), n.to_string());
        let wire = serde_json::to_string(&RunnerId::new(n)).expect("ids serialize");
        prop_assert_eq!(serde_json::from_str::<RunnerId>(&wire).ok(), Some(RunnerId::new(n)));
    }

    #[test]
    fn an_id_of_any_text_does_not_panic(text in any::<String>()) {
        match text.parse::<ScaleSetId>() {
            Ok(id) => prop_assert_eq!(Some(id.get()), text.parse::<i64>().ok()),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
