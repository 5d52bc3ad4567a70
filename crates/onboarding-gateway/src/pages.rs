//! The password page behind the link. `GET` and `HEAD` only render (mail scanners open links);
//! only a `POST` with a usable password can consume the code.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use minijinja::{context, Environment, Value};
use onboarding_domain::code::PresentedCode;
use onboarding_domain::password::Password;
use onboarding_domain::{Onboarding, OnboardingCommand, OnboardingError};
use onboarding_store::Actor;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use crate::api::submit_password;
use crate::error::ApiError;
use crate::AppState;

pub const CSS: &str = include_str!("../assets/onboard.css");

pub fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("../templates/base.html")),
        ("confirm.html", include_str!("../templates/confirm.html")),
        ("result.html", include_str!("../templates/result.html")),
    ] {
        env.add_template(name, source)
            .expect("page templates are valid");
    }
    env
}

/// Headers every page carries: the code in the URL must never leak through `Referer`, no cache may
/// keep the page, no script runs, and no one may frame it.
pub fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in [
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        ("pragma", "no-cache"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        (
            "content-security-policy",
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn expires_text(at: DateTime<Utc>) -> String {
    at.format("%A %-d %B %Y, %H:%M UTC").to_string()
}

fn render(state: &AppState, template: &str, status: StatusCode, ctx: Value) -> Response {
    let page = state.pages.get_template(template).and_then(|t| {
        t.render(context! { organisation => &state.settings.organisation.name, ..ctx })
    });
    match page {
        Ok(html) => {
            secure(warp::reply::with_status(warp::reply::html(html), status).into_response())
        }
        Err(e) => {
            tracing::error!(error = %e, template, "page rendering failed");
            secure(
                warp::reply::with_status("internal error", StatusCode::INTERNAL_SERVER_ERROR)
                    .into_response(),
            )
        }
    }
}

fn result(state: &AppState, status: StatusCode, heading: &str, lines: &[&str]) -> Response {
    render(state, "result.html", status, context! { heading, lines })
}

/// A result page that offers "send me a new link" for the code the user holds.
fn result_with_new_link(
    state: &AppState,
    status: StatusCode,
    heading: &str,
    lines: &[&str],
    code: &str,
) -> Response {
    render(
        state,
        "result.html",
        status,
        context! { heading, lines, new_link_code => code, csrf => csrf(state, code) },
    )
}

/// The page's anti-forgery token: a signature of the code it was rendered for.
fn csrf(state: &AppState, code: &str) -> String {
    state.keyring.sign("csrf", code.as_bytes())
}

/// A coarse class of what opened a link, for support staff. No address, no full user agent.
pub fn client_class(method: &str, user_agent: Option<&str>) -> &'static str {
    let ua = user_agent.unwrap_or_default().to_ascii_lowercase();
    let scanners = [
        "safelinks",
        "proofpoint",
        "mimecast",
        "barracuda",
        "urldefense",
        "scanner",
        "preview",
        "bot",
        "spider",
        "crawl",
    ];
    if scanners.iter().any(|s| ua.contains(s)) {
        "link-scanner"
    } else if method == "HEAD" {
        "head-request"
    } else if ua.is_empty() {
        "unknown"
    } else if [
        "curl", "wget", "python", "go-http", "java", "okhttp", "reqwest",
    ]
    .iter()
    .any(|s| ua.contains(s))
    {
        "http-client"
    } else if ua.contains("mozilla") {
        "browser"
    } else {
        "other"
    }
}

/// Where a form post comes from, as the browser tells: refused when it is another site.
pub struct Provenance {
    pub origin: Option<String>,
    pub sec_fetch_site: Option<String>,
}

impl Provenance {
    fn allowed(&self, public_base_url: &str) -> bool {
        // The origin is scheme, host and port: the base URL may carry a path.
        let ours = match public_base_url.find("://") {
            Some(i) => match public_base_url[i + 3..].find('/') {
                Some(j) => &public_base_url[..i + 3 + j],
                None => public_base_url,
            },
            None => public_base_url,
        };
        // `Origin: null` is what browsers send from a page with `Referrer-Policy: no-referrer`
        // (ours); Sec-Fetch-Site and the form's token still tell a forged post apart.
        let origin_ok = self
            .origin
            .as_deref()
            .is_none_or(|o| o == "null" || o.trim_end_matches('/') == ours);
        let site_ok = self
            .sec_fetch_site
            .as_deref()
            .is_none_or(|s| matches!(s, "same-origin" | "none"));
        origin_ok && site_ok
    }
}

/// Checks the form's anti-forgery token and where the post comes from.
fn forged(
    state: &AppState,
    code: &str,
    form: &HashMap<String, String>,
    provenance: &Provenance,
) -> Option<Response> {
    let token_ok = form
        .get("csrf")
        .is_some_and(|t| state.keyring.verify_signature("csrf", code.as_bytes(), t));
    if token_ok && provenance.allowed(&state.settings.gateway.public_base_url) {
        return None;
    }
    metrics::counter!("onboard_forged_posts_total").increment(1);
    Some(result(
        state,
        StatusCode::FORBIDDEN,
        "This form cannot be accepted",
        &["The form did not come from this page. Open the link from your email again and submit the form there."],
    ))
}

/// What every public form post passes first: the per-client limit and the anti-forgery checks.
/// Returns the form's code.
fn admit<'f>(
    state: &AppState,
    client: Option<std::net::IpAddr>,
    provenance: &Provenance,
    form: &'f HashMap<String, String>,
) -> Result<&'f str, Box<Response>> {
    if let Err(e) = state.throttle(client) {
        return Err(Box::new(too_many(state, e)));
    }
    let code = form.get("code").map(String::as_str).unwrap_or_default();
    match forged(state, code, form, provenance) {
        Some(refused) => Err(Box::new(refused)),
        None => Ok(code),
    }
}

fn too_many(state: &AppState, e: ApiError) -> Response {
    let seconds = e.retry_after().unwrap_or(60);
    let line =
        format!("Too many attempts from your network. Wait {seconds} seconds, then try again.");
    let mut r = result(
        state,
        StatusCode::TOO_MANY_REQUESTS,
        "Please wait a moment",
        &[&line],
    );
    r.headers_mut()
        .insert("retry-after", HeaderValue::from(seconds));
    r
}

/// The page for a refusal, said before any password is asked for. Where a new link can help,
/// the page offers one for the code the user holds.
fn refusal(state: &AppState, error: &OnboardingError, code: &str) -> Response {
    match error {
        OnboardingError::CodeExpired { expired_at } => {
            let when = format!("This link expired on {}.", expires_text(*expired_at));
            result_with_new_link(state, StatusCode::GONE, "This link has expired", &[&when], code)
        }
        OnboardingError::CodeSuperseded => result_with_new_link(
            state,
            StatusCode::GONE,
            "A newer link was sent",
            &["This link was replaced by a newer one. Use the link in the most recent email you received, or ask for a new one."],
            code,
        ),
        OnboardingError::CodeLocked => result_with_new_link(
            state,
            StatusCode::GONE,
            "This link was disabled",
            &["Too many wrong attempts were made with this link, so it no longer works."],
            code,
        ),
        OnboardingError::InvitationRevoked => result(
            state,
            StatusCode::GONE,
            "This invitation was withdrawn",
            &["The invitation is no longer valid. Contact your administrator if you need an account."],
        ),
        OnboardingError::AlreadyActive => result(
            state,
            StatusCode::CONFLICT,
            "Your account is already active",
            &["This link has already been used and your password is set. Sign in with it, or use your organisation's password reset if you forgot it."],
        ),
        _ => result(
            state,
            StatusCode::BAD_REQUEST,
            "This link is not valid",
            &["Check that you copied the whole link from the email, or ask your administrator for a new invitation."],
        ),
    }
}

fn form(
    state: &AppState,
    code: &str,
    username: &str,
    expires_at: DateTime<Utc>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let policy = &state.store.services().policy;
    render(
        state,
        "confirm.html",
        status,
        context! {
            code,
            username,
            error,
            rules => policy.describe(),
            min_length => policy.min_length,
            max_length => policy.max_length,
            expires_at => expires_at.to_rfc3339(),
            expires_at_text => expires_text(expires_at),
            csrf => csrf(state, code),
        },
    )
}

/// `GET /confirm?code=…` (and `HEAD`): shows the form, or what happened to the link. Changes no
/// state; a genuine code's opening is recorded (`LinkOpened`, with a coarse client class).
pub async fn show(
    state: Arc<AppState>,
    client: Option<std::net::IpAddr>,
    method: warp::http::Method,
    user_agent: Option<String>,
    query: HashMap<String, String>,
) -> Response {
    let code = query.get("code").map(String::as_str).unwrap_or_default();
    let (presented, account) = match account_for(&state, code).await {
        Ok(found) => found,
        Err(page) => return *page,
    };
    let opened = || OnboardingCommand::RecordLinkOpened {
        presented: presented.clone(),
        client: client_class(method.as_str(), user_agent.as_deref()).to_owned(),
        now: Utc::now(),
    };
    // Best effort: a page must not fail because its visit could not be recorded. An opening
    // that meets another append to the account (the worker recording the mail it just sent, the
    // moment the user clicks) is tried again on the account as it now is.
    if state.record_open(client) {
        if let Err(e) = state
            .store
            .execute_retrying(presented.user_id, opened, &Actor::user_via_link())
            .await
        {
            tracing::debug!(error = %e, "link opening not recorded");
        }
    }
    match account.check_code(&presented, &state.keyring, Utc::now()) {
        Ok(issued) => form(
            &state,
            code,
            account
                .username
                .as_ref()
                .map(|u| u.as_str())
                .unwrap_or_default(),
            issued.expires_at,
            None,
            StatusCode::OK,
        ),
        Err(e) => refusal(&state, &e, code),
    }
}

/// The account a code names, or the page that says why there is none.
async fn account_for(
    state: &AppState,
    code: &str,
) -> Result<(PresentedCode, Onboarding), Box<Response>> {
    let Ok(presented) = PresentedCode::parse(code) else {
        return Err(Box::new(refusal(
            state,
            &OnboardingError::InvalidCode,
            code,
        )));
    };
    match state.store.load(presented.user_id).await {
        Ok(Some(account)) => Ok((presented, account)),
        Ok(None) => Err(Box::new(refusal(
            state,
            &OnboardingError::InvalidCode,
            code,
        ))),
        Err(e) => Err(Box::new(unavailable(state, e.into()))),
    }
}

fn unavailable(state: &AppState, e: ApiError) -> Response {
    tracing::error!(error = %e, "page failed");
    result(
        state,
        StatusCode::SERVICE_UNAVAILABLE,
        "Please try again in a moment",
        &["The service is temporarily unavailable. Your link still works; reload this page shortly."],
    )
}

/// `POST /confirm`: checks the form, then submits the password. A form that cannot succeed
/// (missing or mismatched password) is answered without touching the code.
pub async fn submit(
    state: Arc<AppState>,
    client: Option<std::net::IpAddr>,
    provenance: Provenance,
    form_data: HashMap<String, String>,
) -> Response {
    let code = match admit(&state, client, &provenance, &form_data) {
        Ok(code) => code,
        Err(refused) => return *refused,
    };
    let password = form_data
        .get("password")
        .map(String::as_str)
        .unwrap_or_default();
    let confirm = form_data
        .get("password_confirm")
        .map(String::as_str)
        .unwrap_or_default();

    let (presented, account) = match account_for(&state, code).await {
        Ok(found) => found,
        Err(page) => return *page,
    };
    let issued = match account.check_code(&presented, &state.keyring, Utc::now()) {
        Ok(issued) => issued.clone(),
        Err(OnboardingError::InvalidCode) => {
            crate::api::record_failed_check(&state, &presented).await;
            return refusal(&state, &OnboardingError::InvalidCode, code);
        }
        Err(e) => return refusal(&state, &e, code),
    };
    let username = account
        .username
        .as_ref()
        .map(|u| u.as_str())
        .unwrap_or_default();
    let again = |msg: &str| {
        form(
            &state,
            code,
            username,
            issued.expires_at,
            Some(msg),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
    };
    if password.is_empty() {
        return again("Enter a password, then confirm it.");
    }
    if password != confirm {
        return again("The two passwords do not match. Type the same password in both fields.");
    }
    match submit_password(&state, code, Password::new(password)).await {
        Ok(_) => result(
            &state,
            StatusCode::OK,
            "Your account is active",
            &["Your password is set and your account is now active. You can sign in with your username and new password."],
        ),
        Err(ApiError::Refused(OnboardingError::WeakPassword(v))) => again(&v.to_string()),
        Err(ApiError::Refused(OnboardingError::HashingFailed)) => {
            unavailable(&state, ApiError::Unavailable("password hashing failed".into()))
        }
        Err(ApiError::Refused(e)) => refusal(&state, &e, code),
        Err(e) => unavailable(&state, e),
    }
}

/// `POST /confirm/new-link`: mails a fresh code to the address on file. The answer is the same
/// whether or not the code matched an invitation that can get one.
pub async fn new_link(
    state: Arc<AppState>,
    client: Option<std::net::IpAddr>,
    provenance: Provenance,
    form_data: HashMap<String, String>,
) -> Response {
    let code = match admit(&state, client, &provenance, &form_data) {
        Ok(code) => code,
        Err(refused) => return *refused,
    };
    if let Ok(presented) = PresentedCode::parse(code) {
        let user_id = presented.user_id;
        let validity = state
            .settings
            .identity_mgt
            .user_onboarding
            .ask_password_email_validity;
        let command = || OnboardingCommand::RequestNewLink {
            presented: presented.clone(),
            code: onboarding_store::new_code(&state.keyring, validity),
            limits: state.resend_limits,
            now: Utc::now(),
        };
        match state
            .store
            .execute_retrying(user_id, command, &Actor::user_via_link())
            .await
        {
            Ok(()) => metrics::counter!("onboard_new_link_requests_total", "outcome" => "issued")
                .increment(1),
            Err(e) => {
                tracing::info!(error = %e, "new link not issued");
                metrics::counter!("onboard_new_link_requests_total", "outcome" => "refused")
                    .increment(1);
            }
        }
    }
    result(
        &state,
        StatusCode::OK,
        "Check your email",
        &["If this link belongs to an invitation that can still be completed, a new link is on its way to the email address your administrator registered. It may take a few minutes."],
    )
}

/// `GET /revoke?code=…`: asks whether to decline the invitation. Changes nothing.
pub async fn revoke_page(state: Arc<AppState>, query: HashMap<String, String>) -> Response {
    let code = query.get("code").map(String::as_str).unwrap_or_default();
    let (presented, account) = match account_for(&state, code).await {
        Ok(found) => found,
        Err(page) => return *page,
    };
    // Any genuine code of a pending invitation may decline it, even an expired or replaced one.
    match account.check_code(&presented, &state.keyring, Utc::now()) {
        Ok(_)
        | Err(OnboardingError::CodeExpired { .. })
        | Err(OnboardingError::CodeSuperseded)
        | Err(OnboardingError::CodeLocked) => {}
        Err(e) => return refusal(&state, &e, code),
    }
    render(
        &state,
        "result.html",
        StatusCode::OK,
        context! {
            heading => "Decline this invitation?",
            lines => ["If you did not expect an account, decline the invitation: the link stops working and your administrator can see that you declined it."],
            revoke_code => code,
            csrf => csrf(&state, code),
        },
    )
}

/// `POST /revoke`: the user declines the invitation.
pub async fn revoke_submit(
    state: Arc<AppState>,
    client: Option<std::net::IpAddr>,
    provenance: Provenance,
    form_data: HashMap<String, String>,
) -> Response {
    let code = match admit(&state, client, &provenance, &form_data) {
        Ok(code) => code,
        Err(refused) => return *refused,
    };
    let Ok(presented) = PresentedCode::parse(code) else {
        return refusal(&state, &OnboardingError::InvalidCode, code);
    };
    let user_id = presented.user_id;
    let command = || OnboardingCommand::RevokeWithCode {
        presented: presented.clone(),
        now: Utc::now(),
    };
    match state
        .store
        .execute_retrying(user_id, command, &Actor::user_via_link())
        .await
    {
        Ok(()) => result(
            &state,
            StatusCode::OK,
            "Invitation declined",
            &["The invitation is withdrawn and its link no longer works. Nothing else is needed."],
        ),
        Err(onboarding_store::StoreError::Refused(e)) => refusal(&state, &e, code),
        Err(e) => unavailable(&state, e.into()),
    }
}

pub fn css() -> Response {
    let mut r = warp::reply::with_header(CSS, header::CONTENT_TYPE, "text/css; charset=utf-8")
        .into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}
