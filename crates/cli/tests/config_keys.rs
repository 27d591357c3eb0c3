//! Every configuration key, as `pushcenter config-keys` lists it and
//! docs/configuration.md shows it, can be set from the file, from its `PUSHCENTER_...`
//! variable and with `--set`; flags beat env, env beats the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BEGIN: &str = "<!-- config-keys:begin -->\n";
const END: &str = "<!-- config-keys:end -->";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pushcenter"));
    // Only what the test gives: the runner's own PUSHCENTER_ variables stay out.
    c.env_clear().env("RUST_BACKTRACE", "0");
    c
}

fn config_keys() -> String {
    let out = bin().arg("config-keys").output().expect("run config-keys");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// `UPDATE_DOCS=1` rewrites the reference in place (`make docs`).
#[test]
fn the_reference_in_the_docs_is_the_binarys() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let doc = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let start = doc.find(BEGIN).expect("the begin marker") + BEGIN.len();
    let end = doc.find(END).expect("the end marker");
    let generated = config_keys();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let updated = format!("{}{generated}{}", &doc[..start], &doc[end..]);
        std::fs::write(&path, updated).expect("write docs/configuration.md");
        return;
    }
    assert!(
        doc[start..end] == generated,
        "docs/configuration.md's key reference is stale: run `make docs`"
    );
}

/// One row of the node's table: key, env name, type.
struct Row {
    path: String,
    env: String,
    kind: String,
    default: String,
}

fn node_rows() -> Vec<Row> {
    let text = config_keys();
    let section = text
        .split("### ")
        .find(|s| s.starts_with("`pushcenter node`"))
        .expect("the node's section");
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let unquote = |s: &str| {
                s.trim_matches(|c| c == '|' || c == ' ' || c == '`')
                    .to_string()
            };
            let env = cells[1].split(',').next().unwrap_or_default();
            Row {
                path: unquote(cells[0]),
                env: unquote(env).trim_end_matches("_<NAME>").to_string(),
                kind: cells[2].to_string(),
                default: unquote(cells[3]),
            }
        })
        .collect()
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("pushcenter-keys-{}-{n}-{name}", std::process::id()));
    std::fs::write(&p, text).expect("write temp file");
    p
}

/// A value for `row` the node accepts and that differs from the default, as TOML, and
/// keys that must come with it.
fn test_value(row: &Row) -> (toml::Value, Vec<(&'static str, toml::Value)>) {
    use toml::Value as V;
    let s = |x: &str| V::String(x.to_string());
    let list = |xs: &[&str]| V::Array(xs.iter().map(|x| s(x)).collect());
    static FILES: std::sync::OnceLock<[PathBuf; 3]> = std::sync::OnceLock::new();
    let [secret_file, keys_file, password_file] = FILES.get_or_init(|| {
        [
            temp_file("hs256", "0123456789abcdef0123456789abcdef-file\n"),
            temp_file("api-keys", "api-key-from-a-file-0001\n"),
            temp_file("etcd-password", "etcd-password-from-a-file\n"),
        ]
    });
    let by_path = match row.path.as_str() {
        "node_id" => s("n-from-test"),
        "http_addr" => s("127.0.0.1:8181"),
        "tcp_addr" => s("127.0.0.1:61614"),
        "advertise_url" => s("ws://push.example.com/ws"),
        "slow_consumer" => s("drop-oldest"),
        "allowed_origins" => list(&["https://app.example.com"]),
        "auth.hs256_secret" => s("0123456789abcdef0123456789abcdef-inline"),
        "auth.hs256_secret_file" => s(&secret_file.display().to_string()),
        "auth.rs256_public_key_file" => s(&fixture("jwt-test-rsa.pub.pem")),
        "auth.api_keys" => list(&["api-key-inline-000001"]),
        "auth.api_keys_file" => s(&keys_file.display().to_string()),
        "auth.subscribe" | "auth.send" | "auth.anonymous_subscribe" | "auth.anonymous_send" => {
            list(&["/topic/from-test.*"])
        }
        "auth.backend_role" => s("service"),
        "auth.client_audience" | "auth.backend_audience" | "auth.callback_audience" => {
            s("aud-from-test")
        }
        "auth.providers" => {
            let mut p = toml::Table::new();
            p.insert("issuer".into(), s("https://idp.example.com"));
            p.insert("audience".into(), s("pushcenter"));
            p.insert("jwks_url".into(), s("http://127.0.0.1:9/jwks"));
            V::Array(vec![V::Table(p)])
        }
        "tls.cert_file" => {
            return (
                s(&fixture("tls-test-cert.pem")),
                vec![("tls.key_file", s(&fixture("tls-test-key.pem")))],
            );
        }
        "tls.key_file" => {
            return (
                s(&fixture("tls-test-key.pem")),
                vec![("tls.cert_file", s(&fixture("tls-test-cert.pem")))],
            );
        }
        "tls.reload_interval" => {
            return (
                s("11s"),
                vec![
                    ("tls.cert_file", s(&fixture("tls-test-cert.pem"))),
                    ("tls.key_file", s(&fixture("tls-test-key.pem"))),
                ],
            );
        }
        "kafka.brokers" => s("127.0.0.2:9092"),
        "kafka.messages_topic" => s("test.messages"),
        "kafka.replies_topic" => s("test.replies"),
        "kafka.targeted_topic" => s("test.targeted"),
        "kafka.group_prefix" => s("test."),
        "kafka.properties" | "kafka.producer" | "kafka.consumer" => {
            let mut t = toml::Table::new();
            t.insert("client.id".into(), s("id-from-test"));
            V::Table(t)
        }
        "kafka.property_files" => {
            let mut t = toml::Table::new();
            t.insert("ssl.ca.location".into(), s(&fixture("tls-test-cert.pem")));
            V::Table(t)
        }
        "etcd.endpoints" => list(&["http://127.0.0.9:2379"]),
        "etcd.cluster" => s("from-test"),
        "etcd.ca_file" => {
            return (
                s(&fixture("tls-test-cert.pem")),
                vec![("etcd.endpoints", list(&["https://127.0.0.9:2379"]))],
            );
        }
        "etcd.cert_file" => {
            return (
                s(&fixture("tls-test-cert.pem")),
                vec![
                    ("etcd.key_file", s(&fixture("tls-test-key.pem"))),
                    ("etcd.endpoints", list(&["https://127.0.0.9:2379"])),
                ],
            );
        }
        "etcd.key_file" => {
            return (
                s(&fixture("tls-test-key.pem")),
                vec![
                    ("etcd.cert_file", s(&fixture("tls-test-cert.pem"))),
                    ("etcd.endpoints", list(&["https://127.0.0.9:2379"])),
                ],
            );
        }
        "etcd.user" => return (s("pushcenter"), vec![("etcd.password", s("pw-companion"))]),
        "etcd.password" => {
            return (
                s("etcd-password-inline"),
                vec![("etcd.user", s("pushcenter"))],
            );
        }
        "etcd.password_file" => {
            return (
                s(&password_file.display().to_string()),
                vec![("etcd.user", s("pushcenter"))],
            );
        }
        _ => V::Boolean(false), // not chosen by path
    };
    if by_path != V::Boolean(false) {
        return (by_path, Vec::new());
    }
    let value = match row.kind.as_str() {
        "bool" => V::Boolean(row.default != "true"),
        "integer" => V::Integer(row.default.parse::<i64>().expect("an integer default") + 1),
        "string" => {
            // A duration: one more of its unit.
            let d = row.default.trim_matches('"');
            let unit_at = d.find(|c: char| !c.is_ascii_digit()).unwrap_or_else(|| {
                panic!(
                    "no test value for {} (default {d:?}): add one here",
                    row.path
                )
            });
            let n: u64 = d[..unit_at].parse().unwrap_or_else(|_| {
                panic!(
                    "no test value for {} (default {d:?}): add one here",
                    row.path
                )
            });
            s(&format!("{}{}", n + 1, &d[unit_at..]))
        }
        _ => panic!(
            "no test value for {} ({}): add one here",
            row.path, row.kind
        ),
    };
    (value, Vec::new())
}

fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) {
    match path.split_once('.') {
        None => {
            table.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let inner = table
                .entry(head.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            set_path(inner.as_table_mut().expect("a table"), rest, value);
        }
    }
}

fn get_path<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    match path.split_once('.') {
        None => table.get(path),
        Some((head, rest)) => get_path(table.get(head)?.as_table()?, rest),
    }
}

/// A value as an env variable or `--set` writes it.
fn raw(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => items
            .iter()
            .filter_map(toml::Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

fn check_config(file: &toml::Table, env: &[(String, String)], args: &[String]) -> Output {
    let path = temp_file("config.toml", &toml::to_string(file).expect("TOML"));
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run check-config");
    let _ = std::fs::remove_file(&path);
    out
}

fn effective(out: &Output, what: &str) -> toml::Table {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    toml::from_str(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|e| panic!("{what}: check-config printed no TOML: {e}"))
}

fn is_secret(path: &str) -> bool {
    let name = path.rsplit('.').next().unwrap_or(path);
    !name.ends_with("_file")
        && (name.contains("secret") || name.contains("password") || name == "api_keys")
}

/// The value check-config shows at `path`, with a table of strings reduced to the
/// entries the test set.
fn shown_matches(shown: Option<&toml::Value>, want: &toml::Value, path: &str) -> bool {
    let Some(shown) = shown else {
        return false;
    };
    if is_secret(path) {
        return match shown {
            toml::Value::Array(items) => items.iter().all(|i| i.as_str() == Some("(redacted)")),
            v => v.as_str() == Some("(redacted)"),
        };
    }
    match (shown, want) {
        (toml::Value::Table(s), toml::Value::Table(w)) => {
            w.iter().all(|(k, v)| s.get(k) == Some(v))
        }
        (toml::Value::Array(s), toml::Value::Array(w)) if path == "auth.providers" => {
            s.len() == w.len() && s[0].get("issuer") == w[0].get("issuer")
        }
        _ => shown == want,
    }
}

#[test]
fn every_key_can_be_set_from_the_file_the_environment_and_set() {
    let rows = node_rows();
    assert!(rows.len() > 60, "only {} keys listed", rows.len());
    // Three check-config runs per key: spread over a few threads.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .chunks(rows.len().div_ceil(4))
            .map(|chunk| scope.spawn(move || chunk.iter().flat_map(check_key).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a checking thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "keys not set:\n{}",
        failures.join("\n")
    );
}

#[test]
fn flags_beat_env_and_env_beats_the_file() {
    let mut file = toml::Table::new();
    file.insert("node_id".into(), "from-file".into());
    let mut kafka = toml::Table::new();
    kafka.insert("brokers".into(), "127.0.0.1:1".into());
    file.insert("kafka".into(), kafka.into());
    let env = vec![
        ("PUSHCENTER_NODE_ID".to_string(), "from-env".to_string()),
        (
            "PUSHCENTER_KAFKA_BROKERS".to_string(),
            "127.0.0.1:2".to_string(),
        ),
    ];
    let shown = |out: Output| {
        let t = effective(&out, "precedence");
        let id = get_path(&t, "node_id")
            .and_then(toml::Value::as_str)
            .map(str::to_owned);
        let brokers = get_path(&t, "kafka.brokers")
            .and_then(toml::Value::as_str)
            .map(str::to_owned);
        (id.unwrap_or_default(), brokers.unwrap_or_default())
    };
    assert_eq!(
        shown(check_config(&file, &[], &[])),
        ("from-file".into(), "127.0.0.1:1".into())
    );
    assert_eq!(
        shown(check_config(&file, &env, &[])),
        ("from-env".into(), "127.0.0.1:2".into())
    );
    let flags: Vec<String> = [
        "--node-id",
        "from-flag",
        "--set",
        "kafka.brokers=127.0.0.1:3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        shown(check_config(&file, &env, &flags)),
        ("from-flag".into(), "127.0.0.1:3".into())
    );
    // A dedicated flag beats `--set` of the same key.
    let both: Vec<String> = ["--set", "node_id=from-set", "--node-id", "from-flag"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(shown(check_config(&file, &env, &both)).0, "from-flag");
}

#[test]
fn bad_values_and_unknown_variables_are_errors_naming_them() {
    let file = toml::Table::new();
    let env = vec![("PUSHCENTER_MAX_WAITERS".to_string(), "many".to_string())];
    let out = check_config(&file, &env, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted");
    assert!(err.contains("PUSHCENTER_MAX_WAITERS"), "{err}");
    let env = vec![(
        "PUSHCENTER_KAFKA_BROKER".to_string(),
        "127.0.0.1:1".to_string(),
    )];
    let out = check_config(&file, &env, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a misspelt variable was accepted: {err}"
    );
    assert!(
        err.contains("PUSHCENTER_KAFKA_BROKER is not a configuration variable"),
        "{err}"
    );
    let out = check_config(&file, &[], &["--set".into(), "no_such_key=1".into()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no_such_key"),
        "{err}"
    );
}

/// Secrets given through the environment never reach check-config's output.
#[test]
fn secrets_from_the_environment_are_redacted() {
    let env: BTreeMap<String, String> = [
        (
            "PUSHCENTER_AUTH_HS256_SECRET",
            "an-hs256-secret-of-at-least-32-bytes!",
        ),
        (
            "PUSHCENTER_KAFKA_PROPERTIES_SASL_PASSWORD",
            "kafka-password-from-env",
        ),
        ("PUSHCENTER_KAFKA_PROPERTIES_SASL_USERNAME", "kafka-user"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let env: Vec<(String, String)> = env.into_iter().collect();
    let out = check_config(&toml::Table::new(), &env, &[]);
    let t = effective(&out, "secrets");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("an-hs256-secret"), "{text}");
    assert!(!text.contains("kafka-password-from-env"), "{text}");
    assert_eq!(
        get_path(&t, "kafka.properties")
            .and_then(|p| p.get("sasl.username"))
            .and_then(toml::Value::as_str),
        Some("kafka-user")
    );
}

/// Sets `row`'s key from the file, the environment and `--set`: what did not take.
fn check_key(row: &Row) -> Vec<String> {
    let mut failures = Vec::new();
    let (want, companions) = test_value(row);
    let mut base = toml::Table::new();
    for (p, v) in &companions {
        set_path(&mut base, p, v.clone());
    }
    let maps = matches!(want, toml::Value::Table(_));
    // The file.
    let mut file = base.clone();
    set_path(&mut file, &row.path, want.clone());
    let shown = effective(
        &check_config(&file, &[], &[]),
        &format!("{} in the file", row.path),
    );
    if !shown_matches(get_path(&shown, &row.path), &want, &row.path) {
        failures.push(format!(
            "{} from the file: {:?}",
            row.path,
            get_path(&shown, &row.path)
        ));
    }
    // The environment, and --set.
    let (env, sets): (Vec<(String, String)>, Vec<String>) = match &want {
        toml::Value::Table(t) => t
            .iter()
            .map(|(k, v)| {
                let name = k.to_ascii_uppercase().replace('_', "__").replace('.', "_");
                (
                    (format!("{}_{name}", row.env), raw(v)),
                    format!("{}.{k}={}", row.path, raw(v)),
                )
            })
            .unzip(),
        v => (
            vec![(row.env.clone(), raw(v))],
            vec![format!("{}={}", row.path, raw(v))],
        ),
    };
    let shown = effective(&check_config(&base, &env, &[]), &row.env);
    if !shown_matches(get_path(&shown, &row.path), &want, &row.path) {
        failures.push(format!(
            "{} from {}: {:?}",
            row.path,
            row.env,
            get_path(&shown, &row.path)
        ));
    }
    let args: Vec<String> = sets
        .iter()
        .flat_map(|s| ["--set".to_string(), s.clone()])
        .collect();
    let out = check_config(&base, &[], &args);
    let shown = effective(&out, &format!("--set {}", row.path));
    if !shown_matches(get_path(&shown, &row.path), &want, &row.path) {
        failures.push(format!(
            "{} from --set: {:?}",
            row.path,
            get_path(&shown, &row.path)
        ));
    }
    if is_secret(&row.path) && !maps {
        let out_text = String::from_utf8_lossy(&out.stdout);
        let secret = raw(&want);
        assert!(
            !out_text.contains(&secret),
            "{} printed: {out_text}",
            row.path
        );
    }
    failures
}

/// The registry reads its keys by the same rule: here all from the environment, next
/// to a node's (a shared env file), which it lets through.
#[test]
fn the_registry_takes_its_keys_from_the_environment() {
    use std::io::BufRead;
    let mut child = bin()
        .arg("registry")
        .env("PUSHCENTER_HTTP_ADDR", "127.0.0.1:0")
        .env("PUSHCENTER_ETCD_ENDPOINTS", "http://127.0.0.1:9")
        .env("PUSHCENTER_ETCD_CLUSTER", "from-env")
        .env("PUSHCENTER_KAFKA_BROKERS", "127.0.0.1:9092")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the registry");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let _ = child.kill();
    let _ = child.wait();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":8090"),
        "{line}"
    );
}

/// A file that does not parse, or a secret of the wrong type, is refused naming the
/// place, never quoting the secret; a librdkafka property librdkafka refuses is named
/// without its value.
#[test]
fn refusals_never_quote_a_secret() {
    let cases: [(&str, &str, &str); 3] = [
        (
            "[auth]\napi_keys = \"THE-ONE-API-KEY-123456\"\n",
            "THE-ONE-API-KEY",
            "auth.api_keys",
        ),
        (
            "[auth]\nhs256_secret = \"unterminated-secret-value\n",
            "unterminated-secret",
            "line 2",
        ),
        (
            "[kafka.properties]\n\"sasl.pasword\" = \"TOPSECRET-TYPO\"\n",
            "TOPSECRET",
            "sasl.pasword",
        ),
    ];
    for (text, secret, named) in cases {
        let path = temp_file("secret-refusal.toml", text);
        let out = bin()
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run check-config");
        let _ = std::fs::remove_file(&path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text} accepted");
        assert!(
            err.contains(named),
            "{text}: the refusal names no {named:?}: {err}"
        );
        assert!(
            !err.contains(secret),
            "{text}: the secret is printed: {err}"
        );
    }
}
