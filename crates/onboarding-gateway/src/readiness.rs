//! Readiness: whether each role a process runs can do its job, and what it misses.
//!
//! The gateway needs PostgreSQL only (events wait in the outbox while Kafka is down); the
//! scheduler too; the relay, the email worker and the intake need PostgreSQL and Kafka; the
//! provisioner needs them and the user store (the LDAP directory) besides. In a
//! process that runs the gateway, the gateway's readiness is the answer's status (it is the role
//! that takes traffic), and the others' are reported beside it (docs/adr/0016).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;

use onboarding_config::KafkaSettings;
use onboarding_kafka::KafkaProbe;
use onboarding_store::Store;
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use crate::GatewayError;

/// A long-running part of the engine, named as the command that runs it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Gateway,
    Relay,
    EmailWorker,
    Scheduler,
    Intake,
    Provisioner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Relay => "relay",
            Self::EmailWorker => "email-worker",
            Self::Scheduler => "scheduler",
            Self::Intake => "intake",
            Self::Provisioner => "provisioner",
        }
    }

    /// What the role cannot do its job without.
    pub fn needs(self) -> &'static [Dependency] {
        match self {
            Self::Gateway | Self::Scheduler => &[Dependency::Postgres],
            Self::Relay | Self::EmailWorker | Self::Intake => {
                &[Dependency::Postgres, Dependency::Kafka]
            }
            Self::Provisioner => &[
                Dependency::Postgres,
                Dependency::Kafka,
                Dependency::Directory,
            ],
        }
    }
}

/// A service a role depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dependency {
    Postgres,
    Kafka,
    /// The user store the provisioner writes to (`[user_store]`).
    Directory,
}

/// Checks the user store: connects and binds as the engine (the provisioner's `UserStore`).
pub type DirectoryCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Answers `/readyz` for the roles of one process: checks what they need, and only that.
pub struct Readiness {
    roles: Vec<Role>,
    store: Store,
    /// Only when a role needs Kafka: a `gateway` process has no Kafka client.
    kafka: Option<KafkaProbe>,
    /// Only in a process that runs the provisioner.
    directory: Option<DirectoryCheck>,
}

impl Readiness {
    pub fn new(
        roles: Vec<Role>,
        store: Store,
        kafka: &KafkaSettings,
    ) -> Result<Self, GatewayError> {
        let probe = roles
            .iter()
            .any(|r| r.needs().contains(&Dependency::Kafka))
            .then(|| KafkaProbe::new(kafka))
            .transpose()
            .map_err(|e| GatewayError::Kafka(e.into()))?;
        Ok(Self {
            roles,
            store,
            kafka: probe,
            directory: None,
        })
    }

    /// Checks the user store too (a process that runs the provisioner).
    pub fn with_directory(mut self, check: DirectoryCheck) -> Self {
        self.directory = Some(check);
        self
    }

    /// Checks every dependency the roles need, in parallel.
    pub async fn check(&self) -> Report {
        let started = Instant::now();
        let kafka = async {
            match &self.kafka {
                Some(probe) => Some(probe.check().await.map_err(|e| e.to_string())),
                None => None,
            }
        };
        let directory = async {
            match &self.directory {
                Some(check) => Some(check().await),
                None => None,
            }
        };
        let (postgres, kafka, directory) = tokio::join!(self.store.ping(), kafka, directory);
        let mut checks = BTreeMap::new();
        checks.insert(Dependency::Postgres, postgres.map_err(|e| e.to_string()));
        if let Some(kafka) = kafka {
            checks.insert(Dependency::Kafka, kafka);
        }
        if let Some(directory) = directory {
            checks.insert(Dependency::Directory, directory);
        }
        Report::of(&self.roles, checks, started.elapsed().as_millis() as u64)
    }
}

/// One role's readiness in the answer.
#[derive(Debug, Serialize, PartialEq)]
struct RoleReport {
    ready: bool,
    missing: Vec<Dependency>,
}

/// The answer to `/readyz`.
#[derive(Debug, Serialize)]
pub struct Report {
    status: &'static str,
    /// Every dependency that failed its check.
    missing: Vec<Dependency>,
    roles: BTreeMap<&'static str, RoleReport>,
    /// `ok`, or the error, for each dependency checked.
    checks: BTreeMap<Dependency, String>,
    elapsed_ms: u64,
    #[serde(skip)]
    code: StatusCode,
}

impl Report {
    fn of(
        roles: &[Role],
        checks: BTreeMap<Dependency, Result<(), String>>,
        elapsed_ms: u64,
    ) -> Self {
        let down = |d: &Dependency| checks.get(d).is_some_and(Result::is_err);
        let missing: Vec<Dependency> = checks.keys().copied().filter(|d| down(d)).collect();
        let reports: BTreeMap<&'static str, RoleReport> = roles
            .iter()
            .map(|role| {
                let missing: Vec<Dependency> =
                    role.needs().iter().copied().filter(|d| down(d)).collect();
                let report = RoleReport {
                    ready: missing.is_empty(),
                    missing,
                };
                (role.as_str(), report)
            })
            .collect();
        let all_ready = reports.values().all(|r| r.ready);
        // The role that takes traffic decides, where there is one.
        let serving = reports
            .get(Role::Gateway.as_str())
            .map_or(all_ready, |gateway| gateway.ready);
        let (code, status) = match (serving, all_ready) {
            (true, true) => (StatusCode::OK, "ready"),
            (true, false) => (StatusCode::OK, "degraded"),
            (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        Self {
            status,
            missing,
            roles: reports,
            checks: checks
                .into_iter()
                .map(|(d, r)| (d, r.err().unwrap_or_else(|| "ok".to_owned())))
                .collect(),
            elapsed_ms,
            code,
        }
    }
}

impl Reply for Report {
    fn into_response(self) -> Response {
        let code = self.code;
        warp::reply::with_status(warp::reply::json(&self), code).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(roles: &[Role], postgres: bool, kafka: Option<bool>) -> Report {
        let result = |up: bool| if up { Ok(()) } else { Err("down".to_owned()) };
        let mut checks = BTreeMap::from([(Dependency::Postgres, result(postgres))]);
        if let Some(kafka) = kafka {
            checks.insert(Dependency::Kafka, result(kafka));
        }
        Report::of(roles, checks, 0)
    }

    #[test]
    fn the_gateway_needs_only_postgresql() {
        let r = report(&[Role::Gateway], true, None);
        assert_eq!((r.code, r.status), (StatusCode::OK, "ready"));
        let r = report(&[Role::Gateway], false, None);
        assert_eq!(
            (r.code, r.status),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
        assert_eq!(r.missing, [Dependency::Postgres]);
        assert_eq!(r.roles["gateway"].missing, [Dependency::Postgres]);
    }

    #[test]
    fn the_relay_worker_and_intake_need_kafka_too_and_the_scheduler_does_not() {
        for role in [Role::Relay, Role::EmailWorker, Role::Intake] {
            let r = report(&[role], true, Some(false));
            assert_eq!(
                (r.code, r.status),
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            );
            assert_eq!(r.roles[role.as_str()].missing, [Dependency::Kafka]);
            assert_eq!(r.checks[&Dependency::Postgres], "ok");
        }
        let r = report(&[Role::Scheduler], true, Some(false));
        assert_eq!(r.code, StatusCode::OK);
    }

    #[test]
    fn the_provisioner_needs_the_directory_and_serve_stays_up_without_it() {
        let mut checks = BTreeMap::from([
            (Dependency::Postgres, Ok(())),
            (Dependency::Kafka, Ok(())),
            (Dependency::Directory, Err("connection refused".to_owned())),
        ]);
        let r = Report::of(&[Role::Provisioner], checks.clone(), 0);
        assert_eq!(
            (r.code, r.status),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
        assert_eq!(r.roles["provisioner"].missing, [Dependency::Directory]);
        let r = Report::of(&[Role::Gateway, Role::Provisioner], checks.clone(), 0);
        assert_eq!((r.code, r.status), (StatusCode::OK, "degraded"));
        checks.insert(Dependency::Directory, Ok(()));
        let r = Report::of(&[Role::Provisioner], checks, 0);
        assert_eq!((r.code, r.status), (StatusCode::OK, "ready"));
    }

    #[test]
    fn serve_follows_the_gateway_and_says_which_other_role_waits() {
        let all = [
            Role::Gateway,
            Role::Relay,
            Role::EmailWorker,
            Role::Scheduler,
            Role::Intake,
        ];
        let r = report(&all, true, Some(true));
        assert_eq!((r.code, r.status), (StatusCode::OK, "ready"));
        let r = report(&all, true, Some(false));
        assert_eq!((r.code, r.status), (StatusCode::OK, "degraded"));
        assert_eq!(r.missing, [Dependency::Kafka]);
        assert!(r.roles["gateway"].ready && r.roles["scheduler"].ready);
        assert!(!r.roles["relay"].ready);
        let r = report(&all, false, Some(true));
        assert_eq!(
            (r.code, r.status),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
    }
}
