//! `deploy/kubernetes/` and the `Dockerfile`, checked offline (issue 15).
//!
//! - The manifests pass `kubernetes-validate --strict` against the schemas of the Kubernetes
//!   version below (`tests/run` installs it into `.venv-k8s/`; without it these tests fail and
//!   say so), and the validator refuses a manifest with an unknown field (it is not a no-op).
//! - What the schemas cannot see: the probes reach the admin listener the config binds, only the
//!   NetworkPolicy's named peers reach that port, the grace period outlasts the preStop pause,
//!   the drain and the audit flush, the pod runs unprivileged on a read-only root with every
//!   path the config writes on an emptyDir, the HPA's floor is the config's `expected_nodes`.
//! - The config in the ConfigMap is the gateway's: it loads as shipped (with test values in the
//!   Secrets' files) and serves, on loopback with only its addresses and stores swapped for test
//!   servers; with the committed placeholders it is refused.
//! - The Dockerfile's stages (no container builder can pull base images here): pinned bases, a
//!   non-root user, the binary from the build stage, EXPOSE matching the manifests, nothing
//!   secret copied in.
//!
//! The YAML is read by the PyYAML that kubernetes-validate brings, as JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{self, GatewayBuilder};

/// The Kubernetes version whose schemas the manifests must pass (the newest that
/// kubernetes-validate 1.37.0 bundles).
const KUBERNETES_VERSION: &str = "1.37.0";
/// How long `/readyz` waits for each source (`READY_CHECK_TIMEOUT` in src/admin/mod.rs): the
/// readiness probe's timeout must be longer, or a slow source reads as a dead pod.
const READY_CHECK_SECS: u64 = 5;
/// Peak RSS of a release build with the ConfigMap's config under 200 slow clients, in MiB
/// (`benches/pod_rss.sh`; README "Run several nodes", Sizing): the memory limit must hold it
/// with a quarter more room.
const MEASURED_PEAK_RSS_MIB: u64 = 1128;
/// Every committed Secret value contains this: nothing real is ever in git.
const PLACEHOLDER: &str = "CHANGE-ME";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn k8s_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// A program of the kubernetes-validate venv; a missing one fails the test with the fix.
fn venv_bin(name: &str) -> PathBuf {
    let path = repo().join(".venv-k8s/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: ./tests/run installs kubernetes-validate (and PyYAML) into .venv-k8s/",
        path.display()
    );
    path
}

/// Every manifest file but kustomization.yaml (not a Kubernetes object), sorted.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .expect("deploy/kubernetes/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "too few manifests: {files:?}");
    files
}

/// The YAML documents of `path`, as JSON values (empty documents dropped).
fn load_yaml(path: &Path) -> Vec<Value> {
    let out = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1], encoding='utf-8')) if d]\n\
             json.dump(docs, sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{} is not YAML: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("python printed JSON") {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

/// Every object of the manifests.
struct Manifests {
    objects: Vec<Value>,
}

impl Manifests {
    fn load() -> Manifests {
        let objects = manifest_files().iter().flat_map(|p| load_yaml(p)).collect();
        Manifests { objects }
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn one(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .all(kind)
            .into_iter()
            .filter(|o| o["metadata"]["name"] == name)
            .collect();
        assert_eq!(found.len(), 1, "exactly one {kind} {name}");
        found[0]
    }

    fn deployment(&self) -> &Value {
        self.one("Deployment", "bucketgate")
    }

    fn pod(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    /// The container port called `name`.
    fn port(&self, name: &str) -> u64 {
        self.container()["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}"))
    }

    /// A probe's or a policy's port (a name or a number) as a number.
    fn resolve_port(&self, port: &Value) -> u64 {
        match port {
            Value::String(name) => self.port(name),
            other => other.as_u64().expect("a port number"),
        }
    }

    /// The config file the pod runs with: the ConfigMap's `config.toml`.
    fn config_text(&self) -> &str {
        self.one("ConfigMap", "bucketgate-config")["data"]["config.toml"]
            .as_str()
            .expect("config.toml in the ConfigMap")
    }

    fn config(&self) -> toml::Value {
        toml::from_str(self.config_text()).expect("the ConfigMap's config.toml is TOML")
    }

    /// The `--config` path of the container's arguments.
    fn config_arg(&self) -> PathBuf {
        let args: Vec<&str> = self.container()["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("string arg"))
            .collect();
        let at = args
            .iter()
            .position(|a| *a == "--config")
            .expect("--config");
        PathBuf::from(args[at + 1])
    }

    /// The volume mounted at the longest mount path holding `path`, and that mount.
    fn mount_of(&self, path: &Path) -> (&Value, &Value) {
        let mount = self.container()["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .filter(|m| path.starts_with(m["mountPath"].as_str().expect("mountPath")))
            .max_by_key(|m| m["mountPath"].as_str().map(str::len))
            .unwrap_or_else(|| panic!("{} is on no volume", path.display()));
        let volume = self.pod()["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mount's volume");
        (mount, volume)
    }

    fn template_labels(&self) -> &serde_json::Map<String, Value> {
        self.deployment()["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .expect("pod labels")
    }

    /// Whether `selector` (matchLabels only) selects the Deployment's pods.
    fn selects_pods(&self, selector: &Value) -> bool {
        let labels = self.template_labels();
        let wanted = selector["matchLabels"].as_object().expect("matchLabels");
        !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

fn port_of_addr(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// A Kubernetes quantity of bytes (`512Mi`, `5Gi`, `1000`) in bytes.
fn quantity_bytes(q: &Value) -> u64 {
    let q = q.as_str().expect("quantity as a string");
    let (digits, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = digits.parse().expect("quantity digits");
    n * match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("unit {other} in {q}: use Ki, Mi or Gi"),
    }
}

fn toml_str<'a>(config: &'a toml::Value, table: &str, key: &str) -> &'a str {
    config
        .get(table)
        .and_then(|t| t.get(key))
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("[{table}] {key} in the ConfigMap's config"))
}

#[test]
fn manifests_pass_kubernetes_validate_strict() {
    let files = manifest_files();
    let out = Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    assert!(
        !text.contains("WARN") && !text.contains("ERROR"),
        "warnings or errors:\n{text}"
    );
    // One "passed" line per object: an object it skipped would not count as checked.
    let objects: usize = files.iter().map(|f| load_yaml(f).len()).sum();
    assert_eq!(text.matches(" passed ").count(), objects, "{text}");
    let minor = KUBERNETES_VERSION
        .rsplit_once('.')
        .map(|(mm, _)| mm)
        .unwrap();
    assert!(text.contains(&format!("against version {minor}")), "{text}");

    // The same validator refuses a Deployment with a misspelt field: strict mode is on.
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(k8s_dir().join("deployment.yaml")).unwrap();
    let bad = good.replacen(
        "terminationGracePeriodSeconds:",
        "terminationGracePeriodSecond:",
        1,
    );
    assert_ne!(good, bad);
    let bad_file = dir.path().join("deployment.yaml");
    std::fs::write(&bad_file, bad).unwrap();
    let out = Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(&bad_file)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a misspelt field passed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn kustomization_names_every_manifest() {
    let kustomization = load_yaml(&k8s_dir().join("kustomization.yaml"));
    let listed: BTreeSet<String> = kustomization[0]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect();
    let present: BTreeSet<String> = manifest_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, present);
    let m = Manifests::load();
    let namespace = kustomization[0]["namespace"].as_str().expect("namespace");
    for object in &m.objects {
        if object["kind"] == "Namespace" {
            assert_eq!(object["metadata"]["name"], namespace);
        } else {
            assert_eq!(
                object["metadata"]["namespace"], namespace,
                "{}",
                object["kind"]
            );
        }
    }
}

#[test]
fn probes_hit_the_admin_listener_that_only_the_policy_lets_in() {
    let m = Manifests::load();
    let config = m.config();
    let https = m.port("https");
    let admin = m.port("admin");
    assert_ne!(https, admin);
    // The listeners the config binds are the container's ports; the admin one on the pod's
    // address, so that the kubelet reaches it.
    assert_eq!(port_of_addr(toml_str(&config, "listener", "addr")), https);
    let admin_addr = toml_str(&config, "admin", "addr");
    assert_eq!(port_of_addr(admin_addr), admin);
    assert!(
        admin_addr.starts_with("0.0.0.0:") || admin_addr.starts_with("[::]:"),
        "the kubelet cannot reach an admin listener on {admin_addr}"
    );

    let c = m.container();
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(
            m.resolve_port(&get["port"]),
            admin,
            "{probe} on the admin port"
        );
        // Plain HTTP: the admin listener has no TLS.
        assert!(
            get["scheme"].is_null() || get["scheme"] == "HTTP",
            "{probe}"
        );
    }
    let ready_timeout = c["readinessProbe"]["timeoutSeconds"].as_u64().unwrap();
    assert!(
        ready_timeout > READY_CHECK_SECS,
        "readiness timeout {ready_timeout}s <= /readyz's own {READY_CHECK_SECS}s per source"
    );

    // The NetworkPolicy selects the pods, isolates their ingress, lets anyone reach the data
    // port, and names its peers for the admin port (no rule opens every port to everyone).
    let policy = m.one("NetworkPolicy", "bucketgate");
    assert!(m.selects_pods(&policy["spec"]["podSelector"]));
    assert!(
        policy["spec"]["policyTypes"]
            .as_array()
            .unwrap()
            .contains(&Value::from("Ingress"))
    );
    let covers = |rule: &Value, port: u64| match rule["ports"].as_array() {
        None => true,
        Some(ports) if ports.is_empty() => true,
        Some(ports) => ports.iter().any(|p| {
            if p["port"].is_null() {
                return true;
            }
            let start = m.resolve_port(&p["port"]);
            let end = p["endPort"].as_u64().unwrap_or(start);
            (start..=end).contains(&port)
        }),
    };
    let rules = policy["spec"]["ingress"].as_array().expect("ingress rules");
    let admin_rules: Vec<&Value> = rules.iter().filter(|r| covers(r, admin)).collect();
    assert!(
        !admin_rules.is_empty(),
        "no one at all could scrape /metrics"
    );
    for rule in admin_rules {
        let from = rule["from"]
            .as_array()
            .expect("an admin rule names its peers");
        assert!(!from.is_empty(), "an empty `from` admits everyone");
        for peer in from {
            assert!(
                peer["ipBlock"].is_null(),
                "admin port open to an address range: {peer}"
            );
            assert!(
                !peer["podSelector"].is_null() || !peer["namespaceSelector"].is_null(),
                "{peer}"
            );
            // A bare namespaceSelector {} would be every pod of every namespace.
            if peer["podSelector"].is_null() {
                assert!(
                    peer["namespaceSelector"]["matchLabels"].is_object(),
                    "{peer}"
                );
            }
        }
    }
    assert!(
        rules.iter().any(|r| covers(r, https)),
        "the data port must be reachable"
    );

    // The public Service carries the data port only; the admin Service stays in the cluster.
    let public = m.one("Service", "bucketgate");
    assert_eq!(public["spec"]["type"], "LoadBalancer");
    assert_eq!(public["spec"]["externalTrafficPolicy"], "Local");
    assert!(m.selects_pods(&serde_json::json!({"matchLabels": public["spec"]["selector"]})));
    for port in public["spec"]["ports"].as_array().unwrap() {
        assert_eq!(m.resolve_port(&port["targetPort"]), https, "{port}");
    }
    let internal = m.one("Service", "bucketgate-admin");
    assert_eq!(internal["spec"]["type"], "ClusterIP");
    for port in internal["spec"]["ports"].as_array().unwrap() {
        assert_eq!(m.resolve_port(&port["targetPort"]), admin, "{port}");
    }
}

#[test]
fn termination_grace_outlasts_prestop_drain_and_audit_flush() {
    let m = Manifests::load();
    let config = m.config();
    let drain = config
        .get("limits")
        .and_then(|l| l.get("shutdown_grace_secs"))
        .map(|v| v.as_integer().expect("an integer") as u64)
        .unwrap_or(bucketgate::config::defaults::SHUTDOWN_GRACE_SECS);
    let pre_stop = m.container()["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop sleep");
    let flush = bucketgate::config::defaults::AUDIT_FLUSH_TIMEOUT_SECS;
    let grace = m.pod()["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > pre_stop + drain + flush,
        "terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain {drain} + audit flush {flush}"
    );
}

#[test]
fn pod_runs_unprivileged_on_a_read_only_root() {
    let m = Manifests::load();
    let pod = m.pod();
    let c = m.container();
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let uid = pod["securityContext"]["runAsUser"]
        .as_u64()
        .expect("runAsUser");
    assert_ne!(uid, 0);
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert!(sc["privileged"].is_null() || sc["privileged"] == false);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc["capabilities"]["add"].is_null());
    assert!(pod["hostNetwork"].is_null() || pod["hostNetwork"] == false);
    // The image's user is the pod's.
    assert_eq!(dockerfile_user(), uid);

    // Every path the gateway writes is on a writable emptyDir with a size limit.
    let config = m.config();
    let writable = [
        PathBuf::from(toml_str(&config, "cache", "disk_dir")),
        PathBuf::from(toml_str(&config, "admin", "state_dir")),
        PathBuf::from("/tmp"),
    ];
    for (i, path) in writable.iter().enumerate() {
        assert!(
            path.is_absolute(),
            "{}: relative to the read-only config dir",
            path.display()
        );
        let (mount, volume) = m.mount_of(path);
        // The gateway's own directories lie below their mount, so that it creates and owns them
        // (the cache sets its directory's mode to 0700, which only the owner may; an emptyDir's
        // root belongs to root).
        if i < 2 {
            assert_ne!(
                Path::new(mount["mountPath"].as_str().unwrap()),
                path.as_path(),
                "{} is a mount's root",
                path.display()
            );
        }
        assert!(
            mount["readOnly"].is_null() || mount["readOnly"] == false,
            "{mount}"
        );
        assert!(volume["emptyDir"]["sizeLimit"].is_string(), "{volume}");
    }

    // The config is mounted as the ConfigMap's directory: a subPath mount never sees updates,
    // and reload-on-change depends on them.
    let config_file = m.config_arg();
    assert_eq!(config_file.file_name().unwrap(), "config.toml");
    let (mount, volume) = m.mount_of(&config_file);
    assert!(
        mount["subPath"].is_null() && mount["subPathExpr"].is_null(),
        "{mount}"
    );
    assert_eq!(
        Path::new(mount["mountPath"].as_str().unwrap()),
        config_file.parent().unwrap()
    );
    assert_eq!(volume["configMap"]["name"], "bucketgate-config");

    // Every `file:` secret and TLS file the config names is a key of a Secret mounted there.
    let mut named: Vec<PathBuf> = vec![
        PathBuf::from(toml_str(&config, "listener", "tls_cert")),
        PathBuf::from(toml_str(&config, "listener", "tls_key")),
    ];
    named.extend(
        secret_references(&config)
            .into_iter()
            .map(|(_, path)| PathBuf::from(path)),
    );
    assert!(named.len() >= 5, "{named:?}");
    for path in &named {
        let (mount, volume) = m.mount_of(path);
        let secret = m.one(
            "Secret",
            volume["secret"]["secretName"].as_str().expect("a Secret"),
        );
        let key = path
            .strip_prefix(mount["mountPath"].as_str().unwrap())
            .unwrap()
            .to_str()
            .unwrap();
        assert!(
            secret["stringData"].get(key).is_some(),
            "{} is not a key of Secret {}",
            path.display(),
            secret["metadata"]["name"]
        );
    }

    // Requests and limits; the memory limit holds the memory tier above the measured RSS, and
    // the ephemeral storage the disk tier's emptyDir.
    let resources = &c["resources"];
    for kind in ["requests", "limits"] {
        for what in ["cpu", "memory", "ephemeral-storage"] {
            assert!(resources[kind][what].is_string(), "{kind}.{what}");
        }
    }
    let memory_tier = config["cache"]["memory_bytes"].as_integer().unwrap() as u64;
    let limit = quantity_bytes(&resources["limits"]["memory"]);
    assert!(
        limit >= memory_tier + 64 * 1024 * 1024
            && limit >= MEASURED_PEAK_RSS_MIB * 1024 * 1024 * 5 / 4,
        "memory limit {limit} < measured peak {MEASURED_PEAK_RSS_MIB} MiB + 25% or memory tier {memory_tier} + 64 MiB"
    );
    // Memory is not overcommitted: the request is the limit.
    assert_eq!(
        resources["requests"]["memory"],
        resources["limits"]["memory"]
    );
    let (_, cache_volume) = m.mount_of(&writable[0]);
    let disk_tier = config["cache"]["disk_bytes"].as_integer().unwrap() as u64;
    let cache_size = quantity_bytes(&cache_volume["emptyDir"]["sizeLimit"]);
    assert!(
        cache_size > disk_tier,
        "emptyDir {cache_size} <= disk tier {disk_tier}"
    );
    assert!(quantity_bytes(&resources["limits"]["ephemeral-storage"]) > cache_size);
}

#[test]
fn autoscaler_and_disruption_budget_fit_the_deployment() {
    let m = Manifests::load();
    let hpa = m.one("HorizontalPodAutoscaler", "bucketgate");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["name"], m.deployment()["metadata"]["name"]);
    // The HPA owns the replica count.
    assert!(m.deployment()["spec"]["replicas"].is_null());
    let min = hpa["spec"]["minReplicas"].as_u64().expect("minReplicas");
    let max = hpa["spec"]["maxReplicas"].as_u64().expect("maxReplicas");
    assert!(min >= 2 && max > min, "{min}..{max}");
    // CPU utilization is measured against the request.
    assert!(m.container()["resources"]["requests"]["cpu"].is_string());
    // While Redis is down each node admits quota / expected_nodes: the usual count.
    let config = m.config();
    if let Some(redis) = config.get("redis") {
        assert_eq!(
            redis["expected_nodes"].as_integer().map(|n| n as u64),
            Some(min),
            "[redis] expected_nodes is the HPA's minReplicas"
        );
    }

    let pdb = m.one("PodDisruptionBudget", "bucketgate");
    assert!(m.selects_pods(&pdb["spec"]["selector"]));
    let unavailable = pdb["spec"]["maxUnavailable"]
        .as_u64()
        .expect("maxUnavailable");
    assert!(unavailable >= 1 && unavailable < min);
    // A rollout never goes below the current count.
    assert_eq!(
        m.deployment()["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
}

/// `(table.key, path)` of every `file:` secret reference in the config, nested tables included.
fn secret_references(config: &toml::Value) -> Vec<(String, String)> {
    fn walk(at: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
        match value {
            toml::Value::String(s) => {
                if let Some(path) = s.strip_prefix("file:") {
                    out.push((at.to_owned(), path.to_owned()));
                }
            }
            toml::Value::Table(t) => {
                for (k, v) in t {
                    walk(&format!("{at}.{k}"), v, out);
                }
            }
            toml::Value::Array(a) => {
                for v in a {
                    walk(at, v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", config, &mut out);
    out
}

/// The pod's filesystem as the config sees it, under a temp dir: the ConfigMap's files, the
/// Secrets' files (`secret_value` picks each value), and the config text with its absolute paths
/// moved under the temp dir. Returns the config file's path.
fn lay_out_pod_files(
    m: &Manifests,
    root: &Path,
    secret_value: &dyn Fn(&str, &str) -> String,
) -> PathBuf {
    let moved = |path: &str| format!("{}{path}", root.display());
    // Every absolute path in the config is a quoted string starting with `/` (or `file:/`).
    let text = m
        .config_text()
        .replace("\"/", &format!("\"{}/", root.display()))
        .replace("\"file:/", &format!("\"file:{}/", root.display()));
    let config_file = PathBuf::from(moved(m.config_arg().to_str().unwrap()));
    let config_dir = config_file.parent().unwrap();
    std::fs::create_dir_all(config_dir).unwrap();
    let config_map = m.one("ConfigMap", "bucketgate-config");
    for (key, value) in config_map["data"].as_object().unwrap() {
        let value = value.as_str().unwrap();
        let value = if key == "config.toml" {
            text.as_str()
        } else {
            value
        };
        std::fs::write(config_dir.join(key), value).unwrap();
    }
    for mount in m.container()["volumeMounts"].as_array().unwrap() {
        let (_, volume) = m.mount_of(Path::new(mount["mountPath"].as_str().unwrap()));
        let dir = PathBuf::from(moved(mount["mountPath"].as_str().unwrap()));
        std::fs::create_dir_all(&dir).unwrap();
        let Some(name) = volume["secret"]["secretName"].as_str() else {
            continue;
        };
        let secret = m.one("Secret", name);
        for (key, value) in secret["stringData"].as_object().unwrap() {
            let value = secret_value(key, value.as_str().unwrap());
            std::fs::write(dir.join(key), value).unwrap();
        }
    }
    config_file
}

/// A CA and a certificate for 127.0.0.1 it signed: (CA PEM, certificate PEM, key PEM).
fn test_pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn shipped_config_serves_with_only_its_addresses_and_stores_swapped() {
    let m = Manifests::load();
    let root = tempfile::tempdir().unwrap();
    let (ca_pem, cert_pem, key_pem) = test_pki();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let config_file = lay_out_pod_files(&m, root.path(), &|key, _placeholder| match key {
        "tls.crt" => cert_pem.clone(),
        "tls.key" => key_pem.clone(),
        // 64 hex characters: a valid AES key, HMAC secret, token or password alike.
        _ => hex::encode(ring_random_32()),
    });
    for (name, path) in secret_references(&m.config()) {
        let moved = format!("{}{path}", root.path().display());
        values.insert(name, std::fs::read_to_string(moved).unwrap());
    }
    // The customer's Redis: a real one, over TLS, asking for the password from the Secret; its
    // CA replaces the ConfigMap's placeholder.
    let redis = support::redis::RedisServer::start_with(support::redis::RedisOptions {
        password: Some(values[".redis.password"].clone()),
        tls: true,
    })
    .await;
    let config_dir = config_file.parent().unwrap();
    let ca_key = m.config()["redis"]["ca_file"].as_str().unwrap().to_owned();
    std::fs::copy(redis.ca_file(), config_dir.join(&ca_key)).unwrap();

    let config = match bucketgate::config::load(&config_file) {
        Ok(config) => config,
        Err(errors) => panic!("the ConfigMap's config is refused:\n{errors}"),
    };
    assert!(config.cache.as_ref().is_some_and(|c| c.disk.is_some()));

    // Test servers in place of the customer's S3 (same bucket) and Redis; loopback addresses.
    let s3 = support::s3::S3sFs::start("AKIDK8STEST", "k8s-test-secret").await;
    let mut buckets = BTreeSet::new();
    let tls_dir = tempfile::tempdir().unwrap();
    std::fs::write(tls_dir.path().join("cert.pem"), &ca_pem).unwrap();
    let mut config = config;
    config.listener.addr = "127.0.0.1:0".parse().unwrap();
    config.admin.addr = "127.0.0.1:0".parse().unwrap();
    for source in config.sources.values_mut() {
        if let bucketgate::config::SourceConfig::S3(s) = source {
            buckets.insert(s.bucket.clone());
            let local = s3.source(&s.bucket, &s.prefix);
            *s = local;
        }
    }
    assert!(!buckets.is_empty(), "the example config has an S3 source");
    // Only the address of the Redis changes: the scheme, CA file and password are the config's.
    let redis_config = config
        .redis
        .as_mut()
        .expect("the ConfigMap's config has [redis]");
    assert!(
        redis_config.url.starts_with("rediss://"),
        "TLS to the customer's Redis"
    );
    assert_eq!(
        redis_config.ca_file.as_deref(),
        Some(config_dir.join(&ca_key).as_path())
    );
    redis_config.url = redis.plain_url();
    assert!(redis_config.url.starts_with("rediss://"));
    for bucket in &buckets {
        s3.create_bucket(bucket).await;
        s3.put(bucket, "cats/1.txt", b"meow\n", Some("text/plain"))
            .await;
    }
    let gw = GatewayBuilder::from_config(config, tls_dir).start().await;

    // The probes' paths, as the kubelet asks them (plain HTTP with a Host header).
    let c = m.container();
    let http = reqwest::Client::new();
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().unwrap();
        let resp = http.get(gw.admin_url(path)).send().await.unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert_eq!(status, 200, "{probe} {path}: {body}");
        if probe == "readinessProbe" {
            assert!(body.contains("redis: ok"), "readiness names Redis: {body}");
        }
    }

    // The README's check after a deploy: /admin/cluster, with the admin token from the Secret,
    // lists this node (heartbeats go to the real Redis).
    let admin_token = values[".admin.token"].clone();
    let admin_addr = gw.admin_addr().to_string();
    support::eventually(
        "this node in /admin/cluster",
        100,
        std::time::Duration::from_millis(100),
        || {
            let http = http.clone();
            let url = gw.admin_url("/admin/cluster");
            let (admin_token, admin_addr) = (admin_token.clone(), admin_addr.clone());
            async move {
                let resp = http.get(url).bearer_auth(admin_token).send().await.ok()?;
                assert_eq!(resp.status(), 200);
                let body: Value = serde_json::from_str(&resp.text().await.ok()?).ok()?;
                let nodes = body["nodes"].as_array()?;
                nodes
                    .iter()
                    .any(|n| n["admin_addr"] == admin_addr.as_str() && n["node"] == body["node"])
                    .then_some(())
            }
        },
    )
    .await;

    // A labeler's read, with a token signed by the HS256 key from the Secret.
    let keys = m.config()["identity"]["keys"].as_array().unwrap().clone();
    let kid = keys[0]["kid"].as_str().unwrap();
    let secret = &values[".identity.keys.secret"];
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    let source = m.config()["sources"]
        .as_table()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let claims = serde_json::json!({
        "sub": "alice", "aud": toml_str(&m.config(), "identity", "audience"),
        "exp": support::now() + 300, "scope": [format!("{source}:")], "role": "annotator",
    });
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let resp = gw
        .client()
        .get(gw.url(&format!("/o/{source}/cats/1.txt")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "meow\n");
    gw.shutdown().await;
}

#[test]
fn committed_secrets_are_placeholders_the_gateway_refuses() {
    let m = Manifests::load();
    let secrets = m.all("Secret");
    assert!(secrets.len() >= 2);
    for secret in &secrets {
        assert!(
            secret["data"].is_null(),
            "values only as readable stringData"
        );
        for (key, value) in secret["stringData"].as_object().expect("stringData") {
            assert!(
                value.as_str().unwrap().contains(PLACEHOLDER),
                "{key} of {} is not a placeholder",
                secret["metadata"]["name"]
            );
        }
    }
    // Applied as committed, the pods do not start on known keys.
    let root = tempfile::tempdir().unwrap();
    let config_file = lay_out_pod_files(&m, root.path(), &|_, placeholder| placeholder.to_owned());
    let errors = match bucketgate::config::load(&config_file) {
        Ok(_) => panic!("the config with placeholder secrets was accepted"),
        Err(errors) => errors.to_string(),
    };
    for key in ["admin.token", "cache.key", "identity.keys[0].secret"] {
        assert!(
            errors.contains(&format!(": {key}: ")),
            "{key} not refused:\n{errors}"
        );
    }
}

fn ring_random_32() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    let rng = ring::rand::SystemRandom::new();
    ring::rand::SecureRandom::fill(&rng, &mut bytes).unwrap();
    bytes
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped, each as
/// (INSTRUCTION, arguments), split by stage (a stage starts at its FROM).
fn dockerfile_stages() -> Vec<Vec<(String, String)>> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        lines.push(std::mem::take(&mut current));
    }
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for line in lines {
        let (instruction, args) = line.split_once(' ').unwrap_or((&line, ""));
        let instruction = instruction.to_ascii_uppercase();
        if instruction == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push((instruction, args.trim().to_owned()));
    }
    stages
}

/// The numeric uid of the final stage's USER.
fn dockerfile_user() -> u64 {
    let stages = dockerfile_stages();
    let user = stages
        .last()
        .unwrap()
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.clone())
        .expect("USER in the final stage");
    let uid = user.split(':').next().unwrap();
    uid.parse()
        .unwrap_or_else(|_| panic!("USER {user}: numeric, so that runAsNonRoot can verify it"))
}

#[test]
fn dockerfile_stages_are_pinned_unprivileged_and_secret_free() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "a build stage and a runtime stage");
    let mut names = Vec::new();
    for stage in &stages {
        let (_, from) = &stage[0];
        let words: Vec<&str> = from.split_whitespace().collect();
        let image = words[0];
        // Pinned: a tag with a version (or a digest), never implicit or `latest`.
        let (name, tag) = image
            .split_once(':')
            .unwrap_or_else(|| panic!("FROM {image}: no tag"));
        let tag = tag.split('@').next().unwrap();
        assert!(tag != "latest" && !tag.is_empty(), "FROM {image}");
        assert!(
            tag.chars().any(|c| c.is_ascii_digit()) || tag.contains("bookworm"),
            "FROM {image}: pin a version"
        );
        if name == "rust" {
            // The toolchain the crate declares.
            assert!(
                tag.starts_with("1.95"),
                "FROM {image}: rust-version is 1.95"
            );
        }
        names.push(match words.as_slice() {
            [_, as_kw, stage] if as_kw.eq_ignore_ascii_case("as") => stage.to_string(),
            _ => String::new(),
        });
        for (instruction, args) in stage {
            assert_ne!(
                instruction, "HEALTHCHECK",
                "Kubernetes probes the admin listener"
            );
            assert_ne!(instruction, "ADD", "ADD fetches and unpacks: COPY only");
            if instruction == "ENV" || instruction == "ARG" {
                let upper = args.to_ascii_uppercase();
                for word in ["SECRET", "TOKEN", "PASSWORD", "KEY"] {
                    assert!(
                        !upper.contains(word),
                        "{instruction} {args}: no secrets in images"
                    );
                }
            }
            if instruction == "COPY" {
                for word in [
                    ".bucketgate",
                    ".pem",
                    ".key",
                    ".crt",
                    "certs",
                    ".venv",
                    "data",
                ] {
                    assert!(!args.contains(word), "COPY {args}: nothing secret or local");
                }
            }
        }
    }
    let build = &names[0];
    assert!(!build.is_empty(), "the build stage is named");
    let runtime = stages.last().unwrap();
    let binary = "/usr/local/bin/bucketgate";
    assert!(
        runtime.iter().any(|(i, a)| i == "COPY"
            && a.starts_with(&format!("--from={build} "))
            && a.ends_with(binary)),
        "the runtime stage copies the binary from {build}"
    );
    // Only the binary and the documentation example come in; no RUN builds anything there.
    for (i, a) in runtime {
        if i == "COPY" {
            assert!(
                a.starts_with("--from=") || a.starts_with("config.toml.example "),
                "{a}"
            );
        }
    }
    assert!(
        runtime
            .iter()
            .any(|(i, a)| i == "ENTRYPOINT" && a.contains(binary))
    );
    assert_ne!(dockerfile_user(), 0);

    // EXPOSE is what the manifests and the config use.
    let exposed: BTreeSet<u64> = runtime
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, a)| {
            a.split_whitespace()
                .map(|p| p.trim_end_matches("/tcp").parse::<u64>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let m = Manifests::load();
    assert_eq!(exposed, BTreeSet::from([m.port("https"), m.port("admin")]));

    // The build context leaves out build output, venvs and local keys.
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for pattern in ["target", ".venv", ".bucketgate", "*.pem", "*.key"] {
        assert!(ignore.contains(pattern), ".dockerignore lacks {pattern}");
    }
}
