//! Several email workers in one consumer group, and a worker killed without warning: every
//! invitation is mailed, none twice as far as the user can tell.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use onboarding_e2e::{unique, Options, Stack};

fn addresses(batch: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("{batch}-{i}"),
                format!("{batch}.{i}@pickup.example"),
            )
        })
        .collect()
}

async fn invite_all(stack: &Stack, users: &[(String, String)]) {
    futures::future::join_all(users.iter().map(|(u, e)| stack.invite(u, e))).await;
}

/// How many invitation mails a worker's logs say it sent.
fn sent_by(stack: &Stack, name: &str) -> usize {
    stack
        .logs_of(name)
        .lines()
        .filter(|l| l.contains("code-issued event handled") && l.contains("outcome=\"sent\""))
        .count()
}

/// Waits until a worker's log shows it was assigned partitions (60 s max).
async fn wait_for_assignment(stack: &Stack, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stack.logs_of(name).contains("partitions assigned") {
        assert!(
            Instant::now() < deadline,
            "{name} was assigned no partition within 60 s; logs in {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every address got its mail; returns, per address, the mails MailDev holds.
async fn mails_of(stack: &Stack, users: &[(String, String)]) -> HashMap<String, Vec<String>> {
    for (_, email) in users {
        stack.wait_for_mail(email).await;
    }
    // Give any duplicate a chance to show up before counting.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut out = HashMap::new();
    for (_, email) in users {
        let ids = stack
            .mails_to(email)
            .await
            .iter()
            .map(|m| m.header("message-id").unwrap_or_default().to_owned())
            .collect();
        out.insert(email.clone(), ids);
    }
    out
}

#[tokio::test]
async fn two_workers_in_one_group_share_the_partitions_and_mail_everyone_once() {
    let stack = Stack::new("twoworkers", Options::default()).await;
    for c in ["gateway", "relay", "scheduler"] {
        stack.spawn(c);
    }
    stack.spawn_named("mailer-a", "email-worker", &[]);
    stack.wait_ready().await;
    wait_for_assignment(&stack, "mailer-a").await;
    let users = addresses(&unique("pair"), 48);

    invite_all(&stack, &users[..12]).await;
    // A second worker joins the group in the middle of the burst: the group rebalances.
    stack.spawn_named("mailer-b", "email-worker", &[]);
    invite_all(&stack, &users[12..24]).await;
    wait_for_assignment(&stack, "mailer-b").await;
    invite_all(&stack, &users[24..]).await;

    let mails = mails_of(&stack, &users).await;
    let wrong: Vec<_> = mails.iter().filter(|(_, m)| m.len() != 1).collect();
    assert!(
        wrong.is_empty(),
        "every user must get exactly one mail: {wrong:?}"
    );
    let (a, b) = (sent_by(&stack, "mailer-a"), sent_by(&stack, "mailer-b"));
    assert_eq!(
        a + b,
        users.len(),
        "the workers' logs account for every mail"
    );
    assert!(
        a > 0 && b > 0,
        "both workers must have mailed: mailer-a {a}, mailer-b {b}"
    );
}

#[tokio::test]
async fn a_worker_that_freezes_holding_every_partition_does_not_hold_up_the_mail() {
    let stack = Stack::new("frozen", Options::default()).await;
    for c in ["gateway", "relay", "scheduler"] {
        stack.spawn(c);
    }
    stack.spawn_named("mailer-a", "email-worker", &[]);
    stack.wait_ready().await;
    wait_for_assignment(&stack, "mailer-a").await;
    // mailer-a holds all four partitions, then freezes: alive, connected, silent.
    stack.freeze("mailer-a");
    stack.spawn_named("mailer-b", "email-worker", &[]);
    let users = addresses(&unique("frozen"), 12);
    invite_all(&stack, &users).await;

    let mails = mails_of(&stack, &users).await;
    let wrong: Vec<_> = mails.iter().filter(|(_, m)| m.len() != 1).collect();
    assert!(
        wrong.is_empty(),
        "every user must get exactly one mail: {wrong:?}"
    );
    assert_eq!(sent_by(&stack, "mailer-b"), users.len());
}

#[tokio::test]
async fn a_worker_killed_mid_burst_and_restarted_mails_everyone_once() {
    let stack = Stack::start("sigkill", Options::default()).await;
    let users = addresses(&unique("kill"), 40);
    invite_all(&stack, &users[..25]).await;
    // Kill the worker without warning while it is sending the burst.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent_by(&stack, "email-worker") < 5 {
        assert!(
            Instant::now() < deadline,
            "the worker sent nothing within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.signal("email-worker", "KILL");
    invite_all(&stack, &users[25..]).await;
    stack.spawn("email-worker");

    let mails = mails_of(&stack, &users).await;
    // A process killed between the SMTP server's acceptance and recording it can only send the
    // mails in hand again (one per user, up to kafka.email_worker_concurrency: 32), with the same
    // Message-ID (mail clients show each once).
    let ids: HashMap<_, HashSet<_>> = mails
        .iter()
        .map(|(e, ids)| (e.clone(), ids.iter().cloned().collect()))
        .collect();
    let split: Vec<_> = ids.iter().filter(|(_, ids)| ids.len() != 1).collect();
    assert!(
        split.is_empty(),
        "every user must see exactly one mail (one Message-ID): {split:?}"
    );
    let copies: usize = mails.values().map(Vec::len).sum();
    assert!(
        copies <= users.len() + 32,
        "at most the mails in flight at the kill (up to the worker's 32 slots) may be delivered twice; {copies} mails for {} users",
        users.len()
    );
}

/// The partition and offset of the next record `consumer` reads, assigned `partition` at `offset`.
async fn next(consumer: &StreamConsumer, partition: i32, offset: i64) -> (i32, i64) {
    tokio::time::timeout(Duration::from_secs(20), consumer.recv())
        .await
        .unwrap_or_else(|_| {
            panic!("nothing read from partition {partition} resuming at {offset} within 20 s")
        })
        .map(|m| (m.partition(), m.offset()))
        .expect("a record")
}

/// The cause of "a worker goes silent after a rebalance": tansu answers a fetch that starts in the
/// middle of a record batch with the next batch, so a consumer resuming from a committed offset
/// inside a batch skipped the rest of it (or, in the last batch, waited forever). The relay writes
/// up to `kafka.relay_batch_records` records per batch, and the engine's consumers resume that many
/// records before a committed offset, skipping what lies below it (`onboarding_kafka::Rewind`,
/// docs/adr/0036). With small batches (3 records, so that users' records share batches and
/// batches split users), this resumes from every offset the relay wrote, as the email worker and
/// the provisioner do, and expects every record of the partition from that offset on, in order.
#[tokio::test]
async fn a_consumer_can_resume_from_any_offset_the_relay_wrote() {
    const BATCH: u32 = 3;
    let stack = Stack::new(
        "resume",
        Options {
            kafka_settings: format!("relay_batch_records = {BATCH}"),
            ..Options::default()
        },
    )
    .await;
    stack.spawn("gateway");
    stack.spawn("relay");
    stack.wait_ready().await;
    let users = addresses(&unique("resume"), 16);
    invite_all(&stack, &users).await;
    // Each invitation writes UserInvited and CodeIssued in one transaction; the relay sends the
    // whole outbox at once, so records share batches.
    let records = stack.read_topic(|rs| rs.len() >= 2 * users.len()).await;
    let mut by_partition: HashMap<i32, Vec<i64>> = HashMap::new();
    for r in &records {
        by_partition.entry(r.partition).or_default().push(r.offset);
    }
    let consumer = || -> StreamConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &stack.kafka)
            .set("group.id", unique("e2e-resume-"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("kafka consumer")
    };

    // The premise: the relay wrote batches of several records, and a plain read from inside one
    // starts after it (what made ADR 0004 write one record per batch).
    let plain = consumer();
    let mut skipped = 0;
    for r in &records {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&stack.topic, r.partition, Offset::Offset(r.offset))
            .unwrap();
        plain.assign(&tpl).unwrap();
        // Inside the partition's last batch nothing comes at all.
        match tokio::time::timeout(Duration::from_secs(3), plain.recv()).await {
            Ok(Ok(m)) if m.offset() == r.offset => {}
            Ok(Ok(m)) => {
                assert!(m.offset() > r.offset);
                skipped += 1;
            }
            Ok(Err(e)) => panic!("reading partition {} at {}: {e}", r.partition, r.offset),
            Err(_) => skipped += 1,
        }
    }
    assert!(
        skipped > 0,
        "the relay must have written batches of several records: every plain read started at its offset"
    );

    // The engine's way: every record from the offset on, none lost, in order.
    let rewind = onboarding_kafka::Rewind::records(BATCH);
    let resuming = consumer();
    for r in &records {
        let expected: Vec<i64> = by_partition[&r.partition]
            .iter()
            .copied()
            .filter(|o| *o >= r.offset)
            .collect();
        rewind
            .assign_at(&resuming, &stack.topic, &[(r.partition, r.offset)])
            .unwrap();
        let mut read = Vec::new();
        while read.len() < expected.len() {
            let (partition, offset) = next(&resuming, r.partition, r.offset).await;
            assert_eq!(partition, r.partition);
            if !rewind.already_handled(&stack.topic, partition, offset) {
                read.push(offset);
            }
        }
        assert_eq!(
            read, expected,
            "resuming partition {} at offset {} must read every record from it on, in order",
            r.partition, r.offset
        );
        // Nothing more is handed out after the partition's last record: a record the broker
        // sends again (seen: the last one, once more) is skipped.
        let mut again = 0;
        while let Ok(m) = tokio::time::timeout(Duration::from_millis(300), resuming.recv()).await {
            let offset = m.expect("a record").offset();
            again += 1;
            assert!(
                again <= 100,
                "resuming partition {} at offset {}: the broker keeps sending records again",
                r.partition,
                r.offset
            );
            assert!(
                rewind.already_handled(&stack.topic, r.partition, offset),
                "resuming partition {} at offset {}: offset {offset} handed out after the last record",
                r.partition,
                r.offset
            );
        }
    }
}
