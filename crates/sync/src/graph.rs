//! Microsoft Graph as a [`DirectorySource`]: delta pages read with the tenant's app
//! registration, translated into the directory's changes.

use std::sync::Arc;

use async_trait::async_trait;
use directory::{Field, GroupChange, MemberChange, UserChange, UserFields};
use entra::credentials::AppRegistration;
use entra::delta::{DeltaGroup, DeltaItem, DeltaKind, DeltaNext, DeltaUser, Removed};
use entra::graph::{GraphClient, GraphError, GraphErrorClass};
use uuid::Uuid;

use crate::{DirectorySource, Next, SourceError, SourcePage};

/// One tenant's directory in Graph.
pub struct GraphSource {
    pub client: Arc<GraphClient>,
    pub app: AppRegistration,
    pub tenant: Uuid,
}

/// How a Graph failure stops (or does not stop) a round.
pub fn source_error(e: GraphError) -> SourceError {
    match e.class() {
        GraphErrorClass::ResyncRequired => SourceError::ResyncRequired(e.to_string()),
        GraphErrorClass::Throttled { retry_after } => SourceError::Throttled(retry_after),
        GraphErrorClass::AccessRevoked { reason } => SourceError::AccessRevoked(reason),
        // a page that is not found or refused as such cannot be read by repeating it
        // from here: start over
        GraphErrorClass::NotFound | GraphErrorClass::Rejected => {
            SourceError::ResyncRequired(e.to_string())
        }
        GraphErrorClass::Transient => SourceError::Transient(e.to_string()),
    }
}

fn field(v: &Option<Option<String>>) -> Field<String> {
    match v {
        None => Field::Keep,
        Some(v) => Field::reported(v.clone()),
    }
}

/// A Graph user (from delta or a single read) as a directory change; None when its id is
/// not an object id.
pub fn user_change(u: &DeltaUser, round: i64) -> Option<UserChange> {
    let entra_id = Uuid::try_parse(&u.id).ok()?;
    Some(match u.removed {
        Some(Removed::Changed) => UserChange::GraphSoftDeleted { entra_id, round },
        Some(Removed::Deleted) => UserChange::GraphDeleted { entra_id },
        None => UserChange::Graph {
            entra_id,
            fields: UserFields {
                // a UPN is never cleared: null leaves it as it was
                upn: match &u.user_principal_name {
                    Some(Some(upn)) if !upn.is_empty() => Field::Set(upn.clone()),
                    _ => Field::Keep,
                },
                name: field(&u.display_name),
                email: field(&u.mail),
                given_name: field(&u.given_name),
                surname: field(&u.surname),
                job_title: field(&u.job_title),
                department: field(&u.department),
                employee_id: field(&u.employee_id),
                enabled: u.account_enabled.flatten(),
            },
            round,
        },
    })
}

fn group_change(g: &DeltaGroup, round: i64) -> Option<GroupChange> {
    let entra_id = Uuid::try_parse(&g.id).ok()?;
    if g.removed.is_some() {
        return Some(GroupChange::GraphDeleted { entra_id });
    }
    Some(GroupChange::Graph {
        entra_id,
        name: field(&g.display_name),
        // direct user members only: nested groups, devices and contacts are not followed
        members: g
            .members_delta
            .iter()
            .filter(|m| m.is_user())
            .filter_map(|m| {
                Some(MemberChange {
                    entra_id: Uuid::try_parse(&m.id).ok()?,
                    removed: m.removed,
                })
            })
            .collect(),
        round,
    })
}

fn next(n: DeltaNext) -> Next {
    match n {
        DeltaNext::NextLink(l) => Next::More(l),
        DeltaNext::DeltaLink(l) => Next::Done(l),
    }
}

#[async_trait]
impl DirectorySource for GraphSource {
    async fn users(
        &self,
        link: Option<&str>,
        round: i64,
    ) -> Result<SourcePage<UserChange>, SourceError> {
        let page = self
            .client
            .delta_page(&self.app, &self.tenant.to_string(), DeltaKind::Users, link)
            .await
            .map_err(source_error)?;
        let items = page
            .items
            .iter()
            .filter_map(|item| match item {
                DeltaItem::User(u) => user_change(u, round),
                DeltaItem::Group(_) => None,
            })
            .collect();
        Ok(SourcePage {
            items,
            next: next(page.next),
        })
    }

    async fn groups(
        &self,
        link: Option<&str>,
        round: i64,
    ) -> Result<SourcePage<GroupChange>, SourceError> {
        let page = self
            .client
            .delta_page(&self.app, &self.tenant.to_string(), DeltaKind::Groups, link)
            .await
            .map_err(source_error)?;
        let items = page
            .items
            .iter()
            .filter_map(|item| match item {
                DeltaItem::Group(g) => group_change(g, round),
                DeltaItem::User(_) => None,
            })
            .collect();
        Ok(SourcePage {
            items,
            next: next(page.next),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_keeps_null_clears_and_removed_reasons_map() {
        let id = Uuid::new_v4();
        let u = DeltaUser {
            id: id.to_string(),
            display_name: Some(None),
            job_title: Some(Some("Engineer".into())),
            account_enabled: Some(Some(false)),
            ..DeltaUser::default()
        };
        let Some(UserChange::Graph { fields, .. }) = user_change(&u, 3) else {
            panic!("a Graph change")
        };
        assert_eq!(fields.name, Field::Clear);
        assert_eq!(fields.job_title, Field::Set("Engineer".into()));
        assert_eq!(fields.department, Field::Keep);
        assert_eq!(fields.upn, Field::Keep);
        assert_eq!(fields.enabled, Some(false));
        let soft = DeltaUser {
            id: id.to_string(),
            removed: Some(Removed::Changed),
            ..DeltaUser::default()
        };
        assert!(matches!(
            user_change(&soft, 3),
            Some(UserChange::GraphSoftDeleted { .. })
        ));
        let hard = DeltaUser {
            removed: Some(Removed::Deleted),
            ..soft
        };
        assert!(matches!(
            user_change(&hard, 3),
            Some(UserChange::GraphDeleted { .. })
        ));
        let bad = DeltaUser {
            id: "not-a-guid".into(),
            ..DeltaUser::default()
        };
        assert_eq!(user_change(&bad, 3), None);
    }
}
