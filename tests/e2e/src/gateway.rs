//! Requests to the stack's gateway: the admin API with the stack's tokens, and the public forms.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Stack;

impl Stack {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn admin(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.bearer_auth(&self.admin_token)
    }

    pub async fn invite(&self, username: &str, email: &str) -> Value {
        let r = self
            .admin(self.http.post(self.url("/api/v1/users")))
            .json(&serde_json::json!({"username": username, "email": email, "domain": "PRIMARY"}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "invite failed: {body}");
        body
    }

    pub async fn user(&self, id: &str) -> Value {
        let r = self
            .admin(self.http.get(self.url(&format!("/api/v1/users/{id}"))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Invites `n` users at once, `{name}{i}` at `{name}{i}.{tag}@pickup.example`; their ids in
    /// that order.
    pub async fn invite_batch(&self, name: &str, n: usize, tag: &str) -> Vec<String> {
        let users: Vec<(String, String)> = (0..n)
            .map(|i| {
                (
                    format!("{name}{i}"),
                    format!("{name}{i}.{tag}@pickup.example"),
                )
            })
            .collect();
        futures::future::join_all(users.iter().map(|(u, e)| self.invite(u, e)))
            .await
            .into_iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// `GET /api/v1/users?{query}` with the admin token: the JSON list.
    pub async fn list(&self, query: &str) -> Value {
        let r = self
            .admin(self.http.get(self.url(&format!("/api/v1/users?{query}"))))
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }

    /// Posts a form to one of the pages (`/confirm`, `/revoke`, …) with extra headers.
    pub async fn post_form(
        &self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self.http.post(self.url(path)).form(form);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.unwrap()
    }

    /// `POST /api/v1/users/{id}/resend` with the admin token.
    pub async fn resend(&self, id: &str) -> reqwest::Response {
        self.admin(
            self.http
                .post(self.url(&format!("/api/v1/users/{id}/resend"))),
        )
        .send()
        .await
        .unwrap()
    }

    /// `POST /api/v1/credentials/verify` with `token`: the status, the JSON answer and its
    /// `Retry-After`.
    pub async fn verify(&self, token: &str, body: Value) -> (u16, Value, Option<String>) {
        let r = self
            .http
            .post(self.url("/api/v1/credentials/verify"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, r.json().await.unwrap(), retry_after)
    }

    /// `POST /api/v1/password-submissions`: the status and the JSON answer.
    pub async fn submit_password(&self, code: &str, password: &str) -> (u16, Value) {
        let r = self
            .http
            .post(self.url("/api/v1/password-submissions"))
            .json(&serde_json::json!({"code": code, "password": password}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Waits until the user view shows the mail delivery `status` (the worker records the
    /// outcome just after the SMTP server's answer, so a mail can be in MailDev a moment before
    /// it is recorded): the view.
    pub async fn wait_for_delivery(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let view = self.user(id).await;
            if view["email_delivery"]["status"] == status {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "delivery of {id} never became {status}: {view}; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
