//! Console sessions (docs/adr/0028): an admin pastes a token once and gets a cookie holding 32
//! random bytes; PostgreSQL keeps their SHA-256 and the token's id (`admin_sessions`), never the
//! token. Every request reads the token's scopes from the configuration by that id. Every form
//! carries a CSRF token, the keyring's signature of the session's secret (of the sign-in
//! cookie's secret before a session exists), and every post is checked for it and for where it
//! comes from (`Origin`, `Sec-Fetch-Site`), as the public pages are.

use std::sync::Arc;

use chrono::Duration;
use rand::RngCore;
use sha2::{Digest, Sha256};
use warp::http::HeaderValue;

use crate::admin::Grant;
use crate::i18n::Lang;
use crate::pages::Provenance;
use crate::throttle::{ClientKey, RouteGroup};
use crate::AppState;

/// A session ends this long after its last request.
pub(crate) const IDLE: Duration = Duration::minutes(30);
/// A session ends this long after its sign-in, however busy.
pub(crate) const LIFETIME: Duration = Duration::hours(8);
/// The sign-in form's cookie lives this long.
const SIGN_IN_FORM_SECONDS: i64 = 3600;

const SESSION_COOKIE: &str = "onboard_console";
/// The `__Secure-` prefix, which browsers accept only with `Secure`, over TLS.
const SECURE_SESSION_COOKIE: &str = "__Secure-onboard_console";
const SIGN_IN_COOKIE: &str = "onboard_console_signin";
const SECURE_SIGN_IN_COOKIE: &str = "__Secure-onboard_console_signin";

/// The keyring purposes of the two CSRF tokens.
const CSRF_PURPOSE: &str = "console-csrf";
const SIGN_IN_PURPOSE: &str = "console-sign-in";

/// A cookie's secret: 32 bytes from the OS's CSPRNG, hex in the cookie.
#[derive(Clone, Copy)]
pub(crate) struct Secret([u8; 32]);

impl Secret {
    pub(crate) fn new() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    fn parse(hex_text: &str) -> Option<Self> {
        let bytes = hex::decode(hex_text).ok()?;
        Some(Self(<[u8; 32]>::try_from(bytes).ok()?))
    }

    /// What PostgreSQL keeps of it.
    pub(crate) fn sha256(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }

    fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Whether the console is served over TLS, as `gateway.public_base_url` says: then its cookies
/// are `Secure` (and named with the `__Secure-` prefix).
fn over_tls(state: &AppState) -> bool {
    state
        .settings
        .gateway
        .public_base_url
        .origin()
        .starts_with("https://")
}

fn session_cookie_name(state: &AppState) -> &'static str {
    if over_tls(state) {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

fn sign_in_cookie_name(state: &AppState) -> &'static str {
    if over_tls(state) {
        SECURE_SIGN_IN_COOKIE
    } else {
        SIGN_IN_COOKIE
    }
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie<'h>(header: Option<&'h str>, name: &str) -> Option<&'h str> {
    header?.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v.trim())
    })
}

fn set_cookie(state: &AppState, name: &str, value: &str, path: &str, max_age: i64) -> HeaderValue {
    let secure = if over_tls(state) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .expect("cookie names and hex values are valid header text")
}

/// The `Set-Cookie` of a new session.
pub(crate) fn session_cookie(state: &AppState, secret: &Secret) -> HeaderValue {
    set_cookie(
        state,
        session_cookie_name(state),
        &secret.hex(),
        "/admin",
        LIFETIME.num_seconds(),
    )
}

/// The `Set-Cookie` that removes the session cookie.
pub(crate) fn cleared_session_cookie(state: &AppState) -> HeaderValue {
    set_cookie(state, session_cookie_name(state), "", "/admin", 0)
}

/// The `Set-Cookie` of the sign-in form's secret.
pub(crate) fn sign_in_cookie(state: &AppState, secret: &Secret) -> HeaderValue {
    set_cookie(
        state,
        sign_in_cookie_name(state),
        &secret.hex(),
        "/admin/sign-in",
        SIGN_IN_FORM_SECONDS,
    )
}

/// The secret of the session cookie a request presents, if it is well formed.
pub(crate) fn presented_session(state: &AppState, cookies: Option<&str>) -> Option<Secret> {
    cookie(cookies, session_cookie_name(state)).and_then(Secret::parse)
}

/// The secret of the sign-in form's cookie, if the request has one.
pub(crate) fn presented_sign_in(state: &AppState, cookies: Option<&str>) -> Option<Secret> {
    cookie(cookies, sign_in_cookie_name(state)).and_then(Secret::parse)
}

/// The CSRF token of the sign-in form rendered for `secret`.
pub(crate) fn sign_in_csrf(state: &AppState, secret: &Secret) -> String {
    state.keyring().sign(SIGN_IN_PURPOSE, &secret.0)
}

/// Whether a sign-in post is genuine: the form's token signs the cookie's secret, and the
/// browser says the post comes from our own pages.
pub(crate) fn sign_in_genuine(
    state: &AppState,
    secret: Option<&Secret>,
    token: Option<&str>,
    provenance: &Provenance,
) -> bool {
    let signed = match (secret, token) {
        (Some(secret), Some(token)) => {
            state
                .keyring()
                .verify_signature(SIGN_IN_PURPOSE, &secret.0, token)
        }
        _ => false,
    };
    signed && provenance.allowed(&state.settings.gateway.public_base_url)
}

/// A signed-in request: the gateway, the admin's grant (the token's scopes as configured now),
/// the reader's language and the session's secret (for the forms' CSRF token).
pub(crate) struct Ctx {
    pub(crate) state: Arc<AppState>,
    pub(crate) grant: Grant,
    pub(crate) lang: Lang,
    secret: Secret,
    provenance: Provenance,
}

impl Ctx {
    /// The CSRF token every form of this session carries.
    pub(crate) fn csrf(&self) -> String {
        self.state.keyring().sign(CSRF_PURPOSE, &self.secret.0)
    }

    /// Whether a post is forged: its form lacks this session's CSRF token, or the browser says
    /// it comes from another site.
    pub(crate) fn forged(&self, token: Option<&str>) -> bool {
        let signed = token.is_some_and(|t| {
            self.state
                .keyring()
                .verify_signature(CSRF_PURPOSE, &self.secret.0, t)
        });
        let forged = !signed
            || !self
                .provenance
                .allowed(&self.state.settings.gateway.public_base_url);
        if forged {
            metrics::counter!("onboard_forged_posts_total").increment(1);
        }
        forged
    }

    /// The session's secret, to end it.
    pub(crate) fn secret(&self) -> &Secret {
        &self.secret
    }
}

/// Why a request could not be served as signed in.
#[derive(Debug)]
pub(crate) enum NotSignedIn {
    /// No session, or one that has ended: sign in (again).
    SignIn { expired: bool },
    /// Over the token's (or, without a session, the client's) budget.
    TooMany(u64),
    /// PostgreSQL did not answer.
    Unavailable(Option<u64>),
}

/// What a request presents, read by the console's filter.
pub(crate) struct Presented {
    pub(crate) client: Option<ClientKey>,
    pub(crate) cookies: Option<String>,
    pub(crate) accept_language: Option<String>,
    pub(crate) provenance: Provenance,
    pub(crate) request_id: Option<String>,
}

/// The signed-in context of a request, or why there is none.
pub(crate) async fn resume(state: Arc<AppState>, presented: Presented) -> Result<Ctx, NotSignedIn> {
    let lang = Lang::choose(None, presented.accept_language.as_deref());
    let Some(secret) = presented_session(&state, presented.cookies.as_deref()) else {
        state
            .throttles
            .page(presented.client)
            .map_err(|e| NotSignedIn::TooMany(e.retry_after().unwrap_or(60)))?;
        return Err(NotSignedIn::SignIn { expired: false });
    };
    let session = match state.store.admin_session(&secret.sha256(), IDLE).await {
        Ok(session) => session,
        Err(e) => {
            tracing::error!(error = %e, "console session not read");
            let e = crate::ApiError::from(e);
            return Err(NotSignedIn::Unavailable(e.retry_after()));
        }
    };
    // A session whose token was removed or revoked in the configuration has ended too.
    let grant = session.and_then(|s| state.tokens.by_id(&s.token_id));
    let Some(grant) = grant else {
        state
            .throttles
            .page(presented.client)
            .map_err(|e| NotSignedIn::TooMany(e.retry_after().unwrap_or(60)))?;
        return Err(NotSignedIn::SignIn { expired: true });
    };
    state
        .throttles
        .admin(&grant.id, RouteGroup::Console)
        .map_err(|e| NotSignedIn::TooMany(e.retry_after().unwrap_or(60)))?;
    Ok(Ctx {
        grant: grant.with_request_id(presented.request_id),
        lang,
        secret,
        provenance: presented.provenance,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_found_by_its_exact_name() {
        let header = Some("a=1; onboard_console_signin=22; onboard_console=33 ;x=y");
        assert_eq!(cookie(header, "onboard_console"), Some("33"));
        assert_eq!(cookie(header, "onboard_console_signin"), Some("22"));
        assert_eq!(cookie(header, "onboard"), None);
        assert_eq!(cookie(None, "onboard_console"), None);
    }

    #[test]
    fn a_secret_reads_back_from_its_hex_and_nothing_else_does() {
        let secret = Secret::new();
        let parsed = Secret::parse(&secret.hex()).unwrap();
        assert_eq!(parsed.sha256(), secret.sha256());
        assert!(Secret::parse("abc").is_none());
        assert!(Secret::parse(&"zz".repeat(32)).is_none());
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }
}
