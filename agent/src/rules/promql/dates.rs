//! Calendar dates as Go's `time` package computes them, for PromQL's date functions and the
//! `humanizeTimestamp` template function.

/// A UTC calendar date and time.
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub weekday: u32,
    pub yday: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

pub fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Go's `time.Unix(secs, 0).UTC()` broken down, with Go's own arithmetic (`absDate`): the
/// seconds are moved to Go's absolute epoch in wrapping 64-bit integers, so even the minimum
/// that Go's float conversion gives NaN and huge values lands on the date Prometheus prints.
pub fn civil(secs: i64) -> Civil {
    const SECONDS_PER_DAY: u64 = 86_400;
    const DAYS_PER_400_YEARS: u64 = 365 * 400 + 97;
    const DAYS_PER_100_YEARS: u64 = 365 * 100 + 24;
    const DAYS_PER_4_YEARS: u64 = 365 * 4 + 1;
    const ABSOLUTE_ZERO_YEAR: i64 = -292_277_022_399;
    // unixToInternal + internalToAbsolute.
    let abs = secs.wrapping_add(9_223_372_028_715_321_600) as u64;
    let mut d = abs / SECONDS_PER_DAY;
    let mut n = d / DAYS_PER_400_YEARS;
    let mut y = 400 * n;
    d -= DAYS_PER_400_YEARS * n;
    n = d / DAYS_PER_100_YEARS;
    n -= n >> 2;
    y += 100 * n;
    d -= DAYS_PER_100_YEARS * n;
    n = d / DAYS_PER_4_YEARS;
    y += 4 * n;
    d -= DAYS_PER_4_YEARS * n;
    n = d / 365;
    n -= n >> 2;
    y += n;
    d -= 365 * n;
    let year = (y as i64).wrapping_add(ABSOLUTE_ZERO_YEAR);
    let yday = d as u32;
    let mut day = yday;
    let (month, day) = 'm: {
        if is_leap(year) {
            if day > 31 + 29 - 1 {
                day -= 1;
            } else if day == 31 + 29 - 1 {
                break 'm (2, 29);
            }
        }
        const BEFORE: [u32; 13] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365];
        let mut month = day / 31;
        let end = BEFORE[month as usize + 1];
        let begin = if day >= end {
            month += 1;
            end
        } else {
            BEFORE[month as usize]
        };
        (month + 1, day - begin + 1)
    };
    Civil {
        year,
        month,
        day,
        // Go's absolute epoch starts on a Monday.
        weekday: ((abs + SECONDS_PER_DAY) % (7 * SECONDS_PER_DAY) / SECONDS_PER_DAY) as u32,
        yday: yday + 1,
        hour: (abs % SECONDS_PER_DAY / 3600) as u32,
        minute: (abs % 3600 / 60) as u32,
        second: (abs % 60) as u32,
    }
}

pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_civil_dates() {
        // 2024-02-29 13:45:00 UTC, a Thursday, day 60 of a leap year.
        let d = civil(1_709_214_300);
        assert_eq!(
            (d.year, d.month, d.day, d.weekday, d.yday, d.hour, d.minute),
            (2024, 2, 29, 4, 60, 13, 45)
        );
        let d = civil(0);
        assert_eq!(
            (d.year, d.month, d.day, d.weekday, d.yday),
            (1970, 1, 1, 4, 1)
        );
        assert_eq!(days_in_month(1900, 2), 28);
    }
}
