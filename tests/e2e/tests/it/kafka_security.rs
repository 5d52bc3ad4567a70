//! The engine's Kafka clients over TLS, and clear failures when TLS or SASL is wrong, against a
//! tansu of the test's own. socat terminates TLS in front of it: tansu 0.6 accepts `--cert` and
//! `--key` but serves plain TCP. tansu 0.6 with memory storage logs no SASL client in (PLAIN is
//! not built into it, SCRAM users cannot be stored), so SASL is tested for its refusals only;
//! see docs/operations.md.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use onboarding_e2e::{free_port, make_certificates, unique, Broker, BrokerOptions, Options, Stack};

const PASSWORD: &str = "Pickup rides at dawn 42";

/// A CA, and a certificate for 127.0.0.1 it signed: (CA, certificate, key).
fn certificates(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join("onboard-e2e").join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir)
}

/// `onboard migrate` with extra settings, and how long it took.
fn migrate(stack: &Stack, env: &[(&str, &str)]) -> (Output, Duration) {
    let started = Instant::now();
    let out = stack.cli_with_env(&["migrate"], env);
    (out, started.elapsed())
}

/// Asserts that `onboard migrate` failed and its error says `expected`; returns the error.
fn refused(stack: &Stack, env: &[(&str, &str)], expected: &str) -> String {
    let (out, took) = migrate(stack, env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "migrate succeeded with {env:?}:\n{stderr}"
    );
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no `error:` line after {took:?}:\n{stderr}"))
        .to_owned();
    assert!(
        error.contains("cannot create Kafka topic") && error.contains(expected),
        "with {env:?}, after {took:?}, the error does not say `{expected}`:\n{error}"
    );
    format!("{stderr}{}", String::from_utf8_lossy(&out.stdout))
}

/// Starts a relay with `env` that serves `/readyz` on a port of its own; returns its address.
fn spawn_relay(stack: &Stack, env: &[(&str, &str)]) -> String {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = env.to_vec();
    env.push(("ONBOARD__OBSERVABILITY__METRICS_BIND", &addr));
    stack.spawn_with_env("relay", &env);
    format!("http://{addr}")
}

/// Polls `/readyz` at `base` until its Kafka check mentions `expected`: the status and the
/// answer.
async fn readiness_saying(stack: &Stack, base: &str, expected: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = Value::Null;
    loop {
        if let Ok(r) = stack.http.get(format!("{base}/readyz")).send().await {
            let status = r.status().as_u16();
            last = r.json().await.unwrap_or_default();
            if last["checks"]["kafka"]
                .as_str()
                .is_some_and(|k| k.contains(expected))
            {
                return (status, last);
            }
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not say `{expected}` within 40 s; last answer: {last}; logs in {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn the_whole_onboarding_runs_over_tls_to_the_broker() {
    let (ca, cert, key) = certificates("kafka-tls-certs-");
    let broker = Broker::start_with(
        "kafka-tls-",
        BrokerOptions {
            tls: Some((cert, key)),
            ..BrokerOptions::default()
        },
    );
    // migrate (topics), relay and email worker use TLS.
    let stack = Stack::start(
        "kafkatls",
        Options {
            kafka: Some(broker.addr.clone()),
            kafka_settings: format!(
                "security_protocol = \"ssl\"\nssl_ca_file = \"{}\"",
                ca.display()
            ),
            ..Options::default()
        },
    )
    .await;

    // The relay publishes the invitation over TLS, the worker consumes it over TLS: the mail.
    let (id, email, mail) = stack.invite_mailed("Tls").await;
    let (status, body) = stack.submit_password(&mail.code(), PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.user(&id).await["state"], "Active");
    // The activation makes the same trip: the welcome mail.
    let mails = stack.wait_for_mails(&email, 2).await;
    assert_eq!(mails[1].subject(), "Pickup: your account is ready");
}

#[tokio::test]
async fn tls_mistakes_are_named_by_migrate_and_readyz_within_seconds() {
    let (ca, cert, key) = certificates("kafka-tlsbad-certs-");
    let broker = Broker::start_with(
        "kafka-tlsbad-",
        BrokerOptions {
            tls: Some((cert, key)),
            ..BrokerOptions::default()
        },
    );
    // A stack on the shared plain broker; each case points it elsewhere.
    let stack = Stack::new("kafkatlsbad", Options::default()).await;
    let tls = broker.addr.as_str();
    let ca = ca.to_str().unwrap();
    let untrusted = [
        ("ONBOARD__KAFKA__BOOTSTRAP_SERVERS", tls),
        ("ONBOARD__KAFKA__SECURITY_PROTOCOL", "ssl"),
    ];
    std::thread::scope(|s| {
        // The broker's certificate is not signed by a CA the client trusts (no ssl_ca_file: the
        // system's trust store).
        s.spawn(|| refused(&stack, &untrusted, "certificate verify failed"));
        // TLS against a plain listener: tansu never answers the handshake.
        s.spawn(|| {
            refused(
                &stack,
                &[
                    ("ONBOARD__KAFKA__SECURITY_PROTOCOL", "ssl"),
                    ("ONBOARD__KAFKA__SSL_CA_FILE", ca),
                ],
                "did not answer the TLS handshake: is it a TLS listener?",
            )
        });
        // Plain Kafka against the TLS listener.
        s.spawn(|| {
            refused(
                &stack,
                &[("ONBOARD__KAFKA__BOOTSTRAP_SERVERS", tls)],
                "hung up on the first request",
            )
        });
    });
    // With the CA it works: the failures above are the certificate's and the protocol's.
    let (out, _) = migrate(
        &stack,
        &[
            ("ONBOARD__KAFKA__BOOTSTRAP_SERVERS", tls),
            ("ONBOARD__KAFKA__SECURITY_PROTOCOL", "ssl"),
            ("ONBOARD__KAFKA__SSL_CA_FILE", ca),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The relay's readiness names Kafka as missing, and why.
    let relay = spawn_relay(&stack, &untrusted);
    let (status, body) = readiness_saying(&stack, &relay, "certificate verify failed").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["missing"], serde_json::json!(["kafka"]), "{body}");
    assert_eq!(body["checks"]["postgres"], "ok", "{body}");
    assert!(
        body["checks"]["kafka"]
            .as_str()
            .unwrap()
            .starts_with("kafka unreachable: ssl://"),
        "{body}"
    );
}

#[tokio::test]
async fn sasl_refusals_are_named_and_the_password_is_never_shown() {
    let (ca, cert, key) = certificates("kafka-sasl-certs-");
    // Authentication required, over TLS (SASL_SSL).
    let broker = Broker::start_with(
        "kafka-sasl-",
        BrokerOptions {
            authentication: true,
            tls: Some((cert, key)),
        },
    );
    let stack = Stack::new("kafkasasl", Options::default()).await;
    let password = unique("kafka-password-");
    let password_file = stack.dir.join("kafka-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let (tls, ca) = (broker.addr.as_str(), ca.to_str().unwrap());
    let file = password_file.to_str().unwrap();
    let sasl = |mechanism: &'static str| {
        vec![
            ("ONBOARD__KAFKA__BOOTSTRAP_SERVERS", tls),
            ("ONBOARD__KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
            ("ONBOARD__KAFKA__SSL_CA_FILE", ca),
            ("ONBOARD__KAFKA__SASL_MECHANISM", mechanism),
            ("ONBOARD__KAFKA__SASL_USERNAME", "onboard"),
        ]
    };
    let mut scram = sasl("SCRAM-SHA-512");
    scram.push(("ONBOARD__KAFKA__SASL_PASSWORD_FILE", file));
    let mut plain = sasl("PLAIN");
    plain.push(("ONBOARD__KAFKA__SASL_PASSWORD", &password));

    let outputs = std::thread::scope(|s| {
        // SCRAM: the broker knows no such user and password (what a wrong password gets).
        let scram = s.spawn(|| {
            refused(
                &stack,
                &scram,
                "SASL authentication error: SASL SCRAM authentication failed",
            )
        });
        // PLAIN: the broker does not offer it.
        let plain = s.spawn(|| refused(&stack, &plain, "SASL PLAIN mechanism handshake failed"));
        [scram.join().unwrap(), plain.join().unwrap()]
    });
    for output in outputs {
        assert!(!output.contains(&password), "{output}");
    }

    // The relay's readiness names the refused login, without the password; the relay and the
    // email worker keep retrying and log the refusal, without the password too.
    let relay = spawn_relay(&stack, &scram);
    stack.spawn_with_env("email-worker", &scram);
    let (status, body) = readiness_saying(&stack, &relay, "SASL authentication error").await;
    assert_eq!(status, 503, "{body}");
    assert!(!body.to_string().contains(&password), "{body}");
    for component in ["relay", "email-worker"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        let logs = loop {
            let logs = stack.logs_of(component);
            if logs.contains("SASL authentication error") {
                break logs;
            }
            assert!(
                Instant::now() < deadline,
                "{component} logged no SASL refusal within 30 s:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert!(!logs.contains(&password), "{logs}");
    }
}
