//! SCIM messages: the error body, ListResponse, and the discovery documents
//! (`/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas`), camelCase and without nulls.

use serde_json::{Value, json};

/// The Error message schema.
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
/// The ListResponse message schema.
pub const LIST_RESPONSE_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
/// Core User and Group schemas.
pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
/// The group schema Entra sends alongside the core one.
pub const ADSCIM_GROUP_SCHEMA: &str =
    "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group";

/// An error body: `status` is a string, `scimType` only when given.
pub fn error_body(status: u16, scim_type: Option<&str>, detail: &str) -> Value {
    let mut body =
        json!({ "schemas": [ERROR_SCHEMA], "status": status.to_string(), "detail": detail });
    if let Some(t) = scim_type {
        body["scimType"] = json!(t);
    }
    body
}

/// A ListResponse page (1-based `startIndex`): `itemsPerPage` is this page's length.
pub fn list_response(resources: Vec<Value>, total: usize, start_index: usize) -> Value {
    let items = resources.len();
    json!({
        "schemas": [LIST_RESPONSE_SCHEMA],
        "totalResults": total,
        "Resources": resources,
        "startIndex": start_index,
        "itemsPerPage": items,
    })
}

/// `/ServiceProviderConfig`, for a service at `base` (the Tenant URL).
pub fn service_provider_config(base: &str, max_payload: usize, max_results: usize) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "documentationUri": "https://learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups",
        "patch": { "supported": true },
        "bulk": { "supported": false, "maxOperations": 0, "maxPayloadSize": max_payload },
        "filter": { "supported": true, "maxResults": max_results },
        "changePassword": { "supported": false },
        "sort": { "supported": false },
        "etag": { "supported": true },
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Secret Token",
            "description": "The Secret Token generated for this tenant, as a bearer token",
            "primary": true,
        }],
        "meta": { "resourceType": "ServiceProviderConfig", "location": format!("{base}/ServiceProviderConfig") },
    })
}

/// `/ResourceTypes`: User (with the enterprise extension) and Group.
pub fn resource_types(base: &str) -> Vec<Value> {
    vec![
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "User", "name": "User", "endpoint": "/Users", "description": "User Account",
            "schema": USER_SCHEMA,
            "schemaExtensions": [{ "schema": crate::patch::ENTERPRISE_USER, "required": false }],
            "meta": { "resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User") },
        }),
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "Group", "name": "Group", "endpoint": "/Groups", "description": "Group",
            "schema": GROUP_SCHEMA,
            "meta": { "resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/Group") },
        }),
    ]
}

fn attribute(
    name: &str,
    kind: &str,
    multi: bool,
    required: bool,
    uniqueness: &str,
    sub: Option<Vec<Value>>,
) -> Value {
    let mut a = json!({
        "name": name, "type": kind, "multiValued": multi, "description": name,
        "required": required, "caseExact": false, "mutability": "readWrite",
        "returned": "default", "uniqueness": uniqueness,
    });
    if let Some(sub) = sub {
        a["subAttributes"] = Value::Array(sub);
    }
    a
}

fn simple(name: &str) -> Value {
    attribute(name, "string", false, false, "none", None)
}

/// `/Schemas`: core User, enterprise User, core Group.
pub fn schemas(base: &str) -> Vec<Value> {
    let multi = |name: &str| {
        attribute(
            name,
            "complex",
            true,
            false,
            "none",
            Some(vec![
                simple("value"),
                simple("display"),
                simple("type"),
                attribute("primary", "boolean", false, false, "none", None),
            ]),
        )
    };
    let user = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": USER_SCHEMA, "name": "User", "description": "User Account",
        "attributes": [
            attribute("userName", "string", false, true, "server", None),
            attribute("name", "complex", false, false, "none", Some(vec![
                simple("formatted"), simple("familyName"), simple("givenName"),
                simple("middleName"), simple("honorificPrefix"), simple("honorificSuffix"),
            ])),
            simple("displayName"), simple("nickName"), simple("profileUrl"), simple("title"),
            simple("userType"), simple("preferredLanguage"), simple("locale"), simple("timezone"),
            attribute("active", "boolean", false, false, "none", None),
            multi("emails"), multi("phoneNumbers"), multi("ims"), multi("photos"), multi("roles"),
            attribute("addresses", "complex", true, false, "none", Some(vec![
                simple("formatted"), simple("streetAddress"), simple("locality"), simple("region"),
                simple("postalCode"), simple("country"), simple("type"),
                attribute("primary", "boolean", false, false, "none", None),
            ])),
            attribute("groups", "complex", true, false, "none", Some(vec![simple("value"), simple("display")])),
        ],
        "meta": { "resourceType": "Schema", "location": format!("{base}/Schemas/{USER_SCHEMA}") },
    });
    let enterprise = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": crate::patch::ENTERPRISE_USER, "name": "EnterpriseUser", "description": "Enterprise User",
        "attributes": [
            simple("employeeNumber"), simple("costCenter"), simple("organization"),
            simple("division"), simple("department"),
            attribute("manager", "complex", false, false, "none", Some(vec![simple("value"), simple("displayName")])),
        ],
        "meta": { "resourceType": "Schema", "location": format!("{base}/Schemas/{}", crate::patch::ENTERPRISE_USER) },
    });
    let group = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": GROUP_SCHEMA, "name": "Group", "description": "Group",
        "attributes": [
            attribute("displayName", "string", false, true, "server", None),
            attribute("members", "complex", true, false, "none", Some(vec![simple("value"), simple("display"), simple("type")])),
        ],
        "meta": { "resourceType": "Schema", "location": format!("{base}/Schemas/{GROUP_SCHEMA}") },
    });
    vec![user, enterprise, group]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_null(v: &Value) -> bool {
        match v {
            Value::Null => true,
            Value::Array(a) => a.iter().any(has_null),
            Value::Object(o) => o.values().any(has_null),
            _ => false,
        }
    }

    #[test]
    fn errors_carry_a_string_status() {
        let e = error_body(409, Some("uniqueness"), "userName taken");
        assert_eq!(e["status"], "409");
        assert_eq!(e["scimType"], "uniqueness");
        assert!(error_body(404, None, "x").get("scimType").is_none());
    }

    #[test]
    fn a_page_counts_its_own_items() {
        let l = list_response(vec![json!({"id": "a"}), json!({"id": "b"})], 10, 3);
        assert_eq!(
            (
                l["totalResults"].as_u64(),
                l["itemsPerPage"].as_u64(),
                l["startIndex"].as_u64()
            ),
            (Some(10), Some(2), Some(3))
        );
    }

    #[test]
    fn an_empty_list_response_is_what_test_connection_expects() {
        let l = list_response(vec![], 0, 1);
        assert_eq!(
            l,
            json!({"schemas": [LIST_RESPONSE_SCHEMA], "totalResults": 0, "Resources": [], "startIndex": 1, "itemsPerPage": 0})
        );
    }

    #[test]
    fn discovery_documents_have_no_nulls_and_name_every_schema() {
        let base = "https://x/api/scim/t/v2";
        assert!(!has_null(&service_provider_config(base, 1, 2)));
        let types = resource_types(base);
        let schemas = schemas(base);
        for doc in types.iter().chain(schemas.iter()) {
            assert!(!has_null(doc), "{doc}");
        }
        let ids: Vec<&str> = schemas.iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            [USER_SCHEMA, crate::patch::ENTERPRISE_USER, GROUP_SCHEMA]
        );
    }
}

/// Applies `attributes` / `excludedAttributes` to a resource. `schemas`, `id` and `meta`
/// are always returned. Names are case-insensitive and may be `attr`, `attr.sub` or
/// URN-prefixed.
pub fn project(resource: &mut Value, attributes: &[String], excluded: &[String]) {
    const ALWAYS: &[&str] = &["schemas", "id", "meta"];
    let Some(root) = resource.as_object_mut() else {
        return;
    };
    let split = |name: &str| -> (Option<String>, String, Option<String>) {
        match crate::AttrPath::parse(name.trim()) {
            Some(p) => (p.uri, p.attr, p.sub),
            None => (None, name.trim().to_string(), None),
        }
    };
    if !attributes.is_empty() {
        let wanted: Vec<(Option<String>, String, Option<String>)> =
            attributes.iter().map(|a| split(a)).collect();
        let keys: Vec<String> = root.keys().cloned().collect();
        for key in keys {
            if ALWAYS.iter().any(|a| a.eq_ignore_ascii_case(&key)) {
                continue;
            }
            let is_extension = key.to_ascii_lowercase().starts_with("urn:");
            if is_extension {
                let wanted_here: Vec<&String> = wanted
                    .iter()
                    .filter(|(uri, _, _)| {
                        uri.as_ref().is_some_and(|u| u.eq_ignore_ascii_case(&key))
                    })
                    .map(|(_, attr, _)| attr)
                    .collect();
                let whole = attributes
                    .iter()
                    .any(|a| a.trim().eq_ignore_ascii_case(&key));
                match (whole, wanted_here.is_empty(), root.get_mut(&key)) {
                    (true, _, _) => {}
                    (false, true, _) => {
                        root.remove(&key);
                    }
                    (false, false, Some(Value::Object(ext))) => {
                        ext.retain(|k, _| wanted_here.iter().any(|w| w.eq_ignore_ascii_case(k)))
                    }
                    _ => {}
                }
                continue;
            }
            let subs: Vec<&Option<String>> = wanted
                .iter()
                .filter(|(uri, attr, _)| uri.is_none() && attr.eq_ignore_ascii_case(&key))
                .map(|(_, _, sub)| sub)
                .collect();
            if subs.is_empty() {
                root.remove(&key);
            } else if subs.iter().all(|s| s.is_some()) {
                let keep: Vec<&String> = subs.iter().filter_map(|s| s.as_ref()).collect();
                let only = |o: &mut serde_json::Map<String, Value>| {
                    o.retain(|k, _| keep.iter().any(|w| w.eq_ignore_ascii_case(k)))
                };
                match root.get_mut(&key) {
                    Some(Value::Object(o)) => only(o),
                    Some(Value::Array(items)) => items
                        .iter_mut()
                        .filter_map(Value::as_object_mut)
                        .for_each(only),
                    _ => {}
                }
            }
        }
    }
    for name in excluded {
        let (uri, attr, sub) = split(name);
        if ALWAYS.iter().any(|a| a.eq_ignore_ascii_case(&attr)) && uri.is_none() && sub.is_none() {
            continue;
        }
        let container = match &uri {
            Some(u) => root
                .iter_mut()
                .find(|(k, _)| k.eq_ignore_ascii_case(u))
                .and_then(|(_, v)| v.as_object_mut()),
            None => Some(&mut *root),
        };
        let Some(container) = container else { continue };
        let Some(key) = container
            .keys()
            .find(|k| k.eq_ignore_ascii_case(&attr))
            .cloned()
        else {
            continue;
        };
        match sub {
            None => {
                container.remove(&key);
            }
            Some(sub) => {
                let drop_sub = |o: &mut serde_json::Map<String, Value>| {
                    o.retain(|k, _| !k.eq_ignore_ascii_case(&sub))
                };
                match container.get_mut(&key) {
                    Some(Value::Object(o)) => drop_sub(o),
                    Some(Value::Array(items)) => items
                        .iter_mut()
                        .filter_map(Value::as_object_mut)
                        .for_each(drop_sub),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod projection_tests {
    use super::*;

    fn user() -> Value {
        json!({
            "schemas": [USER_SCHEMA], "id": "1", "meta": {"resourceType": "User"}, "userName": "a",
            "name": {"givenName": "A", "familyName": "B"}, "emails": [{"value": "x", "type": "work"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "D", "employeeNumber": "7"},
        })
    }

    #[test]
    fn attributes_keep_only_what_is_asked_and_always_returned() {
        let mut u = user();
        project(&mut u, &["userName".into(), "name.givenName".into()], &[]);
        assert_eq!(
            u,
            json!({"schemas": [USER_SCHEMA], "id": "1", "meta": {"resourceType": "User"}, "userName": "a", "name": {"givenName": "A"}})
        );
        let mut u = user();
        project(
            &mut u,
            &["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department".into()],
            &[],
        );
        assert_eq!(
            u["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
            json!({"department": "D"})
        );
        assert!(u.get("userName").is_none());
    }

    #[test]
    fn excluded_attributes_are_dropped_but_never_id_or_meta() {
        let mut u = user();
        project(
            &mut u,
            &[],
            &[
                "name".into(),
                "emails.type".into(),
                "id".into(),
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department".into(),
            ],
        );
        assert!(u.get("name").is_none());
        assert_eq!(u["emails"], json!([{"value": "x"}]));
        assert_eq!(u["id"], "1");
        assert_eq!(
            u["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
            json!({"employeeNumber": "7"})
        );
    }
}
