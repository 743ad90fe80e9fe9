//! The Numenta Anomaly Benchmark: scoring rules and the pure parts of the harness (the
//! `nab` binary does the file I/O).

pub mod episodes;
pub mod scoring;

pub use scoring::{normalize, optimize_threshold, raw_file_score, FileLabels, Profile, PROFILES};

/// Milliseconds since 1970 of `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC, no zone), or `None`.
pub fn parse_timestamp_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, time) = text.split_once([' ', 'T'])?;
    let mut date_parts = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (
        date_parts.next()??,
        date_parts.next()??,
        date_parts.next()??,
    );
    let (time, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut time_parts = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (
        time_parts.next()??,
        time_parts.next()??,
        time_parts.next().unwrap_or(Some(0))?,
    );
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Digits only: slicing a fraction with other characters could cut one in half (fuzz
    // target `replay_csv`).
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let millis: i64 = format!("{fraction:0<3}")[..3].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Map windows given as timestamps to row indices: the first row at the start time, and
/// the first row at the end time from there on.
pub fn windows_to_rows(
    timestamps: &[i64],
    windows: &[(i64, i64)],
) -> Result<Vec<(usize, usize)>, String> {
    windows
        .iter()
        .map(|&(start, end)| {
            let first = timestamps
                .iter()
                .position(|&t| t == start)
                .ok_or_else(|| format!("window start {start} is not a row"))?;
            let last = timestamps[first..]
                .iter()
                .position(|&t| t == end)
                .map(|offset| first + offset)
                .ok_or_else(|| format!("window end {end} is not a row"))?;
            Ok((first, last))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nab_timestamps() {
        assert_eq!(parse_timestamp_ms("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_timestamp_ms("2014-04-10 07:15:00.000000"),
            Some(1_397_114_100_000)
        );
        assert_eq!(
            parse_timestamp_ms("2000-02-29 12:00:01.5"),
            Some(951_825_601_500)
        );
        assert_eq!(parse_timestamp_ms("2014-13-01 00:00:00"), None);
        assert_eq!(parse_timestamp_ms("yesterday"), None);
        // Found by fuzz target `replay_csv`: a multi-byte character in the fraction was
        // sliced in half (a panic).
        assert_eq!(parse_timestamp_ms("2000-01-01 00:00:00.12\u{38e}"), None);
        assert_eq!(parse_timestamp_ms("2000-01-01 00:00:00.1x"), None);
    }

    #[test]
    fn windows_map_to_rows() {
        let ts = [10, 20, 30, 20, 40];
        assert_eq!(windows_to_rows(&ts, &[(20, 40)]).unwrap(), vec![(1, 4)]);
        assert!(windows_to_rows(&ts, &[(25, 40)]).is_err());
    }
}
