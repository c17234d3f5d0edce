//! Local stand-ins for Entra's token endpoint (client credentials with a secret or a
//! certificate assertion) and for Microsoft Graph: `/organization`, users by id or UPN,
//! `$batch`, and delta queries over `/users/delta` and `/groups/delta` with paging,
//! removals, membership slices, expiring state tokens, scripted throttling and revoked
//! consent. Formats follow Microsoft's documentation ("Use delta query to track changes",
//! user: delta, group: delta, JSON batching, throttling, error responses).
//!
//! The directory keeps, per object, the sequence number of its last change; a deltaLink
//! carries the sequence it covered, so a later round reads only what changed after it, in
//! sequence order. A first round walks the objects in id order. Either way a page costs
//! O(page size · log n), so a tenant of 100,000 users pages as fast as a small one.
//! Tokens are opaque to clients (base64url of the stand-in's own cursor).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_lc_rs::rsa::PublicKeyComponents;
use aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::Response;

#[path = "fake_graph_writes.rs"]
pub mod writes;

/// A registered app's credential as the fake knows it.
#[derive(Clone)]
enum Credential {
    Secret(String),
    /// base64url SHA-256 of the certificate, and the RSA public key (n, e).
    Certificate {
        thumbprint: String,
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

/// The user properties the stand-in keeps, in `$select` spelling.
const USER_PROPS: [&str; 9] = [
    "userPrincipalName",
    "displayName",
    "mail",
    "accountEnabled",
    "givenName",
    "surname",
    "jobTitle",
    "department",
    "employeeId",
];
const UPN: usize = 0;

const USER_TYPE: &str = "#microsoft.graph.user";
const GROUP_TYPE: &str = "#microsoft.graph.group";

/// Which delta collection a control applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Collection {
    Users,
    Groups,
}

impl Collection {
    fn name(self) -> &'static str {
        match self {
            Collection::Users => "users",
            Collection::Groups => "groups",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Active,
    /// In deletedItems: `@removed {"reason": "changed"}`, restorable.
    SoftDeleted,
    /// Gone: `@removed {"reason": "deleted"}`.
    HardDeleted,
}

struct FakeUser {
    /// [`USER_PROPS`] in order: `None` never set (left out of answers), `Some(Null)` cleared.
    props: [Option<Value>; 9],
    life: Life,
    seq: u64,
    /// Groups the user left when soft-deleted; restoring the user rejoins them.
    parked_groups: Vec<String>,
}

struct Member {
    seq: u64,
    present: bool,
    odata_type: &'static str,
}

struct FakeGroup {
    display_name: Option<Value>,
    life: Life,
    /// Last change of the group or of its membership.
    seq: u64,
    /// By member id, present or removed (removed ones stay to be reported).
    members: BTreeMap<String, Member>,
    /// Member change sequence -> member id (each member at its last change only).
    member_log: BTreeMap<u64, String>,
}

#[derive(Default)]
struct Directory {
    seq: u64,
    /// Bumped by `expire_delta_tokens`: older tokens answer 400 `syncStateNotFound`.
    expiry_epoch: u64,
    /// Bumped by `reset_delta_sync`: older tokens answer 410 Gone with `Location`.
    reset_epoch: u64,
    users: BTreeMap<String, FakeUser>,
    user_log: BTreeMap<u64, String>,
    /// lower-cased UPN -> id, active users only
    upns: HashMap<String, String>,
    groups: BTreeMap<String, FakeGroup>,
    group_log: BTreeMap<u64, String>,
    /// user id -> groups it is a present member of
    member_of: HashMap<String, BTreeSet<String>>,
    empty_pages: HashMap<Collection, u32>,
    replays: HashMap<Collection, u32>,
    /// HR write-back's view of the users (see `writes`).
    hr: writes::HrState,
}

#[derive(Default)]
struct Tenant {
    name: String,
    domain: String,
    /// client id -> token requests still refused (consent propagating)
    consented: HashMap<String, u32>,
    /// clients whose consent was revoked: their outstanding tokens answer 401
    revoked: HashSet<String>,
    /// clients whose permission was removed: Graph answers 403
    unpermitted: HashSet<String>,
    /// client ids whose service principal an administrator disabled in the tenant
    disabled: HashSet<String>,
    dir: Directory,
    /// client id -> application permissions in its tokens (default `writes::DEFAULT_ROLES`)
    app_roles: HashMap<String, Vec<String>>,
}

/// Page sizes Graph would choose (the client cannot: `$top` is not supported on delta).
#[derive(Debug, Clone, Copy)]
struct PageSizes {
    users: usize,
    groups: usize,
    members: usize,
}

/// A Graph request the stand-in served.
#[derive(Debug, Clone)]
pub struct GraphRequest {
    /// When it arrived.
    pub at: Instant,
    pub method: String,
    /// The path, e.g. `/v1.0/users/delta`.
    pub path: String,
    /// The raw query string (without `?`).
    pub query: String,
    /// The status answered.
    pub status: u16,
}

struct DeltaThrottle {
    /// 1-based index among delta requests counted from the start
    first: u64,
    times: u64,
    retry_after: u64,
}

struct State {
    graph_url: String,
    sizes: PageSizes,
    apps: HashMap<String, Credential>,
    tenants: HashMap<String, Tenant>,
    issued: HashMap<String, (String, String)>,
    token_requests: Vec<(String, HashMap<String, String>)>,
    /// scripted answers for the next Graph requests: (status, Retry-After seconds)
    graph_failures: VecDeque<(u16, Option<u64>)>,
    /// batch item url -> (answers 429 still to give, Retry-After seconds)
    throttle_items: HashMap<String, (u32, u64)>,
    delta_seen: u64,
    delta_throttles: Vec<DeltaThrottle>,
    graph_calls: Vec<String>,
    requests: Vec<GraphRequest>,
    /// Delegated sign-ins: authorization codes and refresh tokens (see `writes`).
    delegated: writes::DelegatedState,
    /// A user's groups past the first page are served with a nextLink to the page itself
    /// (a faulty Graph that pages forever).
    member_of_loops: bool,
}

impl Default for State {
    fn default() -> State {
        State {
            graph_url: String::new(),
            sizes: PageSizes {
                users: 200,
                groups: 50,
                members: 500,
            },
            apps: HashMap::new(),
            tenants: HashMap::new(),
            issued: HashMap::new(),
            token_requests: Vec::new(),
            graph_failures: VecDeque::new(),
            throttle_items: HashMap::new(),
            delta_seen: 0,
            delta_throttles: Vec::new(),
            graph_calls: Vec::new(),
            requests: Vec::new(),
            delegated: writes::DelegatedState::default(),
            member_of_loops: false,
        }
    }
}

/// The token endpoint and Graph stand-ins: one loopback server each.
pub struct FakeMicrosoft {
    pub login_url: String,
    pub graph_url: String,
    state: Arc<Mutex<State>>,
    graph_requests: Arc<AtomicU64>,
}

/// The object id [`FakeMicrosoft::populate`] gives user number `i`.
pub fn user_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

/// The object id [`FakeMicrosoft::populate`] gives group number `i`.
pub fn group_id(i: usize) -> String {
    format!("10000000-0000-4000-8000-{i:012x}")
}

fn json_response(status: u16, body: Value) -> Response {
    use warp::Reply as _;
    warp::reply::with_status(
        warp::reply::json(&body),
        StatusCode::from_u16(status).unwrap(),
    )
    .into_response()
}

fn graph_error(status: u16, code: &str, message: &str) -> Response {
    json_response(
        status,
        json!({"error": {"code": code, "message": message, "innerError": {
            "date": "2026-11-26T00:00:00", "request-id": uuid::Uuid::new_v4(), "client-request-id": uuid::Uuid::new_v4(),
        }}}),
    )
}

fn with_header(mut response: Response, name: &'static str, value: &str) -> Response {
    response
        .headers_mut()
        .insert(name, value.parse().expect("a header value"));
    response
}

/// A token-endpoint error as Microsoft's identity platform answers it: the OAuth `error`,
/// `error_description` starting with the AADSTS code and ending with trace, correlation
/// and time lines, the numeric `error_codes`, and the same ids again as fields.
fn aad_error(status: u16, error: &str, code: &str, text: &str) -> Response {
    let trace = uuid::Uuid::new_v4();
    let correlation = uuid::Uuid::new_v4();
    let timestamp = "2026-11-26 00:00:00Z";
    json_response(
        status,
        json!({
            "error": error,
            "error_description": format!("{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {timestamp}"),
            "error_codes": [code.trim_start_matches("AADSTS").parse::<u64>().unwrap_or(0)],
            "timestamp": timestamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", code.trim_start_matches("AADSTS")),
        }),
    )
}

impl FakeMicrosoft {
    /// Starts both servers on free loopback ports.
    pub async fn start() -> FakeMicrosoft {
        let state: Arc<Mutex<State>> = Arc::default();
        let graph_requests = Arc::new(AtomicU64::new(0));

        let token_state = state.clone();
        let token = warp::post()
            .and(warp::path!(String / "oauth2" / "v2.0" / "token"))
            .and(warp::body::form::<HashMap<String, String>>())
            .map(move |tenant: String, form: HashMap<String, String>| {
                issue_token(&token_state, &tenant, form)
            });
        let login = bind(token).await;

        let graph_state = state.clone();
        let counter = graph_requests.clone();
        let graph = warp::path("v1.0")
            .and(warp::method())
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::bytes())
            .map(
                move |method: warp::http::Method,
                      path: warp::path::FullPath,
                      query: String,
                      auth: Option<String>,
                      body: bytes::Bytes| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    graph_request(
                        &graph_state,
                        method.as_str(),
                        path.as_str(),
                        &query,
                        auth.as_deref(),
                        &body,
                    )
                },
            );
        let graph = bind(graph).await;
        state.lock().unwrap().graph_url = graph.clone();
        FakeMicrosoft {
            login_url: login,
            graph_url: graph,
            state,
            graph_requests,
        }
    }

    /// Registers an app with a client secret.
    pub fn register_secret_app(&self, client_id: &str, secret: &str) {
        self.state
            .lock()
            .unwrap()
            .apps
            .insert(client_id.into(), Credential::Secret(secret.into()));
    }

    /// Registers an app with a certificate (its DER and RSA public key).
    pub fn register_certificate_app(
        &self,
        client_id: &str,
        certificate_der: &[u8],
        n: &[u8],
        e: &[u8],
    ) {
        let thumbprint = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            certificate_der,
        ));
        self.state.lock().unwrap().apps.insert(
            client_id.into(),
            Credential::Certificate {
                thumbprint,
                n: n.to_vec(),
                e: e.to_vec(),
            },
        );
    }

    /// Creates a tenant with one verified domain.
    pub fn add_tenant(&self, tenant_id: &str, name: &str, domain: &str) {
        self.state.lock().unwrap().tenants.insert(
            tenant_id.into(),
            Tenant {
                name: name.into(),
                domain: domain.into(),
                ..Tenant::default()
            },
        );
    }

    /// Consents `client_id` in the tenant (again, after a revocation); the first `delay`
    /// token requests still fail (Microsoft's consent propagation).
    pub fn consent(&self, tenant_id: &str, client_id: &str, delay: u32) {
        if let Some(t) = self.state.lock().unwrap().tenants.get_mut(tenant_id) {
            t.consented.insert(client_id.into(), delay);
            t.revoked.remove(client_id);
            t.unpermitted.remove(client_id);
        }
    }

    /// Disables or enables `client_id`'s service principal in the tenant (an administrator
    /// switching the enterprise application off or on); while disabled, token requests get
    /// AADSTS7000112.
    pub fn set_app_enabled(&self, tenant_id: &str, client_id: &str, enabled: bool) {
        if let Some(t) = self.state.lock().unwrap().tenants.get_mut(tenant_id) {
            if enabled {
                t.disabled.remove(client_id);
            } else {
                t.disabled.insert(client_id.into());
            }
        }
    }

    /// An admin revokes the app's consent (deletes its service principal): new tokens are
    /// refused (`unauthorized_client`, AADSTS700016) and tokens already issued answer
    /// Graph 401 `InvalidAuthenticationToken`.
    pub fn revoke_consent(&self, tenant_id: &str, client_id: &str) {
        if let Some(t) = self.state.lock().unwrap().tenants.get_mut(tenant_id) {
            t.consented.remove(client_id);
            t.revoked.insert(client_id.into());
        }
    }

    /// An admin removes the app's Graph permission but not the app: tokens are still
    /// issued and Graph answers 403 `Authorization_RequestDenied`.
    pub fn remove_permission(&self, tenant_id: &str, client_id: &str) {
        if let Some(t) = self.state.lock().unwrap().tenants.get_mut(tenant_id) {
            t.unpermitted.insert(client_id.into());
        }
    }

    fn with_dir<R>(&self, tenant_id: &str, f: impl FnOnce(&mut Directory) -> R) -> R {
        let mut s = self.state.lock().unwrap();
        let t = s
            .tenants
            .get_mut(tenant_id)
            .unwrap_or_else(|| panic!("no tenant {tenant_id} in the stand-in"));
        f(&mut t.dir)
    }

    /// Adds a user (a Graph user object; `id` generated when missing) and returns its id.
    /// An existing id is updated with the properties given, as [`Self::update_user`].
    pub fn add_user(&self, tenant_id: &str, user: Value) -> String {
        let id = user["id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.with_dir(tenant_id, |d| d.put_user(&id, &user));
        id
    }

    /// Changes a user's properties (those given; `null` clears one).
    pub fn update_user(&self, tenant_id: &str, id: &str, changes: Value) {
        self.with_dir(tenant_id, |d| {
            assert!(d.users.contains_key(id), "no user {id}");
            d.put_user(id, &changes)
        });
    }

    /// Deletes a user to deletedItems: `@removed {"reason": "changed"}`; it leaves its
    /// groups (reported as member removals) until restored.
    pub fn soft_delete_user(&self, tenant_id: &str, id: &str) {
        self.with_dir(tenant_id, |d| d.set_user_life(id, Life::SoftDeleted));
    }

    /// Restores a soft-deleted user (and its group memberships).
    pub fn restore_user(&self, tenant_id: &str, id: &str) {
        self.with_dir(tenant_id, |d| d.set_user_life(id, Life::Active));
    }

    /// Deletes a user permanently: `@removed {"reason": "deleted"}`; it leaves its groups.
    pub fn hard_delete_user(&self, tenant_id: &str, id: &str) {
        self.with_dir(tenant_id, |d| d.set_user_life(id, Life::HardDeleted));
    }

    /// Adds a group (`id` generated when missing, `displayName`) and returns its id.
    pub fn add_group(&self, tenant_id: &str, group: Value) -> String {
        let id = group["id"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.with_dir(tenant_id, |d| d.put_group(&id, &group));
        id
    }

    /// Changes a group's `displayName` (`null` clears it).
    pub fn update_group(&self, tenant_id: &str, id: &str, changes: Value) {
        self.with_dir(tenant_id, |d| {
            assert!(d.groups.contains_key(id), "no group {id}");
            d.put_group(id, &changes)
        });
    }

    /// Deletes a group: to deletedItems (`changed`) or permanently (`deleted`).
    pub fn delete_group(&self, tenant_id: &str, id: &str, permanently: bool) {
        let life = if permanently {
            Life::HardDeleted
        } else {
            Life::SoftDeleted
        };
        self.with_dir(tenant_id, |d| d.set_group_life(id, life));
    }

    /// Restores a soft-deleted group.
    pub fn restore_group(&self, tenant_id: &str, id: &str) {
        self.with_dir(tenant_id, |d| d.set_group_life(id, Life::Active));
    }

    /// Makes a user (or, when the id is a group's, a nested group) a direct member.
    pub fn add_member(&self, tenant_id: &str, group_id: &str, member_id: &str) {
        self.with_dir(tenant_id, |d| d.set_member(group_id, member_id, true));
    }

    /// Removes a direct member.
    pub fn remove_member(&self, tenant_id: &str, group_id: &str, member_id: &str) {
        self.with_dir(tenant_id, |d| d.set_member(group_id, member_id, false));
    }

    /// Fills a tenant fast (for benchmarks): users [`user_id`]`(0..users)` named
    /// `user{i}@{domain}` with every property set, groups [`group_id`]`(0..groups)`,
    /// group `g` holding users `(g * members_per_group + k) % users` for k in
    /// 0..members_per_group.
    pub fn populate(&self, tenant_id: &str, users: usize, groups: usize, members_per_group: usize) {
        let mut s = self.state.lock().unwrap();
        let t = s.tenants.get_mut(tenant_id).expect("a tenant");
        let domain = t.domain.clone();
        let d = &mut t.dir;
        for i in 0..users {
            let upn = format!("user{i}@{domain}");
            d.put_user(
                &user_id(i),
                &json!({
                    "userPrincipalName": upn, "displayName": format!("User {i}"), "mail": upn,
                    "accountEnabled": true, "givenName": format!("Given{i}"), "surname": format!("Surname{i}"),
                    "jobTitle": "Engineer", "department": format!("Department {}", i % 50),
                    "employeeId": format!("E{i:07}"),
                }),
            );
        }
        for g in 0..groups {
            let id = group_id(g);
            d.put_group(&id, &json!({"displayName": format!("Group {g}")}));
            if users > 0 {
                for k in 0..members_per_group {
                    d.set_member(&id, &user_id((g * members_per_group + k) % users), true);
                }
            }
        }
    }

    /// The page sizes Graph chooses: users per page (default 200), groups per page
    /// (default 50) and `members@delta` entries per page (default 500; a group with more
    /// members than fit goes on over the next pages, repeated with the next slice).
    pub fn set_page_sizes(&self, users: usize, groups: usize, members: usize) {
        self.state.lock().unwrap().sizes = PageSizes {
            users: users.max(1),
            groups: groups.max(1),
            members: members.max(1),
        };
    }

    /// From now on every page of a user's groups after the first names itself as the next
    /// page: a faulty Graph that pages forever.
    pub fn loop_member_of_pages(&self) {
        self.state.lock().unwrap().member_of_loops = true;
    }

    /// The next `pages` delta requests of the collection in the tenant answer an empty
    /// page whose nextLink goes on where the request was.
    pub fn inject_empty_pages(&self, tenant_id: &str, collection: Collection, pages: u32) {
        self.with_dir(tenant_id, |d| {
            *d.empty_pages.entry(collection).or_default() += pages
        });
    }

    /// The next `pages` delta pages of the collection are served with a nextLink back to
    /// their own start, so the same page (its objects) comes again: Graph's replays.
    pub fn replay_pages(&self, tenant_id: &str, collection: Collection, pages: u32) {
        self.with_dir(tenant_id, |d| {
            *d.replays.entry(collection).or_default() += pages
        });
    }

    /// Every state token issued so far expires: its next use answers 400 with the
    /// documented error code `syncStateNotFound`.
    pub fn expire_delta_tokens(&self, tenant_id: &str) {
        self.with_dir(tenant_id, |d| d.expiry_epoch += 1);
    }

    /// Graph resets the tenant's synchronization (maintenance, migration): the next use of
    /// a token issued so far answers `410 Gone` with a `Location` header naming the initial
    /// query with an empty `$deltatoken`, as documented.
    pub fn reset_delta_sync(&self, tenant_id: &str) {
        self.with_dir(tenant_id, |d| d.reset_epoch += 1);
    }

    /// Counting delta requests (users and groups, every tenant) from now on, the `nth`
    /// (1-based) and the `times - 1` after it answer 429 with `Retry-After`.
    pub fn throttle_delta_requests(&self, nth: u64, times: u64, retry_after_secs: u64) {
        let mut s = self.state.lock().unwrap();
        let first = s.delta_seen + nth.max(1);
        s.delta_throttles.push(DeltaThrottle {
            first,
            times,
            retry_after: retry_after_secs,
        });
    }

    /// The next Graph requests get these statuses (with an optional Retry-After).
    pub fn fail_next(&self, status: u16, times: usize, retry_after: Option<u64>) {
        let mut s = self.state.lock().unwrap();
        for _ in 0..times {
            s.graph_failures.push_back((status, retry_after));
        }
    }

    /// A `$batch` item with this url is answered 429 (Retry-After 1) the first time.
    pub fn throttle_batch_item_once(&self, url: &str) {
        self.throttle_batch_item(url, 1, 1);
    }

    /// A `$batch` item with this url is answered 429 with the item's own `Retry-After`
    /// header the next `times` times.
    pub fn throttle_batch_item(&self, url: &str, times: u32, retry_after_secs: u64) {
        self.state
            .lock()
            .unwrap()
            .throttle_items
            .insert(url.into(), (times, retry_after_secs));
    }

    /// Token requests seen: (tenant path segment, form fields).
    pub fn token_requests(&self) -> Vec<(String, HashMap<String, String>)> {
        self.state.lock().unwrap().token_requests.clone()
    }

    /// Graph HTTP requests served.
    pub fn graph_requests(&self) -> u64 {
        self.graph_requests.load(Ordering::SeqCst)
    }

    /// Graph request paths seen (batch items included, prefixed `batch `).
    pub fn graph_calls(&self) -> Vec<String> {
        self.state.lock().unwrap().graph_calls.clone()
    }

    /// Every Graph HTTP request served, in arrival order, with its time and status.
    pub fn requests(&self) -> Vec<GraphRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// How many Graph HTTP requests went to this path (e.g. `/v1.0/users/delta`,
    /// `/v1.0/$batch`), whatever their query.
    pub fn request_count(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .count()
    }
}

async fn bind<F>(filter: F) -> String
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(warp::serve(filter).incoming(listener).run());
    format!("http://127.0.0.1:{port}")
}

fn issue_token(state: &Mutex<State>, tenant: &str, form: HashMap<String, String>) -> Response {
    let mut s = state.lock().unwrap();
    s.token_requests.push((tenant.to_string(), form.clone()));
    if matches!(
        form.get("grant_type").map(String::as_str),
        Some("authorization_code" | "refresh_token")
    ) {
        return writes::delegated_token(&mut s, tenant, &form);
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return aad_error(
            400,
            "unsupported_grant_type",
            "AADSTS70003",
            "The app requested an unsupported grant type.",
        );
    }
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let Some(credential) = s.apps.get(&client_id).cloned() else {
        return aad_error(
            400,
            "unauthorized_client",
            "AADSTS700016",
            "Application with identifier was not found in the directory.",
        );
    };
    let identifier_is_valid = uuid::Uuid::try_parse(tenant).is_ok()
        || (tenant.contains('.')
            && tenant.split('.').all(|label| {
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    if !identifier_is_valid {
        return aad_error(
            400,
            "invalid_request",
            "AADSTS900023",
            &format!(
                "Specified tenant identifier '{tenant}' is neither a valid DNS name, nor a valid external domain."
            ),
        );
    }
    let Some(tenant_id) = s
        .tenants
        .iter()
        .find(|(id, t)| id.as_str() == tenant || t.domain.eq_ignore_ascii_case(tenant))
        .map(|(id, _)| id.clone())
    else {
        return aad_error(
            400,
            "invalid_request",
            "AADSTS90002",
            &format!("Tenant '{tenant}' not found."),
        );
    };
    match credential {
        Credential::Secret(secret) => {
            if form.get("client_secret") != Some(&secret) {
                return aad_error(
                    401,
                    "invalid_client",
                    "AADSTS7000215",
                    "Invalid client secret provided.",
                );
            }
        }
        Credential::Certificate { thumbprint, n, e } => {
            if form.get("client_assertion_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return aad_error(
                    400,
                    "invalid_request",
                    "AADSTS50012",
                    "client_assertion_type is missing or wrong.",
                );
            }
            let assertion = form.get("client_assertion").cloned().unwrap_or_default();
            if let Err(why) = check_assertion(&assertion, &client_id, &thumbprint, &n, &e) {
                return aad_error(
                    401,
                    "invalid_client",
                    "AADSTS700027",
                    &format!("Client assertion failed validation: {why}"),
                );
            }
        }
    }
    let tenant_entry = s.tenants.get_mut(&tenant_id).unwrap();
    if tenant_entry.disabled.contains(&client_id) {
        return aad_error(
            400,
            "unauthorized_client",
            "AADSTS7000112",
            &format!("Application '{client_id}'(entra-connector) is disabled."),
        );
    }
    match tenant_entry.consented.get_mut(&client_id) {
        None => {
            return aad_error(
                400,
                "unauthorized_client",
                "AADSTS700016",
                "Application was not found in the directory (no consent).",
            );
        }
        Some(delay) if *delay > 0 => {
            *delay -= 1;
            return aad_error(
                400,
                "unauthorized_client",
                "AADSTS700016",
                "Application was not found in the directory (consent propagating).",
            );
        }
        Some(_) => {}
    }
    let roles = writes::roles_of(&s, &tenant_id, &client_id);
    let token = writes::token(&tenant_id, &client_id, &roles);
    s.issued.insert(token.clone(), (tenant_id, client_id));
    json_response(
        200,
        json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}),
    )
}

fn check_assertion(
    assertion: &str,
    client_id: &str,
    thumbprint: &str,
    n: &[u8],
    e: &[u8],
) -> Result<(), String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [h, c, sig] = parts.as_slice() else {
        return Err("not a JWS".into());
    };
    let decode = |p: &str| -> Result<Value, String> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).map_err(|_| "base64")?)
            .map_err(|_| "json".to_string())
    };
    let header = decode(h)?;
    let claims = decode(c)?;
    if header["alg"] != "PS256" {
        return Err(format!("alg {}", header["alg"]));
    }
    if header["x5t#S256"] != thumbprint {
        return Err("x5t#S256 does not match the uploaded certificate".into());
    }
    let signature = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| "signature base64")?;
    PublicKeyComponents { n, e }
        .verify(
            &RSA_PSS_2048_8192_SHA256,
            format!("{h}.{c}").as_bytes(),
            &signature,
        )
        .map_err(|_| "signature does not verify")?;
    let aud = claims["aud"].as_str().unwrap_or_default();
    if !(aud.starts_with("https://login.") && aud.ends_with("/oauth2/v2.0/token")) {
        return Err(format!("aud {aud}"));
    }
    if claims["iss"] != client_id || claims["sub"] != client_id {
        return Err("iss/sub".into());
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let exp = claims["exp"].as_i64().ok_or("exp")?;
    if exp < now || exp > now + 660 {
        return Err("exp".into());
    }
    if claims["jti"].as_str().is_none_or(|j| j.is_empty()) {
        return Err("jti".into());
    }
    Ok(())
}

fn upn_key(u: &FakeUser) -> Option<String> {
    u.props[UPN]
        .as_ref()
        .and_then(Value::as_str)
        .map(str::to_lowercase)
}

impl Directory {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn touch_user(&mut self, id: &str) {
        let seq = self.next_seq();
        let u = self.users.get_mut(id).expect("a user");
        self.user_log.remove(&u.seq);
        u.seq = seq;
        self.user_log.insert(seq, id.to_string());
    }

    fn touch_group(&mut self, id: &str, seq: u64) {
        let g = self.groups.get_mut(id).expect("a group");
        self.group_log.remove(&g.seq);
        g.seq = seq;
        self.group_log.insert(seq, id.to_string());
    }

    fn put_user(&mut self, id: &str, props: &Value) {
        let u = self
            .users
            .entry(id.to_string())
            .or_insert_with(|| FakeUser {
                props: Default::default(),
                life: Life::Active,
                seq: 0,
                parked_groups: Vec::new(),
            });
        let old_upn = upn_key(u);
        for (i, name) in USER_PROPS.iter().enumerate() {
            if let Some(v) = props.get(*name) {
                u.props[i] = Some(v.clone());
            }
        }
        let new_upn = upn_key(u);
        if u.life == Life::Active && old_upn != new_upn {
            if let Some(old) = old_upn {
                self.upns.remove(&old);
            }
            if let Some(new) = new_upn {
                self.upns.insert(new, id.to_string());
            }
        }
        self.touch_user(id);
    }

    fn set_user_life(&mut self, id: &str, life: Life) {
        let u = self
            .users
            .get_mut(id)
            .unwrap_or_else(|| panic!("no user {id}"));
        if u.life == life {
            return;
        }
        assert!(
            u.life != Life::HardDeleted,
            "a permanently deleted user cannot change"
        );
        u.life = life;
        let upn = upn_key(u);
        match life {
            Life::Active => {
                let rejoin = std::mem::take(&mut u.parked_groups);
                if let Some(upn) = upn {
                    self.upns.insert(upn, id.to_string());
                }
                self.touch_user(id);
                for g in rejoin {
                    if self.groups.get(&g).is_some_and(|g| g.life == Life::Active) {
                        self.set_member(&g, id, true);
                    }
                }
            }
            Life::SoftDeleted | Life::HardDeleted => {
                if let Some(upn) = upn {
                    self.upns.remove(&upn);
                }
                let groups: Vec<String> = self
                    .member_of
                    .remove(id)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                let u = self.users.get_mut(id).expect("a user");
                u.parked_groups = if life == Life::SoftDeleted {
                    groups.clone()
                } else {
                    Vec::new()
                };
                self.touch_user(id);
                for g in groups {
                    self.set_member(&g, id, false);
                }
            }
        }
    }

    fn put_group(&mut self, id: &str, props: &Value) {
        let g = self
            .groups
            .entry(id.to_string())
            .or_insert_with(|| FakeGroup {
                display_name: None,
                life: Life::Active,
                seq: 0,
                members: BTreeMap::new(),
                member_log: BTreeMap::new(),
            });
        if let Some(v) = props.get("displayName") {
            g.display_name = Some(v.clone());
        }
        let seq = self.next_seq();
        self.touch_group(id, seq);
    }

    fn set_group_life(&mut self, id: &str, life: Life) {
        let g = self
            .groups
            .get_mut(id)
            .unwrap_or_else(|| panic!("no group {id}"));
        if g.life == life {
            return;
        }
        assert!(
            g.life != Life::HardDeleted,
            "a permanently deleted group cannot change"
        );
        g.life = life;
        let present: Vec<String> = g
            .members
            .iter()
            .filter(|(_, m)| m.present)
            .map(|(id, _)| id.clone())
            .collect();
        for member in present {
            let groups = self.member_of.entry(member).or_default();
            if life == Life::Active {
                groups.insert(id.to_string());
            } else {
                groups.remove(id);
            }
        }
        let seq = self.next_seq();
        self.touch_group(id, seq);
    }

    fn set_member(&mut self, group_id: &str, member_id: &str, present: bool) {
        let odata_type = if self.groups.contains_key(member_id) {
            GROUP_TYPE
        } else {
            USER_TYPE
        };
        let seq = self.next_seq();
        let g = self
            .groups
            .get_mut(group_id)
            .unwrap_or_else(|| panic!("no group {group_id}"));
        match g.members.get_mut(member_id) {
            Some(m) if m.present == present => return,
            Some(m) => {
                g.member_log.remove(&m.seq);
                m.seq = seq;
                m.present = present;
            }
            None if !present => return,
            None => {
                g.members.insert(
                    member_id.to_string(),
                    Member {
                        seq,
                        present,
                        odata_type,
                    },
                );
            }
        }
        g.member_log.insert(seq, member_id.to_string());
        let group_active = g.life == Life::Active;
        self.touch_group(group_id, seq);
        if present && group_active {
            self.member_of
                .entry(member_id.to_string())
                .or_default()
                .insert(group_id.to_string());
        } else if let Some(groups) = self.member_of.get_mut(member_id) {
            groups.remove(group_id);
        }
    }
}

/// `$select` as asked (empty: every property the stand-in keeps).
struct Select(Vec<String>);

impl Select {
    fn parse(select: &str) -> Select {
        Select(
            select
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
        )
    }

    fn has(&self, property: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|p| p.eq_ignore_ascii_case(property))
    }
}

fn user_json(id: &str, u: &FakeUser, select: &Select) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    match u.life {
        Life::SoftDeleted => {
            m.insert("@removed".into(), json!({"reason": "changed"}));
        }
        Life::HardDeleted => {
            m.insert("@removed".into(), json!({"reason": "deleted"}));
        }
        Life::Active => {
            for (i, name) in USER_PROPS.iter().enumerate() {
                // a property never set is left out, as Graph does
                if let Some(v) = &u.props[i]
                    && select.has(name)
                {
                    m.insert((*name).into(), v.clone());
                }
            }
        }
    }
    Value::Object(m)
}

fn group_json(id: &str, g: &FakeGroup, select: &Select, members: Vec<Value>) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    match g.life {
        Life::SoftDeleted => {
            m.insert("@removed".into(), json!({"reason": "changed"}));
        }
        Life::HardDeleted => {
            m.insert("@removed".into(), json!({"reason": "deleted"}));
        }
        Life::Active => {
            if let Some(name) = &g.display_name
                && select.has("displayName")
            {
                m.insert("displayName".into(), name.clone());
            }
            if !members.is_empty() {
                m.insert("members@delta".into(), Value::Array(members));
            }
        }
    }
    Value::Object(m)
}

fn member_json(id: &str, m: &Member) -> Value {
    if m.present {
        json!({"@odata.type": m.odata_type, "id": id})
    } else {
        json!({"@odata.type": m.odata_type, "id": id, "@removed": {"reason": "deleted"}})
    }
}

/// Where a delta round stands; a skiptoken or deltatoken is this, encoded.
#[derive(Clone)]
struct Cursor {
    tenant: String,
    collection: Collection,
    expiry_epoch: u64,
    reset_epoch: u64,
    /// A first round (current objects in id order) or a round of changes.
    initial: bool,
    /// Changes after this sequence (rounds of changes).
    base: u64,
    /// The directory's sequence when the round began: the next round's `base`.
    upper: u64,
    select: String,
    /// First round: the last object id served.
    after_id: Option<String>,
    /// Round of changes: the last change sequence served.
    after_seq: u64,
    /// A group whose members are being served in slices.
    group: Option<String>,
    member_after_id: Option<String>,
    member_after_seq: u64,
}

fn encode_token(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("JSON"))
}

fn decode_token(token: &str) -> Option<Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token).ok()?).ok()
}

impl Cursor {
    fn skiptoken(&self) -> String {
        encode_token(&json!({
            "k": "skip", "t": self.tenant, "c": self.collection.name(),
            "x": self.expiry_epoch, "r": self.reset_epoch, "i": self.initial,
            "b": self.base, "u": self.upper, "s": self.select,
            "a": self.after_id, "q": self.after_seq,
            "g": self.group, "ma": self.member_after_id, "mq": self.member_after_seq,
        }))
    }

    fn deltatoken(&self) -> String {
        encode_token(&json!({
            "k": "delta", "t": self.tenant, "c": self.collection.name(),
            "x": self.expiry_epoch, "r": self.reset_epoch, "u": self.upper, "s": self.select,
        }))
    }

    /// A cursor from a token of the expected kind, collection and tenant.
    fn from_token(
        token: &str,
        kind: &str,
        collection: Collection,
        tenant: &str,
        now: u64,
    ) -> Option<Cursor> {
        let v = decode_token(token)?;
        if v["k"] != kind || v["c"] != collection.name() || v["t"] != tenant {
            return None;
        }
        let text = |k: &str| v[k].as_str().map(str::to_string);
        let number = |k: &str| v[k].as_u64();
        Some(if kind == "delta" {
            let base = number("u")?;
            Cursor {
                tenant: tenant.into(),
                collection,
                expiry_epoch: number("x")?,
                reset_epoch: number("r")?,
                initial: false,
                base,
                upper: now,
                select: text("s")?,
                after_id: None,
                after_seq: base,
                group: None,
                member_after_id: None,
                member_after_seq: base,
            }
        } else {
            Cursor {
                tenant: tenant.into(),
                collection,
                expiry_epoch: number("x")?,
                reset_epoch: number("r")?,
                initial: v["i"].as_bool()?,
                base: number("b")?,
                upper: number("u")?,
                select: text("s")?,
                after_id: text("a"),
                after_seq: number("q")?,
                group: text("g"),
                member_after_id: text("ma"),
                member_after_seq: number("mq")?,
            }
        })
    }
}

/// One page of users; true when the round has nothing more.
fn user_page(d: &Directory, cur: &mut Cursor, limit: usize) -> (Vec<Value>, bool) {
    let select = Select::parse(&cur.select);
    let mut out = Vec::new();
    if cur.initial {
        let from = match &cur.after_id {
            Some(a) => Bound::Excluded(a.as_str()),
            None => Bound::Unbounded,
        };
        for (id, u) in d.users.range::<str, _>((from, Bound::Unbounded)) {
            if u.life != Life::Active {
                continue;
            }
            if out.len() == limit {
                return (out, false);
            }
            out.push(user_json(id, u, &select));
            cur.after_id = Some(id.clone());
        }
    } else {
        for (seq, id) in d
            .user_log
            .range((Bound::Excluded(cur.after_seq), Bound::Included(cur.upper)))
        {
            if out.len() == limit {
                return (out, false);
            }
            out.push(user_json(id, &d.users[id], &select));
            cur.after_seq = *seq;
        }
    }
    (out, true)
}

/// The next slice of a group's `members@delta`; true when the group has no more.
fn member_slice(g: &FakeGroup, cur: &mut Cursor, budget: &mut usize) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    if cur.initial {
        let from = match &cur.member_after_id {
            Some(a) => Bound::Excluded(a.as_str()),
            None => Bound::Unbounded,
        };
        for (id, m) in g.members.range::<str, _>((from, Bound::Unbounded)) {
            if !m.present {
                continue;
            }
            if *budget == 0 {
                return (out, false);
            }
            out.push(member_json(id, m));
            cur.member_after_id = Some(id.clone());
            *budget -= 1;
        }
    } else {
        for (seq, id) in g.member_log.range((
            Bound::Excluded(cur.member_after_seq),
            Bound::Included(cur.upper),
        )) {
            if *budget == 0 {
                return (out, false);
            }
            out.push(member_json(id, &g.members[id]));
            cur.member_after_seq = *seq;
            *budget -= 1;
        }
    }
    (out, true)
}

/// One page of groups with slices of their members; true when the round has no more.
fn group_page(
    d: &Directory,
    cur: &mut Cursor,
    max_groups: usize,
    max_members: usize,
) -> (Vec<Value>, bool) {
    let select = Select::parse(&cur.select);
    let with_members = select.has("members");
    let mut out = Vec::new();
    let mut budget = max_members;
    // serve one group, sliced: false when the page is full before the group is done
    let mut serve = |id: &str, g: &FakeGroup, cur: &mut Cursor, out: &mut Vec<Value>| -> bool {
        let (members, done) = if with_members && g.life == Life::Active {
            member_slice(g, cur, &mut budget)
        } else {
            (Vec::new(), true)
        };
        out.push(group_json(id, g, &select, members));
        if done {
            cur.group = None;
            cur.member_after_id = None;
            cur.member_after_seq = cur.base;
        } else {
            cur.group = Some(id.to_string());
        }
        done
    };
    // a group left in the middle of its members goes on first, whatever changed since
    if let Some(id) = cur.group.clone() {
        match d.groups.get(&id) {
            Some(g) if g.life == Life::Active => {
                if !serve(&id, g, cur, &mut out) {
                    return (out, false);
                }
            }
            _ => {
                cur.group = None;
                cur.member_after_id = None;
                cur.member_after_seq = cur.base;
            }
        }
    }
    if cur.initial {
        let after = cur.after_id.clone();
        let from = match &after {
            Some(a) => Bound::Excluded(a.as_str()),
            None => Bound::Unbounded,
        };
        for (id, g) in d.groups.range::<str, _>((from, Bound::Unbounded)) {
            if g.life != Life::Active {
                continue;
            }
            if out.len() == max_groups {
                return (out, false);
            }
            cur.after_id = Some(id.clone());
            if !serve(id, g, cur, &mut out) {
                return (out, false);
            }
        }
    } else {
        let range = (Bound::Excluded(cur.after_seq), Bound::Included(cur.upper));
        for (seq, id) in d.group_log.range(range) {
            if out.len() == max_groups {
                return (out, false);
            }
            cur.after_seq = *seq;
            if !serve(id, &d.groups[id], cur, &mut out) {
                return (out, false);
            }
        }
    }
    (out, true)
}

fn parse_query(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k).to_ascii_lowercase(), decode(v))
        })
        .collect()
}

fn query_value<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Answers `GET /{users|groups}/delta`.
fn delta(s: &mut State, tenant_id: &str, collection: Collection, query: &str) -> Response {
    let params = parse_query(query);
    let graph_url = s.graph_url.clone();
    let sizes = s.sizes;
    let d = &mut s.tenants.get_mut(tenant_id).expect("a tenant").dir;
    let name = collection.name();
    let skip = query_value(&params, "$skiptoken");
    let delta = query_value(&params, "$deltatoken").filter(|t| !t.is_empty());
    let mut cursor = match (skip, delta) {
        (Some(token), _) | (None, Some(token)) => {
            let kind = if skip.is_some() { "skip" } else { "delta" };
            let Some(cursor) = Cursor::from_token(token, kind, collection, tenant_id, d.seq) else {
                return graph_error(
                    400,
                    "BadRequest",
                    &format!("the {kind} token is not valid for /{name}/delta"),
                );
            };
            if cursor.reset_epoch < d.reset_epoch {
                let location = format!(
                    "{graph_url}/v1.0/{name}/delta?$select={}&$deltatoken=",
                    cursor.select
                );
                return with_header(
                    graph_error(
                        410,
                        "resyncRequired",
                        "The tenant's change tracking was reset; synchronize again from the start.",
                    ),
                    "location",
                    &location,
                );
            }
            if cursor.expiry_epoch < d.expiry_epoch {
                return graph_error(
                    400,
                    "syncStateNotFound",
                    "The state token has expired; synchronize again from the start.",
                );
            }
            cursor
        }
        (None, None) => Cursor {
            tenant: tenant_id.into(),
            collection,
            expiry_epoch: d.expiry_epoch,
            reset_epoch: d.reset_epoch,
            initial: true,
            base: 0,
            upper: d.seq,
            select: query_value(&params, "$select")
                .unwrap_or_default()
                .to_string(),
            after_id: None,
            after_seq: 0,
            group: None,
            member_after_id: None,
            member_after_seq: 0,
        },
    };
    let context = format!("{graph_url}/v1.0/$metadata#{name}({})", cursor.select);
    let link = |key: &str, token: String| format!("{graph_url}/v1.0/{name}/delta?${key}={token}");
    if let Some(left) = d.empty_pages.get_mut(&collection)
        && *left > 0
    {
        *left -= 1;
        return json_response(
            200,
            json!({"@odata.context": context, "@odata.nextLink": link("skiptoken", cursor.skiptoken()), "value": []}),
        );
    }
    let replay = match d.replays.get_mut(&collection) {
        Some(left) if *left > 0 => {
            *left -= 1;
            Some(cursor.clone())
        }
        _ => None,
    };
    let (items, done) = match collection {
        Collection::Users => user_page(d, &mut cursor, sizes.users),
        Collection::Groups => group_page(d, &mut cursor, sizes.groups, sizes.members),
    };
    let mut body = json!({"@odata.context": context, "value": items});
    match (replay, done) {
        (Some(start), _) => {
            body["@odata.nextLink"] = json!(link("skiptoken", start.skiptoken()));
        }
        (None, false) => body["@odata.nextLink"] = json!(link("skiptoken", cursor.skiptoken())),
        (None, true) => body["@odata.deltaLink"] = json!(link("deltatoken", cursor.deltatoken())),
    }
    json_response(200, body)
}

fn graph_request(
    state: &Mutex<State>,
    method: &str,
    path: &str,
    query: &str,
    auth: Option<&str>,
    body: &[u8],
) -> Response {
    let at = Instant::now();
    let mut s = state.lock().unwrap();
    let response = graph_answer(&mut s, method, path, query, auth, body);
    s.requests.push(GraphRequest {
        at,
        method: method.into(),
        path: path.into(),
        query: query.into(),
        status: response.status().as_u16(),
    });
    response
}

fn graph_answer(
    s: &mut State,
    method: &str,
    path: &str,
    query: &str,
    auth: Option<&str>,
    body: &[u8],
) -> Response {
    s.graph_calls.push(format!("{method} {path}"));
    if let Some((status, retry_after)) = s.graph_failures.pop_front() {
        let response = graph_error(status, "TooManyRequests", "scripted failure");
        return match retry_after {
            Some(after) => with_header(response, "retry-after", &after.to_string()),
            None => response,
        };
    }
    let Some((tenant, client)) = auth
        .and_then(|a| a.strip_prefix("Bearer "))
        .and_then(|t| s.issued.get(t).cloned())
    else {
        return graph_error(
            401,
            "InvalidAuthenticationToken",
            "Access token is empty or invalid.",
        );
    };
    {
        let t = &s.tenants[&tenant];
        if t.revoked.contains(&client) {
            return graph_error(
                401,
                "InvalidAuthenticationToken",
                "The application's access to the tenant was revoked.",
            );
        }
        if t.unpermitted.contains(&client) {
            return graph_error(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            );
        }
    }
    let relative = path.trim_start_matches("/v1.0");
    let collection = match relative {
        "/users/delta" => Some(Collection::Users),
        "/groups/delta" => Some(Collection::Groups),
        _ => None,
    };
    if method == "GET"
        && let Some(collection) = collection
    {
        s.delta_seen += 1;
        let n = s.delta_seen;
        if let Some(t) = s
            .delta_throttles
            .iter()
            .find(|t| n >= t.first && n < t.first + t.times)
        {
            let after = t.retry_after.to_string();
            return with_header(
                graph_error(429, "TooManyRequests", "Too many requests; retry later."),
                "retry-after",
                &after,
            );
        }
        return delta(s, &tenant, collection, query);
    }
    if method == "POST" && relative == "/$batch" {
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let items = request["requests"].as_array().cloned().unwrap_or_default();
        if items.len() > 20 {
            return graph_error(400, "BadRequest", "more than 20 requests");
        }
        let mut responses = Vec::new();
        for item in items {
            let url = item["url"].as_str().unwrap_or_default().to_string();
            s.graph_calls.push(format!("batch {url}"));
            if let Some((left, after)) = s.throttle_items.get_mut(&url)
                && *left > 0
            {
                *left -= 1;
                responses.push(json!({"id": item["id"], "status": 429, "headers": {"Retry-After": after.to_string()}, "body": {"error": {"code": "TooManyRequests", "message": "throttled"}}}));
                continue;
            }
            let (path, query) = url.split_once('?').unwrap_or((&url, ""));
            let method = item["method"]
                .as_str()
                .unwrap_or("GET")
                .to_ascii_uppercase();
            let (status, body) = if method != "GET" {
                writes::write(s, &tenant, &client, &method, path, &item["body"])
            } else if let Some(answer) = writes::read(s, &tenant, path, query) {
                answer
            } else {
                read(s, &tenant, path, query)
            };
            responses.push(json!({"id": item["id"], "status": status, "headers": {"Content-Type": "application/json"}, "body": body}));
        }
        return json_response(200, json!({ "responses": responses }));
    }
    if method != "GET" {
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let (status, body) = writes::write(s, &tenant, &client, method, relative, &request);
        return json_response(status, body);
    }
    if let Some((status, body)) = writes::read(s, &tenant, relative, query) {
        return json_response(status, body);
    }
    let (status, body) = read(s, &tenant, relative, query);
    json_response(status, body)
}

/// Answers a GET of the supported resources.
fn read(s: &State, tenant_id: &str, path: &str, query: &str) -> (u16, Value) {
    let tenant = &s.tenants[tenant_id];
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned();
    if decoded == "/organization" {
        return (
            200,
            json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#organization", "value": [{
                "id": tenant_id, "displayName": tenant.name,
                "verifiedDomains": [{"capabilities": "Email, OfficeCommunicationsOnline", "isDefault": true, "isInitial": true, "name": tenant.domain, "type": "Managed"}],
            }]}),
        );
    }
    let key = decoded
        .strip_prefix("/users('")
        .and_then(|k| k.strip_suffix("')"))
        .map(|k| k.replace("''", "'"))
        .or_else(|| decoded.strip_prefix("/users/").map(str::to_string));
    if let Some(key) = key {
        let d = &tenant.dir;
        let id = if d.users.get(&key).is_some_and(|u| u.life == Life::Active) {
            Some(key.clone())
        } else {
            d.upns.get(&key.to_lowercase()).cloned()
        };
        let params = parse_query(query);
        let select = Select::parse(query_value(&params, "$select").unwrap_or_default());
        return match id {
            Some(id) => {
                let mut user = user_json(&id, &d.users[&id], &select);
                for (k, v) in writes::extras(d, &id).into_iter().flatten() {
                    if select.has(k) {
                        user[k] = v.clone();
                    }
                }
                (200, user)
            }
            None => (
                404,
                json!({"error": {"code": "Request_ResourceNotFound", "message": format!("Resource '{key}' does not exist or one of its queried reference-property objects are not present.")}}),
            ),
        };
    }
    (
        400,
        json!({"error": {"code": "BadRequest", "message": format!("unsupported path {decoded}")}}),
    )
}
