//! Transport over HTTP: TLS (behaviours 53-56), proxy (57), byte-order mark (58-59),
//! mutual TLS (issue 12), User-Agent (60), a caller's HTTP client (61-62), retries and `Retry-After` (issue items 3
//! and 4), transport failures (95).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actions_scaleset::{Client, ErrorKind, RunnerId, ScaleSetId, SystemInfo};
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const AGENT_1: &str = "_apis/distributedtask/pools/0/agents/1";

// ---------------------------------------------------------------------------------------------
// TLS

/// A TLS listener for axum that counts accepted TCP connections.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    connections: Arc<AtomicUsize>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            self.connections.fetch_add(1, Ordering::SeqCst);
            // A client that rejects the certificate fails the handshake: wait for the next one.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

struct Pki {
    root_pem: String,
    intermediate_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

fn leaf_params() -> CertificateParams {
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    p.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    p.distinguished_name.push(DnType::CommonName, "test server");
    p
}

/// A root CA, an intermediate signed by it, and a leaf for 127.0.0.1 signed by the
/// intermediate; the server sends leaf + intermediate.
fn chained_pki() -> Pki {
    let root =
        CertifiedIssuer::self_signed(ca_params("test root"), KeyPair::generate().expect("key"))
            .expect("root");
    let intermediate = CertifiedIssuer::signed_by(
        ca_params("test intermediate"),
        KeyPair::generate().expect("key"),
        &root,
    )
    .expect("intermediate");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = leaf_params()
        .signed_by(&leaf_key, &intermediate)
        .expect("leaf");
    Pki {
        root_pem: root.pem(),
        intermediate_pem: intermediate.pem(),
        chain: vec![leaf.der().clone(), intermediate.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

/// A self-signed leaf for 127.0.0.1: (its PEM, chain, key).
fn self_signed_pki() -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().expect("key");
    let cert = leaf_params().self_signed(&key).expect("self-signed");
    (
        cert.pem(),
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// A scripted server over TLS on 127.0.0.1, with the default auth routes; returns it and its
/// TCP connection counter.
async fn tls_server(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> (TestServer, String, Arc<AtomicUsize>) {
    tls_server_with(chain, key, None).await
}

/// [`tls_server`]; with `client_ca`, the server requires a client certificate issued by it.
async fn tls_server_with(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<CertificateDer<'static>>,
) -> (TestServer, String, Arc<AtomicUsize>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).expect("client CA");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).expect("server cert");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    // The scripted routes live on a plain server object; serve its router over TLS instead.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server = TestServer::serve_on(plain);
    let https_base = format!("https://{}", tcp.local_addr().expect("addr"));
    let connections = Arc::new(AtomicUsize::new(0));
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
        connections: connections.clone(),
    };
    let app = server.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    server.on("POST", REG_TOKEN_PATH, |_, n| {
        Reply::json(201, &format!(r#"{{"token":"{REG_TOKEN_PREFIX}{n}"}}"#))
    });
    let base = https_base.clone();
    server.on("POST", RUNNER_REGISTRATION_PATH, move |_, n| {
        Reply::json(
            200,
            &format!(
                r#"{{"url":"{base}{TENANT}","token":"{}"}}"#,
                admin_jwt(3600, n)
            ),
        )
    });
    server.on_tenant("GET", AGENT_1, |_, _| Reply::json(200, r#"{"id":1}"#));
    (server, https_base, connections)
}

fn tls_builder(https_base: &str) -> actions_scaleset::ClientBuilder {
    Client::builder(format!("{https_base}/org"), pat())
        .retry_max(2)
        .retry_wait_min(Duration::from_millis(1))
        .retry_wait_max(Duration::from_millis(5))
}

// Behaviour 53: a self-signed server and no extra CA: a certificate error, not retried.
#[tokio::test]
async fn b53_unknown_authority_fails_without_retries() {
    let (_, chain, key) = self_signed_pki();
    let (server, base, connections) = tls_server(chain, key).await;
    let c = tls_builder(&base).build().expect("client");
    let e = within(c.get_runner(RunnerId::new(1)))
        .await
        .expect_err("untrusted");
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(!e.is_retryable(), "{e}");
    assert!(
        matches!(e, actions_scaleset::Error::Transport { attempts: 1, .. }),
        "{e}"
    );
    let text = e.to_string().to_ascii_lowercase();
    assert!(
        text.contains("certificate") || text.contains("issuer"),
        "{text}"
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one connection, no retry"
    );
    assert!(server.requests().is_empty());
}

// Behaviour 54: the same kind of server with its root configured: success.
#[tokio::test]
async fn b54_configured_root_ca_is_trusted() {
    let (pem, chain, key) = self_signed_pki();
    let (server, base, _) = tls_server(chain, key).await;
    let c = tls_builder(&base).root_ca_pem(pem).build().expect("client");
    within(c.get_runner(RunnerId::new(1)))
        .await
        .expect("trusted");
    assert_eq!(server.tenant_requests().len(), 1);
    assert!(c.debug_info().has_root_ca);
}

// Behaviour 55: a leaf signed by an intermediate, only the intermediate configured as root,
// retryMax 0: success (an intermediate is accepted as a trust anchor). The full chain via the
// root works too.
#[tokio::test]
async fn b55_intermediate_as_trust_anchor() {
    let pki = chained_pki();
    let (server, base, _) = tls_server(pki.chain.clone(), pki.key.clone_key()).await;
    let c = tls_builder(&base)
        .retry_max(0)
        .root_ca_pem(pki.intermediate_pem.clone())
        .build()
        .expect("client");
    within(c.get_runner(RunnerId::new(1)))
        .await
        .expect("intermediate trusted");
    let c = tls_builder(&base)
        .root_ca_pem(pki.root_pem.clone())
        .build()
        .expect("client");
    within(c.get_runner(RunnerId::new(1)))
        .await
        .expect("root trusted");
    assert_eq!(server.tenant_requests().len(), 2);
}

// Behaviour 56: TLS verification disabled: a self-signed server is accepted.
#[tokio::test]
async fn b56_skip_tls_verify() {
    let (_, chain, key) = self_signed_pki();
    let (_server, base, _) = tls_server(chain, key).await;
    let c = tls_builder(&base)
        .insecure_skip_tls_verify(true)
        .build()
        .expect("client");
    assert!(c.debug_info().insecure_skip_tls_verify);
    within(c.get_runner(RunnerId::new(1)))
        .await
        .expect("accepted");
}

// ---------------------------------------------------------------------------------------------
// Mutual TLS

/// A client CA and a client certificate it issued: (CA cert, client cert PEM, client key PEM).
fn client_pki() -> (CertificateDer<'static>, String, String) {
    let ca =
        CertifiedIssuer::self_signed(ca_params("client ca"), KeyPair::generate().expect("key"))
            .expect("client ca");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name
        .push(DnType::CommonName, "scaleset client");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &ca).expect("client cert");
    (ca.der().clone(), cert.pem(), key.serialize_pem())
}

/// A server that requires a client certificate, trusted through its self-signed root.
async fn mtls_server() -> (TestServer, String, Arc<AtomicUsize>, String, String, String) {
    let (server_pem, chain, key) = self_signed_pki();
    let (ca, cert_pem, key_pem) = client_pki();
    let (server, base, connections) = tls_server_with(chain, key, Some(ca)).await;
    (server, base, connections, server_pem, cert_pem, key_pem)
}

// Issue 12: a client certificate is presented on every connection (GitHub API and Actions
// service here), and a server that requires one accepts the client.
#[tokio::test]
async fn mtls_with_a_client_certificate_succeeds() {
    let (server, base, _, server_pem, cert_pem, key_pem) = mtls_server().await;
    let c = tls_builder(&base)
        .root_ca_pem(server_pem)
        .client_certificate_pem(cert_pem, key_pem.clone())
        .build()
        .expect("client");
    assert!(c.debug_info().has_client_certificate);
    within(c.get_runner(RunnerId::new(1)))
        .await
        .expect("mutual TLS accepted");
    let paths: Vec<String> = server.requests().iter().map(|r| r.path.clone()).collect();
    assert!(paths.iter().any(|p| p == REG_TOKEN_PATH), "{paths:?}");
    assert_eq!(server.tenant_requests().len(), 1);
    let body = key_pem
        .lines()
        .nth(1)
        .expect("a PEM has a body line")
        .to_string();
    assert!(!format!("{c:?}").contains(&body), "the key is not in Debug");
}

// Issue 12: without a client certificate the server refuses the handshake: a clear error
// after one attempt (no retry), and nothing reached the server's routes.
#[tokio::test]
async fn mtls_without_a_client_certificate_fails_clearly_without_retries() {
    let (server, base, connections, server_pem, _, _) = mtls_server().await;
    let c = tls_builder(&base)
        .root_ca_pem(server_pem)
        .build()
        .expect("client");
    let e = within(c.get_runner(RunnerId::new(1)))
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
    assert!(!e.is_retryable(), "{e}");
    assert!(
        matches!(e, actions_scaleset::Error::Transport { attempts: 1, .. }),
        "{e}"
    );
    let text = e.to_string().to_ascii_lowercase();
    assert!(text.contains("client certificate"), "{text}");
    assert_eq!(connections.load(Ordering::SeqCst), 1, "no retry");
    assert!(server.requests().is_empty());
}

// Issue 12: bad client certificate input is refused by `build`, naming the half that is
// wrong and never quoting the key.
#[test]
fn bad_client_certificates_are_rejected_at_build() {
    let (_, cert_pem, key_pem) = client_pki();
    let key_line = key_pem.lines().nth(1).expect("body line").to_string();
    let build = |cert: &str, key: &str| {
        Client::builder("https://github.com/org", pat())
            .client_certificate_pem(cert.to_string(), key.to_string())
            .build()
            .expect_err("refused")
    };
    let cases = [
        (build("not a certificate", &key_pem), "certificate"),
        (build(&cert_pem, "not a key"), "private key"),
        (build(&cert_pem, &cert_pem), "private key"),
        (
            build(
                &cert_pem,
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            ),
            "encrypted",
        ),
    ];
    for (e, wanted) in cases {
        assert_eq!(e.kind(), ErrorKind::InvalidClientConfig, "{e}");
        assert!(e.to_string().contains(wanted), "{e}");
        assert!(!e.to_string().contains(&key_line), "{e}");
        assert!(!format!("{e:?}").contains(&key_line), "{e:?}");
    }
    let e = Client::builder("https://github.com/org", pat())
        .client_certificate_pem(cert_pem, key_pem)
        .http_client(reqwest::Client::new())
        .build()
        .expect_err("custom client");
    assert_eq!(e.kind(), ErrorKind::InvalidClientConfig, "{e}");
}

// A bad root CA bundle is a construction error.
#[test]
fn bad_root_ca_is_rejected_at_build() {
    let e = Client::builder("https://github.com/org", pat())
        .root_ca_pem("not a certificate")
        .build()
        .expect_err("bad pem");
    assert_eq!(e.kind(), ErrorKind::InvalidClientConfig);
}

// ---------------------------------------------------------------------------------------------
// Proxy

// Behaviour 57: with a proxy configured, plain-HTTP requests go to the proxy in absolute form,
// for the GitHub API host as well as the tenant.
#[tokio::test]
async fn b57_requests_go_through_the_proxy() {
    let proxy = TestServer::start().await;
    proxy.on("POST", REG_TOKEN_PATH, |_, _| {
        Reply::json(201, r#"{"token":"REG"}"#)
    });
    proxy.on("POST", RUNNER_REGISTRATION_PATH, |_, _| {
        Reply::json(
            200,
            &format!(
                r#"{{"url":"http://tenant.example.invalid/tenant/123/","token":"{}"}}"#,
                admin_jwt(3600, 0)
            ),
        )
    });
    proxy.on_tenant("GET", AGENT_1, |_, _| Reply::json(200, r#"{"id":1}"#));
    let c = Client::builder("http://ghes.example.invalid/org", pat())
        .proxy(proxy.url(""))
        .retry_max(0)
        .build()
        .expect("client");
    assert!(c.debug_info().has_proxy);
    within(c.get_runner(RunnerId::new(1)))
        .await
        .expect("through the proxy");
    let uris: Vec<String> = proxy.requests().into_iter().map(|r| r.uri).collect();
    assert_eq!(
        uris,
        vec![
            "http://ghes.example.invalid/api/v3/orgs/org/actions/runners/registration-token",
            "http://ghes.example.invalid/api/v3/actions/runner-registration",
            "http://tenant.example.invalid/tenant/123/_apis/distributedtask/pools/0/agents/1?api-version=6.0-preview",
        ]
    );
    assert_eq!(
        proxy.requests()[0].header("host"),
        Some("ghes.example.invalid")
    );
}

#[test]
fn bad_proxy_url_is_rejected_at_build() {
    let e = Client::builder("https://github.com/org", pat())
        .proxy("::not a url::")
        .build()
        .expect_err("bad proxy");
    assert_eq!(e.kind(), ErrorKind::InvalidClientConfig);
}

// ---------------------------------------------------------------------------------------------
// Byte-order mark

// Behaviours 58 and 59: a leading UTF-8 BOM is removed before parsing, on success and error
// bodies and in the auth flow; an empty 204 body is fine.
#[tokio::test]
async fn b58_b59_byte_order_mark_is_stripped() {
    let s = TestServer::start().await;
    let bom = |text: &str| [&[0xEF, 0xBB, 0xBF][..], text.as_bytes()].concat();
    let reg = bom(r#"{"token":"REG"}"#);
    s.on("POST", REG_TOKEN_PATH, move |_, _| {
        Reply::status(201).body(&reg)
    });
    let base = s.url("");
    s.on("POST", RUNNER_REGISTRATION_PATH, move |_, _| {
        let body = format!(
            r#"{{"url":"{base}{TENANT}","token":"{}"}}"#,
            admin_jwt(3600, 0)
        );
        Reply::json(200, "").body(&bom(&body))
    });
    let ok = bom(r#"{"id":1,"name":"with-bom"}"#);
    let err = bom(r#"{"typeName":"SomeException","message":"bom error"}"#);
    s.on_seq(
        "GET",
        &tenant_path(AGENT_1),
        vec![
            Reply::json(200, "").body(&ok),
            Reply::json(400, "").body(&err),
        ],
    );
    s.on_tenant("DELETE", AGENT_1, |_, _| Reply::status(204));
    let c = client(&s);
    let r = within(c.get_runner(RunnerId::new(1)))
        .await
        .expect("parsed after the BOM");
    assert_eq!(r.name, "with-bom");
    let e = within(c.get_runner(RunnerId::new(1)))
        .await
        .expect_err("400");
    let ex = e.exception().expect("exception parsed after the BOM");
    assert_eq!(
        (ex.type_name.as_str(), ex.message.as_str()),
        ("SomeException", "bom error")
    );
    within(c.remove_runner(RunnerId::new(1)))
        .await
        .expect("empty 204 body");
}

// Our choice for a 200 with an empty body where an object is expected: a Decode error (the
// reference fails with EOF too), never a panic.
#[tokio::test]
async fn empty_200_body_is_a_decode_error() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", AGENT_1, |_, _| Reply::status(200));
    let e = within(client(&s).get_runner(RunnerId::new(1)))
        .await
        .expect_err("empty");
    assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
}

// ---------------------------------------------------------------------------------------------
// User-Agent

// Behaviour 60: the User-Agent is the compact JSON object in the reference's key order;
// set_system_info changes it for later requests (GitHub and tenant alike).
#[tokio::test]
async fn b60_user_agent_json_and_set_system_info() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", AGENT_1, |_, _| Reply::json(200, r#"{"id":1}"#));
    let info = SystemInfo {
        system: "my-system".into(),
        version: "1.2.3".into(),
        commit_sha: "abc123".into(),
        scale_set_id: ScaleSetId::new(0),
        subsystem: "controller".into(),
    };
    let c = builder(&s)
        .system_info(info.clone())
        .build()
        .expect("client");
    within(c.get_runner(RunnerId::new(1))).await.expect("ok");
    let ua = s.requests()[0]
        .header("user-agent")
        .expect("UA")
        .to_string();
    let keys = [
        "system",
        "version",
        "commit_sha",
        "scale_set_id",
        "subsystem",
        "build_version",
        "build_commit_sha",
        "kind",
    ];
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| {
            ua.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k} in {ua}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "key order: {ua}");
    let v: serde_json::Value = serde_json::from_str(&ua).expect("UA is JSON");
    assert_eq!(v.as_object().map(|o| o.len()), Some(8), "{ua}");
    assert_eq!(v["system"], "my-system");
    assert_eq!(v["version"], "1.2.3");
    assert_eq!(v["commit_sha"], "abc123");
    assert_eq!(v["scale_set_id"], 0);
    assert_eq!(v["subsystem"], "controller");
    assert_eq!(v["build_version"], env!("CARGO_PKG_VERSION"));
    assert!(v["build_commit_sha"].is_string());
    assert_eq!(v["kind"], "scaleset");
    assert!(!ua.contains(' '), "compact JSON: {ua}");
    assert!(
        s.requests()
            .iter()
            .all(|r| r.header("user-agent") == Some(ua.as_str()))
    );

    c.set_system_info(SystemInfo {
        scale_set_id: ScaleSetId::new(42),
        subsystem: "listener".into(),
        ..info
    });
    assert_eq!(c.system_info().scale_set_id, ScaleSetId::new(42));
    within(c.get_runner(RunnerId::new(1))).await.expect("ok");
    let last = s
        .requests()
        .last()
        .expect("request")
        .header("user-agent")
        .expect("UA")
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&last).expect("UA is JSON");
    assert_eq!(
        (v["scale_set_id"].clone(), v["subsystem"].clone()),
        (42.into(), "listener".into())
    );
    assert_eq!(c.debug_info().user_agent, last);
}

// ---------------------------------------------------------------------------------------------
// A caller's HTTP client

fn custom_http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "x-custom-client",
        reqwest::header::HeaderValue::from_static("yes"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("reqwest client")
}

// Behaviour 61: a caller-supplied HTTP client is used (its default header arrives), and our
// retries apply: 503 then 200 succeeds after 2 requests. In ours the caller's client brings
// TLS/proxy settings; retries stay the builder's (there is no retrying client to pass).
#[tokio::test]
async fn b61_custom_http_client_is_used() {
    let s = TestServer::with_auth().await;
    s.on_seq(
        "GET",
        &tenant_path(AGENT_1),
        vec![Reply::status(503), Reply::json(200, r#"{"id":1}"#)],
    );
    let c = builder(&s)
        .http_client(custom_http())
        .retry_max(1)
        .build()
        .expect("client");
    assert!(c.debug_info().custom_http_client);
    within(c.get_runner(RunnerId::new(1)))
        .await
        .expect("second attempt succeeds");
    assert_eq!(s.tenant_requests().len(), 2);
    assert!(
        s.requests()
            .iter()
            .all(|r| r.header("x-custom-client") == Some("yes"))
    );
}

// Behaviour 62: with retryMax 1 and 503 forever, exactly 2 requests and "giving up after 2
// attempt(s)" in the error, which (issue item 3) still carries the final status.
#[tokio::test]
async fn b62_custom_client_retry_max_is_respected() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", AGENT_1, |_, _| Reply::status(503));
    let c = builder(&s)
        .http_client(custom_http())
        .retry_max(1)
        .build()
        .expect("client");
    let e = within(c.get_runner(RunnerId::new(1)))
        .await
        .expect_err("503");
    assert_eq!(s.tenant_requests().len(), 2);
    assert!(
        e.to_string().contains("giving up after 2 attempt(s)"),
        "{e}"
    );
    assert_eq!(e.status(), Some(503));
}

// ---------------------------------------------------------------------------------------------
// Retries

// Issue item 3: when retries run out on 5xx or 429, the error keeps the final status, the
// ActivityId, the service exception and the body.
#[tokio::test]
async fn exhausted_retries_keep_status_activity_id_and_body() {
    let s = TestServer::with_auth().await;
    s.on_tenant("GET", AGENT_1, |_, n| {
        Reply::json(
            503,
            &format!(r#"{{"typeName":"ServiceUnavailableException","message":"overloaded {n}"}}"#),
        )
        .header("ActivityId", &format!("activity-{n}"))
    });
    s.on_tenant("DELETE", AGENT_1, |_, _| {
        Reply::text(429, "slow down").header("ActivityId", "act-429")
    });
    let c = builder(&s).retry_max(2).build().expect("client");
    let e = within(c.get_runner(RunnerId::new(1)))
        .await
        .expect_err("503");
    assert_eq!(e.status(), Some(503));
    assert!(e.is_retryable());
    let api = e.api_error().expect("context kept");
    assert_eq!(
        api.activity_id(),
        Some("activity-2"),
        "the final answer's ActivityId"
    );
    assert_eq!(
        api.exception().map(|x| x.message.as_str()),
        Some("overloaded 2")
    );
    assert!(api.body().contains("overloaded 2"));
    assert!(e.to_string().contains(r#"activity_id="activity-2""#), "{e}");
    assert_eq!(
        s.requests_to(&tenant_path(AGENT_1))
            .iter()
            .filter(|r| r.method == "GET")
            .count(),
        3
    );

    let e = within(c.remove_runner(RunnerId::new(1)))
        .await
        .expect_err("429");
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert_eq!(e.status(), Some(429));
    let api = e.api_error().expect("context kept");
    assert_eq!(api.activity_id(), Some("act-429"));
    assert_eq!(api.body(), "slow down");
}

// Issue item 4: Retry-After (seconds or an HTTP date) is honoured for 429 and 503 but capped at
// retry_wait_max; for 500 it is ignored. Observed through the retry log's `delay_ms` (the cap
// is 50 ms; without Retry-After the first delays are at most 2 ms) and the request count; no
// wall-clock assertion.
#[tokio::test]
async fn retry_after_is_honoured_but_capped() {
    let logs = capture_logs();
    let s = TestServer::with_auth().await;
    let in_an_hour = {
        let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
        jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&t)
            .expect("printable date")
    };
    s.on_tenant("GET", AGENT_1, |_, _| {
        Reply::status(429).header("Retry-After", "3600")
    });
    s.on_tenant("DELETE", AGENT_1, move |_, _| {
        Reply::status(503).header("Retry-After", &in_an_hour)
    });
    s.on_tenant("GET", "_apis/distributedtask/pools/0/agents/2", |_, _| {
        Reply::status(500).header("Retry-After", "3600")
    });
    let c = builder(&s)
        .retry_max(2)
        .retry_wait_min(Duration::from_millis(1))
        .retry_wait_max(Duration::from_millis(50))
        .build()
        .expect("client");
    let e = within(c.get_runner(RunnerId::new(1)))
        .await
        .expect_err("429");
    assert_eq!(
        e.api_error().and_then(|a| a.retry_after()),
        Some(Duration::from_secs(3600))
    );
    within(c.remove_runner(RunnerId::new(1)))
        .await
        .expect_err("503");
    // The log is shared by the tests of this binary: count only this server's retries.
    let port = format!(":{}/", s.addr.port());
    let capped = || {
        logs.text()
            .lines()
            .filter(|l| l.contains(&port) && l.contains("retrying") && l.contains("delay_ms=50 "))
            .count()
    };
    assert_eq!(capped(), 4, "two capped retries per call:\n{}", logs.text());
    within(c.get_runner(RunnerId::new(2)))
        .await
        .expect_err("500");
    assert_eq!(capped(), 4, "500 ignores Retry-After");
    assert_eq!(s.tenant_requests().len(), 9);
}

// Behaviour 95 and retries of transport failures: nothing listens; the error starts with
// `request POST <url> failed` and reports retryMax+1 attempts.
#[tokio::test]
async fn b95_connection_refused_is_a_transport_error_after_retries() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let c = Client::builder(format!("http://127.0.0.1:{port}/org"), pat())
        .retry_max(2)
        .retry_wait_min(Duration::from_millis(1))
        .retry_wait_max(Duration::from_millis(2))
        .build()
        .expect("client");
    let e = within(c.get_runner(RunnerId::new(1)))
        .await
        .expect_err("refused");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "request POST http://127.0.0.1:{port}/api/v3/orgs/org/actions/runners/registration-token failed"
        )),
        "{text}"
    );
    assert!(
        matches!(e, actions_scaleset::Error::Transport { attempts: 3, .. }),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert_eq!(e.status(), None);
}
