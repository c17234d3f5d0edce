//! A tenant's rules: how HR fields become Entra properties (simple expressions), the UPN
//! pattern for new users, which groups follow from department or job title, and what
//! happens to a leaver.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::record::{FIELDS, HrRecord};

/// Entra user properties a mapping may set.
pub const PROPERTIES: &[&str] = &[
    "displayName",
    "givenName",
    "surname",
    "jobTitle",
    "department",
    "employeeId",
    "officeLocation",
    "usageLocation",
    "otherMails",
    "mail",
];

/// An expression over an HR record: a field name, a `"literal"`, or a function
/// `lower(x)`, `upper(x)`, `trim(x)`, `join(sep, x, y, ...)` (skipping empty values),
/// `concat(x, y, ...)`, `ascii(x)` (letters without accents, other characters dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Field(String),
    Literal(String),
    Call(String, Vec<Expr>),
}

const FUNCTIONS: &[&str] = &["lower", "upper", "trim", "join", "concat", "ascii"];

impl Expr {
    /// Parses an expression.
    pub fn parse(text: &str) -> Result<Expr, String> {
        let mut p = Parser {
            chars: text.chars().collect(),
            at: 0,
        };
        let e = p.expr()?;
        p.space();
        if p.at != p.chars.len() {
            return Err(format!("unexpected text at {} in {text:?}", p.at + 1));
        }
        Ok(e)
    }

    /// The value for a record (None when it comes out empty).
    pub fn eval(&self, record: &HrRecord) -> Option<String> {
        let out = match self {
            Expr::Field(f) => record.field(f)?,
            Expr::Literal(l) => l.clone(),
            Expr::Call(name, args) => {
                let values: Vec<Option<String>> = args.iter().map(|a| a.eval(record)).collect();
                match name.as_str() {
                    "lower" => values.first()?.as_ref()?.to_lowercase(),
                    "upper" => values.first()?.as_ref()?.to_uppercase(),
                    "trim" => values.first()?.as_ref()?.trim().to_string(),
                    "ascii" => to_ascii(values.first()?.as_ref()?),
                    "concat" => values.into_iter().flatten().collect(),
                    "join" => {
                        let sep = values.first()?.clone().unwrap_or_default();
                        values[1..]
                            .iter()
                            .flatten()
                            .filter(|v| !v.is_empty())
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(&sep)
                    }
                    _ => return None,
                }
            }
        };
        Some(out).filter(|v| !v.is_empty())
    }
}

/// Letters without their accents, for UPNs and mail nicknames; anything else not
/// allowed in a UPN's local part is dropped.
fn to_ascii(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let base = match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => "a",
            'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => "A",
            'ç' => "c",
            'Ç' => "C",
            'è' | 'é' | 'ê' | 'ë' => "e",
            'È' | 'É' | 'Ê' | 'Ë' => "E",
            'ì' | 'í' | 'î' | 'ï' => "i",
            'Ì' | 'Í' | 'Î' | 'Ï' => "I",
            'ñ' => "n",
            'Ñ' => "N",
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' => "o",
            'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' | 'Ø' => "O",
            'ù' | 'ú' | 'û' | 'ü' => "u",
            'Ù' | 'Ú' | 'Û' | 'Ü' => "U",
            'ý' | 'ÿ' => "y",
            'ß' => "ss",
            'æ' => "ae",
            'Æ' => "AE",
            c if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') => {
                out.push(c);
                continue;
            }
            _ => continue,
        };
        out.push_str(base);
    }
    out
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn space(&mut self) {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        self.space();
        match self.chars.get(self.at) {
            Some('"') => {
                self.at += 1;
                let mut lit = String::new();
                loop {
                    match self.chars.get(self.at) {
                        None => return Err("a string without its closing quote".into()),
                        Some('"') => {
                            self.at += 1;
                            return Ok(Expr::Literal(lit));
                        }
                        Some(c) => {
                            lit.push(*c);
                            self.at += 1;
                        }
                    }
                }
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.at;
                while self
                    .chars
                    .get(self.at)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    self.at += 1;
                }
                let name: String = self.chars[start..self.at].iter().collect();
                self.space();
                if self.chars.get(self.at) != Some(&'(') {
                    if !FIELDS.contains(&name.as_str()) {
                        return Err(format!("unknown HR field {name:?}"));
                    }
                    return Ok(Expr::Field(name));
                }
                if !FUNCTIONS.contains(&name.as_str()) {
                    return Err(format!("unknown function {name:?}"));
                }
                self.at += 1;
                let mut args = Vec::new();
                loop {
                    self.space();
                    if self.chars.get(self.at) == Some(&')') && args.is_empty() {
                        self.at += 1;
                        break;
                    }
                    args.push(self.expr()?);
                    self.space();
                    match self.chars.get(self.at) {
                        Some(',') => self.at += 1,
                        Some(')') => {
                            self.at += 1;
                            break;
                        }
                        _ => return Err(format!("expected , or ) in a call of {name}")),
                    }
                }
                let wanted = match name.as_str() {
                    "join" => args.len() >= 2,
                    "concat" => !args.is_empty(),
                    _ => args.len() == 1,
                };
                if !wanted {
                    return Err(format!("{name} given {} arguments", args.len()));
                }
                Ok(Expr::Call(name, args))
            }
            _ => Err("expected a field, a \"string\" or a function call".into()),
        }
    }
}

/// HR field (as an expression) to an Entra property.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub property: String,
    pub expression: String,
}

/// How new users' UPNs are made: `{local}@{domain}`; on a collision `{local}2`, `{local}3`...
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpnRule {
    /// Expression for the local part, e.g. `lower(ascii(join(".", given_name, surname)))`.
    pub pattern: String,
    pub domain: String,
}

/// Groups an employee belongs in when an HR field has a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    /// `department` or `job_title` (any HR field).
    pub field: String,
    /// Compared case-insensitively.
    pub equals: String,
    /// Entra group object ids.
    pub groups: Vec<Uuid>,
}

/// What happens to a leaver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaverPolicy {
    /// Days after the end date before the account is disabled (0: on the end date's
    /// next day, the last day being worked).
    #[serde(default)]
    pub grace_days: u32,
    /// Also leave the groups the rules manage.
    #[serde(default = "yes")]
    pub remove_groups: bool,
    /// Also revoke sign-in sessions.
    #[serde(default = "yes")]
    pub revoke_sessions: bool,
}

fn yes() -> bool {
    true
}

impl Default for LeaverPolicy {
    fn default() -> Self {
        LeaverPolicy {
            grace_days: 0,
            remove_groups: true,
            revoke_sessions: true,
        }
    }
}

/// A tenant's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"mappings": [{"property": "displayName", "expression": "display_name"}, {"property": "department", "expression": "department"}, {"property": "usageLocation", "expression": "upper(usage_location)"}], "upn": {"pattern": "lower(ascii(join(\".\", given_name, surname)))", "domain": "contoso.com"}, "groups": [{"field": "department", "equals": "Research", "groups": ["d4c3b2a1-0f9e-4d8c-b7a6-5f4e3d2c1b0a"]}], "leaver": {"grace_days": 0, "remove_groups": true, "revoke_sessions": true}, "joiner_days_before_start": 1}))]
pub struct Rules {
    #[serde(default = "default_mappings")]
    pub mappings: Vec<Mapping>,
    pub upn: UpnRule,
    #[serde(default)]
    pub groups: Vec<GroupRule>,
    #[serde(default)]
    pub leaver: LeaverPolicy,
    /// Days before the start date a joiner's account is created.
    #[serde(default = "one")]
    pub joiner_days_before_start: u32,
}

fn one() -> u32 {
    1
}

fn default_mappings() -> Vec<Mapping> {
    [
        ("displayName", "display_name"),
        ("givenName", "given_name"),
        ("surname", "surname"),
        ("jobTitle", "job_title"),
        ("department", "department"),
        ("employeeId", "employee_id"),
        ("officeLocation", "location"),
        ("usageLocation", "upper(usage_location)"),
    ]
    .into_iter()
    .map(|(p, e)| Mapping {
        property: p.into(),
        expression: e.into(),
    })
    .collect()
}

/// Rules with their expressions parsed.
#[derive(Debug, Clone)]
pub struct CompiledRules {
    pub rules: Rules,
    pub mappings: Vec<(String, Expr)>,
    pub upn: Expr,
    /// Every group a rule names: the groups the rules manage.
    pub managed_groups: BTreeSet<Uuid>,
}

impl Rules {
    /// Checks and parses the rules.
    pub fn compile(self) -> Result<CompiledRules, String> {
        let mut mappings = Vec::new();
        for m in &self.mappings {
            if !PROPERTIES.contains(&m.property.as_str()) {
                return Err(format!(
                    "{:?} is not a property a mapping may set ({})",
                    m.property,
                    PROPERTIES.join(", ")
                ));
            }
            if mappings.iter().any(|(p, _)| p == &m.property) {
                return Err(format!("{} is mapped twice", m.property));
            }
            let e = Expr::parse(&m.expression).map_err(|e| format!("{}: {e}", m.property))?;
            mappings.push((m.property.clone(), e));
        }
        if !mappings.iter().any(|(p, _)| p == "employeeId") {
            // the marker that ties an Entra user to its HR record (and keeps a retried
            // create from making a second user): never left out
            mappings.push(("employeeId".into(), Expr::Field("employee_id".into())));
        }
        let upn = Expr::parse(&self.upn.pattern).map_err(|e| format!("upn.pattern: {e}"))?;
        let domain = &self.upn.domain;
        if domain.is_empty()
            || domain.contains('@')
            || !domain.contains('.')
            || domain.chars().any(|c| c.is_whitespace())
        {
            return Err(format!("upn.domain {domain:?} is not a domain"));
        }
        for g in &self.groups {
            if !FIELDS.contains(&g.field.as_str()) {
                return Err(format!("group rule field {:?} is not an HR field", g.field));
            }
        }
        let managed_groups = self
            .groups
            .iter()
            .flat_map(|g| g.groups.iter().copied())
            .collect();
        Ok(CompiledRules {
            rules: self,
            mappings,
            upn,
            managed_groups,
        })
    }
}

impl CompiledRules {
    /// The Entra properties a record maps to, in mapping order (empty values left out).
    pub fn properties(&self, record: &HrRecord) -> Vec<(String, String)> {
        self.mappings
            .iter()
            .filter_map(|(p, e)| e.eval(record).map(|v| (p.clone(), v)))
            .collect()
    }

    /// The groups a record belongs in.
    pub fn groups_for(&self, record: &HrRecord) -> BTreeSet<Uuid> {
        self.rules
            .groups
            .iter()
            .filter(|g| {
                record
                    .field(&g.field)
                    .is_some_and(|v| v.eq_ignore_ascii_case(&g.equals))
            })
            .flat_map(|g| g.groups.iter().copied())
            .collect()
    }

    /// The UPN local part for a record (before collision handling).
    pub fn upn_local(&self, record: &HrRecord) -> Option<String> {
        self.upn.eval(record).map(|l| to_ascii(&l))
    }

    /// The `n`th candidate UPN (1: `local@domain`, 2: `local2@domain`, ...).
    pub fn upn_candidate(&self, local: &str, n: u32) -> String {
        if n <= 1 {
            format!("{local}@{}", self.rules.upn.domain)
        } else {
            format!("{local}{n}@{}", self.rules.upn.domain)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::parse_date;

    fn ada() -> HrRecord {
        HrRecord {
            employee_id: "E1".into(),
            given_name: "Adá".into(),
            surname: "Love Lace".into(),
            display_name: None,
            personal_email: None,
            work_email: None,
            job_title: Some("Engineer".into()),
            department: None,
            manager_employee_id: None,
            location: None,
            usage_location: Some("gb".into()),
            start_date: parse_date("2026-01-05").unwrap(),
            end_date: None,
            positions: vec![],
        }
    }

    #[test]
    fn expressions_join_lower_and_skip_empty_values() {
        let e = Expr::parse(r#"lower(ascii(join(".", given_name, department, surname)))"#).unwrap();
        assert_eq!(e.eval(&ada()).unwrap(), "ada.lovelace");
        assert_eq!(
            Expr::parse("upper(usage_location)")
                .unwrap()
                .eval(&ada())
                .unwrap(),
            "GB"
        );
        assert!(Expr::parse("lower(salary)").is_err());
        assert!(Expr::parse("shout(surname)").is_err());
        assert!(Expr::parse("lower(surname").is_err());
    }

    #[test]
    fn rules_compile_with_an_employee_id_marker_and_name_their_groups() {
        let g = Uuid::new_v4();
        let rules: Rules = serde_json::from_value(serde_json::json!({
            "mappings": [{"property": "jobTitle", "expression": "job_title"}],
            "upn": {"pattern": "lower(join(\".\", given_name, surname))", "domain": "contoso.com"},
            "groups": [{"field": "job_title", "equals": "engineer", "groups": [g]}],
        }))
        .unwrap();
        let c = rules.compile().unwrap();
        let props = c.properties(&ada());
        assert!(props.contains(&("employeeId".into(), "E1".into())));
        assert_eq!(c.groups_for(&ada()), BTreeSet::from([g]));
        let local = c.upn_local(&ada()).unwrap();
        assert_eq!(c.upn_candidate(&local, 2), "ada.lovelace2@contoso.com");
    }
}
