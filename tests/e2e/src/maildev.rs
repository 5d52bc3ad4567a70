//! The mail MailDev received, read through its HTTP API.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{unique, Stack};

/// One mail as MailDev received it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub raw: Value,
}

impl Mail {
    pub fn subject(&self) -> &str {
        self.raw["subject"].as_str().unwrap_or_default()
    }
    pub fn text(&self) -> &str {
        self.raw["text"].as_str().unwrap_or_default()
    }
    pub fn html(&self) -> &str {
        self.raw["html"].as_str().unwrap_or_default()
    }
    pub fn sender(&self) -> &str {
        self.raw["from"][0]["address"].as_str().unwrap_or_default()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.raw["headers"][name].as_str()
    }
    /// The confirmation link in the plain-text part.
    pub fn link(&self) -> String {
        self.text()
            .split_whitespace()
            .find(|w| w.contains("/confirm?code="))
            .unwrap_or_else(|| panic!("no confirmation link in the mail text:\n{}", self.text()))
            .to_owned()
    }
    pub fn code(&self) -> String {
        let link = self.link();
        link.split_once("code=").map(|(_, c)| c.to_owned()).unwrap()
    }
}

impl Stack {
    /// Every mail MailDev holds for this recipient, oldest first.
    pub async fn mails_to(&self, address: &str) -> Vec<Mail> {
        let all: Vec<Value> = self
            .http
            .get(format!("{}/api/email", self.services.maildev))
            .send()
            .await
            .expect("MailDev answers")
            .json()
            .await
            .expect("MailDev returns JSON");
        all.into_iter()
            .filter(|m| {
                m["to"]
                    .as_array()
                    .is_some_and(|to| to.iter().any(|t| t["address"].as_str() == Some(address)))
            })
            .map(|raw| Mail { raw })
            .collect()
    }

    /// How many mails MailDev holds for each recipient whose address ends with `suffix`.
    pub async fn mail_counts(&self, suffix: &str) -> std::collections::HashMap<String, usize> {
        let all: Vec<Value> = self
            .http
            .get(format!("{}/api/email", self.services.maildev))
            .send()
            .await
            .expect("MailDev answers")
            .json()
            .await
            .expect("MailDev returns JSON");
        let mut counts = std::collections::HashMap::new();
        for to in all.iter().filter_map(|m| m["to"].as_array()).flatten() {
            if let Some(address) = to["address"].as_str().filter(|a| a.ends_with(suffix)) {
                *counts.entry(address.to_owned()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Waits until `count` mails reached this recipient (up to 60 s) and returns them.
    pub async fn wait_for_mails(&self, address: &str, count: usize) -> Vec<Mail> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mails = self.mails_to(address).await;
            if mails.len() >= count {
                return mails;
            }
            assert!(
                Instant::now() < deadline,
                "{count} mail(s) to {address} expected, {} arrived within 60 s; logs in {}",
                mails.len(),
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn wait_for_mail(&self, address: &str) -> Mail {
        self.wait_for_mails(address, 1).await.remove(0)
    }

    /// Invites `username` at a fresh address and waits for the mail: (user id, address, mail).
    pub async fn invite_mailed(&self, username: &str) -> (String, String, Mail) {
        let email = format!(
            "{}@pickup.example",
            unique(&format!("{}.", username.to_lowercase()))
        );
        let id = self.invite(username, &email).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mail = self.wait_for_mail(&email).await;
        (id, email, mail)
    }
}
