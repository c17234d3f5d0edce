use std::collections::BTreeSet;

use super::*;
use crate::functions::{FUNCTIONS, Handler};

/// (METHOD, path) of every operation of a document.
fn operations_of(doc: &OpenApi) -> BTreeSet<(String, String)> {
    let value = serde_json::to_value(&doc.paths).unwrap();
    let mut found = BTreeSet::new();
    for (path, item) in value.as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch", "head"] {
            if item.get(method).is_some() {
                found.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    found
}

#[test]
fn committed_document_is_the_generated_one() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == json(),
        "docs/openapi.json is not the document the code generates; \
         run `cargo run -p handler -- openapi > docs/openapi.json`"
    );
}

#[test]
fn every_route_table_lists_exactly_the_operations_its_module_documents() {
    for module in MODULES {
        let Some(routes) = module.routes else {
            continue;
        };
        let served: BTreeSet<(String, String)> = routes
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        let documented = operations_of(&(module.api)());
        assert_eq!(
            served, documented,
            "{}: its route! table and its Api differ",
            module.name
        );
    }
}

/// Whether a documented path is one a function's route template serves: a template's
/// `{name}` matches any segment, a trailing `{name?}` may be absent, literals must agree.
fn served_by(template: &str, path: &str) -> Option<usize> {
    let template: Vec<&str> = template.split('/').collect();
    let path: Vec<&str> = path.trim_start_matches("/api/").split('/').collect();
    let optional = template.last().is_some_and(|s| s.ends_with("?}"));
    let fits = path.len() == template.len() || (optional && path.len() + 1 == template.len());
    if !fits {
        return None;
    }
    let mut literals = 0;
    for (t, p) in template.iter().zip(&path) {
        if t.starts_with('{') {
            continue;
        }
        if t != p {
            return None;
        }
        literals += 1;
    }
    Some(literals)
}

#[test]
fn every_http_function_is_documented_and_every_operation_is_served_by_one() {
    let catalog = crate::functions::catalog().unwrap();
    let doc = document();
    let mut documented_functions = BTreeSet::new();
    for (method, path) in operations_of(&doc) {
        // the most specific template serves it, as the Functions host routes
        let owner = FUNCTIONS
            .iter()
            .filter_map(|(name, handler)| match handler {
                Handler::Http { route } => served_by(route, &path).map(|n| (n, *name)),
                Handler::Invoked(_) => None,
            })
            .max();
        let Some((_, name)) = owner else {
            panic!("{method} {path} is documented but no function serves it");
        };
        let definition = catalog
            .get(name)
            .unwrap_or_else(|| panic!("no function.json for {name}"));
        let host::Trigger::Http { methods, .. } = &definition.trigger else {
            unreachable!()
        };
        assert!(
            methods.iter().any(|m| m.eq_ignore_ascii_case(&method)),
            "{method} {path}: functions/{name}/function.json does not take {method}"
        );
        documented_functions.insert(name);
    }
    for (name, handler) in FUNCTIONS {
        if matches!(handler, Handler::Http { .. }) {
            assert!(
                documented_functions.contains(name),
                "the HTTP function {name} has no operation in the document"
            );
        }
    }
}

#[test]
fn every_operation_has_an_id_a_tag_and_its_security() {
    let doc = serde_json::to_value(document()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            assert!(!id.is_empty(), "{method} {path} has no operationId");
            assert!(ids.insert(id.clone()), "operationId {id} is used twice");
            assert!(op["tags"].is_array(), "{method} {path} has no tag");
            assert!(
                op.get("security").is_some(),
                "{method} {path} says nothing of its security (anonymous: security(()))"
            );
        }
    }
}

/// Every operation of the document by its id: (METHOD path, the operation).
fn operations_by_id(
    doc: &serde_json::Value,
) -> std::collections::BTreeMap<String, (String, serde_json::Value)> {
    let mut found = std::collections::BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            found.insert(
                id,
                (
                    format!("{} {path}", method.to_ascii_uppercase()),
                    op.clone(),
                ),
            );
        }
    }
    found
}

#[test]
fn every_link_names_an_operation_and_only_its_parameters() {
    let doc = serde_json::from_str::<serde_json::Value>(&json()).unwrap();
    let operations = operations_by_id(&doc);
    let mut links = 0;
    for (id, (_, op)) in &operations {
        for (status, response) in op["responses"].as_object().unwrap() {
            let Some(named) = response.get("links").and_then(|l| l.as_object()) else {
                continue;
            };
            for (name, link) in named {
                links += 1;
                let target = link["operationId"].as_str().unwrap_or_default();
                let Some((_, target_op)) = operations.get(target) else {
                    panic!("{id} {status} link {name}: no operation {target}");
                };
                let parameters: BTreeSet<&str> = target_op["parameters"]
                    .as_array()
                    .map(|p| p.iter().filter_map(|p| p["name"].as_str()).collect())
                    .unwrap_or_default();
                assert!(
                    link.get("requestBody").is_none() || target_op.get("requestBody").is_some(),
                    "{id} {status} link {name}: {target} takes no body"
                );
                for parameter in link["parameters"].as_object().unwrap().keys() {
                    assert!(
                        parameters.contains(parameter.as_str()),
                        "{id} {status} link {name}: {target} has no parameter {parameter}"
                    );
                }
            }
        }
    }
    assert!(links > 0, "the document has no links");
}

/// Whether a schema (followed through `$ref`s to the components) shows an example; a
/// `oneOf`/`anyOf` (an optional body: null or a type) does when each branch but `null` does.
fn schema_has_example(doc: &serde_json::Value, schema: &serde_json::Value) -> bool {
    if schema.get("example").is_some() || schema.get("examples").is_some() {
        return true;
    }
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return schema_has_example(doc, &doc["components"]["schemas"][name]);
    }
    for combinator in ["oneOf", "anyOf"] {
        if let Some(branches) = schema[combinator].as_array() {
            return branches
                .iter()
                .filter(|b| b["type"] != "null")
                .all(|b| schema_has_example(doc, b));
        }
    }
    false
}

/// Operations allowed to lack an example, each with why. Empty: every JSON body has one.
const WITHOUT_EXAMPLE: &[&str] = &[];

#[test]
fn every_json_request_body_and_success_answer_has_an_example() {
    let doc = serde_json::from_str::<serde_json::Value>(&json()).unwrap();
    let mut missing = BTreeSet::new();
    for (id, (operation, op)) in operations_by_id(&doc) {
        let mut bodies = Vec::new();
        if let Some(content) = op["requestBody"]["content"].as_object() {
            bodies.extend(content.iter().map(|(t, m)| (format!("request {t}"), m)));
        }
        for (status, response) in op["responses"].as_object().unwrap() {
            if !status.starts_with('2') {
                continue;
            }
            if let Some(content) = response["content"].as_object() {
                bodies.extend(content.iter().map(|(t, m)| (format!("{status} {t}"), m)));
            }
        }
        for (what, media) in bodies {
            if !what.contains("json") {
                continue; // PEM, HTML, CSV: not JSON
            }
            let shown = media.get("example").is_some()
                || media.get("examples").is_some()
                || schema_has_example(&doc, &media["schema"]);
            if !shown && !WITHOUT_EXAMPLE.contains(&id.as_str()) {
                missing.insert(format!("{id} ({operation}): {what}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "JSON bodies without an example (add #[schema(example = json!(...))] to the type, \
         or `example = json!(...)` to the path attribute):\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}
