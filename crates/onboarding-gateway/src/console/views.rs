//! One handler per console page and action. Reads go through the same store queries as the
//! admin API (`list_accounts`, `load`, `events_of`, `bulk_job`); actions run the same commands
//! as `POST /api/v1/users/{id}/resend` and `…/revoke` and `POST /api/v1/bulk-invites`, with the
//! signed-in token as the actor.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Buf;
use chrono::Utc;
use futures::TryStreamExt;
use minijinja::{context, Value};
use onboarding_config::Scope;
use onboarding_domain::value::RevokeReason;
use onboarding_domain::{OnboardingCommand, OnboardingState, RevokedBy};
use onboarding_store::bulk::{self, BulkError, Format, RowStatus};
use onboarding_store::{AccountFilter, StoreError};
use serde_json::json;
use uuid::Uuid;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::figures::{self, duration, percent, when};
use super::render::{self, message, page, see_other};
use super::session::{self, Ctx, Presented, Secret};
use crate::i18n::Lang;
use crate::pages::secure;
use crate::throttle::RouteGroup;
use crate::AppState;

/// Invitations on one page of the list.
const PAGE_SIZE: i64 = 50;
/// Bulk jobs on the bulk page.
const RECENT_JOBS: i64 = 20;

/// A failure of the store, as a page: `503` when waiting helps, else `500`.
fn store_failed(ctx: &Ctx, e: StoreError) -> Response {
    tracing::error!(error = %e, "console page failed");
    let e = crate::ApiError::from(e);
    render::unavailable(&ctx.state, ctx.lang, Some(ctx), e.retry_after())
}

fn not_found(ctx: &Ctx, what: &str) -> Response {
    message(
        &ctx.state,
        ctx.lang,
        Some(ctx),
        StatusCode::NOT_FOUND,
        what,
        &[],
    )
}

fn forbidden(ctx: &Ctx, scope: Scope) -> Response {
    message(
        &ctx.state,
        ctx.lang,
        Some(ctx),
        StatusCode::FORBIDDEN,
        "forbidden",
        &[("scope", scope.as_str())],
    )
}

fn forged(ctx: &Ctx) -> Response {
    message(
        &ctx.state,
        ctx.lang,
        Some(ctx),
        StatusCode::FORBIDDEN,
        "forged",
        &[],
    )
}

/// `GET /admin/sign-in`: the form (or the overview for a browser that is signed in). Sets the
/// form's cookie, whose secret the form's CSRF token signs.
pub(crate) async fn sign_in_page(state: Arc<AppState>, presented: Presented) -> Response {
    let lang = Lang::choose(None, presented.accept_language.as_deref());
    if let Some(secret) = session::presented_session(&state, presented.cookies.as_deref()) {
        if let Ok(Some(_)) = state
            .store
            .admin_session(&secret.sha256(), session::IDLE)
            .await
        {
            return see_other("/admin");
        }
    }
    if let Err(e) = state.throttles.page(presented.client) {
        return render::too_many(&state, lang, None, e.retry_after().unwrap_or(60));
    }
    sign_in_form(&state, lang, None, StatusCode::OK)
}

fn sign_in_form(
    state: &AppState,
    lang: Lang,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let secret = Secret::new();
    let mut r = page(
        state,
        lang,
        None,
        "console/sign_in.html",
        status,
        context! { csrf => session::sign_in_csrf(state, &secret), error },
    );
    r.headers_mut()
        .insert(header::SET_COOKIE, session::sign_in_cookie(state, &secret));
    r
}

/// `POST /admin/sign-in`: a pasted admin token opens a session. Every attempt counts against
/// the client's budget, as an admin request without a valid token does.
pub(crate) async fn sign_in(
    state: Arc<AppState>,
    presented: Presented,
    form: HashMap<String, String>,
) -> Response {
    let lang = Lang::choose(None, presented.accept_language.as_deref());
    if let Err(e) = state
        .throttles
        .unauthenticated(presented.client, RouteGroup::Console)
    {
        return render::too_many(&state, lang, None, e.retry_after().unwrap_or(60));
    }
    let form_secret = session::presented_sign_in(&state, presented.cookies.as_deref());
    if !session::sign_in_genuine(
        &state,
        form_secret.as_ref(),
        form.get("csrf").map(String::as_str),
        &presented.provenance,
    ) {
        metrics::counter!("onboard_forged_posts_total").increment(1);
        return message(&state, lang, None, StatusCode::FORBIDDEN, "forged", &[]);
    }
    let token = form.get("token").map(String::as_str).unwrap_or_default();
    let texts = &state.pages.texts;
    let grant = match state.tokens.presented(token) {
        Ok(grant) => grant,
        Err(_) => {
            return sign_in_form(
                &state,
                lang,
                Some(texts.get(lang, "console_sign_in_refused", &[])),
                StatusCode::UNAUTHORIZED,
            )
        }
    };
    if !grant.has(Scope::Read) {
        return sign_in_form(
            &state,
            lang,
            Some(texts.get(lang, "console_sign_in_no_read", &[])),
            StatusCode::FORBIDDEN,
        );
    }
    let secret = Secret::new();
    match state
        .store
        .open_admin_session(
            &secret.sha256(),
            &grant.id,
            session::IDLE,
            session::LIFETIME,
        )
        .await
    {
        Ok(_) => {
            tracing::info!(token_id = %grant.id, "console session opened");
            let mut r = see_other("/admin");
            r.headers_mut()
                .insert(header::SET_COOKIE, session::session_cookie(&state, &secret));
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "console session not opened");
            let e = crate::ApiError::from(e);
            render::unavailable(&state, lang, None, e.retry_after())
        }
    }
}

/// `POST /admin/sign-out`: ends the session here and in the browser.
pub(crate) async fn sign_out(ctx: Ctx, form: HashMap<String, String>) -> Response {
    if ctx.forged(form.get("csrf").map(String::as_str)) {
        return forged(&ctx);
    }
    if let Err(e) = ctx
        .state
        .store
        .close_admin_session(&ctx.secret().sha256())
        .await
    {
        return store_failed(&ctx, e);
    }
    tracing::info!(token_id = %ctx.grant.id, "console session closed");
    let mut r = see_other("/admin/sign-in?signed_out=1");
    r.headers_mut().insert(
        header::SET_COOKIE,
        session::cleared_session_cookie(&ctx.state),
    );
    r
}

/// `GET /admin`: the overview.
pub(crate) async fn overview(ctx: Ctx) -> Response {
    let state = &ctx.state;
    let (lang, texts) = (ctx.lang, &state.pages.texts);
    let figures = match state.store.overview().await {
        Ok(f) => f,
        Err(e) => return store_failed(&ctx, e),
    };
    let verification = match state.store.last_audit_verification().await {
        Ok(v) => v,
        Err(e) => return store_failed(&ctx, e),
    };
    let now = Utc::now();
    let lag = figures::consumer_lag(state.health.metrics_text().as_deref());
    let values = context! {
        by_state => figures.by_state.iter().map(|(s, n)| json!({"state": s, "count": n})).collect::<Vec<_>>(),
        invitations => figures.invitations,
        active => figures.active,
        activation_rate => percent(figures.active, figures.invitations),
        median_to_activate => figures.median_seconds_to_activate.map(|s| duration(texts, lang, s.round() as i64)),
        mails_queued => figures.mails_queued,
        mails_waiting => figures.mails_waiting_for_retry,
        mails_abandoned => figures.mails_abandoned,
        outbox_backlog => figures.outbox_backlog,
        outbox_oldest_age => figures.outbox_oldest.map(|t| duration(texts, lang, (now - t).num_seconds())),
        outbox_dead_letters => figures.outbox_dead_letters,
        consumer_lag => lag,
        verification => verification.map(|v| json!({
            "ran_at": when(lang, v.ran_at),
            "ran_at_iso": v.ran_at.to_rfc3339(),
            "events": v.events,
            "head": v.head,
            "findings": v.findings,
            "intact": v.intact(),
            "expected_head_missing": v.expected_head_missing,
        })),
    };
    page(
        state,
        lang,
        Some(&ctx),
        "console/overview.html",
        StatusCode::OK,
        values,
    )
}

/// The states an admin can filter by, as the API names them (each with a label of its own in
/// both languages, `console_state_<State>`).
pub(super) const STATES: [&str; 9] = [
    "Invited",
    "CodeIssued",
    "Expired",
    "Locked",
    "Revoked",
    "PasswordSet",
    "Active",
    "Disabled",
    "Erased",
];
const DELIVERIES: [&str; 4] = ["queued", "sent", "failed", "abandoned"];
const PROVISIONINGS: [&str; 3] = ["pending", "provisioned", "failed"];
/// Longest search text.
const MAX_SEARCH: usize = 200;

/// `GET /admin/invitations`: the list, filtered and paged.
pub(crate) async fn invitations(ctx: Ctx, query: HashMap<String, String>) -> Response {
    let state = &ctx.state;
    let (lang, texts) = (ctx.lang, &state.pages.texts);
    let mut problems = Vec::new();
    let pick = |name: &str, allowed: &[&'static str], problems: &mut Vec<String>| match query
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
    {
        None => None,
        Some(v) => match allowed.iter().find(|a| **a == v) {
            Some(a) => Some(*a),
            None => {
                problems.push(texts.get(
                    lang,
                    "console_bad_filter",
                    &[("name", name), ("allowed", &allowed.join(", "))],
                ));
                None
            }
        },
    };
    let wanted_state = pick("state", &STATES, &mut problems);
    let delivery = pick("delivery", &DELIVERIES, &mut problems);
    let provisioning = pick("provisioning", &PROVISIONINGS, &mut problems);
    let search = query
        .get("q")
        .map(|q| q.trim())
        .filter(|q| !q.is_empty())
        .map(|q| q.chars().take(MAX_SEARCH).collect::<String>());
    if search
        .as_ref()
        .is_some_and(|q| q.chars().any(char::is_control))
    {
        problems.push(texts.get(lang, "console_bad_search", &[]));
    }
    let after = match query.get("after").filter(|a| !a.is_empty()) {
        None => None,
        Some(a) => match Uuid::parse_str(a) {
            Ok(id) => Some(id),
            Err(_) => {
                problems.push(texts.get(lang, "console_bad_after", &[]));
                None
            }
        },
    };
    let filters = json!({
        "state": wanted_state,
        "delivery": delivery,
        "provisioning": provisioning,
        "q": search,
    });
    let choices =
        json!({"states": STATES, "deliveries": DELIVERIES, "provisionings": PROVISIONINGS});
    if !problems.is_empty() {
        return page(
            state,
            lang,
            Some(&ctx),
            "console/invitations.html",
            StatusCode::BAD_REQUEST,
            context! { problems, filters, choices, rows => Vec::<()>::new() },
        );
    }
    let filter = AccountFilter {
        state: wanted_state,
        delivery,
        provisioning,
        search: search.as_deref(),
    };
    let mut items = match state
        .store
        .list_accounts(filter, after, PAGE_SIZE + 1)
        .await
    {
        Ok(items) => items,
        Err(e) => return store_failed(&ctx, e),
    };
    let more = items.len() as i64 > PAGE_SIZE;
    items.truncate(PAGE_SIZE as usize);
    let ids: Vec<Uuid> = items.iter().map(|i| i.user_id).collect();
    let opened = match state.store.links_opened(&ids).await {
        Ok(opened) => opened,
        Err(e) => return store_failed(&ctx, e),
    };
    let now = Utc::now();
    let rows: Vec<serde_json::Value> = items
        .iter()
        .map(|i| {
            json!({
                "id": i.user_id,
                "username": i.username,
                "email": i.email,
                "domain": i.domain,
                "state": i.state,
                "delivery": i.delivery,
                "provisioning": i.provisioning,
                "invited": when(lang, i.created_at),
                "invited_iso": i.created_at.to_rfc3339(),
                "since_invitation": duration(texts, lang, (now - i.created_at).num_seconds()),
                "link_opened": opened.contains(&i.user_id),
            })
        })
        .collect();
    let next_after = more.then(|| ids.last().copied()).flatten();
    page(
        state,
        lang,
        Some(&ctx),
        "console/invitations.html",
        StatusCode::OK,
        context! { problems, filters, choices, rows, next_after, first_page => after.is_none() },
    )
}

/// The events whose payload tells of a mail.
const MAIL_EVENTS: [&str; 4] = [
    "InvitationMailSent",
    "InvitationMailFailed",
    "InvitationMailAbandoned",
    "WelcomeMailSent",
];

/// `GET /admin/users/{id}`: the account, its timeline, its mails, and its actions.
pub(crate) async fn user(ctx: Ctx, id: String, query: HashMap<String, String>) -> Response {
    let state = &ctx.state;
    let lang = ctx.lang;
    let Ok(user_id) = Uuid::parse_str(&id) else {
        return not_found(&ctx, "no_user");
    };
    let account = match state.store.load(user_id).await {
        Ok(Some(account)) => account,
        Ok(None) => return not_found(&ctx, "no_user"),
        Err(e) => return store_failed(&ctx, e),
    };
    let events = match state.store.events_of(user_id).await {
        Ok(events) => events,
        Err(e) => return store_failed(&ctx, e),
    };
    let now = Utc::now();
    let view = crate::api::user_view(&account, now);
    let at = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| when(lang, t.with_timezone(&Utc)))
    };
    let meta = |e: &onboarding_store::StoredEvent, k: &str| {
        e.metadata
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let timeline: Vec<serde_json::Value> = events
        .iter()
        .map(|e| {
            let actor = match (meta(e, "actor_kind"), meta(e, "actor_id")) {
                (Some(kind), Some(id)) => format!("{kind}:{id}"),
                (Some(kind), None) => kind,
                _ => "-".to_owned(),
            };
            json!({
                "sequence": e.sequence,
                "position": e.global_position,
                "type": e.event_type,
                "version": e.event_version,
                "at": when(lang, e.recorded_at),
                "at_iso": e.recorded_at.to_rfc3339(),
                "actor": actor,
                "request_id": meta(e, "correlation_id"),
            })
        })
        .collect();
    let mails: Vec<serde_json::Value> = events
        .iter()
        .filter(|e| MAIL_EVENTS.contains(&e.event_type.as_str()))
        .map(|e| {
            let p = &e.payload[&e.event_type];
            json!({
                "type": e.event_type,
                "at": when(lang, e.recorded_at),
                "at_iso": e.recorded_at.to_rfc3339(),
                "message_id": p["message_id"],
                "smtp_response": p["smtp_response"],
                "reason": p["reason"],
                "attempt": p.get("attempt").or_else(|| p.get("attempts")),
                "next_attempt_at": at(&p["next_attempt_at"]),
                "template": p["template"]["id"],
            })
        })
        .collect();
    let current = account.state_at(now);
    // Resend and revoke apply to an invitation not yet accepted.
    let pending = matches!(
        current,
        OnboardingState::Invited
            | OnboardingState::CodeIssued
            | OnboardingState::Expired
            | OnboardingState::Locked
    );
    let times = json!({
        "created_at": at(&view["created_at"]),
        "code_expires_at": at(&view["code_expires_at"]),
        "activated_at": at(&view["activated_at"]),
        "revoked_at": at(&view["revoked_at"]),
        "erased_at": at(&view["erased_at"]),
        "since_invitation": account.created_at.map(|c| duration(&state.pages.texts, lang, (now - c).num_seconds())),
    });
    let claims = serde_json::to_string_pretty(&view["claims"]).unwrap_or_default();
    let done = query
        .get("done")
        .map(String::as_str)
        .filter(|d| matches!(*d, "resent" | "revoked"));
    page(
        state,
        lang,
        Some(&ctx),
        "console/user.html",
        StatusCode::OK,
        context! { user => view, times, claims, timeline, mails, pending, done },
    )
}

/// An action on one account, each behind a confirmation page.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action {
    Resend,
    Revoke,
}

impl Action {
    fn scope(self) -> Scope {
        match self {
            Self::Resend => Scope::Invite,
            Self::Revoke => Scope::Revoke,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Resend => "resend",
            Self::Revoke => "revoke",
        }
    }
}

/// `GET /admin/users/{id}/resend` and `…/revoke`: asks to confirm. Changes nothing.
pub(crate) async fn confirm_page(ctx: Ctx, id: String, action: Action) -> Response {
    if !ctx.grant.has(action.scope()) {
        return forbidden(&ctx, action.scope());
    }
    let Ok(user_id) = Uuid::parse_str(&id) else {
        return not_found(&ctx, "no_user");
    };
    let account = match ctx.state.store.load(user_id).await {
        Ok(Some(account)) => account,
        Ok(None) => return not_found(&ctx, "no_user"),
        Err(e) => return store_failed(&ctx, e),
    };
    let username = account.username.as_ref().map(|u| u.as_str().to_owned());
    let email = account.email.as_ref().map(|e| e.as_str().to_owned());
    page(
        &ctx.state,
        ctx.lang,
        Some(&ctx),
        "console/confirm.html",
        StatusCode::OK,
        context! { action => action.name(), id => user_id, username, email },
    )
}

/// `POST /admin/users/{id}/resend` and `…/revoke`: the action, after the CSRF and scope checks;
/// then back to the user's page.
pub(crate) async fn act(
    ctx: Ctx,
    id: String,
    action: Action,
    form: HashMap<String, String>,
) -> Response {
    if ctx.forged(form.get("csrf").map(String::as_str)) {
        return forged(&ctx);
    }
    if !ctx.grant.has(action.scope()) {
        return forbidden(&ctx, action.scope());
    }
    let state = &ctx.state;
    let Ok(user_id) = Uuid::parse_str(&id) else {
        return not_found(&ctx, "no_user");
    };
    match state.store.load(user_id).await {
        Ok(Some(_)) => {}
        Ok(None) => return not_found(&ctx, "no_user"),
        Err(e) => return store_failed(&ctx, e),
    }
    let actor = ctx.grant.actor();
    let result = match action {
        Action::Resend => {
            let validity = state
                .settings
                .identity_mgt
                .user_onboarding
                .ask_password_email_validity;
            let command = || OnboardingCommand::ResendCode {
                code: state.new_code(validity),
                limits: state.resend_limits(),
                now: Utc::now(),
            };
            state.store.execute_retrying(user_id, command, &actor).await
        }
        Action::Revoke => {
            let reason = match form
                .get("reason")
                .map(|r| r.trim())
                .filter(|r| !r.is_empty())
                .map(RevokeReason::parse)
                .transpose()
            {
                Ok(reason) => reason,
                Err(e) => {
                    return message(
                        state,
                        ctx.lang,
                        Some(&ctx),
                        StatusCode::BAD_REQUEST,
                        "bad_reason",
                        &[("why", &e.0)],
                    )
                }
            };
            let command = || OnboardingCommand::RevokeInvitation {
                by: RevokedBy::Admin,
                reason: reason.clone(),
                now: Utc::now(),
            };
            state.store.execute_retrying(user_id, command, &actor).await
        }
    };
    match result {
        Ok(()) => {
            tracing::info!(%user_id, token_id = %ctx.grant.id, action = action.name(), "console action");
            let done = match action {
                Action::Resend => "resent",
                Action::Revoke => "revoked",
            };
            see_other(&format!("/admin/users/{user_id}?done={done}"))
        }
        Err(StoreError::Refused(e)) => message(
            state,
            ctx.lang,
            Some(&ctx),
            StatusCode::CONFLICT,
            "refused",
            &[("why", &e.to_string()), ("id", &user_id.to_string())],
        ),
        Err(e) => store_failed(&ctx, e),
    }
}

/// `GET /admin/bulk`: the upload form and the latest jobs.
pub(crate) async fn bulk_page(ctx: Ctx) -> Response {
    let lang = ctx.lang;
    let jobs = match ctx.state.store.recent_bulk_jobs(RECENT_JOBS).await {
        Ok(jobs) => jobs,
        Err(e) => return store_failed(&ctx, e),
    };
    let jobs: Vec<serde_json::Value> = jobs
        .iter()
        .map(|j| {
            json!({
                "id": j.job_id,
                "actor": j.actor_id,
                "status": j.status,
                "rows": j.total_rows,
                "created": when(lang, j.created_at),
                "created_iso": j.created_at.to_rfc3339(),
            })
        })
        .collect();
    bulk_form(&ctx, jobs, None, StatusCode::OK)
}

fn bulk_form(
    ctx: &Ctx,
    jobs: Vec<serde_json::Value>,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let max_bytes = ctx.state.settings.bulk.max_file_bytes;
    page(
        &ctx.state,
        ctx.lang,
        Some(ctx),
        "console/bulk.html",
        status,
        context! { jobs, error, max_bytes },
    )
}

/// `POST /admin/bulk`: a `multipart/form-data` upload (the form's file and CSRF token) records a
/// job, as `POST /api/v1/bulk-invites` does, and shows its page.
pub(crate) async fn bulk_upload(ctx: Ctx, form: warp::multipart::FormData) -> Response {
    let texts = &ctx.state.pages.texts;
    let lang = ctx.lang;
    let mut csrf = None;
    let mut file: Option<(Option<String>, Option<String>, Vec<u8>)> = None;
    // Each part's data must be read before the next part is asked for.
    let mut form = form;
    loop {
        let mut part = match form.try_next().await {
            Ok(Some(part)) => part,
            Ok(None) => break,
            Err(e) => {
                tracing::info!(error = %e, "console upload not readable");
                return bulk_form(
                    &ctx,
                    Vec::new(),
                    Some(texts.get(lang, "console_bulk_unreadable", &[])),
                    StatusCode::BAD_REQUEST,
                );
            }
        };
        let mut data = Vec::new();
        while let Some(chunk) = part.data().await {
            let Ok(mut chunk) = chunk else {
                return bulk_form(
                    &ctx,
                    Vec::new(),
                    Some(texts.get(lang, "console_bulk_unreadable", &[])),
                    StatusCode::BAD_REQUEST,
                );
            };
            while chunk.has_remaining() {
                let bytes = chunk.chunk();
                data.extend_from_slice(bytes);
                let n = bytes.len();
                chunk.advance(n);
            }
        }
        match part.name() {
            "csrf" => csrf = String::from_utf8(data).ok(),
            "file" => {
                file = Some((
                    part.filename().map(str::to_owned),
                    part.content_type().map(str::to_owned),
                    data,
                ))
            }
            _ => {}
        }
    }
    if ctx.forged(csrf.as_deref()) {
        return forged(&ctx);
    }
    if !ctx.grant.has(Scope::Invite) {
        return forbidden(&ctx, Scope::Invite);
    }
    let refuse = |key: &str, args: &[(&str, &str)]| {
        bulk_form(
            &ctx,
            Vec::new(),
            Some(texts.get(lang, key, args)),
            StatusCode::BAD_REQUEST,
        )
    };
    let rules = &ctx.state.settings.identity_mgt.user_onboarding;
    if rules.invitations_enabled().is_err() {
        return refuse("console_bulk_disabled", &[]);
    }
    let Some((name, content_type, body)) = file.filter(|(_, _, body)| !body.is_empty()) else {
        return refuse("console_bulk_no_file", &[]);
    };
    let format = name
        .as_deref()
        .and_then(Format::from_file_name)
        .or_else(|| content_type.as_deref().and_then(Format::from_media_type));
    let Some(format) = format else {
        return refuse("console_bulk_format", &[]);
    };
    let rows = match bulk::parse(format, &body, rules) {
        Ok(rows) => rows,
        Err(BulkError::File(why)) => return refuse("console_bulk_refused", &[("why", &why)]),
        Err(BulkError::Store(e)) => return store_failed(&ctx, e),
    };
    let job_id = match ctx
        .state
        .store
        .create_bulk_job(&ctx.grant.id, format, &bulk::digest(&body), &rows)
        .await
    {
        Ok(id) => id,
        Err(e) => return store_failed(&ctx, e),
    };
    ctx.state.bulk.ring();
    tracing::info!(%job_id, rows = rows.len(), format = format.as_str(), "bulk invitation job recorded from the console");
    see_other(&format!("/admin/bulk/{job_id}"))
}

/// The rows of a job that were not created: their line, status and reason.
fn failed(job: &bulk::JobView) -> impl Iterator<Item = &bulk::RowView> {
    job.rows
        .iter()
        .filter(|r| !matches!(r.status, RowStatus::Created | RowStatus::Pending))
}

/// `GET /admin/bulk/{job_id}`: the job's progress (the page reloads itself while it runs) and
/// its failed rows.
pub(crate) async fn bulk_job(id: String, ctx: Ctx) -> Response {
    let Ok(job_id) = Uuid::parse_str(&id) else {
        return not_found(&ctx, "no_job");
    };
    let job = match ctx.state.store.bulk_job(job_id).await {
        Ok(Some(job)) => job,
        Ok(None) => return not_found(&ctx, "no_job"),
        Err(e) => return store_failed(&ctx, e),
    };
    let lang = ctx.lang;
    let totals = &job.totals;
    let applied = totals.rows - totals.pending;
    let failed_rows: Vec<&bulk::RowView> = failed(&job).collect();
    page(
        &ctx.state,
        lang,
        Some(&ctx),
        "console/job.html",
        StatusCode::OK,
        context! {
            job_id,
            running => job.status == bulk::JobStatus::Running,
            status => job.status,
            format => job.format,
            created => when(lang, job.created_at),
            finished => job.finished_at.map(|t| when(lang, t)),
            totals => Value::from_serialize(totals),
            applied,
            percent => percent(applied, totals.rows),
            failed_rows => Value::from_serialize(&failed_rows),
        },
    )
}

/// A CSV cell that a spreadsheet will not run as a formula.
fn cell(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

/// `GET /admin/bulk/{job_id}/failed.csv`: the failed rows, to fix and upload again.
pub(crate) async fn failed_rows(id: String, ctx: Ctx) -> Response {
    let Ok(job_id) = Uuid::parse_str(&id) else {
        return not_found(&ctx, "no_job");
    };
    let job = match ctx.state.store.bulk_job(job_id).await {
        Ok(Some(job)) => job,
        Ok(None) => return not_found(&ctx, "no_job"),
        Err(e) => return store_failed(&ctx, e),
    };
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut write = || -> Result<Vec<u8>, csv::Error> {
        out.write_record(["line", "status", "username", "reason"])?;
        for row in failed(&job) {
            out.write_record([
                row.line.to_string(),
                row.status.to_string(),
                cell(row.username.as_deref().unwrap_or_default()),
                cell(row.reason.as_deref().unwrap_or_default()),
            ])?;
        }
        out.flush()?;
        Ok(out.get_ref().clone())
    };
    let body = match write() {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(error = %e, "failed rows not written");
            return render::unavailable(&ctx.state, ctx.lang, Some(&ctx), None);
        }
    };
    let mut r = warp::reply::with_header(body, header::CONTENT_TYPE, "text/csv; charset=utf-8")
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"job-{job_id}-failed-rows.csv\""
    )) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    secure(r)
}

#[cfg(test)]
mod tests {
    use super::cell;

    #[test]
    fn a_cell_that_a_spreadsheet_would_run_is_quoted() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(cell("+1"), "'+1");
        assert_eq!(cell("jane"), "jane");
    }
}
