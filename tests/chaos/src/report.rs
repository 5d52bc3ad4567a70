//! The table a run prints: the faults injected, then every invariant with its counts.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::faults::Injected;

/// Faults by kind: how many, and on what.
pub fn fault_table(injected: &[Injected]) -> Value {
    let mut table: BTreeMap<String, (u64, BTreeMap<String, u64>)> = BTreeMap::new();
    for f in injected {
        let row = table.entry(f.kind.label()).or_default();
        row.0 += 1;
        *row.1.entry(f.target.clone()).or_default() += 1;
    }
    Value::Array(
        table
            .into_iter()
            .map(|(fault, (n, targets))| json!({"fault": fault, "injected": n, "targets": targets}))
            .collect(),
    )
}

pub fn print(results: &Value) {
    println!();
    println!(
        "Faults injected ({}, {} minutes)",
        results["mode"].as_str().unwrap_or_default(),
        results["minutes"]
    );
    println!("  {:<40} {:>5}  targets", "fault", "count");
    let faults = results["faults"].as_array().cloned().unwrap_or_default();
    if faults.is_empty() {
        println!("  (none)");
    }
    for f in &faults {
        let targets = f["targets"]
            .as_object()
            .map(|t| {
                t.iter()
                    .map(|(k, v)| format!("{k} ×{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        println!(
            "  {:<40} {:>5}  {targets}",
            f["fault"].as_str().unwrap_or_default(),
            f["injected"]
        );
    }
    let exits = results["unexpected_exits"].as_array().map_or(0, Vec::len);
    println!("  processes that exited on their own (started again): {exits}");
    println!();
    println!("Load: {}", results["load"]);
    println!();
    println!("Invariants");
    for i in results["invariants"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let held = i["held"].as_bool().unwrap_or(false);
        println!(
            "  {}  {}",
            if held { "held  " } else { "BROKEN" },
            i["invariant"].as_str().unwrap_or_default()
        );
        println!("          {}", i["counts"]);
    }
    println!();
    if results["held"].as_bool().unwrap_or(false) {
        println!("every invariant held");
    } else {
        println!("AN INVARIANT WAS BROKEN (see above)");
    }
}
