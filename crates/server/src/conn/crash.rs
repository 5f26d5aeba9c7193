//! Panic containment: a future wrapper that turns a panic inside `poll` into an error value.
//!
//! A bug (or an embedder's hook) panicking while handling one connection must not take the
//! process down, and must not leave that connection hanging either: the caller gets
//! [`Panicked`] back and can close the socket with 1011 and log the message.
use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

/// The payload of a caught panic, reduced to its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked(pub String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The message of a panic payload (`&str` or `String`; anything else is opaque).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Run a synchronous callback, catching a panic.
pub fn call<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| Panicked(panic_message(p.as_ref())))
}

/// A future that yields `Err(Panicked)` instead of unwinding when the inner future panics.
#[derive(Debug)]
pub struct CatchPanic<F> {
    inner: Pin<Box<F>>,
}

impl<F: Future> CatchPanic<F> {
    /// Wrap `inner`.
    pub fn new(inner: F) -> Self {
        CatchPanic {
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The inner future is never polled again after a panic (we return Ready), so any
        // broken invariant it left behind cannot be observed: asserting unwind safety is sound.
        let inner = self.inner.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(p) => Poll::Ready(Err(Panicked(panic_message(p.as_ref())))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_become_errors() {
        let ok = CatchPanic::new(async { 5 }).await;
        assert_eq!(ok, Ok(5));
        let bad = CatchPanic::new(async {
            tokio::task::yield_now().await;
            panic!("boom {}", 1);
        })
        .await;
        assert_eq!(bad, Err::<(), _>(Panicked("boom 1".into())));
        assert_eq!(
            call(|| panic!("sync")),
            Err::<(), _>(Panicked("sync".into()))
        );
        assert_eq!(call(|| 3), Ok(3));
    }
}
