//! Rendering the console's pages: the templates under `templates/console/` (HTML-escaped by
//! minijinja, as every `.html` template), the texts of the reader's language, and the headers
//! every page of the gateway carries (`pages::secure`: no script, no framing, no cache, no
//! referrer).

use minijinja::{context, Value};
use onboarding_config::Scope;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::session::{self, Ctx, NotSignedIn};
use crate::i18n::Lang;
use crate::pages::secure;
use crate::AppState;

/// The console's templates, added to the pages' environment (`Pages::new`).
pub(crate) const TEMPLATES: &[(&str, &str)] = &[
    (
        "console/base.html",
        include_str!("../../templates/console/base.html"),
    ),
    (
        "console/sign_in.html",
        include_str!("../../templates/console/sign_in.html"),
    ),
    (
        "console/message.html",
        include_str!("../../templates/console/message.html"),
    ),
    (
        "console/overview.html",
        include_str!("../../templates/console/overview.html"),
    ),
    (
        "console/invitations.html",
        include_str!("../../templates/console/invitations.html"),
    ),
    (
        "console/user.html",
        include_str!("../../templates/console/user.html"),
    ),
    (
        "console/confirm.html",
        include_str!("../../templates/console/confirm.html"),
    ),
    (
        "console/bulk.html",
        include_str!("../../templates/console/bulk.html"),
    ),
    (
        "console/job.html",
        include_str!("../../templates/console/job.html"),
    ),
];

/// Renders `template` with what every page has: the organisation, the language and its texts,
/// and, for a signed-in admin, the token's id, what it may do and the form's CSRF token.
pub(crate) fn page(
    state: &AppState,
    lang: Lang,
    ctx: Option<&Ctx>,
    template: &str,
    status: StatusCode,
    values: Value,
) -> Response {
    let pages = &state.pages;
    let admin = ctx.map(|ctx| {
        context! {
            token_id => &ctx.grant.id,
            can_invite => ctx.grant.has(Scope::Invite),
            can_revoke => ctx.grant.has(Scope::Revoke),
            csrf => ctx.csrf(),
        }
    });
    let rendered = pages.templates.get_template(template).and_then(|t| {
        t.render(context! {
            organisation => &pages.organisation,
            lang => lang.tag(),
            t => pages.texts.for_templates(lang),
            admin,
            ..values
        })
    });
    match rendered {
        Ok(html) => {
            secure(warp::reply::with_status(warp::reply::html(html), status).into_response())
        }
        Err(e) => {
            tracing::error!(error = %e, template, "console page rendering failed");
            secure(
                warp::reply::with_status("internal error", StatusCode::INTERNAL_SERVER_ERROR)
                    .into_response(),
            )
        }
    }
}

/// A page that says what happened: the texts `console_<what>_heading` and `…_line`.
pub(crate) fn message(
    state: &AppState,
    lang: Lang,
    ctx: Option<&Ctx>,
    status: StatusCode,
    what: &str,
    args: &[(&str, &str)],
) -> Response {
    let texts = &state.pages.texts;
    let heading = texts.get(lang, &format!("console_{what}_heading"), args);
    let line = texts.get(lang, &format!("console_{what}_line"), args);
    page(
        state,
        lang,
        ctx,
        "console/message.html",
        status,
        context! { heading, line },
    )
}

/// `303 See Other` to `location`.
pub(crate) fn see_other(location: &str) -> Response {
    let mut r = warp::reply::with_status(warp::reply(), StatusCode::SEE_OTHER).into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure(r)
}

/// `429` with `Retry-After`.
pub(crate) fn too_many(state: &AppState, lang: Lang, ctx: Option<&Ctx>, seconds: u64) -> Response {
    let mut r = message(
        state,
        lang,
        ctx,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many",
        &[("seconds", &seconds.to_string())],
    );
    r.headers_mut()
        .insert("retry-after", HeaderValue::from(seconds));
    r
}

/// `503`, with `Retry-After` when waiting helps.
pub(crate) fn unavailable(
    state: &AppState,
    lang: Lang,
    ctx: Option<&Ctx>,
    retry_after: Option<u64>,
) -> Response {
    let mut r = message(
        state,
        lang,
        ctx,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        &[],
    );
    if let Some(seconds) = retry_after {
        r.headers_mut()
            .insert("retry-after", HeaderValue::from(seconds));
    }
    r
}

/// The answer to a request without a usable session.
pub(crate) fn not_signed_in(
    state: &AppState,
    accept_language: Option<&str>,
    why: &NotSignedIn,
) -> Response {
    let lang = Lang::choose(None, accept_language);
    match why {
        NotSignedIn::SignIn { expired } => {
            let mut r = see_other(if *expired {
                "/admin/sign-in?ended=1"
            } else {
                "/admin/sign-in"
            });
            if *expired {
                r.headers_mut()
                    .insert(header::SET_COOKIE, session::cleared_session_cookie(state));
            }
            r
        }
        NotSignedIn::TooMany(seconds) => too_many(state, lang, None, *seconds),
        NotSignedIn::Unavailable(retry_after) => unavailable(state, lang, None, *retry_after),
    }
}
