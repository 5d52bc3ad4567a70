//! The load, as users and upstream services make it, recorded in a `Ledger` that the checker
//! holds the history against:
//! - invitations over `POST /api/v1/users` from two clients;
//! - invitation requests on the intake's Kafka topic (the checker reads the outcomes);
//! - a bulk file every 15 s;
//! - the users: they read their mail (the gate's DELIVERED lines), open links, and set
//!   passwords through the form as a browser does;
//! - an admin resending invitations.
//!
//! A request that gets no answer (the gateway was killed or paused) is recorded as such: the
//! checker asks nothing of it but that it did not happen twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::gate::Mailboxes;
use crate::Args;

/// The source of the campaign's intake requests.
pub const INTAKE_SOURCE: &str = "urn:chaos:hr";

/// An answer to one request: the status, or why there was none.
#[derive(Clone, Debug)]
pub enum Answer {
    Status(u16),
    NoAnswer,
}

impl Answer {
    fn label(&self) -> String {
        match self {
            Answer::Status(s) => s.to_string(),
            Answer::NoAnswer => "no answer".to_owned(),
        }
    }
}

pub struct Invite {
    pub username: String,
    pub answer: Answer,
    /// The id the 201 named.
    pub created: Option<Uuid>,
}

pub struct IntakeRequest {
    pub username: String,
    /// Seconds into the run when the broker acknowledged it (`None`: it did not).
    pub acked_at: Option<f64>,
}

pub struct BulkUpload {
    pub usernames: Vec<String>,
    pub job: Option<Uuid>,
}

pub struct PasswordSubmission {
    pub recipient: String,
}

#[derive(Default)]
pub struct Ledger {
    pub invites: Mutex<Vec<Invite>>,
    pub intake: Mutex<Vec<IntakeRequest>>,
    pub bulk: Mutex<Vec<BulkUpload>>,
    /// Submissions the page answered `200` (the account is active, it said).
    pub passwords: Mutex<Vec<PasswordSubmission>>,
    /// Per kind of request, how many got each answer.
    pub answers: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    /// (recipient, link) of every invitation mail read.
    links: Mutex<Vec<(String, String)>>,
    /// Links whose form was already used.
    next_link: AtomicU64,
}

impl Ledger {
    fn count(&self, kind: &str, answer: &Answer) {
        *self
            .answers
            .lock()
            .expect("answers")
            .entry(kind.to_owned())
            .or_default()
            .entry(answer.label())
            .or_default() += 1;
    }

    /// What was sent and answered, for the report.
    pub fn summary(&self) -> Value {
        let invites = self.invites.lock().expect("invites");
        let intake = self.intake.lock().expect("intake");
        let bulk = self.bulk.lock().expect("bulk");
        json!({
            "http_invitations": invites.len(),
            "http_invitations_created": invites.iter().filter(|i| i.created.is_some()).count(),
            "intake_requests": intake.len(),
            "intake_requests_acknowledged": intake.iter().filter(|r| r.acked_at.is_some()).count(),
            "bulk_files": bulk.len(),
            "bulk_files_accepted": bulk.iter().filter(|b| b.job.is_some()).count(),
            "links_read": self.links.lock().expect("links").len(),
            "passwords_accepted": self.passwords.lock().expect("passwords").len(),
            "answers": *self.answers.lock().expect("answers"),
        })
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ledger: Arc<Ledger>,
}

#[derive(Clone)]
struct Ctx {
    http: reqwest::Client,
    gateways: Arc<Vec<String>>,
    token: String,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    tag: String,
    started: Instant,
    /// Gateways that refused a connection, until when they are left alone (as a load
    /// balancer's health check would).
    refused: Arc<Mutex<BTreeMap<String, Instant>>>,
}

impl Ctx {
    /// A gateway at random, among those that did not refuse a connection lately.
    fn gateway(&self) -> String {
        let refused = self.refused.lock().expect("refused");
        let up: Vec<&String> = self
            .gateways
            .iter()
            .filter(|g| refused.get(*g).is_none_or(|until| Instant::now() >= *until))
            .collect();
        let from = if up.is_empty() {
            self.gateways.iter().collect()
        } else {
            up
        };
        from[rand::random::<usize>() % from.len()].clone()
    }

    /// Notes a request that failed: a refused connection takes the gateway out for 3 s.
    fn failed(&self, gateway: &str, error: &reqwest::Error) {
        if error.is_connect() {
            self.refused
                .lock()
                .expect("refused")
                .insert(gateway.to_owned(), Instant::now() + Duration::from_secs(3));
        }
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    async fn pause(&self, millis: u64) {
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }
}

impl Load {
    pub async fn start(
        args: &Args,
        gateways: Vec<String>,
        started: Instant,
    ) -> anyhow::Result<Self> {
        let ctx = Ctx {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(2))
                .build()?,
            gateways: Arc::new(gateways),
            token: args.admin_token.clone(),
            ledger: Arc::default(),
            stop: Arc::default(),
            tag: Uuid::new_v4().simple().to_string()[..6].to_owned(),
            started,
            refused: Arc::default(),
        };
        let mut tasks = Vec::new();
        for client in 0..2 {
            tasks.push(tokio::spawn(invite_over_http(ctx.clone(), client)));
        }
        tasks.push(tokio::spawn(request_through_intake(
            ctx.clone(),
            args.brokers.clone(),
            args.requests_topic.clone(),
        )));
        tasks.push(tokio::spawn(upload_bulk_files(ctx.clone())));
        tasks.push(tokio::spawn(read_mail(ctx.clone(), args.gate_log.clone())));
        tasks.push(tokio::spawn(open_links(ctx.clone())));
        tasks.push(tokio::spawn(set_passwords(ctx.clone())));
        tasks.push(tokio::spawn(resend(ctx.clone())));
        Ok(Self {
            stop: ctx.stop.clone(),
            tasks,
            ledger: ctx.ledger.clone(),
        })
    }

    /// Stops every load task (each finishes the request in hand) and hands over the ledger.
    pub async fn stop(self) -> Arc<Ledger> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.ledger
    }
}

/// `POST /api/v1/users`, one new user after another.
async fn invite_over_http(ctx: Ctx, client: usize) {
    let mut n = 0u64;
    while ctx.running() {
        n += 1;
        let username = format!("h{client}n{n}x{}", ctx.tag);
        let email = format!("{username}@pickup.example");
        let gateway = ctx.gateway();
        let sent = ctx
            .http
            .post(format!("{gateway}/api/v1/users"))
            .bearer_auth(&ctx.token)
            .json(&json!({"username": username, "email": email}))
            .send()
            .await;
        let (answer, created) = match sent {
            Ok(r) => {
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                let created = (status == 201)
                    .then(|| body["id"].as_str().and_then(|s| s.parse().ok()))
                    .flatten();
                (Answer::Status(status), created)
            }
            Err(e) => {
                ctx.failed(&gateway, &e);
                (Answer::NoAnswer, None)
            }
        };
        ctx.ledger.count("POST /api/v1/users", &answer);
        ctx.ledger.invites.lock().expect("invites").push(Invite {
            username,
            answer,
            created,
        });
        ctx.pause(100).await;
    }
}

/// One invitation request on the intake's topic every 250 ms.
async fn request_through_intake(ctx: Ctx, brokers: String, topic: String) {
    // Not idempotent: a broker that restarted empty would fence an idempotent producer for
    // good. A request sent twice is the intake's to recognise (its user id is UUIDv5(source, id)).
    let producer: FutureProducer = match ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("acks", "all")
        .set("message.timeout.ms", "15000")
        // One record per batch, as docs/operations.md asks of upstream producers on tansu
        // (a consumer resuming inside a batch would skip the rest of it: ADR 0004).
        .set("batch.num.messages", "1")
        .create()
    {
        Ok(p) => p,
        Err(e) => {
            println!("    the intake requests' producer could not be made: {e}");
            return;
        }
    };
    let mut n = 0u64;
    while ctx.running() {
        n += 1;
        let id = format!("{}-{n}", ctx.tag);
        let username = format!("k{n}x{}", ctx.tag);
        let payload = json!({
            "specversion": "1.0",
            "id": id,
            "source": INTAKE_SOURCE,
            "type": "com.pickup.hr.user.invitation.requested",
            "datacontenttype": "application/json",
            "data": {"username": username, "email": format!("{username}@pickup.example")},
        })
        .to_string();
        let sent = producer
            .send(
                FutureRecord::to(&topic).key(&id).payload(&payload).headers(
                    OwnedHeaders::new().insert(Header {
                        key: "content-type",
                        value: Some("application/cloudevents+json"),
                    }),
                ),
                Duration::from_secs(15),
            )
            .await;
        let acked_at = sent.is_ok().then(|| ctx.started.elapsed().as_secs_f64());
        ctx.ledger.count(
            "intake request",
            &if sent.is_ok() {
                Answer::Status(200)
            } else {
                Answer::NoAnswer
            },
        );
        ctx.ledger
            .intake
            .lock()
            .expect("intake")
            .push(IntakeRequest { username, acked_at });
        ctx.pause(250).await;
    }
}

/// A bulk file of 20 rows every 15 s.
async fn upload_bulk_files(ctx: Ctx) {
    let mut n = 0u64;
    let mut last = Instant::now() - Duration::from_secs(15);
    while ctx.running() {
        if last.elapsed() < Duration::from_secs(15) {
            ctx.pause(200).await;
            continue;
        }
        last = Instant::now();
        n += 1;
        let usernames: Vec<String> = (1..=20).map(|i| format!("b{n}r{i}x{}", ctx.tag)).collect();
        let mut file = String::from("username,email\n");
        for u in &usernames {
            file.push_str(&format!("{u},{u}@pickup.example\n"));
        }
        let gateway = ctx.gateway();
        let sent = ctx
            .http
            .post(format!("{gateway}/api/v1/bulk-invites"))
            .bearer_auth(&ctx.token)
            .header("content-type", "text/csv")
            .body(file)
            .send()
            .await;
        let (answer, job) = match sent {
            Ok(r) => {
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                let job = (status == 202)
                    .then(|| body["job_id"].as_str().and_then(|s| s.parse().ok()))
                    .flatten();
                (Answer::Status(status), job)
            }
            Err(e) => {
                ctx.failed(&gateway, &e);
                (Answer::NoAnswer, None)
            }
        };
        ctx.ledger.count("POST /api/v1/bulk-invites", &answer);
        ctx.ledger
            .bulk
            .lock()
            .expect("bulk")
            .push(BulkUpload { usernames, job });
    }
}

/// The users' mailboxes: the links of the invitation mails the gate kept.
async fn read_mail(ctx: Ctx, gate_log: std::path::PathBuf) {
    let mut mailboxes = Mailboxes::new(&gate_log);
    while ctx.running() {
        if let Ok(new) = mailboxes.read_new() {
            let mut links = ctx.ledger.links.lock().expect("links");
            for d in new {
                if let Some(link) = d.link {
                    links.push((d.recipient, link));
                }
            }
        }
        ctx.pause(500).await;
    }
}

/// The path and query of a mail's link, sent to one of the gateways.
fn on_gateway(ctx: &Ctx, link: &str) -> Option<String> {
    let path = link.find("/confirm")?;
    Some(format!("{}{}", ctx.gateway(), &link[path..]))
}

/// Users opening the links they got, ten times a second.
async fn open_links(ctx: Ctx) {
    while ctx.running() {
        let link = {
            let links = ctx.ledger.links.lock().expect("links");
            (!links.is_empty()).then(|| links[rand::random::<usize>() % links.len()].1.clone())
        };
        if let Some(url) = link.and_then(|l| on_gateway(&ctx, &l)) {
            let answer = match ctx.http.get(url).send().await {
                Ok(r) => Answer::Status(r.status().as_u16()),
                Err(_) => Answer::NoAnswer,
            };
            ctx.ledger.count("GET /confirm", &answer);
        }
        ctx.pause(100).await;
    }
}

/// Users setting their passwords through the form, the links in the order their mail came.
async fn set_passwords(ctx: Ctx) {
    while ctx.running() {
        let next = ctx.ledger.next_link.load(Ordering::Relaxed) as usize;
        let link = ctx.ledger.links.lock().expect("links").get(next).cloned();
        let Some((recipient, link)) = link else {
            ctx.pause(300).await;
            continue;
        };
        ctx.ledger.next_link.fetch_add(1, Ordering::Relaxed);
        let Some(url) = on_gateway(&ctx, &link) else {
            continue;
        };
        let page = match ctx.http.get(&url).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                ctx.ledger
                    .count("GET /confirm (form)", &Answer::Status(status));
                (status == 200).then_some(text)
            }
            Err(_) => {
                ctx.ledger.count("GET /confirm (form)", &Answer::NoAnswer);
                None
            }
        };
        let Some(csrf) = page.as_deref().and_then(|p| {
            p.split("name=\"csrf\" value=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .map(str::to_owned)
        }) else {
            ctx.pause(300).await;
            continue;
        };
        let code = url
            .split_once("code=")
            .map(|(_, c)| urlencoding::decode(c).map(|c| c.into_owned()))
            .and_then(Result::ok)
            .unwrap_or_default();
        let password = format!("Chaos-{}-pass", Uuid::new_v4().simple());
        let base = &url[..url.find("/confirm").unwrap_or(url.len())];
        let answer = match ctx
            .http
            .post(format!("{base}/confirm"))
            .form(&[
                ("code", code.as_str()),
                ("csrf", csrf.as_str()),
                ("password", password.as_str()),
                ("password_confirm", password.as_str()),
            ])
            .send()
            .await
        {
            Ok(r) => Answer::Status(r.status().as_u16()),
            Err(_) => Answer::NoAnswer,
        };
        ctx.ledger.count("POST /confirm", &answer);
        if matches!(answer, Answer::Status(200)) {
            ctx.ledger
                .passwords
                .lock()
                .expect("passwords")
                .push(PasswordSubmission { recipient });
        }
        ctx.pause(300).await;
    }
}

/// An admin resending a random invitation's link once a second.
async fn resend(ctx: Ctx) {
    while ctx.running() {
        ctx.pause(1000).await;
        let id = {
            let invites = ctx.ledger.invites.lock().expect("invites");
            let created: Vec<Uuid> = invites
                .iter()
                .rev()
                .take(500)
                .filter_map(|i| i.created)
                .collect();
            (!created.is_empty()).then(|| created[rand::random::<usize>() % created.len()])
        };
        let Some(id) = id else { continue };
        let gateway = ctx.gateway();
        let answer = match ctx
            .http
            .post(format!("{gateway}/api/v1/users/{id}/resend"))
            .bearer_auth(&ctx.token)
            .json(&json!({}))
            .send()
            .await
        {
            Ok(r) => Answer::Status(r.status().as_u16()),
            Err(e) => {
                ctx.failed(&gateway, &e);
                Answer::NoAnswer
            }
        };
        ctx.ledger.count("POST /api/v1/users/{id}/resend", &answer);
    }
}
