//! Embeds every `functions/<Name>/function.json` into the binary, so the standalone
//! runtime and the consistency tests see exactly the files that are deployed.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    // read at run time: a build script compiled for one checkout may be run for another
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest).join("../functions");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("the functions/ folder exists")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("function.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut out = String::from(
        "/// Every `functions/<Name>/function.json`, by function name.\npub const FUNCTION_SOURCES: &[(&str, &str)] = &[\n",
    );
    for name in &names {
        let path = dir.join(name).join("function.json");
        println!("cargo:rerun-if-changed={}", path.display());
        let path = path.canonicalize().expect("function.json path");
        writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    // a new file renamed into place rather than the old one overwritten: a target dir
    // seeded with hard links from another checkout must not have its copy changed
    let out_dir = std::env::var("OUT_DIR").unwrap();
    let target = Path::new(&out_dir).join("function_sources.rs");
    let staged = Path::new(&out_dir).join("function_sources.rs.new");
    std::fs::write(&staged, out).expect("write function_sources.rs");
    std::fs::rename(&staged, &target).expect("move function_sources.rs into place");
}
