//! Time, as the services see it: a [`Clock`] they are given, so tests can set it.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub type UnixTime = u64;

pub const SECONDS_PER_DAY: u64 = 24 * 60 * 60;

pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> UnixTime;

    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64 {
        self.now().saturating_mul(1000)
    }
}

/// The system's wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs())
    }

    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| {
                u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
            })
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing the current system time.
    pub fn starting_now() -> Self {
        Self(AtomicU64::new(SystemClock.now()))
    }

    pub fn set(&self, now: UnixTime) {
        self.0.store(now, Ordering::SeqCst);
    }

    pub fn advance(&self, seconds: u64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        self.0.load(Ordering::SeqCst)
    }
}

/// `time` as a UTC date and time for people to read: `2026-11-25 01:52:06 UTC`.
pub fn format_utc(time: UnixTime) -> String {
    let (date, clock) = date_and_time(time);
    format!("{date} {clock} UTC")
}

/// `time` in RFC 3339 UTC, for machines that also want to be read: `2026-11-25T01:52:06Z`.
pub fn format_rfc3339(time: UnixTime) -> String {
    let (date, clock) = date_and_time(time);
    format!("{date}T{clock}Z")
}

/// `YYYY-MM-DD` and `hh:mm:ss` of `time`, in UTC.
fn date_and_time(time: UnixTime) -> (String, String) {
    let (days, second_of_day) = (time / SECONDS_PER_DAY, time % SECONDS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!(
            "{:02}:{:02}:{:02}",
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60
        ),
    )
}

/// 00:00 UTC of the day `year`-`month`-`day` (from 1970 on), or `None` if there is no such day.
pub fn unix_midnight(year: u64, month: u64, day: u64) -> Option<UnixTime> {
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || day == 0 {
        return None;
    }
    // Howard Hinnant's `days_from_civil`, the inverse of `civil_from_days`.
    let year_from_march = if month <= 2 { year - 1 } else { year };
    let era = year_from_march / 400;
    let year_of_era = year_from_march % 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = (era * 146_097 + day_of_era).checked_sub(719_468)?;
    // A day past the month's end (February 30th) comes back as another date: refused.
    (civil_from_days(days) == (year, month, day)).then_some(days * SECONDS_PER_DAY)
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01, so that leap days end each 400-year era's years.
    let days = days + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::{format_rfc3339, format_utc, unix_midnight};

    #[test]
    fn days_give_their_midnight_and_impossible_days_none() {
        assert_eq!(unix_midnight(1970, 1, 1), Some(0));
        assert_eq!(unix_midnight(2000, 3, 1), Some(951_868_800));
        assert_eq!(unix_midnight(2027, 7, 1), Some(1_814_400_000));
        assert_eq!(
            unix_midnight(2024, 2, 29).map(format_utc).as_deref(),
            Some("2024-02-29 00:00:00 UTC")
        );
        for (year, month, day) in [(2023, 2, 29), (2027, 13, 1), (2027, 4, 31), (1969, 12, 31)] {
            assert_eq!(
                unix_midnight(year, month, day),
                None,
                "{year}-{month}-{day}"
            );
        }
    }

    #[test]
    fn unix_times_format_as_utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        // The day after a leap day, and the end of a century year that is not leap.
        assert_eq!(format_utc(951_868_800), "2000-03-01 00:00:00 UTC");
        assert_eq!(format_utc(4_107_542_399), "2100-02-28 23:59:59 UTC");
        assert_eq!(format_utc(1_803_348_026), "2027-02-23 02:00:26 UTC");
        assert_eq!(format_utc(1_709_208_000), "2024-02-29 12:00:00 UTC");
        assert_eq!(format_rfc3339(1_709_208_000), "2024-02-29T12:00:00Z");
    }
}
