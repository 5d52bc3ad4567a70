//! Addresses with special characters and internationalised domains are delivered, and read back
//! from the SMTP server as they were sent on the wire.

use serde_json::Value;
use std::time::{Duration, Instant};

use onboarding_e2e::{unique, Options, Services, SmtpGate, Stack};

/// The mail MailDev received for this envelope recipient (60 s max).
async fn received_for(stack: &Stack, wire: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all: Vec<Value> = stack
            .http
            .get(format!("{}/api/email", stack.services.maildev))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found: Vec<Value> = all
            .into_iter()
            .filter(|m| {
                m["envelope"]["to"]
                    .as_array()
                    .is_some_and(|to| to.iter().any(|t| t["address"].as_str() == Some(wire)))
            })
            .collect();
        if let Some(m) = found.first() {
            assert_eq!(found.len(), 1, "one mail for {wire}: {found:?}");
            return m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no mail for {wire} within 60 s; logs in {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_for_delivered(stack: &Stack, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = stack.user(id).await;
        if view["email_delivery"]["status"] == "sent" {
            return;
        }
        assert!(Instant::now() < deadline, "never sent: {view}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn special_characters_and_internationalised_domains_are_delivered() {
    // Through the SMTP gate, which records each RCPT TO as it came on the wire and passes the
    // mail on to MailDev (which shows domains decoded to Unicode).
    let gate = SmtpGate::start(&Services::from_env());
    let stack = Stack::start(
        "addresses",
        Options {
            smtp_port: Some(gate.port),
            ..Options::default()
        },
    )
    .await;
    let t = unique("");
    // (as invited, as it must go on the wire, as MailDev shows it)
    let cases = [
        (format!("dollar$sign.{t}@pickup.example"), None, None),
        (format!("plus+tag.{t}@pickup.example"), None, None),
        (format!("bang!.{t}@pickup.example"), None, None),
        (format!("o'brien.{t}@pickup.example"), None, None),
        (format!("\"john doe.{t}\"@pickup.example"), None, None),
        (
            format!("joerg.{t}@bücher.example"),
            Some(format!("joerg.{t}@xn--bcher-kva.example")),
            Some(format!("joerg.{t}@bücher.example")),
        ),
    ];
    let mut ids = Vec::new();
    for (i, (email, _, _)) in cases.iter().enumerate() {
        let user = stack.invite(&format!("special{i}"), email).await;
        assert_eq!(user["email"], email.as_str(), "stored as given: {user}");
        ids.push(user["id"].as_str().unwrap().to_owned());
    }
    for ((email, wire, shown), id) in cases.iter().zip(&ids) {
        let wire = wire.clone().unwrap_or_else(|| email.clone());
        let shown = shown.clone().unwrap_or_else(|| email.clone());
        let message_id = if email.starts_with('"') {
            // MailDev refuses quoted local parts (501); the gate keeps those mails itself.
            wait_for_delivered(&stack, id).await;
            let stored = gate.stored();
            stored
                .iter()
                .find(|(r, _)| *r == wire)
                .unwrap_or_else(|| panic!("{wire} kept by the gate: {stored:?}"))
                .1
                .clone()
        } else {
            let mail = received_for(&stack, &shown).await;
            assert!(
                mail["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("/confirm?code="),
                "{mail}"
            );
            mail["headers"]["message-id"].as_str().unwrap().to_owned()
        };
        assert!(
            gate.recipients().contains(&wire),
            "{wire} on the wire: {:?}",
            gate.recipients()
        );
        let view = stack.wait_for_delivery(id, "sent").await;
        assert_eq!(
            view["email_delivery"]["message_id"].as_str(),
            Some(message_id.as_str())
        );
    }

    // A truly invalid address gets a clear error and no invitation.
    let r = stack
        .admin(stack.http.post(stack.url("/api/v1/users")))
        .json(&serde_json::json!({"username": "Spaced", "email": "john doe@pickup.example", "domain": "PRIMARY"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body.to_string().contains("local-part@domain"),
        "the error says what to send: {body}"
    );
}
