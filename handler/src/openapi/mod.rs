//! The OpenAPI 3.1 document of every HTTP route, generated from the code with `utoipa`.
//! Served at `GET /api/openapi.json` and written to `docs/openapi.json` by
//! `handler openapi > docs/openapi.json` (a test fails when the committed file differs).
//!
//! How a route joins the document (the pattern every function module follows):
//!
//! 1. Above its handler, `#[utoipa::path(get, path = "/api/v1/...", tag = "...",
//!    security(("entra_admin" = [])), params(...), request_body = T,
//!    responses((status = 200, body = U), (status = 404, ...)))]`, with the same method and
//!    path as its `route!`. Request bodies are the module's `Deserialize` types with
//!    `#[derive(utoipa::ToSchema)]`; answer shapes are in [`schemas`].
//! 2. Beside the module's `ROUTES`, `#[derive(utoipa::OpenApi)] #[openapi(paths(...))]
//!    pub struct Api;` naming those handlers.
//! 3. An entry in [`MODULES`] below.
//!
//! Only the answers particular to an operation are listed on it: [`CommonAnswers`] adds
//! those every operation of a kind can give (400, 401/403 for the admin token, 404 where
//! the path names something, 413 where there is a body, 500, 503), so they are described
//! once. Tests check that each `route!` table and its module's `Api` list the same
//! operations, that every HTTP function of `FUNCTIONS` has operations here and every
//! operation belongs to one, and that the committed `docs/openapi.json` is this document.

pub mod schemas;

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi as _};

use crate::functions;
use crate::routes::router::Route;

/// Security scheme of the admin API: an Entra access token with the admin app role.
pub const ADMIN: &str = "entra_admin";
/// Security scheme of the Connector API: an Entra token of a tenant's principal with a grant.
pub const CONNECTOR: &str = "connector_token";
/// Security scheme of the SCIM endpoint: the tenant's Secret Token.
pub const SCIM: &str = "scim_token";

/// A function module's part of the document, and its route table when it has one.
pub struct Module {
    #[cfg_attr(not(test), allow(dead_code))] // named by the tests' messages
    pub name: &'static str,
    pub api: fn() -> OpenApi,
    #[cfg_attr(not(test), allow(dead_code))] // compared with `api` by the tests
    pub routes: Option<&'static [Route]>,
}

/// Every module that serves HTTP routes.
pub const MODULES: &[Module] = &[
    Module {
        name: "openapi",
        api: functions::openapi::Api::openapi,
        routes: Some(functions::openapi::ROUTES),
    },
    Module {
        name: "health",
        api: functions::health::Api::openapi,
        routes: None,
    },
    Module {
        name: "ping",
        api: functions::ping::Api::openapi,
        routes: Some(functions::ping::ROUTES),
    },
    Module {
        name: "tenants",
        api: functions::tenants::Api::openapi,
        routes: Some(functions::tenants::ROUTES),
    },
    Module {
        name: "activation_links",
        api: functions::activation_links::Api::openapi,
        routes: Some(functions::activation_links::ROUTES),
    },
    Module {
        name: "consent",
        api: functions::consent::Api::openapi,
        routes: Some(functions::consent::ROUTES),
    },
    Module {
        name: "app_credential",
        api: functions::app_credential::Api::openapi,
        routes: Some(functions::app_credential::ROUTES),
    },
    Module {
        name: "grants",
        api: functions::grants::Api::openapi,
        routes: Some(functions::grants::ROUTES),
    },
    Module {
        name: "employees",
        api: functions::employees::Api::openapi,
        routes: Some(functions::employees::ROUTES),
    },
    Module {
        name: "validate_token",
        api: functions::validate_token::Api::openapi,
        routes: Some(functions::validate_token::ROUTES),
    },
    Module {
        name: "scim",
        api: functions::scim::Api::openapi,
        routes: None,
    },
    Module {
        name: "scim_admin",
        api: functions::scim_admin::Api::openapi,
        routes: None,
    },
    Module {
        name: "directory",
        api: functions::directory::Api::openapi,
        routes: Some(functions::directory::ROUTES),
    },
    Module {
        name: "sync",
        api: functions::sync::Api::openapi,
        routes: Some(functions::sync::ROUTES),
    },
    Module {
        name: "pki",
        api: functions::pki::Api::openapi,
        routes: Some(functions::pki::ROUTES),
    },
    Module {
        name: "hr",
        api: functions::hr::Api::openapi,
        routes: Some(functions::hr::ROUTES),
    },
    Module {
        name: "audit_log",
        api: functions::audit_log::Api::openapi,
        routes: Some(functions::audit_log::ROUTES),
    },
    Module {
        name: "notifications",
        api: functions::notifications::Api::openapi,
        routes: Some(functions::notifications::ROUTES),
    },
];

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "entra-connector",
        description = "Admin API, Connector API and SCIM 2.0 endpoint of entra-connector. \
            Errors are `{\"error\", \"message\"}` (SCIM: the SCIM Error body). \
            Request bodies are JSON, at most 64 KiB (SCIM: 1 MiB); unknown fields are refused.",
        license(name = "UNLICENSED")
    ),
    tags(
        (name = "Service", description = "Health and this document (anonymous)"),
        (name = "Tenants", description = "The tenant registry and offboarding"),
        (name = "Onboarding", description = "Activation links and the admin consent pages"),
        (name = "App credentials", description = "Certificates whose keys stay in the vault"),
        (name = "Access", description = "Grants of Connector API scopes, employee records, the Connector API"),
        (name = "Tokens", description = "Checking an Entra token"),
        (name = "SCIM", description = "SCIM 2.0 (RFC 7644) endpoint Entra provisions into, with the tenant's Secret Token"),
        (name = "SCIM admin", description = "The product's side of provisioning: Secret Token, settings, invitations"),
        (name = "Directory", description = "Users synchronised from Microsoft Graph"),
        (name = "Certificates", description = "Per-tenant CAs and certificates for directory users"),
        (name = "HR write-back", description = "HR records, rules, plans and their idempotent apply to Entra, over a tenant's HR connection"),
        (name = "Audit", description = "A tenant's audit trail, its provisioning log and who hears about its incidents"),
    ),
    // the schemas only parameters name (utoipa collects those of bodies by itself)
    components(schemas(
        schemas::ErrorBody,
        schemas::ScimErrorBody,
        schemas::CloudName,
        schemas::ProvisioningStatus,
        schemas::InvitationState,
        schemas::AuditFormat
    )),
    modifiers(&SecuritySchemes, &CommonAnswers)
)]
struct Base;

/// The whole document.
pub fn document() -> OpenApi {
    let mut doc = Base::openapi();
    for module in MODULES {
        doc.merge((module.api)());
    }
    // the modifiers run when `Base` is built; run them again over the merged paths
    SecuritySchemes.modify(&mut doc);
    CommonAnswers.modify(&mut doc);
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as the file `docs/openapi.json` holds it.
pub fn json() -> String {
    let mut value = serde_json::to_value(document()).expect("the document serialises");
    link_field_names(&mut value);
    let mut text = serde_json::to_string_pretty(&value).expect("the document serialises");
    text.push('\n');
    text
}

/// utoipa 5.5 writes a Link Object's `operationId`, `operationRef` and `requestBody` in
/// snake case; OpenAPI names them in camel case, so renamed here.
fn link_field_names(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(links)) = map.get_mut("links") {
                for link in links.values_mut() {
                    let Some(link) = link.as_object_mut() else {
                        continue;
                    };
                    for (written, named) in [
                        ("operation_id", "operationId"),
                        ("operation_ref", "operationRef"),
                        ("request_body", "requestBody"),
                    ] {
                        if let Some(value) = link.remove(written) {
                            link.insert(named.into(), value);
                        }
                    }
                }
            }
            map.values_mut().for_each(link_field_names);
        }
        Value::Array(items) => items.iter_mut().for_each(link_field_names),
        _ => {}
    }
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str, format: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format(format)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            ADMIN,
            bearer(
                "An Entra access token from ENTRA_ADMIN_TENANT_ID for this API's audience, \
                 with the app role ENTRA_ADMIN_ROLE (Integration.Manage). Missing or invalid: \
                 401 invalid_token; without the role: 403 insufficient_role.",
                "JWT",
            ),
        );
        components.add_security_scheme(
            CONNECTOR,
            bearer(
                "An Entra access token of a registered tenant whose principal (user or \
                 service principal) has an access grant.",
                "JWT",
            ),
        );
        components.add_security_scheme(
            SCIM,
            bearer(
                "The tenant's SCIM Secret Token (POST /api/v1/tenants/{tenant_id}/scim/token).",
                "opaque",
            ),
        );
    }
}

/// Adds the answers any operation of its kind can give, where the operation does not
/// describe them itself.
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut OpenApi) {
        let mut used = std::collections::BTreeMap::new();
        for (path, item) in openapi.paths.paths.iter_mut() {
            let has_params = path.contains('{');
            for operation in operations(item) {
                add_common(operation, has_params, &mut used);
            }
        }
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, (description, scim)) in used {
            let (content_type, schema) = if scim {
                ("application/scim+json", "ScimErrorBody")
            } else {
                ("application/json", "ErrorBody")
            };
            let response = ResponseBuilder::new()
                .description(description)
                .content(
                    content_type,
                    ContentBuilder::new()
                        .schema(Some(RefOr::Ref(Ref::from_schema_name(schema))))
                        .build(),
                )
                .build();
            components.responses.insert(name, RefOr::T(response));
        }
    }
}

fn operations(item: &mut utoipa::openapi::PathItem) -> Vec<&mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn uses(operation: &Operation, scheme: &str) -> bool {
    operation.security.as_ref().is_some_and(|requirements| {
        serde_json::to_value(requirements)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|r| r.get(scheme).is_some())
    })
}

/// The shared answers an operation gets, by status: (component name, description).
fn common_for(
    operation: &Operation,
    has_params: bool,
) -> Vec<(&'static str, &'static str, &'static str)> {
    let scim = uses(operation, SCIM);
    let mut wanted = vec![
        (
            "400",
            "BadRequest",
            "The request is malformed: a parameter, the query or the body",
        ),
        (
            "500",
            "InternalError",
            "An internal error (the detail is logged, not shown)",
        ),
        (
            "503",
            "Unavailable",
            "Storage or another dependency is unavailable; try again shortly",
        ),
    ];
    if uses(operation, ADMIN) || uses(operation, CONNECTOR) {
        wanted.push(("401", "Unauthorized", "No valid bearer token"));
        wanted.push((
            "403",
            "Forbidden",
            "The token lacks what this call needs (the admin role)",
        ));
    }
    if scim {
        wanted.push((
            "401",
            "Unauthorized",
            "No valid Secret Token of an active tenant",
        ));
    }
    if has_params || scim {
        wanted.push(("404", "NotFound", "Not found"));
    }
    if operation.request_body.is_some() {
        wanted.push(("413", "PayloadTooLarge", "The body is too large"));
    }
    wanted
}

fn add_common(
    operation: &mut Operation,
    has_params: bool,
    used: &mut std::collections::BTreeMap<String, (&'static str, bool)>,
) {
    let html = operation
        .responses
        .responses
        .values()
        .any(|r| serde_json::to_string(r).is_ok_and(|s| s.contains("text/html")));
    if html {
        return; // the browser pages describe every page they show
    }
    let scim = uses(operation, SCIM);
    for (status, name, description) in common_for(operation, has_params) {
        if operation.responses.responses.contains_key(status) {
            continue;
        }
        let name = if scim {
            format!("Scim{name}")
        } else {
            name.to_string()
        };
        operation.responses.responses.insert(
            status.to_string(),
            RefOr::Ref(Ref::new(format!("#/components/responses/{name}"))),
        );
        used.insert(name, (description, scim));
    }
}

/// Writes the document for `handler openapi`.
pub fn run(args: &[String]) -> std::process::ExitCode {
    if !args.is_empty() {
        eprintln!("usage: handler openapi > docs/openapi.json");
        return std::process::ExitCode::from(2);
    }
    print!("{}", json());
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests;
