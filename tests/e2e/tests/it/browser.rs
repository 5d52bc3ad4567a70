//! Jane's onboarding in a real browser: Debian's Chromium, driven by playwright-core
//! (`tests/browser/create-password.mjs`), reads her invitation in MailDev, follows the
//! "Create Password" button, sets her password on the page and sees her account active.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use onboarding_e2e::{unique, Options, Stack};

const JANES_PASSWORD: &str = "Pickup rides at dawn 42";
/// The script limits each wait to 30 s and itself to 150 s; this is the last resort.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

fn required(name: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
        panic!("{name} is not set: run the browser test with `tests/run`, which installs Chromium and playwright-core and sets it")
    })
}

#[tokio::test]
async fn jane_creates_her_password_in_a_real_browser_from_the_mail_maildev_shows() {
    let test = "jane_creates_her_password_in_a_real_browser_from_the_mail_maildev_shows";
    let node_modules = required("TEST_BROWSER_NODE_MODULES");
    let chromium = required("TEST_CHROMIUM");
    let artifacts = PathBuf::from(required("TEST_ARTIFACTS")).join(test);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../browser/create-password.mjs");
    assert!(script.is_file(), "{} is missing", script.display());
    assert!(
        Path::new(&node_modules).join("playwright-core").is_dir(),
        "no playwright-core in TEST_BROWSER_NODE_MODULES={node_modules}: run `tests/run`"
    );
    assert!(
        Path::new(&chromium).is_file(),
        "TEST_CHROMIUM={chromium} does not exist: run `tests/run`"
    );
    if artifacts.exists() {
        std::fs::remove_dir_all(&artifacts).unwrap();
    }
    std::fs::create_dir_all(&artifacts).unwrap();

    let stack = Stack::start("browser", Options::default()).await;
    let email = format!("{}@pickup.example", unique("jane."));
    let created = stack.invite("Jane", &email).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mail = stack.wait_for_mail(&email).await;
    let mail_id = mail.raw["id"]
        .as_str()
        .unwrap_or_else(|| panic!("MailDev's mail has no id: {}", mail.raw))
        .to_owned();

    // Jane, in Chromium: the mail in MailDev, the button, the password page, the result.
    let stdout_path = artifacts.join("script.stdout");
    let stderr_path = artifacts.join("script.stderr");
    let mut child = Command::new("node")
        .arg(&script)
        .args(["--maildev", &stack.services.maildev])
        .args(["--mail-id", &mail_id])
        .arg("--artifacts")
        .arg(&artifacts)
        .env("NEW_PASSWORD", JANES_PASSWORD)
        .env("NODE_PATH", &node_modules)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .expect("run node (tests/run installs it)");
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let report = format!(
        "{}\n--- stdout\n{stdout}--- stderr\n{stderr}--- screenshots in {}",
        script.display(),
        artifacts.display()
    );
    let status = status
        .unwrap_or_else(|| panic!("the browser script ran over {SCRIPT_TIMEOUT:?}: {report}"));
    assert!(
        status.success(),
        "the browser script failed ({status}): {report}"
    );

    let saw: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("the browser script printed no JSON line: {report}"));
    eprintln!("the browser saw: {saw}");
    assert_eq!(
        saw["result"]["heading"], "Your account is active",
        "{report}"
    );
    assert_eq!(saw["mail"]["to"][0], email.as_str(), "{report}");
    let page = saw["password_page"]["url"].as_str().unwrap_or_default();
    assert!(
        page.starts_with(&stack.url("/confirm?code=")),
        "the button led to {page}, not to the gateway's password page: {report}"
    );
    for shot in [
        "01-mail-in-maildev.png",
        "03-password-page.png",
        "04-account-active.png",
    ] {
        let len = std::fs::metadata(artifacts.join(shot)).map_or(0, |m| m.len());
        assert!(len > 0, "no screenshot {shot}: {report}");
    }

    // What the browser did, the engine recorded: Jane is active.
    let view = stack.user(&id).await;
    assert_eq!(view["state"], "Active", "{view}");
    assert!(view["activated_at"].is_string(), "{view}");
}
