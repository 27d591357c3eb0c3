//! deploy/grafana/pushcenter.json and deploy/prometheus/ against what the binaries
//! export: every metric an expression names is a sample a standalone node, a Kafka node
//! or the registry serves on `/metrics` (as Prometheus stores it: `_total`, `_bucket`,
//! never a counter's bare family name); counters are only read through rate/increase;
//! every label an expression matches or groups by is one the series carry (or the
//! target's `instance`/`job`). Then the dashboard's model and the alert rules' shape,
//! and PromQL syntax through `promtool`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use common::broker::Broker;
use common::etcd::Etcd;
use common::*;
use serde_json::Value;

fn dashboard() -> Value {
    let path = root().join("deploy/grafana/pushcenter.json");
    let text = std::fs::read_to_string(&path).expect("dashboard");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn alerts() -> Value {
    yaml(&root().join("deploy/prometheus/alerts.yml"))
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// (where, expression, is_grafana) of every query in the dashboard and the rules.
fn expressions() -> Vec<(String, String, bool)> {
    let d = dashboard();
    let mut out = Vec::new();
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("target expr");
            out.push((format!("panel {}", p["title"]), expr.to_string(), true));
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if v["type"] == "query" {
            // Grafana stores the query as a string or as {query, refId}.
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            let q = q.unwrap_or_else(|| panic!("variable {} without query", v["name"]));
            // label_values(METRIC, LABEL) reads like PromQL grouping METRIC by LABEL.
            let q = match q
                .strip_prefix("label_values(")
                .and_then(|a| a.strip_suffix(')'))
                .and_then(|a| a.rsplit_once(','))
            {
                Some((metric, label)) => format!("group by ({}) ({metric})", label.trim()),
                None => q.to_string(),
            };
            out.push((format!("variable {}", v["name"]), q, true));
        }
    }
    for g in alerts()["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let expr = r["expr"].as_str().expect("rule expr");
            out.push((format!("alert {}", r["alert"]), expr.to_string(), false));
        }
    }
    out
}

/// A series selector in an expression, and the function it is the direct argument of.
#[derive(Debug)]
struct Selector {
    metric: String,
    labels: Vec<String>,
    func: Option<String>,
}

#[derive(Debug, Default)]
struct Refs {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
    functions: Vec<String>,
    /// Grafana's `$name`.
    variables: Vec<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// A small PromQL lexer: enough to tell metric names from functions, keywords and
/// label names, without a PromQL parser in the dependencies.
fn refs(expr: &str) -> Refs {
    let b = expr.as_bytes();
    let mut r = Refs::default();
    let mut i = 0;
    let ident = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && (b[*i].is_ascii_alphanumeric() || b[*i] == b'_' || b[*i] == b':') {
            *i += 1;
        }
        expr[start..*i].to_string()
    };
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let skip_string = |i: &mut usize| {
        let q = b[*i];
        *i += 1;
        while *i < b.len() && b[*i] != q {
            *i += if b[*i] == b'\\' { 2 } else { 1 };
        }
        *i += 1;
    };
    // Label names of a `{...}` starting at b[i].
    let matchers = |i: &mut usize| {
        let mut names = Vec::new();
        *i += 1;
        loop {
            skip_ws(i);
            match b.get(*i) {
                None => panic!("unclosed {{ in {expr}"),
                Some(b'}') => {
                    *i += 1;
                    return names;
                }
                Some(b'"' | b'\'' | b'`') => skip_string(i),
                Some(c) if c.is_ascii_alphabetic() || *c == b'_' => names.push(ident(i)),
                Some(_) => *i += 1,
            }
        }
    };
    // Grafana fills its variables in anywhere, label values included.
    for piece in expr.split('$').skip(1) {
        let name = piece.trim_start_matches('{');
        let end = name
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(name.len());
        r.variables.push(name[..end].to_string());
    }
    // The function whose `(` came just before.
    let mut pending: Option<String> = None;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if matches!(c, b'"' | b'\'' | b'`') {
            skip_string(&mut i);
            pending = None;
        } else if c == b'$' {
            // ${name} or $name, collected above.
            i += 1;
            let braced = b.get(i) == Some(&b'{');
            i += usize::from(braced);
            ident(&mut i);
            i += usize::from(braced);
        } else if c == b'[' {
            while i < b.len() && b[i] != b']' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            pending = None;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let word = ident(&mut i);
            let mut j = i;
            skip_ws(&mut j);
            let next = b.get(j).copied();
            if GROUPING.contains(&word.as_str()) {
                if next == Some(b'(') {
                    let end = expr[j..].find(')').map(|e| j + e).expect("closing )");
                    r.grouping.extend(
                        expr[j + 1..end]
                            .split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(String::from),
                    );
                    i = end + 1;
                }
            } else if KEYWORDS.contains(&word.as_str()) {
            } else if next == Some(b'(') || AGGREGATIONS.contains(&word.as_str()) {
                r.functions.push(word.clone());
                if next == Some(b'(') {
                    i = j + 1;
                    pending = Some(word);
                    continue;
                }
            } else {
                let labels = if next == Some(b'{') {
                    i = j;
                    matchers(&mut i)
                } else {
                    Vec::new()
                };
                r.selectors.push(Selector {
                    metric: word,
                    labels,
                    func: pending.take(),
                });
                continue;
            }
            pending = None;
        } else if c == b'{' {
            matchers(&mut i);
            pending = None;
        } else {
            i += 1;
            pending = None;
        }
    }
    r
}

/// What the exposition holds, as Prometheus stores it: sample name -> (its family's
/// type, the label names it carries).
type Exported = BTreeMap<String, (String, BTreeSet<String>)>;

fn read_exposition(text: &str, into: &mut Exported) {
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').expect("TYPE line");
            types.insert(name.to_string(), t.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let key = line.rsplit_once(' ').expect("sample line").0;
        let name = key.split('{').next().unwrap_or_default();
        let t = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| types.get(name.strip_suffix(s)?))
            .or_else(|| types.get(name))
            .unwrap_or_else(|| panic!("sample without TYPE: {line}"));
        let labels: BTreeSet<String> = key
            .strip_prefix(name)
            .and_then(|l| l.strip_prefix('{'))
            .and_then(|l| l.strip_suffix('}'))
            .map(|inner| {
                inner
                    .split("\",")
                    .filter_map(|p| p.split_once('=').map(|(k, _)| k.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let entry = into
            .entry(name.to_string())
            .or_insert_with(|| (t.clone(), BTreeSet::new()));
        entry.1.extend(labels);
    }
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Labels Prometheus adds to every series it scrapes.
const TARGET_LABELS: &[&str] = &["instance", "job"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_expression_names_exported_metrics_and_labels() {
    let etcd = Etcd::start();
    let registry = Node::registry(&etcd.endpoint());
    let standalone = Node::standalone(&[]);
    // A Kafka node: the consumer lag family exists only once librdkafka has reported.
    let broker = Broker::start();
    let config = TempConfig::write(
        "grafana",
        "[kafka.consumer]\n\"statistics.interval.ms\" = \"300\"\n",
    );
    let kafka_node = Node::cluster(
        "g1",
        &broker.brokers(),
        &[
            "--etcd-endpoints",
            &etcd.endpoint(),
            "--config",
            config.path(),
        ],
    );
    let mut node_text = scrape(kafka_node.http).await;
    for _ in 0..200 {
        if node_text.contains("\npushcenter_kafka_consumer_lag_records{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        node_text = scrape(kafka_node.http).await;
    }
    assert!(
        node_text.contains("\npushcenter_kafka_consumer_lag_records{"),
        "no consumer lag from the Kafka node"
    );
    let mut exported = Exported::new();
    read_exposition(&node_text, &mut exported);
    read_exposition(&scrape(standalone.http).await, &mut exported);
    read_exposition(&scrape(registry.http).await, &mut exported);
    assert!(exported.contains_key("pushcenter_registry_live_nodes"));

    let exprs = expressions();
    assert!(exprs.len() > 20, "{} expressions", exprs.len());
    let mut used = BTreeSet::new();
    for (at, expr, _) in &exprs {
        let r = refs(expr);
        assert!(!r.selectors.is_empty(), "{at}: no metric in {expr}");
        let mut labels_here: BTreeSet<String> =
            TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        for s in &r.selectors {
            used.insert(s.metric.clone());
            // Prometheus's own metric of each target.
            if s.metric == "up" {
                continue;
            }
            assert!(
                s.metric.starts_with("pushcenter_"),
                "{at}: {} is not a pushcenter metric: {expr}",
                s.metric
            );
            let (kind, labels) = exported.get(&s.metric).unwrap_or_else(|| {
                panic!("{at}: {} is not in any /metrics scrape: {expr}", s.metric)
            });
            labels_here.extend(labels.iter().cloned());
            let cumulative = kind == "counter" || kind == "histogram" || kind == "summary";
            match s.func.as_deref() {
                Some("rate" | "irate" | "increase") => assert!(
                    cumulative,
                    "{at}: {}() of the {kind} {}: {expr}",
                    s.func.as_deref().unwrap_or_default(),
                    s.metric
                ),
                Some("deriv" | "delta" | "predict_linear") => {
                    assert_eq!(kind, "gauge", "{at}: {expr}");
                }
                _ => assert!(
                    !cumulative,
                    "{at}: the {kind} {} read without rate/increase: {expr}",
                    s.metric
                ),
            }
            for l in &s.labels {
                assert!(
                    labels.contains(l) || TARGET_LABELS.contains(&l.as_str()),
                    "{at}: {} has no label {l} (it has {labels:?}): {expr}",
                    s.metric
                );
            }
        }
        for l in &r.grouping {
            assert!(labels_here.contains(l), "{at}: no series has {l}: {expr}");
        }
        if r.functions.iter().any(|f| f == "histogram_quantile") {
            assert!(
                r.grouping.iter().any(|l| l == "le"),
                "{at}: histogram_quantile without le: {expr}"
            );
        }
    }
    // The families the operators asked to watch are all there.
    for m in [
        "pushcenter_connections",
        "pushcenter_subscriptions",
        "pushcenter_messages_delivered_total",
        "pushcenter_messages_published_http_total",
        "pushcenter_delivery_latency_seconds_bucket",
        "pushcenter_fanout_duration_seconds_bucket",
        "pushcenter_kafka_fetch_lag_seconds_bucket",
        "pushcenter_kafka_consumer_lag_records",
        "pushcenter_slow_consumer_disconnects_total",
        "pushcenter_messages_dropped_total",
        "pushcenter_request_duration_seconds_bucket",
        "pushcenter_waiters",
        "pushcenter_auth_failures_total",
        "pushcenter_api_requests_limited_total",
        "pushcenter_admin_disconnects_total",
        "pushcenter_lock_hold_seconds_bucket",
        "pushcenter_registry_stale",
        "pushcenter_registry_view_age_seconds",
        "pushcenter_registry_live_nodes",
        "pushcenter_bus_consumer_restarts_total",
    ] {
        assert!(used.contains(m), "nothing reads {m}");
    }
}

#[test]
fn the_lexer_tells_metrics_from_functions_and_labels() {
    let r = refs(
        r#"histogram_quantile(0.99, sum by (le, instance) (rate(pushcenter_x_bucket{instance=~"$node", lock="a,b"}[5m]))) > 1 and max(pushcenter_y) < count(up{job="pushcenter-node"})"#,
    );
    let names: Vec<_> = r.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["pushcenter_x_bucket", "pushcenter_y", "up"]);
    assert_eq!(r.selectors[0].func.as_deref(), Some("rate"));
    assert_eq!(r.selectors[0].labels, ["instance", "lock"]);
    assert_eq!(r.selectors[1].func.as_deref(), Some("max"));
    assert_eq!(r.grouping, ["le", "instance"]);
    assert_eq!(r.variables, ["node"]);
    assert!(r.functions.contains(&"histogram_quantile".to_string()));
}

#[test]
fn dashboard_model_is_complete() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let vars = d["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("datasource").expect("a datasource variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let node = var("node")
        .or_else(|| var("instance"))
        .expect("a node variable");
    assert_eq!(node["type"], "query");
    assert_eq!(node["datasource"]["uid"], "${datasource}");
    let defined: BTreeSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();

    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "panel {id} without a title");
        let g = &p["gridPos"];
        let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
        assert!(
            matches!((x, w, h), (Some(x), Some(w), Some(h)) if w > 0 && h > 0 && x + w <= 24),
            "{title}: gridPos {g}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs_seen = BTreeSet::new();
        for t in targets {
            assert!(
                refs_seen.insert(t["refId"].as_str().expect("refId")),
                "{title}"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
    for (at, expr, grafana) in expressions() {
        for v in refs(&expr).variables {
            assert!(
                grafana && (defined.contains(v.as_str()) || v.starts_with("__")),
                "{at}: ${v} is not a variable: {expr}"
            );
        }
    }
}

#[test]
fn alert_rules_are_complete_and_documented() {
    let docs = std::fs::read_to_string(root().join("docs/operations.md")).expect("docs");
    let config = yaml(&root().join("deploy/prometheus/prometheus.yml"));
    let jobs: BTreeSet<&str> = config["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .filter_map(|j| j["job_name"].as_str())
        .collect();
    assert!(jobs.contains("pushcenter-node") && jobs.contains("pushcenter-registry"));
    assert!(
        config["rule_files"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "alerts.yml"))
    );
    let mut names = BTreeSet::new();
    let rules = alerts();
    for g in rules["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().expect("alert name");
            assert!(names.insert(name), "{name} twice");
            assert!(r["for"].as_str().is_some(), "{name}: no for");
            assert!(
                ["critical", "warning", "info"]
                    .contains(&r["labels"]["severity"].as_str().unwrap_or_default()),
                "{name}: severity"
            );
            for a in ["summary", "description"] {
                assert!(
                    r["annotations"][a].as_str().is_some_and(|s| !s.is_empty()),
                    "{name}: no {a}"
                );
            }
            assert!(docs.contains(name), "{name} not in docs/operations.md");
            // A job the example scrape config defines.
            let expr = r["expr"].as_str().expect("expr");
            for part in expr.split("job=\"").skip(1) {
                let job = part.split('"').next().unwrap_or_default();
                assert!(jobs.contains(job), "{name}: no job {job} in prometheus.yml");
            }
        }
    }
}

/// PromQL syntax of the rules and of the dashboard's queries (as recording rules, with
/// the Grafana variables filled in), by promtool.
#[test]
fn promtool_accepts_the_rules_and_the_queries() {
    let out = Command::new("promtool")
        .arg("--version")
        .output()
        .expect("promtool (Debian's prometheus package; make test installs it)");
    assert!(out.status.success());
    let run = |args: &[&str]| {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(root().join("deploy/prometheus"))
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["check", "rules", "alerts.yml"]);
    run(&["check", "config", "prometheus.yml"]);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr, grafana)) in expressions().into_iter().enumerate() {
        if !grafana {
            continue;
        }
        let expr = expr.replace("$node", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&expr).expect("json")
        ));
    }
    let path =
        std::env::temp_dir().join(format!("pushcenter-dashboard-{}.yml", std::process::id()));
    std::fs::write(&path, rules).expect("write");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "the dashboard's queries: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
