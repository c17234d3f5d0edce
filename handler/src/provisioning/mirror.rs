//! SCIM users in the tenant's directory: every user write Entra makes over SCIM is applied
//! to the directory after it commits, as source `scim`, so a user Entra both provisions
//! and Graph sync reads is one record. The directory write is idempotent and happens on
//! every successful write (and on a delete that finds nothing), so when it fails the
//! request fails too and Entra's retry applies it.

use directory::{ApplyMode, DirectoryError, Field, UserChange, UserFields, Writer};
use serde_json::Value;
use uuid::Uuid;

use super::{ScimError, ScimService};
use crate::store::scim::StoredResource;

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

fn text(v: Option<&Value>) -> Field<String> {
    Field::reported(v.and_then(Value::as_str).map(str::to_string))
}

/// The work e-mail: the primary one, else the one typed work, else the first.
fn email(data: &Value) -> Option<&Value> {
    let emails = data.get("emails")?.as_array()?;
    emails
        .iter()
        .find(|e| e.get("primary").and_then(Value::as_bool) == Some(true))
        .or_else(|| {
            emails
                .iter()
                .find(|e| e.get("type").and_then(Value::as_str) == Some("work"))
        })
        .or_else(|| emails.first())
        .and_then(|e| e.get("value"))
}

/// What a SCIM user says of the directory's attributes: the whole resource each time.
pub fn fields(data: &Value) -> UserFields {
    let name = data.get("name");
    let enterprise = data.get(ENTERPRISE);
    UserFields {
        upn: match data.get("userName").and_then(Value::as_str) {
            Some(u) if !u.is_empty() => Field::Set(u.to_string()),
            _ => Field::Keep,
        },
        name: text(data.get("displayName")),
        email: text(email(data)),
        given_name: text(name.and_then(|n| n.get("givenName"))),
        surname: text(name.and_then(|n| n.get("familyName"))),
        job_title: text(data.get("title")),
        department: text(enterprise.and_then(|e| e.get("department"))),
        employee_id: text(enterprise.and_then(|e| e.get("employeeNumber"))),
        enabled: Some(data.get("active").and_then(Value::as_bool).unwrap_or(true)),
    }
}

fn failed(e: DirectoryError) -> ScimError {
    match e {
        DirectoryError::Invalid(detail) => ScimError::new(400, Some("invalidValue"), detail),
        DirectoryError::Corrupt(detail) => {
            tracing::error!(error = %detail, "directory row unreadable");
            ScimError::new(500, None, "stored data is unreadable")
        }
        other => {
            tracing::warn!(error = %other, "directory write failed after a SCIM write");
            ScimError::new(503, None, "the directory is unavailable; try again")
        }
    }
}

impl ScimService {
    /// Applies a written SCIM user to the directory.
    pub(super) async fn mirror(
        &self,
        tenant: Uuid,
        stored: &StoredResource,
    ) -> Result<(), ScimError> {
        let Some(directory) = &self.directory else {
            return Ok(());
        };
        let change = UserChange::Scim {
            id: stored.id,
            fields: fields(&stored.data),
        };
        let applied = directory
            .apply_users(tenant, Writer::Scim, vec![change], ApplyMode::Read)
            .await
            .map_err(failed)?;
        self.revoke_inactive(tenant, &applied.inactive).await
    }

    /// Revokes the certificates of users the write left inactive. The directory reports
    /// them again when Entra retries the request, so a failure here fails the request.
    async fn revoke_inactive(&self, tenant: Uuid, users: &[Uuid]) -> Result<(), ScimError> {
        let Some((pki, enabled)) = &self.certificates else {
            return Ok(());
        };
        if !*enabled {
            return Ok(());
        }
        pki.revoke_inactive_users(tenant, users, "scim")
            .await
            .map(|_| ())
            .map_err(|e| {
                tracing::warn!(error = %e, %tenant, "revoking an inactive user's certificates failed");
                ScimError::new(503, None, "certificate revocation is unavailable; try again")
            })
    }

    /// Applies a SCIM user's deletion to the directory.
    pub(super) async fn mirror_delete(&self, tenant: Uuid, id: Uuid) -> Result<(), ScimError> {
        let Some(directory) = &self.directory else {
            return Ok(());
        };
        let applied = directory
            .apply_users(
                tenant,
                Writer::Scim,
                vec![UserChange::ScimDeleted { id }],
                ApplyMode::Read,
            )
            .await
            .map_err(failed)?;
        self.revoke_inactive(tenant, &applied.inactive).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entras_default_mappings_reach_the_directory() {
        let data = json!({
            "userName": "ann@contoso.com",
            "displayName": "Ann Lee",
            "title": "",
            "active": false,
            "name": {"givenName": "Ann", "familyName": "Lee"},
            "emails": [{"type": "other", "value": "x@y.z"}, {"type": "work", "value": "ann.lee@contoso.com"}],
            ENTERPRISE: {"department": "Sales", "employeeNumber": "E1"},
        });
        let f = fields(&data);
        assert_eq!(f.upn, Field::Set("ann@contoso.com".into()));
        assert_eq!(f.email, Field::Set("ann.lee@contoso.com".into()));
        assert_eq!(f.surname, Field::Set("Lee".into()));
        assert_eq!(f.job_title, Field::Clear);
        assert_eq!(f.department, Field::Set("Sales".into()));
        assert_eq!(f.employee_id, Field::Set("E1".into()));
        assert_eq!(f.enabled, Some(false));
    }
}
