//! Benchmark, not part of the suite: 10 000 bulk invitations through the real processes, until
//! every created user's invitation mail is recorded as sent. Prints the timings; fails only when
//! a row is not created or a mail is not sent (never because of time).
//!
//! Run with `tests/run --test bulk_10k` (BENCH_ROWS=… to change the size).

use std::time::{Duration, Instant};

use onboarding_e2e::{unique, Options, Stack};
use serde_json::Value;

async fn count(stack: &Stack, query: &str) -> usize {
    let mut n = 0;
    let mut after = String::new();
    loop {
        let page = stack.list(&format!("{query}&limit=500{after}")).await;
        n += page["items"].as_array().map_or(0, Vec::len);
        match page["next_after"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return n,
        }
    }
}

#[tokio::main]
async fn main() {
    let rows: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let stack = Stack::start("bench_bulk", Options::default()).await;
    let tag = unique("");
    let mut csv = String::from("username,email\n");
    for i in 0..rows {
        csv.push_str(&format!("b{i}x{tag},b{i}.{tag}@pickup.example\n"));
    }
    println!("bulk benchmark: {rows} rows, {} bytes", csv.len());

    let started = Instant::now();
    let r = stack
        .admin(stack.http.post(stack.url("/api/v1/bulk-invites")))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let accepted: Value = r.json().await.unwrap();
    let uploaded = started.elapsed();
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let job = loop {
        let j: Value = stack
            .admin(
                stack
                    .http
                    .get(stack.url(&format!("/api/v1/bulk-invites/{job_id}"))),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if j["status"] == "done" {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let invited = started.elapsed();
    assert_eq!(job["totals"]["created"], rows, "{}", job["totals"]);
    println!(
        "upload answered in {:.2?}; all {rows} invited after {:.1?} ({:.0} rows/s)",
        uploaded,
        invited,
        rows as f64 / invited.as_secs_f64()
    );

    let mut last_report = Instant::now();
    loop {
        let sent = count(&stack, "delivery=sent").await;
        let failed = count(&stack, "delivery=failed").await;
        assert_eq!(
            failed,
            0,
            "invitation mails failed; logs in {}",
            stack.dir.display()
        );
        if sent == rows {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            println!("  {sent}/{rows} mailed after {:.0?}", started.elapsed());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mailed = started.elapsed();
    println!(
        "all {rows} mailed after {:.1?} ({:.0} mails/s, one email worker)",
        mailed,
        rows as f64 / mailed.as_secs_f64()
    );
    let sample = stack
        .wait_for_mail(&format!("b{}.{tag}@pickup.example", rows - 1))
        .await;
    assert!(sample.link().contains("/confirm?code="));
}
