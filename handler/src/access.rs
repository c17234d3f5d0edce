//! Connector API access control: who may call the product's API, decided per request from
//! a validated Entra token, the tenant's status, the principal's grant and, for users, an
//! active employee record. Decisions read in-memory caches; revocations on this instance
//! invalidate them at once, other instances reload within 25 seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use entra::{Cloud, Rejection, TenantLookup, ValidatedToken, Validator};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::cache::{TtlCache, limits};
use crate::domain::{Employee, Grant, Principal, Tenant, TenantStatus};
use crate::store::{EmployeeStore, GrantStore, StoreError, TenantStore};

/// Last use is written at most this often per grant and instance.
pub const USAGE_WRITE_INTERVAL: Duration = Duration::from_secs(300);

/// Employee records by (tenant, object id); `None` caches a miss.
type EmployeeCache = TtlCache<(Uuid, Uuid), Option<Arc<Employee>>>;

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: the token is not valid here.
    InvalidToken(Rejection),
    /// 403 with a machine-readable reason.
    Forbidden(&'static str),
    /// 503: storage or Microsoft could not be reached.
    Unavailable(String),
    /// 500: stored data is unreadable or a request was malformed; no retry cures it.
    Internal(String),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        match e {
            StoreError::Unavailable(_) | StoreError::Contended => {
                Refusal::Unavailable(e.to_string())
            }
            _ => Refusal::Internal(e.to_string()),
        }
    }
}

/// What an accepted call may do.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessDecision {
    pub tenant_id: Uuid,
    pub principal: Principal,
    pub scopes: Vec<String>,
    pub grant_id: Uuid,
}

/// The access-control service.
pub struct AccessControl {
    pub tenants: Arc<dyn TenantStore>,
    pub grants: Arc<dyn GrantStore>,
    pub employees: Arc<dyn EmployeeStore>,
    tenant_cache: Arc<TtlCache<Uuid, Option<Arc<Tenant>>>>,
    grant_cache: Arc<TtlCache<Uuid, Arc<Vec<Grant>>>>,
    employee_cache: Arc<EmployeeCache>,
    usage: UsageRecorder,
}

impl AccessControl {
    /// The service over its stores.
    pub fn new(
        tenants: Arc<dyn TenantStore>,
        grants: Arc<dyn GrantStore>,
        employees: Arc<dyn EmployeeStore>,
    ) -> AccessControl {
        AccessControl {
            tenants,
            grants,
            employees,
            tenant_cache: TtlCache::new(limits::TENANTS),
            grant_cache: TtlCache::new(limits::GRANTS),
            employee_cache: TtlCache::new(limits::EMPLOYEES),
            usage: UsageRecorder::default(),
        }
    }

    /// A registered tenant, from the cache.
    pub async fn tenant(&self, tenant_id: Uuid) -> Result<Option<Arc<Tenant>>, StoreError> {
        let store = self.tenants.clone();
        self.tenant_cache
            .get_or_load(tenant_id, move || async move {
                Ok(store.get(tenant_id).await?.map(Arc::new))
            })
            .await
    }

    async fn tenant_grants(&self, tenant_id: Uuid) -> Result<Arc<Vec<Grant>>, StoreError> {
        let store = self.grants.clone();
        self.grant_cache
            .get_or_load(tenant_id, move || async move {
                store.list(Some(tenant_id)).await.map(Arc::new)
            })
            .await
    }

    async fn employee(
        &self,
        tenant_id: Uuid,
        object_id: Uuid,
    ) -> Result<Option<Arc<Employee>>, StoreError> {
        let store = self.employees.clone();
        self.employee_cache
            .get_or_load((tenant_id, object_id), move || async move {
                Ok(store
                    .find_by_object(tenant_id, object_id)
                    .await?
                    .map(Arc::new))
            })
            .await
    }

    /// Forgets what is cached about a tenant (after a write on this instance).
    pub fn invalidate_tenant(&self, tenant_id: Uuid) {
        self.tenant_cache.invalidate(&tenant_id);
        self.grant_cache.invalidate(&tenant_id);
        self.employee_cache
            .invalidate_where(|(t, _)| *t == tenant_id);
    }

    /// Forgets a tenant's cached grants.
    pub fn invalidate_grants(&self, tenant_id: Uuid) {
        self.grant_cache.invalidate(&tenant_id);
    }

    /// Forgets a cached employee lookup.
    pub fn invalidate_employee(&self, tenant_id: Uuid, object_id: Uuid) {
        self.employee_cache.invalidate(&(tenant_id, object_id));
    }

    /// Decides whether a bearer token may call the Connector API.
    pub async fn authorize(
        &self,
        validator: &Validator,
        token: &str,
    ) -> Result<AccessDecision, Refusal> {
        let validated = validator
            .validate(token, &RegistryLookup(self))
            .await
            .map_err(|r| match r {
                Rejection::Unavailable(why) => Refusal::Unavailable(why),
                other => Refusal::InvalidToken(other),
            })?;
        let tenant = self
            .tenant(validated.tenant_id)
            .await
            .map_err(Refusal::from)?
            .ok_or(Refusal::InvalidToken(Rejection::UnknownTenant))?;
        if tenant.status != TenantStatus::Active {
            return Err(Refusal::Forbidden("tenant_inactive"));
        }
        let principal = principal_of(&validated)?;
        let grants = self
            .tenant_grants(tenant.tenant_id)
            .await
            .map_err(Refusal::from)?;
        let grant = grants
            .iter()
            .find(|g| g.revoked_at.is_none() && g.principal == principal)
            .ok_or(Refusal::Forbidden("no_grant"))?;
        if let Principal::User { object_id } = principal {
            let employee = self
                .employee(tenant.tenant_id, object_id)
                .await
                .map_err(Refusal::from)?;
            let today = OffsetDateTime::now_utc().date();
            if !employee.is_some_and(|e| e.is_active_on(today)) {
                return Err(Refusal::Forbidden("no_active_employment"));
            }
        }
        self.usage.note(tenant.tenant_id, grant.id);
        Ok(AccessDecision {
            tenant_id: tenant.tenant_id,
            principal,
            scopes: grant.scopes.clone(),
            grant_id: grant.id,
        })
    }

    /// Drops expired cache entries (called by a background task every few seconds).
    pub fn sweep_caches(&self) {
        self.tenant_cache.sweep();
        self.grant_cache.sweep();
        self.employee_cache.sweep();
    }

    /// Writes pending last-use times (called by a background task every few seconds).
    pub async fn flush_usage(&self) {
        for ((tenant_id, grant_id), at) in self.usage.take_pending() {
            if let Err(e) = self.grants.record_use(tenant_id, grant_id, at).await {
                tracing::warn!(%grant_id, error = %e, "could not record a grant's last use");
            }
        }
    }
}

/// The principal a token speaks for: a service principal for app-only tokens, a user for
/// delegated ones. Matched on ids only, never on upn or email.
fn principal_of(token: &ValidatedToken) -> Result<Principal, Refusal> {
    let parse = |s: Option<&str>| s.and_then(|s| Uuid::try_parse(s).ok());
    if token.is_app_only() {
        let client_id = parse(token.client_app()).ok_or(Refusal::Forbidden("unsupported_token"))?;
        Ok(Principal::ServicePrincipal { client_id })
    } else if token.is_delegated() {
        let object_id = parse(token.object_id()).ok_or(Refusal::Forbidden("unsupported_token"))?;
        Ok(Principal::User { object_id })
    } else {
        Err(Refusal::Forbidden("unsupported_token"))
    }
}

/// Lets the validator know registered tenants (any status) and their clouds.
pub struct RegistryLookup<'a>(pub &'a AccessControl);

#[async_trait]
impl TenantLookup for RegistryLookup<'_> {
    async fn cloud_of(&self, tenant_id: Uuid) -> Result<Option<Cloud>, String> {
        Ok(self
            .0
            .tenant(tenant_id)
            .await
            .map_err(|e| e.to_string())?
            .map(|t| t.cloud))
    }
}

/// Remembers grant use in memory; at most one write per grant per interval.
#[derive(Default)]
struct UsageRecorder {
    scheduled: RwLock<HashMap<Uuid, Instant>>,
    pending: Mutex<HashMap<(Uuid, Uuid), OffsetDateTime>>,
}

impl UsageRecorder {
    fn note(&self, tenant_id: Uuid, grant_id: Uuid) {
        let recent = |at: Option<&Instant>| at.is_some_and(|t| t.elapsed() < USAGE_WRITE_INTERVAL);
        if recent(self.scheduled.read().expect("usage lock").get(&grant_id)) {
            return;
        }
        let mut scheduled = self.scheduled.write().expect("usage lock");
        if recent(scheduled.get(&grant_id)) {
            return;
        }
        scheduled.insert(grant_id, Instant::now());
        drop(scheduled);
        self.pending
            .lock()
            .expect("usage lock")
            .insert((tenant_id, grant_id), OffsetDateTime::now_utc());
    }

    fn take_pending(&self) -> Vec<((Uuid, Uuid), OffsetDateTime)> {
        // grants not used for an interval need no entry: without this the map would keep
        // every grant ever used until the process ends
        self.scheduled
            .write()
            .expect("usage lock")
            .retain(|_, at| at.elapsed() < USAGE_WRITE_INTERVAL);
        self.pending.lock().expect("usage lock").drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use entra::{Endpoints, KeyCachePolicy, ValidatorConfig};
    use serde_json::json;
    use system_tests::fake_entra::{self, FakeEntra};
    use system_tests::{Azurite, unique_table};

    use super::*;
    use crate::store::{TableEmployeeStore, TableGrantStore, TableTenantStore};

    const CLIENT_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";

    #[tokio::test]
    async fn forged_tokens_for_random_tenants_cost_no_table_request() {
        let stranger =
            aws_lc_rs::signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let fake = FakeEntra::start(fake_entra::GLOBAL).await;
        let validator = Validator::new(ValidatorConfig {
            audiences: vec![CLIENT_ID.into()],
            leeway: Duration::from_secs(60),
            keys: KeyCachePolicy::default(),
            cache_capacity: 1000,
            endpoints: Endpoints::new(Some(&fake.base_url), None).unwrap(),
            dev_key: None,
        });
        let client = Azurite::shared().client();
        let table = |prefix: &str| client.table(unique_table(prefix));
        let access = AccessControl::new(
            Arc::new(TableTenantStore::new(table("t"))),
            Arc::new(TableGrantStore::new(table("g"))),
            Arc::new(TableEmployeeStore::new(table("e"))),
        );
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = |tid: &str| {
            json!({
                "aud": CLIENT_ID, "iss": fake.issuer(true, tid), "tid": tid, "ver": "2.0",
                "iat": now, "nbf": now, "exp": now + 3600, "oid": Uuid::new_v4(),
                "azp": Uuid::new_v4(), "scp": "records.read",
            })
        };
        let kid = fake.first_kid();
        let before = client.request_count();
        for i in 0..50 {
            let tid = Uuid::new_v4().to_string();
            for kid in [format!("forged-{i}"), kid.clone()] {
                let token = fake_entra::sign_with(&stranger, &kid, json!({}), &claims(&tid));
                let refused = access.authorize(&validator, &token).await.unwrap_err();
                assert!(matches!(refused, Refusal::InvalidToken(_)), "{refused:?}");
            }
        }
        assert_eq!(client.request_count() - before, 0, "forged tokens");

        // the counter counts: a token Microsoft signed costs the registry read
        let tid = Uuid::new_v4().to_string();
        let signed = fake.sign(&kid, json!({}), &claims(&tid));
        assert_eq!(
            access.authorize(&validator, &signed).await.unwrap_err(),
            Refusal::InvalidToken(Rejection::UnknownTenant)
        );
        assert_eq!(client.request_count() - before, 1);
    }
}
