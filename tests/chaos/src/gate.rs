//! The SMTP gate (tests/e2e/smtp/gate.py, run as a sink): its mode file, and the mail it kept.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Sets how the gate answers: `accept`, `refuse` or `slow SECONDS`.
pub fn set_mode(file: &Path, mode: &str) -> anyhow::Result<()> {
    // Written whole and renamed, so that the gate never reads half a mode.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, mode).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

/// One mail as a recipient received it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The EHLO name of the client that sent it (which email worker).
    pub sender: String,
    pub recipient: String,
    pub message_id: String,
    /// The mail's /confirm link, if it has one.
    pub link: Option<String>,
}

/// Reads the gate's DELIVERED lines as they are written.
pub struct Mailboxes {
    path: PathBuf,
    offset: u64,
}

impl Mailboxes {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            offset: 0,
        }
    }

    /// The mails delivered since the last call.
    pub fn read_new(&mut self) -> anyhow::Result<Vec<Delivery>> {
        let mut file = std::fs::File::open(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut reader = BufReader::new(file);
        let mut out = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            // A line not yet finished is read again next time.
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            self.offset += n as u64;
            if let Some(d) = parse(line.trim_end()) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Every mail delivered so far.
    pub fn read_all(path: &Path) -> anyhow::Result<Vec<Delivery>> {
        Self::new(path).read_new()
    }
}

fn parse(line: &str) -> Option<Delivery> {
    let mut words = line.strip_prefix("DELIVERED ")?.split(' ');
    let sender = words.next()?.to_owned();
    let recipient = words.next()?.to_owned();
    let message_id = words.next()?.to_owned();
    let link = words.next().filter(|l| *l != "-").map(str::to_owned);
    Some(Delivery {
        sender,
        recipient,
        message_id,
        link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivered_line_is_read_with_its_link() {
        let d = parse("DELIVERED email-worker-1.chaos.example a@pickup.example <x@pickup.example> http://h/confirm?code=abc").unwrap();
        assert_eq!(d.sender, "email-worker-1.chaos.example");
        assert_eq!(d.recipient, "a@pickup.example");
        assert_eq!(d.message_id, "<x@pickup.example>");
        assert_eq!(d.link.as_deref(), Some("http://h/confirm?code=abc"));
        let welcome = parse("DELIVERED w a@pickup.example <y@pickup.example> -").unwrap();
        assert_eq!(welcome.link, None);
        assert!(parse("RCPT a@pickup.example").is_none());
    }
}
