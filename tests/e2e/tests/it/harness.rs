//! Starts the real `onboard` processes against the real services `tests/run` started, one fresh
//! database, topic and consumer group per test, and reads back what a user would see: HTTP
//! answers, mail in MailDev, records on the Kafka topic.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Where the services started by `tests/run` are.
pub struct Services {
    pub database_url: String,
    pub kafka: String,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub maildev: String,
    pub onboard: PathBuf,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests with `tests/run`, which starts PostgreSQL, the Kafka broker and MailDev")
    })
}

impl Services {
    pub fn from_env() -> Self {
        Self {
            database_url: var("TEST_DATABASE_URL"),
            kafka: var("TEST_KAFKA_BOOTSTRAP"),
            smtp_host: var("TEST_SMTP_HOST"),
            smtp_port: var("TEST_SMTP_PORT")
                .parse()
                .expect("TEST_SMTP_PORT is a port"),
            maildev: var("TEST_MAILDEV_URL"),
            onboard: PathBuf::from(var("ONBOARD_BIN")),
        }
    }
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One mail as MailDev received it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub raw: Value,
}

impl Mail {
    pub fn subject(&self) -> &str {
        self.raw["subject"].as_str().unwrap_or_default()
    }
    pub fn text(&self) -> &str {
        self.raw["text"].as_str().unwrap_or_default()
    }
    pub fn html(&self) -> &str {
        self.raw["html"].as_str().unwrap_or_default()
    }
    pub fn sender(&self) -> &str {
        self.raw["from"][0]["address"].as_str().unwrap_or_default()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.raw["headers"][name].as_str()
    }
    /// The confirmation link in the plain-text part.
    pub fn link(&self) -> String {
        self.text()
            .split_whitespace()
            .find(|w| w.contains("/confirm?code="))
            .unwrap_or_else(|| panic!("no confirmation link in the mail text:\n{}", self.text()))
            .to_owned()
    }
    pub fn code(&self) -> String {
        let link = self.link();
        link.split_once("code=").map(|(_, c)| c.to_owned()).unwrap()
    }
}

/// A record read back from the topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub value: Value,
    pub raw_value: String,
    pub headers: HashMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

pub struct Stack {
    pub services: Services,
    /// This test's own database.
    pub database_url: String,
    pub kafka: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub base_url: String,
    pub admin_token: String,
    /// A token with only the `read` scope, and one that is revoked.
    pub reader_token: String,
    pub revoked_token: String,
    pub topic: String,
    pub http: reqwest::Client,
    procs: Mutex<HashMap<String, Child>>,
}

pub struct Options {
    pub validity_minutes: i64,
    pub max_body_bytes: u64,
    /// A broker of the test's own instead of the shared one.
    pub kafka: Option<String>,
    pub public_rate_limit_per_minute: u32,
    pub resend_cooldown_seconds: i64,
    /// An SMTP port of the test's own instead of MailDev's (e.g. one nobody listens on).
    pub smtp_port: Option<u16>,
    /// More lines for the `[kafka]` section (e.g. `security_protocol = "ssl"`).
    pub kafka_settings: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            validity_minutes: 60,
            max_body_bytes: 16384,
            kafka: None,
            public_rate_limit_per_minute: 600,
            resend_cooldown_seconds: 0,
            smtp_port: None,
            kafka_settings: String::new(),
        }
    }
}

impl Stack {
    /// A fresh database, topic and consumer group, migrated; no process started yet.
    pub async fn new(name: &str, options: Options) -> Self {
        let services = Services::from_env();
        let id = unique("");
        let db = format!("e2e_{name}_{id}");
        let admin = sqlx::PgPool::connect(&services.database_url)
            .await
            .expect("connect to the test PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE \"{db}\""))
            .execute(&admin)
            .await
            .expect("create the test database");
        admin.close().await;
        let database_url = match services.database_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{db}"),
            None => panic!("TEST_DATABASE_URL has no database name"),
        };
        let dir = std::env::temp_dir()
            .join("onboard-e2e")
            .join(format!("{name}-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let base_url = format!("http://127.0.0.1:{port}");
        let mut token = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut token);
        let admin_token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
        let reader_token = unique("reader-");
        let revoked_token = unique("revoked-");
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let topic = format!("e2e.{name}.{id}");
        let config = dir.join("onboard.toml");
        let kafka = options
            .kafka
            .clone()
            .unwrap_or_else(|| services.kafka.clone());
        std::fs::write(
            &config,
            format!(
                r#"
[identity_mgt.user_onboarding]
ask_password_from_user = true
ask_password_email_validity = {validity}
min_validity_minutes = 1
max_validity_minutes = 10080
expiry_scan_seconds = 1
resend_cooldown_seconds = {cooldown}

[output_adapter.email]
from_address = "noreply@pickup.example"
from_name = "Pickup"
hostname = "{smtp_host}"
port = {smtp_port}
enable_start_tls = false
enable_authentication = false
max_attempts = 3

[database]
url = "{database_url}"
max_connections = 5

[kafka]
bootstrap_servers = "{kafka}"
topic = "{topic}"
partitions = 4
email_worker_group = "e2e-{name}-{id}"
email_worker_stall_seconds = 10
{kafka_settings}

[intake]
requests_topic = "{topic}.requests"
outcomes_topic = "{topic}.outcomes"
dead_letter_topic = "{topic}.dlq"
group = "e2e-intake-{name}-{id}"
partitions = 2

[gateway]
bind = "127.0.0.1:{port}"
public_base_url = "{base_url}"
max_body_bytes = {max_body}
public_rate_limit_per_minute = {rate}

[[gateway.admin_tokens]]
id = "e2e-admin"
sha256 = "{token_hash}"

[[gateway.admin_tokens]]
id = "e2e-reader"
sha256 = "{reader_hash}"
scopes = ["read"]

[[gateway.admin_tokens]]
id = "e2e-revoked"
sha256 = "{revoked_hash}"
revoked = true

[codes]
active_key = "k1"
[[codes.keys]]
id = "k1"
secret = "{key}"

[organisation]
name = "Pickup"
"#,
                validity = options.validity_minutes,
                smtp_host = services.smtp_host,
                smtp_port = options.smtp_port.unwrap_or(services.smtp_port),
                kafka = options.kafka.as_deref().unwrap_or(&services.kafka),
                max_body = options.max_body_bytes,
                rate = options.public_rate_limit_per_minute,
                cooldown = options.resend_cooldown_seconds,
                kafka_settings = options.kafka_settings,
                token_hash = hex::encode(Sha256::digest(admin_token.as_bytes())),
                reader_hash = hex::encode(Sha256::digest(reader_token.as_bytes())),
                revoked_hash = hex::encode(Sha256::digest(revoked_token.as_bytes())),
                key = base64::engine::general_purpose::STANDARD.encode(key),
            ),
        )
        .unwrap();
        let stack = Self {
            services,
            database_url,
            kafka,
            dir,
            config,
            base_url,
            admin_token,
            reader_token,
            revoked_token,
            topic,

            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            procs: Mutex::new(HashMap::new()),
        };
        let out = stack.cli(&["migrate"]);
        assert!(
            out.status.success(),
            "onboard migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stack
    }

    /// The whole engine as separate processes: gateway, relay, email worker.
    pub async fn start(name: &str, options: Options) -> Self {
        let stack = Self::new(name, options).await;
        stack.spawn("gateway");
        stack.spawn("relay");
        stack.spawn("email-worker");
        stack.spawn("scheduler");
        stack.wait_ready().await;
        stack
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_with_env(args, &[])
    }

    /// Runs `onboard` with extra environment variables (e.g. `ONBOARD__DATABASE__URL`).
    pub fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        Command::new(&self.services.onboard)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("ONBOARD_LOG", "warn")
            .envs(env.iter().copied())
            .output()
            .expect("run onboard")
    }

    /// Starts one component (`gateway`, `relay`, `email-worker`, `serve`) as its own process.
    pub fn spawn(&self, component: &str) {
        self.spawn_with_env(component, &[]);
    }

    /// Starts a component with extra environment variables (e.g. `ONBOARD__…` overrides).
    pub fn spawn_with_env(&self, component: &str, env: &[(&str, &str)]) {
        self.spawn_named(component, component, env);
    }

    /// Starts a component under a name of its own (for `signal` and its log file), so that
    /// several processes of one component can run side by side (e.g. two email workers).
    pub fn spawn_named(&self, name: &str, component: &str, env: &[(&str, &str)]) {
        // Numbered in start order, so a restarted process never overwrites an earlier log.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = File::create(self.dir.join(format!("{name}-{n}.log"))).unwrap();
        let child = Command::new(&self.services.onboard)
            .arg("--config")
            .arg(&self.config)
            .arg(component)
            .env("ONBOARD_LOG", "info,onboarding_email_worker=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn onboard");
        let previous = self.procs.lock().unwrap().insert(name.to_owned(), child);
        assert!(previous.is_none(), "{name} is already running");
    }

    /// The log lines of every process started under `name` so far (all its restarts).
    pub fn logs_of(&self, name: &str) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if file.starts_with(&format!("{name}-")) && file.ends_with(".log") {
                out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    /// Sends a signal (`TERM`, `KILL`) to a component and waits for it to exit.
    pub fn signal(&self, component: &str, signal: &str) {
        let mut child = self
            .procs
            .lock()
            .unwrap()
            .remove(component)
            .unwrap_or_else(|| panic!("{component} is not running"));
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{component} did not stop within 30 s of SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes a process (SIGSTOP): it stays alive, holds its sockets and does nothing. It is
    /// killed with the others when the stack is dropped.
    pub fn freeze(&self, name: &str) {
        let procs = self.procs.lock().unwrap();
        let child = procs
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        let status = Command::new("kill")
            .arg("-STOP")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -STOP failed");
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/readyz", self.base_url))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not become ready within 60 s; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn admin(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.bearer_auth(&self.admin_token)
    }

    pub async fn invite(&self, username: &str, email: &str) -> Value {
        let r = self
            .admin(self.http.post(self.url("/api/v1/users")))
            .json(&serde_json::json!({"username": username, "email": email, "domain": "PRIMARY"}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "invite failed: {body}");
        body
    }

    pub async fn user(&self, id: &str) -> Value {
        let r = self
            .admin(self.http.get(self.url(&format!("/api/v1/users/{id}"))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Invites `n` users at once, `{name}{i}` at `{name}{i}.{tag}@pickup.example`; their ids in
    /// that order.
    pub async fn invite_batch(&self, name: &str, n: usize, tag: &str) -> Vec<String> {
        let users: Vec<(String, String)> = (0..n)
            .map(|i| {
                (
                    format!("{name}{i}"),
                    format!("{name}{i}.{tag}@pickup.example"),
                )
            })
            .collect();
        futures::future::join_all(users.iter().map(|(u, e)| self.invite(u, e)))
            .await
            .into_iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Invites `username` at a fresh address and waits for the mail: (user id, address, mail).
    pub async fn invite_mailed(&self, username: &str) -> (String, String, Mail) {
        let email = format!(
            "{}@pickup.example",
            unique(&format!("{}.", username.to_lowercase()))
        );
        let id = self.invite(username, &email).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mail = self.wait_for_mail(&email).await;
        (id, email, mail)
    }

    /// `GET /api/v1/users?{query}` with the admin token: the JSON list.
    pub async fn list(&self, query: &str) -> Value {
        let r = self
            .admin(self.http.get(self.url(&format!("/api/v1/users?{query}"))))
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }

    /// Posts a form to one of the pages (`/confirm`, `/revoke`, …) with extra headers.
    pub async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self.http.post(self.url(path)).form(form);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.unwrap()
    }

    /// `POST /api/v1/users/{id}/resend` with the admin token.
    pub async fn resend(&self, id: &str) -> reqwest::Response {
        self.admin(
            self.http
                .post(self.url(&format!("/api/v1/users/{id}/resend"))),
        )
        .send()
        .await
        .unwrap()
    }

    /// `POST /api/v1/password-submissions`: the status and the JSON answer.
    pub async fn submit_password(&self, code: &str, password: &str) -> (u16, Value) {
        let r = self
            .http
            .post(self.url("/api/v1/password-submissions"))
            .json(&serde_json::json!({"code": code, "password": password}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Every mail MailDev holds for this recipient, oldest first.
    pub async fn mails_to(&self, address: &str) -> Vec<Mail> {
        let all: Vec<Value> = self
            .http
            .get(format!("{}/api/email", self.services.maildev))
            .send()
            .await
            .expect("MailDev answers")
            .json()
            .await
            .expect("MailDev returns JSON");
        all.into_iter()
            .filter(|m| {
                m["to"]
                    .as_array()
                    .is_some_and(|to| to.iter().any(|t| t["address"].as_str() == Some(address)))
            })
            .map(|raw| Mail { raw })
            .collect()
    }

    /// Waits until `count` mails reached this recipient (up to 60 s) and returns them.
    pub async fn wait_for_mails(&self, address: &str, count: usize) -> Vec<Mail> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mails = self.mails_to(address).await;
            if mails.len() >= count {
                return mails;
            }
            assert!(
                Instant::now() < deadline,
                "{count} mail(s) to {address} expected, {} arrived within 60 s; logs in {}",
                mails.len(),
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the user view shows the mail delivery `status` (the worker records the
    /// outcome just after the SMTP server's answer, so a mail can be in MailDev a moment before
    /// it is recorded): the view.
    pub async fn wait_for_delivery(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let view = self.user(id).await;
            if view["email_delivery"]["status"] == status {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "delivery of {id} never became {status}: {view}; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn wait_for_mail(&self, address: &str) -> Mail {
        self.wait_for_mails(address, 1).await.remove(0)
    }

    /// Reads the topic from the beginning until `until` is satisfied by the records seen (60 s max).
    pub async fn read_topic(&self, until: impl Fn(&[Record]) -> bool) -> Vec<Record> {
        self.read_topic_of(&self.topic, until).await
    }

    /// Like `read_topic`, for another topic (e.g. the dead-letter topic).
    pub async fn read_topic_of(
        &self,
        topic: &str,
        until: impl Fn(&[Record]) -> bool,
    ) -> Vec<Record> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka)
            .set("group.id", unique("e2e-reader-"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("kafka consumer");
        consumer.subscribe(&[topic]).unwrap();
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !until(&records) {
            assert!(
                Instant::now() < deadline,
                "the expected records did not arrive on {topic} within 60 s; got {records:#?}"
            );
            let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
            else {
                continue;
            };
            let raw_value = String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap();
            let headers = headers_of(&m);
            // The engine's own topic holds JSON of its schemas only; a dead-letter topic holds
            // what could not be read.
            let value: Value = if topic == self.topic {
                let value = serde_json::from_str(&raw_value).expect("record values are JSON");
                let ce_type = headers.get("ce_type").map(String::as_str).unwrap_or("");
                validate_against_schema(ce_type, &value);
                value
            } else {
                serde_json::from_str(&raw_value).unwrap_or(Value::Null)
            };
            records.push(Record {
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                value,
                raw_value,
                headers,
                partition: m.partition(),
                offset: m.offset(),
            });
        }
        records
    }

    /// The records of one user, in topic order.
    pub async fn user_records(&self, user_id: &str, types: &[&str]) -> Vec<Record> {
        let want: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        let records = self
            .read_topic(|rs| {
                let seen: Vec<&String> = rs
                    .iter()
                    .filter(|r| r.key == user_id)
                    .map(|r| &r.headers["ce_type"])
                    .collect();
                want.iter().all(|w| seen.contains(&w))
            })
            .await;
        records.into_iter().filter(|r| r.key == user_id).collect()
    }

    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                    out.push_str(&format!("--- {}\n{tail}\n", p.display()));
                }
            }
        }
        out
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("component logs:\n{}", self.log_tail());
        }
        for (_, mut child) in self.procs.lock().unwrap().drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Checks a record's value against the committed JSON Schema of its `ce_type`
/// (`schemas/events/<ce_type>.json`); every test that reads the topic goes through here.
/// A Kafka record's headers, as text.
pub fn headers_of(m: &impl Message) -> HashMap<String, String> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn validate_against_schema(ce_type: &str, value: &Value) {
    static VALIDATORS: std::sync::OnceLock<Mutex<HashMap<String, jsonschema::Validator>>> =
        std::sync::OnceLock::new();
    let mut validators = VALIDATORS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let validator = validators.entry(ce_type.to_owned()).or_insert_with(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../schemas/events")
            .join(format!("{ce_type}.json"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "a record of type `{ce_type}` has no schema at {}: {e}",
                path.display()
            )
        });
        let schema: Value = serde_json::from_str(&text).expect("schemas are JSON");
        jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("{} is not a valid JSON Schema: {e}", path.display()))
    });
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "a `{ce_type}` record does not match its schema: {errors:?}\n{value}"
    );
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it, made with the
/// openssl command: (CA, certificate, key).
pub fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=onboard e2e test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        "server.pem",
        "-extfile",
        "server.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// How a test's own broker is reached.
#[derive(Default)]
pub struct BrokerOptions {
    /// tansu's `--authentication`: every request but the SASL handshake needs a logged-in client.
    pub authentication: bool,
    /// TLS with this certificate and key, terminated by socat in front of tansu (tansu 0.6
    /// cannot terminate TLS itself; see docs/operations.md). `addr` is then socat's address,
    /// and tansu advertises it, so every connection goes through TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A Kafka-protocol broker (tansu, in memory) of one test's own, so the test can restart it.
pub struct Broker {
    pub addr: String,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
    authentication: bool,
    /// socat terminating TLS on `addr`, and its port.
    tls: Option<(Child, u16)>,
}

impl Broker {
    pub fn start(dir_name: &str) -> Self {
        Self::start_with(dir_name, BrokerOptions::default())
    }

    pub fn start_with(dir_name: &str, options: BrokerOptions) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir()
            .join("onboard-e2e")
            .join(unique(dir_name));
        std::fs::create_dir_all(&dir).unwrap();
        let tls = options.tls.map(|(cert, key)| {
            let tls_port = free_port();
            let log = File::create(dir.join("socat.log")).unwrap();
            let child = Command::new(var("TEST_SOCAT_BIN"))
                .arg(format!(
                    "OPENSSL-LISTEN:{tls_port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                    cert.display(),
                    key.display()
                ))
                .arg(format!("TCP:127.0.0.1:{port}"))
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("start socat");
            (child, tls_port)
        });
        let public_port = tls.as_ref().map_or(port, |(_, p)| *p);
        let mut broker = Self {
            addr: format!("127.0.0.1:{public_port}"),
            port,
            log: dir.join("tansu.log"),
            child: None,
            authentication: options.authentication,
            tls,
        };
        broker.launch();
        if let Some((_, tls_port)) = &broker.tls {
            wait_for_port(*tls_port, &dir.join("socat.log"));
        }
        broker
    }

    fn launch(&mut self) {
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://{}", self.addr);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(var("TEST_TANSU_BIN"))
            .args([
                "broker",
                "--cluster-id",
                "onboard-e2e",
                "--listener-url",
                &listener,
            ])
            .args([
                "--advertised-listener-url",
                &advertised,
                "--storage-engine",
                "memory://tansu/",
            ])
            .args(self.authentication.then_some("--authentication"))
            .env_remove("CLUSTER_ID")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        wait_for_port(self.port, &self.log);
    }

    /// Kills the broker (losing everything it held in memory) and starts an empty one on the same port.
    pub fn restart_empty(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        self.launch();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let socat = self.tls.take().map(|(child, _)| child);
        for mut child in self.child.take().into_iter().chain(socat) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits up to 30 s for a test's own service to listen on 127.0.0.1:`port`.
fn wait_for_port(port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listened on port {port} within 30 s; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A real SMTP server of one test's own (`tests/e2e/smtp/gate.py`, aiosmtpd) that refuses
/// (`reject…`), defers (`defer…`) or greylists (`grey…`) recipients by their local part and passes
/// accepted mail on to MailDev.
pub struct SmtpGate {
    pub port: u16,
    log: PathBuf,
    /// Where `release` puts the files that let held recipients (`hold…@`) through.
    release_dir: PathBuf,
    child: Child,
}

impl SmtpGate {
    pub fn start(services: &Services) -> Self {
        Self::start_with(services, &[])
    }

    /// A gate started with `env`, e.g. `GATE_TLS_CERT` to require STARTTLS (see gate.py).
    pub fn start_with(services: &Services, env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join("onboard-e2e");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let log_path = dir.join(format!("smtp-gate-{port}.log"));
        let log = File::create(&log_path).unwrap();
        let release_dir = dir.join(format!("smtp-gate-{port}.release"));
        let _ = std::fs::remove_dir_all(&release_dir);
        std::fs::create_dir_all(&release_dir).unwrap();
        let child = Command::new(var("TEST_SMTP_GATE_PYTHON"))
            .arg(var("TEST_SMTP_GATE"))
            .arg(port.to_string())
            .arg(&services.smtp_host)
            .arg(services.smtp_port.to_string())
            .arg(&release_dir)
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the SMTP gate");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the SMTP gate did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            log: log_path,
            release_dir,
            child,
        }
    }

    /// Waits until the gate holds the SMTP transaction for `address` (a `hold…@` recipient).
    pub async fn wait_until_held(&self, address: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let held = format!("HELD {address}");
        while !std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .any(|l| l == held)
        {
            assert!(
                Instant::now() < deadline,
                "the gate did not hold {address} within 60 s; its log: {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Lets the held SMTP transaction for `address` go on.
    pub fn release(&self, address: &str) {
        std::fs::write(self.release_dir.join(address), b"").unwrap();
    }

    /// The mails the gate kept itself (quoted local parts): (recipient, Message-ID).
    pub fn stored(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("STORED "))
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(r, id)| (r.to_owned(), id.to_owned()))
            .collect()
    }

    /// The lines the gate printed that start with `prefix` (e.g. `AUTH `, `MAIL `), without it.
    pub fn printed(&self, prefix: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_owned)
            .collect()
    }

    /// Every RCPT TO address the gate received, as it came on the wire.
    pub fn recipients(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("RCPT "))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for SmtpGate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
