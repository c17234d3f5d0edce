//! Any text as a SCIM filter: parsing never panics, a rejection points inside the text,
//! and what parses can be evaluated.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match scim::Filter::parse(text) {
        Ok(filter) => {
            let user = serde_json::json!({
                "userName": "ada@contoso.com", "active": true, "id": "1",
                "emails": [{"type": "work", "value": "ada@contoso.com", "primary": true}],
                "name": {"givenName": "Ada"}, "meta": {"lastModified": "2026-01-01T00:00:00Z"},
            });
            filter.matches(&user);
        }
        Err(e) => assert!(e.position <= text.len(), "{e:?} past the end of {text:?}"),
    }
});
