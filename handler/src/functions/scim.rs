//! `ScimToken`, `ScimUsers` and `ScimDiscovery`: the SCIM 2.0 endpoint Entra provisions
//! into, at `/api/scim/{tenant_id}/v2` (the "Tenant URL"), authenticated by the tenant's
//! Secret Token; and the admin endpoint that generates that token.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use warp::Reply as _;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, filters::BoxedFilter};

use crate::app::App;
use crate::auth::{self, bearer};
use crate::lifecycle::{self, AccessRefusal};
use crate::provisioning::{MAX_RESULTS, ScimError};
use crate::routes::{ApiError, answer, body, guid_segment, json_reply, no_content, segment};
use audit::{Actor, Change, Event, Target};

/// Largest SCIM request body (Entra's are a few KiB).
pub const MAX_SCIM_BODY: usize = 1024 * 1024;

/// A SCIM answer: `ETag` carries the resource's meta.version, and a 201 names the new
/// resource's URI (its meta.location) in `Location` (RFC 7644 section 3.3).
fn scim_reply(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = warp::reply::with_status(warp::reply::json(body), status).into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/scim+json"),
    );
    let header = |pointer: &str| {
        body.pointer(pointer)
            .and_then(Value::as_str)
            .and_then(|v| HeaderValue::from_str(v).ok())
    };
    if let Some(etag) = header("/meta/version") {
        response.headers_mut().insert("etag", etag);
    }
    if status == StatusCode::CREATED
        && let Some(location) = header("/meta/location")
    {
        response.headers_mut().insert("location", location);
    }
    response
}

fn scim_error(e: ScimError) -> Response {
    scim_reply(
        e.status,
        &scim::protocol::error_body(e.status, e.scim_type, &e.detail),
    )
}

/// This module's part of the document. Its routes are matched inside one filter each
/// (see [`routes`]), so each operation is declared in [`operations`], after the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    operations::get_scim_service_provider_config,
    operations::list_scim_resource_types,
    operations::get_scim_resource_type,
    operations::list_scim_schemas,
    operations::get_scim_schema,
    operations::list_scim_users,
    operations::create_scim_user,
    operations::search_scim_users,
    operations::get_scim_user,
    operations::replace_scim_user,
    operations::patch_scim_user,
    operations::delete_scim_user,
    operations::list_scim_groups,
    operations::create_scim_group,
    operations::search_scim_groups,
    operations::get_scim_group,
    operations::replace_scim_group,
    operations::patch_scim_group,
    operations::delete_scim_group,
    operations::create_scim_token,
    operations::revoke_scim_token
))]
pub struct Api;

/// The routes.
pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let a = app.clone();
    let token = warp::path!("api" / "v1" / "tenants" / String / "scim" / "token")
        .and(warp::method())
        .and(warp::header::optional::<String>("authorization"))
        .then(
            move |tenant: String, method: warp::http::Method, authorization: Option<String>| {
                let app = a.clone();
                async move { answer(token(&app, method, authorization.as_deref(), &tenant).await) }
            },
        );
    let query = warp::query::<HashMap<String, String>>()
        .or(warp::any().map(HashMap::new))
        .unify();
    let scim = warp::path!("api" / "scim" / String / "v2" / ..)
        .and(warp::path::tail())
        .and(warp::method())
        .and(query)
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("if-match"))
        .and(warp::header::headers_cloned())
        .and(body(MAX_SCIM_BODY))
        .then(
            move |tenant: String,
                  tail: warp::path::Tail,
                  method: warp::http::Method,
                  query: HashMap<String, String>,
                  authorization: Option<String>,
                  if_match: Option<String>,
                  headers: warp::http::HeaderMap,
                  body: Result<Bytes, ApiError>| {
                let app = app.clone();
                async move {
                    let request = ScimRequest {
                        tenant: &tenant,
                        tail: tail.as_str(),
                        method: &method,
                        query: &query,
                        authorization: authorization.as_deref(),
                        if_match: if_match.as_deref(),
                        headers: &headers,
                    };
                    match body {
                        Ok(body) => handle(&app, request, &body)
                            .await
                            .unwrap_or_else(scim_error),
                        Err(e) if e.status == StatusCode::PAYLOAD_TOO_LARGE => {
                            scim_error(ScimError::new(
                                413,
                                None,
                                format!("the body is larger than {MAX_SCIM_BODY} bytes"),
                            ))
                        }
                        Err(e) => scim_error(ScimError::new(400, Some("invalidSyntax"), e.message)),
                    }
                }
            },
        );
    token.or(scim).unify().boxed()
}

async fn token(
    app: &App,
    method: warp::http::Method,
    authorization: Option<&str>,
    tenant: &str,
) -> Result<Response, ApiError> {
    let admin = crate::trail::admin(&auth::admin(app, authorization).await?);
    let tenant_id = guid_segment(tenant, "tenant_id")?;
    let event = |action: &str| {
        Event::new(
            tenant_id,
            admin.clone(),
            action,
            Target::new("scim_token", tenant_id),
        )
        .change(Change::secret("token"))
    };
    // an unknown tenant is refused before anything is written into a trail under its id
    if matches!(
        method,
        warp::http::Method::POST | warp::http::Method::DELETE
    ) && app.access.tenants.get(tenant_id).await?.is_none()
    {
        return Err(ApiError::not_found(format!(
            "tenant {tenant_id} is not registered"
        )));
    }
    match method {
        warp::http::Method::POST => {
            let token = crate::trail::around(app, event("scim_token.create"), async {
                lifecycle::issue_scim_token(&app.access, &app.scim, tenant_id)
                    .await
                    .map(crate::trail::Made::from)
                    .map_err(|refusal| match refusal {
                        AccessRefusal::NotRegistered(_) => ApiError::not_found(refusal.to_string()),
                        AccessRefusal::Offboarded(_) => ApiError::conflict(refusal.to_string()),
                        AccessRefusal::Store(e) => e.into(),
                    })
            })
            .await?;
            let tenant_url = format!(
                "{}/api/scim/{tenant_id}/v2",
                app.public_base_url.as_str().trim_end_matches('/')
            );
            tracing::info!(%tenant_id, "SCIM secret token generated");
            Ok(json_reply(
                StatusCode::CREATED,
                &json!({ "token": token, "tenant_url": tenant_url }),
            ))
        }
        warp::http::Method::DELETE => {
            crate::trail::around(app, event("scim_token.revoke"), async {
                if !app.scim.revoke_token(tenant_id).await? {
                    return Err(ApiError::not_found("the tenant has no SCIM token"));
                }
                Ok(crate::trail::Made::from(()))
            })
            .await?;
            Ok(no_content())
        }
        _ => Err(ApiError::bad_request(
            "use POST to generate a token, DELETE to revoke it",
        )),
    }
}

struct ScimRequest<'a> {
    tenant: &'a str,
    tail: &'a str,
    method: &'a warp::http::Method,
    query: &'a HashMap<String, String>,
    authorization: Option<&'a str>,
    if_match: Option<&'a str>,
    headers: &'a warp::http::HeaderMap,
}

/// `attributes` and `excludedAttributes` from the query string.
fn projection(query: &HashMap<String, String>) -> (Vec<String>, Vec<String>) {
    let list = |name: &str| -> Vec<String> {
        query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| {
                v.split(',')
                    .map(|a| a.trim().to_string())
                    .filter(|a| !a.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    (list("attributes"), list("excludedAttributes"))
}

/// Applies a projection to one resource, or to every resource of a ListResponse.
fn projected(mut body: Value, (attributes, excluded): &(Vec<String>, Vec<String>)) -> Value {
    if attributes.is_empty() && excluded.is_empty() {
        return body;
    }
    match body.get_mut("Resources").and_then(Value::as_array_mut) {
        Some(items) => items
            .iter_mut()
            .for_each(|r| scim::protocol::project(r, attributes, excluded)),
        None => scim::protocol::project(&mut body, attributes, excluded),
    }
    body
}

/// A `POST .search` body as query parameters.
fn search_query(body: &Value) -> Result<HashMap<String, String>, ScimError> {
    let Value::Object(map) = body else {
        return Err(ScimError::new(
            400,
            Some("invalidSyntax"),
            "a SearchRequest is a JSON object",
        ));
    };
    let mut query = HashMap::new();
    for (k, v) in map {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            _ => continue,
        };
        query.insert(k.clone(), text);
    }
    Ok(query)
}

/// False when `excludedAttributes` names `members` (or `attributes` leaves it out).
fn wants_members(query: &HashMap<String, String>) -> bool {
    let listed = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| {
                v.split(',')
                    .map(|a| a.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
    };
    if listed("excludedAttributes").is_some_and(|l| l.iter().any(|a| a == "members")) {
        return false;
    }
    listed("attributes").is_none_or(|l| l.iter().any(|a| a == "members"))
}

fn parse_body(body: &[u8]) -> Result<Value, ScimError> {
    serde_json::from_slice(body)
        .map_err(|e| ScimError::new(400, Some("invalidSyntax"), format!("malformed JSON: {e}")))
}

fn number(query: &HashMap<String, String>, name: &str, default: usize) -> Result<usize, ScimError> {
    let found = query
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v);
    match found {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<i64>()
            .map(|n| n.max(0) as usize)
            .map_err(|_| {
                ScimError::new(
                    400,
                    Some("invalidValue"),
                    format!("{name} must be a number"),
                )
            }),
    }
}

/// A list request's `filter` (name in any case), `startIndex` and `count`.
fn listing(query: &HashMap<String, String>) -> Result<(Option<&str>, usize, usize), ScimError> {
    let filter = query
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("filter"))
        .map(|(_, v)| v.as_str());
    Ok((
        filter,
        number(query, "startIndex", 1)?,
        number(query, "count", MAX_RESULTS)?,
    ))
}

async fn handle(app: &App, request: ScimRequest<'_>, body: &[u8]) -> Result<Response, ScimError> {
    use warp::http::Method;
    let not_found = || ScimError::new(404, None, "no such SCIM resource");
    let tenant = segment(request.tenant)
        .ok()
        .and_then(|t| uuid::Uuid::try_parse(&t).ok())
        .ok_or_else(not_found)?;
    app.scim
        .authenticate(tenant, bearer(request.authorization), &app.access)
        .await?;
    let base = format!(
        "{}/api/scim/{tenant}/v2",
        app.public_base_url.as_str().trim_end_matches('/')
    );
    let parts: Vec<String> = request
        .tail
        .split('/')
        .filter(|p| !p.is_empty())
        .map(|p| segment(p).unwrap_or_default())
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let method = request.method;
    if let Some(action) = scim_action(method, &parts) {
        return audited(app, tenant, &base, &request, &parts, action, body).await;
    }
    match (method, parts.as_slice()) {
        (&Method::GET, ["ServiceProviderConfig"]) => Ok(scim_reply(
            200,
            &scim::protocol::service_provider_config(&base, MAX_SCIM_BODY, MAX_RESULTS),
        )),
        (&Method::GET, ["ResourceTypes"]) => {
            let types = scim::protocol::resource_types(&base);
            let total = types.len();
            Ok(scim_reply(
                200,
                &scim::protocol::list_response(types, total, 1),
            ))
        }
        (&Method::GET, ["ResourceTypes", id]) => scim::protocol::resource_types(&base)
            .into_iter()
            .find(|t| t["id"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(id)))
            .map(|t| scim_reply(200, &t))
            .ok_or_else(not_found),
        (&Method::GET, ["Schemas"]) => {
            let schemas = scim::protocol::schemas(&base);
            let total = schemas.len();
            Ok(scim_reply(
                200,
                &scim::protocol::list_response(schemas, total, 1),
            ))
        }
        (&Method::GET, ["Schemas", id]) => scim::protocol::schemas(&base)
            .into_iter()
            .find(|s| s["id"].as_str().is_some_and(|s| s.eq_ignore_ascii_case(id)))
            .map(|s| scim_reply(200, &s))
            .ok_or_else(not_found),
        (_, ["ServiceProviderConfig" | "ResourceTypes" | "Schemas", ..]) => Err(ScimError::new(
            405,
            None,
            "discovery endpoints are read-only",
        )),
        (&Method::GET, ["Users"]) => {
            let (filter, start, count) = listing(request.query)?;
            let list = app
                .scim
                .list_users(tenant, &base, filter, start, count)
                .await?;
            Ok(scim_reply(
                200,
                &projected(list, &projection(request.query)),
            ))
        }
        (&Method::POST, [".search"] | ["Users", ".search"] | ["Groups", ".search"]) => {
            let query = search_query(&parse_body(body)?)?;
            let (filter, start, count) = listing(&query)?;
            let list = match parts.first() {
                Some(&"Groups") => {
                    app.scim
                        .list_groups(tenant, &base, filter, start, count, wants_members(&query))
                        .await?
                }
                Some(&"Users") => {
                    app.scim
                        .list_users(tenant, &base, filter, start, count)
                        .await?
                }
                // the root searches every resource type: users, then groups, paged as
                // one list
                _ => {
                    let (start, count) = (start.max(1), count.min(MAX_RESULTS));
                    let users = app
                        .scim
                        .list_users(tenant, &base, filter, start, count)
                        .await?;
                    let users_total = users["totalResults"].as_u64().unwrap_or(0) as usize;
                    let mut page: Vec<Value> =
                        users["Resources"].as_array().cloned().unwrap_or_default();
                    let group_start = start.saturating_sub(users_total).max(1);
                    let groups = app
                        .scim
                        .list_groups(
                            tenant,
                            &base,
                            filter,
                            group_start,
                            count - page.len(),
                            wants_members(&query),
                        )
                        .await?;
                    let groups_total = groups["totalResults"].as_u64().unwrap_or(0) as usize;
                    page.extend(groups["Resources"].as_array().cloned().unwrap_or_default());
                    scim::protocol::list_response(page, users_total + groups_total, start)
                }
            };
            Ok(scim_reply(200, &projected(list, &projection(&query))))
        }
        (&Method::GET, ["Users", id]) => {
            let user = app.scim.get_user(tenant, &base, id).await?;
            Ok(scim_reply(
                200,
                &projected(user, &projection(request.query)),
            ))
        }
        (_, ["Users", ..]) => Err(ScimError::new(405, None, "method not allowed on Users")),
        (&Method::GET, ["Groups"]) => {
            let (filter, start, count) = listing(request.query)?;
            let list = app
                .scim
                .list_groups(
                    tenant,
                    &base,
                    filter,
                    start,
                    count,
                    wants_members(request.query),
                )
                .await?;
            Ok(scim_reply(
                200,
                &projected(list, &projection(request.query)),
            ))
        }
        (&Method::GET, ["Groups", id]) => {
            let group = app
                .scim
                .get_group(tenant, &base, id, wants_members(request.query))
                .await?;
            Ok(scim_reply(
                200,
                &projected(group, &projection(request.query)),
            ))
        }
        (_, ["Groups", ..]) => Err(ScimError::new(405, None, "method not allowed on Groups")),
        _ => Err(not_found()),
    }
}

/// The operations of the document, one per method and path the handlers above serve (SCIM
/// at the level of RFC 7644: the resources' own attributes are in `/Schemas`).
#[allow(dead_code)]
mod operations {
    #[utoipa::path(
        get,
        path = "/api/scim/{tenant_id}/v2/ServiceProviderConfig",
        operation_id = "getScimServiceProviderConfig",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path)),
        responses(
            (status = 200, description = "What this endpoint supports", content_type = "application/scim+json", body = crate::openapi::schemas::ScimResource),
        )
    )]
    pub(super) fn get_scim_service_provider_config() {}
    #[utoipa::path(
        get,
        path = "/api/scim/{tenant_id}/v2/ResourceTypes",
        operation_id = "listScimResourceTypes",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path)),
        responses(
            (status = 200, description = "User and Group", content_type = "application/scim+json", body = crate::openapi::schemas::ScimListResponse),
        )
    )]
    pub(super) fn list_scim_resource_types() {}
    #[utoipa::path(
        get,
        path = "/api/scim/{tenant_id}/v2/ResourceTypes/{id}",
        operation_id = "getScimResourceType",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("id" = String, Path, min_length = 1, max_length = 256)),
        responses(
            (status = 200, description = "The resource type", content_type = "application/scim+json", body = crate::openapi::schemas::ScimResource),
        )
    )]
    pub(super) fn get_scim_resource_type() {}
    #[utoipa::path(
        get,
        path = "/api/scim/{tenant_id}/v2/Schemas",
        operation_id = "listScimSchemas",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path)),
        responses(
            (status = 200, description = "The schemas of users and groups", content_type = "application/scim+json", body = crate::openapi::schemas::ScimListResponse),
        )
    )]
    pub(super) fn list_scim_schemas() {}
    #[utoipa::path(
        get,
        path = "/api/scim/{tenant_id}/v2/Schemas/{id}",
        operation_id = "getScimSchema",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("id" = String, Path, min_length = 1, max_length = 256)),
        responses(
            (status = 200, description = "The schema", content_type = "application/scim+json", body = crate::openapi::schemas::ScimResource),
        )
    )]
    pub(super) fn get_scim_schema() {}
    #[utoipa::path(
        get,
        path = "/api/scim/{tenant_id}/v2/Users",
        operation_id = "listScimUsers",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("filter" = Option<String>, Query, description = "An RFC 7644 filter"), ("startIndex" = Option<i64>, Query), ("count" = Option<i64>, Query, description = "At most 200"), ("attributes" = Option<String>, Query), ("excludedAttributes" = Option<String>, Query)),
        responses(
            (status = 200, description = "A page of matching users", content_type = "application/scim+json", body = crate::openapi::schemas::ScimListResponse),
        )
    )]
    pub(super) fn list_scim_users() {}
    #[utoipa::path(
        post,
        path = "/api/scim/{tenant_id}/v2/Users",
        operation_id = "createScimUser",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path)),
        request_body(content = crate::openapi::schemas::ScimUserRequest, content_type = "application/scim+json"),
        responses(
            (status = 201, description = "The user", content_type = "application/scim+json", body = crate::openapi::schemas::ScimResource, headers(("ETag" = String, description = "The resource's `meta.version`, for `If-Match`"), ("Location" = String, description = "The new resource's URI, its `meta.location`")), links(
                ("GetUser" = (operation_id = "getScimUser", parameters(("tenant_id" = "$request.path.tenant_id"), ("user_id" = "$response.body#/id")))),
                ("ReplaceUser" = (operation_id = "replaceScimUser", parameters(("tenant_id" = "$request.path.tenant_id"), ("user_id" = "$response.body#/id")))),
                ("PatchUser" = (operation_id = "patchScimUser", parameters(("tenant_id" = "$request.path.tenant_id"), ("user_id" = "$response.body#/id")))),
                ("DeleteUser" = (operation_id = "deleteScimUser", parameters(("tenant_id" = "$request.path.tenant_id"), ("user_id" = "$response.body#/id")))),
                ("GetProvisionedUser" = (operation_id = "getProvisionedUser", parameters(("tenant_id" = "$request.path.tenant_id"), ("user_id" = "$response.body#/id")))),
                ("GetProvisionedUserSettings" = (operation_id = "getProvisionedUserSettings", parameters(("tenant_id" = "$request.path.tenant_id"), ("user_id" = "$response.body#/id")))),
                ("InviteProvisionedUser" = (operation_id = "inviteProvisionedUser", parameters(("tenant_id" = "$request.path.tenant_id"), ("user_id" = "$response.body#/id"))))
            )),
            (status = 409, description = "`uniqueness`: the userName is taken", content_type = "application/scim+json", body = crate::openapi::schemas::ScimErrorBody),
        )
    )]
    pub(super) fn create_scim_user() {}
    #[utoipa::path(
        post,
        path = "/api/scim/{tenant_id}/v2/Users/.search",
        operation_id = "searchScimUsers",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path)),
        request_body(content = crate::openapi::schemas::ScimSearchRequest, content_type = "application/scim+json"),
        responses(
            (status = 200, description = "A page of matching users", content_type = "application/scim+json", body = crate::openapi::schemas::ScimListResponse),
        )
    )]
    pub(super) fn search_scim_users() {}
    #[utoipa::path(
        get,
        path = "/api/scim/{tenant_id}/v2/Users/{user_id}",
        operation_id = "getScimUser",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("user_id" = String, Path, min_length = 1, max_length = 256), ("attributes" = Option<String>, Query), ("excludedAttributes" = Option<String>, Query)),
        responses(
            (status = 200, description = "The user", content_type = "application/scim+json", body = crate::openapi::schemas::ScimResource, headers(("ETag" = String, description = "The resource's `meta.version`, for `If-Match`"))),
        )
    )]
    pub(super) fn get_scim_user() {}
    #[utoipa::path(
        put,
        path = "/api/scim/{tenant_id}/v2/Users/{user_id}",
        operation_id = "replaceScimUser",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("user_id" = String, Path, min_length = 1, max_length = 256), ("If-Match" = Option<String>, Header, description = "A `meta.version`: the change applies only to that version")),
        request_body(content = crate::openapi::schemas::ScimUserRequest, content_type = "application/scim+json"),
        responses(
            (status = 200, description = "The user, replaced", content_type = "application/scim+json", body = crate::openapi::schemas::ScimResource, headers(("ETag" = String, description = "The resource's `meta.version`, for `If-Match`"))),
            (status = 409, description = "`uniqueness`: the userName is taken", content_type = "application/scim+json", body = crate::openapi::schemas::ScimErrorBody),
            (status = 412, description = "`If-Match` names another version", content_type = "application/scim+json", body = crate::openapi::schemas::ScimErrorBody),
        )
    )]
    pub(super) fn replace_scim_user() {}
    #[utoipa::path(
        patch,
        path = "/api/scim/{tenant_id}/v2/Users/{user_id}",
        operation_id = "patchScimUser",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("user_id" = String, Path, min_length = 1, max_length = 256), ("If-Match" = Option<String>, Header, description = "A `meta.version`: the change applies only to that version")),
        request_body(content = crate::openapi::schemas::ScimPatchOp, content_type = "application/scim+json"),
        responses(
            (status = 200, description = "The user, changed", content_type = "application/scim+json", body = crate::openapi::schemas::ScimResource, headers(("ETag" = String, description = "The resource's `meta.version`, for `If-Match`"))),
            (status = 409, description = "`uniqueness`: the userName is taken", content_type = "application/scim+json", body = crate::openapi::schemas::ScimErrorBody),
            (status = 412, description = "`If-Match` names another version", content_type = "application/scim+json", body = crate::openapi::schemas::ScimErrorBody),
        )
    )]
    pub(super) fn patch_scim_user() {}
    #[utoipa::path(
        delete,
        path = "/api/scim/{tenant_id}/v2/Users/{user_id}",
        operation_id = "deleteScimUser",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("user_id" = String, Path, min_length = 1, max_length = 256), ("If-Match" = Option<String>, Header, description = "A `meta.version`: the change applies only to that version")),
        responses(
            (status = 204, description = "Deleted, with its memberships"),
            (status = 412, description = "`If-Match` names another version", content_type = "application/scim+json", body = crate::openapi::schemas::ScimErrorBody),
        )
    )]
    pub(super) fn delete_scim_user() {}
    #[utoipa::path(
        get,
        path = "/api/scim/{tenant_id}/v2/Groups",
        operation_id = "listScimGroups",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("filter" = Option<String>, Query, description = "An RFC 7644 filter"), ("startIndex" = Option<i64>, Query), ("count" = Option<i64>, Query, description = "At most 200"), ("attributes" = Option<String>, Query), ("excludedAttributes" = Option<String>, Query)),
        responses(
            (status = 200, description = "A page of matching groups", content_type = "application/scim+json", body = crate::openapi::schemas::ScimListResponse),
        )
    )]
    pub(super) fn list_scim_groups() {}
    #[utoipa::path(
        post,
        path = "/api/scim/{tenant_id}/v2/Groups",
        operation_id = "createScimGroup",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path)),
        request_body(content = crate::openapi::schemas::ScimGroupRequest, content_type = "application/scim+json"),
        responses(
            (status = 201, description = "The group", content_type = "application/scim+json", body = crate::openapi::schemas::ScimResource, headers(("ETag" = String, description = "The resource's `meta.version`, for `If-Match`"), ("Location" = String, description = "The new resource's URI, its `meta.location`")), links(
                ("GetGroup" = (operation_id = "getScimGroup", parameters(("tenant_id" = "$request.path.tenant_id"), ("group_id" = "$response.body#/id")))),
                ("ReplaceGroup" = (operation_id = "replaceScimGroup", parameters(("tenant_id" = "$request.path.tenant_id"), ("group_id" = "$response.body#/id")))),
                ("PatchGroup" = (operation_id = "patchScimGroup", parameters(("tenant_id" = "$request.path.tenant_id"), ("group_id" = "$response.body#/id")))),
                ("DeleteGroup" = (operation_id = "deleteScimGroup", parameters(("tenant_id" = "$request.path.tenant_id"), ("group_id" = "$response.body#/id")))),
                ("GetProvisionedGroupSettings" = (operation_id = "getProvisionedGroupSettings", parameters(("tenant_id" = "$request.path.tenant_id"), ("group_id" = "$response.body#/id"))))
            )),
            (status = 409, description = "`uniqueness`: the displayName is taken", content_type = "application/scim+json", body = crate::openapi::schemas::ScimErrorBody),
        )
    )]
    pub(super) fn create_scim_group() {}
    #[utoipa::path(
        post,
        path = "/api/scim/{tenant_id}/v2/Groups/.search",
        operation_id = "searchScimGroups",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path)),
        request_body(content = crate::openapi::schemas::ScimSearchRequest, content_type = "application/scim+json"),
        responses(
            (status = 200, description = "A page of matching groups", content_type = "application/scim+json", body = crate::openapi::schemas::ScimListResponse),
        )
    )]
    pub(super) fn search_scim_groups() {}
    #[utoipa::path(
        get,
        path = "/api/scim/{tenant_id}/v2/Groups/{group_id}",
        operation_id = "getScimGroup",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("group_id" = String, Path, min_length = 1, max_length = 256), ("attributes" = Option<String>, Query), ("excludedAttributes" = Option<String>, Query)),
        responses(
            (status = 200, description = "The group", content_type = "application/scim+json", body = crate::openapi::schemas::ScimResource, headers(("ETag" = String, description = "The resource's `meta.version`, for `If-Match`"))),
        )
    )]
    pub(super) fn get_scim_group() {}
    #[utoipa::path(
        put,
        path = "/api/scim/{tenant_id}/v2/Groups/{group_id}",
        operation_id = "replaceScimGroup",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("group_id" = String, Path, min_length = 1, max_length = 256), ("If-Match" = Option<String>, Header, description = "A `meta.version`: the change applies only to that version")),
        request_body(content = crate::openapi::schemas::ScimGroupRequest, content_type = "application/scim+json"),
        responses(
            (status = 200, description = "The group, replaced", content_type = "application/scim+json", body = crate::openapi::schemas::ScimResource, headers(("ETag" = String, description = "The resource's `meta.version`, for `If-Match`"))),
            (status = 409, description = "`uniqueness`: the displayName is taken", content_type = "application/scim+json", body = crate::openapi::schemas::ScimErrorBody),
            (status = 412, description = "`If-Match` names another version", content_type = "application/scim+json", body = crate::openapi::schemas::ScimErrorBody),
        )
    )]
    pub(super) fn replace_scim_group() {}
    #[utoipa::path(
        patch,
        path = "/api/scim/{tenant_id}/v2/Groups/{group_id}",
        operation_id = "patchScimGroup",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("group_id" = String, Path, min_length = 1, max_length = 256), ("If-Match" = Option<String>, Header, description = "A `meta.version`: the change applies only to that version")),
        request_body(content = crate::openapi::schemas::ScimPatchOp, content_type = "application/scim+json"),
        responses(
            (status = 204, description = "Changed"),
            (status = 409, description = "`uniqueness`: the displayName is taken", content_type = "application/scim+json", body = crate::openapi::schemas::ScimErrorBody),
            (status = 412, description = "`If-Match` names another version", content_type = "application/scim+json", body = crate::openapi::schemas::ScimErrorBody),
        )
    )]
    pub(super) fn patch_scim_group() {}
    #[utoipa::path(
        delete,
        path = "/api/scim/{tenant_id}/v2/Groups/{group_id}",
        operation_id = "deleteScimGroup",
        tag = "SCIM",
        security(("scim_token" = [])),
        params(("tenant_id" = uuid::Uuid, Path), ("group_id" = String, Path, min_length = 1, max_length = 256), ("If-Match" = Option<String>, Header, description = "A `meta.version`: the change applies only to that version")),
        responses(
            (status = 204, description = "Deleted, with its member rows"),
            (status = 412, description = "`If-Match` names another version", content_type = "application/scim+json", body = crate::openapi::schemas::ScimErrorBody),
        )
    )]
    pub(super) fn delete_scim_group() {}
    #[utoipa::path(
        post,
        path = "/api/v1/tenants/{tenant_id}/scim/token",
        operation_id = "createScimToken",
        tag = "SCIM admin",
        security(("entra_admin" = [])),
        params(("tenant_id" = uuid::Uuid, Path)),
        responses(
            (status = 201, description = "The Secret Token (shown once; it replaces the previous one) and the Tenant URL", body = crate::openapi::schemas::ScimTokenBody),
            (status = 409, description = "The tenant is offboarded", body = crate::openapi::schemas::ErrorBody),
        )
    )]
    pub(super) fn create_scim_token() {}
    #[utoipa::path(
        delete,
        path = "/api/v1/tenants/{tenant_id}/scim/token",
        operation_id = "revokeScimToken",
        tag = "SCIM admin",
        security(("entra_admin" = [])),
        params(("tenant_id" = uuid::Uuid, Path)),
        responses(
            (status = 204, description = "Revoked"),
        )
    )]
    pub(super) fn revoke_scim_token() {}
}

/// The audit action of a request that changes something (`scim.user.create`, ...).
fn scim_action(method: &warp::http::Method, parts: &[&str]) -> Option<&'static str> {
    use warp::http::Method;
    Some(match (method, parts) {
        (&Method::POST, ["Users"]) => "scim.user.create",
        (&Method::PUT, ["Users", _]) => "scim.user.replace",
        (&Method::PATCH, ["Users", _]) => "scim.user.update",
        (&Method::DELETE, ["Users", _]) => "scim.user.delete",
        (&Method::POST, ["Groups"]) => "scim.group.create",
        (&Method::PUT, ["Groups", _]) => "scim.group.replace",
        (&Method::PATCH, ["Groups", _]) => "scim.group.update",
        (&Method::DELETE, ["Groups", _]) => "scim.group.delete",
        _ => return None,
    })
}

/// The object a SCIM request is about, as far as the request says (a create names no id
/// yet: its externalId or name stands in until the answer gives one).
fn requested_target(parts: &[&str], body: Option<&Value>) -> Target {
    let kind = if parts.first() == Some(&"Groups") {
        "group"
    } else {
        "user"
    };
    let display = body.and_then(|b| {
        b.get("userName")
            .or_else(|| b.get("displayName"))
            .and_then(Value::as_str)
    });
    let id = parts.get(1).map(|s| s.to_string()).or_else(|| {
        body.and_then(|b| b.get("externalId").and_then(Value::as_str))
            .or(display)
            .map(str::to_string)
    });
    let target = Target::new(kind, id.unwrap_or_default());
    match display {
        Some(d) => target.display(d),
        None => target,
    }
}

/// Entra's PATCH operations as changes: the path (or each key of a pathless value) and the
/// value it was given; a remove's value is what was removed.
fn patch_changes(body: &Value) -> Vec<Change> {
    let ops = body
        .get("Operations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut changes = Vec::new();
    for op in ops {
        let kind = op
            .get("op")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let value = op.get("value").cloned();
        let entries: Vec<(String, Option<Value>)> = match op.get("path").and_then(Value::as_str) {
            Some(path) => vec![(path.to_string(), value)],
            None => match value {
                Some(Value::Object(map)) => map.into_iter().map(|(k, v)| (k, Some(v))).collect(),
                other => vec![(String::new(), other)],
            },
        };
        for (attribute, value) in entries {
            changes.push(if kind == "remove" {
                Change::new(attribute, value.or(Some(Value::Null)), None)
            } else {
                Change::new(attribute, None, value)
            });
        }
    }
    changes
}

/// Runs a change and records it (or its failure) before answering; a change whose record
/// cannot be written answers 503 so that Entra retries it. A user write commits its event
/// in its own transaction (an outbox row, moved to the trail after the answer); a group
/// write, which may take several transactions, records its event write-ahead (pending,
/// then finished).
async fn audited(
    app: &App,
    tenant: uuid::Uuid,
    base: &str,
    request: &ScimRequest<'_>,
    parts: &[&str],
    action: &'static str,
    body: &[u8],
) -> Result<Response, ScimError> {
    let parsed = if body.is_empty() {
        None
    } else {
        serde_json::from_slice::<Value>(body).ok()
    };
    let unrecorded = || {
        ScimError::new(
            503,
            None,
            "the change could not be recorded in the audit trail; try again",
        )
    };
    let correlation = ["client-request-id", "x-ms-client-request-id", "request-id"]
        .iter()
        .find_map(|h| request.headers.get(*h).and_then(|v| v.to_str().ok()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let new_event = || {
        Event::new(
            tenant,
            Actor::entra_provisioning(),
            action,
            requested_target(parts, parsed.as_ref()),
        )
        .invocation(crate::trail::invocation_id(request.headers))
        .correlation(correlation.clone())
    };
    // the bench baseline measures SCIM without any audit write
    let journaled = parts.first() == Some(&"Users") && !cfg!(feature = "bench-without-audit");
    if journaled {
        let journal = Outboxed {
            event: new_event(),
            partition: tenant.to_string(),
            written: std::sync::Mutex::new(None),
        };
        let result = change(app, tenant, base, request, parts, body, Some(&journal)).await;
        let written = journal
            .written
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        match result {
            Ok((response, _, _)) => {
                // the last row made is the one that committed
                if let Some(event) = written {
                    app.outbox
                        .moved(app.scim.table(), &journal.partition, event);
                }
                Ok(response)
            }
            Err(e) => {
                // a row may have committed before a later step failed (the change was
                // made): it goes to the trail first, then the failure as its own event;
                // a row that cannot be looked at now is the sweep's
                if let Some(event) = written
                    && let Err(settle) = app
                        .outbox
                        .settle(app.scim.table(), &journal.partition, &event)
                        .await
                {
                    tracing::warn!(error = %settle, "SCIM outbox row left to the sweep");
                }
                crate::trail::record(app, new_event().failed(e.status, e.detail.clone()))
                    .await
                    .map_err(|_| unrecorded())?;
                Err(e)
            }
        }
    } else {
        // recorded before the change: a change is never made without its record
        let pending = app
            .audit
            .begin(new_event())
            .await
            .map_err(|_| unrecorded())?;
        let result = change(app, tenant, base, request, parts, body, None).await;
        let finished = pending
            .finish(|event| match &result {
                Ok((_, id, changes)) => {
                    let mut event = event.changes(changes.clone());
                    if let Some(id) = id {
                        event.target.id = id.clone();
                    }
                    event
                }
                Err(e) => event.failed(e.status, e.detail.clone()),
            })
            .await;
        if finished.is_err() {
            // the event stays pending: what happened is in the trail, how it ended is not
            return Err(unrecorded());
        }
        result.map(|(response, _, _)| response)
    }
}

/// The audit outbox row of a SCIM user write: the request's event with the user's id and
/// what changed, remembered so that the one that committed is the one moved.
struct Outboxed {
    event: Event,
    partition: String,
    written: std::sync::Mutex<Option<Event>>,
}

impl crate::provisioning::Journal for Outboxed {
    fn row(&self, id: uuid::Uuid, changes: &[Change]) -> tables::Entity {
        let mut event = self.event.clone().changes(changes.to_vec());
        event.target.id = id.to_string();
        let row = audit::outbox::entity(&event, &self.partition);
        *self.written.lock().unwrap_or_else(|p| p.into_inner()) = Some(event);
        row
    }
}

/// A changing request: the answer, the object's id and what changed.
async fn change(
    app: &App,
    tenant: uuid::Uuid,
    base: &str,
    request: &ScimRequest<'_>,
    parts: &[&str],
    body: &[u8],
    journal: Option<&dyn crate::provisioning::Journal>,
) -> Result<(Response, Option<String>, Vec<Change>), ScimError> {
    use warp::http::Method;
    let id_of = |v: &Value| v.get("id").and_then(Value::as_str).map(str::to_string);
    match (request.method, parts) {
        (&Method::POST, ["Users"]) => {
            let (user, changes) = app
                .scim
                .create_user(tenant, base, &parse_body(body)?, journal)
                .await?;
            Ok((scim_reply(201, &user), id_of(&user), changes))
        }
        (&Method::PUT, ["Users", id]) => {
            let (user, changes) = app
                .scim
                .replace_user_changes(
                    tenant,
                    base,
                    id,
                    &parse_body(body)?,
                    request.if_match,
                    journal,
                )
                .await?;
            Ok((scim_reply(200, &user), None, changes))
        }
        (&Method::PATCH, ["Users", id]) => {
            let (user, changes) = app
                .scim
                .patch_user_changes(
                    tenant,
                    base,
                    id,
                    &parse_body(body)?,
                    request.if_match,
                    journal,
                )
                .await?;
            Ok((scim_reply(200, &user), None, changes))
        }
        (&Method::DELETE, ["Users", id]) => {
            app.scim
                .delete_user(tenant, id, request.if_match, journal)
                .await?;
            Ok((no_content(), None, Vec::new()))
        }
        (&Method::POST, ["Groups"]) => {
            let group = app
                .scim
                .create_group(tenant, base, &parse_body(body)?)
                .await?;
            let changes = audit::diff(&Value::Null, &group);
            Ok((scim_reply(201, &group), id_of(&group), changes))
        }
        (&Method::PUT, ["Groups", id]) => {
            let body = parse_body(body)?;
            let group = app
                .scim
                .replace_group(tenant, base, id, &body, request.if_match)
                .await?;
            let changes = audit::diff(&Value::Null, &body);
            Ok((scim_reply(200, &group), None, changes))
        }
        (&Method::PATCH, ["Groups", id]) => {
            let body = parse_body(body)?;
            app.scim
                .patch_group(tenant, id, &body, request.if_match)
                .await?;
            Ok((no_content(), None, patch_changes(&body)))
        }
        (&Method::DELETE, ["Groups", id]) => {
            app.scim.delete_group(tenant, id, request.if_match).await?;
            Ok((no_content(), None, Vec::new()))
        }
        _ => Err(ScimError::new(405, None, "method not allowed")),
    }
}
