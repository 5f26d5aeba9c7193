//! `bench conns`: open many idle connections at a given rate, spread over several loopback
//! source addresses (so one source address does not run out of ephemeral ports), hold them,
//! and report the handshake rate and the server's memory per connection.
use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use hdrhistogram::Histogram;
use tokio::sync::{watch, Semaphore};

use super::centrifugo;
use super::conn::{mask_for, ConnectOpts, Incoming, RawConn};
use super::proc::{raise_nofile_limit, status_bytes, CpuWindow};
use super::pusher;
use super::report::{new_histogram, record, round3, BenchError, Progress, Summary};
use super::runner::{self, Ctl, Errors};
use super::target::{parse_src_ips, Target};
use super::{ConnsArgs, ConnsProtocol, Rate};

/// Progress counters: handshakes done, attempts finished (done or failed).
const C_OK: usize = 0;
const C_FINISHED: usize = 1;

/// What one worker thread saw.
struct ThreadOut {
    hist: Histogram<u64>,
    errors: Errors,
    /// Connections the server closed while they were held.
    dropped: u64,
}

pub(crate) fn run(args: ConnsArgs) -> Result<Summary, BenchError> {
    let target = Target::parse(&args.common.url)?;
    let ips = parse_src_ips(&args.src_ips)?;
    if args.n == 0 || args.concurrency == 0 {
        return Err(BenchError::Usage(
            "--n and --concurrency must be at least 1".into(),
        ));
    }
    if !(0.0..=3600.0).contains(&args.hold) {
        return Err(BenchError::Usage("--hold must be in [0, 3600]".into()));
    }
    let limit = raise_nofile_limit();
    if (args.n as u64) + 64 > limit {
        return Err(BenchError::Usage(format!(
            "the open-files limit is {limit}, too low for {} connections (raise `ulimit -Hn`)",
            args.n
        )));
    }
    let pid = args.common.pid();
    let rss_before = pid.and_then(|p| status_bytes(p, "VmRSS"));
    let threads = args.common.threads as usize;
    let ctl = Ctl::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let last_ok_ns = Arc::new(AtomicU64::new(0));
    let cpu = CpuWindow::start(pid);
    let handles = {
        let (ctl, target, args, last_ok_ns) = (
            ctl.clone(),
            target.clone(),
            args.clone(),
            last_ok_ns.clone(),
        );
        runner::spawn_workers(threads, move |t| {
            worker(
                t, threads, args, target, ips, start, ctl, stop_rx, last_ok_ns,
            )
        })
    };

    // Ramp: wait until every attempt has finished (bounded).
    let expected_ramp = match args.ramp {
        Rate::PerSec(r) => args.n as f64 / r,
        Rate::Max => 0.0,
    };
    let ramp_deadline =
        start + Duration::from_secs_f64(expected_ramp + args.common.connect_timeout);
    let progress = Progress::new();
    let mut last = (0u64, start);
    while ctl.counter(C_FINISHED) < args.n as u64 && Instant::now() < ramp_deadline {
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        if now - last.1 >= Duration::from_secs(1) {
            let ok = ctl.counter(C_OK);
            let rate = (ok - last.0) as f64 / (now - last.1).as_secs_f64();
            last = (ok, now);
            progress.show(
                now - start,
                &format!("ramp: {ok}/{} up, {rate:.0} handshakes/s", args.n),
            );
        }
    }
    let ok = ctl.counter(C_OK);
    let ramp_secs = last_ok_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let (server_cpu_ramp, _) = cpu.stop();

    // Hold: let the server settle, sample its memory in the middle of the hold.
    let hold_start = Instant::now();
    let hold_end = hold_start + Duration::from_secs_f64(args.hold);
    let sample_at = hold_start + Duration::from_secs_f64(args.hold / 2.0);
    let mut tick = |elapsed| {
        progress.show(
            elapsed,
            &format!("holding {} connections", ctl.counter(C_OK)),
        );
    };
    runner::sleep_with_progress(start, sample_at, &mut tick);
    let rss_hold = pid.and_then(|p| status_bytes(p, "VmRSS"));
    let hwm = pid.and_then(|p| status_bytes(p, "VmHWM"));
    runner::sleep_with_progress(start, hold_end, &mut tick);
    let _ = stop_tx.send(true);
    progress.finish();
    let (_, gen_cpu) = cpu.stop();
    let results = runner::join_workers(handles)?;

    let mut hist = new_histogram();
    let mut errors = Errors::default();
    let mut dropped = 0;
    for r in results {
        hist.add(&r.hist).map_err(|e| anyhow!("histogram: {e}"))?;
        errors.merge(r.errors);
        dropped += r.dropped;
    }
    let mut s = Summary::new("conns");
    s.add("url", args.common.url.as_str(), "");
    s.add("n", args.n as u64, "");
    s.add("src_ips", ips_len(&args.src_ips), "addresses");
    s.add(
        "protocol",
        format!("{:?}", args.protocol).to_lowercase(),
        "",
    );
    s.add("rooms", args.rooms as u64, "");
    s.add("deflate_offered", args.deflate, "");
    s.add("send_one", args.send_one, "");
    s.add("ramp", args.ramp.to_string(), "/s");
    s.add("established", ok, "");
    s.add("failed", errors.count, "");
    s.add("ramp_secs", round3(ramp_secs), "s");
    s.add(
        "handshakes_per_sec",
        (ramp_secs > 0.0).then(|| round3(ok as f64 / ramp_secs)),
        "/s",
    );
    s.add_latency("latency", &hist, false);
    s.add("dropped_during_hold", dropped, "");
    if pid.is_some() {
        let mb = |b: Option<u64>| b.map(|b| round3(b as f64 / (1024.0 * 1024.0)));
        s.add("server_cpu_ramp_s", server_cpu_ramp.map(round3), "s");
        s.add(
            "server_cpu_us_per_handshake",
            server_cpu_ramp
                .filter(|_| ok > 0)
                .map(|c| round3(c * 1e6 / ok as f64)),
            "µs",
        );
        s.add("server_rss_before_mb", mb(rss_before), "MiB");
        s.add("server_rss_hold_mb", mb(rss_hold), "MiB");
        s.add("server_peak_rss_mb", mb(hwm), "MiB");
        let per = match (rss_before, rss_hold) {
            (Some(a), Some(b)) if ok > 0 => {
                Some(round3(b.saturating_sub(a) as f64 / ok as f64 / 1024.0))
            }
            _ => None,
        };
        s.add("server_rss_per_conn_kb", per, "KiB");
    }
    s.add("generator_cpu_s", gen_cpu.map(round3), "s");
    if let Some(e) = errors.first {
        s.add("first_error", e, "");
    }
    if errors.count > 0 {
        s.set_failed();
    }
    Ok(s)
}

/// The message `--send-one` sends: 106 bytes of JSON-like text, about what a chat client
/// sends (compressible, as real messages are).
fn one_message(i: usize) -> Vec<u8> {
    let mut m = format!(
        "{{\"type\":\"chat\",\"from\":\"user-{i:06}\",\"text\":\"hello from a benchmark connection\",\"seq\":1"
    )
    .into_bytes();
    m.resize(105, b' ');
    m.push(b'}');
    m
}

/// Where Socket.IO clients open an Engine.IO v4 WebSocket session.
const SOCKETIO_PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// What a connection of `protocol` sends after its WebSocket handshake to join `room`, and
/// waits for: nothing for raw rooms (the path is the room); Centrifugo `connect` and
/// `subscribe`; Socket.IO the Engine.IO open packet, `CONNECT` to the default namespace, and
/// the `subscribe` event with an ack.
async fn session(
    conn: &mut RawConn,
    protocol: ConnsProtocol,
    room: &str,
    token: Option<&str>,
    mask: [u8; 4],
) -> anyhow::Result<()> {
    match protocol {
        ConnsProtocol::Raw => Ok(()),
        ConnsProtocol::Pusher => pusher::greet(conn, room).await,
        ConnsProtocol::Centrifugo => {
            centrifugo::greet(conn, &centrifugo::greeting(token, Some(room)), mask).await
        }
        ConnsProtocol::Socketio => {
            // `0{...}`: the Engine.IO open packet.
            let open = next_text(conn).await?;
            if !open.starts_with('0') {
                anyhow::bail!("expected the Engine.IO open packet, got {open:?}");
            }
            let connect = match token {
                Some(t) => format!("40{}", serde_json::json!({ "token": t })),
                None => "40".to_string(),
            };
            conn.queue_text(connect.as_bytes())?;
            // `40{"sid":...}`: connected to the default namespace.
            let connected = next_text(conn).await?;
            if !connected.starts_with("40") {
                anyhow::bail!("the namespace refused the connection: {connected:?}");
            }
            let subscribe = format!(r#"421["subscribe",{}]"#, serde_json::json!(room));
            conn.queue_text(subscribe.as_bytes())?;
            loop {
                let packet = next_text(conn).await?;
                if let Some(ack) = packet.strip_prefix("431") {
                    if ack.contains("\"error\"") {
                        anyhow::bail!("subscribe refused: {ack}");
                    }
                    return Ok(());
                }
                if packet == "2" {
                    conn.queue_text(b"3")?;
                }
            }
        }
    }
}

/// The next text message from the server (pings are answered by [`RawConn`]).
async fn next_text(conn: &mut RawConn) -> anyhow::Result<String> {
    loop {
        match conn.next()? {
            Some(Incoming::Data { payload, .. }) => {
                return Ok(String::from_utf8_lossy(&payload).into_owned())
            }
            Some(Incoming::Close(code)) => anyhow::bail!("closed by the server (code {code:?})"),
            None => conn.pump(64 * 1024).await?,
        }
    }
}

/// The answer a held connection owes to a message of its protocol's heartbeat, if any:
/// Centrifugo's ping `{}` is answered with `{}`, Engine.IO's `2` with `3`, `pusher:ping`
/// with `pusher:pong`.
fn pong_for(protocol: ConnsProtocol, payload: &[u8]) -> Option<&'static [u8]> {
    match (protocol, payload) {
        (ConnsProtocol::Centrifugo, b"{}") => Some(b"{}"),
        (ConnsProtocol::Socketio, b"2") => Some(b"3"),
        (ConnsProtocol::Pusher, ping) => pusher::pong_for(ping),
        _ => None,
    }
}

fn ips_len(spec: &str) -> u64 {
    parse_src_ips(spec).map(|v| v.len() as u64).unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    t: usize,
    threads: usize,
    args: ConnsArgs,
    target: Target,
    ips: Vec<IpAddr>,
    start: Instant,
    ctl: Arc<Ctl>,
    stop: watch::Receiver<bool>,
    last_ok_ns: Arc<AtomicU64>,
) -> anyhow::Result<ThreadOut> {
    let out = Rc::new(RefCell::new(ThreadOut {
        hist: new_histogram(),
        errors: Errors::default(),
        dropped: 0,
    }));
    let sem = Rc::new(Semaphore::new((args.concurrency / threads).max(1)));
    let rooms: Vec<String> = match args.protocol {
        ConnsProtocol::Raw if args.rooms > 1 => (0..args.rooms)
            .map(|r| target.sub_path_and_query(&r.to_string(), ""))
            .collect(),
        ConnsProtocol::Raw => vec![target.path_and_query("")],
        ConnsProtocol::Centrifugo | ConnsProtocol::Socketio | ConnsProtocol::Pusher => {
            let base = match target.path.trim_start_matches('/') {
                "" => "bench".to_string(),
                p => p.to_string(),
            };
            if args.rooms > 1 {
                (0..args.rooms).map(|r| format!("{base}-{r}")).collect()
            } else {
                vec![base]
            }
        }
    };
    let protocol = args.protocol;
    let app_key = args.app_key.clone();
    let token: Option<Rc<str>> = args.token.as_deref().map(Rc::from);
    let limit = Duration::from_secs_f64(args.common.connect_timeout);
    let (deflate, send_one) = (args.deflate, args.send_one);
    let mut tasks = Vec::new();
    for i in (0..args.n).filter(|i| i % threads == t) {
        let slot = match args.ramp {
            Rate::PerSec(r) => start + Duration::from_secs_f64(i as f64 / r),
            Rate::Max => start,
        };
        let (sem, out, ctl, target, room, last_ok_ns, token) = (
            sem.clone(),
            out.clone(),
            ctl.clone(),
            target.clone(),
            rooms[i % rooms.len()].clone(),
            last_ok_ns.clone(),
            token.clone(),
        );
        let path = match protocol {
            ConnsProtocol::Raw => room.clone(),
            ConnsProtocol::Centrifugo => centrifugo::ENDPOINT.to_string(),
            ConnsProtocol::Socketio => SOCKETIO_PATH.to_string(),
            ConnsProtocol::Pusher => pusher::endpoint(&app_key),
        };
        let mut stop = stop.clone();
        let bind = Some(ips[i % ips.len()]);
        tasks.push(tokio::task::spawn_local(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(slot)).await;
            let permit = sem.acquire().await.expect("semaphore open");
            let t0 = Instant::now();
            let r = tokio::time::timeout(limit, async {
                let mut conn = RawConn::connect(
                    &target,
                    &path,
                    ConnectOpts {
                        bind,
                        recv_buffer: None,
                        deflate,
                    },
                    mask_for(i),
                )
                .await?;
                session(&mut conn, protocol, &room, token.as_deref(), mask_for(i)).await?;
                anyhow::Ok(conn)
            })
            .await
            .unwrap_or_else(|_| {
                Err(anyhow!(
                    "no session with {} within {:.1} s",
                    target.addr,
                    limit.as_secs_f64()
                ))
            });
            drop(permit);
            ctl.bump(C_FINISHED, 1);
            let mut conn = match r {
                Ok(c) => c,
                Err(e) => {
                    out.borrow_mut()
                        .errors
                        .add(format!("connection {i}: {e:#}"));
                    return;
                }
            };
            let done = Instant::now();
            record(&mut out.borrow_mut().hist, (done - t0).as_nanos() as u64);
            ctl.bump(C_OK, 1);
            last_ok_ns.fetch_max((done - start).as_nanos() as u64, Ordering::Relaxed);
            if send_one {
                if let Err(e) = conn.queue_text(&one_message(i)) {
                    out.borrow_mut()
                        .errors
                        .add(format!("connection {i}: {e:#}"));
                    return;
                }
            }
            // Hold: answer pings, notice a close, until told to stop.
            loop {
                tokio::select! {
                    r = conn.pump(1024) => {
                        let closed = match r {
                            Err(_) => true,
                            Ok(()) => loop {
                                match conn.next() {
                                    Ok(Some(Incoming::Close(_))) | Err(_) => break true,
                                    Ok(Some(Incoming::Data { payload, .. })) => {
                                        if let Some(pong) = pong_for(protocol, &payload) {
                                            if conn.queue_text(pong).is_err() {
                                                break true;
                                            }
                                        }
                                    }
                                    Ok(None) => break false,
                                }
                            },
                        };
                        if closed {
                            out.borrow_mut().dropped += 1;
                            return;
                        }
                    }
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            conn.queue_close(1000);
            conn.try_flush();
        }));
    }
    for task in tasks {
        task.await.map_err(|e| anyhow!("connection task: {e}"))?;
    }
    Rc::try_unwrap(out)
        .map(RefCell::into_inner)
        .map_err(|_| anyhow!("statistics still shared"))
}
