//! Billing periods: `[anchor + k*period, anchor + (k+1)*period)` for every integer k.
//!
//! Each boundary is computed from the anchor (never by stepping from the previous
//! boundary), so a Jan 31 anchor gives Feb 28/29, then Mar 31, then Apr 30. The
//! arithmetic is calendar arithmetic in UTC, like PostgreSQL's `timestamp + interval`:
//! months first (clamping the day to the month's last day), then days, then time.
//! Doing it in UTC keeps period boundaries independent of each client's TimeZone.

use chrono::{Duration, Months, NaiveDate, NaiveDateTime};
use pgrx::prelude::*;

/// PostgreSQL timestamps count microseconds from 2000-01-01 00:00:00 UTC.
fn pg_epoch() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("2000-01-01 is a valid date")
}

/// None for timestamps beyond chrono's range (PostgreSQL's reaches further).
pub(crate) fn to_datetime(micros: i64) -> Option<NaiveDateTime> {
    pg_epoch().checked_add_signed(Duration::microseconds(micros))
}

fn to_micros(t: NaiveDateTime) -> Option<i64> {
    (t - pg_epoch()).num_microseconds()
}

/// A validated billing period length: no component is negative and at least one is positive.
#[derive(Clone, Copy, Debug)]
pub struct PeriodLength {
    months: i64,
    days: i64,
    micros: i64,
}

impl PeriodLength {
    pub fn new(months: i32, days: i32, micros: i64) -> Option<Self> {
        let valid = months >= 0 && days >= 0 && micros >= 0 && (months, days, micros) != (0, 0, 0);
        valid.then_some(Self {
            months: months.into(),
            days: days.into(),
            micros,
        })
    }

    fn from_interval(period: &Interval) -> Self {
        Self::new(period.months(), period.days(), period.micros()).unwrap_or_else(|| {
            error!("billing period must be positive with no negative part, got {period}")
        })
    }

    /// Average length in microseconds, used only to guess k before exact correction.
    fn approx_micros(&self) -> i64 {
        const AVG_MONTH_MICROS: i64 = 2_629_746_000_000; // 30.436875 days
        const DAY_MICROS: i64 = 86_400_000_000;
        self.months
            .saturating_mul(AVG_MONTH_MICROS)
            .saturating_add(self.days.saturating_mul(DAY_MICROS))
            .saturating_add(self.micros)
    }

    /// `anchor + k * self`, or None when the result leaves the representable range.
    fn boundary(&self, anchor: i64, k: i64) -> Option<i64> {
        let months = self.months.checked_mul(k)?;
        let start = to_datetime(anchor)?;
        let shifted = if months >= 0 {
            start.checked_add_months(Months::new(u32::try_from(months).ok()?))?
        } else {
            start.checked_sub_months(Months::new(u32::try_from(-months).ok()?))?
        };
        let shifted = shifted.checked_add_signed(Duration::try_days(self.days.checked_mul(k)?)?)?;
        let shifted =
            shifted.checked_add_signed(Duration::microseconds(self.micros.checked_mul(k)?))?;
        to_micros(shifted)
    }

    /// The period `[start, end)` that contains `at`, as PostgreSQL microsecond timestamps.
    pub fn bounds(&self, anchor: i64, at: i64) -> Option<(i64, i64)> {
        let mut k = (at.checked_sub(anchor)?).div_euclid(self.approx_micros().max(1));
        // The guess is off by at most a step or two (month lengths vary); walk to the exact period.
        while self.boundary(anchor, k)? > at {
            k -= 1;
        }
        while self.boundary(anchor, k + 1)? <= at {
            k += 1;
        }
        Some((self.boundary(anchor, k)?, self.boundary(anchor, k + 1)?))
    }
}

fn out_of_range(message: String) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW,
        message
    );
}

pub fn period_bounds(
    anchor: TimestampWithTimeZone,
    period: &Interval,
    at: TimestampWithTimeZone,
) -> (TimestampWithTimeZone, TimestampWithTimeZone) {
    let length = PeriodLength::from_interval(period);
    let (start, end) = length
        .bounds(anchor.into_inner(), at.into_inner())
        .unwrap_or_else(|| {
            out_of_range(format!(
                "the billing period containing {at} is out of the timestamp range"
            ))
        });
    let ts = |micros: i64| {
        TimestampWithTimeZone::try_from(micros).unwrap_or_else(|_| {
            out_of_range("a billing period boundary is out of the timestamp range".into())
        })
    };
    (ts(start), ts(end))
}

/// Start of the billing period (anchored at `anchor`, of length `period`) that contains `at`.
#[pg_extern(immutable, strict, parallel_safe)]
pub fn period_start_for(
    anchor: TimestampWithTimeZone,
    period: Interval,
    at: TimestampWithTimeZone,
) -> TimestampWithTimeZone {
    period_bounds(anchor, &period, at).0
}

/// End (exclusive) of the billing period that contains `at`.
#[pg_extern(immutable, strict, parallel_safe)]
pub fn period_end_for(
    anchor: TimestampWithTimeZone,
    period: Interval,
    at: TimestampWithTimeZone,
) -> TimestampWithTimeZone {
    period_bounds(anchor, &period, at).1
}

/// True when `period` can be a billing period: positive, with no negative part
/// (so that every period has a positive length whatever the month).
#[pg_extern(immutable, strict, parallel_safe)]
pub fn period_is_valid(period: Interval) -> bool {
    PeriodLength::new(period.months(), period.days(), period.micros()).is_some()
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn micros(y: i32, m: u32, d: u32) -> i64 {
        to_micros(
            NaiveDate::from_ymd_opt(y, m, d)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn month_end_anchor_clamps_each_period_from_the_anchor() {
        let month = PeriodLength::new(1, 0, 0).unwrap();
        let anchor = micros(2026, 1, 31);
        assert_eq!(
            month.bounds(anchor, micros(2026, 2, 10)),
            Some((anchor, micros(2026, 2, 28)))
        );
        assert_eq!(
            month.bounds(anchor, micros(2026, 3, 1)),
            Some((micros(2026, 2, 28), micros(2026, 3, 31)))
        );
        assert_eq!(
            month.bounds(anchor, micros(2026, 4, 15)),
            Some((micros(2026, 3, 31), micros(2026, 4, 30)))
        );
        assert_eq!(
            month.bounds(anchor, micros(2028, 2, 29)),
            Some((micros(2028, 2, 29), micros(2028, 3, 31)))
        );
    }

    #[test]
    fn times_before_the_anchor_fall_in_earlier_periods() {
        let week = PeriodLength::new(0, 7, 0).unwrap();
        let anchor = micros(2026, 1, 8);
        assert_eq!(
            week.bounds(anchor, micros(2026, 1, 1)),
            Some((micros(2026, 1, 1), anchor))
        );
        assert_eq!(
            week.bounds(anchor, micros(2025, 12, 31)),
            Some((micros(2025, 12, 25), micros(2026, 1, 1)))
        );
    }

    #[test]
    fn boundaries_are_half_open() {
        let month = PeriodLength::new(1, 0, 0).unwrap();
        let anchor = micros(2026, 1, 1);
        let feb = micros(2026, 2, 1);
        assert_eq!(month.bounds(anchor, feb).unwrap().0, feb);
        assert_eq!(month.bounds(anchor, feb - 1).unwrap().1, feb);
    }

    #[test]
    fn timestamps_beyond_the_calendar_range_give_none_instead_of_panicking() {
        let month = PeriodLength::new(1, 0, 0).unwrap();
        // About 292,000 years after 2000: past chrono's calendar, which ends near 262,000.
        let end_of_time = i64::MAX;
        assert_eq!(month.bounds(end_of_time, micros(2026, 3, 1)), None);
        assert_eq!(month.bounds(micros(2026, 1, 1), end_of_time), None);
        let year = PeriodLength::new(12_000_000, 0, 0).unwrap();
        assert_eq!(year.bounds(micros(2026, 1, 1), micros(2026, 3, 1)), None);
    }

    #[test]
    fn rejects_empty_and_negative_parts() {
        assert!(PeriodLength::new(0, 0, 0).is_none());
        assert!(PeriodLength::new(1, -40, 0).is_none());
        assert!(PeriodLength::new(0, 0, 1).is_some());
    }
}
