//! Time buckets of the tables. All times are UTC microseconds since the
//! Unix epoch; events before 1970 are refused upstream, so buckets are
//! unsigned.

/// Microseconds in a minute.
pub const MINUTE_US: i64 = 60 * 1_000_000;
/// Microseconds in an hour.
pub const HOUR_US: i64 = 60 * MINUTE_US;
/// Microseconds in a day.
pub const DAY_US: i64 = 24 * HOUR_US;

/// Days since the epoch (the `day` of partition keys).
pub fn day(ts_us: i64) -> u32 {
    u32::try_from(ts_us.max(0) / DAY_US).unwrap_or(u32::MAX)
}

/// Hours since the epoch (the embedded store's block bucket).
pub fn hour(ts_us: i64) -> u32 {
    u32::try_from(ts_us.max(0) / HOUR_US).unwrap_or(u32::MAX)
}

/// Minute of the day, 0..1440 (the clustering `minute` of rollups).
pub fn minute_of_day(ts_us: i64) -> u16 {
    u16::try_from((ts_us.max(0) % DAY_US) / MINUTE_US).unwrap_or(0)
}

/// Months since the epoch, `(year - 1970) * 12 + (month - 1)` (the `month`
/// of the stock_movements partition key).
pub fn month(ts_us: i64) -> u32 {
    let (y, m, _) = civil_from_days(i64::from(day(ts_us)));
    u32::try_from((y - 1970) * 12 + i64::from(m) - 1).unwrap_or(0)
}

/// The first microsecond of a day.
pub fn day_start_us(day: u32) -> i64 {
    i64::from(day) * DAY_US
}

/// The first microsecond of an hour bucket.
pub fn hour_start_us(hour: u32) -> i64 {
    i64::from(hour) * HOUR_US
}

/// (year, month 1..=12, day 1..=31) of a day number, by Howard Hinnant's
/// civil-from-days algorithm.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Day number of a civil date (inverse of [`civil_from_days`]).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats a timestamp as RFC 3339 UTC with seconds (`2011-02-20T11:39:00Z`).
pub fn format_ts(ts_us: i64) -> String {
    let secs = ts_us.div_euclid(1_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

/// Parses `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS[.frac]]` or the same with a
/// space for `T` (UTC), or RFC 3339 with `Z` or an offset (`+01:00`), into
/// microseconds. A date that does not exist (`2011-02-31`) is `None`, not
/// rolled over into March.
pub fn parse_ts(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = match s.split_once(['T', 't', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut dp = date.split('-');
    let y: i64 = dp.next()?.parse().ok()?;
    let m: u32 = dp.next()?.parse().ok()?;
    let d: u32 = dp.next()?.parse().ok()?;
    if dp.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m, d);
    if civil_from_days(days) != (y, m, d) {
        return None;
    }
    let mut us = days.checked_mul(86_400_000_000)?;
    if let Some(t) = time {
        // The offset: `Z`, or `+HH:MM` / `-HH:MM` after the time.
        let (clock, offset_s) = if let Some(c) = t.strip_suffix(['Z', 'z']) {
            (c, 0)
        } else if let Some(at) = t.rfind(['+', '-']) {
            let (c, off) = t.split_at(at);
            let sign = if off.starts_with('-') { -1 } else { 1 };
            let (oh, om) = off[1..].split_once(':')?;
            let (oh, om): (i64, i64) = (oh.parse().ok()?, om.parse().ok()?);
            if oh > 23 || om > 59 {
                return None;
            }
            (c, sign * (oh * 3600 + om * 60))
        } else {
            (t, 0)
        };
        let mut tp = clock.split(':');
        let h: i64 = tp.next()?.parse().ok()?;
        let mi: i64 = tp.next()?.parse().ok()?;
        let (se, frac_us) = match tp.next() {
            None => (0, 0),
            Some(x) => {
                let (whole, frac) = x.split_once('.').unwrap_or((x, ""));
                let frac_us = if frac.is_empty() {
                    0
                } else {
                    if !frac.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    let digits: String = frac.chars().chain("000000".chars()).take(6).collect();
                    digits.parse::<i64>().ok()?
                };
                (whole.parse::<i64>().ok()?, frac_us)
            }
        };
        if tp.next().is_some() || h > 23 || mi > 59 || se > 60 {
            return None;
        }
        us += ((h * 3600 + mi * 60 + se - offset_s) * 1_000_000) + frac_us;
    }
    Some(us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_of_a_known_instant() {
        // 2011-02-20T11:39:00Z
        let ts = parse_ts("2011-02-20T11:39:00Z").expect("parses");
        assert_eq!(format_ts(ts), "2011-02-20T11:39:00Z");
        assert_eq!(day(ts), 15_025);
        assert_eq!(minute_of_day(ts), 11 * 60 + 39);
        assert_eq!(month(ts), (2011 - 1970) * 12 + 1);
        assert_eq!(hour(ts), 15_025 * 24 + 11);
    }

    #[test]
    fn civil_round_trip() {
        for z in [-1, 0, 1, 10_957, 15_025, 20_000, 100_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(parse_ts("nonsense"), None);
        assert_eq!(parse_ts("2011-13-01"), None);
    }

    #[test]
    fn impossible_dates_are_refused_and_rfc3339_offsets_apply() {
        assert_eq!(parse_ts("2011-02-31"), None);
        assert_eq!(parse_ts("2011-02-29"), None);
        assert!(parse_ts("2012-02-29").is_some());
        let utc = parse_ts("2011-02-20T11:39:00Z");
        assert!(utc.is_some());
        assert_eq!(parse_ts("2011-02-20T12:39:00+01:00"), utc);
        assert_eq!(parse_ts("2011-02-20T06:09:00-05:30"), utc);
        assert_eq!(parse_ts("2011-02-20 11:39"), utc);
        assert_eq!(
            parse_ts("2011-02-20T11:39:00.25Z"),
            utc.map(|t| t + 250_000)
        );
        assert_eq!(parse_ts("2011-02-20T11:39:00+25:00"), None);
        assert_eq!(parse_ts("2011-02-20T11:39:00:00"), None);
    }
}
