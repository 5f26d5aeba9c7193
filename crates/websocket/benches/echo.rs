//! Echo server CPU cost: switchboard-websocket against tokio-websockets.
//!
//! Each server runs on its own current-thread tokio runtime in a dedicated thread, so all of
//! its work (socket I/O, framing, masking, UTF-8 checks) is charged to that thread; we read
//! the thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`) before and after the load. The same
//! load generator (tokio-websockets clients on another runtime) drives both servers:
//!
//! * `small`: 100 connections × 200 sequential round trips of a 64-byte text message;
//! * `large`: 50 connections × 100 round trips of a 16 KiB binary message.
//!
//! Handshakes happen before the measured window. Ours and theirs alternate for 3 rounds and
//! the medians of server CPU time per round trip are printed with their ratio.
//!
//! ```text
//! cargo bench -p switchboard-websocket --bench echo
//! ```
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_core::Stream;
use futures_sink::Sink;
use switchboard_websocket::extensions::DeflatePolicy;
use switchboard_websocket::upgrade::{accept, UpgradeOptions};
use switchboard_websocket::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_websockets as tws;

const ROUNDS: usize = 3;

#[derive(Clone, Copy)]
struct Load {
    name: &'static str,
    connections: usize,
    round_trips: usize,
    size: usize,
    text: bool,
}

const LOADS: [Load; 2] = [
    Load {
        name: "small (100 conns x 64 B text)",
        connections: 100,
        round_trips: 200,
        size: 64,
        text: true,
    },
    Load {
        name: "large (50 conns x 16 KiB binary)",
        connections: 50,
        round_trips: 100,
        size: 16 * 1024,
        text: false,
    },
];

#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Ours,
    Theirs,
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

async fn echo_ours(tcp: TcpStream) {
    let options = UpgradeOptions {
        deflate: DeflatePolicy::disabled(),
        ..UpgradeOptions::default()
    };
    let (mut ws, _) = accept(tcp, &options).await.expect("handshake");
    while let Some(Ok(m)) = ws.next().await {
        if matches!(m, Message::Text(_) | Message::Binary(_)) && ws.send(m).await.is_err() {
            break;
        }
    }
}

async fn echo_theirs(tcp: TcpStream) {
    let (_, mut ws) = tws::ServerBuilder::new()
        .limits(tws::Limits::unlimited())
        .accept(tcp)
        .await
        .expect("handshake");
    while let Some(Ok(m)) = poll_fn(|cx| Pin::new(&mut ws).poll_next(cx)).await {
        if !(m.is_text() || m.is_binary()) {
            continue;
        }
        let sent = async {
            poll_fn(|cx| Pin::new(&mut ws).poll_ready(cx)).await?;
            Pin::new(&mut ws).start_send(m)?;
            poll_fn(|cx| Pin::new(&mut ws).poll_flush(cx)).await
        };
        if sent.await.is_err() {
            break;
        }
    }
}

/// Run one server thread; returns its CPU time between `start` and the end of all connections.
fn spawn_server(
    which: Impl,
    connections: usize,
    listener: std::net::TcpListener,
    ready: oneshot::Sender<()>,
    start: oneshot::Receiver<()>,
) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            // Each task does its handshake first; the clients finish all handshakes before
            // they send `start`, so handshakes fall outside the measured window.
            let mut tasks = Vec::with_capacity(connections);
            for _ in 0..connections {
                let (tcp, _) = listener.accept().await.unwrap();
                tcp.set_nodelay(true).unwrap();
                tasks.push(tokio::spawn(async move {
                    match which {
                        Impl::Ours => echo_ours(tcp).await,
                        Impl::Theirs => echo_theirs(tcp).await,
                    }
                }));
            }
            ready.send(()).unwrap();
            start.await.unwrap();
            let t0 = thread_cpu();
            for t in tasks {
                t.await.unwrap();
            }
            thread_cpu() - t0
        })
    })
}

async fn client_connection(addr: SocketAddr) -> tws::WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (ws, _) = tws::ClientBuilder::new()
        .uri(&format!("ws://{addr}/"))
        .unwrap()
        .limits(tws::Limits::unlimited())
        .connect_on(tcp)
        .await
        .unwrap();
    ws
}

async fn drive(mut ws: tws::WebSocketStream<TcpStream>, load: Load) {
    let payload = vec![b'x'; load.size];
    for _ in 0..load.round_trips {
        let msg = if load.text {
            tws::Message::text(String::from_utf8(payload.clone()).unwrap())
        } else {
            tws::Message::binary(payload.clone())
        };
        poll_fn(|cx| Pin::new(&mut ws).poll_ready(cx))
            .await
            .unwrap();
        Pin::new(&mut ws).start_send(msg).unwrap();
        poll_fn(|cx| Pin::new(&mut ws).poll_flush(cx))
            .await
            .unwrap();
        let echo = poll_fn(|cx| Pin::new(&mut ws).poll_next(cx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo.as_payload().len(), load.size);
    }
    poll_fn(|cx| Pin::new(&mut ws).poll_ready(cx))
        .await
        .unwrap();
    Pin::new(&mut ws)
        .start_send(tws::Message::close(None, ""))
        .unwrap();
    poll_fn(|cx| Pin::new(&mut ws).poll_flush(cx))
        .await
        .unwrap();
    while let Some(Ok(_)) = poll_fn(|cx| Pin::new(&mut ws).poll_next(cx)).await {}
}

/// One measured run: (server CPU per round trip, wall time).
fn run(rt: &tokio::runtime::Runtime, which: Impl, load: Load) -> (Duration, Duration) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (start_tx, start_rx) = oneshot::channel();
    let server = spawn_server(which, load.connections, listener, ready_tx, start_rx);
    let wall = rt.block_on(async move {
        let mut clients = Vec::with_capacity(load.connections);
        for _ in 0..load.connections {
            clients.push(client_connection(addr).await);
        }
        ready_rx.await.unwrap();
        start_tx.send(()).unwrap();
        let t = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|ws| tokio::spawn(drive(ws, load)))
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        t.elapsed()
    });
    let cpu = server.join().unwrap();
    let per_rt = cpu / (load.connections * load.round_trips) as u32;
    (per_rt, wall)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; accept and ignore harness arguments.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!("echo benchmark: server CPU time per round trip (median of {ROUNDS} rounds)");
    for load in LOADS {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for round in 0..ROUNDS {
            // Alternate the order so neither side always runs on a warmer machine.
            let order = if round % 2 == 0 {
                [Impl::Ours, Impl::Theirs]
            } else {
                [Impl::Theirs, Impl::Ours]
            };
            for which in order {
                let (cpu, wall) = run(&rt, which, load);
                let name = if which == Impl::Ours {
                    "switchboard-websocket"
                } else {
                    "tokio-websockets"
                };
                println!(
                    "  {} round {}: {name:<22} {:>8.2} µs/rt  (wall {:.0} ms)",
                    load.name,
                    round + 1,
                    cpu.as_secs_f64() * 1e6,
                    wall.as_secs_f64() * 1e3
                );
                if which == Impl::Ours {
                    ours.push(cpu);
                } else {
                    theirs.push(cpu);
                }
            }
        }
        let (o, t) = (median(ours), median(theirs));
        println!(
            "{}: ours {:.2} µs/rt, tokio-websockets {:.2} µs/rt, ratio ours/theirs = {:.2}",
            load.name,
            o.as_secs_f64() * 1e6,
            t.as_secs_f64() * 1e6,
            o.as_secs_f64() / t.as_secs_f64()
        );
    }
}
