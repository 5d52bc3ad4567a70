//! Codes that are expired, reused, wrong or replaced are refused, and say why.

use std::time::Duration;

use serde_json::{json, Value};

use crate::flow::form_value;
use crate::harness::{unique, Options, Stack};

const PASSWORD: &str = "a quiet cab at midnight";

async fn submit(stack: &Stack, code: &str, password: &str) -> (u16, Value) {
    let r = stack
        .http
        .post(stack.url("/api/v1/password-submissions"))
        .json(&json!({"code": code, "password": password}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_reused_code_is_refused_and_says_the_account_is_active() {
    let stack = Stack::start("reuse", Options::default()).await;
    let email = format!("{}@pickup.example", unique("reuse."));
    let id = stack.invite("Reuser", &email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let code = stack.wait_for_mail(&email).await.code();

    let (status, body) = submit(&stack, &code, PASSWORD).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("Active")),
        "{body}"
    );
    assert_eq!(body["id"], id.as_str());

    let (status, body) = submit(&stack, &code, "another fine passphrase").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "already_active");
    assert!(body["message"].as_str().unwrap().contains("already active"));

    let page = stack
        .http
        .get(stack.url(&format!("/confirm?code={code}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 409);
    let html = page.text().await.unwrap();
    assert!(html.contains("already active"));
    assert!(
        !html.contains("type=\"password\""),
        "no password is asked for a used link"
    );
}

#[tokio::test]
async fn a_wrong_code_is_refused_and_the_right_one_still_works() {
    let stack = Stack::start("wrong", Options::default()).await;
    let email = format!("{}@pickup.example", unique("wrong."));
    stack.invite("Wrongo", &email).await;
    let code = stack.wait_for_mail(&email).await.code();

    // Same user and code id, forged tag.
    let mut forged = code.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [forged.as_str(), "not-a-code", ""] {
        let (status, body) = submit(&stack, bad, PASSWORD).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_code");
        assert!(body["message"].as_str().unwrap().contains("link"));
    }
    let page = stack
        .http
        .get(stack.url(&format!("/confirm?code={forged}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 400);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("This link is not valid"));

    let (status, body) = submit(&stack, &code, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn resend_mails_a_new_code_and_kills_the_old_one() {
    let stack = Stack::start("resend", Options::default()).await;
    let email = format!("{}@pickup.example", unique("resend."));
    let id = stack.invite("Resender", &email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let old = stack.wait_for_mail(&email).await.code();

    let r = stack
        .admin(
            stack
                .http
                .post(stack.url(&format!("/api/v1/users/{id}/resend"))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mails = stack.wait_for_mails(&email, 2).await;
    let new = mails[1].code();
    assert_ne!(old, new);

    let page = stack
        .http
        .get(stack.url(&format!("/confirm?code={old}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 410);
    assert!(page.text().await.unwrap().contains("A newer link was sent"));
    let (status, body) = submit(&stack, &old, PASSWORD).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (410, Some("code_superseded")),
        "{body}"
    );

    let (status, _) = submit(&stack, &new, PASSWORD).await;
    assert_eq!(status, 200);

    let r = stack
        .admin(
            stack
                .http
                .post(stack.url(&format!("/api/v1/users/{id}/resend"))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "no resend after activation");
}

#[tokio::test]
async fn an_expired_code_is_refused_before_any_password_is_asked() {
    let stack = Stack::start("expired", Options::default()).await;
    let email = format!("{}@pickup.example", unique("late."));
    let created = stack
        .admin(stack.http.post(stack.url("/api/v1/users")))
        .json(&json!({"username": "Latecomer", "email": email, "code_validity_minutes": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(created["code_expires_at"].as_str().unwrap()).unwrap();
    let code = stack.wait_for_mail(&email).await.code();

    // Wait for the real clock to pass the expiry (one minute: the smallest validity allowed).
    while chrono::Utc::now() <= expires_at {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let page = stack
        .http
        .get(stack.url(&format!("/confirm?code={code}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 410);
    let html = page.text().await.unwrap();
    assert!(html.contains("This link has expired"));
    assert!(!html.contains("type=\"password\""));

    let (status, body) = submit(&stack, &code, PASSWORD).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (410, Some("code_expired")),
        "{body}"
    );
}

#[tokio::test]
async fn opening_the_link_never_changes_anything_and_junk_posts_do_not_burn_the_code() {
    let stack = Stack::start("scanner", Options::default()).await;
    let email = format!("{}@pickup.example", unique("scan."));
    let id = stack.invite("Scanned", &email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mail = stack.wait_for_mail(&email).await;
    let link = mail.link();
    let code = mail.code();
    let events_before = stack.cli(&["events", &id]).stdout;

    // A mail scanner: HEAD, GET twice, then a form post without a password, and mismatched ones.
    assert_eq!(stack.http.head(&link).send().await.unwrap().status(), 200);
    for _ in 0..2 {
        assert_eq!(stack.http.get(&link).send().await.unwrap().status(), 200);
    }
    for form in [
        vec![("code", code.as_str())],
        vec![
            ("code", code.as_str()),
            ("password", ""),
            ("password_confirm", ""),
        ],
        vec![
            ("code", code.as_str()),
            ("password", PASSWORD),
            ("password_confirm", "something else"),
        ],
        vec![
            ("code", code.as_str()),
            ("password", "short"),
            ("password_confirm", "short"),
        ],
    ] {
        let r = stack
            .http
            .post(stack.url("/confirm"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let html = r.text().await.unwrap();
        assert!(html.contains("role=\"alert\""), "{html}");
        assert_eq!(
            form_value(&html, "code"),
            code,
            "the form is shown again with the same code"
        );
    }
    let r = stack
        .http
        .post(stack.url("/confirm"))
        .form(&[
            ("code", code.as_str()),
            ("password", "short"),
            ("password_confirm", "short"),
        ])
        .send()
        .await
        .unwrap();
    assert!(
        r.text().await.unwrap().contains("too short"),
        "the page names the rule that failed"
    );

    assert_eq!(
        stack.cli(&["events", &id]).stdout,
        events_before,
        "no event was written"
    );
    assert_eq!(stack.user(&id).await["state"], "CodeIssued");

    // Jane's own submission still works.
    let r = stack
        .http
        .post(stack.url("/confirm"))
        .form(&[
            ("code", code.as_str()),
            ("password", PASSWORD),
            ("password_confirm", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(stack.user(&id).await["state"], "Active");
}

#[tokio::test]
async fn weak_passwords_are_refused_with_the_rule_and_keep_the_code() {
    let stack = Stack::start("weak", Options::default()).await;
    let email = format!("{}@pickup.example", unique("weak."));
    stack.invite("Weakling", &email).await;
    let code = stack.wait_for_mail(&email).await.code();
    for (pw, rule) in [
        ("short", "too_short"),
        ("password1", "common"),
        ("i am weakling!", "contains_username"),
    ] {
        let (status, body) = submit(&stack, &code, pw).await;
        assert_eq!(status, 422, "{pw}: {body}");
        assert_eq!(body["error"], "weak_password");
        assert_eq!(body["rule"]["rule"], rule, "{body}");
    }
    let (status, _) = submit(&stack, &code, PASSWORD).await;
    assert_eq!(status, 200);
}
