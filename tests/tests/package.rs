//! The deployment package infra/package.sh builds (tests/run builds it once and names it in
//! `RELEASE_PACKAGE_ZIP` and `RELEASE_HANDLER`): the zip's layout and modes, every function
//! folder of functions/ and nothing else, the oldest glibc the binary needs, and the
//! binary out of the unpacked zip answering on loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use system_tests::fake_entra::{self, FakeEntra};
use system_tests::{Azurite, HandlerProcess, run_to_exit, unique_table};

/// The newest glibc symbol version the binary may need (the Functions images have newer).
const MAX_GLIBC: (u32, u32) = (2, 28);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn built(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(default));
    assert!(
        path.exists(),
        "{} not found: run infra/package.sh first (tests/run does, and sets {var})",
        path.display()
    );
    path
}

fn package_zip() -> PathBuf {
    built("RELEASE_PACKAGE_ZIP", "dist.zip")
}

/// One entry of a zip's central directory.
#[derive(Debug)]
struct ZipEntry {
    /// The system that made it (3: Unix, whose mode bits unzip and the platform honour).
    made_on: u8,
    /// `st_mode` from the external attributes (Unix).
    mode: u32,
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The zip's entries by name, read from its central directory (APPNOTE 4.3.12, 4.3.16).
fn zip_entries(zip: &[u8]) -> BTreeMap<String, ZipEntry> {
    let end = (0..=zip.len().saturating_sub(22))
        .rev()
        .find(|&i| zip[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .expect("an end of central directory record");
    let count = u16_at(zip, end + 10);
    let mut at = u32_at(zip, end + 16) as usize;
    let mut entries = BTreeMap::new();
    for _ in 0..count {
        assert_eq!(
            zip[at..at + 4],
            [0x50, 0x4b, 0x01, 0x02],
            "a central directory header"
        );
        let made_on = zip[at + 5];
        let external = u32_at(zip, at + 38);
        let (name_len, extra_len, comment_len) = (
            u16_at(zip, at + 28),
            u16_at(zip, at + 30),
            u16_at(zip, at + 32),
        );
        let name = String::from_utf8(zip[at + 46..at + 46 + name_len].to_vec()).unwrap();
        entries.insert(
            name,
            ZipEntry {
                made_on,
                mode: external >> 16,
            },
        );
        at += 46 + name_len + extra_len + comment_len;
    }
    entries
}

/// The GLIBC_x.y versions an ELF64 little-endian binary needs (its SHT_GNU_verneed section).
fn glibc_versions(elf: &[u8]) -> BTreeSet<(u32, u32)> {
    assert_eq!(&elf[..4], b"\x7fELF", "an ELF file");
    assert_eq!((elf[4], elf[5]), (2, 1), "64-bit little-endian");
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
    let section_headers = u64_at(0x28);
    let entry_size = u16_at(elf, 0x3a);
    let sections = u16_at(elf, 0x3c);
    let section = |i: usize| section_headers + i * entry_size;
    const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;
    let verneed = (0..sections)
        .map(section)
        .find(|&s| u32_at(elf, s + 4) == SHT_GNU_VERNEED)
        .expect("a version-needs section (a dynamically linked binary)");
    let strings = u64_at(section(u32_at(elf, verneed + 40) as usize) + 24);
    let name_at = |offset: usize| {
        let start = strings + offset;
        let len = elf[start..].iter().position(|&b| b == 0).unwrap();
        String::from_utf8_lossy(&elf[start..start + len]).into_owned()
    };
    let mut versions = BTreeSet::new();
    let (mut need, mut files) = (u64_at(verneed + 24), u32_at(elf, verneed + 44));
    while files > 0 {
        // Elf64_Verneed: vn_version, vn_cnt, vn_file, vn_aux, vn_next
        let count = u16_at(elf, need + 2);
        let mut aux = need + u32_at(elf, need + 8) as usize;
        for _ in 0..count {
            // Elf64_Vernaux: vna_hash, vna_flags, vna_other, vna_name, vna_next
            let name = name_at(u32_at(elf, aux + 8) as usize);
            if let Some(v) = name.strip_prefix("GLIBC_")
                && let Some((major, minor)) = v.split_once('.')
                && let (Ok(major), Ok(minor)) =
                    (major.parse(), minor.split('.').next().unwrap().parse())
            {
                versions.insert((major, minor));
            }
            aux += u32_at(elf, aux + 12) as usize;
        }
        let next = u32_at(elf, need + 12) as usize;
        if next == 0 {
            break;
        }
        need += next;
        files -= 1;
    }
    versions
}

/// A fresh directory with the zip unpacked by Info-ZIP's unzip, as an operator would.
fn unpacked(zip: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("package-{}", uuid::Uuid::new_v4()));
    let status = Command::new("unzip")
        .args(["-q"])
        .arg(zip)
        .arg("-d")
        .arg(&dir)
        .status()
        .expect("unzip runs (apt-get install unzip)");
    assert!(status.success(), "unzip {}", zip.display());
    dir
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_package_holds_host_json_the_executable_handler_and_every_function_folder_only() {
    let zip = package_zip();
    let entries = zip_entries(&std::fs::read(&zip).unwrap());
    let mut expected = BTreeSet::from(["host.json".to_string(), "handler".to_string()]);
    let mut functions = Vec::new();
    for entry in std::fs::read_dir(root().join("functions"))
        .unwrap()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        expected.insert(format!("{name}/function.json"));
        functions.push(name);
    }
    assert!(functions.len() > 10, "functions/ read: {functions:?}");
    let names: BTreeSet<String> = entries.keys().cloned().collect();
    assert_eq!(
        names, expected,
        "the zip holds exactly host.json, handler and functions/*/function.json"
    );
    for (name, entry) in &entries {
        assert_eq!(entry.made_on, 3, "{name}: made on Unix, so modes are kept");
        let want = if name == "handler" {
            0o100755
        } else {
            0o100644
        };
        assert_eq!(entry.mode, want, "{name}: mode {:o}", entry.mode);
    }

    let dir = unpacked(&zip);
    assert_eq!(
        mode_of(&dir.join("handler")),
        0o755,
        "unzip keeps the executable bit"
    );
    assert_eq!(
        std::fs::read(dir.join("host.json")).unwrap(),
        std::fs::read(root().join("host.json")).unwrap(),
        "host.json as in the repository"
    );
    let host: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("host.json")).unwrap()).unwrap();
    assert_eq!(
        host["customHandler"]["description"]["defaultExecutablePath"], "handler",
        "the host starts the packaged binary"
    );
    for name in &functions {
        assert_eq!(
            std::fs::read(dir.join(name).join("function.json")).unwrap(),
            std::fs::read(root().join("functions").join(name).join("function.json")).unwrap(),
            "{name}/function.json as in the repository"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_packaged_handler_needs_no_glibc_newer_than_2_28() {
    let dir = unpacked(&package_zip());
    let versions = glibc_versions(&std::fs::read(dir.join("handler")).unwrap());
    std::fs::remove_dir_all(&dir).ok();
    let newest = versions
        .iter()
        .max()
        .copied()
        .expect("GLIBC versions needed");
    assert!(
        newest <= MAX_GLIBC,
        "the handler needs GLIBC_{}.{} (all: {versions:?}); build it with infra/package.sh",
        newest.0,
        newest.1
    );
    // the release binary other tests reuse is the packaged one
    let release = built("RELEASE_HANDLER", "dist/handler");
    assert_eq!(
        glibc_versions(&std::fs::read(release).unwrap()),
        versions,
        "RELEASE_HANDLER is the packaged binary"
    );
}

#[tokio::test]
async fn the_unpacked_handler_starts_and_answers_health_and_ping_on_loopback() {
    let dir = unpacked(&package_zip());
    let binary = dir.join("handler").display().to_string();
    let fake = FakeEntra::start(fake_entra::GLOBAL).await;
    let data = dir.join("local-data");
    let env = vec![
        ("AzureWebJobsStorage", Azurite::shared().connection_string()),
        ("STORAGE_TABLE_PREFIX", unique_table("pkg")),
        (
            "ENTRA_CLIENT_ID",
            "6e74172b-be56-4843-9ff4-e66a39bb12e3".to_string(),
        ),
        (
            "ENTRA_ADMIN_TENANT_ID",
            "72f988bf-86f1-41af-91ab-2d7cd011db47".to_string(),
        ),
        ("ENTRA_LOGIN_ENDPOINT", fake.base_url.clone()),
        ("CONNECTOR_SCOPES", "records.read".to_string()),
        ("ENTRA_DEV_AUTH", "true".to_string()),
        ("LOCAL_DATA_DIR", data.display().to_string()),
    ];
    let (code, version) = run_to_exit(&binary, &["version"], &env);
    assert_eq!(code, Some(0), "{version}");
    assert_eq!(
        version.trim(),
        format!("handler {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, admin) = run_to_exit(&binary, &["dev-token", "admin"], &env);
    assert_eq!(code, Some(0), "{admin}");

    let handler = HandlerProcess::start(&binary, &["host"], &env);
    let base = handler.base_url();
    let http = reqwest::Client::new();
    let health = http.get(format!("{base}/api/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["storage"]["reachable"], true, "{health}");

    // a tenant, a grant and a token for it: ping runs token validation (aws-lc) and storage
    let tenant = uuid::Uuid::new_v4().to_string();
    let client = uuid::Uuid::new_v4().to_string();
    let created = http
        .post(format!("{base}/api/v1/tenants"))
        .bearer_auth(admin.trim())
        .json(&serde_json::json!({"tenant_id": tenant, "display_name": "Package"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let granted = http
        .post(format!("{base}/api/v1/access/grants"))
        .bearer_auth(admin.trim())
        .json(&serde_json::json!({"tenant_id": tenant, "kind": "service_principal", "client_id": client, "scopes": ["records.read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), 201);
    let (code, token) = run_to_exit(
        &binary,
        &[
            "dev-token",
            "service-principal",
            "--tenant",
            &tenant,
            "--client-id",
            &client,
        ],
        &env,
    );
    assert_eq!(code, Some(0), "{token}");
    let ping = http
        .get(format!("{base}/api/ping"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), 200, "{}", handler.output());
    let unauthenticated = http.get(format!("{base}/api/ping")).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
    drop(handler);
    std::fs::remove_dir_all(&dir).ok();
}
