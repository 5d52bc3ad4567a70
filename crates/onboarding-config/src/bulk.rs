//! `[bulk]`: bulk invitations (`POST /api/v1/bulk-invites`, `onboard invite --file`).

use std::num::NonZeroUsize;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "BulkFile")]
pub struct BulkSettings {
    /// Largest file accepted, in bytes (positive); larger uploads get 413.
    pub max_file_bytes: u64,
    /// Rows applied at the same time by one process (1 to 256).
    pub concurrency: NonZeroUsize,
}

impl Default for BulkSettings {
    fn default() -> Self {
        Self {
            max_file_bytes: 8 * 1024 * 1024,
            concurrency: NonZeroUsize::new(64).expect("64 is not zero"),
        }
    }
}

/// `[bulk]` as written, checked into [`BulkSettings`] while it is read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct BulkFile {
    max_file_bytes: u64,
    concurrency: usize,
}

impl Default for BulkFile {
    fn default() -> Self {
        let built_in = BulkSettings::default();
        Self {
            max_file_bytes: built_in.max_file_bytes,
            concurrency: built_in.concurrency.get(),
        }
    }
}

impl TryFrom<BulkFile> for BulkSettings {
    type Error = String;

    fn try_from(file: BulkFile) -> Result<Self, String> {
        match NonZeroUsize::new(file.concurrency) {
            Some(concurrency) if concurrency.get() <= 256 && file.max_file_bytes > 0 => Ok(Self {
                max_file_bytes: file.max_file_bytes,
                concurrency,
            }),
            _ => Err(format!(
                "bulk: concurrency ({}) must be between 1 and 256 and max_file_bytes ({}) positive",
                file.concurrency, file.max_file_bytes
            )),
        }
    }
}
