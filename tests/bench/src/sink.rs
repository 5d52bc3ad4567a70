//! The mails postfix's `smtp-sink` accepted, from its own running counter (`-c`): it writes
//! `sess=… quit=… mesg=N` each time it answers a message's final `.`, so the last `mesg=` in its
//! output is the number of mails it accepted.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::Context;

pub struct Sink {
    log: PathBuf,
}

impl Sink {
    pub fn new(log: &Path) -> Self {
        Self {
            log: log.to_owned(),
        }
    }

    /// Mails accepted since smtp-sink started.
    pub fn accepted(&self) -> anyhow::Result<u64> {
        let mut file = std::fs::File::open(&self.log)
            .with_context(|| format!("cannot open smtp-sink's log {}", self.log.display()))?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(256)))?;
        let mut tail = String::new();
        file.read_to_string(&mut tail)?;
        Ok(last_count(&tail))
    }
}

/// The last complete `mesg=N` in `text`; 0 when there is none.
fn last_count(text: &str) -> u64 {
    text.rsplit("mesg=")
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            // A number cut off at the end of the file is not complete: it ends with a CR.
            let complete = rest.len() > digits.len();
            (complete && !digits.is_empty()).then(|| digits.parse().ok())?
        })
        .next()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::last_count;

    #[test]
    fn the_last_complete_counter_is_read() {
        assert_eq!(last_count(""), 0);
        assert_eq!(
            last_count("sess=0 quit=0 mesg=1\rsess=0 quit=0 mesg=2\r"),
            2
        );
        assert_eq!(last_count("mesg=19\rsess=0 quit=0 mesg=2"), 19);
    }
}
