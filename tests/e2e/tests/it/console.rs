//! The admin console in a real browser: Debian's Chromium, driven by playwright-core
//! (`tests/browser/console.mjs`), signs in with the admin token, finds Jane, resends her link
//! (MailDev receives a second mail), revokes Robert, uploads a bulk file and watches its job,
//! with axe-core checking every page; a reader signs in with the keyboard and sees no button;
//! forged posts are refused. Screenshots go to `$CARGO_TARGET_DIR/test-artifacts/<test>/`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use onboarding_e2e::{unique, Options, Stack};
use serde_json::Value;

/// The script limits each wait to 30 s (the job's to 60 s) and itself to 240 s.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(270);

fn required(name: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
        panic!("{name} is not set: run the console's browser test with `tests/run`, which installs Chromium, playwright-core and axe-core and sets it")
    })
}

#[tokio::test]
async fn an_admin_runs_the_console_in_a_real_browser_and_a_reader_sees_no_buttons() {
    let test = "an_admin_runs_the_console_in_a_real_browser_and_a_reader_sees_no_buttons";
    let node_modules = required("TEST_BROWSER_NODE_MODULES");
    let chromium = required("TEST_CHROMIUM");
    let artifacts = PathBuf::from(required("TEST_ARTIFACTS")).join(test);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../browser/console.mjs");
    assert!(script.is_file(), "{} is missing", script.display());
    for package in ["playwright-core", "axe-core"] {
        assert!(
            Path::new(&node_modules).join(package).is_dir(),
            "no {package} in TEST_BROWSER_NODE_MODULES={node_modules}: run `tests/run`"
        );
    }
    if artifacts.exists() {
        std::fs::remove_dir_all(&artifacts).unwrap();
    }
    std::fs::create_dir_all(&artifacts).unwrap();

    let stack = Stack::start("console", Options::default()).await;
    let jane = unique("jane.");
    let robert = unique("robert.");
    let (jane_id, jane_email, _) = stack.invite_mailed(&jane).await;
    stack.wait_for_delivery(&jane_id, "sent").await;
    let (robert_id, _, _) = stack.invite_mailed(&robert).await;
    // Eve was invited and mailed, then erased: the console lists her as erased, by her id.
    let eve = unique("eve.");
    let (eve_id, eve_email, _) = stack.invite_mailed(&eve).await;
    stack.wait_for_delivery(&eve_id, "sent").await;
    let r = stack
        .admin(
            stack
                .http
                .delete(stack.url(&format!("/api/v1/users/{eve_id}?erase=true"))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The overview shows the last `onboard audit verify`.
    let verified = stack.cli(&["audit", "verify"]);
    assert!(verified.status.success(), "{verified:?}");

    // Two good rows, one with an address that is not one, one that invites Jane again.
    let bulk_file = artifacts.join("invitations.csv");
    let (ann, bob) = (unique("ann."), unique("bob."));
    std::fs::write(
        &bulk_file,
        format!(
            "username,email\n{ann},{ann}@pickup.example\n{bob},{bob}@pickup.example\n\
             broken,not-an-address\n{jane},{jane_email}\n"
        ),
    )
    .unwrap();

    let stdout_path = artifacts.join("script.stdout");
    let stderr_path = artifacts.join("script.stderr");
    let mut child = Command::new("node")
        .arg(&script)
        .args(["--base", &stack.base_url])
        .args(["--jane", &jane])
        .args(["--revokee", &robert])
        .args(["--erased", &eve_id])
        .arg("--bulk-file")
        .arg(&bulk_file)
        .arg("--artifacts")
        .arg(&artifacts)
        .env("ADMIN_TOKEN", &stack.admin_token)
        .env("READER_TOKEN", &stack.reader_token)
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
        "{}\n--- stdout\n{stdout}--- stderr\n{stderr}--- screenshots in {}\n--- gateway log\n{}",
        script.display(),
        artifacts.display(),
        stack.log_tail()
    );
    let status = status
        .unwrap_or_else(|| panic!("the browser script ran over {SCRIPT_TIMEOUT:?}: {report}"));
    assert!(
        status.success(),
        "the browser script failed ({status}): {report}"
    );
    let saw: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("the browser script printed no JSON line: {report}"));
    eprintln!("the browser saw: {saw}");

    // Signed in; the overview knows the audit verify that just ran.
    assert_eq!(saw["pages"]["sign_in"], "Sign in", "{report}");
    assert_eq!(saw["pages"]["overview"], "Overview", "{report}");
    let audit = saw["pages"]["overview_audit"].as_str().unwrap_or_default();
    assert!(audit.starts_with("Chain intact"), "{audit}");
    // Jane, found by search, with her mail's Message-ID and her invitation in the timeline.
    let rows = saw["pages"]["list_rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].as_str().unwrap().contains(&jane_email), "{rows:?}");
    assert_eq!(saw["pages"]["jane"], jane.as_str());
    let timeline = saw["pages"]["jane_timeline"].to_string();
    assert!(
        timeline.contains("UserInvited") && timeline.contains("admin:e2e-admin"),
        "{timeline}"
    );
    let mails = saw["pages"]["jane_mails"].to_string();
    assert!(
        mails.contains("InvitationMailSent") && mails.contains("250"),
        "{mails}"
    );
    // Resent: MailDev has her second mail, with a new link.
    assert_eq!(saw["pages"]["resent"], "A new link is on its way.");
    let two = stack.wait_for_mails(&jane_email, 2).await;
    assert_ne!(
        two[0].link(),
        two[1].link(),
        "the resent mail carries a new link"
    );
    // The forged posts did nothing: Jane is not revoked.
    assert_eq!(saw["forged"]["no_csrf"], 403, "{report}");
    assert_eq!(saw["forged"]["wrong_csrf"], 403, "{report}");
    assert_eq!(saw["forged"]["cross_site_with_token"], 403, "{report}");
    let other_site = saw["forged"]["other_site_form_led_to"]
        .as_str()
        .unwrap_or_default();
    assert!(
        other_site.starts_with(&stack.url("/admin/sign-in")),
        "{other_site}"
    );
    let jane_view = stack.user(&jane_id).await;
    assert_eq!(jane_view["state"], "CodeIssued", "{jane_view}");
    // Robert is revoked, by the admin token, with the reason typed in.
    assert_eq!(saw["pages"]["revoked_state"], "Revoked");
    let robert_view = stack.user(&robert_id).await;
    assert_eq!(robert_view["state"], "Revoked", "{robert_view}");
    assert_eq!(robert_view["revoked_by"], "admin", "{robert_view}");
    // Eve: the only erased user, listed by her id, her page says so and shows nothing of her.
    let erased_rows = saw["erased"]["rows"].as_array().unwrap();
    assert_eq!(erased_rows.len(), 1, "{erased_rows:?}");
    let row = erased_rows[0].as_str().unwrap();
    assert!(row.starts_with(&eve_id) && row.contains("Erased"), "{row}");
    assert_eq!(saw["erased"]["heading"], eve_id.as_str());
    assert_eq!(saw["erased"]["state"], "Erased");
    assert!(
        saw["erased"]["note"]
            .as_str()
            .unwrap()
            .starts_with("This user's personal data was erased ("),
        "{}",
        saw["erased"]["note"]
    );
    assert_eq!(saw["erased"]["username"], "");
    assert_eq!(saw["erased"]["email"], "");
    assert_eq!(saw["erased"]["claims"], "{}");
    let page_text = saw["erased"]["text"].as_str().unwrap();
    assert!(page_text.contains("UserErased"), "{page_text}");
    for personal in [eve.as_str(), eve_email.as_str()] {
        assert!(
            !page_text.contains(personal),
            "{personal} on her page: {page_text}"
        );
        assert!(!row.contains(personal), "{personal} in her row: {row}");
    }
    // The bulk job: two invited, the broken row and Jane's listed with reasons, downloadable.
    assert_eq!(saw["bulk"]["progress"], "4 of 4 rows applied", "{report}");
    let failed = saw["bulk"]["failed_rows"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed[0].as_str().unwrap().starts_with("4 invalid broken"),
        "{failed:?}"
    );
    assert!(
        failed[1].as_str().unwrap().starts_with("5 duplicate"),
        "{failed:?}"
    );
    let csv = saw["bulk"]["failed_csv"].as_str().unwrap();
    assert!(
        csv.starts_with("line,status,username,reason\n4,invalid,broken,"),
        "{csv}"
    );
    let ann_listed = stack.list("state=CodeIssued").await.to_string();
    assert!(
        ann_listed.contains(&ann) && ann_listed.contains(&bob),
        "{ann_listed}"
    );
    // Signed out: the session is gone.
    let after = saw["pages"]["after_sign_out"].as_str().unwrap_or_default();
    assert!(after.starts_with(&stack.url("/admin/sign-in")), "{after}");
    // The reader: the keyboard reaches the skip link, then the token field; no buttons, no
    // upload, and a post that needs `invite` is refused.
    assert_eq!(saw["reader"]["first_tab"], "Skip to the content");
    assert_eq!(saw["reader"]["second_tab"], "token");
    assert_eq!(saw["reader"]["jane"], jane.as_str());
    assert_eq!(saw["reader"]["buttons"]["resend"], 0);
    assert_eq!(saw["reader"]["buttons"]["revoke"], 0);
    assert_eq!(saw["reader"]["upload_fields"], 0);
    assert_eq!(saw["reader"]["resend_post"], 403);
    assert_eq!(stack.wait_for_mails(&jane_email, 2).await.len(), 2);
    // axe-core checked every page and found nothing.
    let axe = saw["axe"].as_object().unwrap();
    for page in [
        "sign-in",
        "overview",
        "invitations",
        "user",
        "resend-confirmation",
        "revoke-confirmation",
        "invitations-erased",
        "erased-user",
        "bulk",
        "bulk-job",
    ] {
        assert_eq!(axe[page]["violations"], 0, "{page}: {axe:?}");
        assert!(axe[page]["passes"].as_u64().unwrap() > 0, "{page}: {axe:?}");
    }
    for shot in [
        "01-sign-in.png",
        "02-overview.png",
        "04-jane.png",
        "06-resent.png",
        "08-revoked.png",
        "10-bulk-job-done.png",
        "11-reader-sees-no-buttons.png",
    ] {
        let len = std::fs::metadata(artifacts.join(shot)).map_or(0, |m| m.len());
        assert!(len > 0, "no screenshot {shot}: {report}");
    }
}
