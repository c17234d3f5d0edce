//! Property tests standing in for a fuzzer: arbitrary text and near-miss filters never
//! panic the filter or PATCH path parsers; every rejection is an error with a position.

use proptest::prelude::*;
use scim::patch::{PATCH_OP_SCHEMA, apply, parse_request};
use scim::{Filter, PatchPath};

/// Fragments that combine into almost-valid filters.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("userName".to_string()),
        Just("emails".to_string()),
        Just("name.givenName".to_string()),
        Just("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager".to_string()),
        Just(" eq ".to_string()),
        Just(" pr".to_string()),
        Just(" and ".to_string()),
        Just(" or ".to_string()),
        Just("not ".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(".value".to_string()),
        Just("\"x\"".to_string()),
        Just("\"a\\\"b\"".to_string()),
        Just("\"".to_string()),
        Just("12".to_string()),
        Just("-1.5e3".to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        "[ -~]{0,3}",
        "\\PC{0,2}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,80}") {
        match Filter::parse(&text) {
            Ok(f) => { f.matches(&serde_json::json!({"userName": "x", "emails": [{"value": "y"}]})); }
            Err(e) => prop_assert!(e.position <= text.len().max(4096)),
        }
        let _ = PatchPath::parse(&text);
    }

    #[test]
    fn near_miss_filters_never_panic(parts in proptest::collection::vec(fragment(), 0..12)) {
        let text: String = parts.concat();
        if let Ok(f) = Filter::parse(&text) {
            f.matches(&serde_json::json!({"userName": "x", "emails": [{"value": "x", "type": "work"}], "name": {"givenName": "g"}}));
        }
        let _ = PatchPath::parse(&text);
    }

    #[test]
    fn arbitrary_patch_operations_never_panic(
        op in prop_oneof![Just("add"), Just("Replace"), Just("remove"), Just("move")],
        parts in proptest::collection::vec(fragment(), 0..6),
        value in prop_oneof![
            Just(serde_json::json!(null)), Just(serde_json::json!("")), Just(serde_json::json!("False")),
            Just(serde_json::json!([{"value": "a"}])), Just(serde_json::json!({"name.givenName": "x", "emails": []})),
            Just(serde_json::json!(42)),
        ],
    ) {
        let path: String = parts.concat();
        let body = serde_json::json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": op, "path": path, "value": value}]});
        if let Ok(ops) = parse_request(&body) {
            let mut resource = serde_json::json!({"schemas": [], "id": "1", "userName": "x", "emails": [{"type": "work", "value": "y"}], "members": [{"value": "a"}]});
            let _ = apply(&mut resource, &ops);
        }
    }
}
