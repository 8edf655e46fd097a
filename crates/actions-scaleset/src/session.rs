//! Message sessions: the long-poll queue through which a scale set learns its demand.
//!
//! A [`MessageSessionClient`] owns one session of one scale set. It is cheap to clone and every
//! method takes `&self`: no lock is held across a request, so an acknowledgement or an acquire
//! from one task proceeds while another task's long poll is in flight. A 401 on a queue or
//! acquire call refreshes the session once (single flight: concurrent 401s cause one refresh)
//! and retries once; a second 401 is [`Error::MessageQueueTokenExpired`].

use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::header::HeaderName;
use http::{Method, StatusCode};
use secrecy::ExposeSecret;
use url::Url;
use uuid::Uuid;

use crate::client::{Client, checked_list, not_found_as, to_json};
use crate::error::{Error, Result};
use crate::ids::{MessageId, RunnerRequestId, ScaleSetId};
use crate::message::{Envelope, RunnerScaleSetMessage, parse_envelope};
use crate::transport::{Auth, Incoming, Outgoing, set_sorted_query};
use crate::types::{ListResponse, RunnerScaleSetSession};

/// How long [`MessageSessionClient::close`] waits for the service, whatever the caller's state.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The shortest per-attempt timeout of a long poll.
const MIN_POLL_TIMEOUT: Duration = Duration::from_secs(90);

const MAX_CAPACITY_HEADER: HeaderName = HeaderName::from_static("x-scalesetmaxcapacity");

struct SessionState {
    session: RunnerScaleSetSession,
    queue_url: Url,
    generation: u64,
}

struct SessionInner {
    client: Client,
    scale_set_id: ScaleSetId,
    owner: String,
    state: RwLock<Arc<SessionState>>,
    refresh: tokio::sync::Mutex<()>,
}

/// A message session of one scale set.
#[derive(Clone)]
pub struct MessageSessionClient {
    inner: Arc<SessionInner>,
}

impl std::fmt::Debug for MessageSessionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageSessionClient")
            .field("scale_set_id", &self.inner.scale_set_id)
            .field("owner", &self.inner.owner)
            .field("session_id", &self.session_id())
            .finish_non_exhaustive()
    }
}

/// The default session owner: this machine's host name (a random UUID when it has none).
pub fn default_owner() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| Uuid::new_v4().to_string())
}

impl Client {
    /// Creates a message session for a scale set and returns its client. `owner` defaults to
    /// the host name.
    ///
    /// # Errors
    /// [`Error::SessionConflict`] when another client holds the scale set's session,
    /// [`Error::ScaleSetNotFound`] when the scale set is gone, [`Error::Protocol`] when the
    /// service returns a session without a queue URL or token.
    pub async fn create_message_session_client(
        &self,
        scale_set_id: ScaleSetId,
        owner: Option<&str>,
    ) -> Result<MessageSessionClient> {
        let owner = owner.map(str::to_string).unwrap_or_else(default_owner);
        let state = create_session(self, scale_set_id, &owner, 0).await?;
        Ok(MessageSessionClient {
            inner: Arc::new(SessionInner {
                client: self.clone(),
                scale_set_id,
                owner,
                state: RwLock::new(Arc::new(state)),
                refresh: tokio::sync::Mutex::new(()),
            }),
        })
    }
}

async fn create_session(
    client: &Client,
    scale_set_id: ScaleSetId,
    owner: &str,
    generation: u64,
) -> Result<SessionState> {
    // A struct, not `json!` (which sorts keys): the body matches the reference byte for byte,
    // `{"sessionId":"00000000-0000-0000-0000-000000000000","ownerName":"<owner>"}`.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct CreateSession<'a> {
        session_id: Uuid,
        owner_name: &'a str,
    }
    let body = CreateSession {
        session_id: Uuid::nil(),
        owner_name: owner,
    };
    let resp = client
        .tenant_call(
            Method::POST,
            &format!("/_apis/runtime/runnerscalesets/{scale_set_id}/sessions"),
            &[],
            Some(to_json(&body)),
            true,
        )
        .await?;
    if resp.status == StatusCode::NOT_FOUND {
        return Err(not_found_as(resp, Error::ScaleSetNotFound));
    }
    let resp = resp.expect_status(StatusCode::OK)?;
    validated(&resp, resp.json()?, generation)
}

fn validated(
    resp: &Incoming,
    session: RunnerScaleSetSession,
    generation: u64,
) -> Result<SessionState> {
    let protocol =
        |message: String| Error::InvalidSession(Box::new(resp.api_error().with_detail(message)));
    if session.session_id.is_nil() {
        return Err(protocol(
            "the service returned a session without an id".into(),
        ));
    }
    if session.message_queue_url.trim().is_empty() {
        return Err(protocol(
            "the service returned a session without a message queue URL".into(),
        ));
    }
    if session
        .message_queue_access_token
        .expose_secret()
        .is_empty()
    {
        return Err(protocol(
            "the service returned a session without a message queue token".into(),
        ));
    }
    let queue_url = Url::parse(session.message_queue_url.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| protocol("the session's message queue URL is not an http(s) URL".into()))?;
    Ok(SessionState {
        session,
        queue_url,
        generation,
    })
}

impl MessageSessionClient {
    fn state(&self) -> Arc<SessionState> {
        self.inner
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn replace(&self, state: SessionState) {
        *self.inner.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(state);
    }

    /// A snapshot of the current session.
    pub fn session(&self) -> RunnerScaleSetSession {
        self.state().session.clone()
    }

    /// The current session id.
    pub fn session_id(&self) -> Uuid {
        self.state().session.session_id
    }

    /// The scale set this session belongs to.
    pub fn scale_set_id(&self) -> ScaleSetId {
        self.inner.scale_set_id
    }

    /// The owner name the session was created with.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The client this session was created from.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Refreshes the session (new queue token) unless another task already did since
    /// `seen_generation`.
    async fn refresh(&self, seen_generation: u64) -> Result<()> {
        let _guard = self.inner.refresh.lock().await;
        let current = self.state();
        if current.generation != seen_generation {
            return Ok(());
        }
        let id = current.session.session_id;
        let resp = self
            .inner
            .client
            .tenant_call(
                Method::PATCH,
                &format!(
                    "/_apis/runtime/runnerscalesets/{}/sessions/{id}",
                    self.inner.scale_set_id
                ),
                &[],
                None,
                true,
            )
            .await?;
        if resp.status == StatusCode::NOT_FOUND {
            let api = resp
                .api_error()
                .with_detail("failed to refresh message session");
            return Err(Error::SessionNotFound(Box::new(api)));
        }
        if resp.status != StatusCode::OK {
            let api = resp
                .api_error()
                .with_detail("failed to refresh message session");
            return Err(Error::from_response(api));
        }
        let state = validated(&resp, resp.json()?, current.generation + 1)?;
        tracing::info!(scale_set_id = self.inner.scale_set_id.get(), session_id = %state.session.session_id, "refreshed the message session");
        self.replace(state);
        Ok(())
    }

    /// Replaces a lost session with a new one (the old one is deleted first, best effort, so
    /// that a half-alive old session cannot conflict with the new one).
    ///
    /// # Errors
    /// As [`Client::create_message_session_client`].
    pub async fn recreate(&self) -> Result<()> {
        let seen = self.generation();
        self.recreate_if_current(seen).await
    }

    /// The generation of the current session state (bumped by every refresh or re-creation).
    pub(crate) fn generation(&self) -> u64 {
        self.state().generation
    }

    /// [`recreate`](Self::recreate) unless another task already replaced or refreshed the
    /// session since the caller saw `seen_generation` fail.
    pub(crate) async fn recreate_if_current(&self, seen_generation: u64) -> Result<()> {
        let _guard = self.inner.refresh.lock().await;
        let old = self.state();
        if old.generation != seen_generation {
            return Ok(());
        }
        if let Err(e) = self.delete_session(old.session.session_id).await {
            tracing::debug!(error = %e, "could not delete the old session before re-creating it");
        }
        let state = create_session(
            &self.inner.client,
            self.inner.scale_set_id,
            &self.inner.owner,
            old.generation + 1,
        )
        .await?;
        tracing::info!(scale_set_id = self.inner.scale_set_id.get(), session_id = %state.session.session_id, "created a new message session");
        self.replace(state);
        Ok(())
    }

    /// Sends a queue-token request built by `build`, refreshing the session once on 401.
    async fn with_queue_token(
        &self,
        build: impl Fn(&SessionState, Url) -> Result<Outgoing<'_>>,
        tenant: bool,
    ) -> Result<Incoming> {
        let mut refreshed = false;
        loop {
            let state = self.state();
            let base = if tenant {
                self.inner.client.tenant_base().await?
            } else {
                state.queue_url.clone()
            };
            let mut req = build(&state, base)?;
            req.auth = Some(Auth::Bearer(&state.session.message_queue_access_token));
            let resp = self.inner.client.transport().send(req).await?;
            if resp.status == StatusCode::UNAUTHORIZED {
                if !refreshed {
                    tracing::info!(
                        scale_set_id = self.inner.scale_set_id.get(),
                        "message queue token refused; refreshing the session"
                    );
                    refreshed = true;
                    self.refresh(state.generation).await?;
                    continue;
                }
                return Err(Error::MessageQueueTokenExpired(Box::new(resp.api_error())));
            }
            return Ok(resp);
        }
    }

    /// Long-polls the queue for the next message; `None` when the poll ended without one (202).
    ///
    /// `last_message_id` (when > 0) is the id of the last message handled; `max_capacity` is how
    /// many more runners the caller can start (sent as `X-ScaleSetMaxCapacity`, so the service
    /// does not assign more jobs than the scale set can take).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (nothing sent) for a negative or over-large capacity;
    /// [`Error::SessionNotFound`] when the session is gone; [`Error::UnsupportedMessage`] for an
    /// envelope of an unknown type (acknowledge it by its id); [`Error::Decode`] for a body that
    /// is not a message.
    pub async fn get_message(
        &self,
        last_message_id: MessageId,
        max_capacity: i64,
    ) -> Result<Option<RunnerScaleSetMessage>> {
        if !(0..=i64::from(i32::MAX)).contains(&max_capacity) {
            return Err(Error::InvalidArgument(format!(
                "max capacity must be between 0 and {}, got {max_capacity}",
                i32::MAX
            )));
        }
        // A long poll holds the request about 50 s: never shorter than that, whatever the
        // client's per-attempt timeout.
        let poll_timeout = self
            .inner
            .client
            .transport()
            .timeout()
            .max(MIN_POLL_TIMEOUT);
        let resp = self
            .with_queue_token(
                |_, mut url| {
                    if last_message_id.get() > 0 {
                        let mut pairs: Vec<(String, String)> = url
                            .query_pairs()
                            .filter(|(k, _)| k != "lastMessageId")
                            .map(|(k, v)| (k.into_owned(), v.into_owned()))
                            .collect();
                        pairs.push(("lastMessageId".into(), last_message_id.to_string()));
                        set_sorted_query(&mut url, pairs);
                    }
                    let mut req = Outgoing::new(Method::GET, url);
                    req.timeout = Some(poll_timeout);
                    req.accept = Some("application/json; api-version=6.0-preview");
                    req.headers
                        .push((MAX_CAPACITY_HEADER, max_capacity.to_string()));
                    Ok(req)
                },
                false,
            )
            .await?;
        match resp.status {
            StatusCode::ACCEPTED => Ok(None),
            StatusCode::OK => match parse_envelope(&resp.body) {
                Ok(Envelope::Message(message)) => Ok(Some(message)),
                Ok(Envelope::Unsupported {
                    message_id,
                    message_type,
                }) => Err(Error::UnsupportedMessage {
                    message_id,
                    message_type,
                }),
                Err(e) => Err(resp.decode_error(e.path, e.message)),
            },
            StatusCode::NOT_FOUND => Err(Error::SessionNotFound(Box::new(
                resp.api_error().with_detail("failed to get next message"),
            ))),
            _ => Err(Error::from_response(
                resp.api_error().with_detail("failed to get next message"),
            )),
        }
    }

    /// Acknowledges (deletes) a message so it is not delivered again.
    pub async fn delete_message(&self, message_id: MessageId) -> Result<()> {
        let resp = self
            .with_queue_token(
                |_, mut url| {
                    let path = format!("{}/{message_id}", url.path().trim_end_matches('/'));
                    url.set_path(&path);
                    let mut req = Outgoing::new(Method::DELETE, url);
                    req.content_type = Some("application/json");
                    Ok(req)
                },
                false,
            )
            .await?;
        if resp.status == StatusCode::NO_CONTENT {
            return Ok(());
        }
        Err(Error::from_response(
            resp.api_error().with_detail("failed to delete message"),
        ))
    }

    /// Acquires offered jobs (GHES) by their `runnerRequestId`s; returns the ids acquired.
    pub async fn acquire_jobs(
        &self,
        request_ids: &[RunnerRequestId],
    ) -> Result<Vec<RunnerRequestId>> {
        let scale_set_id = self.inner.scale_set_id;
        let body = to_json(&request_ids);
        let resp = self
            .with_queue_token(
                |_, base| {
                    let url = crate::transport::tenant_url(
                        &base,
                        &format!("/_apis/runtime/runnerscalesets/{scale_set_id}/acquirejobs"),
                        &[],
                    );
                    let mut req = Outgoing::new(Method::POST, url);
                    req.content_type = Some("application/json");
                    req.body = Some(body.clone());
                    Ok(req)
                },
                true,
            )
            .await?;
        if resp.status != StatusCode::OK {
            return Err(Error::from_response(
                resp.api_error().with_detail("failed to acquire jobs"),
            ));
        }
        let list: ListResponse<RunnerRequestId> = resp.json()?;
        checked_list(list, &resp)
    }

    async fn delete_session(&self, session_id: Uuid) -> Result<()> {
        let resp = self
            .inner
            .client
            .tenant(
                Method::DELETE,
                &format!(
                    "/_apis/runtime/runnerscalesets/{}/sessions/{session_id}",
                    self.inner.scale_set_id
                ),
                &[],
                None,
            )
            .await?;
        match resp.status {
            StatusCode::NO_CONTENT => Ok(()),
            StatusCode::NOT_FOUND => Ok(()),
            _ => match resp.into_error() {
                Error::SessionNotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Deletes the session so that the next client does not meet a 409 conflict. Waits at most
    /// [`CLOSE_TIMEOUT`], and a session the service no longer knows counts as closed.
    ///
    /// Call it from a context that is not already cancelled (the [`Listener`](crate::Listener)
    /// does this for you on shutdown).
    pub async fn close(&self) -> Result<()> {
        let closing = async {
            // Under the refresh lock, so that a re-creation in flight cannot leave a session
            // behind: the one deleted is the one current after it.
            let _guard = self.inner.refresh.lock().await;
            let id = self.session_id();
            (id, self.delete_session(id).await)
        };
        match tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
            Ok((id, result)) => {
                if result.is_ok() {
                    tracing::info!(scale_set_id = self.inner.scale_set_id.get(), session_id = %id, "deleted the message session");
                }
                result
            }
            Err(_) => Err(Error::Timeout(format!(
                "deleting message session {}",
                self.session_id()
            ))),
        }
    }
}
