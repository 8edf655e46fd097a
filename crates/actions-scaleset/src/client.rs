//! The [`Client`]: every REST operation of the scale set API.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretSlice};
use serde::Serialize;
use url::Url;

use crate::auth::{AdminConnection, Authenticator, Credentials};
use crate::config::{GitHubConfig, parse_github_config_from_url};
use crate::error::{ApiError, Error, Result};
use crate::ids::{RunnerGroupId, RunnerId, ScaleSetId};
use crate::transport::{Auth, Incoming, Outgoing, RetryPolicy, Transport, tenant_url};
use crate::types::{
    AcquirableJobList, JitRunnerConfig, JitRunnerSetting, Label, ListResponse, RunnerGroup,
    RunnerReference, RunnerScaleSet, RunnerScaleSetUpdate, SystemInfo,
};

/// What a [`Client`] was built with, for diagnostics (no secrets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DebugInfo {
    /// Whether an explicit proxy was configured, or a proxy environment variable is set.
    pub has_proxy: bool,
    /// Whether extra root CAs were configured.
    pub has_root_ca: bool,
    /// Whether TLS verification is disabled.
    pub insecure_skip_tls_verify: bool,
    /// Whether the caller supplied its own HTTP client.
    pub custom_http_client: bool,
    /// Whether a TLS client certificate is presented (mutual TLS).
    pub has_client_certificate: bool,
    /// The `User-Agent` sent.
    pub user_agent: String,
}

/// How long an idle pooled HTTP connection is kept for reuse by default: 20 s. A busy scale
/// set reuses its connection at once (each long poll follows the last), so what stays idle
/// longer is left from a burst (a daemon starting hundreds of scale sets opens a connection
/// for each of their set-up calls, HTTP/1.1 cannot share them) and would otherwise hold a
/// descriptor each for minutes.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Builds a [`Client`]; see [`Client::builder`].
#[must_use]
pub struct ClientBuilder {
    config_url: String,
    credentials: Credentials,
    system_info: SystemInfo,
    retry: RetryPolicy,
    timeout: Duration,
    pool_idle_timeout: Duration,
    root_cas: Vec<Vec<u8>>,
    insecure: bool,
    proxy: Option<String>,
    http: Option<reqwest::Client>,
    client_identity: Option<ClientIdentity>,
}

/// A TLS client certificate chain and its private key, both PEM.
struct ClientIdentity {
    cert_pem: Vec<u8>,
    key_pem: SecretSlice<u8>,
}

impl ClientIdentity {
    /// Checks both PEMs and builds reqwest's identity, with errors that say which half is
    /// wrong and never quote the key.
    fn to_reqwest(&self) -> Result<reqwest::Identity> {
        let bad = |m: &str| Error::InvalidClientConfig(m.to_string());
        let certs = reqwest::Certificate::from_pem_bundle(&self.cert_pem)
            .map_err(|e| bad(&format!("cannot read the client certificate PEM: {e}")))?;
        if certs.is_empty() || !contains(&self.cert_pem, b"-----BEGIN CERTIFICATE-----") {
            return Err(bad("the client certificate PEM holds no certificate"));
        }
        let key = self.key_pem.expose_secret();
        if contains(key, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(bad(
                "the client key is encrypted; give it decrypted (e.g. `openssl pkey -in KEY`)",
            ));
        }
        if !contains(key, b"PRIVATE KEY-----") {
            return Err(bad(
                "the client key PEM holds no private key (PKCS#8, PKCS#1 RSA or SEC1 EC)",
            ));
        }
        let mut both = secrecy::zeroize::Zeroizing::new(self.cert_pem.clone());
        both.push(b'\n');
        both.extend_from_slice(key);
        reqwest::Identity::from_pem(&both).map_err(|e| {
            bad(&format!(
                "cannot use the client certificate and key: {}",
                crate::error::chain(&e)
            ))
        })
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl ClientBuilder {
    /// Who is calling, sent as the JSON `User-Agent`.
    pub fn system_info(mut self, info: SystemInfo) -> Self {
        self.system_info = info;
        self
    }

    /// Retries after the first attempt (default 4; 0 disables retries).
    pub fn retry_max(mut self, retries: u32) -> Self {
        self.retry.max_retries = retries;
        self
    }

    /// Longest wait between attempts, also the ceiling on `Retry-After` (default 30 s).
    pub fn retry_wait_max(mut self, wait: Duration) -> Self {
        self.retry.wait_max = wait;
        self
    }

    /// First wait between attempts, doubled on each retry (default 1 s).
    pub fn retry_wait_min(mut self, wait: Duration) -> Self {
        self.retry.wait_min = wait;
        self
    }

    /// Timeout of each attempt (default 5 minutes; a long poll lasts about 50 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long an idle pooled connection is kept for reuse (default
    /// [`DEFAULT_POOL_IDLE_TIMEOUT`]). Only applies to the HTTP client this builder makes.
    pub fn pool_idle_timeout(mut self, idle: Duration) -> Self {
        self.pool_idle_timeout = idle;
        self
    }

    /// Trusts the certificates of a PEM bundle in addition to the system roots. An
    /// intermediate certificate is accepted as a trust anchor.
    pub fn root_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_cas.push(pem.into());
        self
    }

    /// Presents a TLS client certificate (mutual TLS) on every connection: to the GitHub API,
    /// the Actions service and the message queue. `cert_chain_pem` holds the certificate,
    /// optionally followed by its intermediates; `key_pem` its private key (PKCS#8, PKCS#1 RSA
    /// or SEC1 EC, unencrypted). Both are checked by [`build`](Self::build); the key is held as
    /// a secret and never printed.
    ///
    /// ```no_run
    /// use actions_scaleset::{Client, Credentials};
    ///
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = Client::builder("https://ghes.example.com/my-org", Credentials::token("ghp_x")?)
    ///     .client_certificate_pem(
    ///         std::fs::read("/etc/scaleset/client.crt")?,
    ///         std::fs::read("/etc/scaleset/client.key")?,
    ///     )
    ///     .build()?;
    /// assert!(client.debug_info().has_client_certificate);
    /// # Ok(())
    /// # }
    /// ```
    pub fn client_certificate_pem(
        mut self,
        cert_chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_identity = Some(ClientIdentity {
            cert_pem: cert_chain_pem.into(),
            key_pem: SecretSlice::from(key_pem.into()),
        });
        self
    }

    /// Disables TLS certificate verification. Only for tests against self-signed servers.
    pub fn insecure_skip_tls_verify(mut self, skip: bool) -> Self {
        self.insecure = skip;
        self
    }

    /// Sends every request through this proxy (`http://`, `https://` or `socks5://` URL). By
    /// default `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` are honoured.
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = Some(url.into());
        self
    }

    /// Uses a caller-built HTTP client (its TLS and proxy settings replace the ones above;
    /// retries and timeouts stay this builder's).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Validates everything and builds the client. Sends no request.
    ///
    /// # Errors
    /// [`Error::InvalidConfigUrl`] for a bad URL, [`Error::InvalidClientConfig`] for a bad CA
    /// bundle, client certificate or key, or proxy URL, or a client certificate together with
    /// a caller-supplied HTTP client (configure it on that client instead).
    pub fn build(self) -> Result<Client> {
        let config = parse_github_config_from_url(&self.config_url)?;
        let custom = self.http.is_some();
        if custom && self.client_identity.is_some() {
            return Err(Error::InvalidClientConfig(
                "a client certificate cannot be added to a caller-supplied HTTP client; \
                 give it to that client (reqwest::ClientBuilder::identity) instead"
                    .into(),
            ));
        }
        let env_proxy = [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
        let http = match self.http {
            Some(http) => http,
            None => {
                // No default `Accept: */*`: the reference sends no Accept header, and the
                // message poll sets its own.
                let mut b = reqwest::Client::builder()
                    .default_headers(http::HeaderMap::new())
                    .connect_timeout(Duration::from_secs(30))
                    .pool_idle_timeout(self.pool_idle_timeout)
                    .tcp_keepalive(Duration::from_secs(30));
                if !self.root_cas.is_empty() {
                    let mut certs = Vec::new();
                    for pem in &self.root_cas {
                        let bundle = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                            Error::InvalidClientConfig(format!("cannot read a root CA PEM: {e}"))
                        })?;
                        if bundle.is_empty() {
                            return Err(Error::InvalidClientConfig(
                                "a root CA PEM holds no certificate".into(),
                            ));
                        }
                        certs.extend(bundle);
                    }
                    b = b.tls_certs_merge(certs);
                }
                if self.insecure {
                    b = b.tls_danger_accept_invalid_certs(true);
                }
                if let Some(identity) = &self.client_identity {
                    b = b.identity(identity.to_reqwest()?);
                }
                if let Some(proxy) = &self.proxy {
                    let p = reqwest::Proxy::all(proxy.as_str()).map_err(|e| {
                        Error::InvalidClientConfig(format!("invalid proxy URL: {e}"))
                    })?;
                    b = b.proxy(p);
                }
                b.build().map_err(|e| {
                    Error::InvalidClientConfig(format!("cannot build the HTTP client: {e}"))
                })?
            }
        };
        let ua = self.system_info.user_agent();
        let transport = Arc::new(Transport::new(http, self.retry, self.timeout, ua));
        let debug = DebugFlags {
            has_proxy: self.proxy.is_some() || (env_proxy && !custom),
            has_root_ca: !self.root_cas.is_empty(),
            insecure: self.insecure,
            custom,
            client_certificate: self.client_identity.is_some(),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                auth: Arc::new(Authenticator::new(
                    config,
                    self.credentials,
                    transport.clone(),
                )),
                transport,
                system_info: RwLock::new(self.system_info),
                debug,
            }),
        })
    }
}

#[derive(Debug)]
struct DebugFlags {
    has_proxy: bool,
    has_root_ca: bool,
    insecure: bool,
    custom: bool,
    client_certificate: bool,
}

/// A client of the scale set API.
///
/// Cheap to clone (an `Arc` inside), `Send + Sync`; calls run concurrently. The only shared
/// lock guards the admin-token cache and is never held across a request.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    auth: Arc<Authenticator>,
    transport: Arc<Transport>,
    system_info: RwLock<SystemInfo>,
    debug: DebugFlags,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config_url", &self.inner.auth.config.config_url.as_str())
            .field("credentials", &self.inner.auth.credentials)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts building a client for a config URL (repository, organization or enterprise).
    pub fn builder(config_url: impl Into<String>, credentials: Credentials) -> ClientBuilder {
        ClientBuilder {
            config_url: config_url.into(),
            credentials,
            system_info: SystemInfo::default(),
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(300),
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            root_cas: Vec::new(),
            insecure: false,
            proxy: None,
            http: None,
            client_identity: None,
        }
    }

    /// The parsed config URL.
    pub fn config(&self) -> &GitHubConfig {
        &self.inner.auth.config
    }

    /// The system info currently sent as `User-Agent`.
    pub fn system_info(&self) -> SystemInfo {
        self.inner
            .system_info
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the system info; later requests (of this client and of its session clients)
    /// carry the new `User-Agent`.
    pub fn set_system_info(&self, info: SystemInfo) {
        self.inner.transport.set_user_agent(info.user_agent());
        *self
            .inner
            .system_info
            .write()
            .unwrap_or_else(|e| e.into_inner()) = info;
    }

    /// What the client was built with (proxy, custom CA, client certificate, TLS
    /// verification), without secrets.
    pub fn debug_info(&self) -> DebugInfo {
        let d = &self.inner.debug;
        DebugInfo {
            has_proxy: d.has_proxy,
            has_root_ca: d.has_root_ca,
            insecure_skip_tls_verify: d.insecure,
            custom_http_client: d.custom,
            has_client_certificate: d.client_certificate,
            user_agent: self.inner.transport.user_agent().to_string(),
        }
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    pub(crate) async fn admin(&self, stale: Option<u64>) -> Result<Arc<AdminConnection>> {
        self.inner.auth.connection(stale).await
    }

    /// Sends a tenant call with the admin token; a 401 forces one token refresh and one retry.
    pub(crate) async fn tenant(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Incoming> {
        self.tenant_call(method, path, query, body, false).await
    }

    /// [`tenant`](Self::tenant) for calls whose success answer carries credentials (JIT
    /// configs, session tokens): errors built from it keep no body excerpt.
    pub(crate) async fn tenant_call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
        sensitive: bool,
    ) -> Result<Incoming> {
        let mut conn = self.admin(None).await?;
        let mut refreshed = false;
        loop {
            let url = tenant_url(&conn.tenant_url, path, query);
            let mut req = Outgoing::new(method.clone(), url);
            req.auth = Some(Auth::Bearer(&conn.token));
            req.content_type = Some("application/json");
            req.body = body.clone();
            req.sensitive_response = sensitive;
            let resp = self.inner.transport.send(req).await?;
            if resp.status == StatusCode::UNAUTHORIZED && refreshed {
                return Err(Error::Unauthorized(Box::new(resp.api_error())));
            }
            if resp.status == StatusCode::UNAUTHORIZED && !refreshed {
                tracing::warn!(
                    method = %method,
                    path,
                    "the Actions service refused the admin token; refreshing it and retrying once"
                );
                refreshed = true;
                conn = self.admin(Some(conn.generation)).await?;
                continue;
            }
            return Ok(resp);
        }
    }

    /// The tenant URL of the admin connection (fetching it if needed).
    pub(crate) async fn tenant_base(&self) -> Result<Url> {
        Ok(self.admin(None).await?.tenant_url.clone())
    }

    /// Finds a scale set by name in a runner group; `None` when there is none.
    ///
    /// # Errors
    /// [`Error::Protocol`] when several scale sets have that name or the answer's `count`
    /// disagrees with its `value`.
    pub async fn get_runner_scale_set(
        &self,
        runner_group_id: RunnerGroupId,
        name: &str,
    ) -> Result<Option<RunnerScaleSet>> {
        let gid = runner_group_id.to_string();
        let resp = self
            .tenant(
                Method::GET,
                "/_apis/runtime/runnerscalesets",
                &[("runnerGroupId", &gid), ("name", name)],
                None,
            )
            .await?
            .expect_status(StatusCode::OK)?;
        let list: ListResponse<RunnerScaleSet> = resp.json()?;
        at_most_one(
            list,
            &resp,
            &format!("runner scale sets found with name {name:?}"),
        )
    }

    /// Lists the scale sets of a runner group.
    pub async fn list_runner_scale_sets(
        &self,
        runner_group_id: RunnerGroupId,
    ) -> Result<Vec<RunnerScaleSet>> {
        let gid = runner_group_id.to_string();
        let resp = self
            .tenant(
                Method::GET,
                "/_apis/runtime/runnerscalesets",
                &[("runnerGroupId", &gid)],
                None,
            )
            .await?
            .expect_status(StatusCode::OK)?;
        let list: ListResponse<RunnerScaleSet> = resp.json()?;
        checked_list(list, &resp)
    }

    /// Lists the jobs offered to a scale set and not yet acquired (the reference's
    /// `GetAcquirableJobs`): `GET .../runnerscalesets/{id}/acquirablejobs` with the admin
    /// token. A 204 answer is an empty list.
    ///
    /// Only GHES offers jobs before assigning them; acquire the ones you will serve with
    /// [`MessageSessionClient::acquire_jobs`](crate::MessageSessionClient::acquire_jobs). On
    /// github.com the list is normally empty.
    ///
    /// ```no_run
    /// # async fn run(client: actions_scaleset::Client) -> Result<(), actions_scaleset::Error> {
    /// let list = client.get_acquirable_jobs(actions_scaleset::ScaleSetId::new(7)).await?;
    /// for job in &list.jobs {
    ///     println!("{} wants {:?}", job.base.runner_request_id, job.base.request_labels);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::ScaleSetNotFound`] on 404; [`Error::Protocol`] when the answer's `count`
    /// (when present) disagrees with its `value`.
    pub async fn get_acquirable_jobs(&self, scale_set_id: ScaleSetId) -> Result<AcquirableJobList> {
        let resp = self
            .tenant(
                Method::GET,
                &format!("/_apis/runtime/runnerscalesets/{scale_set_id}/acquirablejobs"),
                &[],
                None,
            )
            .await?;
        if resp.status == StatusCode::NO_CONTENT {
            return Ok(AcquirableJobList::default());
        }
        let resp = expect_scale_set(resp, StatusCode::OK)?;
        let list: ListResponse<crate::types::JobAvailable> = resp.json()?;
        let jobs = checked_list(list, &resp)?;
        Ok(AcquirableJobList {
            count: jobs.len() as i64,
            jobs,
        })
    }

    /// Gets a scale set by id; `None` when the service answers `null`.
    ///
    /// # Errors
    /// [`Error::ScaleSetNotFound`] on 404.
    pub async fn get_runner_scale_set_by_id(
        &self,
        id: ScaleSetId,
    ) -> Result<Option<RunnerScaleSet>> {
        let resp = self
            .tenant(
                Method::GET,
                &format!("/_apis/runtime/runnerscalesets/{id}"),
                &[],
                None,
            )
            .await?;
        let resp = expect_scale_set(resp, StatusCode::OK)?;
        resp.json()
    }

    /// Creates a scale set. Its labels follow [`scale_set_labels`](crate::scale_set_labels):
    /// the name first, then the given labels without case-insensitive duplicates; every label
    /// without a type gets `System`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (no request sent) when the scale set has neither a name nor
    /// a label.
    pub async fn create_runner_scale_set(
        &self,
        scale_set: &RunnerScaleSet,
    ) -> Result<RunnerScaleSet> {
        let mut body = scale_set.clone();
        if !body.name.trim().is_empty() {
            body.labels = crate::types::scale_set_labels(&body.name, body.labels);
        } else if body.labels.is_empty() {
            return Err(Error::InvalidArgument(
                "runner scale set must have a name or at least one label".into(),
            ));
        }
        default_label_types(&mut body.labels);
        let resp = self
            .tenant(
                Method::POST,
                "/_apis/runtime/runnerscalesets",
                &[],
                Some(to_json(&body)),
            )
            .await?;
        if resp.status == StatusCode::CONFLICT && resp.attempts > 1 && !body.name.is_empty() {
            // An earlier attempt may have created it before its answer was lost.
            if let Some(existing) = self
                .get_runner_scale_set(
                    body.runner_group_id
                        .max(crate::types::DEFAULT_RUNNER_GROUP_ID),
                    &body.name,
                )
                .await?
            {
                tracing::warn!(name = %body.name, id = existing.id.get(), "a retried create met a conflict; the scale set exists, returning it");
                return Ok(existing);
            }
        }
        resp.expect_status(StatusCode::OK)?.json()
    }

    /// Updates the given fields of a scale set.
    pub async fn update_runner_scale_set(
        &self,
        id: ScaleSetId,
        update: &RunnerScaleSetUpdate,
    ) -> Result<RunnerScaleSet> {
        let mut body = update.clone();
        if let Some(labels) = body.labels.as_mut() {
            default_label_types(labels);
        }
        let resp = self
            .tenant(
                Method::PATCH,
                &format!("/_apis/runtime/runnerscalesets/{id}"),
                &[],
                Some(to_json(&body)),
            )
            .await?;
        expect_scale_set(resp, StatusCode::OK)?.json()
    }

    /// Deletes a scale set.
    pub async fn delete_runner_scale_set(&self, id: ScaleSetId) -> Result<()> {
        let resp = self
            .tenant(
                Method::DELETE,
                &format!("/_apis/runtime/runnerscalesets/{id}"),
                &[],
                None,
            )
            .await?;
        expect_scale_set(resp, StatusCode::NO_CONTENT).map(drop)
    }

    /// Finds a runner group by name.
    ///
    /// # Errors
    /// [`Error::RunnerGroupNotFound`] when no group has that name. Callers usually skip this
    /// call for [`DEFAULT_RUNNER_GROUP`](crate::DEFAULT_RUNNER_GROUP), whose id is 1.
    pub async fn get_runner_group_by_name(&self, name: &str) -> Result<RunnerGroup> {
        let resp = self
            .tenant(
                Method::GET,
                "/_apis/runtime/runnergroups/",
                &[("groupName", name)],
                None,
            )
            .await?
            .expect_status(StatusCode::OK)?;
        let list: ListResponse<RunnerGroup> = resp.json()?;
        match at_most_one(
            list,
            &resp,
            &format!("runner group found with name {name:?}"),
        )? {
            Some(group) => Ok(group),
            None => Err(Error::RunnerGroupNotFound(Box::new(
                resp.api_error()
                    .with_detail(format!("no runner group found with name {name:?}")),
            ))),
        }
    }

    /// Registers a just-in-time runner in a scale set and returns its config.
    ///
    /// # Errors
    /// [`Error::RunnerExists`] when a runner with that name exists.
    pub async fn generate_jit_runner_config(
        &self,
        scale_set_id: ScaleSetId,
        setting: &JitRunnerSetting,
    ) -> Result<JitRunnerConfig> {
        let path = format!("/_apis/runtime/runnerscalesets/{scale_set_id}/generatejitconfig");
        let body = to_json(setting);
        let resp = self
            .tenant_call(Method::POST, &path, &[], Some(body.clone()), true)
            .await?;
        if resp.status == StatusCode::CONFLICT
            && resp.attempts > 1
            && let Some(orphan) = self.get_runner_by_name(&setting.name).await?
            && orphan.runner_scale_set_id == scale_set_id
        {
            // An earlier attempt registered the runner before its answer was lost: nobody
            // holds that runner's config, so remove it and mint a fresh one.
            tracing::warn!(runner = %setting.name, "a retried JIT request met its own runner; removing it and minting again");
            self.remove_runner(orphan.id).await?;
            let again = self
                .tenant_call(Method::POST, &path, &[], Some(body), true)
                .await?;
            return expect_scale_set(again, StatusCode::OK)?.json();
        }
        expect_scale_set(resp, StatusCode::OK)?.json()
    }

    /// Gets a runner by id.
    ///
    /// # Errors
    /// [`Error::RunnerNotFound`] when the service does not know it.
    pub async fn get_runner(&self, runner_id: RunnerId) -> Result<RunnerReference> {
        let resp = self
            .tenant(
                Method::GET,
                &format!("/_apis/distributedtask/pools/0/agents/{runner_id}"),
                &[],
                None,
            )
            .await?;
        if resp.status == StatusCode::NOT_FOUND {
            return Err(not_found_as(resp, Error::RunnerNotFound));
        }
        resp.expect_status(StatusCode::OK)?.json()
    }

    /// Finds a runner by name; `None` when there is none.
    pub async fn get_runner_by_name(&self, name: &str) -> Result<Option<RunnerReference>> {
        let resp = self
            .tenant(
                Method::GET,
                "/_apis/distributedtask/pools/0/agents",
                &[("agentName", name)],
                None,
            )
            .await?
            .expect_status(StatusCode::OK)?;
        let list: ListResponse<RunnerReference> = resp.json()?;
        at_most_one(list, &resp, &format!("runners found with name {name:?}"))
    }

    /// Every runner registered in the tenant's runner pool (the runners of every scale set
    /// this config URL reaches), with the scale set each belongs to. An autoscaler uses it
    /// to find registrations it has no record of (a mint whose answer was lost still
    /// registered its runner) by the scale set id and its runners' name prefix.
    ///
    /// ```no_run
    /// # async fn run(client: actions_scaleset::Client) -> Result<(), actions_scaleset::Error> {
    /// let set = actions_scaleset::ScaleSetId::new(7);
    /// for r in client.list_runners().await?.iter().filter(|r| r.runner_scale_set_id == set) {
    ///     println!("{} ({})", r.name, r.id);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// When the call fails or the answer cannot be read.
    pub async fn list_runners(&self) -> Result<Vec<RunnerReference>> {
        let resp = self
            .tenant(
                Method::GET,
                "/_apis/distributedtask/pools/0/agents",
                &[],
                None,
            )
            .await?
            .expect_status(StatusCode::OK)?;
        let list: ListResponse<RunnerReference> = resp.json()?;
        Ok(list.value)
    }

    /// Removes a runner. Idempotent: a runner the service no longer has is not an error, and
    /// the answer says which case it was.
    ///
    /// The service usually answers 204 for a runner it does not have as well, so
    /// [`RunnerRemoval::Removed`] means "the service no longer has it";
    /// [`RunnerRemoval::AlreadyGone`] is returned when the service said explicitly that it
    /// did not know the runner (404 `AgentNotFoundException`).
    ///
    /// ```no_run
    /// use actions_scaleset::{Client, RunnerId, RunnerRemoval};
    ///
    /// # async fn run(client: Client) -> Result<(), actions_scaleset::Error> {
    /// match client.remove_runner(RunnerId::new(42)).await? {
    ///     RunnerRemoval::Removed => println!("removed"),
    ///     RunnerRemoval::AlreadyGone => println!("it was already gone"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::JobStillRunning`] when the runner is running a job (try again later).
    pub async fn remove_runner(&self, runner_id: RunnerId) -> Result<RunnerRemoval> {
        let resp = self
            .tenant(
                Method::DELETE,
                &format!("/_apis/distributedtask/pools/0/agents/{runner_id}"),
                &[],
                None,
            )
            .await?;
        match resp.expect_status(StatusCode::NO_CONTENT) {
            Ok(_) => Ok(RunnerRemoval::Removed),
            Err(Error::RunnerNotFound(_)) => Ok(RunnerRemoval::AlreadyGone),
            Err(e) => Err(e),
        }
    }
}

/// What [`Client::remove_runner`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunnerRemoval {
    /// The service removed the runner, or answered as if it had (it answers 204 for a runner
    /// it does not have too).
    Removed,
    /// The service said it did not know the runner (404 `AgentNotFoundException`): someone
    /// removed it earlier, or the runner id is wrong.
    AlreadyGone,
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("wire types have string keys and always serialize")
}

fn default_label_types(labels: &mut [Label]) {
    for label in labels {
        if label.kind.is_empty() {
            label.kind = "System".to_string();
        }
    }
}

/// Like [`Incoming::expect_status`], but a bare 404 on a scale-set path means the scale set is gone.
fn expect_scale_set(resp: Incoming, expected: StatusCode) -> Result<Incoming> {
    if resp.status == StatusCode::NOT_FOUND {
        return Err(not_found_as(resp, Error::ScaleSetNotFound));
    }
    resp.expect_status(expected)
}

/// The error of a 404 answer: a known exception keeps its own kind, anything else becomes
/// `kind` (the thing the path names is gone).
pub(crate) fn not_found_as(resp: Incoming, kind: fn(Box<ApiError>) -> Error) -> Error {
    match resp.into_error() {
        Error::UnexpectedStatus(api) | Error::Service(api) => kind(api),
        other => other,
    }
}

pub(crate) fn checked_list<T>(list: ListResponse<T>, resp: &Incoming) -> Result<Vec<T>> {
    if let Some(count) = list.count
        && count != list.value.len() as i64
    {
        return Err(Error::Protocol {
            response: Some(Box::new(resp.api_error())),
            message: format!(
                "the list answer says count {count} but holds {} item(s)",
                list.value.len()
            ),
        });
    }
    Ok(list.value)
}

fn at_most_one<T>(list: ListResponse<T>, resp: &Incoming, what: &str) -> Result<Option<T>> {
    let mut items = checked_list(list, resp)?;
    match items.len() {
        0 => Ok(None),
        1 => Ok(items.pop()),
        n => Err(Error::Protocol {
            response: Some(Box::new(resp.api_error())),
            // "multiple runner scale sets found with name ..." as in the reference's text.
            message: format!("multiple {what} ({n} of them)"),
        }),
    }
}
