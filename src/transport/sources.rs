//! Per-source limits: how many connections one source holds, how fast it may open new ones and
//! send requests before authenticating, and a throttle for the log lines about refusals, so that
//! one misbehaving source can neither take every slot nor write the log.
//!
//! A source ([`Source`]) is an IPv4 address, or an IPv6 /64 (what one host is usually given).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::ServerLimits;
use crate::rate_limit::{ConnectionSlots, RateLimiter};
pub use crate::rate_limit::{Source, SourceSlot};

/// The per-source limits of one server.
pub struct SourceLimits {
    connections: ConnectionSlots,
    handshakes: RateLimiter<Source>,
    unauthenticated_requests: RateLimiter<Source>,
    /// Refusals are logged at most once a second, with how many went unlogged.
    refusal_log: RateLimiter<()>,
    unlogged_refusals: AtomicU64,
}

impl SourceLimits {
    pub fn new(limits: &ServerLimits) -> Self {
        Self {
            connections: ConnectionSlots::new(limits.max_connections_per_source),
            handshakes: RateLimiter::new(
                limits.handshakes_per_second_per_source,
                Duration::from_secs(1),
            ),
            unauthenticated_requests: RateLimiter::new(
                limits.unauthenticated_requests_per_second_per_source,
                Duration::from_secs(1),
            ),
            refusal_log: RateLimiter::new(1, Duration::from_secs(1)),
            unlogged_refusals: AtomicU64::new(0),
        }
    }

    /// Whether `source` may start another handshake now.
    pub fn allow_handshake(&self, source: Source) -> bool {
        self.handshakes.check(&source).is_ok()
    }

    /// Counts a connection of `source`, or `None` if it holds as many as allowed.
    pub fn connection_slot(&self, source: Source) -> Option<SourceSlot> {
        self.connections.slot(source)
    }

    /// Whether `source` may make another request before authenticating, or how long to wait.
    pub fn allow_unauthenticated_request(&self, source: Source) -> Result<(), Duration> {
        self.unauthenticated_requests.check(&source)
    }

    /// Logs a refusal of `source` for `reason`, unless a refusal was logged less than a second
    /// ago; the next line that is written says how many went unlogged.
    pub fn log_refusal(&self, source: Source, reason: &str) {
        if self.refusal_log.check(&()).is_ok() {
            let unlogged = self.unlogged_refusals.swap(0, Ordering::Relaxed);
            tracing::warn!(%source, unlogged_since_last = unlogged, "refused: {reason}");
        } else {
            self.unlogged_refusals.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_are_bounded_per_source_and_freed_on_drop() {
        let limits = SourceLimits::new(&ServerLimits {
            max_connections_per_source: 2,
            ..ServerLimits::default()
        });
        let source = Source::of("192.0.2.1".parse().unwrap());
        let first = limits.connection_slot(source).unwrap();
        let _second = limits.connection_slot(source).unwrap();
        assert!(limits.connection_slot(source).is_none());
        assert!(limits
            .connection_slot(Source::of("192.0.2.2".parse().unwrap()))
            .is_some());
        drop(first);
        assert!(limits.connection_slot(source).is_some());
    }
}
