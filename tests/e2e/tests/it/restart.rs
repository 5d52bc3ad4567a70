//! Restarting the relay and the email worker in the middle of a burst loses no mail and doubles none.

use std::collections::HashMap;
use std::time::Duration;

use crate::harness::{unique, Options, Stack};

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
