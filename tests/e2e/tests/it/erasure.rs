//! Erasure by crypto-shredding (docs/adr/0030) against a real PostgreSQL, tansu, MailDev and
//! slapd: the log never holds Jane's address in clear; after `DELETE …?erase=true` nothing in
//! the database (a `pg_dump` of it) and nothing in the directory names her, while the chain
//! verifies and both replays match. `onboard user export` writes what the engine holds of her.

use std::process::Command;
use std::time::{Duration, Instant};

use onboarding_e2e::{describe_output, free_port, unique, Options, Slapd, Stack};
use serde_json::{json, Value};
use sqlx::PgPool;

const PASSWORD: &str = "Pickup rides at dawn 42";

fn cli_json(stack: &Stack, args: &[&str]) -> Value {
    let o = stack.cli(args);
    assert!(
        o.status.success(),
        "onboard {args:?}: {}",
        describe_output(&o)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe_output(&o)))
}

/// The whole test database as SQL text (`pg_dump` of the server's own version).
pub(crate) fn pg_dump(stack: &Stack) -> String {
    let bin = std::path::PathBuf::from(std::env::var("TEST_PG_BIN").expect("TEST_PG_BIN"));
    let o = Command::new(bin.join("pg_dump"))
        .args(["--no-owner", "--dbname", &stack.database_url])
        .output()
        .expect("run pg_dump");
    assert!(o.status.success(), "pg_dump: {}", describe_output(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// The tables whose rows in `dump` hold `needle` (ignoring case), from its `COPY` blocks.
pub(crate) fn tables_holding(dump: &str, needle: &str) -> std::collections::BTreeSet<String> {
    let needle = needle.to_lowercase();
    let mut table = None;
    let mut found = std::collections::BTreeSet::new();
    for line in dump.lines() {
        if let Some(rest) = line.strip_prefix("COPY ") {
            table = rest.split_whitespace().next().map(str::to_owned);
        } else if line == "\\." {
            table = None;
        } else if line.to_lowercase().contains(&needle) {
            found.insert(
                table
                    .clone()
                    .unwrap_or_else(|| format!("outside any table: {line}")),
            );
        }
    }
    found
}

async fn outbox_drained(pool: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await
            .unwrap();
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{left} outbox rows left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_erased_user_is_found_nowhere_and_the_log_still_verifies() {
    let slapd = Slapd::start("erasure");
    let options = Options {
        user_store: Some(slapd.user_store_toml(&unique("e2e-provisioner-"))),
        ..Options::default()
    };
    let stack = Stack::start("erasure", options).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    stack.spawn_with_env(
        "provisioner",
        &[("ONBOARD__OBSERVABILITY__METRICS_BIND", metrics.as_str())],
    );
    let pool = PgPool::connect(&stack.database_url).await.unwrap();

    // Jane is invited with name claims, sets her password and is provisioned.
    let username = unique("Jane");
    let email = format!("{}@pickup.example", username.to_lowercase());
    let r = stack
        .admin(stack.http.post(stack.url("/api/v1/users")))
        .json(&json!({
            "username": username,
            "email": email,
            "claims": {"given_name": "Jane", "family_name": "Quarrender", "name": "Jane Quarrender"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mail = stack.wait_for_mail(&email).await;
    let (status, body) = stack.submit_password(&mail.code(), PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(90);
    while stack.user(&id).await["provisioning"]["status"] != "provisioned" {
        assert!(
            Instant::now() < deadline,
            "never provisioned\n{}",
            stack.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stack.wait_for_mails(&email, 2).await;
    assert_eq!(slapd.entries(&format!("(mail={email})")).len(), 1);

    // The log, the outbox and the dead letters hold her personal data sealed, never in clear;
    // the views hold it until she is erased.
    let in_clear: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM events WHERE payload::text ILIKE '%' || $1 || '%' \
                 OR payload::text LIKE '%Quarrender%') \
              + (SELECT count(*) FROM outbox WHERE payload::text ILIKE '%' || $1 || '%')",
    )
    .bind(&email)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        in_clear, 0,
        "the log holds her address or her name in clear"
    );
    let sealed: String = sqlx::query_scalar(
        "SELECT payload::text FROM events WHERE aggregate_id = $1 AND event_type = 'UserInvited'",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(sealed.contains("\"sealed\""), "{sealed}");
    let dump = pg_dump(&stack);
    assert_eq!(
        tables_holding(&dump, &email),
        ["public.account_states".to_owned()].into(),
        "only the views hold her address before erasure"
    );
    // Her username too: the admin list, SCIM and the lookups by name read it in
    // `account_states`; the registry keeps only a keyed hash of it (docs/adr/0035).
    assert_eq!(
        tables_holding(&dump, &username),
        ["public.account_states".to_owned()].into(),
        "only the views hold her username before erasure"
    );
    let key: String =
        sqlx::query_scalar("SELECT username_key FROM usernames WHERE user_id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(key.starts_with("hmac-sha256:"), "{key}");
    // The user view and the public records still read her in clear.
    assert_eq!(stack.user(&id).await["email"], email.as_str());
    let invited = stack.user_records(&id, &["onboard.user.invited.v1"]).await;
    assert_eq!(invited[0].value["email"], email.as_str());
    assert_eq!(invited[0].value["claims"]["family_name"], "Quarrender");

    // Art. 15: everything the engine holds about her, never her hash or her data key.
    let export = cli_json(&stack, &["user", "export", &id]);
    let text = export.to_string();
    assert_eq!(export["account"]["email"], email.as_str(), "{export}");
    assert_eq!(
        export["account_states"]["email"],
        email.as_str(),
        "{export}"
    );
    assert_eq!(export["usernames"]["username_key"], key.as_str());
    assert!(
        export["usernames"]["form"]
            .as_str()
            .unwrap()
            .starts_with("keyed: an HMAC-SHA-256"),
        "{export}"
    );
    assert_eq!(export["credential"]["scheme"]["algorithm"], "argon2id");
    assert!(export["personal_data_key"]["wrapped_by"]
        .as_str()
        .unwrap()
        .starts_with("kek:"));
    let events = export["events"].as_array().unwrap();
    assert_eq!(events[0]["payload"]["UserInvited"]["email"], email.as_str());
    assert!(
        !text.contains("$argon2id$"),
        "the export holds her hash: {text}"
    );

    // Erasure needs `erase=true` and the `erase` scope.
    let erase = |query: &'static str, token: String| {
        stack
            .http
            .delete(stack.url(&format!("/api/v1/users/{id}{query}")))
            .bearer_auth(token)
            .send()
    };
    let r = erase("", stack.admin_token.clone()).await.unwrap();
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    assert!(problem.to_string().contains("erase"), "{problem}");
    let r = erase("?erase=true", stack.reader_token.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = erase("?erase=true", stack.admin_token.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let view: Value = r.json().await.unwrap();
    assert_eq!(view["state"], "Erased", "{view}");
    assert_eq!(view["email"], Value::Null);
    assert_eq!(view["username"], Value::Null);
    assert_eq!(view["claims"], json!({}));
    assert_eq!(view["events_in_clear"], 0);
    assert!(view["erased_at"].is_string(), "{view}");
    let r = erase("?erase=true", stack.admin_token.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "erased");

    // The provisioner removes her entry; the directory names her nowhere.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !slapd.entries(&format!("(employeeNumber={id})")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "her directory entry was never removed\n{}",
            stack.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let directory = slapd.search("(objectClass=*)", &["*", "+"]);
    assert!(
        !directory.to_lowercase().contains(&email.to_lowercase())
            && !directory.contains("Quarrender"),
        "{directory}"
    );
    let o = slapd.whoami(&slapd.dn_of(&username), PASSWORD);
    assert!(
        !o.status.success(),
        "she still binds: {}",
        describe_output(&o)
    );

    // No query of the database finds her: not her address, not her name, not her claims.
    outbox_drained(&pool).await;
    let dump = pg_dump(&stack);
    for clear in [email.as_str(), username.as_str(), "Quarrender"] {
        assert!(
            !dump.to_lowercase().contains(&clear.to_lowercase()),
            "the database still holds {clear}: {:?}",
            tables_holding(&dump, clear)
        );
    }
    // Her password no longer verifies.
    let (status, _, _) = stack
        .verify(
            &stack.verifier_token,
            json!({"username": username, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 401);

    // The chain verifies; both replays match the views, the Kafka one reading her records in
    // clear and then her erasure.
    let o = stack.cli(&["audit", "verify"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("chain intact"));
    stack.user_records(&id, &["onboard.user.erased.v1"]).await;
    for source in ["postgres", "kafka"] {
        let o = stack.cli(&["audit", "replay", "--from", source]);
        assert!(
            o.status.success(),
            "replay from {source}: {}",
            describe_output(&o)
        );
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("projections match the log"),
            "{}",
            describe_output(&o)
        );
    }
    // History and as-of show the erased fields as erased.
    let o = stack.cli(&["audit", "history", &id, "--json"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    let history = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        !history.to_lowercase().contains(&email.to_lowercase()),
        "{history}"
    );
    let first: Value = serde_json::from_str(history.lines().next().unwrap()).unwrap();
    assert_eq!(
        first["payload"]["UserInvited"]["email"], "<erased>",
        "{first}"
    );
    assert_eq!(first["payload"]["UserInvited"]["username"], "<erased>");
    assert!(history.lines().last().unwrap().contains("UserErased"));
    // Also at an instant before the erasure: the key that opened them is gone.
    let before_erasure = first["recorded_at"].as_str().unwrap().to_owned();
    let as_of = cli_json(&stack, &["audit", "as-of", &id, &before_erasure]);
    assert_eq!(as_of["state"], "Invited", "{as_of}");
    assert_eq!(as_of["email"], Value::Null, "{as_of}");
    assert_eq!(as_of["username"], Value::Null, "{as_of}");
    let now = chrono::Utc::now().to_rfc3339();
    let as_of = cli_json(&stack, &["audit", "as-of", &id, &now]);
    assert_eq!(as_of["state"], "Erased");
    assert_eq!(as_of["email"], Value::Null);
    // What is left to export says so.
    let export = cli_json(&stack, &["user", "export", &id]);
    let text = export.to_string();
    assert!(
        !text.to_lowercase().contains(&email.to_lowercase()),
        "{text}"
    );
    assert_eq!(export["credential"], Value::Null);
    assert_eq!(export["personal_data_key"], Value::Null);
    assert_eq!(export["usernames"], Value::Null);
    assert_eq!(export["account_states"]["state"], "Erased");
}

/// An invitation written before sealing, as an older binary stored it (its fields in clear).
const CLEAR_INVITED: &str = r#"{"UserInvited": {"user_id": "USER", "username": "Olga", "email": "EMAIL", "domain": "PRIMARY", "locale": null, "time_zone": null, "claims": {}, "invited_at": "2026-01-01T00:00:00Z"}}"#;

#[tokio::test]
async fn an_account_logged_before_sealing_loads_and_its_erasure_names_what_stays_in_clear() {
    let stack = Stack::new("erasure_clear", Options::default()).await;
    let pool = PgPool::connect(&stack.database_url).await.unwrap();
    let id = uuid::Uuid::now_v7().to_string();
    let email = format!("{}@pickup.example", unique("olga."));
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, metadata) VALUES ('Onboarding', $1, 1, 'UserInvited', '2.0', $2::jsonb, \
         '{\"actor_kind\": \"admin\", \"actor_id\": \"cli\"}')",
    )
    .bind(&id)
    .bind(CLEAR_INVITED.replace("USER", &id).replace("EMAIL", &email))
    .execute(&pool)
    .await
    .unwrap();
    // The old row loads as it is and counts in the views and the registry.
    let view = cli_json(&stack, &["user", "show", &id]);
    assert_eq!(view["email"], email.as_str(), "{view}");
    let view = cli_json(&stack, &["user", "show", "Olga"]);
    assert_eq!(view["id"], id.as_str());

    let o = stack.cli(&["user", "erase", &id]);
    assert!(o.status.success(), "{}", describe_output(&o));
    let erased: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(erased["state"], "Erased");
    assert_eq!(erased["events_in_clear"], 1);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("docs/adr/0030"),
        "{}",
        describe_output(&o)
    );
    // Outside the append-only log nothing names her; the log keeps the old row as it was.
    // (the outbox still holds its copy of it: no relay runs in this test)
    assert_eq!(
        tables_holding(&pg_dump(&stack), &email),
        ["public.events".to_owned(), "public.outbox".to_owned()].into(),
        "only her old event names her"
    );
    let o = stack.cli(&["user", "erase", &id]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("erased"),
        "{}",
        describe_output(&o)
    );
    for args in [
        vec!["audit", "verify"],
        vec!["audit", "replay", "--from", "postgres"],
    ] {
        let o = stack.cli(&args);
        assert!(o.status.success(), "{args:?}: {}", describe_output(&o));
    }
}
