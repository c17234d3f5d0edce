//! One small adapter per Azure Function, and the table that maps function names to them.
//! A function module parses its trigger, calls the domain and shapes the answer; it holds
//! no storage code.

pub mod activation_links;
pub mod app_credential;
pub mod audit_log;
pub mod consent;
pub mod directory;
pub mod employees;
pub mod grants;
pub mod health;
pub mod housekeeping;
pub mod hr;
pub mod notifications;
pub mod openapi;
pub mod ping;
pub mod pki;
pub mod poison;
pub mod scim;
pub mod scim_admin;
pub mod sync;
pub mod tenants;
pub mod validate_token;

use std::sync::Arc;

use futures::future::BoxFuture;
use host::{InvocationRequest, InvocationResponse, InvokeError, InvokeFuture, Invoker};

use crate::app::App;

include!(concat!(env!("OUT_DIR"), "/function_sources.rs"));

/// An invoked (non-HTTP) function's entry point.
pub type InvokedFn = for<'a> fn(
    &'a App,
    InvocationRequest,
) -> BoxFuture<'a, Result<InvocationResponse, InvokeError>>;

/// How a function is served.
pub enum Handler {
    /// A forwarded HTTP function, served by a route under `/api` (see `routes`).
    Http { route: &'static str },
    /// A timer or queue function, invoked as `POST /{FunctionName}`.
    Invoked(InvokedFn),
}

/// Every function the handler implements. Each must have `functions/<Name>/function.json`
/// and vice versa (checked by a test).
pub const FUNCTIONS: &[(&str, Handler)] = &[
    (
        "ScimSettings",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/scim/settings",
        },
    ),
    (
        "ScimDirectoryUsers",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/scim/users/{user_id?}",
        },
    ),
    (
        "ScimUserSettings",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/scim/users/{user_id}/settings",
        },
    ),
    (
        "ScimUserInvitation",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/scim/users/{user_id}/invitation",
        },
    ),
    (
        "ScimGroupSettings",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/scim/groups/{group_id}/settings",
        },
    ),
    (
        "ScimInvitations",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/scim/invitations/{invitation_id?}",
        },
    ),
    (
        "ScimInvitationSent",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/scim/invitations/{invitation_id}/sent",
        },
    ),
    (
        "InvitationRedeem",
        Handler::Http {
            route: "v1/invitations/redeem",
        },
    ),
    ("Activate", Handler::Http { route: "activate" }),
    (
        "ScimGroups",
        Handler::Http {
            route: "scim/{tenant_id}/v2/Groups/{group_id?}",
        },
    ),
    (
        "ScimToken",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/scim/token",
        },
    ),
    (
        "ScimUsers",
        Handler::Http {
            route: "scim/{tenant_id}/v2/Users/{user_id?}",
        },
    ),
    (
        "ScimDiscovery",
        Handler::Http {
            route: "scim/{tenant_id}/v2/{discovery}/{id?}",
        },
    ),
    (
        "AppCredentialCertificate",
        Handler::Http {
            route: "v1/app-credential/certificate",
        },
    ),
    (
        "TenantCredentialCertificate",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/credential-certificate",
        },
    ),
    (
        "ActivationLinks",
        Handler::Http {
            route: "v1/tenants/activation-links/{link_id?}",
        },
    ),
    (
        "ConsentCallback",
        Handler::Http {
            route: "consent/callback",
        },
    ),
    (
        "ConsentStart",
        Handler::Http {
            route: "consent/start",
        },
    ),
    (
        "AccessGrants",
        Handler::Http {
            route: "v1/access/grants/{grant_id?}",
        },
    ),
    ("Health", Handler::Http { route: "health" }),
    (
        "OpenApi",
        Handler::Http {
            route: "openapi.json",
        },
    ),
    (
        "AuditLog",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/audit",
        },
    ),
    (
        "TenantNotifications",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/notifications",
        },
    ),
    (
        "TenantNotificationsTest",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/notifications/test",
        },
    ),
    (
        "NotificationDelivery",
        Handler::Invoked(notifications::invoke),
    ),
    (
        "NotificationDeliveryPoison",
        Handler::Invoked(poison::invoke_notifications),
    ),
    (
        "ProvisioningLog",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/provisioning-log",
        },
    ),
    ("DirectorySync", Handler::Invoked(sync::invoke_timer)),
    ("SyncTenant", Handler::Invoked(sync::invoke_queue)),
    ("SyncTenantPoison", Handler::Invoked(poison::invoke_sync)),
    (
        "TenantSync",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/sync",
        },
    ),
    (
        "EntraSyncUser",
        Handler::Http {
            route: "v1/entra-id/sync-user",
        },
    ),
    (
        "EntraBulkSyncUsers",
        Handler::Http {
            route: "v1/entra-id/bulk-sync-users",
        },
    ),
    (
        "EntraUsers",
        Handler::Http {
            route: "v1/entra-id/users/{user_id?}",
        },
    ),
    (
        "EntraStatistics",
        Handler::Http {
            route: "v1/entra-id/statistics",
        },
    ),
    (
        "EntraHealth",
        Handler::Http {
            route: "v1/entra-id/health",
        },
    ),
    (
        "TenantPkiCa",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/pki/ca",
        },
    ),
    (
        "PkiPublished",
        Handler::Http {
            route: "v1/pki/{tenant_id}/{file}",
        },
    ),
    (
        "EntraProvisionCertificate",
        Handler::Http {
            route: "v1/entra-id/provision-certificate",
        },
    ),
    (
        "CertificateRevoke",
        Handler::Http {
            route: "v1/certificates/{certificate_id}/revoke",
        },
    ),
    ("Housekeeping", Handler::Invoked(housekeeping::invoke)),
    ("Ping", Handler::Http { route: "ping" }),
    (
        "HrConnection",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/hr/connection/{action?}",
        },
    ),
    (
        "HrConnectionCallback",
        Handler::Http {
            route: "v1/hr/connection/callback",
        },
    ),
    (
        "HrEmployees",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/hr/employees/{employee_id}",
        },
    ),
    (
        "HrImport",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/hr/import",
        },
    ),
    (
        "HrRules",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/hr/rules",
        },
    ),
    (
        "HrPlan",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/hr/plan",
        },
    ),
    (
        "HrApply",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/hr/apply",
        },
    ),
    (
        "HrResetPassword",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/hr/employees/{employee_id}/reset-password",
        },
    ),
    ("HrDue", Handler::Invoked(hr::invoke_due)),
    (
        "TenantEmployees",
        Handler::Http {
            route: "v1/tenants/{tenant_id}/employees/{employee_id}",
        },
    ),
    (
        "Tenants",
        Handler::Http {
            route: "v1/tenants/{tenant_id?}",
        },
    ),
    (
        "ValidateToken",
        Handler::Http {
            route: "v1/entra-id/validate-token",
        },
    ),
];

/// The parsed catalog of the embedded function.json files.
pub fn catalog() -> Result<host::Catalog, host::DefinitionError> {
    host::Catalog::from_sources(FUNCTION_SOURCES.iter().copied())
}

/// Routes host-style invocations to the function adapters.
pub struct Dispatcher {
    app: Arc<App>,
}

impl Dispatcher {
    /// A dispatcher over the shared state.
    pub fn new(app: Arc<App>) -> Dispatcher {
        Dispatcher { app }
    }
}

impl Invoker for Dispatcher {
    fn invoke<'a>(&'a self, function: &'a str, request: InvocationRequest) -> InvokeFuture<'a> {
        Box::pin(async move {
            let entry = FUNCTIONS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(function));
            match entry {
                None => Err(InvokeError::UnknownFunction(function.to_string())),
                Some((name, Handler::Http { route })) => Err(InvokeError::BadPayload(format!(
                    "{name} is an HTTP function; it is served at /api/{route}, not invoked"
                ))),
                Some((name, Handler::Invoked(run))) => {
                    tracing::info!(function = name, "invocation started");
                    let outcome = run(&self.app, request).await;
                    match &outcome {
                        Ok(_) => tracing::info!(function = name, "invocation succeeded"),
                        Err(e) => tracing::warn!(function = name, error = %e, "invocation failed"),
                    }
                    outcome
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use host::Trigger;

    #[test]
    fn every_function_json_has_a_handler_and_every_handler_a_function_json() {
        let catalog = catalog().expect("every function.json parses");
        let on_disk: Vec<&str> = catalog.iter().map(|f| f.name.as_str()).collect();
        let implemented: Vec<&str> = FUNCTIONS.iter().map(|(n, _)| *n).collect();
        for name in &on_disk {
            assert!(
                implemented.contains(name),
                "functions/{name}/function.json has no handler"
            );
        }
        for name in &implemented {
            assert!(
                on_disk.contains(name),
                "handler {name} has no functions/{name}/function.json"
            );
        }
    }

    #[test]
    fn handler_kinds_match_their_triggers() {
        let catalog = catalog().unwrap();
        for (name, handler) in FUNCTIONS {
            let definition = catalog.get(name).unwrap();
            match (handler, &definition.trigger) {
                (
                    Handler::Http { route },
                    Trigger::Http {
                        route: declared, ..
                    },
                ) => {
                    assert_eq!(route, declared, "{name}: route differs from function.json")
                }
                (Handler::Invoked(_), Trigger::Timer { .. } | Trigger::Queue { .. }) => {}
                _ => panic!("{name}: handler kind does not match its trigger"),
            }
        }
    }

    #[test]
    fn function_json_files_on_disk_are_the_embedded_ones() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions");
        let mut on_disk: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let json = std::fs::read_to_string(e.path().join("function.json"))
                    .unwrap_or_else(|_| panic!("functions/{name} has no function.json"));
                (name, json)
            })
            .collect();
        on_disk.sort();
        let embedded: Vec<(String, String)> = FUNCTION_SOURCES
            .iter()
            .map(|(n, j)| (n.to_string(), j.to_string()))
            .collect();
        assert_eq!(on_disk, embedded);
    }
}
