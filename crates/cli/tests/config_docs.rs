//! Every TOML example in docs/ is a config `pushcenter check-config` accepts.

use std::process::Command;

/// An example's file paths point at the test fixtures of the same kind: `check-config`
/// loads every certificate and key it names, as the node does at start.
fn with_fixture_files(toml: &str) -> String {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    toml.lines()
        .map(|line| {
            let key = line.split('=').next().unwrap_or_default().trim();
            let fixture = match key.trim_matches('"') {
                "cert_file" | "ssl.ca.location" => "tls-test-cert.pem",
                "sasl.password" => "kafka-test-password",
                "ca_file" => "etcd-test-ca.pem",
                "password_file" => "etcd-test-password",
                "key_file" => "tls-test-key.pem",
                "rs256_public_key_file" => "jwt-test-rsa.pub.pem",
                _ => return line.to_string(),
            };
            let comment = line.find('#').map_or("", |i| &line[i..]);
            format!("{key} = {:?} {comment}", fixtures.join(fixture))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_toml_example_in_the_docs_is_valid() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&docs).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        for (i, block) in text.split("```toml\n").skip(1).enumerate() {
            let toml = block.split("```").next().expect("closed block");
            let file = std::env::temp_dir().join(format!(
                "pushcenter-doc-{}-{i}-{}.toml",
                path.file_stem().and_then(|s| s.to_str()).unwrap_or("doc"),
                std::process::id()
            ));
            std::fs::write(&file, with_fixture_files(toml)).expect("write");
            let out = Command::new(env!("CARGO_BIN_EXE_pushcenter"))
                .args(["check-config", "--config"])
                .arg(&file)
                .output()
                .expect("run check-config");
            let _ = std::fs::remove_file(&file);
            assert!(
                out.status.success(),
                "{} block {i}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no TOML examples found in docs/");
}

/// `check-config` on `toml`: its error output, which must be a refusal.
fn refused(name: &str, toml: &str) -> String {
    let file = std::env::temp_dir().join(format!("pushcenter-{name}-{}.toml", std::process::id()));
    std::fs::write(&file, toml).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_pushcenter"))
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .expect("run check-config");
    let _ = std::fs::remove_file(&file);
    assert!(!out.status.success(), "{toml} accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_keys_are_errors() {
    let err = refused("bad", "http_adr = \"127.0.0.1:1\"\n");
    assert!(err.contains("http_adr"), "{err}");
}

#[test]
fn a_write_delay_past_a_second_is_refused() {
    let err = refused("write-delay", "write_delay = \"2s\"\n");
    assert!(err.contains("write_delay must be at most 1s"), "{err}");
}
