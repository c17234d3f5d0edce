//! Microsoft Graph writes for HR-driven provisioning: the requests (create a user, patch
//! one, enable or disable, reset a password, members `$ref`, manager `$ref` (set and
//! removed),
//! `revokeSignInSessions`) built for `$batch`, and their answers typed, including the
//! answers that mean "already so" (a member added twice, one removed twice).
//!
//! Request bodies may carry a temporary password: never log a [`BatchRequest`] built here.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::cloud::Cloud;
use crate::credentials::AppRegistration;
use crate::graph::{
    BatchRequest, BatchResponse, GraphClient, GraphError, graph_message, user_path,
};

/// What a write's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteAnswer {
    /// Written (or already so); the body Graph returned (`POST /users` returns the user).
    Done(Value),
    /// `POST /users` refused because the UPN belongs to another object.
    UpnInUse(String),
    Failed(GraphError),
}

impl WriteAnswer {
    /// The error of a failed answer (`Done` and `UpnInUse` become `Rejected`).
    pub fn into_error(self) -> GraphError {
        match self {
            WriteAnswer::Failed(e) => e,
            WriteAnswer::Done(_) => GraphError::Rejected {
                status: 200,
                message: "not an error".into(),
            },
            WriteAnswer::UpnInUse(m) => GraphError::Rejected {
                status: 400,
                message: m,
            },
        }
    }
}

/// Properties whose Graph type is a string collection.
const COLLECTIONS: &[&str] = &["otherMails"];

fn property_value(name: &str, value: Option<&String>) -> Value {
    match value {
        None if COLLECTIONS.contains(&name) => json!([]),
        None => Value::Null,
        Some(v) if COLLECTIONS.contains(&name) => json!([v]),
        Some(v) => json!(v),
    }
}

/// `POST /users`: enabled, with a temporary password to change at first sign-in.
pub fn create_user(
    upn: &str,
    mail_nickname: &str,
    properties: &BTreeMap<String, String>,
    password: &str,
) -> BatchRequest {
    let mut body = Map::new();
    for (k, v) in properties {
        body.insert(k.clone(), property_value(k, Some(v)));
    }
    body.insert("accountEnabled".into(), json!(true));
    body.insert("userPrincipalName".into(), json!(upn));
    body.insert("mailNickname".into(), json!(mail_nickname));
    if !body.contains_key("displayName") {
        body.insert("displayName".into(), json!(mail_nickname));
    }
    body.insert(
        "passwordProfile".into(),
        json!({"password": password, "forceChangePasswordNextSignIn": true}),
    );
    BatchRequest {
        method: "POST".into(),
        url: "/users".into(),
        body: Some(Value::Object(body)),
    }
}

/// `PATCH /users/{id}` with the properties that change (`None` clears one).
pub fn update_user(user: Uuid, changes: &BTreeMap<String, Option<String>>) -> BatchRequest {
    let body: Map<String, Value> = changes
        .iter()
        .map(|(k, v)| (k.clone(), property_value(k, v.as_ref())))
        .collect();
    patch(user, Value::Object(body))
}

/// `PATCH /users/{id} {"accountEnabled": ...}`.
pub fn set_enabled(user: Uuid, enabled: bool) -> BatchRequest {
    patch(user, json!({"accountEnabled": enabled}))
}

/// `PATCH /users/{id}` with a new temporary password to change at next sign-in.
pub fn reset_password(user: Uuid, password: &str) -> BatchRequest {
    patch(
        user,
        json!({"passwordProfile": {"password": password, "forceChangePasswordNextSignIn": true}}),
    )
}

fn patch(user: Uuid, body: Value) -> BatchRequest {
    BatchRequest {
        method: "PATCH".into(),
        url: user_path(&user.to_string()),
        body: Some(body),
    }
}

/// `POST /users/{id}/revokeSignInSessions`.
pub fn revoke_sessions(user: Uuid) -> BatchRequest {
    BatchRequest {
        method: "POST".into(),
        url: format!("/users/{user}/revokeSignInSessions"),
        body: Some(json!({})),
    }
}

/// `DELETE /groups/{id}/members/{member}/$ref`.
pub fn remove_member(group: Uuid, user: Uuid) -> BatchRequest {
    BatchRequest {
        method: "DELETE".into(),
        url: format!("/groups/{group}/members/{user}/$ref"),
        body: None,
    }
}

/// `DELETE /users/{id}/manager/$ref`: 404 means the user has no manager (done).
pub fn remove_manager(user: Uuid) -> BatchRequest {
    BatchRequest {
        method: "DELETE".into(),
        url: format!("/users/{user}/manager/$ref"),
        body: None,
    }
}

/// `GET /users/{id or UPN}?$select=...`: a fresh read.
pub fn read_user(id_or_upn: &str) -> BatchRequest {
    BatchRequest {
        method: "GET".into(),
        url: format!(
            "{}?$select={}",
            user_path(id_or_upn),
            crate::delta::USER_SELECT
        ),
        body: None,
    }
}

impl GraphClient {
    /// The `@odata.id` of a directory object on the cloud's Graph host.
    pub fn directory_object(&self, cloud: Cloud, id: Uuid) -> String {
        format!("{}/v1.0/directoryObjects/{id}", self.graph_base(cloud))
    }

    /// `POST /groups/{id}/members/$ref`.
    pub fn add_member(&self, cloud: Cloud, group: Uuid, user: Uuid) -> BatchRequest {
        BatchRequest {
            method: "POST".into(),
            url: format!("/groups/{group}/members/$ref"),
            body: Some(json!({"@odata.id": self.directory_object(cloud, user)})),
        }
    }

    /// `PUT /users/{id}/manager/$ref`.
    pub fn set_manager(&self, cloud: Cloud, user: Uuid, manager: Uuid) -> BatchRequest {
        BatchRequest {
            method: "PUT".into(),
            url: format!("/users/{user}/manager/$ref"),
            body: Some(
                json!({"@odata.id": format!("{}/v1.0/users/{manager}", self.graph_base(cloud))}),
            ),
        }
    }

    /// Which of `users` hold a directory role (`memberOf/microsoft.graph.directoryRole`,
    /// 20 per `$batch`). A user whose roles could not be read counts as privileged: a
    /// plan must never disable an admin because a read failed.
    pub async fn privileged_among(
        &self,
        app: &AppRegistration,
        tenant: &str,
        users: &[Uuid],
    ) -> Result<HashSet<Uuid>, GraphError> {
        let requests: Vec<BatchRequest> = users
            .iter()
            .map(|u| BatchRequest {
                method: "GET".into(),
                url: format!(
                    "/users/{u}/memberOf/microsoft.graph.directoryRole?$select=id,displayName"
                ),
                body: None,
            })
            .collect();
        let answers = self.batch(app, tenant, &requests).await?;
        Ok(users
            .iter()
            .zip(answers)
            .filter(|(_, a)| match a.status {
                200..=299 => a.body["value"].as_array().is_some_and(|v| !v.is_empty()),
                404 => false,
                _ => true,
            })
            .map(|(u, _)| *u)
            .collect())
    }
}

/// Types one answer of a write sent through `$batch`. A member that is already one (400
/// "added object references already exist"), a member removed that was not one and a
/// manager removed where there was none (404 to a `DELETE .../$ref`) are done: the state
/// asked for holds.
pub fn write_answer(request: &BatchRequest, r: BatchResponse) -> WriteAnswer {
    let message = graph_message(&r.body);
    match r.status {
        200..=299 => WriteAnswer::Done(r.body),
        400 if request.url.ends_with("/members/$ref") && message.contains("already exist") => {
            WriteAnswer::Done(Value::Null)
        }
        404 if request.method == "DELETE" && request.url.ends_with("/$ref") => {
            WriteAnswer::Done(Value::Null)
        }
        400 if request.method == "POST"
            && request.url == "/users"
            && message.contains("userPrincipalName") =>
        {
            WriteAnswer::UpnInUse(message)
        }
        404 => WriteAnswer::Failed(GraphError::NotFound(message)),
        401 => WriteAnswer::Failed(GraphError::Unauthorized(message)),
        403 => WriteAnswer::Failed(GraphError::Forbidden(message)),
        429 => WriteAnswer::Failed(GraphError::Throttled {
            retry_after: r.retry_after,
        }),
        503 if r.retry_after.is_some() => WriteAnswer::Failed(GraphError::Throttled {
            retry_after: r.retry_after,
        }),
        0 => WriteAnswer::Failed(GraphError::Unavailable(
            "Graph did not answer this item of the batch".into(),
        )),
        500..=599 => WriteAnswer::Failed(GraphError::Unavailable(format!("HTTP {}", r.status))),
        status => WriteAnswer::Failed(GraphError::Rejected { status, message }),
    }
}

/// Types the answer of a fresh user read: the user, or None when Graph does not know it.
pub fn read_answer(r: BatchResponse) -> Result<Option<crate::delta::DeltaUser>, GraphError> {
    match crate::graph::user_from_item(r) {
        Ok(u) => Ok(Some(u)),
        Err(GraphError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_added_twice_or_removed_twice_is_done() {
        let add = BatchRequest {
            method: "POST".into(),
            url: format!("/groups/{}/members/$ref", Uuid::nil()),
            body: None,
        };
        let answer = BatchResponse {
            status: 400,
            body: json!({"error": {"code": "Request_BadRequest", "message": "One or more added object references already exist for the following modified properties: 'members'."}}),
            retry_after: None,
        };
        assert!(matches!(write_answer(&add, answer), WriteAnswer::Done(_)));
        let remove = remove_member(Uuid::nil(), Uuid::nil());
        let gone = BatchResponse {
            status: 404,
            body: json!({}),
            retry_after: None,
        };
        assert!(matches!(
            write_answer(&remove, gone.clone()),
            WriteAnswer::Done(_)
        ));
        let no_manager = remove_manager(Uuid::nil());
        assert_eq!(
            no_manager.url,
            format!("/users/{}/manager/$ref", Uuid::nil())
        );
        assert!(matches!(
            write_answer(&no_manager, gone),
            WriteAnswer::Done(_)
        ));
        let create = create_user("a@b.c", "a", &BTreeMap::new(), "pw");
        let taken = BatchResponse {
            status: 400,
            body: json!({"error": {"code": "Request_BadRequest", "message": "Another object with the same value for property userPrincipalName already exists."}}),
            retry_after: None,
        };
        assert!(matches!(
            write_answer(&create, taken),
            WriteAnswer::UpnInUse(_)
        ));
    }
}
