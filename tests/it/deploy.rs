//! deploy/ holds what operators install keygate with: a Dockerfile, a systemd unit and
//! Kubernetes manifests. These tests hold each to what it promises without needing Docker or a
//! cluster: every manifest parses and agrees with the others and with keygate's config, the
//! Dockerfile has its stages, user, config and health check, and the unit has its hardening
//! (and passes `systemd-analyze verify` where that tool exists).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// Every YAML document in deploy/kubernetes/*.yaml, by kind; each kind appears once.
fn manifests() -> BTreeMap<String, Value> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut by_kind = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("manifest");
        let mut docs = 0;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            if v.is_null() {
                continue;
            }
            docs += 1;
            let kind = v["kind"].as_str().expect("kind").to_string();
            let api = v["apiVersion"].as_str().expect("apiVersion");
            let want = match kind.as_str() {
                "ConfigMap" | "Service" => "v1",
                "Deployment" => "apps/v1",
                other => panic!("{}: unexpected kind {other}", file.display()),
            };
            assert_eq!(api, want, "{}: apiVersion of {kind}", file.display());
            assert_eq!(
                v["metadata"]["name"].as_str(),
                Some("keygate"),
                "{}: metadata.name",
                file.display()
            );
            assert!(
                by_kind.insert(kind.clone(), v).is_none(),
                "{kind} defined twice"
            );
        }
        assert!(docs > 0, "{}: no documents", file.display());
    }
    for kind in ["ConfigMap", "Deployment", "Service"] {
        assert!(by_kind.contains_key(kind), "no {kind} in deploy/kubernetes");
    }
    by_kind
}

/// The keygate.toml the ConfigMap carries.
fn configmap_toml(m: &BTreeMap<String, Value>) -> String {
    m["ConfigMap"]["data"]["keygate.toml"]
        .as_str()
        .expect("ConfigMap data keygate.toml")
        .to_string()
}

/// The port of a "host:port" listen address in a keygate config's `table`.
fn listen_port(config: &str, table: &str) -> u64 {
    let v: toml::Value = toml::from_str(config).expect("TOML");
    let listen = v[table]["listen"].as_str().expect("listen");
    listen
        .rsplit_once(':')
        .expect("host:port")
        .1
        .parse()
        .expect("port")
}

/// Resolves a port given by name or number against the container's `ports`.
fn container_port(container: &Value, port: &Value) -> u64 {
    let ports = container["ports"].as_array().expect("container ports");
    match port {
        Value::Number(n) => {
            let n = n.as_u64().expect("port number");
            assert!(
                ports.iter().any(|p| p["containerPort"].as_u64() == Some(n)),
                "port {n} is not declared by the container"
            );
            n
        }
        Value::String(name) => ports
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
            .as_u64()
            .expect("containerPort"),
        other => panic!("port {other} is neither a name nor a number"),
    }
}

#[test]
fn kubernetes_manifests_parse() {
    manifests();
}

#[test]
fn configmap_is_the_example_config_listening_on_all_addresses() {
    let m = manifests();
    let embedded = configmap_toml(&m);
    let example = read("config/keygate.toml");
    // The only lines allowed to differ, and they must: a pod is reached on its own IP, and the
    // mounted ConfigMap is read-only, so the keys file lives on a writable volume.
    let allowed = [
        (
            r#"keys_file = "keys.toml""#,
            r#"keys_file = "/var/lib/keygate/keys.toml""#,
        ),
        (
            r#"listen = "127.0.0.1:8080"                # default "127.0.0.1:8080""#,
            r#"listen = "0.0.0.0:8080"                  # default "127.0.0.1:8080""#,
        ),
        (r#"listen = "127.0.0.1:9901""#, r#"listen = "0.0.0.0:9901""#),
    ];
    let (a, b): (Vec<&str>, Vec<&str>) = (example.lines().collect(), embedded.lines().collect());
    assert_eq!(
        a.len(),
        b.len(),
        "the ConfigMap's keygate.toml has drifted from config/keygate.toml: \
         run deploy/kubernetes/sync-configmap.sh"
    );
    let mut changed = Vec::new();
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        if x != y {
            assert!(
                allowed.contains(&(*x, *y)),
                "line {}: config/keygate.toml has\n  {x}\nbut the ConfigMap has\n  {y}\n\
                 (run deploy/kubernetes/sync-configmap.sh)",
                i + 1
            );
            changed.push(*x);
        }
    }
    assert_eq!(changed.len(), allowed.len(), "changed lines: {changed:?}");

    // And keygate accepts it, as it would at /etc/keygate/keygate.toml in the pod.
    let loaded = keygate::config::parse(&embedded, Path::new("/etc/keygate/keygate.toml"))
        .unwrap_or_else(|e| panic!("the ConfigMap's config does not load: {e}"));
    drop(loaded);
    let v: toml::Value = toml::from_str(&embedded).expect("TOML");
    assert_eq!(v["server"]["listen"].as_str(), Some("0.0.0.0:8080"));
    assert_eq!(v["admin"]["listen"].as_str(), Some("0.0.0.0:9901"));
}

#[test]
fn deployment_probes_ports_mounts_and_security() {
    let m = manifests();
    let dep = &m["Deployment"];
    let config = configmap_toml(&m);
    let pod = &dep["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    let c = &containers[0];

    // Probes: on the admin listener's port, which the container declares.
    let admin = listen_port(&config, "admin");
    let proxy = listen_port(&config, "server");
    let probe = |name: &str, path: &str| {
        let get = &c[name]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{name} path");
        assert_eq!(container_port(c, &get["port"]), admin, "{name} port");
    };
    probe("readinessProbe", "/readyz");
    probe("livenessProbe", "/healthz");
    let declared: Vec<u64> = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p["containerPort"].as_u64().expect("containerPort"))
        .collect();
    assert!(declared.contains(&proxy), "proxy port {proxy} not declared");

    // The Service selects the pods and forwards to the proxy's port.
    let svc = &m["Service"];
    let labels = pod_labels(dep);
    for (k, v) in svc["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(
            labels.get(k),
            Some(v),
            "Service selector {k} does not match the pods"
        );
    }
    for (k, v) in dep["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(labels.get(k), Some(v), "Deployment selector {k}");
    }
    let svc_ports = svc["spec"]["ports"].as_array().expect("Service ports");
    assert!(!svc_ports.is_empty());
    for p in svc_ports {
        let target = if p["targetPort"].is_null() {
            &p["port"]
        } else {
            &p["targetPort"]
        };
        assert_eq!(container_port(c, target), proxy, "Service targetPort");
    }

    // Resources.
    for r in ["cpu", "memory"] {
        assert!(
            c["resources"]["requests"][r].is_string(),
            "resources.requests.{r}"
        );
    }
    assert!(c["resources"]["limits"]["memory"].is_string());

    // Security context.
    let sc = &c["securityContext"];
    let pod_sc = &pod["securityContext"];
    assert!(
        sc["runAsNonRoot"] == true || pod_sc["runAsNonRoot"] == true,
        "runAsNonRoot"
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));

    // The config: --config names a file in a directory where the whole ConfigMap is mounted
    // (no subPath, or the ..data symlink swap never reaches the pod).
    let args: Vec<&str> = c["args"]
        .as_array()
        .or(c["command"].as_array())
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config in args");
    let config_path = Path::new(args[at + 1]);
    assert!(args.contains(&"run"), "keygate run");
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mount = mounts
        .iter()
        .find(|mt| Path::new(mt["mountPath"].as_str().unwrap()) == config_path.parent().unwrap())
        .unwrap_or_else(|| panic!("nothing mounted at {}", config_path.display()));
    assert!(
        mount["subPath"].is_null(),
        "the config mount must not use subPath"
    );
    let volume = volumes
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the config mount's volume");
    assert_eq!(
        volume["configMap"]["name"], m["ConfigMap"]["metadata"]["name"],
        "the config volume is the ConfigMap"
    );
    let file = config_path.file_name().unwrap().to_str().unwrap();
    assert!(
        m["ConfigMap"]["data"][file].is_string(),
        "the ConfigMap has no {file}"
    );

    // keys_file is on a writable mount (the root filesystem is read-only).
    let v: toml::Value = toml::from_str(&config).expect("TOML");
    let keys = Path::new(v["keys_file"].as_str().expect("keys_file"));
    let keys_dir = keys.parent().unwrap();
    let m = mounts
        .iter()
        .find(|mt| Path::new(mt["mountPath"].as_str().unwrap()) == keys_dir)
        .unwrap_or_else(|| {
            panic!(
                "keys_file's directory {} is not mounted",
                keys_dir.display()
            )
        });
    assert_ne!(m["readOnly"], true, "keys_file's volume is read-only");

    // SIGTERM drains for up to shutdown_timeout (30 s): the grace period covers it.
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30) > 30);
}

fn pod_labels(dep: &Value) -> serde_json::Map<String, Value> {
    dep["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .expect("pod labels")
        .clone()
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
/// The values of every `(name, value)` pair named `name`, in order (a Dockerfile's
/// instructions, a unit file's entries).
fn values_of<'a>(pairs: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn dockerfile() -> Vec<(String, String)> {
    let text = read("deploy/Dockerfile");
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (op, rest) = cur.split_once(char::is_whitespace).unwrap_or((&cur, ""));
        out.push((op.to_ascii_uppercase(), rest.trim().to_string()));
        cur.clear();
    }
    out
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_config_and_healthcheck() {
    let ins = dockerfile();
    let all = |op: &str| values_of(&ins, op);
    let froms = all("FROM");
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    // The runtime stage: everything after the last FROM.
    let last = ins.iter().rposition(|(o, _)| o == "FROM").unwrap();
    let runtime = &ins[last..];
    let rt = |op: &str| values_of(runtime, op);
    assert!(
        all("RUN").iter().any(|r| r.contains("cargo build")
            && r.contains("--release")
            && r.contains("--locked")),
        "cargo build --release --locked"
    );
    assert!(
        rt("COPY")
            .iter()
            .any(|c| c.starts_with("--from=") && c.contains("/usr/local/bin/keygate")),
        "the binary comes from the build stage"
    );
    assert!(
        rt("COPY").contains(&"config/keygate.toml /etc/keygate/keygate.toml"),
        "the example config at /etc/keygate/keygate.toml"
    );
    let user = rt("USER");
    let user = user.last().expect("a USER in the runtime stage");
    let name = user.split(':').next().unwrap();
    assert!(name != "root" && name != "0", "USER {user} is root");

    let config = read("config/keygate.toml");
    let admin = listen_port(&config, "admin");
    let health = rt("HEALTHCHECK");
    let health = health.last().expect("HEALTHCHECK");
    assert!(
        health.contains(&format!("http://127.0.0.1:{admin}/healthz")),
        "HEALTHCHECK on the admin listener's /healthz: {health}"
    );
    // What it calls is installed in the runtime image.
    if health.contains("curl") {
        assert!(
            rt("RUN")
                .iter()
                .any(|r| r.contains("install") && r.contains("curl")),
            "the HEALTHCHECK's curl is installed in the runtime stage"
        );
    }
    let exposed: Vec<u64> = rt("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE port"))
        .collect();
    for port in [listen_port(&config, "server"), admin] {
        assert!(exposed.contains(&port), "EXPOSE {port}");
    }
    let entry = rt("ENTRYPOINT");
    let entry: Vec<String> =
        serde_json::from_str(entry.last().expect("ENTRYPOINT")).expect("exec-form ENTRYPOINT");
    assert_eq!(
        entry,
        ["keygate", "run", "--config", "/etc/keygate/keygate.toml"]
    );

    let ignore = read(".dockerignore");
    assert!(
        ignore
            .lines()
            .any(|l| l.trim().trim_end_matches('/') == "target"),
        ".dockerignore leaves out target/"
    );
}

// ---------------------------------------------------------------------------------------------
// systemd

fn unit() -> String {
    read("deploy/keygate.service")
}

/// Every `key=value` of the unit (a key may repeat).
fn unit_entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn systemd_unit_is_hardened_and_reloads_with_sighup() {
    let text = unit();
    let entries = unit_entries(&text);
    let get = |key: &str| values_of(&entries, key);
    let one = |key: &str| -> &str {
        let v = get(key);
        assert_eq!(v.len(), 1, "{key}: {v:?}");
        v[0]
    };
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("StateDirectory", "keygate"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("TimeoutStopSec", "35"),
        (
            "ExecStart",
            "/usr/local/bin/keygate run --config /etc/keygate/keygate.toml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(one(key), want, "{key}");
    }
    assert!(
        get("SystemCallFilter").contains(&"@system-service"),
        "SystemCallFilter=@system-service"
    );
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(text.lines().any(|l| l.trim() == section), "{section}");
    }
}

#[test]
fn systemd_analyze_verify_passes() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        eprintln!(
            "systemd-analyze not found: skipped `systemd-analyze verify deploy/keygate.service`"
        );
        return;
    }
    // verify checks that ExecStart is executable: point it at the binary under test.
    let dir = std::env::temp_dir().join(format!("keygate-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let unit = unit().replace(
        "ExecStart=/usr/local/bin/keygate ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_keygate")),
    );
    assert!(unit.contains(env!("CARGO_BIN_EXE_keygate")));
    let path = dir.join("keygate.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze verify");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and bad values are only warnings (exit 0): any line about our unit fails too.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("keygate.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify failed ({}):\n{stderr}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

// ---------------------------------------------------------------------------------------------
// Compose: three instances and Redis

/// deploy/compose/compose.yaml with its `<<` merge keys applied.
fn compose() -> Value {
    let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read("deploy/compose/compose.yaml"))
        .expect("compose.yaml is YAML");
    v.apply_merge().expect("merge keys");
    serde_json::to_value(v).expect("compose.yaml as JSON")
}

/// Three keygate services on one image and one config, sharing the keys volume, each waiting
/// for a healthy Redis; the config they mount shares limits and key changes through that
/// Redis, keeps its keys file on the shared volume, and validates.
#[test]
fn compose_runs_three_instances_sharing_redis_and_the_keys_volume() {
    let c = compose();
    let services = c["services"].as_object().expect("services");
    let instances: Vec<&String> = services
        .keys()
        .filter(|k| k.starts_with("keygate-"))
        .collect();
    assert_eq!(instances.len(), 3, "{instances:?}");
    let redis = &services["redis"];
    assert!(
        redis["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("redis:"))
    );
    assert!(
        redis["healthcheck"]["test"].is_array(),
        "redis needs a health check"
    );
    let mut admin_ports = Vec::new();
    for name in &instances {
        let s = &services[name.as_str()];
        assert_eq!(s["build"]["dockerfile"], "deploy/Dockerfile", "{name}");
        assert_eq!(
            s["command"],
            serde_json::json!(["run", "--config", "/etc/keygate/fleet/keygate.toml"]),
            "{name}"
        );
        let volumes: Vec<&str> = s["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            volumes.contains(&"./keygate.toml:/etc/keygate/fleet/keygate.toml:ro"),
            "{name}: {volumes:?}"
        );
        assert!(
            volumes.contains(&"keys:/var/lib/keygate"),
            "{name}: {volumes:?}"
        );
        assert_eq!(
            s["depends_on"]["redis"]["condition"], "service_healthy",
            "{name}"
        );
        admin_ports.push(s["ports"][0].as_str().expect("admin port").to_owned());
    }
    admin_ports.sort();
    admin_ports.dedup();
    assert_eq!(
        admin_ports.len(),
        3,
        "each instance's admin API on its own host port"
    );
    assert!(
        c["volumes"]
            .as_object()
            .is_some_and(|v| v.contains_key("keys"))
    );

    let lb = read("deploy/compose/lb.conf");
    for name in &instances {
        assert!(
            lb.contains(&format!("server {name}:8080;")),
            "lb.conf lacks {name}"
        );
    }

    let text = read("deploy/compose/keygate.toml");
    let loaded = keygate::config::parse(&text, Path::new("/etc/keygate/fleet/keygate.toml"))
        .unwrap_or_else(|e| panic!("deploy/compose/keygate.toml: {e}"));
    let snap = loaded.snapshot;
    let cluster = snap.cluster.as_ref().expect("[cluster]");
    assert_eq!(cluster.redis, "redis://redis:6379/0");
    assert_eq!(cluster.mode, keygate::snapshot::ClusterMode::Strict);
    assert_eq!(
        snap.keys_file.as_deref(),
        Some(Path::new("/var/lib/keygate/keys.toml")),
        "the keys file must be on the shared volume"
    );
    assert_eq!(snap.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(
        snap.admin.as_ref().expect("[admin]").listen.to_string(),
        "0.0.0.0:9901"
    );
    assert!(
        snap.keys.iter().any(|k| k.rate_limit().is_some()),
        "the demo shows a shared rate limit"
    );
}
