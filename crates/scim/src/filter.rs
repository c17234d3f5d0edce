//! The RFC 7644 §3.4.2.2 filter grammar: `eq ne co sw ew pr gt ge lt le`, `and`/`or`/`not`,
//! parentheses, value paths such as `emails[type eq "work" and primary eq true]`, attribute
//! names and operators case-insensitive. Also Entra's non-RFC
//! `emails[type eq "work"].value eq "x"`, read as `emails[type eq "work" and value eq "x"]`.

use std::fmt;

use serde_json::Value;

/// Deepest nesting of parentheses and value paths accepted (a guard against stack abuse).
pub const MAX_DEPTH: usize = 32;
/// Longest filter accepted.
pub const MAX_LENGTH: usize = 4096;

/// A malformed filter, with where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter at character {position}: {message}")]
pub struct FilterError {
    pub position: usize,
    pub message: String,
}

/// `[urn:...:]attr[.sub]`; names compare case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    /// The schema URN, when given (`urn:ietf:params:scim:schemas:extension:enterprise:2.0:User`).
    pub uri: Option<String>,
    pub attr: String,
    pub sub: Option<String>,
}

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(uri) = &self.uri {
            write!(f, "{uri}:")?;
        }
        f.write_str(&self.attr)?;
        if let Some(sub) = &self.sub {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

impl AttrPath {
    /// Parses `[urn:...:]attr[.sub]` (the URN may itself contain dots, as in `2.0`).
    pub fn parse(text: &str) -> Option<AttrPath> {
        let (uri, rest) = match text.rfind(':') {
            Some(i) => (Some(text[..i].to_string()), &text[i + 1..]),
            None => (None, text),
        };
        if uri
            .as_deref()
            .is_some_and(|u| !u.to_ascii_lowercase().starts_with("urn:"))
        {
            return None;
        }
        let (attr, sub) = match rest.split_once('.') {
            Some((a, s)) => (a, Some(s)),
            None => (rest, None),
        };
        let name_ok = |n: &str| {
            n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '$')
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$'))
        };
        if !name_ok(attr) || sub.is_some_and(|s| !name_ok(s)) {
            return None;
        }
        Some(AttrPath {
            uri,
            attr: attr.to_string(),
            sub: sub.map(str::to_string),
        })
    }
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    fn parse(word: &str) -> Option<CompareOp> {
        Some(match word.to_ascii_lowercase().as_str() {
            "eq" => CompareOp::Eq,
            "ne" => CompareOp::Ne,
            "co" => CompareOp::Co,
            "sw" => CompareOp::Sw,
            "ew" => CompareOp::Ew,
            "gt" => CompareOp::Gt,
            "ge" => CompareOp::Ge,
            "lt" => CompareOp::Lt,
            "le" => CompareOp::Le,
            _ => return None,
        })
    }
}

/// A comparison value.
#[derive(Debug, Clone, PartialEq)]
pub enum CompValue {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Compare {
        path: AttrPath,
        op: CompareOp,
        value: CompValue,
    },
    Present(AttrPath),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    /// `attr[filter]`: some element of the multi-valued `attr` matches `filter`.
    ValuePath {
        path: AttrPath,
        filter: Box<Filter>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Number(serde_json::Number),
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Dot,
}

fn fail(position: usize, message: impl Into<String>) -> FilterError {
    FilterError {
        position,
        message: message.into(),
    }
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, FilterError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                tokens.push((pos, Token::Open));
                i += 1;
            }
            ')' => {
                tokens.push((pos, Token::Close));
                i += 1;
            }
            '[' => {
                tokens.push((pos, Token::OpenBracket));
                i += 1;
            }
            ']' => {
                tokens.push((pos, Token::CloseBracket));
                i += 1;
            }
            '.' => {
                tokens.push((pos, Token::Dot));
                i += 1;
            }
            '"' => {
                // a JSON string: find its end, honouring escapes, then let serde decode it
                let mut j = i + 1;
                let mut escaped = false;
                loop {
                    let Some(&(_, d)) = chars.get(j) else {
                        return Err(fail(pos, "unterminated string"));
                    };
                    if escaped {
                        escaped = false;
                    } else if d == '\\' {
                        escaped = true;
                    } else if d == '"' {
                        break;
                    }
                    j += 1;
                }
                let end = chars.get(j + 1).map_or(text.len(), |(p, _)| *p);
                let literal = &text[pos..end];
                let value: String = serde_json::from_str(literal)
                    .map_err(|_| fail(pos, "a string literal is not valid JSON"))?;
                tokens.push((pos, Token::Str(value)));
                i = j + 1;
            }
            c if c == '-' || c.is_ascii_digit() => {
                let mut j = i;
                while j < chars.len()
                    && (chars[j].1.is_ascii_digit()
                        || matches!(chars[j].1, '-' | '+' | '.' | 'e' | 'E'))
                {
                    j += 1;
                }
                let end = chars.get(j).map_or(text.len(), |(p, _)| *p);
                let number: serde_json::Number =
                    serde_json::from_str(&text[pos..end]).map_err(|_| fail(pos, "not a number"))?;
                tokens.push((pos, Token::Number(number)));
                i = j;
            }
            c if c.is_ascii_alphabetic() || c == '$' || c == '_' => {
                // words: attribute paths (with URN colons and dotted sub-attributes) and keywords
                let mut j = i;
                while j < chars.len()
                    && (chars[j].1.is_ascii_alphanumeric()
                        || matches!(chars[j].1, ':' | '.' | '_' | '-' | '$'))
                {
                    j += 1;
                }
                let end = chars.get(j).map_or(text.len(), |(p, _)| *p);
                tokens.push((pos, Token::Word(text[pos..end].to_string())));
                i = j;
            }
            other => return Err(fail(pos, format!("unexpected character {other:?}"))),
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    next: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(_, t)| t)
    }

    fn position(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |(p, _)| *p)
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn advance(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.next).map(|(_, t)| t.clone());
        self.next += 1;
        t
    }

    fn or(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut left = self.and(depth)?;
        while self.keyword("or") {
            self.advance();
            let right = self.and(depth)?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut left = self.unary(depth)?;
        while self.keyword("and") {
            self.advance();
            let right = self.unary(depth)?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Filter, FilterError> {
        if depth > MAX_DEPTH {
            return Err(fail(self.position(), "nested too deeply"));
        }
        if self.keyword("not") {
            let at = self.position();
            self.advance();
            if self.peek() != Some(&Token::Open) {
                return Err(fail(at, "not must be followed by a parenthesised filter"));
            }
            return Ok(Filter::Not(Box::new(self.group(depth + 1)?)));
        }
        if self.peek() == Some(&Token::Open) {
            return self.group(depth + 1);
        }
        self.attribute_expression(depth)
    }

    fn group(&mut self, depth: usize) -> Result<Filter, FilterError> {
        self.advance(); // (
        let inner = self.or(depth)?;
        match self.advance() {
            Some(Token::Close) => Ok(inner),
            _ => Err(fail(self.position(), "expected )")),
        }
    }

    fn attribute_expression(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let at = self.position();
        let Some(Token::Word(word)) = self.advance() else {
            return Err(fail(at, "expected an attribute name"));
        };
        let path = AttrPath::parse(&word)
            .ok_or_else(|| fail(at, format!("{word:?} is not an attribute path")))?;
        if self.peek() == Some(&Token::OpenBracket) {
            if path.sub.is_some() {
                return Err(fail(
                    at,
                    "a value filter applies to an attribute, not a sub-attribute",
                ));
            }
            self.advance();
            let inner = self.or(depth + 1)?;
            if self.advance() != Some(Token::CloseBracket) {
                return Err(fail(self.position(), "expected ]"));
            }
            // Entra's form: attr[filter].sub op value  ==  attr[filter and sub op value]
            if self.peek() == Some(&Token::Dot) {
                self.advance();
                let sub_at = self.position();
                let Some(Token::Word(sub)) = self.advance() else {
                    return Err(fail(sub_at, "expected a sub-attribute after ]."));
                };
                let sub_path = AttrPath::parse(&sub)
                    .filter(|p| p.uri.is_none() && p.sub.is_none())
                    .ok_or_else(|| fail(sub_at, format!("{sub:?} is not a sub-attribute")))?;
                let condition = self.comparison(sub_path)?;
                return Ok(Filter::ValuePath {
                    path,
                    filter: Box::new(Filter::And(Box::new(inner), Box::new(condition))),
                });
            }
            return Ok(Filter::ValuePath {
                path,
                filter: Box::new(inner),
            });
        }
        self.comparison(path)
    }

    fn comparison(&mut self, path: AttrPath) -> Result<Filter, FilterError> {
        let at = self.position();
        let Some(Token::Word(op)) = self.advance() else {
            return Err(fail(
                at,
                "expected an operator (eq, ne, co, sw, ew, gt, ge, lt, le, pr)",
            ));
        };
        if op.eq_ignore_ascii_case("pr") {
            return Ok(Filter::Present(path));
        }
        let op =
            CompareOp::parse(&op).ok_or_else(|| fail(at, format!("{op:?} is not an operator")))?;
        let value_at = self.position();
        let value = match self.advance() {
            Some(Token::Str(s)) => CompValue::String(s),
            Some(Token::Number(n)) => CompValue::Number(n),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("true") => CompValue::Bool(true),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("false") => CompValue::Bool(false),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("null") => CompValue::Null,
            _ => {
                return Err(fail(
                    value_at,
                    "expected a value: a \"string\", number, true, false or null",
                ));
            }
        };
        Ok(Filter::Compare { path, op, value })
    }
}

impl Filter {
    /// Parses a filter expression.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.len() > MAX_LENGTH {
            return Err(fail(
                MAX_LENGTH,
                format!("longer than {MAX_LENGTH} characters"),
            ));
        }
        let tokens = tokenize(text)?;
        if tokens.is_empty() {
            return Err(fail(0, "empty filter"));
        }
        let mut parser = Parser {
            tokens,
            next: 0,
            end: text.len(),
        };
        let filter = parser.or(0)?;
        if parser.next < parser.tokens.len() {
            return Err(fail(parser.position(), "unexpected text after the filter"));
        }
        Ok(filter)
    }

    /// The attribute an equality filter looks up, when the whole filter is one
    /// `attr eq "value"` (index lookups: `userName`, `externalId`, `id`, `displayName`).
    pub fn equality(&self) -> Option<(&AttrPath, &str)> {
        match self {
            Filter::Compare {
                path,
                op: CompareOp::Eq,
                value: CompValue::String(v),
            } => Some((path, v)),
            _ => None,
        }
    }

    /// Whether a resource (its JSON) matches. Names compare case-insensitively, and so do
    /// string values (SCIM's default `caseExact: false`).
    pub fn matches(&self, resource: &Value) -> bool {
        match self {
            Filter::And(a, b) => a.matches(resource) && b.matches(resource),
            Filter::Or(a, b) => a.matches(resource) || b.matches(resource),
            Filter::Not(f) => !f.matches(resource),
            Filter::Present(path) => values(resource, path).iter().any(|v| present(v)),
            Filter::Compare { path, op, value } => {
                let found = values(resource, path);
                if found.is_empty() {
                    return matches!((op, value), (CompareOp::Ne, v) if *v != CompValue::Null)
                        || matches!((op, value), (CompareOp::Eq, CompValue::Null));
                }
                found.iter().any(|v| compare(v, *op, value))
            }
            Filter::ValuePath { path, filter } => {
                let Some(attr) = lookup(resource, path) else {
                    return false;
                };
                match attr {
                    Value::Array(items) => items.iter().any(|item| filter.matches(item)),
                    single @ Value::Object(_) => filter.matches(single),
                    _ => false,
                }
            }
        }
    }
}

/// Finds an attribute by case-insensitive name, looking into the schema extension when a
/// URN is given (or when the attribute is not in the core object).
fn lookup<'a>(resource: &'a Value, path: &AttrPath) -> Option<&'a Value> {
    let object = resource.as_object()?;
    let get = |o: &'a serde_json::Map<String, Value>, name: &str| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let base = match &path.uri {
        Some(uri) => match get(object, uri) {
            Some(Value::Object(extension)) => get(extension, &path.attr),
            // a core schema URN prefix names the core object itself
            _ if uri
                .to_ascii_lowercase()
                .starts_with("urn:ietf:params:scim:schemas:core:") =>
            {
                get(object, &path.attr)
            }
            _ => None,
        },
        None => get(object, &path.attr),
    }?;
    match &path.sub {
        None => Some(base),
        Some(sub) => match base {
            Value::Object(o) => get(o, sub),
            // a sub-attribute of a multi-valued attribute: handled by `values`
            other => Some(other),
        },
    }
}

/// Every value the path reaches (multi-valued attributes fan out).
fn values<'a>(resource: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let whole = AttrPath {
        sub: None,
        ..path.clone()
    };
    let Some(base) = lookup(resource, &whole) else {
        return Vec::new();
    };
    let get = |o: &'a serde_json::Map<String, Value>, name: &str| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    match (&path.sub, base) {
        (None, Value::Array(items)) => items.iter().collect(),
        (None, v) => vec![v],
        (Some(sub), Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_object().and_then(|o| get(o, sub)))
            .collect(),
        (Some(sub), Value::Object(o)) => get(o, sub).into_iter().collect(),
        _ => Vec::new(),
    }
}

fn present(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

fn compare(found: &Value, op: CompareOp, wanted: &CompValue) -> bool {
    use std::cmp::Ordering;
    let ordering: Option<Ordering> = match (found, wanted) {
        (Value::String(a), CompValue::String(b)) => {
            let (a, b) = (a.to_lowercase(), b.to_lowercase());
            match op {
                CompareOp::Co => return a.contains(&b),
                CompareOp::Sw => return a.starts_with(&b),
                CompareOp::Ew => return a.ends_with(&b),
                _ => Some(a.cmp(&b)),
            }
        }
        (Value::Number(a), CompValue::Number(b)) => a
            .as_f64()
            .zip(b.as_f64())
            .and_then(|(a, b)| a.partial_cmp(&b)),
        (Value::Bool(a), CompValue::Bool(b)) => Some(a.cmp(b)),
        // Entra sends booleans as "True"/"False" strings too
        (Value::String(a), CompValue::Bool(b)) => match a.to_ascii_lowercase().as_str() {
            "true" => Some(true.cmp(b)),
            "false" => Some(false.cmp(b)),
            _ => None,
        },
        (Value::Null, CompValue::Null) => Some(Ordering::Equal),
        _ => None,
    };
    match (op, ordering) {
        (CompareOp::Eq, Some(o)) => o == Ordering::Equal,
        (CompareOp::Ne, Some(o)) => o != Ordering::Equal,
        (CompareOp::Ne, None) => true,
        (CompareOp::Gt, Some(o)) => o == Ordering::Greater,
        (CompareOp::Ge, Some(o)) => o != Ordering::Less,
        (CompareOp::Lt, Some(o)) => o == Ordering::Less,
        (CompareOp::Le, Some(o)) => o != Ordering::Greater,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": "2819c223", "userName": "Ada@Contoso.com", "externalId": "ada", "active": true,
            "name": {"givenName": "Ada", "familyName": "Lovelace"},
            "emails": [{"type": "work", "value": "ada@contoso.com", "primary": true}, {"type": "home", "value": "ada@home.example"}],
            "meta": {"lastModified": "2026-11-24T10:00:00Z"},
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "701", "manager": {"value": "boss"}},
        })
    }

    fn matches(filter: &str) -> bool {
        Filter::parse(filter)
            .unwrap_or_else(|e| panic!("{filter}: {e}"))
            .matches(&user())
    }

    #[test]
    fn entra_match_queries() {
        assert!(
            matches(r#"userName eq "ada@contoso.com""#),
            "case-insensitive value"
        );
        assert!(
            matches(r#"USERNAME Eq "Ada@Contoso.com""#),
            "case-insensitive name and operator"
        );
        assert!(matches(r#"externalId eq "ada""#));
        assert!(!matches(
            r#"userName eq "0f8fad5b-d9cb-469f-a165-70867728950e""#
        ));
        assert!(
            matches(r#"emails[type eq "work"].value eq "ada@contoso.com""#),
            "Entra's non-RFC form"
        );
        assert!(!matches(
            r#"emails[type eq "home"].value eq "ada@contoso.com""#
        ));
    }

    #[test]
    fn the_whole_rfc_grammar() {
        assert!(matches(r#"name.familyName co "love""#));
        assert!(matches(r#"userName sw "ada" and userName ew ".com""#));
        assert!(matches(r#"title pr or active eq true"#));
        assert!(!matches(r#"title pr"#));
        assert!(matches(r#"not (userName eq "bob")"#));
        assert!(matches(r#"emails[type eq "work" and primary eq true]"#));
        assert!(!matches(r#"emails[type eq "home" and primary eq true]"#));
        assert!(matches(r#"meta.lastModified gt "2026-01-01T00:00:00Z""#));
        assert!(matches(r#"meta.lastModified le "2026-11-24T10:00:00Z""#));
        assert!(matches(
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "701""#
        ));
        assert!(matches(
            r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value eq "boss""#
        ));
        assert!(matches(
            r#"(userName eq "x" or userName eq "ada@contoso.com") and not (active eq false)"#
        ));
        assert!(
            matches(r#"emails.value co "home""#),
            "a sub-attribute fans out over a multi-valued attribute"
        );
        assert!(matches(r#"userName ne "bob""#));
        assert!(matches(r#"nickName eq null"#));
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        let f = Filter::parse(r#"a eq "1" or b eq "2" and c eq "3""#).unwrap();
        assert!(matches!(f, Filter::Or(_, ref right) if matches!(**right, Filter::And(_, _))));
    }

    #[test]
    fn equality_is_recognised_for_index_lookups() {
        let f = Filter::parse(r#"userName eq "ada@contoso.com""#).unwrap();
        let (path, value) = f.equality().unwrap();
        assert_eq!((path.attr.as_str(), value), ("userName", "ada@contoso.com"));
        assert!(
            Filter::parse(r#"userName co "ada""#)
                .unwrap()
                .equality()
                .is_none()
        );
    }

    #[test]
    fn bad_filters_say_where() {
        for (bad, at) in [
            ("", 0),
            ("userName", 8),
            ("userName eq", 11),
            (r#"userName eq "open"#, 12),
            (r#"userName zz "x""#, 9),
            (r#"userName eq "x" and"#, 19),
            (r#"(userName eq "x""#, 16),
            (r#"emails[type eq "work""#, 21),
            (r#"userName eq "x")"#, 15),
            (r#"not userName eq "x""#, 0),
            ("userName eq 'x'", 12),
            ("9abc eq 1", 0),
        ] {
            let err = Filter::parse(bad).unwrap_err();
            assert_eq!(err.position, at, "{bad:?}: {err}");
        }
        let deep = format!("{}a eq 1{}", "(".repeat(100), ")".repeat(100));
        assert!(Filter::parse(&deep).unwrap_err().message.contains("deeply"));
    }
}
