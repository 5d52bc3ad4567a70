//! The machine's limits that the engine's figures are set beside: argon2id on every core, the
//! SMTP server from one plain client, the broker from rdkafka. (PostgreSQL's append limit is
//! pgbench's, run by tests/bench/run.)

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use argon2::password_hash::{PasswordHasher as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;

use crate::sink::Sink;

fn write(out: &Path, value: serde_json::Value) -> anyhow::Result<()> {
    println!("{value}");
    std::fs::write(out, value.to_string()).with_context(|| format!("writing {}", out.display()))
}

/// Hashes on one thread per core for `seconds`, at the engine's parameters
/// (`onboarding_store::Argon2Hasher::new`: m = 19 456 KiB, t = 2, p = 1).
pub fn argon2(seconds: f64, out: &Path) -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let params = Params::new(19_456, 2, 1, None).expect("OWASP parameters are valid");
                let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                let mut n = 0u64;
                while Instant::now() < until {
                    let salt = SaltString::generate(&mut rand::rngs::OsRng);
                    argon
                        .hash_password(b"correct horse battery staple", &salt)
                        .expect("hashing works");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let hashes: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    let rate = hashes as f64 / started.elapsed().as_secs_f64();
    write(
        out,
        json!({"hashes_per_second": rate, "threads": threads, "m_kib": 19456, "t": 2, "p": 1}),
    )
}

/// Counts how often `op` runs in `seconds` (checking the clock every 64 runs); runs a second.
fn rate(seconds: f64, mut op: impl FnMut()) -> f64 {
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let mut n = 0u64;
    while Instant::now() < until {
        for _ in 0..64 {
            op();
        }
        n += 64;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Sealing personal data with the store's code (`onboarding_store::PersonalKeys`, docs/adr/0030),
/// on one thread, without a key-encryption key and with one: drawing an account's data key (once
/// per account, at her first sealed event: 32 random bytes, wrapped by the KEK when there is
/// one), sealing a `UserInvited`'s personal fields (JSON, AES-256-GCM, base64), and opening them
/// as a streaming reader does (the key unwrapped, the fields opened back into the payload). CPU
/// only: the key row's INSERT in the append's transaction and the key's lookup are not in it.
pub fn seal(seconds: f64, out: &Path) -> anyhow::Result<()> {
    use onboarding_store::personal::ToOpen;
    use onboarding_store::{Erased, PersonalKeys};
    let fields = match json!({
        "username": "jane.doe",
        "email": "jane.doe@pickup.example",
        "claims": {"given_name": "Jane", "family_name": "Doe", "name": "Jane Doe"}
    }) {
        serde_json::Value::Object(fields) => fields,
        _ => unreachable!("an object literal"),
    };
    let mut kek = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut kek);
    let each = seconds / 6.0;
    let mut results = serde_json::Map::new();
    for (mode, keys) in [
        ("no_kek", PersonalKeys::default()),
        (
            "kek",
            PersonalKeys::with_kek(&kek).context("a 32-byte key-encryption key")?,
        ),
    ] {
        let draws = rate(each, || {
            std::hint::black_box(keys.draw(uuid::Uuid::new_v4()));
        });
        let user_id = uuid::Uuid::new_v4();
        let aggregate_id = user_id.to_string();
        let key = keys.draw(user_id);
        let seals = rate(each, || {
            std::hint::black_box(key.seal(&aggregate_id, "UserInvited", &fields));
        });
        let sealed = key.seal(&aggregate_id, "UserInvited", &fields);
        let stored = (key.stored(), keys.wrapped_by());
        let mut failed = None;
        let opens = rate(each, || {
            let mut payload = json!({"UserInvited": {"domain": "PRIMARY", "sealed": sealed}});
            let mut row = ToOpen {
                aggregate_id: &aggregate_id,
                event_type: "UserInvited",
                payload: &mut payload,
            };
            if let Err(e) = keys.open_with_key(&mut row, Some(stored), Erased::Text) {
                failed = Some(e.to_string());
            } else if payload["UserInvited"]["email"] != "jane.doe@pickup.example" {
                failed = Some("the opened payload does not hold the address sealed".into());
            }
        });
        if let Some(e) = failed {
            bail!("opening what was sealed failed ({mode}): {e}");
        }
        let micros = |per_second: f64| 1e6 / per_second;
        results.insert(
            mode.into(),
            json!({
                "draws_per_second": draws, "draw_us": micros(draws),
                "seals_per_second": seals, "seal_us": micros(seals),
                "opens_per_second": opens, "open_us": micros(opens),
            }),
        );
    }
    results.insert("seconds".into(), json!(seconds));
    write(out, serde_json::Value::Object(results))
}

/// One plain, sequential SMTP client (`TCP_NODELAY`, one command at a time, no pipelining) on
/// one connection, sending mails of an invitation's size; counted by smtp-sink itself.
pub fn smtp(addr: &str, seconds: f64, sink_log: &Path, out: &Path) -> anyhow::Result<()> {
    let sink = Sink::new(sink_log);
    let before = sink.accepted()?;
    let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let reply = |reader: &mut BufReader<TcpStream>| -> anyhow::Result<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                bail!("the SMTP server closed the connection");
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        if !(all.starts_with('2') || all.starts_with('3')) {
            bail!("the SMTP server refused: {all}");
        }
        Ok(all)
    };
    reply(&mut reader)?;
    writer.write_all(b"EHLO bench.example\r\n")?;
    reply(&mut reader)?;
    // About the size of an invitation (text and HTML parts).
    let body = format!(
        "From: bench@bench.example\r\nTo: someone@pickup.example\r\nSubject: bench\r\n\r\n{}\r\n",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n".repeat(60)
    );
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut sent = 0u64;
    while Instant::now() < until {
        writer.write_all(b"MAIL FROM:<bench@bench.example>\r\n")?;
        reply(&mut reader)?;
        writer.write_all(format!("RCPT TO:<u{sent}@pickup.example>\r\n").as_bytes())?;
        reply(&mut reader)?;
        writer.write_all(b"DATA\r\n")?;
        reply(&mut reader)?;
        writer.write_all(body.as_bytes())?;
        writer.write_all(b".\r\n")?;
        reply(&mut reader)?;
        sent += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    writer.write_all(b"QUIT\r\n")?;
    let _ = reply(&mut reader);
    std::thread::sleep(Duration::from_millis(300));
    let counted = sink.accepted()? - before;
    if counted < sent {
        bail!("the client sent {sent} mails but smtp-sink counted {counted}");
    }
    write(
        out,
        json!({"mails_per_second": sent as f64 / elapsed, "mails": sent, "counted_by_sink": counted, "message_bytes": body.len()}),
    )
}

/// Produces records of an event's size with the relay's producer settings (idempotent,
/// `acks=all`, up to `kafka.relay_batch_records`'s default of 100 records a batch, 1 ms linger:
/// ADR 0036, 0044) and, for comparison, one record per batch (ADR 0004) and rdkafka's own
/// batching.
pub async fn kafka(brokers: &str, topic: &str, seconds: f64, out: &Path) -> anyhow::Result<()> {
    let relay = produce(brokers, topic, seconds, Some((100, 1))).await?;
    let one_per_batch = produce(brokers, topic, seconds, Some((1, 0))).await?;
    let batched = produce(brokers, topic, seconds, None).await?;
    write(
        out,
        json!({"records_per_second_relay_batches": relay,
               "records_per_second_one_per_batch": one_per_batch,
               "records_per_second_batched": batched}),
    )
}

async fn produce(
    brokers: &str,
    topic: &str,
    seconds: f64,
    // Records a batch at most and the linger (ms); none: librdkafka's defaults, no linger.
    batches: Option<(u32, u32)>,
) -> anyhow::Result<f64> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0");
    if let Some((records, linger)) = batches {
        config
            .set("batch.num.messages", records.to_string())
            .set("linger.ms", linger.to_string());
    }
    let producer: FutureProducer = config.create().context("creating the producer")?;
    let payload = vec![b'x'; 600];
    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut acked = 0u64;
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut i = 0usize;
    use futures::StreamExt;
    while Instant::now() < until {
        while in_flight.len() < 1000 {
            let key = &keys[i % keys.len()];
            i += 1;
            let record = FutureRecord::to(topic).key(key).payload(&payload);
            in_flight.push(producer.send(record, Duration::from_secs(30)));
        }
        if let Some(done) = in_flight.next().await {
            done.map_err(|(e, _)| e)
                .context("a record was not acknowledged")?;
            acked += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    while let Some(done) = in_flight.next().await {
        done.map_err(|(e, _)| e)
            .context("a record was not acknowledged")?;
    }
    Ok(acked as f64 / elapsed)
}

/// The engine's SMTP client against lettre's pooled transport (what the worker used before ADR
/// 0022), the same invitation mail to the same server; one sender and 32 at once, each with as
/// many connections as senders.
pub async fn mailer(host: &str, port: u16, seconds: f64, out: &Path) -> anyhow::Result<()> {
    use std::num::NonZeroU32;
    use std::sync::Arc;

    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
    use onboarding_email_worker::{Invitation, Mailer};

    let settings = onboarding_config::Settings::from_toml_str(&format!(
        r#"
        [output_adapter.email]
        from_address = "noreply@pickup.example"
        hostname = "{host}"
        port = {port}
        enable_start_tls = false
        enable_authentication = false
        [database]
        url = "postgres://postgres@127.0.0.1/unused"
        [kafka]
        bootstrap_servers = "127.0.0.1:9092"
        [gateway]
        public_base_url = "https://id.pickup.example"
        [codes]
        active_key = "k1"
        [[codes.keys]]
        id = "k1"
        secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
        "#
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut results = serde_json::Map::new();
    for senders in [1u32, 32] {
        let connections = NonZeroU32::new(senders).expect("positive");
        let mailer = Arc::new(Mailer::new(
            &settings.output_adapter.email,
            "Pickup",
            connections,
        )?);
        let rendered = Arc::new(mailer.render(&Invitation {
            to: "jane@pickup.example",
            username: "jane",
            link: "https://id.pickup.example/confirm?code=0123456789abcdef0123456789abcdef",
            revoke_link: "https://id.pickup.example/revoke?code=0123456789abcdef0123456789abcdef",
            locale: None,
            time_zone: None,
            expires_at: chrono::Utc::now(),
        })?);
        let engine = run_senders(senders, seconds, {
            let (mailer, rendered) = (mailer.clone(), rendered.clone());
            move |i| {
                let (mailer, rendered) = (mailer.clone(), rendered.clone());
                async move {
                    mailer
                        .send_as(
                            &format!("u{i}@pickup.example"),
                            &rendered,
                            format!("<{i}@bench>"),
                        )
                        .await
                        .map(|_| ())
                        .map_err(anyhow::Error::from)
                }
            }
        })
        .await?;
        // The same message as lettre builds it for the engine, through lettre's own pool.
        let transport: Arc<AsyncSmtpTransport<Tokio1Executor>> = Arc::new(
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                .port(port)
                .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(senders))
                .build(),
        );
        let lettre = run_senders(senders, seconds, {
            let (transport, rendered) = (transport.clone(), rendered.clone());
            move |i| {
                let (transport, rendered) = (transport.clone(), rendered.clone());
                async move {
                    let message = lettre::Message::builder()
                        .from("noreply@pickup.example".parse()?)
                        .to(format!("u{i}@pickup.example").parse()?)
                        .subject(rendered.subject.clone())
                        .multipart(lettre::message::MultiPart::alternative_plain_html(
                            rendered.text.clone(),
                            rendered.html.clone(),
                        ))?;
                    transport.send(message).await?;
                    Ok(())
                }
            }
        })
        .await?;
        results.insert(format!("engine_mails_per_second_{senders}"), json!(engine));
        results.insert(
            format!("lettre_pool_mails_per_second_{senders}"),
            json!(lettre),
        );
    }
    write(out, serde_json::Value::Object(results))
}

/// `senders` tasks calling `send` back to back for `seconds`; calls a second.
async fn run_senders<F, Fut>(senders: u32, seconds: f64, send: F) -> anyhow::Result<f64>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            let send = send.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    send(u64::from(s) * 1_000_000 + n).await?;
                    n += 1;
                }
                Ok::<_, anyhow::Error>(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
