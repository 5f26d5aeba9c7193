//! Parking: where idle connections wait without a task.
//!
//! An open connection's task (its future, ≈ 1.1 KiB, in a tokio task cell) and its socket's
//! registration in tokio's reactor (256 B) are the largest part of what an idle connection
//! costs. A connection that has been quiet gives both back: its state moves to one boxed
//! value, its socket leaves tokio's reactor for the epoll set here (the kernel keeps that
//! entry; we keep a waker, 16 B), and its task ends. Whatever wakes it — the socket turning
//! readable, a delivery in its outbox, its heartbeat or timer, shutdown — gives it a turn
//! (below), and what it cannot do parked resumes it: a task takes the state back and goes on
//! where it stopped (see `runtime`).
//!
//! The epoll set is drained by one tokio task per server, which runs only while sockets are
//! parked: the set's own descriptor is registered with tokio, so a parked socket turning
//! readable wakes that task like any other socket would, and it wakes the parked
//! connection's waker.
//!
//! A parked connection that is woken is not resumed at once: it is queued here
//! ([`Parker::schedule`]) and one task takes the queue in batches, handing each connection
//! its turn ([`ParkedConn::deliver`]). A connection woken only by deliveries writes them
//! from there, straight to its parked socket, and stays parked: a publication to many idle
//! subscribers costs one task for all of them, not one per subscriber. Anything else (bytes
//! to read, a heartbeat, a write the socket would not take whole) resumes it on a task.
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;

/// Most readiness events taken from the set in one call.
const EVENTS_PER_CALL: usize = 256;
/// Parked connections handed their turn in a row before the delivering task yields its
/// worker thread.
const DELIVERIES_PER_YIELD: usize = 128;

/// A parked connection as the [`Parker`] sees it: something to give a turn to.
pub(crate) trait ParkedConn: Send + Sync {
    /// Take the turn [`Parker::schedule`] queued (on the delivering task).
    fn deliver(self: Arc<Self>);
}

/// The epoll set parked sockets wait in, and their wakers.
pub(crate) struct Parker {
    /// Registers and deregisters sockets (usable from any thread).
    registry: Registry,
    state: Mutex<State>,
    /// Woken parked connections waiting for their turn (see [`Parker::schedule`]).
    queue: Mutex<Queue>,
    this: Weak<Parker>,
    /// The runtime the parker was made in, for wakes from outside it.
    runtime: tokio::runtime::Handle,
}

#[derive(Default)]
struct State {
    /// Wakers by key; `None` for a free key.
    wakers: Vec<Option<Waker>>,
    free: Vec<u32>,
    live: usize,
    /// The set itself, while no task is draining it.
    poll: Option<Poll>,
    /// One bit per key: the socket was reported readable since it was parked.
    readable: Vec<u64>,
}

/// The queue of woken parked connections.
#[derive(Default)]
struct Queue {
    woken: Vec<Arc<dyn ParkedConn>>,
    /// A task is taking the queue.
    delivering: bool,
}

impl std::fmt::Debug for Parker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parker")
            .field("parked", &self.parked())
            .finish()
    }
}

/// A socket a connection can park: moved out of tokio's reactor into a [`Parker`], and back.
pub(crate) trait ParkIo {
    /// Whether this is a socket that can be parked (a plain TCP socket in tokio's reactor).
    fn can_park(&self) -> bool;
    /// Move the socket into `parker`, which wakes `waker` when it turns readable or hangs
    /// up. False when it did not move (nothing changed then, unless the socket broke, in
    /// which case its next read fails).
    fn park(&mut self, parker: &Parker, waker: Waker) -> bool;
    /// Take the socket back into tokio's reactor (must run inside the runtime); true when
    /// it has bytes (or an end of stream) waiting to be read. Tokio learns that only on its
    /// reactor's next turn: until a read succeeded, the connection must not park again.
    fn unpark(&mut self, parker: &Parker) -> io::Result<bool>;
    /// Whether the parked socket was reported readable (or hung up) since it was parked.
    fn parked_readable(&self, parker: &Parker) -> bool;
}

/// A bare tokio socket (tests, tools) is never parked.
impl ParkIo for tokio::net::TcpStream {
    fn can_park(&self) -> bool {
        false
    }

    fn park(&mut self, _parker: &Parker, _waker: Waker) -> bool {
        false
    }

    fn unpark(&mut self, _parker: &Parker) -> io::Result<bool> {
        Ok(false)
    }

    fn parked_readable(&self, _parker: &Parker) -> bool {
        false
    }
}

/// A parked socket's key in the [`Parker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParkKey(u32);

impl Parker {
    /// An empty parker; `None` outside a tokio runtime or when the system refuses an epoll
    /// set (then nothing parks).
    pub(crate) fn new() -> Option<Arc<Parker>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let poll = match Poll::new() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("idle connections will not be parked: {e}");
                return None;
            }
        };
        let registry = poll.registry().try_clone().ok()?;
        Some(Arc::new_cyclic(|this| Parker {
            registry,
            state: Mutex::new(State {
                poll: Some(poll),
                ..State::default()
            }),
            queue: Mutex::default(),
            this: this.clone(),
            runtime,
        }))
    }

    /// The runtime the parker was made in.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation completes before anything that could panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait for `fd` to turn readable (or hang up): `waker` is woken then. Must run inside
    /// the tokio runtime (the first parked socket starts the task draining the set).
    pub(crate) fn park(&self, fd: RawFd, waker: Waker) -> io::Result<ParkKey> {
        let key = {
            let mut s = self.lock();
            let key = match s.free.pop() {
                Some(k) => k,
                None => {
                    s.wakers.push(None);
                    (s.wakers.len() - 1) as u32
                }
            };
            s.wakers[key as usize] = Some(waker);
            s.live += 1;
            if let Some(poll) = s.poll.take() {
                let this = self.this.upgrade().expect("a parker in use is alive");
                tokio::spawn(drain(this, poll));
            }
            key
        };
        // Registered after the waker is in place: a socket already readable is reported at
        // once, to the waker just stored.
        let token = Token(key as usize);
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            self.forget(key);
            return Err(e);
        }
        Ok(ParkKey(key))
    }

    /// Take `fd` out of the set (it goes back to tokio's reactor).
    pub(crate) fn unpark(&self, fd: RawFd, key: ParkKey) {
        // Fails only for a descriptor that is not in the set; nothing to undo then.
        let _ = self.registry.deregister(&mut SourceFd(&fd));
        self.forget(key.0);
    }

    fn forget(&self, key: u32) {
        let mut s = self.lock();
        if s.wakers[key as usize].take().is_some() {
            if let Some(bits) = s.readable.get_mut(key as usize / 64) {
                *bits &= !(1 << (key % 64));
            }
            s.free.push(key);
            s.live -= 1;
            if s.live == 0 {
                s.wakers = Vec::new();
                s.free = Vec::new();
                s.readable = Vec::new();
            }
        }
    }

    /// Whether the socket parked under `key` was reported readable since it was parked.
    pub(crate) fn is_readable(&self, key: ParkKey) -> bool {
        let s = self.lock();
        s.readable
            .get(key.0 as usize / 64)
            .is_some_and(|bits| bits & (1 << (key.0 % 64)) != 0)
    }

    /// Queue `conn` for its turn on the delivering task (started if none runs).
    pub(crate) fn schedule(&self, conn: Arc<dyn ParkedConn>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.woken.push(conn);
        if !std::mem::replace(&mut q.delivering, true) {
            drop(q);
            let this = self.this.upgrade().expect("a parker in use is alive");
            self.runtime.spawn(deliver(this));
        }
    }

    /// How many sockets are parked.
    pub(crate) fn parked(&self) -> usize {
        self.lock().live
    }
}

/// Wakes the parked connections whose sockets turned readable, while any is parked; then
/// hands the set back to the parker for the next task.
async fn drain(parker: Arc<Parker>, poll: Poll) {
    // SAFETY: the descriptor registered is the epoll set's own, owned by `poll`, which the
    // `AsyncFd` owns until it is taken back out (deregistered) below.
    let mut set = match unsafe { AsyncFd::register(poll) } {
        Ok(set) => set,
        Err(e) => {
            // Nothing can wake the parked sockets' connections but their other sources;
            // the next parked socket tries again.
            tracing::error!("cannot watch the parking set: {e}");
            return;
        }
    };
    let mut events = Events::with_capacity(EVENTS_PER_CALL);
    let mut woken: Vec<Waker> = Vec::new();
    loop {
        let mut ready = match set.readable_mut().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("the parking set failed: {e}");
                return;
            }
        };
        let got = ready
            .get_inner_mut()
            .poll(&mut events, Some(Duration::ZERO));
        let full = events.iter().count() == EVENTS_PER_CALL;
        if got.is_ok() && !full {
            // Edge-triggered: drained, so wait for the next edge.
            ready.clear_ready();
        }
        {
            let mut s = parker.lock();
            for event in events.iter() {
                let key = event.token().0;
                if let Some(Some(w)) = s.wakers.get(key) {
                    woken.push(w.clone());
                    let words = key / 64 + 1;
                    if s.readable.len() < words {
                        s.readable.resize(words, 0);
                    }
                    s.readable[key / 64] |= 1 << (key % 64);
                }
            }
        }
        woken.drain(..).for_each(Waker::wake);
        let mut s = parker.lock();
        if s.live == 0 {
            s.poll = Some(set.into_inner());
            return;
        }
    }
}

/// Gives the queued parked connections their turns, in batches, until the queue is empty.
async fn deliver(parker: Arc<Parker>) {
    let mut batch: Vec<Arc<dyn ParkedConn>> = Vec::new();
    loop {
        {
            let mut q = parker.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.woken.is_empty() {
                q.delivering = false;
                if q.woken.capacity() > DELIVERIES_PER_YIELD {
                    q.woken = Vec::new();
                }
                return;
            }
            std::mem::swap(&mut q.woken, &mut batch);
        }
        for (i, conn) in batch.drain(..).enumerate() {
            if i > 0 && i % DELIVERIES_PER_YIELD == 0 {
                tokio::task::yield_now().await;
            }
            // A turn catches the panics of the protocol's code itself; one in the runtime
            // must not stop every other parked connection's deliveries (the connection it
            // hit is dropped, as a task that panicked would be).
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.deliver())).is_err() {
                tracing::error!("panic in a parked connection's turn");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn wait_for(count: &Count, n: usize) {
        for _ in 0..500 {
            if count.0.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("not woken");
    }

    /// A connected loopback pair: the client end, and the server end out of tokio's reactor.
    async fn socket_pair(listener: &tokio::net::TcpListener) -> (TcpStream, std::net::TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server.into_std().unwrap())
    }

    #[tokio::test]
    async fn a_parked_socket_wakes_its_waker_when_data_arrives() {
        use std::os::fd::AsRawFd;
        let parker = Parker::new().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut client, server) = socket_pair(&listener).await;
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let key = parker
            .park(server.as_raw_fd(), Waker::from(Arc::clone(&count)))
            .unwrap();
        assert_eq!(parker.parked(), 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            0,
            "woken with nothing to read"
        );
        client.write_all(b"x").await.unwrap();
        wait_for(&count, 1).await;
        parker.unpark(server.as_raw_fd(), key);
        assert_eq!(parker.parked(), 0);
        // Back in tokio's reactor, the byte is still there.
        let server = TcpStream::from_std(server).unwrap();
        let mut buf = [0u8; 4];
        server.readable().await.unwrap();
        assert_eq!(server.try_read(&mut buf).unwrap(), 1);
    }

    #[tokio::test]
    async fn a_socket_readable_when_parked_wakes_at_once_and_a_hang_up_wakes_too() {
        use std::os::fd::AsRawFd;
        let parker = Parker::new().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut a, sa) = socket_pair(&listener).await;
        let (b, sb) = socket_pair(&listener).await;
        a.write_all(b"early").await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (ca, cb) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let ka = parker
            .park(sa.as_raw_fd(), Waker::from(Arc::clone(&ca)))
            .unwrap();
        let kb = parker
            .park(sb.as_raw_fd(), Waker::from(Arc::clone(&cb)))
            .unwrap();
        wait_for(&ca, 1).await;
        drop(b);
        wait_for(&cb, 1).await;
        parker.unpark(sa.as_raw_fd(), ka);
        parker.unpark(sb.as_raw_fd(), kb);
        assert_eq!(parker.parked(), 0);
    }
}
