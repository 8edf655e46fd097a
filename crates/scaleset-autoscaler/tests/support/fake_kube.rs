//! A stateful fake of the Kubernetes API server, on `127.0.0.1:0`, for the Kubernetes
//! provisioner's tests: namespaced pods, Secrets and `coordination.k8s.io/v1` Leases.
//!
//! * **Requests**: `/version`; create (POST), get, list (label selectors with `=`, `==`,
//!   `!=`, `key` and `!key`; `resourceVersion` on the list; `limit` is ignored, as the
//!   real server does for lists served from its watch cache), watch (`?watch=true`:
//!   newline-delimited JSON events `ADDED`, `MODIFIED`, `DELETED` and, with
//!   `allowWatchBookmarks`, `BOOKMARK`; synthetic `ADDED` events for a watch without a
//!   resource version), replace (PUT, with the `resourceVersion` conflict check), patch
//!   (JSON merge patch; strategic merge and server-side apply bodies are merged the same
//!   way, which is what they do for the maps the provisioner patches; apply creates a
//!   missing object; JSON patch is refused with 415) and delete.
//! * **Semantics kept from the real server**: one resource version counter across all
//!   objects; errors are `Status` objects (404 `NotFound`, 409 `AlreadyExists`, 409
//!   `Conflict`, 422 `Invalid` for a changed immutable Secret); a pod deleted with a grace
//!   period > 0 that is scheduled and not terminal gets `deletionTimestamp` and
//!   `deletionGracePeriodSeconds` and stays until the test's kubelet
//!   ([`FakeKube::finish_termination`]) or a delete with grace 0 removes it; unscheduled or
//!   terminal pods go at once; removing an object removes the objects it owns
//!   (`metadata.ownerReferences` by uid), as the garbage collector does.
//! * **Test controls**: every request recorded ([`FakeKube::requests`]); `410 Gone` for the
//!   open watches ([`FakeKube::expire_watches`]) or the next one
//!   ([`FakeKube::expire_next_watch`]); the next N creates of a kind fail with a given
//!   status ([`FakeKube::fail_next_creates`]); pod status driven as a kubelet would (running,
//!   terminated with exit code and reason, waiting on an image, unschedulable, evicted,
//!   deleted behind the client's back).
//!
//! Waits in here are bounded by the watch's `timeoutSeconds` or the test's own deadlines.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

/// The node name the fake kubelet schedules pods on.
pub const NODE: &str = "fake-node";

/// The kinds of object the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` pods.
    Pod,
    /// `v1` Secrets.
    Secret,
    /// `coordination.k8s.io/v1` Leases.
    Lease,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Secret => "secrets",
            Kind::Lease => "leases",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Secret => "Secret",
            Kind::Lease => "Lease",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::Pod | Kind::Secret => "v1",
            Kind::Lease => "coordination.k8s.io/v1",
        }
    }
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string (empty when none).
    pub query: String,
    /// The `Content-Type` header (empty when none).
    pub content_type: String,
    /// The body as text (lossy UTF-8).
    pub body: String,
}

impl Request {
    /// The decoded value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<String> {
        let uri: Uri = format!("/?{}", self.query).parse().ok()?;
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&uri).ok()?;
        pairs.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether this is a watch request.
    pub fn is_watch(&self) -> bool {
        self.param("watch").is_some_and(|w| w == "true" || w == "1")
    }

    /// The body parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Clone, Debug)]
struct WatchEvent {
    rv: u64,
    kind: Kind,
    namespace: String,
    type_: &'static str,
    object: Value,
}

#[derive(Clone, Debug)]
struct Failure {
    kind: Kind,
    remaining: usize,
    code: u16,
    reason: String,
    message: String,
}

type Key = (Kind, String, String);

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    uids: u64,
    objects: BTreeMap<Key, Value>,
    events: Vec<WatchEvent>,
    requests: Vec<Request>,
    /// Open watches started before this generation end with `410 Gone`.
    expire_generation: u64,
    /// How many of the next watch requests get `410 Gone` at once.
    expire_next: usize,
    failures: Vec<Failure>,
    /// How many of the next replaces of a kind lose a race: the object is written by
    /// "someone else" (a new resource version), then the replace gets `409 Conflict`.
    conflicts: Vec<(Kind, usize)>,
}

impl Store {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Stores `object` (new or changed) under a new resource version and records the event.
    fn commit(&mut self, key: &Key, mut object: Value, type_: &'static str) -> Value {
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects.insert(key.clone(), object.clone());
        self.events.push(WatchEvent {
            rv,
            kind: key.0,
            namespace: key.1.clone(),
            type_,
            object: object.clone(),
        });
        object
    }

    /// Removes an object, then (as the garbage collector) every object it owns.
    fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.events.push(WatchEvent {
            rv,
            kind: key.0,
            namespace: key.1.clone(),
            type_: "DELETED",
            object: object.clone(),
        });
        if let Some(uid) = object["metadata"]["uid"].as_str() {
            let owned: Vec<Key> = self
                .objects
                .iter()
                .filter(|(k, o)| k.1 == key.1 && owned_by(o, uid))
                .map(|(k, _)| k.clone())
                .collect();
            for k in owned {
                self.remove(&k);
            }
        }
        Some(object)
    }
}

fn owned_by(object: &Value, uid: &str) -> bool {
    object["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid)))
}

struct Shared {
    store: Mutex<Store>,
    /// Notified on every change of the store.
    changed: Notify,
    closed: AtomicBool,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake API server; dropping it stops it.
pub struct FakeKube {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.changed.notify_waiters();
        self.server.abort();
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn later(secs: i64) -> String {
    let t = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap_or_else(|_| jiff::Timestamp::now());
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A `Status` failure as the API server sends it.
fn status(code: u16, reason: &str, message: String, details: Value) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    });
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(body)).into_response()
}

fn not_found(kind: Kind, name: &str) -> Response {
    status(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", kind.plural()),
        json!({"name": name, "kind": kind.plural()}),
    )
}

fn ok(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

/// One requirement of a label selector.
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

fn parse_selector(selector: &str) -> Result<Vec<Requirement>, String> {
    let mut out = Vec::new();
    for part in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let r = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==") {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once('=') {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::Absent(k.trim().into())
        } else if part.contains(' ') || part.contains('(') {
            return Err(format!(
                "unable to parse requirement: {part:?} (set-based selectors are not served by this fake)"
            ));
        } else {
            Requirement::Exists(part.into())
        };
        out.push(r);
    }
    Ok(out)
}

fn matches(object: &Value, selector: &[Requirement]) -> bool {
    let labels = &object["metadata"]["labels"];
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    selector.iter().all(|r| match r {
        Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
        Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
        Requirement::Exists(k) => label(k).is_some(),
        Requirement::Absent(k) => label(k).is_none(),
    })
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(map) = target else {
        return;
    };
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn is_terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

fn is_scheduled(pod: &Value) -> bool {
    pod["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty())
}

/// What a request addresses.
struct Target {
    kind: Kind,
    namespace: String,
    name: Option<String>,
}

fn target(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (kind, namespace, name) = match segments.as_slice() {
        ["api", "v1", "namespaces", ns, plural, rest @ ..] => {
            let kind = match *plural {
                "pods" => Kind::Pod,
                "secrets" => Kind::Secret,
                _ => return None,
            };
            (kind, *ns, rest)
        }
        [
            "apis",
            "coordination.k8s.io",
            "v1",
            "namespaces",
            ns,
            "leases",
            rest @ ..,
        ] => (Kind::Lease, *ns, rest),
        _ => return None,
    };
    let name = match name {
        [] => None,
        [n] => Some((*n).to_string()),
        _ => return None,
    };
    Some(Target {
        kind,
        namespace: namespace.to_string(),
        name,
    })
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |h: header::HeaderName| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let request = Request {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        content_type: header(header::CONTENT_TYPE),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    shared.store().requests.push(request.clone());
    if request.path == "/version" {
        return ok(
            StatusCode::OK,
            json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                "gitCommit": "0000000", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
                "compiler": "gc", "platform": "linux/amd64",
            }),
        );
    }
    let Some(t) = target(&request.path) else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            json!({}),
        );
    };
    let accept = header(header::ACCEPT);
    let body = if request.body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_str::<Value>(&request.body) {
            Ok(v) => v,
            // Server-side apply bodies may be YAML; kube sends JSON, which is YAML too.
            Err(e) => {
                return status(
                    400,
                    "BadRequest",
                    format!("the body is not JSON: {e}"),
                    json!({}),
                );
            }
        }
    };
    match (&method, &t.name) {
        (&Method::GET, None) if request.is_watch() => watch(&shared, &t, &request),
        (&Method::GET, None) => list(&shared, &t, &request, &accept),
        (&Method::GET, Some(name)) => {
            match shared
                .store()
                .objects
                .get(&(t.kind, t.namespace.clone(), name.clone()))
            {
                Some(o) => ok(StatusCode::OK, o.clone()),
                None => not_found(t.kind, name),
            }
        }
        (&Method::POST, None) => create(&shared, &t, body),
        (&Method::PUT, Some(name)) => replace(&shared, &t, name, body),
        (&Method::PATCH, Some(name)) => patch(&shared, &t, name, &request.content_type, body),
        (&Method::DELETE, Some(name)) => {
            let grace = body["gracePeriodSeconds"]
                .as_i64()
                .or_else(|| request.param("gracePeriodSeconds")?.parse().ok());
            let (code, answer) = delete(&shared, &t, name, grace);
            if code == StatusCode::NOT_FOUND {
                return not_found(t.kind, name);
            }
            ok(code, answer)
        }
        _ => status(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
            json!({}),
        ),
    }
}

fn list(shared: &Shared, t: &Target, request: &Request, accept: &str) -> Response {
    let selector = match parse_selector(&request.param("labelSelector").unwrap_or_default()) {
        Ok(s) => s,
        Err(e) => return status(400, "BadRequest", e, json!({})),
    };
    let store = shared.store();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|(k, o)| k.0 == t.kind && k.1 == t.namespace && matches(o, &selector))
        .map(|(_, o)| o.clone())
        .collect();
    let rv = store.rv.to_string();
    drop(store);
    if accept.contains("as=PartialObjectMetadataList") {
        let items: Vec<Value> = items
            .into_iter()
            .map(|o| {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
            })
            .collect();
        return ok(
            StatusCode::OK,
            json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}, "items": items}),
        );
    }
    ok(
        StatusCode::OK,
        json!({
            "kind": format!("{}List", t.kind.name()),
            "apiVersion": t.kind.api_version(),
            "metadata": {"resourceVersion": rv},
            "items": items,
        }),
    )
}

fn create(shared: &Shared, t: &Target, object: Value) -> Response {
    match create_object(shared, t, object) {
        Ok(created) => ok(StatusCode::CREATED, created),
        Err(refused) => *refused,
    }
}

fn create_object(shared: &Shared, t: &Target, mut object: Value) -> Result<Value, Box<Response>> {
    let mut store = shared.store();
    if let Some(f) = store
        .failures
        .iter_mut()
        .find(|f| f.kind == t.kind && f.remaining > 0)
    {
        f.remaining -= 1;
        let (code, reason, message) = (f.code, f.reason.clone(), f.message.clone());
        return Err(Box::new(status(
            code,
            &reason,
            message,
            json!({"kind": t.kind.plural()}),
        )));
    }
    if !object.is_object() {
        return Err(Box::new(status(
            400,
            "BadRequest",
            "the body must be an object".into(),
            json!({}),
        )));
    }
    store.uids += 1;
    let uid = format!("00000000-0000-4000-8000-{:012}", store.uids);
    let name = match (
        object["metadata"]["name"].as_str(),
        object["metadata"]["generateName"].as_str(),
    ) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(g)) if !g.is_empty() => format!("{g}{:05}", store.uids),
        _ => {
            return Err(Box::new(status(
                422,
                "Invalid",
                format!(
                    "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                    t.kind.name()
                ),
                json!({"kind": t.kind.plural()}),
            )));
        }
    };
    if let Some(ns) = object["metadata"]["namespace"].as_str()
        && ns != t.namespace
    {
        return Err(Box::new(status(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
            json!({}),
        )));
    }
    let key = (t.kind, t.namespace.clone(), name.clone());
    if store.objects.contains_key(&key) {
        return Err(Box::new(status(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", t.kind.plural()),
            json!({"name": name, "kind": t.kind.plural()}),
        )));
    }
    object["kind"] = json!(t.kind.name());
    object["apiVersion"] = json!(t.kind.api_version());
    let meta = &mut object["metadata"];
    meta["name"] = json!(name);
    meta["namespace"] = json!(t.namespace);
    meta["uid"] = json!(uid);
    meta["creationTimestamp"] = json!(now());
    if t.kind == Kind::Pod && object.get("status").is_none_or(Value::is_null) {
        object["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
    }
    let created = store.commit(&key, object, "ADDED");
    drop(store);
    shared.changed.notify_waiters();
    Ok(created)
}

/// Keeps what the server owns of an object through a replace or patch.
fn keep_server_fields(new: &mut Value, old: &Value) {
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
    ] {
        new["metadata"][field] = old["metadata"][field].clone();
        if new["metadata"][field].is_null()
            && let Value::Object(m) = &mut new["metadata"]
        {
            m.remove(field);
        }
    }
    new["kind"] = old["kind"].clone();
    new["apiVersion"] = old["apiVersion"].clone();
}

fn immutable_violation(old: &Value, new: &Value) -> bool {
    old["immutable"].as_bool() == Some(true)
        && (old["data"] != new["data"] || old["stringData"] != new["stringData"])
}

fn invalid_immutable(t: &Target, name: &str) -> Response {
    status(
        422,
        "Invalid",
        format!(
            "{} \"{name}\" is invalid: data: Forbidden: field is immutable when `immutable` is set",
            t.kind.name()
        ),
        json!({"name": name, "kind": t.kind.plural()}),
    )
}

fn replace(shared: &Shared, t: &Target, name: &str, mut object: Value) -> Response {
    let mut store = shared.store();
    let key = (t.kind, t.namespace.clone(), name.to_string());
    let Some(old) = store.objects.get(&key).cloned() else {
        return not_found(t.kind, name);
    };
    if let Some((_, n)) = store
        .conflicts
        .iter_mut()
        .find(|(k, n)| *k == t.kind && *n > 0)
    {
        *n -= 1;
        store.commit(&key, old, "MODIFIED");
        drop(store);
        shared.changed.notify_waiters();
        return status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                t.kind.plural()
            ),
            json!({"name": name, "kind": t.kind.plural()}),
        );
    }
    if let Some(rv) = object["metadata"]["resourceVersion"].as_str()
        && old["metadata"]["resourceVersion"].as_str() != Some(rv)
    {
        return status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                t.kind.plural()
            ),
            json!({"name": name, "kind": t.kind.plural()}),
        );
    }
    keep_server_fields(&mut object, &old);
    if immutable_violation(&old, &object) {
        return invalid_immutable(t, name);
    }
    let stored = store.commit(&key, object, "MODIFIED");
    drop(store);
    shared.changed.notify_waiters();
    ok(StatusCode::OK, stored)
}

fn patch(shared: &Shared, t: &Target, name: &str, content_type: &str, body: Value) -> Response {
    let apply = content_type.starts_with("application/apply-patch");
    if !(apply
        || content_type.starts_with("application/merge-patch+json")
        || content_type.starts_with("application/strategic-merge-patch+json"))
    {
        return status(
            415,
            "UnsupportedMediaType",
            format!("the fake does not serve patches of type {content_type:?}"),
            json!({}),
        );
    }
    let mut store = shared.store();
    let key = (t.kind, t.namespace.clone(), name.to_string());
    let Some(old) = store.objects.get(&key).cloned() else {
        drop(store);
        if apply {
            let mut object = body;
            object["metadata"]["name"] = json!(name);
            return create(shared, t, object);
        }
        return not_found(t.kind, name);
    };
    let mut object = old.clone();
    merge_patch(&mut object, &body);
    keep_server_fields(&mut object, &old);
    if immutable_violation(&old, &object) {
        return invalid_immutable(t, name);
    }
    let stored = store.commit(&key, object, "MODIFIED");
    drop(store);
    shared.changed.notify_waiters();
    ok(StatusCode::OK, stored)
}

/// Deletes an object as the API server does; `(404, Null)` when there is none.
fn delete(shared: &Shared, t: &Target, name: &str, grace: Option<i64>) -> (StatusCode, Value) {
    let mut store = shared.store();
    let key = (t.kind, t.namespace.clone(), name.to_string());
    let Some(old) = store.objects.get(&key).cloned() else {
        return (StatusCode::NOT_FOUND, Value::Null);
    };
    let answer = if t.kind == Kind::Pod {
        let grace = grace
            .or_else(|| old["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30)
            .max(0);
        let graceful = grace > 0 && is_scheduled(&old) && !is_terminal(&old);
        if graceful {
            let current = old["metadata"]["deletionGracePeriodSeconds"].as_i64();
            if current.is_some_and(|c| c <= grace) {
                old
            } else {
                let mut pod = old;
                pod["metadata"]["deletionTimestamp"] = json!(later(grace));
                pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                store.commit(&key, pod, "MODIFIED")
            }
        } else {
            store.remove(&key).unwrap_or(Value::Null)
        }
    } else {
        store.remove(&key);
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "kind": t.kind.plural(), "uid": old["metadata"]["uid"]},
        })
    };
    drop(store);
    shared.changed.notify_waiters();
    (StatusCode::OK, answer)
}

fn event_line(type_: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": type_, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn gone(rv: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("too old resource version: {rv}"),
        "reason": "Expired", "code": 410,
    })
}

fn watch(shared: &Arc<Shared>, t: &Target, request: &Request) -> Response {
    let selector = match parse_selector(&request.param("labelSelector").unwrap_or_default()) {
        Ok(s) => s,
        Err(e) => return status(400, "BadRequest", e, json!({})),
    };
    let bookmarks = request
        .param("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let timeout = request
        .param("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let from = request
        .param("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0);
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let (kind, namespace) = (t.kind, t.namespace.clone());
    let shared = shared.clone();
    let (generation, expired_now, mut last, initial) = {
        let mut store = shared.store();
        let expired_now = store.expire_next > 0;
        if expired_now {
            store.expire_next -= 1;
        }
        let initial: Vec<Value> = match from {
            Some(_) => Vec::new(),
            None => store
                .objects
                .iter()
                .filter(|(k, o)| k.0 == kind && k.1 == namespace && matches(o, &selector))
                .map(|(_, o)| o.clone())
                .collect(),
        };
        (
            store.expire_generation,
            expired_now,
            from.unwrap_or(store.rv),
            initial,
        )
    };
    let rv_text = request.param("resourceVersion").unwrap_or_default();
    tokio::spawn(async move {
        if expired_now {
            let _ = tx.send(event_line("ERROR", &gone(&rv_text))).await;
            return;
        }
        for o in initial {
            if tx.send(event_line("ADDED", &o)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut first = true;
        loop {
            let notified = shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if shared.closed.load(Ordering::SeqCst) {
                return;
            }
            let (expired, due, rv) = {
                let store = shared.store();
                let due: Vec<WatchEvent> = store
                    .events
                    .iter()
                    .filter(|e| {
                        e.rv > last
                            && e.kind == kind
                            && e.namespace == namespace
                            && matches(&e.object, &selector)
                    })
                    .cloned()
                    .collect();
                (store.expire_generation > generation, due, store.rv)
            };
            if expired {
                let _ = tx.send(event_line("ERROR", &gone(&last.to_string()))).await;
                return;
            }
            let advanced = rv > last;
            for e in &due {
                if tx.send(event_line(e.type_, &e.object)).await.is_err() {
                    return;
                }
            }
            if bookmarks && (first || (due.is_empty() && advanced)) {
                let mark = json!({"kind": kind.name(), "apiVersion": kind.api_version(), "metadata": {"resourceVersion": rv.to_string()}});
                if tx.send(event_line("BOOKMARK", &mark)).await.is_err() {
                    return;
                }
            }
            first = false;
            last = rv;
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => return,
                () = tx.closed() => return,
            }
        }
    });
    let stream =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(Ok::<_, Infallible>)));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

impl FakeKube {
    /// Starts a fake API server on `127.0.0.1:0`.
    pub async fn start() -> FakeKube {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the fake API server");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeKube {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server (context `fake`, namespace `ns`).
    pub fn kubeconfig(&self, ns: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {ns}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        )
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.shared.store()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.store().requests.clone()
    }

    /// The current resource version (it grows with every change).
    pub fn resource_version(&self) -> u64 {
        self.store().rv
    }

    /// Waits until the store changed after resource version `since`, at most `limit`;
    /// whether it did.
    pub async fn changed_since(&self, since: u64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.resource_version() > since {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.resource_version() > since;
            }
        }
    }

    /// The next `n` replaces (PUT) of `kind` lose a race: the object gets a new resource
    /// version as if another client wrote it, and the replace gets `409 Conflict`.
    pub fn conflict_next_replaces(&self, kind: Kind, n: usize) {
        self.store().conflicts.push((kind, n));
    }

    /// Waits until `pred` holds, at most `limit`; whether it did.
    pub async fn wait_until(&self, limit: Duration, pred: impl Fn(&FakeKube) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let rv = self.resource_version();
            if pred(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            // Requests change nothing in the store: look again now and then too.
            self.changed_since(rv, left.min(Duration::from_millis(100)))
                .await;
        }
    }

    /// The object `name` of `kind` in `ns`.
    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        self.store()
            .objects
            .get(&(kind, ns.to_string(), name.to_string()))
            .cloned()
    }

    /// The objects of `kind` in `ns`.
    pub fn list(&self, kind: Kind, ns: &str) -> Vec<Value> {
        self.store()
            .objects
            .iter()
            .filter(|(k, _)| k.0 == kind && k.1 == ns)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// The names of the objects of `kind` in `ns`.
    pub fn names(&self, kind: Kind, ns: &str) -> Vec<String> {
        self.list(kind, ns)
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    }

    /// The most objects of `kind` that ever existed at once in `ns` (terminating pods
    /// included), from the event history.
    pub fn peak(&self, kind: Kind, ns: &str) -> usize {
        let store = self.store();
        let (mut now, mut peak) = (0usize, 0usize);
        for e in store
            .events
            .iter()
            .filter(|e| e.kind == kind && e.namespace == ns)
        {
            match e.type_ {
                "ADDED" => now += 1,
                "DELETED" => now = now.saturating_sub(1),
                _ => {}
            }
            peak = peak.max(now);
        }
        peak
    }

    /// Puts an object in place as another client would (no request recorded).
    pub fn insert(&self, kind: Kind, ns: &str, object: Value) -> Value {
        let t = Target {
            kind,
            namespace: ns.to_string(),
            name: None,
        };
        match create_object(&self.shared, &t, object) {
            Ok(created) => created,
            Err(refused) => panic!(
                "the fake refused to insert the object: {}",
                refused.status()
            ),
        }
    }

    /// Changes the object with `f` (a `MODIFIED` event); false when there is none.
    pub fn update(&self, kind: Kind, ns: &str, name: &str, f: impl FnOnce(&mut Value)) -> bool {
        let key = (kind, ns.to_string(), name.to_string());
        let mut store = self.store();
        let Some(mut object) = store.objects.get(&key).cloned() else {
            return false;
        };
        f(&mut object);
        store.commit(&key, object, "MODIFIED");
        drop(store);
        self.shared.changed.notify_waiters();
        true
    }

    /// Deletes as another client would, with `grace` (as `kubectl delete
    /// --grace-period`); false when there was nothing.
    pub fn delete(&self, kind: Kind, ns: &str, name: &str, grace: Option<i64>) -> bool {
        let t = Target {
            kind,
            namespace: ns.to_string(),
            name: Some(name.to_string()),
        };
        delete(&self.shared, &t, name, grace).0 == StatusCode::OK
    }

    /// The open watches end with `410 Gone` (as when their resource version was compacted).
    pub fn expire_watches(&self) {
        self.store().expire_generation += 1;
        self.shared.changed.notify_waiters();
    }

    /// The next watch request gets `410 Gone` at once.
    pub fn expire_next_watch(&self) {
        self.store().expire_next += 1;
    }

    /// The next `n` creates of `kind` fail with `code`, `reason` and `message`.
    pub fn fail_next_creates(&self, kind: Kind, n: usize, code: u16, reason: &str, message: &str) {
        self.store().failures.push(Failure {
            kind,
            remaining: n,
            code,
            reason: reason.into(),
            message: message.into(),
        });
    }

    // ---- the kubelet ------------------------------------------------------------------

    fn container_names(pod: &Value) -> Vec<String> {
        pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    }

    fn container_status(pod: &Value, name: &str, state: Value) -> Value {
        let image = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .and_then(|c| c["image"].as_str())
            .unwrap_or_default()
            .to_string();
        let running = state.get("running").is_some();
        json!({"name": name, "image": image, "imageID": "", "ready": running, "restartCount": 0, "started": running, "state": state})
    }

    fn schedule(pod: &mut Value) {
        pod["spec"]["nodeName"] = json!(NODE);
        let status = &mut pod["status"];
        status["conditions"] = json!([{"type": "PodScheduled", "status": "True"}]);
        status["hostIP"] = json!("127.0.0.1");
    }

    /// Sets the state of container `container` (others keep theirs, missing ones wait on
    /// `ContainerCreating`) and derives the pod phase as the kubelet does for
    /// `restartPolicy: Never`.
    fn set_container(pod: &mut Value, container: &str, state: Value) {
        Self::schedule(pod);
        let names = Self::container_names(pod);
        let old: Vec<Value> = pod["status"]["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let statuses: Vec<Value> = names
            .iter()
            .map(|n| {
                if n == container {
                    Self::container_status(pod, n, state.clone())
                } else {
                    old.iter()
                        .find(|s| s["name"] == n.as_str())
                        .cloned()
                        .unwrap_or_else(|| {
                            Self::container_status(
                                pod,
                                n,
                                json!({"waiting": {"reason": "ContainerCreating"}}),
                            )
                        })
                }
            })
            .collect();
        let terminated: Vec<&Value> = statuses
            .iter()
            .filter_map(|s| s["state"].get("terminated"))
            .collect();
        let any_running = statuses.iter().any(|s| s["state"].get("running").is_some());
        let phase = if terminated.len() == statuses.len() && !statuses.is_empty() {
            if terminated.iter().all(|t| t["exitCode"] == 0) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if any_running || !terminated.is_empty() {
            "Running"
        } else {
            "Pending"
        };
        pod["status"]["phase"] = json!(phase);
        pod["status"]["containerStatuses"] = json!(statuses);
    }

    /// Every container of pod `name` runs.
    pub fn run_pod(&self, ns: &str, name: &str) -> bool {
        self.update(Kind::Pod, ns, name, |pod| {
            for c in Self::container_names(pod) {
                Self::set_container(pod, &c, json!({"running": {"startedAt": now()}}));
            }
            pod["status"]["podIP"] = json!("10.0.0.1");
            pod["status"]["startTime"] = json!(now());
        })
    }

    /// Container `container` of pod `name` terminated with `code` and `reason`.
    pub fn terminate(
        &self,
        ns: &str,
        name: &str,
        container: &str,
        code: i32,
        reason: &str,
    ) -> bool {
        self.update(Kind::Pod, ns, name, |pod| {
            Self::set_container(
                pod,
                container,
                json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": now(), "finishedAt": now()}}),
            );
        })
    }

    /// Every container of pod `name` terminated: `container` with `code` and `reason`, the
    /// others with 0.
    pub fn terminate_all(
        &self,
        ns: &str,
        name: &str,
        container: &str,
        code: i32,
        reason: &str,
    ) -> bool {
        self.update(Kind::Pod, ns, name, |pod| {
            for c in Self::container_names(pod) {
                let (code, reason) = if c == container { (code, reason) } else { (0, "Completed") };
                Self::set_container(
                    pod,
                    &c,
                    json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": now(), "finishedAt": now()}}),
                );
            }
        })
    }

    /// Container `container` of pod `name` waits with `reason` (`ErrImagePull`, ...).
    pub fn wait_on(
        &self,
        ns: &str,
        name: &str,
        container: &str,
        reason: &str,
        message: &str,
    ) -> bool {
        self.update(Kind::Pod, ns, name, |pod| {
            Self::set_container(
                pod,
                container,
                json!({"waiting": {"reason": reason, "message": message}}),
            );
        })
    }

    /// No node can take pod `name`.
    pub fn unschedulable(&self, ns: &str, name: &str, message: &str) -> bool {
        self.update(Kind::Pod, ns, name, |pod| {
            pod["status"]["phase"] = json!("Pending");
            pod["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]);
        })
    }

    /// The kubelet evicts pod `name` (node pressure): phase `Failed`, reason `Evicted`, its
    /// containers killed.
    pub fn evict(&self, ns: &str, name: &str, message: &str) -> bool {
        self.update(Kind::Pod, ns, name, |pod| {
            for c in Self::container_names(pod) {
                Self::set_container(
                    pod,
                    &c,
                    json!({"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": now()}}),
                );
            }
            pod["status"]["phase"] = json!("Failed");
            pod["status"]["reason"] = json!("Evicted");
            pod["status"]["message"] = json!(message);
        })
    }

    /// Pod `name`'s node shuts down: the kubelet marks it `DisruptionTarget`, kills its
    /// containers, and the pod fails with reason `Terminated`.
    pub fn shut_down_node(&self, ns: &str, name: &str) -> bool {
        self.update(Kind::Pod, ns, name, |pod| {
            for c in Self::container_names(pod) {
                Self::set_container(
                    pod,
                    &c,
                    json!({"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": now()}}),
                );
            }
            pod["status"]["phase"] = json!("Failed");
            pod["status"]["reason"] = json!("Terminated");
            pod["status"]["message"] =
                json!("Pod was terminated in response to imminent node shutdown.");
            if let Some(conditions) = pod["status"]["conditions"].as_array_mut() {
                conditions.push(json!({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet", "message": "Pod was terminated in response to imminent node shutdown."}));
            }
        })
    }

    /// The kubelet is done with terminating pod `name`: it is removed (and its Secrets with
    /// it). False when there was no such pod.
    pub fn finish_termination(&self, ns: &str, name: &str) -> bool {
        let key = (Kind::Pod, ns.to_string(), name.to_string());
        let removed = self.store().remove(&key).is_some();
        self.shared.changed.notify_waiters();
        removed
    }

    /// Whether pod `name` is terminating (`deletionTimestamp` set).
    pub fn is_terminating(&self, ns: &str, name: &str) -> bool {
        self.get(Kind::Pod, ns, name)
            .is_some_and(|p| !p["metadata"]["deletionTimestamp"].is_null())
    }
}
