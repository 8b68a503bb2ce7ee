//! When a schedule's runs fire: pure arithmetic over its start, intervals and end.
//!
//! Run k fires at `start + interval[0] + … + interval[k]`; past the end of the list the
//! last interval repeats. No run fires after the end. Times are exact (nanoseconds),
//! and the repeating tail is computed by division, so a schedule of one-second
//! intervals over years costs no more than one of days.

use jiff::{SignedDuration, Timestamp};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GridError {
    #[error("scheduleIntervals is empty: give at least one interval such as 1d")]
    NoIntervals,
    #[error("scheduleIntervals[{0}] is not greater than zero")]
    NotPositive(usize),
}

/// The fire times of a schedule's runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunGrid {
    start: Timestamp,
    /// Fire time of each listed interval's run, in nanoseconds since the epoch.
    listed: Vec<i128>,
    /// The repeating last interval, in nanoseconds (> 0).
    step: i128,
    end: Option<Timestamp>,
}

fn nanos(t: Timestamp) -> i128 {
    t.as_nanosecond()
}

fn timestamp(nanos: i128) -> Option<Timestamp> {
    Timestamp::from_nanosecond(nanos).ok()
}

impl RunGrid {
    pub fn new(
        start: Timestamp,
        intervals: &[SignedDuration],
        end: Option<Timestamp>,
    ) -> Result<Self, GridError> {
        let step = intervals.last().ok_or(GridError::NoIntervals)?.as_nanos();
        let mut listed = Vec::with_capacity(intervals.len());
        let mut at = nanos(start);
        for (i, interval) in intervals.iter().enumerate() {
            if !interval.is_positive() {
                return Err(GridError::NotPositive(i));
            }
            at += interval.as_nanos();
            listed.push(at);
        }
        debug_assert!(step > 0);
        Ok(Self {
            start,
            listed,
            step,
            end,
        })
    }

    pub fn start(&self) -> Timestamp {
        self.start
    }

    pub fn end(&self) -> Option<Timestamp> {
        self.end
    }

    /// Fire time of run `run` in nanoseconds, ignoring the end.
    fn nanos_of(&self, run: u64) -> i128 {
        let last = self.listed.len() - 1;
        match usize::try_from(run) {
            Ok(i) if i <= last => self.listed[i],
            _ => self.listed[last] + (i128::from(run) - last as i128) * self.step,
        }
    }

    fn within_end(&self, at: i128) -> bool {
        self.end.is_none_or(|end| at <= nanos(end))
    }

    /// When run `run` fires; `None` past the end of the schedule.
    pub fn fire_time(&self, run: u64) -> Option<Timestamp> {
        let at = self.nanos_of(run);
        if self.within_end(at) {
            timestamp(at)
        } else {
            None
        }
    }

    /// The last run that fires at or before `t` (ignoring the end).
    fn last_at_or_before(&self, t: i128) -> Option<u64> {
        let last = self.listed.len() - 1;
        if t < self.listed[0] {
            return None;
        }
        if t < self.listed[last] {
            // The listed part: few entries, a search is enough.
            let index = self.listed.partition_point(|&at| at <= t) - 1;
            return Some(index as u64);
        }
        let repeats = (t - self.listed[last]) / self.step;
        Some(last as u64 + u64::try_from(repeats).unwrap_or(u64::MAX - last as u64))
    }

    /// The latest run due at `now`: the last whose fire time has passed and is not after
    /// the end.
    pub fn latest_due(&self, now: Timestamp) -> Option<u64> {
        let bound = match self.end {
            Some(end) => nanos(now).min(nanos(end)),
            None => nanos(now),
        };
        self.last_at_or_before(bound)
    }

    /// The first run that fires strictly after `t`, if it is not after the end.
    pub fn first_after(&self, t: Timestamp) -> Option<u64> {
        let run = match self.last_at_or_before(nanos(t)) {
            None => 0,
            Some(run) => run.checked_add(1)?,
        };
        self.within_end(self.nanos_of(run)).then_some(run)
    }

    /// The first run that fires at or after `t`, if it is not after the end.
    pub fn first_at_or_after(&self, t: Timestamp) -> Option<u64> {
        let before = nanos(t) - 1;
        let run = match self.last_at_or_before(before) {
            None => 0,
            Some(run) => run.checked_add(1)?,
        };
        self.within_end(self.nanos_of(run)).then_some(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn hours(h: i64) -> SignedDuration {
        SignedDuration::from_hours(h)
    }

    fn grid(intervals: &[i64], end: Option<&str>) -> RunGrid {
        let intervals: Vec<_> = intervals.iter().map(|&h| hours(h)).collect();
        RunGrid::new(t("2026-11-01T00:00:00Z"), &intervals, end.map(t)).unwrap()
    }

    #[test]
    fn runs_fire_after_the_running_sum_of_intervals_and_the_last_repeats() {
        let g = grid(&[24, 48, 168], None);
        let fires: Vec<_> = (0..6).map(|k| g.fire_time(k).unwrap()).collect();
        assert_eq!(
            fires,
            [
                t("2026-11-02T00:00:00Z"),
                t("2026-11-04T00:00:00Z"),
                t("2026-11-11T00:00:00Z"),
                t("2026-11-18T00:00:00Z"),
                t("2026-11-25T00:00:00Z"),
                t("2026-12-02T00:00:00Z"),
            ]
        );
    }

    #[test]
    fn no_run_fires_after_the_end_but_one_at_the_end_does() {
        let g = grid(&[24], Some("2026-11-03T00:00:00Z"));
        assert_eq!(g.fire_time(1), Some(t("2026-11-03T00:00:00Z")));
        assert_eq!(g.fire_time(2), None);
        assert_eq!(g.first_after(t("2026-11-02T12:00:00Z")), Some(1));
        assert_eq!(g.first_after(t("2026-11-03T00:00:00Z")), None);
        assert_eq!(g.latest_due(t("2026-12-25T00:00:00Z")), Some(1));
    }

    #[test]
    fn latest_due_is_the_catch_up_run_after_downtime() {
        let g = grid(&[24, 48], None);
        assert_eq!(g.latest_due(t("2026-11-01T23:59:59Z")), None);
        assert_eq!(g.latest_due(t("2026-11-02T00:00:00Z")), Some(0));
        assert_eq!(g.latest_due(t("2026-11-03T23:00:00Z")), Some(0));
        assert_eq!(g.latest_due(t("2026-11-04T00:00:00Z")), Some(1));
        // Down from the 2nd to the 9th: runs 1 (4th), 2 (6th), 3 (8th) were due; one
        // catch-up run, the latest, is made.
        assert_eq!(g.latest_due(t("2026-11-09T00:00:00Z")), Some(3));
    }

    #[test]
    fn resume_computes_the_next_run_from_now() {
        let g = grid(&[24], None);
        assert_eq!(g.first_after(t("2026-10-01T00:00:00Z")), Some(0));
        assert_eq!(g.first_after(t("2026-11-05T10:00:00Z")), Some(4));
        // A run exactly now has already fired: the next is the one after it.
        assert_eq!(g.first_after(t("2026-11-05T00:00:00Z")), Some(4));
        assert_eq!(g.first_at_or_after(t("2026-11-05T00:00:00Z")), Some(3));
    }

    #[test]
    fn second_intervals_over_years_are_computed_without_iterating() {
        let g = RunGrid::new(
            t("2020-01-01T00:00:00Z"),
            &[SignedDuration::from_secs(1)],
            None,
        )
        .unwrap();
        let now = t("2030-01-01T00:00:00.5Z");
        let run = g.latest_due(now).unwrap();
        assert_eq!(g.fire_time(run), Some(t("2030-01-01T00:00:00Z")));
        assert_eq!(g.fire_time(run + 1), Some(t("2030-01-01T00:00:01Z")));
    }

    #[test]
    fn intervals_must_be_given_and_positive() {
        let start = t("2026-11-01T00:00:00Z");
        assert_eq!(RunGrid::new(start, &[], None), Err(GridError::NoIntervals));
        assert_eq!(
            RunGrid::new(start, &[hours(1), SignedDuration::ZERO], None),
            Err(GridError::NotPositive(1))
        );
    }
}
