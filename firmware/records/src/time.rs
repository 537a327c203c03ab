//! UTC dates for records (the cart's clock is UTC; the page says so), through `jiff`.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// The instant of Unix milliseconds (clamped to jiff's range, far beyond any record).
fn instant(unix_ms: u64) -> Timestamp {
    i64::try_from(unix_ms)
        .ok()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .unwrap_or(Timestamp::MAX)
}

/// `YYYY-MM-DD HH:MM:SS UTC` of Unix milliseconds.
pub fn utc(unix_ms: u64) -> String {
    instant(unix_ms)
        .strftime("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

/// `YYYYMMDDTHHMMSS` of Unix milliseconds (session ids).
pub fn compact(unix_ms: u64) -> String {
    instant(unix_ms).strftime("%Y%m%dT%H%M%S").to_string()
}

/// Parses `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM[:SS]` (a trailing `Z` allowed)
/// into Unix milliseconds; `None` for anything else or before 1970.
pub fn parse(s: &str) -> Option<u64> {
    let dt: DateTime = s.trim().trim_end_matches('Z').parse().ok()?;
    let t = TimeZone::UTC.to_timestamp(dt).ok()?;
    u64::try_from(t.as_millisecond()).ok()
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
        assert_eq!(parse("2026-12-04 10:15:30Z"), Some(t));
        assert_eq!(parse("2026-12-04T10:15"), Some(t - 30_000));
        for bad in [
            "",
            "2026-13-01",
            "yesterday",
            "2026-12-04T25:00",
            "1969-12-31",
            "2023-02-29",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
