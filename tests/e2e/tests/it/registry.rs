//! The username registry keeps only what uniqueness needs, a keyed hash of each name
//! (docs/adr/0035), against a real PostgreSQL, tansu and MailDev: names stay unique in any case,
//! nothing but `account_states` holds a username in clear, and a database whose registry an
//! older release wrote in clear is keyed by `onboard migrate` while the engine runs, its users
//! still signing in and no name held twice before, during or after.

use std::process::Command;

use onboarding_e2e::{describe_output, unique, Options, Stack};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::credentials::{legacy_hash, LEGACY};
use crate::erasure::{pg_dump, tables_holding};

const PASSWORD: &str = "Pickup rides at dawn 42";

/// `onboard migrate` succeeded and says it keyed `n` names that were in clear.
fn assert_rewrote(o: &std::process::Output, n: usize) {
    assert!(o.status.success(), "{}", describe_output(o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("; {n} name(s) rewritten from clear")),
        "{}",
        describe_output(o)
    );
}

/// Invites `username` through the API, opens the mailed code and sets `PASSWORD`: the user id.
async fn activated(stack: &Stack, username: &str) -> String {
    let (id, _, mail) = stack.invite_mailed(username).await;
    let (status, body) = stack.submit_password(&mail.code(), PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    id
}

/// `POST /api/v1/users` for `username` at a fresh address: the status and the answer.
async fn invite(stack: &Stack, username: &str) -> (u16, Value) {
    let email = format!("{}@pickup.example", unique("registry."));
    let r = stack
        .admin(stack.http.post(stack.url("/api/v1/users")))
        .json(&json!({"username": username, "email": email}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The second invitation of a held name is refused as it always was.
async fn refused_as_taken(stack: &Stack, username: &str) {
    let (status, body) = invite(stack, username).await;
    assert_eq!(status, 409, "{username}: {body}");
    assert_eq!(body["error"], "username_taken", "{body}");
    assert_eq!(
        body["message"],
        format!("the username `{username}` already exists in domain PRIMARY"),
        "{body}"
    );
}

async fn verifies(stack: &Stack, username: &str) -> Value {
    let (status, body, _) = stack
        .verify(
            &stack.verifier_token,
            json!({"username": username, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{username}: {body}");
    body
}

async fn names_in_clear(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM usernames WHERE strpos(username_key, '/') = 0")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Writes the events of an account activated by a release before personal data was sealed
/// (`UserInvited` in clear, `PasswordSet` 1.0 with its hash), as that release appended them:
/// the `reserve_username` trigger reserves her name in clear. Answers the insert's outcome.
async fn legacy_account(pool: &PgPool, username: &str) -> Result<String, sqlx::Error> {
    let id = uuid::Uuid::now_v7().to_string();
    let code = uuid::Uuid::new_v4().to_string();
    let phc = legacy_hash(PASSWORD);
    let email = format!("{}@pickup.example", unique("legacy."));
    let mut tx = pool.begin().await?;
    for (seq, (event_type, version, payload)) in LEGACY.iter().enumerate() {
        let payload = payload
            .replace("USER", &id)
            .replace("CODE", &code)
            .replace("HASH", &phc)
            .replace("\"Olga\"", &format!("\"{username}\""))
            .replace("olga@pickup.example", &email);
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata) VALUES ('Onboarding', $1, $2, $3, $4, $5::jsonb, \
             '{\"actor_kind\": \"admin\", \"actor_id\": \"cli\"}')",
        )
        .bind(&id)
        .bind(seq as i64 + 1)
        .bind(event_type)
        .bind(version)
        .bind(payload)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}

#[tokio::test]
async fn the_registry_keeps_keyed_names_and_migrate_keys_the_ones_an_older_release_wrote_in_clear()
{
    let stack = Stack::start("registry", Options::default()).await;
    let pool = PgPool::connect(&stack.database_url).await.unwrap();

    // A new deployment keys every name: Jane signs in, JANE is refused as Jane was before.
    let jane = unique("Jane");
    let jane_id = activated(&stack, &jane).await;
    let (ivan_id, _, _) = stack.invite_mailed(&unique("Ivan")).await;
    let ivan: String = stack.user(&ivan_id).await["username"]
        .as_str()
        .unwrap()
        .to_owned();
    refused_as_taken(&stack, &jane.to_uppercase()).await;
    assert_eq!(verifies(&stack, &jane.to_lowercase()).await["id"], jane_id);
    assert_eq!(names_in_clear(&pool).await, 0);
    let keyed_by: String = sqlx::query_scalar("SELECT keyed_by FROM username_registry_key")
        .fetch_one(&pool)
        .await
        .unwrap();
    let keys: Vec<String> = sqlx::query_scalar("SELECT username_key FROM usernames")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2);
    for key in &keys {
        assert!(key.starts_with(&format!("{keyed_by}/")), "{key}");
    }
    // Her username in clear is where the admin list, SCIM and sign-in read it, nowhere else.
    assert_eq!(
        tables_holding(&pg_dump(&stack), &jane),
        ["public.account_states".to_owned()].into()
    );

    // The database as a release before the keyed registry left it after `onboard migrate`
    // applied this schema: every name in clear (as `Username::key`, or migration 0009's
    // `lower(… COLLATE "und-x-icu")`), no key recorded; and Olga, activated by a release before
    // sealing, whose invitation the `reserve_username` trigger reserved in clear.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("DELETE FROM username_registry_key")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE usernames u SET username_key = lower(a.username COLLATE \"und-x-icu\") \
         FROM account_states a WHERE a.user_id = u.user_id",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let olga = unique("Olga");
    let olga_id = legacy_account(&pool, &olga).await.unwrap();
    assert_eq!(names_in_clear(&pool).await, 3);

    // While the rows are in clear, the engine of this release finds them and refuses their
    // names in any case; a new name is keyed.
    assert_eq!(verifies(&stack, &jane).await["id"], jane_id);
    assert_eq!(verifies(&stack, &olga.to_uppercase()).await["id"], olga_id);
    refused_as_taken(&stack, &jane.to_uppercase()).await;
    refused_as_taken(&stack, &olga.to_lowercase()).await;
    let o = stack.cli(&["user", "show", &ivan.to_uppercase()]);
    assert!(o.status.success(), "{}", describe_output(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&ivan_id));
    let quinn = unique("Quinn");
    let (status, body) = invite(&stack, &quinn).await;
    assert_eq!(status, 201, "{body}");
    let quinn_key: String =
        sqlx::query_scalar("SELECT username_key FROM usernames WHERE user_id = $1::uuid")
            .bind(body["id"].as_str().unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        quinn_key.starts_with(&format!("{keyed_by}/")),
        "{quinn_key}"
    );
    // From now on the registry is keyed: an older release's invitation, reserved in clear by
    // the trigger, is refused rather than registering a name that a keyed row may hold.
    let refused = legacy_account(&pool, &unique("Rita")).await.unwrap_err();
    assert!(
        refused.to_string().contains(&format!(
            "the username registry is keyed by {keyed_by}, but a name came in clear"
        )),
        "{refused}"
    );
    // The replay compares the rows in clear in their keyed form, and says how many are left.
    let o = stack.cli(&["audit", "replay", "--from", "postgres"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("3 name(s) in the username registry are still in clear"),
        "{}",
        describe_output(&o)
    );

    // `onboard migrate` keys them while the engine runs; a second run finds nothing to do.
    let o = stack.cli(&["migrate", "--skip-kafka"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!(
            "username registry: keyed by {keyed_by}; 3 name(s) rewritten from clear"
        )),
        "{}",
        describe_output(&o)
    );
    assert_eq!(names_in_clear(&pool).await, 0);
    let o = stack.cli(&["migrate", "--skip-kafka"]);
    assert_rewrote(&o, 0);

    // Everyone still signs in and every name is still held, in any case.
    assert_eq!(verifies(&stack, &jane.to_uppercase()).await["id"], jane_id);
    assert_eq!(verifies(&stack, &olga).await["id"], olga_id);
    for held in [&jane, &olga, &ivan, &quinn] {
        refused_as_taken(&stack, &held.to_lowercase()).await;
    }
    // The log written before verifies, and the projections replay.
    let o = stack.cli(&["audit", "verify"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    let o = stack.cli(&["audit", "replay", "--from", "postgres"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("projections match the log"),
        "{}",
        describe_output(&o)
    );
    assert!(!String::from_utf8_lossy(&o.stderr).contains("still in clear"));
    // No username in clear in the registry: Jane's only in account_states, Olga's there and in
    // her events of the older release (the append-only log keeps them, docs/adr/0030).
    let dump = pg_dump(&stack);
    assert_eq!(
        tables_holding(&dump, &jane),
        ["public.account_states".to_owned()].into()
    );
    assert!(!tables_holding(&dump, &olga).contains("public.usernames"));
    // Her export shows the row as stored and what it is.
    let o = stack.cli(&["user", "export", &jane_id]);
    assert!(o.status.success(), "{}", describe_output(&o));
    let export: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        export["usernames"]["username_key"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{keyed_by}/")),
        "{export}"
    );

    // Revocation and erasure still give a keyed name back.
    let r = stack
        .admin(
            stack
                .http
                .post(stack.url(&format!("/api/v1/users/{ivan_id}/revoke"))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let o = stack.cli(&["user", "erase", &jane_id]);
    assert!(o.status.success(), "{}", describe_output(&o));
    for freed in [&ivan, &jane] {
        let (status, body) = invite(&stack, &freed.to_uppercase()).await;
        assert_eq!(status, 201, "{freed}: {body}");
    }

    // A key-encryption key other than the registry's, or none, stops `migrate` and every role
    // with a message that says which key to configure, instead of making every name unknown.
    let other = stack.dir.join("other.kek");
    std::fs::write(&other, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n").unwrap();
    let other = other.display().to_string();
    let wrong = [(
        "ONBOARD__PERSONAL_DATA__KEY_ENCRYPTION_KEY_FILE",
        other.as_str(),
    )];
    let o = stack.cli_with_env(&["migrate", "--skip-kafka"], &wrong);
    assert!(!o.status.success(), "{}", describe_output(&o));
    let told = format!(
        "the username registry is keyed by {keyed_by}, but the configured key-encryption key gives hmac-sha256:"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&told),
        "{}",
        describe_output(&o)
    );
    let o = Command::new("timeout")
        .arg("60")
        .arg(&stack.services.onboard)
        .arg("--config")
        .arg(&stack.config)
        .arg("relay")
        .envs(wrong)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&told),
        "{}",
        describe_output(&o)
    );
    let without = stack.dir.join("without-kek.toml");
    let config = std::fs::read_to_string(&stack.config).unwrap();
    let config: String = config
        .lines()
        .filter(|l| !l.starts_with("[personal_data]") && !l.starts_with("key_encryption_key_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&without, config).unwrap();
    let o = Command::new(&stack.services.onboard)
        .arg("--config")
        .arg(&without)
        .args(["migrate", "--skip-kafka"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", describe_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!(
            "the username registry is keyed by {keyed_by}, but no key-encryption key is configured"
        )),
        "{}",
        describe_output(&o)
    );
}

#[tokio::test]
async fn without_a_key_encryption_key_names_stay_in_clear_until_one_is_configured() {
    let stack = Stack::start(
        "registry_clear",
        Options {
            key_encryption_key: false,
            ..Options::default()
        },
    )
    .await;
    let pool = PgPool::connect(&stack.database_url).await.unwrap();

    // Without a key-encryption key the registry keeps names in clear, as before, and says so.
    let jane = unique("Jane");
    let jane_id = activated(&stack, &jane).await;
    refused_as_taken(&stack, &jane.to_uppercase()).await;
    let keys: Vec<String> = sqlx::query_scalar("SELECT username_key FROM usernames")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(keys, vec![jane.to_lowercase()]);
    let o = stack.cli(&["migrate", "--skip-kafka"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(
            "username registry: names in clear (no personal_data.key_encryption_key_file"
        ),
        "{}",
        describe_output(&o)
    );

    // The operator configures one: `onboard migrate` keys the names while the engine runs.
    let kek = stack.dir.join("personal-data.kek").display().to_string();
    let with_key = [(
        "ONBOARD__PERSONAL_DATA__KEY_ENCRYPTION_KEY_FILE",
        kek.as_str(),
    )];
    let o = stack.cli_with_env(&["migrate", "--skip-kafka"], &with_key);
    assert_rewrote(&o, 1);
    assert_eq!(names_in_clear(&pool).await, 0);
    // A gateway still without the key is refused a new name rather than registering it in
    // clear beside the keyed ones, and a role started without it stops, saying what to do.
    let (status, body) = invite(&stack, &unique("Quinn")).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        stack
            .logs_of("gateway")
            .contains("but a name came in clear"),
        "{}",
        stack.logs_of("gateway")
    );
    let o = Command::new("timeout")
        .arg("60")
        .arg(&stack.services.onboard)
        .arg("--config")
        .arg(&stack.config)
        .arg("relay")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("but no key-encryption key is configured"),
        "{}",
        describe_output(&o)
    );
    // Restarted with the key, the gateway signs Jane in (her data key, stored unwrapped, opens
    // as before), holds her name in any case and keys new ones.
    stack.signal("gateway", "TERM");
    stack.spawn_with_env("gateway", &with_key);
    stack.wait_ready().await;
    assert_eq!(verifies(&stack, &jane.to_uppercase()).await["id"], jane_id);
    refused_as_taken(&stack, &jane.to_lowercase()).await;
    let (status, body) = invite(&stack, &unique("Quinn")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(names_in_clear(&pool).await, 0);
}

#[tokio::test]
async fn the_migrate_that_brings_the_keyed_registry_leaves_names_in_clear_for_the_next_one() {
    // A database as the release before the keyed registry left it (migrations up to 0019), with
    // Olga, whose invitation a release before sealing wrote and the trigger reserved in clear.
    let stack = Stack::migrated_up_to("registry_upgrade", Options::default(), 19).await;
    let pool = PgPool::connect(&stack.database_url).await.unwrap();
    let olga = unique("Olga");
    let olga_id = legacy_account(&pool, &olga).await.unwrap();

    // The run before the rollout applies the schema and keys nothing: processes of the release
    // before, which look names up in clear only, may still be serving.
    let o = stack.cli(&["migrate"]);
    assert!(o.status.success(), "{}", describe_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(
            "; 1 name(s) in clear left for now: run `onboard migrate` again once every process \
             runs this release, to key them (docs/adr/0035)"
        ),
        "{}",
        describe_output(&o)
    );
    assert_eq!(names_in_clear(&pool).await, 1);
    // This release signs her in and holds her name meanwhile.
    stack.spawn("gateway");
    stack.wait_ready().await;
    assert_eq!(verifies(&stack, &olga.to_uppercase()).await["id"], olga_id);
    refused_as_taken(&stack, &olga.to_lowercase()).await;

    // Once every process runs this release, the next run keys her name.
    let o = stack.cli(&["migrate", "--skip-kafka"]);
    assert_rewrote(&o, 1);
    assert_eq!(names_in_clear(&pool).await, 0);
    assert_eq!(verifies(&stack, &olga).await["id"], olga_id);
    refused_as_taken(&stack, &olga.to_uppercase()).await;
    for args in [
        &["audit", "verify"][..],
        &["audit", "replay", "--from", "postgres"],
    ] {
        let o = stack.cli(args);
        assert!(o.status.success(), "{args:?}: {}", describe_output(&o));
    }
}

#[tokio::test]
async fn a_name_held_twice_by_rows_written_by_hand_stays_held_and_migrate_names_both_accounts() {
    let stack = Stack::start("registry_twice", Options::default()).await;
    let pool = PgPool::connect(&stack.database_url).await.unwrap();
    let jane = unique("Jane");
    let (jane_id, _, _) = stack.invite_mailed(&jane).await;
    let keyed: String =
        sqlx::query_scalar("SELECT username_key FROM usernames WHERE user_id = $1::uuid")
            .bind(&jane_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    // By hand: Jane's row back in clear, as a release before wrote it, and a row of another
    // account holding her keyed name.
    let other = uuid::Uuid::now_v7();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("DELETE FROM username_registry_key")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE usernames SET username_key = $2 WHERE user_id = $1::uuid")
        .bind(&jane_id)
        .bind(jane.to_lowercase())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO usernames (domain, username_key, user_id) VALUES ('PRIMARY', $1, $2)")
        .bind(&keyed)
        .bind(other)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // `onboard migrate` does not fail on it: Jane's row stays in clear, her name stays held, and
    // the warning names both accounts for an operator to decide.
    let o = stack.cli(&["migrate", "--skip-kafka"]);
    assert_rewrote(&o, 0);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!(
            "warning: accounts {other} and {jane_id} hold the same name in domain PRIMARY; the \
             row of {jane_id} stays in clear"
        )),
        "{}",
        describe_output(&o)
    );
    assert_eq!(names_in_clear(&pool).await, 1);
    refused_as_taken(&stack, &jane.to_uppercase()).await;
}

#[tokio::test]
async fn invitations_while_migrate_keys_the_registry_never_hold_a_name_twice() {
    let stack = Stack::start("registry_race", Options::default()).await;
    let pool = PgPool::connect(&stack.database_url).await.unwrap();
    // 3,000 invitations of a release before sealing, their names reserved in clear by the
    // trigger (three batches of the rewrite).
    let tag = unique("");
    let name = |i: usize| format!("n{i}x{tag}");
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, metadata) \
         SELECT 'Onboarding', id::text, 1, 'UserInvited', '2.0', \
                jsonb_build_object('UserInvited', jsonb_build_object( \
                    'user_id', id, 'username', 'n' || i || 'x' || $1, \
                    'email', 'n' || i || 'x' || $1 || '@pickup.example', 'domain', 'PRIMARY', \
                    'locale', NULL, 'time_zone', NULL, 'claims', '{}'::jsonb, \
                    'invited_at', '2026-01-05T09:00:00Z')), \
                '{\"actor_kind\": \"admin\", \"actor_id\": \"cli\"}' \
         FROM (SELECT i, gen_random_uuid() AS id FROM generate_series(0, 2999) AS i) AS g",
    )
    .bind(&tag)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(names_in_clear(&pool).await, 3000);

    // `onboard migrate` keys them while invitations of the same names, in another case, and of
    // new names reach the gateway: whatever the order, every held name is refused and every new
    // one registered once.
    let migrate = {
        let mut command = Command::new(&stack.services.onboard);
        command
            .arg("--config")
            .arg(&stack.config)
            .args(["migrate", "--skip-kafka"])
            .env("ONBOARD_LOG", "warn");
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let held: Vec<String> = (0..3000)
        .step_by(25)
        .map(|i| name(i).to_uppercase())
        .collect();
    let new: Vec<String> = (0..20).map(|i| unique(&format!("New{i}x"))).collect();
    let answers = futures::future::join_all(
        held.iter()
            .chain(&new)
            .map(|username| async { (username.clone(), invite(&stack, username).await) }),
    )
    .await;
    for (username, (status, body)) in &answers {
        if held.contains(username) {
            assert_eq!(*status, 409, "{username}: {body}");
            assert_eq!(body["error"], "username_taken", "{body}");
        } else {
            assert_eq!(*status, 201, "{username}: {body}");
        }
    }
    let o = migrate.await.unwrap();
    assert_rewrote(&o, 3000);
    assert_eq!(names_in_clear(&pool).await, 0);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM usernames")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 3000 + new.len() as i64);
    // And afterwards too.
    for username in held.iter().take(5).chain(new.iter().take(5)) {
        refused_as_taken(&stack, &username.to_lowercase()).await;
    }
}
