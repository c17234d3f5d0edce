//! The Bicep in infra/ checked against the code, since no Bicep compiler runs here: every
//! setting the handler reads is set by the template or left out on purpose (docs/deploy.md),
//! every app setting is one the handler or the Functions host reads, the roles assigned are
//! exactly the least ones the code's calls need, modules and parameters line up, the
//! cloud table matches the handler's, and the packaged handler starts as in Azure with the
//! settings the template writes. What the handler reads and calls is found in its
//! source, so a setting or a vault call added later fails here until the template has it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A source file without its unit tests (they sit at the end, after `#[cfg(test)]`).
fn production_part(source: &str) -> &str {
    source.split("#[cfg(test)]").next().unwrap_or_default()
}

/// Every `.rs` file under `dir`, test files and folders left out.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "tests" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" {
            out.push(path);
        }
    }
}

/// The production source of the handler and of every library crate except `except`.
fn production_sources(except: &[&str]) -> Vec<(PathBuf, String)> {
    let mut dirs = vec![root().join("handler/src")];
    for entry in std::fs::read_dir(root().join("crates")).unwrap().flatten() {
        if !except.contains(&entry.file_name().to_string_lossy().as_ref()) {
            dirs.push(entry.path().join("src"));
        }
    }
    let mut files = Vec::new();
    for dir in dirs {
        rust_files(&dir, &mut files);
    }
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let production = production_part(&text).to_string();
            (f, production)
        })
        .collect()
}

/// The settings the handler reads: every setting-shaped string literal of config.rs (where
/// settings are read), plus any environment variable read elsewhere by name.
fn settings_the_handler_reads() -> BTreeSet<String> {
    let literal =
        Regex::new(r#""(AzureWebJobsStorage(?:__[A-Za-z]+)?|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)""#)
            .unwrap();
    let env_read = Regex::new(r#"env::var(?:_os)?\(\s*"([^"]+)"\s*\)"#).unwrap();
    let config = read("handler/src/config.rs");
    let mut names: BTreeSet<String> = literal
        .captures_iter(production_part(&config))
        .map(|c| c[1].to_string())
        .collect();
    for (_, source) in production_sources(&[]) {
        names.extend(env_read.captures_iter(&source).map(|c| c[1].to_string()));
    }
    assert!(
        names.contains("ENTRA_CLIENT_ID") && names.contains("KEY_VAULT_URI"),
        "the scan of config.rs found no settings: {names:?}"
    );
    names
}

/// The text from `start` (which must occur) through the line that closes it: the next
/// line starting with `}` or `]` at the indentation of the line `start` is on.
fn block<'a>(text: &'a str, start: &str) -> &'a str {
    let at = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not found"));
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let indent = text[line_start..at].len() - text[line_start..at].trim_start().len();
    let rest = &text[at..];
    let mut offset = rest.find('\n').map_or(rest.len(), |i| i + 1);
    for line in rest[offset..].split_inclusive('\n') {
        offset += line.len();
        let trimmed = line.trim_start();
        if line.len() - trimmed.len() == indent
            && (trimmed.starts_with('}') || trimmed.starts_with(']'))
        {
            return &rest[..offset];
        }
    }
    rest
}

/// The app settings main.bicep sets (the literal object of the `appsettings` resource).
fn bicep_app_settings() -> BTreeMap<String, String> {
    let main = read("infra/main.bicep");
    let resource = block(&main, "resource appSettings 'Microsoft.Web/sites/config@");
    let object = resource
        .split_once("union(extraAppSettings, {")
        .expect("the app settings are union(extraAppSettings, { ... })")
        .1;
    let key = Regex::new(r"(?m)^\s+([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.+?)\s*$").unwrap();
    let settings: BTreeMap<String, String> = key
        .captures_iter(object)
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect();
    assert!(settings.len() > 10, "app settings not parsed: {settings:?}");
    settings
}

/// docs/settings.md: each documented setting with its "required" column.
fn documented_settings() -> BTreeMap<String, String> {
    let docs = read("docs/settings.md");
    let name = Regex::new(r"`([A-Za-z_][A-Za-z0-9_]*)`").unwrap();
    let mut out = BTreeMap::new();
    for line in docs.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let required = cells.get(2).copied().unwrap_or_default().to_string();
        for c in name.captures_iter(cells[1]) {
            out.insert(c[1].to_string(), required.clone());
        }
    }
    out
}

/// docs/deploy.md's table of settings the template leaves out, with why.
fn left_out_settings() -> BTreeMap<String, String> {
    let guide = read("docs/deploy.md");
    let section = guide
        .split_once("## Settings the template leaves out")
        .expect("docs/deploy.md has a section \"Settings the template leaves out\"")
        .1;
    let section = section.split("\n## ").next().unwrap();
    let name = Regex::new(r"`([A-Za-z_][A-Za-z0-9_]*)`").unwrap();
    let mut out = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let why = cells.get(2).copied().unwrap_or_default().to_string();
        assert!(!why.is_empty(), "no reason given: {line}");
        for c in name.captures_iter(cells[1]) {
            out.insert(c[1].to_string(), why.clone());
        }
    }
    assert!(!out.is_empty(), "the left-out table is empty");
    out
}

#[test]
fn every_setting_the_handler_reads_is_set_by_the_bicep_or_left_out_on_purpose() {
    let reads = settings_the_handler_reads();
    let set = bicep_app_settings();
    let left_out = left_out_settings();
    let documented = documented_settings();
    let mut problems = Vec::new();
    for name in &reads {
        match (set.contains_key(name), left_out.contains_key(name)) {
            (false, false) => problems.push(format!(
                "{name} is read by the handler but neither set in infra/main.bicep nor in docs/deploy.md's \"Settings the template leaves out\""
            )),
            (true, true) => problems.push(format!(
                "{name} is set in infra/main.bicep and also listed as left out in docs/deploy.md"
            )),
            _ => {}
        }
        if !documented.contains_key(name) {
            problems.push(format!("{name} is read but has no row in docs/settings.md"));
        }
    }
    for (name, required) in &documented {
        // required ones ("yes", "in Azure ...") must be set; conditional ones may be left out
        let must_be_set = required == "yes" || required.starts_with("in Azure");
        if must_be_set && reads.contains(name) && !set.contains_key(name) {
            problems.push(format!(
                "{name} is required ({required}) but infra/main.bicep does not set it"
            ));
        }
    }
    for name in left_out.keys() {
        if !reads.contains(name) {
            problems.push(format!(
                "docs/deploy.md lists {name} as left out, but the handler does not read it"
            ));
        }
    }
    for name in set.keys() {
        let host_reads = documented
            .get(name)
            .is_some_and(|r| r.starts_with("for the host"));
        if !reads.contains(name) && !host_reads {
            problems.push(format!(
                "infra/main.bicep sets {name}, which neither the handler reads nor docs/settings.md documents as read by the host (\"for the host\")"
            ));
        }
        if !documented.contains_key(name) {
            problems.push(format!(
                "infra/main.bicep sets {name}, which docs/settings.md does not document"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_app_setting_carries_a_secret_or_turns_on_development_auth() {
    let set = bicep_app_settings();
    for forbidden in [
        "AzureWebJobsStorage",
        "ENTRA_CLIENT_SECRET",
        "ENTRA_DEV_AUTH",
        "ENTRA_LOGIN_ENDPOINT",
        "GRAPH_ENDPOINT",
        "LOCAL_DATA_DIR",
    ] {
        assert!(
            !set.contains_key(forbidden),
            "infra/main.bicep must not set {forbidden}"
        );
    }
    let mut files = vec![PathBuf::from("infra/main.bicep")];
    for entry in std::fs::read_dir(root().join("infra/modules"))
        .unwrap()
        .flatten()
    {
        files.push(
            entry
                .path()
                .strip_prefix(root())
                .unwrap_or(&entry.path())
                .to_path_buf(),
        );
    }
    files.push(PathBuf::from("infra/main.parameters.json"));
    for file in files {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        for key_material in [
            "listKeys(",
            "AccountKey=",
            "SharedAccessSignature",
            "listSecrets(",
            "@secure()",
        ] {
            assert!(
                !text.contains(key_material),
                "{}: {key_material} puts a key or secret into the deployment",
                file.display()
            );
        }
    }
}

/// infra/main.bicep and every module, with their paths.
fn bicep_files() -> Vec<(String, String)> {
    let mut files = vec!["infra/main.bicep".to_string()];
    let mut modules: Vec<String> = std::fs::read_dir(root().join("infra/modules"))
        .unwrap()
        .flatten()
        .map(|e| format!("infra/modules/{}", e.file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".bicep"))
        .collect();
    modules.sort();
    files.extend(modules);
    files
        .into_iter()
        .map(|f| {
            let text = read(&f);
            (f, text)
        })
        .collect()
}

#[test]
fn no_setting_that_flex_consumption_refuses_is_in_the_bicep() {
    // Flex Consumption takes the runtime, its version and the package from
    // functionAppConfig and refuses (or ignores) the settings that did this on the older
    // plans; plain AzureWebJobsStorage would be a connection string with the account key.
    const REFUSED_ON_FLEX: [&str; 8] = [
        "FUNCTIONS_WORKER_RUNTIME",
        "FUNCTIONS_EXTENSION_VERSION",
        "WEBSITE_RUN_FROM_PACKAGE",
        "WEBSITE_CONTENTSHARE",
        "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
        "SCM_DO_BUILD_DURING_DEPLOYMENT",
        "ENABLE_ORYX_BUILD",
        "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT",
    ];
    let set = bicep_app_settings();
    let mut problems = Vec::new();
    for name in REFUSED_ON_FLEX {
        if set.contains_key(name) {
            problems.push(format!("infra/main.bicep sets {name}"));
        }
    }
    if set.contains_key("AzureWebJobsStorage") {
        problems.push("infra/main.bicep sets plain AzureWebJobsStorage".into());
    }
    // anywhere in the templates, however written (an object key, `name: '...'` of a
    // siteConfig.appSettings entry, a string)
    let word = |name: &str| Regex::new(&format!(r"\b{name}\b")).unwrap();
    let plain_storage = Regex::new(r"\bAzureWebJobsStorage\b(?:[^_]|$)").unwrap();
    for (file, text) in bicep_files() {
        for name in REFUSED_ON_FLEX {
            if word(name).is_match(&text) {
                problems.push(format!("{file} mentions {name}"));
            }
        }
        if plain_storage.is_match(&text) {
            problems.push(format!("{file} mentions plain AzureWebJobsStorage"));
        }
    }
    assert!(
        problems.is_empty(),
        "settings that Flex Consumption refuses:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_module_output_main_bicep_uses_is_declared_by_that_module() {
    let main = read("infra/main.bicep");
    let module = Regex::new(r"(?m)^module\s+(\w+)\s+'([^']+)'").unwrap();
    let declared = Regex::new(r"(?m)^output\s+(\w+)\s").unwrap();
    let outputs: BTreeMap<String, BTreeSet<String>> = module
        .captures_iter(&main)
        .map(|c| {
            let text = read(&format!("infra/{}", &c[2]));
            let names = declared
                .captures_iter(&text)
                .map(|o| o[1].to_string())
                .collect();
            (c[1].to_string(), names)
        })
        .collect();
    assert!(!outputs.is_empty(), "no module found in main.bicep");
    let used = Regex::new(r"\b(\w+)\.outputs\.(\w+)").unwrap();
    let mut problems = Vec::new();
    let mut seen = 0;
    for c in used.captures_iter(&main) {
        seen += 1;
        let (symbol, output) = (&c[1], &c[2]);
        match outputs.get(symbol) {
            None => problems.push(format!("{symbol}.outputs.{output}: no module {symbol}")),
            Some(names) if !names.contains(output) => problems.push(format!(
                "{symbol}.outputs.{output}: module {symbol} declares no output {output} (it has {names:?})"
            )),
            Some(_) => {}
        }
    }
    assert!(seen > 5, "no module outputs used in main.bicep");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_callback_route_has_a_redirect_uri_output_and_the_guide_lists_every_output() {
    let main = read("infra/main.bicep");
    let output = Regex::new(r"(?m)^output\s+(\w+)\s+\w+\s*=\s*(.+?)\s*$").unwrap();
    let outputs: BTreeMap<String, String> = output
        .captures_iter(&main)
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect();
    assert!(outputs.len() > 5, "outputs not parsed: {outputs:?}");

    // every browser callback the handler serves is a redirect URI to register: the
    // deployment names each, built from the public URL the handler is given
    let route = Regex::new(r#"route!\(\s*GET\s+"(/api/[^"]*/callback)""#).unwrap();
    let mut callbacks = BTreeSet::new();
    for (_, source) in production_sources(&[]) {
        callbacks.extend(route.captures_iter(&source).map(|c| c[1].to_string()));
    }
    assert!(
        callbacks.contains("/api/consent/callback"),
        "the scan found no callback routes: {callbacks:?}"
    );
    let mut problems = Vec::new();
    for path in &callbacks {
        let value = format!("'${{publicUrl}}{path}'");
        if !outputs.values().any(|v| *v == value) {
            problems.push(format!(
                "the handler serves GET {path} (a redirect URI), but infra/main.bicep has no output = {value}"
            ));
        }
    }

    // docs/deploy.md's "Outputs:" paragraph names every output
    let guide = read("docs/deploy.md");
    let paragraph = guide
        .split("\n\n")
        .find(|p| p.trim_start().starts_with("Outputs:"))
        .expect("docs/deploy.md has an \"Outputs:\" paragraph");
    for name in outputs.keys() {
        if !paragraph.contains(&format!("`{name}`")) {
            problems.push(format!(
                "docs/deploy.md's \"Outputs:\" paragraph does not list `{name}`"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A built-in role: its name in Bicep's `roleIds`, its definition id, and the data actions
/// (relative to its family) that it allows; `*` is every one.
struct Role {
    key: &'static str,
    id: &'static str,
    allows: &'static [&'static str],
}

/// Key Vault's built-in data-plane roles per family, least first (Microsoft's built-in
/// roles reference, "Security").
const SECRETS: [Role; 2] = [
    Role {
        key: "keyVaultSecretsUser",
        id: "4633458b-17de-408a-b874-0445c86b69e6",
        allows: &["getSecret", "readMetadata"],
    },
    Role {
        key: "keyVaultSecretsOfficer",
        id: "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
        allows: &["*"],
    },
];
const KEYS: [Role; 2] = [
    Role {
        key: "keyVaultCryptoUser",
        id: "12338af0-0e69-4776-bea7-57ae8d297424",
        allows: &[
            "read",
            "sign",
            "verify",
            "encrypt",
            "decrypt",
            "wrapKey",
            "unwrapKey",
            "update",
            "backup",
        ],
    },
    Role {
        key: "keyVaultCryptoOfficer",
        id: "14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
        allows: &["*"],
    },
];
const CERTIFICATES: [Role; 2] = [
    Role {
        key: "keyVaultCertificateUser",
        id: "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba",
        allows: &["read"],
    },
    Role {
        key: "keyVaultCertificatesOfficer",
        id: "a4417e6f-fecd-4de8-b567-7b0420556985",
        allows: &["*"],
    },
];

/// Storage and monitoring roles the template may assign, with their definition ids.
const OTHER_ROLES: [(&str, &str); 4] = [
    (
        "storageBlobDataOwner",
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    ),
    (
        "storageQueueDataContributor",
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    ),
    (
        "storageTableDataContributor",
        "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    ),
    (
        "monitoringMetricsPublisher",
        "3913510d-42f4-4e42-8a64-420c390055eb",
    ),
];

/// Each `vault::Vault` method: the Key Vault family it touches and the data actions it needs.
/// `vault_calls_name_every_method_of_the_vault_trait` keeps it equal to the trait.
const VAULT_CALLS: [(&str, &str, &[&str]); 8] = [
    ("get_secret", "secrets", &["getSecret"]),
    // a name deleted before is soft-deleted: Key Vault's set_secret recovers it first
    ("set_secret", "secrets", &["setSecret", "recover"]),
    ("delete_secret", "secrets", &["delete"]),
    ("create_rsa_key", "keys", &["create"]),
    ("public_key", "keys", &["read"]),
    ("sign_digest", "keys", &["sign"]),
    ("create_certificate", "certificates", &["create"]),
    ("get_certificate", "certificates", &["read"]),
];

/// The `async fn` names of `pub trait Vault` in crates/vault/src/lib.rs.
fn vault_trait_methods() -> BTreeSet<String> {
    let lib = production_part(&read("crates/vault/src/lib.rs")).to_string();
    let start = Regex::new(r"(?m)^pub trait Vault\b[^{]*\{").unwrap();
    let at = start
        .find(&lib)
        .expect("crates/vault/src/lib.rs declares pub trait Vault")
        .start();
    let trait_block = block(&lib[at..], "pub trait Vault");
    let method = Regex::new(r"\basync\s+fn\s+([a-z_][a-z0-9_]*)").unwrap();
    method
        .captures_iter(trait_block)
        .map(|c| c[1].to_string())
        .collect()
}

#[test]
fn vault_calls_name_every_method_of_the_vault_trait() {
    let declared = vault_trait_methods();
    assert!(
        declared.len() >= 5,
        "the scan of pub trait Vault found too few methods: {declared:?}"
    );
    let listed: BTreeSet<String> = VAULT_CALLS.iter().map(|c| c.0.to_string()).collect();
    assert_eq!(
        listed.len(),
        VAULT_CALLS.len(),
        "VAULT_CALLS names a method twice"
    );
    let missing: Vec<&String> = declared.difference(&listed).collect();
    let stale: Vec<&String> = listed.difference(&declared).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "VAULT_CALLS must list exactly the methods of vault::Vault, so that the role derivation sees every vault call: missing {missing:?} (give each its family and data actions), not in the trait {stale:?}"
    );
}

/// The Key Vault roles the code needs: the vault methods production code calls (outside
/// crates/vault, which implements them), then per family the least role allowing them all.
fn vault_roles_needed() -> (BTreeSet<&'static str>, Vec<String>) {
    let mut needed: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut seen = Vec::new();
    for (file, source) in production_sources(&["vault"]) {
        for (method, family, actions) in VAULT_CALLS {
            // a call with an argument (every Vault method takes one; rcgen's and
            // aws-lc's `public_key()` take none)
            let call = Regex::new(&format!(r"\.\s*{method}\s*\(\s*[^)\s]")).unwrap();
            if call.is_match(&source) {
                needed.entry(family).or_default().extend(actions);
                seen.push(format!(
                    "{method} in {}",
                    file.strip_prefix(root()).unwrap_or(&file).display()
                ));
            }
        }
    }
    let ladders = [
        ("secrets", &SECRETS),
        ("keys", &KEYS),
        ("certificates", &CERTIFICATES),
    ];
    for (method, family, _) in VAULT_CALLS {
        assert!(
            ladders.iter().any(|(f, _)| *f == family),
            "{method}: no role ladder for the Key Vault family {family:?}"
        );
    }
    let mut roles = BTreeSet::new();
    for (family, ladder) in ladders {
        let Some(actions) = needed.get(family) else {
            continue;
        };
        let role = ladder
            .iter()
            .find(|r| r.allows == ["*"] || actions.iter().all(|a| r.allows.contains(a)))
            .unwrap();
        roles.insert(role.key);
    }
    (roles, seen)
}

/// `var <name> = [ roleIds.x ... ]` in roles.bicep.
fn role_list(roles_bicep: &str, name: &str) -> BTreeSet<String> {
    let list = block(roles_bicep, &format!("var {name} = ["));
    let item = Regex::new(r"roleIds\.([A-Za-z]+)").unwrap();
    item.captures_iter(list).map(|c| c[1].to_string()).collect()
}

#[test]
fn the_bicep_assigns_exactly_the_least_roles_the_code_needs() {
    let roles_bicep = read("infra/modules/roles.bicep");
    // role ids as written in roles.bicep must be the real built-in ones
    let ids_block = block(&roles_bicep, "var roleIds = {");
    let entry = Regex::new(r"(?m)^\s+([A-Za-z]+):\s*'([0-9a-f-]{36})'").unwrap();
    let known: BTreeMap<&str, &str> = SECRETS
        .iter()
        .chain(&KEYS)
        .chain(&CERTIFICATES)
        .map(|r| (r.key, r.id))
        .chain(OTHER_ROLES)
        .collect();
    for c in entry.captures_iter(ids_block) {
        assert_eq!(
            known.get(&c[1]).copied(),
            Some(&c[2]),
            "roles.bicep: {} has id {}, not the built-in role's",
            &c[1],
            &c[2]
        );
    }

    let (vault_needed, calls) = vault_roles_needed();
    let vault_assigned = role_list(&roles_bicep, "keyVaultRoles");
    assert_eq!(
        vault_assigned,
        vault_needed.iter().map(|s| s.to_string()).collect(),
        "Key Vault roles in infra/modules/roles.bicep differ from the least ones the code's calls need ({calls:?})"
    );

    // Storage: the Functions host keeps its state and timer locks in blobs and reads the
    // deployment package (Blob Data Owner is what it requires of AzureWebJobsStorage);
    // queues when a function binds one or the handler writes one; tables for the stores.
    let mut storage_needed = BTreeSet::from(["storageBlobDataOwner".to_string()]);
    let manifest = read("handler/Cargo.toml");
    let mut uses_queues = manifest.contains("queues.workspace");
    for entry in std::fs::read_dir(root().join("functions"))
        .unwrap()
        .flatten()
    {
        let binding = read(&format!(
            "functions/{}/function.json",
            entry.file_name().to_string_lossy()
        ));
        uses_queues |= binding.contains("\"queueTrigger\"") || binding.contains("\"queue\"");
    }
    if uses_queues {
        storage_needed.insert("storageQueueDataContributor".into());
    }
    if manifest.contains("tables.workspace") {
        storage_needed.insert("storageTableDataContributor".into());
    }
    assert_eq!(
        role_list(&roles_bicep, "storageRoles"),
        storage_needed,
        "storage roles in infra/modules/roles.bicep"
    );

    // Application Insights with local auth off takes telemetry only by identity.
    let monitoring = read("infra/modules/monitoring.bicep");
    let insights_needed: BTreeSet<String> = if monitoring.contains("DisableLocalAuth: true") {
        BTreeSet::from(["monitoringMetricsPublisher".to_string()])
    } else {
        BTreeSet::new()
    };
    assert_eq!(
        role_list(&roles_bicep, "insightsRoles"),
        insights_needed,
        "Application Insights roles in infra/modules/roles.bicep"
    );

    // each list is assigned on its own resource
    for (list, scope) in [
        ("storageRoles", "storage"),
        ("keyVaultRoles", "vault"),
        ("insightsRoles", "insights"),
    ] {
        let assignment = Regex::new(&format!(
            r"for role in {list}: \{{\s*name: guid\({scope}\.id, principalId, role\)\s*scope: {scope}\s"
        ))
        .unwrap();
        assert!(
            assignment.is_match(&roles_bicep),
            "roles.bicep assigns {list} on {scope}"
        );
    }
    let assignments = roles_bicep
        .matches("'Microsoft.Authorization/roleAssignments@")
        .count();
    assert_eq!(assignments, 3, "no role assignment besides the three lists");
}

/// `param <name> <type>` declarations of a Bicep file, with whether they have a default.
fn params(bicep: &str) -> BTreeMap<String, bool> {
    let decl = Regex::new(r"(?m)^param\s+([A-Za-z][A-Za-z0-9]*)\s+\w+(\s*=)?").unwrap();
    decl.captures_iter(bicep)
        .map(|c| (c[1].to_string(), c.get(2).is_some()))
        .collect()
}

#[test]
fn every_module_exists_and_gets_exactly_its_declared_parameters() {
    let main = read("infra/main.bicep");
    let module = Regex::new(r"(?m)^module\s+(\w+)\s+'([^']+)'\s*=\s*\{").unwrap();
    let key = Regex::new(r"(?m)^\s{4}([A-Za-z][A-Za-z0-9]*)\s*:").unwrap();
    let mut used = BTreeSet::new();
    for c in module.captures_iter(&main) {
        let (symbol, path) = (&c[1], &c[2]);
        assert!(
            !path.starts_with("br:") && !path.starts_with("ts:"),
            "{symbol}: registry modules cannot be checked offline"
        );
        let file = format!("infra/{path}");
        assert!(
            root().join(&file).is_file(),
            "module {symbol}: {file} is missing"
        );
        used.insert(file.clone());
        let declared = params(&read(&file));
        let body = block(&main, &format!("module {symbol} '"));
        let passed_block = block(body, "params: {");
        let passed: BTreeSet<String> = key
            .captures_iter(passed_block)
            .map(|k| k[1].to_string())
            .collect();
        for p in &passed {
            assert!(
                declared.contains_key(p),
                "module {symbol} is given {p}, which {file} does not declare"
            );
        }
        for (p, has_default) in &declared {
            assert!(
                *has_default || passed.contains(p),
                "module {symbol} is not given {p}, which {file} requires"
            );
        }
    }
    for entry in std::fs::read_dir(root().join("infra/modules"))
        .unwrap()
        .flatten()
    {
        let file = format!("infra/modules/{}", entry.file_name().to_string_lossy());
        assert!(used.contains(&file), "{file} is not used by main.bicep");
    }

    // the example parameters name only declared parameters and give every required one
    let declared = params(&main);
    let example: serde_json::Value =
        serde_json::from_str(&read("infra/main.parameters.json")).unwrap();
    let given = example["parameters"].as_object().unwrap();
    for p in given.keys() {
        assert!(
            declared.contains_key(p),
            "main.parameters.json gives {p}, not a parameter of main.bicep"
        );
    }
    for (p, has_default) in &declared {
        assert!(
            *has_default || given.contains_key(p),
            "main.parameters.json lacks the required {p}"
        );
    }

    // every parameter of every file is used in it
    for file in std::iter::once("infra/main.bicep".to_string()).chain(used) {
        let text = read(&file);
        for p in params(&text).keys() {
            let uses = Regex::new(&format!(r"\b{p}\b"))
                .unwrap()
                .find_iter(&text)
                .count();
            assert!(
                uses >= 2,
                "{file}: parameter {p} is declared but never used"
            );
        }
    }
}

#[test]
fn the_bicep_cloud_table_matches_the_handlers_clouds() {
    let main = read("infra/main.bicep");
    let allowed = Regex::new(r"@allowed\(\[([^\]]*)\]\)\s*param cloud string").unwrap();
    let listed: BTreeSet<String> = Regex::new(r"'(\w+)'")
        .unwrap()
        .captures_iter(&allowed.captures(&main).expect("param cloud with @allowed")[1])
        .map(|c| c[1].to_string())
        .collect();
    let handler: BTreeSet<String> = entra::Cloud::ALL
        .iter()
        .map(|c| c.as_str().to_string())
        .collect();
    assert_eq!(listed, handler, "param cloud's allowed values");
    let table = block(&main, "var clouds = {");
    for cloud in entra::Cloud::ALL {
        let entry = block(table, &format!("{}: {{", cloud.as_str()));
        assert!(
            entry.contains(&format!("login: '{}'", cloud.authority())),
            "{cloud}: login authority differs from crates/entra/src/cloud.rs"
        );
        assert!(
            entry.contains(&format!("graph: '{}'", cloud.graph())),
            "{cloud}: Graph differs from crates/entra/src/cloud.rs"
        );
    }
}

#[test]
fn the_bicep_keeps_flex_consumption_and_identity_only_access() {
    let app = read("infra/modules/functionapp.bicep");
    let storage = read("infra/modules/storage.bicep");
    let vault = read("infra/modules/keyvault.bicep");
    let settings = bicep_app_settings();
    // the plan: Flex Consumption on Linux is `kind: 'functionapp'` with `reserved: true`
    let plan = block(&app, "resource plan 'Microsoft.Web/serverfarms@");
    for needle in [
        "kind: 'functionapp'\n",
        "sku: { tier: 'FlexConsumption', name: 'FC1' }",
        "properties: { reserved: true }",
    ] {
        assert!(plan.contains(needle), "the plan lacks {needle:?}:\n{plan}");
    }
    // what Flex refuses or ignores: settings live in main.bicep's separate appsettings
    // resource (written once the roles exist), the runtime in functionAppConfig, and
    // there is no always-on instance to keep
    for (needle, why) in [
        (
            "appSettings",
            "app settings belong to main.bicep's appsettings resource",
        ),
        (
            "linuxFxVersion",
            "Flex takes the runtime from functionAppConfig.runtime",
        ),
        ("alwaysOn", "Flex has no always-on setting"),
    ] {
        assert!(
            !app.contains(needle),
            "infra/modules/functionapp.bicep has {needle}: {why}"
        );
    }
    for (text, needle) in [
        (&app, "kind: 'functionapp,linux'"),
        (&app, "runtime: { name: 'custom', version: '1.0' }"),
        (&app, "type: 'blobContainer'"),
        (&app, "type: 'UserAssignedIdentity'"),
        (&app, "httpsOnly: true"),
        (&app, "minTlsVersion: '1.2'"),
        (&app, "ftpsState: 'Disabled'"),
        (&app, "instanceMemoryMB: instanceMemoryMB"),
        (&app, "maximumInstanceCount: maximumInstanceCount"),
        (&storage, "allowSharedKeyAccess: false"),
        (&storage, "minimumTlsVersion: 'TLS1_2'"),
        (&vault, "enableRbacAuthorization: true"),
    ] {
        assert!(text.contains(needle), "{needle} is missing");
    }
    // storage account names must be lowercase: every name is built from toLower(name)
    let main = read("infra/main.bicep");
    assert!(
        main.contains("var prefix = toLower(name)"),
        "main.bicep lowers the name prefix"
    );
    assert!(
        !main.contains("${name}"),
        "main.bicep builds resource names from prefix (lowercase), not name"
    );
    let storage_module = block(&main, "module storage '");
    assert!(
        storage_module.contains("name: take('${prefix}${suffix}', 24)"),
        "the storage account name is lowercase and at most 24 characters:\n{storage_module}"
    );
    assert_eq!(
        settings["AzureWebJobsStorage__credential"],
        "'managedidentity'"
    );
    for identity in ["AzureWebJobsStorage__clientId", "KEY_VAULT_CLIENT_ID"] {
        assert_eq!(
            settings[identity], "identity.outputs.clientId",
            "{identity} names the user-assigned identity"
        );
    }
    assert!(
        settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
            .contains("ClientId=${identity.outputs.clientId};Authorization=AAD"),
        "Application Insights is reached with the identity"
    );
}

/// Stand-ins for what only a deployment knows (module outputs, the host name), on loopback
/// so that whatever the handler reaches for stays on this machine.
const DEPLOYMENT_STAND_INS: [(&str, &str); 8] = [
    (
        "identity.outputs.clientId",
        "3f1c0a9e-2b7d-4c58-9e61-0d4b8a7c5e21",
    ),
    ("storage.outputs.blobEndpoint", "https://127.0.0.1:9/"),
    ("storage.outputs.queueEndpoint", "https://127.0.0.1:9/"),
    ("storage.outputs.tableEndpoint", "https://127.0.0.1:9/"),
    ("keyVault.outputs.uri", "https://127.0.0.1:9/"),
    (
        "monitoring.outputs.connectionString",
        "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://127.0.0.1:9/",
    ),
    ("publicUrl", "https://entracon-example.azurewebsites.net"),
    (
        "functionApp.outputs.defaultHostName",
        "entracon-example.azurewebsites.net",
    ),
];

/// The value of a parameter: main.parameters.json's, else its default in main.bicep.
fn parameter_value(name: &str) -> Option<String> {
    let example: serde_json::Value =
        serde_json::from_str(&read("infra/main.parameters.json")).unwrap();
    if let Some(v) = example["parameters"][name].get("value") {
        return Some(match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    }
    let main = read("infra/main.bicep");
    let decl = Regex::new(&format!(r"(?m)^param {name} \w+ = (.+)$")).unwrap();
    let default = decl.captures(&main)?[1].trim().to_string();
    Some(
        default
            .strip_prefix('\'')
            .and_then(|d| d.strip_suffix('\''))
            .map_or(default.clone(), str::to_string),
    )
}

/// Evaluates the few Bicep expression forms the app settings use: a string literal with
/// `${...}` interpolations, `string(x)`, `x ? 'a' : 'b'`, a parameter or a stand-in.
fn evaluate(expression: &str) -> String {
    let e = expression.trim();
    if let Some(inner) = e.strip_prefix("string(").and_then(|r| r.strip_suffix(')')) {
        return evaluate(inner);
    }
    if let Some((condition, choices)) = e.split_once(" ? ") {
        let (yes, no) = choices.split_once(" : ").expect("x ? a : b");
        return if evaluate(condition) == "true" {
            evaluate(yes)
        } else {
            evaluate(no)
        };
    }
    if let Some(literal) = e.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        let interpolation = Regex::new(r"\$\{([^}]+)\}").unwrap();
        return interpolation
            .replace_all(literal, |c: &regex::Captures| evaluate(&c[1]))
            .into_owned();
    }
    if let Some((_, value)) = DEPLOYMENT_STAND_INS.iter().find(|(k, _)| *k == e) {
        return value.to_string();
    }
    parameter_value(e).unwrap_or_else(|| {
        panic!("{e}: not a parameter; give it a stand-in in DEPLOYMENT_STAND_INS")
    })
}

#[tokio::test]
async fn the_handler_starts_as_in_azure_with_the_app_settings_the_bicep_sets() {
    let handler = root().join("dist/handler");
    let binary = std::env::var_os("RELEASE_HANDLER")
        .map(PathBuf::from)
        .unwrap_or(handler);
    assert!(
        binary.exists(),
        "{} not found: run infra/package.sh first (tests/run does)",
        binary.display()
    );
    let mut env: Vec<(&str, String)> = Vec::new();
    let settings = bicep_app_settings();
    for (name, expression) in &settings {
        env.push((name.as_str(), evaluate(expression)));
    }
    // what Flex Consumption adds (its instances have no WEBSITE_INSTANCE_ID: the SKU and
    // the container's markers) and the managed identity endpoint (here a closed loopback
    // port), and login and Graph kept on loopback too
    env.extend([
        ("WEBSITE_SKU", "FlexConsumption".to_string()),
        ("CONTAINER_NAME", "entracon-example-0123456789".to_string()),
        ("LEGION_SERVICE_HOST", "127.0.0.1".to_string()),
        (
            "IDENTITY_ENDPOINT",
            "http://127.0.0.1:9/msi/token".to_string(),
        ),
        ("IDENTITY_HEADER", "stand-in".to_string()),
        ("ENTRA_LOGIN_ENDPOINT", "http://127.0.0.1:9".to_string()),
        ("GRAPH_ENDPOINT", "http://127.0.0.1:9".to_string()),
    ]);
    // the handler knows it is in Azure there: it refuses development tokens at start-up
    let mut with_dev_auth = env.clone();
    with_dev_auth.push(("ENTRA_DEV_AUTH", "true".to_string()));
    // where a handler that wrongly accepted it would write its development key
    let scratch = std::env::temp_dir().join(format!("deploy-bicep-{}", std::process::id()));
    with_dev_auth.push(("LOCAL_DATA_DIR", scratch.display().to_string()));
    let (code, output) = exit_within(&binary, &with_dev_auth, std::time::Duration::from_secs(10));
    assert_eq!(
        code,
        Some(2),
        "ENTRA_DEV_AUTH must be refused in a Flex Consumption environment:\n{output}"
    );
    assert!(output.contains("ENTRA_DEV_AUTH"), "{output}");
    std::fs::remove_dir_all(&scratch).ok();

    let process = system_tests::HandlerProcess::start(&binary.display().to_string(), &[], &env);
    let health = reqwest::get(format!("{}/api/health", process.base_url()))
        .await
        .unwrap();
    // storage is a closed port here: the handler runs and says so
    assert_eq!(health.status(), 503, "{}", process.output());
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["mode"], "host", "{body}");
    assert_eq!(body["storage"]["reachable"], false, "{body}");
}

/// Runs the handler (default command) with exactly `env` plus PATH and a free port; its
/// exit code and output, or None when it was still running after `limit` (then killed).
fn exit_within(
    binary: &Path,
    env: &[(&str, String)],
    limit: std::time::Duration,
) -> (Option<i32>, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(binary)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "FUNCTIONS_CUSTOMHANDLER_PORT",
            system_tests::free_port().to_string(),
        )
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the handler binary starts");
    let started = std::time::Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > limit {
            child.kill().ok();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (code, text)
}
