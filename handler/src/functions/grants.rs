//! `AccessGrants`: which principals of which tenants may call the Connector API, with which
//! scopes. `POST/GET /api/v1/access/grants`, `GET/PUT/DELETE /api/v1/access/grants/{id}`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, filters::BoxedFilter};

use crate::app::App;
use crate::auth;
use crate::domain::{Grant, Principal, parse_scopes};
use crate::lifecycle::{self, AccessRefusal};
use crate::routes::{
    ApiError, MAX_JSON_BODY, answer, body, guid_segment, json_reply, no_content, parse_json,
};

/// The routes.
pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let auth = warp::header::optional::<String>("authorization");
    let a = app.clone();
    let list = warp::path!("api" / "v1" / "access" / "grants")
        .and(warp::get())
        .and(auth)
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .then(move |authorization: Option<String>, query: String| {
            let app = a.clone();
            async move { answer(list(&app, authorization.as_deref(), &query).await) }
        });
    let a = app.clone();
    let create = warp::path!("api" / "v1" / "access" / "grants")
        .and(warp::post())
        .and(auth)
        .and(body(MAX_JSON_BODY))
        .then(
            move |authorization: Option<String>, body: Result<Bytes, ApiError>| {
                let app = a.clone();
                async move {
                    answer(match body {
                        Ok(body) => create(&app, authorization.as_deref(), &body).await,
                        Err(e) => Err(e),
                    })
                }
            },
        );
    let a = app.clone();
    let get = warp::path!("api" / "v1" / "access" / "grants" / String)
        .and(warp::get())
        .and(auth)
        .then(move |id: String, authorization: Option<String>| {
            let app = a.clone();
            async move { answer(get(&app, authorization.as_deref(), &id).await) }
        });
    let a = app.clone();
    let update = warp::path!("api" / "v1" / "access" / "grants" / String)
        .and(warp::put())
        .and(auth)
        .and(body(MAX_JSON_BODY))
        .then(
            move |id: String, authorization: Option<String>, body: Result<Bytes, ApiError>| {
                let app = a.clone();
                async move {
                    answer(match body {
                        Ok(body) => update(&app, authorization.as_deref(), &id, &body).await,
                        Err(e) => Err(e),
                    })
                }
            },
        );
    let delete = warp::path!("api" / "v1" / "access" / "grants" / String)
        .and(warp::delete())
        .and(auth)
        .then(move |id: String, authorization: Option<String>| {
            let app = app.clone();
            async move { answer(delete(&app, authorization.as_deref(), &id).await) }
        });
    list.or(create)
        .unify()
        .or(get)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
        .boxed()
}

/// A grant as the API shows it.
fn grant_json(g: &Grant) -> Value {
    let mut body = json!({
        "id": g.id,
        "tenant_id": g.tenant_id,
        "kind": g.principal.kind(),
        "scopes": g.scopes,
        "created_at": host::invocation::format_timestamp(g.created_at),
        "updated_at": host::invocation::format_timestamp(g.updated_at),
        "last_used_at": g.last_used_at.map(host::invocation::format_timestamp),
        "revoked_at": g.revoked_at.map(host::invocation::format_timestamp),
    });
    match g.principal {
        Principal::User { object_id } => body["object_id"] = json!(object_id),
        Principal::ServicePrincipal { client_id } => body["client_id"] = json!(client_id),
    }
    body
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGrant {
    tenant_id: String,
    kind: String,
    #[serde(default)]
    object_id: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantUpdate {
    scopes: Vec<String>,
}

fn guid_field(value: &str, name: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(value).map_err(|_| ApiError::bad_request(format!("{name} must be a GUID")))
}

async fn create(app: &App, authorization: Option<&str>, body: &[u8]) -> Result<Response, ApiError> {
    auth::admin(app, authorization).await?;
    let new: NewGrant = parse_json(body)?;
    let tenant_id = guid_field(&new.tenant_id, "tenant_id")?;
    let principal = match (new.kind.as_str(), &new.object_id, &new.client_id) {
        ("user", Some(oid), None) => Principal::User {
            object_id: guid_field(oid, "object_id")?,
        },
        ("service_principal", None, Some(client)) => Principal::ServicePrincipal {
            client_id: guid_field(client, "client_id")?,
        },
        ("user", _, _) => {
            return Err(ApiError::bad_request(
                "a user grant names object_id (and no client_id)",
            ));
        }
        ("service_principal", _, _) => {
            return Err(ApiError::bad_request(
                "a service_principal grant names client_id (and no object_id)",
            ));
        }
        (other, _, _) => {
            return Err(ApiError::bad_request(format!(
                "kind {other:?}: expected user or service_principal"
            )));
        }
    };
    let scopes = parse_scopes(&new.scopes, &app.connector_scopes).map_err(ApiError::bad_request)?;
    let now = OffsetDateTime::now_utc();
    let grant = Grant {
        id: Uuid::new_v4(),
        tenant_id,
        principal,
        scopes,
        created_at: now,
        updated_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    lifecycle::create_grant(&app.access, &grant)
        .await
        .map_err(|refusal| match refusal {
            AccessRefusal::NotRegistered(_) => ApiError::bad_request(refusal.to_string()),
            AccessRefusal::Offboarded(_) => ApiError::conflict(refusal.to_string()),
            AccessRefusal::Store(e) => e.into(),
        })?;
    tracing::info!(grant_id = %grant.id, %tenant_id, kind = grant.principal.kind(), "grant created");
    Ok(json_reply(StatusCode::CREATED, &grant_json(&grant)))
}

async fn list(app: &App, authorization: Option<&str>, query: &str) -> Result<Response, ApiError> {
    auth::admin(app, authorization).await?;
    let params: HashMap<String, String> = serde_urlencoded_pairs(query)
        .map_err(|_| ApiError::bad_request("the query string is malformed"))?;
    let tenant = params
        .get("tenant_id")
        .map(|t| guid_field(t, "tenant_id"))
        .transpose()?;
    let mut grants = app.access.grants.list(tenant).await?;
    grants.sort_by_key(|g| g.created_at);
    let grants: Vec<Value> = grants.iter().map(grant_json).collect();
    Ok(json_reply(StatusCode::OK, &json!({ "grants": grants })))
}

/// Splits `a=b&c=d` with percent-decoding (`+` is a space).
fn serde_urlencoded_pairs(query: &str) -> Result<HashMap<String, String>, ()> {
    let mut out = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| ())
        };
        out.insert(decode(k)?, decode(v)?);
    }
    Ok(out)
}

async fn get(app: &App, authorization: Option<&str>, id: &str) -> Result<Response, ApiError> {
    auth::admin(app, authorization).await?;
    let id = guid_segment(id, "grant id")?;
    let grant = app
        .access
        .grants
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no grant {id}")))?;
    Ok(json_reply(StatusCode::OK, &grant_json(&grant)))
}

async fn update(
    app: &App,
    authorization: Option<&str>,
    id: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    auth::admin(app, authorization).await?;
    let id = guid_segment(id, "grant id")?;
    let change: GrantUpdate = parse_json(body)?;
    let scopes =
        parse_scopes(&change.scopes, &app.connector_scopes).map_err(ApiError::bad_request)?;
    let grant = app
        .access
        .grants
        .update_scopes(id, &scopes, OffsetDateTime::now_utc())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no grant {id}")))?;
    app.access.invalidate_grants(grant.tenant_id);
    Ok(json_reply(StatusCode::OK, &grant_json(&grant)))
}

async fn delete(app: &App, authorization: Option<&str>, id: &str) -> Result<Response, ApiError> {
    auth::admin(app, authorization).await?;
    let id = guid_segment(id, "grant id")?;
    let grant = app
        .access
        .grants
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no grant {id}")))?;
    app.access.grants.delete(id).await?;
    app.access.invalidate_grants(grant.tenant_id);
    tracing::info!(grant_id = %id, tenant_id = %grant.tenant_id, "grant deleted");
    Ok(no_content())
}
