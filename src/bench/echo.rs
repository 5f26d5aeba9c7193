//! `bench echo`: every connection sends a message and waits for it to come back, keeping
//! `--inflight` messages outstanding. Against a room server each connection joins its own room
//! `URL/echo-<i>`, where the broadcast to all members (sender included) is an echo.
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail};
use hdrhistogram::Histogram;
use tokio::time::timeout_at;

use super::conn::{encode_frame, mask_for, ConnectOpts, Incoming, RawConn};
use super::proc::{status_bytes, CpuWindow};
use super::report::{new_histogram, record, round3, BenchError, Progress, Summary};
use super::runner::{self, ConnSpec, Ctl, Errors, Plan};
use super::target::Target;
use super::EchoArgs;
use crate::websocket::frame::OpCode;

/// Progress counter: round trips completed.
const C_RT: usize = 0;

/// What one worker thread measured.
struct ThreadStats {
    round_trips: u64,
    verified: u64,
    hist: Histogram<u64>,
    errors: Errors,
}

/// A payload of `size` bytes: `a..z` repeated (valid UTF-8, so text servers validate it all).
pub(crate) fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

pub(crate) fn run(args: EchoArgs) -> Result<Summary, BenchError> {
    let target = Target::parse(&args.common.url)?;
    if args.conns == 0 {
        return Err(BenchError::Usage("--conns must be at least 1".into()));
    }
    if !(args.secs > 0.0 && args.secs <= 3600.0 && (0.0..=600.0).contains(&args.warmup)) {
        return Err(BenchError::Usage(
            "--secs must be in (0, 3600] and --warmup in [0, 600]".into(),
        ));
    }
    super::proc::raise_nofile_limit();
    let threads = args.common.threads as usize;
    let ctl = Ctl::new();
    let handles = {
        let (ctl, target, args) = (ctl.clone(), target.clone(), args.clone());
        runner::spawn_workers(threads, move |t| worker(t, threads, args, target, ctl))
    };
    if let Err(e) = runner::wait_ready(&ctl, args.conns, args.common.connect_timeout) {
        let _ = runner::join_workers(handles);
        return Err(e);
    }

    let plan = Plan::starting_now(args.warmup, args.secs);
    ctl.go(plan);
    let progress = Progress::new();
    let mut last = (0u64, plan.start);
    let mut tick = |elapsed| {
        let rt = ctl.counter(C_RT);
        let now = Instant::now();
        let rate = (rt - last.0) as f64 / (now - last.1).as_secs_f64();
        last = (rt, now);
        let phase = if now < plan.warm_end {
            "warm-up"
        } else {
            "measuring"
        };
        progress.show(elapsed, &format!("{phase}: {rate:.0} round trips/s"));
    };
    runner::sleep_with_progress(plan.start, plan.warm_end, &mut tick);
    let cpu = CpuWindow::start(args.common.pid());
    runner::sleep_with_progress(plan.start, plan.end, &mut tick);
    let (server_cpu, gen_cpu) = cpu.stop();
    progress.finish();
    let results = runner::join_workers(handles)?;

    let mut hist = new_histogram();
    let (mut rts, mut verified, mut errors) = (0u64, 0u64, Errors::default());
    for r in results {
        rts += r.round_trips;
        verified += r.verified;
        hist.add(&r.hist).map_err(|e| anyhow!("histogram: {e}"))?;
        errors.merge(r.errors);
    }
    let secs = plan.measured_secs();
    let mut s = Summary::new("echo");
    s.add("url", args.common.url.as_str(), "");
    s.add("conns", args.conns as u64, "");
    s.add("size", args.size as u64, "B");
    s.add("inflight", args.inflight as u64, "");
    s.add("binary", args.binary, "");
    s.add("secs", round3(secs), "s");
    s.add("round_trips", rts, "");
    s.add("round_trips_per_sec", round3(rts as f64 / secs), "/s");
    s.add("verified_conns", verified, "");
    s.add_latency("latency", &hist, false);
    add_server_figures(&mut s, args.common.pid(), server_cpu, rts, "round_trip");
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

/// Server CPU seconds, CPU µs per `unit` and memory, when the PID is known.
pub(crate) fn add_server_figures(
    s: &mut Summary,
    pid: Option<u32>,
    server_cpu: Option<f64>,
    count: u64,
    unit: &'static str,
) {
    if pid.is_none() {
        return;
    }
    s.add("server_cpu_s", server_cpu.map(round3), "s");
    let per = server_cpu
        .filter(|_| count > 0)
        .map(|c| round3(c * 1e6 / count as f64));
    let key = match unit {
        "round_trip" => "server_cpu_us_per_round_trip",
        _ => "server_cpu_us_per_delivery",
    };
    s.add(key, per, "µs");
    let mb = |b: Option<u64>| b.map(|b| round3(b as f64 / (1024.0 * 1024.0)));
    if let Some(pid) = pid {
        s.add("server_rss_mb", mb(status_bytes(pid, "VmRSS")), "MiB");
        s.add("server_peak_rss_mb", mb(status_bytes(pid, "VmHWM")), "MiB");
    }
}

async fn worker(
    t: usize,
    threads: usize,
    args: EchoArgs,
    target: Target,
    ctl: Arc<Ctl>,
) -> anyhow::Result<ThreadStats> {
    let specs = (0..args.conns)
        .filter(|i| i % threads == t)
        .map(|i| ConnSpec {
            index: i,
            path: if args.one_path {
                target.path_and_query("")
            } else {
                target.sub_path_and_query(&format!("echo-{i}"), "")
            },
            opts: ConnectOpts::default(),
            greeting: Default::default(),
        })
        .collect();
    let conns = runner::connect_all(&target, specs, 64, args.common.connect_timeout, &ctl).await?;
    let Some(plan) = ctl.wait_go().await else {
        bail!("run aborted");
    };
    let stats = Rc::new(RefCell::new(ThreadStats {
        round_trips: 0,
        verified: 0,
        hist: new_histogram(),
        errors: Errors::default(),
    }));
    let body = payload(args.size);
    let opcode = if args.binary {
        OpCode::Binary
    } else {
        OpCode::Text
    };
    let mut tasks = Vec::with_capacity(conns.len());
    for (index, conn) in conns {
        let frame = encode_frame(opcode, &body, mask_for(index));
        let (stats, ctl, body) = (stats.clone(), ctl.clone(), body.clone());
        let inflight = args.inflight as usize;
        tasks.push(tokio::task::spawn_local(async move {
            let r = echo_loop(
                conn,
                &frame,
                &body,
                args.binary,
                inflight,
                plan,
                &stats,
                &ctl,
            )
            .await;
            if let Err(e) = r {
                stats
                    .borrow_mut()
                    .errors
                    .add(format!("connection {index}: {e:#}"));
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| anyhow!("echo task: {e}"))?;
    }
    Rc::try_unwrap(stats)
        .map(RefCell::into_inner)
        .map_err(|_| anyhow!("statistics still shared"))
}

#[allow(clippy::too_many_arguments)]
async fn echo_loop(
    mut conn: RawConn,
    frame: &[u8],
    body: &[u8],
    binary: bool,
    inflight: usize,
    plan: Plan,
    stats: &RefCell<ThreadStats>,
    ctl: &Ctl,
) -> anyhow::Result<()> {
    let end = tokio::time::Instant::from_std(plan.end);
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(inflight);
    let mut verified = false;
    let mut now = Instant::now();
    loop {
        if now >= plan.end {
            break;
        }
        while sent_at.len() < inflight {
            conn.queue(frame);
            sent_at.push_back(now);
        }
        match timeout_at(end, conn.pump(usize::MAX)).await {
            Err(_) => break,
            Ok(r) => r?,
        }
        now = Instant::now();
        let measuring = now >= plan.warm_end && now < plan.end;
        let (mut done, mut received) = (0u64, 0u64);
        let mut st = stats.borrow_mut();
        while let Some(msg) = conn.next()? {
            match msg {
                Incoming::Data { binary: b, payload } => {
                    if !verified {
                        if b != binary || payload.as_ref() != body {
                            bail!(
                                "the first echo differs from what was sent ({} bytes, binary={b})",
                                payload.len()
                            );
                        }
                        verified = true;
                        st.verified += 1;
                    }
                    let Some(t0) = sent_at.pop_front() else {
                        bail!("received a message that was not sent (a welcome message?)");
                    };
                    received += 1;
                    if measuring {
                        done += 1;
                        record(&mut st.hist, (now - t0).as_nanos() as u64);
                    }
                }
                Incoming::Close(code) => bail!("server closed the connection (code {code:?})"),
            }
        }
        st.round_trips += done;
        drop(st);
        ctl.bump(C_RT, received);
    }
    conn.queue_close(1000);
    conn.try_flush();
    Ok(())
}
