//! Rate limits keyed by who (or whom) an action concerns: a source address, a client, a user;
//! and the count of connections each source holds.
//! GCRA token buckets from `governor`, with the number of keys bounded so that a flood of new
//! keys cannot grow memory without end.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Where a connection comes from, as per-source limits count it: an IPv4 address, or an IPv6
/// /64 (what one host is usually given; counting single IPv6 addresses would limit nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// How many connections each source holds, bounded per source.
pub struct ConnectionSlots {
    max_per_source: usize,
    held: Arc<Mutex<HashMap<Source, usize>>>,
}

/// One connection counted against its source; the count drops with it.
pub struct SourceSlot {
    source: Source,
    held: Arc<Mutex<HashMap<Source, usize>>>,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = held.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.source);
            }
        }
    }
}

impl ConnectionSlots {
    pub fn new(max_per_source: usize) -> Self {
        Self {
            max_per_source,
            held: Arc::default(),
        }
    }

    /// Counts a connection of `source`, or `None` if it holds as many as allowed.
    pub fn slot(&self, source: Source) -> Option<SourceSlot> {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = held.entry(source).or_default();
        if *count >= self.max_per_source {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            source,
            held: self.held.clone(),
        })
    }
}

/// Keys tracked at most per limiter. Past this, keys whose bucket has refilled are forgotten
/// (they carry no state); if every key is mid-burst, newcomers are refused until some refill.
const MAX_TRACKED_KEYS: usize = 100_000;

/// Allows `per_period` events per key per period on average, in bursts of up to `per_period`.
pub struct RateLimiter<K: Hash + Eq + Clone> {
    /// `None` for a limit of zero: nothing is allowed.
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    period: Duration,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_period` events per key per `period` on average, in bursts of up to `per_period`.
    /// A limit of 0 allows nothing.
    pub fn new(per_period: u32, period: Duration) -> Self {
        let limiter = NonZeroU32::new(per_period).map(|burst| {
            let replenish = (period / per_period).max(Duration::from_nanos(1));
            let quota = Quota::with_period(replenish)
                .unwrap_or_else(|| Quota::per_second(burst))
                .allow_burst(burst);
            DefaultKeyedRateLimiter::keyed(quota)
        });
        Self {
            limiter,
            period,
            clock: DefaultClock::default(),
        }
    }

    /// Per minute, as the KeyPackage claim limits are configured.
    pub fn per_minute(per_minute: u32) -> Self {
        Self::new(per_minute, Duration::from_secs(60))
    }

    /// Takes one event for `key`, or says how long until one is allowed.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Err(self.period);
        };
        if limiter.len() >= MAX_TRACKED_KEYS {
            limiter.retain_recent();
            limiter.shrink_to_fit();
            if limiter.len() >= MAX_TRACKED_KEYS {
                return Err(Duration::from_secs(1));
            }
        }
        limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_are_counted_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(Source::of(mapped), Source::of("192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn bursts_up_to_the_limit_then_waits_per_key() {
        let limiter = RateLimiter::per_minute(3);
        for _ in 0..3 {
            limiter.check(&"a").unwrap();
        }
        let wait = limiter.check(&"a").unwrap_err();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        limiter.check(&"b").unwrap();
        let none = RateLimiter::<&str>::per_minute(0);
        assert!(none.check(&"a").is_err(), "a zero limit allows nothing");
    }
}
