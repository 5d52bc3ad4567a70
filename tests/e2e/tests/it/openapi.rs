//! The published interface, fuzzed: schemathesis (from PyPI, installed by `tests/run`) reads the
//! OpenAPI document (the one the gateway serves) and sends every operation generated requests, valid and
//! invalid, with the admin token. The run fails on any `5xx`, on any answer whose status, content
//! type, headers or body the document does not allow, on invalid input that is not refused with
//! a `4xx`, on an admin route that answers without the token, and on an undocumented method that
//! is not refused with `405` and `Allow`. `tests/e2e/schemathesis/config.toml` says how many cases
//! and which checks; `hooks.py` writes the JSON-lines bodies of bulk uploads.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use onboarding_e2e::{Options, Stack};

fn schemathesis() -> String {
    std::env::var("TEST_SCHEMATHESIS")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!("TEST_SCHEMATHESIS is not set: run the fuzzing test with `tests/run`, which installs schemathesis")
        })
}

/// A fixed seed, so a failure can be run again as it was (`TEST_SCHEMATHESIS_SEED` picks another).
const SEED: &str = "20261207";

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    // Budgets far above what the run sends: the fuzzer should reach the handlers, not the limits.
    let stack = Stack::start(
        "openapi",
        Options {
            public_rate_limit_per_minute: 1_000_000,
            page_rate_limit_per_minute: 1_000_000,
            admin_rate_limit_per_minute: 1_000_000,
            ..Options::default()
        },
    )
    .await;

    // The gateway serves the committed document, and without a token.
    let document =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/openapi.json"))
            .expect("read schemas/openapi.json");
    let served = stack
        .http
        .get(stack.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.bytes().await.unwrap(), document);
    let operations = operations(&serde_json::from_slice(&document).unwrap());

    // Some accounts to find, so that reads and state changes meet real ones too.
    stack
        .invite("Fuzz.Existing", "fuzz.existing@pickup.example")
        .await;

    let report = stack.dir.join("schemathesis-report.json");
    let seed = std::env::var("TEST_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.to_owned());
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis");
    let out = Command::new(schemathesis())
        .arg("--config-file")
        .arg(here.join("config.toml"))
        .arg("run")
        // The committed file, which the gateway serves (above): read from a URL, schemathesis
        // would leave out the operation that serves it.
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/openapi.json"))
        .args(["--url", &stack.base_url])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", stack.admin_token),
        ])
        .args(["--seed", &seed])
        .args(["--report", "json"])
        .arg("--report-json-path")
        .arg(&report)
        .env("SCHEMATHESIS_HOOKS", here.join("hooks.py"))
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found problems (seed {seed}; report {}):\n{stdout}\n{stderr}\n\ngateway log:\n{}",
        report.display(),
        tail(&stack.logs_of("gateway"), 80)
    );
    // Every operation of the document was fuzzed, in every phase: none was skipped or errored.
    let summary: Value =
        serde_json::from_slice(&std::fs::read(&report).expect("read the schemathesis report"))
            .expect("the report is JSON");
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(summary["failures"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["errors"], serde_json::json!([]), "{summary}");
    let counts = &summary["operations"];
    assert_eq!(counts["total"], operations.len(), "{counts}");
    assert_eq!(counts["tested"], operations.len(), "{counts}");
    assert_eq!(
        (&counts["errored"], &counts["skipped"]),
        (&0.into(), &0.into()),
        "{counts}"
    );
    for (phase, result) in summary["phases"].as_object().unwrap() {
        assert_eq!(result["status"], "success", "phase {phase}: {result}");
    }
    assert!(
        !stack.logs_of("gateway").contains("panicked"),
        "the gateway panicked:\n{}",
        stack.logs_of("gateway")
    );
}

/// `METHOD /path` of every operation of the document.
fn operations(document: &Value) -> Vec<String> {
    let mut all = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            all.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    all
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
