//! An OpenLDAP directory of one test's own, which the test can stop and start again (an outage).
//!
//! Started exactly as `deploy/local/up` starts the local stack's: `start_slapd` of
//! deploy/lib/services.sh (a private slapd with the argon2 module, `ou=Users` made on first
//! start), on a free port; stopped by its PID. `tests/run` installs slapd and ldap-utils and
//! names the clients (`TEST_LDAPWHOAMI`, `TEST_LDAPSEARCH`, `TEST_LDAPADD`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::services::var;
use crate::{free_port, scratch_dir, unique};

pub struct Slapd {
    /// `ldap://127.0.0.1:<port>`.
    pub url: String,
    pub base_dn: String,
    /// Where user entries are made: `ou=Users,<base>`.
    pub users_dn: String,
    pub admin_dn: String,
    pub admin_password_file: PathBuf,
    /// `ldaps://127.0.0.1:<port>`, with [`Slapd::start_with_tls`].
    pub ldaps_url: Option<String>,
    dir: PathBuf,
    port: u16,
    /// Certificate, key and ldaps port, with [`Slapd::start_with_tls`].
    tls: Option<(PathBuf, PathBuf, u16)>,
}

impl Slapd {
    /// Makes a directory in a fresh folder and starts it on a free port.
    pub fn start(name: &str) -> Self {
        Self::make(name, None)
    }

    /// As [`Slapd::start`], with TLS: StartTLS on the `ldap://` port and `ldaps://` on another
    /// free port, with this certificate and key (PEM).
    pub fn start_with_tls(name: &str, certificate: &Path, key: &Path) -> Self {
        Self::make(
            name,
            Some((certificate.to_owned(), key.to_owned(), free_port())),
        )
    }

    fn make(name: &str, tls: Option<(PathBuf, PathBuf, u16)>) -> Self {
        let dir = scratch_dir().join(unique(name));
        std::fs::create_dir_all(&dir).unwrap();
        let base_dn = "dc=pickup,dc=example".to_owned();
        let port = free_port();
        let slapd = Self {
            url: format!("ldap://127.0.0.1:{port}"),
            users_dn: format!("ou=Users,{base_dn}"),
            admin_dn: format!("cn=admin,{base_dn}"),
            admin_password_file: dir.join("admin-password"),
            base_dn,
            ldaps_url: tls
                .as_ref()
                .map(|(_, _, port)| format!("ldaps://127.0.0.1:{port}")),
            port,
            dir,
            tls,
        };
        slapd.resume();
        slapd
    }

    /// Stops the server (by its PID, as `deploy/local/down` does): connections are refused.
    pub fn stop(&self) {
        self.script(&format!("stop_slapd {}", quote(&self.dir)));
    }

    /// Starts the stopped server again, on the same port with the same data.
    pub fn resume(&self) {
        self.script(&format!(
            "start_slapd {} {} {}",
            quote(&self.dir),
            self.port,
            quote(Path::new(&self.base_dn))
        ));
    }

    /// The `[user_store]` section that provisions into this directory, WSO2 style.
    pub fn user_store_toml(&self, consumer_group: &str) -> String {
        format!(
            r#"
[user_store]
type = "read_write_ldap_unique_id"
connection_url = "{url}"
connection_name = "{admin}"
connection_password_file = "{password}"
base_dn = "{users}"
consumer_group = "{consumer_group}"

[user_store.properties]
UserNameAttribute = "uid"
UserEntryObjectClass = "inetOrgPerson"
LDAPConnectionTimeout = 2000
"#,
            url = self.url,
            admin = self.admin_dn,
            password = self.admin_password_file.display(),
            users = self.users_dn,
        )
    }

    /// The DN of a user's entry, as the engine makes it.
    pub fn dn_of(&self, username: &str) -> String {
        format!("uid={username},{}", self.users_dn)
    }

    /// `ldapwhoami -x -H <url> -D <dn> -w <password>`: binds as a person would.
    pub fn whoami(&self, dn: &str, password: &str) -> Output {
        Command::new(var("TEST_LDAPWHOAMI"))
            .args(["-x", "-H", &self.url, "-D", dn, "-w", password])
            .output()
            .expect("run ldapwhoami")
    }

    /// The entries under `ou=Users` that `filter` matches, as LDIF, read as the administrator
    /// (`ldapsearch -LLL`), with the attributes asked for.
    pub fn search(&self, filter: &str, attributes: &[&str]) -> String {
        let out = Command::new(var("TEST_LDAPSEARCH"))
            .args([
                "-x",
                "-LLL",
                "-o",
                "ldif-wrap=no",
                "-H",
                &self.url,
                "-D",
                &self.admin_dn,
            ])
            .arg("-y")
            .arg(&self.admin_password_file)
            .args(["-b", &self.users_dn, filter])
            .args(attributes)
            .output()
            .expect("run ldapsearch");
        assert!(
            out.status.success(),
            "ldapsearch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Adds entries (LDIF) as the administrator (`ldapadd`).
    pub fn add(&self, ldif: &str) {
        use std::io::Write;
        let mut child = Command::new(var("TEST_LDAPADD"))
            .args(["-x", "-H", &self.url, "-D", &self.admin_dn])
            .arg("-y")
            .arg(&self.admin_password_file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ldapadd");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ldif.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ldapadd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The DNs of the entries `filter` matches.
    pub fn entries(&self, filter: &str) -> Vec<String> {
        self.search(filter, &["1.1"])
            .lines()
            .filter_map(|l| l.strip_prefix("dn: "))
            .map(str::to_owned)
            .collect()
    }

    /// The server's log, for a failed test's output.
    pub fn log(&self) -> PathBuf {
        self.dir.join("slapd.log")
    }

    fn script(&self, command: &str) {
        let services = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/lib/services.sh");
        let mut bash = Command::new("bash");
        bash.arg("-c").arg(format!(
            "set -euo pipefail; source {}; {command}",
            quote(&services)
        ));
        if let Some((certificate, key, port)) = &self.tls {
            bash.env("SLAPD_TLS_CERT", certificate)
                .env("SLAPD_TLS_KEY", key)
                .env("SLAPD_LDAPS_PORT", port.to_string());
        }
        let out = bash.output().expect("run bash");
        assert!(
            out.status.success(),
            "`{command}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let services = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/lib/services.sh");
        let _ = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; stop_slapd {}",
                quote(&services),
                quote(&self.dir)
            ))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `path` as one single-quoted shell word.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}
