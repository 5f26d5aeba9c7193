//! Abuse limits shared by every protocol: token buckets for rates, the per-address table
//! behind `max_connections_per_ip` and `connection_rate_per_ip`, and the per-connection
//! flood guard the runtime applies to every message a client sends.
//!
//! Admission (`transport::upgrade`) takes one lock of the address table per connection
//! attempt, never per message; the flood guard is the connection's own state (allocated
//! only when a message or byte rate is configured).
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A rate: `rate` per second on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    pub(crate) rate: f64,
    pub(crate) burst: f64,
}

impl Rate {
    /// `rate` per second with bursts of `burst` (at least 1); `None` when off (0 or unset).
    pub(crate) fn new(rate: Option<f64>, burst: Option<f64>) -> Option<Rate> {
        let rate = rate.filter(|r| *r > 0.0 && r.is_finite())?;
        let burst = burst.filter(|b| *b > 0.0).unwrap_or(rate).max(1.0);
        Some(Rate { rate, burst })
    }
}

/// A token bucket: starts full.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn full(rate: &Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: &Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.rate).min(rate.burst);
        self.at = now;
    }

    /// Takes `n` tokens if there are that many; otherwise how long until there are.
    pub(crate) fn take(&mut self, rate: &Rate, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            // A request larger than the burst can never pass whole: let it through when
            // the bucket is full, leaving a debt that later requests pay back.
            if self.tokens >= rate.burst && n > rate.burst {
                self.tokens -= n;
                return Ok(());
            }
            Err(Duration::from_secs_f64(
                (n.min(rate.burst) - self.tokens) / rate.rate,
            ))
        }
    }

    /// Whether the bucket is full again (an address entry with no connection can go).
    fn is_full(&mut self, rate: &Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= rate.burst
    }
}

/// Why admission refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections_per_ip`.
    PerIpConnections,
    /// `connection_rate_per_ip`: retry after this many seconds.
    PerIpRate(u64),
    /// `accept_rate`: retry after this many seconds.
    AcceptRate(u64),
    /// The server is draining before it stops.
    Draining,
}

#[derive(Debug)]
struct Entry {
    open: usize,
    bucket: Option<Bucket>,
}

/// The admission limits: per-address connections and rates, and the server's accept rate.
#[derive(Debug)]
pub(crate) struct Admission {
    max_per_ip: Option<usize>,
    rate_per_ip: Option<Rate>,
    accept_rate: Option<Rate>,
    accept: Mutex<Option<Bucket>>,
    table: Mutex<HashMap<IpAddr, Entry>>,
    /// Set when the server starts draining: no new connection is admitted.
    draining: std::sync::atomic::AtomicBool,
}

impl Default for Admission {
    /// No limit.
    fn default() -> Admission {
        Admission::new(None, None, None)
    }
}

impl Admission {
    pub(crate) fn new(
        max_per_ip: Option<usize>,
        rate_per_ip: Option<Rate>,
        accept_rate: Option<Rate>,
    ) -> Admission {
        Admission {
            max_per_ip,
            rate_per_ip,
            accept_rate,
            accept: Mutex::new(None),
            table: Mutex::new(HashMap::new()),
            draining: Default::default(),
        }
    }

    /// From now on every new connection is refused ([`Refusal::Draining`]).
    pub(crate) fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the server is draining.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether any per-address limit is on (else [`Admission::admit`] needs no table).
    fn per_ip(&self) -> bool {
        self.max_per_ip.is_some() || self.rate_per_ip.is_some()
    }

    /// Admits one connection from `ip`, or says why not. The returned slot (when per-address
    /// limits are on) counts the connection against `ip` until dropped.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Option<IpSlot>, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        let now = Instant::now();
        if let Some(rate) = &self.accept_rate {
            let mut accept = self.accept.lock().unwrap_or_else(|e| e.into_inner());
            let bucket = accept.get_or_insert_with(|| Bucket::full(rate, now));
            if let Err(wait) = bucket.take(rate, 1.0, now) {
                return Err(Refusal::AcceptRate(retry_after(wait)));
            }
        }
        if !self.per_ip() {
            return Ok(None);
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let entry = table.entry(ip).or_insert_with(|| Entry {
            open: 0,
            bucket: self.rate_per_ip.as_ref().map(|r| Bucket::full(r, now)),
        });
        if self.max_per_ip.is_some_and(|max| entry.open >= max) {
            return Err(Refusal::PerIpConnections);
        }
        if let (Some(rate), Some(bucket)) = (&self.rate_per_ip, entry.bucket.as_mut()) {
            if let Err(wait) = bucket.take(rate, 1.0, now) {
                return Err(Refusal::PerIpRate(retry_after(wait)));
            }
        }
        entry.open += 1;
        Ok(Some(IpSlot {
            admission: Arc::clone(self),
            ip,
        }))
    }

    fn release(&self, ip: IpAddr) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = table.get_mut(&ip) {
            entry.open = entry.open.saturating_sub(1);
            if entry.open == 0 && entry.bucket.is_none() {
                table.remove(&ip);
            }
        }
    }

    /// Drops the entries of addresses with no connection whose rate bucket is full again
    /// (run periodically, so the table does not keep every address ever seen).
    pub(crate) fn sweep(&self) {
        let Some(rate) = self.rate_per_ip else {
            return;
        };
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.retain(|_, e| e.open > 0 || !e.bucket.as_mut().is_none_or(|b| b.is_full(&rate, now)));
    }

    /// Addresses tracked now (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.lock().unwrap().len()
    }
}

/// Whole seconds for `Retry-After`, at least 1.
fn retry_after(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// One connection counted against its address; dropping it releases the count.
#[derive(Debug)]
pub(crate) struct IpSlot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.admission.release(self.ip);
    }
}

/// What the flood guard says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the rate: handle it.
    Pass,
    /// Over the rate: drop it (the first drop of a streak is logged).
    Drop { first: bool },
    /// Over the rate for longer than a burst's worth of messages: close the connection.
    Close,
}

/// The per-connection message and byte rates (`client_message_rate`,
/// `client_message_burst`, `client_bytes_rate`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct FloodLimits {
    pub(crate) messages: Option<Rate>,
    pub(crate) bytes: Option<Rate>,
}

impl FloodLimits {
    pub(crate) fn is_on(&self) -> bool {
        self.messages.is_some() || self.bytes.is_some()
    }

    /// How many dropped messages in a row close the connection: a client that keeps
    /// sending a whole burst's worth after being throttled is not slowing down.
    fn tolerance(&self) -> u32 {
        self.messages
            .map(|r| r.burst)
            .unwrap_or(10.0)
            .clamp(1.0, 10_000.0) as u32
    }
}

/// A connection's flood guard.
#[derive(Debug)]
pub(crate) struct Flood {
    limits: FloodLimits,
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    /// Messages dropped since the last one that passed.
    streak: u32,
}

impl Flood {
    pub(crate) fn new(limits: FloodLimits) -> Flood {
        let now = Instant::now();
        Flood {
            limits,
            messages: limits.messages.as_ref().map(|r| Bucket::full(r, now)),
            bytes: limits.bytes.as_ref().map(|r| Bucket::full(r, now)),
            streak: 0,
        }
    }

    /// Accounts one message of `len` bytes.
    pub(crate) fn check(&mut self, len: usize) -> Verdict {
        let now = Instant::now();
        let mut pass = true;
        if let (Some(rate), Some(bucket)) = (&self.limits.messages, self.messages.as_mut()) {
            pass &= bucket.take(rate, 1.0, now).is_ok();
        }
        if pass {
            if let (Some(rate), Some(bucket)) = (&self.limits.bytes, self.bytes.as_mut()) {
                pass &= bucket.take(rate, len as f64, now).is_ok();
            }
        }
        if pass {
            self.streak = 0;
            return Verdict::Pass;
        }
        self.streak += 1;
        if self.streak > self.limits.tolerance() {
            Verdict::Close
        } else {
            Verdict::Drop {
                first: self.streak == 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_refills_at_its_rate() {
        let rate = Rate::new(Some(10.0), Some(2.0)).unwrap();
        let now = Instant::now();
        let mut b = Bucket::full(&rate, now);
        assert!(b.take(&rate, 1.0, now).is_ok());
        assert!(b.take(&rate, 1.0, now).is_ok());
        let wait = b.take(&rate, 1.0, now).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(b.take(&rate, 1.0, now + Duration::from_millis(100)).is_ok());
        assert_eq!(Rate::new(Some(0.0), None), None);
        assert_eq!(Rate::new(Some(0.5), None).unwrap().burst, 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn per_ip_caps_count_until_the_slot_drops() {
        let a = Arc::new(Admission::new(Some(2), None, None));
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let other: IpAddr = "127.0.0.3".parse().unwrap();
        let s1 = a.admit(ip).unwrap();
        let _s2 = a.admit(ip).unwrap();
        assert_eq!(a.admit(ip).unwrap_err(), Refusal::PerIpConnections);
        assert!(a.admit(other).is_ok());
        drop(s1);
        assert!(a.admit(ip).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn per_ip_rates_and_the_accept_rate_refuse_with_a_retry_time() {
        let a = Arc::new(Admission::new(None, Rate::new(Some(1.0), Some(2.0)), None));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        drop(a.admit(ip).unwrap());
        drop(a.admit(ip).unwrap());
        assert_eq!(a.admit(ip).unwrap_err(), Refusal::PerIpRate(1));
        assert_eq!(a.tracked(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        a.sweep();
        assert_eq!(
            a.tracked(),
            0,
            "a full bucket without connections is forgotten"
        );

        let a = Arc::new(Admission::new(None, None, Rate::new(Some(1.0), Some(1.0))));
        assert!(a.admit(ip).is_ok());
        assert_eq!(a.admit(ip).unwrap_err(), Refusal::AcceptRate(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_dropped_then_closed() {
        let mut f = Flood::new(FloodLimits {
            messages: Rate::new(Some(10.0), Some(3.0)),
            bytes: None,
        });
        for _ in 0..3 {
            assert_eq!(f.check(1), Verdict::Pass);
        }
        assert_eq!(f.check(1), Verdict::Drop { first: true });
        assert_eq!(f.check(1), Verdict::Drop { first: false });
        assert_eq!(f.check(1), Verdict::Drop { first: false });
        assert_eq!(f.check(1), Verdict::Close);

        // Slowing down after a drop clears the streak.
        let mut f = Flood::new(FloodLimits {
            messages: None,
            bytes: Rate::new(Some(100.0), None),
        });
        assert_eq!(f.check(100), Verdict::Pass);
        assert_eq!(f.check(10), Verdict::Drop { first: true });
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(f.check(10), Verdict::Pass);
    }
}
