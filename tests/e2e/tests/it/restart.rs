//! Restarting the relay and the email worker in the middle of a burst loses no mail and doubles none.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use onboarding_e2e::{unique, Broker, Options, Stack};

#[tokio::test]
async fn restarting_the_relay_and_the_worker_mid_burst_mails_everyone_exactly_once() {
    let stack = Stack::start("restart", Options::default()).await;
    let batch = unique("burst");
    let users: Vec<(String, String)> = (0..40)
        .map(|i| {
            (
                format!("{batch}-{i}"),
                format!("{batch}.{i}@pickup.example"),
            )
        })
        .collect();

    let invite_all = |range: std::ops::Range<usize>| {
        futures::future::join_all(users[range].iter().map(|(u, e)| stack.invite(u, e)))
    };

    invite_all(0..15).await;
    // The relay dies without warning (at-least-once publishing must cover it) ...
    stack.signal("relay", "KILL");
    invite_all(15..25).await;
    // ... and the worker is stopped the way an orchestrator stops it.
    stack.signal("email-worker", "TERM");
    invite_all(25..40).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.spawn("relay");
    stack.spawn("email-worker");

    for (_, email) in &users {
        stack.wait_for_mail(email).await;
    }
    // Give any duplicate a chance to show up before counting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut counts = HashMap::new();
    for (_, email) in &users {
        counts.insert(email.clone(), stack.mails_to(email).await.len());
    }
    let wrong: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        wrong.is_empty(),
        "every user must get exactly one mail: {wrong:?}"
    );
}

#[tokio::test]
async fn a_broker_that_restarts_empty_gets_the_whole_log_again_and_nobody_is_mailed_twice() {
    let mut broker = Broker::start("broker");
    let stack = Stack::start(
        "brokerloss",
        Options {
            kafka: Some(broker.addr.clone()),
            ..Options::default()
        },
    )
    .await;
    let before = format!("{}@pickup.example", unique("before."));
    let first = stack.invite("BeforeCrash", &before).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    stack.wait_for_mail(&before).await;
    let sent = ["onboard.user.invitation_mail_sent.v1"];
    stack.user_records(&first, &sent).await;

    // The in-memory broker dies and comes back empty: no topic, no offsets, no records. The
    // relay notices by itself. Here the email worker is killed and started again meanwhile (an
    // orchestrator may do so); it reads the rebuilt topic from the start. A worker that lives
    // through the loss is the next test's.
    broker.restart_empty();
    stack.signal("email-worker", "KILL");
    stack.spawn("email-worker");

    let after = format!("{}@pickup.example", unique("after."));
    let second = stack.invite("AfterCrash", &after).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    stack.wait_for_mail(&after).await;

    // The topic holds the whole log again, in order per user.
    let types = [
        "onboard.user.invited.v1",
        "onboard.user.code_issued.v1",
        "onboard.user.invitation_mail_sent.v1",
    ];
    for id in [&first, &second] {
        let records = stack.user_records(id, &types).await;
        let seqs: Vec<i64> = records
            .iter()
            .map(|r| r.value["sequence"].as_i64().unwrap())
            .collect();
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "events of {id} out of order: {seqs:?}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stack.mails_to(&before).await.len(),
        1,
        "the first user must not be mailed again"
    );
    assert_eq!(stack.mails_to(&after).await.len(), 1);
}

#[tokio::test]
async fn after_a_broker_loss_the_log_is_republished_in_chunks_while_new_invitations_go_out() {
    let mut broker = Broker::start("broker-chunks");
    let stack = Stack::start(
        "chunked",
        Options {
            kafka: Some(broker.addr.clone()),
            ..Options::default()
        },
    )
    .await;
    // A log of several relay chunks (500 events each): 400 invitations, three events each once
    // mailed.
    let tag = unique("");
    let domain = format!(".{tag}@pickup.example");
    let csv: String = std::iter::once("username,email\n".to_owned())
        .chain((0..400).map(|i| format!("old{i}x{tag},old{i}{domain}\n")))
        .collect();
    let (status, accepted) = crate::bulk::upload(&stack, &stack.admin_token, "text/csv", csv).await;
    assert_eq!(status, 202, "{accepted}");
    let job = accepted["job_id"].as_str().unwrap().to_owned();
    crate::bulk::finished(&stack, &job, Duration::from_secs(120)).await;
    let deadline = Instant::now() + Duration::from_secs(240);
    while crate::bulk::invitations_sent(&stack).await < 400 {
        assert!(
            Instant::now() < deadline,
            "the 400 invitations were not all mailed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The email worker lives through it, as the relay does: nobody restarts it. It held offsets of
    // about 300 per partition of the lost topic; it stops fetching at the first sign of the
    // broker's loss (an in-memory tansu answers a fetch for a topic it lost in a way that crashes
    // librdkafka; docs/adr/0042), and once the relay recreated the topic it builds a new consumer
    // in the consumer group of the new generation, which reads from the beginning (docs/adr/0038).
    // Read from its old offsets, the new invitation (among the first records of the new topic)
    // would never be mailed.
    broker.restart_empty();
    // Invited as soon as the broker is back, while the relay republishes the log: it is mailed
    // without waiting for the 1,200 events before it (the time is printed, not judged).
    let fresh = format!("fresh{domain}");
    let asked = Instant::now();
    let fresh_id = stack.invite(&format!("fresh{tag}"), &fresh).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let fresh_mail = stack.wait_for_mail(&fresh).await;
    println!("mailed {:?} after the invitation", asked.elapsed());
    assert_eq!(
        stack.exit_status("email-worker"),
        None,
        "the email worker must live through the broker loss; logs in {}",
        stack.dir.display()
    );

    // The whole log is on the topic again; with duplicates set aside (consumers deduplicate on
    // ce_id), every user's events are in order.
    let records = stack
        .read_topic(|rs| {
            rs.iter()
                .filter(|r| r.headers["ce_type"] == "onboard.user.invitation_mail_sent.v1")
                .map(|r| &r.key)
                .collect::<std::collections::HashSet<_>>()
                .len()
                >= 401
        })
        .await;
    let mut seen = std::collections::HashSet::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    for r in &records {
        if !seen.insert(r.headers["ce_id"].clone()) {
            continue;
        }
        let sequence = r.value["sequence"].as_i64().unwrap();
        let before = last.insert(r.key.as_str(), sequence).unwrap_or(0);
        assert!(
            sequence > before,
            "{}: sequence {sequence} after {before} on the topic",
            r.key
        );
    }
    assert!(last.contains_key(fresh_id.as_str()));
    assert_eq!(
        last.len(),
        401,
        "every user's events are on the topic again"
    );

    // Invited once the log is republished: mailed once, by the same worker.
    let later = format!("later{domain}");
    stack.invite(&format!("later{tag}"), &later).await;
    stack.wait_for_mail(&later).await;

    // Nobody was mailed twice: one mail, so one Message-ID, per user and code; the new
    // invitations' mails each carry their own Message-ID. The relay says the republish is done.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counts = stack.mail_counts(&domain).await;
    assert_eq!(counts.len(), 402);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "mailed more than once: {twice:?}");
    let later_mail = stack.mails_to(&later).await.remove(0);
    let ids = [&fresh_mail, &later_mail].map(|m| m.header("message-id").map(str::to_owned));
    assert!(ids.iter().all(Option::is_some), "{ids:?}");
    assert_ne!(ids[0], ids[1]);
    assert_eq!(
        stack.exit_status("email-worker"),
        None,
        "the email worker must still run; logs in {}",
        stack.dir.display()
    );
    let relay_log = stack.logs_of("relay");
    assert!(
        relay_log.contains("republishing the log in chunks")
            && relay_log.contains("the log is republished"),
        "{relay_log}"
    );
    let worker_log = stack.logs_of("email-worker");
    assert!(
        // The pause is logged once, with the first sign of the loss it saw: every broker gone,
        // a failed connection no broker answered after, or the topic unknown (docs/adr/0042).
        worker_log.contains("; fetching stops until a new consumer is built")
            && worker_log.contains("the relay recreated the event topic")
            && worker_log.contains("building a new consumer in the group of this generation")
            && worker_log.contains(".generation-1"),
        "{worker_log}"
    );
}

/// A consumer that lost its brokers fetches nothing more, even when its group revokes and assigns
/// its partitions again (docs/adr/0042): in the CI campaign of seed 14615302318191445768 the
/// partitions given back to such a consumer were read again, from the lost topic's offsets. It
/// holds no partition after the rebalance and receives nothing; a new consumer in its group
/// reads what it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_lost_its_brokers_takes_no_partition_when_the_group_assigns_them_again() {
    use onboarding_kafka::start_over::pause_on_broker_loss;
    use onboarding_kafka::GroupContext;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::{ClientConfig, Message};

    let broker = Broker::start("broker-lost-reassigned");
    let (topic, producer) = one_partition_topic(&broker, "e2e.lost.").await;
    let send = |value: &'static str| send_to(&producer, &topic, value);
    let group = unique("e2e-lost-");
    let consumer_in_group = || -> StreamConsumer<GroupContext> {
        let consumer: StreamConsumer<GroupContext> = ClientConfig::new()
            .set("bootstrap.servers", &broker.addr)
            .set("group.id", &group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "20")
            .create_with_context(GroupContext::new())
            .unwrap();
        consumer.subscribe(&[topic.as_str()]).unwrap();
        consumer
    };
    let payload = |m: rdkafka::message::BorrowedMessage<'_>| {
        String::from_utf8(m.payload().unwrap().to_vec()).unwrap()
    };
    let consumer = consumer_in_group();
    send("before").await;
    let first = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("a record within 60 s")
        .expect("a record");
    assert_eq!(payload(first), "before");

    // The consumer learns that every broker is gone; then its group takes its partition and
    // gives it back (here: it subscribes again).
    let gone = KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown);
    assert!(tokio::task::block_in_place(|| pause_on_broker_loss(
        &consumer, &gone
    )));
    let rebalances = consumer.context().rebalances();
    consumer.unsubscribe();
    consumer.subscribe(&[topic.as_str()]).unwrap();
    send("after").await;
    // It receives nothing, while the group's rebalances come and go.
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.context().rebalances() < rebalances + 2 && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
            panic!(
                "a consumer that lost its brokers received {:?} after the group assigned its partition again",
                payload(m)
            );
        }
    }
    assert!(
        consumer.context().rebalances() >= rebalances + 2,
        "the group never revoked and assigned the partition again within 60 s"
    );
    if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
        panic!(
            "a consumer that lost its brokers received {:?} after the group assigned its partition again",
            payload(m)
        );
    }
    assert_eq!(
        consumer.assignment().unwrap().count(),
        0,
        "the lost consumer holds no partition"
    );
    assert!(consumer.context().lost_brokers());

    // Its replacement in the same group reads what it left.
    drop(consumer);
    let replacement = consumer_in_group();
    let mut seen = Vec::new();
    while !seen.iter().any(|p| p == "after") {
        let m = tokio::time::timeout(Duration::from_secs(60), replacement.recv())
            .await
            .expect("the replacement reads the record within 60 s")
            .expect("a record");
        seen.push(payload(m));
    }
}

/// A connection failure is often the first sign of a lost broker, and an in-memory broker that
/// comes back without the topic crashes a consumer that fetches it (docs/adr/0042): the consumer
/// pauses at once, and resumes only when a broker answers that still knows the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_paused_on_a_connection_failure_resumes_while_a_broker_serves_its_topic_and_stays_paused_when_none_answers(
) {
    use onboarding_kafka::start_over::pause_on_broker_loss;
    use onboarding_kafka::GroupContext;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::{ClientConfig, Message};

    let mut broker = Broker::start("broker-pause");
    let (topic, producer) = one_partition_topic(&broker, "e2e.pause.").await;
    let send = |value: &'static str| send_to(&producer, &topic, value);
    let consumer: StreamConsumer<GroupContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", unique("e2e-pause-"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "20")
        .create_with_context(GroupContext::new())
        .unwrap();
    consumer.subscribe(&[topic.as_str()]).unwrap();
    let next = || async {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("a record within 60 s")
            .expect("a record");
        String::from_utf8(m.payload().unwrap().to_vec()).unwrap()
    };
    send("one").await;
    assert_eq!(next().await, "one");

    // One connection failed, but the broker answers and knows the topic: the consumer goes on.
    let transport = KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure);
    let paused = tokio::task::block_in_place(|| pause_on_broker_loss(&consumer, &transport));
    assert!(
        !paused,
        "a broker that answers with the topic must not leave the consumer paused"
    );
    send("two").await;
    assert_eq!(next().await, "two");

    // The broker is gone: the consumer stays paused.
    broker.stop();
    let paused = tokio::task::block_in_place(|| pause_on_broker_loss(&consumer, &transport));
    assert!(
        paused,
        "with no broker answering, the consumer must stay paused"
    );
}

/// A new topic of one partition on `broker`, created explicitly, and a producer for it.
async fn one_partition_topic(
    broker: &Broker,
    prefix: &str,
) -> (String, rdkafka::producer::FutureProducer) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::ClientConfig;

    let topic = unique(prefix);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let producer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    (topic, producer)
}

/// Sends `value` under the key `k` and waits until the broker acknowledged it.
async fn send_to(producer: &rdkafka::producer::FutureProducer, topic: &str, value: &str) {
    producer
        .send(
            rdkafka::producer::FutureRecord::<str, str>::to(topic)
                .key("k")
                .payload(value),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}
