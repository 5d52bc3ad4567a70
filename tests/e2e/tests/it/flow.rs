//! Jane's whole onboarding, as she and her administrator see it.

use onboarding_e2e::{unique, Options, Stack};

const JANES_PASSWORD: &str = "Pickup rides at dawn 42";

/// Pulls one hidden form field's value out of the page.
pub fn form_value(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no field {name} in:\n{html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_owned()
}

#[tokio::test]
async fn jane_is_invited_mailed_and_activated_and_every_event_reaches_kafka_without_secrets() {
    let stack = Stack::start("flow", Options::default()).await;
    let email = format!("{}@pickup.example", unique("jane."));

    // Sam invites Jane.
    let created = stack.invite("Jane", &email).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["state"], "CodeIssued");
    assert_eq!(created["username"], "Jane");
    assert_eq!(created["domain"], "PRIMARY");
    let expires_at = created["code_expires_at"].as_str().unwrap().to_owned();

    // Her mail arrives, from the configured sender, with both parts, the link and the expiry.
    let mail = stack.wait_for_mail(&email).await;
    assert_eq!(mail.sender(), "noreply@pickup.example");
    assert_eq!(mail.subject(), "Pickup: create your password");
    assert!(mail.html().contains("Create Password"), "{}", mail.html());
    assert!(mail.text().contains("/confirm?code="));
    let expiry = chrono::DateTime::parse_from_rfc3339(&expires_at).unwrap();
    let expiry_text = expiry.format("%A %-d %B %Y, %H:%M UTC").to_string();
    assert!(
        mail.text().contains(&expiry_text),
        "expiry {expiry_text} not in:\n{}",
        mail.text()
    );
    assert!(mail.html().contains(&expiry_text));
    let message_id = mail.header("message-id").unwrap_or_default().to_owned();
    assert!(
        message_id.ends_with("@pickup.example>"),
        "Message-ID {message_id} must use the sender's domain"
    );

    // The admin view shows the mail as sent.
    let view = stack.wait_for_delivery(&id, "sent").await;
    assert_eq!(view["email_delivery"]["status"], "sent", "{view}");

    // She opens the link: a page asks for the password twice and states the rules.
    let link = mail.link();
    let page = stack.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("autocomplete=\"new-password\""));
    assert!(html.contains("name=\"password_confirm\""));
    assert!(html.contains("At least 8"), "the page states the rules");
    assert!(html.contains("/revoke?code="), "the page offers to decline");
    assert!(
        mail.text().contains("/revoke?code="),
        "the mail carries the revoke link"
    );
    assert!(
        html.contains(&expiry_text),
        "the page shows the same expiry as the mail"
    );
    let code = form_value(&html, "code");
    let csrf = form_value(&html, "csrf");

    // She submits a good password: the page says the account is active.
    let done = stack
        .post_form(
            "/confirm",
            &[
                ("code", code.as_str()),
                ("csrf", csrf.as_str()),
                ("password", JANES_PASSWORD),
                ("password_confirm", JANES_PASSWORD),
            ],
            &[
                ("origin", stack.base_url.as_str()),
                ("sec-fetch-site", "same-origin"),
            ],
        )
        .await;
    assert_eq!(done.status(), 200);
    let done = done.text().await.unwrap();
    assert!(done.contains("Your account is active"), "{done}");

    // A welcome mail says the account is ready (not that a password was reset).
    let mails = stack.wait_for_mails(&email, 2).await;
    assert_eq!(mails[1].subject(), "Pickup: your account is ready");
    assert!(
        mails[1].text().contains("account is ready"),
        "{}",
        mails[1].text()
    );
    assert!(!mails[1].text().to_lowercase().contains("reset"));

    // The admin view says Active.
    let view = stack.user(&id).await;
    assert_eq!(view["state"], "Active");
    assert!(view["activated_at"].is_string());
    assert!(view["code_expires_at"].is_null());
    let view_text = view.to_string();
    assert!(!view_text.contains("argon2") && !view_text.contains(&code));

    // Her events are on the topic, keyed by her id, in order, with CloudEvents headers.
    let types = [
        "onboard.user.invited.v1",
        "onboard.user.code_issued.v1",
        "onboard.user.invitation_mail_sent.v1",
        "onboard.user.link_opened.v1",
        "onboard.user.password_set.v1",
        "onboard.user.activated.v1",
        "onboard.user.welcome_mail_sent.v1",
    ];
    let records = stack.user_records(&id, &types).await;
    let seen: Vec<&str> = records
        .iter()
        .map(|r| r.headers["ce_type"].as_str())
        .collect();
    assert_eq!(seen, types, "events in order");
    let sequences: Vec<i64> = records
        .iter()
        .map(|r| r.value["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(
        records[3].value["client"], "unknown",
        "the test client sends no user agent"
    );
    assert!(records.iter().all(|r| r.partition == records[0].partition));
    for r in &records {
        for h in [
            "ce_id",
            "ce_type",
            "ce_source",
            "ce_specversion",
            "ce_time",
            "content-type",
        ] {
            assert!(r.headers.contains_key(h), "header {h} missing on {r:?}");
        }
        assert_eq!(r.headers["ce_specversion"], "1.0");
        assert_eq!(r.value["user_id"], id.as_str());
        let all = format!("{} {:?}", r.raw_value, r.headers);
        assert!(!all.contains(&code), "the code leaked into {all}");
        assert!(
            !all.contains(&code[43..]),
            "the code's tag leaked into {all}"
        );
        assert!(
            !all.contains(JANES_PASSWORD),
            "the password leaked into {all}"
        );
        assert!(
            !all.contains("argon2"),
            "the password hash leaked into {all}"
        );
    }
    assert_eq!(records[0].value["email"], email.as_str());
    assert_eq!(records[2].value["template"]["id"], "invitation");
    assert_eq!(records[2].value["template"]["locale"], "en");
    assert_eq!(records[6].value["template"]["id"], "welcome");
    assert_eq!(
        records[1].value["expires_at"]
            .as_str()
            .map(|s| chrono::DateTime::parse_from_rfc3339(s).unwrap()),
        Some(expiry)
    );

    // No log line of any component carries the code or the password.
    let logs = stack.log_tail();
    assert!(!logs.contains(&code[43..]) && !logs.contains(JANES_PASSWORD));
}

/// `POST /api/v1/users` answers the account from the invitation's events as committed, without
/// reading them back (docs/adr/0045): the answer is what a read of the account shows, personal
/// fields, claims of every JSON type and times included.
#[tokio::test]
async fn the_answer_to_an_invitation_is_what_a_read_of_the_account_shows() {
    let stack = Stack::start("answer", Options::default()).await;
    let email = format!("{}@pickup.example", unique("ana."));
    let r = stack
        .admin(stack.http.post(stack.url("/api/v1/users")))
        .json(&serde_json::json!({
            "username": "Ana.Answer",
            "email": email,
            "domain": "PRIMARY",
            "locale": "de",
            "time_zone": "Europe/Berlin",
            "code_validity_minutes": 90,
            "claims": {"given_name": "Ana", "external_id": "e-42", "grade": 1.5,
                       "big": 12345678901234567890u64, "tiny": 1e-7, "flags": [true, null],
                       "address": {"city": "Zürich", "lines": ["A 1", "B 2"]}}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let mut answered: serde_json::Value = r.json().await.unwrap();
    let id = answered["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/users/{id}"));
    assert_eq!(answered["username"], "Ana.Answer");
    assert_eq!(answered["state"], "CodeIssued");
    assert_eq!(answered["claims"]["address"]["city"], "Zürich");
    let mut read = stack.user(&id).await;
    // The email worker may have recorded the mail in between; everything else is the same.
    for view in [&mut answered, &mut read] {
        view.as_object_mut().unwrap().remove("email_delivery");
    }
    assert_eq!(answered, read);
}

#[tokio::test]
async fn the_cli_invites_shows_and_lists_events() {
    let stack = Stack::start("cli", Options::default()).await;
    let email = format!("{}@pickup.example", unique("cli."));
    let out = stack.cli(&["invite", "--username", "CliUser", "--email", &email]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["state"], "CodeIssued");
    stack.wait_for_mail(&email).await;

    let out = stack.cli(&["user", "show", "CliUser"]);
    assert!(out.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["id"], created["id"]);

    let out = stack.cli(&["events", created["id"].as_str().unwrap()]);
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["event_type"], "UserInvited");
    assert_eq!(lines[1]["event_type"], "CodeIssued");
    assert_eq!(lines[0]["metadata"]["actor_id"], "cli");

    // A second invitation of the same name is refused with a clear message.
    let out = stack.cli(&["invite", "--username", "cliuser", "--email", &email]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    let out = stack.cli(&["invite", "--username", "x", "--email", "not-an-address"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--email"));
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let stack = Stack::start("health", Options::default()).await;
    let h = stack.http.get(stack.url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let r: serde_json::Value = stack
        .http
        .get(stack.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The gateway needs PostgreSQL only, and checks nothing else.
    assert_eq!(r["status"], "ready", "{r}");
    assert_eq!(r["checks"], serde_json::json!({"postgres": "ok"}), "{r}");
    assert_eq!(r["roles"]["gateway"]["ready"], true, "{r}");
    stack
        .invite("MetricsUser", &format!("{}@pickup.example", unique("m.")))
        .await;
    let m = stack
        .http
        .get(stack.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("onboard_invitations_total 1"), "{m}");
    assert!(m.contains("onboard_http_requests_total"));
}

#[tokio::test]
async fn a_user_with_a_german_locale_gets_german_mails_and_templates_preview_from_the_cli() {
    let stack = Stack::start("locale", Options::default()).await;
    let email = format!("{}@pickup.example", unique("de."));
    let created = stack
        .admin(stack.http.post(stack.url("/api/v1/users")))
        .json(&serde_json::json!({"username": "Greta", "email": email, "locale": "de-AT", "time_zone": "Europe/Vienna"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let view = stack.user(&id).await;
    let mail = stack.wait_for_mail(&email).await;
    assert_eq!(mail.subject(), "Pickup: Legen Sie Ihr Passwort fest");
    // The expiry is stated in Greta's time zone, in German.
    let expiry = chrono::DateTime::parse_from_rfc3339(view["code_expires_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono_tz::Europe::Vienna);
    let expiry_text = format!("{} Uhr (Europe/Vienna)", expiry.format("%d.%m.%Y um %H:%M"));
    assert!(
        mail.text().contains(&expiry_text),
        "{expiry_text} in {}",
        mail.text()
    );
    assert!(mail.html().contains("Passwort festlegen"));
    let records = stack
        .user_records(&id, &["onboard.user.invitation_mail_sent.v1"])
        .await;
    let sent = records
        .iter()
        .find(|r| r.headers["ce_type"] == "onboard.user.invitation_mail_sent.v1")
        .unwrap();
    assert_eq!(
        sent.value["template"]["locale"], "de",
        "de-AT falls back to de"
    );

    // The page behind the link speaks German too, whatever the browser prefers, and states the
    // expiry as the mail did.
    let page = stack
        .http
        .get(mail.link())
        .header("accept-language", "en-US,en;q=0.9")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    // As a browser shows it (the template escapes `/` in text).
    let html = page.text().await.unwrap().replace("&#x2f;", "/");
    for text in [
        "<html lang=\"de\">",
        "<h1>Passwort festlegen</h1>",
        "Hallo Greta, wählen Sie das Passwort für Ihr neues Konto.",
        "Mindestens 8 und höchstens 128 Zeichen",
    ] {
        assert!(html.contains(text), "{text} not on the page:\n{html}");
    }
    assert!(
        html.contains(&format!("Dieser Link ist gültig bis {expiry_text}.")),
        "{expiry_text} not on the page:\n{html}"
    );
    // A refused password is explained in German; then the password is set.
    let code = mail.code();
    let csrf = crate::flow::form_value(&html, "csrf");
    let post = |password: &'static str, confirm: &'static str| {
        let (code, csrf) = (code.clone(), csrf.clone());
        let stack = &stack;
        async move {
            let r = stack
                .post_form(
                    "/confirm",
                    &[
                        ("code", code.as_str()),
                        ("csrf", csrf.as_str()),
                        ("password", password),
                        ("password_confirm", confirm),
                    ],
                    &[],
                )
                .await;
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, html) = post("Greta reist nach Graz", "Greta reist nach Graz").await;
    assert_eq!(status, 422);
    assert!(
        html.contains("Das Passwort enthält Ihren Benutzernamen"),
        "{html}"
    );
    let (status, html) = post("Wolken über dem Donaukanal", "Wolken über dem Donaukanal").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("<h1>Ihr Konto ist aktiv</h1>"), "{html}");
    // A link that names no invitation follows the browser's language.
    let junk = stack
        .http
        .get(stack.url("/confirm?code=not-a-code"))
        .header("accept-language", "fr;q=0.9, de;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(junk.status(), 400);
    assert!(junk
        .text()
        .await
        .unwrap()
        .contains("<h1>Dieser Link ist ungültig</h1>"));

    let out = stack.cli(&["email", "preview", "welcome", "--locale", "pt-BR"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("locale en"),
        "pt-BR falls back to the default: {text}"
    );
    assert!(text.contains("subject: Pickup: your account is ready"));
    let out = stack.cli(&["email", "preview", "nonsense"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use invitation or welcome"));

    let probe = format!("{}@pickup.example", unique("probe."));
    let out = stack.cli(&["email", "test-send", &probe]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("accepted: 250"));
    stack.wait_for_mail(&probe).await;
}

#[tokio::test]
async fn a_relay_on_its_own_serves_metrics_when_told_where() {
    let stack = Stack::start("relaymetrics", Options::default()).await;
    stack.signal("relay", "TERM");
    let addr = format!("127.0.0.1:{}", onboarding_e2e::free_port());
    stack.spawn_with_env(
        "relay",
        &[("ONBOARD__OBSERVABILITY__METRICS_BIND", addr.as_str())],
    );
    let email = format!("{}@pickup.example", unique("metrics."));
    stack.invite("Measured", &email).await;
    stack.wait_for_mail(&email).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = match stack
            .http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => r.text().await.unwrap(),
            _ => String::new(),
        };
        if text.contains("onboard_relay_published_total") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the relay's metrics never showed its publishing: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let health = stack
        .http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // And its readiness: the relay needs PostgreSQL and Kafka.
    let ready = stack
        .http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        ready["checks"],
        serde_json::json!({"postgres": "ok", "kafka": "ok"}),
        "{ready}"
    );
}
