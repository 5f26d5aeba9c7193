//! `switchboard bench`: a load generator for WebSocket servers on this machine.
//!
//! It speaks RFC 6455 through the crate's own wire helpers, but without a full client stack:
//! the opening handshake is written by hand on a raw `TcpStream`, outgoing frames are encoded
//! and masked once per connection and then copied as bytes, and incoming frames are parsed with
//! [`crate::websocket::frame::parse_header`] directly in the read buffer. That keeps the
//! generator cheaper than the servers it measures, so the numbers describe the server.
//!
//! Scenarios:
//!
//! * [`echo`](EchoArgs): request/response round trips with a bounded number in flight;
//! * [`fanout`](FanoutArgs): publishers and subscribers in one room, checking every delivery
//!   for loss, duplication and order, with latency percentiles;
//! * [`conns`](ConnsArgs): many idle connections (handshake rate, server memory per connection);
//! * [`slow`](SlowArgs): fan-out where some subscribers read slowly, to show that the server's
//!   slow-consumer policy keeps the others healthy.
//!
//! Only loopback targets are accepted: this is a tool to measure a server on the same machine,
//! not to load someone else's.
//!
//! Each scenario runs on one tokio current-thread runtime per `--threads`, with connections
//! assigned round-robin. With `--server-pid`, the server's CPU time (utime + stime from
//! `/proc/PID/stat`) over the measured window and its memory (`VmRSS`, `VmHWM`) are reported.
use std::process::ExitCode;

use clap::{Args, Subcommand};

mod centrifugo;
mod centrifugo_protobuf;
mod conn;
mod conns;
mod echo;
mod fanout;
mod proc;
mod pusher;
mod report;
mod runner;
mod target;

/// Flags of the `bench` command.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The scenario to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// A benchmark scenario.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// Round trips: every connection sends and waits for its echo (in its own room `URL/echo-<i>`).
    Echo(EchoArgs),
    /// Publishers and subscribers in one room: delivery rate, loss, order and latency.
    Fanout(FanoutArgs),
    /// Many idle connections: handshakes per second and server memory per connection.
    Conns(ConnsArgs),
    /// Fan-out with a fraction of slow subscribers: are the healthy ones protected?
    Slow(SlowArgs),
}

/// Flags every scenario has.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// `ws://` URL of the server (loopback only). Its path is the room (or the room prefix for echo).
    #[arg(long)]
    pub url: String,
    /// PID of the server process, to report its CPU time and memory from /proc; `auto`
    /// finds the process listening on the URL's port (works with several servers running).
    #[arg(long, value_name = "PID|auto")]
    pub server_pid: Option<ServerPid>,
    /// Print a JSON summary on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Number of load-generator threads (each runs its own current-thread runtime).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,
    /// Seconds allowed for connecting and the opening handshakes before the run is aborted.
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout: f64,
}

/// `--server-pid`: a process id, or `auto` until [`run`] resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerPid {
    /// This process.
    Pid(u32),
    /// The process listening on the URL's port.
    Auto,
}

impl std::str::FromStr for ServerPid {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(ServerPid::Auto);
        }
        s.parse()
            .map(ServerPid::Pid)
            .map_err(|_| format!("expected a process id or `auto`, got {s:?}"))
    }
}

impl CommonArgs {
    /// The server's process id, once resolved (`auto` is resolved by [`run`]).
    pub(crate) fn pid(&self) -> Option<u32> {
        match self.server_pid {
            Some(ServerPid::Pid(p)) => Some(p),
            _ => None,
        }
    }

    /// Replaces `--server-pid auto` by the process listening on the URL's port.
    fn resolve_pid(&mut self) -> Result<(), String> {
        if self.server_pid != Some(ServerPid::Auto) {
            return Ok(());
        }
        let target = target::Target::parse(&self.url).map_err(|e| format!("{e:?}"))?;
        let port = target.addr.port();
        match proc::listening_pid(port) {
            Some(pid) => {
                eprintln!("--server-pid auto: process {pid} listens on port {port}");
                self.server_pid = Some(ServerPid::Pid(pid));
                Ok(())
            }
            None => Err(format!(
                "--server-pid auto: no process of this user listens on port {port}"
            )),
        }
    }
}

/// Flags of `bench echo`.
#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Number of connections.
    #[arg(long, default_value_t = 100)]
    pub conns: usize,
    /// Connect every connection to the URL's path as it is, for a server whose echo endpoint
    /// is one fixed path. By default connection `i` uses `URL/echo-i`: its own raw room, where
    /// the room's broadcast to the sender is the echo.
    #[arg(long)]
    pub one_path: bool,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Measured duration in seconds (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Messages in flight per connection (1 = strict request/response).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub inflight: u32,
    /// Send binary messages instead of text.
    #[arg(long)]
    pub binary: bool,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
}

/// Flags of `bench fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Number of subscribers.
    #[arg(long, default_value_t = 100)]
    pub subs: usize,
    /// Number of publishers (they join with `?echo=false`).
    #[arg(long, default_value_t = 1)]
    pub pubs: usize,
    /// Messages per second per publisher, or `max` (as fast as the window allows).
    #[arg(long, default_value = "100")]
    pub rate: Rate,
    /// Payload size in bytes (at least 20: publisher id, sequence number, send time).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Measured duration in seconds (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Warm-up seconds before measuring: every delivery is checked for loss and order from the
    /// start, throughput and latency count only arrivals after the warm-up.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Most messages per publisher not yet received by every subscriber; a publisher waits when
    /// it is that far ahead, so a fast publisher cannot outrun the server without bound.
    #[arg(long, default_value_t = 64)]
    pub window: u64,
    /// Seconds to wait after the last publication for the last deliveries.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
    /// Connect the publishers to this URL instead of `--url` (same room path): another
    /// node of a cluster sharing a broker, to measure fan-out across nodes.
    #[arg(long, value_name = "URL")]
    pub pub_url: Option<String>,
    /// Subscribers offer permessage-deflate (and inflate what arrives compressed), to measure
    /// what compression costs the server.
    #[arg(long)]
    pub deflate: bool,
    /// Wire protocol: `raw` rooms (the URL's path is the room) or the Centrifugo client
    /// protocol in JSON or Protobuf (clients connect to `/connection/websocket` and the URL's
    /// path names the channel; the server must let these clients connect, subscribe and publish, e.g.
    /// `--allow-anonymous` with a namespace that allows both, or `--token`).
    #[arg(long, value_enum, default_value_t = BenchProtocol::Raw)]
    pub protocol: BenchProtocol,
    /// Connection token sent in every Centrifugo `connect` command.
    #[arg(long)]
    pub token: Option<String>,
    /// Add one flooding client to the room: from the end of the warm-up it sends
    /// `--size`-byte messages as fast as its socket takes them until the server closes it
    /// (run the server with `--client-message-rate`). The summary says when and with which
    /// code it was closed; subscribers count its messages apart, so latency and loss are
    /// those of the publishers'.
    #[arg(long)]
    pub flooder: bool,
    /// Pusher app key of `--protocol pusher` subscribers (`/app/{key}`).
    #[arg(long, default_value = "app-key")]
    pub app_key: String,
}

/// The wire protocol `bench fanout` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchProtocol {
    /// Raw WebSocket rooms.
    Raw,
    /// The Centrifugo client protocol (JSON).
    Centrifugo,
    /// The Centrifugo client protocol in its Protobuf encoding
    /// (`/connection/websocket?cf_protocol=protobuf`); publications carry `--size` bytes.
    CentrifugoProtobuf,
    /// Pusher Channels protocol 7 subscribers of the public channel the URL's path names
    /// (`/app/{--app-key}`); publishers are raw-room clients of that channel, since Pusher
    /// clients cannot publish to a public channel.
    Pusher,
}

/// Flags of `bench conns`.
#[derive(Debug, Clone, Args)]
pub struct ConnsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Number of connections to open.
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    /// New connections per second, or `max` (limited only by `--concurrency`).
    #[arg(long, default_value = "max")]
    pub ramp: Rate,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds to hold the connections open once all are up.
    #[arg(long, default_value_t = 4.0)]
    pub hold: f64,
    /// Local source addresses to spread connections over, e.g. `127.0.0.1-127.0.0.20`
    /// (one address, a range of the last octet, or a comma-separated list).
    #[arg(long, default_value = "127.0.0.1")]
    pub src_ips: String,
    /// Offer permessage-deflate, as browsers do; with `--send-one` the message is sent
    /// compressed when the server agreed.
    #[arg(long)]
    pub deflate: bool,
    /// Each connection sends one text message (106 bytes) right after its handshake, then
    /// idles: the memory then includes what a connection keeps after it was active once.
    #[arg(long)]
    pub send_one: bool,
    /// Spread the connections over this many rooms (`URL/0` … `URL/N-1`, round-robin); 1 uses
    /// the URL's own room. With `--send-one` this bounds the fan-out of the messages sent.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rooms: u32,
    /// Wire protocol of the connections: `raw` rooms (the URL's path is the room);
    /// `centrifugo` (`/connection/websocket`: `connect`, then `subscribe` to the channel the
    /// URL's path names; the server must allow it, e.g. `--allow-anonymous` with a namespace
    /// that allows anonymous subscribers, or `--token`); `socketio` (an Engine.IO v4
    /// WebSocket session on `/socket.io/`, the default namespace, then the `subscribe` event
    /// for that channel). With `--rooms N` the channels are `NAME-0` … `NAME-(N-1)`. Each
    /// connection answers its protocol's pings while it is held.
    #[arg(long, value_enum, default_value_t = ConnsProtocol::Raw)]
    pub protocol: ConnsProtocol,
    /// Connection token sent in every Centrifugo `connect` (Socket.IO: in the `CONNECT`
    /// packet's `auth`).
    #[arg(long)]
    pub token: Option<String>,
    /// Pusher app key of `--protocol pusher` connections (`/app/{key}`, then
    /// `pusher:subscribe` to the channel).
    #[arg(long, default_value = "app-key")]
    pub app_key: String,
}

/// The wire protocol `bench conns` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConnsProtocol {
    /// Raw WebSocket rooms.
    Raw,
    /// The Centrifugo client protocol (JSON).
    Centrifugo,
    /// Socket.IO v4 over an Engine.IO WebSocket session.
    Socketio,
    /// Pusher Channels protocol 7.
    Pusher,
}

/// Flags of `bench slow`.
#[derive(Debug, Clone, Args)]
pub struct SlowArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Number of subscribers (healthy and slow together).
    #[arg(long, default_value_t = 100)]
    pub subs: usize,
    /// Fraction of the subscribers that read slowly (0..1).
    #[arg(long, default_value_t = 0.1)]
    pub slow_fraction: f64,
    /// Number of publishers.
    #[arg(long, default_value_t = 1)]
    pub pubs: usize,
    /// Messages per second per publisher, or `max`.
    #[arg(long, default_value = "500")]
    pub rate: Rate,
    /// Payload size in bytes (at least 20).
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    /// Measured duration in seconds (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// Bytes a slow subscriber reads at a time.
    #[arg(long, default_value_t = 4096)]
    pub slow_read_bytes: usize,
    /// Milliseconds a slow subscriber sleeps between reads.
    #[arg(long, default_value_t = 100)]
    pub slow_delay_ms: u64,
    /// Publisher window (see `fanout --window`); slow subscribers do not hold it back.
    #[arg(long, default_value_t = 256)]
    pub window: u64,
    /// Seconds to wait after the last publication for deliveries and close frames.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
}

/// A message rate: a number per second, or as fast as possible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Messages (or connections) per second.
    PerSec(f64),
    /// No pacing.
    Max,
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        match s.parse::<f64>() {
            Ok(v) if v > 0.0 && v.is_finite() => Ok(Rate::PerSec(v)),
            _ => Err(format!("expected a positive number or `max`, got {s:?}")),
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::PerSec(v) => write!(f, "{v}"),
            Rate::Max => f.write_str("max"),
        }
    }
}

/// Run a scenario, print its summary on stdout and return the process exit code:
/// 0 on success, 1 when the run failed, 2 for invalid arguments (such as a non-loopback URL).
pub fn run(mut args: BenchArgs) -> ExitCode {
    let common = match &mut args.scenario {
        Scenario::Echo(a) => &mut a.common,
        Scenario::Fanout(a) => &mut a.common,
        Scenario::Slow(a) => &mut a.common,
        Scenario::Conns(a) => &mut a.common,
    };
    if let Err(e) = common.resolve_pid() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if !(common.connect_timeout > 0.0 && common.connect_timeout <= 3600.0) {
        eprintln!("error: --connect-timeout must be in (0, 3600] seconds");
        return ExitCode::from(2);
    }
    let (common, result) = match args.scenario {
        Scenario::Echo(a) => (a.common.clone(), echo::run(a)),
        Scenario::Fanout(a) => (a.common.clone(), fanout::run_fanout(a)),
        Scenario::Slow(a) => (a.common.clone(), fanout::run_slow(a)),
        Scenario::Conns(a) => (a.common.clone(), conns::run(a)),
    };
    match result {
        Ok(summary) => {
            let text = if common.json {
                summary.to_json_string()
            } else {
                summary.to_table()
            };
            println!("{text}");
            if summary.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(report::BenchError::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(report::BenchError::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
