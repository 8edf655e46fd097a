//! Credentials and the admin-token cache.
//!
//! The flow (PROTOCOL.md 2): a GitHub App signs a JWT and trades it for an installation token
//! (a PAT skips this step); that token buys a registration token for the config URL's scope;
//! the registration token buys the Actions service *admin connection*: the tenant URL and an
//! admin JWT whose `exp` says when to refresh (60 s early).
//!
//! The cache is the only lock in a [`Client`](crate::Client), and it is never held across the
//! network: a refresh runs in its own task and every caller that needs a token meanwhile awaits
//! that one refresh (single flight). When it fails, they all get its error; the next call after
//! that starts a new refresh.

use std::fmt;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use http::{Method, StatusCode};
use jiff::{SignedDuration, Timestamp};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use url::Url;

use crate::config::GitHubConfig;
use crate::error::Error;
use crate::transport::{Auth, Incoming, Outgoing, Transport};

/// The lifetime assumed for an admin token without an `exp` claim.
const ASSUMED_LIFETIME: SignedDuration = SignedDuration::from_secs(10 * 60);

/// How long before the admin token's expiry it is refreshed.
const REFRESH_MARGIN: SignedDuration = SignedDuration::from_secs(60);

/// How to authenticate to GitHub.
#[derive(Clone)]
pub enum Credentials {
    /// A personal access token (classic with `admin:org`/`repo`, or fine-grained with
    /// self-hosted runner administration).
    Token(SecretString),
    /// A GitHub App installation.
    App(GitHubApp),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Credentials::Token([REDACTED])"),
            Credentials::App(app) => f.debug_tuple("Credentials::App").field(app).finish(),
        }
    }
}

impl Credentials {
    /// Personal-access-token credentials.
    ///
    /// # Errors
    /// [`Error::InvalidCredentials`] when the token is empty or not printable ASCII.
    pub fn token(token: impl Into<String>) -> Result<Credentials, Error> {
        let token = token.into();
        let trimmed = token.trim();
        if trimmed.is_empty() {
            return Err(Error::InvalidCredentials("the token is empty".to_string()));
        }
        if !trimmed.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidCredentials(
                "the token contains whitespace or non-ASCII characters".to_string(),
            ));
        }
        Ok(Credentials::Token(SecretString::from(trimmed.to_string())))
    }

    /// GitHub App credentials: a client id (or the numeric app id), a non-zero installation id
    /// and the App's private key in PEM (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`).
    ///
    /// # Errors
    /// [`Error::InvalidCredentials`] when a field is missing or the key does not parse.
    pub fn github_app(
        client_id: impl Into<String>,
        installation_id: u64,
        private_key_pem: &str,
    ) -> Result<Credentials, Error> {
        let client_id = client_id.into().trim().to_string();
        if client_id.is_empty() {
            return Err(Error::InvalidCredentials(
                "the GitHub App client id is empty".into(),
            ));
        }
        if installation_id == 0 {
            return Err(Error::InvalidCredentials(
                "the GitHub App installation id must be non-zero".into(),
            ));
        }
        if private_key_pem.trim().is_empty() {
            return Err(Error::InvalidCredentials(
                "the GitHub App private key is empty".into(),
            ));
        }
        let key = EncodingKey::from_rsa_pem(private_key_pem.as_bytes()).map_err(|e| {
            Error::InvalidCredentials(format!(
                "the GitHub App private key is not an RSA key in PEM (PKCS#1 or PKCS#8): {e}"
            ))
        })?;
        Ok(Credentials::App(GitHubApp {
            client_id,
            installation_id,
            key: Arc::new(key),
        }))
    }
}

/// A GitHub App installation: its id and the key it signs JWTs with.
#[derive(Clone)]
pub struct GitHubApp {
    client_id: String,
    installation_id: u64,
    key: Arc<EncodingKey>,
}

impl fmt::Debug for GitHubApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubApp")
            .field("client_id", &self.client_id)
            .field("installation_id", &self.installation_id)
            .field("private_key", &"[REDACTED]")
            .finish()
    }
}

impl GitHubApp {
    /// The client id (or app id) used as the JWT issuer.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The installation id.
    pub fn installation_id(&self) -> u64 {
        self.installation_id
    }

    /// Signs an App JWT: RS256, `iss` = client id, `iat` = now - 60 s, `exp` = iat + 9 min.
    pub(crate) fn jwt(&self, now: Timestamp) -> Result<SecretString, Error> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iat: i64,
            exp: i64,
            iss: &'a str,
        }
        let iat = now.as_second() - 60;
        let claims = Claims {
            iat,
            exp: iat + 9 * 60,
            iss: &self.client_id,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map(SecretString::from)
            .map_err(|e| Error::InvalidCredentials(format!("cannot sign the GitHub App JWT: {e}")))
    }
}

/// The Actions service connection: where tenant calls go and the token they carry.
pub(crate) struct AdminConnection {
    pub(crate) tenant_url: Url,
    pub(crate) token: SecretString,
    pub(crate) expires_at: Timestamp,
    pub(crate) generation: u64,
}

impl AdminConnection {
    fn is_fresh(&self, now: Timestamp) -> bool {
        now + REFRESH_MARGIN < self.expires_at
    }
}

type RefreshFuture = Shared<BoxFuture<'static, Result<Arc<AdminConnection>, Error>>>;

#[derive(Default)]
struct CacheState {
    current: Option<Arc<AdminConnection>>,
    inflight: Option<RefreshFuture>,
    generation: u64,
}

/// Everything a refresh needs, shared with the refresh task.
pub(crate) struct Authenticator {
    pub(crate) config: GitHubConfig,
    pub(crate) credentials: Credentials,
    pub(crate) transport: Arc<Transport>,
    state: Mutex<CacheState>,
}

impl Authenticator {
    pub(crate) fn new(
        config: GitHubConfig,
        credentials: Credentials,
        transport: Arc<Transport>,
    ) -> Authenticator {
        Authenticator {
            config,
            credentials,
            transport,
            state: Mutex::new(CacheState::default()),
        }
    }

    /// A valid admin connection, refreshing it first when it is missing, about to expire, or
    /// is the connection `stale` (a generation a caller saw refused with 401).
    pub(crate) async fn connection(
        self: &Arc<Self>,
        stale: Option<u64>,
    ) -> Result<Arc<AdminConnection>, Error> {
        let refresh = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(cur) = &st.current
                && cur.is_fresh(Timestamp::now())
                && Some(cur.generation) != stale
            {
                return Ok(cur.clone());
            }
            match &st.inflight {
                Some(fut) => fut.clone(),
                None => {
                    let this = self.clone();
                    // The refresh serves every caller of this client (possibly several scale
                    // sets), so it logs under its own span rather than the first caller's.
                    let span = tracing::info_span!(
                        parent: None,
                        "admin_token",
                        config_url = %crate::error::redact_url(&self.config.config_url)
                    );
                    let task = tokio::spawn(
                        async move {
                            let result = this.refresh().await;
                            let mut st = this.state.lock().unwrap_or_else(|e| e.into_inner());
                            st.inflight = None;
                            let mut conn = result?;
                            st.generation += 1;
                            conn.generation = st.generation;
                            let conn = Arc::new(conn);
                            st.current = Some(conn.clone());
                            Ok(conn)
                        }
                        .instrument(span),
                    );
                    let owner = self.clone();
                    let fut: RefreshFuture = async move {
                        task.await.unwrap_or_else(|join| {
                            // The task died (panic, runtime shutdown) before clearing the
                            // slot: clear it here so the next call starts a new refresh.
                            owner
                                .state
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .inflight = None;
                            Err(Error::Protocol {
                                response: None,
                                message: format!("the admin token refresh task failed: {join}"),
                            })
                        })
                    }
                    .boxed()
                    .shared();
                    st.inflight = Some(fut.clone());
                    fut
                }
            }
        };
        refresh.await
    }

    /// Steps A to C of PROTOCOL.md 2.2. On failure the stored connection is left unchanged.
    async fn refresh(&self) -> Result<AdminConnection, Error> {
        tracing::debug!(config_url = %self.config.config_url, "refreshing the Actions admin token");
        let github_token = match &self.credentials {
            Credentials::Token(t) => t.clone(),
            Credentials::App(app) => self.installation_token(app).await?,
        };
        let registration = self.registration_token(&github_token).await?;
        self.admin_connection(&registration).await
    }

    async fn installation_token(&self, app: &GitHubApp) -> Result<SecretString, Error> {
        let url = self.config.github_api_url(&format!(
            "/app/installations/{}/access_tokens",
            app.installation_id
        ));
        let mut req = Outgoing::new(Method::POST, url);
        req.auth = Some(Auth::BearerOwned(app.jwt(Timestamp::now())?));
        req.content_type = Some("application/vnd.github+json");
        req.sensitive_response = true;
        let resp = self.transport.send(req).await?;
        let resp = expect_github(
            resp,
            StatusCode::CREATED,
            "failed to get access token for GitHub App auth",
        )?;
        token_from(&resp, "installation access token")
    }

    async fn registration_token(&self, github_token: &SecretString) -> Result<SecretString, Error> {
        let url = self
            .config
            .github_api_url(&self.config.registration_token_path());
        let mut req = Outgoing::new(Method::POST, url);
        req.auth = Some(Auth::Bearer(github_token));
        req.content_type = Some("application/vnd.github.v3+json");
        req.sensitive_response = true;
        let resp = self.transport.send(req).await?;
        let resp = expect_github(
            resp,
            StatusCode::CREATED,
            "failed to get runner registration token",
        )?;
        token_from(&resp, "runner registration token")
    }

    async fn admin_connection(
        &self,
        registration: &SecretString,
    ) -> Result<AdminConnection, Error> {
        #[derive(Serialize)]
        struct Body<'a> {
            url: &'a str,
            runner_event: &'a str,
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            url: Option<String>,
            #[serde(default)]
            token: Option<String>,
        }
        let url = self.config.github_api_url("/actions/runner-registration");
        let mut body = serde_json::to_vec(&Body {
            url: self.config.config_url.as_str(),
            runner_event: "register",
        })
        .expect("two strings always serialize");
        body.push(b'\n');
        let mut req = Outgoing::new(Method::POST, url);
        req.auth = Some(Auth::RemoteAuth(registration));
        req.content_type = Some("application/json");
        req.body = Some(body);
        // The reference retries 401 and 403 here; a 403 is a permission error that retrying
        // does not fix (PROTOCOL.md 10.24), so only 401 (a registration token not yet
        // propagated) is retried.
        req.retry_unauthorized = true;
        req.sensitive_response = true;
        let resp = self.transport.send(req).await?;
        if !resp.status.is_success() {
            let api = resp
                .api_error()
                .with_detail("failed to get Actions service admin connection");
            return Err(github_error(api));
        }
        let answer: Answer = resp.json()?;
        let protocol = |message: &str| Error::Protocol {
            response: Some(Box::new(resp.api_error())),
            message: message.to_string(),
        };
        let tenant = answer
            .url
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| protocol("actions service admin connection missing url"))?;
        let token = answer
            .token
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| protocol("actions service admin connection missing token"))?;
        let tenant_url = Url::parse(tenant.trim()).map_err(|e| {
            protocol(&format!(
                "actions service admin connection has an invalid url: {e}"
            ))
        })?;
        let expires_at = admin_token_expiry(&token).map_err(|e| protocol(&e))?;
        Ok(AdminConnection {
            tenant_url,
            token: SecretString::from(token),
            expires_at,
            generation: 0,
        })
    }
}

/// Reads `exp` from the admin JWT without verifying its signature. A token without `exp` is
/// given [`ASSUMED_LIFETIME`]: refreshing it on every call would cost three GitHub calls per
/// request, and a 401 still forces a refresh (the reference dereferences a missing `exp`).
pub(crate) fn admin_token_expiry(token: &str) -> Result<Timestamp, String> {
    #[derive(Deserialize)]
    struct Claims {
        #[serde(default)]
        exp: Option<i64>,
    }
    let data = jsonwebtoken::dangerous::insecure_decode::<Claims>(token)
        .map_err(|e| format!("the admin token is not a valid JWT: {e}"))?;
    match data.claims.exp {
        Some(exp) => Timestamp::from_second(exp)
            .map_err(|e| format!("the admin token has an invalid exp claim: {e}")),
        None => Ok(Timestamp::now() + ASSUMED_LIFETIME),
    }
}

fn expect_github(resp: Incoming, expected: StatusCode, what: &str) -> Result<Incoming, Error> {
    if resp.status == expected {
        return Ok(resp);
    }
    let reason = format!("{what} ({})", resp.status);
    Err(github_error(resp.api_error().with_detail(reason)))
}

/// A failed GitHub credential call: 401 and 403 mean the credentials were refused.
fn github_error(api: crate::error::ApiError) -> Error {
    if matches!(
        api.status(),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    ) {
        Error::Unauthorized(Box::new(api))
    } else {
        Error::from_response(api)
    }
}

fn token_from(resp: &Incoming, what: &str) -> Result<SecretString, Error> {
    #[derive(Deserialize)]
    struct TokenAnswer {
        #[serde(default)]
        token: Option<String>,
    }
    let answer: TokenAnswer = resp.json()?;
    match answer.token.filter(|t| !t.trim().is_empty()) {
        Some(t) => Ok(SecretString::from(t)),
        None => Err(Error::Protocol {
            response: Some(Box::new(resp.api_error())),
            message: format!("the {what} response has no token"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_validated() {
        assert!(matches!(
            Credentials::token(""),
            Err(Error::InvalidCredentials(_))
        ));
        assert!(matches!(
            Credentials::token("  "),
            Err(Error::InvalidCredentials(_))
        ));
        assert!(matches!(
            Credentials::token("a b"),
            Err(Error::InvalidCredentials(_))
        ));
        assert!(Credentials::token("ghp_abc").is_ok());
        assert!(matches!(
            Credentials::github_app("", 1, "x"),
            Err(Error::InvalidCredentials(_))
        ));
        assert!(matches!(
            Credentials::github_app("id", 0, "x"),
            Err(Error::InvalidCredentials(_))
        ));
        assert!(matches!(
            Credentials::github_app("id", 1, ""),
            Err(Error::InvalidCredentials(_))
        ));
        let bad = Credentials::github_app(
            "id",
            1,
            "-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----\n",
        );
        assert!(matches!(bad, Err(Error::InvalidCredentials(_))));
    }

    #[test]
    fn token_debug_is_redacted() {
        let c = Credentials::token("ghp_SECRETVALUE").expect("valid");
        assert!(!format!("{c:?}").contains("SECRETVALUE"));
    }

    #[test]
    fn admin_expiry_from_jwt() {
        // header {"alg":"HS256","typ":"JWT"}, claims {"exp":2000000000}
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjIwMDAwMDAwMDB9.c2ln";
        assert_eq!(
            admin_token_expiry(token).map(|t| t.as_second()),
            Ok(2_000_000_000)
        );
        assert!(admin_token_expiry("not-a-jwt").is_err());
    }
}
