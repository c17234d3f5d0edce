//! How many Table Storage requests each SCIM operation makes, counted by the table client
//! against Azurite: Entra's match query 1, create 1, PATCH 2, delete 2 (its memberships go
//! in the same transaction), group member changes a read and one transaction per 49
//! members, a group delete 3.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use system_tests::{Azurite, unique_table};
use tables::TableServiceClient;
use uuid::Uuid;

use super::ScimService;
use crate::store::StoreError;
use crate::store::scim::{ScimUserStore, StoredResource, TableScimUserStore, WriteOutcome};
use crate::store::scim_groups::TableScimGroupStore;

const BASE: &str = "http://127.0.0.1/api/scim/t/v2";

fn user(name: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": name, "externalId": name, "active": true,
        "emails": [{"primary": true, "type": "work", "value": name}],
    })
}

/// A service on a fresh table in the shared Azurite, and the client whose requests count.
async fn service(prefix: &str, read_cache: Duration) -> (TableServiceClient, ScimService) {
    let client = Azurite::shared().client();
    let table = client.table(unique_table(prefix));
    table.create_if_not_exists().await.unwrap();
    let service = ScimService::new(
        Arc::new(TableScimUserStore::new(table.clone())),
        Arc::new(TableScimGroupStore::new(table.clone())),
        table,
        "http://127.0.0.1",
        read_cache,
    );
    (client, service)
}

fn patch(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

#[tokio::test]
async fn scim_operations_make_the_documented_number_of_table_requests() {
    let (client, service) = service("rq", Duration::ZERO).await;
    let tenant = Uuid::new_v4();
    // the tenant's settings are read once and cached
    service.settings(tenant).await.unwrap();

    let counted = || client.request_count();
    let before = counted();
    let created = service
        .create_user(tenant, BASE, &user("ada@contoso.com"), None)
        .await
        .unwrap()
        .0;
    assert_eq!(counted() - before, 1, "create");
    let id = created["id"].as_str().unwrap().to_string();

    let before = counted();
    let found = service
        .list_users(
            tenant,
            BASE,
            Some("userName eq \"ADA@contoso.com\""),
            1,
            100,
        )
        .await
        .unwrap();
    assert_eq!(found["totalResults"], 1);
    assert_eq!(counted() - before, 1, "match by userName");
    let before = counted();
    service
        .list_users(
            tenant,
            BASE,
            Some("externalId eq \"ada@contoso.com\""),
            1,
            100,
        )
        .await
        .unwrap();
    assert_eq!(counted() - before, 1, "match by externalId");

    let before = counted();
    service
        .patch_user(
            tenant,
            BASE,
            &id,
            &patch(json!([{"op": "Replace", "path": "displayName", "value": "Ada"}])),
            None,
        )
        .await
        .unwrap();
    assert_eq!(counted() - before, 2, "PATCH");

    let before = counted();
    service.delete_user(tenant, &id, None, None).await.unwrap();
    assert_eq!(counted() - before, 2, "delete");

    // members: 250 added to a new group, then one member in it deleted
    let mut ids = Vec::new();
    for i in 0..250 {
        let u = service
            .create_user(tenant, BASE, &user(&format!("u{i}@contoso.com")), None)
            .await
            .unwrap()
            .0;
        ids.push(u["id"].as_str().unwrap().to_string());
    }
    let group = service
        .create_group(
            tenant,
            BASE,
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "All"}),
        )
        .await
        .unwrap();
    let group_id = group["id"].as_str().unwrap().to_string();
    let members: Vec<Value> = ids.iter().map(|id| json!({"value": id})).collect();
    let before = counted();
    service
        .patch_group(
            tenant,
            &group_id,
            &patch(json!([{"op": "Add", "path": "members", "value": members}])),
            None,
        )
        .await
        .unwrap();
    // one read of the group, 6 transactions of 49 members (both rows of each) with the
    // group row
    let added = counted() - before;
    assert!(added <= 7, "adding 250 members took {added} requests");

    let before = counted();
    service
        .delete_user(tenant, &ids[0], None, None)
        .await
        .unwrap();
    assert_eq!(
        counted() - before,
        2,
        "delete of a user in one group: its memberships go in the same transaction"
    );
    let listed = service
        .get_group(tenant, BASE, &group_id, true)
        .await
        .unwrap();
    assert_eq!(listed["members"].as_array().unwrap().len(), 249);

    let before = counted();
    let doomed: Vec<Value> = ids[1..101].iter().map(|id| json!({"value": id})).collect();
    service
        .patch_group(
            tenant,
            &group_id,
            &patch(json!([{"op": "Remove", "path": "members", "value": doomed}])),
            None,
        )
        .await
        .unwrap();
    let removed = counted() - before;
    assert!(removed <= 4, "removing 100 members took {removed} requests");
    let listed = service
        .get_group(tenant, BASE, &group_id, true)
        .await
        .unwrap();
    assert_eq!(listed["members"].as_array().unwrap().len(), 149);

    // Entra's newer dialect: the same read and one transaction
    let before = counted();
    service
        .patch_group(
            tenant,
            &group_id,
            &patch(json!([{"op": "add", "value": {"members": [{"value": ids[0]}]}}])),
            None,
        )
        .await
        .unwrap();
    assert_eq!(counted() - before, 2, "pathless member add");

    // a group of up to 49 members: read it, read its members, one transaction
    let small = service
        .create_group(
            tenant,
            BASE,
            &json!({"displayName": "Few", "members": members[..40].to_vec()}),
        )
        .await
        .unwrap();
    let before = counted();
    service
        .delete_group(tenant, small["id"].as_str().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(counted() - before, 3, "delete of a group of 40 members");
}

#[tokio::test]
async fn the_read_cache_serves_repeated_gets_and_never_hides_this_instances_writes() {
    let (client, service) = service("rc", Duration::from_secs(30)).await;
    let tenant = Uuid::new_v4();
    let by_name = |name: &str| format!("userName eq \"{name}\"");
    let counted = || client.request_count();

    // an absent user is not remembered: it can be created and found at once
    let found = service
        .list_users(tenant, BASE, Some(&by_name("bob@contoso.com")), 1, 10)
        .await
        .unwrap();
    assert_eq!(found["totalResults"], 0);
    let created = service
        .create_user(tenant, BASE, &user("bob@contoso.com"), None)
        .await
        .unwrap()
        .0;
    let id = created["id"].as_str().unwrap().to_string();
    let found = service
        .list_users(tenant, BASE, Some(&by_name("bob@contoso.com")), 1, 10)
        .await
        .unwrap();
    assert_eq!(found["totalResults"], 1);

    // the same match again, and by id: no Table request
    let before = counted();
    for _ in 0..3 {
        service
            .list_users(tenant, BASE, Some(&by_name("BOB@contoso.com")), 1, 10)
            .await
            .unwrap();
    }
    service.get_user(tenant, BASE, &id).await.unwrap();
    service.get_user(tenant, BASE, &id).await.unwrap();
    assert_eq!(
        counted() - before,
        1,
        "the match above cached the name; only the first read by id loads"
    );

    // a rename on this instance is seen at once under both names
    service
        .patch_user(
            tenant,
            BASE,
            &id,
            &patch(json!([{"op": "Replace", "path": "userName", "value": "robert@contoso.com"}])),
            None,
        )
        .await
        .unwrap();
    let old = service
        .list_users(tenant, BASE, Some(&by_name("bob@contoso.com")), 1, 10)
        .await
        .unwrap();
    assert_eq!(old["totalResults"], 0);
    let new = service.get_user(tenant, BASE, &id).await.unwrap();
    assert_eq!(new["userName"], "robert@contoso.com");

    // and a delete
    service.delete_user(tenant, &id, None, None).await.unwrap();
    assert_eq!(
        service
            .get_user(tenant, BASE, &id)
            .await
            .unwrap_err()
            .status,
        404
    );
    let gone = service
        .list_users(tenant, BASE, Some(&by_name("robert@contoso.com")), 1, 10)
        .await
        .unwrap();
    assert_eq!(gone["totalResults"], 0);
}

/// A registry on Azurite holding one active tenant, for the status check after the token.
async fn registry_with(tenant: Uuid) -> crate::access::AccessControl {
    use crate::store::{TableEmployeeStore, TableGrantStore, TableTenantStore, TenantStore as _};
    let client = Azurite::shared().client();
    let tenants = TableTenantStore::new(client.table(unique_table("reg")));
    tenants
        .create(&crate::domain::Tenant {
            tenant_id: tenant,
            display_name: "Contoso".into(),
            cloud: entra::Cloud::Global,
            status: crate::domain::TenantStatus::Active,
            added_by: "admin_api".into(),
            created_at: time::OffsetDateTime::now_utc(),
            consented_at: None,
            offboarded_at: None,
            app_client_id: None,
        })
        .await
        .unwrap();
    crate::access::AccessControl::new(
        Arc::new(tenants),
        Arc::new(TableGrantStore::new(client.table(unique_table("regg")))),
        Arc::new(TableEmployeeStore::new(client.table(unique_table("rege")))),
    )
}

#[tokio::test]
async fn forged_and_malformed_secret_tokens_cost_no_table_request() {
    let (client, service) = service("auth", Duration::ZERO).await;
    let tenant = Uuid::new_v4();
    let registry = registry_with(tenant).await;
    let counted = || client.request_count();
    // malformed tokens are refused on their shape alone, even before the key is loaded
    let before = counted();
    for bad in ["", "x", "scim_", "Bearer", &"scim_".repeat(20), "scim_!!!!"] {
        let refused = service
            .authenticate(Uuid::new_v4(), Some(bad), &registry)
            .await;
        assert_eq!(refused.unwrap_err().status, 401, "{bad:?}");
    }
    assert_eq!(counted() - before, 0, "malformed tokens");

    let token = service.new_token(tenant).await.unwrap();
    service
        .authenticate(tenant, Some(&token), &registry)
        .await
        .unwrap();

    let before = counted();
    for _ in 0..50 {
        // a real token at a random tenant's URL, and well-formed tokens nobody issued
        let elsewhere = service
            .authenticate(Uuid::new_v4(), Some(&token), &registry)
            .await;
        assert_eq!(elsewhere.unwrap_err().status, 401);
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).unwrap();
        let made_up = format!(
            "scim_{}",
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
        );
        for at in [Uuid::new_v4(), tenant] {
            let refused = service.authenticate(at, Some(&made_up), &registry).await;
            assert_eq!(refused.unwrap_err().status, 401);
        }
    }
    assert_eq!(counted() - before, 0, "forged tokens at random tenants");
    service
        .authenticate(tenant, Some(&token), &registry)
        .await
        .unwrap();
}

/// The user store, recording the most users one call handed to the service.
struct Held {
    inner: TableScimUserStore,
    most: std::sync::atomic::AtomicUsize,
}

impl Held {
    fn note<T>(&self, users: usize, result: T) -> T {
        self.most
            .fetch_max(users, std::sync::atomic::Ordering::SeqCst);
        result
    }
}

#[async_trait::async_trait]
impl ScimUserStore for Held {
    async fn create(
        &self,
        tenant: Uuid,
        id: Uuid,
        user_name: &str,
        data: &Value,
        admin: &Value,
        extra: Vec<tables::Entity>,
    ) -> Result<WriteOutcome, StoreError> {
        self.inner
            .create(tenant, id, user_name, data, admin, extra)
            .await
    }
    async fn finish_deletion(&self, tenant: Uuid, id: Uuid) -> Result<bool, StoreError> {
        self.inner.finish_deletion(tenant, id).await
    }
    async fn finish_deletions(&self, tenant: Uuid) -> Result<usize, StoreError> {
        self.inner.finish_deletions(tenant).await
    }
    async fn get(&self, tenant: Uuid, id: Uuid) -> Result<Option<StoredResource>, StoreError> {
        self.inner.get(tenant, id).await
    }
    async fn get_with_groups(
        &self,
        tenant: Uuid,
        id: Uuid,
    ) -> Result<Option<(StoredResource, Vec<Uuid>)>, StoreError> {
        self.inner.get_with_groups(tenant, id).await
    }
    async fn by_user_name(
        &self,
        tenant: Uuid,
        user_name: &str,
    ) -> Result<Option<StoredResource>, StoreError> {
        self.inner.by_user_name(tenant, user_name).await
    }
    async fn by_external_id(
        &self,
        tenant: Uuid,
        external_id: &str,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let found = self.inner.by_external_id(tenant, external_id).await?;
        Ok(self.note(found.len(), found))
    }
    async fn all(&self, tenant: Uuid) -> Result<Vec<StoredResource>, StoreError> {
        let all = self.inner.all(tenant).await?;
        Ok(self.note(all.len(), all))
    }
    async fn page(
        &self,
        tenant: Uuid,
        keep: Option<&(dyn for<'v> Fn(&'v Value) -> bool + Sync)>,
        start: usize,
        count: usize,
    ) -> Result<(Vec<StoredResource>, usize), StoreError> {
        let page = self.inner.page(tenant, keep, start, count).await?;
        Ok(self.note(page.0.len(), page))
    }
    async fn replace(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        data: &Value,
        extra: Vec<tables::Entity>,
    ) -> Result<WriteOutcome, StoreError> {
        self.inner.replace(tenant, previous, data, extra).await
    }
    async fn set_admin(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        admin: &Value,
        extra: Vec<tables::Operation>,
    ) -> Result<WriteOutcome, StoreError> {
        self.inner.set_admin(tenant, previous, admin, extra).await
    }
    async fn delete(
        &self,
        tenant: Uuid,
        previous: &StoredResource,
        groups: &[Uuid],
        extra: Vec<tables::Operation>,
    ) -> Result<WriteOutcome, StoreError> {
        self.inner.delete(tenant, previous, groups, extra).await
    }
}

#[tokio::test]
async fn an_unfiltered_listing_holds_one_page_and_counts_every_user() {
    let client = Azurite::shared().client();
    let table = client.table(unique_table("page"));
    table.create_if_not_exists().await.unwrap();
    let users = Arc::new(Held {
        inner: TableScimUserStore::new(table.clone()),
        most: Default::default(),
    });
    let service = ScimService::new(
        users.clone(),
        Arc::new(TableScimGroupStore::new(table.clone())),
        table,
        "http://127.0.0.1",
        Duration::ZERO,
    );
    let tenant = Uuid::new_v4();
    let mut ids = Vec::new();
    for i in 0..30 {
        let u = service
            .create_user(tenant, BASE, &user(&format!("p{i}@contoso.com")), None)
            .await
            .unwrap()
            .0;
        ids.push(u["id"].as_str().unwrap().to_string());
    }
    // members sit between user rows: they must neither count nor show
    let group = service
        .create_group(
            tenant,
            BASE,
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "G"}),
        )
        .await
        .unwrap();
    let members: Vec<Value> = ids.iter().map(|id| json!({"value": id})).collect();
    service
        .patch_group(
            tenant,
            group["id"].as_str().unwrap(),
            &patch(json!([{"op": "Add", "path": "members", "value": members}])),
            None,
        )
        .await
        .unwrap();
    ids.sort();

    let held = || users.most.load(std::sync::atomic::Ordering::SeqCst);
    let mut seen = Vec::new();
    for start in [1, 8, 15, 22, 29] {
        let list = service
            .list_users(tenant, BASE, None, start, 7)
            .await
            .unwrap();
        assert_eq!(list["totalResults"], 30);
        assert_eq!(list["startIndex"], start);
        for r in list["Resources"].as_array().unwrap() {
            seen.push(r["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, ids, "every user once, in id order");
    assert!(held() <= 7, "the service held {} users at once", held());

    // a filter the index cannot answer scans the same way
    let list = service
        .list_users(tenant, BASE, Some("userName sw \"p1\""), 2, 3)
        .await
        .unwrap();
    assert_eq!(list["totalResults"], 11, "p1 and p10-p19");
    assert_eq!(list["Resources"].as_array().unwrap().len(), 3);
    assert!(held() <= 7);
}

/// A journal writing outbox rows the way the SCIM function does.
struct Rows(Uuid);

impl super::Journal for Rows {
    fn row(&self, id: Uuid, changes: &[audit::Change]) -> tables::Entity {
        let event = audit::Event::new(
            self.0,
            audit::Actor::entra_provisioning(),
            "scim.user.update",
            audit::Target::new("user", id),
        )
        .changes(changes.to_vec());
        audit::outbox::entity(&event, &self.0.to_string())
    }
}

#[tokio::test]
async fn user_writes_carry_their_audit_event_in_their_own_transaction_at_no_extra_request() {
    let (client, service) = service("rj", Duration::ZERO).await;
    let tenant = Uuid::new_v4();
    service.settings(tenant).await.unwrap();
    let journal = Rows(tenant);
    let counted = || client.request_count();
    let before = counted();
    let (created, changes) = service
        .create_user(tenant, BASE, &user("ada@contoso.com"), Some(&journal))
        .await
        .unwrap();
    assert_eq!(counted() - before, 1, "create");
    assert!(changes.iter().any(|c| c.attribute == "userName"));
    let id = created["id"].as_str().unwrap().to_string();
    let before = counted();
    service
        .patch_user_changes(
            tenant,
            BASE,
            &id,
            &patch(json!([{"op": "Replace", "path": "displayName", "value": "Ada"}])),
            None,
            Some(&journal),
        )
        .await
        .unwrap();
    assert_eq!(counted() - before, 2, "PATCH");
    let before = counted();
    service
        .delete_user(tenant, &id, None, Some(&journal))
        .await
        .unwrap();
    assert_eq!(counted() - before, 2, "delete");
    // one outbox row per write, each holding its changes
    let rows: Vec<tables::Entity> = service
        .table()
        .query_all(tables::Query::partition(&tenant.to_string()))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| audit::outbox::is_outbox_row(&e.row_key))
        .collect();
    assert_eq!(rows.len(), 3);
    let events: Vec<audit::Event> = rows
        .iter()
        .map(|r| audit::outbox::event_of(r).unwrap())
        .collect();
    assert!(events.iter().any(|e| {
        e.changes
            .iter()
            .any(|c| c.attribute == "displayName" && c.new == Some(json!("Ada")))
    }));
    // the user is gone, its listing does not show the outbox rows as users
    let listed = service
        .list_users(tenant, BASE, None, 1, 100)
        .await
        .unwrap();
    assert_eq!(listed["totalResults"], 0);
}
