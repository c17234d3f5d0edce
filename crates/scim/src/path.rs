//! PATCH paths (RFC 7644 §3.5.2): `attr`, `attr.sub`, `urn:...:attr`, `attr[filter]`,
//! `attr[filter].sub`.

use crate::filter::{AttrPath, Filter, FilterError};

/// A parsed PATCH path.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    pub attr: AttrPath,
    /// `members[value eq "x"]`: which elements of a multi-valued attribute.
    pub filter: Option<Filter>,
    /// `emails[type eq "work"].value`: the sub-attribute of the selected elements.
    pub sub: Option<String>,
}

impl PatchPath {
    /// Parses a path; errors carry the position like filter errors.
    pub fn parse(text: &str) -> Result<PatchPath, FilterError> {
        let text = text.trim();
        let fail = |position: usize, message: &str| FilterError {
            position,
            message: message.to_string(),
        };
        let Some(open) = text.find('[') else {
            let attr = AttrPath::parse(text).ok_or_else(|| fail(0, "not an attribute path"))?;
            return Ok(PatchPath {
                attr,
                filter: None,
                sub: None,
            });
        };
        let attr = AttrPath::parse(&text[..open])
            .filter(|a| a.sub.is_none())
            .ok_or_else(|| fail(0, "not an attribute path before ["))?;
        let close = text
            .rfind(']')
            .filter(|c| *c > open)
            .ok_or_else(|| fail(open, "expected ]"))?;
        let inner = &text[open + 1..close];
        let filter = Filter::parse(inner).map_err(|e| FilterError {
            position: e.position + open + 1,
            message: e.message,
        })?;
        let rest = &text[close + 1..];
        let sub = match rest {
            "" => None,
            _ => {
                let sub = rest
                    .strip_prefix('.')
                    .ok_or_else(|| fail(close + 1, "expected .subAttribute after ]"))?;
                AttrPath::parse(sub)
                    .filter(|p| p.uri.is_none() && p.sub.is_none())
                    .ok_or_else(|| fail(close + 2, "not a sub-attribute"))?;
                Some(sub.to_string())
            }
        };
        Ok(PatchPath {
            attr,
            filter: Some(filter),
            sub,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_entra_sends() {
        let p = PatchPath::parse("name.familyName").unwrap();
        assert_eq!(
            (p.attr.attr.as_str(), p.attr.sub.as_deref()),
            ("name", Some("familyName"))
        );
        let p = PatchPath::parse(r#"emails[type eq "work"].value"#).unwrap();
        assert_eq!(p.attr.attr, "emails");
        assert_eq!(p.sub.as_deref(), Some("value"));
        assert!(p.filter.is_some());
        let p = PatchPath::parse(r#"members[value eq "2819c223"]"#).unwrap();
        assert!(p.sub.is_none() && p.filter.is_some());
        let p =
            PatchPath::parse("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager")
                .unwrap();
        assert_eq!(
            p.attr.uri.as_deref(),
            Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")
        );
        assert_eq!(p.attr.attr, "manager");
        assert!(PatchPath::parse("active").is_ok());
    }

    #[test]
    fn bad_paths_are_errors() {
        for bad in [
            "",
            "emails[",
            "emails[type eq]",
            "emails[type eq \"w\"]value",
            "a.b.c",
            "9x",
            "emails[type eq \"w\"].",
            "name.given[x eq 1]",
        ] {
            assert!(PatchPath::parse(bad).is_err(), "{bad:?}");
        }
    }
}
