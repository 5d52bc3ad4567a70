//! `onboard serve`, and `gateway`, `relay`, `email-worker`, `scheduler`, `intake`, `provisioner`
//! on their own: the long-running components, stopped together on SIGTERM or Ctrl-C. `serve`
//! runs the provisioner when `[user_store]` is configured.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use onboarding_config::Settings;
use onboarding_email_worker::EmailWorker;
use onboarding_gateway::{AppState, DirectoryCheck, Readiness, Role};
use onboarding_provisioner::{LdapUserStore, Provisioner, UserStore};
use onboarding_relay::Relay;
use onboarding_store::Store;
use tokio_util::sync::CancellationToken;

/// Which components one process runs.
#[derive(Clone, Copy)]
pub struct Components {
    gateway: bool,
    relay: bool,
    worker: bool,
    scheduler: bool,
    intake: bool,
    /// Only with `[user_store]`: `serve` leaves it out without one.
    provisioner: bool,
}

impl Components {
    pub const ALL: Self = Self {
        gateway: true,
        relay: true,
        worker: true,
        scheduler: true,
        intake: true,
        provisioner: true,
    };
    const NONE: Self = Self {
        gateway: false,
        relay: false,
        worker: false,
        scheduler: false,
        intake: false,
        provisioner: false,
    };
    pub const GATEWAY: Self = Self {
        gateway: true,
        ..Self::NONE
    };
    pub const RELAY: Self = Self {
        relay: true,
        ..Self::NONE
    };
    pub const WORKER: Self = Self {
        worker: true,
        ..Self::NONE
    };
    pub const SCHEDULER: Self = Self {
        scheduler: true,
        ..Self::NONE
    };
    pub const INTAKE: Self = Self {
        intake: true,
        ..Self::NONE
    };
    pub const PROVISIONER: Self = Self {
        provisioner: true,
        ..Self::NONE
    };
}

impl Components {
    /// The roles these components play, for readiness.
    fn roles(self) -> Vec<Role> {
        [
            (self.gateway, Role::Gateway),
            (self.relay, Role::Relay),
            (self.worker, Role::EmailWorker),
            (self.scheduler, Role::Scheduler),
            (self.intake, Role::Intake),
            (self.provisioner, Role::Provisioner),
        ]
        .into_iter()
        .filter_map(|(runs, role)| runs.then_some(role))
        .collect()
    }

    /// The roles by name, for a log line ("the gateway, the relay").
    fn names(self) -> String {
        [
            (self.gateway, "the gateway"),
            (self.relay, "the relay"),
            (self.worker, "the email worker"),
            (self.scheduler, "the scheduler"),
            (self.intake, "the intake"),
            (self.provisioner, "the provisioner"),
        ]
        .into_iter()
        .filter_map(|(runs, name)| runs.then_some(name))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received; stopping"),
    }
}

fn metrics() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(onboarding_gateway::TIME_TO_ACTIVATE.to_owned()),
            &onboarding_gateway::TIME_TO_ACTIVATE_BUCKETS,
        )
        .context("the buckets of onboard_time_to_activate_seconds")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    #[cfg(feature = "jemalloc")]
    tokio::spawn(async {
        loop {
            allocator_gauges();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Ok(handle)
}

/// jemalloc's own figures, once a second (docs/adr/0048): the bytes the process holds allocated
/// through `malloc` (the Rust code's and librdkafka's), and the bytes jemalloc keeps resident for
/// them (its pages, including freed ones not yet returned). The process's resident memory beyond
/// the second is thread stacks, the binary's pages and other direct mappings.
#[cfg(feature = "jemalloc")]
fn allocator_gauges() {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The statistics are a snapshot taken when the epoch advances.
    if epoch::advance().is_err() {
        return;
    }
    if let Ok(bytes) = stats::allocated::read() {
        metrics::gauge!("onboard_memory_allocated_bytes").set(bytes as f64);
    }
    if let Ok(bytes) = stats::resident::read() {
        metrics::gauge!("onboard_memory_allocator_resident_bytes").set(bytes as f64);
    }
}

/// Runs the chosen components until SIGTERM or Ctrl-C, then stops them gracefully.
pub async fn run(settings: Arc<Settings>, mut run: Components) -> Result<()> {
    // `serve` without a `[user_store]` runs no provisioner; `onboard provisioner` refuses to start.
    if run.provisioner && settings.user_store.is_none() {
        if run.gateway {
            run.provisioner = false;
        } else {
            anyhow::bail!(
                "no [user_store] is configured: the provisioner has nothing to provision into \
                 (see docs/configuration.md)"
            );
        }
    }
    let user_store: Option<Arc<dyn UserStore>> = match (&settings.user_store, run.provisioner) {
        (Some(config), true) => Some(Arc::new(LdapUserStore::new(config).context("user_store")?)),
        _ => None,
    };
    let Components {
        gateway,
        relay,
        worker,
        scheduler,
        intake,
        provisioner,
    } = run;
    let handle = metrics()?;
    // Connections are made when needed: a process started while PostgreSQL is down serves its
    // endpoints (not ready) and waits for it below before its roles start.
    let pool = onboarding_store::connect_lazy(&settings)?;
    let store = Store::new(
        pool.clone(),
        onboarding_store::services(&settings)?,
        onboarding_store::PersonalKeys::from_settings(&settings)?,
    );
    let mut readiness = Readiness::new(run.roles(), store.clone(), &settings.kafka)?;
    if let Some(user_store) = &user_store {
        let user_store = user_store.clone();
        let check: DirectoryCheck = Arc::new(move || {
            let user_store = user_store.clone();
            Box::pin(async move { user_store.check().await.map_err(|e| e.to_string()) })
        });
        readiness = readiness.with_directory(check);
    }
    let readiness = Arc::new(readiness);
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    if let (false, Some(addr)) = (gateway, settings.observability.metrics_bind) {
        let (handle, readiness, token) = (handle.clone(), readiness.clone(), shutdown.clone());
        let limits = onboarding_gateway::Limits::of(&settings.gateway);
        tasks.spawn(async move {
            onboarding_gateway::serve_metrics(addr, handle, limits, readiness, token)
                .await
                .context("metrics endpoint")
        });
    }
    let mut bulk_runner = None;
    if gateway {
        let state = Arc::new(AppState::new(
            settings.clone(),
            store.clone(),
            Some(handle),
            readiness,
        )?);
        bulk_runner = Some(state.bulk_runner());
        let token = shutdown.clone();
        tasks.spawn(async move {
            onboarding_gateway::serve(state, token, None)
                .await
                .context("gateway")
        });
    }

    // The endpoints answer (not ready) while the roles wait for PostgreSQL.
    let signal = stop_signal();
    tokio::pin!(signal);
    let mut failure = None;
    let (database, names) = (onboarding_store::database_address(&settings), run.names());
    let up = tokio::select! {
        up = onboarding_store::wait_for_database(&pool, &names, &database, std::future::pending::<()>()) => match up {
            Ok(up) => up,
            Err(e) => {
                failure = Some(anyhow::Error::new(e).context("cannot use the database"));
                false
            }
        },
        _ = &mut signal => false,
        Some(done) = tasks.join_next() => {
            failure = Some(stopped(done));
            false
        }
    };
    // Names are registered and looked up under the key the registry was keyed with: another
    // key-encryption key (or none) stops the process here instead of making every name unknown
    // (docs/adr/0035).
    let up = up
        && match onboarding_store::check_registry_key(&pool, store.username_registry()).await {
            Ok(()) => true,
            Err(e @ onboarding_store::RegistryKeyError::Store(_)) => {
                failure = Some(anyhow::Error::new(e).context(
                    "cannot read the username registry's key (has `onboard migrate` run for this \
                     version?)",
                ));
                false
            }
            Err(e) => {
                failure = Some(e.into());
                false
            }
        };
    if up {
        if let Some((runner, wake)) = bulk_runner {
            let token = shutdown.clone();
            tasks.spawn(async move {
                runner.run(wake, token).await;
                Ok(())
            });
        }
        if relay {
            let relay = Relay::new(pool.clone(), &settings.kafka, store.personal_keys().clone())?;
            let token = shutdown.clone();
            tasks.spawn(async move { relay.run(token).await.context("relay") });
        }
        // The consumers read the event topic's generation (how many times the relay recreated it
        // after a broker loss) before they join: each generation has its consumer groups
        // (docs/adr/0038).
        let generation = if worker || intake || provisioner {
            store
                .topic_generation(&settings.kafka.topic)
                .await
                .context("cannot read the event topic's generation from PostgreSQL")?
        } else {
            0
        };
        if worker {
            let worker = EmailWorker::new(&settings, store.clone(), generation)?;
            let token = shutdown.clone();
            tasks.spawn(async move { worker.run(token).await.context("email worker") });
        }
        if scheduler {
            let every = Duration::from_secs(
                settings
                    .identity_mgt
                    .user_onboarding
                    .expiry_scan_seconds
                    .get(),
            );
            let (store, token) = (store.clone(), shutdown.clone());
            tasks.spawn(async move {
                onboarding_store::run_scheduler(store, every, token).await;
                Ok(())
            });
        }
        if intake {
            let intake =
                onboarding_intake::Intake::new(settings.clone(), store.clone(), generation)?;
            let token = shutdown.clone();
            tasks.spawn(async move { intake.run(token).await.context("intake") });
        }
        if let (true, Some(user_store)) = (provisioner, user_store) {
            let provisioner = Provisioner::new(&settings, store.clone(), user_store, generation)?;
            let token = shutdown.clone();
            tasks.spawn(async move { provisioner.run(token).await.context("provisioner") });
        }

        tokio::select! {
            _ = &mut signal => {}
            Some(done) = tasks.join_next() => failure = Some(stopped(done)),
        }
    }

    shutdown.cancel();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::error!(error = %format!("{e:#}"), "component failed while stopping");
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A component stopped on its own: that is a failure; the others are stopped too.
fn stopped(done: Result<Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match done {
        Ok(Ok(())) => anyhow::anyhow!("a component stopped unexpectedly"),
        Ok(Err(e)) => e,
        Err(e) => anyhow::anyhow!("a component panicked: {e}"),
    }
}
