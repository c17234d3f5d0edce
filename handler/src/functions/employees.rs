//! `TenantEmployees`: employee records that user access depends on.
//! `PUT/GET/DELETE /api/v1/tenants/{tenant_id}/employees/{employee_id}`.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, filters::BoxedFilter};

use crate::app::App;
use crate::auth;
use crate::domain::{Employee, Position, check_positions, parse_employee_id};
use crate::routes::{
    ApiError, MAX_JSON_BODY, answer, body, guid_segment, json_reply, no_content, parse_json,
    segment,
};

/// The routes.
pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let auth = warp::header::optional::<String>("authorization");
    let a = app.clone();
    let put = warp::path!("api" / "v1" / "tenants" / String / "employees" / String)
        .and(warp::put())
        .and(auth)
        .and(body(MAX_JSON_BODY))
        .then(
            move |tenant: String,
                  employee: String,
                  authorization: Option<String>,
                  body: Result<Bytes, ApiError>| {
                let app = a.clone();
                async move {
                    answer(match body {
                        Ok(body) => {
                            put(&app, authorization.as_deref(), &tenant, &employee, &body).await
                        }
                        Err(e) => Err(e),
                    })
                }
            },
        );
    let a = app.clone();
    let get = warp::path!("api" / "v1" / "tenants" / String / "employees" / String)
        .and(warp::get())
        .and(auth)
        .then(
            move |tenant: String, employee: String, authorization: Option<String>| {
                let app = a.clone();
                async move { answer(get(&app, authorization.as_deref(), &tenant, &employee).await) }
            },
        );
    let delete =
        warp::path!("api" / "v1" / "tenants" / String / "employees" / String)
            .and(warp::delete())
            .and(auth)
            .then(
                move |tenant: String, employee: String, authorization: Option<String>| {
                    let app = app.clone();
                    async move {
                        answer(delete(&app, authorization.as_deref(), &tenant, &employee).await)
                    }
                },
            );
    put.or(get).unify().or(delete).unify().boxed()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmployeeBody {
    object_id: String,
    positions: Vec<Position>,
}

fn employee_json(e: &Employee) -> Value {
    let today = OffsetDateTime::now_utc().date();
    json!({
        "tenant_id": e.tenant_id,
        "employee_id": e.employee_id,
        "object_id": e.object_id,
        "positions": e.positions,
        "active": e.is_active_on(today),
        "updated_at": host::invocation::format_timestamp(e.updated_at),
    })
}

async fn registered_tenant(app: &App, raw: &str) -> Result<uuid::Uuid, ApiError> {
    let tenant_id = guid_segment(raw, "tenant_id")?;
    app.access
        .tenants
        .get(tenant_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenant {tenant_id} is not registered")))?;
    Ok(tenant_id)
}

async fn put(
    app: &App,
    authorization: Option<&str>,
    tenant: &str,
    employee: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    auth::admin(app, authorization).await?;
    let tenant_id = registered_tenant(app, tenant).await?;
    let employee_id = parse_employee_id(&segment(employee)?).map_err(ApiError::bad_request)?;
    let record: EmployeeBody = parse_json(body)?;
    let object_id = uuid::Uuid::try_parse(&record.object_id)
        .map_err(|_| ApiError::bad_request("object_id must be a GUID"))?;
    check_positions(&record.positions).map_err(ApiError::bad_request)?;
    let previous = app.access.employees.get(tenant_id, &employee_id).await?;
    let employee = Employee {
        tenant_id,
        employee_id,
        object_id,
        positions: record.positions,
        updated_at: OffsetDateTime::now_utc(),
    };
    let created = app.access.employees.put(&employee).await?;
    app.access.invalidate_employee(tenant_id, object_id);
    if let Some(previous) = previous {
        app.access
            .invalidate_employee(tenant_id, previous.object_id);
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_reply(status, &employee_json(&employee)))
}

async fn get(
    app: &App,
    authorization: Option<&str>,
    tenant: &str,
    employee: &str,
) -> Result<Response, ApiError> {
    auth::admin(app, authorization).await?;
    let tenant_id = guid_segment(tenant, "tenant_id")?;
    let employee_id = segment(employee)?;
    let record = app
        .access
        .employees
        .get(tenant_id, &employee_id)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("no employee {employee_id:?} in tenant {tenant_id}"))
        })?;
    Ok(json_reply(StatusCode::OK, &employee_json(&record)))
}

async fn delete(
    app: &App,
    authorization: Option<&str>,
    tenant: &str,
    employee: &str,
) -> Result<Response, ApiError> {
    auth::admin(app, authorization).await?;
    let tenant_id = guid_segment(tenant, "tenant_id")?;
    let employee_id = segment(employee)?;
    let Some(record) = app.access.employees.get(tenant_id, &employee_id).await? else {
        return Err(ApiError::not_found(format!(
            "no employee {employee_id:?} in tenant {tenant_id}"
        )));
    };
    app.access.employees.delete(tenant_id, &employee_id).await?;
    app.access.invalidate_employee(tenant_id, record.object_id);
    Ok(no_content())
}
