//! Every route of the gateway, in groups: the admin API, SCIM, the public endpoints (the
//! password submission and the pages behind the links) and health. Each group is one `or` tree
//! boxed at its boundary, so the type of the whole stays shallow enough for the compiler
//! (a single chain of all routes overflows its recursion limit in release builds).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use onboarding_config::Scope;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::admin::{admin, admission, Grant};
use crate::body::{limited_body, limited_body_as};
use crate::client::client;
use crate::endpoints::{self, at, at_with_id};
use crate::error::{recover, respond, ApiError, Refusal};
use crate::request_id::{echo_request_id, request_span, x_request_id};
use crate::state::with_state;
use crate::throttle::RouteGroup;
use crate::{api, bulk, console, health, pages, scim, verify, AppState};

/// Every route of the gateway: each answer repeats the caller's `X-Request-Id`, is counted in
/// the HTTP metrics and logged (`request answered`; at debug for health and metrics, which
/// probes and scrapers call all the time); a `405` lists the methods the path takes in `Allow`.
/// Everything the request logs is written in its span ([`request_span`]), with its request id.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let every = admin_api(state.clone())
        .or(scim_api(state.clone()))
        .unify()
        .or(public(state.clone()))
        .unify()
        .or(console::routes(state.clone()))
        .unify()
        .or(health::routes(state))
        .unify()
        .recover(recover)
        .unify();
    x_request_id()
        .and(warp::path::full())
        .and(every)
        .map(|id, path: warp::path::FullPath, response| {
            echo_request_id(id, endpoints::allow(path.as_str(), response))
        })
        .with(warp::log::custom(|info| {
            metrics::counter!(
                "onboard_http_requests_total",
                "method" => info.method().to_string(),
                "status" => info.status().as_u16().to_string()
            )
            .increment(1);
            metrics::histogram!("onboard_http_request_seconds")
                .record(info.elapsed().as_secs_f64());
            let status = info.status().as_u16();
            let elapsed_ms = info.elapsed().as_millis() as u64;
            if matches!(info.path(), "/healthz" | "/readyz" | "/metrics") {
                tracing::debug!(status, elapsed_ms, "request answered");
            } else {
                tracing::info!(status, elapsed_ms, "request answered");
            }
        }))
        .with(warp::trace(request_span))
}

/// `/api/v1/users`, `/api/v1/bulk-invites` and `/api/v1/credentials/verify`: each admitted by
/// [`admin`] after its body was read (an oversized body is answered 413 first), except bulk
/// uploads.
fn admin_api(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let json_body = limited_body(state.settings.gateway.max_body_bytes);
    let json_body_for_verify = json_body.clone();
    let idempotency_key = warp::header::optional::<String>("idempotency-key");
    let create = at(&endpoints::USERS_CREATE)
        .and(idempotency_key)
        .and(json_body.clone())
        .and(admin(state.clone(), RouteGroup::Api))
        .then(|key, body, state, grant| api::create_user(state, grant, key, body));
    let list = at(&endpoints::USERS_LIST)
        .and(warp::query::<HashMap<String, String>>())
        .and(admin(state.clone(), RouteGroup::Api))
        .then(|query, state, grant| api::list(state, grant, query));
    let show = at_with_id(&endpoints::USER)
        .and(admin(state.clone(), RouteGroup::Api))
        .then(|id, state, grant| api::get_user(state, grant, id));
    let resend = at_with_id(&endpoints::USER_RESEND)
        .and(idempotency_key)
        .and(json_body.clone())
        .and(admin(state.clone(), RouteGroup::Api))
        .then(|id, key, body, state, grant| api::resend(state, grant, key, id, body));
    let erase = at_with_id(&endpoints::USER_ERASE)
        .and(warp::query::<HashMap<String, String>>())
        .and(admin(state.clone(), RouteGroup::Api))
        .then(|id, query, state, grant| api::erase(state, grant, id, query));
    let revoke = at_with_id(&endpoints::USER_REVOKE)
        .and(json_body)
        .and(admin(state.clone(), RouteGroup::Api))
        .then(|id, body, state, grant| api::revoke(state, grant, id, body));
    // An upload may be megabytes: the token and its scope are checked before the body is read.
    let bulk_upload = at(&endpoints::BULK_UPLOAD)
        .and(admin(state.clone(), RouteGroup::Bulk))
        .and_then(|state: Arc<AppState>, grant: Grant| async move {
            match grant.require(Scope::Invite) {
                Ok(_) => Ok((state, grant)),
                Err(refusal) => Err(warp::reject::custom(Refusal(refusal))),
            }
        })
        .untuple_one()
        .and(warp::header::optional::<String>("content-type"))
        .and(limited_body_as(
            state.settings.bulk.max_file_bytes,
            "bulk.max_file_bytes",
        ))
        .then(bulk::upload);
    let bulk_show = at_with_id(&endpoints::BULK_JOB)
        .and(admin(state.clone(), RouteGroup::Bulk))
        .then(|id, state, grant| bulk::show(state, grant, id));
    let verify = at(&endpoints::CREDENTIALS_VERIFY)
        .and(json_body_for_verify)
        .and(admin(state.clone(), RouteGroup::Verify))
        .and(client(state))
        .then(|body, state, grant, client| verify::verify(state, grant, client, body));
    create
        .or(list)
        .unify()
        .or(show)
        .unify()
        .or(resend)
        .unify()
        .or(revoke)
        .unify()
        .or(erase)
        .unify()
        .or(bulk_upload)
        .unify()
        .or(bulk_show)
        .unify()
        .or(verify)
        .unify()
        .map(respond)
        .boxed()
}

/// `/scim2/…`: one route, dispatched by `scim::handle`, which answers refusals in SCIM's
/// error format.
fn scim_api(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    warp::path(endpoints::SCIM_MOUNT)
        .and(warp::path::tail())
        .and(warp::method())
        .and(admission(state.clone(), RouteGroup::Scim))
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::optional::<String>("if-match"))
        .and(limited_body(state.settings.gateway.max_body_bytes))
        .then(
            |tail: warp::path::Tail,
             method,
             state: Arc<AppState>,
             grant: Result<Grant, ApiError>,
             query,
             if_match,
             body: Bytes| {
                let request = scim::ScimRequest {
                    method,
                    tail: tail.as_str().to_owned(),
                    query,
                    if_match,
                    body,
                };
                scim::handle(state, grant, request)
            },
        )
        .boxed()
}

/// The endpoints a user reaches without a token: the password submission, the pages behind the
/// links and their stylesheet. The posts and the pages count against the client's budgets
/// (`throttle.rs`); the stylesheet, which reads nothing, does not.
fn public(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let max = state.settings.gateway.max_body_bytes;
    let provenance = warp::header::optional::<String>("origin")
        .and(warp::header::optional::<String>("sec-fetch-site"))
        .map(|origin, sec_fetch_site| pages::Provenance {
            origin,
            sec_fetch_site,
        });
    let accept_language = warp::header::optional::<String>("accept-language");
    let form =
        warp::body::content_length_limit(max).and(warp::body::form::<HashMap<String, String>>());
    let state_and_client = with_state(state.clone()).and(client(state.clone()));

    let submission = at(&endpoints::PASSWORD_SUBMISSIONS)
        .and(state_and_client.clone())
        .and(limited_body(max))
        .then(|state, client, body| async move {
            respond(api::password_submission(state, client, body).await)
        });
    let confirm_page = at(&endpoints::CONFIRM_PAGE)
        .and(state_and_client.clone())
        .and(warp::method())
        .and(warp::header::optional::<String>("user-agent"))
        .and(accept_language)
        .and(warp::query::<HashMap<String, String>>())
        .then(pages::show);
    let confirm_post = at(&endpoints::CONFIRM_FORM)
        .and(state_and_client.clone())
        .and(provenance)
        .and(accept_language)
        .and(form)
        .then(pages::submit);
    let new_link = at(&endpoints::NEW_LINK)
        .and(state_and_client.clone())
        .and(provenance)
        .and(accept_language)
        .and(form)
        .then(pages::new_link);
    let revoke_page = at(&endpoints::REVOKE_PAGE)
        .and(state_and_client.clone())
        .and(accept_language)
        .and(warp::query::<HashMap<String, String>>())
        .then(pages::revoke_page);
    let revoke_post = at(&endpoints::REVOKE_FORM)
        .and(state_and_client)
        .and(provenance)
        .and(accept_language)
        .and(form)
        .then(pages::revoke_submit);
    let css = at(&endpoints::STYLE_SHEET).map(pages::css);
    submission
        .or(confirm_page)
        .unify()
        .or(confirm_post)
        .unify()
        .or(new_link)
        .unify()
        .or(revoke_page)
        .unify()
        .or(revoke_post)
        .unify()
        .or(css)
        .unify()
        .boxed()
}
