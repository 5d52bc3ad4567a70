//! The password page behind the link. `GET` and `HEAD` only render (mail scanners open links);
//! only a `POST` with a usable password can consume the code.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use minijinja::{context, Environment, Value};
use onboarding_config::{OrganisationSettings, PublicBaseUrl};
use onboarding_domain::code::PresentedCode;
use onboarding_domain::password::Password;
use onboarding_domain::{Onboarding, OnboardingCommand, OnboardingError};
use onboarding_store::Actor;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use crate::api::submit_password;
use crate::error::ApiError;
use crate::i18n::{Lang, Texts, TextsError};
use crate::throttle::ClientKey;
use crate::AppState;

pub const CSS: &str = include_str!("../assets/onboard.css");

/// What the pages are made of: their templates, their texts in every language they are
/// written in, and the organisation they speak for.
pub(crate) struct Pages {
    pub(crate) templates: Environment<'static>,
    pub(crate) texts: Texts,
    /// `organisation.name`, shown on every page.
    pub(crate) organisation: String,
}

impl Pages {
    pub(crate) fn new(organisation: &OrganisationSettings) -> Result<Self, TextsError> {
        let mut templates = Environment::new();
        for (name, source) in [
            ("base.html", include_str!("../templates/base.html")),
            ("confirm.html", include_str!("../templates/confirm.html")),
            ("result.html", include_str!("../templates/result.html")),
        ]
        .into_iter()
        .chain(crate::console::TEMPLATES.iter().copied())
        {
            templates
                .add_template(name, source)
                .expect("page templates are valid");
        }
        Ok(Self {
            templates,
            texts: Texts::load()?,
            organisation: organisation.name.clone(),
        })
    }
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

/// What every page is rendered with: the gateway, the reader's language, and the time zone of
/// the invitation (when the page belongs to one that names it).
struct Page<'a> {
    state: &'a AppState,
    lang: Lang,
    time_zone: Option<String>,
}

impl<'a> Page<'a> {
    /// A page for an invitation: in its locale and time zone (else as the browser asks).
    fn of(
        state: &'a AppState,
        account: Option<&Onboarding>,
        accept_language: Option<&str>,
    ) -> Self {
        let locale = account.and_then(|a| a.locale.as_ref()).map(|l| l.as_str());
        Self {
            state,
            lang: Lang::choose(locale, accept_language),
            time_zone: account
                .and_then(|a| a.time_zone.as_ref())
                .map(|z| z.as_str().to_owned()),
        }
    }

    /// A page for this invitation, as [`Page::of`], keeping the browser's preference.
    fn for_account(&self, account: &Onboarding, accept_language: Option<&str>) -> Self {
        Self::of(self.state, Some(account), accept_language)
    }

    fn t(&self, key: &str) -> String {
        self.state.pages.texts.get(self.lang, key, &[])
    }

    fn t_with(&self, key: &str, args: &[(&str, &str)]) -> String {
        self.state.pages.texts.get(self.lang, key, args)
    }

    /// An instant in the reader's language and the invitation's time zone, as in the mails.
    fn when(&self, at: DateTime<Utc>) -> String {
        onboarding_domain::display::format_instant(at, self.lang.tag(), self.time_zone.as_deref())
    }
}

fn render(page: &Page, template: &str, status: StatusCode, ctx: Value) -> Response {
    let pages = &page.state.pages;
    let rendered = pages.templates.get_template(template).and_then(|t| {
        t.render(context! {
            organisation => &pages.organisation,
            lang => page.lang.tag(),
            t => pages.texts.for_templates(page.lang),
            ..ctx
        })
    });
    match rendered {
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

/// A page that says what happened: the texts `<what>_heading` and `<what>_line`.
fn result(page: &Page, status: StatusCode, what: &str) -> Response {
    let line = page.t(&format!("{what}_line"));
    result_lines(page, status, what, &[line])
}

fn result_lines(page: &Page, status: StatusCode, what: &str, lines: &[String]) -> Response {
    let heading = page.t(&format!("{what}_heading"));
    render(page, "result.html", status, context! { heading, lines })
}

/// A result page that offers "send me a new link" for the code the user holds.
fn result_with_new_link(
    page: &Page,
    status: StatusCode,
    what: &str,
    lines: &[String],
    code: &str,
) -> Response {
    let heading = page.t(&format!("{what}_heading"));
    render(
        page,
        "result.html",
        status,
        context! { heading, lines, new_link_code => code, csrf => csrf(page.state, code) },
    )
}

/// The page's anti-forgery token: a signature of the code it was rendered for.
fn csrf(state: &AppState, code: &str) -> String {
    state.keyring().sign("csrf", code.as_bytes())
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
    pub(crate) fn allowed(&self, public_base_url: &PublicBaseUrl) -> bool {
        // The origin is scheme, host and port: the base URL may carry a path.
        let ours = public_base_url.origin();
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
    page: &Page,
    code: &str,
    form: &HashMap<String, String>,
    provenance: &Provenance,
) -> Option<Response> {
    let state = page.state;
    let token_ok = form
        .get("csrf")
        .is_some_and(|t| state.keyring().verify_signature("csrf", code.as_bytes(), t));
    if token_ok && provenance.allowed(&state.settings.gateway.public_base_url) {
        return None;
    }
    metrics::counter!("onboard_forged_posts_total").increment(1);
    Some(result(page, StatusCode::FORBIDDEN, "forged"))
}

/// What every public form post passes first: the per-client limit and the anti-forgery checks.
/// Returns the form's code.
fn admit<'f>(
    page: &Page,
    client: Option<ClientKey>,
    provenance: &Provenance,
    form: &'f HashMap<String, String>,
) -> Result<&'f str, Box<Response>> {
    if let Err(e) = page.state.throttles.form(client) {
        return Err(Box::new(too_many(page, e)));
    }
    let code = form.get("code").map(String::as_str).unwrap_or_default();
    match forged(page, code, form, provenance) {
        Some(refused) => Err(Box::new(refused)),
        None => Ok(code),
    }
}

fn too_many(page: &Page, e: ApiError) -> Response {
    let seconds = e.retry_after().unwrap_or(60);
    let line = page.t_with("too_many_line", &[("seconds", &seconds.to_string())]);
    let mut r = result_lines(page, StatusCode::TOO_MANY_REQUESTS, "too_many", &[line]);
    r.headers_mut()
        .insert("retry-after", HeaderValue::from(seconds));
    r
}

/// The page for a refusal, said before any password is asked for. Where a new link can help,
/// the page offers one for the code the user holds.
fn refusal(page: &Page, error: &OnboardingError, code: &str) -> Response {
    let line = |what: &str| vec![page.t(&format!("{what}_line"))];
    match error {
        OnboardingError::CodeExpired { expired_at } => {
            let when = page.t_with("expired_line", &[("date", &page.when(*expired_at))]);
            result_with_new_link(page, StatusCode::GONE, "expired", &[when], code)
        }
        OnboardingError::CodeSuperseded => result_with_new_link(
            page,
            StatusCode::GONE,
            "superseded",
            &line("superseded"),
            code,
        ),
        OnboardingError::CodeLocked => {
            result_with_new_link(page, StatusCode::GONE, "locked", &line("locked"), code)
        }
        OnboardingError::InvitationRevoked => result(page, StatusCode::GONE, "revoked"),
        OnboardingError::AlreadyActive => result(page, StatusCode::CONFLICT, "active"),
        _ => result(page, StatusCode::BAD_REQUEST, "invalid"),
    }
}

fn form(
    page: &Page,
    code: &str,
    username: &str,
    expires_at: DateTime<Utc>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let policy = &page.state.store.services().policy;
    render(
        page,
        "confirm.html",
        status,
        context! {
            code,
            hello => page.t_with("form_hello", &[("username", username)]),
            username,
            error,
            rules => page.state.pages.texts.rules(page.lang, policy),
            min_length => policy.min_length,
            max_length => policy.max_length,
            expires_at => expires_at.to_rfc3339(),
            expires => page.t_with("form_expires", &[("date", &page.when(expires_at))]),
            csrf => csrf(page.state, code),
        },
    )
}

/// `GET /confirm?code=…` (and `HEAD`): shows the form, or what happened to the link. Changes no
/// state; a genuine code's opening is recorded (`LinkOpened`, with a coarse client class). A
/// client over its page budget is told to wait before the code is looked at.
pub async fn show(
    state: Arc<AppState>,
    client: Option<ClientKey>,
    method: warp::http::Method,
    user_agent: Option<String>,
    accept_language: Option<String>,
    query: HashMap<String, String>,
) -> Response {
    let code = query.get("code").map(String::as_str).unwrap_or_default();
    let page = Page::of(&state, None, accept_language.as_deref());
    if let Err(e) = state.throttles.page(client) {
        return too_many(&page, e);
    }
    let (presented, account) = match account_for(&page, code).await {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let page = page.for_account(&account, accept_language.as_deref());
    let opened = || OnboardingCommand::RecordLinkOpened {
        presented: presented.clone(),
        client: client_class(method.as_str(), user_agent.as_deref()).to_owned(),
        now: Utc::now(),
    };
    // Best effort: a page must not fail because its visit could not be recorded. An opening
    // that meets another append to the account (the worker recording the mail it just sent, the
    // moment the user clicks) is tried again on the account as it now is.
    if state.throttles.record_open(client) {
        if let Err(e) = state
            .store
            .execute_retrying(presented.user_id, opened, &Actor::user_via_link())
            .await
        {
            tracing::debug!(error = %e, "link opening not recorded");
        }
    }
    match account.check_code(&presented, state.keyring(), Utc::now()) {
        Ok(issued) => form(
            &page,
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
        Err(e) => refusal(&page, &e, code),
    }
}

/// The account a code names, or the page that says why there is none.
async fn account_for(
    page: &Page<'_>,
    code: &str,
) -> Result<(PresentedCode, Onboarding), Box<Response>> {
    let Ok(presented) = PresentedCode::parse(code) else {
        return Err(Box::new(refusal(page, &OnboardingError::InvalidCode, code)));
    };
    match page.state.store.load(presented.user_id).await {
        Ok(Some(account)) => Ok((presented, account)),
        Ok(None) => Err(Box::new(refusal(page, &OnboardingError::InvalidCode, code))),
        Err(e) => Err(Box::new(unavailable(page, e.into()))),
    }
}

/// "Please try again in a moment" (503), with `Retry-After` when waiting helps (the database
/// did not answer, a password could not be hashed).
fn unavailable(page: &Page, e: ApiError) -> Response {
    tracing::error!(error = %e, "page failed");
    let mut r = result(page, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    if let Some(seconds) = e.retry_after() {
        r.headers_mut()
            .insert("retry-after", HeaderValue::from(seconds));
    }
    r
}

/// `POST /confirm`: checks the form, then submits the password. A form that cannot succeed
/// (missing or mismatched password) is answered without touching the code.
pub async fn submit(
    state: Arc<AppState>,
    client: Option<ClientKey>,
    provenance: Provenance,
    accept_language: Option<String>,
    form_data: HashMap<String, String>,
) -> Response {
    let page = Page::of(&state, None, accept_language.as_deref());
    let code = match admit(&page, client, &provenance, &form_data) {
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

    let (presented, account) = match account_for(&page, code).await {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let page = page.for_account(&account, accept_language.as_deref());
    let issued = match account.check_code(&presented, state.keyring(), Utc::now()) {
        Ok(issued) => issued.clone(),
        Err(OnboardingError::InvalidCode) => {
            crate::api::note_wrong_code(crate::api::WrongCodeRoute::Page, &presented);
            return refusal(&page, &OnboardingError::InvalidCode, code);
        }
        Err(e) => return refusal(&page, &e, code),
    };
    let username = account
        .username
        .as_ref()
        .map(|u| u.as_str())
        .unwrap_or_default();
    let again = |msg: &str| {
        form(
            &page,
            code,
            username,
            issued.expires_at,
            Some(msg),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
    };
    if password.is_empty() {
        return again(&page.t("password_missing"));
    }
    if password != confirm {
        return again(&page.t("password_mismatch"));
    }
    match submit_password(&state, code, Password::new(password)).await {
        Ok(_) => result(&page, StatusCode::OK, "activated"),
        Err(ApiError::Refused(OnboardingError::WeakPassword(v))) => {
            again(&state.pages.texts.violation(page.lang, &v))
        }
        Err(ApiError::Refused(OnboardingError::HashingFailed)) => unavailable(
            &page,
            ApiError::Unavailable("password hashing failed".into()),
        ),
        Err(ApiError::Refused(e)) => refusal(&page, &e, code),
        Err(e) => unavailable(&page, e),
    }
}

/// `POST /confirm/new-link`: mails a fresh code to the address on file. The answer is the same
/// whether or not the code matched an invitation that can get one.
pub async fn new_link(
    state: Arc<AppState>,
    client: Option<ClientKey>,
    provenance: Provenance,
    accept_language: Option<String>,
    form_data: HashMap<String, String>,
) -> Response {
    // The answer must not tell whether the code named an invitation: the browser's language.
    let page = Page::of(&state, None, accept_language.as_deref());
    let code = match admit(&page, client, &provenance, &form_data) {
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
            code: onboarding_store::new_code(state.keyring(), validity),
            limits: state.resend_limits(),
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
    result(&page, StatusCode::OK, "check_email")
}

/// `GET /revoke?code=…`: asks whether to decline the invitation. Changes nothing.
pub async fn revoke_page(
    state: Arc<AppState>,
    client: Option<ClientKey>,
    accept_language: Option<String>,
    query: HashMap<String, String>,
) -> Response {
    let code = query.get("code").map(String::as_str).unwrap_or_default();
    let page = Page::of(&state, None, accept_language.as_deref());
    if let Err(e) = state.throttles.page(client) {
        return too_many(&page, e);
    }
    let (presented, account) = match account_for(&page, code).await {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let page = page.for_account(&account, accept_language.as_deref());
    // Any genuine code of a pending invitation may decline it, even an expired or replaced one.
    match account.check_code(&presented, state.keyring(), Utc::now()) {
        Ok(_)
        | Err(OnboardingError::CodeExpired { .. })
        | Err(OnboardingError::CodeSuperseded)
        | Err(OnboardingError::CodeLocked) => {}
        Err(e) => return refusal(&page, &e, code),
    }
    render(
        &page,
        "result.html",
        StatusCode::OK,
        context! {
            heading => page.t("decline_heading"),
            lines => [page.t("decline_line")],
            revoke_code => code,
            csrf => csrf(&state, code),
        },
    )
}

/// `POST /revoke`: the user declines the invitation.
pub async fn revoke_submit(
    state: Arc<AppState>,
    client: Option<ClientKey>,
    provenance: Provenance,
    accept_language: Option<String>,
    form_data: HashMap<String, String>,
) -> Response {
    let page = Page::of(&state, None, accept_language.as_deref());
    let code = match admit(&page, client, &provenance, &form_data) {
        Ok(code) => code,
        Err(refused) => return *refused,
    };
    let Ok(presented) = PresentedCode::parse(code) else {
        return refusal(&page, &OnboardingError::InvalidCode, code);
    };
    let page = match state.store.load(presented.user_id).await {
        Ok(Some(account)) => page.for_account(&account, accept_language.as_deref()),
        _ => page,
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
        Ok(()) => result(&page, StatusCode::OK, "declined"),
        Err(onboarding_store::StoreError::Refused(e)) => refusal(&page, &e, code),
        Err(e) => unavailable(&page, e.into()),
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
