//! Provisioning into a real OpenLDAP directory: after her onboarding Jane binds with her
//! password; a directory that was down provisions her later, exactly once; a revoked invitation
//! is never provisioned; a disabled account cannot bind until she is enabled, and her entry
//! follows her new address and names.

use std::time::{Duration, Instant};

use onboarding_e2e::{free_port, make_certificates, unique, Options, Slapd, Stack};
use serde_json::{json, Value};

const JANES_PASSWORD: &str = "Pickup rides at dawn 42";

/// A stack that provisions into `slapd`, with the provisioner (its own process, serving
/// `/metrics` and `/readyz` on the port returned) started.
async fn stack_with(name: &str, slapd: &Slapd) -> (Stack, u16) {
    let options = Options {
        user_store: Some(slapd.user_store_toml(&unique("e2e-provisioner-"))),
        ..Options::default()
    };
    let stack = Stack::start(name, options).await;
    let metrics = free_port();
    let bind = format!("127.0.0.1:{metrics}");
    stack.spawn_with_env(
        "provisioner",
        &[("ONBOARD__OBSERVABILITY__METRICS_BIND", bind.as_str())],
    );
    (stack, metrics)
}

/// Invites `username` with name claims; her id and the code from her mail in MailDev.
async fn invite_and_read_mail(stack: &Stack, username: &str) -> (String, String) {
    let email = format!(
        "{}@pickup.example",
        unique(&format!("{}.", username.to_lowercase()))
    );
    let r = stack
        .admin(stack.http.post(stack.url("/api/v1/users")))
        .json(&json!({
            "username": username,
            "email": email,
            "claims": {"given_name": username, "family_name": "Doe", "name": format!("{username} Doe")}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let mail = stack.wait_for_mail(&email).await;
    (id, mail.code())
}

/// Jane sets her password with the code from her mail: her account is active.
async fn set_password(stack: &Stack, code: &str) {
    let (status, body) = stack.submit_password(code, JANES_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "Active", "{body}");
}

/// Waits until the user view's provisioning status is `status`: the view.
async fn wait_for_provisioning(stack: &Stack, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let view = stack.user(id).await;
        if view["provisioning"]["status"] == status {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "provisioning of {id} never became {status}: {view}\n{}",
            stack.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How many `UserProvisioned` events the account's log holds (`onboard events`).
fn provisioned_events(stack: &Stack, id: &str) -> usize {
    let out = stack.cli(&["events", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"event_type\":\"UserProvisioned\""))
        .count()
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn after_her_onboarding_jane_binds_to_ldap_with_her_password_and_a_wrong_one_fails() {
    let slapd = Slapd::start("ldap-bind");
    let (stack, metrics) = stack_with("ldap_bind", &slapd).await;

    let (id, code) = invite_and_read_mail(&stack, "Jane").await;
    // Before she chose a password there is nothing to provision.
    assert!(stack.user(&id).await["provisioning"].is_null());
    set_password(&stack, &code).await;

    let view = wait_for_provisioning(&stack, &id, "provisioned").await;
    assert_eq!(
        view["provisioning"]["user_store"],
        "read_write_ldap_unique_id"
    );
    assert_eq!(view["provisioning"]["attempts"], 1, "{view}");

    // She binds as herself with her password; a wrong password is refused.
    let dn = slapd.dn_of("Jane");
    let ok = slapd.whoami(&dn, JANES_PASSWORD);
    assert!(
        ok.status.success(),
        "ldapwhoami as {dn} failed: {}; slapd log {}",
        String::from_utf8_lossy(&ok.stderr),
        slapd.log().display()
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        format!("dn:{dn}")
    );
    let wrong = slapd.whoami(&dn, "Pickup rides at dusk 42");
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("Invalid credentials (49)"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );

    // Her entry: an inetOrgPerson with her address, names from her claims and her account's id;
    // the hash is argon2id under {ARGON2}.
    let entry = slapd.search(
        "(uid=Jane)",
        &[
            "objectClass",
            "mail",
            "cn",
            "sn",
            "givenName",
            "employeeNumber",
            "userPassword",
        ],
    );
    for line in [
        format!("dn: {dn}"),
        "objectClass: inetOrgPerson".to_owned(),
        "cn: Jane Doe".to_owned(),
        "sn: Doe".to_owned(),
        "givenName: Jane".to_owned(),
        format!("employeeNumber: {id}"),
    ] {
        assert!(entry.contains(&line), "`{line}` missing from:\n{entry}");
    }
    // ldapsearch writes the value in base64 (`::`): it is not a plain LDIF string.
    let password = entry
        .lines()
        .find_map(|l| l.strip_prefix("userPassword:: "))
        .map(|b64| {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            String::from_utf8(bytes).unwrap()
        })
        .unwrap_or_else(|| panic!("no userPassword in:\n{entry}"));
    assert!(
        password.starts_with("{ARGON2}$argon2id$v=19$m="),
        "{}",
        &password[..20]
    );
    assert!(entry.contains("mail: jane."), "{entry}");

    // The topic carries the outcome, checked against its schema, without the hash.
    let records = stack
        .user_records(
            &id,
            &["onboard.user.activated.v1", "onboard.user.provisioned.v1"],
        )
        .await;
    let provisioned = records
        .iter()
        .find(|r| r.headers["ce_type"] == "onboard.user.provisioned.v1")
        .unwrap();
    assert_eq!(provisioned.value["user_store"], "read_write_ldap_unique_id");
    assert!(records.iter().all(|r| !r.raw_value.contains("argon2")));

    // Admins list users by provisioning state.
    let listed = stack.list("provisioning=provisioned").await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["user_id"] == id.as_str()),
        "{listed}"
    );
    assert_eq!(listed["items"][0]["provisioning"], "provisioned");
    let pending = stack.list("provisioning=pending").await;
    assert!(pending["items"].as_array().unwrap().is_empty(), "{pending}");
    let r = stack
        .admin(stack.http.get(stack.url("/api/v1/users?provisioning=done")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("pending, provisioned, failed"));

    // The provisioner's readiness includes the directory; its metrics count the outcome.
    let (status, ready) = get(&format!("http://127.0.0.1:{metrics}/readyz")).await;
    assert_eq!(status, 200, "{ready}");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["checks"]["directory"], "ok", "{ready}");
    let (_, text) = get(&format!("http://127.0.0.1:{metrics}/metrics")).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("onboard_provisioning_total{outcome=\"provisioned\"} 1")),
        "{text}"
    );

    // No log line carries her password or its hash.
    let logs = stack.log_tail();
    assert!(
        !logs.contains(JANES_PASSWORD) && !logs.contains("$argon2id$"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_directory_that_was_down_gets_jane_later_exactly_once_even_after_a_crash() {
    let slapd = Slapd::start("ldap-outage");
    let (stack, metrics) = stack_with("ldap_outage", &slapd).await;
    slapd.stop();

    let (id, code) = invite_and_read_mail(&stack, "Jane").await;
    set_password(&stack, &code).await;

    // The directory is down: the failure is recorded and shown, and the provisioner is not ready.
    let view = wait_for_provisioning(&stack, &id, "failed").await;
    assert_eq!(view["provisioning"]["permanent"], false, "{view}");
    assert!(
        view["provisioning"]["reason"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "{view}"
    );
    let failed = stack.list("provisioning=failed").await;
    assert_eq!(failed["items"][0]["user_id"], id.as_str(), "{failed}");
    let (status, ready) = get(&format!("http://127.0.0.1:{metrics}/readyz")).await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("directory"), "{ready}");

    // The provisioner crashes while it waits; the directory comes back, holding the entry that
    // an attempt wrote just before the crash, before its outcome was recorded (with another
    // password: what the directory holds is brought up to date).
    stack.signal("provisioner", "KILL");
    slapd.resume();
    slapd.add(&format!(
        "dn: {dn}\nobjectClass: top\nobjectClass: person\nobjectClass: organizationalPerson\nobjectClass: inetOrgPerson\nuid: Jane\ncn: Jane\nsn: Jane\nmail: old@pickup.example\nemployeeNumber: {id}\nuserPassword: not-her-password\n",
        dn = slapd.dn_of("Jane")
    ));
    stack.spawn("provisioner");

    let view = wait_for_provisioning(&stack, &id, "provisioned").await;
    assert!(
        view["provisioning"]["attempts"].as_u64().unwrap() >= 1,
        "{view}"
    );
    assert_eq!(provisioned_events(&stack, &id), 1);
    assert_eq!(slapd.entries("(uid=Jane)"), [slapd.dn_of("Jane")]);
    let ok = slapd.whoami(&slapd.dn_of("Jane"), JANES_PASSWORD);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(!slapd
        .search("(uid=Jane)", &["mail"])
        .contains("old@pickup.example"));

    // A provisioner of a new consumer group reads the topic from its start and meets the
    // activation again: nothing more is written or recorded.
    let group = unique("e2e-provisioner-again-");
    stack.spawn_named(
        "provisioner-again",
        "provisioner",
        &[("ONBOARD__USER_STORE__CONSUMER_GROUP", group.as_str())],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stack
        .logs_of("provisioner-again")
        .contains("already_provisioned")
    {
        assert!(
            Instant::now() < deadline,
            "the second provisioner never handled the activation: {}",
            stack.logs_of("provisioner-again")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(provisioned_events(&stack, &id), 1);
    assert_eq!(slapd.entries("(uid=Jane)").len(), 1);
}

#[tokio::test]
async fn a_revoked_invitation_is_never_provisioned() {
    let slapd = Slapd::start("ldap-revoked");
    let (stack, _) = stack_with("ldap_revoked", &slapd).await;

    let (bob, _) = invite_and_read_mail(&stack, "Bob").await;
    let r = stack
        .admin(
            stack
                .http
                .post(stack.url(&format!("/api/v1/users/{bob}/revoke"))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Jane, invited after him, is provisioned: the provisioner is at work.
    let (jane, code) = invite_and_read_mail(&stack, "Jane").await;
    set_password(&stack, &code).await;
    wait_for_provisioning(&stack, &jane, "provisioned").await;

    let view = stack.user(&bob).await;
    assert_eq!(view["state"], "Revoked");
    assert!(view["provisioning"].is_null(), "{view}");
    assert!(slapd.entries("(uid=Bob)").is_empty());
    assert_eq!(provisioned_events(&stack, &bob), 0);
    assert_eq!(
        slapd.entries("(objectClass=inetOrgPerson)"),
        [slapd.dn_of("Jane")]
    );
}

#[tokio::test]
async fn the_directory_is_reached_over_starttls_and_over_ldaps_with_a_private_ca() {
    let dir = std::env::temp_dir().join(unique("onboard-e2e-ldap-tls-"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, certificate, key) = make_certificates(&dir);
    let slapd = Slapd::start_with_tls("ldap-tls", &certificate, &key);
    let ldaps = slapd.ldaps_url.clone().unwrap();
    for (name, url, start_tls) in [
        ("ldap_starttls", slapd.url.clone(), true),
        ("ldap_ldaps", ldaps, false),
    ] {
        // The section as Slapd writes it, with TLS: the private CA, and StartTLS or ldaps://.
        let toml = slapd
            .user_store_toml(&unique("e2e-provisioner-"))
            .replace(
                &format!("connection_url = \"{}\"", slapd.url),
                &format!("connection_url = \"{url}\"\nca_file = \"{}\"", ca.display()),
            )
            .replace(
                "[user_store.properties]",
                &format!("[user_store.properties]\nStartTLSEnabled = {start_tls}"),
            );
        let options = Options {
            user_store: Some(toml),
            ..Options::default()
        };
        let stack = Stack::start(name, options).await;
        stack.spawn("provisioner");
        let username = if start_tls { "Jane" } else { "June" };
        let (id, code) = invite_and_read_mail(&stack, username).await;
        set_password(&stack, &code).await;
        wait_for_provisioning(&stack, &id, "provisioned").await;
        let ok = slapd.whoami(&slapd.dn_of(username), JANES_PASSWORD);
        assert!(
            ok.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A SCIM PATCH of Jane's account, as an identity provider sends it; the response's status.
async fn scim_patch(stack: &Stack, id: &str, operations: Value) {
    let r = stack
        .http
        .patch(stack.url(&format!("/scim2/Users/{id}")))
        .bearer_auth(&stack.admin_token)
        .header("content-type", "application/scim+json")
        .body(
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                   "Operations": operations})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
}

/// Waits until `ldapwhoami` as `dn` with Jane's password succeeds (`binds`) or is refused with
/// invalidCredentials; the last answer.
async fn wait_for_bind(stack: &Stack, slapd: &Slapd, dn: &str, binds: bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = slapd.whoami(dn, JANES_PASSWORD);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let refused = stderr.contains("Invalid credentials (49)");
        if (binds && out.status.success()) || (!binds && refused) {
            return format!("{}{stderr}", String::from_utf8_lossy(&out.stdout));
        }
        assert!(
            Instant::now() < deadline,
            "ldapwhoami as {dn} never {}: {stderr}\n{}",
            if binds { "succeeded" } else { "was refused" },
            stack.logs_of("provisioner")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until her entry, read as the administrator, shows `line`.
async fn wait_for_entry_line(stack: &Stack, slapd: &Slapd, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let entry = slapd.search("(uid=Jane)", &["mail", "sn", "userPassword"]);
        if entry.lines().any(|l| l == line) {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "`{line}` never showed in:\n{entry}\n{}",
            stack.logs_of("provisioner")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_disabled_account_cannot_bind_until_enabled_and_her_entry_follows_her_changes() {
    let slapd = Slapd::start("ldap-disable");
    let (stack, _) = stack_with("ldap_disable", &slapd).await;
    let (id, code) = invite_and_read_mail(&stack, "Jane").await;
    set_password(&stack, &code).await;
    wait_for_provisioning(&stack, &id, "provisioned").await;
    let dn = slapd.dn_of("Jane");
    wait_for_bind(&stack, &slapd, &dn, true).await;

    // Her identity provider disables her while the directory is down, and the provisioner
    // crashes while it waits: once the directory is back, a new provisioner locks her entry.
    slapd.stop();
    scim_patch(
        &stack,
        &id,
        json!([{"op": "replace", "value": {"active": false}}]),
    )
    .await;
    assert_eq!(stack.user(&id).await["state"], "Disabled");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stack.logs_of("provisioner").contains("will try again") {
        assert!(
            Instant::now() < deadline,
            "the provisioner never tried to lock her entry: {}",
            stack.logs_of("provisioner")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stack.signal("provisioner", "KILL");
    slapd.resume();
    stack.spawn("provisioner");
    wait_for_bind(&stack, &slapd, &dn, false).await;
    // The entry stays (its DN and entryUUID, which other systems know it by), without a password.
    assert_eq!(slapd.entries("(uid=Jane)"), std::slice::from_ref(&dn));
    let entry = slapd.search("(uid=Jane)", &["userPassword", "employeeNumber"]);
    assert!(!entry.contains("userPassword"), "{entry}");
    assert!(entry.contains(&format!("employeeNumber: {id}")), "{entry}");

    // Enabled again, she binds with the password she chose.
    scim_patch(
        &stack,
        &id,
        json!([{"op": "replace", "value": {"active": true}}]),
    )
    .await;
    assert_eq!(stack.user(&id).await["state"], "Active");
    wait_for_bind(&stack, &slapd, &dn, true).await;

    // A new address and a new family name reach her entry.
    let new_email = format!("{}@pickup.example", unique("jane.roe."));
    scim_patch(
        &stack,
        &id,
        json!([
            {"op": "replace", "path": "emails[type eq \"work\"].value", "value": new_email},
            {"op": "replace", "path": "name.familyName", "value": "Roe"}
        ]),
    )
    .await;
    let entry = wait_for_entry_line(&stack, &slapd, &format!("mail: {new_email}")).await;
    assert!(entry.lines().any(|l| l == "sn: Roe"), "{entry}");
    wait_for_bind(&stack, &slapd, &dn, true).await;

    // A change while she is disabled reaches her entry too, and still no password.
    scim_patch(
        &stack,
        &id,
        json!([{"op": "replace", "value": {"active": false}}]),
    )
    .await;
    wait_for_bind(&stack, &slapd, &dn, false).await;
    scim_patch(
        &stack,
        &id,
        json!([{"op": "replace", "path": "name.familyName", "value": "Poe"}]),
    )
    .await;
    let entry = wait_for_entry_line(&stack, &slapd, "sn: Poe").await;
    assert!(!entry.contains("userPassword"), "{entry}");
    assert!(!slapd.whoami(&dn, JANES_PASSWORD).status.success());

    // Provisioned once, whatever came after.
    assert_eq!(provisioned_events(&stack, &id), 1);
    let logs = stack.log_tail();
    assert!(
        !logs.contains(JANES_PASSWORD) && !logs.contains("$argon2id$"),
        "{logs}"
    );
}
