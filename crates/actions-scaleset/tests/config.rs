//! Config URLs seen from the wire (PROTOCOL.md section 1; section 9 behaviours 1-10): the
//! scope decides the registration-token path, the host decides the API base. Hosts that do not
//! exist are reached through the scripted server acting as a plain-HTTP proxy, which sees the
//! absolute request URI; for `https` hosts it sees the `CONNECT` target.

mod common;

use actions_scaleset::{Client, ErrorKind, GITHUB_ACTIONS_FORCE_GHES, RunnerId, Scope};
use common::*;

/// A client for `config_url` whose requests all go to `proxy`.
fn proxied(config_url: &str, proxy: &TestServer) -> Client {
    Client::builder(config_url, pat())
        .proxy(proxy.url(""))
        .retry_max(0)
        .build()
        .expect("client")
}

/// The first request the proxy saw when `config_url` fetched its registration token.
async fn first_request(config_url: &str) -> Recorded {
    let proxy = TestServer::start().await;
    let _ = within(proxied(config_url, &proxy).get_runner(RunnerId::new(1))).await;
    proxy
        .requests()
        .into_iter()
        .next()
        .expect("a request reached the proxy")
}

// Behaviours 1-5 and 7: scope and hosted-ness from the URL, and the registration-token URL
// built from them (hosted: `api.<host>` without `/api/v3`; `www.github.com` -> `api.github.com`).
#[tokio::test]
async fn b1_to_b5_b7_scopes_and_hosted_api_urls() {
    let cases = [
        // (config URL, scope, enterprise, org, repo, hosted, registration-token URL)
        (
            "http://github.localhost/org/repo",
            Scope::Repository,
            "",
            "org",
            "repo",
            true,
            "http://api.github.localhost/repos/org/repo/actions/runners/registration-token",
        ),
        (
            "http://github.localhost/org/repo/",
            Scope::Repository,
            "",
            "org",
            "repo",
            true,
            "http://api.github.localhost/repos/org/repo/actions/runners/registration-token",
        ),
        (
            "http://github.localhost/org",
            Scope::Organization,
            "",
            "org",
            "",
            true,
            "http://api.github.localhost/orgs/org/actions/runners/registration-token",
        ),
        (
            "http://github.localhost/enterprises/my-enterprise",
            Scope::Enterprise,
            "my-enterprise",
            "",
            "",
            true,
            "http://api.github.localhost/enterprises/my-enterprise/actions/runners/registration-token",
        ),
        (
            "http://github.localhost/enterprises/my-enterprise/",
            Scope::Enterprise,
            "my-enterprise",
            "",
            "",
            true,
            "http://api.github.localhost/enterprises/my-enterprise/actions/runners/registration-token",
        ),
        (
            "http://www.github.com/org/",
            Scope::Organization,
            "",
            "org",
            "",
            true,
            "http://api.github.com/orgs/org/actions/runners/registration-token",
        ),
        (
            "http://my-ghes.ghe.com/org/",
            Scope::Organization,
            "",
            "org",
            "",
            true,
            "http://api.my-ghes.ghe.com/orgs/org/actions/runners/registration-token",
        ),
    ];
    for (url, scope, ent, org, repo, hosted, reg) in cases {
        let c = Client::builder(url, pat()).build().expect(url);
        let cfg = c.config();
        assert_eq!(cfg.scope, scope, "{url}");
        assert_eq!(
            (
                cfg.enterprise.as_str(),
                cfg.organization.as_str(),
                cfg.repository.as_str()
            ),
            (ent, org, repo),
            "{url}"
        );
        assert_eq!(cfg.is_hosted(), hosted, "{url}");
        let r = first_request(url).await;
        assert_eq!((r.method.as_str(), r.uri.as_str()), ("POST", reg), "{url}");
    }
    for url in [
        "https://github.com/org/repo",
        "https://github.com/org",
        "https://www.github.com/org",
    ] {
        assert!(
            Client::builder(url, pat())
                .build()
                .expect(url)
                .config()
                .is_hosted(),
            "{url}"
        );
    }
}

// Behaviour 7 for https: the client tunnels to `api.github.com:443` (the proxy refuses).
#[tokio::test]
async fn b7_https_github_com_goes_to_api_github_com() {
    let r = first_request("https://github.com/org/repo").await;
    assert_eq!(
        (r.method.as_str(), r.uri.as_str()),
        ("CONNECT", "api.github.com:443")
    );
    let r = first_request("https://www.github.com/org").await;
    assert_eq!(r.uri, "api.github.com:443");
}

// Behaviours 5 and 8: non-hosted hosts (`my-ghes.com`, `localhost`, `ghes.com`, bare
// `ghe.com`) put the API under `/api/v3` on the same host and port.
#[tokio::test]
async fn b5_b8_ghes_api_urls() {
    let cases = [
        (
            "http://my-ghes.com/org",
            "http://my-ghes.com/api/v3/orgs/org/actions/runners/registration-token",
        ),
        (
            "http://my-ghes.com/org/",
            "http://my-ghes.com/api/v3/orgs/org/actions/runners/registration-token",
        ),
        (
            "http://localhost/org/repo",
            "http://localhost/api/v3/repos/org/repo/actions/runners/registration-token",
        ),
        (
            "http://ghes.com:8080/enterprises/e",
            "http://ghes.com:8080/api/v3/enterprises/e/actions/runners/registration-token",
        ),
        (
            "http://ghe.com/org",
            "http://ghe.com/api/v3/orgs/org/actions/runners/registration-token",
        ),
    ];
    for (url, reg) in cases {
        assert!(
            !Client::builder(url, pat())
                .build()
                .expect(url)
                .config()
                .is_hosted(),
            "{url}"
        );
        assert_eq!(first_request(url).await.uri, reg, "{url}");
    }
    let r = first_request("https://my-instance.com/org/repo").await;
    assert_eq!(
        (r.method.as_str(), r.uri.as_str()),
        ("CONNECT", "my-instance.com:443")
    );
}

// Behaviour 6: URLs that name no scope fail at construction with kind InvalidConfigUrl, and
// so do (our tightening) URLs without an http(s) scheme or with a query.
#[test]
fn b6_invalid_config_urls() {
    for url in [
        "https://github.com/",
        "https://github.com",
        "https://github.com/some/random/path",
        "github.com/org",
        "ftp://github.com/org",
        "https://github.com/org?x=1",
        "",
    ] {
        let e = Client::builder(url, pat()).build().expect_err(url);
        assert_eq!(e.kind(), ErrorKind::InvalidConfigUrl, "{url}: {e}");
        assert!(
            e.to_string().contains(&format!("{url:?}")),
            "the URL is quoted: {e}"
        );
    }
}

// Behaviours 10 and 23: the runner-registration body carries the stripped config URL.
#[tokio::test]
async fn b10_registration_body_has_the_stripped_config_url() {
    let proxy = TestServer::start().await;
    proxy.on(
        "POST",
        "/repos/org/repo/actions/runners/registration-token",
        |_, _| Reply::json(201, r#"{"token":"REG"}"#),
    );
    let _ =
        within(proxied("http://github.localhost/org/repo///", &proxy).get_runner(RunnerId::new(1)))
            .await;
    let rr = proxy
        .requests()
        .into_iter()
        .find(|r| r.path == "/actions/runner-registration")
        .expect("runner registration");
    assert_eq!(
        rr.uri,
        "http://api.github.localhost/actions/runner-registration"
    );
    assert_eq!(
        rr.json(),
        json(r#"{"url":"http://github.localhost/org/repo","runner_event":"register"}"#)
    );
}

// Behaviour 9: with GITHUB_ACTIONS_FORCE_GHES present (even empty), a `*.ghe.com` URL is a GHES.
// `std::env::set_var` is unsafe in edition 2024 and unsafe code is forbidden, so the test
// re-runs this binary as a child process with the variable set, filtered to the ignored test
// below.
#[test]
fn b9_force_ghes_in_a_child_process() {
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "b9_child_force_ghes",
            "--test-threads",
            "1",
        ])
        .env(GITHUB_ACTIONS_FORCE_GHES, "")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "run by b9_force_ghes_in_a_child_process with GITHUB_ACTIONS_FORCE_GHES set"]
fn b9_child_force_ghes() {
    assert!(
        std::env::var_os(GITHUB_ACTIONS_FORCE_GHES).is_some(),
        "run through b9_force_ghes_in_a_child_process"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let url = "http://test.ghe.com/org/repo";
        let c = Client::builder(url, pat()).build().expect("client");
        assert!(!c.config().is_hosted());
        assert_eq!(
            c.config().github_api_url("/some/path").as_str(),
            "http://test.ghe.com/api/v3/some/path"
        );
        assert!(
            !Client::builder("https://github.com/org", pat())
                .build()
                .expect("c")
                .config()
                .is_hosted()
        );
        let r = first_request(url).await;
        assert_eq!(
            r.uri,
            "http://test.ghe.com/api/v3/repos/org/repo/actions/runners/registration-token"
        );
    });
}
