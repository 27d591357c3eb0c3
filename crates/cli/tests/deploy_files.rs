//! deploy/: no Docker engine or Kubernetes runs here, so the files are checked by what
//! does run: every YAML file parses (PyYAML) and has the shape its tool needs, every
//! config it ships passes `pushcenter check-config`, the systemd units pass
//! `systemd-analyze verify`, and the Dockerfile is read for what it promises.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every document of a YAML file, as JSON.
fn yaml(path: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml\n\
             json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("python3 (make test installs it and PyYAML)");
    assert!(
        out.status.success(),
        "{} does not parse: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `pushcenter check-config` on a TOML text, with extra env.
fn check_config(toml: &str, env: &[(&str, &str)]) {
    let path = std::env::temp_dir().join(format!(
        "pushcenter-deploy-{}-{}.toml",
        std::process::id(),
        toml.len()
    ));
    std::fs::write(&path, toml).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_pushcenter"))
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .expect("run pushcenter");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "check-config refuses:\n{toml}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn compose_file_runs_kraft_kafka_etcd_three_nodes_and_a_registry() {
    let docs = yaml(&deploy().join("docker-compose.yml"));
    let services = &docs[0]["services"];
    for s in ["kafka", "etcd", "n1", "n2", "n3", "registry"] {
        assert!(services[s].is_object(), "no service {s}");
    }
    let kafka = &services["kafka"];
    assert!(
        kafka["image"]
            .as_str()
            .unwrap()
            .starts_with("apache/kafka:")
    );
    assert_eq!(
        kafka["environment"]["KAFKA_PROCESS_ROLES"], "broker,controller",
        "KRaft, no ZooKeeper"
    );
    for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
        let node = &services[*n];
        assert_eq!(strs(&node["command"])[0], "node");
        assert_eq!(node["environment"]["PUSHCENTER_NODE_ID"], *n);
        let advertised = node["environment"]["PUSHCENTER_ADVERTISE_URL"]
            .as_str()
            .unwrap();
        let published = strs(&node["ports"])[0]
            .split(':')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(advertised, format!("ws://localhost:{published}/ws"));
        assert_eq!(published, format!("{}", 8081 + i));
        assert!(node["build"]["dockerfile"] == "deploy/Dockerfile");
    }
    assert_eq!(strs(&services["registry"]["command"])[0], "registry");
    // The configs the services mount exist and are valid.
    let node_toml = std::fs::read_to_string(deploy().join("config/node.toml")).unwrap();
    check_config(&node_toml, &[("PUSHCENTER_NODE_ID", "n1")]);
    let registry_toml = std::fs::read_to_string(deploy().join("config/registry.toml")).unwrap();
    check_config(&registry_toml, &[]);
}

#[test]
fn kubernetes_manifests_have_probes_drain_and_valid_config() {
    let mut kinds = Vec::new();
    let mut config = Value::Null;
    let mut statefulset = Value::Null;
    for f in std::fs::read_dir(deploy().join("k8s")).unwrap() {
        let path = f.unwrap().path();
        for doc in yaml(&path) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            assert!(
                doc["apiVersion"].is_string(),
                "{}: no apiVersion",
                path.display()
            );
            assert!(
                doc["metadata"]["name"].is_string(),
                "{}: no name",
                path.display()
            );
            if kind == "ConfigMap" {
                config = doc.clone();
            }
            if kind == "StatefulSet" {
                statefulset = doc.clone();
            }
            kinds.push(kind);
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Deployment",
            "Namespace",
            "Service",
            "Service",
            "StatefulSet"
        ]
    );

    let pod = &statefulset["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["lifecycle"]["preStop"].is_object(), "no preStop");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    // The grace period outlasts the node's own drain.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let node_toml = config["data"]["node.toml"].as_str().unwrap();
    let drain: u64 = node_toml
        .lines()
        .find_map(|l| l.strip_prefix("shutdown_grace = \""))
        .and_then(|v| v.strip_suffix("s\""))
        .and_then(|v| v.parse().ok())
        .expect("shutdown_grace in node.toml");
    assert!(grace > drain + 2, "grace {grace} s, drain {drain} s");
    check_config(node_toml, &[("PUSHCENTER_NODE_ID", "pushcenter-node-0")]);
    check_config(config["data"]["registry.toml"].as_str().unwrap(), &[]);
}

#[test]
fn systemd_units_verify() {
    let dir = std::env::temp_dir().join(format!("pushcenter-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut units = Vec::new();
    for f in std::fs::read_dir(deploy().join("systemd")).unwrap() {
        let path = f.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        // verify wants the ExecStart binary to exist: point it at the one under test.
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "/usr/local/bin/pushcenter",
            env!("CARGO_BIN_EXE_pushcenter"),
        );
        std::fs::write(dir.join(&name), text).unwrap();
        units.push(name.replace("@.", "@n1."));
    }
    units.sort();
    assert_eq!(
        units,
        ["pushcenter-node@n1.service", "pushcenter-registry.service"]
    );
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units.iter().map(|u| dir.join(u)))
        .output()
        .expect("systemd-analyze (make test installs systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn dockerfile_is_multi_stage_and_runs_as_non_root() {
    let text = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "build stage and runtime stage: {froms:?}");
    assert!(froms[0].ends_with(" AS build"));
    assert!(text.contains("COPY --from=build"));
    let user = text
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "{user}"
    );
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/pushcenter\"]"));
    // What the build stage copies exists (the context is the repository root).
    let root = deploy().join("..");
    for l in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = l.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root.join(src).exists(), "COPY source {src} missing");
        }
    }
}
