//! `bench fanout` and `bench slow`: publishers and subscribers in one room.
//!
//! Every payload starts with the publisher id (u32), a per-publisher sequence number (u64) and
//! the send time (u64 ns since a time origin shared by all threads of this process, so one
//! clock), all little-endian; the rest is filler. Each subscriber tracks, per publisher, the
//! next expected sequence number and the gaps it has seen, which tells lost, duplicated and
//! reordered deliveries apart.
//!
//! Publishers join with `?echo=false`. They are paced by `--rate`, and in any case kept at most
//! `--window` messages each ahead of the slowest healthy subscriber: a pacer task publishes the
//! minimum delivery count over the healthy subscribers, so publishers at `--rate max` cannot
//! outrun the server (or the generator) without bound.
//!
//! `bench slow` makes a fraction of the subscribers slow readers (a small `SO_RCVBUF`, a few KiB
//! per read and a sleep between reads) and reports the healthy ones separately, plus how the
//! slow ones were closed.
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use hdrhistogram::Histogram;
use tokio::sync::Notify;
use tokio::time::{sleep_until, timeout_at};

use super::centrifugo;
use super::centrifugo_protobuf;
use super::conn::{encode_frame, mask_for, patch_payload, ConnectOpts, Incoming, RawConn};
use super::echo::{add_server_figures, payload};
use super::proc::{status_bytes, CpuWindow};
use super::pusher;
use super::report::{new_histogram, record, round3, BenchError, Progress, Summary};
use super::runner::{self, ConnSpec, Ctl, Errors, Greeting, Plan};
use super::target::Target;
use super::{BenchProtocol, FanoutArgs, Rate, SlowArgs};
use crate::websocket::frame::OpCode;

/// Bytes at the start of every payload: publisher id, sequence number, send time.
pub(crate) const HEADER: usize = 20;
/// Progress counters.
const C_SENT: usize = 0;
const C_DELIVERED: usize = 1;
/// Connection indices of publishers start here (for distinct masking keys).
const PUB_INDEX_BASE: usize = 1 << 24;
/// A publisher stops queueing while this much is still unwritten.
const MAX_PENDING_OUT: usize = 256 * 1024;
/// Time for the server to register the last members in the room before the load starts.
const SETTLE: Duration = Duration::from_millis(200);

/// The parameters both scenarios share.
#[derive(Debug, Clone)]
struct Cfg {
    scenario: &'static str,
    url: String,
    /// Where publishers connect, when not to `url` (another node of a cluster).
    pub_url: Option<String>,
    server_pid: Option<u32>,
    threads: usize,
    connect_timeout: f64,
    subs: usize,
    slow: usize,
    pubs: usize,
    rate: Rate,
    size: usize,
    secs: f64,
    warmup: f64,
    window_total: u64,
    drain: f64,
    slow_read_bytes: usize,
    slow_delay: Duration,
    /// Subscribers offer permessage-deflate.
    deflate: bool,
    protocol: BenchProtocol,
    /// Centrifugo connection token.
    token: Option<String>,
    /// One client floods the room during the measured window (`--flooder`).
    flooder: bool,
    /// Pusher app key.
    app_key: String,
}

impl Cfg {
    /// Subscriber `i` is slow when it is among the last `slow` ones.
    fn is_slow(&self, i: usize) -> bool {
        i >= self.subs - self.slow
    }
}

/// State shared by all workers.
struct Shared {
    /// Origin of the send times carried in payloads.
    base: Instant,
    /// Messages each publisher sent (final once it is done).
    sent: Vec<AtomicU64>,
    pubs_done: AtomicUsize,
    total_sent: AtomicU64,
    /// Unique deliveries per subscriber; `u64::MAX` for those that do not hold back publishers.
    sub_recv: Vec<AtomicU64>,
    /// Minimum of `sub_recv`, refreshed by the pacer.
    min_recv: AtomicU64,
    /// Signalled when `min_recv` grows.
    notify: Notify,
}

/// What one subscriber saw.
#[derive(Debug)]
struct SubResult {
    slow: bool,
    /// Next expected sequence number per publisher.
    expected: Vec<u64>,
    /// Sequence numbers skipped and not seen later.
    missing: u64,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    /// `Some(code)` when the server closed the connection (code from the close frame, if any).
    closed: Option<Option<u16>>,
}

/// What one worker thread measured.
struct ThreadOut {
    subs: Vec<SubResult>,
    healthy_hist: Histogram<u64>,
    /// Deliveries that arrived inside the measured window (all / healthy subscribers).
    measured_deliveries: u64,
    healthy_measured_deliveries: u64,
    /// Flood messages the subscribers of this thread received.
    flood_deliveries: u64,
    /// What the flooder saw (on the thread that ran it).
    flood: Option<FloodOut>,
    errors: Errors,
}

pub(crate) fn run_fanout(a: FanoutArgs) -> Result<Summary, BenchError> {
    if a.flooder && a.protocol == BenchProtocol::CentrifugoProtobuf {
        return Err(BenchError::Usage(
            "--flooder speaks the raw or the Centrifugo JSON protocol".into(),
        ));
    }
    if a.flooder && a.protocol == BenchProtocol::Pusher {
        // A Pusher client may only send client events, which have their own fixed limit.
        return Err(BenchError::Usage(
            "--flooder speaks the raw or the Centrifugo protocol, not Pusher".into(),
        ));
    }
    run(Cfg {
        scenario: "fanout",
        server_pid: a.common.pid(),
        url: a.common.url,
        pub_url: a.pub_url,
        threads: a.common.threads as usize,
        connect_timeout: a.common.connect_timeout,
        subs: a.subs,
        slow: 0,
        pubs: a.pubs,
        rate: a.rate,
        size: a.size,
        secs: a.secs,
        warmup: a.warmup,
        window_total: a.window.saturating_mul(a.pubs as u64),
        drain: a.drain,
        slow_read_bytes: usize::MAX,
        slow_delay: Duration::ZERO,
        deflate: a.deflate,
        protocol: a.protocol,
        token: a.token,
        flooder: a.flooder,
        app_key: a.app_key,
    })
}

pub(crate) fn run_slow(a: SlowArgs) -> Result<Summary, BenchError> {
    if !(0.0..=1.0).contains(&a.slow_fraction) {
        return Err(BenchError::Usage(
            "--slow-fraction must be in [0, 1]".into(),
        ));
    }
    if a.slow_read_bytes == 0 {
        return Err(BenchError::Usage(
            "--slow-read-bytes must be positive".into(),
        ));
    }
    let slow = ((a.subs as f64) * a.slow_fraction).round() as usize;
    run(Cfg {
        scenario: "slow",
        server_pid: a.common.pid(),
        url: a.common.url,
        pub_url: None,
        threads: a.common.threads as usize,
        connect_timeout: a.common.connect_timeout,
        subs: a.subs,
        slow: slow.min(a.subs),
        pubs: a.pubs,
        rate: a.rate,
        size: a.size,
        secs: a.secs,
        warmup: a.warmup,
        window_total: a.window.saturating_mul(a.pubs as u64),
        drain: a.drain,
        slow_read_bytes: a.slow_read_bytes,
        slow_delay: Duration::from_millis(a.slow_delay_ms),
        deflate: false,
        protocol: BenchProtocol::Raw,
        token: None,
        flooder: false,
        app_key: String::new(),
    })
}

fn run(cfg: Cfg) -> Result<Summary, BenchError> {
    let target = Target::parse(&cfg.url)?;
    let pub_target = match &cfg.pub_url {
        Some(url) => Target::parse(url)?,
        None => target.clone(),
    };
    if cfg.subs == 0 || cfg.pubs == 0 {
        return Err(BenchError::Usage(
            "--subs and --pubs must be at least 1".into(),
        ));
    }
    if cfg.size < HEADER {
        return Err(BenchError::Usage(format!(
            "--size must be at least {HEADER} bytes"
        )));
    }
    if cfg.window_total == 0 {
        return Err(BenchError::Usage("--window must be at least 1".into()));
    }
    let secs_ok = cfg.secs > 0.0 && cfg.secs <= 3600.0;
    let others_ok = (0.0..=600.0).contains(&cfg.warmup) && (0.0..=600.0).contains(&cfg.drain);
    if !(secs_ok && others_ok) {
        return Err(BenchError::Usage(
            "--secs must be in (0, 3600], --warmup and --drain in [0, 600]".into(),
        ));
    }
    super::proc::raise_nofile_limit();
    let shared = Arc::new(Shared {
        base: Instant::now(),
        sent: (0..cfg.pubs).map(|_| AtomicU64::new(0)).collect(),
        pubs_done: AtomicUsize::new(0),
        total_sent: AtomicU64::new(0),
        sub_recv: (0..cfg.subs)
            .map(|i| AtomicU64::new(if cfg.is_slow(i) { u64::MAX } else { 0 }))
            .collect(),
        min_recv: AtomicU64::new(0),
        notify: Notify::new(),
    });
    let rss_before = cfg.server_pid.and_then(|p| status_bytes(p, "VmRSS"));
    let ctl = Ctl::new();
    let handles = {
        let (ctl, target, cfg, shared) = (ctl.clone(), target.clone(), cfg.clone(), shared.clone());
        runner::spawn_workers(cfg.threads, move |t| {
            worker(t, cfg, target, pub_target.clone(), ctl, shared)
        })
    };
    if let Err(e) = runner::wait_ready(&ctl, cfg.subs + cfg.pubs, cfg.connect_timeout) {
        let _ = runner::join_workers(handles);
        return Err(e);
    }
    std::thread::sleep(SETTLE);
    let rss_connected = cfg.server_pid.and_then(|p| status_bytes(p, "VmRSS"));

    let plan = Plan::starting_now(cfg.warmup, cfg.secs);
    ctl.go(plan);
    let progress = Progress::new();
    let mut last = (0u64, 0u64, plan.start);
    let mut tick = |elapsed| {
        let (sent, got, now) = (
            ctl.counter(C_SENT),
            ctl.counter(C_DELIVERED),
            Instant::now(),
        );
        let dt = (now - last.2).as_secs_f64();
        let line = format!(
            "{}: {:.0} sent/s, {:.0} delivered/s",
            if now < plan.warm_end {
                "warm-up"
            } else {
                "measuring"
            },
            (sent - last.0) as f64 / dt,
            (got - last.1) as f64 / dt
        );
        last = (sent, got, now);
        progress.show(elapsed, &line);
    };
    runner::sleep_with_progress(plan.start, plan.warm_end, &mut tick);
    let cpu = CpuWindow::start(cfg.server_pid);
    runner::sleep_with_progress(plan.start, plan.end, &mut tick);
    let (server_cpu, gen_cpu) = cpu.stop();
    let rss_loaded = cfg.server_pid.and_then(|p| status_bytes(p, "VmRSS"));
    progress.show(plan.start.elapsed(), "draining");
    let results = runner::join_workers(handles);
    progress.finish();
    let results = results?;
    let mut s = summarize(&cfg, &plan, &shared, results, server_cpu, gen_cpu)?;
    add_rss_growth(
        &mut s,
        cfg.server_pid,
        [rss_before, rss_connected, rss_loaded],
    );
    Ok(s)
}

/// The server's resident memory before the clients connected, once they all had, at the end of
/// the measured window (all still connected) and after the drain, and how much it grew under
/// load (connected → end of the window): what the load itself costs (queues and buffers grown
/// in the burst and kept, allocator retention), apart from what the connections cost.
fn add_rss_growth(
    s: &mut Summary,
    pid: Option<u32>,
    [before, connected, loaded]: [Option<u64>; 3],
) {
    let Some(pid) = pid else { return };
    let end = status_bytes(pid, "VmRSS");
    let mb = |b: u64| round3(b as f64 / (1024.0 * 1024.0));
    let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(round3((b as f64 - a as f64) / (1024.0 * 1024.0))),
        _ => None,
    };
    s.add("server_rss_before_mb", before.map(mb), "MiB");
    s.add("server_rss_connected_mb", connected.map(mb), "MiB");
    s.add("server_rss_loaded_mb", loaded.map(mb), "MiB");
    s.add("server_rss_end_mb", end.map(mb), "MiB");
    s.add("server_rss_growth_mb", delta(connected, loaded), "MiB");
    s.add(
        "server_rss_growth_from_start_mb",
        delta(before, loaded),
        "MiB",
    );
}

fn summarize(
    cfg: &Cfg,
    plan: &Plan,
    shared: &Shared,
    results: Vec<ThreadOut>,
    server_cpu: Option<f64>,
    gen_cpu: Option<f64>,
) -> anyhow::Result<Summary> {
    let sent: Vec<u64> = shared
        .sent
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .collect();
    let total_sent: u64 = sent.iter().sum();
    let mut hist = new_histogram();
    let mut errors = Errors::default();
    let (mut measured, mut healthy_measured) = (0u64, 0u64);
    #[derive(Default)]
    struct Tally {
        subs: u64,
        unique: u64,
        lost: u64,
        duplicates: u64,
        reordered: u64,
        closed: u64,
    }
    let (mut healthy, mut slow) = (Tally::default(), Tally::default());
    let (mut flood, mut flood_delivered) = (None, 0u64);
    let mut slow_codes: BTreeMap<String, u64> = BTreeMap::new();
    for r in results {
        hist.add(&r.healthy_hist)
            .map_err(|e| anyhow!("histogram: {e}"))?;
        errors.merge(r.errors);
        measured += r.measured_deliveries;
        flood_delivered += r.flood_deliveries;
        if r.flood.is_some() {
            flood = r.flood;
        }
        healthy_measured += r.healthy_measured_deliveries;
        for s in r.subs {
            let lost: u64 = sent
                .iter()
                .zip(&s.expected)
                .map(|(sent, got)| sent.saturating_sub(*got))
                .sum::<u64>()
                + s.missing;
            let t = if s.slow { &mut slow } else { &mut healthy };
            t.subs += 1;
            t.unique += s.unique;
            t.lost += lost;
            t.duplicates += s.duplicates;
            t.reordered += s.reordered;
            if let Some(code) = s.closed {
                t.closed += 1;
                if s.slow {
                    let k = code.map_or("none".to_string(), |c| c.to_string());
                    *slow_codes.entry(k).or_default() += 1;
                }
            }
        }
    }
    let secs = plan.measured_secs();
    let mut s = Summary::new(cfg.scenario);
    s.add("url", cfg.url.as_str(), "");
    if let Some(pub_url) = &cfg.pub_url {
        s.add("pub_url", pub_url.as_str(), "");
    }
    s.add("subs", cfg.subs as u64, "");
    s.add("pubs", cfg.pubs as u64, "");
    if cfg.deflate {
        s.add(
            "compressed_deliveries",
            super::conn::COMPRESSED_MESSAGES.load(std::sync::atomic::Ordering::Relaxed),
            "",
        );
    }
    s.add("rate", cfg.rate.to_string(), "msg/s per publisher");
    s.add("size", cfg.size as u64, "B");
    s.add("secs", round3(secs), "s");
    s.add(
        "window",
        cfg.window_total / cfg.pubs as u64,
        "messages per publisher",
    );
    s.add("drain_secs", cfg.drain, "s");
    s.add("sent", total_sent, "");
    s.add(
        "sent_per_sec",
        round3(total_sent as f64 / (plan.end - plan.start).as_secs_f64()),
        "/s",
    );
    if cfg.scenario == "fanout" {
        s.add("delivered", healthy.unique, "");
        s.add("delivered_per_sec", round3(measured as f64 / secs), "/s");
        s.add("lost", healthy.lost, "");
        s.add("duplicates", healthy.duplicates, "");
        s.add("reordered", healthy.reordered, "");
        s.add("closed", healthy.closed, "subscribers");
        s.add_latency("latency", &hist, true);
        add_server_figures(&mut s, cfg.server_pid, server_cpu, measured, "delivery");
    } else {
        s.add("healthy_subs", healthy.subs, "");
        s.add("slow_subs", slow.subs, "");
        s.add("healthy_delivered", healthy.unique, "");
        s.add(
            "healthy_delivered_per_sec",
            round3(healthy_measured as f64 / secs),
            "/s",
        );
        s.add("healthy_lost", healthy.lost, "");
        s.add("healthy_duplicates", healthy.duplicates, "");
        s.add("healthy_reordered", healthy.reordered, "");
        s.add("healthy_closed", healthy.closed, "subscribers");
        s.add_latency("healthy_latency", &hist, true);
        s.add("slow_closed", slow.closed, "subscribers");
        s.add(
            "slow_close_codes",
            slow_codes
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(","),
            "",
        );
        s.add("slow_open", slow.subs - slow.closed, "subscribers");
        s.add("slow_delivered", slow.unique, "");
        s.add("slow_lost", slow.lost, "");
        add_server_figures(&mut s, cfg.server_pid, server_cpu, measured, "delivery");
    }
    if let Some(f) = &flood {
        add_flood_figures(&mut s, f, flood_delivered, cfg.subs);
    }
    s.add("generator_cpu_s", gen_cpu.map(round3), "s");
    s.add("errors", errors.count, "");
    if let Some(e) = errors.first {
        s.add("first_error", e, "");
    }
    if errors.count > 0 {
        s.set_failed();
    }
    Ok(s)
}

/// The flooder's lines of the summary.
fn add_flood_figures(s: &mut Summary, f: &FloodOut, delivered: u64, subs: usize) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let closed: Vec<&FloodConn> = f.conns.iter().filter(|c| c.closed.is_some()).collect();
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    for c in &closed {
        let k = c
            .closed
            .flatten()
            .map_or("none".to_string(), |c| c.to_string());
        *codes.entry(k).or_default() += 1;
    }
    s.add("flood_connections", f.conns.len() as u64, "");
    s.add("flood_closed", closed.len() as u64, "connections");
    s.add(
        "flood_close_codes",
        codes
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(","),
        "",
    );
    s.add(
        "flood_closed_after_ms",
        median(closed.iter().map(|c| c.secs * 1000.0).collect()).map(round3),
        "ms (median, first message to close)",
    );
    s.add(
        "flood_sent_before_close",
        median(closed.iter().map(|c| c.sent as f64).collect()),
        "messages (median)",
    );
    s.add(
        "flood_sent",
        f.conns.iter().map(|c| c.sent).sum::<u64>(),
        "",
    );
    s.add(
        "flood_delivered_per_sub",
        round3(delivered as f64 / subs.max(1) as f64),
        "",
    );
    s.add("flood_refused", f.refused, "connection attempts");
    if let Some(e) = &f.first_refusal {
        s.add("flood_first_refusal", e.as_str(), "");
    }
}

async fn worker(
    t: usize,
    cfg: Cfg,
    target: Target,
    pub_target: Target,
    ctl: Arc<Ctl>,
    shared: Arc<Shared>,
) -> anyhow::Result<ThreadOut> {
    // Raw rooms: the URL's path is the room. Centrifugo: the path names the channel.
    let channel = channel_of(&target);
    let (sub_path, pub_path) = match cfg.protocol {
        BenchProtocol::Centrifugo => (
            centrifugo::ENDPOINT.to_string(),
            centrifugo::ENDPOINT.to_string(),
        ),
        BenchProtocol::CentrifugoProtobuf => (
            centrifugo_protobuf::ENDPOINT.to_string(),
            centrifugo_protobuf::ENDPOINT.to_string(),
        ),
        // Pusher subscribers; raw publishers in the same channel.
        BenchProtocol::Pusher => (
            pusher::endpoint(&cfg.app_key),
            pub_target.path_and_query("echo=false"),
        ),
        BenchProtocol::Raw => (
            target.path_and_query(""),
            pub_target.path_and_query("echo=false"),
        ),
    };
    let token = cfg.token.as_deref();
    let specs: Vec<ConnSpec> = (0..cfg.subs)
        .filter(|i| i % cfg.threads == t)
        .map(|i| ConnSpec {
            index: i,
            path: sub_path.clone(),
            opts: ConnectOpts {
                bind: None,
                recv_buffer: cfg.is_slow(i).then_some(4096),
                deflate: cfg.deflate,
            },
            greeting: match cfg.protocol {
                BenchProtocol::Centrifugo => {
                    Greeting::Centrifugo(centrifugo::greeting(token, Some(&channel)))
                }
                BenchProtocol::CentrifugoProtobuf => Greeting::CentrifugoProtobuf(
                    centrifugo_protobuf::greeting(token, Some(&channel)),
                ),
                BenchProtocol::Pusher => Greeting::Pusher(channel.clone()),
                BenchProtocol::Raw => Greeting::None,
            },
        })
        .collect();
    let pub_specs: Vec<ConnSpec> = (0..cfg.pubs)
        .filter(|p| p % cfg.threads == t)
        .map(|p| ConnSpec {
            index: PUB_INDEX_BASE + p,
            path: pub_path.clone(),
            opts: ConnectOpts::default(),
            greeting: match cfg.protocol {
                BenchProtocol::Centrifugo => {
                    Greeting::Centrifugo(centrifugo::greeting(token, None))
                }
                BenchProtocol::CentrifugoProtobuf => {
                    Greeting::CentrifugoProtobuf(centrifugo_protobuf::greeting(token, None))
                }
                BenchProtocol::Raw | BenchProtocol::Pusher => Greeting::None,
            },
        })
        .collect();
    let mut conns = runner::connect_all(&target, specs, 64, cfg.connect_timeout, &ctl).await?;
    // Publishers may be on another node (`--pub-url`): same room, a different server.
    conns.extend(runner::connect_all(&pub_target, pub_specs, 64, cfg.connect_timeout, &ctl).await?);
    let Some(plan) = ctl.wait_go().await else {
        bail!("run aborted");
    };
    let out = Rc::new(RefCell::new(ThreadOut {
        subs: Vec::new(),
        healthy_hist: new_histogram(),
        measured_deliveries: 0,
        healthy_measured_deliveries: 0,
        flood_deliveries: 0,
        flood: None,
        errors: Errors::default(),
    }));
    let cfg = Rc::new(cfg);
    let channel: Rc<str> = channel.into();
    if t == 0 {
        tokio::task::spawn_local(pacer(cfg.clone(), shared.clone(), plan));
    }
    let mut tasks = Vec::new();
    if cfg.flooder && t == 0 {
        let (cfg, out) = (cfg.clone(), out.clone());
        let (target, channel) = (pub_target.clone(), channel.clone());
        let path = pub_path.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let flood = flooder(&cfg, &target, &path, &channel, plan).await;
            out.borrow_mut().flood = Some(flood);
        }));
    }
    for (index, conn) in conns {
        let (cfg, shared, ctl, out) = (cfg.clone(), shared.clone(), ctl.clone(), out.clone());
        let channel = channel.clone();
        tasks.push(tokio::task::spawn_local(async move {
            if index >= PUB_INDEX_BASE {
                let id = index - PUB_INDEX_BASE;
                if let Err(e) = publisher(id, conn, &cfg, &channel, plan, &shared, &ctl).await {
                    out.borrow_mut()
                        .errors
                        .add(format!("publisher {id}: {e:#}"));
                }
            } else {
                subscriber(index, conn, &cfg, plan, &shared, &ctl, &out).await;
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| anyhow!("fan-out task: {e}"))?;
    }
    Rc::try_unwrap(out)
        .map(RefCell::into_inner)
        .map_err(|_| anyhow!("statistics still shared"))
}

/// Refresh `min_recv` every millisecond until the publishers are done.
async fn pacer(cfg: Rc<Cfg>, shared: Arc<Shared>, plan: Plan) {
    let hard_end = plan.end + Duration::from_secs_f64(cfg.drain) + Duration::from_secs(1);
    let mut last = 0;
    while shared.pubs_done.load(Ordering::Relaxed) < cfg.pubs && Instant::now() < hard_end {
        let min = shared
            .sub_recv
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .min()
            .unwrap_or(u64::MAX);
        if min != last {
            last = min;
            shared.min_recv.store(min, Ordering::Relaxed);
            shared.notify.notify_waiters();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn publisher(
    id: usize,
    mut conn: RawConn,
    cfg: &Cfg,
    channel: &str,
    plan: Plan,
    shared: &Shared,
    ctl: &Ctl,
) -> anyhow::Result<()> {
    let mask = mask_for(PUB_INDEX_BASE + id);
    // The frame is encoded and masked once; each message only patches the header fields in
    // it (binary for raw rooms, hex inside the JSON `publish` command for Centrifugo).
    let (mut frame, header_at) = match cfg.protocol {
        BenchProtocol::Raw | BenchProtocol::Pusher => {
            (encode_frame(OpCode::Binary, &payload(cfg.size), mask), None)
        }
        BenchProtocol::Centrifugo => {
            let (text, at) = centrifugo::publish_command(channel, cfg.size);
            (encode_frame(OpCode::Text, &text, mask), Some(at))
        }
        BenchProtocol::CentrifugoProtobuf => {
            let (cmd, at) = centrifugo_protobuf::publish_command(channel, cfg.size);
            (encode_frame(OpCode::Binary, &cmd, mask), Some(at))
        }
    };
    // Protobuf data is bytes: the header goes in as it is, not as hex.
    let hex = cfg.protocol == BenchProtocol::Centrifugo;
    let mut replies_headers = Vec::new();
    let mut seq = 0u64;
    let end = tokio::time::Instant::from_std(plan.end);
    let result = async {
        loop {
            let now = Instant::now();
            if now >= plan.end {
                return Ok(());
            }
            let due = match cfg.rate {
                Rate::PerSec(r) => {
                    (((now - plan.start).as_secs_f64() * r) as u64 + 1).saturating_sub(seq)
                }
                Rate::Max => 64,
            };
            let in_flight = shared
                .total_sent
                .load(Ordering::Relaxed)
                .saturating_sub(shared.min_recv.load(Ordering::Relaxed));
            let room = cfg.window_total.saturating_sub(in_flight);
            let write_blocked = conn.pending_out() >= MAX_PENDING_OUT;
            let n = if !write_blocked {
                due.min(room).min(256)
            } else {
                0
            };
            for _ in 0..n {
                let mut fields = [0u8; HEADER];
                fields[..4].copy_from_slice(&(id as u32).to_le_bytes());
                fields[4..12].copy_from_slice(&seq.to_le_bytes());
                let ns = shared.base.elapsed().as_nanos() as u64;
                fields[12..20].copy_from_slice(&ns.to_le_bytes());
                match header_at {
                    None => patch_payload(&mut frame, mask, 0, &fields),
                    Some(at) if hex => {
                        patch_payload(&mut frame, mask, at, &centrifugo::hex_header(&fields))
                    }
                    Some(at) => patch_payload(&mut frame, mask, at, &fields),
                }
                conn.queue(&frame);
                seq += 1;
            }
            if n > 0 {
                shared.total_sent.fetch_add(n, Ordering::Relaxed);
                ctl.bump(C_SENT, n);
            }
            let blocked = n < due && n == room;
            let notified = shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Wake for the next due message, or shortly, in case the pacer's signal came
            // between reading `min_recv` and registering for it.
            let wake = match (blocked, cfg.rate) {
                (true, _) => Instant::now() + Duration::from_millis(2),
                (false, Rate::PerSec(r)) => plan.start + Duration::from_secs_f64(seq as f64 / r),
                (false, Rate::Max) => plan.end,
            };
            let wake = tokio::time::Instant::from_std(wake.min(plan.end));
            // Only the socket can make progress: wait for it rather than spin on the timer.
            let idle = write_blocked
                || (matches!(cfg.rate, Rate::Max) && !blocked && conn.pending_out() > 0);
            tokio::select! {
                r = conn.pump(64 * 1024) => {
                    r?;
                    while let Some(m) = conn.next()? {
                        match m {
                            Incoming::Close(code) => {
                                bail!("server closed the publisher (code {code:?})")
                            }
                            // A refused `publish` would otherwise count as sent and lost.
                            Incoming::Data { payload, .. }
                                if cfg.protocol == BenchProtocol::Centrifugo =>
                            {
                                for line in centrifugo::lines(&payload) {
                                    centrifugo::parse_line(line)?;
                                }
                            }
                            Incoming::Data { payload, .. }
                                if cfg.protocol == BenchProtocol::CentrifugoProtobuf =>
                            {
                                centrifugo_protobuf::read_frame(&payload, &mut replies_headers)?;
                            }
                            Incoming::Data { .. } => {}
                        }
                    }
                }
                _ = &mut notified, if blocked => {}
                _ = sleep_until(wake), if !idle => {}
                _ = sleep_until(end) => {}
            }
        }
    }
    .await;
    shared.sent[id].store(seq, Ordering::Relaxed);
    shared.pubs_done.fetch_add(1, Ordering::Relaxed);
    result?;
    // Everything counted as sent must reach the server: flush, then close politely and wait
    // for the server's answer, so no unread data makes our socket close with a reset.
    let deadline =
        tokio::time::Instant::from_std(plan.end + Duration::from_secs_f64(cfg.drain.max(1.0)));
    while conn.pending_out() > 0 {
        match timeout_at(deadline, conn.pump(64 * 1024)).await {
            Err(_) => bail!("could not flush the last messages in time"),
            Ok(r) => r?,
        }
    }
    conn.queue_close(1000);
    let _ = timeout_at(deadline, async {
        loop {
            conn.pump(64 * 1024).await?;
            while let Some(m) = conn.next()? {
                if let Incoming::Close(_) = m {
                    return anyhow::Ok(());
                }
            }
        }
    })
    .await;
    Ok(())
}

/// The bench headers in one message from the server: the first bytes of a raw room's
/// message, or those of every publication in a Centrifugo frame (replies carry none).
/// They are put in `out` (cleared first; reused so that no delivery allocates).
fn headers_in(
    protocol: BenchProtocol,
    payload: &[u8],
    out: &mut Vec<[u8; HEADER]>,
) -> anyhow::Result<()> {
    out.clear();
    match protocol {
        BenchProtocol::Raw => match payload.get(..HEADER) {
            Some(h) => out.push(h.try_into().expect("HEADER bytes")),
            None => bail!("a {}-byte message without the bench header", payload.len()),
        },
        BenchProtocol::Centrifugo => {
            for line in centrifugo::lines(payload) {
                if let centrifugo::Line::Publication(h) = centrifugo::parse_line(line)? {
                    out.push(h);
                }
            }
        }
        BenchProtocol::CentrifugoProtobuf => {
            centrifugo_protobuf::read_frame(payload, out)?;
        }
        BenchProtocol::Pusher => {
            if let Some(h) = pusher::header(payload)? {
                out.push(h);
            }
        }
    }
    Ok(())
}

/// The Centrifugo channel a URL names: its path without the leading slash (`bench` for the
/// root).
fn channel_of(target: &Target) -> String {
    match target.path.trim_start_matches('/') {
        "" => "bench".to_string(),
        p => p.to_string(),
    }
}

/// Publisher id in the flooder's messages: subscribers count them apart.
const FLOODER_ID: u32 = u32::MAX;
/// Connection index of the flooder (its masking key).
const FLOODER_INDEX: usize = PUB_INDEX_BASE - 1;
/// The flooder keeps this much queued, so its socket is never idle.
const FLOOD_QUEUE: usize = 64 * 1024;

/// One connection of the flooder, from its first message to its end.
#[derive(Debug)]
struct FloodConn {
    /// Messages written to the socket.
    sent: u64,
    /// Seconds from its first message to the server's close (or to the end of the run).
    secs: f64,
    /// `Some(code)` when the server closed it (`Some(None)`: no close frame).
    closed: Option<Option<u16>>,
}

/// What the flooder saw.
#[derive(Debug, Default)]
struct FloodOut {
    conns: Vec<FloodConn>,
    /// Connection attempts that failed (refused or timed out).
    refused: u64,
    first_refusal: Option<String>,
}

/// Floods the room from the end of the warm-up: one connection sends as fast as its socket
/// takes messages until the server closes it or the run ends. A refused connection attempt
/// is retried shortly (the flood starts once it is in).
async fn flooder(cfg: &Cfg, target: &Target, path: &str, channel: &str, plan: Plan) -> FloodOut {
    let mask = mask_for(FLOODER_INDEX);
    let mut frame = match cfg.protocol {
        BenchProtocol::Raw => encode_frame(OpCode::Binary, &payload(cfg.size), mask),
        BenchProtocol::Centrifugo => {
            let (mut text, at) = centrifugo::publish_command(channel, cfg.size);
            let mut fields = [0u8; HEADER];
            fields[..4].copy_from_slice(&FLOODER_ID.to_le_bytes());
            let hex = centrifugo::hex_header(&fields);
            text[at..at + hex.len()].copy_from_slice(&hex);
            encode_frame(OpCode::Text, &text, mask)
        }
        BenchProtocol::Pusher | BenchProtocol::CentrifugoProtobuf => {
            unreachable!("refused by run_fanout")
        }
    };
    if cfg.protocol == BenchProtocol::Raw {
        patch_payload(&mut frame, mask, 0, &FLOODER_ID.to_le_bytes());
    }
    let greeting = match cfg.protocol {
        BenchProtocol::Raw => Vec::new(),
        BenchProtocol::Centrifugo => centrifugo::greeting(cfg.token.as_deref(), None),
        BenchProtocol::Pusher | BenchProtocol::CentrifugoProtobuf => {
            unreachable!("refused by run_fanout")
        }
    };
    let limit = Duration::from_secs_f64(cfg.connect_timeout);
    let end = tokio::time::Instant::from_std(plan.end);
    let mut out = FloodOut::default();
    sleep_until(tokio::time::Instant::from_std(plan.warm_end)).await;
    while Instant::now() < plan.end {
        let connected = async {
            let mut conn =
                RawConn::connect_within(limit, target, path, ConnectOpts::default(), mask).await?;
            if !greeting.is_empty() {
                tokio::time::timeout(limit, centrifugo::greet(&mut conn, &greeting, mask))
                    .await
                    .map_err(|_| anyhow!("no answer to connect in time"))??;
            }
            anyhow::Ok(conn)
        };
        let mut conn = match connected.await {
            Ok(c) => c,
            Err(e) => {
                out.refused += 1;
                out.first_refusal.get_or_insert_with(|| format!("{e:#}"));
                // Refused (a per-address limit, say): try again shortly.
                let retry = tokio::time::Instant::now() + Duration::from_millis(50);
                sleep_until(retry.min(end)).await;
                continue;
            }
        };
        let started = Instant::now();
        let mut queued = 0u64;
        let closed = loop {
            while conn.pending_out() < FLOOD_QUEUE {
                conn.queue(&frame);
                queued += 1;
            }
            let step = tokio::select! {
                r = conn.pump(64 * 1024) => Some(r),
                _ = sleep_until(end) => None,
            };
            match step {
                None => break None,
                Some(Err(_)) => break Some(None),
                Some(Ok(())) => {}
            }
            let mut code = None;
            loop {
                match conn.next() {
                    Ok(Some(Incoming::Close(c))) => {
                        code = Some(c);
                        break;
                    }
                    Ok(Some(Incoming::Data { .. })) => {}
                    Ok(None) => break,
                    Err(_) => {
                        code = Some(None);
                        break;
                    }
                }
            }
            if code.is_some() {
                break code;
            }
        };
        let unwritten = conn.pending_out().div_ceil(frame.len()) as u64;
        out.conns.push(FloodConn {
            sent: queued.saturating_sub(unwritten),
            secs: started.elapsed().as_secs_f64(),
            closed,
        });
        if closed.is_none() {
            conn.queue_close(1000);
            conn.try_flush();
        }
        // One client: once the server closed it, the flood is over.
        break;
    }
    out
}

/// Per-subscriber sequence bookkeeping.
struct Tracker {
    expected: Vec<u64>,
    missing: Vec<HashSet<u64>>,
    unique: u64,
    duplicates: u64,
    reordered: u64,
}

impl Tracker {
    fn new(pubs: usize) -> Tracker {
        Tracker {
            expected: vec![0; pubs],
            missing: (0..pubs).map(|_| HashSet::new()).collect(),
            unique: 0,
            duplicates: 0,
            reordered: 0,
        }
    }

    fn see(&mut self, publisher: usize, seq: u64) -> anyhow::Result<()> {
        let exp = &mut self.expected[publisher];
        if seq == *exp {
            *exp += 1;
            self.unique += 1;
        } else if seq > *exp {
            if seq - *exp > 10_000_000 {
                bail!("sequence number {seq} from publisher {publisher} is implausible");
            }
            self.missing[publisher].extend(*exp..seq);
            *exp = seq + 1;
            self.unique += 1;
        } else if self.missing[publisher].remove(&seq) {
            self.reordered += 1;
            self.unique += 1;
        } else {
            self.duplicates += 1;
        }
        Ok(())
    }

    fn complete(&self, shared: &Shared) -> bool {
        self.missing.iter().all(HashSet::is_empty)
            && self
                .expected
                .iter()
                .zip(&shared.sent)
                .all(|(e, s)| *e >= s.load(Ordering::Relaxed))
    }
}

async fn subscriber(
    index: usize,
    mut conn: RawConn,
    cfg: &Cfg,
    plan: Plan,
    shared: &Shared,
    ctl: &Ctl,
    out: &RefCell<ThreadOut>,
) {
    let slow = cfg.is_slow(index);
    let drain_end = plan.end + Duration::from_secs_f64(cfg.drain);
    let ns_of = |t: Instant| (t - shared.base).as_nanos() as u64;
    let (warm_ns, end_ns) = (ns_of(plan.warm_end), ns_of(plan.end));
    let mut tr = Tracker::new(cfg.pubs);
    let mut headers: Vec<[u8; HEADER]> = Vec::with_capacity(1);
    let mut closed = None;
    let mut error = None;
    loop {
        let now = Instant::now();
        if now >= drain_end {
            break;
        }
        if now >= plan.end
            && shared.pubs_done.load(Ordering::Relaxed) == cfg.pubs
            && tr.complete(shared)
        {
            break;
        }
        let in_run = now < plan.end;
        let wake = if in_run {
            plan.end
        } else {
            (now + Duration::from_millis(20)).min(drain_end)
        };
        let max_read = if slow && in_run {
            cfg.slow_read_bytes
        } else {
            usize::MAX
        };
        match timeout_at(tokio::time::Instant::from_std(wake), conn.pump(max_read)).await {
            Err(_) => continue,
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                closed = Some(None);
                break;
            }
            Ok(Err(e)) => {
                error = Some(format!("subscriber {index}: {e}"));
                break;
            }
            Ok(Ok(())) => {}
        }
        let now_ns = shared.base.elapsed().as_nanos() as u64;
        let before = tr.unique;
        let stop = {
            let mut o = out.borrow_mut();
            loop {
                let msg = match conn.next() {
                    Ok(Some(m)) => m,
                    Ok(None) => break false,
                    Err(e) => {
                        error = Some(format!("subscriber {index}: {e:#}"));
                        break true;
                    }
                };
                match msg {
                    Incoming::Close(code) => {
                        closed = Some(code);
                        break true;
                    }
                    Incoming::Data { payload, .. } => {
                        if let Err(e) = headers_in(cfg.protocol, &payload, &mut headers) {
                            error = Some(format!("subscriber {index}: {e:#}"));
                            break true;
                        }
                        let mut failed = false;
                        for h in &headers {
                            let publisher = u32::from_le_bytes(h[..4].try_into().unwrap()) as usize;
                            let seq = u64::from_le_bytes(h[4..12].try_into().unwrap());
                            let sent_ns = u64::from_le_bytes(h[12..20].try_into().unwrap());
                            if publisher == FLOODER_ID as usize && cfg.flooder {
                                o.flood_deliveries += 1;
                                continue;
                            }
                            if publisher >= cfg.pubs {
                                error = Some(format!(
                                    "subscriber {index}: unknown publisher {publisher}"
                                ));
                                failed = true;
                                break;
                            }
                            if let Err(e) = tr.see(publisher, seq) {
                                error = Some(format!("subscriber {index}: {e:#}"));
                                failed = true;
                                break;
                            }
                            // Throughput counts what arrived inside the measured window.
                            let arrived_in_window = now_ns >= warm_ns && now_ns < end_ns;
                            if arrived_in_window {
                                o.measured_deliveries += 1;
                                if !slow {
                                    o.healthy_measured_deliveries += 1;
                                }
                            }
                            // Latency covers every message that arrived after the warm-up and
                            // was sent before the end: a backlog built during the warm-up shows
                            // up as latency rather than disappearing, and messages sent at the
                            // end of the window and delivered while draining are still timed.
                            if !slow && now_ns >= warm_ns && sent_ns < end_ns {
                                record(&mut o.healthy_hist, now_ns.saturating_sub(sent_ns));
                            }
                        }
                        if failed {
                            break true;
                        }
                    }
                }
            }
        };
        if stop {
            break;
        }
        ctl.bump(C_DELIVERED, tr.unique - before);
        if !slow {
            shared.sub_recv[index].store(tr.unique, Ordering::Relaxed);
        }
        if slow && in_run {
            let until = (Instant::now() + cfg.slow_delay).min(plan.end);
            sleep_until(tokio::time::Instant::from_std(until)).await;
        }
    }
    // Whatever happened, this subscriber must no longer hold the publishers back.
    shared.sub_recv[index].store(u64::MAX, Ordering::Relaxed);
    if closed.is_none() {
        conn.queue_close(1000);
        conn.try_flush();
    }
    let mut o = out.borrow_mut();
    if let Some(e) = error {
        o.errors.add(e);
    }
    o.subs.push(SubResult {
        slow,
        missing: tr.missing.iter().map(|m| m.len() as u64).sum(),
        expected: tr.expected,
        unique: tr.unique,
        duplicates: tr.duplicates,
        reordered: tr.reordered,
        closed,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_tells_loss_duplicates_and_reordering_apart() {
        let mut t = Tracker::new(2);
        for seq in [0, 1, 3, 2, 2, 5] {
            t.see(0, seq).unwrap();
        }
        t.see(1, 0).unwrap();
        assert_eq!(t.expected, vec![6, 1]);
        assert_eq!(t.unique, 6);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.reordered, 1);
        // 4 was skipped and never arrived.
        assert_eq!(t.missing[0].len(), 1);
        assert!(t.see(0, u64::MAX / 2).is_err());
    }
}
