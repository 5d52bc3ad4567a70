//! The deployment files check out: the Kubernetes base (deploy/k8s/base) renders and passes the
//! Kubernetes schemas (kubernetes-validate from PyPI, strict), runs every role with probes,
//! resources, disruption budgets and an autoscaler, and its ConfigMap is a configuration that
//! `onboard config check` accepts with the variables its Deployments set; the image recipe
//! (deploy/container/Containerfile) passes hadolint and the rules of a production image; the
//! systemd units (deploy/systemd) pass `systemd-analyze verify` and `security`; the Prometheus
//! alert rules (deploy/prometheus) pass `promtool check rules` and their unit tests (`promtool
//! test rules`), and the Grafana dashboard's (deploy/grafana) queries parse and name documented
//! metrics. Each check is also fed a broken file, which it must refuse. `tests/run` installs the
//! tools.
//!
//! Nothing here builds the image or starts a cluster or systemd: this machine has neither a
//! container engine nor systemd as its init.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The roles the image's binary runs, each as its own Deployment and systemd unit.
const ROLES: [&str; 6] = [
    "gateway",
    "relay",
    "email-worker",
    "intake",
    "scheduler",
    "provisioner",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tool(var: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("{var} is not set: run the deployment checks with `tests/run`, which installs the tools"))
}

fn onboard() -> String {
    tool("ONBOARD_BIN")
}

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("onboard-deploy-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

// ------------------------------------------------------------------------------- Kubernetes

/// The Kubernetes versions the base is validated against: the oldest and the newest whose
/// schemas kubernetes-validate ships that the base claims to support.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Renders a kustomization directory (tests/deploy/render_kustomization.py) into `out`.
fn render(base: &Path, out: &Path) -> Result<Vec<Value>, String> {
    let output = run(Command::new(tool("TEST_DEPLOY_PYTHON"))
        .arg(root().join("tests/deploy/render_kustomization.py"))
        .arg(base)
        .arg(out));
    if !output.status.success() {
        return Err(text(&output));
    }
    Ok(serde_json::from_slice(&output.stdout).expect("the renderer prints JSON"))
}

/// kubernetes-validate, strict (unknown fields refused), against each version.
fn validate(rendered: &Path) -> Result<(), String> {
    for version in KUBERNETES_VERSIONS {
        let output = run(Command::new(tool("TEST_KUBERNETES_VALIDATE"))
            .args(["--strict", "--quiet", "-k", version])
            .arg(rendered));
        if !output.status.success() {
            return Err(format!("Kubernetes {version}: {}", text(&output)));
        }
    }
    Ok(())
}

fn rendered_base() -> Vec<Value> {
    let dir = scratch("k8s");
    let out = dir.join("rendered.yaml");
    let documents = render(&root().join("deploy/k8s/base"), &out).unwrap();
    validate(&out).unwrap();
    documents
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(documents, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s/base"))
}

/// The one container of a workload's pod template.
fn container(workload: &Value) -> &Value {
    let containers = workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "{}", workload["metadata"]["name"]);
    &containers[0]
}

fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector["matchLabels"].as_object().unwrap();
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether `onboard SUBCOMMAND --help` exists (the image's roles are the binary's subcommands).
fn is_subcommand(name: &str) -> bool {
    run(Command::new(onboard()).args([name, "--help"]))
        .status
        .success()
}

#[test]
fn the_kubernetes_base_passes_the_schemas_and_runs_every_role_with_probes_and_budgets() {
    let documents = rendered_base();
    let deployments = of_kind(&documents, "Deployment");
    let names: BTreeSet<&str> = deployments
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    let wanted: BTreeSet<String> = ROLES.iter().map(|r| format!("onboard-{r}")).collect();
    assert_eq!(
        names,
        wanted.iter().map(String::as_str).collect(),
        "one Deployment per role"
    );
    named(&documents, "ConfigMap", "onboard-config");
    for role in ROLES {
        let deployment = named(&documents, "Deployment", &format!("onboard-{role}"));
        let pod = &deployment["spec"]["template"];
        let c = container(deployment);
        assert_eq!(args(c).last(), Some(&role), "{role} runs `onboard {role}`");
        assert!(is_subcommand(role), "`onboard {role}` is a subcommand");
        assert!(
            selects(&deployment["spec"]["selector"], &pod["metadata"]["labels"]),
            "{role}: the selector selects the pods"
        );
        // Probes on a port the container declares.
        let ports: Vec<&str> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{role} {probe}");
            assert!(
                ports.contains(&get["port"].as_str().unwrap()),
                "{role} {probe} on a declared port"
            );
            // Above the Kafka check (3 s) and database.acquire_timeout_seconds (3 s).
            if probe == "readinessProbe" {
                assert!(c[probe]["timeoutSeconds"].as_i64().unwrap() > 3, "{role}");
            }
        }
        // A role without the gateway serves its probes only with observability.metrics_bind.
        let env = &c["env"];
        if role != "gateway" {
            let bind = env
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "ONBOARD__OBSERVABILITY__METRICS_BIND")
                .unwrap_or_else(|| panic!("{role} sets observability.metrics_bind"));
            let port = bind["value"].as_str().unwrap().rsplit(':').next().unwrap();
            assert_eq!(c["ports"][0]["containerPort"].to_string(), port, "{role}");
        }
        for (kind, what) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "memory"),
        ] {
            assert!(
                c["resources"][kind][what].is_string(),
                "{role}: resources.{kind}.{what}"
            );
        }
        let security = &c["securityContext"];
        assert_eq!(security["allowPrivilegeEscalation"], false, "{role}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{role}");
        assert_eq!(
            pod["spec"]["securityContext"]["runAsNonRoot"], true,
            "{role}"
        );
        // A disruption budget for each role's pods.
        let budgets: Vec<_> = of_kind(&documents, "PodDisruptionBudget")
            .into_iter()
            .filter(|b| selects(&b["spec"]["selector"], &pod["metadata"]["labels"]))
            .collect();
        assert_eq!(budgets.len(), 1, "{role}: one PodDisruptionBudget");
        // The configuration from the ConfigMap, at the path the arguments name.
        let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
        let config = args(c)
            .windows(2)
            .find(|w| w[0] == "--config")
            .map(|w| w[1])
            .unwrap();
        assert_eq!(config, format!("{mount}/onboard.toml"), "{role}");
        assert_eq!(
            pod["spec"]["volumes"][0]["configMap"]["name"], "onboard-config",
            "{role}"
        );
    }
    let hpa = of_kind(&documents, "HorizontalPodAutoscaler");
    assert_eq!(hpa.len(), 1);
    assert_eq!(hpa[0]["spec"]["scaleTargetRef"]["name"], "onboard-gateway");
    assert!(hpa[0]["spec"]["minReplicas"].as_i64().unwrap() >= 2);
    let service = named(&documents, "Service", "onboard-gateway");
    let gateway = named(&documents, "Deployment", "onboard-gateway");
    assert!(selects(
        &json_selector(&service["spec"]["selector"]),
        &gateway["spec"]["template"]["metadata"]["labels"]
    ));
    let job = named(&documents, "Job", "onboard-migrate");
    assert_eq!(args(container(job)).last(), Some(&"migrate"));
    assert!(is_subcommand("migrate"));
}

/// A Service's selector is a plain map; as a `matchLabels` selector.
fn json_selector(selector: &Value) -> Value {
    serde_json::json!({ "matchLabels": selector })
}

#[test]
fn a_broken_manifest_fails_the_kubernetes_check() {
    let dir = scratch("k8s-broken");
    let base = dir.join("base");
    copy_dir(&root().join("deploy/k8s/base"), &base);
    // A probe field misspelt, as a hand edit would: strict validation refuses it.
    let gateway = base.join("gateway.yaml");
    let yaml = std::fs::read_to_string(&gateway).unwrap();
    assert!(yaml.contains("periodSeconds: 10"));
    std::fs::write(
        &gateway,
        yaml.replacen("periodSeconds: 10", "periodSecond: 10", 1),
    )
    .unwrap();
    let out = dir.join("rendered.yaml");
    render(&base, &out).unwrap();
    let refused = validate(&out).unwrap_err();
    assert!(refused.contains("deployment/onboard-gateway"), "{refused}");
    assert!(refused.contains("periodSecond"), "{refused}");

    // A wrong type.
    std::fs::write(&gateway, yaml.replacen("replicas: 2", "replicas: two", 1)).unwrap();
    render(&base, &out).unwrap();
    let refused = validate(&out).unwrap_err();
    assert!(refused.contains("replicas"), "{refused}");

    // What the renderer cannot render is refused, not rendered wrongly.
    std::fs::write(&gateway, &yaml).unwrap();
    let kustomization = base.join("kustomization.yaml");
    let mut k = std::fs::read_to_string(&kustomization).unwrap();
    k.push_str("namePrefix: staging-\n");
    std::fs::write(&kustomization, k).unwrap();
    let refused = render(&base, &out).unwrap_err();
    assert!(refused.contains("namePrefix"), "{refused}");
}

/// A value for each Secret key the manifests name, as an operator would write it (see
/// docs/production.md): a key the test does not know is a new secret to document.
fn secret_value(key: &str) -> &'static str {
    match key {
        "database-url" => {
            "postgres://onboard:db-password@db.example.com:5432/onboarding?sslmode=verify-full"
        }
        "code-keys" => r#"[{id="k1", secret="c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="}]"#,
        "smtp-password" => r#""smtp-password""#,
        "kafka-sasl-password" => r#""kafka-password""#,
        "user-store-password" => r#""ldap-password""#,
        "admin-tokens" => {
            r#"[{id="ops-admin", sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}]"#
        }
        other => panic!("Secret key `{other}` is new: give it a value here and document it in docs/production.md"),
    }
}

/// Where a workload's container finds the file of the Secret `onboard-secrets`'s `key`: the
/// mount path of the volume that projects it, and the item's path; `None` when it does not.
fn secret_file(workload: &Value, key: &str) -> Option<String> {
    let volumes = workload["spec"]["template"]["spec"]["volumes"].as_array()?;
    let (volume, path) = volumes.iter().find_map(|v| {
        let secret = &v["secret"];
        if secret["secretName"] != "onboard-secrets" {
            return None;
        }
        let item = secret["items"]
            .as_array()?
            .iter()
            .find(|i| i["key"] == key)?;
        Some((v["name"].as_str()?, item["path"].as_str()?))
    })?;
    let mount = container(workload)["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == volume)?;
    assert_eq!(mount["readOnly"], true, "{volume}");
    Some(format!(
        "{}/{path}",
        mount["mountPath"].as_str()?.trim_end_matches('/')
    ))
}

/// The variables a workload's container sets: values as written, Secret references as
/// [`secret_value`].
fn container_env(workload: &Value) -> BTreeMap<String, String> {
    container(workload)["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_owned();
            let value = match e["value"].as_str() {
                Some(v) => v.to_owned(),
                None => {
                    let secret = &e["valueFrom"]["secretKeyRef"];
                    assert_eq!(secret["name"], "onboard-secrets", "{name}");
                    secret_value(secret["key"].as_str().unwrap()).to_owned()
                }
            };
            (name, value)
        })
        .collect()
}

fn config_check(config: &Path, env: &BTreeMap<String, String>) -> Output {
    let mut command = Command::new(onboard());
    // Only the variables the workload sets (none of the test's own ONBOARD_ variables).
    for (name, _) in std::env::vars() {
        if name.starts_with("ONBOARD") {
            command.env_remove(name);
        }
    }
    run(command
        .arg("--config")
        .arg(config)
        .args(["config", "check"])
        .envs(env)
        // The image installs the list at the ConfigMap's path (checked below); here, the
        // repository's copy.
        .env(
            "ONBOARD__PASSWORD_POLICY__COMMON_PASSWORDS_FILE",
            root().join("crates/onboarding-domain/data/common-passwords.txt"),
        ))
}

#[test]
fn the_config_map_is_a_configuration_onboard_accepts_with_each_roles_variables() {
    let documents = rendered_base();
    let toml = named(&documents, "ConfigMap", "onboard-config")["data"]["onboard.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = scratch("config");
    let config = dir.join("onboard.toml");
    std::fs::write(&config, &toml).unwrap();
    // The key-encryption key: a file of the Secret's, where every workload mounts it (checked
    // below); here, a key of the test's own, as `head -c 32 /dev/urandom | base64` makes one.
    let kek_path = toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("key_encryption_key_file = "))
        .expect("the ConfigMap sets personal_data.key_encryption_key_file")
        .trim_matches('"')
        .to_owned();
    let kek = dir.join("personal-data-kek");
    std::fs::write(&kek, "S2V5RW5jcnlwdGlvbktleUZvclRoZURlcGxveVRlc3Q=\n").unwrap();
    let mut workloads = of_kind(&documents, "Deployment");
    workloads.extend(of_kind(&documents, "Job"));
    for workload in workloads {
        let name = workload["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            secret_file(workload, "personal-data-kek").as_deref(),
            Some(kek_path.as_str()),
            "{name} does not mount the Secret key personal-data-kek at the ConfigMap's \
             key_encryption_key_file"
        );
        let mut env = container_env(workload);
        env.insert(
            "ONBOARD__PERSONAL_DATA__KEY_ENCRYPTION_KEY_FILE".into(),
            kek.display().to_string(),
        );
        let output = config_check(&config, &env);
        let said = text(&output);
        assert!(output.status.success(), "{name}: {said}");
        assert!(said.contains("is valid"), "{name}: {said}");
        // No secret value in what the check prints.
        for secret in [
            "db-password",
            "smtp-password",
            "kafka-password",
            "ldap-password",
            "c2VjcmV0",
        ] {
            assert!(!said.contains(secret), "{name}: {said}");
        }
    }
    // The path of the common passwords list is where the image installs it.
    let containerfile =
        std::fs::read_to_string(root().join("deploy/container/Containerfile")).unwrap();
    let list = toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("common_passwords_file = "))
        .unwrap()
        .trim_matches('"');
    assert!(containerfile.contains(&format!("/out{list}")), "{list}");

    // The check can fail: a misspelt key, and a variable that names no key.
    let gateway = named(&documents, "Deployment", "onboard-gateway");
    let mut env = container_env(gateway);
    env.insert(
        "ONBOARD__PERSONAL_DATA__KEY_ENCRYPTION_KEY_FILE".into(),
        kek.display().to_string(),
    );
    let broken = dir.join("broken.toml");
    std::fs::write(
        &broken,
        toml.replace("enable_start_tls = true", "enable_starttls = true"),
    )
    .unwrap();
    let output = config_check(&broken, &env);
    assert!(!output.status.success());
    assert!(
        text(&output).contains("unknown key `output_adapter.email.enable_starttls`"),
        "{}",
        text(&output)
    );
    let mut env_typo = env.clone();
    env_typo.insert("ONBOARD__DATABASE__UR".into(), "x".into());
    let output = config_check(&config, &env_typo);
    assert!(!output.status.success(), "{}", text(&output));
    // A key-encryption key that is not mounted is named.
    let mut unmounted = env.clone();
    unmounted.remove("ONBOARD__PERSONAL_DATA__KEY_ENCRYPTION_KEY_FILE");
    let output = config_check(&config, &unmounted);
    assert!(!output.status.success());
    assert!(
        text(&output).contains(&format!("personal_data.key_encryption_key_file {kek_path}")),
        "{}",
        text(&output)
    );
    // And a role without a secret it needs.
    let mut missing = env;
    missing.remove("ONBOARD__DATABASE__URL");
    let output = config_check(&config, &missing);
    assert!(
        text(&output).contains("missing key `database.url`"),
        "{}",
        text(&output)
    );
}

// ------------------------------------------------------------------------------- the image

/// What a production image of `onboard` must be, read from its recipe: a multi-stage build of
/// the release profile with the committed lock file; a final stage with no shell (distroless,
/// no RUN, exec-form entry point) running as a non-root user; the binary as entry point, its
/// roles as arguments. Returns every rule the recipe breaks.
fn image_problems(recipe: &str) -> Vec<String> {
    let mut problems = Vec::new();
    // Instructions, with continuation lines joined and comments dropped.
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in recipe.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() && current.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.to_uppercase().starts_with("FROM "))
        .map(|(n, _)| n)
        .collect();
    if stages.len() < 2 {
        problems.push("not a multi-stage build".to_owned());
        return problems;
    }
    let build = &instructions[..*stages.last().unwrap()];
    let last = &instructions[*stages.last().unwrap()..];
    if !build
        .iter()
        .any(|i| i.starts_with("RUN ") && i.contains("cargo build --release --locked -p onboard"))
    {
        problems.push(
            "the build stage does not run `cargo build --release --locked -p onboard`".into(),
        );
    }
    let base = last[0].split_whitespace().nth(1).unwrap_or_default();
    if !base.contains("distroless") {
        problems.push(format!(
            "the final base `{base}` is not distroless (it may have a shell)"
        ));
    }
    for i in last {
        let word = i
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_uppercase();
        if word == "RUN" || word == "SHELL" {
            problems.push(format!("the final stage needs a shell: `{i}`"));
        }
        if (word == "ENTRYPOINT" || word == "CMD") && !i[word.len()..].trim().starts_with('[') {
            problems.push(format!("`{i}` is in shell form (it needs /bin/sh)"));
        }
    }
    match last
        .iter()
        .rev()
        .find(|i| i.to_uppercase().starts_with("USER "))
    {
        None => problems.push("the final stage runs as root (no USER)".into()),
        Some(user) => {
            let who = user[5..].trim().split(':').next().unwrap_or_default();
            if who == "root" || who == "0" || who.parse::<u32>().is_err() {
                problems.push(format!(
                    "`{user}`: run as a numeric non-root user (Kubernetes' runAsNonRoot checks the number)"
                ));
            }
        }
    }
    if !last
        .iter()
        .any(|i| i.replace(' ', "") == r#"ENTRYPOINT["/usr/local/bin/onboard"]"#)
    {
        problems.push("the entry point is not the onboard binary".into());
    }
    problems
}

fn hadolint(recipe: &Path) -> Output {
    run(Command::new(tool("TEST_HADOLINT"))
        .args(["--no-color", "--failure-threshold", "style"])
        .arg(recipe))
}

#[test]
fn the_image_recipe_passes_hadolint_and_builds_a_release_binary_run_by_a_non_root_user_without_a_shell(
) {
    let path = root().join("deploy/container/Containerfile");
    let output = hadolint(&path);
    assert!(output.status.success(), "{}", text(&output));
    let recipe = std::fs::read_to_string(&path).unwrap();
    assert_eq!(image_problems(&recipe), Vec::<String>::new());
    // The user is the one the Kubernetes pods run as, and the ports the ones they probe.
    let documents = rendered_base();
    let pod = &named(&documents, "Deployment", "onboard-gateway")["spec"]["template"]["spec"];
    let uid = pod["securityContext"]["runAsUser"].to_string();
    assert!(recipe.contains(&format!("USER {uid}:")), "{uid}");
    for role in ROLES {
        let deployment = named(&documents, "Deployment", &format!("onboard-{role}"));
        let port = container(deployment)["ports"][0]["containerPort"].to_string();
        assert!(
            recipe
                .lines()
                .any(|l| l.starts_with("EXPOSE") && l.contains(&port)),
            "{role}: port {port} exposed"
        );
    }

    // The checks can fail: a single-stage image with a shell, run as root.
    let bad = "FROM debian:latest\nRUN apt-get install -y curl\nCOPY onboard /onboard\nENTRYPOINT /onboard gateway\n";
    let problems = image_problems(bad);
    assert!(
        problems.iter().any(|p| p.contains("multi-stage")),
        "{problems:?}"
    );
    let bad = recipe.replace("USER 65532:65532", "USER root").replace(
        "ENTRYPOINT [\"/usr/local/bin/onboard\"]",
        "RUN true\nENTRYPOINT /usr/local/bin/onboard",
    );
    let problems = image_problems(&bad);
    assert!(
        problems.iter().any(|p| p.contains("`USER root`")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("needs a shell: `RUN true`")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("shell form")),
        "{problems:?}"
    );
    let debug = recipe.replace("cargo build --release --locked", "cargo build --locked");
    assert!(!image_problems(&debug).is_empty());
    let dir = scratch("image");
    let bad_file = dir.join("Containerfile");
    std::fs::write(
        &bad_file,
        "FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n",
    )
    .unwrap();
    let output = hadolint(&bad_file);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("DL3007"), "{}", text(&output));
}

// ------------------------------------------------------------------------------- systemd

/// A root directory with the units installed in /etc/systemd/system, the system's own units and
/// the onboard binary at the path the units start, for `systemd-analyze --root`.
fn systemd_root(units: &Path) -> PathBuf {
    let target = PathBuf::from(onboard());
    // Beside the binary, so that a hard link works (the binary is large).
    let root_dir = target
        .parent()
        .unwrap()
        .join(format!("systemd-root-{}", uuid::Uuid::new_v4()));
    let bin = root_dir.join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    if std::fs::hard_link(&target, bin.join("onboard")).is_err() {
        std::fs::copy(&target, bin.join("onboard")).unwrap();
    }
    copy_dir(units, &root_dir.join("etc/systemd/system"));
    let system = root_dir.join("usr/lib/systemd/system");
    for dir in ["/usr/lib/systemd/system", "/lib/systemd/system"] {
        if Path::new(dir).is_dir() {
            copy_dir_files(Path::new(dir), &system);
            break;
        }
    }
    root_dir
}

/// The regular files of `from` (the system's unit directory also holds directories and links).
fn copy_dir_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// `systemd-analyze verify` of every unit; it warns about unknown keys and bad values but still
/// exits 0, so any output is a failure too.
fn verify_units(root_dir: &Path) -> Result<(), String> {
    let units: Vec<PathBuf> = std::fs::read_dir(root_dir.join("etc/systemd/system"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let output = run(Command::new(tool("TEST_SYSTEMD_ANALYZE"))
        .arg("verify")
        .arg(format!("--root={}", root_dir.display()))
        .args(&units));
    let said = text(&output);
    if output.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

#[test]
fn the_systemd_units_pass_systemd_analyze_and_are_hardened() {
    let units = root().join("deploy/systemd");
    let root_dir = systemd_root(&units);
    verify_units(&root_dir).unwrap();
    let target = std::fs::read_to_string(units.join("onboard.target")).unwrap();
    for role in ROLES.iter().chain(&["migrate"]) {
        let name = format!("onboard-{role}.service");
        let unit = std::fs::read_to_string(units.join(&name)).unwrap();
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{name} has no ExecStart"));
        assert!(exec.ends_with(&format!(" {role}")), "{name}: {exec}");
        assert!(is_subcommand(role), "`onboard {role}` is a subcommand");
        assert!(target.contains(&name), "onboard.target wants {name}");
        for setting in [
            "DynamicUser=yes",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
        ] {
            assert!(unit.lines().any(|l| l == setting), "{name}: {setting}");
        }
        // systemd's own exposure score (0 safest, 10 unsafe): 2.0 at most.
        let output = run(Command::new(tool("TEST_SYSTEMD_ANALYZE"))
            .args(["security", "--offline=yes", "--no-pager", "--threshold=20"])
            .arg(format!("--root={}", root_dir.display()))
            .arg(&name));
        assert!(output.status.success(), "{name}: {}", text(&output));
    }

    // The checks can fail: a misspelt setting, a value systemd cannot read, a unit without
    // hardening.
    let broken = root_dir.join("etc/systemd/system/onboard-relay.service");
    let good = std::fs::read_to_string(&broken).unwrap();
    std::fs::write(
        &broken,
        good.replace("ProtectSystem=strict", "ProtectSystem=sometimes")
            .replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"),
    )
    .unwrap();
    let refused = verify_units(&root_dir).unwrap_err();
    assert!(refused.contains("NoNewPrivilege"), "{refused}");
    assert!(refused.contains("protect system value"), "{refused}");
    std::fs::write(
        &broken,
        "[Unit]\nDescription=bare\n[Service]\nExecStart=/usr/local/bin/onboard relay\n",
    )
    .unwrap();
    let output = run(Command::new(tool("TEST_SYSTEMD_ANALYZE"))
        .args(["security", "--offline=yes", "--no-pager", "--threshold=20"])
        .arg(format!("--root={}", root_dir.display()))
        .arg("onboard-relay.service"));
    assert!(!output.status.success(), "{}", text(&output));
    std::fs::remove_dir_all(&root_dir).ok();
}

// ------------------------------------------------------------------------------- monitoring

/// The metrics docs/operations.md describes (the table under `GET /metrics`).
fn documented_metrics() -> BTreeSet<String> {
    let docs = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    docs.lines()
        .filter_map(|l| l.strip_prefix("| `onboard_"))
        .map(|rest| format!("onboard_{}", rest.split('`').next().unwrap()))
        .collect()
}

/// The `onboard_…` names a PromQL expression reads, without the `_bucket`, `_count` and `_sum`
/// a histogram or summary adds.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("onboard_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        found.insert(base.to_owned());
        rest = &tail[end..];
    }
    found
}

fn promtool(args: &[&str], dir: &Path) -> Output {
    run(Command::new(tool("TEST_PROMTOOL"))
        .args(args)
        .current_dir(dir))
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests_and_read_documented_metrics() {
    let dir = root().join("deploy/prometheus");
    let checked = promtool(&["check", "rules", "onboard-alerts.yml"], &dir);
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(text(&checked).contains("SUCCESS"), "{}", text(&checked));
    let tested = promtool(&["test", "rules", "onboard-alerts.test.yml"], &dir);
    assert!(tested.status.success(), "{}", text(&tested));

    // Every alert reads metrics the engine exports and the docs describe, and is tested.
    let rules = std::fs::read_to_string(dir.join("onboard-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("onboard-alerts.test.yml")).unwrap();
    let documented = documented_metrics();
    let mut alerts = 0;
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            alerts += 1;
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "{name} has no unit test in onboard-alerts.test.yml"
            );
        }
    }
    assert!(alerts >= 10, "{alerts} alerts");
    for name in metrics_in(&rules) {
        assert!(
            documented.contains(&name),
            "{name} is not in docs/operations.md"
        );
    }

    // Both checks can fail: an expression that does not parse, an expectation that is wrong.
    let broken = scratch("alerts-broken");
    copy_dir(&dir, &broken);
    let file = broken.join("onboard-alerts.yml");
    std::fs::write(
        &file,
        rules.replacen(
            "max(onboard_outbox_oldest_age_seconds) > 300",
            "max(onboard_outbox_oldest_age_seconds > 300",
            1,
        ),
    )
    .unwrap();
    let refused = promtool(&["check", "rules", "onboard-alerts.yml"], &broken);
    assert!(!refused.status.success(), "{}", text(&refused));
    std::fs::write(&file, &rules).unwrap();
    std::fs::write(
        broken.join("onboard-alerts.test.yml"),
        tests.replacen("69 records", "68 records", 1),
    )
    .unwrap();
    let refused = promtool(&["test", "rules", "onboard-alerts.test.yml"], &broken);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("OnboardEmailWorkerLagging"),
        "{}",
        text(&refused)
    );
}

/// Every query of the dashboard, as recording rules, so that promtool parses them.
fn dashboard_as_rules(dashboard: &Value) -> (String, BTreeSet<String>) {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut metrics = BTreeSet::new();
    let mut n = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            metrics.extend(metrics_in(expr));
            n += 1;
            rules.push_str(&format!(
                "      - record: dashboard:query_{n}\n        expr: {}\n",
                serde_json::to_string(expr).unwrap()
            ));
        }
    }
    (rules, metrics)
}

#[test]
fn the_dashboards_queries_parse_and_read_documented_metrics() {
    let path = root().join("deploy/grafana/onboard-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().unwrap();
    let ids: BTreeSet<i64> = panels.iter().map(|p| p["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    // Every query panel asks the data source the user picks.
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        assert!(panel["description"].is_string(), "{}", panel["title"]);
    }
    let (rules, metrics) = dashboard_as_rules(&dashboard);
    let documented = documented_metrics();
    for name in &metrics {
        assert!(
            documented.contains(name),
            "{name} is not in docs/operations.md"
        );
    }
    // What the issue asks the dashboard to show.
    for wanted in [
        "onboard_time_to_activate_seconds",
        "onboard_outbox_backlog",
        "onboard_consumer_lag",
        "onboard_provisioner_lag",
        "onboard_intake_lag",
    ] {
        assert!(metrics.contains(wanted), "the dashboard shows no {wanted}");
    }
    let dir = scratch("dashboard");
    std::fs::write(dir.join("dashboard.yml"), &rules).unwrap();
    let checked = promtool(&["check", "rules", "dashboard.yml"], &dir);
    assert!(checked.status.success(), "{}\n{rules}", text(&checked));

    // A query that does not parse is refused.
    std::fs::write(
        dir.join("broken.yml"),
        rules.replacen("sum(rate(", "sum(rate((", 1),
    )
    .unwrap();
    let refused = promtool(&["check", "rules", "broken.yml"], &dir);
    assert!(!refused.status.success(), "{}", text(&refused));
}
