//! Invitation requests on Kafka, as an upstream HR system publishes them: a CloudEvent on the
//! requests topic invites once (also when redelivered or retried), its outcome is published with
//! the request's id as correlation id, and junk goes to the dead-letter topic with a reason
//! without holding up the requests behind it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};

use onboarding_e2e::{headers_of, unique, Options, Stack};

const HR: &str = "urn:pickup:hr";

fn topic(stack: &Stack, suffix: &str) -> String {
    format!("{}.{suffix}", stack.topic)
}

async fn publish(stack: &Stack, key: &str, value: &[u8]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("enable.idempotence", "true")
        .create()
        .expect("kafka producer");
    producer
        .send(
            FutureRecord::to(&topic(stack, "requests"))
                .key(key)
                .payload(value),
            Duration::from_secs(10),
        )
        .await
        .expect("the broker takes the request");
}

fn request(id: &str, username: &str, email: &str) -> Vec<u8> {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": HR,
        "type": "com.pickup.hr.user.invitation.requested",
        "time": "2026-11-28T09:00:00Z",
        "datacontenttype": "application/json",
        "data": {"username": username, "email": email, "locale": "de",
                 "claims": {"given_name": "Jane", "family_name": "Doe"}},
    })
    .to_string()
    .into_bytes()
}

struct Seen {
    value: Vec<u8>,
    headers: HashMap<String, String>,
}

/// Reads `suffix`'s topic from the start until `want` records arrived (60 s max).
async fn read(stack: &Stack, suffix: &str, want: usize) -> Vec<Seen> {
    read_until(stack, suffix, &format!("{want} records"), |seen| {
        seen.len() >= want
    })
    .await
}

/// Reads `suffix`'s topic from the start until `done` says what arrived is enough (60 s max);
/// `what` names what is awaited.
async fn read_until(
    stack: &Stack,
    suffix: &str,
    what: &str,
    done: impl Fn(&[Seen]) -> bool,
) -> Vec<Seen> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("group.id", unique("e2e-intake-reader-"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer");
    consumer.subscribe(&[&topic(stack, suffix)]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&out) {
        assert!(
            Instant::now() < deadline,
            "{what} expected on {suffix}, {} records arrived within 60 s; logs in {}",
            out.len(),
            stack.dir.display()
        );
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
        else {
            continue;
        };
        let headers = headers_of(&m);
        out.push(Seen {
            value: m.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    out
}

/// Publishes `n` requests of one round: request ids `hr-<round><i>-<tag>`, usernames
/// `<round><i>x<tag>`, keyed by the request id (so they spread over the partitions).
async fn send_round(stack: &Stack, tag: &str, n: usize, round: &str) {
    for i in 0..n {
        let id = format!("hr-{round}{i}-{tag}");
        let username = format!("{round}{i}x{tag}");
        publish(
            stack,
            &id,
            &request(&id, &username, &format!("{username}@pickup.example")),
        )
        .await;
    }
}

fn json_of(s: &Seen) -> Value {
    serde_json::from_slice(&s.value).expect("outcomes are JSON")
}

#[tokio::test]
async fn an_hr_systems_requests_invite_once_get_correlated_outcomes_and_junk_is_dead_lettered() {
    let stack = Stack::start("intake", Options::default()).await;
    stack.spawn("intake");
    let tag = unique("");
    let jane = format!("jane.{tag}@pickup.example");
    let id = format!("hr-req-{tag}");
    // One key for all: one partition, so the junk sits in front of the good requests.
    let key = "same-partition";
    publish(&stack, key, b"this is not json").await;
    publish(&stack, key, br#"{"specversion":"1.0","id":"x","source":"urn:pickup:hr","type":"com.pickup.hr.user.deleted","data":{}}"#).await;
    publish(&stack, key, &request(&id, &format!("Jane{tag}"), &jane)).await;
    // The upstream retries the same request (it did not see our outcome in time).
    publish(&stack, key, &request(&id, &format!("Jane{tag}"), &jane)).await;
    // Another request for a name that is taken, and one with a bad address.
    publish(
        &stack,
        key,
        &request(
            &format!("hr-req2-{tag}"),
            &format!("jane{tag}"),
            "other@pickup.example",
        ),
    )
    .await;
    publish(
        &stack,
        key,
        &request(
            &format!("hr-req3-{tag}"),
            &format!("max{tag}"),
            "max-at-nowhere",
        ),
    )
    .await;
    // Jane's request id, reused for somebody else.
    publish(
        &stack,
        key,
        &request(&id, &format!("Ola{tag}"), "ola@pickup.example"),
    )
    .await;

    let outcomes = read(&stack, "outcomes", 5).await;
    let by_request = |rid: &str| -> Vec<&Seen> {
        outcomes
            .iter()
            .filter(|o| o.headers.get("ce_correlationid").map(String::as_str) == Some(rid))
            .collect()
    };
    let for_id = by_request(&id);
    assert_eq!(for_id.len(), 3, "one outcome per delivery of the request");
    let reused = json_of(for_id[2]);
    assert_eq!(reused["status"], "rejected", "{reused}");
    assert_eq!(reused["reason"]["code"], "request_id_reused");
    let accepted = &for_id[..2];
    let first = json_of(accepted[0]);
    assert_eq!(first["status"], "accepted", "{first}");
    assert_eq!(first["request_id"], id.as_str());
    assert_eq!(first["request_source"], HR);
    assert_eq!(
        accepted[0].headers["ce_type"],
        "onboard.user.invitation.accepted.v1"
    );
    assert_eq!(accepted[0].headers["ce_correlationsource"], HR);
    let user_id = first["user_id"].as_str().unwrap().to_owned();
    assert_eq!(accepted[0].headers["ce_subject"], user_id);
    // The retry names the same user, with the same CloudEvents id (a consumer can drop it).
    assert_eq!(json_of(accepted[1])["user_id"], user_id.as_str());
    assert_eq!(accepted[1].headers["ce_id"], accepted[0].headers["ce_id"]);

    let taken = json_of(by_request(&format!("hr-req2-{tag}"))[0]);
    assert_eq!(taken["status"], "rejected", "{taken}");
    assert_eq!(taken["reason"]["code"], "username_taken");
    assert!(taken.get("user_id").is_none());
    let bad = json_of(by_request(&format!("hr-req3-{tag}"))[0]);
    assert_eq!(bad["reason"]["code"], "invalid_fields", "{bad}");
    assert!(bad["reason"]["fields"]["email"].is_string(), "{bad}");

    // The junk went to the dead-letter topic, unchanged, with machine-readable reasons.
    let dead = read(&stack, "dlq", 2).await;
    let reasons: Vec<&str> = dead
        .iter()
        .map(|d| d.headers["onboard_dlq_reason"].as_str())
        .collect();
    assert_eq!(reasons, ["not_json", "unsupported_type"]);
    assert_eq!(dead[0].value, b"this is not json");
    assert_eq!(
        dead[0].headers["onboard_dlq_topic"],
        topic(&stack, "requests")
    );

    // Jane was invited once, by the HR system, and mailed.
    let view = stack.user(&user_id).await;
    assert_eq!(view["state"], "CodeIssued", "{view}");
    assert_eq!(view["locale"], "de");
    assert_eq!(view["claims"]["given_name"], "Jane");
    stack.wait_for_mail(&jane).await;
    assert_eq!(stack.list("").await["items"].as_array().unwrap().len(), 1);
    let events = stack.cli(&["events", &user_id]);
    let first_event: Value =
        serde_json::from_slice(events.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first_event["metadata"]["actor_kind"], "upstream");
    assert_eq!(first_event["metadata"]["actor_id"], HR);
    assert_eq!(first_event["metadata"]["correlation_id"], id.as_str());
}

#[tokio::test]
async fn a_nul_byte_in_a_request_is_refused_and_the_requests_behind_it_are_handled() {
    let stack = Stack::start("intake_nul", Options::default()).await;
    crate::bad_input::refuse_as_data(&stack, "refused-by-db").await;
    stack.spawn("intake");
    let tag = unique("");
    let no_control = crate::bad_input::NO_CONTROL;
    let request = |id: &str, source: &str, data: Value| {
        json!({
            "specversion": "1.0", "id": id, "source": source,
            "type": "com.pickup.hr.user.invitation.requested", "data": data,
        })
        .to_string()
        .into_bytes()
    };
    let person = |name: &str| json!({"username": name, "email": format!("{name}@pickup.example")});
    // One key for all: one partition, each bad request in front of the next.
    let key = "same-partition";
    let ok_name = format!("ola{tag}");
    for value in [
        request(&format!("nul-id\u{0}{tag}"), HR, person(&format!("a{tag}"))),
        request(
            &format!("nul-source-{tag}"),
            "urn:pickup:\u{0}hr",
            person(&format!("b{tag}")),
        ),
        request(
            &format!("nul-name-{tag}"),
            HR,
            person(&format!("c\u{0}{tag}")),
        ),
        request(
            &format!("nul-claim-{tag}"),
            HR,
            json!({"username": format!("d{tag}"), "email": "d@pickup.example",
                   "claims": {"given\u{0}name": "D"}}),
        ),
        request(&format!("db-{tag}"), HR, person("refused-by-db")),
        request(&format!("ok-{tag}"), HR, person(&ok_name)),
    ] {
        publish(&stack, key, &value).await;
    }

    // The request with a NUL in a field is rejected, naming the field; so is the claim.
    let outcomes = read(&stack, "outcomes", 3).await;
    let outcome = |rid: String| -> Value {
        let seen = outcomes
            .iter()
            .find(|o| o.headers.get("ce_correlationid") == Some(&rid))
            .unwrap_or_else(|| panic!("no outcome for {rid}"));
        json_of(seen)
    };
    let name = outcome(format!("nul-name-{tag}"));
    assert_eq!(name["status"], "rejected", "{name}");
    assert_eq!(name["reason"]["code"], "invalid_fields", "{name}");
    assert!(
        name["reason"]["fields"]["username"]
            .as_str()
            .unwrap()
            .starts_with(&format!("username {no_control}")),
        "{name}"
    );
    let claim = outcome(format!("nul-claim-{tag}"));
    assert!(
        claim["reason"]["fields"]["claims"]
            .as_str()
            .unwrap()
            .starts_with("the key of claims.given\\0name"),
        "{claim}"
    );
    // The last request, behind all of them on the same partition, is handled.
    let ok = outcome(format!("ok-{tag}"));
    assert_eq!(ok["status"], "accepted", "{ok}");
    let view = stack.user(ok["user_id"].as_str().unwrap()).await;
    assert_eq!(view["username"], ok_name.as_str(), "{view}");

    // A NUL in the id or the source, and a request the database refused, are dead letters,
    // each with its reason.
    let dead = read(&stack, "dlq", 3).await;
    let reasons: Vec<(&str, &str)> = dead
        .iter()
        .map(|d| {
            (
                d.headers["onboard_dlq_reason"].as_str(),
                d.headers["onboard_dlq_detail"].as_str(),
            )
        })
        .collect();
    assert_eq!(reasons[0].0, "not_a_cloudevent", "{reasons:?}");
    assert!(
        reasons[0]
            .1
            .starts_with(&format!("the CloudEvents attribute `id` {no_control}")),
        "{reasons:?}"
    );
    assert_eq!(reasons[1].0, "not_a_cloudevent", "{reasons:?}");
    assert!(
        reasons[1]
            .1
            .starts_with(&format!("the CloudEvents attribute `source` {no_control}")),
        "{reasons:?}"
    );
    assert_eq!(reasons[2].0, "unstorable", "{reasons:?}");
    assert!(reasons[2].1.contains("SQLSTATE 22023"), "{reasons:?}");
    assert_eq!(
        dead[2].value,
        request(&format!("db-{tag}"), HR, person("refused-by-db")),
        "the record is kept unchanged"
    );
    // Only the good request invited anybody.
    assert_eq!(stack.list("").await["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn when_one_of_two_intakes_is_killed_the_other_handles_its_requests() {
    let stack = Stack::start("intake_two", Options::default()).await;
    stack.spawn_named("intake-a", "intake", &[]);
    stack.spawn_named("intake-b", "intake", &[]);
    let tag = unique("");
    let send = |n: usize, round: &'static str| send_round(&stack, &tag, n, round);
    send(10, "first").await;
    let before = read(&stack, "outcomes", 10).await;
    assert!(before.iter().all(|o| json_of(o)["status"] == "accepted"));

    // One intake dies without leaving the group. The group hands its partition to the other,
    // whose watchdog rejoins if the rebalance left a partition to nobody (on tansu it can).
    stack.signal("intake-a", "KILL");
    send(10, "second").await;
    // A request handled again after the rebalance is answered again (it invites nobody twice):
    // wait for the second round's requests, not for a number of outcomes.
    let second: Vec<String> = (0..10).map(|i| format!("hr-second{i}-{tag}")).collect();
    let answered = |seen: &[Seen]| -> std::collections::HashSet<String> {
        seen.iter()
            .map(|o| json_of(o)["request_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = read_until(
        &stack,
        "outcomes",
        "an outcome for each second request",
        |seen| {
            let answered = answered(seen);
            second.iter().all(|id| answered.contains(id))
        },
    )
    .await;
    for o in &all {
        let o = json_of(o);
        assert_eq!(o["status"], "accepted", "{o}");
    }
}

#[tokio::test]
async fn requests_handled_side_by_side_keep_the_earlier_request_the_winner_of_a_name_or_an_id() {
    let stack = Stack::start("intake_lanes", Options::default()).await;
    // Many requests in hand at once: the order between requests for one name or one id must
    // still be the order they were published in.
    stack.spawn_with_env("intake", &[("ONBOARD__INTAKE__CONCURRENCY", "64")]);
    let tag = unique("");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("enable.idempotence", "true")
        .create()
        .expect("kafka producer");
    let mut records = Vec::new();
    for i in 0..60 {
        // Two requests for one name (in two spellings) on one key, so on one partition: the
        // first asks for `Name{i}`, the second for `name{i}`.
        let key = format!("pair-{i}-{tag}");
        let name = format!("Name{i}x{tag}");
        let first = request(
            &format!("a{i}-{tag}"),
            &name,
            &format!("a{i}.{tag}@pickup.example"),
        );
        let second = request(
            &format!("b{i}-{tag}"),
            &name.to_lowercase(),
            &format!("b{i}.{tag}@pickup.example"),
        );
        records.push((key.clone(), first));
        records.push((key.clone(), second));
        if i < 10 {
            // The first request's id again, for another name.
            let reused = request(
                &format!("a{i}-{tag}"),
                &format!("other{i}x{tag}"),
                &format!("c{i}.{tag}@pickup.example"),
            );
            records.push((key, reused));
        }
    }
    for i in 0..40 {
        let id = format!("solo{i}-{tag}");
        let name = format!("solo{i}x{tag}");
        records.push((
            id.clone(),
            request(&id, &name, &format!("{name}@pickup.example")),
        ));
    }
    let topic = topic(&stack, "requests");
    let sends: Vec<_> = records
        .iter()
        .map(|(key, value)| {
            producer.send(
                FutureRecord::to(&topic).key(key).payload(value),
                Duration::from_secs(30),
            )
        })
        .collect();
    for sent in futures::future::join_all(sends).await {
        sent.expect("the broker takes the request");
    }

    let outcomes = read(&stack, "outcomes", records.len()).await;
    let mut by_request: HashMap<String, Vec<Value>> = HashMap::new();
    for o in &outcomes {
        let v = json_of(o);
        by_request
            .entry(v["request_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(v);
    }
    let status = |o: &Value| -> String {
        o["reason"]["code"]
            .as_str()
            .unwrap_or(o["status"].as_str().unwrap())
            .to_owned()
    };
    for i in 0..60 {
        let first = &by_request[&format!("a{i}-{tag}")];
        assert_eq!(status(&first[0]), "accepted", "{first:?}");
        let second = &by_request[&format!("b{i}-{tag}")];
        assert_eq!(second.len(), 1, "{second:?}");
        assert_eq!(status(&second[0]), "username_taken", "{second:?}");
        if i < 10 {
            assert_eq!(first.len(), 2, "two requests with this id: {first:?}");
            assert_eq!(status(&first[1]), "request_id_reused", "{first:?}");
        } else {
            assert_eq!(first.len(), 1, "{first:?}");
        }
        // The name belongs to the first request's user, as published.
        let user = stack.user(first[0]["user_id"].as_str().unwrap()).await;
        assert_eq!(user["username"], format!("Name{i}x{tag}"), "{user}");
        assert_eq!(
            user["email"],
            format!("a{i}.{tag}@pickup.example"),
            "{user}"
        );
    }
    for i in 0..40 {
        let solo = &by_request[&format!("solo{i}-{tag}")];
        assert_eq!(
            solo.iter().map(status).collect::<Vec<_>>(),
            ["accepted"],
            "{solo:?}"
        );
    }
}

/// The intake's consumer group, as the stack's configuration names it.
fn intake_group(stack: &Stack) -> String {
    let config = std::fs::read_to_string(&stack.config).expect("the stack's configuration");
    let line = config
        .lines()
        .find(|l| l.starts_with("group = \"e2e-intake-"))
        .expect("[intake] group");
    line.trim_start_matches("group = \"")
        .trim_end_matches('"')
        .to_owned()
}

#[tokio::test]
async fn after_a_broker_loss_offsets_committed_for_the_lost_topic_never_make_the_intake_skip_a_request(
) {
    use onboarding_e2e::broker::Broker;
    use rdkafka::consumer::{BaseConsumer, CommitMode};
    use rdkafka::{Offset, TopicPartitionList};

    let mut broker = Broker::start("broker-intake");
    let stack = Stack::start(
        "intake_loss",
        Options {
            kafka: Some(broker.addr.clone()),
            ..Options::default()
        },
    )
    .await;
    stack.spawn("intake");
    let tag = unique("");
    let send = |n: usize, round: &'static str| send_round(&stack, &tag, n, round);
    send(20, "before").await;
    let before = read(&stack, "outcomes", 20).await;
    assert!(before.iter().all(|o| json_of(o)["status"] == "accepted"));

    // The in-memory broker dies and comes back empty. The operator recreates the intake's topics
    // (`onboard migrate`, as after any loss); the relay recreates the event topic and counts a new
    // generation; the intake lives through it and reads on in the new generation's group.
    broker.restart_empty();
    let migrate = stack.cli(&["migrate"]);
    assert!(
        migrate.status.success(),
        "onboard migrate: {}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while !stack
        .logs_of("intake")
        .contains("building a new consumer in the group of this generation")
    {
        assert!(
            Instant::now() < deadline,
            "the intake did not move to the new generation within 90 s; logs in {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A consumer that lived through the loss commits the offsets of the lost topic into its group
    // when it gets to it (its auto-commit once the broker is back, a revocation, its close): far
    // beyond the new topic's end. Here as a client of the configured group would.
    let group = intake_group(&stack);
    let stale: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer");
    let mut offsets = TopicPartitionList::new();
    for partition in 0..2 {
        offsets
            .add_partition_offset(&topic(&stack, "requests"), partition, Offset::Offset(1_000))
            .unwrap();
    }
    stale
        .commit(&offsets, CommitMode::Sync)
        .expect("the broker takes the commit");
    drop(stale);

    // The intake is restarted (a new release, an orchestrator), and the HR system goes on.
    stack.signal("intake", "TERM");
    stack.spawn("intake");
    send(20, "after").await;
    let outcomes = read(&stack, "outcomes", 20).await;
    let accepted: HashMap<String, String> = outcomes
        .iter()
        .map(json_of)
        .filter(|o| o["status"] == "accepted")
        .map(|o| {
            (
                o["request_id"].as_str().unwrap().to_owned(),
                o["user_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for i in 0..20 {
        let id = format!("hr-after{i}-{tag}");
        let user = accepted.get(&id).unwrap_or_else(|| {
            panic!(
                "no accepted outcome for {id}; logs in {}",
                stack.dir.display()
            )
        });
        let view = stack.user(user).await;
        assert_eq!(
            view["username"],
            format!("after{i}x{tag}").as_str(),
            "{view}"
        );
        assert_eq!(view["state"], "CodeIssued", "{view}");
    }
}
