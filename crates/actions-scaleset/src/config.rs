//! Config URLs: which GitHub scope a URL names, and where its REST API lives.
//!
//! A *config URL* is what a user types to say where runners register:
//! `https://github.com/org/repo` (repository), `https://github.com/org` (organization) or
//! `https://github.com/enterprises/name` (enterprise), on github.com, a GHE.com tenant or a
//! GitHub Enterprise Server. Everything here is free of IO so it is unit-tested without a socket.
//!
//! The rules follow the reference client (`config.go`), with two deliberate tightenings: the URL
//! must have an `http`/`https` scheme and a host (the reference accepts `github.com/org` as a
//! repository named `org` owned by `github.com`), and a query string or fragment is rejected
//! because the service would receive it verbatim in the registration URL.

use std::fmt;

use url::Url;

use crate::error::Error;

/// Environment variable that, when present (with any value, even empty), makes every URL count
/// as GitHub Enterprise Server: the API lives under `/api/v3` on the same host.
///
/// It is read each time an API URL is built, never cached.
pub const GITHUB_ACTIONS_FORCE_GHES: &str = "GITHUB_ACTIONS_FORCE_GHES";

/// The registration scope a config URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `/enterprises/{enterprise}`.
    Enterprise,
    /// `/{organization}`.
    Organization,
    /// `/{owner}/{repository}`.
    Repository,
}

impl Scope {
    /// The lower-case name of the scope: `enterprise`, `organization` or `repository`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Enterprise => "enterprise",
            Scope::Organization => "organization",
            Scope::Repository => "repository",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed config URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitHubConfig {
    /// The config URL with leading and trailing `/` stripped; sent as `url` to the
    /// runner-registration endpoint.
    pub config_url: Url,
    /// Which scope the URL names.
    pub scope: Scope,
    /// Enterprise slug (empty unless [`Scope::Enterprise`]).
    pub enterprise: String,
    /// Organization or repository owner (empty for [`Scope::Enterprise`]).
    pub organization: String,
    /// Repository name (empty unless [`Scope::Repository`]).
    pub repository: String,
}

/// Parses a config URL: `https://HOST/enterprises/ENT`, `https://HOST/ORG` or
/// `https://HOST/OWNER/REPO` (see [`GitHubConfig`]).
///
/// # Errors
/// [`Error::InvalidConfigUrl`] when the input is not an absolute `http(s)` URL with a host, or its
/// path does not name an enterprise, an organization or a repository.
pub fn parse_github_config_from_url(input: &str) -> Result<GitHubConfig, Error> {
    let invalid = |reason: &str| Error::InvalidConfigUrl {
        url: redact_user_info(input),
        reason: reason.to_string(),
    };
    let trimmed = input.trim().trim_matches('/');
    let mut url = Url::parse(trimmed).map_err(|e| invalid(&format!("not an absolute URL: {e}")))?;
    // The parser drops leading and trailing control characters and resolves `.` segments, which
    // can uncover a trailing `/` (`https://github.com/org/.`): strip it again, so the stored URL
    // never ends in `/`.
    let path = url.path();
    if path.len() > 1 && path.ends_with('/') {
        let stripped = path.trim_end_matches('/').to_string();
        url.set_path(&stripped);
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "the URL must not carry a user name or password; pass credentials separately",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "the URL must not carry a query string or a fragment",
        ));
    }
    let path = url.path().trim_matches('/');
    let segments: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    let (scope, enterprise, organization, repository) = match segments.as_slice() {
        [org] if !org.is_empty() => (Scope::Organization, "", *org, ""),
        [first, ent] if first.eq_ignore_ascii_case("enterprises") && !ent.is_empty() => {
            (Scope::Enterprise, *ent, "", "")
        }
        [owner, repo] if !owner.is_empty() && !repo.is_empty() => {
            (Scope::Repository, "", *owner, *repo)
        }
        _ => {
            return Err(invalid(
                "it should point to an enterprise, an organization or a repository \
                 (https://HOST/enterprises/ENT, https://HOST/ORG or https://HOST/ORG/REPO)",
            ));
        }
    };
    // Percent-decoding of a path segment: a literal `+` stays a `+` (form decoding alone would
    // turn it into a space).
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(GitHubConfig {
        config_url: url.clone(),
        scope,
        enterprise: decode(enterprise),
        organization: decode(organization),
        repository: decode(repository),
    })
}

/// The input with anything between `://` and an `@` in its authority replaced, so that a
/// credential typed into a URL never reaches an error message.
fn redact_user_info(input: &str) -> String {
    let Some(scheme_end) = input.find("://") else {
        return input.to_string();
    };
    let rest = &input[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://[REDACTED]@{}", &input[..scheme_end], &rest[at + 1..]),
        None => input.to_string(),
    }
}

impl GitHubConfig {
    /// Whether the URL points at GitHub-hosted infrastructure (github.com or a GHE.com tenant).
    ///
    /// Re-reads [`GITHUB_ACTIONS_FORCE_GHES`] on every call.
    pub fn is_hosted(&self) -> bool {
        is_hosted_with(&self.config_url, force_ghes())
    }

    /// The URL of `path` on this config's GitHub REST API (see [`github_api_url`]).
    pub fn github_api_url(&self, path: &str) -> Url {
        github_api_url(self, path)
    }

    /// The registration-token path for this scope, e.g. `/orgs/{org}/actions/runners/registration-token`.
    ///
    /// Names keep the percent-encoding they had in the config URL.
    pub fn registration_token_path(&self) -> String {
        let raw: Vec<&str> = self
            .config_url
            .path()
            .trim_matches('/')
            .split('/')
            .collect();
        match (self.scope, raw.as_slice()) {
            (Scope::Enterprise, [_, ent]) => {
                format!("/enterprises/{ent}/actions/runners/registration-token")
            }
            (Scope::Repository, [owner, repo]) => {
                format!("/repos/{owner}/{repo}/actions/runners/registration-token")
            }
            (_, raw) => {
                let org = raw.first().copied().unwrap_or_default();
                format!("/orgs/{org}/actions/runners/registration-token")
            }
        }
    }
}

/// Whether `url` is GitHub-hosted: its host (with any port) is `github.com`, `www.github.com` or
/// `github.localhost` (any case), or ends with `.ghe.com`; always `false` while
/// [`GITHUB_ACTIONS_FORCE_GHES`] is set. Takes a `&str` or a [`Url`]; text that is
/// not an absolute URL is not hosted.
///
/// ```
/// use actions_scaleset::is_hosted_github_url;
///
/// # if std::env::var_os(actions_scaleset::GITHUB_ACTIONS_FORCE_GHES).is_none() {
/// assert!(is_hosted_github_url("https://github.com/my-org"));
/// assert!(is_hosted_github_url("https://my-company.ghe.com/my-org"));
/// assert!(!is_hosted_github_url("https://ghes.example.com/my-org"));
/// assert!(!is_hosted_github_url("not a url"));
/// # }
/// ```
pub fn is_hosted_github_url(url: impl AsRef<str>) -> bool {
    Url::parse(url.as_ref().trim()).is_ok_and(|u| is_hosted_with(&u, force_ghes()))
}

fn force_ghes() -> bool {
    std::env::var_os(GITHUB_ACTIONS_FORCE_GHES).is_some()
}

fn is_hosted_with(url: &Url, force_ghes: bool) -> bool {
    if force_ghes {
        return false;
    }
    let host = host_with_port(url);
    let lower = host.to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "github.com" | "www.github.com" | "github.localhost"
    ) || host.ends_with(".ghe.com")
}

fn host_with_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// The URL of `path` (appended verbatim) on the REST API of `config`:
/// `scheme://api.<host>` when hosted (`www.github.com` maps to `api.github.com`), otherwise
/// `scheme://<host>/api/v3`.
pub fn github_api_url(config: &GitHubConfig, path: &str) -> Url {
    api_url_with(config, path, force_ghes())
}

fn api_url_with(config: &GitHubConfig, path: &str, force_ghes: bool) -> Url {
    let url = &config.config_url;
    let host = host_with_port(url);
    let base = if is_hosted_with(url, force_ghes) {
        let host = if host.eq_ignore_ascii_case("www.github.com") {
            "github.com".to_string()
        } else {
            host
        };
        format!("{}://api.{host}", url.scheme())
    } else {
        format!("{}://{host}/api/v3", url.scheme())
    };
    let path = if path.starts_with('/') || path.is_empty() {
        path.to_string()
    } else {
        format!("/{path}")
    };
    Url::parse(&format!("{base}{path}")).expect("scheme and host come from a parsed URL")
}

/// The API base URL without a trailing slash, e.g. `https://api.github.com` or
/// `https://ghes.example.com/api/v3`.
pub fn github_api_base(config: &GitHubConfig) -> String {
    github_api_url(config, "")
        .as_str()
        .trim_end_matches('/')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> GitHubConfig {
        parse_github_config_from_url(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    // Behaviour 1
    #[test]
    fn repository_urls() {
        for u in [
            "https://github.com/org/repo",
            "https://github.com/org/repo/",
        ] {
            let c = parse(u);
            assert_eq!(c.scope, Scope::Repository);
            assert_eq!(
                (
                    c.enterprise.as_str(),
                    c.organization.as_str(),
                    c.repository.as_str()
                ),
                ("", "org", "repo")
            );
            assert!(c.is_hosted());
            assert_eq!(c.config_url.as_str(), "https://github.com/org/repo");
        }
    }

    // Found by the config_url fuzz target: the URL parser drops trailing control characters
    // and resolves `.` segments after the `/` were stripped, which left a trailing `/` in the
    // URL sent to the runner-registration endpoint.
    #[test]
    fn the_stored_url_has_no_trailing_slash_after_url_normalisation() {
        for (input, stored) in [
            ("https://github.com/org/\u{1}", "https://github.com/org"),
            (
                "https://github.com/org/\u{0}\u{11}",
                "https://github.com/org",
            ),
            ("https://github.com/org/.", "https://github.com/org"),
            (
                "https://github.com/org/repo/%2e",
                "https://github.com/org/repo",
            ),
            (
                "https://github.com/enterprises/e/./",
                "https://github.com/enterprises/e",
            ),
        ] {
            let c = parse(input);
            assert_eq!(c.config_url.as_str(), stored, "{input:?}");
            assert_eq!(
                parse(c.config_url.as_str()),
                c,
                "{input:?} parses back the same"
            );
        }
    }

    // Behaviour 2
    #[test]
    fn organization_url() {
        let c = parse("https://github.com/org");
        assert_eq!(c.scope, Scope::Organization);
        assert_eq!(c.organization, "org");
        assert!(c.is_hosted());
        assert_eq!(
            c.registration_token_path(),
            "/orgs/org/actions/runners/registration-token"
        );
    }

    // Behaviour 3
    #[test]
    fn enterprise_urls() {
        for u in [
            "https://github.com/enterprises/my-enterprise",
            "https://github.com/enterprises/my-enterprise/",
            "https://github.com/Enterprises/my-enterprise",
        ] {
            let c = parse(u);
            assert_eq!(c.scope, Scope::Enterprise);
            assert_eq!(c.enterprise, "my-enterprise");
            assert_eq!(c.organization, "");
            assert_eq!(
                c.registration_token_path(),
                "/enterprises/my-enterprise/actions/runners/registration-token"
            );
        }
    }

    // Behaviour 4
    #[test]
    fn hosted_variants() {
        for u in [
            "https://www.github.com/org",
            "https://www.github.com/org/",
            "https://github.localhost/org",
            "https://my-ghes.ghe.com/org/",
        ] {
            let c = parse(u);
            assert_eq!(c.scope, Scope::Organization, "{u}");
            assert_eq!(c.organization, "org");
            assert!(c.is_hosted(), "{u} should be hosted");
        }
    }

    // Behaviour 5
    #[test]
    fn ghes_urls() {
        for u in ["https://my-ghes.com/org", "https://my-ghes.com/org/"] {
            let c = parse(u);
            assert_eq!(c.scope, Scope::Organization);
            assert!(!c.is_hosted());
        }
        assert!(
            !parse("https://ghe.com/org").is_hosted(),
            "bare ghe.com is not hosted"
        );
    }

    // Behaviour 6
    #[test]
    fn invalid_urls() {
        for u in [
            "https://github.com/",
            "https://github.com",
            "https://github.com/some/random/path",
            "github.com/org",
            "ftp://github.com/org",
            "https://github.com/org?x=1",
            "https://x:ghp_secret@github.com/org",
            "https://ghp_secret@github.com/org",
            "",
        ] {
            let err = parse_github_config_from_url(u).expect_err(u);
            assert!(
                matches!(err, Error::InvalidConfigUrl { .. }),
                "{u}: {err:?}"
            );
            assert_eq!(err.kind(), crate::ErrorKind::InvalidConfigUrl);
            assert!(!err.to_string().contains("ghp_secret"), "{err}");
        }
    }

    // Behaviour 7
    #[test]
    fn hosted_api_urls() {
        let p = "/app/installations/123/access_tokens";
        assert_eq!(
            parse("https://github.com/org/repo")
                .github_api_url(p)
                .as_str(),
            "https://api.github.com/app/installations/123/access_tokens"
        );
        assert_eq!(
            parse("https://www.github.com/org/repo")
                .github_api_url(p)
                .as_str(),
            "https://api.github.com/app/installations/123/access_tokens"
        );
        assert_eq!(
            parse("http://github.localhost/org/repo")
                .github_api_url(p)
                .as_str(),
            "http://api.github.localhost/app/installations/123/access_tokens"
        );
        assert_eq!(
            parse("https://github.ghe.com/org/repo")
                .github_api_url("/some/path")
                .as_str(),
            "https://api.github.ghe.com/some/path"
        );
        assert_eq!(
            github_api_base(&parse("https://github.com/org")),
            "https://api.github.com"
        );
    }

    // Behaviour 8
    #[test]
    fn ghes_api_urls() {
        let p = "/app/installations/123/access_tokens";
        assert_eq!(
            parse("https://my-instance.com/org/repo")
                .github_api_url(p)
                .as_str(),
            "https://my-instance.com/api/v3/app/installations/123/access_tokens"
        );
        assert_eq!(
            parse("http://localhost/org/repo")
                .github_api_url(p)
                .as_str(),
            "http://localhost/api/v3/app/installations/123/access_tokens"
        );
        assert_eq!(
            parse("https://ghes.com/org/repo")
                .github_api_url("/some/path")
                .as_str(),
            "https://ghes.com/api/v3/some/path"
        );
        assert_eq!(
            github_api_base(&parse("https://ghes.example.com/org")),
            "https://ghes.example.com/api/v3"
        );
        assert_eq!(
            parse("http://127.0.0.1:8080/org")
                .github_api_url("/x")
                .as_str(),
            "http://127.0.0.1:8080/api/v3/x"
        );
    }

    // Behaviour 9 (the variable itself is exercised in tests/config_env.rs, in a child process)
    #[test]
    fn force_ghes_makes_ghe_com_a_ghes() {
        let c = parse("https://test.ghe.com/org/repo");
        assert!(!is_hosted_with(&c.config_url, true));
        assert_eq!(
            api_url_with(&c, "/some/path", true).as_str(),
            "https://test.ghe.com/api/v3/some/path"
        );
        assert_eq!(
            api_url_with(&c, "/some/path", false).as_str(),
            "https://api.test.ghe.com/some/path"
        );
    }

    #[test]
    fn percent_encoded_names_are_decoded_and_reencoded() {
        let c = parse("https://ghes.example.com/my%20org/re%26po");
        assert_eq!(c.organization, "my org");
        assert_eq!(c.repository, "re&po");
        let plus = parse("https://ghes.example.com/a+b");
        assert_eq!(plus.organization, "a+b");
        assert_eq!(
            c.registration_token_path(),
            "/repos/my%20org/re%26po/actions/runners/registration-token"
        );
    }
}
