//! The admin console, `/admin…`: server-rendered pages for administrators, in English and German,
//! that work without JavaScript (docs/console.md). `session.rs` signs admins in and keeps their
//! sessions and CSRF tokens (docs/adr/0028); `render.rs` renders the templates under
//! `templates/console/` with the pages' security headers; `views.rs` has one handler per page
//! and action; `figures.rs` formats what the pages show.
//!
//! Every page but the sign-in form needs a session: without one the browser is sent to the
//! sign-in form (`303`). The token's scopes decide what is shown: without `invite` or `revoke`
//! there is no button for them, and a post that needs the scope is refused (`403`) all the same.

mod figures;
mod render;
mod session;
mod views;

use std::collections::HashMap;
use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::client::client;
use crate::endpoints::{self, at, at_with_id};
use crate::pages::Provenance;
use crate::request_id::x_request_id;
use crate::state::with_state;
use crate::AppState;

pub(crate) use render::TEMPLATES;
pub(crate) use session::Ctx;
use session::{NotSignedIn, Presented};

/// A request the console could not serve as signed in, answered by [`recover`].
struct Refused {
    state: Arc<AppState>,
    accept_language: Option<String>,
    why: NotSignedIn,
}

impl std::fmt::Debug for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refused").field("why", &self.why).finish()
    }
}

impl warp::reject::Reject for Refused {}

fn provenance() -> impl Filter<Extract = (Provenance,), Error = Rejection> + Clone {
    warp::header::optional::<String>("origin")
        .and(warp::header::optional::<String>("sec-fetch-site"))
        .map(|origin, sec_fetch_site| Provenance {
            origin,
            sec_fetch_site,
        })
}

/// What a console request presents, before any session is looked at.
fn presented(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Arc<AppState>, Presented), Error = Rejection> + Clone {
    with_state(state.clone())
        .and(client(state))
        .and(warp::header::optional::<String>("cookie"))
        .and(warp::header::optional::<String>("accept-language"))
        .and(provenance())
        .and(x_request_id())
        .map(
            |state, client, cookies, accept_language, provenance, request_id: Result<_, ()>| {
                // An unusable X-Request-Id is dropped: each command then gets a fresh one.
                let request_id = request_id.ok().flatten();
                (
                    state,
                    Presented {
                        client,
                        cookies,
                        accept_language,
                        provenance,
                        request_id,
                    },
                )
            },
        )
        .untuple_one()
}

/// The signed-in context, or a rejection that [`recover`] answers (the sign-in form, `429`,
/// `503`). It reads no body: a post without a session is refused before its body is read.
fn signed_in(state: Arc<AppState>) -> BoxedFilter<(Ctx,)> {
    presented(state)
        .and_then(|state: Arc<AppState>, presented: Presented| async move {
            let accept_language = presented.accept_language.clone();
            session::resume(state.clone(), presented)
                .await
                .map_err(|why| {
                    warp::reject::custom(Refused {
                        state,
                        accept_language,
                        why,
                    })
                })
        })
        .boxed()
}

/// Answers a request refused by [`signed_in`]; any other rejection goes on.
async fn recover(rejection: Rejection) -> Result<Response, Rejection> {
    match rejection.find::<Refused>() {
        Some(refused) => Ok(render::not_signed_in(
            &refused.state,
            refused.accept_language.as_deref(),
            &refused.why,
        )),
        None => Err(rejection),
    }
}

/// Finishes one route: its refusals answered, its type boxed.
fn finish<F>(route: F) -> BoxedFilter<(Response,)>
where
    F: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
{
    route.recover(recover).unify().boxed()
}

/// Every route of the console.
pub(crate) fn routes(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let max = state.settings.gateway.max_body_bytes;
    let form =
        || warp::body::content_length_limit(max).and(warp::body::form::<HashMap<String, String>>());
    let query = || warp::query::<HashMap<String, String>>();
    let upload_limit = state.settings.bulk.max_file_bytes + 64 * 1024;

    let sign_in_page = at(&endpoints::CONSOLE_SIGN_IN_PAGE)
        .and(presented(state.clone()))
        .then(views::sign_in_page);
    let sign_in = at(&endpoints::CONSOLE_SIGN_IN)
        .and(presented(state.clone()))
        .and(form())
        .then(views::sign_in);
    let sign_out = at(&endpoints::CONSOLE_SIGN_OUT)
        .and(signed_in(state.clone()))
        .and(form())
        .then(views::sign_out);
    let overview = at(&endpoints::CONSOLE_OVERVIEW)
        .and(signed_in(state.clone()))
        .then(views::overview);
    let invitations = at(&endpoints::CONSOLE_INVITATIONS)
        .and(signed_in(state.clone()))
        .and(query())
        .then(views::invitations);
    let user = at_with_id(&endpoints::CONSOLE_USER)
        .and(signed_in(state.clone()))
        .and(query())
        .then(|id, ctx, query| views::user(ctx, id, query));
    let resend_page = at_with_id(&endpoints::CONSOLE_RESEND_PAGE)
        .and(signed_in(state.clone()))
        .then(|id, ctx| views::confirm_page(ctx, id, views::Action::Resend));
    let resend = at_with_id(&endpoints::CONSOLE_RESEND)
        .and(signed_in(state.clone()))
        .and(form())
        .then(|id, ctx, form| views::act(ctx, id, views::Action::Resend, form));
    let revoke_page = at_with_id(&endpoints::CONSOLE_REVOKE_PAGE)
        .and(signed_in(state.clone()))
        .then(|id, ctx| views::confirm_page(ctx, id, views::Action::Revoke));
    let revoke = at_with_id(&endpoints::CONSOLE_REVOKE)
        .and(signed_in(state.clone()))
        .and(form())
        .then(|id, ctx, form| views::act(ctx, id, views::Action::Revoke, form));
    let bulk_page = at(&endpoints::CONSOLE_BULK_PAGE)
        .and(signed_in(state.clone()))
        .then(views::bulk_page);
    let bulk_upload = at(&endpoints::CONSOLE_BULK_UPLOAD)
        .and(signed_in(state.clone()))
        .and(warp::multipart::form().max_length(upload_limit))
        .then(views::bulk_upload);
    let bulk_job = at_with_id(&endpoints::CONSOLE_BULK_JOB)
        .and(signed_in(state.clone()))
        .then(views::bulk_job);
    let failed_rows = at_with_id(&endpoints::CONSOLE_BULK_FAILED_ROWS)
        .and(signed_in(state))
        .then(views::failed_rows);

    finish(sign_in_page)
        .or(finish(sign_in))
        .unify()
        .or(finish(sign_out))
        .unify()
        .or(finish(overview))
        .unify()
        .or(finish(invitations))
        .unify()
        .or(finish(user))
        .unify()
        .or(finish(resend_page))
        .unify()
        .or(finish(resend))
        .unify()
        .or(finish(revoke_page))
        .unify()
        .or(finish(revoke))
        .unify()
        .or(finish(bulk_page))
        .unify()
        .or(finish(bulk_upload))
        .unify()
        .or(finish(bulk_job))
        .unify()
        .or(finish(failed_rows))
        .unify()
        .map(Reply::into_response)
        .boxed()
}

#[cfg(test)]
mod tests;
