//! `handler dev-token`: mints development tokens shaped like Entra's v2 access tokens,
//! signed with the local key that the handler trusts only when `ENTRA_DEV_AUTH=true`.

use std::process::ExitCode;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::Settings;

const HELP: &str = "usage: handler dev-token <admin | user | service-principal> [options]

  admin               the operator (ENTRA_ADMIN_TENANT_ID) with the ENTRA_ADMIN_ROLE app role
  user                a delegated user token (scp); needs --tenant and --object-id
  service-principal   an app-only token (roles, idtyp=app); needs --tenant and --client-id

options:
  --tenant GUID       tenant id (tid); default ENTRA_ADMIN_TENANT_ID
  --object-id GUID    the user's or service principal's object id (oid); default random
  --client-id GUID    the calling application (azp); default random
  --scopes \"a b\"      delegated scopes (scp); default user_impersonation
  --roles \"A,B\"       app roles (roles)
  --minutes N         lifetime, 1-1440; default 60

Reads the same settings as the handler (ENTRA_CLIENT_ID, LOCAL_DATA_DIR...) and prints the
token on stdout. The handler accepts it only while ENTRA_DEV_AUTH=true.";

/// Runs the command; prints the token or one line saying what is wrong.
pub fn run(args: &[String]) -> ExitCode {
    match mint(args) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(message) if message == HELP => {
            println!("{HELP}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("handler dev-token: {message}");
            ExitCode::from(2)
        }
    }
}

fn mint(args: &[String]) -> Result<String, String> {
    let kind = args
        .first()
        .map(String::as_str)
        .ok_or_else(|| HELP.to_string())?;
    if matches!(kind, "--help" | "-h" | "help") {
        return Err(HELP.into());
    }
    let mut options = std::collections::HashMap::new();
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {flag:?}"))?;
        if ![
            "tenant",
            "object-id",
            "client-id",
            "scopes",
            "roles",
            "minutes",
        ]
        .contains(&name)
        {
            return Err(format!("unknown option --{name}"));
        }
        let value = rest
            .next()
            .ok_or_else(|| format!("--{name} needs a value"))?;
        options.insert(name.to_string(), value.clone());
    }
    let settings = Settings::from_env().map_err(|e| e.to_string())?;
    if crate::config::azure_marker_in_env().is_some() {
        return Err("development tokens are never minted in Azure".into());
    }
    let guid = |name: &str| -> Result<Option<Uuid>, String> {
        options
            .get(name)
            .map(|v| Uuid::try_parse(v).map_err(|_| format!("--{name} must be a GUID")))
            .transpose()
    };
    let tenant = guid("tenant")?.unwrap_or(settings.entra.admin_tenant_id);
    let object_id = guid("object-id")?.unwrap_or_else(Uuid::new_v4);
    let client_id = guid("client-id")?;
    let minutes: i64 = options
        .get("minutes")
        .map(|m| {
            m.parse()
                .ok()
                .filter(|m| (1..=1440).contains(m))
                .ok_or("--minutes: 1-1440")
        })
        .transpose()?
        .unwrap_or(60);
    let roles: Vec<String> = options
        .get("roles")
        .map(|r| {
            r.split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = json!({
        "aud": settings.entra.client_id.to_string(),
        "tid": tenant.to_string(),
        "oid": object_id.to_string(),
        "sub": object_id.to_string(),
        "iat": now, "nbf": now, "exp": now + minutes * 60,
        "uti": Uuid::new_v4().simple().to_string(),
    });
    match kind {
        "admin" => {
            claims["name"] = json!("Local Administrator");
            claims["scp"] = json!("user_impersonation");
            claims["roles"] = json!([settings.entra.admin_role]);
            claims["azp"] = json!(client_id.unwrap_or_else(Uuid::new_v4).to_string());
        }
        "user" => {
            if guid("object-id")?.is_none() || !options.contains_key("tenant") {
                return Err("a user token needs --tenant and --object-id".into());
            }
            claims["name"] = json!("Local User");
            claims["scp"] = json!(
                options
                    .get("scopes")
                    .cloned()
                    .unwrap_or_else(|| "user_impersonation".into())
            );
            claims["azp"] = json!(client_id.unwrap_or_else(Uuid::new_v4).to_string());
            if !roles.is_empty() {
                claims["roles"] = json!(roles);
            }
        }
        "service-principal" => {
            let client_id = client_id.ok_or("a service-principal token needs --client-id")?;
            if !options.contains_key("tenant") {
                return Err("a service-principal token needs --tenant".into());
            }
            claims["azp"] = json!(client_id.to_string());
            claims["idtyp"] = json!("app");
            claims["roles"] = json!(roles);
        }
        other => {
            return Err(format!(
                "unknown token kind {other:?}; expected admin, user or service-principal"
            ));
        }
    }
    if !settings.entra.dev_auth {
        eprintln!(
            "handler dev-token: note: ENTRA_DEV_AUTH is not true, so the handler will not accept this token"
        );
    }
    let signer = entra::dev::DevSigner::load_or_create(&crate::startup::dev_key_path(&settings))?;
    Ok(signer.mint(Value::Object(
        claims.as_object().cloned().unwrap_or_default(),
    )))
}
