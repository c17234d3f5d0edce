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
use crate::store::scim::TableScimUserStore;
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
        .create_user(tenant, BASE, &user("ada@contoso.com"))
        .await
        .unwrap();
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
    service.delete_user(tenant, &id, None).await.unwrap();
    assert_eq!(counted() - before, 2, "delete");

    // members: 250 added to a new group, then one member in it deleted
    let mut ids = Vec::new();
    for i in 0..250 {
        let u = service
            .create_user(tenant, BASE, &user(&format!("u{i}@contoso.com")))
            .await
            .unwrap();
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
    service.delete_user(tenant, &ids[0], None).await.unwrap();
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
        .create_user(tenant, BASE, &user("bob@contoso.com"))
        .await
        .unwrap();
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
    service.delete_user(tenant, &id, None).await.unwrap();
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
