//! Bulk import of HR records from JSON or CSV: every row is parsed and checked, and each
//! rejected row gets its reason. The caller stores nothing unless every row passed, and
//! then stores them all or none ([`crate::HrRecordStore::import_records`]), so an import is
//! never half-applied.

use std::collections::HashMap;

use serde::Serialize;

use crate::record::{HrRecord, parse_date};

/// Most rows in one import.
pub const MAX_ROWS: usize = 10_000;

/// A row that was not accepted, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RejectedRow {
    /// 1-based row number (CSV: data rows after the header).
    pub row: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub employee_id: Option<String>,
    pub reason: String,
}

/// Why an import was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("the body is not a JSON array of records or a CSV with a header: {0}")]
    Unreadable(String),
    #[error("{0} rows; at most 10000 are accepted in one import")]
    TooMany(usize),
    #[error("{} rows were rejected", .0.len())]
    Rejected(Vec<RejectedRow>),
}

/// The input's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

/// Parses an import; all rows or an error naming every rejected row.
pub fn parse(format: Format, body: &[u8]) -> Result<Vec<HrRecord>, ImportError> {
    let rows = match format {
        Format::Json => json_rows(body)?,
        Format::Csv => csv_rows(body)?,
    };
    if rows.len() > MAX_ROWS {
        return Err(ImportError::TooMany(rows.len()));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut accepted = Vec::with_capacity(rows.len());
    let mut rejected = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        let number = i + 1;
        match row.and_then(HrRecord::check) {
            Ok(record) => match seen.insert(record.employee_id.clone(), number) {
                Some(first) => rejected.push(RejectedRow {
                    row: number,
                    employee_id: Some(record.employee_id),
                    reason: format!("the same employee_id as row {first}"),
                }),
                None => accepted.push(record),
            },
            Err(reason) => rejected.push(RejectedRow {
                row: number,
                employee_id: None,
                reason,
            }),
        }
    }
    if !rejected.is_empty() {
        return Err(ImportError::Rejected(rejected));
    }
    Ok(accepted)
}

fn json_rows(body: &[u8]) -> Result<Vec<Result<HrRecord, String>>, ImportError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ImportError::Unreadable(e.to_string()))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(mut o) => match o.remove("employees") {
            Some(serde_json::Value::Array(items)) => items,
            _ => {
                return Err(ImportError::Unreadable(
                    "an object without an \"employees\" array".into(),
                ));
            }
        },
        _ => return Err(ImportError::Unreadable("not an array".into())),
    };
    Ok(items
        .into_iter()
        .map(|item| serde_json::from_value::<HrRecord>(item).map_err(|e| e.to_string()))
        .collect())
}

/// CSV columns are the record's field names; `positions` is not a CSV column.
fn csv_rows(body: &[u8]) -> Result<Vec<Result<HrRecord, String>>, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| ImportError::Unreadable(e.to_string()))?
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    for h in &headers {
        if !crate::record::FIELDS.contains(&h.as_str()) {
            return Err(ImportError::Unreadable(format!("unknown column {h:?}")));
        }
    }
    for required in ["employee_id", "given_name", "surname", "start_date"] {
        if !headers.iter().any(|h| h == required) {
            return Err(ImportError::Unreadable(format!(
                "the header has no {required} column"
            )));
        }
    }
    let mut rows = Vec::new();
    for result in reader.records() {
        rows.push(match result {
            Err(e) => Err(format!("unreadable CSV row: {e}")),
            Ok(r) if r.len() != headers.len() => Err(format!(
                "{} fields where the header has {}",
                r.len(),
                headers.len()
            )),
            Ok(r) => csv_record(&headers, &r),
        });
    }
    Ok(rows)
}

fn csv_record(headers: &[String], row: &csv::StringRecord) -> Result<HrRecord, String> {
    let get = |name: &str| -> Option<String> {
        headers
            .iter()
            .position(|h| h == name)
            .and_then(|i| row.get(i))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let date = |name: &str| -> Result<Option<time::Date>, String> {
        get(name)
            .map(|v| parse_date(&v).map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    Ok(HrRecord {
        employee_id: get("employee_id").unwrap_or_default(),
        given_name: get("given_name").unwrap_or_default(),
        surname: get("surname").unwrap_or_default(),
        display_name: get("display_name"),
        personal_email: get("personal_email"),
        work_email: get("work_email"),
        job_title: get("job_title"),
        department: get("department"),
        manager_employee_id: get("manager_employee_id"),
        location: get("location"),
        usage_location: get("usage_location"),
        start_date: date("start_date")?.ok_or("start_date is required")?,
        end_date: date("end_date")?,
        positions: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_bad_rows_are_each_rejected_with_a_reason() {
        let csv = "employee_id,given_name,surname,start_date,end_date\n\
                   E1,Ada,Lovelace,2026-01-05,\n\
                   E2,,Hopper,2026-01-05,\n\
                   E3,Alan,Turing,05/01/2026,\n\
                   E1,Ada,Again,2026-01-05,\n\
                   E4,Grace,Hopper,2026-02-01,2026-01-01\n";
        let Err(ImportError::Rejected(rows)) = parse(Format::Csv, csv.as_bytes()) else {
            panic!("rows must be rejected")
        };
        let reasons: Vec<(usize, &str)> = rows.iter().map(|r| (r.row, r.reason.as_str())).collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons[0].1.contains("given_name"));
        assert!(reasons[1].1.contains("start_date"));
        assert!(reasons[2].1.contains("row 1"));
        assert!(reasons[3].1.contains("before start_date"));
    }

    #[test]
    fn json_and_csv_give_the_same_records() {
        let csv = "employee_id,given_name,surname,start_date,department\nE1,Ada,Lovelace,2026-01-05,R&D\n";
        let json = r#"[{"employee_id":"E1","given_name":"Ada","surname":"Lovelace","start_date":"2026-01-05","department":"R&D"}]"#;
        assert_eq!(
            parse(Format::Csv, csv.as_bytes()).unwrap(),
            parse(Format::Json, json.as_bytes()).unwrap()
        );
    }

    #[test]
    fn more_than_ten_thousand_rows_are_refused() {
        let mut csv = String::from("employee_id,given_name,surname,start_date\n");
        for i in 0..=MAX_ROWS {
            csv.push_str(&format!("E{i},A,B,2026-01-01\n"));
        }
        assert_eq!(
            parse(Format::Csv, csv.as_bytes()),
            Err(ImportError::TooMany(MAX_ROWS + 1))
        );
    }
}
