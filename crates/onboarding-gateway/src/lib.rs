//! The HTTP gateway (warp): the admin API, the password page behind the link, and the
//! health, readiness and metrics endpoints.
//!
//! Architecture invariants:
//! - Handlers turn wire input into parsed domain types and run commands through
//!   `onboarding_store::Store`; the gateway holds no state of its own.
//! - `GET` and `HEAD` never change state.
//! - Failures map to HTTP status codes in one place (`error.rs`); every refusal is a JSON
//!   `{"error", "message"}` (API) or a page that says what to do (browser).
//! - Admin tokens are compared by SHA-256, in constant time; no secret is ever logged.
#![forbid(unsafe_code)]

mod api;
mod bulk;
mod error;
mod i18n;
mod pages;
mod scim;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use onboarding_config::{Scope, Settings};
use onboarding_domain::code::CodeKeyring;
use onboarding_domain::ResendLimits;
use onboarding_kafka::KafkaProbe;
use onboarding_store::{Actor, Store};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

pub use api::user_view;
pub use error::ApiError;

pub struct AppState {
    pub(crate) store: Store,
    pub(crate) settings: Arc<Settings>,
    pub(crate) keyring: Arc<CodeKeyring>,
    tokens: Vec<(Grant, [u8; 32], bool)>,
    kafka: KafkaProbe,
    metrics: Option<PrometheusHandle>,
    pub(crate) pages: minijinja::Environment<'static>,
    /// The pages' texts in every language they are written in.
    pub(crate) texts: i18n::Texts,
    pub(crate) resend_limits: ResendLimits,
    limiter: governor::DefaultKeyedRateLimiter<IpAddr>,
    /// Bounds how many link openings one client address can add to the log.
    open_limiter: governor::DefaultKeyedRateLimiter<IpAddr>,
    /// Wakes the bulk invitation runner when a job was recorded.
    pub(crate) bulk_wake: Arc<tokio::sync::Notify>,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`gateway.trusted_proxies`).
    trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "gateway.admin_tokens[{0}].sha256 must be 64 hex characters (the SHA-256 of the token)"
    )]
    BadTokenHash(String),
    #[error(
        "cannot bind {addr}: {source}; is another process using the port? change gateway.bind"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("kafka client: {0}")]
    Kafka(String),
    #[error(transparent)]
    Config(#[from] onboarding_config::ConfigError),
    #[error("page texts: {0}")]
    Texts(String),
}

impl AppState {
    pub fn new(
        settings: Arc<Settings>,
        store: Store,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Self, GatewayError> {
        let mut tokens = Vec::new();
        for t in &settings.gateway.admin_tokens {
            let bytes = hex::decode(t.sha256.trim())
                .map_err(|_| GatewayError::BadTokenHash(t.id.clone()))?;
            let hash: [u8; 32] = bytes
                .try_into()
                .map_err(|_| GatewayError::BadTokenHash(t.id.clone()))?;
            let grant = Grant {
                id: t.id.clone(),
                scopes: t.scopes.clone(),
                request_id: None,
            };
            tokens.push((grant, hash, t.revoked));
        }
        if tokens.is_empty() {
            tracing::warn!("no admin tokens configured: the admin API will refuse every request");
        }
        Ok(Self {
            trusted_proxies: settings.gateway.trusted_proxies.clone(),
            keyring: store.services().keyring.clone(),
            kafka: KafkaProbe::new(&settings.kafka)
                .map_err(|e| GatewayError::Kafka(onboarding_kafka::redact(&e)))?,
            store,
            settings: settings.clone(),
            tokens,
            metrics,
            pages: pages::templates(),
            texts: i18n::Texts::load().map_err(GatewayError::Texts)?,
            resend_limits: ResendLimits {
                cooldown: chrono::Duration::seconds(
                    settings
                        .identity_mgt
                        .user_onboarding
                        .resend_cooldown_seconds,
                ),
                daily_cap: settings.identity_mgt.user_onboarding.resend_daily_cap,
            },
            bulk_wake: Arc::new(tokio::sync::Notify::new()),
            open_limiter: governor::RateLimiter::keyed(governor::Quota::per_minute(
                std::num::NonZeroU32::new(10).expect("non-zero"),
            )),
            limiter: governor::RateLimiter::keyed(governor::Quota::per_minute(
                settings.gateway.public_rate_limit_per_minute,
            )),
        })
    }

    /// The runner that applies the rows of bulk invitation jobs, woken by each upload.
    pub fn bulk_runner(&self) -> (onboarding_store::bulk::BulkRunner, Arc<tokio::sync::Notify>) {
        (
            onboarding_store::bulk::BulkRunner {
                store: self.store.clone(),
                rules: self.settings.identity_mgt.user_onboarding.clone(),
                concurrency: self.settings.bulk.concurrency,
            },
            self.bulk_wake.clone(),
        )
    }

    /// Counts one public request from `client`; refuses it when the client is over its quota.
    pub(crate) fn throttle(&self, client: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(addr) = client else { return Ok(()) };
        self.limiter.check_key(&addr).map_err(|not_until| {
            metrics::counter!("onboard_rate_limited_total").increment(1);
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            ApiError::RateLimited(wait.as_secs().max(1))
        })
    }

    /// Whether an opening of a link by `client` should still be recorded (at most 10 a minute per
    /// address, so a reload loop cannot flood the log; the page is shown either way).
    pub(crate) fn record_open(&self, client: Option<IpAddr>) -> bool {
        client.is_none_or(|addr| self.open_limiter.check_key(&addr).is_ok())
    }

    /// The grant of the admin token presented, with the request's id.
    fn admit(
        &self,
        authorization: Option<&str>,
        request_id: Result<Option<String>, ApiError>,
    ) -> Result<Grant, ApiError> {
        let grant = self.authorize(authorization)?;
        Ok(Grant {
            request_id: request_id?,
            ..grant
        })
    }

    /// The id of the admin token presented, if it is one of ours.
    fn authorize(&self, header: Option<&str>) -> Result<Grant, ApiError> {
        let token = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (grant, hash, revoked) in &self.tokens {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some((grant, *revoked));
            }
        }
        match found {
            Some((grant, false)) => Ok(grant.clone()),
            Some((grant, true)) => {
                tracing::warn!(token_id = %grant.id, "revoked admin token presented");
                Err(ApiError::Unauthorized)
            }
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// What an admin token may do, and the request it came with.
#[derive(Debug, Clone)]
pub struct Grant {
    pub id: String,
    scopes: Vec<Scope>,
    /// The caller's `X-Request-Id`, kept as the correlation id of the events the request records.
    pub request_id: Option<String>,
}

impl Grant {
    /// The admin as the author of events: the token's id, and the caller's request id as the
    /// correlation id (without one, each command's events get a fresh one).
    pub fn actor(&self) -> Actor {
        Actor::admin(&self.id).with_correlation(self.request_id.clone())
    }

    pub fn require(&self, scope: Scope) -> Result<&str, ApiError> {
        if self.scopes.contains(&scope) {
            Ok(&self.id)
        } else {
            Err(ApiError::Forbidden(scope.as_str()))
        }
    }
}

fn with_state(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Arc<AppState>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// A body over the limit named by `setting` (`max` bytes).
#[derive(Debug)]
struct BodyTooLarge {
    setting: &'static str,
    max: u64,
}
impl warp::reject::Reject for BodyTooLarge {}

#[derive(Debug)]
struct BodyUnreadable;
impl warp::reject::Reject for BodyUnreadable {}

/// A request refused before its body is read (no valid admin token, a token without the scope,
/// a bad `X-Request-Id`), rendered by `recover` as that [`ApiError`].
#[derive(Debug)]
struct RefusedBeforeBody(ApiError);
impl warp::reject::Reject for RefusedBeforeBody {}

/// The request body, at most `max` bytes, whether or not the client sent a Content-Length
/// (`curl -X POST` without a body sends none). Larger bodies are refused with 413.
fn limited_body(max: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    limited_body_as(max, "gateway.max_body_bytes")
}

/// [`limited_body`] whose limit comes from the setting `setting` (named in the 413 answer).
fn limited_body_as(
    max: u64,
    setting: &'static str,
) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and_then(move |len: Option<u64>| async move {
            match len {
                Some(l) if l > max => Err(warp::reject::custom(BodyTooLarge { setting, max })),
                _ => Ok(()),
            }
        })
        .untuple_one()
        .and(warp::body::stream())
        .and_then(move |stream| collect_limited(stream, max, setting))
}

async fn collect_limited<S, B>(
    stream: S,
    max: u64,
    setting: &'static str,
) -> Result<Bytes, Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: warp::Buf,
{
    use futures::TryStreamExt;
    let mut body = Vec::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(mut chunk) = stream
        .try_next()
        .await
        .map_err(|_| warp::reject::custom(BodyUnreadable))?
    {
        if body.len() as u64 + chunk.remaining() as u64 > max {
            return Err(warp::reject::custom(BodyTooLarge { setting, max }));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(body))
}

fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(Reply::into_response)
}

/// The client of a request: its TCP peer or, when the peer is one of `trusted` proxies, the
/// nearest address in `X-Forwarded-For` that is not a trusted proxy. Reading from the right
/// means a client cannot choose its own address by sending the header: what it sends lands to
/// the left of what the proxy appends. An unreadable entry ends the walk.
fn client_address(
    peer: Option<SocketAddr>,
    forwarded_for: &str,
    trusted: &[ipnet::IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer?.ip();
    if !is_trusted(&client) || forwarded_for.trim().is_empty() {
        return Some(client);
    }
    for hop in forwarded_for.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

/// The request's client address (see [`client_address`]), for rate limits.
fn client(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Option<IpAddr>,), Error = Infallible> + Clone {
    warp::addr::remote()
        .and(warp::header::headers_cloned())
        .map(move |peer, headers: warp::http::HeaderMap| {
            let forwarded_for: Vec<&str> = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            client_address(peer, &forwarded_for.join(","), &state.trusted_proxies)
        })
}

/// Longest `X-Request-Id` kept; longer ones are refused, not cut.
const MAX_REQUEST_ID: usize = 128;

/// Whether an `X-Request-Id` can be kept as a correlation id: 1 to 128 visible ASCII characters.
fn acceptable_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The caller's `X-Request-Id` (a proxy's or the upstream service's own), or a clear error for
/// one that cannot be kept in the audit log as it is.
fn request_id(
) -> impl Filter<Extract = (Result<Option<String>, ApiError>,), Error = Infallible> + Clone {
    x_request_id().map(|id: Result<Option<String>, ()>| {
        id.map_err(|()| {
            ApiError::field(
                "X-Request-Id",
                format!(
                    "must be 1 to {MAX_REQUEST_ID} visible ASCII characters without spaces \
                     (it becomes the correlation id of the events this request records); \
                     send another or leave the header out"
                ),
            )
        })
    })
}

/// The `X-Request-Id` header: `Ok(None)` without one, `Err(())` for one that cannot be kept
/// (not text, or not [`acceptable_request_id`]).
fn x_request_id() -> impl Filter<Extract = (Result<Option<String>, ()>,), Error = Infallible> + Clone
{
    warp::header::optional::<String>("x-request-id")
        .map(|id: Option<String>| match id {
            Some(id) if !acceptable_request_id(&id) => Err(()),
            id => Ok(id),
        })
        // warp refuses a header value that is not text.
        .or(warp::any().map(|| Err(())))
        .unify()
}

/// Repeats the caller's `X-Request-Id` on the answer, so that the caller's log and ours meet.
fn echo_request_id(id: Result<Option<String>, ()>, mut response: Response) -> Response {
    if let Some(value) = id
        .ok()
        .flatten()
        .and_then(|id| warp::http::HeaderValue::from_str(&id).ok())
    {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Every route of the gateway.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let max = state.settings.gateway.max_body_bytes;
    let json_body = limited_body(max);
    let auth = with_state(state.clone())
        .and(warp::header::optional::<String>("authorization"))
        .and(request_id())
        .and_then(
            |state: Arc<AppState>, header: Option<String>, request_id| async move {
                let grant = state.admit(header.as_deref(), request_id);
                Ok::<_, Infallible>(grant.map(|grant| (state, grant)))
            },
        );

    let create =
        warp::path!("api" / "v1" / "users")
            .and(warp::post())
            .and(auth.clone())
            .and(warp::header::optional::<String>("idempotency-key"))
            .and(json_body.clone())
            .then(
                |auth: Result<(Arc<AppState>, Grant), ApiError>,
                 key: Option<String>,
                 body: Bytes| async move {
                    respond(match auth {
                        Ok((state, grant)) => api::create_user(state, grant, key, body).await,
                        Err(e) => Err(e),
                    })
                },
            )
            .boxed();
    let show = warp::path!("api" / "v1" / "users" / String)
        .and(warp::get())
        .and(auth.clone())
        .then(
            |id: String, auth: Result<(Arc<AppState>, Grant), ApiError>| async move {
                respond(match auth {
                    Ok((state, grant)) => api::get_user(state, grant, id).await,
                    Err(e) => Err(e),
                })
            },
        )
        .boxed();
    let resend = warp::path!("api" / "v1" / "users" / String / "resend")
        .and(warp::post())
        .and(auth.clone())
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(json_body.clone())
        .then(
            |id: String,
             auth: Result<(Arc<AppState>, Grant), ApiError>,
             key: Option<String>,
             body: Bytes| async move {
                respond(match auth {
                    Ok((state, grant)) => api::resend(state, grant, key, id, body).await,
                    Err(e) => Err(e),
                })
            },
        )
        .boxed();
    let revoke = warp::path!("api" / "v1" / "users" / String / "revoke")
        .and(warp::post())
        .and(auth.clone())
        .and(json_body.clone())
        .then(
            |id: String, auth: Result<(Arc<AppState>, Grant), ApiError>, body: Bytes| async move {
                respond(match auth {
                    Ok((state, token)) => api::revoke(state, token, id, body).await,
                    Err(e) => Err(e),
                })
            },
        )
        .boxed();
    let list = warp::path!("api" / "v1" / "users")
        .and(warp::get())
        .and(auth.clone())
        .and(warp::query::<HashMap<String, String>>())
        .then(
            |auth: Result<(Arc<AppState>, Grant), ApiError>, query| async move {
                respond(match auth {
                    Ok((state, grant)) => api::list(state, grant, query).await,
                    Err(e) => Err(e),
                })
            },
        )
        .boxed();
    // An upload may be megabytes: the token and its scope are checked before the body is read.
    let bulk_upload = warp::path!("api" / "v1" / "bulk-invites")
        .and(warp::post())
        .and(auth.clone())
        .and_then(
            |auth: Result<(Arc<AppState>, Grant), ApiError>| async move {
                match auth {
                    Ok((state, grant)) => match grant.require(Scope::Invite) {
                        Ok(_) => Ok(Ok((state, grant))),
                        Err(e) => Err(warp::reject::custom(RefusedBeforeBody(e))),
                    },
                    Err(e) => Err(warp::reject::custom(RefusedBeforeBody(e))),
                }
            },
        )
        .and(warp::header::optional::<String>("content-type"))
        .and(limited_body_as(
            state.settings.bulk.max_file_bytes,
            "bulk.max_file_bytes",
        ))
        .then(
            |auth: Result<(Arc<AppState>, Grant), ApiError>,
             content_type: Option<String>,
             body: Bytes| async move {
                respond(match auth {
                    Ok((state, grant)) => bulk::upload(state, grant, content_type, body).await,
                    Err(e) => Err(e),
                })
            },
        )
        .boxed();
    let bulk_show = warp::path!("api" / "v1" / "bulk-invites" / String)
        .and(warp::get())
        .and(auth.clone())
        .then(
            |id: String, auth: Result<(Arc<AppState>, Grant), ApiError>| async move {
                respond(match auth {
                    Ok((state, grant)) => bulk::show(state, grant, id).await,
                    Err(e) => Err(e),
                })
            },
        )
        .boxed();
    let scim_route = warp::path("scim2")
        .and(warp::path::tail())
        .and(warp::method())
        .and(with_state(state.clone()))
        .and(warp::header::optional::<String>("authorization"))
        .and(request_id())
        .and(warp::query::<HashMap<String, String>>())
        .and(limited_body(max))
        .then(
            |tail: warp::path::Tail,
             method,
             state: Arc<AppState>,
             header: Option<String>,
             request_id,
             query,
             body: Bytes| async move {
                let grant = state.admit(header.as_deref(), request_id);
                scim::handle(state, grant, method, tail.as_str().to_owned(), query, body).await
            },
        )
        .boxed();
    let submission = warp::path!("api" / "v1" / "password-submissions")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(client(state.clone()))
        .and(json_body)
        .then(|state, client, body| async move {
            respond(api::password_submission(state, client, body).await)
        })
        .boxed();
    let provenance = warp::header::optional::<String>("origin")
        .and(warp::header::optional::<String>("sec-fetch-site"))
        .map(|origin, sec_fetch_site| pages::Provenance {
            origin,
            sec_fetch_site,
        });
    let form =
        warp::body::content_length_limit(max).and(warp::body::form::<HashMap<String, String>>());

    let confirm_page = warp::path!("confirm")
        .and(warp::get().or(warp::head()).unify())
        .and(with_state(state.clone()))
        .and(client(state.clone()))
        .and(warp::method())
        .and(warp::header::optional::<String>("user-agent"))
        .and(warp::header::optional::<String>("accept-language"))
        .and(warp::query::<HashMap<String, String>>())
        .then(pages::show)
        .boxed();
    let confirm_post = warp::path!("confirm")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(client(state.clone()))
        .and(provenance)
        .and(warp::header::optional::<String>("accept-language"))
        .and(form)
        .then(pages::submit)
        .boxed();
    let new_link = warp::path!("confirm" / "new-link")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(client(state.clone()))
        .and(provenance)
        .and(warp::header::optional::<String>("accept-language"))
        .and(form)
        .then(pages::new_link)
        .boxed();
    let revoke_page = warp::path!("revoke")
        .and(warp::get().or(warp::head()).unify())
        .and(with_state(state.clone()))
        .and(warp::header::optional::<String>("accept-language"))
        .and(warp::query::<HashMap<String, String>>())
        .then(pages::revoke_page)
        .boxed();
    let revoke_post = warp::path!("revoke")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(client(state.clone()))
        .and(provenance)
        .and(warp::header::optional::<String>("accept-language"))
        .and(form)
        .then(pages::revoke_submit)
        .boxed();
    let css = warp::path!("assets" / "onboard.css")
        .and(warp::get().or(warp::head()).unify())
        .map(pages::css)
        .boxed();

    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response())
        .boxed();
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state(state.clone()))
        .then(readiness)
        .boxed();
    let metrics_route = warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .map(|state: Arc<AppState>| {
            let text = state
                .metrics
                .as_ref()
                .map(PrometheusHandle::render)
                .unwrap_or_default();
            warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4")
                .into_response()
        })
        .boxed();

    let every = create
        .or(list)
        .unify()
        .or(bulk_upload)
        .unify()
        .or(bulk_show)
        .unify()
        .or(scim_route)
        .unify()
        .or(show)
        .unify()
        .or(resend)
        .unify()
        .or(revoke)
        .unify()
        .or(new_link)
        .unify()
        .or(revoke_page)
        .unify()
        .or(revoke_post)
        .unify()
        .or(submission)
        .unify()
        .or(confirm_page)
        .unify()
        .or(confirm_post)
        .unify()
        .or(css)
        .unify()
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(metrics_route)
        .unify()
        .recover(recover)
        .unify();
    x_request_id()
        .and(every)
        .map(echo_request_id)
        .with(warp::log::custom(|info| {
            metrics::counter!(
                "onboard_http_requests_total",
                "method" => info.method().to_string(),
                "status" => info.status().as_u16().to_string()
            )
            .increment(1);
            metrics::histogram!("onboard_http_request_seconds")
                .record(info.elapsed().as_secs_f64());
        }))
}

async fn readiness(state: Arc<AppState>) -> Response {
    let started = Instant::now();
    let (pg, kafka) = tokio::join!(state.store.ping(), state.kafka.check());
    let pg_ok = pg.is_ok();
    let kafka_ok = kafka.is_ok();
    let body = json!({
        "status": if pg_ok && kafka_ok { "ready" } else { "unavailable" },
        "checks": {
            "postgres": pg.map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
            "kafka": kafka.map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
        },
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    let status = if pg_ok && kafka_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// Turns warp's own rejections (routing, body limits, form parsing) into clear JSON answers.
async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    use warp::reject;
    if let Some(RefusedBeforeBody(refusal)) = rejection.find::<RefusedBeforeBody>() {
        return Ok(refusal.to_response());
    }
    let (status, code, message) = if rejection.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint; see docs/api.md".to_owned(),
        )
    } else if let Some(BodyTooLarge { setting, max }) = rejection.find::<BodyTooLarge>() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is too large; send at most {max} bytes ({setting})"),
        )
    } else if rejection.find::<reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large; send at most gateway.max_body_bytes bytes".to_owned(),
        )
    } else if rejection.find::<BodyUnreadable>().is_some() {
        (
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the request body could not be read; send it again".to_owned(),
        )
    } else if rejection.find::<reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "send a Content-Length header with the body".to_owned(),
        )
    } else if rejection.find::<reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not accept that HTTP method".to_owned(),
        )
    } else if rejection.find::<reject::UnsupportedMediaType>().is_some() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the form as application/x-www-form-urlencoded".to_owned(),
        )
    } else if let Some(e) = rejection.find::<reject::InvalidQuery>() {
        (
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("the query string is not valid: {e}"),
        )
    } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        (
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the request body is not valid: {e}"),
        )
    } else if let Some(e) = rejection.find::<reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, "invalid_header", e.to_string())
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the incident is logged".to_owned(),
        )
    };
    Ok(error::plain(status, code, message))
}

/// Serves only `/metrics` and `/healthz` on `addr` until `shutdown`: for processes that run no
/// gateway (relay, email worker, scheduler).
pub async fn serve_metrics(
    addr: SocketAddr,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })?;
    tracing::info!(%addr, "metrics listening");
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        warp::reply::with_header(handle.render(), "content-type", "text/plain; version=0.0.4")
            .into_response()
    });
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response());
    warp::serve(metrics.or(healthz).unify())
        .incoming(listener)
        .graceful(async move { shutdown.cancelled().await })
        .run()
        .await;
    Ok(())
}

/// Binds the gateway and serves until `shutdown`. Returns the bound address through `bound`.
pub async fn serve(
    state: Arc<AppState>,
    shutdown: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), GatewayError> {
    let addr = state.settings.gateway.bind;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| GatewayError::Bind { addr, source })?;
    tracing::info!(addr = %local, "gateway listening");
    if let Some(tx) = bound {
        let _ = tx.send(local);
    }
    // The per-client limiters keep one entry per address seen: forget idle ones.
    let pruned = state.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {
                    pruned.limiter.retain_recent();
                    pruned.open_limiter.retain_recent();
                }
            }
        }
    });
    warp::serve(routes(state))
        .incoming(listener)
        .graceful(async move { shutdown.cancelled().await })
        .run()
        .await;
    tracing::info!("gateway stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn client_of(peer: &str, forwarded_for: &str, trusted: &[&str]) -> String {
        let peer = SocketAddr::new(peer.parse().unwrap(), 40000);
        client_address(Some(peer), forwarded_for, &nets(trusted))
            .unwrap()
            .to_string()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(
            client_of("198.51.100.7", "203.0.113.9", &[]),
            "198.51.100.7"
        );
        assert_eq!(
            client_of("198.51.100.7", "203.0.113.9", &["10.0.0.0/8"]),
            "198.51.100.7"
        );
    }

    #[test]
    fn behind_trusted_proxies_the_nearest_untrusted_hop_is_the_client() {
        let trusted = ["10.0.0.0/8", "192.0.2.10/32"];
        // The proxy appended the address it saw; what the client sent stays to its left.
        assert_eq!(
            client_of("10.0.0.2", "1.2.3.4, 203.0.113.9", &trusted),
            "203.0.113.9"
        );
        // Two proxies in a row: skip both.
        assert_eq!(
            client_of("10.0.0.2", "203.0.113.9, 192.0.2.10", &trusted),
            "203.0.113.9"
        );
        // Several headers count as one list, in order.
        assert_eq!(
            client_of("10.0.0.2", "203.0.113.9,10.9.9.9", &trusted),
            "203.0.113.9"
        );
        // Only proxies: the leftmost. No header: the peer.
        assert_eq!(
            client_of("10.0.0.2", "10.1.1.1, 10.2.2.2", &trusted),
            "10.1.1.1"
        );
        assert_eq!(client_of("10.0.0.2", "", &trusted), "10.0.0.2");
        // An unreadable hop ends the walk at the last proxy that was read.
        assert_eq!(
            client_of("10.0.0.2", "203.0.113.9, unknown", &trusted),
            "10.0.0.2"
        );
        assert_eq!(client_of("::1", "2001:db8::5", &["::1/128"]), "2001:db8::5");
    }

    #[test]
    fn request_ids_are_short_visible_ascii() {
        assert!(acceptable_request_id("hr-7f3a:42"));
        assert!(!acceptable_request_id(""));
        assert!(!acceptable_request_id("has space"));
        assert!(!acceptable_request_id("naïve"));
        assert!(!acceptable_request_id(&"x".repeat(129)));
    }
}
