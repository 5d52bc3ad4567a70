//! The console's pages without a database: what a browser without a session gets, the sign-in
//! form's cookies and headers, forged posts, and HTML-escaping of whatever an account holds.

use std::sync::Arc;

use minijinja::context;
use onboarding_config::{OrganisationSettings, Settings};
use serde_json::json;
use sha2::{Digest, Sha256};
use warp::http::StatusCode;

use crate::i18n::Lang;
use crate::pages::Pages;
use crate::{routes, AppState, Readiness, Role};

const NO_DATABASE: &str = "postgres://postgres@127.0.0.1:9/onboarding";

fn state() -> Arc<AppState> {
    let sha256 = hex::encode(Sha256::digest(b"console-test-token"));
    let settings = Settings::from_toml_str(&format!(
        r#"
        [output_adapter.email]
        from_address = "noreply@pickup.example"
        hostname = "smtp.pickup.example"
        [database]
        url = "{NO_DATABASE}"
        acquire_timeout_seconds = 1
        [kafka]
        bootstrap_servers = "127.0.0.1:9"
        [gateway]
        public_base_url = "https://id.pickup.example"
        [[gateway.admin_tokens]]
        id = "console-test"
        sha256 = "{sha256}"
        [codes]
        active_key = "k1"
        [[codes.keys]]
        id = "k1"
        secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
        "#
    ))
    .expect("the test settings load");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(1))
        .connect_lazy(NO_DATABASE)
        .expect("a lazy pool");
    let services = onboarding_store::services(&settings).expect("services");
    let store = onboarding_store::Store::new(pool, services, Default::default());
    let readiness =
        Readiness::new(vec![Role::Gateway], store.clone(), &settings.kafka).expect("readiness");
    Arc::new(AppState::new(Arc::new(settings), store, None, Arc::new(readiness)).unwrap())
}

fn header<'r>(r: &'r warp::http::Response<bytes::Bytes>, name: &str) -> &'r str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_browser_without_a_session_is_sent_to_the_sign_in_form_and_nothing_is_done() {
    let state = state();
    for (method, path) in [
        ("GET", "/admin"),
        ("GET", "/admin/invitations?state=Active"),
        ("GET", "/admin/users/0193a9b0-0000-7000-8000-000000000000"),
        (
            "POST",
            "/admin/users/0193a9b0-0000-7000-8000-000000000000/resend",
        ),
        (
            "POST",
            "/admin/users/0193a9b0-0000-7000-8000-000000000000/revoke",
        ),
        ("POST", "/admin/sign-out"),
        (
            "GET",
            "/admin/bulk/0193a9b0-0000-7000-8000-000000000000/failed.csv",
        ),
    ] {
        let r = warp::test::request()
            .method(method)
            .path(path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("csrf=x")
            .reply(&routes(state.clone()))
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{method} {path}");
        assert_eq!(header(&r, "location"), "/admin/sign-in", "{method} {path}");
    }
}

#[tokio::test]
async fn the_sign_in_form_sets_a_strict_http_only_secure_cookie_and_the_pages_headers() {
    let r = warp::test::request()
        .path("/admin/sign-in")
        .header("accept-language", "de-DE,de;q=0.9")
        .reply(&routes(state()))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = header(&r, "set-cookie");
    assert!(
        cookie.starts_with("__Secure-onboard_console_signin="),
        "{cookie}"
    );
    for part in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Path=/admin/sign-in",
    ] {
        assert!(cookie.contains(part), "{part} missing: {cookie}");
    }
    let csp = header(&r, "content-security-policy");
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(header(&r, "referrer-policy"), "no-referrer");
    assert_eq!(header(&r, "cache-control"), "no-store");
    let body = String::from_utf8_lossy(r.body());
    assert!(body.contains("<html lang=\"de\">"), "{body}");
    assert!(
        body.contains("<label for=\"token\">Admin-Token</label>"),
        "{body}"
    );
}

#[tokio::test]
async fn a_sign_in_post_without_the_forms_cookie_and_token_or_from_another_site_is_refused() {
    let state = state();
    let form = warp::test::request()
        .path("/admin/sign-in")
        .reply(&routes(state.clone()))
        .await;
    let cookie = header(&form, "set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let body = String::from_utf8_lossy(form.body()).into_owned();
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let post = |cookie: Option<String>, csrf: String, site: &'static str| {
        let state = state.clone();
        async move {
            let mut req = warp::test::request()
                .method("POST")
                .path("/admin/sign-in")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("sec-fetch-site", site)
                .body(format!("csrf={csrf}&token=console-test-token"));
            if let Some(cookie) = cookie {
                req = req.header("cookie", cookie);
            }
            req.reply(&routes(state)).await
        }
    };
    // No cookie, a wrong token, another site: each refused before the token is looked at.
    let refused = [
        post(None, csrf.clone(), "same-origin").await,
        post(Some(cookie.clone()), "k1.AAAA".to_owned(), "same-origin").await,
        post(Some(cookie.clone()), csrf.clone(), "cross-site").await,
    ];
    for r in refused {
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(String::from_utf8_lossy(r.body()).contains("Request refused"));
        assert!(header(&r, "set-cookie").is_empty());
    }
    // The genuine post reaches the session store, which this test has not: 503, no cookie.
    let genuine = post(Some(cookie), csrf, "same-origin").await;
    assert_eq!(genuine.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn whatever_an_account_holds_is_html_escaped_on_its_page() {
    let pages = Pages::new(&OrganisationSettings::default()).unwrap();
    let hostile = "<script>alert(1)</script>";
    let html = pages
        .templates
        .get_template("console/user.html")
        .unwrap()
        .render(context! {
            organisation => "Pickup <b>",
            lang => "en",
            t => pages.texts.for_templates(Lang::En),
            admin => context! { token_id => "\"><img src=x>", can_invite => true, can_revoke => true, csrf => "k1.x" },
            user => json!({
                "id": "0193a9b0-0000-7000-8000-000000000000",
                "username": hostile,
                "email": "a\"onmouseover=\"x@pickup.example",
                "state": "CodeIssued",
                "links_opened": 0,
                "revoked_by": null,
                "email_delivery": {"status": "failed", "reason": "550 <b>no</b>", "at": "x"},
                "provisioning": {"status": "pending"},
            }),
            times => json!({"since_invitation": "<i>2 d</i>"}),
            claims => serde_json::to_string_pretty(&json!({"title": "<img src=x onerror=alert(1)>"})).unwrap(),
            timeline => vec![json!({"sequence": 1, "type": "UserInvited", "version": "2.0", "at": "now", "at_iso": "x", "actor": "admin:<svg onload=x>", "request_id": "</code><script>"})],
            mails => vec![json!({"type": "InvitationMailSent", "at": "now", "at_iso": "x", "message_id": "<m@x>", "smtp_response": "250 <ok>"})],
            pending => true,
            done => None::<&str>,
        })
        .unwrap();
    for raw in [
        "<script>",
        "<img",
        "<svg",
        "<i>",
        "<b>",
        "\"onmouseover",
        "<m@x>",
    ] {
        assert!(!html.contains(raw), "{raw} reached the page unescaped");
    }
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
        "{html}"
    );
    assert!(html.contains("&lt;m@x&gt;"));
    assert!(
        html.contains("<dd id=\"view-delivery\">failed: 550 &lt;b&gt;no&lt;&#x2f;b&gt;</dd>"),
        "{html}"
    );
    assert!(
        html.contains("<dd id=\"view-provisioning\">pending</dd>"),
        "{html}"
    );
    assert!(html.contains("href=\"/admin/users/0193a9b0-0000-7000-8000-000000000000/resend\""));
}

#[test]
fn a_token_without_invite_and_revoke_gets_no_buttons() {
    let pages = Pages::new(&OrganisationSettings::default()).unwrap();
    let render = |can: bool| {
        pages
            .templates
            .get_template("console/user.html")
            .unwrap()
            .render(context! {
                organisation => "Pickup",
                lang => "en",
                t => pages.texts.for_templates(Lang::En),
                admin => context! { token_id => "reader", can_invite => can, can_revoke => can, csrf => "k1.x" },
                user => json!({"id": "u1", "username": "jane", "state": "CodeIssued", "links_opened": 1}),
                times => json!({}),
                claims => "{}",
                timeline => Vec::<()>::new(),
                mails => Vec::<()>::new(),
                pending => true,
            })
            .unwrap()
    };
    let (admin, reader) = (render(true), render(false));
    assert!(admin.contains("Resend the link") && admin.contains("Revoke the invitation"));
    assert!(!reader.contains("Resend the link") && !reader.contains("Revoke the invitation"));
}

#[test]
fn every_console_template_renders_in_both_languages() {
    let pages = Pages::new(&OrganisationSettings::default()).unwrap();
    let admin = context! { token_id => "e2e-admin", can_invite => true, can_revoke => true, csrf => "k1.x" };
    let cases = [
        (
            "console/sign_in.html",
            context! { csrf => "k1.x", error => "wrong" },
        ),
        (
            "console/message.html",
            context! { heading => "h", line => "l", admin },
        ),
        (
            "console/overview.html",
            context! {
                admin,
                by_state => vec![json!({"state": "Active", "count": 2})],
                invitations => 3, active => 2, activation_rate => "66.7 %",
                median_to_activate => "2 min", mails_queued => 1, mails_waiting => 0,
                mails_abandoned => 0, outbox_backlog => 4, outbox_oldest_age => "3 s",
                outbox_dead_letters => 0, consumer_lag => None::<i64>,
                verification => json!({"ran_at": "now", "ran_at_iso": "x", "events": 9, "head": "9:ab", "findings": 0, "intact": true, "expected_head_missing": false}),
            },
        ),
        (
            "console/invitations.html",
            context! {
                admin, problems => vec!["bad"],
                filters => json!({"state": "Active", "delivery": null, "provisioning": null, "q": "ja ne&x"}),
                choices => json!({"states": ["Active"], "deliveries": ["sent"], "provisionings": ["pending"]}),
                rows => vec![json!({"id": "u1", "username": "jane", "email": "j@x", "state": "Active", "invited": "now", "invited_iso": "x", "since_invitation": "2 d", "link_opened": true})],
                next_after => "u1", first_page => false,
            },
        ),
        (
            "console/confirm.html",
            context! { admin, action => "revoke", id => "u1", username => "jane", email => "j@x" },
        ),
        (
            "console/bulk.html",
            context! { admin, jobs => vec![json!({"id": "j1", "actor": "a", "status": "done", "rows": 3, "created": "now", "created_iso": "x"})], error => None::<&str>, max_bytes => 1024 },
        ),
        (
            "console/job.html",
            context! {
                admin, job_id => "j1", running => true, status => "running", format => "csv", created => "now",
                totals => json!({"rows": 4, "pending": 1, "created": 1, "duplicate": 1, "invalid": 1, "failed": 0}),
                applied => 3, percent => "75.0 %",
                failed_rows => vec![json!({"line": 4, "status": "invalid", "username": "broken", "reason": "email: not an address"})],
            },
        ),
    ];
    for lang in [Lang::En, Lang::De] {
        for (name, values) in &cases {
            let html = pages
                .templates
                .get_template(name)
                .unwrap()
                .render(context! { organisation => "Pickup", lang => lang.tag(), t => pages.texts.for_templates(lang), ..values.clone() })
                .unwrap_or_else(|e| panic!("{name} ({}): {e:#}", lang.tag()));
            assert!(
                !html.contains("console_"),
                "{name}: a text key is missing: {html}"
            );
        }
    }
}

#[test]
fn an_erased_users_page_says_so_in_both_languages_and_the_list_offers_the_state() {
    let pages = Pages::new(&OrganisationSettings::default()).unwrap();
    for (lang, note, label) in [
        (
            Lang::En,
            "This user&#x27;s personal data was erased (7 Dec 2026)",
            "Erased",
        ),
        (
            Lang::De,
            "Die personenbezogenen Daten dieser Person wurden gelöscht (7 Dec 2026)",
            "Gelöscht",
        ),
    ] {
        let render = |name: &str, values: minijinja::Value| {
            pages
                .templates
                .get_template(name)
                .unwrap()
                .render(context! { organisation => "Pickup", lang => lang.tag(), t => pages.texts.for_templates(lang), ..values })
                .unwrap()
        };
        let admin = context! { token_id => "reader", can_invite => false, can_revoke => false, csrf => "k1.x" };
        let html = render(
            "console/user.html",
            context! {
                admin,
                user => json!({"id": "u1", "username": null, "email": null, "state": "Erased", "links_opened": 0, "erased_at": "x"}),
                times => json!({"erased_at": "7 Dec 2026"}),
                claims => "{}",
                timeline => Vec::<()>::new(),
                mails => Vec::<()>::new(),
                pending => false,
            },
        );
        assert!(html.contains(note), "{html}");
        assert!(
            html.contains(&format!("<dd id=\"view-state\">{label}</dd>")),
            "{html}"
        );
        assert!(html.contains("<dd id=\"view-email\"></dd>"), "{html}");
        let active = render(
            "console/user.html",
            context! {
                admin,
                user => json!({"id": "u1", "username": "jane", "state": "Active", "links_opened": 0}),
                times => json!({}), claims => "{}", timeline => Vec::<()>::new(),
                mails => Vec::<()>::new(), pending => false,
            },
        );
        assert!(!active.contains("id=\"erased\""), "{active}");
        let list = render(
            "console/invitations.html",
            context! {
                admin, problems => Vec::<String>::new(),
                filters => json!({"state": "Erased", "delivery": null, "provisioning": null, "q": null}),
                choices => json!({"states": super::views::STATES, "deliveries": [], "provisionings": []}),
                rows => vec![json!({"id": "u1", "username": null, "email": null, "state": "Erased", "invited": "now", "invited_iso": "x", "since_invitation": "2 d", "link_opened": false})],
                next_after => None::<&str>, first_page => true,
            },
        );
        assert!(
            list.contains(&format!(
                "<option value=\"Erased\" selected>{label}</option>"
            )),
            "{list}"
        );
        assert!(list.contains(&format!("<td>{label}</td>")), "{list}");
        assert!(!list.contains("console_"), "{list}");
    }
}
