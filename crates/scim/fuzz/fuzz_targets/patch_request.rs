//! Any JSON as a PATCH request body, applied to a user and to a group: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(ops) = scim::patch::parse_request(&body) {
        let mut user = serde_json::json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "1",
            "userName": "ada@contoso.com", "active": true,
            "emails": [{"type": "work", "value": "ada@contoso.com", "primary": true}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"manager": {"value": "2"}},
        });
        let _ = scim::patch::apply(&mut user, &ops);
        let mut group = serde_json::json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "id": "g",
            "displayName": "Eng", "members": [{"value": "1"}, {"value": "2"}],
        });
        let _ = scim::patch::apply(&mut group, &ops);
    }
});
