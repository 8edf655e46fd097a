//! Credentials and the admin-token cache.
//!
//! The flow: a GitHub App signs a JWT and trades it for an installation token
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

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use http::{Method, StatusCode};
use jiff::{SignedDuration, Timestamp};
use jsonwebtoken::{Algorithm, EncodingKey};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use url::Url;

use crate::config::GitHubConfig;
use crate::error::Error;
use crate::listener::BoxError;
use crate::transport::{Auth, Incoming, Outgoing, Transport};

/// The lifetime assumed for an admin token without an `exp` claim.
const ASSUMED_LIFETIME: SignedDuration = SignedDuration::from_secs(10 * 60);

/// How long before the admin token's expiry it is refreshed.
const REFRESH_MARGIN: SignedDuration = SignedDuration::from_secs(60);

/// How to authenticate to GitHub.
///
/// Three sources: a fixed token ([`Credentials::token`]), a GitHub App whose JWTs are signed
/// with a PEM key or by a [`JwtSigner`] of yours ([`Credentials::github_app`],
/// [`Credentials::github_app_with_signer`]), or a [`TokenProvider`] asked for a token each time
/// the client authenticates ([`Credentials::provider`], [`Credentials::token_file`]).
#[derive(Clone)]
#[non_exhaustive]
pub enum Credentials {
    /// A personal access token (classic with `admin:org`/`repo`, or fine-grained with
    /// self-hosted runner administration).
    Token(SecretString),
    /// A GitHub App installation.
    App(GitHubApp),
    /// A token from a [`TokenProvider`], asked whenever the client (re-)authenticates.
    Provider(Arc<dyn TokenProvider>),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Credentials::Token([REDACTED])"),
            Credentials::App(app) => f.debug_tuple("Credentials::App").field(app).finish(),
            Credentials::Provider(p) => f
                .debug_tuple("Credentials::Provider")
                .field(&p.describe())
                .finish(),
        }
    }
}

impl Credentials {
    /// Personal-access-token credentials.
    ///
    /// # Errors
    /// [`Error::InvalidCredentials`] when the token is empty or not printable ASCII.
    pub fn token(token: impl Into<String>) -> Result<Credentials, Error> {
        Ok(Credentials::Token(checked_token(
            token.into(),
            "the token",
        )?))
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
        let client_id = checked_app_fields(client_id.into(), installation_id)?;
        let signer = PemJwtSigner::from_pem(private_key_pem)?;
        Ok(Credentials::App(GitHubApp {
            client_id,
            installation_id,
            signer: Arc::new(signer),
        }))
    }

    /// GitHub App credentials whose JWTs are signed by `signer` (a key in a KMS or an HSM).
    /// The JWT's header and claims are the ones the built-in signer uses (see [`JwtSigner`]).
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use actions_scaleset::{Client, Credentials, PemJwtSigner};
    ///
    /// # fn run() -> Result<(), actions_scaleset::Error> {
    /// # let pem = "";
    /// // Any `JwtSigner` works here; the built-in PEM signer stands in for a KMS one.
    /// let signer = Arc::new(PemJwtSigner::from_pem(pem)?);
    /// let credentials = Credentials::github_app_with_signer("Iv1.0123456789abcdef", 42, signer)?;
    /// let client = Client::builder("https://github.com/my-org", credentials).build()?;
    /// # drop(client);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidCredentials`] when the client id is empty or the installation id is 0.
    pub fn github_app_with_signer(
        client_id: impl Into<String>,
        installation_id: u64,
        signer: Arc<dyn JwtSigner>,
    ) -> Result<Credentials, Error> {
        let client_id = checked_app_fields(client_id.into(), installation_id)?;
        Ok(Credentials::App(GitHubApp {
            client_id,
            installation_id,
            signer,
        }))
    }

    /// Credentials from a [`TokenProvider`]: a PAT or an installation token minted elsewhere
    /// (a vault, a sidecar), asked for each time the client authenticates to GitHub.
    pub fn provider(provider: Arc<dyn TokenProvider>) -> Credentials {
        Credentials::Provider(provider)
    }

    /// Credentials from a token file that may be rewritten in place (a mounted Kubernetes
    /// Secret rotates this way): see [`TokenFile`].
    ///
    /// # Errors
    /// [`Error::InvalidCredentials`] when the file cannot be read now or holds no valid token.
    pub fn token_file(path: impl Into<PathBuf>) -> Result<Credentials, Error> {
        Ok(Credentials::Provider(Arc::new(TokenFile::new(path)?)))
    }
}

/// Validates a token: trimmed, non-empty, printable ASCII (it travels in a header).
fn checked_token(token: String, what: &str) -> Result<SecretString, Error> {
    let token = secrecy::zeroize::Zeroizing::new(token);
    let trimmed = token.trim();
    if trimmed.is_empty() {
        return Err(Error::InvalidCredentials(format!("{what} is empty")));
    }
    if !trimmed.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidCredentials(format!(
            "{what} contains whitespace or non-ASCII characters"
        )));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

fn checked_app_fields(client_id: String, installation_id: u64) -> Result<String, Error> {
    let client_id = client_id.trim().to_string();
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
    Ok(client_id)
}

/// Signs the JWTs a GitHub App authenticates with, so that its private key can stay in a KMS
/// or an HSM.
///
/// The client builds the JWT and asks the signer only for the signature: the header is
/// `{"alg":"RS256","typ":"JWT"}`, the claims are `iat` (now minus 60 s, for clock skew), `exp`
/// (`iat` plus 9 minutes) and `iss` (the client id), and [`sign`](Self::sign) receives the
/// JWS signing input, `base64url(header) "." base64url(claims)`. It must return the raw
/// RS256 signature of those bytes: RSASSA-PKCS1-v1_5 over their SHA-256 digest, with the
/// App's RSA key (what a KMS calls `RSASSA_PKCS1_V1_5_SHA_256`). A JWT is signed each time an
/// installation token is needed, about once an hour per client.
///
/// The signature is a credential: the client never logs it or puts it in an error. An error
/// from the signer becomes [`Error::CredentialSource`] with the signer's message, so that
/// message must not hold secrets either.
///
/// # Example: signing with an external command
///
/// A signer that runs `openssl` (which reaches an HSM through its PKCS#11 provider when the
/// key argument is a `pkcs11:` URI):
///
/// ```no_run
/// use std::sync::Arc;
/// use actions_scaleset::{BoxError, Credentials, JwtSigner};
/// use futures::future::BoxFuture;
/// use tokio::io::AsyncWriteExt;
///
/// struct OpensslSigner {
///     key: String,
/// }
///
/// impl JwtSigner for OpensslSigner {
///     fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>> {
///         Box::pin(async move {
///             let mut child = tokio::process::Command::new("openssl")
///                 .args(["dgst", "-sha256", "-sign", &self.key])
///                 .stdin(std::process::Stdio::piped())
///                 .stdout(std::process::Stdio::piped())
///                 .spawn()?;
///             let mut stdin = child.stdin.take().ok_or("openssl has no stdin")?;
///             stdin.write_all(message).await?;
///             drop(stdin);
///             let out = child.wait_with_output().await?;
///             if !out.status.success() {
///                 return Err(format!("openssl exited with {}", out.status).into());
///             }
///             Ok(out.stdout)
///         })
///     }
/// }
///
/// # fn run() -> Result<(), actions_scaleset::Error> {
/// let signer = Arc::new(OpensslSigner { key: "pkcs11:object=github-app".into() });
/// let credentials = Credentials::github_app_with_signer("Iv1.0123456789abcdef", 42, signer)?;
/// # drop(credentials);
/// # Ok(())
/// # }
/// ```
pub trait JwtSigner: Send + Sync {
    /// Returns the RS256 signature of `message` (the JWS signing input), as raw bytes.
    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>>;
}

/// The built-in [`JwtSigner`]: an RSA private key in PEM held in memory.
pub struct PemJwtSigner {
    key: EncodingKey,
}

impl fmt::Debug for PemJwtSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PemJwtSigner([REDACTED])")
    }
}

impl PemJwtSigner {
    /// Parses an RSA private key in PEM (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`).
    ///
    /// # Errors
    /// [`Error::InvalidCredentials`] when the PEM is empty or not an RSA key.
    pub fn from_pem(private_key_pem: &str) -> Result<PemJwtSigner, Error> {
        if private_key_pem.trim().is_empty() {
            return Err(Error::InvalidCredentials(
                "the GitHub App private key is empty".into(),
            ));
        }
        if private_key_pem.contains("PUBLIC KEY-----") {
            return Err(Error::InvalidCredentials(
                "the GitHub App private key is a public key; give the private key GitHub let \
                 you download (BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)"
                    .into(),
            ));
        }
        let key = EncodingKey::from_rsa_pem(private_key_pem.as_bytes()).map_err(|e| {
            Error::InvalidCredentials(format!(
                "the GitHub App private key is not an RSA key in PEM (PKCS#1 or PKCS#8): {e}"
            ))
        })?;
        // A PEM that parses may still not sign (a public key in a private key's armour): find
        // out now, not at the first request.
        jsonwebtoken::crypto::sign(b"probe", &key, Algorithm::RS256).map_err(|e| {
            Error::InvalidCredentials(format!(
                "the GitHub App private key cannot sign (is it an RSA private key?): {e}"
            ))
        })?;
        Ok(PemJwtSigner { key })
    }
}

impl JwtSigner for PemJwtSigner {
    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>> {
        let signed = jsonwebtoken::crypto::sign(message, &self.key, Algorithm::RS256)
            .map_err(BoxError::from)
            .and_then(|b64| URL_SAFE_NO_PAD.decode(b64).map_err(BoxError::from));
        Box::pin(std::future::ready(signed))
    }
}

/// A GitHub App installation: its id and the signer of its JWTs.
#[derive(Clone)]
pub struct GitHubApp {
    client_id: String,
    installation_id: u64,
    signer: Arc<dyn JwtSigner>,
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
    pub(crate) async fn jwt(&self, now: Timestamp) -> Result<SecretString, Error> {
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
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(crate::client::to_json(&claims));
        let input = format!("{header}.{claims}");
        let signature =
            self.signer
                .sign(input.as_bytes())
                .await
                .map_err(|e| Error::CredentialSource {
                    what: "GitHub App JWT signer".into(),
                    source: Arc::from(e),
                })?;
        if signature.is_empty() {
            return Err(Error::CredentialSource {
                what: "GitHub App JWT signer".into(),
                source: Arc::from(BoxError::from("it returned an empty signature")),
            });
        }
        Ok(SecretString::from(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }
}

/// Supplies the GitHub token (a PAT, or an installation token minted elsewhere) each time a
/// client authenticates to GitHub.
///
/// The client asks when it needs a token (its first call, then each time its Actions service
/// admin token is due for refresh, about hourly, or was refused) and again, with `refused`
/// set, right after GitHub refused the token it was given (a token that rotated meanwhile);
/// a second refusal in a row is [`Error::Unauthorized`]. The token is used at once and not
/// kept. The scopes it needs: an enterprise scale set needs a PAT with
/// `manage_runners:enterprise` (an App is never installed on an enterprise); an organization
/// a PAT with `admin:org` or an App installation token with `organization_self_hosted_runners`;
/// a repository a PAT with `repo` or an App token with `administration`.
///
/// An error from the provider becomes [`Error::CredentialSource`] with its message, which must
/// not hold the token.
///
/// ```no_run
/// use std::sync::Arc;
/// use actions_scaleset::{BoxError, Client, Credentials, TokenProvider};
/// use futures::future::BoxFuture;
/// use secrecy::{ExposeSecret, SecretString};
///
/// /// Reads the token from an environment variable each time (a sidecar refreshes it).
/// struct FromEnv(&'static str);
///
/// impl TokenProvider for FromEnv {
///     fn token(&self, _refused: bool) -> BoxFuture<'_, Result<SecretString, BoxError>> {
///         Box::pin(async move {
///             let value = std::env::var(self.0).map_err(|_| format!("{} is not set", self.0))?;
///             Ok(SecretString::from(value))
///         })
///     }
/// }
///
/// # fn run() -> Result<(), actions_scaleset::Error> {
/// let credentials = Credentials::provider(Arc::new(FromEnv("VAULT_GITHUB_TOKEN")));
/// let client = Client::builder("https://github.com/my-org", credentials).build()?;
/// # drop(client);
/// # Ok(())
/// # }
/// ```
pub trait TokenProvider: Send + Sync {
    /// A token; `refused` is true when GitHub refused the one returned last.
    fn token(&self, refused: bool) -> BoxFuture<'_, Result<SecretString, BoxError>>;

    /// What this provider is, for `Debug` output and logs (never the token).
    fn describe(&self) -> String {
        "token provider".to_string()
    }
}

/// A [`TokenProvider`] reading a token file, re-read when it changes.
///
/// The file holds one token (surrounding whitespace ignored). Its content is cached with the
/// file's length and modification time, and read again when either changed or when GitHub
/// refused the cached token, so a file rotated in place (a mounted Kubernetes Secret, a file
/// an agent rewrites) is picked up at the next authentication without a restart.
pub struct TokenFile {
    path: PathBuf,
    cache: Mutex<Option<(FileStamp, SecretString)>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TokenFile {
    /// A provider reading `path`; the file is read once now, so a missing or empty file is an
    /// error at construction.
    ///
    /// # Errors
    /// [`Error::InvalidCredentials`] naming the path when it cannot be read or holds no valid
    /// token.
    pub fn new(path: impl Into<PathBuf>) -> Result<TokenFile, Error> {
        let path = path.into();
        let read = read_token_file(&path).map_err(|e| Error::InvalidCredentials(e.to_string()))?;
        Ok(TokenFile {
            path,
            cache: Mutex::new(Some(read)),
        })
    }

    /// The file read.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl TokenProvider for TokenFile {
    fn token(&self, refused: bool) -> BoxFuture<'_, Result<SecretString, BoxError>> {
        Box::pin(async move {
            let path = self.path.clone();
            let stamp = tokio::fs::metadata(&path).await.ok().map(|m| stamp_of(&m));
            if !refused {
                let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((seen, token)) = cache.as_ref()
                    && Some(*seen) == stamp
                {
                    return Ok(token.clone());
                }
            }
            let read = tokio::task::spawn_blocking(move || read_token_file(&path))
                .await
                .map_err(|e| BoxError::from(format!("reading the token file failed: {e}")))
                .and_then(|r| r);
            let (stamp, token) = match read {
                Ok(read) => read,
                Err(e) => {
                    // A file caught mid-rotation (briefly missing or empty): the token read
                    // before is still the best one, unless GitHub just refused it.
                    let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                    match cache.as_ref() {
                        Some((_, token)) if !refused => {
                            tracing::warn!(path = %self.path.display(), error = %e, "cannot read the token file; using the token read before");
                            return Ok(token.clone());
                        }
                        _ => return Err(e),
                    }
                }
            };
            if refused {
                tracing::info!(path = %self.path.display(), "GitHub refused the token; read the token file again");
            } else {
                tracing::debug!(path = %self.path.display(), "read the token file");
            }
            *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some((stamp, token.clone()));
            Ok(token)
        })
    }

    fn describe(&self) -> String {
        format!("token file {}", self.path.display())
    }
}

fn stamp_of(meta: &std::fs::Metadata) -> FileStamp {
    FileStamp {
        len: meta.len(),
        modified: meta.modified().ok(),
    }
}

fn read_token_file(path: &std::path::Path) -> Result<(FileStamp, SecretString), BoxError> {
    let text = secrecy::zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("token file {}: cannot read: {e}", path.display()))?,
    );
    let stamp = std::fs::metadata(path)
        .map(|m| stamp_of(&m))
        .map_err(|e| format!("token file {}: cannot read: {e}", path.display()))?;
    let token = checked_token(
        text.to_string(),
        &format!("the token in {}", path.display()),
    )
    .map_err(|e| match e {
        Error::InvalidCredentials(m) => BoxError::from(m),
        other => BoxError::from(other),
    })?;
    Ok((stamp, token))
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

    /// Installation token (Apps), registration token, admin connection. On failure the stored connection is left unchanged.
    async fn refresh(&self) -> Result<AdminConnection, Error> {
        tracing::debug!(config_url = %self.config.config_url, "refreshing the Actions admin token");
        let registration = match &self.credentials {
            Credentials::Token(t) => self.registration_token(t).await?,
            Credentials::App(app) => {
                let token = self.installation_token(app).await?;
                self.registration_token(&token).await?
            }
            Credentials::Provider(provider) => {
                let token = self.provided_token(provider.as_ref(), false).await?;
                match self.registration_token(&token).await {
                    Err(Error::Unauthorized(api)) => {
                        tracing::warn!(
                            status = api.status().as_u16(),
                            provider = %provider.describe(),
                            "GitHub refused the provided token; asking the provider again"
                        );
                        let token = self.provided_token(provider.as_ref(), true).await?;
                        self.registration_token(&token).await?
                    }
                    other => other?,
                }
            }
        };
        self.admin_connection(&registration).await
    }

    async fn provided_token(
        &self,
        provider: &dyn TokenProvider,
        refused: bool,
    ) -> Result<SecretString, Error> {
        let what = || format!("token provider ({})", provider.describe());
        let token = provider
            .token(refused)
            .await
            .map_err(|e| Error::CredentialSource {
                what: what(),
                source: Arc::from(e),
            })?;
        checked_token(token.expose_secret().to_string(), "the provided token").map_err(|e| {
            Error::CredentialSource {
                what: what(),
                source: Arc::from(BoxError::from(e.to_string())),
            }
        })
    }

    async fn installation_token(&self, app: &GitHubApp) -> Result<SecretString, Error> {
        let url = self.config.github_api_url(&format!(
            "/app/installations/{}/access_tokens",
            app.installation_id
        ));
        let mut req = Outgoing::new(Method::POST, url);
        req.auth = Some(Auth::BearerOwned(app.jwt(Timestamp::now()).await?));
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
        // does not fix, so only 401 (a registration token not yet
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

    /// An RSA public key given as the App key is refused when the signer is made, naming
    /// what is wrong, whatever its armour; the private keys are accepted.
    #[test]
    fn a_public_key_is_refused_when_the_signer_is_made() {
        let public = include_str!("../tests/fixtures/app_key_public.pem");
        let e = PemJwtSigner::from_pem(public).expect_err("a public key");
        assert!(matches!(e, Error::InvalidCredentials(_)), "{e}");
        assert!(e.to_string().contains("public key"), "{e}");
        let rearmoured = public.replace("PUBLIC KEY", "PRIVATE KEY");
        let e = PemJwtSigner::from_pem(&rearmoured).expect_err("a public key body");
        assert!(matches!(e, Error::InvalidCredentials(_)), "{e}");
        for private in [
            include_str!("../tests/fixtures/app_key_pkcs1.pem"),
            include_str!("../tests/fixtures/app_key_pkcs8.pem"),
        ] {
            PemJwtSigner::from_pem(private).expect("a private key signs");
        }
    }

    /// A token file rotated in place is read again; a file caught mid-rotation keeps the
    /// token read before unless GitHub refused it; no token reaches `Debug` or an error.
    #[tokio::test]
    async fn a_token_file_is_read_again_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("scaleset-tokenfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("token");
        let missing = TokenFile::new(dir.join("absent")).expect_err("no file");
        assert!(missing.to_string().contains("absent"), "{missing}");
        std::fs::write(&path, "ghp_first_secret_token\n").expect("write");
        let file = TokenFile::new(&path).expect("readable");
        let got = file.token(false).await.expect("token");
        assert_eq!(got.expose_secret(), "ghp_first_secret_token");
        // Rotated in place (another length, so the change is seen whatever the clock).
        std::fs::write(&path, "ghp_second_secret_token_longer\n").expect("rewrite");
        let got = file.token(false).await.expect("token");
        assert_eq!(got.expose_secret(), "ghp_second_secret_token_longer");
        let creds = format!("{:?}", Credentials::token_file(&path).expect("readable"));
        // Mid-rotation: the file is briefly gone.
        std::fs::remove_file(&path).expect("remove");
        let got = file.token(false).await.expect("the token read before");
        assert_eq!(got.expose_secret(), "ghp_second_secret_token_longer");
        let refused = file.token(true).await.expect_err("refused and unreadable");
        assert!(refused.to_string().contains("token"), "{refused}");
        std::fs::write(&path, "   \n").expect("empty");
        let empty = file.token(true).await.expect_err("empty file");
        for text in [
            format!("{file:?}"),
            creds,
            refused.to_string(),
            empty.to_string(),
        ] {
            assert!(!text.contains("secret_token"), "{text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

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
