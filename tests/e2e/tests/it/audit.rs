//! What an auditor sees: `onboard audit verify|replay|history|as-of|export` against a real log,
//! tampered with in SQL the way an attacker with database access would.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{PgPool, Row};

use onboarding_e2e::{describe_output, unique, Options, Stack};

const PASSWORD: &str = "Pickup rides at dawn 42";

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Checks a stored event's payload (as `audit export` prints it) against the committed schema
/// of its type and version, `schemas/stored/<event_type>.<event_version>.json`.
fn validate_stored(event: &Value) {
    let (t, v) = (
        event["event_type"].as_str().unwrap(),
        event["event_version"].as_str().unwrap(),
    );
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/stored")
        .join(format!("{t}.{v}.json"));
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("no schema for {t} {v} at {}: {e}", path.display())),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&event["payload"])
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{t} {v} does not match its schema: {errors:?}\n{event}"
    );
}

/// Invites through the CLI (no gateway needed); returns the user id.
fn cli_invite(stack: &Stack, username: &str, extra: &[&str]) -> String {
    let email = format!("{}@pickup.example", unique(&format!("{username}.")));
    let mut args = vec!["invite", "--username", username, "--email", &email];
    args.extend_from_slice(extra);
    let o = stack.cli(&args);
    assert!(o.status.success(), "{}", describe_output(&o));
    let view: Value = serde_json::from_slice(&o.stdout).unwrap();
    view["id"].as_str().unwrap().to_owned()
}

fn head_of(verify: &std::process::Output) -> String {
    stdout(verify)
        .lines()
        .find_map(|l| l.strip_prefix("head: "))
        .unwrap_or_else(|| panic!("no head digest in {}", describe_output(verify)))
        .to_owned()
}

/// A copy of the test's database (its log as it is now), for one tampering each.
async fn copy_database(stack: &Stack, admin: &PgPool) -> String {
    let source = stack.database_url.rsplit_once('/').unwrap().1.to_owned();
    let copy = format!("{source}_{}", unique("t"));
    // A template must have no other sessions. The CLI processes that used it have exited, but
    // their server sessions can take a while to end on a loaded machine: after a few seconds,
    // end whatever sessions are left (no process of this test uses the database any more).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let patience = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        if std::time::Instant::now() > patience {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&source)
            .execute(admin)
            .await
            .expect("end the sessions left on the test database");
        }
        match sqlx::query(&format!("CREATE DATABASE \"{copy}\" TEMPLATE \"{source}\""))
            .execute(admin)
            .await
        {
            Ok(_) => break,
            Err(e)
                if e.to_string().contains("is being accessed by other users")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(e) => panic!("cannot copy the database {source}: {e}"),
        }
    }
    format!("{}/{copy}", stack.database_url.rsplit_once('/').unwrap().0)
}

/// Runs SQL as an attacker would: with the log's triggers (append-only guard, hash chain)
/// switched off for the session.
async fn tamper(url: &str, statements: &[&str]) {
    let pool = PgPool::connect(url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    for s in statements {
        sqlx::query(s).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    pool.close().await;
}

/// `audit verify` on a copy of the test's log after `statements`: it must report findings
/// (exit 3); returns its standard output, which names them.
async fn verify_tampered(stack: &Stack, admin: &PgPool, statements: &[&str]) -> String {
    let url = copy_database(stack, admin).await;
    tamper(&url, statements).await;
    let o = verify_on(stack, &url, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", describe_output(&o));
    stdout(&o)
}

fn verify_on(stack: &Stack, url: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    stack.cli_with_env(&args, &[("ONBOARD__DATABASE__URL", url)])
}

#[tokio::test]
async fn verify_names_an_altered_removed_inserted_or_reordered_event_and_keeps_the_head() {
    let stack = Stack::new("audit_verify", Options::default()).await;
    for name in ["Ann", "Ben", "Cid"] {
        cli_invite(&stack, name, &[]);
    }
    // Six events: UserInvited and CodeIssued for each of the three.
    let intact = stack.cli(&["audit", "verify"]);
    assert!(intact.status.success(), "{}", describe_output(&intact));
    assert!(
        stdout(&intact).contains("events: 6"),
        "{}",
        describe_output(&intact)
    );
    assert!(stdout(&intact).contains("chain intact"));
    let head = head_of(&intact);
    assert!(head.starts_with("6:"), "{head}");

    // The log refuses changes from anyone who does not switch its triggers off.
    let pool = PgPool::connect(&stack.database_url).await.unwrap();
    let refused = sqlx::query("DELETE FROM events WHERE global_position = 3")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");
    let admin = PgPool::connect(&stack.services.database_url).await.unwrap();
    pool.close().await;

    // Altered: Ben's address changed in his invitation.
    let found = verify_tampered(&stack, &admin, &["UPDATE events SET payload = jsonb_set(payload, '{UserInvited,email}', '\"mallory@evil.example\"') WHERE global_position = 3"]).await;
    assert!(
        found.contains("ALTERED: position 3 (UserInvited of Onboarding"),
        "{found}"
    );

    // Removed: Ben's code disappears from the middle of the log.
    let found = verify_tampered(
        &stack,
        &admin,
        &["DELETE FROM events WHERE global_position = 4"],
    )
    .await;
    assert!(
        found.contains("REMOVED: an event is missing after position 3, before position 5"),
        "{found}"
    );

    // Inserted: a forged event, with a hash computed by the published formula and chained to
    // its predecessor, slipped in after position 2 (the later events renumbered to make room).
    let found = verify_tampered(
        &stack,
        &admin,
        &[
            "UPDATE events SET global_position = global_position + 1000 WHERE global_position > 2",
            "UPDATE events SET global_position = global_position - 999 WHERE global_position > 1000",
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, \
             metadata, global_position, recorded_at, prev_hash, hash) \
             SELECT aggregate_type, aggregate_id, 3, 'UserActivated', '1.0', \
                    '{\"UserActivated\": {\"activated_at\": \"2026-01-01T00:00:00Z\"}}', metadata, 3, recorded_at, hash, \
                    event_hash(hash, aggregate_type, aggregate_id, 3, 'UserActivated', '1.0', recorded_at, \
                               '{\"UserActivated\": {\"activated_at\": \"2026-01-01T00:00:00Z\"}}', metadata) \
             FROM events WHERE global_position = 2",
        ],
    )
    .await;
    assert!(
        found.contains("INSERTED: position 3 does not belong here"),
        "{found}"
    );

    // Reordered: two neighbours swap places.
    let found = verify_tampered(
        &stack,
        &admin,
        &[
            "UPDATE events SET global_position = -1 WHERE global_position = 4",
            "UPDATE events SET global_position = 4 WHERE global_position = 5",
            "UPDATE events SET global_position = 5 WHERE global_position = -1",
        ],
    )
    .await;
    assert!(
        found.contains("REORDERED: position 4 (") && found.contains("and position 5 ("),
        "{found}"
    );

    // The kept head: still in the log after more appends; gone when the newest event is removed,
    // which the chain alone cannot tell.
    cli_invite(&stack, "Dee", &[]);
    let later = stack.cli(&["audit", "verify", "--expect", &head]);
    assert!(later.status.success(), "{}", describe_output(&later));
    assert!(head_of(&later).starts_with("8:"));
    let url = copy_database(&stack, &admin).await;
    tamper(&url, &["DELETE FROM events WHERE global_position >= 6"]).await;
    let truncated = verify_on(&stack, &url, &[]);
    assert!(
        truncated.status.success(),
        "{}",
        describe_output(&truncated)
    );
    let o = verify_on(&stack, &url, &["--expect", &head]);
    assert_eq!(o.status.code(), Some(4), "{}", describe_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not hold the expected head"),
        "{}",
        describe_output(&o)
    );
    let o = stack.cli(&["audit", "verify", "--expect", "yesterday"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not a head digest"),
        "{}",
        describe_output(&o)
    );
}

/// Positions of the probe events in the export, in export order.
fn probe_positions(stack: &Stack) -> Vec<(String, i64)> {
    let o = stack.cli(&["audit", "export"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["aggregate_type"] == "LateCommitProbe")
        .map(|e| {
            (
                e["aggregate_id"].as_str().unwrap().to_owned(),
                e["global_position"].as_i64().unwrap(),
            )
        })
        .collect()
}

const PROBE: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                     VALUES ('LateCommitProbe', $1, 1, 'Probe', '1.0', '{}', '{}')";

#[tokio::test]
async fn a_reader_never_skips_an_event_that_commits_late() {
    let stack = Stack::new("audit_late", Options::default()).await;
    cli_invite(&stack, "Eve", &[]);
    let pool = PgPool::connect(&stack.database_url).await.unwrap();

    // A begins appending and stays open.
    let mut a = pool.begin().await.unwrap();
    sqlx::query(PROBE).bind("a").execute(&mut *a).await.unwrap();
    // B starts appending later and would commit first.
    let b_pool = pool.clone();
    let b = tokio::spawn(async move {
        let mut b = b_pool.begin().await.unwrap();
        sqlx::query(PROBE).bind("b").execute(&mut *b).await.unwrap();
        b.commit().await.unwrap();
    });
    // B waits for A (on the append lock), rather than committing a position a reader could
    // see before A's.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second append did not wait for the first"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!b.is_finished());
    assert_eq!(probe_positions(&stack), vec![], "nothing is visible yet");

    a.commit().await.unwrap();
    b.await.unwrap();
    let seen = probe_positions(&stack);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].0, "a", "the first to append comes first: {seen:?}");
    assert_eq!(seen[1].0, "b");
    assert!(seen[0].1 < seen[1].1);
    let o = stack.cli(&["audit", "verify"]);
    assert!(o.status.success(), "{}", describe_output(&o));
}

/// `POST /api/v1/users` for `username`: the status.
async fn invite_status(stack: &Stack, username: &str, email: &str) -> u16 {
    stack
        .admin(stack.http.post(stack.url("/api/v1/users")))
        .json(&serde_json::json!({"username": username, "email": email, "domain": "PRIMARY"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn commands_committed_together_keep_their_own_outcomes_and_the_chain_holds() {
    let stack = Stack::start("audit_group", Options::default()).await;
    let pool = PgPool::connect(&stack.database_url).await.unwrap();
    let tag = unique("g");
    // An account invited before, revoked in the batch below: the batch's statement updates an
    // existing row beside the rows it inserts (docs/adr/0046). Mailed first, so that nothing
    // else appends to her account meanwhile.
    let (pia, _, _) = stack.invite_mailed("Pia").await;

    // Someone else holds the append lock, so the gateway's commands pile up behind it and are
    // written together once it is released (docs/adr/0023): among them five names asked for
    // twice at once, whose second invitation must be refused on its own.
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(8029185077895312386)")
        .execute(&mut *holder)
        .await
        .unwrap();
    let names: Vec<String> = (0..30).map(|i| format!("group{}", i % 25)).collect();
    let requests = futures::future::join_all(names.iter().enumerate().map(|(i, name)| {
        let stack = &stack;
        let email = format!("{name}.{i}.{tag}@pickup.example");
        async move { (name.clone(), invite_status(stack, name, &email).await) }
    }));
    let release = async {
        // Until the appender waits on the lock; then a moment for the others to queue.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiting > 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        sqlx::query("SELECT pg_advisory_unlock(8029185077895312386)")
            .execute(&mut *holder)
            .await
            .unwrap();
    };
    let revoke = async {
        stack
            .admin(
                stack
                    .http
                    .post(stack.url(&format!("/api/v1/users/{pia}/revoke"))),
            )
            .send()
            .await
            .unwrap()
            .status()
    };
    let (outcomes, (), revoked) = tokio::join!(requests, release, revoke);
    assert_eq!(revoked, 200);

    for i in 0..25 {
        let name = format!("group{i}");
        let mut statuses: Vec<u16> = outcomes
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .collect();
        statuses.sort_unstable();
        let expected = if i < 5 { vec![201, 409] } else { vec![201] };
        assert_eq!(statuses, expected, "{name}: {outcomes:?}");
    }
    let invited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e JOIN account_states a ON a.user_id::text = e.aggregate_id \
         WHERE e.event_type = 'UserInvited' AND a.username LIKE 'group%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        invited, 25,
        "one invitation per name, none of a refused one"
    );
    // Every account's events are whole: an invitation and its code, nothing of a loser.
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e WHERE e.event_type = 'CodeIssued' AND NOT EXISTS \
         (SELECT 1 FROM events i WHERE i.aggregate_id = e.aggregate_id AND i.event_type = 'UserInvited')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0);
    let o = stack.cli(&["audit", "verify"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    // Each account's row, written once for the whole batch by the projection trigger, is the
    // row the log's events give, one by one (docs/adr/0046): the names and addresses the
    // appender sealed included.
    let o = stack.cli(&["audit", "replay", "--from", "postgres"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    assert!(
        stdout(&o).contains("projections match the log"),
        "{}",
        describe_output(&o)
    );
    let (state, group): (String, i64) = sqlx::query_as(
        "SELECT (SELECT state FROM account_states WHERE user_id = $1::uuid), \
                (SELECT count(*) FROM account_states WHERE username LIKE 'group%' \
                 AND email LIKE '%' || $2 || '@pickup.example' AND state = 'CodeIssued' \
                 AND delivery IS NOT NULL AND code_expires_at > now())",
    )
    .bind(&pia)
    .bind(&tag)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), group), ("Revoked", 25));
}

#[tokio::test]
async fn an_auditor_reads_an_accounts_history_its_state_at_an_instant_and_exports_the_log() {
    let stack = Stack::start("audit_history", Options::default()).await;
    let (id, email, mail) = stack.invite_mailed("Gus").await;
    // Wait for the mail's record so that the next events come after it.
    stack
        .user_records(&id, &["onboard.user.invitation_mail_sent.v1"])
        .await;
    let before_password = chrono::Utc::now();
    let (status, body) = stack.submit_password(&mail.code(), PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    stack.wait_for_mails(&email, 2).await;
    stack
        .user_records(&id, &["onboard.user.welcome_mail_sent.v1"])
        .await;

    // The timeline: who did what, when, in one table.
    let o = stack.cli(&["audit", "history", &id]);
    assert!(o.status.success(), "{}", describe_output(&o));
    let lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    let expect = [
        ("UserInvited", "actor=admin:e2e-admin"),
        ("CodeIssued", "actor=admin:e2e-admin"),
        ("InvitationMailSent", "actor=system:email-worker"),
        ("PasswordSet", "actor=user:confirmation-link"),
        ("UserActivated", "actor=user:confirmation-link"),
        ("WelcomeMailSent", "actor=system:email-worker"),
    ];
    assert_eq!(lines.len(), expect.len(), "{}", describe_output(&o));
    for (line, (event, actor)) in lines.iter().zip(expect) {
        assert!(
            line.contains(event) && line.contains(actor),
            "{line} should show {event} by {actor}"
        );
        assert!(!line.contains("correlation=-"), "{line}");
    }
    // One command's events share a correlation id; different commands do not.
    let json = stack.cli(&["audit", "history", "Gus", "--json"]);
    let events: Vec<Value> = stdout(&json)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["correlation_id"], events[1]["correlation_id"]);
    assert_eq!(events[3]["correlation_id"], events[4]["correlation_id"]);
    assert_ne!(events[0]["correlation_id"], events[3]["correlation_id"]);
    // The log holds how the password was hashed, not the hash (that is in `credentials`).
    assert_eq!(
        events[3]["payload"]["PasswordSet"]["password_hash"],
        Value::Null
    );
    assert_eq!(
        events[3]["payload"]["PasswordSet"]["scheme"]["algorithm"],
        "argon2id"
    );
    assert!(!stdout(&json).contains("$argon2id$"));

    // As of before the password: the code was issued and mailed; now: active.
    let at = before_password.to_rfc3339();
    let o = stack.cli(&["audit", "as-of", &id, &at]);
    assert!(o.status.success(), "{}", describe_output(&o));
    let then: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(then["state"], "CodeIssued", "{then}");
    assert_eq!(then["email_delivery"]["status"], "sent", "{then}");
    assert_eq!(then["activated_at"], Value::Null);
    assert_eq!(then["last_position"], events[2]["global_position"]);
    let now = chrono::Utc::now().to_rfc3339();
    let o = stack.cli(&["audit", "as-of", &id, &now]);
    let current: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(current["state"], "Active", "{}", describe_output(&o));
    let o = stack.cli(&["audit", "as-of", &id, "2000-01-01T00:00:00Z"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("did not exist at 2000-01-01"),
        "{}",
        describe_output(&o)
    );
    let o = stack.cli(&["audit", "as-of", &id, "last tuesday"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not an RFC 3339 instant"),
        "{}",
        describe_output(&o)
    );

    // Export: the whole log, or a window of it; hashes chain line to line.
    let o = stack.cli(&["audit", "export"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    let all: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(all.len(), 6);
    all.iter().for_each(validate_stored);
    for pair in all.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    assert!(!stdout(&o).contains("$argon2id$"));
    let o = stack.cli(&["audit", "export", "--since", &at]);
    let later: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = later
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["PasswordSet", "UserActivated", "WelcomeMailSent"],
        "{}",
        describe_output(&o)
    );
    let o = stack.cli(&["audit", "export", "--until", &at]);
    assert_eq!(stdout(&o).lines().count(), 3, "{}", describe_output(&o));
}

/// Waits until the relay has published everything committed.
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
async fn replays_from_postgres_and_from_kafka_rebuild_the_live_projections() {
    let stack = Stack::start("audit_replay", Options::default()).await;
    let (active, email, mail) = stack.invite_mailed("Hal").await;
    let (status, body) = stack.submit_password(&mail.code(), PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    stack.wait_for_mails(&email, 2).await;
    let (invited, _, _) = stack.invite_mailed("Ida").await;
    // An invitation with a time zone (UserInvited 2.0), given in any case.
    let r = stack
        .admin(stack.http.post(stack.url("/api/v1/users")))
        .json(&serde_json::json!({"username": "Jo", "email": format!("{}@pickup.example", unique("jo.")), "time_zone": "europe/berlin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let jo: Value = r.json().await.unwrap();
    assert_eq!(jo["time_zone"], "Europe/Berlin");
    let jo = jo["id"].as_str().unwrap().to_owned();
    let r = stack
        .admin(stack.http.post(stack.url("/api/v1/users")))
        .json(&serde_json::json!({"username": "Kim", "email": "kim@pickup.example", "time_zone": "Mars/Olympus_Mons"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let problem: Value = r.json().await.unwrap();
    assert!(problem.to_string().contains("IANA time zone"), "{problem}");
    // A revoked invitation gives its name back, and the name is invited again.
    let (revoked, _, _) = stack.invite_mailed("Lou").await;
    let r = stack
        .admin(
            stack
                .http
                .post(stack.url(&format!("/api/v1/users/{revoked}/revoke"))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (lou, _, _) = stack.invite_mailed("Lou").await;
    stack
        .user_records(&lou, &["onboard.user.invitation_mail_sent.v1"])
        .await;

    // Everything is on the topic (each record checked against its schema as it is read).
    stack
        .user_records(&active, &["onboard.user.welcome_mail_sent.v1"])
        .await;
    stack
        .user_records(&invited, &["onboard.user.invitation_mail_sent.v1"])
        .await;
    let records = stack
        .user_records(&jo, &["onboard.user.invitation_mail_sent.v1"])
        .await;
    assert_eq!(records[0].value["time_zone"], "Europe/Berlin");
    let pool = PgPool::connect(&stack.database_url).await.unwrap();
    outbox_drained(&pool).await;

    for source in ["postgres", "kafka"] {
        let o = stack.cli(&["audit", "replay", "--from", source]);
        assert!(
            o.status.success(),
            "replay from {source}: {}",
            describe_output(&o)
        );
        assert!(
            stdout(&o).contains("projections match the log"),
            "{}",
            describe_output(&o)
        );
        // A clean replay reports no error: the end of a partition is where it stops.
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(!log.contains("ERROR"), "replay from {source}: {log}");
    }
    // `--keep` also writes the rebuilt projections and a copy of the live ones into a scratch
    // schema, to query with SQL, and leaves it.
    let o = stack.cli(&["audit", "replay", "--from", "postgres", "--keep"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    let schema = stdout(&o)
        .lines()
        .find_map(|l| l.strip_prefix("scratch schema kept: "))
        .expect("the kept schema is named")
        .trim()
        .to_owned();
    let (rebuilt, live, names): (i64, i64, i64) = sqlx::query_as(&format!(
        "SELECT (SELECT count(*) FROM {schema}.account_states r \
                 JOIN {schema}.live_account_states l USING (user_id) \
                 WHERE (r.state, r.state_since, r.email) IS NOT DISTINCT FROM (l.state, l.state_since, l.email)), \
                (SELECT count(*) FROM account_states), \
                (SELECT count(*) FROM {schema}.usernames)"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        rebuilt, live,
        "every live account, rebuilt alike, in {schema}"
    );
    assert!(names >= 4, "{names} names rebuilt in {schema}");
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    let o = stack.cli(&["audit", "replay", "--from", "postgres"]);
    let replayed: i64 = stdout(&o)
        .lines()
        .find_map(|l| l.strip_prefix("events replayed: "))
        .unwrap()
        .parse()
        .unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(replayed, stored);
    let holders: Vec<String> = sqlx::query_scalar(
        "SELECT user_id::text FROM usernames WHERE user_id = ANY($1::uuid[]) ORDER BY user_id",
    )
    .bind([revoked.clone(), lou.clone()])
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        holders,
        vec![lou.clone()],
        "the revoked invitation {revoked} gave the name back"
    );

    // Someone edits the live username registry: the replay names both sides of the row. (The
    // registry keeps keyed hashes of the names, docs/adr/0035: the edit keeps the key id and
    // changes the hash.)
    let ida: String =
        sqlx::query_scalar("SELECT username_key FROM usernames WHERE user_id = $1::uuid")
            .bind(&invited)
            .fetch_one(&pool)
            .await
            .unwrap();
    let (key_id, _) = ida.split_once('/').expect("a keyed name");
    let mallory = format!("{key_id}/{}", "0".repeat(64));
    sqlx::query("UPDATE usernames SET username_key = $2 WHERE user_id = $1::uuid")
        .bind(&invited)
        .bind(&mallory)
        .execute(&pool)
        .await
        .unwrap();
    let o = stack.cli(&["audit", "replay", "--from", "postgres"]);
    assert_eq!(o.status.code(), Some(3), "{}", describe_output(&o));
    let text = stdout(&o);
    assert!(
        text.contains("usernames only in live") && text.contains(&format!("\"{mallory}\"")),
        "{}",
        describe_output(&o)
    );
    assert!(
        text.contains("usernames only in replay") && text.contains(&format!("\"{ida}\"")),
        "{}",
        describe_output(&o)
    );
    assert!(!text.contains("account_states only"), "{text}");
    let o = stack.cli(&["audit", "replay", "--from", "kafka"]);
    assert_eq!(o.status.code(), Some(3), "{}", describe_output(&o));
    // And the account states the trigger keeps: an account made active by hand is named.
    sqlx::query("UPDATE account_states SET state = 'Active' WHERE user_id = $1::uuid")
        .bind(&revoked)
        .execute(&pool)
        .await
        .unwrap();
    let o = stack.cli(&["audit", "replay", "--from", "postgres"]);
    assert_eq!(o.status.code(), Some(3), "{}", describe_output(&o));
    let text = stdout(&o);
    assert!(
        text.contains("account_states only in live") && text.contains("\"Active\""),
        "{}",
        describe_output(&o)
    );
    assert!(text.contains("account_states only in replay") && text.contains("\"Revoked\""));
    // The replay leaves no scratch schema behind.
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'audit_replay_%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
}

/// The replay compares each rebuilt account with the live rows as they meet, the log read in its
/// text order and the projections in uuid order (docs/adr/0043). Aggregate ids written in another
/// form (braced, upper case, without hyphens: PostgreSQL's `uuid` reads them, so the triggers
/// project them) come in another order than their uuids: the comparison still pairs every row, and still names the one
/// that differs, once on each side.
#[tokio::test]
async fn the_replay_pairs_every_row_whatever_order_the_log_holds_them_in() {
    let stack = Stack::new("audit_replay_order", Options::default()).await;
    let pool = PgPool::connect(&stack.database_url).await.unwrap();
    // Written in clear, as a release before the keyed registry did (the CLI's invitations
    // after them key the registry, ADR 0035).
    let mut odd = Vec::new();
    for n in 0..6 {
        let uuid = uuid::Uuid::now_v7();
        let id = match n % 3 {
            0 => format!("{{{uuid}}}"),
            1 => uuid.to_string().to_uppercase(),
            _ => uuid.simple().to_string(),
        };
        let code = uuid::Uuid::new_v4().to_string();
        let mut tx = pool.begin().await.unwrap();
        for (seq, event_type, payload) in [
            (
                1,
                "UserInvited",
                V1_INVITED
                    .replace("USER", &uuid.to_string())
                    .replace("\"Old\"", &format!("\"Odd{n}\"")),
            ),
            (2, "CodeIssued", V1_ISSUED.replace("CODE", &code)),
        ] {
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                 VALUES ('Onboarding', $1, $2, $3, '1.0', $4::jsonb, '{\"actor_kind\": \"admin\", \"actor_id\": \"cli\"}')",
            )
            .bind(&id)
            .bind(seq as i64)
            .bind(event_type)
            .bind(payload)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        odd.push(uuid);
    }
    for n in 0..6 {
        cli_invite(&stack, &format!("Even{n}"), &[]);
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM account_states")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 12);
    let o = stack.cli(&["audit", "replay", "--from", "postgres"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    assert!(
        stdout(&o).contains("projections match the log"),
        "{}",
        describe_output(&o)
    );
    // One of them made active by hand: named once on each side, nothing else.
    sqlx::query("UPDATE account_states SET state = 'Active' WHERE user_id = $1")
        .bind(odd[4])
        .execute(&pool)
        .await
        .unwrap();
    let o = stack.cli(&["audit", "replay", "--from", "postgres"]);
    assert_eq!(o.status.code(), Some(3), "{}", describe_output(&o));
    let text = stdout(&o);
    let differences: Vec<&str> = text.lines().filter(|l| l.contains(" only in ")).collect();
    assert_eq!(differences.len(), 2, "{text}");
    assert!(
        differences[0].starts_with("account_states only in live: ")
            && differences[0].contains("\"Active\"")
            && differences[0].contains(&odd[4].to_string()),
        "{text}"
    );
    assert!(
        differences[1].starts_with("account_states only in replay: ")
            && differences[1].contains("\"CodeIssued\""),
        "{text}"
    );
}

/// `UserInvited` as the first release stored it (version 1.0, no `time_zone`).
const V1_INVITED: &str = r#"{"UserInvited": {"user_id": "USER", "username": "Old", "email": "old@pickup.example", "domain": "PRIMARY", "locale": "de", "claims": {}, "invited_at": "2026-01-05T09:00:00Z"}}"#;
const V1_ISSUED: &str = r#"{"CodeIssued": {"code_id": "CODE", "key_id": "k1", "issued_at": "2026-01-05T09:00:00Z", "expires_at": "2099-01-06T09:00:00Z", "reason": "invitation"}}"#;

#[tokio::test]
async fn an_invitation_stored_as_version_1_is_upcast_when_read_and_replayed() {
    let stack = Stack::new("audit_upcast", Options::default()).await;
    let id = uuid::Uuid::now_v7().to_string();
    let code = uuid::Uuid::new_v4().to_string();
    let pool = PgPool::connect(&stack.database_url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    for (seq, event_type, payload) in [
        (1, "UserInvited", V1_INVITED.replace("USER", &id)),
        (2, "CodeIssued", V1_ISSUED.replace("CODE", &code)),
    ] {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             VALUES ('Onboarding', $1, $2, $3, '1.0', $4::jsonb, '{\"actor_kind\": \"admin\", \"actor_id\": \"cli\"}')",
        )
        .bind(&id)
        .bind(seq as i64)
        .bind(event_type)
        .bind(payload)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let new = cli_invite(&stack, "New", &["--time-zone", "America/New_York"]);

    // The account loads through the aggregate (user show), with no time zone.
    let o = stack.cli(&["user", "show", &id]);
    assert!(o.status.success(), "{}", describe_output(&o));
    let view: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(view["state"], "CodeIssued", "{view}");
    assert_eq!(view["username"], "Old");
    assert_eq!(view["locale"], "de");
    assert_eq!(view["time_zone"], Value::Null);
    let o = stack.cli(&["user", "show", &new]);
    let view: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(view["time_zone"], "America/New_York");

    // The log keeps what was stored: 1.0 for the old row, 2.0 for the new one.
    let o = stack.cli(&["audit", "history", &id]);
    assert!(stdout(&o).lines().next().unwrap().contains("UserInvited"));
    assert!(
        stdout(&o).lines().next().unwrap().contains("v1.0"),
        "{}",
        describe_output(&o)
    );
    let o = stack.cli(&["audit", "history", &new]);
    assert!(
        stdout(&o).lines().next().unwrap().contains("v2.0"),
        "{}",
        describe_output(&o)
    );
    let stored: String =
        sqlx::query("SELECT payload::text FROM events WHERE aggregate_id = $1 AND sequence = 1")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
    assert!(!stored.contains("time_zone"), "{stored}");
    // Each stored row matches the schema of the version it was stored as.
    let o = stack.cli(&["audit", "export"]);
    let exported: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported.len(), 4, "{}", describe_output(&o));
    exported.iter().for_each(validate_stored);
    assert_eq!(exported[0]["event_version"], "1.0");
    assert_eq!(exported[2]["event_version"], "2.0");

    // Its state at an instant, the replay and the chain all read it.
    let o = stack.cli(&["audit", "as-of", &id, &chrono::Utc::now().to_rfc3339()]);
    assert!(o.status.success(), "{}", describe_output(&o));
    let o = stack.cli(&["audit", "replay", "--from", "postgres"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    let o = stack.cli(&["audit", "verify"]);
    assert!(o.status.success(), "{}", describe_output(&o));
}

/// The check every topic read goes through can fail: a record without a required field.
#[test]
#[should_panic(expected = "does not match its schema")]
fn a_record_that_breaks_its_schema_fails_the_test_that_reads_it() {
    onboarding_e2e::validate_against_schema(
        "onboard.user.activated.v1",
        &serde_json::json!({"user_id": "0197300e-7a5c-7b3e-9d5a-3c1f2e4d5a6b", "sequence": 5}),
    );
}

#[test]
#[should_panic(expected = "has no schema")]
fn a_record_of_an_unknown_type_fails_the_test_that_reads_it() {
    onboarding_e2e::validate_against_schema("onboard.user.teleported.v1", &serde_json::json!({}));
}

#[tokio::test]
async fn a_callers_request_id_becomes_the_correlation_id_an_auditor_sees() {
    let stack = Stack::start("audit_request_id", Options::default()).await;
    let post = |request_id: &str, body: Value| {
        stack
            .admin(stack.http.post(stack.url("/api/v1/users")))
            .header("X-Request-Id", request_id)
            .json(&body)
    };

    // The HR system's own request id is repeated on the answer and kept with the events.
    let r = post(
        "hr-7f3a:42",
        serde_json::json!({"username": "Ida", "email": "ida@pickup.example"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-request-id"], "hr-7f3a:42");
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = stack
        .admin(
            stack
                .http
                .post(stack.url(&format!("/api/v1/users/{id}/revoke"))),
        )
        .header("X-Request-Id", "hr-revoke-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let o = stack.cli(&["audit", "history", &id, "--json"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    let timeline: Vec<(String, String)> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["actor_kind"] == "admin")
        .map(|e| {
            (
                e["event_type"].as_str().unwrap().to_owned(),
                e["correlation_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = [
        ("UserInvited", "hr-7f3a:42"),
        ("CodeIssued", "hr-7f3a:42"),
        ("InvitationRevoked", "hr-revoke-9"),
    ]
    .map(|(t, c)| (t.to_owned(), c.to_owned()));
    assert_eq!(timeline, expect, "{}", describe_output(&o));
    let o = stack.cli(&["audit", "history", &id]);
    assert!(
        stdout(&o).contains("correlation=hr-revoke-9"),
        "{}",
        describe_output(&o)
    );

    // One that cannot be kept as it is gets a clear error, and nothing is recorded.
    for bad in ["has space", &"x".repeat(129)] {
        let r = post(
            bad,
            serde_json::json!({"username": "Jon", "email": "jon@pickup.example"}),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.headers().get("x-request-id").is_none());
        let body: Value = r.json().await.unwrap();
        assert!(
            body["fields"]["X-Request-Id"]
                .as_str()
                .unwrap()
                .contains("1 to 128 visible ASCII characters"),
            "{body}"
        );
    }
    // A bulk upload, refused before its body is read, names the header too (not the token).
    let r = stack
        .admin(stack.http.post(stack.url("/api/v1/bulk-invites")))
        .header("X-Request-Id", "has space")
        .header("content-type", "text/csv")
        .body("Jon,jon@pickup.example\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["fields"]["X-Request-Id"].is_string(), "{body}");
    let o = stack.cli(&["user", "show", "Jon"]);
    assert!(!o.status.success(), "{}", describe_output(&o));
}

/// Property: for any instant an event may hold, the replay reads the same microsecond as the
/// projection trigger (PostgreSQL reading the event's JSON text), and an instant at the log's
/// precision reads back unchanged. Random instants, with many exact half-microsecond ties.
#[tokio::test]
async fn the_replay_reads_every_instant_as_the_projection_trigger_does() {
    use chrono::{DateTime, Utc};
    use rand::Rng;
    let services = onboarding_e2e::Services::from_env();
    let pool = PgPool::connect(&services.database_url).await.unwrap();
    let mut rng = rand::thread_rng();
    let instants: Vec<DateTime<Utc>> = (0..20_000)
        .map(|i| {
            let seconds = rng.gen_range(0..4_102_444_800_i64); // 1970 to 2100
            let nanos = if i % 2 == 0 {
                rng.gen_range(0..1_000_000_000_u32)
            } else {
                rng.gen_range(0..1_000_000_u32) * 1_000 + 500
            };
            DateTime::from_timestamp(seconds, nanos).unwrap()
        })
        .collect();
    let read_by_postgres = |times: Vec<DateTime<Utc>>| {
        let pool = pool.clone();
        async move {
            let texts: Vec<String> = times
                .iter()
                .map(|t| {
                    serde_json::to_value(t)
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect();
            sqlx::query_scalar::<_, DateTime<Utc>>(
                "SELECT x::timestamptz FROM unnest($1::text[]) WITH ORDINALITY AS u(x, i) ORDER BY i",
            )
            .bind(texts)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let trigger = read_by_postgres(instants.clone()).await;
    let differ: Vec<String> = instants
        .iter()
        .zip(&trigger)
        .filter(|(t, pg)| onboarding_audit::replay::as_postgres_reads(**t) != **pg)
        .map(|(t, pg)| {
            format!(
                "{t:?}: replay {:?}, PostgreSQL {pg:?}",
                onboarding_audit::replay::as_postgres_reads(*t)
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "{} of 20000 differ, e.g. {:?}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );

    let reduced: Vec<DateTime<Utc>> = instants
        .iter()
        .map(|t| onboarding_domain::at_log_precision(*t))
        .collect();
    assert_eq!(read_by_postgres(reduced.clone()).await, reduced);
    pool.close().await;
}
