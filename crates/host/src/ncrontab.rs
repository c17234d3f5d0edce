//! Six-field NCRONTAB schedules (`{second} {minute} {hour} {day} {month} {day-of-week}`), as
//! timer triggers use them, evaluated in UTC like the Functions host by default.

use std::fmt;
use std::str::FromStr;

use time::{Date, Duration, Month, OffsetDateTime, Time};

/// A parsed schedule. Day-of-month and day-of-week must both match (NCrontab semantics).
#[derive(Clone, PartialEq, Eq)]
pub struct Schedule {
    source: String,
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
}

/// Why a schedule expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule {expression:?}: {reason}")]
pub struct ScheduleError {
    pub expression: String,
    pub reason: String,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.source)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(expression: &str) -> Result<Schedule, ScheduleError> {
        let fail = |reason: String| ScheduleError {
            expression: expression.to_string(),
            reason,
        };
        let fields: Vec<&str> = expression.split_whitespace().collect();
        if fields.len() != 6 {
            let hint = if expression.contains(':') {
                " (TimeSpan schedules run only on App Service plans; use NCRONTAB)"
            } else {
                ""
            };
            return Err(fail(format!(
                "expected six fields (second minute hour day month day-of-week), found {}{hint}",
                fields.len()
            )));
        }
        let field = |i: usize, name: &str, min: u32, max: u32, names: &[&str]| {
            parse_field(fields[i], min, max, names)
                .map_err(|r| fail(format!("{name} field {:?}: {r}", fields[i])))
        };
        let mut weekdays = field(5, "day-of-week", 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7); // 7 is Sunday too
        }
        Ok(Schedule {
            source: fields.join(" "),
            seconds: field(0, "second", 0, 59, &[])?,
            minutes: field(1, "minute", 0, 59, &[])?,
            hours: field(2, "hour", 0, 23, &[])?,
            days: field(3, "day", 1, 31, &[])?,
            months: field(4, "month", 1, 12, &MONTHS)?,
            weekdays,
        })
    }
}

/// Parses one field into a bit set: `*`, `n`, `a-b`, `*/s`, `a-b/s`, `n/s`, lists, names.
fn parse_field(field: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // month names count from 1, weekday names from 0
            return Ok(i as u32 + u32::from(names.len() == 12));
        }
        let n: u32 = s
            .parse()
            .map_err(|_| format!("{s:?} is not a number or name"))?;
        if n < min || n > max {
            return Err(format!("{n} is outside {min}-{max}"));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("step {s:?} is not a number"))?;
                if step == 0 {
                    return Err("a step of 0".into());
                }
                if step > max {
                    return Err(format!("a step of {step} is larger than {max}"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (from, to) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("range {a}-{b} runs backwards"));
            }
            (a, b)
        } else if range.is_empty() {
            return Err("an empty list item".into());
        } else {
            let a = value(range)?;
            (a, if part.contains('/') { max } else { a })
        };
        let mut n = from;
        while n <= to {
            bits |= 1 << n;
            n += step;
        }
    }
    Ok(bits)
}

fn has(bits: u64, n: u32) -> bool {
    bits & (1 << n) != 0
}

impl Schedule {
    /// The first occurrence strictly after `after` (whole seconds), or `None` when the
    /// schedule never fires within the next five years (for example 30 February).
    pub fn next_after(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        let after = after.to_offset(time::UtcOffset::UTC);
        let mut t = after.replace_nanosecond(0).ok()? + Duration::seconds(1);
        let limit = after + Duration::days(5 * 366);
        while t <= limit {
            if !has(self.months, u8::from(t.month()) as u32) {
                t = start_of_next_month(t.date())?;
                continue;
            }
            if !has(self.days, t.day() as u32)
                || !has(self.weekdays, t.weekday().number_days_from_sunday() as u32)
            {
                t = t.date().next_day()?.midnight().assume_utc();
                continue;
            }
            if !has(self.hours, t.hour() as u32) {
                t = t.replace_time(Time::from_hms(t.hour(), 0, 0).ok()?) + Duration::hours(1);
                continue;
            }
            if !has(self.minutes, t.minute() as u32) {
                t = t.replace_time(Time::from_hms(t.hour(), t.minute(), 0).ok()?)
                    + Duration::minutes(1);
                continue;
            }
            if !has(self.seconds, t.second() as u32) {
                t += Duration::seconds(1);
                continue;
            }
            return Some(t);
        }
        None
    }
}

fn start_of_next_month(d: Date) -> Option<OffsetDateTime> {
    let (year, month) = match d.month() {
        Month::December => (d.year() + 1, Month::January),
        m => (d.year(), m.next()),
    };
    Some(
        Date::from_calendar_date(year, month, 1)
            .ok()?
            .midnight()
            .assume_utc(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn next(expr: &str, after: OffsetDateTime) -> OffsetDateTime {
        expr.parse::<Schedule>().unwrap().next_after(after).unwrap()
    }

    #[test]
    fn every_fifteen_minutes() {
        let s = "0 */15 * * * *";
        assert_eq!(
            next(s, datetime!(2026-11-24 10:00:00 UTC)),
            datetime!(2026-11-24 10:15:00 UTC)
        );
        assert_eq!(
            next(s, datetime!(2026-11-24 10:14:59.9 UTC)),
            datetime!(2026-11-24 10:15:00 UTC)
        );
        assert_eq!(
            next(s, datetime!(2026-11-24 23:50:00 UTC)),
            datetime!(2026-11-25 00:00:00 UTC)
        );
    }

    #[test]
    fn star_slash_45_fires_at_00_and_45_not_every_45_minutes() {
        let s = "0 */45 * * * *";
        let a = next(s, datetime!(2026-11-24 10:00:00 UTC));
        let b = next(s, a);
        assert_eq!(a, datetime!(2026-11-24 10:45:00 UTC));
        assert_eq!(b, datetime!(2026-11-24 11:00:00 UTC));
    }

    #[test]
    fn ranges_lists_names_and_weekdays() {
        // 09:30 on weekdays
        let s = "0 30 9 * * Mon-Fri";
        assert_eq!(
            next(s, datetime!(2026-11-27 10:00:00 UTC)),
            datetime!(2026-11-30 09:30:00 UTC)
        ); // Fri -> Mon
        // first of January and July at midnight
        assert_eq!(
            next("0 0 0 1 Jan,jul *", datetime!(2026-02-01 00:00:00 UTC)),
            datetime!(2026-07-01 00:00:00 UTC)
        );
        // 7 means Sunday
        assert_eq!(
            next("0 0 12 * * 7", datetime!(2026-11-24 00:00:00 UTC)),
            datetime!(2026-11-29 12:00:00 UTC)
        );
        // every 20 seconds from second 5
        assert_eq!(
            next("5/20 * * * * *", datetime!(2026-11-24 00:00:26 UTC)),
            datetime!(2026-11-24 00:00:45 UTC)
        );
        // year rollover
        assert_eq!(
            next("0 0 0 * * *", datetime!(2026-12-31 12:00:00 UTC)),
            datetime!(2027-01-01 00:00:00 UTC)
        );
        // leap day
        assert_eq!(
            next("0 0 0 29 2 *", datetime!(2026-03-01 00:00:00 UTC)),
            datetime!(2028-02-29 00:00:00 UTC)
        );
    }

    #[test]
    fn impossible_dates_never_fire() {
        let s: Schedule = "0 0 0 30 Feb *".parse().unwrap();
        assert_eq!(s.next_after(datetime!(2026-01-01 00:00:00 UTC)), None);
    }

    #[test]
    fn bad_expressions_say_which_field_is_wrong() {
        for (expr, needle) in [
            ("*/15 * * * *", "six fields"),
            ("00:45:00", "TimeSpan"),
            ("60 * * * * *", "second field"),
            ("0 */0 * * * *", "step of 0"),
            ("0 0 25 * * *", "hour field"),
            ("0 0 0 0 * *", "day field"),
            ("0 0 0 * Foo *", "month field"),
            ("0 0 0 * * 5-1", "backwards"),
            ("0 0,,1 * * * *", "empty"),
            ("59/4294967295 * * * * *", "larger than"),
        ] {
            let err = expr.parse::<Schedule>().unwrap_err().to_string();
            assert!(err.contains(needle), "{expr}: {err}");
        }
    }
}
