//! The PATCH engine (RFC 7644 §3.5.2) with every habit of Entra's provisioning service:
//! capitalised ops, pathless operations with dotted and URN keys, string booleans, both
//! manager forms, null or empty values that clear, both remove-member forms, several
//! members per request. It edits a resource's JSON; storage is someone else's job.

use serde_json::{Map, Value};

use crate::filter::{AttrPath, Filter};
use crate::path::PatchPath;

/// The PatchOp message schema.
pub const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// The enterprise User extension.
pub const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// Attributes whose values are booleans (Entra may send them as "True"/"False").
const BOOLEAN_ATTRIBUTES: &[&str] = &["active", "primary"];
/// Attributes of the enterprise User extension.
const ENTERPRISE_ATTRIBUTES: &[&str] = &[
    "employeeNumber",
    "costCenter",
    "organization",
    "division",
    "department",
    "manager",
];
/// Attributes a client may not change.
const READ_ONLY: &[&str] = &["id", "meta", "schemas"];

/// Why a PATCH was refused, with its SCIM `scimType`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{scim_type}: {detail}")]
pub struct PatchError {
    pub scim_type: &'static str,
    pub detail: String,
}

fn error(scim_type: &'static str, detail: impl Into<String>) -> PatchError {
    PatchError {
        scim_type,
        detail: detail.into(),
    }
}

/// One operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Add,
    Replace,
    Remove,
}

/// One parsed operation.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchOp {
    pub op: OpKind,
    pub path: Option<PatchPath>,
    pub value: Option<Value>,
}

/// Reads a PatchOp request body.
pub fn parse_request(body: &Value) -> Result<Vec<PatchOp>, PatchError> {
    let schemas = body.get("schemas").and_then(Value::as_array);
    if !schemas.is_some_and(|s| {
        s.iter().any(|v| {
            v.as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case(PATCH_OP_SCHEMA))
        })
    }) {
        return Err(error(
            "invalidSyntax",
            format!("schemas must contain {PATCH_OP_SCHEMA}"),
        ));
    }
    let operations = body
        .get("Operations")
        .or_else(|| body.get("operations"))
        .and_then(Value::as_array)
        .ok_or_else(|| error("invalidSyntax", "Operations must be an array"))?;
    if operations.is_empty() {
        return Err(error("invalidSyntax", "Operations is empty"));
    }
    operations
        .iter()
        .enumerate()
        .map(|(i, operation)| {
            let op = match operation
                .get("op")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("add") => OpKind::Add,
                Some("replace") => OpKind::Replace,
                Some("remove") => OpKind::Remove,
                other => {
                    return Err(error(
                        "invalidSyntax",
                        format!("Operations[{i}].op {other:?}: expected add, replace or remove"),
                    ));
                }
            };
            let path = match operation.get("path") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) if p.trim().is_empty() => None,
                Some(Value::String(p)) => Some(
                    PatchPath::parse(p)
                        .map_err(|e| error("invalidPath", format!("Operations[{i}].path: {e}")))?,
                ),
                Some(_) => {
                    return Err(error(
                        "invalidPath",
                        format!("Operations[{i}].path is not a string"),
                    ));
                }
            };
            let value = operation.get("value").cloned();
            if op != OpKind::Remove && value.is_none() {
                return Err(error(
                    "invalidValue",
                    format!("Operations[{i}] has no value"),
                ));
            }
            if op == OpKind::Remove && path.is_none() {
                return Err(error(
                    "noTarget",
                    format!("Operations[{i}]: remove needs a path"),
                ));
            }
            Ok(PatchOp { op, path, value })
        })
        .collect()
}

/// True when `path` names the core attribute `attr` of the resource type whose schema is
/// `schema` (plainly or URN-prefixed), whatever filter or sub-attribute follows.
fn names_attribute(path: &PatchPath, attr: &str, schema: &str) -> bool {
    path.attr.attr.eq_ignore_ascii_case(attr)
        && path
            .attr
            .uri
            .as_deref()
            .is_none_or(|uri| uri.eq_ignore_ascii_case(schema))
}

/// Separates the operations on one attribute stored apart from the resource (a group's
/// `members`) from the rest, keeping each side's order. Besides operations whose path names
/// the attribute, a pathless add or replace may carry it as a key of its value
/// (`{"op":"add","value":{"members":[...]}}`): that key becomes an operation of its own,
/// with the attribute as its path, and the other keys stay behind. The first list has a
/// path on every operation.
pub fn split_attribute(
    ops: Vec<PatchOp>,
    attr: &str,
    schema: &str,
) -> (Vec<PatchOp>, Vec<PatchOp>) {
    let mut on_attr = Vec::new();
    let mut rest = Vec::new();
    for PatchOp { op, path, value } in ops {
        match (path, value) {
            (Some(path), value) if names_attribute(&path, attr, schema) => on_attr.push(PatchOp {
                op,
                path: Some(path),
                value,
            }),
            (None, Some(Value::Object(values))) => {
                let mut others = Map::new();
                for (key, value) in values {
                    match PatchPath::parse(&key) {
                        Ok(path)
                            if path.filter.is_none()
                                && path.attr.sub.is_none()
                                && names_attribute(&path, attr, schema) =>
                        {
                            on_attr.push(PatchOp {
                                op,
                                path: Some(path),
                                value: Some(value),
                            })
                        }
                        _ => {
                            others.insert(key, value);
                        }
                    }
                }
                if !others.is_empty() {
                    rest.push(PatchOp {
                        op,
                        path: None,
                        value: Some(Value::Object(others)),
                    });
                }
            }
            (path, value) => rest.push(PatchOp { op, path, value }),
        }
    }
    (on_attr, rest)
}

/// Applies operations in order to a resource. On error the resource may be partly changed:
/// apply to a copy and keep it only on success.
pub fn apply(resource: &mut Value, ops: &[PatchOp]) -> Result<(), PatchError> {
    for op in ops {
        match (&op.path, op.op) {
            (None, OpKind::Add | OpKind::Replace) => {
                let Some(Value::Object(values)) = &op.value else {
                    return Err(error(
                        "invalidValue",
                        "an operation without a path needs an object value",
                    ));
                };
                for (key, value) in values {
                    // keys may be plain, dotted (name.givenName) or URN-prefixed
                    if key.to_ascii_lowercase().starts_with("urn:") && !key.contains(':') {
                        continue;
                    }
                    if key.eq_ignore_ascii_case(ENTERPRISE_USER) {
                        // the whole extension object: merged attribute by attribute
                        set_extension(resource, ENTERPRISE_USER, OpKind::Add, Some(value.clone()))?;
                        continue;
                    }
                    let path = PatchPath::parse(key)
                        .map_err(|e| error("invalidPath", format!("{key}: {e}")))?;
                    set(resource, &path, op.op, Some(value.clone()))?;
                }
            }
            (Some(path), kind) => set(resource, path, kind, op.value.clone())?,
            (None, OpKind::Remove) => return Err(error("noTarget", "remove needs a path")),
        }
    }
    tidy_extensions(resource);
    Ok(())
}

/// Finds a key case-insensitively.
fn key_of(object: &Map<String, Value>, name: &str) -> Option<String> {
    object
        .keys()
        .find(|k| k.eq_ignore_ascii_case(name))
        .cloned()
}

/// The object an attribute path lives in: the resource, or its schema extension.
fn container<'a>(
    resource: &'a mut Value,
    attr: &AttrPath,
) -> Result<&'a mut Map<String, Value>, PatchError> {
    let root = resource
        .as_object_mut()
        .ok_or_else(|| error("invalidValue", "the resource is not an object"))?;
    match &attr.uri {
        Some(uri)
            if uri
                .to_ascii_lowercase()
                .starts_with("urn:ietf:params:scim:schemas:core:") =>
        {
            Ok(root)
        }
        Some(uri) => {
            let key = key_of(root, uri).unwrap_or_else(|| uri.clone());
            // declare the extension among the resource's schemas
            if let Some(Value::Array(schemas)) = root.get_mut("schemas")
                && !schemas
                    .iter()
                    .any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(uri)))
            {
                schemas.push(Value::String(uri.clone()));
            }
            let slot = root.entry(key).or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            Ok(slot.as_object_mut().expect("made an object above"))
        }
        None => Ok(root),
    }
}

/// Normalises a value for an attribute: string booleans, the manager forms.
fn normalise(attr: &str, sub: Option<&str>, value: Value) -> Result<Option<Value>, PatchError> {
    let name = sub.unwrap_or(attr);
    // null or an empty string clears the attribute
    if value.is_null() || value.as_str().is_some_and(str::is_empty) {
        return Ok(None);
    }
    if BOOLEAN_ATTRIBUTES
        .iter()
        .any(|b| b.eq_ignore_ascii_case(name))
    {
        return match &value {
            Value::Bool(_) => Ok(Some(value)),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Some(Value::Bool(true))),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Some(Value::Bool(false))),
            _ => Err(error("invalidValue", format!("{name} must be a boolean"))),
        };
    }
    if attr.eq_ignore_ascii_case("manager") && sub.is_none() {
        // a bare id, {"value": id, "displayName"?}, or [{"$ref": null, "value": id}]
        let object = match &value {
            Value::String(s) => {
                return Ok((!s.is_empty()).then(|| serde_json::json!({ "value": s })));
            }
            Value::Object(o) => Some(o),
            Value::Array(items) => items.first().and_then(Value::as_object),
            _ => None,
        };
        let Some(object) = object else {
            return Ok(None);
        };
        let Some(id) = object
            .get("value")
            .and_then(Value::as_str)
            .filter(|i| !i.is_empty())
        else {
            return Ok(None);
        };
        let mut manager = serde_json::json!({ "value": id });
        if let Some(name) = object.get("displayName").and_then(Value::as_str) {
            manager["displayName"] = Value::String(name.to_string());
        }
        return Ok(Some(manager));
    }
    Ok(Some(value))
}

/// The path names a whole schema extension (`urn:...:enterprise:2.0:User`).
fn whole_extension(path: &PatchPath) -> Option<String> {
    let uri = path.attr.uri.as_ref()?;
    let full = format!("{uri}:{}", path.attr.attr);
    (path.attr.sub.is_none() && path.filter.is_none() && full.eq_ignore_ascii_case(ENTERPRISE_USER))
        .then_some(full)
}

fn set_extension(
    resource: &mut Value,
    urn: &str,
    kind: OpKind,
    value: Option<Value>,
) -> Result<(), PatchError> {
    let root = resource
        .as_object_mut()
        .ok_or_else(|| error("invalidValue", "the resource is not an object"))?;
    let key = key_of(root, urn).unwrap_or_else(|| urn.to_string());
    match (kind, value) {
        (OpKind::Remove, _) => {
            root.remove(&key);
        }
        (_, Some(Value::Object(new))) => {
            let slot = root.entry(key).or_insert_with(|| Value::Object(Map::new()));
            if kind == OpKind::Replace || !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            let target = slot.as_object_mut().expect("an object");
            for (k, v) in new {
                match normalise(&k, None, v)? {
                    Some(v) => {
                        let k = key_of(target, &k).unwrap_or(k);
                        target.insert(k, v);
                    }
                    None => {
                        if let Some(k) = key_of(target, &k) {
                            target.remove(&k);
                        }
                    }
                }
            }
            if let Some(Value::Array(schemas)) = root.get_mut("schemas")
                && !schemas
                    .iter()
                    .any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(urn)))
            {
                schemas.push(Value::String(urn.to_string()));
            }
        }
        _ => return Err(error("invalidValue", format!("{urn} takes an object"))),
    }
    Ok(())
}

/// Drops empty extension objects and lists exactly the extensions present in `schemas`.
fn tidy_extensions(resource: &mut Value) {
    let Some(root) = resource.as_object_mut() else {
        return;
    };
    let empty: Vec<String> = root
        .iter()
        .filter(|(k, v)| {
            k.to_ascii_lowercase().starts_with("urn:") && v.as_object().is_some_and(Map::is_empty)
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in &empty {
        root.remove(key);
    }
    let present: Vec<String> = root
        .keys()
        .filter(|k| k.to_ascii_lowercase().starts_with("urn:"))
        .cloned()
        .collect();
    if let Some(Value::Array(schemas)) = root.get_mut("schemas") {
        schemas.retain(|s| {
            let s = s.as_str().unwrap_or_default();
            !s.to_ascii_lowercase().contains(":extension:")
                || present.iter().any(|p| p.eq_ignore_ascii_case(s))
        });
    }
}

fn set(
    resource: &mut Value,
    path: &PatchPath,
    kind: OpKind,
    value: Option<Value>,
) -> Result<(), PatchError> {
    if path.attr.uri.is_none()
        && READ_ONLY
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&path.attr.attr))
    {
        return Err(error(
            "mutability",
            format!("{} cannot be changed", path.attr.attr),
        ));
    }
    if let Some(urn) = whole_extension(path) {
        return set_extension(resource, &urn, kind, value);
    }
    // attributes only the enterprise extension defines (Entra sends `manager` bare)
    let in_extension = path.attr.uri.is_none()
        && ENTERPRISE_ATTRIBUTES
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&path.attr.attr));
    let extended;
    let path = if in_extension {
        extended = PatchPath {
            attr: AttrPath {
                uri: Some(ENTERPRISE_USER.to_string()),
                ..path.attr.clone()
            },
            ..path.clone()
        };
        &extended
    } else {
        path
    };
    let object = container(resource, &path.attr)?;
    let key = key_of(object, &path.attr.attr).unwrap_or_else(|| path.attr.attr.clone());
    match (&path.filter, &path.attr.sub, kind) {
        // attr.sub on a complex attribute (name.familyName)
        (None, Some(sub), _) => {
            let target = object
                .entry(key.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !target.is_object() {
                return Err(error(
                    "invalidPath",
                    format!("{key} is not a complex attribute"),
                ));
            }
            let inner = target.as_object_mut().expect("checked");
            let sub_key = key_of(inner, sub).unwrap_or_else(|| sub.clone());
            match kind {
                OpKind::Remove => {
                    inner.remove(&sub_key);
                }
                _ => match normalise(&path.attr.attr, Some(sub), value.unwrap_or(Value::Null))? {
                    Some(v) => {
                        inner.insert(sub_key, v);
                    }
                    None => {
                        inner.remove(&sub_key);
                    }
                },
            }
            if inner.is_empty() {
                object.remove(&key);
            }
            Ok(())
        }
        // a whole attribute
        (None, None, OpKind::Remove) => {
            match (object.get_mut(&key), value) {
                // Entra's older dialect: remove only the listed members
                (Some(Value::Array(items)), Some(Value::Array(listed))) => {
                    let ids: Vec<String> = listed.iter().filter_map(member_id).collect();
                    items.retain(|item| !member_id(item).is_some_and(|id| ids.contains(&id)));
                }
                _ => {
                    object.remove(&key);
                }
            }
            Ok(())
        }
        (None, None, OpKind::Add) => {
            let Some(value) = normalise(&path.attr.attr, None, value.unwrap_or(Value::Null))?
            else {
                object.remove(&key);
                return Ok(());
            };
            match (object.get_mut(&key), value) {
                // adding to a multi-valued attribute appends, skipping values already there
                (Some(Value::Array(items)), Value::Array(new)) => {
                    for item in new {
                        if !items.iter().any(|existing| same_element(existing, &item)) {
                            items.push(item);
                        }
                    }
                }
                (Some(Value::Array(items)), single) => {
                    if !items.iter().any(|existing| same_element(existing, &single)) {
                        items.push(single);
                    }
                }
                (Some(Value::Object(existing)), Value::Object(new)) => {
                    for (k, v) in new {
                        let k = key_of(existing, &k).unwrap_or(k);
                        existing.insert(k, v);
                    }
                }
                (_, value) => {
                    object.insert(key, value);
                }
            }
            Ok(())
        }
        (None, None, OpKind::Replace) => {
            match normalise(&path.attr.attr, None, value.unwrap_or(Value::Null))? {
                Some(Value::Object(new))
                    if object.get(&key).is_some_and(Value::is_object)
                        && !path.attr.attr.eq_ignore_ascii_case("manager") =>
                {
                    let existing = object
                        .get_mut(&key)
                        .and_then(Value::as_object_mut)
                        .expect("checked");
                    for (k, v) in new {
                        let k = key_of(existing, &k).unwrap_or(k);
                        existing.insert(k, v);
                    }
                }
                Some(v) => {
                    object.insert(key, v);
                }
                None => {
                    object.remove(&key);
                }
            }
            Ok(())
        }
        // attr[filter] and attr[filter].sub
        (Some(filter), _, _) => {
            apply_filtered(object, &key, filter, path.sub.as_deref(), kind, value)
        }
    }
}

fn apply_filtered(
    object: &mut Map<String, Value>,
    key: &str,
    filter: &Filter,
    sub: Option<&str>,
    kind: OpKind,
    value: Option<Value>,
) -> Result<(), PatchError> {
    let items = match object.get_mut(key) {
        Some(Value::Array(items)) => items,
        _ if kind == OpKind::Remove => return Ok(()),
        _ => {
            object.insert(key.to_string(), Value::Array(Vec::new()));
            object
                .get_mut(key)
                .and_then(Value::as_array_mut)
                .expect("just inserted")
        }
    };
    let matching: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, item)| filter.matches(item))
        .map(|(i, _)| i)
        .collect();
    match (kind, sub) {
        (OpKind::Remove, None) => {
            let mut index = 0;
            items.retain(|_| {
                let keep = !matching.contains(&index);
                index += 1;
                keep
            });
        }
        (OpKind::Remove, Some(sub)) => {
            for &i in &matching {
                if let Some(o) = items[i].as_object_mut()
                    && let Some(k) = key_of(o, sub)
                {
                    o.remove(&k);
                }
            }
        }
        (_, Some(sub)) => {
            let value = normalise(key, Some(sub), value.unwrap_or(Value::Null))?;
            if matching.is_empty() {
                // Entra replaces emails[type eq "work"].value on users without one: create it
                let Some(value) = value else { return Ok(()) };
                let mut element = equality_fields(filter);
                element.insert(sub.to_string(), value);
                items.push(Value::Object(element));
                return Ok(());
            }
            for &i in &matching {
                if let Some(o) = items[i].as_object_mut() {
                    let k = key_of(o, sub).unwrap_or_else(|| sub.to_string());
                    match &value {
                        Some(v) => {
                            o.insert(k, v.clone());
                        }
                        None => {
                            o.remove(&k);
                        }
                    }
                }
            }
        }
        (_, None) => {
            let Some(Value::Object(new)) = value else {
                return Err(error(
                    "invalidValue",
                    "a filtered path without a sub-attribute needs an object value",
                ));
            };
            if matching.is_empty() {
                let mut element = equality_fields(filter);
                element.extend(new);
                items.push(Value::Object(element));
                return Ok(());
            }
            for &i in &matching {
                if let Some(o) = items[i].as_object_mut() {
                    for (k, v) in &new {
                        let k = key_of(o, k).unwrap_or_else(|| k.clone());
                        o.insert(k, v.clone());
                    }
                }
            }
        }
    }
    Ok(())
}

/// `type eq "work" and primary eq true` -> {"type": "work", "primary": true}.
fn equality_fields(filter: &Filter) -> Map<String, Value> {
    let mut out = Map::new();
    let mut stack = vec![filter];
    while let Some(f) = stack.pop() {
        match f {
            Filter::And(a, b) => {
                stack.push(a);
                stack.push(b);
            }
            Filter::Compare {
                path,
                op: crate::CompareOp::Eq,
                value,
            } if path.uri.is_none() && path.sub.is_none() => {
                let v = match value {
                    crate::CompValue::String(s) => Value::String(s.clone()),
                    crate::CompValue::Bool(b) => Value::Bool(*b),
                    crate::CompValue::Number(n) => Value::Number(n.clone()),
                    crate::CompValue::Null => continue,
                };
                out.insert(path.attr.clone(), v);
            }
            _ => {}
        }
    }
    out
}

/// A member's or multi-valued element's `value`.
fn member_id(item: &Value) -> Option<String> {
    match item {
        Value::Object(o) => o.get("value").and_then(Value::as_str).map(str::to_string),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn same_element(a: &Value, b: &Value) -> bool {
    match (member_id(a), member_id(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": "u1", "userName": "ada@contoso.com", "active": true,
            "name": {"givenName": "Ada", "familyName": "Lovelace"},
            "emails": [{"type": "work", "value": "ada@contoso.com", "primary": true}],
        })
    }

    fn patch(resource: &mut Value, operations: Value) -> Result<(), PatchError> {
        let ops = parse_request(&json!({"schemas": [PATCH_OP_SCHEMA], "Operations": operations}))?;
        apply(resource, &ops)
    }

    #[test]
    fn older_dialect_disable_with_a_string_boolean() {
        let mut u = user();
        patch(
            &mut u,
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
        )
        .unwrap();
        assert_eq!(u["active"], false);
        patch(
            &mut u,
            json!([{"op": "replace", "path": "active", "value": true}]),
        )
        .unwrap();
        assert_eq!(u["active"], true);
    }

    #[test]
    fn filtered_paths_replace_and_create_elements() {
        let mut u = user();
        patch(&mut u, json!([{"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "ada@fabrikam.com"}])).unwrap();
        assert_eq!(u["emails"][0]["value"], "ada@fabrikam.com");
        assert_eq!(u["emails"][0]["primary"], true, "other sub-attributes kept");
        patch(&mut u, json!([{"op": "Add", "path": "emails[type eq \"home\"].value", "value": "ada@home.example"}])).unwrap();
        assert_eq!(
            u["emails"][1],
            json!({"type": "home", "value": "ada@home.example"})
        );
        patch(
            &mut u,
            json!([{"op": "Remove", "path": "emails[type eq \"home\"]"}]),
        )
        .unwrap();
        assert_eq!(u["emails"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn newer_dialect_pathless_operation_with_dotted_and_urn_keys() {
        let mut u = user();
        patch(
            &mut u,
            json!([{"op": "replace", "value": {
                "displayName": "Ada L.",
                "name.givenName": "Augusta",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber": "701",
            }}]),
        )
        .unwrap();
        assert_eq!(u["displayName"], "Ada L.");
        assert_eq!(u["name"]["givenName"], "Augusta");
        assert_eq!(u["name"]["familyName"], "Lovelace");
        assert_eq!(u[ENTERPRISE_USER]["employeeNumber"], "701");
        assert!(
            u["schemas"]
                .as_array()
                .unwrap()
                .contains(&json!(ENTERPRISE_USER))
        );
    }

    #[test]
    fn both_manager_forms_store_a_value_object_and_empty_clears() {
        let mut u = user();
        patch(
            &mut u,
            json!([{"op": "Add", "path": format!("{ENTERPRISE_USER}:manager"), "value": "boss-1"}]),
        )
        .unwrap();
        assert_eq!(u[ENTERPRISE_USER]["manager"], json!({"value": "boss-1"}));
        patch(
            &mut u,
            json!([{"op": "Add", "path": "manager", "value": [{"$ref": null, "value": "boss-2"}]}]),
        )
        .unwrap();
        assert_eq!(
            u[ENTERPRISE_USER]["manager"],
            json!({"value": "boss-2"}),
            "a bare manager is the extension's"
        );
        assert!(u.get("manager").is_none());
        patch(
            &mut u,
            json!([{"op": "Replace", "path": format!("{ENTERPRISE_USER}:manager"), "value": ""}]),
        )
        .unwrap();
        assert!(u[ENTERPRISE_USER].get("manager").is_none());
    }

    #[test]
    fn members_are_added_several_at_a_time_and_removed_in_both_dialects() {
        let mut g = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "id": "g1", "displayName": "Staff", "members": []});
        patch(&mut g, json!([{"op": "Add", "path": "members", "value": [{"$ref": null, "value": "a"}, {"value": "b"}, {"value": "c"}]}])).unwrap();
        patch(
            &mut g,
            json!([{"op": "Add", "path": "members", "value": [{"value": "a"}]}]),
        )
        .unwrap();
        assert_eq!(g["members"].as_array().unwrap().len(), 3, "no duplicates");
        // older dialect: remove only the listed members
        patch(
            &mut g,
            json!([{"op": "Remove", "path": "members", "value": [{"value": "a"}]}]),
        )
        .unwrap();
        let ids: Vec<&str> = g["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["value"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["b", "c"]);
        // newer dialect
        patch(
            &mut g,
            json!([{"op": "remove", "path": "members[value eq \"b\"]"}]),
        )
        .unwrap();
        assert_eq!(g["members"], json!([{"value": "c"}]));
        // remove with no value: all members
        patch(&mut g, json!([{"op": "remove", "path": "members"}])).unwrap();
        assert!(g.get("members").is_none());
    }

    #[test]
    fn the_whole_extension_object_is_added_replaced_and_removed() {
        let mut u = user();
        patch(&mut u, json!([{"op": "add", "path": ENTERPRISE_USER, "value": {"department": "R&D", "employeeNumber": "7"}}])).unwrap();
        assert_eq!(
            u[ENTERPRISE_USER],
            json!({"department": "R&D", "employeeNumber": "7"})
        );
        assert!(
            u["schemas"]
                .as_array()
                .unwrap()
                .contains(&json!(ENTERPRISE_USER))
        );
        patch(
            &mut u,
            json!([{"op": "replace", "path": ENTERPRISE_USER, "value": {"division": "X"}}]),
        )
        .unwrap();
        assert_eq!(u[ENTERPRISE_USER], json!({"division": "X"}));
        patch(
            &mut u,
            json!([{"op": "remove", "path": format!("{ENTERPRISE_USER}:division")}]),
        )
        .unwrap();
        assert!(
            u.get(ENTERPRISE_USER).is_none(),
            "an emptied extension goes away"
        );
        assert!(
            !u["schemas"]
                .as_array()
                .unwrap()
                .contains(&json!(ENTERPRISE_USER))
        );
        assert!(
            u.get("urn:ietf:params:scim:schemas:extension:enterprise:2.0")
                .is_none()
        );
    }

    #[test]
    fn null_or_empty_clears_and_complex_subattributes_edit_in_place() {
        let mut u = user();
        patch(
            &mut u,
            json!([{"op": "Replace", "path": "name.familyName", "value": "Byron"}]),
        )
        .unwrap();
        assert_eq!(
            u["name"],
            json!({"givenName": "Ada", "familyName": "Byron"})
        );
        patch(
            &mut u,
            json!([{"op": "Replace", "path": "name.familyName", "value": null}]),
        )
        .unwrap();
        assert_eq!(u["name"], json!({"givenName": "Ada"}));
        patch(
            &mut u,
            json!([{"op": "Replace", "path": "userName", "value": ""}]),
        )
        .unwrap();
        assert!(u.get("userName").is_none());
    }

    #[test]
    fn member_operations_are_split_out_whatever_their_spelling() {
        let ops = parse_request(&json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [
            {"op": "add", "value": {"members": [{"value": "a"}], "displayName": "x"}},
            {"op": "replace", "value": {"Members": [{"value": "b"}]}},
            {"op": "Replace", "path": "members", "value": [{"value": "c"}]},
            {"op": "remove", "path": "members[value eq \"c\"]"},
            {"op": "add", "path": "urn:ietf:params:scim:schemas:core:2.0:Group:members", "value": [{"value": "d"}]},
            {"op": "add", "value": {"urn:ietf:params:scim:schemas:core:2.0:Group:members": [{"value": "e"}]}},
            {"op": "replace", "path": "displayName", "value": "y"},
            {"op": "add", "path": "urn:example:other:members", "value": "z"},
        ]}))
        .unwrap();
        let (members, rest) = split_attribute(
            ops,
            "members",
            "urn:ietf:params:scim:schemas:core:2.0:Group",
        );
        let kinds: Vec<(OpKind, bool)> = members
            .iter()
            .map(|op| (op.op, op.path.as_ref().unwrap().filter.is_some()))
            .collect();
        assert_eq!(
            kinds,
            [
                (OpKind::Add, false),
                (OpKind::Replace, false),
                (OpKind::Replace, false),
                (OpKind::Remove, true),
                (OpKind::Add, false),
                (OpKind::Add, false),
            ]
        );
        assert_eq!(members[0].value, Some(json!([{"value": "a"}])));
        assert_eq!(members[5].value, Some(json!([{"value": "e"}])));
        // what is left keeps its order: the rest of the first value, the rename, the rest
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0].value, Some(json!({"displayName": "x"})));
        assert!(rest[0].path.is_none());
        assert_eq!(rest[1].value, Some(json!("y")));
        assert_eq!(
            rest[2].path.as_ref().unwrap().attr.uri.as_deref(),
            Some("urn:example:other")
        );
    }

    #[test]
    fn malformed_requests_get_the_right_scim_type() {
        let mut u = user();
        let bad = |body: Value| parse_request(&body).unwrap_err().scim_type;
        assert_eq!(bad(json!({"Operations": []})), "invalidSyntax");
        assert_eq!(
            bad(json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "move", "path": "x"}]})),
            "invalidSyntax"
        );
        assert_eq!(
            bad(json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "add", "path": "x"}]})),
            "invalidValue"
        );
        assert_eq!(
            bad(json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "remove"}]})),
            "noTarget"
        );
        assert_eq!(
            bad(
                json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "add", "path": "emails[", "value": 1}]})
            ),
            "invalidPath"
        );
        assert_eq!(
            patch(
                &mut u,
                json!([{"op": "replace", "path": "id", "value": "x"}])
            )
            .unwrap_err()
            .scim_type,
            "mutability"
        );
        assert_eq!(
            patch(
                &mut u,
                json!([{"op": "replace", "path": "active", "value": "maybe"}])
            )
            .unwrap_err()
            .scim_type,
            "invalidValue"
        );
    }
}
