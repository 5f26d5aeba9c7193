//! Graceful shutdown: one signal observed by every task, and a way to wait until every
//! connection has finished its close handshake.
//!
//! The signal is a flag with a [`Notify`] (cheap to clone; a token that looks after the
//! trigger sees the flag, one that waits is woken). Connections do not wait on the `Notify`:
//! each is registered in the server's timer wheel for its heartbeat anyway ([`Wheel`]), so
//! the trigger wakes them all through it and they look at the flag — no future per idle
//! connection. Connection liveness is tracked with an `mpsc` sender clone held by each
//! connection: when the last clone is dropped the receiver wakes up, so waiting for "all
//! connections gone" needs no counting loop.
use std::future::Future;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, Notify};

use super::park::Parker;
use super::wheel::Wheel;

/// The shared flag and its wake-ups.
#[derive(Debug)]
struct Signal {
    triggered: AtomicBool,
    notify: Notify,
    /// The connections' heartbeat timers, woken all at once by the trigger.
    wheel: Arc<Wheel>,
    /// Where idle connections wait, made by the first one (`None` inside when the system
    /// refused it: nothing parks then).
    parker: OnceLock<Option<Arc<Parker>>>,
}

/// The shutdown switch, owned by the server.
#[derive(Debug)]
pub struct Shutdown {
    signal: Arc<Signal>,
    tracker_tx: mpsc::Sender<()>,
    tracker_rx: mpsc::Receiver<()>,
}

/// A cheap handle each task keeps: observe the signal, and (for connections) keep the server
/// waiting until it is dropped.
#[derive(Debug, Clone)]
pub struct ShutdownToken {
    signal: Arc<Signal>,
    _alive: mpsc::Sender<()>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A new, not yet triggered, shutdown switch.
    pub fn new() -> Shutdown {
        let (tracker_tx, tracker_rx) = mpsc::channel(1);
        Shutdown {
            signal: Arc::new(Signal {
                triggered: AtomicBool::new(false),
                notify: Notify::new(),
                wheel: Wheel::new(),
                parker: OnceLock::new(),
            }),
            tracker_tx,
            tracker_rx,
        }
    }

    /// A token for a task; the server's [`Shutdown::drain`] waits for every token to drop.
    pub fn token(&self) -> ShutdownToken {
        ShutdownToken {
            signal: Arc::clone(&self.signal),
            _alive: self.tracker_tx.clone(),
        }
    }

    /// Tell every token holder to wind down.
    pub fn trigger(&self) {
        self.signal.triggered.store(true, Ordering::SeqCst);
        self.signal.notify.notify_waiters();
        self.signal.wheel.wake_all();
    }

    /// Wait until every token has been dropped (after [`Shutdown::trigger`]).
    pub async fn drain(self) {
        let Shutdown {
            signal,
            tracker_tx,
            mut tracker_rx,
        } = self;
        drop(tracker_tx);
        // Returns None once every sender (token) is gone; nothing is ever sent.
        let _ = tracker_rx.recv().await;
        drop(signal);
    }
}

impl ShutdownToken {
    /// Whether shutdown has been requested.
    pub fn is_triggered(&self) -> bool {
        self.signal.triggered.load(Ordering::SeqCst)
    }

    /// The server's timer wheel (heartbeats; woken all at once at shutdown).
    pub(crate) fn wheel(&self) -> &Wheel {
        &self.signal.wheel
    }

    /// The server's parker (see [`super::park`]), if the system gave it an epoll set.
    pub(crate) fn parker(&self) -> Option<&Arc<Parker>> {
        self.signal.parker.get_or_init(Parker::new).as_ref()
    }

    /// Resolves once shutdown is requested (at once if it already was).
    pub fn triggered(&self) -> impl Future<Output = ()> + Send + 'static {
        let signal = Arc::clone(&self.signal);
        async move {
            loop {
                // Registered before the flag is read, so a trigger in between still wakes it.
                let notified = signal.notify.notified();
                if signal.triggered.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn os_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn drain_waits_for_tokens() {
        let shutdown = Shutdown::new();
        let token = shutdown.token();
        assert!(!token.is_triggered());
        let waiter = tokio::spawn({
            let token = token.clone();
            async move {
                token.triggered().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(token);
                "done"
            }
        });
        shutdown.trigger();
        assert!(token.is_triggered());
        drop(token);
        shutdown.drain().await;
        // drain returned, so the task must have dropped its token: it is finished or finishing.
        assert_eq!(waiter.await.unwrap(), "done");
    }
}
