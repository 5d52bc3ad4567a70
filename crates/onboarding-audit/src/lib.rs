//! What auditors run (`onboard audit …`): verify the log's hash chain, rebuild the projections
//! from the log and compare them with the live ones, read one account's history or its state
//! at an instant, and export the log as JSON lines.
//!
//! Architecture invariant: everything here only reads the log (`events`) and live projections;
//! the replay writes only into a scratch schema of its own, and only when asked to keep it.
#![forbid(unsafe_code)]

pub mod chain;
pub mod compare;
pub mod log;
pub mod replay;
