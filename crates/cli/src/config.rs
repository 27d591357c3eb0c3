//! Where a process's configuration comes from: the TOML file, then `PUSHCENTER_...`
//! environment variables, then flags (`--set KEY=VALUE` and the common ones), each over
//! the one before. Every key, its env name and its type come from the config structs'
//! JSON schema (schemars, from the same structs serde reads), so a new key is settable
//! everywhere and listed in docs/configuration.md without another edit.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use schemars::JsonSchema;
use serde_json::Value as Json;

/// The prefix of every configuration variable.
pub(crate) const ENV_PREFIX: &str = "PUSHCENTER_";

/// `PUSHCENTER_` variables that are not keys: the config file's path, the log format,
/// the `publish` subcommand's, and the test harness's.
const NOT_KEYS: &[&str] = &[
    "PUSHCENTER_CONFIG",
    "PUSHCENTER_LOG_FORMAT",
    "PUSHCENTER_URL",
    "PUSHCENTER_API_KEY",
    "PUSHCENTER_BIN",
    "PUSHCENTER_TEST_LOG",
];

/// How a key's value is written in an env variable or a `--set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    String,
    Integer,
    Number,
    Bool,
    /// Comma-separated.
    StringList,
    /// A table of strings (librdkafka properties): one variable per entry.
    StringMap,
    /// Anything else (a list of tables, a string-or-list): a TOML value.
    Toml,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Integer => "integer",
            Kind::Number => "number",
            Kind::Bool => "bool",
            Kind::StringList => "list (comma-separated in env)",
            Kind::StringMap => "table of strings",
            Kind::Toml => "TOML value",
        }
    }
}

/// One configuration key.
#[derive(Debug, Clone)]
pub(crate) struct Key {
    /// Dotted path: `auth.hs256_secret`.
    pub(crate) path: String,
    pub(crate) kind: Kind,
    pub(crate) doc: String,
    pub(crate) default: Option<Json>,
    /// A common flag that sets it (besides `--set`).
    pub(crate) flag: Option<&'static str>,
}

impl Key {
    /// `PUSHCENTER_` and the path in capitals, dots as underscores.
    pub(crate) fn env(&self) -> String {
        env_name(&self.path)
    }
}

pub(crate) fn env_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.to_ascii_uppercase().replace('.', "_")
    )
}

/// The keys of one config file: the struct at the top, others as sections.
pub(crate) struct Keys {
    keys: Vec<Key>,
    /// The keys of the other kind of process, whose variables are not errors here.
    others: Vec<Keys>,
}

impl Keys {
    pub(crate) fn new() -> Keys {
        Keys {
            keys: Vec::new(),
            others: Vec::new(),
        }
    }

    /// Lets `other`'s variables through (`pushcenter registry` next to nodes).
    pub(crate) fn tolerating(mut self, other: Keys) -> Keys {
        self.others.push(other);
        self
    }

    /// Whether `var` sets one of these keys (or an entry of a table of strings).
    fn knows_env(&self, var: &str) -> bool {
        NOT_KEYS.contains(&var)
            || self.keys.iter().any(|k| {
                let name = k.env();
                var == name
                    || (k.kind == Kind::StringMap
                        && var.strip_prefix(&name).is_some_and(|r| r.starts_with('_')))
            })
    }

    /// Adds `T`'s keys under `section` (`""`: the top level).
    pub(crate) fn with<T: JsonSchema>(mut self, section: &str) -> Keys {
        let schema = schemars::schema_for!(T);
        let root = schema.as_value().clone();
        walk(&root, &root, section, None, &mut self.keys);
        self
    }

    /// Names the flag that also sets `path`.
    pub(crate) fn flag(mut self, path: &str, flag: &'static str) -> Keys {
        if let Some(k) = self.keys.iter_mut().find(|k| k.path == path) {
            k.flag = Some(flag);
        }
        self
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Key> {
        self.keys.iter()
    }

    fn get(&self, path: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.path == path)
    }

    /// The key a `--set` path names: a key, or an entry of a table of strings.
    fn resolve(&self, path: &str) -> Option<(&Key, Option<String>)> {
        if let Some(k) = self.get(path) {
            return Some((k, None));
        }
        self.keys.iter().find_map(|k| {
            let entry = path.strip_prefix(&k.path)?.strip_prefix('.')?;
            (k.kind == Kind::StringMap && !entry.is_empty()).then(|| (k, Some(entry.to_string())))
        })
    }

    /// The file's table with the environment and then the flags laid over it.
    pub(crate) fn layer(
        &self,
        mut table: toml::Table,
        env: &[(String, String)],
        sets: &[(String, String)],
    ) -> Result<toml::Table> {
        for (path, entry, value) in self.env_values(env)? {
            match entry {
                Some(e) => insert_entry(&mut table, &path, &e, value),
                None => insert(&mut table, &path, value),
            }
        }
        for (path, raw) in sets {
            let (key, entry) = self
                .resolve(path)
                .with_context(|| format!("--set {path}: no such key"))?;
            let kind = if entry.is_some() {
                Kind::String
            } else {
                key.kind
            };
            let value = parse(kind, raw).with_context(|| format!("--set {path}"))?;
            match entry {
                Some(e) => insert_entry(&mut table, &key.path, &e, value),
                None => insert(&mut table, &key.path, value),
            }
        }
        Ok(table)
    }

    /// The values the environment gives, by path; unknown `PUSHCENTER_` names warned of.
    #[allow(clippy::type_complexity)]
    fn env_values(
        &self,
        env: &[(String, String)],
    ) -> Result<Vec<(String, Option<String>, toml::Value)>> {
        let mut out = Vec::new();
        let mut known: BTreeSet<&str> = NOT_KEYS.iter().copied().collect();
        let names: Vec<String> = self.keys.iter().map(Key::env).collect();
        for (key, name) in self.keys.iter().zip(&names) {
            known.insert(name);
            if key.kind == Kind::StringMap {
                // PUSHCENTER_KAFKA_PROPERTIES_SASL_PASSWORD -> "sasl.password"
                let prefix = format!("{name}_");
                for (var, raw) in env {
                    if let Some(rest) = var.strip_prefix(&prefix) {
                        known.insert(var);
                        let entry = map_entry(rest);
                        out.push((
                            key.path.clone(),
                            Some(entry),
                            toml::Value::String(raw.clone()),
                        ));
                    }
                }
                continue;
            }
            if let Some((_, raw)) = env.iter().find(|(v, _)| v == name) {
                let value = parse(key.kind, raw).with_context(|| name.clone())?;
                out.push((key.path.clone(), None, value));
            }
        }
        // A misspelt secret's name would otherwise start a node without it (with
        // authentication off): unknown names are errors, like unknown keys in the file.
        // Another process's keys (a shared env file) are let through.
        for (var, _) in env {
            if var.starts_with(ENV_PREFIX)
                && !known.contains(var.as_str())
                && !self.others.iter().any(|o| o.knows_env(var))
            {
                bail!(
                    "{var} is not a configuration variable (`pushcenter config-keys` lists them)"
                );
            }
        }
        Ok(out)
    }
}

/// A table-of-strings entry from its env suffix: `_` is `.`, `__` is `_`, lower case
/// (librdkafka's names are dotted; the few with `_`, like `log_level`, take `__`).
pub(crate) fn map_entry(rest: &str) -> String {
    rest.to_ascii_lowercase()
        .split("__")
        .map(|part| part.replace('_', "."))
        .collect::<Vec<_>>()
        .join("_")
}

/// The table at a dotted path, made (or a non-table value replaced) where missing.
fn table_at<'a>(table: &'a mut toml::Table, path: &str) -> &'a mut toml::Table {
    path.split('.').fold(table, |t, name| {
        let slot = t
            .entry(name.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !slot.is_table() {
            *slot = toml::Value::Table(toml::Table::new());
        }
        match slot {
            toml::Value::Table(inner) => inner,
            _ => unreachable!("made a table above"),
        }
    })
}

fn insert(table: &mut toml::Table, path: &str, value: toml::Value) {
    let (parent, name) = match path.rsplit_once('.') {
        Some((parent, name)) => (table_at(table, parent), name),
        None => (table, path),
    };
    parent.insert(name.to_string(), value);
}

/// Inserts a table-of-strings entry whose name may hold dots (`sasl.password`).
fn insert_entry(table: &mut toml::Table, path: &str, entry: &str, value: toml::Value) {
    table_at(table, path).insert(entry.to_string(), value);
}

/// A value as an env variable or `--set` writes it.
fn parse(kind: Kind, raw: &str) -> Result<toml::Value> {
    Ok(match kind {
        Kind::String => toml::Value::String(raw.to_string()),
        Kind::Integer => toml::Value::Integer(
            raw.trim()
                .parse()
                .with_context(|| format!("{raw:?} is not an integer"))?,
        ),
        Kind::Number => toml::Value::Float(
            raw.trim()
                .parse()
                .with_context(|| format!("{raw:?} is not a number"))?,
        ),
        Kind::Bool => match raw.trim() {
            "true" | "1" => toml::Value::Boolean(true),
            "false" | "0" => toml::Value::Boolean(false),
            _ => bail!("{raw:?} is not true or false"),
        },
        Kind::StringList => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        Kind::StringMap => bail!("set one entry at a time: KEY.ENTRY=VALUE"),
        Kind::Toml => {
            let doc = format!("v = {raw}");
            match toml::from_str::<toml::Table>(&doc) {
                Ok(mut t) => t
                    .remove("v")
                    .unwrap_or(toml::Value::String(raw.to_string())),
                // A bare word where a string is one of the shapes.
                Err(_) => toml::Value::String(raw.to_string()),
            }
        }
    })
}

fn resolve<'a>(root: &'a Json, schema: &'a Json) -> &'a Json {
    match schema.get("$ref").and_then(Json::as_str) {
        Some(r) => r
            .strip_prefix("#/$defs/")
            .and_then(|name| root.get("$defs")?.get(name))
            .map_or(schema, |s| resolve(root, s)),
        None => schema,
    }
}

/// `Option<T>`'s schema without its `null`.
fn not_null<'a>(root: &'a Json, schema: &'a Json) -> &'a Json {
    let schema = resolve(root, schema);
    if let Some(any) = schema.get("anyOf").and_then(Json::as_array) {
        let real: Vec<&Json> = any
            .iter()
            .filter(|s| s.get("type").and_then(Json::as_str) != Some("null"))
            .collect();
        if let [one] = real.as_slice() {
            return resolve(root, one);
        }
    }
    schema
}

fn types(schema: &Json) -> Vec<&str> {
    match schema.get("type") {
        Some(Json::String(t)) => vec![t.as_str()],
        Some(Json::Array(ts)) => ts
            .iter()
            .filter_map(Json::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    }
}

fn kind(root: &Json, schema: &Json) -> Kind {
    let schema = not_null(root, schema);
    if schema.get("oneOf").is_some() || schema.get("enum").is_some() {
        let all_strings = schema
            .get("oneOf")
            .and_then(Json::as_array)
            .is_none_or(|vs| vs.iter().all(|v| types(v) == ["string"]));
        return if all_strings {
            Kind::String
        } else {
            Kind::Toml
        };
    }
    match types(schema).as_slice() {
        ["string"] => Kind::String,
        ["integer"] => Kind::Integer,
        ["number"] => Kind::Number,
        ["boolean"] => Kind::Bool,
        ["array"] => {
            let items = schema.get("items").map(|i| not_null(root, i));
            if items.is_some_and(|i| types(i) == ["string"]) {
                Kind::StringList
            } else {
                Kind::Toml
            }
        }
        ["object"] => {
            let values = schema
                .get("additionalProperties")
                .map(|i| not_null(root, i));
            if values.is_some_and(|v| types(v) == ["string"]) {
                Kind::StringMap
            } else {
                Kind::Toml
            }
        }
        _ => Kind::Toml,
    }
}

fn description(schema: &Json) -> Option<String> {
    schema
        .get("description")
        .and_then(Json::as_str)
        .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Collects the leaf keys under `schema` (a struct): nested structs (also optional
/// ones) become sections, everything else a key.
fn walk(root: &Json, schema: &Json, prefix: &str, defaults: Option<&Json>, out: &mut Vec<Key>) {
    let schema = not_null(root, schema);
    let Some(props) = schema.get("properties").and_then(Json::as_object) else {
        return;
    };
    let defaults = schema.get("default").or(defaults);
    for (name, prop) in props {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let inner = not_null(root, prop);
        let default = prop
            .get("default")
            .or_else(|| defaults.and_then(|d| d.get(name)))
            .filter(|d| !d.is_null());
        if inner.get("properties").is_some() {
            walk(root, prop, &path, default, out);
            continue;
        }
        let doc = description(prop)
            .or_else(|| description(resolve(root, prop)))
            .unwrap_or_default();
        out.push(Key {
            path,
            kind: kind(root, prop),
            doc,
            default: default.cloned(),
            flag: None,
        });
    }
}

/// Reads a TOML file into a table (an absent path is an empty table).
pub(crate) fn read_table(path: Option<&Path>) -> Result<toml::Table> {
    let Some(path) = path else {
        return Ok(toml::Table::new());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // The place and the reason, not the line: it may hold a secret.
    toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or(String::new(), |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" at line {line}, column {column}")
        });
        anyhow::anyhow!("parsing {}{at}: {}", path.display(), e.message())
    })
}

/// A deserialization error to show: when it concerns a secret key, the quoted value
/// in it is replaced (`invalid type: string "..."` would print the secret).
pub(crate) fn without_secrets(e: impl std::fmt::Display) -> anyhow::Error {
    let text = e.to_string();
    let about_secret = text
        .split('`')
        .skip(1)
        .step_by(2)
        .any(|path| path.split('.').any(is_secret));
    if !about_secret {
        return anyhow::anyhow!(text);
    }
    let mut out = String::new();
    for (i, part) in text.split('"').enumerate() {
        out.push_str(if i % 2 == 1 { "(redacted)" } else { part });
    }
    anyhow::anyhow!(out)
}

/// The process's `PUSHCENTER_` variables.
pub(crate) fn env_vars() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect()
}

/// Parses `KEY=VALUE`.
pub(crate) fn key_value(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

/// Whether a key's value is a secret: shown as `(redacted)`, never logged.
pub(crate) fn is_secret(name: &str) -> bool {
    !name.ends_with("_file")
        && (name.contains("password")
            || name.contains("secret")
            || name.contains("passphrase")
            || name == "api_keys"
            || name.ends_with(".key.pem")
            // librdkafka marks it sensitive: it may carry a client secret.
            || name == "sasl.oauthbearer.config")
}

/// A copy of a config to print, every secret replaced.
pub(crate) fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                if is_secret(k) {
                    match v {
                        toml::Value::Array(items) => {
                            for i in items {
                                *i = "(redacted)".into();
                            }
                        }
                        _ => *v = "(redacted)".into(),
                    }
                } else {
                    redact(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// The reference table in docs/configuration.md: every key of each file.
pub(crate) fn reference(files: &[(&str, &Keys)]) -> String {
    let mut out = String::new();
    for (title, keys) in files {
        out.push_str(&format!("### {title}\n\n"));
        out.push_str("| key | env | type | default | |\n| --- | --- | --- | --- | --- |\n");
        for k in keys.iter() {
            let env = if k.kind == Kind::StringMap {
                format!("`{}_<NAME>`", k.env())
            } else {
                format!("`{}`", k.env())
            };
            let env = match k.flag {
                Some(f) => format!("{env}, `{f}`"),
                None => env,
            };
            let default = match &k.default {
                None => String::new(),
                Some(Json::Object(m)) if m.is_empty() => String::new(),
                Some(Json::Array(a)) if a.is_empty() => "`[]`".into(),
                Some(d) => format!("`{}`", d.to_string().replace('|', "\\|")),
            };
            out.push_str(&format!(
                "| `{}` | {env} | {} | {default} | {} |\n",
                k.path,
                k.kind.name(),
                k.doc.replace('|', "\\|")
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_entries_from_env_names() {
        assert_eq!(map_entry("SASL_PASSWORD"), "sasl.password");
        assert_eq!(map_entry("SSL_CA_LOCATION"), "ssl.ca.location");
        assert_eq!(map_entry("LOG__LEVEL"), "log_level");
    }

    #[test]
    fn secrets_by_name() {
        for s in [
            "hs256_secret",
            "password",
            "sasl.password",
            "api_keys",
            "ssl.key.pem",
        ] {
            assert!(is_secret(s), "{s}");
        }
        for s in [
            "hs256_secret_file",
            "password_file",
            "user",
            "sasl.username",
        ] {
            assert!(!is_secret(s), "{s}");
        }
    }
}
