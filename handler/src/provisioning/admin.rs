//! What the product decides about the directory Entra provisions: per-tenant SCIM settings
//! (automatic invitation, mobile authentication for users and for groups), per-user and
//! per-group overrides, each user's status (`Staged`, `Invited`, `Active`), and invitations:
//! single-use activation links in a per-tenant outbox that a mailer reads.
//!
//! Rows live in the tenant's partition of the SCIM table beside the users, so creating a
//! user with its invitation, or redeeming an invitation and activating its user, is one
//! transaction.

use std::time::Duration;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tables::{Entity, IfMatch, Operation};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::provisioning::{ScimError, ScimService, hash, kept_changing};
use crate::store::StoreError;
use crate::store::scim::{StoredResource, WriteOutcome};
use crate::store::scim_keys as keys;

/// Hours an invitation stays valid unless the tenant's settings say otherwise.
pub const DEFAULT_INVITATION_HOURS: u32 = 168;
/// The longest validity a tenant may choose (30 days).
pub const MAX_INVITATION_HOURS: u32 = 720;

/// A tenant's SCIM settings. Every field is required on PUT except the validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"automatic_invitation": true, "require_mobile_auth_users": false, "require_mobile_auth_groups": false, "invitation_valid_hours": 168}))]
pub struct ScimSettings {
    /// Users provisioned from now on get an invitation at once.
    pub automatic_invitation: bool,
    /// Users provisioned by SCIM must use the mobile app.
    pub require_mobile_auth_users: bool,
    /// Data in groups provisioned by SCIM is hidden from users without the mobile app.
    pub require_mobile_auth_groups: bool,
    /// How long an invitation's link works.
    #[serde(default = "default_hours")]
    #[schema(minimum = 1, maximum = 720, required = false)]
    pub invitation_valid_hours: u32,
}

fn default_hours() -> u32 {
    DEFAULT_INVITATION_HOURS
}

impl Default for ScimSettings {
    fn default() -> ScimSettings {
        ScimSettings {
            automatic_invitation: false,
            require_mobile_auth_users: false,
            require_mobile_auth_groups: false,
            invitation_valid_hours: DEFAULT_INVITATION_HOURS,
        }
    }
}

impl ScimSettings {
    /// Checks the values a PUT may not set.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_INVITATION_HOURS).contains(&self.invitation_valid_hours) {
            return Err(format!(
                "invitation_valid_hours must be between 1 and {MAX_INVITATION_HOURS}"
            ));
        }
        Ok(())
    }

    fn from_row(e: &Entity) -> ScimSettings {
        let d = ScimSettings::default();
        ScimSettings {
            automatic_invitation: e
                .get_bool("AutomaticInvitation")
                .unwrap_or(d.automatic_invitation),
            require_mobile_auth_users: e
                .get_bool("RequireMobileAuthUsers")
                .unwrap_or(d.require_mobile_auth_users),
            require_mobile_auth_groups: e
                .get_bool("RequireMobileAuthGroups")
                .unwrap_or(d.require_mobile_auth_groups),
            invitation_valid_hours: e
                .get_i64("InvitationValidHours")
                .and_then(|h| u32::try_from(h).ok())
                .unwrap_or(d.invitation_valid_hours),
        }
    }
}

/// A per-user or per-group override: `null` (or absent) inherits the tenant's setting.
/// A user's or group's own settings (null or absent: the tenant's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    #[serde(default)]
    pub require_mobile_auth: Option<bool>,
}

impl Overrides {
    fn of(admin: &Value) -> Overrides {
        Overrides {
            require_mobile_auth: admin.get("require_mobile_auth").and_then(Value::as_bool),
        }
    }
}

/// Where a user is on the way from provisioned to using the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    /// Provisioned; not invited yet.
    Staged,
    /// An invitation is waiting to be redeemed.
    Invited,
    /// The user redeemed an invitation.
    Active,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Staged => "Staged",
            UserStatus::Invited => "Invited",
            UserStatus::Active => "Active",
        }
    }

    pub fn parse(text: &str) -> Option<UserStatus> {
        [UserStatus::Staged, UserStatus::Invited, UserStatus::Active]
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text))
    }

    fn of(admin: &Value) -> UserStatus {
        admin
            .get("status")
            .and_then(Value::as_str)
            .and_then(UserStatus::parse)
            .unwrap_or(UserStatus::Staged)
    }
}

/// An invitation's state as stored; `expired` is derived when listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InvitationState {
    Pending,
    Sent,
    Redeemed,
    Revoked,
}

impl InvitationState {
    fn as_str(self) -> &'static str {
        match self {
            InvitationState::Pending => "pending",
            InvitationState::Sent => "sent",
            InvitationState::Redeemed => "redeemed",
            InvitationState::Revoked => "revoked",
        }
    }

    fn parse(text: &str) -> InvitationState {
        match text {
            "pending" => InvitationState::Pending,
            "sent" => InvitationState::Sent,
            "redeemed" => InvitationState::Redeemed,
            _ => InvitationState::Revoked,
        }
    }
}

/// The activation code: the tenant and invitation (to find the row with one read) and 32
/// random bytes; only its SHA-256 is kept once the mailer has taken the link.
fn new_code(tenant: Uuid, invitation: Uuid) -> String {
    let mut bytes = [0u8; 64];
    bytes[..16].copy_from_slice(tenant.as_bytes());
    bytes[16..32].copy_from_slice(invitation.as_bytes());
    aws_lc_rs::rand::fill(&mut bytes[32..]).expect("the system random source works");
    format!("inv_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The tenant an activation code belongs to, when it is one.
pub fn code_tenant(code: &str) -> Option<Uuid> {
    parse_code(code).map(|(tenant, _)| tenant)
}

/// The tenant and invitation an activation code names, if it is one (not checked).
pub fn parse_code(code: &str) -> Option<(Uuid, Uuid)> {
    let bytes = URL_SAFE_NO_PAD
        .decode(code.trim().strip_prefix("inv_")?)
        .ok()?;
    if bytes.len() != 64 {
        return None;
    }
    Some((
        Uuid::from_slice(&bytes[..16]).ok()?,
        Uuid::from_slice(&bytes[16..32]).ok()?,
    ))
}

fn rfc3339(t: OffsetDateTime) -> String {
    host::invocation::format_timestamp(t)
}

/// Who a redeemed invitation activated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeemed {
    pub tenant: Uuid,
    pub user: Uuid,
    pub user_name: String,
}

fn gone(code: &'static str, detail: &str) -> ScimError {
    ScimError::new(410, Some(code), detail)
}

impl ScimService {
    /// The tenant's settings (defaults until an admin sets them); cached briefly.
    pub async fn settings(&self, tenant: Uuid) -> Result<ScimSettings, StoreError> {
        let table = self.tokens.clone();
        self.settings_cache
            .get_or_load(tenant, move || async move {
                Ok::<_, StoreError>(
                    table
                        .try_get(&keys::partition(tenant), keys::SETTINGS)
                        .await?
                        .as_ref()
                        .map(ScimSettings::from_row)
                        .unwrap_or_default(),
                )
            })
            .await
    }

    /// Replaces the tenant's settings; they apply to what is provisioned from now on.
    pub async fn put_settings(
        &self,
        tenant: Uuid,
        settings: &ScimSettings,
    ) -> Result<(), StoreError> {
        let row = Entity::new(keys::partition(tenant), keys::SETTINGS)
            .with("AutomaticInvitation", settings.automatic_invitation)
            .with("RequireMobileAuthUsers", settings.require_mobile_auth_users)
            .with(
                "RequireMobileAuthGroups",
                settings.require_mobile_auth_groups,
            )
            .with(
                "InvitationValidHours",
                i64::from(settings.invitation_valid_hours),
            )
            .with("UpdatedAt", OffsetDateTime::now_utc());
        self.tokens.upsert_replace(&row).await?;
        self.settings_cache.invalidate(&tenant);
        Ok(())
    }

    /// The product's state for a new user, and the invitation row to write with it when
    /// the tenant invites automatically.
    pub(crate) async fn admin_for_new_user(
        &self,
        tenant: Uuid,
        id: Uuid,
        data: &Value,
    ) -> Result<(Value, Vec<Entity>), StoreError> {
        let settings = self.settings(tenant).await?;
        // a user disabled in the directory is not invited (the manual invite refuses too)
        if !settings.automatic_invitation || data["active"] == json!(false) {
            return Ok((json!({"status": UserStatus::Staged.as_str()}), Vec::new()));
        }
        let (invitation, row) = self.invitation_row(tenant, id, data, &settings);
        Ok((
            json!({"status": UserStatus::Invited.as_str(), "invitation": invitation.to_string()}),
            vec![row],
        ))
    }

    fn invitation_row(
        &self,
        tenant: Uuid,
        user: Uuid,
        data: &Value,
        settings: &ScimSettings,
    ) -> (Uuid, Entity) {
        let id = Uuid::new_v4();
        let code = new_code(tenant, id);
        let now = OffsetDateTime::now_utc();
        let expires = now + Duration::from_secs(u64::from(settings.invitation_valid_hours) * 3600);
        let link = format!(
            "{}/api/activate?code={code}",
            self.public_base_url.trim_end_matches('/')
        );
        let mut row = Entity::new(keys::partition(tenant), keys::invitation(id))
            .with("InvitationId", id.to_string())
            .with("UserId", user.to_string())
            .with(
                "UserName",
                data["userName"].as_str().unwrap_or_default().to_string(),
            )
            .with("State", InvitationState::Pending.as_str())
            .with("Hash", hash(&code))
            .with("Link", link)
            .with("CreatedAt", now)
            .with("ExpiresAt", expires);
        if let Some(email) = email_of(data) {
            row.set("Email", email);
        }
        if let Some(name) = data["displayName"].as_str() {
            row.set("DisplayName", name.to_string());
        }
        (id, row)
    }

    async fn user_for_admin(&self, tenant: Uuid, id: Uuid) -> Result<StoredResource, ScimError> {
        self.users
            .get(tenant, id)
            .await?
            .ok_or_else(|| ScimError::new(404, None, format!("user {id} is not provisioned")))
    }

    /// A user as the product sees it: identity, status, settings with their sources.
    pub async fn admin_user(&self, tenant: Uuid, id: Uuid) -> Result<Value, ScimError> {
        let user = self.user_for_admin(tenant, id).await?;
        let settings = self.settings(tenant).await?;
        Ok(admin_user_view(&user, &settings))
    }

    /// Every provisioned user, optionally only those with one status.
    pub async fn admin_users(
        &self,
        tenant: Uuid,
        status: Option<UserStatus>,
    ) -> Result<Vec<Value>, ScimError> {
        let settings = self.settings(tenant).await?;
        Ok(self
            .users
            .all(tenant)
            .await?
            .iter()
            .filter(|u| status.is_none_or(|s| UserStatus::of(&u.admin) == s))
            .map(|u| admin_user_view(u, &settings))
            .collect())
    }

    /// Sets a user's overrides; answers the user's view.
    pub async fn set_user_overrides(
        &self,
        tenant: Uuid,
        id: Uuid,
        overrides: Overrides,
    ) -> Result<Value, ScimError> {
        for _ in 0..8 {
            let user = self.user_for_admin(tenant, id).await?;
            let mut admin = user.admin.clone();
            admin["require_mobile_auth"] = json!(overrides.require_mobile_auth);
            match self
                .users
                .set_admin(tenant, &user, &admin, Vec::new())
                .await?
            {
                WriteOutcome::Written(user) => {
                    return Ok(admin_user_view(&user, &self.settings(tenant).await?));
                }
                _ => continue,
            }
        }
        Err(kept_changing("user"))
    }

    /// Sets a group's overrides; answers the group's view.
    pub async fn set_group_overrides(
        &self,
        tenant: Uuid,
        id: Uuid,
        overrides: Option<Overrides>,
    ) -> Result<Value, ScimError> {
        for _ in 0..8 {
            let group = self.groups.get(tenant, id).await?.ok_or_else(|| {
                ScimError::new(404, None, format!("group {id} is not provisioned"))
            })?;
            let settings = self.settings(tenant).await?;
            let Some(overrides) = overrides else {
                return Ok(admin_group_view(&group, &settings));
            };
            let mut admin = group.admin.clone();
            admin["require_mobile_auth"] = json!(overrides.require_mobile_auth);
            match self.groups.set_admin(tenant, &group, &admin).await? {
                WriteOutcome::Written(group) => return Ok(admin_group_view(&group, &settings)),
                _ => continue,
            }
        }
        Err(kept_changing("group"))
    }

    /// Invites a user now (a new invitation replaces any earlier one, which stops working).
    /// Answers the invitation with its link.
    pub async fn invite(&self, tenant: Uuid, id: Uuid) -> Result<Value, ScimError> {
        let settings = self.settings(tenant).await?;
        for _ in 0..8 {
            let user = self.user_for_admin(tenant, id).await?;
            if UserStatus::of(&user.admin) == UserStatus::Active {
                return Err(ScimError::new(
                    409,
                    Some("already_active"),
                    "the user has already activated their account",
                ));
            }
            if user.data["active"] == json!(false) {
                return Err(ScimError::new(
                    409,
                    Some("user_inactive"),
                    "the user is disabled in the customer's directory",
                ));
            }
            let (invitation, row) = self.invitation_row(tenant, id, &user.data, &settings);
            let mut extra = vec![Operation::Insert(row.clone())];
            extra.extend(revoke_previous(tenant, &user.admin));
            let mut admin = user.admin.clone();
            admin["status"] = json!(UserStatus::Invited.as_str());
            admin["invitation"] = json!(invitation.to_string());
            match self.users.set_admin(tenant, &user, &admin, extra).await? {
                WriteOutcome::Written(_) => return Ok(invitation_view(&row, true)),
                _ => continue,
            }
        }
        Err(kept_changing("user"))
    }

    /// The tenant's invitations, newest first; `state` filters (pending, sent, redeemed,
    /// revoked, expired). Links are shown only while an invitation is pending.
    pub async fn invitations(
        &self,
        tenant: Uuid,
        state: Option<&str>,
    ) -> Result<Vec<Value>, ScimError> {
        let query = keys::invitations().query(&keys::partition(tenant));
        let mut rows: Vec<Value> = self
            .tokens
            .query_all(query)
            .await
            .map_err(StoreError::from)?
            .iter()
            .map(|row| invitation_view(row, true))
            .filter(|v| state.is_none_or(|s| v["state"] == s))
            .collect();
        rows.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()));
        Ok(rows)
    }

    async fn invitation(
        &self,
        tenant: Uuid,
        id: Uuid,
    ) -> Result<(Entity, InvitationState), ScimError> {
        let row = self
            .tokens
            .try_get(&keys::partition(tenant), &keys::invitation(id))
            .await
            .map_err(StoreError::from)?
            .ok_or_else(|| ScimError::new(404, None, format!("invitation {id} not found")))?;
        let state = InvitationState::parse(row.get_str("State").unwrap_or_default());
        Ok((row, state))
    }

    /// The mailer took a pending invitation: its link is erased, only the hash stays.
    pub async fn mark_sent(&self, tenant: Uuid, id: Uuid) -> Result<Value, ScimError> {
        let (mut row, state) = self.invitation(tenant, id).await?;
        if state != InvitationState::Pending {
            return Err(ScimError::new(
                409,
                Some("not_pending"),
                format!("the invitation is {}", state.as_str()),
            ));
        }
        if row
            .get_datetime("ExpiresAt")
            .is_none_or(|t| t <= OffsetDateTime::now_utc())
        {
            return Err(ScimError::new(
                409,
                Some("not_pending"),
                "the invitation has expired; invite the user again",
            ));
        }
        let etag = row.etag.clone().unwrap_or_else(|| tables::ETag("*".into()));
        row.properties.remove("Link");
        row.set("State", InvitationState::Sent.as_str());
        row.set("SentAt", OffsetDateTime::now_utc());
        match self.tokens.replace(&row, IfMatch::ETag(etag)).await {
            Ok(_) => Ok(invitation_view(&row, false)),
            Err(e) if e.is_precondition_failed() => Err(ScimError::new(
                409,
                Some("not_pending"),
                "the invitation changed; read it again",
            )),
            Err(e) => Err(StoreError::from(e).into()),
        }
    }

    /// Revokes an invitation that was not redeemed; the user goes back to Staged.
    pub async fn revoke_invitation(&self, tenant: Uuid, id: Uuid) -> Result<(), ScimError> {
        for _ in 0..8 {
            // the invitation as it is now, changed only if it stays so (a redemption that
            // lands first wins, and this answers 409)
            let (row, state) = self.invitation(tenant, id).await?;
            if matches!(state, InvitationState::Redeemed | InvitationState::Revoked) {
                return Err(ScimError::new(
                    409,
                    Some("not_pending"),
                    format!("the invitation is {}", state.as_str()),
                ));
            }
            let user_id = row
                .get_str("UserId")
                .and_then(|u| Uuid::try_parse(u).ok())
                .ok_or_else(|| StoreError::Corrupt("invitation without UserId".into()))?;
            let etag = row.etag.clone().unwrap_or_else(|| tables::ETag("*".into()));
            let revoke = Operation::Merge(revoked_row(tenant, id), IfMatch::ETag(etag));
            let Some(user) = self.users.get(tenant, user_id).await? else {
                // the user is gone: only the invitation is left to revoke
                match self.tokens.transact(std::slice::from_ref(&revoke)).await {
                    Ok(_) => return Ok(()),
                    Err(tables::Error::Batch { source, .. }) if source.is_precondition_failed() => {
                        continue;
                    }
                    Err(e) => return Err(StoreError::from(e).into()),
                }
            };
            let mut admin = user.admin.clone();
            if admin["invitation"] == json!(id.to_string()) {
                admin["status"] = json!(UserStatus::Staged.as_str());
                if let Some(map) = admin.as_object_mut() {
                    map.remove("invitation");
                }
            }
            match self
                .users
                .set_admin(tenant, &user, &admin, vec![revoke])
                .await?
            {
                WriteOutcome::Written(_) => return Ok(()),
                _ => continue,
            }
        }
        Err(kept_changing("invitation"))
    }

    /// Redeems an activation code once: the invitation becomes `redeemed` and its user
    /// `Active` in one transaction. `peek` only checks it.
    pub async fn redeem(&self, code: &str, peek: bool) -> Result<Redeemed, ScimError> {
        let unknown = || ScimError::new(404, Some("unknown_code"), "no such invitation");
        let (tenant, id) = parse_code(code).ok_or_else(|| {
            ScimError::new(
                400,
                Some("malformed_code"),
                "that is not an activation code",
            )
        })?;
        for _ in 0..8 {
            let (row, state) = match self.invitation(tenant, id).await {
                Ok(found) => found,
                Err(e) if e.status == 404 => return Err(unknown()),
                Err(e) => return Err(e),
            };
            let stored = row.get_str("Hash").unwrap_or_default();
            verify_slices_are_equal(hash(code.trim()).as_bytes(), stored.as_bytes())
                .map_err(|_| unknown())?;
            match state {
                InvitationState::Redeemed => {
                    return Err(gone("used", "this activation link was already used"));
                }
                InvitationState::Revoked => {
                    return Err(gone("revoked", "this activation link was withdrawn"));
                }
                InvitationState::Pending | InvitationState::Sent => {}
            }
            if row
                .get_datetime("ExpiresAt")
                .is_none_or(|t| t <= OffsetDateTime::now_utc())
            {
                return Err(gone("expired", "this activation link has expired"));
            }
            let user_id = row
                .get_str("UserId")
                .and_then(|u| Uuid::try_parse(u).ok())
                .ok_or_else(|| StoreError::Corrupt("invitation without UserId".into()))?;
            let user = self.users.get(tenant, user_id).await?.ok_or_else(|| {
                gone(
                    "user_deleted",
                    "the account was removed by the organisation",
                )
            })?;
            if user.admin["invitation"] != json!(id.to_string()) {
                return Err(gone("revoked", "a newer invitation replaced this one"));
            }
            if user.data["active"] == json!(false) {
                return Err(ScimError::new(
                    409,
                    Some("user_inactive"),
                    "the account is disabled by the organisation",
                ));
            }
            let redeemed = Redeemed {
                tenant,
                user: user_id,
                user_name: user.data["userName"].as_str().unwrap_or_default().into(),
            };
            if peek {
                return Ok(redeemed);
            }
            let mut admin = user.admin.clone();
            admin["status"] = json!(UserStatus::Active.as_str());
            admin["activated_at"] = json!(rfc3339(OffsetDateTime::now_utc()));
            if let Some(map) = admin.as_object_mut() {
                map.remove("invitation");
            }
            let etag = row.etag.clone().unwrap_or_else(|| tables::ETag("*".into()));
            let mut row = row;
            row.properties.remove("Link");
            row.set("State", InvitationState::Redeemed.as_str());
            row.set("RedeemedAt", OffsetDateTime::now_utc());
            let extra = vec![Operation::Replace(row, IfMatch::ETag(etag))];
            match self.users.set_admin(tenant, &user, &admin, extra).await? {
                WriteOutcome::Written(_) => return Ok(redeemed),
                // the user or the invitation changed: read both again (a second redeemer
                // then finds the invitation redeemed)
                _ => continue,
            }
        }
        Err(kept_changing("invitation"))
    }
}

/// The operation that withdraws the invitation a user's state names, if any.
pub(crate) fn revoke_previous(tenant: Uuid, admin: &Value) -> Option<Operation> {
    let id = admin
        .get("invitation")
        .and_then(Value::as_str)
        .and_then(|i| Uuid::try_parse(i).ok())?;
    Some(Operation::UpsertMerge(revoked_row(tenant, id)))
}

fn revoked_row(tenant: Uuid, id: Uuid) -> Entity {
    // merged, so the row keeps its history; the link is blanked (a merge cannot drop it)
    Entity::new(keys::partition(tenant), keys::invitation(id))
        .with("State", InvitationState::Revoked.as_str())
        .with("Link", "")
        .with("RevokedAt", OffsetDateTime::now_utc())
}

/// The address an invitation goes to: the primary (else work, else first) e-mail.
fn email_of(data: &Value) -> Option<String> {
    let emails = data.get("emails")?.as_array()?;
    let pick = emails
        .iter()
        .find(|e| e["primary"] == json!(true))
        .or_else(|| emails.iter().find(|e| e["type"] == json!("work")))
        .or_else(|| emails.first())?;
    pick["value"].as_str().map(str::to_string)
}

fn setting_view(overridden: Option<bool>, default: bool) -> Value {
    json!({
        "override": overridden,
        "effective": overridden.unwrap_or(default),
    })
}

fn admin_user_view(user: &StoredResource, settings: &ScimSettings) -> Value {
    let overrides = Overrides::of(&user.admin);
    json!({
        "id": user.id,
        "user_name": user.data["userName"],
        "external_id": user.data.get("externalId"),
        "display_name": user.data.get("displayName"),
        "email": email_of(&user.data),
        "active": user.data["active"],
        "source": "scim",
        "status": UserStatus::of(&user.admin).as_str(),
        "invitation_id": user.admin.get("invitation"),
        "activated_at": user.admin.get("activated_at"),
        "settings": {
            "require_mobile_auth": setting_view(
                overrides.require_mobile_auth,
                settings.require_mobile_auth_users,
            ),
        },
    })
}

fn admin_group_view(group: &StoredResource, settings: &ScimSettings) -> Value {
    let overrides = Overrides::of(&group.admin);
    json!({
        "id": group.id,
        "display_name": group.data["displayName"],
        "external_id": group.data.get("externalId"),
        "settings": {
            "require_mobile_auth": setting_view(
                overrides.require_mobile_auth,
                settings.require_mobile_auth_groups,
            ),
        },
    })
}

fn invitation_view(row: &Entity, with_link: bool) -> Value {
    let state = InvitationState::parse(row.get_str("State").unwrap_or_default());
    let expired = row
        .get_datetime("ExpiresAt")
        .is_none_or(|t| t <= OffsetDateTime::now_utc());
    let shown = match state {
        InvitationState::Pending | InvitationState::Sent if expired => "expired",
        other => other.as_str(),
    };
    let time = |name: &str| row.get_datetime(name).map(rfc3339);
    let link = row
        .get_str("Link")
        .filter(|l| with_link && !l.is_empty() && shown == "pending");
    json!({
        "id": row.get_str("InvitationId"),
        "user_id": row.get_str("UserId"),
        "user_name": row.get_str("UserName"),
        "email": row.get_str("Email"),
        "display_name": row.get_str("DisplayName"),
        "state": shown,
        "created_at": time("CreatedAt"),
        "expires_at": time("ExpiresAt"),
        "sent_at": time("SentAt"),
        "redeemed_at": time("RedeemedAt"),
        "link": link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_name_their_tenant_and_invitation_and_nothing_else_parses() {
        let (tenant, id) = (Uuid::new_v4(), Uuid::new_v4());
        let code = new_code(tenant, id);
        assert_eq!(parse_code(&code), Some((tenant, id)));
        assert_ne!(code, new_code(tenant, id), "each code has its own secret");
        assert_eq!(parse_code(&code[..code.len() - 2]), None);
        assert_eq!(parse_code(&code.replace("inv_", "xyz_")), None);
        assert_eq!(parse_code(""), None);
        assert_eq!(parse_code("inv_!!!"), None);
    }

    #[test]
    fn settings_refuse_unknown_fields_and_bad_validity() {
        let bad: Result<ScimSettings, _> = serde_json::from_value(json!({
            "automatic_invitation": true, "require_mobile_auth_users": false,
            "require_mobile_auth_groups": false, "automatic_invitations": true,
        }));
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("automatic_invitations")
        );
        let missing: Result<ScimSettings, _> =
            serde_json::from_value(json!({"automatic_invitation": true}));
        assert!(missing.is_err());
        let mut ok: ScimSettings = serde_json::from_value(json!({
            "automatic_invitation": true, "require_mobile_auth_users": true,
            "require_mobile_auth_groups": false,
        }))
        .unwrap();
        assert_eq!(ok.invitation_valid_hours, DEFAULT_INVITATION_HOURS);
        ok.invitation_valid_hours = 0;
        assert!(ok.validate().is_err());
        ok.invitation_valid_hours = MAX_INVITATION_HOURS + 1;
        assert!(ok.validate().is_err());
    }

    #[test]
    fn the_invitation_goes_to_the_primary_address() {
        let data = json!({"emails": [
            {"type": "home", "value": "home@example.com"},
            {"type": "work", "value": "work@contoso.com"},
            {"type": "other", "primary": true, "value": "main@contoso.com"},
        ]});
        assert_eq!(email_of(&data).as_deref(), Some("main@contoso.com"));
        let data = json!({"emails": [
            {"type": "home", "value": "home@example.com"},
            {"type": "work", "value": "work@contoso.com"},
        ]});
        assert_eq!(email_of(&data).as_deref(), Some("work@contoso.com"));
        assert_eq!(email_of(&json!({})), None);
    }
}
