//! Bulk invitations: a file over HTTP (`POST /api/v1/bulk-invites`) or from the terminal
//! (`onboard invite --file`), each row applied once, every created user mailed, the job
//! resumed after the gateway was killed half-way.

use std::time::{Duration, Instant};

use serde_json::Value;

use onboarding_e2e::{unique, Options, Stack};

pub(crate) async fn upload(
    stack: &Stack,
    token: &str,
    content_type: &str,
    body: String,
) -> (u16, Value) {
    let r = stack
        .http
        .post(stack.url("/api/v1/bulk-invites"))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn job(stack: &Stack, id: &str) -> Value {
    let r = stack
        .admin(
            stack
                .http
                .get(stack.url(&format!("/api/v1/bulk-invites/{id}"))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Waits until the job is `done` (up to `limit`) and returns it.
pub(crate) async fn finished(stack: &Stack, id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let j = job(stack, id).await;
        if j["status"] == "done" {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "bulk job {id} not done within {limit:?}: {}; logs in {}",
            j["totals"],
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn rows(j: &Value) -> &Vec<Value> {
    j["rows"].as_array().unwrap()
}

fn row(j: &Value, line: i64) -> &Value {
    rows(j)
        .iter()
        .find(|r| r["line"] == line)
        .unwrap_or_else(|| panic!("no line {line} in {j}"))
}

/// All invitations (following `next_after`), as (username, user id).
async fn invitations(stack: &Stack) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let page = stack.list(&format!("limit=500{after}")).await;
        for i in page["items"].as_array().unwrap() {
            out.push((
                i["username"].as_str().unwrap().to_owned(),
                i["user_id"].as_str().unwrap().to_owned(),
            ));
        }
        match page["next_after"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => return out,
        }
    }
}

#[tokio::test]
async fn a_csv_file_invites_each_row_once_reports_every_row_and_mails_everyone() {
    let stack = Stack::start("bulk_csv", Options::default()).await;
    let tag = unique("");
    let addr = |n: &str| format!("{n}.{tag}@pickup.example");
    // Someone already invited through the API: their row is a duplicate, not a failure.
    let existing = stack.invite(&format!("kim{tag}"), &addr("kim")).await;
    let csv = format!(
        "username,email,domain,locale,time_zone\n\
         ann{tag},{ann},,de,europe/vienna\n\
         bob{tag},{bob},EMPLOYEES,\n\
         carl{tag},not-an-address,,\n\
         ANN{tag},{ann2},,\n\
         kim{tag},{kim},,\n\
         dora{tag},{dora},,en-GB\n",
        ann = addr("ann"),
        bob = addr("bob"),
        ann2 = addr("ann2"),
        kim = addr("kim"),
        dora = addr("dora"),
    );
    let (status, accepted) = upload(&stack, &stack.admin_token, "text/csv", csv.clone()).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["rows"], 6);
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    let done = finished(&stack, &id, Duration::from_secs(60)).await;
    let t = &done["totals"];
    assert_eq!(
        (
            &t["created"],
            &t["duplicate"],
            &t["invalid"],
            &t["failed"],
            &t["pending"]
        ),
        (&3.into(), &2.into(), &1.into(), &0.into(), &0.into()),
        "{done}"
    );
    assert_eq!(row(&done, 2)["status"], "created");
    assert_eq!(row(&done, 3)["status"], "created");
    assert_eq!(row(&done, 7)["status"], "created");
    let invalid = row(&done, 4);
    assert_eq!(invalid["status"], "invalid");
    assert!(
        invalid["reason"].as_str().unwrap().starts_with("email: "),
        "{invalid}"
    );
    assert_eq!(row(&done, 5)["status"], "duplicate");
    assert!(row(&done, 5)["reason"].as_str().unwrap().contains("line 2"));
    assert_eq!(row(&done, 6)["status"], "duplicate");
    assert_eq!(row(&done, 6)["user_id"], existing["id"]);

    // Each created user is the account the API shows, and was mailed.
    let ann_id = row(&done, 2)["user_id"].as_str().unwrap().to_owned();
    let ann = stack.user(&ann_id).await;
    assert_eq!(ann["locale"], "de");
    // The time zone column is validated and stored in its canonical spelling.
    assert_eq!(ann["time_zone"], "Europe/Vienna");
    assert_eq!(
        stack.user(row(&done, 3)["user_id"].as_str().unwrap()).await["domain"],
        "EMPLOYEES"
    );
    for who in ["ann", "bob", "dora"] {
        let mail = stack.wait_for_mail(&addr(who)).await;
        assert!(mail.link().starts_with(&stack.url("/confirm?code=")));
    }

    // The same file again: nobody is invited twice; the rows name the existing users.
    let (status, again) = upload(&stack, &stack.admin_token, "text/csv; charset=utf-8", csv).await;
    assert_eq!(status, 202, "{again}");
    let redo = finished(
        &stack,
        again["job_id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(redo["totals"]["created"], 0, "{redo}");
    assert_eq!(redo["totals"]["duplicate"], 5, "{redo}");
    assert_eq!(row(&redo, 2)["user_id"], ann_id.as_str());
    let all = invitations(&stack).await;
    assert_eq!(all.len(), 4, "kim, ann, bob, dora once each: {all:?}");
}

#[tokio::test]
async fn bad_uploads_are_refused_with_what_to_do() {
    let stack = Stack::new("bulk_bad", Options::default()).await;
    stack.spawn_with_env("gateway", &[("ONBOARD__BULK__MAX_FILE_BYTES", "200")]);
    stack.wait_ready().await;
    let token = stack.admin_token.clone();

    let (status, body) = upload(&stack, &token, "application/json", "{}".into()).await;
    assert_eq!(status, 415, "{body}");
    assert!(body["message"].as_str().unwrap().contains("text/csv"));
    let (status, body) = upload(
        &stack,
        &token,
        "text/csv",
        "username,email,password\na,a@x.example,pw\n".into(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["fields"]["file"]
            .as_str()
            .unwrap()
            .contains("`password`"),
        "{body}"
    );
    let (status, body) = upload(&stack, &token, "text/csv", "\n".into()).await;
    assert_eq!(status, 400, "{body}");
    let big = "username,email\n".to_owned() + &"someone,someone@pickup.example\n".repeat(10);
    let (status, body) = upload(&stack, &token, "text/csv", big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("200 bytes (bulk.max_file_bytes)"),
        "{body}"
    );
    // A read-only token may look at jobs but not upload; unknown jobs are 404.
    let (status, body) = upload(
        &stack,
        &stack.reader_token,
        "text/csv",
        "a,a@pickup.example\n".into(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // The token is checked before the body is read: an oversized upload without a valid token
    // is refused as 401, not read up to the limit and refused as 413.
    let (status, body) = upload(&stack, "not-a-token", "text/csv", "x".repeat(1000)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthorized", "{body}");
    let r = stack
        .http
        .get(stack.url(&format!("/api/v1/bulk-invites/{}", uuid::Uuid::new_v4())))
        .bearer_auth(&stack.reader_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "job_not_found");
    // JSON lines work too; a line that is not an invitation is reported, not fatal.
    let (status, body) = upload(
        &stack,
        &token,
        "application/x-ndjson",
        "{\"username\":\"jo\",\"email\":\"jo@pickup.example\"}\n{\"user\":\"x\"}\n".into(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let done = finished(
        &stack,
        body["job_id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(row(&done, 1)["status"], "created", "{done}");
    assert_eq!(row(&done, 2)["status"], "invalid", "{done}");
}

#[tokio::test]
async fn onboard_invite_file_applies_a_file_from_the_terminal_and_a_rerun_invites_nobody_twice() {
    let stack = Stack::start("bulk_cli", Options::default()).await;
    let tag = unique("");
    let eve = format!("eve.{tag}@pickup.example");
    let file = stack.dir.join("users.jsonl");
    std::fs::write(
        &file,
        format!(
            "{{\"username\":\"eve{tag}\",\"email\":\"{eve}\",\"locale\":\"de\"}}\n\
             {{\"username\":\"fay{tag}\",\"email\":\"fay.{tag}@pickup.example\",\"domain\":\"EMPLOYEES\"}}\n"
        ),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let out = stack.cli(&["invite", "--file", path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "onboard invite --file failed: {stderr}"
    );
    assert!(
        stderr.contains("2 rows: 2 created, 0 duplicate, 0 invalid, 0 failed"),
        "{stderr}"
    );
    let job: Value = serde_json::from_slice(&out.stdout).expect("the job as JSON on stdout");
    assert_eq!(job["status"], "done");
    let eve_id = row(&job, 1)["user_id"].as_str().unwrap().to_owned();
    assert_eq!(stack.user(&eve_id).await["state"], "CodeIssued");
    stack.wait_for_mail(&eve).await;

    // Again: both rows are duplicates of the users just invited; still a success.
    let out = stack.cli(&["invite", "--file", path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("2 rows: 0 created, 2 duplicate"),
        "{stderr}"
    );
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(row(&again, 1)["user_id"], eve_id.as_str());

    // A file with a bad row: the good rows are invited, the bad one is named, the exit fails.
    let csv = stack.dir.join("more.csv");
    std::fs::write(
        &csv,
        format!("gus{tag},gus.{tag}@pickup.example\nhal{tag},hal-at-nowhere\n"),
    )
    .unwrap();
    let out = stack.cli(&["invite", "--file", csv.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("line 2: invalid: email: "), "{stderr}");
    assert!(stderr.contains("1 created"), "{stderr}");
    // A file that is neither .csv nor .jsonl is refused before anything is recorded.
    let out = stack.cli(&["invite", "--file", "/etc/hostname"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(".csv"));
    assert_eq!(invitations(&stack).await.len(), 3);
}

#[tokio::test]
async fn a_job_interrupted_by_a_killed_gateway_resumes_and_every_created_user_is_mailed() {
    let stack = Stack::new("bulk_resume", Options::default()).await;
    // One row at a time, so the kill lands half-way.
    stack.spawn_with_env("gateway", &[("ONBOARD__BULK__CONCURRENCY", "1")]);
    stack.spawn("relay");
    stack.spawn("email-worker");
    stack.wait_ready().await;
    let tag = unique("");
    let n = 200;
    let mut csv = String::from("username,email\n");
    for i in 0..n {
        csv.push_str(&format!("u{i}x{tag},u{i}.{tag}@pickup.example\n"));
    }
    let (status, accepted) = upload(&stack, &stack.admin_token, "text/csv", csv).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    // Kill the gateway (no graceful stop) once some rows, but not all, are applied.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = job(&stack, &id).await;
        let created = j["totals"]["created"].as_i64().unwrap();
        assert!(
            j["status"] == "running",
            "the job finished before the test could interrupt it: {}",
            j["totals"]
        );
        if created > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no row applied within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.signal("gateway", "KILL");
    stack.spawn("gateway");
    stack.wait_ready().await;
    let done = finished(&stack, &id, Duration::from_secs(120)).await;
    assert_eq!(done["totals"]["created"], n, "{}", done["totals"]);

    // Each row's user exists exactly once, and every one of them was mailed.
    let all = invitations(&stack).await;
    assert_eq!(all.len(), n as usize);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let queued = stack.list("delivery=queued&limit=500").await["items"]
            .as_array()
            .unwrap()
            .len();
        let failed = stack.list("delivery=failed&limit=500").await["items"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(failed, 0);
        if queued == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{queued} invitation mails still queued after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sent = invitations_sent(&stack).await;
    assert_eq!(sent, n as usize);
    assert_eq!(
        stack
            .mails_to(&format!("u{}.{tag}@pickup.example", n - 1))
            .await
            .len(),
        1
    );
}

pub(crate) async fn invitations_sent(stack: &Stack) -> usize {
    let mut count = 0;
    let mut after = String::new();
    loop {
        let page = stack.list(&format!("delivery=sent&limit=500{after}")).await;
        count += page["items"].as_array().unwrap().len();
        match page["next_after"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => return count,
        }
    }
}

#[tokio::test]
async fn a_nul_byte_in_a_bulk_row_makes_that_row_invalid_and_the_job_goes_on() {
    let stack = Stack::start("bulk_nul", Options::default()).await;
    crate::bad_input::refuse_as_data(&stack, "refused-by-db").await;
    let tag = unique("");
    let csv = format!(
        "username,email\n\
         anna{tag},anna{tag}@pickup.example\n\
         bo\0b{tag},bob{tag}@pickup.example\n\
         refused-by-db,rb{tag}@pickup.example\n\
         carl{tag},carl{tag}@pickup.example\n"
    );
    let (status, job) = upload(&stack, &stack.admin_token, "text/csv", csv).await;
    assert_eq!(status, 202, "{job}");
    let done = finished(
        &stack,
        job["job_id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    let no_control = crate::bad_input::NO_CONTROL;
    assert_eq!(row(&done, 2)["status"], "created", "{done}");
    let nul = row(&done, 3);
    assert_eq!(nul["status"], "invalid", "{done}");
    assert!(
        nul["reason"]
            .as_str()
            .unwrap()
            .starts_with(&format!("username: username {no_control}")),
        "{nul}"
    );
    // A value the database refuses although the row passed every check: that row fails with
    // the reason, and the rows after it are applied.
    let refused = row(&done, 4);
    assert_eq!(refused["status"], "failed", "{done}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("SQLSTATE 22023"),
        "{refused}"
    );
    assert_eq!(row(&done, 5)["status"], "created", "{done}");
    assert_eq!(done["totals"]["created"], 2, "{done}");

    // JSON lines say the same, for every field and for an unknown key.
    let jsonl = format!(
        "{}\n{}\n",
        serde_json::json!({"username": format!("dora{tag}"), "email": "d@pickup.example", "locale": "d\u{0}e"}),
        serde_json::json!({"username": format!("eve{tag}"), "email": "e@pickup.example", "x\u{0}": 1}),
    );
    let (status, job) = upload(&stack, &stack.admin_token, "application/x-ndjson", jsonl).await;
    assert_eq!(status, 202, "{job}");
    let done = finished(
        &stack,
        job["job_id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    let locale = row(&done, 1);
    assert_eq!(locale["status"], "invalid", "{done}");
    assert!(
        locale["reason"]
            .as_str()
            .unwrap()
            .starts_with(&format!("locale: locale {no_control}")),
        "{locale}"
    );
    let unknown = row(&done, 2);
    assert_eq!(unknown["status"], "invalid", "{done}");
    assert!(
        unknown["reason"].as_str().unwrap().contains("`x\\0`"),
        "{unknown}"
    );
}
