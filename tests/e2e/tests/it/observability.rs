//! What an operator reads: the gateway's JSON log, in which every line written while it handles
//! a request carries that request's id (the caller's `X-Request-Id`, or one the gateway made);
//! the time-to-activate histogram on the gateway's `/metrics`; the intake's consumer lag on its
//! own `/metrics`. Real processes, real PostgreSQL, broker and MailDev.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use onboarding_e2e::{free_port, unique, Options, Stack};

const PASSWORD: &str = "Pickup rides at dawn 42";

/// The gateway's log, each line parsed; fails the test on a line that is not one JSON object.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}"));
            assert!(v.is_object(), "a log line is not a JSON object: {l}");
            v
        })
        .collect()
}

/// The request id of the request a line was written in, if any.
fn request_id_of(line: &Value) -> Option<&str> {
    line["spans"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "request")
        .map(|s| {
            s["request_id"]
                .as_str()
                .unwrap_or_else(|| panic!("a line in a request's span without its id: {line}"))
        })
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or_default()
}

/// The lines written in the request with id `id`.
fn lines_of<'a>(lines: &'a [Value], id: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| request_id_of(l) == Some(id))
        .collect()
}

/// One sample of `name` (with its labels, as written) from a Prometheus text page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn page(stack: &Stack, url: &str) -> String {
    stack
        .http
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_line_of_a_request_in_the_json_log_carries_its_request_id() {
    let stack = Stack::new("json_logs", Options::default()).await;
    let intake = format!("127.0.0.1:{}", free_port());
    stack.spawn_with_env(
        "gateway",
        &[("ONBOARD_LOG_FORMAT", "json"), ("ONBOARD_LOG", "info")],
    );
    stack.spawn("relay");
    stack.spawn("email-worker");
    stack.spawn_with_env(
        "intake",
        &[("ONBOARD__OBSERVABILITY__METRICS_BIND", &intake)],
    );
    stack.wait_ready().await;

    // Sam invites Jane, with his request id.
    let email = format!("{}@pickup.example", unique("jane."));
    let r = stack
        .admin(stack.http.post(stack.url("/api/v1/users")))
        .header("X-Request-Id", "sam-4711")
        .json(&json!({"username": "Jane", "email": email}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let jane = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mail = stack.wait_for_mail(&email).await;

    // Jane sets her password through the API (her request carries no id: the gateway makes one).
    let (status, body) = stack.submit_password(&mail.code(), PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    // A refused request is logged in its span too.
    let r = stack
        .admin(stack.http.get(stack.url("/api/v1/users/not-a-uuid")))
        .header("X-Request-Id", "sam-4712")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The lines are written when the answer has gone; wait for the last request's.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let lines = json_lines(&stack.logs_of("gateway"));
        if !lines_of(&lines, "sam-4712").is_empty() {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "no log line of request sam-4712 after 30 s; logs in {}",
            stack.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for line in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(line[key].is_string(), "no {key} in {line}");
        }
        assert!(!message(line).is_empty(), "no message in {line}");
    }

    // The invitation: the handler's line and the answer's, both with Sam's id, method and path.
    let invitation = lines_of(&lines, "sam-4711");
    let messages: BTreeSet<&str> = invitation.iter().map(|l| message(l)).collect();
    assert!(messages.contains("user invited"), "{invitation:#?}");
    assert!(messages.contains("request answered"), "{invitation:#?}");
    for line in &invitation {
        assert_eq!(line["span"]["request_id"], "sam-4711", "{line}");
        assert_eq!(line["span"]["method"], "POST", "{line}");
        assert_eq!(line["span"]["path"], "/api/v1/users", "{line}");
    }
    let answered = invitation
        .iter()
        .find(|l| message(l) == "request answered")
        .unwrap();
    assert_eq!(answered["fields"]["status"], 201, "{answered}");
    assert!(answered["level"] == "INFO", "{answered}");
    assert!(
        invitation
            .iter()
            .any(|l| l["fields"]["user_id"] == jane.as_str()),
        "the invitation's lines name Jane's user id: {invitation:#?}"
    );

    // Jane's activation: every line of her request carries the one id the gateway made for it.
    let activation: Vec<&Value> = lines
        .iter()
        .filter(|l| message(l) == "password set; account active")
        .collect();
    assert_eq!(activation.len(), 1, "{activation:#?}");
    let made = request_id_of(activation[0]).expect("the activation line is in a request's span");
    assert!(
        uuid::Uuid::parse_str(made).is_ok(),
        "the gateway's own request id is a UUID: {made}"
    );
    let hers = lines_of(&lines, made);
    assert!(
        hers.iter().any(|l| message(l) == "request answered"
            && l["fields"]["status"] == 200
            && l["span"]["path"] == "/api/v1/password-submissions"),
        "{hers:#?}"
    );
    // Ids are not shared between requests.
    assert!(lines_of(&lines, made)
        .iter()
        .all(|l| request_id_of(l) != Some("sam-4711")));

    // The refused request.
    let refused = lines_of(&lines, "sam-4712");
    assert!(
        refused
            .iter()
            .any(|l| message(l) == "request answered" && l["fields"]["status"] == 404),
        "{refused:#?}"
    );

    // No secret and no address in the log: not the link's code, not the password, not Jane's
    // address.
    let raw = stack.logs_of("gateway");
    assert!(!raw.contains(&mail.code()), "the log holds Jane's code");
    assert!(!raw.contains(PASSWORD), "the log holds Jane's password");
    assert!(!raw.contains(&email), "the log holds Jane's address");

    // The time from her invitation to her activation, in the histogram's buckets: under a minute.
    let metrics = page(&stack, &stack.url("/metrics")).await;
    assert_eq!(
        sample(&metrics, "onboard_time_to_activate_seconds_count"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "onboard_time_to_activate_seconds_bucket{le=\"60\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "onboard_time_to_activate_seconds_bucket{le=\"+Inf\"}"
        ),
        Some(1.0),
        "{metrics}"
    );

    // The intake reports each partition's lag of its requests topic: nothing waits.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = page(&stack, &format!("http://{intake}/metrics")).await;
        if sample(&metrics, "onboard_intake_lag{partition=\"0\"}") == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no onboard_intake_lag of 0 for partition 0 after 60 s: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `"onboard_…"` string literal at the start of `text`, if there is one.
fn literal_at(text: &str) -> Option<String> {
    let name: String = text
        .strip_prefix("\"onboard_")?
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    text[9 + name.len()..]
        .starts_with('"')
        .then(|| format!("onboard_{name}"))
}

/// The name of every metric the crates record: the first argument of each `counter!`, `gauge!`
/// and `histogram!` (a literal, or a `const` holding one), and the gauge names handed to
/// `Watchdog::new`.
fn metric_names_in_code() -> BTreeSet<String> {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates");
    let mut files = Vec::new();
    for krate in std::fs::read_dir(&crates).unwrap().flatten() {
        let src = krate.path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    let texts: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    // `const NAME: &str = "onboard_…";`
    let mut consts = std::collections::HashMap::new();
    for text in &texts {
        for (at, _) in text.match_indices("const ") {
            let rest = &text[at + 6..];
            let Some((ident, value)) = rest.split_once(": &str = ") else {
                continue;
            };
            if ident.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                if let Some(name) = literal_at(value) {
                    consts.insert(ident.to_owned(), name);
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    for text in &texts {
        for mac in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(mac) {
                let rest = text[at + mac.len()..].trim_start();
                if let Some(name) = literal_at(rest) {
                    names.insert(name);
                } else {
                    let path: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || "_:.".contains(*c))
                        .collect();
                    let ident = path.rsplit([':', '.']).next().unwrap_or_default();
                    if let Some(name) = consts.get(ident) {
                        names.insert(name.clone());
                    }
                }
            }
        }
        for (at, _) in text.match_indices("Watchdog::new(") {
            let end = text[at..]
                .char_indices()
                .nth(300)
                .map_or(text.len(), |(i, _)| at + i);
            let call = &text[at..end];
            for (quote, _) in call.match_indices("\"onboard_") {
                names.extend(literal_at(&call[quote..]));
            }
        }
    }
    names
}

#[test]
fn every_metric_the_code_exports_is_documented_and_every_documented_one_exists() {
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md"),
    )
    .unwrap();
    let documented: BTreeSet<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("| `onboard_"))
        .map(|rest| format!("onboard_{}", rest.split('`').next().unwrap()))
        .collect();
    let code = metric_names_in_code();
    assert!(code.len() >= 30, "{code:?}");
    let undocumented: Vec<_> = code.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "metrics the code exports that docs/operations.md does not describe: {undocumented:?}"
    );
    assert!(
        missing.is_empty(),
        "metrics docs/operations.md describes that the code does not export: {missing:?}"
    );
}

/// The OTLP receiver of tests/e2e/otlp/receiver.py on a free port: what it printed, one JSON
/// line per span received. Stopped (by its PID) when dropped.
struct OtlpReceiver {
    child: std::process::Child,
    out: std::path::PathBuf,
    url: String,
}

impl OtlpReceiver {
    fn start(dir: &std::path::Path) -> Self {
        let python = std::env::var("TEST_OTLP_PYTHON")
            .expect("TEST_OTLP_PYTHON is not set: run the tests with `tests/run`");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp/receiver.py");
        let port = free_port();
        let out = dir.join("otlp-receiver.out");
        let file = std::fs::File::create(&out).unwrap();
        let child = std::process::Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start the OTLP receiver");
        let receiver = Self {
            child,
            out,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !receiver.text().contains("LISTENING") {
            assert!(
                Instant::now() < deadline,
                "the OTLP receiver did not start: {}",
                receiver.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        receiver
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The spans received so far. A line the receiver is still writing has no newline yet and
    /// waits for the next call.
    fn spans(&self) -> Vec<Value> {
        let text = self.text();
        assert!(
            !text.contains("REFUSED"),
            "the receiver refused an export: {text}"
        );
        let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        complete
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("the receiver printed a line that is not one span ({e}): {l}")
                })
            })
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The one span of `service` named `name` in trace `trace` that `accept` takes, waiting up to
/// 60 s for it to arrive (the exporters send in batches, every few seconds).
fn span_of(
    receiver: &OtlpReceiver,
    trace: &str,
    service: &str,
    name: &str,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found: Vec<Value> = receiver
            .spans()
            .into_iter()
            .filter(|s| {
                s["trace_id"] == trace && s["service"] == service && s["name"] == name && accept(s)
            })
            .collect();
        if found.len() == 1 {
            return found.into_iter().next().unwrap();
        }
        assert!(
            found.len() < 2,
            "more than one {service} span `{name}`: {found:#?}"
        );
        assert!(
            Instant::now() < deadline,
            "no {service} span `{name}` in trace {trace} after 60 s: {}",
            receiver.text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The spans between `span` and its ancestor `ancestor` (both left out), waiting up to 60 s for
/// the spans in between to arrive; fails when `ancestor` is not an ancestor of `span`.
fn wait_for_ancestor(receiver: &OtlpReceiver, span: &Value, ancestor: &Value) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans = receiver.spans();
        let mut between = Vec::new();
        let mut parent = span["parent_span_id"].clone();
        let mut complete = false;
        while let Some(next) = spans
            .iter()
            .find(|s| s["span_id"] == parent && s["trace_id"] == span["trace_id"])
        {
            if next["span_id"] == ancestor["span_id"] {
                complete = true;
                break;
            }
            between.push(next.clone());
            parent = next["parent_span_id"].clone();
        }
        if complete {
            return between;
        }
        assert!(
            Instant::now() < deadline,
            "{} is not below {} after 60 s: {}",
            span,
            ancestor,
            receiver.text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The span id of a `traceparent` header (`00-<trace id>-<span id>-<flags>`) of trace `trace`.
fn span_in(traceparent: &str, trace: &str) -> String {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], trace, "{traceparent}");
    parts[2].to_owned()
}

#[tokio::test]
async fn with_the_otlp_build_one_invitation_is_one_trace_from_the_callers_request_to_the_mail() {
    let program = std::path::PathBuf::from(
        std::env::var("ONBOARD_OTLP_BIN")
            .expect("ONBOARD_OTLP_BIN is not set: run the tests with `tests/run`"),
    );
    let stack = Stack::new("otlp", Options::default()).await;
    let receiver = OtlpReceiver::start(&stack.dir);
    let env = [(
        "ONBOARD__OBSERVABILITY__OTLP_ENDPOINT",
        receiver.url.as_str(),
    )];
    stack.spawn_program("gateway", &program, "gateway", &env);
    stack.spawn_program("relay", &program, "relay", &env);
    stack.spawn_program("email-worker", &program, "email-worker", &env);
    stack.wait_ready().await;

    // Sam's HR system calls within a trace of its own.
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let callers_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let email = format!("{}@pickup.example", unique("jane."));
    let r = stack
        .admin(stack.http.post(stack.url("/api/v1/users")))
        .header("traceparent", format!("00-{trace}-{callers_span}-01"))
        .header("X-Request-Id", "hr-trace-1")
        .json(&json!({"username": "Jane", "email": email}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let jane = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    stack.wait_for_mail(&email).await;
    stack.wait_for_delivery(&jane, "sent").await;

    // The gateway's request span is a child of the caller's.
    let request = span_of(&receiver, &trace, "onboard-gateway", "request", |_| true);
    assert_eq!(request["parent_span_id"], callers_span, "{request}");
    assert_eq!(
        request["attributes"]["request_id"], "hr-trace-1",
        "{request}"
    );
    assert_eq!(request["attributes"]["path"], "/api/v1/users", "{request}");

    // The relay published Jane's code in that trace, below the request (the store's `execute`
    // span recorded the event), and the record on the topic carries the relay's span in its
    // traceparent header.
    let code_issued = "onboard.user.code_issued.v1";
    let publish = span_of(&receiver, &trace, "onboard-relay", "relay publish", |s| {
        s["attributes"]["ce_type"] == code_issued
    });
    assert_eq!(publish["attributes"]["user_id"], jane.as_str(), "{publish}");
    let above = wait_for_ancestor(&receiver, &publish, &request);
    assert!(
        above.iter().all(|s| s["service"] == "onboard-gateway"),
        "between the request and the relay's span only the gateway's: {above:#?}"
    );
    let records = stack
        .user_records(
            &jane,
            &[code_issued, "onboard.user.invitation_mail_sent.v1"],
        )
        .await;
    let record = records
        .iter()
        .find(|r| r.headers["ce_type"] == code_issued)
        .unwrap();
    let header = record
        .headers
        .get("traceparent")
        .unwrap_or_else(|| panic!("no traceparent on the record: {:?}", record.headers));
    assert_eq!(
        span_in(header, &trace),
        publish["span_id"].as_str().unwrap()
    );

    // The email worker handled the record in the same trace, as a child of the relay's span.
    let worker = span_of(
        &receiver,
        &trace,
        "onboard-email-worker",
        "email worker record",
        |s| s["parent_span_id"] == publish["span_id"],
    );
    // And the mail it recorded went out in the trace too, below the worker's span.
    let sent = records
        .iter()
        .find(|r| r.headers["ce_type"] == "onboard.user.invitation_mail_sent.v1")
        .unwrap();
    let sent_publish = span_of(&receiver, &trace, "onboard-relay", "relay publish", |s| {
        s["attributes"]["ce_type"] == "onboard.user.invitation_mail_sent.v1"
    });
    let above = wait_for_ancestor(&receiver, &sent_publish, &worker);
    assert!(
        above.iter().all(|s| s["service"] == "onboard-email-worker"),
        "between the worker's span and the relay's only the worker's: {above:#?}"
    );
    assert_eq!(
        span_in(&sent.headers["traceparent"], &trace),
        sent_publish["span_id"].as_str().unwrap()
    );
    // Log lines inside the spans become span events, never attributes holding secrets.
    assert!(
        !receiver.text().contains(&email),
        "a span holds Jane's address"
    );

    // The default build refuses the endpoint instead of ignoring it, and says what to do.
    let refused = stack.cli_with_env(
        &["config", "check"],
        &[(
            "ONBOARD__OBSERVABILITY__OTLP_ENDPOINT",
            receiver.url.as_str(),
        )],
    );
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("--features otlp"), "{said}");
}
