//! Any text as a PATCH path: parsing never panics and a rejection points inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = scim::PatchPath::parse(text) {
        assert!(e.position <= text.len(), "{e:?} past the end of {text:?}");
    }
});
