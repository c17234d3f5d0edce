//! The application state every function adapter receives.

use std::sync::Arc;
use std::time::Duration;

use entra::{KeyCachePolicy, Validator, ValidatorConfig};
use uuid::Uuid;

use crate::access::AccessControl;
use crate::app_credentials::AppCredentials;
use crate::config::{EntraSettings, Settings};
use crate::onboarding::Onboarding;
use crate::store::{
    RunLog, TableEmployeeStore, TableGrantStore, TableLinkStore, TableNames, TableRunLog,
    TableTenantStore,
};

/// Clock skew tolerated on `exp`/`nbf`: Azure hosts keep time closely, so one minute
/// rather than Microsoft's library default of five keeps stolen tokens useful for less.
pub const TOKEN_LEEWAY: Duration = Duration::from_secs(60);

/// How the handler was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Under the Functions host: the host fires timers and moves queue messages.
    Host,
    /// On its own: the handler fires timers and listens to Storage queues itself.
    Standalone,
}

impl Mode {
    /// The mode's name in health output and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Host => "host",
            Mode::Standalone => "standalone",
        }
    }
}

/// Shared state: the stores, the validator, and what health reports.
pub struct App {
    pub version: &'static str,
    pub mode: Mode,
    pub tables: tables::TableServiceClient,
    pub table_names: TableNames,
    pub run_log: Arc<dyn RunLog>,
    pub entra: EntraSettings,
    pub connector_scopes: Vec<String>,
    pub validator: Validator,
    pub access: AccessControl,
    pub onboarding: Onboarding,
    pub credentials: Arc<AppCredentials>,
    pub scim: crate::provisioning::ScimService,
    pub public_base_url: url::Url,
    pub tenants: Arc<dyn crate::store::TenantStore>,
    /// The Graph client (one HTTP client, token cache and retry policy for every call).
    pub graph: Arc<entra::graph::GraphClient>,
    /// Users, groups and memberships per tenant, written by SCIM and Graph sync.
    pub directory: Arc<directory::TableDirectory>,
    pub sync: SyncService,
    /// Each tenant's issuing CA (key in the vault), its certificates and CRL.
    pub pki: Arc<pki::Pki>,
    pub certificates: crate::config::CertificateSettings,
    /// HR write-back: its stores and guard rails.
    pub hr: crate::writeback::Writeback,
    /// The audit trail every change is recorded in.
    pub audit: audit::Audit,
    /// Moves the events SCIM user writes commit in their own transactions (outbox rows of
    /// the SCIM table) to the trail.
    pub outbox: Arc<audit::outbox::Outbox>,
    /// `AUDIT_RETENTION_DAYS`.
    pub audit_retention_days: u32,
    /// Incidents and their notices.
    pub notifications: Arc<crate::notifications::Notifications>,
    /// Secrets, keys and certificates (Key Vault or the local vault): webhook signing
    /// secrets, the SMTP password, HR refresh tokens.
    pub vault: Arc<dyn vault::Vault>,
}

/// Directory sync's state, schedule and queue.
pub struct SyncService {
    pub states: Arc<dyn sync::SyncStateStore>,
    pub schedule: sync::Schedule,
    /// This instance's name in leases.
    pub instance: String,
    /// How long a lease lasts unless renewed.
    pub lease_ttl: Duration,
    /// Where rounds are queued (`sync-tenants`); None without a queue service.
    pub queue: Option<queues::Queue>,
}

impl App {
    /// Builds the state. Sends nothing over the network; `dev_key` is the development
    /// signing key when development authentication is on.
    pub fn new(
        mode: Mode,
        settings: &Settings,
        tables: tables::TableServiceClient,
        dev_key: Option<Arc<entra::jwks::SigningKey>>,
        vault: Arc<dyn vault::Vault>,
        sync_queue: Option<queues::Queue>,
        notification_queue: Option<queues::Queue>,
    ) -> App {
        let table_names = crate::store::TableNames::new(&settings.table_prefix);
        let run_log = Arc::new(TableRunLog::new(tables.table(table_names.runs())));
        let mut audiences: Vec<String> = settings
            .entra
            .all_client_ids()
            .iter()
            .map(Uuid::to_string)
            .collect();
        audiences.extend(settings.entra.app_id_uri.clone());
        // one HTTP client for everything that talks to Microsoft: building one loads the
        // trust roots, which would otherwise delay start-up once per client
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .expect("an HTTP client builds");
        let validator = Validator::with_http(
            ValidatorConfig {
                audiences,
                leeway: TOKEN_LEEWAY,
                keys: KeyCachePolicy::default(),
                cache_capacity: crate::cache::limits::VALIDATED_TOKENS,
                endpoints: settings.entra.endpoints.clone(),
                dev_key,
            },
            http.clone(),
        );
        let tenants: Arc<dyn crate::store::TenantStore> =
            Arc::new(TableTenantStore::new(tables.table(table_names.tenants())));
        let tokens = Arc::new(entra::credentials::TokenProvider::with_http(
            settings.entra.endpoints.clone(),
            Duration::from_secs(15),
            http.clone(),
        ));
        let graph = Arc::new(entra::graph::GraphClient::with_http(
            settings.entra.endpoints.clone(),
            tokens,
            entra::graph::GraphPolicy::default(),
            http,
        ));
        let directory = Arc::new(directory::TableDirectory::new(
            tables.table(table_names.directory()),
        ));
        let notifications = Arc::new(crate::notifications::Notifications::new(
            Arc::new(audit::notify::TableNotificationStore::new(
                tables.table(table_names.notifications()),
            )),
            vault.clone(),
            notification_queue,
            settings.smtp.clone(),
        ));
        let audit_store: Arc<dyn audit::AuditStore> = Arc::new(audit::TableAuditStore::new(
            tables.table(table_names.audit()),
        ));
        #[cfg(feature = "bench-without-audit")]
        let audit_store: Arc<dyn audit::AuditStore> = {
            drop(audit_store);
            tracing::warn!("built with bench-without-audit: the audit trail stores nothing");
            Arc::new(unaudited::Discard)
        };
        let audit = audit::Audit::new(audit_store).with_observer(notifications.observer());
        let pki = Arc::new(
            pki::Pki::new(
                vault.clone(),
                Arc::new(pki::TableCertificateStore::new(
                    tables.table(table_names.certificates()),
                )),
                settings.public_base_url.as_str(),
                pki::KeyPool::new(settings.certificates.key_pool_size),
            )
            .with_journal(Arc::new(crate::trail::RevocationTrail(audit.clone()))),
        );
        let scim_table = tables.table(table_names.scim());
        let scim = crate::provisioning::ScimService::new(
            Arc::new(crate::store::scim::TableScimUserStore::new(
                scim_table.clone(),
            )),
            Arc::new(crate::store::scim_groups::TableScimGroupStore::new(
                scim_table.clone(),
            )),
            scim_table,
            settings.public_base_url.as_str(),
            settings.scim_read_cache,
        )
        .with_directory(directory.clone())
        .with_certificates(pki.clone(), settings.certificates.revoke_on_disable);
        let app_vault = vault.clone();
        let credentials = Arc::new(AppCredentials::new(
            vault.clone(),
            settings.entra.client_secret.as_ref().map(|s| s.0.clone()),
        ));
        let onboarding = Onboarding::new(
            Arc::new(TableLinkStore::new(tables.table(table_names.links()))),
            tenants.clone(),
            graph.clone(),
            settings.entra.endpoints.clone(),
            settings.entra.clone(),
            credentials.clone(),
            settings.public_base_url.clone(),
            settings.consent_confirm,
            settings.consent_pending,
        );
        let sync = SyncService {
            states: Arc::new(sync::TableSyncStates::new(tables.table(table_names.sync()))),
            schedule: sync::Schedule {
                interval: settings.sync_interval,
                requeue_after: Duration::from_secs(10 * 60),
            },
            instance: format!("{}-{}", std::process::id(), Uuid::new_v4()),
            lease_ttl: settings.sync_lease,
            queue: sync_queue,
        };
        let access = AccessControl::new(
            tenants.clone(),
            Arc::new(TableGrantStore::new(tables.table(table_names.grants()))),
            Arc::new(TableEmployeeStore::new(
                tables.table(table_names.employees()),
            )),
        );
        let hr = crate::writeback::Writeback {
            store: Arc::new(hr::TableHrStore::new(tables.table(table_names.hr()))),
            max_disable_percent: settings.hr_max_disable_percent,
            audit: audit.clone(),
        };
        App {
            version: env!("CARGO_PKG_VERSION"),
            mode,
            tables,
            table_names,
            run_log,
            entra: settings.entra.clone(),
            connector_scopes: settings.connector_scopes.clone(),
            validator,
            access,
            onboarding,
            credentials,
            scim,
            public_base_url: settings.public_base_url.clone(),
            tenants,
            graph,
            directory,
            sync,
            pki,
            certificates: settings.certificates,
            hr,
            outbox: Arc::new(audit::outbox::Outbox::new(audit.clone())),
            audit,
            audit_retention_days: settings.audit_retention_days,
            notifications,
            vault: app_vault,
        }
    }

    /// Creates every table this version uses (idempotent). Run in the background after
    /// the port is bound; writes also create their table on first use.
    pub async fn ensure_tables(&self) -> Result<(), tables::Error> {
        for name in self.table_names.all() {
            self.tables.create_table_if_not_exists(&name).await?;
        }
        Ok(())
    }
}

/// The audit store of a benchmark baseline: accepts every event and keeps none. Compiled
/// always (so the workspace's lints check it), used only with `bench-without-audit`.
#[cfg_attr(not(feature = "bench-without-audit"), allow(dead_code))]
mod unaudited {
    use async_trait::async_trait;
    use audit::{AuditError, AuditPage, AuditQuery, AuditStore, Event, Trimmed};
    use uuid::Uuid;

    pub struct Discard;

    #[async_trait]
    impl AuditStore for Discard {
        async fn append(&self, _: &[Event]) -> Result<(), AuditError> {
            Ok(())
        }
        async fn complete(&self, _: &Event, _: &Event) -> Result<(), AuditError> {
            Ok(())
        }
        async fn page(
            &self,
            _: Uuid,
            _: &AuditQuery,
            _: Option<&str>,
            _: usize,
        ) -> Result<AuditPage, AuditError> {
            Ok(AuditPage {
                events: Vec::new(),
                next: None,
            })
        }
        async fn trim(&self, _: time::Date, _: &[Uuid]) -> Result<Trimmed, AuditError> {
            Ok(Trimmed::default())
        }
    }
}
