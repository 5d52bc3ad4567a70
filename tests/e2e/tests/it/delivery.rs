//! Failing mail: transient failures wait aside and are retried with back-off, permanent ones and
//! exhausted ones are abandoned with their reason, and neither holds up other users' mail.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use onboarding_e2e::{unique, Options, Services, SmtpGate, Stack};

/// A stack that mails through the SMTP gate, its email worker started with `worker_env`.
async fn behind_gate(name: &str, worker_env: &[(&str, &str)]) -> (SmtpGate, Stack) {
    let gate = SmtpGate::start(&Services::from_env());
    let stack = Stack::new(
        name,
        Options {
            smtp_port: Some(gate.port),
            ..Options::default()
        },
    )
    .await;
    for c in ["gateway", "relay", "scheduler"] {
        stack.spawn(c);
    }
    stack.spawn_with_env("email-worker", worker_env);
    stack.wait_ready().await;
    (gate, stack)
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("a time: {v}"))
        .parse()
        .unwrap()
}

fn of_type<'a>(records: &'a [onboarding_e2e::Record], t: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r.headers["ce_type"] == t)
        .map(|r| &r.value)
        .collect()
}

const FAILED: &str = "onboard.user.invitation_mail_failed.v1";
const ABANDONED: &str = "onboard.user.invitation_mail_abandoned.v1";
const SENT: &str = "onboard.user.invitation_mail_sent.v1";
const ISSUED: &str = "onboard.user.code_issued.v1";

#[tokio::test]
async fn failing_mail_waits_aside_is_retried_with_backoff_and_abandoned_with_its_reason() {
    // max_attempts = 3 (the harness); waits of about 3 s, then 6 s (±20 %).
    let metrics = format!("127.0.0.1:{}", onboarding_e2e::free_port());
    let (_gate, stack) = behind_gate(
        "delivery",
        &[
            ("ONBOARD__OUTPUT_ADAPTER__EMAIL__RETRY_INITIAL_SECONDS", "3"),
            ("ONBOARD__OBSERVABILITY__METRICS_BIND", metrics.as_str()),
        ],
    )
    .await;
    let tag = unique("");
    let (grey, defer, reject) = (
        format!("grey.{tag}@pickup.example"),
        format!("defer.{tag}@pickup.example"),
        format!("reject.{tag}@pickup.example"),
    );
    let id = |v: Value| v["id"].as_str().unwrap().to_owned();
    let defer_id = id(stack.invite("Deferred", &defer).await);
    let reject_id = id(stack.invite("Rejected", &reject).await);
    let grey_id = id(stack.invite("Greylisted", &grey).await);

    // The deferred mail's first attempt failed and waits for its next one ...
    let first = stack.wait_for_delivery(&defer_id, "failed").await;
    assert_eq!(first["email_delivery"]["attempt"], 1, "{first}");
    assert!(
        first["email_delivery"]["next_attempt_at"].is_string(),
        "{first}"
    );
    // ... while users invited after it, on its partition too, get their mail. They are invited in
    // one batch while it waits: with 4 partitions, 32 users all miss its partition with a chance of
    // (3/4)^32, about 1 in 10 000, and mailing them takes well under its two waits.
    let defer_partition = stack.user_records(&defer_id, &[FAILED]).await[0].partition;
    let ids = stack.invite_batch("neighbour", 32, &tag).await;
    let records = stack
        .read_topic(|rs| {
            ids.iter().all(|i| {
                rs.iter()
                    .any(|r| &r.key == i && r.headers["ce_type"] == SENT)
            })
        })
        .await;
    let neighbour = ids
        .iter()
        .find(|i| {
            records
                .iter()
                .any(|r| &r.key == *i && r.partition == defer_partition)
        })
        .cloned()
        .expect("one of 32 users shares the deferred user's partition");
    let neighbour_sent = time(&stack.user(&neighbour).await["email_delivery"]["at"]);

    // A permanent refusal is abandoned at once, after one attempt.
    let rejected = stack.wait_for_delivery(&reject_id, "abandoned").await;
    assert_eq!(rejected["email_delivery"]["attempts"], 1, "{rejected}");
    let records = stack.user_records(&reject_id, &[FAILED, ABANDONED]).await;
    let failed = of_type(&records, FAILED);
    assert_eq!(failed.len(), 1, "no retry after a 550: {failed:?}");
    assert_eq!(failed[0]["permanent"], true);
    assert!(failed[0]["next_attempt_at"].is_null());
    let abandoned = of_type(&records, ABANDONED);
    assert!(
        abandoned[0]["reason"].as_str().unwrap().contains("550"),
        "the reason names the server's answer: {abandoned:?}"
    );

    // A mail deferred every time is abandoned after max_attempts, with increasing waits.
    let deferred = stack.wait_for_delivery(&defer_id, "abandoned").await;
    assert!(
        deferred["email_delivery"]["reason"]
            .as_str()
            .unwrap()
            .contains("3 attempts failed"),
        "{deferred}"
    );
    let records = stack.user_records(&defer_id, &[ABANDONED]).await;
    let failed = of_type(&records, FAILED);
    let attempts: Vec<i64> = failed
        .iter()
        .map(|f| f["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3], "{failed:?}");
    let wait = |f: &Value| time(&f["next_attempt_at"]) - time(&f["failed_at"]);
    let (w1, w2) = (wait(failed[0]), wait(failed[1]));
    assert!(
        (2400..=3600).contains(&w1.num_milliseconds()),
        "first wait about 3 s: {w1}"
    );
    assert!(
        (4800..=7200).contains(&w2.num_milliseconds()),
        "second wait about 6 s: {w2}"
    );
    assert!(failed[2]["next_attempt_at"].is_null());
    let abandoned_at = time(&deferred["email_delivery"]["at"]);
    assert!(
        neighbour_sent < abandoned_at,
        "a user on the same partition was mailed while the failing mail waited ({neighbour_sent} vs {abandoned_at})"
    );
    assert!(stack.mails_to(&defer).await.is_empty());
    assert!(stack.mails_to(&reject).await.is_empty());

    // Greylisted twice, delivered on the third attempt: one mail, recorded as sent.
    let mails = stack.wait_for_mails(&grey, 1).await;
    let sent = stack.wait_for_delivery(&grey_id, "sent").await;
    let records = stack.user_records(&grey_id, &[SENT]).await;
    assert_eq!(of_type(&records, FAILED).len(), 2, "{records:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.mails_to(&grey).await.len(), 1);
    assert_eq!(
        mails[0].header("message-id"),
        sent["email_delivery"]["message_id"].as_str(),
        "{sent}"
    );

    // The worker's metrics show the attempts, the outcomes and the consumer lag per partition.
    let text = stack
        .http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |needle: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{needle} not in the metrics:\n{text}"))
    };
    // defer: 3 transient; grey: 2 transient; reject: 1 permanent.
    assert!(
        value(r#"onboard_mail_attempts_total{kind="invitation",result="transient_failure"}"#)
            >= 5.0
    );
    assert!(
        value(r#"onboard_mail_attempts_total{kind="invitation",result="permanent_failure"}"#)
            >= 1.0
    );
    assert_eq!(
        value(r#"onboard_mail_total{kind="invitation",outcome="abandoned"}"#),
        2.0
    );
    assert!(value(r#"onboard_mail_total{kind="invitation",outcome="retry_scheduled"}"#) >= 4.0);
    for p in 0..4 {
        value(&format!("onboard_consumer_lag{{partition=\"{p}\"}}"));
    }

    // Admins list the abandoned ones.
    let list = stack.list("delivery=abandoned").await;
    let listed: Vec<&str> = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .map(|i| i["user_id"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&defer_id.as_str()) && listed.contains(&reject_id.as_str()),
        "{list}"
    );
    assert!(!listed.contains(&grey_id.as_str()), "{list}");
}

#[tokio::test]
async fn records_that_cannot_be_processed_go_to_the_dead_letter_topic_and_block_nothing() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let stack = Stack::start("deadletter", Options::default()).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .create()
        .expect("kafka producer");
    // On every partition, ahead of the next invitation: a code_issued record whose value is not
    // JSON, and a record without any type.
    for partition in 0..4 {
        let typed = OwnedHeaders::new().insert(Header {
            key: "ce_type",
            value: Some("onboard.user.code_issued.v1"),
        });
        let bad = format!("{{not json {partition}");
        producer
            .send(
                FutureRecord::to(&stack.topic)
                    .partition(partition)
                    .key("garbage")
                    .payload(&bad)
                    .headers(typed),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
        producer
            .send(
                FutureRecord::to(&stack.topic)
                    .partition(partition)
                    .key("untyped")
                    .payload("hello"),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
    let (_, email, _) = stack.invite_mailed("AfterGarbage").await;
    assert_eq!(stack.mails_to(&email).await.len(), 1);

    let dlq = format!("{}.dlq", stack.topic);
    let records = stack.read_topic_of(&dlq, |rs| rs.len() >= 8).await;
    assert_eq!(records.len(), 8, "{records:#?}");
    for r in &records {
        assert_eq!(r.headers["onboard_dlq_topic"], stack.topic, "{r:?}");
        assert!(
            r.headers["onboard_dlq_offset"].parse::<i64>().is_ok(),
            "{r:?}"
        );
        match r.key.as_str() {
            "garbage" => {
                assert_eq!(
                    r.headers["onboard_dlq_reason"], "unreadable_payload",
                    "{r:?}"
                );
                assert_eq!(r.headers["ce_type"], "onboard.user.code_issued.v1");
                assert!(r.raw_value.starts_with("{not json"), "{r:?}");
            }
            "untyped" => {
                assert_eq!(r.headers["onboard_dlq_reason"], "missing_type", "{r:?}");
                assert_eq!(r.raw_value, "hello");
            }
            other => panic!("unexpected record {other} on the dead-letter topic: {r:?}"),
        }
    }
}

#[tokio::test]
async fn a_failing_welcome_mail_waits_aside_and_arrives_once() {
    // max_attempts = 3 (the harness); waits of about 1 s, then 2 s.
    let (gate, stack) = behind_gate(
        "welcome-retry",
        &[("ONBOARD__OUTPUT_ADAPTER__EMAIL__RETRY_INITIAL_SECONDS", "1")],
    )
    .await;
    // The gate accepts this address's first mail (the invitation) and defers the next two
    // attempts (the welcome mail's first and second).
    let email = format!("second.{}@pickup.example", unique(""));
    let id = stack.invite("Welcomed", &email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let invitation = stack.wait_for_mail(&email).await;
    let (status, body) = stack
        .submit_password(&invitation.code(), "a quiet cab at midnight")
        .await;
    assert_eq!(status, 200, "{body}");

    let welcome = stack
        .user_records(&id, &["onboard.user.welcome_mail_sent.v1"])
        .await;
    let welcome = welcome
        .iter()
        .find(|r| r.headers["ce_type"] == "onboard.user.welcome_mail_sent.v1")
        .unwrap();
    // Recorded after the server accepted it: both mails are in MailDev now, the welcome once.
    let mails = stack.wait_for_mails(&email, 2).await;
    assert_eq!(mails.len(), 2, "one invitation and one welcome mail");
    assert_eq!(
        mails
            .iter()
            .filter(|m| m.subject() == "Pickup: your account is ready")
            .count(),
        1
    );
    assert_eq!(
        welcome.value["message_id"].as_str(),
        mails
            .iter()
            .find(|m| m.subject() == "Pickup: your account is ready")
            .and_then(|m| m.header("message-id")),
    );
    // On the wire: the invitation, two deferred welcome attempts, the accepted one.
    assert_eq!(
        gate.recipients().iter().filter(|r| **r == email).count(),
        4,
        "{:?}",
        gate.recipients()
    );
    let log = stack.logs_of("email-worker");
    assert_eq!(
        log.matches("welcome mail failed; retry scheduled").count(),
        2,
        "{log}"
    );
    assert_eq!(stack.user(&id).await["state"], "Active");
}

#[tokio::test]
async fn a_mail_the_smtp_server_holds_up_holds_up_only_its_own_user() {
    // The gate answers the held user's RCPT only when the test releases it; the worker's SMTP
    // timeout outlasts the test, so the mail waits in hand rather than failing.
    let (gate, stack) = behind_gate(
        "held",
        &[("ONBOARD__OUTPUT_ADAPTER__EMAIL__TIMEOUT_SECONDS", "600")],
    )
    .await;
    let tag = unique("");
    let held = format!("hold.{tag}@pickup.example");
    let id = |v: Value| v["id"].as_str().unwrap().to_owned();
    let held_id = id(stack.invite("Held", &held).await);
    gate.wait_until_held(&held).await;
    let held_partition = stack.user_records(&held_id, &[ISSUED]).await[0].partition;
    // A second code for the held user: its record must wait for the first.
    assert_eq!(stack.resend(&held_id).await.status(), 202);

    // Users invited while it hangs, in one batch: with 4 partitions, 32 users all miss its
    // partition with a chance of about 1 in 10 000. The held user's two records are fewer than
    // the worker's 32 slots (kafka.email_worker_concurrency), so they cannot take every slot.
    let ids = stack.invite_batch("later", 32, &tag).await;
    let address = |n: usize| format!("later{n}.{tag}@pickup.example");
    // Everyone else is mailed while the held mail hangs, on its partition too.
    for n in 0..ids.len() {
        assert_eq!(stack.wait_for_mails(&address(n), 1).await.len(), 1);
    }
    let records = stack
        .read_topic(|rs| ids.iter().all(|i| rs.iter().any(|r| &r.key == i)))
        .await;
    let partition_of = |i: &String| records.iter().find(|r| &r.key == i).unwrap().partition;
    assert!(
        ids.iter().any(|i| partition_of(i) == held_partition),
        "no later user shares the held user's partition {held_partition}"
    );
    // The held user's second code was not tried: one user's records keep their order.
    let tries = |log: &[String]| log.iter().filter(|l| l.contains(&held)).count();
    assert_eq!(tries(&gate.recipients()), 1, "{:?}", gate.recipients());
    assert!(stack.mails_to(&held).await.is_empty());

    gate.release(&held);
    // Both codes are mailed, the second only after the first was let through.
    assert_eq!(stack.wait_for_mails(&held, 2).await.len(), 2);
    let log = gate.printed("");
    let released = log
        .iter()
        .position(|l| l == &format!("RELEASED {held}"))
        .expect("the gate released the held recipient");
    let second_try = log
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("RCPT ") && l.contains(&held))
        .nth(1)
        .map(|(i, _)| i)
        .expect("the second code was tried");
    assert!(released < second_try, "{log:?}");
    for n in 0..ids.len() {
        assert_eq!(stack.mails_to(&address(n)).await.len(), 1, "{}", address(n));
    }
}

#[tokio::test]
async fn a_mail_claimed_by_a_worker_that_died_is_taken_over_by_another_without_waiting_for_its_lease(
) {
    // The gate refuses every mail at first, so the invitation mail waits in the delayed store;
    // its retry is then held at RCPT by the gate (a `hold…` recipient) while worker A has it
    // claimed, and A is killed then, a minute before its SMTP timeout would end the attempt.
    let mode = std::env::temp_dir().join(unique("gate-mode-"));
    std::fs::write(&mode, "refuse").unwrap();
    let gate = SmtpGate::start_with(
        &Services::from_env(),
        &[("GATE_MODE_FILE", mode.to_str().unwrap())],
    );
    let stack = Stack::new(
        "takeover",
        Options {
            smtp_port: Some(gate.port),
            ..Options::default()
        },
    )
    .await;
    for c in ["gateway", "relay", "scheduler"] {
        stack.spawn(c);
    }
    let worker = [
        ("ONBOARD__OUTPUT_ADAPTER__EMAIL__TIMEOUT_SECONDS", "60"),
        ("ONBOARD__OUTPUT_ADAPTER__EMAIL__RETRY_INITIAL_SECONDS", "1"),
    ];
    stack.spawn_named("worker-a", "email-worker", &worker);
    stack.wait_ready().await;
    let held = format!("hold.{}@pickup.example", unique(""));
    let id = stack.invite("Taken", &held).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pool = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let waiting = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM mail_retries WHERE user_id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while waiting().await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the refused mail did not wait in the delayed store; logs in {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::write(&mode, "accept").unwrap();
    gate.wait_until_held(&held).await;

    // Worker A dies in the middle of its attempt, holding the claim; worker B takes the mail
    // over since A's PostgreSQL session is gone, once the claim is older than the longest
    // attempt (the SMTP timeout plus 30 s), not after the 5-minute lease.
    stack.signal("worker-a", "KILL");
    gate.release(&held);
    stack.spawn_named("worker-b", "email-worker", &worker);
    let deadline = std::time::Instant::now() + Duration::from_secs(280);
    while !stack
        .logs_of("worker-b")
        .contains("took over a mail whose worker ended")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "worker B did not take the mail over; logs in {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stack.wait_for_delivery(&id, "sent").await;
    // A never got past RCPT: the user has the one mail B sent.
    assert_eq!(stack.wait_for_mails(&held, 1).await.len(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.mails_to(&held).await.len(), 1);
    let _ = std::fs::remove_file(&mode);
}
