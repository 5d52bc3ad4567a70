//! SMTP with implicit TLS and AUTH against a MailDev of the test's own, and with STARTTLS and
//! AUTH LOGIN or PLAIN against the aiosmtpd gate acting as a submission server; each server's
//! certificate is signed by a CA the test generates and the worker is told to trust (`ca_file`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use onboarding_e2e::{free_port, make_certificates, unique, Options, Services, SmtpGate, Stack};

/// MailDev with implicit TLS and AUTH on ports of its own.
struct SecureMailDev {
    smtp: u16,
    web: String,
    child: Child,
}

impl SecureMailDev {
    async fn start(dir: &Path, cert: &Path, key: &Path, user: &str, pass: &str) -> Self {
        let (smtp, web) = (free_port(), free_port());
        let log = std::fs::File::create(dir.join("maildev-tls.log")).unwrap();
        let child = Command::new(std::env::var("TEST_MAILDEV_BIN").expect("TEST_MAILDEV_BIN"))
            .args(["--ip", "127.0.0.1", "--web-ip", "127.0.0.1"])
            .args(["-s", &smtp.to_string(), "-w", &web.to_string()])
            .arg("--incoming-secure")
            .arg("--incoming-cert")
            .arg(cert)
            .arg("--incoming-key")
            .arg(key)
            .args(["--incoming-user", user, "--incoming-pass", pass])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start maildev");
        let me = Self {
            smtp,
            web: format!("http://127.0.0.1:{web}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = reqwest::get(format!("{}/api/email", me.web)).await.is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", smtp)).is_ok();
            if up {
                return me;
            }
            assert!(
                Instant::now() < deadline,
                "the TLS MailDev did not start within 60 s; see {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn mails_to(&self, address: &str) -> Vec<Value> {
        let all: Vec<Value> = reqwest::get(format!("{}/api/email", self.web))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        all.into_iter()
            .filter(|m| {
                m["to"]
                    .as_array()
                    .is_some_and(|to| to.iter().any(|t| t["address"] == address))
            })
            .collect()
    }
}

impl Drop for SecureMailDev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn implicit_tls_with_auth_delivers_and_a_wrong_password_is_a_clear_error() {
    let dir = std::env::temp_dir()
        .join("onboard-e2e")
        .join(unique("smtptls-certs-"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = make_certificates(&dir);
    let password = unique("pw-");
    let maildev = SecureMailDev::start(&dir, &cert, &key, "onboard", &password).await;

    let stack = Stack::new(
        "smtptls",
        Options {
            smtp_port: Some(maildev.smtp),
            ..Options::default()
        },
    )
    .await;
    let ca = ca.to_str().unwrap().to_owned();
    let tls_env = |pass: &str| -> Vec<(&'static str, String)> {
        vec![
            (
                "ONBOARD__OUTPUT_ADAPTER__EMAIL__HOSTNAME",
                "localhost".into(),
            ),
            ("ONBOARD__OUTPUT_ADAPTER__EMAIL__ENABLE_TLS", "true".into()),
            (
                "ONBOARD__OUTPUT_ADAPTER__EMAIL__ENABLE_AUTHENTICATION",
                "true".into(),
            ),
            ("ONBOARD__OUTPUT_ADAPTER__EMAIL__USERNAME", "onboard".into()),
            ("ONBOARD__OUTPUT_ADAPTER__EMAIL__PASSWORD", pass.into()),
            ("ONBOARD__OUTPUT_ADAPTER__EMAIL__CA_FILE", ca.clone()),
        ]
    };
    let env = tls_env(&password);
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for c in ["gateway", "relay", "scheduler"] {
        stack.spawn(c);
    }
    stack.spawn_with_env("email-worker", &env_ref);
    stack.wait_ready().await;

    // An invitation goes out over TLS, logged in.
    let email = format!("{}@pickup.example", unique("tls."));
    let id = stack.invite("Secure", &email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mail = loop {
        if let Some(m) = maildev.mails_to(&email).await.pop() {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no mail over TLS within 60 s; logs in {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let view = stack.wait_for_delivery(&id, "sent").await;
    assert_eq!(
        view["email_delivery"]["message_id"].as_str(),
        mail["headers"]["message-id"].as_str()
    );

    // `onboard email test-send` reports the server's answer ...
    let test_send = |env: &[(&'static str, String)]| {
        Command::new(&stack.services.onboard)
            .arg("--config")
            .arg(&stack.config)
            .args(["email", "test-send", "tls-check@pickup.example"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("ONBOARD_LOG", "warn")
            .output()
            .expect("run onboard")
    };
    let ok = test_send(&tls_env(&password));
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.starts_with("accepted: 250"), "{out}");

    // ... and a wrong password is refused with a message that says so, without the password.
    let wrong = unique("wrong-");
    let bad = test_send(&tls_env(&wrong));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        err.contains("did not accept") && err.contains("535"),
        "the error names the refused login: {err}"
    );
    assert!(!err.contains(&wrong) && !err.contains(&password), "{err}");

    // Without the CA the server's certificate is not trusted: a clear TLS error.
    let mut untrusted = tls_env(&password);
    untrusted.retain(|(k, _)| !k.ends_with("CA_FILE"));
    let bad = test_send(&untrusted);
    let err = String::from_utf8_lossy(&bad.stderr).to_lowercase();
    assert!(!bad.status.success());
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test]
async fn starttls_required_refuses_a_server_without_it_and_opportunistic_sends_in_plain() {
    // The shared MailDev offers no STARTTLS.
    let stack = Stack::new("starttls", Options::default()).await;
    let test_send = |env: &[(&str, &str)], to: &str| {
        Command::new(&stack.services.onboard)
            .arg("--config")
            .arg(&stack.config)
            .args(["email", "test-send", to])
            .envs(env.iter().copied())
            .env("ONBOARD_LOG", "warn")
            .output()
            .expect("run onboard")
    };
    let required = format!("{}@pickup.example", unique("starttls."));
    let out = test_send(
        &[("ONBOARD__OUTPUT_ADAPTER__EMAIL__ENABLE_START_TLS", "true")],
        &required,
    );
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!out.status.success());
    assert!(
        err.contains("did not accept") && err.contains("tls"),
        "{err}"
    );
    assert!(
        stack.mails_to(&required).await.is_empty(),
        "nothing is sent in plain text"
    );

    let opportunistic = format!("{}@pickup.example", unique("opportunistic."));
    let out = test_send(
        &[(
            "ONBOARD__OUTPUT_ADAPTER__EMAIL__OPPORTUNISTIC_START_TLS",
            "true",
        )],
        &opportunistic,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stack.wait_for_mail(&opportunistic).await;
}

#[tokio::test]
async fn starttls_and_auth_against_a_submission_server_that_requires_them() {
    let dir = std::env::temp_dir()
        .join("onboard-e2e")
        .join(unique("starttls-certs-"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = make_certificates(&dir);
    let password = unique("pw-");
    // A submission server that requires STARTTLS, then AUTH, offering LOGIN only.
    let submission = |mechanisms: &str| {
        SmtpGate::start_with(
            &Services::from_env(),
            &[
                ("GATE_TLS_CERT", cert.to_str().unwrap()),
                ("GATE_TLS_KEY", key.to_str().unwrap()),
                ("GATE_AUTH_USER", "onboard"),
                ("GATE_AUTH_PASSWORD", &password),
                ("GATE_AUTH_MECHANISMS", mechanisms),
            ],
        )
    };
    let login_only = submission("LOGIN");
    let stack = Stack::new(
        "starttls_auth",
        Options {
            smtp_port: Some(login_only.port),
            ..Options::default()
        },
    )
    .await;
    let ca = ca.to_str().unwrap();
    let env = |pass: &str| -> Vec<(&'static str, String)> {
        vec![
            (
                "ONBOARD__OUTPUT_ADAPTER__EMAIL__HOSTNAME",
                "localhost".into(),
            ),
            (
                "ONBOARD__OUTPUT_ADAPTER__EMAIL__ENABLE_START_TLS",
                "true".into(),
            ),
            (
                "ONBOARD__OUTPUT_ADAPTER__EMAIL__ENABLE_AUTHENTICATION",
                "true".into(),
            ),
            ("ONBOARD__OUTPUT_ADAPTER__EMAIL__USERNAME", "onboard".into()),
            ("ONBOARD__OUTPUT_ADAPTER__EMAIL__PASSWORD", pass.into()),
            ("ONBOARD__OUTPUT_ADAPTER__EMAIL__CA_FILE", ca.into()),
        ]
    };
    let worker_env = env(&password);
    let worker_env: Vec<(&str, &str)> = worker_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for c in ["gateway", "relay", "scheduler"] {
        stack.spawn(c);
    }
    stack.spawn_with_env("email-worker", &worker_env);
    stack.wait_ready().await;

    // The invitation goes out after STARTTLS and AUTH LOGIN, and reaches the mailbox.
    let email = format!("{}@pickup.example", unique("starttls."));
    let id = stack.invite("Submitted", &email).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mail = stack.wait_for_mail(&email).await;
    let view = stack.wait_for_delivery(&id, "sent").await;
    assert_eq!(
        view["email_delivery"]["message_id"].as_str(),
        mail.header("message-id")
    );
    assert_eq!(login_only.printed("AUTH "), ["LOGIN onboard ok"]);
    assert_eq!(login_only.printed("MAIL "), ["tls=yes auth=yes"]);

    // A server that offers PLAIN only gets PLAIN; a wrong password is a clear error without it.
    let plain_only = submission("PLAIN");
    let test_send = |pass: &str| {
        Command::new(&stack.services.onboard)
            .arg("--config")
            .arg(&stack.config)
            .args(["email", "test-send", "submission@pickup.example"])
            .envs(env(pass))
            .env(
                "ONBOARD__OUTPUT_ADAPTER__EMAIL__PORT",
                plain_only.port.to_string(),
            )
            .env("ONBOARD_LOG", "warn")
            .output()
            .expect("run onboard")
    };
    let ok = test_send(&password);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("accepted: 250"));
    let wrong = unique("wrong-");
    let refused = test_send(&wrong);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains("did not accept") && err.contains("535"),
        "{err}"
    );
    assert!(!err.contains(&wrong) && !err.contains(&password), "{err}");
    assert_eq!(
        plain_only.printed("AUTH "),
        ["PLAIN onboard ok", "PLAIN onboard refused"]
    );
    assert_eq!(
        plain_only.printed("MAIL "),
        ["tls=yes auth=yes"],
        "nothing sent without login"
    );
}
