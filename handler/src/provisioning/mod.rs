//! SCIM provisioning from Entra for one tenant: secret tokens, users as Entra provisions them,
//! and what the product decides about them ([`admin`]).
//!
//! Translates between SCIM resources and the user store; the protocol pieces (filters,
//! PATCH) come from the `scim` crate, the HTTP shape from `functions::scim`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use scim::{Filter, patch};
use serde_json::{Value, json};
use tables::{Entity, IfMatch, Operation, Table};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::cache::{TtlCache, json_bytes, limits};
use crate::store::StoreError;
use crate::store::scim::{ScimUserStore, StoredResource, WriteOutcome};
use crate::store::scim_groups::{MemberChanges, ScimGroupStore};

/// Writes a user change's audit event inside the change's own transaction (an outbox
/// row of the tenant's partition, see `audit::outbox`), so that the change and its record
/// commit together.
pub trait Journal: Sync {
    /// The row recording that user `id` changed by `changes`.
    fn row(&self, id: Uuid, changes: &[audit::Change]) -> Entity;
}

/// A SCIM failure: HTTP status, `scimType`, detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimError {
    pub status: u16,
    pub scim_type: Option<&'static str>,
    pub detail: String,
}

impl ScimError {
    pub fn new(
        status: u16,
        scim_type: Option<&'static str>,
        detail: impl Into<String>,
    ) -> ScimError {
        ScimError {
            status,
            scim_type,
            detail: detail.into(),
        }
    }
}

/// The one mapping of storage failures to SCIM answers: only unavailability is 503 (Entra
/// retries those); bad input is 400 and our own faults are 500, which Entra does not retry.
impl From<StoreError> for ScimError {
    fn from(e: StoreError) -> ScimError {
        match e {
            StoreError::Contended => {
                ScimError::new(409, None, "the resource changed concurrently; try again")
            }
            StoreError::Conflict(why) => ScimError::new(409, Some("uniqueness"), why),
            StoreError::Invalid(why) => ScimError::new(
                400,
                Some("invalidValue"),
                format!("a value is too long to store ({why})"),
            ),
            StoreError::Corrupt(_) | StoreError::Internal(_) => {
                tracing::error!(error = %e, "SCIM storage fault");
                ScimError::new(500, None, "an internal error occurred")
            }
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "SCIM storage unavailable");
                ScimError::new(503, None, "storage is unavailable; try again")
            }
        }
    }
}

/// Users per page at most.
pub const MAX_RESULTS: usize = 200;

/// The service.
pub struct ScimService {
    pub(crate) users: Arc<dyn ScimUserStore>,
    pub(crate) groups: Arc<dyn ScimGroupStore>,
    /// The SCIM table: token, settings and invitation rows in each tenant's partition.
    pub(crate) tokens: Table,
    /// MACs Secret Tokens, so forged ones are refused before any storage request.
    token_key: secret_token::TokenKey,
    token_cache: Arc<TtlCache<Uuid, Option<String>>>,
    pub(crate) settings_cache: Arc<TtlCache<Uuid, crate::provisioning::admin::ScimSettings>>,
    /// Where activation links point.
    pub(crate) public_base_url: String,
    /// Users as SCIM GETs read them (by id and by lowercased userName), briefly; `None`
    /// when `SCIM_READ_CACHE_SECONDS` is 0. Writes always read the store.
    read_cache: Option<Arc<TtlCache<ReadKey, StoredResource>>>,
    /// The tenant directories SCIM users are applied to (see `directory`).
    directory: Option<Arc<dyn directory::Directory>>,
    /// Revokes the certificates of users a SCIM write leaves inactive (when enabled).
    certificates: Option<(Arc<pki::Pki>, bool)>,
}

/// What the read cache is keyed by: (tenant, user id) or (tenant, lowercased userName).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ReadKey {
    Id(Uuid, Uuid),
    Name(Uuid, String),
}

/// Invalidates read-cache keys when dropped.
struct Forget {
    cache: Option<Arc<TtlCache<ReadKey, StoredResource>>>,
    keys: Vec<ReadKey>,
}

impl Drop for Forget {
    fn drop(&mut self) {
        if let Some(cache) = &self.cache {
            for key in &self.keys {
                cache.invalidate(key);
            }
        }
    }
}

/// Why a cached read found nothing: absent users are not cached.
enum Miss {
    Absent,
    Store(StoreError),
}

impl From<StoreError> for Miss {
    fn from(e: StoreError) -> Miss {
        Miss::Store(e)
    }
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Miss::Absent => f.write_str("the user is gone"),
            Miss::Store(e) => e.fmt(f),
        }
    }
}

/// SHA-256, hex: how tokens and activation codes are kept.
pub(crate) fn hash(token: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const TOKEN_ROW: &str = crate::store::scim_keys::TOKEN;

impl ScimService {
    /// Over the user and group stores and the table that keeps token hashes, settings and
    /// invitations; activation links point at `public_base_url`.
    pub fn new(
        users: Arc<dyn ScimUserStore>,
        groups: Arc<dyn ScimGroupStore>,
        tokens: Table,
        public_base_url: &str,
        read_cache: Duration,
    ) -> ScimService {
        ScimService {
            users,
            groups,
            token_key: secret_token::TokenKey::new(tokens.clone()),
            tokens,
            token_cache: TtlCache::new(limits::SCIM_TOKENS),
            settings_cache: TtlCache::new(limits::SCIM_SETTINGS),
            public_base_url: public_base_url.to_string(),
            read_cache: (!read_cache.is_zero()).then(|| {
                TtlCache::weighed(limits::scim_reads(read_cache), |r: &StoredResource| {
                    json_bytes(&r.data) + json_bytes(&r.admin)
                })
            }),
            directory: None,
            certificates: None,
        }
    }

    /// Drops expired cache entries (called by a background task every few seconds).
    pub fn sweep_caches(&self) {
        self.token_cache.sweep();
        self.settings_cache.sweep();
        if let Some(cache) = &self.read_cache {
            cache.sweep();
        }
    }

    /// The SCIM table (its tenant partitions also hold the user writes' audit outbox rows).
    pub fn table(&self) -> &Table {
        &self.tokens
    }

    /// Applies every SCIM user write to `directory` as well.
    pub fn with_directory(mut self, directory: Arc<dyn directory::Directory>) -> ScimService {
        self.directory = Some(directory);
        self
    }

    /// Revokes, through `pki`, the certificates of users a SCIM write leaves inactive
    /// (disabled or deleted), when `revoke_on_disable`.
    pub fn with_certificates(mut self, pki: Arc<pki::Pki>, revoke_on_disable: bool) -> ScimService {
        self.certificates = Some((pki, revoke_on_disable));
        self
    }

    /// A user by id or lowercased userName, from the read cache when it has it.
    async fn read_user(&self, key: ReadKey) -> Result<Option<StoredResource>, StoreError> {
        let users = self.users.clone();
        let load = {
            let key = key.clone();
            move || async move {
                let found = match key {
                    ReadKey::Id(tenant, id) => users.get(tenant, id).await?,
                    ReadKey::Name(tenant, name) => users.by_user_name(tenant, &name).await?,
                };
                found.ok_or(Miss::Absent)
            }
        };
        let result = match &self.read_cache {
            Some(cache) => cache.get_or_load(key, load).await,
            None => load().await,
        };
        match result {
            Ok(user) => Ok(Some(user)),
            Err(Miss::Absent) => Ok(None),
            Err(Miss::Store(e)) => Err(e),
        }
    }

    /// Drops a user from the read cache on this instance when the guard goes: after a
    /// write, whatever its outcome, even when the request is abandoned mid-write. By id and
    /// by each userName it had or has.
    fn forget_on_drop(&self, tenant: Uuid, id: Uuid, names: &[&Value]) -> Forget {
        let mut keys = vec![ReadKey::Id(tenant, id)];
        for data in names {
            if let Some(name) = data.get("userName").and_then(Value::as_str) {
                keys.push(ReadKey::Name(tenant, name.to_lowercase()));
            }
        }
        Forget {
            cache: self.read_cache.clone(),
            keys,
        }
    }

    /// Generates a tenant's Secret Token; the previous one stops working at once. Only a
    /// hash is stored; the token is returned once.
    pub async fn new_token(&self, tenant: Uuid) -> Result<String, StoreError> {
        let token = secret_token::mint(self.token_key.load().await?, tenant);
        let row = Entity::new(tenant.to_string(), TOKEN_ROW)
            .with("Hash", hash(&token))
            .with("CreatedAt", OffsetDateTime::now_utc());
        self.tokens.upsert_replace(&row).await?;
        self.token_cache.invalidate(&tenant);
        Ok(token)
    }

    /// Revokes a tenant's token; false when there was none.
    pub async fn revoke_token(&self, tenant: Uuid) -> Result<bool, StoreError> {
        let gone = match self
            .tokens
            .delete(&tenant.to_string(), TOKEN_ROW, IfMatch::Any)
            .await
        {
            Ok(()) => true,
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e.into()),
        };
        self.token_cache.invalidate(&tenant);
        Ok(gone)
    }

    /// Loads the Secret Token key ahead of the first SCIM request (at start-up).
    pub async fn load_token_key(&self) -> Result<(), StoreError> {
        self.token_key.load().await.map(|_| ())
    }

    /// Checks a bearer token against the tenant's, in constant time, then that the tenant
    /// is active (a pending or offboarded tenant's token is refused like a wrong one). Its
    /// shape and MAC are checked first: a token this service did not make for this tenant
    /// costs no storage. The status comes from the registry's cache: an offboarding shows
    /// at once on the instance that made it, on others within
    /// [`crate::cache::limits::TENANTS`]'s hard age.
    pub async fn authenticate(
        &self,
        tenant: Uuid,
        token: Option<&str>,
        registry: &crate::access::AccessControl,
    ) -> Result<(), ScimError> {
        let unauthorized = || ScimError::new(401, None, "a valid Secret Token is required");
        let token = token.ok_or_else(unauthorized)?;
        let body = secret_token::parse(token).ok_or_else(unauthorized)?;
        let key = self.token_key.get().await.map_err(|e| {
            tracing::warn!(error = %e, "SCIM token key unavailable");
            ScimError::new(503, None, "storage is unavailable; try again")
        })?;
        if !secret_token::made_for(key, tenant, &body) {
            return Err(unauthorized());
        }
        let table = self.tokens.clone();
        let stored = self
            .token_cache
            .get_or_load(tenant, move || async move {
                Ok::<_, StoreError>(
                    table
                        .try_get(&tenant.to_string(), TOKEN_ROW)
                        .await?
                        .and_then(|e| e.get_str("Hash").map(str::to_string)),
                )
            })
            .await?;
        let stored = stored.ok_or_else(unauthorized)?;
        verify_slices_are_equal(hash(token).as_bytes(), stored.as_bytes())
            .map_err(|_| unauthorized())?;
        let active = registry
            .tenant(tenant)
            .await?
            .is_some_and(|t| t.status == crate::domain::TenantStatus::Active);
        if !active {
            return Err(ScimError::new(
                401,
                None,
                "the tenant is not active in this service",
            ));
        }
        Ok(())
    }

    /// Creates a user from a SCIM body; answers the user and its attributes (for the audit
    /// trail, whose event `journal` writes in the create's transaction).
    pub async fn create_user(
        &self,
        tenant: Uuid,
        base: &str,
        body: &Value,
        journal: Option<&dyn Journal>,
    ) -> Result<(Value, Vec<audit::Change>), ScimError> {
        let mut data = clean_user(body)?;
        let id = stamp_new(&mut data, "User", USER_KEYS)?;
        let user_name = data["userName"].as_str().unwrap_or_default().to_string();
        // users arrive Staged, or Invited with their invitation when the tenant says so
        let (admin, mut extra) = self.admin_for_new_user(tenant, id, &data).await?;
        let changes = audit::diff(&Value::Null, &data);
        extra.extend(journal.map(|j| j.row(id, &changes)));
        // a read that raced this create must not be cached
        let _forget = self.forget_on_drop(tenant, id, &[&data]);
        match self
            .users
            .create(tenant, id, &user_name, &data, &admin, extra)
            .await?
        {
            WriteOutcome::Written(stored) => {
                self.mirror(tenant, &stored).await?;
                Ok((present(&stored, base), changes))
            }
            WriteOutcome::Duplicate => Err(ScimError::new(
                409,
                Some("uniqueness"),
                format!("userName {user_name:?} is already taken"),
            )),
            _ => Err(ScimError::new(
                409,
                None,
                "the user could not be created; try again",
            )),
        }
    }

    /// One user.
    pub async fn get_user(&self, tenant: Uuid, base: &str, id: &str) -> Result<Value, ScimError> {
        let not_found = || ScimError::new(404, None, format!("User {id} not found"));
        let uuid = Uuid::try_parse(id).map_err(|_| not_found())?;
        let user = self
            .read_user(ReadKey::Id(tenant, uuid))
            .await?
            .ok_or_else(not_found)?;
        Ok(present(&user, base))
    }

    async fn find(&self, tenant: Uuid, id: &str) -> Result<StoredResource, ScimError> {
        let not_found = || ScimError::new(404, None, format!("User {id} not found"));
        let id = Uuid::try_parse(id).map_err(|_| not_found())?;
        self.users.get(tenant, id).await?.ok_or_else(not_found)
    }

    /// Users matching a filter, a page at a time (1-based start).
    pub async fn list_users(
        &self,
        tenant: Uuid,
        base: &str,
        filter: Option<&str>,
        start: usize,
        count: usize,
    ) -> Result<Value, ScimError> {
        let filter = parse_filter(filter)?;
        // equality on userName, externalId or id is an index lookup; the rest a scan that
        // keeps only the page asked for
        let candidates: Vec<StoredResource> = if let Some(name) = equality_on(&filter, "userName") {
            self.read_user(ReadKey::Name(tenant, name.to_lowercase()))
                .await?
                .into_iter()
                .collect()
        } else if let Some(external) = equality_on(&filter, "externalId") {
            self.users.by_external_id(tenant, external).await?
        } else if let Some(id) = equality_on(&filter, "id") {
            match Uuid::try_parse(id) {
                Ok(id) => self
                    .read_user(ReadKey::Id(tenant, id))
                    .await?
                    .into_iter()
                    .collect(),
                Err(_) => Vec::new(),
            }
        } else {
            let keep = filter.as_ref().map(|f| move |data: &Value| f.matches(data));
            let keep = keep
                .as_ref()
                .map(|k| k as &(dyn for<'v> Fn(&'v Value) -> bool + Sync));
            let start = start.max(1);
            let (page, total) = self
                .users
                .page(tenant, keep, start, count.min(MAX_RESULTS))
                .await?;
            let page = page.iter().map(|r| present(r, base)).collect();
            return Ok(scim::protocol::list_response(page, total, start));
        };
        let (page, total, start) = select_page(candidates, &filter, start, count);
        let page = page.iter().map(|r| present(r, base)).collect();
        Ok(scim::protocol::list_response(page, total, start))
    }

    /// Applies a PATCH, retrying on concurrent changes so no update is lost.
    #[cfg(test)]
    pub async fn patch_user(
        &self,
        tenant: Uuid,
        base: &str,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<Value, ScimError> {
        self.patch_user_changes(tenant, base, id, body, if_match, None)
            .await
            .map(|(user, _)| user)
    }

    /// [`Self::patch_user`], also answering the attributes it changed (for the audit trail).
    pub async fn patch_user_changes(
        &self,
        tenant: Uuid,
        base: &str,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
        journal: Option<&dyn Journal>,
    ) -> Result<(Value, Vec<audit::Change>), ScimError> {
        let ops = patch::parse_request(body)
            .map_err(|e| ScimError::new(400, Some(e.scim_type), e.detail))?;
        for _ in 0..8 {
            let current = self.find(tenant, id).await?;
            check_if_match(&current, if_match)?;
            let mut data = current.data.clone();
            patch::apply(&mut data, &ops)
                .map_err(|e| ScimError::new(400, Some(e.scim_type), e.detail))?;
            let data = finish_update(&current, data)?;
            let _forget = self.forget_on_drop(tenant, current.id, &[&current.data, &data]);
            let changes = audit::diff(&current.data, &data);
            let extra = journal
                .map(|j| j.row(current.id, &changes))
                .into_iter()
                .collect();
            match self.users.replace(tenant, &current, &data, extra).await? {
                WriteOutcome::Written(stored) => {
                    self.mirror(tenant, &stored).await?;
                    return Ok((present(&stored, base), changes));
                }
                WriteOutcome::Duplicate => {
                    return Err(ScimError::new(
                        409,
                        Some("uniqueness"),
                        "that userName is already taken",
                    ));
                }
                WriteOutcome::Changed | WriteOutcome::Missing => continue,
            }
        }
        Err(kept_changing("user"))
    }

    /// Replaces a user (PUT); without If-Match, a concurrent change is read again. Answers
    /// the user and the attributes it changed (for the audit trail).
    pub async fn replace_user_changes(
        &self,
        tenant: Uuid,
        base: &str,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
        journal: Option<&dyn Journal>,
    ) -> Result<(Value, Vec<audit::Change>), ScimError> {
        let body = clean_user(body)?;
        for _ in 0..8 {
            let current = self.find(tenant, id).await?;
            check_if_match(&current, if_match)?;
            let data = finish_update(&current, body.clone())?;
            let _forget = self.forget_on_drop(tenant, current.id, &[&current.data, &data]);
            let changes = audit::diff(&current.data, &data);
            let extra = journal
                .map(|j| j.row(current.id, &changes))
                .into_iter()
                .collect();
            match self.users.replace(tenant, &current, &data, extra).await? {
                WriteOutcome::Written(stored) => {
                    self.mirror(tenant, &stored).await?;
                    return Ok((present(&stored, base), changes));
                }
                WriteOutcome::Duplicate => {
                    return Err(ScimError::new(
                        409,
                        Some("uniqueness"),
                        "that userName is already taken",
                    ));
                }
                WriteOutcome::Changed | WriteOutcome::Missing if if_match.is_none() => continue,
                _ => {
                    return Err(changed_since_read("user"));
                }
            }
        }
        Err(kept_changing("user"))
    }

    /// Deletes a user and its memberships: one read (the user with its groups) and one
    /// transaction, conditional on the user, that takes the user and both rows of each
    /// membership (a user in very many groups has the rest removed after it).
    pub async fn delete_user(
        &self,
        tenant: Uuid,
        id: &str,
        if_match: Option<&str>,
        journal: Option<&dyn Journal>,
    ) -> Result<(), ScimError> {
        let not_found = || ScimError::new(404, None, format!("User {id} not found"));
        let user_id = Uuid::try_parse(id).map_err(|_| not_found())?;
        for _ in 0..4 {
            let Some((current, groups)) = self.users.get_with_groups(tenant, user_id).await? else {
                // a deletion interrupted after its commit: the retry finishes it
                self.users.finish_deletion(tenant, user_id).await?;
                self.mirror_delete(tenant, user_id).await?;
                return Err(not_found());
            };
            check_if_match(&current, if_match)?;
            // a pending invitation dies with its user
            let extra = crate::provisioning::admin::revoke_previous(tenant, &current.admin)
                .into_iter()
                .chain(journal.map(|j| Operation::Insert(j.row(current.id, &[]))))
                .collect();
            let _forget = self.forget_on_drop(tenant, current.id, &[&current.data]);
            match self.users.delete(tenant, &current, &groups, extra).await? {
                WriteOutcome::Written(_) => {
                    self.mirror_delete(tenant, user_id).await?;
                    return Ok(());
                }
                // the user changed meanwhile: read again, unless the client asked for the
                // version it had
                WriteOutcome::Missing => continue,
                WriteOutcome::Changed if if_match.is_none() => continue,
                _ => {
                    return Err(changed_since_read("user"));
                }
            }
        }
        Err(kept_changing("user"))
    }

    /// Finishes the tenant's user and group deletions that stopped between their commit
    /// and the end of their membership cleanup (Housekeeping calls this); answers how many.
    pub async fn finish_deletions(&self, tenant: Uuid) -> Result<usize, StoreError> {
        Ok(self.users.finish_deletions(tenant).await?
            + self.groups.finish_deletions(tenant).await?)
    }
}

impl ScimService {
    /// Creates a group (members optional).
    pub async fn create_group(
        &self,
        tenant: Uuid,
        base: &str,
        body: &Value,
    ) -> Result<Value, ScimError> {
        let (mut data, members) = clean_group(body)?;
        let id = stamp_new(&mut data, "Group", GROUP_KEYS)?;
        let name = data["displayName"].as_str().unwrap_or_default().to_string();
        match self.groups.create(tenant, id, &data, &members).await? {
            WriteOutcome::Written(stored) => Ok(present_group(&stored, base, Some(&members))),
            WriteOutcome::Duplicate => Err(ScimError::new(
                409,
                Some("uniqueness"),
                format!("displayName {name:?} is already taken"),
            )),
            _ => Err(ScimError::new(
                409,
                None,
                "the group could not be created; try again",
            )),
        }
    }

    async fn find_group(&self, tenant: Uuid, id: &str) -> Result<StoredResource, ScimError> {
        let not_found = || ScimError::new(404, None, format!("Group {id} not found"));
        let id = Uuid::try_parse(id).map_err(|_| not_found())?;
        self.groups.get(tenant, id).await?.ok_or_else(not_found)
    }

    /// One group; members are read only when not excluded.
    pub async fn get_group(
        &self,
        tenant: Uuid,
        base: &str,
        id: &str,
        with_members: bool,
    ) -> Result<Value, ScimError> {
        let group = self.find_group(tenant, id).await?;
        let members = if with_members {
            Some(self.groups.members(tenant, group.id).await?)
        } else {
            None
        };
        Ok(present_group(&group, base, members.as_deref()))
    }

    /// Groups matching a filter; `displayName eq` is an index lookup.
    pub async fn list_groups(
        &self,
        tenant: Uuid,
        base: &str,
        filter: Option<&str>,
        start: usize,
        count: usize,
        with_members: bool,
    ) -> Result<Value, ScimError> {
        let filter = parse_filter(filter)?;
        let candidates: Vec<StoredResource> =
            if let Some(name) = equality_on(&filter, "displayName") {
                self.groups
                    .by_name(tenant, name)
                    .await?
                    .into_iter()
                    .collect()
            } else if let Some(id) = equality_on(&filter, "id") {
                match Uuid::try_parse(id) {
                    Ok(id) => self.groups.get(tenant, id).await?.into_iter().collect(),
                    Err(_) => Vec::new(),
                }
            } else {
                self.groups.all(tenant).await?
            };
        let (selected, total, start) = select_page(candidates, &filter, start, count);
        let mut page = Vec::new();
        for group in &selected {
            let members = if with_members {
                Some(self.groups.members(tenant, group.id).await?)
            } else {
                None
            };
            page.push(present_group(group, base, members.as_deref()));
        }
        Ok(scim::protocol::list_response(page, total, start))
    }

    /// Applies a PATCH to a group: member operations (every spelling: a `members` path
    /// with or without a filter, or a `members` key in a pathless value) go to member rows,
    /// the rest to the group itself, and the group's version goes up either way. Retried
    /// on concurrent changes unless the client sent If-Match.
    pub async fn patch_group(
        &self,
        tenant: Uuid,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<(), ScimError> {
        let ops = patch::parse_request(body)
            .map_err(|e| ScimError::new(400, Some(e.scim_type), e.detail))?;
        let (member_ops, other_ops) =
            patch::split_attribute(ops, "members", scim::protocol::GROUP_SCHEMA);
        // every member list is checked before anything is written
        for op in &member_ops {
            member_objects(op.value.as_ref())?;
        }
        // plain adds and listed removes need not know who is in the group already
        let needs_members = !member_ops.iter().all(is_member_delta);
        for _ in 0..8 {
            let current = self.find_group(tenant, id).await?;
            check_if_match(&current, if_match)?;
            let mut data = current.data.clone();
            patch::apply(&mut data, &other_ops)
                .map_err(|e| ScimError::new(400, Some(e.scim_type), e.detail))?;
            if let Some(obj) = data.as_object_mut() {
                obj.remove("members");
            }
            let data = finish_group_update(&current, data)?;
            let changes = if needs_members {
                let existing = self.groups.members(tenant, current.id).await?;
                let wanted = apply_member_ops(existing.clone(), &member_ops)?;
                member_diff(&existing, &wanted)
            } else {
                member_delta(&member_ops)?
            };
            match self
                .groups
                .update(tenant, &current, &data, &changes)
                .await?
            {
                WriteOutcome::Written(_) => return Ok(()),
                WriteOutcome::Duplicate => {
                    return Err(ScimError::new(
                        409,
                        Some("uniqueness"),
                        "that displayName is already taken",
                    ));
                }
                // gone meanwhile: the next read answers 404
                WriteOutcome::Missing => continue,
                WriteOutcome::Changed if if_match.is_none() => continue,
                WriteOutcome::Changed => return Err(changed_since_read("group")),
            }
        }
        Err(kept_changing("group"))
    }

    /// Replaces a group (PUT), members included.
    pub async fn replace_group(
        &self,
        tenant: Uuid,
        base: &str,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<Value, ScimError> {
        let (body, members) = clean_group(body)?;
        for _ in 0..8 {
            let current = self.find_group(tenant, id).await?;
            check_if_match(&current, if_match)?;
            let data = finish_group_update(&current, body.clone())?;
            // read after the group: a member change since fails the write below
            let existing = self.groups.members(tenant, current.id).await?;
            let changes = member_diff(&existing, &members);
            match self
                .groups
                .update(tenant, &current, &data, &changes)
                .await?
            {
                WriteOutcome::Written(stored) => {
                    return Ok(present_group(&stored, base, Some(&members)));
                }
                WriteOutcome::Duplicate => {
                    return Err(ScimError::new(
                        409,
                        Some("uniqueness"),
                        "that displayName is already taken",
                    ));
                }
                WriteOutcome::Missing => continue,
                WriteOutcome::Changed if if_match.is_none() => continue,
                WriteOutcome::Changed => return Err(changed_since_read("group")),
            }
        }
        Err(kept_changing("group"))
    }

    /// Deletes a group and its member rows (with both rows of each membership).
    pub async fn delete_group(
        &self,
        tenant: Uuid,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), ScimError> {
        let not_found = || ScimError::new(404, None, format!("Group {id} not found"));
        let group_id = Uuid::try_parse(id).map_err(|_| not_found())?;
        // members written meanwhile change the group: read it again (a large group leaves
        // a tombstone at once, so only a small one can lose this race)
        for _ in 0..8 {
            let Some(group) = self.groups.get(tenant, group_id).await? else {
                // a deletion interrupted after its commit: the retry finishes it
                self.groups.finish_deletion(tenant, group_id).await?;
                return Err(not_found());
            };
            check_if_match(&group, if_match)?;
            match self.groups.delete(tenant, &group).await? {
                WriteOutcome::Written(_) => return Ok(()),
                WriteOutcome::Missing => continue,
                WriteOutcome::Changed if if_match.is_none() => continue,
                _ => return Err(changed_since_read("group")),
            }
        }
        Err(kept_changing("group"))
    }
}

/// True for a member operation whose effect does not depend on the current members: an add
/// of listed members, or Entra's older remove of listed members.
fn is_member_delta(op: &patch::PatchOp) -> bool {
    let plain = op
        .path
        .as_ref()
        .is_some_and(|p| p.filter.is_none() && p.sub.is_none() && p.attr.sub.is_none());
    plain
        && match op.op {
            patch::OpKind::Add => true,
            patch::OpKind::Remove => op.value.as_ref().is_some_and(|v| !v.is_null()),
            patch::OpKind::Replace => false,
        }
}

/// A member's value.
fn value_of(member: &Value) -> &str {
    member["value"].as_str().unwrap_or_default()
}

/// What a sequence of [`is_member_delta`] operations changes, in order (a member added
/// and then removed is removed, and the other way round).
fn member_delta(ops: &[patch::PatchOp]) -> Result<MemberChanges, ScimError> {
    // the last word on each value, in the order values first appear
    let mut last: HashMap<String, Option<Value>> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for op in ops {
        for member in member_objects(op.value.as_ref())? {
            let value = value_of(&member).to_string();
            if !last.contains_key(&value) {
                order.push(value.clone());
            }
            let word = (op.op != patch::OpKind::Remove).then_some(member);
            last.insert(value, word);
        }
    }
    let mut changes = MemberChanges::default();
    for value in order {
        match last.remove(&value).flatten() {
            Some(member) => changes.upsert.push(member),
            None => changes.remove.push(value),
        }
    }
    Ok(changes)
}

/// The members after `ops`, applied in order to `members`: delta operations as
/// [`member_delta`] reads them, the rest by the PATCH engine on the member list.
fn apply_member_ops(
    mut members: Vec<Value>,
    ops: &[patch::PatchOp],
) -> Result<Vec<Value>, ScimError> {
    for op in ops {
        if is_member_delta(op) {
            let changes = member_delta(std::slice::from_ref(op))?;
            let touched: HashSet<&str> = changes
                .remove
                .iter()
                .map(String::as_str)
                .chain(changes.upsert.iter().map(value_of))
                .collect();
            members.retain(|m| !touched.contains(value_of(m)));
            members.extend(changes.upsert.iter().cloned());
        } else {
            let mut resource = json!({ "members": members });
            patch::apply(&mut resource, std::slice::from_ref(op))
                .map_err(|e| ScimError::new(400, Some(e.scim_type), e.detail))?;
            members = unique_members(member_objects(resource.get("members"))?);
        }
    }
    Ok(members)
}

/// Members with one entry per value, where it first appears, as last given.
fn unique_members(members: Vec<Value>) -> Vec<Value> {
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Value> = Vec::new();
    for member in members {
        match at.get(value_of(&member)) {
            Some(&i) => out[i] = member,
            None => {
                at.insert(value_of(&member).to_string(), out.len());
                out.push(member);
            }
        }
    }
    out
}

/// The changes that turn `existing` members into `wanted`.
fn member_diff(existing: &[Value], wanted: &[Value]) -> MemberChanges {
    let wanted = unique_members(wanted.to_vec());
    let had: HashMap<&str, &Value> = existing.iter().map(|m| (value_of(m), m)).collect();
    let keep: HashSet<&str> = wanted.iter().map(value_of).collect();
    MemberChanges {
        remove: existing
            .iter()
            .map(value_of)
            .filter(|value| !keep.contains(value))
            .map(str::to_string)
            .collect(),
        upsert: wanted
            .iter()
            .filter(|m| had.get(value_of(m)).copied() != Some(*m))
            .cloned()
            .collect(),
    }
}

/// Members from `[{"value": id, "display"?, "type"?}, ...]`, a single object, or bare
/// strings, as `{"value", "display"?, "type"?}` objects (`$ref` and the rest dropped).
/// Longest member `value` in bytes (ids are 36) and `display` or `type` in characters.
const MAX_MEMBER_VALUE: usize = 256;
const MAX_MEMBER_TEXT: usize = 1024;

/// The members a body names, as `{"value", "display"?, "type"?}`; entries without a value
/// are skipped, oversized ones refused.
fn member_objects(value: Option<&Value>) -> Result<Vec<Value>, ScimError> {
    let too_long = |what: &str, max: usize| {
        ScimError::new(
            400,
            Some("invalidValue"),
            format!("a member's {what} is longer than {max} characters"),
        )
    };
    let one = |v: &Value| -> Result<Option<Value>, ScimError> {
        let (id, source) = match v {
            Value::Object(o) => match o.get("value").and_then(Value::as_str) {
                Some(id) => (id.to_string(), Some(o)),
                None => return Ok(None),
            },
            Value::String(s) => (s.clone(), None),
            _ => return Ok(None),
        };
        if id.is_empty() {
            return Ok(None);
        }
        // one spelling per user id, so a member is one row whatever case it came in
        let id = match Uuid::try_parse(&id) {
            Ok(uuid) => uuid.to_string(),
            Err(_) => id,
        };
        // in bytes: the value becomes part of a Table key (1 KiB at most, escapes triple)
        if id.len() > MAX_MEMBER_VALUE {
            return Err(ScimError::new(
                400,
                Some("invalidValue"),
                format!("a member's value is longer than {MAX_MEMBER_VALUE} bytes"),
            ));
        }
        let mut member = serde_json::Map::new();
        member.insert("value".into(), json!(id));
        for name in ["display", "type"] {
            if let Some(v) = source.and_then(|o| o.get(name)).and_then(Value::as_str) {
                if v.chars().count() > MAX_MEMBER_TEXT {
                    return Err(too_long(name, MAX_MEMBER_TEXT));
                }
                member.insert(name.into(), json!(v));
            }
        }
        Ok(Some(Value::Object(member)))
    };
    let items: Vec<&Value> = match value {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(other) => vec![other],
        None => Vec::new(),
    };
    let mut members = Vec::new();
    for item in items {
        members.extend(one(item)?);
    }
    Ok(members)
}

/// RFC 7643's types of the common attributes: `schemas` a list of URIs, `externalId` a
/// string (null, as Entra may send it, means none).
fn check_types(data: &serde_json::Map<String, Value>) -> Result<(), ScimError> {
    let invalid = |detail: &str| Err(ScimError::new(400, Some("invalidValue"), detail));
    match data.get("schemas") {
        None => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(_) => return invalid("schemas must be a list of schema URIs"),
    }
    match data.get("externalId") {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(_) => invalid("externalId must be a string"),
    }
}

fn clean_group(body: &Value) -> Result<(Value, Vec<Value>), ScimError> {
    let Value::Object(map) = body else {
        return Err(ScimError::new(
            400,
            Some("invalidSyntax"),
            "the body must be a JSON object",
        ));
    };
    let mut data = map.clone();
    check_types(&data)?;
    if data
        .get("displayName")
        .and_then(Value::as_str)
        .is_none_or(|n| n.trim().is_empty())
    {
        return Err(ScimError::new(
            400,
            Some("invalidValue"),
            "displayName is required",
        ));
    }
    let members = unique_members(member_objects(data.get("members"))?);
    data.remove("members");
    data.remove("id");
    data.remove("meta");
    data.entry("schemas")
        .or_insert_with(|| json!([scim::protocol::GROUP_SCHEMA]));
    Ok((Value::Object(data), members))
}

fn finish_group_update(current: &StoredResource, data: Value) -> Result<Value, ScimError> {
    finish(current, data, "displayName", GROUP_KEYS)
}

fn present_group(stored: &StoredResource, base: &str, members: Option<&[Value]>) -> Value {
    let mut data = stored.data.clone();
    data["meta"]["version"] = json!(version_tag(stored.version));
    data["meta"]["location"] = json!(format!("{base}/Groups/{}", stored.id));
    if let Some(members) = members {
        data["members"] = Value::Array(members.to_vec());
    }
    data
}

/// Parses a `filter` query parameter; a bad one is 400 `invalidFilter`.
fn parse_filter(filter: Option<&str>) -> Result<Option<Filter>, ScimError> {
    filter
        .map(|f| {
            Filter::parse(f).map_err(|e| ScimError::new(400, Some("invalidFilter"), e.to_string()))
        })
        .transpose()
}

/// The value when the whole filter is `attr eq "value"` on a core attribute `attr`.
fn equality_on<'a>(filter: &'a Option<Filter>, attr: &str) -> Option<&'a str> {
    let (path, value) = filter.as_ref()?.equality()?;
    (path.uri.is_none() && path.sub.is_none() && path.attr.eq_ignore_ascii_case(attr))
        .then_some(value)
}

/// The candidates that match, in a stable order, cut to one page (1-based start).
fn select_page(
    candidates: Vec<StoredResource>,
    filter: &Option<Filter>,
    start: usize,
    count: usize,
) -> (Vec<StoredResource>, usize, usize) {
    let mut matching: Vec<StoredResource> = candidates
        .into_iter()
        .filter(|r| filter.as_ref().is_none_or(|f| f.matches(&r.data)))
        .collect();
    matching.sort_by_key(|r| r.id);
    let total = matching.len();
    let start = start.max(1);
    let page = matching
        .into_iter()
        .skip(start - 1)
        .take(count.min(MAX_RESULTS))
        .collect();
    (page, total, start)
}

/// 412: the client's If-Match no longer holds.
fn changed_since_read(what: &str) -> ScimError {
    ScimError::new(412, None, format!("the {what} changed since it was read"))
}

/// 409: concurrent writers kept winning the race; the client may retry.
pub(crate) fn kept_changing(what: &str) -> ScimError {
    ScimError::new(409, None, format!("the {what} kept changing; try again"))
}

fn timestamp(t: OffsetDateTime) -> String {
    host::invocation::format_timestamp(t)
}

fn version_tag(version: i64) -> String {
    format!("W/\"{version}\"")
}

fn check_if_match(current: &StoredResource, if_match: Option<&str>) -> Result<(), ScimError> {
    match if_match.map(str::trim) {
        None | Some("*") => Ok(()),
        Some(tag) if tag == version_tag(current.version) => Ok(()),
        Some(_) => Err(ScimError::new(
            412,
            None,
            "If-Match does not match the current version",
        )),
    }
}

/// Carries id and meta over an update, and checks the result is still a valid user.
fn finish_update(current: &StoredResource, data: Value) -> Result<Value, ScimError> {
    finish(current, data, "userName", USER_KEYS)
}

/// Carries id and meta over an update; the `required` attribute must still be there and
/// the resource must still fit.
fn finish(
    current: &StoredResource,
    mut data: Value,
    required: &str,
    keys: &[&str],
) -> Result<Value, ScimError> {
    data["id"] = current.data["id"].clone();
    let mut meta = current.data["meta"].clone();
    meta["lastModified"] = json!(timestamp(OffsetDateTime::now_utc()));
    data["meta"] = meta;
    if data
        .get(required)
        .and_then(Value::as_str)
        .is_none_or(|v| v.trim().is_empty())
    {
        return Err(ScimError::new(
            400,
            Some("invalidValue"),
            format!("{required} is required"),
        ));
    }
    if let Some(map) = data.as_object() {
        check_types(map)?;
    }
    fits(&data, keys)?;
    Ok(data)
}

/// Gives a new resource its id and meta, and checks it fits; answers the id.
fn stamp_new(data: &mut Value, resource_type: &str, keys: &[&str]) -> Result<Uuid, ScimError> {
    let id = Uuid::new_v4();
    let now = timestamp(OffsetDateTime::now_utc());
    data["id"] = json!(id.to_string());
    data["meta"] = json!({"resourceType": resource_type, "created": now, "lastModified": now});
    fits(data, keys)?;
    Ok(id)
}

/// The most a stored resource may hold, in UTF-16 code units: Table Storage keeps a string
/// property up to 64 KiB, and the resource is one (group members are stored apart).
pub const MAX_RESOURCE_UNITS: usize = 32_000;

/// Longest `userName`, `externalId` and group `displayName`, in bytes: each is part of a
/// Table key (1 KiB at most, escapes triple).
pub const MAX_KEYED_VALUE: usize = 256;

/// The attributes of each resource type that become Table keys.
const USER_KEYS: &[&str] = &["userName", "externalId"];
const GROUP_KEYS: &[&str] = &["displayName"];

/// Refuses a resource too large to store, or with a keyed attribute too long, before
/// anything is written.
fn fits(data: &Value, keyed: &[&str]) -> Result<(), ScimError> {
    for attr in keyed {
        if let Some(text) = data.get(*attr).and_then(Value::as_str)
            && text.len() > MAX_KEYED_VALUE
        {
            return Err(ScimError::new(
                400,
                Some("invalidValue"),
                format!("{attr} is longer than {MAX_KEYED_VALUE} bytes"),
            ));
        }
    }
    let units = data.to_string().encode_utf16().count();
    if units > MAX_RESOURCE_UNITS {
        return Err(ScimError::new(
            400,
            Some("invalidValue"),
            format!(
                "the resource would be {units} characters long; at most {MAX_RESOURCE_UNITS} are kept"
            ),
        ));
    }
    Ok(())
}

/// Validates a create/replace body: an object with a userName; string booleans fixed.
fn clean_user(body: &Value) -> Result<Value, ScimError> {
    let Value::Object(map) = body else {
        return Err(ScimError::new(
            400,
            Some("invalidSyntax"),
            "the body must be a JSON object",
        ));
    };
    check_types(map)?;
    let mut data = Value::Object(map.clone());
    let user_name = data
        .get("userName")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or_default();
    if user_name.is_empty() {
        return Err(ScimError::new(
            400,
            Some("invalidValue"),
            "userName is required",
        ));
    }
    if let Some(obj) = data.as_object_mut() {
        obj.remove("id");
        obj.remove("meta");
        if !obj.contains_key("schemas") {
            obj.insert("schemas".into(), json!([scim::protocol::USER_SCHEMA]));
        }
        match obj.get("active") {
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => {
                obj.insert("active".into(), json!(true));
            }
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => {
                obj.insert("active".into(), json!(false));
            }
            Some(Value::Bool(_)) => {}
            None => {
                obj.insert("active".into(), json!(true));
            }
            Some(_) => {
                return Err(ScimError::new(
                    400,
                    Some("invalidValue"),
                    "active must be a boolean",
                ));
            }
        }
    }
    Ok(data)
}

/// The resource as returned: with meta.version and meta.location.
fn present(stored: &StoredResource, base: &str) -> Value {
    let mut data = stored.data.clone();
    data["meta"]["version"] = json!(version_tag(stored.version));
    data["meta"]["location"] = json!(format!("{base}/Users/{}", stored.id));
    data
}

pub mod admin;
mod mirror;
mod secret_token;
#[cfg(test)]
mod table_requests;
