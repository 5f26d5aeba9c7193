//! Smoke tests of `switchboard bench` against a real `switchboard serve`: short runs with few
//! connections, checking the JSON summaries (no timing assertions).
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A server process, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
        Server::start_with_deflate(false)
    }

    fn start_with_deflate(deflate: bool) -> Server {
        Server::start_with(&["--deflate", if deflate { "true" } else { "false" }])
    }

    /// A server reading `toml` as its configuration file (kept in the returned directory).
    fn start_with_config(toml: &str) -> (Server, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("switchboard.toml");
        std::fs::write(&config, toml).unwrap();
        let server = Server::start_with(&["--config", config.to_str().unwrap()]);
        (server, dir)
    }

    fn start_with(extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-level", "warn"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start switchboard serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the listening line");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Server { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `switchboard bench ARGS`, killing it after `limit` (so a hang fails the test).
fn bench(args: &[&str], limit: Duration) -> (Output, Option<Value>) {
    let mut child = Command::new(BIN)
        .arg("bench")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switchboard bench");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let json = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok());
    (out, json)
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn echo_reports_round_trips_and_server_figures() {
    let server = Server::start();
    let pid = server.child.id().to_string();
    let url = server.url("/smoke");
    let (out, json) = bench(
        &[
            "echo",
            "--url",
            &url,
            "--conns",
            "4",
            "--size",
            "300",
            "--secs",
            "1",
            "--warmup",
            "0.2",
            "--inflight",
            "2",
            "--server-pid",
            &pid,
            "--json",
        ],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let v = json.unwrap_or_else(|| panic!("no JSON summary: {}", describe(&out)));
    assert_eq!(v["scenario"], "echo");
    assert!(v["round_trips"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(
        v["verified_conns"], 4,
        "every connection's first echo was checked: {v}"
    );
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["latency_p50_us"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["server_cpu_s"].as_f64().is_some(), "{v}");
    assert!(v["server_peak_rss_mb"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn binary_echo_with_several_threads() {
    let server = Server::start();
    let url = server.url("/");
    let (out, json) = bench(
        &[
            "echo",
            "--url",
            &url,
            "--conns",
            "3",
            "--size",
            "70000",
            "--secs",
            "1",
            "--warmup",
            "0",
            "--binary",
            "--threads",
            "2",
            "--json",
        ],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let v = json.unwrap();
    assert!(v["round_trips"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["verified_conns"], 3, "{v}");
}

#[test]
fn fanout_delivers_everything_once() {
    let server = Server::start();
    let url = server.url("/fanout-smoke");
    let (out, json) = bench(
        &[
            "fanout", "--url", &url, "--subs", "20", "--pubs", "3", "--rate", "200", "--size",
            "100", "--secs", "1", "--warmup", "0.3", "--json",
        ],
        Duration::from_secs(40),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let v = json.unwrap();
    assert_eq!(v["scenario"], "fanout");
    let sent = v["sent"].as_u64().unwrap();
    assert!(sent > 0, "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["duplicates"], 0, "{v}");
    assert_eq!(v["reordered"], 0, "{v}");
    assert_eq!(v["closed"], 0, "{v}");
    // Every subscriber got every message exactly once.
    assert_eq!(v["delivered"].as_u64().unwrap(), sent * 20, "{v}");
    assert!(v["latency_p99_us"].as_f64().is_some(), "{v}");
}

#[test]
fn fanout_with_deflate_inflates_compressed_deliveries() {
    let server = Server::start_with_deflate(true);
    let url = server.url("/fanout-deflate");
    let (out, json) = bench(
        &[
            "fanout",
            "--url",
            &url,
            "--subs",
            "10",
            "--pubs",
            "2",
            "--rate",
            "100",
            "--size",
            "1000",
            "--secs",
            "1",
            "--warmup",
            "0",
            "--deflate",
            "--json",
        ],
        Duration::from_secs(40),
    );
    // Payloads were checked after inflating: nothing lost or duplicated.
    let (v, sent) = assert_every_delivery_once(&out, json, 10);
    // And they did arrive compressed.
    assert_eq!(v["compressed_deliveries"].as_u64(), Some(sent * 10), "{v}");
}

#[test]
fn fanout_at_max_rate_stays_lossless() {
    let server = Server::start();
    let url = server.url("/fanout-max");
    let (out, json) = bench(
        &[
            "fanout", "--url", &url, "--subs", "10", "--pubs", "2", "--rate", "max", "--secs", "1",
            "--warmup", "0", "--json",
        ],
        Duration::from_secs(40),
    );
    assert_every_delivery_once(&out, json, 10);
}

#[test]
fn fanout_over_the_centrifugo_protocol() {
    let (server, _dir) = Server::start_with_config(
        "allow_anonymous = true\n[channel.default]\nallow_subscribe_for_anonymous = true\n\
         allow_publish_for_client = true\n",
    );
    // The path names the channel; the generator connects to /connection/websocket.
    let url = server.url("/bench-news");
    let (out, json) = bench(
        &[
            "fanout",
            "--url",
            &url,
            "--protocol",
            "centrifugo",
            "--subs",
            "10",
            "--pubs",
            "2",
            "--rate",
            "100",
            "--size",
            "100",
            "--secs",
            "1",
            "--warmup",
            "0",
            "--json",
        ],
        Duration::from_secs(40),
    );
    assert_every_delivery_once(&out, json, 10);
}

#[test]
fn centrifugo_fanout_reports_a_refused_subscribe() {
    // Anonymous clients may connect but not subscribe: the run fails and says why.
    let (server, _dir) = Server::start_with_config("allow_anonymous = true\n");
    let url = server.url("/bench-closed");
    let (out, _) = bench(
        &[
            "fanout",
            "--url",
            &url,
            "--protocol",
            "centrifugo",
            "--subs",
            "2",
            "--secs",
            "1",
            "--json",
        ],
        Duration::from_secs(40),
    );
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permission denied"), "{}", describe(&out));
}

/// Checks a successful fan-out run in which each of `subs` subscribers got every message
/// exactly once; returns the summary and the number of messages sent.
fn assert_every_delivery_once(out: &Output, json: Option<Value>, subs: u64) -> (Value, u64) {
    assert!(out.status.success(), "{}", describe(out));
    let v = json.unwrap();
    let sent = v["sent"].as_u64().unwrap();
    assert!(sent > 0, "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["duplicates"], 0, "{v}");
    assert_eq!(v["delivered"].as_u64().unwrap(), sent * subs, "{v}");
    (v, sent)
}

#[test]
fn conns_holds_connections_from_several_source_addresses() {
    let server = Server::start();
    let pid = server.child.id().to_string();
    let url = server.url("/idle");
    let (out, json) = bench(
        &[
            "conns",
            "--url",
            &url,
            "--n",
            "50",
            "--hold",
            "0.5",
            "--src-ips",
            "127.0.0.1-127.0.0.3",
            "--server-pid",
            &pid,
            "--json",
        ],
        Duration::from_secs(40),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let v = json.unwrap();
    assert_eq!(v["established"], 50, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["dropped_during_hold"], 0, "{v}");
    assert!(v["handshakes_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["server_rss_hold_mb"].as_f64().is_some(), "{v}");
}

#[test]
fn conns_with_deflate_sends_one_compressed_message_each() {
    let server = Server::start_with_deflate(true);
    let pid = server.child.id().to_string();
    let url = server.url("/active");
    let (out, json) = bench(
        &[
            "conns",
            "--url",
            &url,
            "--n",
            "40",
            "--hold",
            "0.5",
            "--rooms",
            "5",
            "--deflate",
            "--send-one",
            "--server-pid",
            &pid,
            "--json",
        ],
        Duration::from_secs(40),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let v = json.unwrap();
    assert_eq!(v["established"], 40, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    // A compressed message the server could not inflate would have closed the connection.
    assert_eq!(v["dropped_during_hold"], 0, "{v}");
    assert_eq!(v["rooms"], 5, "{v}");
    assert_eq!(v["send_one"], true, "{v}");
    assert_eq!(v["deflate_offered"], true, "{v}");
}

#[test]
fn slow_subscribers_are_cut_off_and_the_rest_lose_nothing() {
    let server = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--deflate",
            "false",
            "--log-level",
            "error",
            // 32 messages of 8 KiB: a healthy reader of this (debug) server may be kept off
            // the CPU for a few tens of milliseconds on a busy machine without being taken
            // for a slow one; a slow reader still gets far more than this sent to it.
            "--outbox-max-bytes",
            "262144",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start switchboard serve");
    let mut server = Server {
        port: 0,
        child: server,
    };
    let mut line = String::new();
    BufReader::new(server.child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    server.port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    let url = server.url("/slow");
    let (out, json) = bench(
        &[
            "slow",
            "--url",
            &url,
            "--subs",
            "10",
            "--slow-fraction",
            "0.2",
            "--rate",
            "500",
            "--size",
            "8192",
            "--secs",
            "3",
            "--warmup",
            "0",
            "--slow-read-bytes",
            "1024",
            "--slow-delay-ms",
            "200",
            "--json",
        ],
        Duration::from_secs(40),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let v = json.unwrap();
    assert_eq!(v["scenario"], "slow");
    assert_eq!(v["slow_subs"], 2, "{v}");
    assert_eq!(v["healthy_lost"], 0, "{v}");
    assert_eq!(v["healthy_closed"], 0, "{v}");
    assert_eq!(v["healthy_duplicates"], 0, "{v}");
    // 12 MB sent to each slow subscriber against ~15 KB read: more than the outbox plus every
    // socket buffer on the way can hold, so the server must cut them off. It sends 1008 if the
    // close frame can still be written, otherwise it drops the connection ("none").
    assert_eq!(v["slow_closed"], 2, "{v}");
    let codes = v["slow_close_codes"].as_str().unwrap();
    assert!(
        codes
            .split(',')
            .all(|c| c.starts_with("1008:") || c.starts_with("none:")),
        "{v}"
    );
}

#[test]
fn refuses_non_loopback_targets() {
    let (out, _) = bench(
        &["echo", "--url", "ws://192.0.2.1:80/", "--secs", "1"],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_server_that_never_answers_the_handshake_fails_the_run_in_bounded_time() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept and hold the sockets without ever answering.
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Ok((s, _)) = listener.accept() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let url = format!("ws://127.0.0.1:{port}/");
    let (out, json) = bench(
        &[
            "echo",
            "--url",
            &url,
            "--conns",
            "2",
            "--secs",
            "1",
            "--connect-timeout",
            "1",
            "--json",
        ],
        Duration::from_secs(12),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(json.is_none());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("handshake") || err.contains("established"),
        "{err}"
    );
    drop(holder);
}
