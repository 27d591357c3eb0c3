//! The stop signals on the real binary: SIGTERM drains (clients get the ERROR and
//! close 1012, the process exits 0 once they are gone), SIGINT stops at once, even
//! with clients connected, a 30 s `shutdown_grace`, or a drain under way.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pushcenter_stomp::Command;

/// Long enough that waiting it out would fail every time bound below.
const CONFIG: &str = "shutdown_grace = \"30s\"\nwrite_timeout = \"30s\"\n\
                      slow_consumer = \"drop-oldest\"\n";

/// Generous for a process that exits at once, far below the 30 s of the grace period.
const FAST: Duration = Duration::from_secs(5);

fn kill(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig} {pid}: {status}");
}

/// Still running: not exited (an exited child stays a zombie until it is waited for).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_clients_then_exits_zero() {
    let cfg = TempConfig::write("signals-term", CONFIG);
    let mut node = Node::standalone(&["--config", cfg.path()]);
    let mut c = WsClient::connect(&node.ws_url()).await;
    c.subscribe("s", "/topic/a").await;

    let sent = Instant::now();
    kill(node.pid(), "TERM");
    let e = c.frame().await.expect("the drain's ERROR");
    assert_eq!(e.command, Command::Error, "{e:?}");
    let message = e.get("message").unwrap_or_default();
    assert!(
        message.contains("server shutting down"),
        "ERROR {message:?}"
    );
    assert_eq!(c.closed().await, Some(1012));

    let status = node.signal("0");
    assert!(status.success(), "exit status {status}");
    // The drain ends when the last client has gone, not at the end of the grace.
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "exited {:?} after SIGTERM",
        sent.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_at_once_without_the_drain() {
    let cfg = TempConfig::write("signals-int", CONFIG);
    let mut node = Node::standalone(&["--config", cfg.path()]);
    let mut c = WsClient::connect(&node.ws_url()).await;
    c.subscribe("s", "/topic/a").await;

    let sent = Instant::now();
    let status = node.signal("INT");
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < FAST, "exited {took:?} after SIGINT");
    // No drain: the socket ends without the ERROR telling it to reconnect elsewhere.
    match c.event_within(TIMEOUT).await {
        Event::Closed => {}
        other => panic!("expected the connection to end, got {other:?}"),
    }
}

/// A client that stops reading keeps a SIGTERM drain waiting (its socket takes no
/// ERROR until `write_timeout`); a SIGINT then ends the process at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_cuts_a_sigterm_drain_short() {
    let cfg = TempConfig::write("signals-term-int", CONFIG);
    let mut node = Node::standalone(&["--config", cfg.path()]);
    let mut stuck = WsClient::connect(&node.ws_url()).await;
    stuck.subscribe("heavy", "/topic/heavy").await;
    // From here on the client reads nothing: publish until its socket and its queue
    // are full (the node starts dropping its oldest messages).
    let heavy = "x".repeat(48 * 1024);
    let mut published = 0;
    while stat(node.http, "messages_dropped_total").await == 0 {
        assert!(published < 5_000, "the stuck client's queue never filled");
        for _ in 0..50 {
            let (status, body) = publish(node.http, "/topic/heavy", &heavy).await;
            assert_eq!(status, 202, "{body}");
        }
        published += 50;
    }

    kill(node.pid(), "TERM");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        running(node.pid()),
        "the drain should still wait on the stuck client"
    );

    let sent = Instant::now();
    let status = node.signal("INT");
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < FAST, "exited {took:?} after SIGINT during the drain");
    drop(stuck);
}
