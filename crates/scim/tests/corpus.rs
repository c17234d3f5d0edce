//! Replays the fuzzing corpus kept in `fuzz/corpus/` (seeded with Entra's request shapes,
//! grown and minimised by `cargo fuzz`) through the parsers on every test run: no input
//! panics, and every rejection is an error pointing inside its input.

use std::path::PathBuf;

use scim::patch::{apply, parse_request};
use scim::{Filter, PatchPath};
use serde_json::json;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    assert!(
        inputs.len() >= 10,
        "{} holds only {} inputs",
        dir.display(),
        inputs.len()
    );
    inputs
}

#[test]
fn every_filter_in_the_corpus_parses_or_is_rejected_with_a_position() {
    let user = json!({"userName": "ada@contoso.com", "emails": [{"type": "work", "value": "x"}]});
    let (mut accepted, mut rejected) = (0, 0);
    for input in corpus("filter") {
        let Ok(text) = std::str::from_utf8(&input) else {
            continue;
        };
        match Filter::parse(text) {
            Ok(filter) => {
                filter.matches(&user);
                accepted += 1;
            }
            Err(e) => {
                assert!(e.position <= text.len(), "{text:?}: {e}");
                rejected += 1;
            }
        }
    }
    assert!(
        accepted > 0 && rejected > 0,
        "{accepted} accepted, {rejected} rejected"
    );
}

#[test]
fn every_patch_path_in_the_corpus_parses_or_is_rejected_with_a_position() {
    for input in corpus("patch_path") {
        if let Ok(text) = std::str::from_utf8(&input)
            && let Err(e) = PatchPath::parse(text)
        {
            assert!(e.position <= text.len(), "{text:?}: {e}");
        }
    }
}

#[test]
fn every_patch_request_in_the_corpus_applies_or_is_refused_without_panicking() {
    let mut applied = 0;
    for input in corpus("patch_request") {
        let Ok(body) = serde_json::from_slice(&input) else {
            continue;
        };
        if let Ok(ops) = parse_request(&body) {
            let mut user = json!({"schemas": [], "id": "1", "userName": "x", "active": true,
                "emails": [{"type": "work", "value": "y"}], "members": [{"value": "1"}]});
            if apply(&mut user, &ops).is_ok() {
                applied += 1;
            }
        }
    }
    assert!(applied > 0, "no corpus request applied");
}
