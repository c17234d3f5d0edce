//! `TenantEmployees`: employee records that user access depends on.
//! `PUT/GET/DELETE /api/v1/tenants/{tenant_id}/employees/{employee_id}`.

use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::app::App;
use crate::auth;
use crate::domain::{Employee, Position, check_positions, parse_employee_id};
use crate::openapi::schemas::{EmployeeRecord, ErrorBody};
use crate::route;
use crate::routes::router::{Request, Route};
use crate::routes::{ApiError, json_reply, no_content};
use crate::trail::{self, Made};
use audit::Target;

/// The routes.
pub const ROUTES: &[Route] = &[
    route!(PUT "/api/v1/tenants/{tenant_id}/employees/{employee_id}" => put),
    route!(GET "/api/v1/tenants/{tenant_id}/employees/{employee_id}" => get),
    route!(DELETE "/api/v1/tenants/{tenant_id}/employees/{employee_id}" => delete),
];

/// This module's part of the document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(put, get, delete))]
pub struct Api;

/// An employee record: the user's object id and the positions held.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"object_id": "2819c223-7f76-453a-919d-413861904646", "positions": [{"title": "Engineer", "start": "2024-01-01"}]}))]
struct EmployeeBody {
    #[schema(format = Uuid)]
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

fn tenant_param(req: &Request) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::try_parse(req.param("tenant_id").unwrap_or_default())
        .map_err(|_| ApiError::bad_request("tenant_id must be a GUID"))
}

fn employee_param(req: &Request) -> String {
    req.param("employee_id").unwrap_or_default().to_string()
}

async fn registered_tenant(app: &App, req: &Request) -> Result<uuid::Uuid, ApiError> {
    let tenant_id = tenant_param(req)?;
    app.access
        .tenants
        .get(tenant_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenant {tenant_id} is not registered")))?;
    Ok(tenant_id)
}

#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenant_id}/employees/{employee_id}",
    operation_id = "putEmployee",
    tag = "Access",
    security(("entra_admin" = [])),
    params(
        ("tenant_id" = uuid::Uuid, Path),
        ("employee_id" = String, Path, min_length = 1, max_length = 128, description = "1-128 printable characters; percent-encode `/`"),
    ),
    request_body = EmployeeBody,
    responses(
        (status = 200, description = "Replaced", body = EmployeeRecord),
        (status = 201, description = "Created", body = EmployeeRecord, links(
            ("GetEmployee" = (operation_id = "getEmployee", parameters(("tenant_id" = "$request.path.tenant_id"), ("employee_id" = "$response.body#/employee_id")))),
            ("DeleteEmployee" = (operation_id = "deleteEmployee", parameters(("tenant_id" = "$request.path.tenant_id"), ("employee_id" = "$response.body#/employee_id"))))
        )),
        (status = 409, description = "The object id belongs to another employee record of the tenant", body = ErrorBody),
    )
)]
async fn put(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let tenant_id = registered_tenant(app, req).await?;
    let employee_id = parse_employee_id(&employee_param(req)).map_err(ApiError::bad_request)?;
    let record: EmployeeBody = req.json()?;
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
    let before = previous
        .as_ref()
        .map(employee_json)
        .unwrap_or(serde_json::Value::Null);
    let changes: Vec<audit::Change> = audit::diff(&before, &employee_json(&employee))
        .into_iter()
        .filter(|c| c.attribute != "updated_at")
        .collect();
    // create or update as read now; a record made or removed since is named by the write
    let event = trail::event(
        &req.headers,
        tenant_id,
        admin,
        if previous.is_none() {
            "employee.create"
        } else {
            "employee.update"
        },
        Target::new("employee", &employee.employee_id),
    )
    .changes(changes);
    let created = trail::around(app, event, async {
        let created = app.access.employees.put(&employee).await?;
        app.access.invalidate_employee(tenant_id, object_id);
        Ok(Made::report(created, move |mut event| {
            event.action = if created {
                "employee.create"
            } else {
                "employee.update"
            }
            .into();
            event
        }))
    })
    .await?;
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

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}/employees/{employee_id}",
    operation_id = "getEmployee",
    tag = "Access",
    security(("entra_admin" = [])),
    params(
        ("tenant_id" = uuid::Uuid, Path),
        ("employee_id" = String, Path, min_length = 1, max_length = 128, description = "1-128 printable characters; percent-encode `/`"),
    ),
    responses((status = 200, description = "The record", body = EmployeeRecord))
)]
async fn get(app: &App, req: &Request) -> Result<Response, ApiError> {
    auth::admin(app, req.authorization()).await?;
    let tenant_id = tenant_param(req)?;
    let employee_id = employee_param(req);
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

#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{tenant_id}/employees/{employee_id}",
    operation_id = "deleteEmployee",
    tag = "Access",
    security(("entra_admin" = [])),
    params(
        ("tenant_id" = uuid::Uuid, Path),
        ("employee_id" = String, Path, min_length = 1, max_length = 128, description = "1-128 printable characters; percent-encode `/`"),
    ),
    responses((status = 204, description = "Deleted"))
)]
async fn delete(app: &App, req: &Request) -> Result<Response, ApiError> {
    let admin = trail::admin(&auth::admin(app, req.authorization()).await?);
    let tenant_id = tenant_param(req)?;
    let employee_id = employee_param(req);
    let Some(record) = app.access.employees.get(tenant_id, &employee_id).await? else {
        return Err(ApiError::not_found(format!(
            "no employee {employee_id:?} in tenant {tenant_id}"
        )));
    };
    let event = trail::event(
        &req.headers,
        tenant_id,
        admin,
        "employee.delete",
        Target::new("employee", &employee_id),
    )
    .change(audit::Change::new(
        "object_id",
        Some(serde_json::json!(record.object_id)),
        None,
    ));
    trail::around(app, event, async {
        app.access.employees.delete(tenant_id, &employee_id).await?;
        app.access.invalidate_employee(tenant_id, record.object_id);
        Ok(Made::from(()))
    })
    .await?;
    Ok(no_content())
}
