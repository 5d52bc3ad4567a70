//! One test's engine: its own database, topic and consumer groups on the shared services, and
//! the `onboard` processes it starts, stops, signals and reads the logs of.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;

use crate::{configuration, free_port, scratch_dir, unique, Options, Services};

pub struct Stack {
    pub services: Services,
    /// This test's own database.
    pub database_url: String,
    pub kafka: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub base_url: String,
    pub admin_token: String,
    /// A token with only the `read` scope, and one that is revoked.
    pub reader_token: String,
    pub revoked_token: String,
    /// A login service's token: the `verify` scope only.
    pub verifier_token: String,
    pub topic: String,
    pub http: reqwest::Client,
    procs: Mutex<HashMap<String, Child>>,
}

impl Stack {
    /// A fresh database, topic and consumer group, migrated; no process started yet.
    pub async fn new(name: &str, options: Options) -> Self {
        let stack = Self::unmigrated(name, options).await;
        let out = stack.cli(&["migrate"]);
        assert!(
            out.status.success(),
            "onboard migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stack
    }

    /// [`Stack::new`] as an older release left it: only the migrations numbered up to `last`
    /// applied, from the repository's `crates/onboarding-store/migrations` (so that a test can
    /// write rows the way that release did, then run `onboard migrate`).
    pub async fn migrated_up_to(name: &str, options: Options, last: i64) -> Self {
        let stack = Self::unmigrated(name, options).await;
        let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../crates/onboarding-store/migrations");
        let older = stack.dir.join(format!("migrations-up-to-{last}"));
        std::fs::create_dir_all(&older).unwrap();
        for entry in std::fs::read_dir(&all).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let number: i64 = name.split('_').next().unwrap().parse().unwrap();
            if number <= last {
                std::fs::copy(entry.path(), older.join(&name)).unwrap();
            }
        }
        let pool = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
        sqlx::migrate::Migrator::new(older.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap_or_else(|e| panic!("migrations up to {last}: {e}"));
        pool.close().await;
        stack
    }

    /// The database, topic and configuration of [`Stack::new`], without any migration.
    async fn unmigrated(name: &str, options: Options) -> Self {
        let services = Services::from_env();
        let id = unique("");
        let db = format!("e2e_{name}_{id}");
        let server = options
            .database
            .clone()
            .unwrap_or_else(|| services.database_url.clone());
        let admin = sqlx::PgPool::connect(&server)
            .await
            .expect("connect to the test PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE \"{db}\""))
            .execute(&admin)
            .await
            .expect("create the test database");
        admin.close().await;
        let database_url = match server.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{db}"),
            None => panic!("TEST_DATABASE_URL has no database name"),
        };
        let dir = scratch_dir().join(format!("{name}-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let base_url = format!("http://127.0.0.1:{port}");
        let mut token = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut token);
        let admin_token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
        let reader_token = unique("reader-");
        let revoked_token = unique("revoked-");
        let verifier_token = unique("verifier-");
        let mut code_key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut code_key);
        let topic = format!("e2e.{name}.{id}");
        // The key-encryption key that wraps the users' data keys, as a deployment mounts it.
        let kek_file = dir.join("personal-data.kek");
        let mut kek = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut kek);
        std::fs::write(
            &kek_file,
            base64::engine::general_purpose::STANDARD.encode(kek) + "\n",
        )
        .unwrap();
        let config = dir.join("onboard.toml");
        let kafka = options
            .kafka
            .clone()
            .unwrap_or_else(|| services.kafka.clone());
        let toml = configuration::onboard_toml(
            &configuration::Stack {
                name,
                id: &id,
                services: &services,
                database_url: &database_url,
                kafka: &kafka,
                topic: &topic,
                port,
                base_url: &base_url,
                admin_token: &admin_token,
                reader_token: &reader_token,
                revoked_token: &revoked_token,
                verifier_token: &verifier_token,
                code_key: &code_key,
                kek_file: &kek_file,
            },
            &options,
        );
        std::fs::write(&config, toml).unwrap();
        Self {
            services,
            database_url,
            kafka,
            dir,
            config,
            base_url,
            admin_token,
            reader_token,
            revoked_token,
            verifier_token,
            topic,

            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                // The gateway ends a keep-alive connection idle for header_read_timeout_seconds
                // (10 s): reusing one at that moment fails the request, as for any client whose
                // idle timeout is the server's or longer.
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            procs: Mutex::new(HashMap::new()),
        }
    }

    /// The whole engine as separate processes: gateway, relay, email worker.
    pub async fn start(name: &str, options: Options) -> Self {
        let stack = Self::new(name, options).await;
        stack.spawn("gateway");
        stack.spawn("relay");
        stack.spawn("email-worker");
        stack.spawn("scheduler");
        stack.wait_ready().await;
        stack
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_with_env(args, &[])
    }

    /// Runs `onboard` with extra environment variables (e.g. `ONBOARD__DATABASE__URL`).
    pub fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        Command::new(&self.services.onboard)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("ONBOARD_LOG", "warn")
            .envs(env.iter().copied())
            .output()
            .expect("run onboard")
    }

    /// Starts one component (`gateway`, `relay`, `email-worker`, `serve`) as its own process.
    pub fn spawn(&self, component: &str) {
        self.spawn_with_env(component, &[]);
    }

    /// Starts a component with extra environment variables (e.g. `ONBOARD__…` overrides).
    pub fn spawn_with_env(&self, component: &str, env: &[(&str, &str)]) {
        self.spawn_named(component, component, env);
    }

    /// Starts a component under a name of its own (for `signal` and its log file), so that
    /// several processes of one component can run side by side (e.g. two email workers).
    pub fn spawn_named(&self, name: &str, component: &str, env: &[(&str, &str)]) {
        self.spawn_program(name, &self.services.onboard, component, env);
    }

    /// Starts a component of another build of `onboard` (e.g. one with the `otlp` feature)
    /// under a name of its own.
    pub fn spawn_program(
        &self,
        name: &str,
        program: &std::path::Path,
        component: &str,
        env: &[(&str, &str)],
    ) {
        // Numbered in start order, so a restarted process never overwrites an earlier log.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = File::create(self.dir.join(format!("{name}-{n}.log"))).unwrap();
        let child = Command::new(program)
            .arg("--config")
            .arg(&self.config)
            .arg(component)
            .env("ONBOARD_LOG", "info,onboarding_email_worker=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn onboard");
        let previous = self.procs.lock().unwrap().insert(name.to_owned(), child);
        assert!(previous.is_none(), "{name} is already running");
    }

    /// The log lines of every process started under `name` so far (all its restarts).
    pub fn logs_of(&self, name: &str) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if file.starts_with(&format!("{name}-")) && file.ends_with(".log") {
                out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    /// How a component's process ended, or `None` while it runs (e.g. `signal: 11` when it
    /// died of SIGSEGV).
    pub fn exit_status(&self, name: &str) -> Option<std::process::ExitStatus> {
        self.procs
            .lock()
            .unwrap()
            .get_mut(name)
            .unwrap_or_else(|| panic!("{name} was not started"))
            .try_wait()
            .unwrap()
    }

    /// Sends a signal (`TERM`, `KILL`) to a component and waits for it to exit.
    pub fn signal(&self, component: &str, signal: &str) {
        let mut child = self
            .procs
            .lock()
            .unwrap()
            .remove(component)
            .unwrap_or_else(|| panic!("{component} is not running"));
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{component} did not stop within 30 s of SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes a process (SIGSTOP): it stays alive, holds its sockets and does nothing. It is
    /// killed with the others when the stack is dropped.
    pub fn freeze(&self, name: &str) {
        let procs = self.procs.lock().unwrap();
        let child = procs
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        let status = Command::new("kill")
            .arg("-STOP")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -STOP failed");
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/readyz", self.base_url))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not become ready within 60 s; logs in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last 30 lines of every process's log, for a failed test's output.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                    out.push_str(&format!("--- {}\n{tail}\n", p.display()));
                }
            }
        }
        out
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("component logs:\n{}", self.log_tail());
        }
        for (_, mut child) in self.procs.lock().unwrap().drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
