//! Admin authentication: Entra tokens from the operator's home tenant, for our audience,
//! carrying the admin app role. Also the bearer-header parsing every protected route uses.

use std::sync::Arc;

use async_trait::async_trait;
use entra::{Cloud, Rejection, TenantLookup, ValidatedToken};
use uuid::Uuid;

use crate::app::App;
use crate::routes::ApiError;

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Knows only the operator's tenant.
struct AdminTenant {
    tenant_id: Uuid,
    cloud: Cloud,
}

#[async_trait]
impl TenantLookup for AdminTenant {
    async fn cloud_of(&self, tenant_id: Uuid) -> Result<Option<Cloud>, String> {
        Ok((tenant_id == self.tenant_id).then_some(self.cloud))
    }
}

/// Checks an admin call: 401 for a missing or invalid token (or one from another tenant),
/// 403 for a valid token without the admin role.
pub async fn admin(
    app: &App,
    authorization: Option<&str>,
) -> Result<Arc<ValidatedToken>, ApiError> {
    let token = bearer(authorization)
        .ok_or_else(|| ApiError::unauthorized("a bearer token is required"))?;
    let settings = &app.entra;
    let lookup = AdminTenant {
        tenant_id: settings.admin_tenant_id,
        cloud: settings.admin_cloud,
    };
    let validated = app
        .validator
        .validate(token, &lookup)
        .await
        .map_err(|r| match r {
            Rejection::Unavailable(why) => ApiError::unavailable(why),
            _ => ApiError::unauthorized("the token is not valid for this service"),
        })?;
    if validated.tenant_id != settings.admin_tenant_id {
        return Err(ApiError::unauthorized(
            "the token is not valid for this service",
        ));
    }
    if !validated.roles().contains(&settings.admin_role.as_str()) {
        return Err(ApiError::forbidden(
            "insufficient_role",
            format!("the {} app role is required", settings.admin_role),
        ));
    }
    Ok(validated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        assert_eq!(bearer(Some("Bearer abc.def.ghi")), Some("abc.def.ghi"));
        assert_eq!(bearer(Some("bearer   abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic dXNlcjpwYXNz")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(None), None);
    }
}
