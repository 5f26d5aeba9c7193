//! The run skeleton shared by the scenarios: worker threads with one current-thread runtime
//! each, a connect phase, a common start signal, and the main thread's timekeeping (progress
//! line, CPU samples at the edges of the measured window).
//!
//! Keeping each worker on its own current-thread runtime lets per-connection tasks share
//! per-thread statistics through `Rc<RefCell<..>>` with no locking; only the few counters read
//! by the progress line are atomics.
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use tokio::sync::{watch, Semaphore};

use super::conn::{ConnectOpts, RawConn};
use super::report::{BenchError, Progress};
use super::target::Target;

/// Times of one run, all on the same monotonic clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Load starts.
    pub start: Instant,
    /// Measurement starts (end of warm-up).
    pub warm_end: Instant,
    /// Measurement ends; load stops.
    pub end: Instant,
}

impl Plan {
    /// A plan starting now.
    pub fn starting_now(warmup: f64, secs: f64) -> Plan {
        let start = Instant::now();
        let warm_end = start + Duration::from_secs_f64(warmup.max(0.0));
        Plan {
            start,
            warm_end,
            end: warm_end + Duration::from_secs_f64(secs.max(0.0)),
        }
    }

    /// The measured window in seconds.
    pub fn measured_secs(&self) -> f64 {
        (self.end - self.warm_end).as_secs_f64()
    }
}

/// Coordination between the main thread and the workers.
pub(crate) struct Ctl {
    /// Connections established so far (all workers).
    pub ready: AtomicUsize,
    /// The first fatal error of any worker.
    error: Mutex<Option<String>>,
    go: watch::Sender<Option<Option<Plan>>>,
    /// Progress counters, meaning chosen by the scenario.
    pub counters: [AtomicU64; 4],
}

impl Ctl {
    pub fn new() -> Arc<Ctl> {
        Arc::new(Ctl {
            ready: AtomicUsize::new(0),
            error: Mutex::new(None),
            go: watch::channel(None).0,
            counters: Default::default(),
        })
    }

    /// Record a fatal error (the first one wins) and make waiting workers give up.
    pub fn fail(&self, msg: String) {
        let mut e = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            *e = Some(msg);
        }
        drop(e);
        self.go.send_replace(Some(None));
    }

    /// The first fatal error, if any.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Start the load with `plan`.
    pub fn go(&self, plan: Plan) {
        self.go.send_replace(Some(Some(plan)));
    }

    /// Wait for the start signal; `None` when the run was aborted.
    pub async fn wait_go(&self) -> Option<Plan> {
        let mut rx = self.go.subscribe();
        let v = rx.wait_for(|v| v.is_some()).await.ok()?;
        (*v).flatten()
    }

    /// Add to progress counter `i`.
    #[inline]
    pub fn bump(&self, i: usize, n: u64) {
        self.counters[i].fetch_add(n, Ordering::Relaxed);
    }

    /// Read progress counter `i`.
    pub fn counter(&self, i: usize) -> u64 {
        self.counters[i].load(Ordering::Relaxed)
    }
}

/// Start `threads` workers; worker `t` runs `f(t)` on its own current-thread runtime inside a
/// `LocalSet` (so it may `spawn_local` non-`Send` tasks).
pub(crate) fn spawn_workers<T, F, Fut>(threads: usize, f: F) -> Vec<JoinHandle<anyhow::Result<T>>>
where
    T: Send + 'static,
    F: FnOnce(usize) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = anyhow::Result<T>> + 'static,
{
    (0..threads)
        .map(|t| {
            let f = f.clone();
            std::thread::Builder::new()
                .name(format!("bench-{t}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot start a runtime")?;
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, f(t))
                })
                .expect("spawn a worker thread")
        })
        .collect()
}

/// Join all workers; the first error wins.
pub(crate) fn join_workers<T>(
    handles: Vec<JoinHandle<anyhow::Result<T>>>,
) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::with_capacity(handles.len());
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(anyhow!("a worker thread panicked"));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Main thread: wait until `expected` connections are up, a worker failed, or `timeout`.
pub(crate) fn wait_ready(ctl: &Ctl, expected: usize, timeout: f64) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs_f64(timeout);
    let progress = Progress::new();
    let t0 = Instant::now();
    let mut last_show = t0;
    loop {
        if let Some(e) = ctl.error() {
            progress.finish();
            return Err(BenchError::Failed(anyhow!(e)));
        }
        let ready = ctl.ready.load(Ordering::Relaxed);
        if ready >= expected {
            progress.finish();
            return Ok(());
        }
        if Instant::now() >= deadline {
            ctl.fail(format!(
                "only {ready} of {expected} connections were established within {timeout} s"
            ));
            progress.finish();
            return Err(BenchError::Failed(anyhow!(ctl.error().unwrap_or_default())));
        }
        if last_show.elapsed() >= Duration::from_secs(1) {
            last_show = Instant::now();
            progress.show(t0.elapsed(), &format!("connecting {ready}/{expected}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Main thread: sleep until `until`, calling `tick(elapsed_since_start)` once a second.
pub(crate) fn sleep_with_progress(start: Instant, until: Instant, tick: &mut dyn FnMut(Duration)) {
    let mut next = Instant::now() + Duration::from_secs(1);
    loop {
        let now = Instant::now();
        if now >= until {
            return;
        }
        if now >= next {
            tick(now - start);
            next += Duration::from_secs(1);
        }
        std::thread::sleep((until.min(next)).saturating_duration_since(Instant::now()));
    }
}

/// One connection to open: index, request target and socket options.
pub(crate) struct ConnSpec {
    pub index: usize,
    pub path: String,
    pub opts: ConnectOpts,
    /// What the connection sends (and waits for) before it counts as ready.
    pub greeting: Greeting,
}

/// A connection's protocol handshake after the WebSocket one.
#[derive(Debug, Clone, Default)]
pub(crate) enum Greeting {
    /// Nothing (raw rooms).
    #[default]
    None,
    /// Centrifugo commands, each answered.
    Centrifugo(Vec<String>),
    /// Centrifugo commands in Protobuf (one binary message each), each answered.
    CentrifugoProtobuf(Vec<Vec<u8>>),
    /// Pusher: `connection_established`, then subscribe to this channel.
    Pusher(String),
}

/// Open all `specs` from this worker, at most `concurrency` handshakes at a time, bumping
/// `ctl.ready` for each, each bounded by `timeout` seconds. Fails (and aborts the run) on the
/// first failed connection.
pub(crate) async fn connect_all(
    target: &Target,
    specs: Vec<ConnSpec>,
    concurrency: usize,
    timeout: f64,
    ctl: &Arc<Ctl>,
) -> anyhow::Result<Vec<(usize, RawConn)>> {
    let limit = Duration::from_secs_f64(timeout);
    let sem = Rc::new(Semaphore::new(concurrency.max(1)));
    let mut handles = Vec::with_capacity(specs.len());
    for spec in specs {
        let sem = sem.clone();
        let target = target.clone();
        let ctl = ctl.clone();
        handles.push(tokio::task::spawn_local(async move {
            let _permit = sem.acquire().await.expect("semaphore open");
            let mask = super::conn::mask_for(spec.index);
            let mut r = RawConn::connect_within(limit, &target, &spec.path, spec.opts, mask).await;
            if let Ok(conn) = &mut r {
                let greeted = match &spec.greeting {
                    Greeting::None => Ok(Ok(())),
                    Greeting::Centrifugo(commands) => {
                        tokio::time::timeout(limit, super::centrifugo::greet(conn, commands, mask))
                            .await
                    }
                    Greeting::CentrifugoProtobuf(commands) => {
                        tokio::time::timeout(
                            limit,
                            super::centrifugo_protobuf::greet(conn, commands, mask),
                        )
                        .await
                    }
                    Greeting::Pusher(channel) => {
                        tokio::time::timeout(limit, super::pusher::greet(conn, channel)).await
                    }
                };
                match greeted {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => r = Err(e.context("protocol connect/subscribe")),
                    Err(_) => r = Err(anyhow!("no answer to connect/subscribe in time")),
                }
            }
            match r {
                Ok(c) => {
                    ctl.ready.fetch_add(1, Ordering::Relaxed);
                    Ok((spec.index, c))
                }
                Err(e) => {
                    let msg = format!("connection {}: {e:#}", spec.index);
                    ctl.fail(msg.clone());
                    Err(anyhow!(msg))
                }
            }
        }));
    }
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.map_err(|e| anyhow!("connect task: {e}"))??);
    }
    Ok(out)
}

/// Per-thread statistic: the first error seen and how many there were.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    pub count: u64,
    pub first: Option<String>,
}

impl Errors {
    pub fn add(&mut self, msg: String) {
        self.count += 1;
        self.first.get_or_insert(msg);
    }

    pub fn merge(&mut self, other: Errors) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}
