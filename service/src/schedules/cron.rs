//! The recurrence syntax of schedules: five cron fields, `minute hour day-of-month month
//! day-of-week`, read as local wall-clock time in the schedule's zone. Each field is
//! `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a comma-separated list of
//! those. Minutes 0–59, hours 0–23, days 1–31, months 1–12, days of the week 0–7 (0 and
//! 7 are Sunday). As in Vixie cron, when both day fields are restricted a day matches
//! either. No names (`MON`, `JAN`), no seconds: occurrences are at least a minute apart.

use chrono::{Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// A parsed cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_any: bool,
    weekdays_any: bool,
}

/// How far ahead [`Cron::next_after`] looks before it decides there is no next time
/// (an expression such as `0 0 30 2 *`, February 30th, never matches).
const HORIZON_DAYS: u64 = 5 * 366;

/// Parse one field into a bit set over `min..=max`; whether it was `*`.
fn field(text: &str, name: &str, min: u32, max: u32) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{name}: bad step in {part:?}"))?;
                (range, step)
            }
            None => (part, 1),
        };
        let number = |s: &str| -> Result<u32, String> {
            s.parse::<u32>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| format!("{name}: {s:?} is not a number in {min}-{max}"))
        };
        let (from, to) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None if step > 1 => (number(range)?, max),
                None => (number(range)?, number(range)?),
            },
        };
        if from > to {
            return Err(format!("{name}: range {range:?} goes backwards"));
        }
        for n in (from..=to).step_by(step as usize) {
            bits |= 1 << n;
        }
    }
    Ok((bits, text == "*"))
}

impl Cron {
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "cron {text:?}: expected 5 fields (minute hour day-of-month month day-of-week)"
            ));
        };
        let (minutes, _) = field(minute, "minute", 0, 59)?;
        let (hours, _) = field(hour, "hour", 0, 23)?;
        let (days, days_any) = field(day, "day-of-month", 1, 31)?;
        let (months, _) = field(month, "month", 1, 12)?;
        let (weekdays, weekdays_any) = field(weekday, "day-of-week", 0, 7)?;
        // 7 is Sunday too.
        let weekdays = (weekdays | (weekdays >> 7)) & 0x7f;
        Ok(Self {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            days_any,
            weekdays_any,
        })
    }

    fn matches_day(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let by_day = self.days & (1 << date.day()) != 0;
        let by_weekday = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (false, true) => by_day,
            (true, false) => by_weekday,
            (false, false) => by_day || by_weekday,
        }
    }

    /// The first local time strictly after `after` that matches, within five years.
    pub fn next_after(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
        let start = after.date();
        for offset in 0..=HORIZON_DAYS {
            let date = start.checked_add_days(Days::new(offset))?;
            if !self.matches_day(date) {
                continue;
            }
            for hour in 0..24u32 {
                if self.hours & (1 << hour) == 0 {
                    continue;
                }
                for minute in 0..60u32 {
                    if self.minutes & (1 << minute) == 0 {
                        continue;
                    }
                    let time = NaiveTime::from_hms_opt(hour, minute, 0)?;
                    let at = date.and_time(time);
                    if at > after {
                        return Some(at);
                    }
                }
            }
        }
        None
    }

    /// Whether `at` (whole minute) matches.
    pub fn matches(&self, at: NaiveDateTime) -> bool {
        self.matches_day(at.date())
            && self.hours & (1 << at.hour()) != 0
            && self.minutes & (1 << at.minute()) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M").unwrap()
    }

    #[test]
    fn fields_ranges_steps_and_lists() {
        let cron = Cron::parse("*/15 6-8,22 * * 1-5").unwrap();
        // 2026-11-27 is a Friday, 2026-11-28 a Saturday.
        assert_eq!(
            cron.next_after(at("2026-11-27T06:14")),
            Some(at("2026-11-27T06:15"))
        );
        assert_eq!(
            cron.next_after(at("2026-11-27T08:45")),
            Some(at("2026-11-27T22:00"))
        );
        assert_eq!(
            cron.next_after(at("2026-11-27T22:45")),
            Some(at("2026-11-30T06:00"))
        );
        assert!(cron.matches(at("2026-11-30T07:30")));
        assert!(!cron.matches(at("2026-11-28T07:30")));
    }

    #[test]
    fn every_minute_and_sunday_as_seven() {
        let cron = Cron::parse("* * * * *").unwrap();
        assert_eq!(
            cron.next_after(at("2026-12-31T23:59")),
            Some(at("2027-01-01T00:00"))
        );
        let sunday = Cron::parse("0 12 * * 7").unwrap();
        assert_eq!(
            sunday.next_after(at("2026-11-26T00:00")),
            Some(at("2026-11-29T12:00"))
        );
    }

    #[test]
    fn both_day_fields_restricted_match_either() {
        let cron = Cron::parse("0 0 1 * 1").unwrap();
        // Monday 2026-11-30, then the 1st of December (a Tuesday).
        assert_eq!(
            cron.next_after(at("2026-11-27T00:00")),
            Some(at("2026-11-30T00:00"))
        );
        assert_eq!(
            cron.next_after(at("2026-11-30T00:00")),
            Some(at("2026-12-01T00:00"))
        );
    }

    #[test]
    fn bad_expressions_are_clear_errors_and_impossible_ones_end() {
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
            "* * * * 8",
            "* * * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad:?} accepted");
        }
        let never = Cron::parse("0 0 30 2 *").unwrap();
        assert_eq!(never.next_after(at("2026-01-01T00:00")), None);
    }
}
