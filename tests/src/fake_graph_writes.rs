//! The Graph stand-in's writes, for HR write-back: `POST /users`, `PATCH /users/{id}`
//! (properties, accountEnabled, passwordProfile), `POST /users/{id}/revokeSignInSessions`,
//! group members `$ref` add and remove, `PUT` and `DELETE /users/{id}/manager/$ref`, and
//! reads of a user's groups (`memberOf/microsoft.graph.group`, 100 a page with an
//! absolute `@odata.nextLink`, as Graph pages) and directory roles
//! (`memberOf/microsoft.graph.directoryRole`). Errors follow Graph's
//! documentation: 400 `Request_BadRequest` (also for a UPN in use and a member added
//! twice), 404 `Request_ResourceNotFound`, 403 `Authorization_RequestDenied` when the
//! app's token lacks the application permission. Tokens are JWT-shaped (unsigned) so that
//! their `roles` claim can be read, as in Entra's app-only tokens.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::{Credential, Directory, Life, State, USER_PROPS};

/// The application permissions an app has unless a test says otherwise.
pub const DEFAULT_ROLES: &[&str] = &[
    "User.ReadWrite.All",
    "Group.ReadWrite.All",
    "User.EnableDisableAccount.All",
    "Directory.ReadWrite.All",
];

/// What HR write-back leaves on a user beyond the synced properties.
#[derive(Default, Clone, Debug)]
pub struct HrUserState {
    /// Properties the sync does not read (`usageLocation`, `officeLocation`...).
    pub extra: Map<String, Value>,
    pub manager: Option<String>,
    /// Passwords set (at creation or reset), and whether the last one must be changed.
    pub passwords_set: u32,
    pub force_change: bool,
    pub sessions_revoked: u32,
    /// Directory roles held (a privileged account).
    pub roles: Vec<String>,
}

/// Per directory: the users' write-back state.
#[derive(Default)]
pub(super) struct HrState {
    pub(super) users: HashMap<String, HrUserState>,
    /// Users created through `POST /users` (in order).
    pub(super) created: Vec<String>,
}

/// An unsigned JWT-shaped token carrying `roles` (the stand-in knows its tokens by string).
pub fn token(tenant: &str, client: &str, roles: &[String]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"none"}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&json!({
            "tid": tenant, "appid": client, "idtyp": "app", "roles": roles,
            "jti": uuid::Uuid::new_v4(),
        }))
        .unwrap(),
    );
    format!("{header}.{claims}.fake")
}

pub(super) fn roles_of(s: &State, tenant: &str, client: &str) -> Vec<String> {
    s.tenants[tenant]
        .app_roles
        .get(client)
        .cloned()
        .unwrap_or_else(|| DEFAULT_ROLES.iter().map(|r| r.to_string()).collect())
}

fn error(status: u16, code: &str, message: &str) -> (u16, Value) {
    (
        status,
        json!({"error": {"code": code, "message": message, "innerError": {"request-id": uuid::Uuid::new_v4()}}}),
    )
}

fn denied() -> (u16, Value) {
    error(
        403,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
    )
}

fn not_found(what: &str) -> (u16, Value) {
    error(
        404,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{what}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

fn active_user(d: &Directory, key: &str) -> Option<String> {
    if d.users.get(key).is_some_and(|u| u.life == Life::Active) {
        return Some(key.to_string());
    }
    d.upns.get(&key.to_lowercase()).cloned()
}

/// The id named by an `@odata.id` on this stand-in's Graph host (`.../directoryObjects/{id}`
/// or `.../users/{id}`); a URL on another host is refused as Graph would not know it.
fn reference(s: &State, body: &Value) -> Result<String, (u16, Value)> {
    let url = body["@odata.id"].as_str().unwrap_or_default();
    let base = format!("{}/v1.0/", s.graph_url);
    let rest = url.strip_prefix(&base).ok_or_else(|| {
        error(
            400,
            "Request_BadRequest",
            &format!("Invalid object identifier '{url}'."),
        )
    })?;
    rest.strip_prefix("directoryObjects/")
        .or_else(|| rest.strip_prefix("users/"))
        .map(str::to_string)
        .ok_or_else(|| error(400, "Request_BadRequest", "Invalid object identifier."))
}

/// Splits a user body into the properties the sync reads and the rest.
fn put_props(d: &mut Directory, id: &str, body: &Map<String, Value>) {
    let mut synced = Map::new();
    for (k, v) in body {
        if k == "passwordProfile" {
            let hr = d.hr.users.entry(id.to_string()).or_default();
            hr.passwords_set += 1;
            hr.force_change = v["forceChangePasswordNextSignIn"]
                .as_bool()
                .unwrap_or(false);
        } else if USER_PROPS.contains(&k.as_str()) {
            synced.insert(k.clone(), v.clone());
        } else {
            d.hr.users
                .entry(id.to_string())
                .or_default()
                .extra
                .insert(k.clone(), v.clone());
        }
    }
    if !synced.is_empty() || !d.users.contains_key(id) {
        d.put_user(id, &Value::Object(synced));
    }
}

/// The extra properties of a user, for reads that select them.
pub(super) fn extras<'a>(d: &'a Directory, id: &str) -> Option<&'a Map<String, Value>> {
    d.hr.users.get(id).map(|h| &h.extra)
}

/// Graph's default page size of `memberOf`.
const MEMBER_OF_PAGE: usize = 100;

/// A read this module answers (a user's groups, paged as Graph does, and directory
/// roles), or None.
pub(super) fn read(s: &State, tenant: &str, path: &str, query: &str) -> Option<(u16, Value)> {
    let rest = path.strip_prefix("/users/")?;
    if let Some(key) = rest.strip_suffix("/memberOf/microsoft.graph.group") {
        let d = &s.tenants[tenant].dir;
        let Some(id) = active_user(d, key) else {
            return Some(not_found(key));
        };
        // the skiptoken is opaque to clients; here it is the offset of the next page
        let skip: usize = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "$skiptoken")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let all: Vec<&String> = d.member_of.get(&id).into_iter().flatten().collect();
        let groups: Vec<Value> = all
            .iter()
            .skip(skip)
            .take(MEMBER_OF_PAGE)
            .map(|g| json!({"@odata.type": "#microsoft.graph.group", "id": g}))
            .collect();
        let mut body = json!({"value": groups});
        if skip + MEMBER_OF_PAGE < all.len() || (s.member_of_loops && skip > 0) {
            // a looping Graph sends a page after the first back to itself
            let next = if s.member_of_loops && skip > 0 {
                skip
            } else {
                skip + MEMBER_OF_PAGE
            };
            body["@odata.nextLink"] = json!(format!(
                "{}/v1.0/users/{key}/memberOf/microsoft.graph.group?$select=id&$skiptoken={next}",
                s.graph_url,
            ));
        }
        return Some((200, body));
    }
    let id = rest.strip_suffix("/memberOf/microsoft.graph.directoryRole")?;
    let d = &s.tenants[tenant].dir;
    let Some(id) = active_user(d, id) else {
        return Some(not_found(id));
    };
    let roles: Vec<Value> = d
        .hr
        .users
        .get(&id)
        .map(|h| h.roles.clone())
        .unwrap_or_default()
        .iter()
        .map(|r| json!({"@odata.type": "#microsoft.graph.directoryRole", "id": uuid::Uuid::new_v4(), "displayName": r}))
        .collect();
    Some((200, json!({"value": roles})))
}

/// Answers a write.
pub(super) fn write(
    s: &mut State,
    tenant: &str,
    client: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let path = percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned();
    let roles = roles_of(s, tenant, client);
    let has = |r: &str| roles.iter().any(|x| x == r);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("POST", ["users"]) => {
            if !has("User.ReadWrite.All") {
                return denied();
            }
            let Some(props) = body.as_object() else {
                return error(400, "Request_BadRequest", "A request body is required.");
            };
            for required in [
                "accountEnabled",
                "displayName",
                "mailNickname",
                "userPrincipalName",
            ] {
                if props.get(required).is_none_or(Value::is_null) {
                    return error(
                        400,
                        "Request_BadRequest",
                        &format!(
                            "Invalid value specified for property '{required}' of resource 'User'."
                        ),
                    );
                }
            }
            if body["passwordProfile"]["password"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                return error(
                    400,
                    "Request_BadRequest",
                    "Invalid value specified for property 'passwordProfile' of resource 'User'.",
                );
            }
            let upn = props["userPrincipalName"].as_str().unwrap_or_default();
            let d = &mut s.tenants.get_mut(tenant).unwrap().dir;
            if d.upns.contains_key(&upn.to_lowercase()) {
                return error(
                    400,
                    "Request_BadRequest",
                    "Another object with the same value for property userPrincipalName already exists.",
                );
            }
            let id = uuid::Uuid::new_v4().to_string();
            put_props(d, &id, props);
            d.hr.created.push(id.clone());
            let mut answer = super::user_json(&id, &d.users[&id], &super::Select(Vec::new()));
            answer["@odata.context"] =
                json!("https://graph.microsoft.com/v1.0/$metadata#users/$entity");
            (201, answer)
        }
        ("PATCH", ["users", key]) => {
            let Some(props) = body.as_object() else {
                return error(400, "Request_BadRequest", "A request body is required.");
            };
            let only_enable = props.keys().all(|k| k == "accountEnabled");
            let allowed =
                has("User.ReadWrite.All") || (only_enable && has("User.EnableDisableAccount.All"));
            if !allowed
                || (props.contains_key("passwordProfile")
                    && !has("Directory.ReadWrite.All")
                    && !has("User.ReadWrite.All"))
            {
                return denied();
            }
            let d = &mut s.tenants.get_mut(tenant).unwrap().dir;
            let Some(id) = active_user(d, key) else {
                return not_found(key);
            };
            if props.contains_key("passwordProfile")
                && d.hr.users.get(&id).is_some_and(|h| !h.roles.is_empty())
            {
                // resetting an admin's password needs a higher role than the app has
                return denied();
            }
            if let Some(upn) = props.get("userPrincipalName").and_then(Value::as_str)
                && d.upns
                    .get(&upn.to_lowercase())
                    .is_some_and(|other| *other != id)
            {
                return error(
                    400,
                    "Request_BadRequest",
                    "Another object with the same value for property userPrincipalName already exists.",
                );
            }
            put_props(d, &id, props);
            (204, Value::Null)
        }
        ("POST", ["users", key, "revokeSignInSessions"]) => {
            if !has("User.ReadWrite.All") {
                return denied();
            }
            let d = &mut s.tenants.get_mut(tenant).unwrap().dir;
            let Some(id) = active_user(d, key) else {
                return not_found(key);
            };
            d.hr.users.entry(id).or_default().sessions_revoked += 1;
            (
                200,
                json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Edm.Boolean", "value": true}),
            )
        }
        ("PUT", ["users", key, "manager", "$ref"]) => {
            if !has("User.ReadWrite.All") {
                return denied();
            }
            let manager = match reference(s, body) {
                Ok(m) => m,
                Err(e) => return e,
            };
            let d = &mut s.tenants.get_mut(tenant).unwrap().dir;
            let Some(id) = active_user(d, key) else {
                return not_found(key);
            };
            if active_user(d, &manager).is_none() {
                return not_found(&manager);
            }
            d.hr.users.entry(id).or_default().manager = Some(manager);
            (204, Value::Null)
        }
        ("DELETE", ["users", key, "manager", "$ref"]) => {
            if !has("User.ReadWrite.All") {
                return denied();
            }
            let d = &mut s.tenants.get_mut(tenant).unwrap().dir;
            let Some(id) = active_user(d, key) else {
                return not_found(key);
            };
            // Graph answers 404 to removing a manager the user does not have
            match d.hr.users.get_mut(&id).and_then(|h| h.manager.take()) {
                Some(_) => (204, Value::Null),
                None => not_found("manager"),
            }
        }
        ("POST", ["groups", group, "members", "$ref"]) => {
            if !has("Group.ReadWrite.All") {
                return denied();
            }
            let member = match reference(s, body) {
                Ok(m) => m,
                Err(e) => return e,
            };
            let d = &mut s.tenants.get_mut(tenant).unwrap().dir;
            if !d.groups.get(*group).is_some_and(|g| g.life == Life::Active) {
                return not_found(group);
            }
            if active_user(d, &member).is_none() {
                return not_found(&member);
            }
            if d.member_of.get(&member).is_some_and(|g| g.contains(*group)) {
                return error(
                    400,
                    "Request_BadRequest",
                    "One or more added object references already exist for the following modified properties: 'members'.",
                );
            }
            d.set_member(group, &member, true);
            (204, Value::Null)
        }
        ("DELETE", ["groups", group, "members", member, "$ref"]) => {
            if !has("Group.ReadWrite.All") {
                return denied();
            }
            let d = &mut s.tenants.get_mut(tenant).unwrap().dir;
            if !d.member_of.get(*member).is_some_and(|g| g.contains(*group)) {
                return not_found(member);
            }
            d.set_member(group, member, false);
            (204, Value::Null)
        }
        _ => error(400, "BadRequest", &format!("unsupported {method} {path}")),
    }
}

impl super::FakeMicrosoft {
    /// The write-back state of a user (properties beyond the synced ones, manager,
    /// passwords set, sessions revoked, roles).
    pub fn hr_state(&self, tenant_id: &str, id: &str) -> HrUserState {
        self.with_dir(tenant_id, |d| {
            d.hr.users.get(id).cloned().unwrap_or_default()
        })
    }

    /// A user as Graph would return it with every property, or None.
    pub fn user(&self, tenant_id: &str, id_or_upn: &str) -> Option<Value> {
        self.with_dir(tenant_id, |d| {
            let id = active_user(d, id_or_upn)?;
            let mut u = super::user_json(&id, &d.users[&id], &super::Select(Vec::new()));
            if let Some(extra) = extras(d, &id) {
                for (k, v) in extra {
                    u[k] = v.clone();
                }
            }
            Some(u)
        })
    }

    /// The ids of users created through `POST /users`, in order.
    pub fn created_users(&self, tenant_id: &str) -> Vec<String> {
        self.with_dir(tenant_id, |d| d.hr.created.clone())
    }

    /// The groups a user is a direct member of.
    pub fn groups_of(&self, tenant_id: &str, id: &str) -> Vec<String> {
        self.with_dir(tenant_id, |d| {
            d.member_of
                .get(id)
                .map(|g| g.iter().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Gives a user a directory role (a privileged account).
    pub fn assign_directory_role(&self, tenant_id: &str, id: &str, role: &str) {
        self.with_dir(tenant_id, |d| {
            d.hr.users
                .entry(id.to_string())
                .or_default()
                .roles
                .push(role.into())
        });
    }

    /// Sets the application permissions an app's tokens carry in a tenant (from the next
    /// token on).
    pub fn set_app_roles(&self, tenant_id: &str, client_id: &str, roles: &[&str]) {
        let mut s = self.state.lock().unwrap();
        s.tenants
            .get_mut(tenant_id)
            .expect("a tenant")
            .app_roles
            .insert(
                client_id.into(),
                roles.iter().map(|r| r.to_string()).collect(),
            );
    }
}

/// An authorization code issued for a sign-in.
struct Code {
    tenant: String,
    client: String,
    redirect_uri: String,
    challenge: String,
    user_tenant: String,
    user: String,
}

/// A refresh token and whose it is.
#[derive(Clone)]
struct Refresh {
    tenant: String,
    client: String,
    user: String,
}

/// Delegated sign-ins: codes (single use) and refresh tokens (each redemption replaces the
/// token redeemed, stricter than Entra, so that a client keeping an old one is caught).
#[derive(Default)]
pub(super) struct DelegatedState {
    codes: HashMap<String, Code>,
    refresh: HashMap<String, Refresh>,
    /// Lifetime of delegated access tokens, seconds (short in tests to force redemptions).
    lifetime: Option<u64>,
}

fn aad(status: u16, error: &str, code: &str, text: &str) -> warp::reply::Response {
    super::aad_error(status, error, code, text)
}

fn unsigned_jwt(claims: Value) -> String {
    format!(
        "{}.{}.fake",
        URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
    )
}

/// The token endpoint's `authorization_code` and `refresh_token` grants.
pub(super) fn delegated_token(
    s: &mut State,
    tenant: &str,
    form: &HashMap<String, String>,
) -> warp::reply::Response {
    let client = form.get("client_id").cloned().unwrap_or_default();
    match s.apps.get(&client) {
        Some(Credential::Secret(secret)) if form.get("client_secret") == Some(secret) => {}
        Some(Credential::Certificate { .. }) if form.contains_key("client_assertion") => {}
        Some(_) => {
            return aad(
                401,
                "invalid_client",
                "AADSTS7000215",
                "Invalid client secret provided.",
            );
        }
        None => {
            return aad(
                400,
                "unauthorized_client",
                "AADSTS700016",
                "Application was not found in the directory.",
            );
        }
    }
    let (grant_tenant, user) = if form.get("grant_type").map(String::as_str)
        == Some("authorization_code")
    {
        let Some(code) = form.get("code").and_then(|c| s.delegated.codes.remove(c)) else {
            return aad(
                400,
                "invalid_grant",
                "AADSTS70008",
                "The provided authorization code or refresh token has expired due to inactivity.",
            );
        };
        if code.client != client
            || code.tenant != tenant
            || form.get("redirect_uri") != Some(&code.redirect_uri)
        {
            return aad(
                400,
                "invalid_grant",
                "AADSTS50148",
                "The code was issued to another client, tenant or redirect URI.",
            );
        }
        let verifier = form.get("code_verifier").cloned().unwrap_or_default();
        let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            verifier.as_bytes(),
        ));
        if challenge != code.challenge {
            return aad(
                400,
                "invalid_grant",
                "AADSTS501481",
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            );
        }
        (code.user_tenant, code.user)
    } else {
        let token = form.get("refresh_token").cloned().unwrap_or_default();
        let Some(r) = s.delegated.refresh.remove(&token) else {
            return aad(
                400,
                "invalid_grant",
                "AADSTS50173",
                "The provided grant has expired due to it being revoked, a fresh auth token is needed.",
            );
        };
        if r.client != client || r.tenant != tenant {
            return aad(
                400,
                "invalid_grant",
                "AADSTS9002313",
                "Invalid request: the refresh token belongs to another client or tenant.",
            );
        }
        (r.tenant, r.user)
    };
    let refresh = format!("fake-refresh-{}", uuid::Uuid::new_v4());
    s.delegated.refresh.insert(
        refresh.clone(),
        Refresh {
            tenant: grant_tenant.clone(),
            client: client.clone(),
            user: user.clone(),
        },
    );
    let access = unsigned_jwt(
        json!({"tid": grant_tenant, "oid": user, "scp": "User.ReadWrite.All Group.ReadWrite.All Directory.AccessAsUser.All", "jti": uuid::Uuid::new_v4()}),
    );
    // Graph serves the user's own tenant
    s.issued
        .insert(access.clone(), (grant_tenant.clone(), client.clone()));
    let id_token = unsigned_jwt(
        json!({"tid": grant_tenant, "oid": user, "preferred_username": format!("admin@{}", grant_tenant)}),
    );
    let lifetime = s.delegated.lifetime.unwrap_or(3599);
    super::json_response(
        200,
        json!({"token_type": "Bearer", "scope": form.get("scope"), "expires_in": lifetime, "access_token": access, "refresh_token": refresh, "id_token": id_token}),
    )
}

impl super::FakeMicrosoft {
    /// Plays the browser and Microsoft's sign-in: `user` of `user_tenant` signs in at
    /// `authorize_url` and consents; answers the redirect back (`redirect_uri?code&state`).
    pub fn sign_in(&self, authorize_url: &str, user_tenant: &str, user: &str) -> String {
        let url = url::Url::parse(authorize_url).expect("an authorize URL");
        let tenant = url.path_segments().unwrap().next().unwrap().to_string();
        assert!(url.path().ends_with("/oauth2/v2.0/authorize"), "{url}");
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["code_challenge_method"], "S256", "PKCE with S256");
        assert!(q["scope"].contains("offline_access"), "{}", q["scope"]);
        let code = format!("fake-code-{}", uuid::Uuid::new_v4());
        self.state.lock().unwrap().delegated.codes.insert(
            code.clone(),
            Code {
                tenant,
                client: q["client_id"].clone(),
                redirect_uri: q["redirect_uri"].clone(),
                challenge: q["code_challenge"].clone(),
                user_tenant: user_tenant.into(),
                user: user.into(),
            },
        );
        let mut back = url::Url::parse(&q["redirect_uri"]).unwrap();
        back.query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", &q["state"]);
        back.to_string()
    }

    /// Revokes every refresh token of a tenant (a password change, `revokeSignInSessions`).
    pub fn revoke_refresh_tokens(&self, tenant_id: &str) {
        self.state
            .lock()
            .unwrap()
            .delegated
            .refresh
            .retain(|_, r| r.tenant != tenant_id);
    }

    /// Delegated access tokens live this long (seconds) from now on.
    pub fn set_delegated_token_lifetime(&self, seconds: u64) {
        self.state.lock().unwrap().delegated.lifetime = Some(seconds);
    }
}
