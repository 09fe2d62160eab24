//! Time as a parameter: the engine never reads a clock.
//!
//! A shell reports the current time with every input as a [`Time`]:
//! microseconds since an origin of its choosing (when it started, or zero in
//! a simulation). Only differences between two `Time`s from the same shell
//! mean anything. Microseconds keep a local round trip (tens of them)
//! measurable, and an integer is exact in every client language (a
//! JavaScript number holds 2^53 µs, 285 years).

use std::ops::Add;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time, in microseconds since the shell's origin.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Time(u64);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(0);

    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(millis.saturating_mul(1_000))
    }

    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    /// Saturates at the end of time rather than wrapping.
    fn add(self, duration: Duration) -> Time {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(micros))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let t = Time::from_millis(5);
        assert_eq!(t.as_micros(), 5_000);
        assert_eq!((t + Duration::from_micros(7)).as_micros(), 5_007);
        assert_eq!(
            Time::from_micros(u64::MAX - 1) + Duration::from_secs(1),
            Time::from_micros(u64::MAX)
        );
        assert_eq!(t.saturating_since(Time::from_millis(9)), Duration::ZERO);
        assert_eq!(Time::from_millis(9).saturating_since(t), Duration::from_millis(4));
    }
}
