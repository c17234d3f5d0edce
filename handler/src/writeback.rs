//! HR write-back for the handler: a tenant's connection turned into Graph access, the view
//! of Entra a plan compares with (the synced directory, refreshed by fresh Graph reads for
//! every user the plan touches, the UPNs it would create and the roles of those it would
//! disable), and the `hr` crate's writer on the Graph client.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use entra::credentials::{AppCredential, AppRegistration};
use entra::graph::{BatchRequest, BatchResponse, GraphClient, GraphError, GraphErrorClass};
use entra::writes::{self, WriteAnswer};
use hr::plan::compute;
use hr::{
    Action, AppliedStore as _, Applier, ApplyReport, CompiledRules, Connection, ConnectionType,
    CredentialKind, DirectoryView, EntraUser, EntraWriter, HrRecordStore as _,
    HrSettingsStore as _, Plan, PlanInput, Step, TableHrStore, Write, WriteError, WriteErrorKind,
    WriteOutcome,
};
use serde_json::Value;
use uuid::Uuid;

use crate::app_credentials::{AppCredentials, CredentialNames};

/// Why write-back could not go on.
#[derive(Debug, thiserror::Error)]
pub enum WritebackError {
    #[error("the tenant has no HR connection; PUT one first")]
    NotConnected,
    #[error("the tenant has no HR rules; PUT them first")]
    NoRules,
    #[error("{0}")]
    NotConfigured(String),
    #[error("invalid rules: {0}")]
    InvalidRules(String),
    #[error("{0}")]
    NoUser(String),
    #[error(transparent)]
    Store(#[from] hr::HrStoreError),
    #[error(transparent)]
    Directory(#[from] directory::DirectoryError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Vault(#[from] vault::VaultError),
}

/// The vault secret of a customer-owned app's client secret (the admin's fallback).
pub fn secret_name(tenant: Uuid) -> String {
    format!("hr-client-secret-{tenant}")
}

/// The vault secret of a delegated connection's refresh token (never in Table Storage).
pub fn refresh_name(tenant: Uuid) -> String {
    format!("hr-refresh-token-{tenant}")
}

/// The delegated permissions a linked administrator grants the service's app.
pub const DELEGATED_SCOPES: &[&str] = &[
    "User.ReadWrite.All",
    "Group.ReadWrite.All",
    "Directory.AccessAsUser.All",
];

/// The scope string of a delegated link in `cloud` (`openid` for the ID token that names
/// the signed-in user's tenant, `offline_access` for the refresh token).
pub fn delegated_scope(cloud: entra::Cloud) -> String {
    let mut scopes = vec![
        "openid".to_string(),
        "profile".into(),
        "offline_access".into(),
    ];
    scopes.extend(
        DELEGATED_SCOPES
            .iter()
            .map(|s| format!("{}/{s}", cloud.graph())),
    );
    scopes.join(" ")
}

/// A delegated connection's refresh token in the vault, replaced on each redemption.
pub struct VaultRefreshGrant {
    pub vault: Arc<dyn vault::Vault>,
    pub name: String,
}

#[async_trait]
impl entra::credentials::RefreshGrant for VaultRefreshGrant {
    async fn current(&self) -> Result<String, String> {
        self.vault
            .get_secret(&self.name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the refresh token is gone from the vault".to_string())
    }

    async fn rotate(&self, new: &str) -> Result<(), String> {
        self.vault
            .set_secret(&self.name, new)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Application permissions a customer-owned app needs, and what each is for.
pub const APP_PERMISSIONS: &[(&str, &str)] = &[
    ("User.ReadWrite.All", "create and update users"),
    ("Group.ReadWrite.All", "add and remove group members"),
    (
        "User.EnableDisableAccount.All",
        "enable and disable accounts",
    ),
    (
        "Directory.ReadWrite.All",
        "reset passwords (with the User Administrator role)",
    ),
];

/// Write-back's state.
pub struct Writeback {
    pub store: Arc<TableHrStore>,
    pub max_disable_percent: f64,
    /// Where every applied change is reported (the audit trail hooks in here).
    /// Where every applied step is recorded.
    pub audit: audit::Audit,
}

/// How many times the plan is recomputed as fresh reads reveal more.
const PLAN_PASSES: usize = 4;

fn entra_user(u: &entra::delta::DeltaUser, select: &[String], raw: &Value) -> Option<EntraUser> {
    let id = Uuid::try_parse(&u.id).ok()?;
    let mut properties = BTreeMap::new();
    for p in select {
        let v = match &raw[p] {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Array(items) => items.first().and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        if let Some(v) = v {
            properties.insert(p.clone(), v);
        }
    }
    Some(EntraUser {
        id,
        upn: u.user_principal_name.clone().flatten().unwrap_or_default(),
        employee_id: u.employee_id.clone().flatten(),
        enabled: u.account_enabled.flatten().unwrap_or(true),
        properties,
        groups: BTreeSet::new(),
    })
}

fn synced_user(u: &directory::User) -> Option<EntraUser> {
    let id = u.entra_id?;
    if u.deleted_in_entra_at.is_some() {
        return None;
    }
    let mut properties = BTreeMap::new();
    for (p, v) in [
        ("displayName", &u.name),
        ("givenName", &u.given_name),
        ("surname", &u.surname),
        ("jobTitle", &u.job_title),
        ("department", &u.department),
        ("employeeId", &u.employee_id),
        ("mail", &u.email),
    ] {
        if let Some(v) = v {
            properties.insert(p.to_string(), v.clone());
        }
    }
    Some(EntraUser {
        id,
        upn: u.upn.clone(),
        employee_id: u.employee_id.clone(),
        enabled: u.enabled,
        properties,
        groups: BTreeSet::new(),
    })
}

impl Writeback {
    /// The Graph access of a connection.
    pub async fn registration(
        &self,
        credentials: &AppCredentials,
        vault: &Arc<dyn vault::Vault>,
        connection: &Connection,
    ) -> Result<AppRegistration, WritebackError> {
        let cloud: entra::Cloud =
            connection
                .cloud
                .parse()
                .map_err(|e: entra::cloud::UnknownCloud| {
                    WritebackError::NotConfigured(e.to_string())
                })?;
        match connection.kind {
            ConnectionType::CustomerOwned => {
                let client_id = connection
                    .client_id
                    .ok_or_else(|| WritebackError::NotConfigured("no client_id".into()))?;
                let credential = match connection.credential.unwrap_or(CredentialKind::Certificate) {
                    CredentialKind::Certificate => credentials
                        .certificate_credential(&CredentialNames::tenant(connection.tenant_id))
                        .await?
                        .ok_or_else(|| {
                            WritebackError::NotConfigured(
                                "no credential certificate; POST /api/v1/tenants/{tenant_id}/credential-certificate first".into(),
                            )
                        })?,
                    CredentialKind::Secret => AppCredential::Secret(
                        vault
                            .get_secret(&secret_name(connection.tenant_id))
                            .await?
                            .ok_or_else(|| WritebackError::NotConfigured("the client secret is gone from the vault; PUT the connection again".into()))?,
                    ),
                };
                Ok(AppRegistration {
                    cloud,
                    client_id,
                    credential,
                })
            }
            ConnectionType::Delegated => {
                let client_id = connection
                    .client_id
                    .ok_or_else(|| WritebackError::NotConfigured("no client_id".into()))?;
                let client = credentials
                    .service_credential(cloud)
                    .await?
                    .ok_or_else(|| {
                        WritebackError::NotConfigured(format!(
                            "no credential for the service's app in {cloud}"
                        ))
                    })?;
                Ok(AppRegistration {
                    cloud,
                    client_id,
                    credential: AppCredential::Delegated {
                        client: Box::new(client),
                        grant: Arc::new(VaultRefreshGrant {
                            vault: vault.clone(),
                            name: refresh_name(connection.tenant_id),
                        }),
                    },
                })
            }
        }
    }

    /// Keeps `connection` as the tenant's one active connection, and removes from the
    /// vault what another kind of connection kept there (a refresh token, a client secret),
    /// so nothing of a replaced connection is left behind. The removal is best effort: a
    /// secret left is never used, as the connection names which one is read.
    pub async fn save_connection(
        &self,
        vault: &Arc<dyn vault::Vault>,
        connection: &Connection,
    ) -> Result<(), WritebackError> {
        self.store.put_connection(connection).await?;
        let tenant = connection.tenant_id;
        let stale: Vec<String> = match (connection.kind, connection.credential) {
            (ConnectionType::Delegated, _) => vec![secret_name(tenant)],
            (ConnectionType::CustomerOwned, Some(CredentialKind::Secret)) => {
                vec![refresh_name(tenant)]
            }
            (ConnectionType::CustomerOwned, _) => vec![refresh_name(tenant), secret_name(tenant)],
        };
        for name in stale {
            if let Err(e) = vault.delete_secret(&name).await {
                tracing::warn!(%tenant, secret = %name, error = %e, "a replaced HR connection's secret was not removed");
            }
        }
        Ok(())
    }

    /// The tenant's compiled rules.
    pub async fn rules(&self, tenant: Uuid) -> Result<CompiledRules, WritebackError> {
        self.store
            .rules(tenant)
            .await?
            .ok_or(WritebackError::NoRules)?
            .compile()
            .map_err(WritebackError::InvalidRules)
    }

    /// Computes (and keeps) a plan for `today`: nothing is written to Entra.
    pub async fn plan(
        &self,
        graph: &GraphClient,
        registration: &AppRegistration,
        directory: &directory::TableDirectory,
        tenant: Uuid,
        today: time::Date,
    ) -> Result<Plan, WritebackError> {
        let rules = self.rules(tenant).await?;
        let records = self.store.records(tenant).await?;
        let applied = self.store.applied(tenant).await?;
        let synced = directory.all_users(tenant).await?;
        let total_users = synced
            .iter()
            .filter(|u| u.deleted_in_entra_at.is_none())
            .count();
        let local_to_entra: HashMap<Uuid, Uuid> = synced
            .iter()
            .filter_map(|u| u.entra_id.map(|e| (u.id, e)))
            .collect();
        let mut users: HashMap<Uuid, EntraUser> = synced
            .iter()
            .filter_map(synced_user)
            .map(|u| (u.id, u))
            .collect();
        let mut memberships: HashMap<Uuid, BTreeSet<Uuid>> = HashMap::new();
        for g in &rules.managed_groups {
            for local in directory.group_members(tenant, *g).await? {
                let id = local_to_entra.get(&local).copied().unwrap_or(local);
                memberships.entry(id).or_default().insert(*g);
            }
        }
        for (id, u) in users.iter_mut() {
            u.groups = memberships.get(id).cloned().unwrap_or_default();
        }
        let select: Vec<String> = rules.mappings.iter().map(|(p, _)| p.clone()).collect();
        let tenant_s = tenant.to_string();
        let mut fresh: HashSet<Uuid> = HashSet::new();
        let mut taken: HashSet<String> = HashSet::new();
        let mut checked_upns: HashSet<String> = HashSet::new();
        let mut privileged: HashSet<Uuid> = HashSet::new();
        let mut checked_roles: HashSet<Uuid> = HashSet::new();
        // users earlier applies made that sync has not brought yet
        let mut to_read: Vec<Uuid> = applied
            .values()
            .filter_map(|a| a.entra_id)
            .filter(|id| !users.contains_key(id))
            .collect();
        let mut plan = None;
        for _ in 0..PLAN_PASSES {
            self.refresh(
                graph,
                registration,
                &tenant_s,
                &to_read,
                &select,
                &mut users,
                &rules.managed_groups,
            )
            .await?;
            fresh.extend(to_read.drain(..));
            let view = DirectoryView {
                users: users.values().cloned().collect(),
                privileged: privileged.clone(),
                taken_upns: taken.clone(),
                applied: applied.clone(),
                total_users,
            };
            let p = compute(PlanInput {
                tenant_id: tenant,
                today,
                records: &records,
                rules: &rules,
                view: &view,
                max_disable_percent: self.max_disable_percent,
            });
            // what the plan touches is read again from Graph, and the plan made again
            let mut touched: BTreeSet<Uuid> = BTreeSet::new();
            let mut upns: Vec<String> = Vec::new();
            let mut disabling: Vec<Uuid> = Vec::new();
            for s in &p.steps {
                if let Some(hr::UserRef::Existing(id)) = s.action.user()
                    && !fresh.contains(&id)
                {
                    touched.insert(id);
                }
                match &s.action {
                    Action::CreateUser { upn, .. } if checked_upns.insert(upn.to_lowercase()) => {
                        upns.push(upn.clone())
                    }
                    Action::DisableUser {
                        user: hr::UserRef::Existing(id),
                    } if checked_roles.insert(*id) => disabling.push(*id),
                    _ => {}
                }
            }
            let mut again = !touched.is_empty();
            to_read.extend(touched);
            if !upns.is_empty() {
                for (upn, answer) in graph.users_by_upn(registration, &tenant_s, &upns).await {
                    match answer {
                        Ok(_) => {
                            taken.insert(upn.to_lowercase());
                            again = true;
                        }
                        Err(GraphError::NotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if !disabling.is_empty() {
                let found = graph
                    .privileged_among(registration, &tenant_s, &disabling)
                    .await?;
                again |= !found.is_empty();
                privileged.extend(found);
            }
            plan = Some(p);
            if !again {
                break;
            }
        }
        let plan = plan.expect("at least one pass");
        self.store.save_plan(&plan).await?;
        Ok(plan)
    }

    /// Reads users and their direct groups fresh from Graph (20 per `$batch`) into
    /// `users`; one Graph no longer knows is dropped. Every page of a user's groups is
    /// read (Graph pages `memberOf` at 100): a group missed would be added again, or kept
    /// when a rule no longer puts them there.
    #[allow(clippy::too_many_arguments)]
    async fn refresh(
        &self,
        graph: &GraphClient,
        registration: &AppRegistration,
        tenant: &str,
        ids: &[Uuid],
        select: &[String],
        users: &mut HashMap<Uuid, EntraUser>,
        managed: &BTreeSet<Uuid>,
    ) -> Result<(), WritebackError> {
        if ids.is_empty() {
            return Ok(());
        }
        let fields = format!("{},{}", entra::delta::USER_SELECT, select.join(","));
        let mut requests: Vec<BatchRequest> = Vec::with_capacity(ids.len() * 2);
        for id in ids {
            requests.push(BatchRequest {
                method: "GET".into(),
                url: format!("/users/{id}?$select={fields}"),
                body: None,
            });
            requests.push(BatchRequest {
                method: "GET".into(),
                url: format!("/users/{id}/memberOf/microsoft.graph.group?$select=id"),
                body: None,
            });
        }
        let answers = graph.batch(registration, tenant, &requests).await?;
        let mut read: Vec<(Uuid, BatchResponse, BTreeSet<Uuid>)> = Vec::new();
        // a user's groups past the first page: (user, the nextLink as a relative URL)
        let mut more: Vec<(Uuid, String)> = Vec::new();
        let base = format!("{}/v1.0", graph.graph_base(registration.cloud));
        let mut pages = GroupPages::default();
        let mut answers = answers.into_iter();
        for (i, id) in ids.iter().enumerate() {
            let (Some(answer), Some(groups)) = (answers.next(), answers.next()) else {
                break;
            };
            let mut mine = BTreeSet::new();
            let request = &requests[2 * i + 1];
            if let Some(link) = group_page(&base, request, groups, managed, &mut mine)? {
                more.push(pages.follow(*id, link)?);
            }
            read.push((*id, answer, mine));
        }
        // inside `$batch` a nextLink is absolute; each page after the first is another
        // batch item with its relative URL, until no page names a next one
        let mut extra: HashMap<Uuid, BTreeSet<Uuid>> = HashMap::new();
        while !more.is_empty() {
            let requests: Vec<BatchRequest> = more
                .iter()
                .map(|(_, url)| BatchRequest {
                    method: "GET".into(),
                    url: url.clone(),
                    body: None,
                })
                .collect();
            let answers = graph.batch(registration, tenant, &requests).await?;
            let mut next = Vec::new();
            for (((id, _), request), answer) in more.iter().zip(&requests).zip(answers) {
                let mine = extra.entry(*id).or_default();
                if let Some(link) = group_page(&base, request, answer, managed, mine)? {
                    next.push(pages.follow(*id, link)?);
                }
            }
            more = next;
        }
        for (id, answer, mut groups) in read {
            groups.extend(extra.remove(&id).unwrap_or_default());
            let raw = answer.body.clone();
            match writes::read_answer(answer)? {
                None => {
                    users.remove(&id);
                }
                Some(u) => {
                    if let Some(mut user) = entra_user(&u, select, &raw) {
                        user.groups = groups;
                        users.insert(id, user);
                    }
                }
            }
        }
        Ok(())
    }

    /// The Entra user of an employee: the one an apply made or matched, else the one synced
    /// user carrying the employee id.
    pub async fn user_of(
        &self,
        directory: &directory::TableDirectory,
        tenant: Uuid,
        employee_id: &str,
    ) -> Result<Uuid, WritebackError> {
        if let Some(id) = self
            .store
            .applied(tenant)
            .await?
            .get(employee_id)
            .and_then(|a| a.entra_id)
        {
            return Ok(id);
        }
        let matches: Vec<Uuid> = directory
            .all_users(tenant)
            .await?
            .iter()
            .filter(|u| u.employee_id.as_deref() == Some(employee_id))
            .filter_map(|u| u.entra_id)
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(WritebackError::NoUser(format!(
                "no Entra user is known for employee {employee_id:?}"
            ))),
            _ => Err(WritebackError::NoUser(format!(
                "several Entra users carry employee id {employee_id:?}; none is reset"
            ))),
        }
    }

    /// Applies a kept plan's steps that `include` selects.
    pub async fn apply(
        &self,
        graph: &GraphClient,
        registration: AppRegistration,
        plan: &Plan,
        include: &(dyn Fn(&Step) -> bool + Sync),
        actor: audit::Actor,
    ) -> Result<ApplyReport, WritebackError> {
        let trail = HrTrail {
            audit: self.audit.clone(),
            actor,
        };
        let writer = GraphWriter {
            graph,
            tenant: plan.tenant_id.to_string(),
            registration,
        };
        // roles can be given between plan and apply: whoever holds one now keeps their
        // account, and nothing else of their leaving is done either
        let disabling: Vec<Uuid> = plan
            .steps
            .iter()
            .filter(|s| include(s))
            .filter_map(|s| match s.action {
                Action::DisableUser {
                    user: hr::UserRef::Existing(id),
                } => Some(id),
                _ => None,
            })
            .collect();
        let privileged = if disabling.is_empty() {
            HashSet::new()
        } else {
            graph
                .privileged_among(&writer.registration, &writer.tenant, &disabling)
                .await?
        };
        let blocked: HashSet<&str> = plan
            .steps
            .iter()
            .filter(|s| {
                matches!(s.action, Action::DisableUser { user: hr::UserRef::Existing(id) } if privileged.contains(&id))
            })
            .map(|s| s.employee_id.as_str())
            .collect();
        let applier = Applier {
            writer: &writer,
            journal: self.store.as_ref(),
            applied: self.store.as_ref(),
            events: &trail,
        };
        let mut report = applier
            .apply(plan, &|s| {
                include(s) && !blocked.contains(s.employee_id.as_str())
            })
            .await?;
        for s in plan
            .steps
            .iter()
            .filter(|s| include(s) && blocked.contains(s.employee_id.as_str()))
        {
            report.failed += 1;
            report.results.push(hr::StepResult {
                index: s.index,
                action: s.action.name(),
                employee_id: s.employee_id.clone(),
                status: hr::StepStatus::Failed,
                user_id: None,
                error: Some(
                    "the account holds a directory role now: a privileged account is never disabled by a plan".into(),
                ),
                error_kind: Some(WriteErrorKind::Forbidden),
            });
        }
        report.results.sort_by_key(|r| r.index);
        Ok(report)
    }
}

/// Most pages of one user's groups a refresh reads (100 groups a page by default).
const MAX_GROUP_PAGES: usize = 100;

/// The memberOf pages followed per user, so a Graph answer that names a page again (a
/// loop) or never ends stops the read with an error instead of paging forever.
#[derive(Default)]
struct GroupPages {
    links: HashMap<Uuid, HashSet<String>>,
}

impl GroupPages {
    /// The next page of `user`'s groups to read, or why it is not read.
    fn follow(&mut self, user: Uuid, link: String) -> Result<(Uuid, String), WritebackError> {
        let seen = self.links.entry(user).or_default();
        let refused = |message: String| {
            WritebackError::Graph(GraphError::Rejected {
                status: 200,
                message,
            })
        };
        if seen.contains(&link) {
            return Err(refused(format!(
                "Graph named the same page of user {user}'s groups twice; their groups were not read"
            )));
        }
        // the first page came without a link: this one would be page seen.len() + 2
        if seen.len() + 2 > MAX_GROUP_PAGES {
            return Err(refused(format!(
                "user {user}'s groups run past {MAX_GROUP_PAGES} pages; they were not read whole"
            )));
        }
        seen.insert(link.clone());
        Ok((user, link))
    }
}

/// Adds the managed groups of one `memberOf` page to `into`; the next page's URL,
/// relative to `base` (`{graph}/v1.0`), when there is one. A user Graph no longer knows
/// (404) has no groups. A nextLink on another host is refused: the token goes nowhere else.
fn group_page(
    base: &str,
    request: &BatchRequest,
    page: BatchResponse,
    managed: &BTreeSet<Uuid>,
    into: &mut BTreeSet<Uuid>,
) -> Result<Option<String>, WritebackError> {
    match page.status {
        200..=299 => {}
        404 => return Ok(None),
        _ => return Err(writes::write_answer(request, page).into_error().into()),
    }
    into.extend(
        page.body["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["id"].as_str().and_then(|i| Uuid::try_parse(i).ok()))
            .filter(|g| managed.contains(g)),
    );
    match page.body["@odata.nextLink"].as_str() {
        None => Ok(None),
        Some(link) => match link.strip_prefix(base) {
            Some(relative) if relative.starts_with('/') => Ok(Some(relative.to_string())),
            _ => Err(WritebackError::Graph(GraphError::Rejected {
                status: 200,
                message: "a memberOf nextLink that is not on this cloud's Graph host".into(),
            })),
        },
    }
}

/// A temporary password Entra accepts (upper, lower, digit and symbol; 16 characters).
/// Shown at most once, never logged or stored.
pub fn temporary_password() -> String {
    const SETS: [&[u8]; 4] = [
        b"ABCDEFGHJKLMNPQRSTUVWXYZ",
        b"abcdefghijkmnopqrstuvwxyz",
        b"23456789",
        b"!#%+-=?@",
    ];
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random source works");
    let mut chars: Vec<char> = bytes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let set = SETS[i % SETS.len()];
            set[*b as usize % set.len()] as char
        })
        .collect();
    // the category of each position is fixed above; shuffle so it is not guessable
    let mut order = [0u8; 16];
    aws_lc_rs::rand::fill(&mut order).expect("the system random source works");
    for i in (1..chars.len()).rev() {
        chars.swap(i, order[i] as usize % (i + 1));
    }
    chars.into_iter().collect()
}

/// The `hr` writer on the Graph client: every slice of writes is one `$batch`.
pub struct GraphWriter<'a> {
    pub graph: &'a GraphClient,
    pub registration: AppRegistration,
    pub tenant: String,
}

fn write_error(e: GraphError) -> WriteError {
    let kind = match e.class() {
        GraphErrorClass::Throttled { .. } => WriteErrorKind::Throttled,
        GraphErrorClass::NotFound => WriteErrorKind::NotFound,
        GraphErrorClass::Rejected => WriteErrorKind::Rejected,
        GraphErrorClass::AccessRevoked { .. } if matches!(e, GraphError::Forbidden(_)) => {
            WriteErrorKind::Forbidden
        }
        GraphErrorClass::AccessRevoked { .. } => WriteErrorKind::AccessRevoked,
        GraphErrorClass::Transient | GraphErrorClass::ResyncRequired => WriteErrorKind::Unavailable,
    };
    let message = match kind {
        WriteErrorKind::Forbidden => {
            format!("{e}; the connection lacks a permission or directory role for this write")
        }
        _ => e.to_string(),
    };
    WriteError { kind, message }
}

#[async_trait]
impl EntraWriter for GraphWriter<'_> {
    async fn run(&self, ops: &[Write]) -> Vec<Result<WriteOutcome, WriteError>> {
        let cloud = self.registration.cloud;
        let requests: Vec<BatchRequest> = ops
            .iter()
            .map(|w| match w {
                Write::FindUser { upn } => writes::read_user(upn),
                Write::CreateUser {
                    upn,
                    mail_nickname,
                    properties,
                } => writes::create_user(upn, mail_nickname, properties, &temporary_password()),
                Write::UpdateUser { user, changes } => writes::update_user(*user, changes),
                Write::SetEnabled { user, enabled } => writes::set_enabled(*user, *enabled),
                Write::AddMember { group, user } => self.graph.add_member(cloud, *group, *user),
                Write::RemoveMember { group, user } => writes::remove_member(*group, *user),
                Write::ResetPassword { user } => {
                    writes::reset_password(*user, &temporary_password())
                }
                Write::SetManager { user, manager } => {
                    self.graph.set_manager(cloud, *user, *manager)
                }
                Write::RevokeSessions { user } => writes::revoke_sessions(*user),
                Write::RemoveManager { user } => writes::remove_manager(*user),
            })
            .collect();
        let answers = match self
            .graph
            .batch(&self.registration, &self.tenant, &requests)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                let e = write_error(e);
                return ops.iter().map(|_| Err(e.clone())).collect();
            }
        };
        ops.iter()
            .zip(&requests)
            .zip(answers)
            .map(|((w, request), answer)| match w {
                Write::FindUser { .. } => match writes::read_answer(answer) {
                    Ok(None) => Ok(WriteOutcome::Missing),
                    Ok(Some(u)) => Uuid::try_parse(&u.id)
                        .map(|id| WriteOutcome::Found {
                            id,
                            employee_id: u.employee_id.flatten(),
                        })
                        .map_err(|_| WriteError {
                            kind: WriteErrorKind::Rejected,
                            message: "a user id that is not a GUID".into(),
                        }),
                    Err(e) => Err(write_error(e)),
                },
                _ => match writes::write_answer(request, answer) {
                    WriteAnswer::Done(body) => match w {
                        Write::CreateUser { .. } => body["id"]
                            .as_str()
                            .and_then(|id| Uuid::try_parse(id).ok())
                            .map(WriteOutcome::Created)
                            .ok_or_else(|| WriteError {
                                kind: WriteErrorKind::Unavailable,
                                message: "Graph created a user but named no id".into(),
                            }),
                        _ => Ok(WriteOutcome::Done),
                    },
                    WriteAnswer::UpnInUse(message) => Err(WriteError {
                        kind: WriteErrorKind::UpnInUse,
                        message,
                    }),
                    WriteAnswer::Failed(e) => Err(write_error(e)),
                },
            })
            .collect()
    }
}

/// HR write-back's steps as audit events (`hr.user.create`, `hr.member.add`, ...): one per
/// step an apply finishes, done or failed, with the HR record's employee id and the plan
/// as correlation. A temporary password is never a value here: its step records only that
/// it ran.
pub struct HrTrail {
    pub audit: audit::Audit,
    /// Who applies: the timer, or the admin behind `POST .../hr/apply`.
    pub actor: audit::Actor,
}

/// The audit action of an HR step.
fn hr_action(step: &hr::Action) -> &'static str {
    match step {
        hr::Action::CreateUser { .. } => "hr.user.create",
        hr::Action::UpdateUser { .. } => "hr.user.update",
        hr::Action::EnableUser { .. } => "hr.user.enable",
        hr::Action::DisableUser { .. } => "hr.user.disable",
        hr::Action::AddMember { .. } => "hr.member.add",
        hr::Action::RemoveMember { .. } => "hr.member.remove",
        hr::Action::ResetPassword { .. } => "hr.user.reset_password",
        hr::Action::SetManager { .. } => "hr.user.set_manager",
        hr::Action::RevokeSessions { .. } => "hr.user.revoke_sessions",
        hr::Action::RemoveManager { .. } => "hr.user.remove_manager",
    }
}

#[async_trait::async_trait]
impl hr::HrEvents for HrTrail {
    async fn step_finished(
        &self,
        tenant: uuid::Uuid,
        plan: uuid::Uuid,
        step: &hr::Step,
        result: &hr::StepResult,
    ) {
        let target_id = result
            .user_id
            .map(|u| u.to_string())
            .unwrap_or_else(|| step.employee_id.clone());
        let target =
            audit::Target::new("user", target_id).display(format!("employee {}", step.employee_id));
        let mut event =
            audit::Event::new(tenant, self.actor.clone(), hr_action(&step.action), target)
                .correlation(format!("plan {plan}, step {}", step.index));
        match &step.action {
            hr::Action::CreateUser { properties, .. } => {
                // not the planned UPN: a collision found at apply time gives the user the
                // next free one, and the target's id is the user Entra made
                for (name, value) in properties {
                    event = event.change(audit::Change::new(
                        name.as_str(),
                        None,
                        Some(serde_json::Value::String(value.clone())),
                    ));
                }
            }
            hr::Action::UpdateUser { changes, old, .. } => {
                // old: what Entra held when the plan compared (a plan made before old
                // values were kept has none)
                for (name, value) in changes {
                    event = event.change(audit::Change::new(
                        name.as_str(),
                        old.get(name).cloned().map(serde_json::Value::String),
                        value.clone().map(serde_json::Value::String),
                    ));
                }
            }
            hr::Action::ResetPassword { .. } => {
                event = event.change(audit::Change::secret("password"));
            }
            hr::Action::RemoveManager {
                manager_employee_id,
                ..
            } => {
                // the manager as HR named it (an employee id); Entra's is no more
                event = event.change(audit::Change::new(
                    "manager",
                    manager_employee_id.clone().map(serde_json::Value::String),
                    None,
                ));
            }
            _ => {}
        }
        if result.status == hr::StepStatus::Failed {
            event = event.outcome(audit::Outcome::failure(
                result
                    .error_kind
                    .map(|k| format!("{k:?}"))
                    .unwrap_or_else(|| "failed".into()),
                result.error.clone().unwrap_or_default(),
            ));
        }
        // the write to Entra has happened (or failed) by now: a lost record is logged, the
        // step's own journal still says what was done
        if let Err(e) = self.audit.record(event).await {
            tracing::error!(%tenant, %plan, step = step.index, error = %e, "an HR step could not be recorded in the audit trail");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_paging_stops_at_a_repeated_link_and_past_100_pages() {
        let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let mut pages = GroupPages::default();
        pages.follow(ada, "/users/a?page=2".into()).unwrap();
        // another user's pages are apart
        pages.follow(bob, "/users/a?page=2".into()).unwrap();
        let again = pages.follow(ada, "/users/a?page=2".into()).unwrap_err();
        assert!(again.to_string().contains("twice"), "{again}");

        let mut pages = GroupPages::default();
        // pages 2 to 100 are read
        for p in 2..=MAX_GROUP_PAGES {
            pages.follow(ada, format!("/p{p}")).unwrap();
        }
        let past = pages.follow(ada, "/p101".into()).unwrap_err();
        assert!(past.to_string().contains("100 pages"), "{past}");
    }

    #[test]
    fn temporary_passwords_have_every_character_class() {
        for _ in 0..50 {
            let p = temporary_password();
            assert_eq!(p.len(), 16);
            assert!(p.chars().any(|c| c.is_ascii_uppercase()));
            assert!(p.chars().any(|c| c.is_ascii_lowercase()));
            assert!(p.chars().any(|c| c.is_ascii_digit()));
            assert!(p.chars().any(|c| !c.is_ascii_alphanumeric()));
        }
        assert_ne!(temporary_password(), temporary_password());
    }
}
