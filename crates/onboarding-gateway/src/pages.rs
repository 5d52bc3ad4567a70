//! The password page behind the link. `GET` and `HEAD` only render (mail scanners open links);
//! only a `POST` with a usable password can consume the code.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use minijinja::{context, Environment, Value};
use onboarding_domain::code::PresentedCode;
use onboarding_domain::password::Password;
use onboarding_domain::OnboardingError;
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

/// The page for a refusal, said before any password is asked for.
fn refusal(state: &AppState, error: &OnboardingError) -> Response {
    match error {
        OnboardingError::CodeExpired { expired_at } => {
            let when = format!("This link expired on {}.", expires_text(*expired_at));
            result(
                state,
                StatusCode::GONE,
                "This link has expired",
                &[&when, "Ask your administrator to send you a new invitation link."],
            )
        }
        OnboardingError::CodeSuperseded => result(
            state,
            StatusCode::GONE,
            "A newer link was sent",
            &["This link was replaced by a newer one. Use the link in the most recent email you received."],
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
        },
    )
}

/// `GET /confirm?code=…` (and `HEAD`): shows the form, or what happened to the link. Changes nothing.
pub async fn show(state: Arc<AppState>, query: HashMap<String, String>) -> Response {
    let code = query.get("code").map(String::as_str).unwrap_or_default();
    let Ok(presented) = PresentedCode::parse(code) else {
        return refusal(&state, &OnboardingError::InvalidCode);
    };
    let account = match state.store.load(presented.user_id).await {
        Ok(Some(a)) => a,
        Ok(None) => return refusal(&state, &OnboardingError::InvalidCode),
        Err(e) => return unavailable(&state, e.into()),
    };
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
        Err(e) => refusal(&state, &e),
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
pub async fn submit(state: Arc<AppState>, form_data: HashMap<String, String>) -> Response {
    let code = form_data
        .get("code")
        .map(String::as_str)
        .unwrap_or_default();
    let password = form_data
        .get("password")
        .map(String::as_str)
        .unwrap_or_default();
    let confirm = form_data
        .get("password_confirm")
        .map(String::as_str)
        .unwrap_or_default();

    let Ok(presented) = PresentedCode::parse(code) else {
        return refusal(&state, &OnboardingError::InvalidCode);
    };
    let account = match state.store.load(presented.user_id).await {
        Ok(Some(a)) => a,
        Ok(None) => return refusal(&state, &OnboardingError::InvalidCode),
        Err(e) => return unavailable(&state, e.into()),
    };
    let issued = match account.check_code(&presented, &state.keyring, Utc::now()) {
        Ok(issued) => issued.clone(),
        Err(e) => return refusal(&state, &e),
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
        Err(ApiError::Refused(e)) => refusal(&state, &e),
        Err(e) => unavailable(&state, e),
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
