//! `pushcenter publish`: one `POST /v1/publish` over plain HTTP/1.1, for scripts and
//! operators (a dozen lines of HTTP instead of a client library).

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args)]
pub(crate) struct PublishArgs {
    /// The node's HTTP address: `http://host:port` (https: put a TLS proxy or curl in front).
    #[arg(long, env = "PUSHCENTER_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Where it goes: `/topic/...`, or `/user/queue/...` with `--user` or `--session`.
    #[arg(long)]
    destination: String,
    /// Only this user's sessions.
    #[arg(long)]
    user: Option<String>,
    /// Only this session.
    #[arg(long)]
    session: Option<String>,
    /// Ordering key (Kafka): records with one key keep their order.
    #[arg(long)]
    key: Option<String>,
    /// Extra headers: `name=value`, repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// A backend API key or token (sent as `authorization: Bearer ...`).
    #[arg(long, env = "PUSHCENTER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The message body.
    body: String,
}

/// Publishes; prints the node's JSON answer; fails on anything but 2xx.
pub(crate) async fn run(a: PublishArgs) -> Result<()> {
    let authority = a
        .url
        .strip_prefix("http://")
        .context("--url must start with http://")?
        .trim_end_matches('/');
    let mut headers = serde_json::Map::new();
    for h in &a.headers {
        let (k, v) = h
            .split_once('=')
            .with_context(|| format!("--header {h:?}: expected NAME=VALUE"))?;
        headers.insert(k.to_string(), v.into());
    }
    let mut req = serde_json::json!({
        "destination": a.destination,
        "body": a.body,
        "headers": headers,
    });
    for (k, v) in [("user", &a.user), ("session", &a.session), ("key", &a.key)] {
        if let Some(v) = v {
            req[k] = v.as_str().into();
        }
    }
    let body = req.to_string();
    let auth = a
        .api_key
        .as_ref()
        .map(|k| format!("authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /v1/publish HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{auth}connection: close\r\n\r\n",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    // One write: a request split in two waits on the peer's delayed ACK.
    s.write_all(format!("{head}{body}").as_bytes()).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    let text = String::from_utf8_lossy(&resp);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("not an HTTP answer")?;
    let answer = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    println!("{answer}");
    if !(200..300).contains(&status) {
        bail!("HTTP {status}");
    }
    Ok(())
}
