//! FreeSWITCH's sessions-per-second throttle and its session counters, as
//! `status` and `fsctl sps` report them.
//!
//! FreeSWITCH does not use a sliding window or a token bucket. Its timer
//! thread resets a budget (`runtime.sps`) to the limit (`sps_total`, 30 by
//! default) once a second, and every session request
//! (`switch_core_session_request_uuid`) first decrements the budget, then is
//! refused with `Throttle Error!` when what is left is zero or less. So:
//! - at most *limit − 1* sessions are created per one-second window (with
//!   the default 30: 29, which is what trace 13 shows: 14 loopback calls,
//!   28 sessions, and the A leg of a 15th whose B leg was refused);
//! - refused requests spend the budget too, so the rate `status` reports
//!   counts them (`sps_last` = limit − what is left; trace 13's `peak 40`
//!   after 40 requests in one second against a limit of 30);
//! - the windows are fixed, one second each from start-up, not from the
//!   first request;
//! - `fsctl sps N` changes only the limit: the budget of the current
//!   second is left as it is and the new limit applies from the next tick.
//!
//! [`Throttle`] is that accounting, pure and clock-free (callers pass the
//! time); the simulator's core owns one, behind a mutex, and a clock task
//! ticks it every second so that `Over Session Rate of N!` is logged on
//! time.

use std::time::{Duration, Instant};

/// FreeSWITCH's default limit (`sessions-per-second` in switch.conf.xml).
pub const DEFAULT_SESSIONS_PER_SECOND: u32 = 30;

/// Seconds after which the "last 5min" peaks start over (FreeSWITCH
/// counts 300 ticks of its one-second timer).
const FIVE_MINUTES: u32 = 300;

/// The one-second tick.
const TICK: Duration = Duration::from_secs(1);

/// The sessions-per-second budget and the counters `status` prints.
#[derive(Debug, Clone)]
pub struct Throttle {
    /// `sps_total`: the configured limit.
    limit: i64,
    /// `runtime.sps`: what is left of this second's budget (negative once
    /// refused requests have overspent it).
    budget: i64,
    /// `sps_last`: requests in the last complete second.
    last: i64,
    /// Highest `last` since start-up, and over the current five minutes.
    peak: i64,
    peak_fivemin: i64,
    /// Live sessions: the highest count since start-up and over the
    /// current five minutes.
    sessions_peak: usize,
    sessions_peak_fivemin: usize,
    /// Ticks since the five-minute peaks were last reset.
    ticks: u32,
    /// When the current one-second window ends.
    next_tick: Instant,
}

/// What one [`Throttle::roll`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rolled {
    /// Ticks run.
    pub ticks: u32,
    /// Ticks that found the budget spent: FreeSWITCH logs `Over Session
    /// Rate of <limit>!` for each.
    pub over: u32,
}

impl Throttle {
    /// A throttle whose first window starts at `now`. A limit of 0 is
    /// taken as 1 (FreeSWITCH ignores `fsctl sps 0`; a budget that can
    /// never admit anything is not a configuration).
    pub fn new(limit: u32, now: Instant) -> Self {
        let limit = i64::from(limit.max(1));
        Self {
            limit,
            budget: limit,
            last: 0,
            peak: 0,
            peak_fivemin: 0,
            sessions_peak: 0,
            sessions_peak_fivemin: 0,
            ticks: 0,
            next_tick: now + TICK,
        }
    }

    /// Runs every one-second tick due by `now` (the timer thread's work).
    /// `live` is the number of live sessions, which the five-minute
    /// session peak restarts from.
    pub fn roll(&mut self, now: Instant, live: usize) -> Rolled {
        let mut rolled = Rolled::default();
        while now >= self.next_tick {
            // After an idle stretch every further tick is the same (no
            // requests, full budget); only the five-minute reset moves.
            let behind = now.duration_since(self.next_tick).as_secs();
            if rolled.ticks > FIVE_MINUTES + 1 && behind > 0 {
                let skip = u32::try_from(behind).unwrap_or(u32::MAX);
                self.ticks =
                    ((u64::from(self.ticks) + u64::from(skip)) % u64::from(FIVE_MINUTES)) as u32;
                self.next_tick += TICK * skip;
                rolled.ticks = rolled.ticks.saturating_add(skip);
                continue;
            }
            if self.budget <= 0 {
                rolled.over += 1;
            }
            self.last = self.limit - self.budget;
            self.ticks += 1;
            if self.ticks >= FIVE_MINUTES {
                self.ticks = 0;
                self.peak_fivemin = 0;
                self.sessions_peak_fivemin = live;
            }
            self.peak_fivemin = self.peak_fivemin.max(self.last);
            self.peak = self.peak.max(self.last);
            self.budget = self.limit;
            self.next_tick += TICK;
            rolled.ticks += 1;
        }
        rolled
    }

    /// A session request: spends one from this second's budget and says
    /// whether the session may be created. Call [`Throttle::roll`] first.
    pub fn take(&mut self) -> bool {
        self.budget -= 1;
        self.budget > 0
    }

    /// Records a created session; `live` counts it.
    pub fn created(&mut self, live: usize) {
        self.sessions_peak = self.sessions_peak.max(live);
        self.sessions_peak_fivemin = self.sessions_peak_fivemin.max(live);
    }

    /// `fsctl sps [N]`: a positive `n` becomes the limit (from the next
    /// tick); anything else leaves it. Returns the limit.
    pub fn set_limit(&mut self, n: i64) -> i64 {
        if n > 0 {
            self.limit = n;
        }
        self.limit
    }

    /// The limit (`max` in `status`).
    pub fn limit(&self) -> i64 {
        self.limit
    }

    /// Session requests in the last complete second.
    pub fn last(&self) -> i64 {
        self.last
    }

    /// The highest per-second rate since start-up.
    pub fn peak(&self) -> i64 {
        self.peak
    }

    /// The highest per-second rate over the current five minutes.
    pub fn peak_fivemin(&self) -> i64 {
        self.peak_fivemin
    }

    /// The most live sessions since start-up.
    pub fn sessions_peak(&self) -> usize {
        self.sessions_peak
    }

    /// The most live sessions over the current five minutes.
    pub fn sessions_peak_fivemin(&self) -> usize {
        self.sessions_peak_fivemin
    }

    /// When the current window ends (for the clock task).
    pub fn next_tick(&self) -> Instant {
        self.next_tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(t: Instant, s: f64) -> Instant {
        t + Duration::from_secs_f64(s)
    }

    #[test]
    fn a_second_admits_one_less_than_the_limit() {
        let t0 = Instant::now();
        let mut t = Throttle::new(30, t0);
        let admitted = (0..40).filter(|_| t.take()).count();
        assert_eq!(admitted, 29);
    }

    #[test]
    fn trace_13_burst_gives_14_calls_and_a_stranded_a_leg() {
        // 25 loopback originates, two session requests each (A, then B).
        let t0 = Instant::now();
        let mut t = Throttle::new(30, t0);
        let mut calls = 0;
        let mut stranded = 0;
        let mut refused = 0;
        for _ in 0..25 {
            if !t.take() {
                refused += 1;
            } else if t.take() {
                calls += 1;
            } else {
                stranded += 1;
            }
        }
        assert_eq!((calls, stranded, refused), (14, 1, 10));
        // The next tick reports 40 requests: 29 granted, 11 refused.
        let r = t.roll(secs(t0, 1.0), 29);
        assert_eq!(r, Rolled { ticks: 1, over: 1 });
        assert_eq!((t.last(), t.peak(), t.peak_fivemin()), (40, 40, 40));
        // A quiet second after it: the rate is back to 0, the peak stays.
        let r = t.roll(secs(t0, 2.0), 29);
        assert_eq!(r, Rolled { ticks: 1, over: 0 });
        assert_eq!((t.last(), t.peak()), (0, 40));
    }

    #[test]
    fn windows_are_fixed_seconds_from_start() {
        let t0 = Instant::now();
        let mut t = Throttle::new(3, t0);
        // Late in the first window: two granted, the third refused.
        t.roll(secs(t0, 0.9), 0);
        assert!(t.take());
        assert!(t.take());
        assert!(!t.take());
        // Just after the boundary the budget is whole again, although
        // less than a second has passed since those requests.
        t.roll(secs(t0, 1.05), 0);
        assert!(t.take());
        assert!(t.take());
        assert!(!t.take());
    }

    #[test]
    fn a_new_limit_applies_from_the_next_tick() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2, t0);
        assert!(t.take());
        assert!(!t.take());
        assert_eq!(t.set_limit(5), 5);
        assert!(!t.take(), "the spent budget of this second is not refilled");
        t.roll(secs(t0, 1.0), 0);
        assert_eq!((0..10).filter(|_| t.take()).count(), 4);
        assert_eq!(t.set_limit(0), 5);
        assert_eq!(t.set_limit(-3), 5);
        assert_eq!(t.limit(), 5);
    }

    #[test]
    fn five_minute_peaks_start_over() {
        let t0 = Instant::now();
        let mut t = Throttle::new(30, t0);
        for _ in 0..10 {
            t.take();
        }
        t.created(7);
        t.roll(secs(t0, 1.0), 7);
        assert_eq!((t.peak(), t.peak_fivemin()), (10, 10));
        assert_eq!((t.sessions_peak(), t.sessions_peak_fivemin()), (7, 7));
        // 299 more ticks: the five minutes are up.
        t.roll(secs(t0, 300.0), 2);
        assert_eq!((t.peak(), t.peak_fivemin()), (10, 0));
        assert_eq!((t.sessions_peak(), t.sessions_peak_fivemin()), (7, 2));
    }

    #[test]
    fn a_long_idle_stretch_rolls_cheaply() {
        let t0 = Instant::now();
        let mut t = Throttle::new(30, t0);
        for _ in 0..31 {
            t.take();
        }
        let r = t.roll(secs(t0, 86_400.5), 0);
        assert_eq!(r.ticks, 86_400);
        assert_eq!(r.over, 1);
        assert_eq!((t.last(), t.peak()), (0, 31));
        assert!(t.next_tick() > secs(t0, 86_400.5));
        assert!(t.next_tick() <= secs(t0, 86_401.0));
        assert!(t.take());
    }
}
