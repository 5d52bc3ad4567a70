//! The password credential: after activation the argon2id hash is in `credentials` and in no
//! event payload, outbox row, dead letter or Kafka record; a log written before the hash left it
//! still verifies, replays and loads, and its hashes move into `credentials` (docs/adr/0018).
//! A login service checks passwords with `POST /api/v1/credentials/verify` (docs/adr/0026).

use serde_json::{json, Value};
use sqlx::{PgPool, Row};

use onboarding_e2e::{describe_output, Options, Stack};

const PASSWORD: &str = "Pickup rides at dawn 42";

/// The account's credential row: PHC string and (algorithm, version, m, t, p).
async fn credential(
    pool: &PgPool,
    user_id: &str,
) -> Option<(String, (String, i32, i32, i32, i32))> {
    sqlx::query(
        "SELECT phc, algorithm, version, memory_kib, iterations, parallelism FROM credentials \
         WHERE user_id = $1::uuid",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await
    .unwrap()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))))
}

/// How many rows of `table` hold `needle` anywhere in their text.
async fn rows_containing(pool: &PgPool, table: &str, needle: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} t WHERE strpos(t::text, $1) > 0"
    ))
    .bind(needle)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The part of a PHC string that is the hash itself (after the last `$`).
fn hash_part(phc: &str) -> &str {
    phc.rsplit('$').next().unwrap()
}

#[tokio::test]
async fn after_janes_activation_her_hash_is_in_the_credential_table_and_in_no_event_outbox_row_or_record(
) {
    let stack = Stack::start("credentials_activation", Options::default()).await;
    let pool = PgPool::connect(&stack.database_url).await.unwrap();
    let (id, email, mail) = stack.invite_mailed("Jane").await;
    stack
        .user_records(&id, &["onboard.user.invitation_mail_sent.v1"])
        .await;

    // With the relay stopped, the outbox keeps the activation's rows for us to read.
    stack.signal("relay", "TERM");
    let (status, body) = stack.submit_password(&mail.code(), PASSWORD).await;
    assert_eq!(status, 200, "{body}");

    let (phc, scheme) = credential(&pool, &id)
        .await
        .expect("Jane's credential row exists once she is active");
    assert!(
        phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "not an argon2id PHC string at the configured cost"
    );
    assert_eq!(scheme, ("argon2id".to_owned(), 19, 19456, 2, 1));
    let secret = hash_part(&phc);
    assert!(secret.len() >= 43, "a 32-byte hash in base64");

    // The outbox holds the activation's events, without the hash.
    let outboxed: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT event_type, event_version, payload FROM outbox WHERE aggregate_id = $1 ORDER BY id",
    )
    .bind(&id)
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(t, v, p): (String, String, sqlx::types::Json<Value>)| (t, v, p.0))
    .collect();
    let types: Vec<&str> = outboxed.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(types, ["PasswordSet", "UserActivated"], "{outboxed:?}");
    let (_, version, payload) = &outboxed[0];
    assert_eq!(version, "2.0");
    assert_eq!(
        payload["PasswordSet"]["password_hash"],
        Value::Null,
        "{payload}"
    );
    assert_eq!(
        payload["PasswordSet"]["scheme"],
        serde_json::json!({"algorithm": "argon2id", "version": 19, "memory_kib": 19456,
                           "iterations": 2, "parallelism": 1})
    );
    for table in ["events", "outbox", "outbox_dead_letter", "snapshots"] {
        assert_eq!(rows_containing(&pool, table, secret).await, 0, "{table}");
        assert_eq!(
            rows_containing(&pool, table, "$argon2id$").await,
            0,
            "{table}"
        );
    }

    // The relay publishes them, and the welcome mail follows; no record carries the hash.
    stack.spawn("relay");
    stack.wait_for_mails(&email, 2).await;
    let records = stack
        .user_records(
            &id,
            &["onboard.user.password_set.v1", "onboard.user.activated.v1"],
        )
        .await;
    for r in &records {
        assert!(!r.raw_value.contains(secret), "{}", r.raw_value);
        assert!(!r.raw_value.contains("argon2"), "{}", r.raw_value);
    }
    for table in ["events", "outbox", "outbox_dead_letter"] {
        assert_eq!(rows_containing(&pool, table, secret).await, 0, "{table}");
    }

    // The chain, taken over the payload as stored, verifies; the projections replay.
    let o = stack.cli(&["audit", "verify"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    let o = stack.cli(&["audit", "replay", "--from", "postgres"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    let o = stack.cli(&["user", "show", &id]);
    let view: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(view["state"], "Active", "{}", describe_output(&o));
}

/// Events of an account activated by a release before migration 0013: `PasswordSet` 1.0 holds
/// the hash.
pub(crate) const LEGACY: [(&str, &str, &str); 4] = [
    (
        "UserInvited",
        "2.0",
        r#"{"UserInvited": {"user_id": "USER", "username": "Olga", "email": "olga@pickup.example", "domain": "PRIMARY", "locale": null, "time_zone": null, "claims": {}, "invited_at": "2026-01-05T09:00:00Z"}}"#,
    ),
    (
        "CodeIssued",
        "1.0",
        r#"{"CodeIssued": {"code_id": "CODE", "key_id": "k1", "issued_at": "2026-01-05T09:00:00Z", "expires_at": "2099-01-06T09:00:00Z", "reason": "invitation"}}"#,
    ),
    (
        "PasswordSet",
        "1.0",
        r#"{"PasswordSet": {"code_id": "CODE", "password_hash": "HASH", "set_at": "2026-01-05T09:30:00Z"}}"#,
    ),
    (
        "UserActivated",
        "1.0",
        r#"{"UserActivated": {"activated_at": "2026-01-05T09:30:00Z"}}"#,
    ),
];

/// What the release before migration 0013 stored for a password: argon2id at OWASP's cost.
pub(crate) fn legacy_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_log_written_before_the_hash_left_it_still_verifies_replays_and_loads_and_its_hash_moves_to_credentials(
) {
    let stack = Stack::migrated_up_to("credentials_legacy", Options::default(), 12).await;
    let pool = PgPool::connect(&stack.database_url).await.unwrap();
    let id = uuid::Uuid::now_v7().to_string();
    let code = uuid::Uuid::new_v4().to_string();
    let phc = legacy_hash(PASSWORD);
    let secret = hash_part(&phc).to_owned();
    let mut tx = pool.begin().await.unwrap();
    for (seq, (event_type, version, payload)) in LEGACY.iter().enumerate() {
        let payload = payload
            .replace("USER", &id)
            .replace("CODE", &code)
            .replace("HASH", &phc);
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             VALUES ('Onboarding', $1, $2, $3, $4, $5::jsonb, '{\"actor_kind\": \"user\", \"actor_id\": \"confirmation-link\"}')",
        )
        .bind(&id)
        .bind(seq as i64 + 1)
        .bind(event_type)
        .bind(version)
        .bind(payload)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    // A dead letter of that release kept a copy of the hash too.
    sqlx::query(
        "INSERT INTO outbox_dead_letter (id, aggregate_id, sequence, event_type, payload, error) \
         SELECT id + 1000, aggregate_id, sequence, event_type, payload, 'a relay bug' FROM outbox \
         WHERE aggregate_id = $1 AND event_type = 'PasswordSet'",
    )
    .bind(&id)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(rows_containing(&pool, "outbox", &secret).await, 1);
    let before: String = sqlx::query_scalar(
        "SELECT encode(hash, 'hex') FROM events ORDER BY global_position DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    let o = stack.cli(&["migrate"]);
    assert!(o.status.success(), "{}", describe_output(&o));

    // The hash moved into credentials; the log keeps its rows as they were (append-only, and
    // chained over them), the copies outside the log lost it.
    let (stored, scheme) = credential(&pool, &id).await.expect("the hash was copied");
    assert_eq!(stored, phc);
    assert_eq!(scheme, ("argon2id".to_owned(), 19, 19456, 2, 1));
    assert_eq!(rows_containing(&pool, "events", &secret).await, 1);
    assert_eq!(rows_containing(&pool, "outbox", &secret).await, 0);
    assert_eq!(
        rows_containing(&pool, "outbox_dead_letter", &secret).await,
        0
    );
    let after: String = sqlx::query_scalar(
        "SELECT encode(hash, 'hex') FROM events ORDER BY global_position DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(before, after);
    let (version, payload): (String, sqlx::types::Json<Value>) = sqlx::query_as(
        "SELECT event_version, payload FROM outbox WHERE aggregate_id = $1 AND event_type = 'PasswordSet'",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(version, "2.0");
    assert_eq!(payload.0["PasswordSet"]["scheme"]["memory_kib"], 19456);

    // The chain verifies, the projections replay, the account loads as active, and the tools
    // that print events show no hash.
    for args in [
        &["audit", "verify"][..],
        &["audit", "replay", "--from", "postgres"],
        &["audit", "history", &id],
    ] {
        let o = stack.cli(args);
        assert!(o.status.success(), "{args:?}: {}", describe_output(&o));
        assert!(!String::from_utf8_lossy(&o.stdout).contains(&secret));
    }
    for args in [&["events", &id][..], &["audit", "export"]] {
        let o = stack.cli(args);
        assert!(o.status.success(), "{args:?}: {}", describe_output(&o));
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains(&secret),
            "{args:?}"
        );
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("<redacted>"),
            "{args:?}"
        );
    }
    let o = stack.cli(&["user", "show", &id]);
    let view: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(view["state"], "Active", "{}", describe_output(&o));

    // The relay publishes the outbox rows written before the migration.
    stack.spawn("relay");
    let records = stack
        .user_records(
            &id,
            &["onboard.user.password_set.v1", "onboard.user.activated.v1"],
        )
        .await;
    for r in &records {
        assert!(!r.raw_value.contains(&secret), "{}", r.raw_value);
    }

    // The moved hash opens her account: a login service verifies the old password.
    stack.spawn("gateway");
    stack.wait_ready().await;
    let (status, body, _) = stack
        .verify(
            &stack.verifier_token,
            json!({"username": "Olga", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], id.as_str());
}

// ---- The engine as a password authority: POST /api/v1/credentials/verify ----

/// Invites `username` through the API, opens the mailed code and sets `PASSWORD`: the user id.
async fn activated(stack: &Stack, username: &str) -> String {
    let (id, _, mail) = stack.invite_mailed(username).await;
    let (status, body) = stack.submit_password(&mail.code(), PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    id
}

#[tokio::test]
async fn a_login_service_verifies_janes_password_and_learns_nothing_from_a_refusal() {
    let stack = Stack::start("credentials_verify", Options::default()).await;
    let jane = activated(&stack, "Jane").await;
    let (pending, _, _) = stack.invite_mailed("Pending").await;

    // The right password: 200 with Jane's id, whatever the case of her name.
    for username in ["Jane", "jane"] {
        let (status, body, _) = stack
            .verify(
                &stack.verifier_token,
                json!({"username": username, "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], jane.as_str());
        assert_eq!(body["username"], "Jane");
        assert_eq!(body["domain"], "PRIMARY");
    }
    let (status, body, _) = stack
        .verify(
            &stack.verifier_token,
            json!({"username": "Jane", "password": PASSWORD, "domain": "primary"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A wrong password, a username nobody holds, an account that is not active, a domain where
    // she has no account: one answer, byte for byte.
    let refused =
        json!({"error": "invalid_credentials", "message": "the username or password is wrong"});
    for attempt in [
        json!({"username": "Jane", "password": "Pickup rides at dusk 42"}),
        json!({"username": "Nobody", "password": PASSWORD}),
        json!({"username": "Pending", "password": PASSWORD}),
        json!({"username": "Jane", "password": PASSWORD, "domain": "EMPLOYEES"}),
        json!({"username": "Jane", "password": ""}),
    ] {
        let (status, body, _) = stack.verify(&stack.verifier_token, attempt.clone()).await;
        assert_eq!((status, &body), (401, &refused), "{attempt}");
    }
    assert_eq!(stack.user(&pending).await["state"], "CodeIssued");

    // The token must carry the `verify` scope; the default scopes do not include it.
    let (status, body, _) = stack
        .verify(
            &stack.admin_token,
            json!({"username": "Jane", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "insufficient_scope");
    assert!(
        body["message"].as_str().unwrap().contains("`verify`"),
        "{body}"
    );
    let (status, body, _) = stack
        .verify(
            "not-a-token",
            json!({"username": "Jane", "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );

    // Bad requests name the field, never echo the password.
    let (status, body, _) = stack
        .verify(&stack.verifier_token, json!({"username": "Jane"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["fields"]["password"], "is required");
    let (status, body, _) = stack
        .verify(
            &stack.verifier_token,
            json!({"username": "Jane", "password": PASSWORD, "remember": true}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(!body.to_string().contains(PASSWORD), "{body}");

    // No process logged the password.
    for process in ["gateway", "relay", "email-worker", "scheduler"] {
        assert!(
            !stack.logs_of(process).contains(PASSWORD),
            "{process} logged the password"
        );
    }
}

#[tokio::test]
async fn verification_is_throttled_per_username_and_per_client_with_retry_after() {
    let stack = Stack::start(
        "credentials_throttle",
        Options {
            verify_client_rate_limit_per_minute: 6,
            verify_username_rate_limit_per_minute: 3,
            ..Options::default()
        },
    )
    .await;
    activated(&stack, "Jane").await;
    activated(&stack, "Max").await;
    let wrong = json!({"username": "Jane", "password": "not her password at all"});
    let right = json!({"username": "Jane", "password": PASSWORD});

    // Three failed attempts use up Jane's budget: the fourth is refused before any hash, even
    // with the right password.
    for _ in 0..3 {
        let (status, body, _) = stack.verify(&stack.verifier_token, wrong.clone()).await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, body, retry_after) = stack.verify(&stack.verifier_token, right.clone()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "rate_limited");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("too many sign-in attempts for this username"),
        "{body}"
    );
    let seconds: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&seconds), "{seconds}");

    // Another username has its own budget, until the client's (six) runs out.
    for _ in 0..2 {
        let (status, body, _) = stack
            .verify(
                &stack.verifier_token,
                json!({"username": "Max", "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body, retry_after) = stack
        .verify(
            &stack.verifier_token,
            json!({"username": "Max", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("too many requests from this client"),
        "{body}"
    );
    assert!(retry_after.is_some());
    let metrics = stack
        .http
        .get(stack.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("onboard_rate_limited_total{group=\"verify\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("onboard_credential_verifications_total{outcome=\"rejected\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn after_the_cost_is_raised_a_correct_password_is_rehashed_and_still_verifies() {
    let stack = Stack::start("credentials_rehash", Options::default()).await;
    let pool = PgPool::connect(&stack.database_url).await.unwrap();
    let jane = activated(&stack, "Jane").await;
    let (before, scheme) = credential(&pool, &jane).await.unwrap();
    assert_eq!(scheme, ("argon2id".to_owned(), 19, 19456, 2, 1));
    // The welcome mail's record is the last event the activation causes: count after it.
    stack
        .user_records(&jane, &["onboard.user.welcome_mail_sent.v1"])
        .await;
    let events_before = stack.cli(&["events", &jane]).stdout.len();

    // The operator raises the cost and restarts the gateway.
    let mut config = std::fs::read_to_string(&stack.config).unwrap();
    config.push_str("\n[password_hashing]\nmemory_kib = 24576\niterations = 3\nparallelism = 1\n");
    std::fs::write(&stack.config, config).unwrap();
    stack.signal("gateway", "TERM");
    stack.spawn("gateway");
    stack.wait_ready().await;

    // A wrong password changes nothing.
    let (status, _, _) = stack
        .verify(
            &stack.verifier_token,
            json!({"username": "Jane", "password": "wrong wrong wrong"}),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(credential(&pool, &jane).await.unwrap().0, before);

    // Her password verifies, and her credential is now at the raised cost.
    let (status, body, _) = stack
        .verify(
            &stack.verifier_token,
            json!({"username": "Jane", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (after, scheme) = credential(&pool, &jane).await.unwrap();
    assert_ne!(after, before);
    assert!(after.starts_with("$argon2id$v=19$m=24576,t=3,p=1$"));
    assert_eq!(scheme, ("argon2id".to_owned(), 19, 24576, 3, 1));
    assert!(stack
        .logs_of("gateway")
        .contains("password rehashed at the configured cost"));

    // The new hash verifies the same password, and is not made again.
    let (status, body, _) = stack
        .verify(
            &stack.verifier_token,
            json!({"username": "Jane", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(credential(&pool, &jane).await.unwrap().0, after);
    let (status, _, _) = stack
        .verify(
            &stack.verifier_token,
            json!({"username": "Jane", "password": "wrong wrong wrong"}),
        )
        .await;
    assert_eq!(status, 401);

    // A rehash records no event: the log is as it was.
    assert_eq!(stack.cli(&["events", &jane]).stdout.len(), events_before);
    for table in ["events", "outbox", "outbox_dead_letter"] {
        assert_eq!(
            rows_containing(&pool, table, hash_part(&after)).await,
            0,
            "{table}"
        );
    }
}
