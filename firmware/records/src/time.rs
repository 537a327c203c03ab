//! UTC dates for records, without a date library (the cart's clock is UTC; the page says so).

/// `YYYY-MM-DD HH:MM:SS UTC` of Unix milliseconds.
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `YYYYMMDDTHHMMSS` of Unix milliseconds (session ids).
pub fn compact(unix_ms: u64) -> String {
    let u = utc(unix_ms);
    format!(
        "{}{}{}T{}{}{}",
        &u[0..4],
        &u[5..7],
        &u[8..10],
        &u[11..13],
        &u[14..16],
        &u[17..19]
    )
}

/// Parses `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM[:SS]` into Unix milliseconds.
pub fn parse(s: &str) -> Option<u64> {
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut it = date.split('-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.parse().ok()?;
    if it.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    if let Some(t) = time {
        let t = t.trim_end_matches('Z');
        let mut p = t.split(':');
        let h: i64 = p.next()?.parse().ok()?;
        let mi: i64 = p.next()?.parse().ok()?;
        let se: i64 = p.next().map_or(Some(0), |v| v.parse().ok())?;
        if h > 23 || mi > 59 || se > 60 {
            return None;
        }
        secs += h * 3600 + mi * 60 + se;
    }
    u64::try_from(secs).ok().map(|s| s * 1000)
}

/// (year, month, day) of days since 1970-01-01 (proleptic Gregorian).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // 2026-12-04 10:15:30 UTC
        let t = 1_796_379_330_000;
        assert_eq!(utc(t), "2026-12-04 10:15:30 UTC");
        assert_eq!(compact(t), "20261204T101530");
        assert_eq!(parse("2026-12-04T10:15:30"), Some(t));
        assert_eq!(
            parse("2026-12-04"),
            Some(t - (10 * 3600 + 15 * 60 + 30) * 1000)
        );
        assert_eq!(utc(parse("2024-02-29").unwrap()), "2024-02-29 00:00:00 UTC");
        for bad in ["", "2026-13-01", "yesterday", "2026-12-04T25:00"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
