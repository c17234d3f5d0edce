//! HR records: an employee as the HR system knows them (names, e-mail, job, manager,
//! location, dates, positions). Parsed, not merely validated: a record always has an
//! employee id, a first and last name, and dates in order.

use serde::{Deserialize, Serialize};
use time::Date;

/// One position an employee held or holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HrPosition {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    #[serde(with = "ymd")]
    #[schema(value_type = String, format = Date)]
    pub start: Date,
    #[serde(default, with = "ymd_opt", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Date)]
    pub end: Option<Date>,
}

/// An employee's HR record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"employee_id": "E-10442", "given_name": "Ada", "surname": "Lovelace", "display_name": "Ada Lovelace", "personal_email": "ada.l@example.net", "work_email": "ada.lovelace@contoso.com", "job_title": "Engineer", "department": "Research", "manager_employee_id": "E-10001", "location": "London", "usage_location": "GB", "start_date": "2026-12-02", "positions": [{"title": "Engineer", "department": "Research", "start": "2026-12-02"}]}))]
pub struct HrRecord {
    pub employee_id: String,
    pub given_name: String,
    pub surname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personal_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    /// The employee id of their manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_employee_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Two-letter country code, as Entra's usageLocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_location: Option<String>,
    #[serde(with = "ymd")]
    #[schema(value_type = String, format = Date)]
    pub start_date: Date,
    #[serde(default, with = "ymd_opt", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Date)]
    pub end_date: Option<Date>,
    /// Positions with dates: the one held on a plan's day gives `job_title` and
    /// `department` where these are empty, or when it began after `start_date`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub positions: Vec<HrPosition>,
}

/// The record's fields by name, for rules and expressions.
pub const FIELDS: &[&str] = &[
    "employee_id",
    "given_name",
    "surname",
    "display_name",
    "personal_email",
    "work_email",
    "job_title",
    "department",
    "manager_employee_id",
    "location",
    "usage_location",
    "start_date",
    "end_date",
];

/// The longest employee id accepted (it becomes part of table keys).
const MAX_ID: usize = 64;

/// Dates as `YYYY-MM-DD` in JSON (the `time` crate's own serde form is a tuple).
pub mod ymd {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::Date;

    /// Writes `YYYY-MM-DD`.
    pub fn serialize<S: Serializer>(d: &Date, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::date_text(*d))
    }

    /// Reads `YYYY-MM-DD`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Date, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_date(&text).map_err(serde::de::Error::custom)
    }
}

/// Optional dates as `YYYY-MM-DD` or null.
pub mod ymd_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::Date;

    /// Writes `YYYY-MM-DD` or null.
    pub fn serialize<S: Serializer>(d: &Option<Date>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::date_text(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads `YYYY-MM-DD`, null or "".
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Date>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(t) if !t.trim().is_empty() => super::parse_date(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
            _ => Ok(None),
        }
    }
}

/// `YYYY-MM-DD`.
pub fn date_text(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<Date, String> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s.trim(), &format).map_err(|_| format!("{s:?} is not a date (YYYY-MM-DD)"))
}

impl HrRecord {
    /// A field's value by name (None when empty or unknown).
    pub fn field(&self, name: &str) -> Option<String> {
        let v = match name {
            "employee_id" => Some(self.employee_id.clone()),
            "given_name" => Some(self.given_name.clone()),
            "surname" => Some(self.surname.clone()),
            "display_name" => Some(
                self.display_name
                    .clone()
                    .unwrap_or_else(|| format!("{} {}", self.given_name, self.surname)),
            ),
            "personal_email" => self.personal_email.clone(),
            "work_email" => self.work_email.clone(),
            "job_title" => self.job_title.clone(),
            "department" => self.department.clone(),
            "manager_employee_id" => self.manager_employee_id.clone(),
            "location" => self.location.clone(),
            "usage_location" => self.usage_location.clone(),
            "start_date" => Some(date_text(self.start_date)),
            "end_date" => self.end_date.map(date_text),
            _ => None,
        };
        v.filter(|v| !v.is_empty())
    }

    /// The position held on `today`: begun on or before it, not ended before it, and of
    /// those the one begun last (on a tie, the later in the list).
    pub fn current_position(&self, today: Date) -> Option<&HrPosition> {
        self.positions
            .iter()
            .filter(|p| p.start <= today && p.end.is_none_or(|end| end >= today))
            .max_by_key(|p| p.start)
    }

    /// The record as of `today`, with its current position's title and department as
    /// `job_title` and `department` where the record's own is empty, or older: the
    /// record's fields date from its start date, so a position begun after it is newer.
    /// Unchanged (borrowed) when no position applies.
    pub fn as_of(&self, today: Date) -> std::borrow::Cow<'_, HrRecord> {
        use std::borrow::Cow;
        let Some(p) = self.current_position(today) else {
            return Cow::Borrowed(self);
        };
        let newer = p.start > self.start_date;
        let empty = |v: &Option<String>| v.as_deref().is_none_or(|v| v.trim().is_empty());
        let title = (newer || empty(&self.job_title)) && !p.title.trim().is_empty();
        let department = p
            .department
            .as_ref()
            .filter(|d| !d.trim().is_empty())
            .filter(|_| newer || empty(&self.department));
        if !title && department.is_none() {
            return Cow::Borrowed(self);
        }
        let mut r = self.clone();
        if title {
            r.job_title = Some(p.title.clone());
        }
        if let Some(d) = department {
            r.department = Some(d.clone());
        }
        Cow::Owned(r)
    }

    /// Checks what serde cannot: required text present, ids sane, dates in order.
    pub fn check(mut self) -> Result<HrRecord, String> {
        self.employee_id = self.employee_id.trim().to_string();
        if self.employee_id.is_empty() {
            return Err("employee_id is empty".into());
        }
        if self.employee_id.chars().count() > MAX_ID
            || self.employee_id.chars().any(|c| c.is_control())
        {
            return Err(
                "employee_id is longer than 64 characters or has control characters".into(),
            );
        }
        self.given_name = self.given_name.trim().to_string();
        self.surname = self.surname.trim().to_string();
        if self.given_name.is_empty() || self.surname.is_empty() {
            return Err("given_name and surname are required".into());
        }
        for (name, email) in [
            ("personal_email", &self.personal_email),
            ("work_email", &self.work_email),
        ] {
            if let Some(e) = email
                && (e.split('@').count() != 2 || e.starts_with('@') || e.ends_with('@'))
            {
                return Err(format!("{name} {e:?} is not an e-mail address"));
            }
        }
        if let Some(u) = &self.usage_location
            && (u.len() != 2 || !u.chars().all(|c| c.is_ascii_alphabetic()))
        {
            return Err(format!(
                "usage_location {u:?} is not a two-letter country code"
            ));
        }
        if let Some(end) = self.end_date
            && end < self.start_date
        {
            return Err("end_date is before start_date".into());
        }
        if self.manager_employee_id.as_deref() == Some(self.employee_id.as_str()) {
            return Err("an employee cannot be their own manager".into());
        }
        for p in &self.positions {
            if p.end.is_some_and(|end| end < p.start) {
                return Err(format!("position {:?} ends before it starts", p.title));
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> HrRecord {
        HrRecord {
            employee_id: " E1 ".into(),
            given_name: "Ada".into(),
            surname: "Lovelace".into(),
            display_name: None,
            personal_email: None,
            work_email: None,
            job_title: None,
            department: None,
            manager_employee_id: None,
            location: None,
            usage_location: Some("GB".into()),
            start_date: parse_date("2026-01-05").unwrap(),
            end_date: None,
            positions: vec![],
        }
    }

    #[test]
    fn a_record_is_trimmed_and_its_dates_checked() {
        let r = record().check().unwrap();
        assert_eq!(r.employee_id, "E1");
        assert_eq!(r.field("display_name").unwrap(), "Ada Lovelace");
        assert_eq!(r.field("start_date").unwrap(), "2026-01-05");
        let mut bad = record();
        bad.end_date = Some(parse_date("2025-01-01").unwrap());
        assert!(bad.check().unwrap_err().contains("before start_date"));
        let mut bad = record();
        bad.usage_location = Some("GBR".into());
        assert!(bad.check().is_err());
    }

    fn position(
        title: &str,
        department: Option<&str>,
        start: &str,
        end: Option<&str>,
    ) -> HrPosition {
        HrPosition {
            title: title.into(),
            department: department.map(str::to_string),
            start: parse_date(start).unwrap(),
            end: end.map(|e| parse_date(e).unwrap()),
        }
    }

    #[test]
    fn the_current_position_gives_title_and_department_when_newer_or_the_record_has_none() {
        let today = parse_date("2026-03-01").unwrap();
        let mut r = record();
        r.job_title = Some("Engineer".into());
        r.department = Some("R&D".into());
        r.positions = vec![
            position("Intern", Some("Lab"), "2025-06-01", Some("2025-12-31")),
            position("Lead", Some("Platform"), "2026-02-01", None),
            position("Director", Some("Board"), "2026-04-01", None),
        ];
        // the ended one and the future one do not count; the current one is newer
        let now = r.as_of(today);
        assert_eq!(now.job_title.as_deref(), Some("Lead"));
        assert_eq!(now.department.as_deref(), Some("Platform"));
        // a position from the start date on is not newer than the record's own fields
        r.positions = vec![position("Trainee", Some("Lab"), "2026-01-05", None)];
        assert_eq!(r.as_of(today).job_title.as_deref(), Some("Engineer"));
        r.job_title = None;
        let now = r.as_of(today);
        assert_eq!(now.job_title.as_deref(), Some("Trainee"));
        assert_eq!(now.department.as_deref(), Some("R&D"));
        // the latest start wins; without positions nothing changes
        r.positions = vec![
            position("B", None, "2026-02-10", None),
            position("A", None, "2026-02-01", None),
        ];
        assert_eq!(r.as_of(today).job_title.as_deref(), Some("B"));
        r.positions.clear();
        assert!(matches!(r.as_of(today), std::borrow::Cow::Borrowed(_)));
    }
}
