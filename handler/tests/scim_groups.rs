//! SCIM groups against the built handler on Azurite: every spelling of a member change
//! (RFC 7644 §3.5.2 and Entra's two dialects), versions that change with members, and
//! deletions whose membership cleanup never runs ahead of the delete and always finishes
//! (../shared/reference/scim-entra.md).

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tables::{Entity, IfMatch, Query};
use uuid::Uuid;

fn patch_op(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

fn member_values(group: &Value) -> Vec<String> {
    let mut ids: Vec<String> = group["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members in {group}"))
        .iter()
        .map(|m| m["value"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    ids.sort();
    ids
}

async fn new_group(s: &Scim, name: &str) -> String {
    let (status, group) = s
        .call("POST", "/Groups", Some(json!({"displayName": name})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    group["id"].as_str().unwrap().to_string()
}

async fn new_user(s: &Scim, name: &str) -> String {
    let (status, user) = s
        .call(
            "POST",
            "/Users",
            Some(entra_user(&format!("{name}@contoso.com"), name)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    user["id"].as_str().unwrap().to_string()
}

async fn add_members(s: &Scim, group: &str, members: &[&String]) {
    let value: Vec<Value> = members.iter().map(|m| json!({"value": m})).collect();
    let (status, error) = s
        .call(
            "PATCH",
            &format!("/Groups/{group}"),
            Some(patch_op(
                json!([{"op": "Add", "path": "members", "value": value}]),
            )),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{error}");
}

/// Every row of the handler's SCIM table whose keys name `id`.
async fn rows_naming(s: &Scim, id: &str) -> Vec<String> {
    s.scim_table()
        .query_all(Query::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.partition_key.contains(id) || e.row_key.contains(id))
        .map(|e| format!("{} / {}", e.partition_key, e.row_key))
        .collect()
}

#[tokio::test]
async fn every_spelling_of_a_group_member_change_changes_the_members() {
    let s = Scim::start().await;
    let mut u = Vec::new();
    for name in ["a", "b", "c", "d"] {
        u.push(new_user(&s, name).await);
    }
    let id = new_group(&s, "Spellings").await;
    let path = format!("/Groups/{id}");
    let steps: Vec<(&str, Value, Vec<String>)> = vec![
        (
            "pathless add (Entra's newer dialect)",
            json!([{"op": "add", "value": {"members": [{"value": u[0]}, {"value": u[1]}]}}]),
            sorted(&[&u[0], &u[1]]),
        ),
        (
            "add with path members",
            json!([{"op": "Add", "path": "members", "value": [{"$ref": null, "value": u[2]}]}]),
            sorted(&[&u[0], &u[1], &u[2]]),
        ),
        (
            "remove with a value filter",
            json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", u[0])}]),
            sorted(&[&u[1], &u[2]]),
        ),
        (
            "Entra's older remove with a value array",
            json!([{"op": "Remove", "path": "members", "value": [{"value": u[1]}]}]),
            sorted(&[&u[2]]),
        ),
        (
            "replace all members",
            json!([{"op": "replace", "path": "members", "value": [{"value": u[0]}, {"value": u[3]}]}]),
            sorted(&[&u[0], &u[3]]),
        ),
        (
            "pathless replace",
            json!([{"op": "replace", "value": {"members": [{"value": u[1]}]}}]),
            sorted(&[&u[1]]),
        ),
        (
            "pathless replace of the name and the members",
            json!([{"op": "Replace", "value": {"displayName": "Renamed", "members": [{"value": u[2]}, {"value": u[3]}]}}]),
            sorted(&[&u[2], &u[3]]),
        ),
        (
            "add with the core schema's URN in the path",
            json!([{"op": "add", "path": "urn:ietf:params:scim:schemas:core:2.0:Group:members", "value": [{"value": u[0]}]}]),
            sorted(&[&u[0], &u[2], &u[3]]),
        ),
        (
            "pathless add with the URN-prefixed key",
            json!([{"op": "add", "value": {"urn:ietf:params:scim:schemas:core:2.0:Group:members": [{"value": u[1]}]}}]),
            sorted(&[&u[0], &u[1], &u[2], &u[3]]),
        ),
        (
            "remove with a filter matching several",
            json!([{"op": "remove", "path": format!("members[value eq \"{}\" or value eq \"{}\"]", u[0], u[1])}]),
            sorted(&[&u[2], &u[3]]),
        ),
        (
            "several operations in one request",
            json!([
                {"op": "add", "path": "members", "value": [{"value": u[0]}]},
                {"op": "remove", "path": "members", "value": [{"value": u[2]}]},
                {"op": "add", "value": {"members": [{"value": u[1]}]}},
            ]),
            sorted(&[&u[0], &u[1], &u[3]]),
        ),
        (
            "remove all members",
            json!([{"op": "remove", "path": "members"}]),
            Vec::new(),
        ),
    ];
    for (what, operations, expected) in steps {
        let (status, error) = s.call("PATCH", &path, Some(patch_op(operations))).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{what}: {error}");
        let (_, group) = s.call("GET", &path, None).await;
        assert_eq!(member_values(&group), expected, "{what}");
    }
    let (_, group) = s.call("GET", &path, None).await;
    assert_eq!(group["displayName"], "Renamed");
    // a user's own view agrees: the last remove left no membership row beside the users
    for user in &u {
        let rows: Vec<String> = rows_naming(&s, user)
            .await
            .into_iter()
            .filter(|r| r.contains(&id))
            .collect();
        assert!(rows.is_empty(), "{user}: {rows:?}");
    }
}

#[tokio::test]
async fn a_member_only_patch_changes_the_groups_version_so_a_stale_if_match_gets_412() {
    let s = Scim::start().await;
    let user = new_user(&s, "v").await;
    let other = new_user(&s, "w").await;
    let id = new_group(&s, "Versioned").await;
    let path = format!("/Groups/{id}");
    let etag_of = |response: &reqwest::Response| {
        response
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let get = || async {
        let response = s
            .http
            .get(format!("{}{path}", s.base))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        let etag = etag_of(&response);
        let body: Value = response.json().await.unwrap();
        (etag, body)
    };
    let (first_etag, first) = get().await;
    let first_version = first["meta"]["version"].as_str().unwrap().to_string();
    assert_eq!(first_etag.as_deref(), Some(first_version.as_str()));

    // each member-only spelling changes the version (and the ETag)
    let mut seen = vec![first_version.clone()];
    for operations in [
        json!([{"op": "Add", "path": "members", "value": [{"value": user}]}]),
        json!([{"op": "add", "value": {"members": [{"value": other}]}}]),
        json!([{"op": "Remove", "path": "members", "value": [{"value": other}]}]),
        json!([{"op": "remove", "path": format!("members[value eq \"{user}\"]")}]),
        json!([{"op": "replace", "path": "members", "value": [{"value": user}]}]),
    ] {
        let (status, error) = s
            .call("PATCH", &path, Some(patch_op(operations.clone())))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{operations}: {error}");
        let (etag, now) = get().await;
        let version = now["meta"]["version"].as_str().unwrap().to_string();
        assert!(!seen.contains(&version), "{operations}: still {version}");
        assert_eq!(etag.as_deref(), Some(version.as_str()));
        seen.push(version);
    }
    assert_eq!(member_values(&get().await.1), vec![user.clone()]);

    // the first version is stale now: PATCH (members or not), PUT and DELETE are refused
    for operations in [
        json!([{"op": "Add", "path": "members", "value": [{"value": other}]}]),
        json!([{"op": "Replace", "path": "displayName", "value": "Stale"}]),
    ] {
        let (status, error) = s
            .call_if_match("PATCH", &path, Some(patch_op(operations)), &first_version)
            .await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{error}");
    }
    let (status, _) = s
        .call_if_match(
            "PUT",
            &path,
            Some(json!({"displayName": "Stale", "members": []})),
            &first_version,
        )
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (status, _) = s.call_if_match("DELETE", &path, None, &first_version).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (_, unchanged) = get().await;
    assert_eq!(member_values(&unchanged), vec![user.clone()]);
    assert_eq!(unchanged["displayName"], "Versioned");

    // the current version is accepted
    let current = unchanged["meta"]["version"].as_str().unwrap().to_string();
    let (status, error) = s
        .call_if_match(
            "PATCH",
            &path,
            Some(patch_op(
                json!([{"op": "Add", "path": "members", "value": [{"value": other}]}]),
            )),
            &current,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{error}");
    let (_, after) = get().await;
    assert_eq!(member_values(&after), sorted(&[&user, &other]));
    assert_ne!(after["meta"]["version"], json!(current));
}

#[tokio::test]
async fn a_user_delete_refused_by_a_stale_if_match_leaves_the_user_in_every_group() {
    let s = Scim::start().await;
    let mut groups = Vec::new();
    for i in 0..3 {
        groups.push(new_group(&s, &format!("team {i}")).await);
    }
    let mut serial = 0;
    let mut member_of_all = async || {
        serial += 1;
        let user = new_user(&s, &format!("stays{serial}")).await;
        for group in &groups {
            add_members(&s, group, &[&user]).await;
        }
        user
    };
    let in_every_group = async |user: &String, when: &str| {
        for group in &groups {
            let (_, read) = s.call("GET", &format!("/Groups/{group}"), None).await;
            assert!(member_values(&read).contains(user), "{when}: {read}");
        }
    };
    let mut user = member_of_all().await;
    let path = |user: &String| format!("/Users/{user}");

    // a version already stale when the delete reads the user
    let (_, before) = s.call("GET", &path(&user), None).await;
    let stale = before["meta"]["version"].as_str().unwrap().to_string();
    let rename = patch_op(json!([{"op": "Replace", "path": "displayName", "value": "Changed"}]));
    assert_eq!(
        s.call("PATCH", &path(&user), Some(rename)).await.0,
        StatusCode::OK
    );
    let (status, error) = s.call_if_match("DELETE", &path(&user), None, &stale).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{error}");
    in_every_group(&user, "stale If-Match").await;

    // a change that lands between the delete's read and its write: If-Match held when the
    // delete read the user, and the 412 comes from its conditional write
    let mut refused = 0;
    for round in 0..40 {
        let (_, read) = s.call("GET", &path(&user), None).await;
        let version = read["meta"]["version"].as_str().unwrap().to_string();
        let rename = patch_op(
            json!([{"op": "Replace", "path": "displayName", "value": format!("round {round}")}]),
        );
        let at = path(&user);
        let (patched, deleted) = tokio::join!(
            s.call("PATCH", &at, Some(rename)),
            s.call_if_match("DELETE", &at, None, &version)
        );
        match deleted.0 {
            StatusCode::PRECONDITION_FAILED => {
                refused += 1;
                assert_eq!(patched.0, StatusCode::OK, "{}", patched.1);
                assert_eq!(s.call("GET", &path(&user), None).await.0, StatusCode::OK);
                in_every_group(&user, &format!("round {round}")).await;
                if refused == 3 {
                    break;
                }
            }
            StatusCode::NO_CONTENT => {
                // the delete won this round: it took the user out of every group
                for group in &groups {
                    let (_, read) = s.call("GET", &format!("/Groups/{group}"), None).await;
                    assert!(!member_values(&read).contains(&user), "{read}");
                }
                assert_eq!(rows_naming(&s, &user).await, Vec::<String>::new());
                user = member_of_all().await;
            }
            other => panic!("the delete answered {other}: {}", deleted.1),
        }
    }
    assert!(refused > 0, "no delete lost the race: the check never ran");

    // with the current version the user goes, and leaves every group
    let (_, current) = s.call("GET", &path(&user), None).await;
    let version = current["meta"]["version"].as_str().unwrap().to_string();
    let (status, error) = s
        .call_if_match("DELETE", &path(&user), None, &version)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{error}");
    for group in &groups {
        let (_, read) = s.call("GET", &format!("/Groups/{group}"), None).await;
        assert!(!member_values(&read).contains(&user), "{read}");
    }
    assert_eq!(rows_naming(&s, &user).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_group_delete_racing_member_adds_leaves_no_orphan_member_rows() {
    let s = Scim::start().await;
    for round in 0..4 {
        let group = new_group(&s, &format!("racing {round}")).await;
        // small groups go in one transaction, large ones (over 49 members) by tombstone
        let size = if round < 2 { 10 } else { 60 };
        let first: Vec<String> = (0..size).map(|_| Uuid::new_v4().to_string()).collect();
        add_members(&s, &group, &first.iter().collect::<Vec<_>>()).await;
        let path = format!("/Groups/{group}");
        let adds = (0..16).map(|i| {
            let s = &s;
            let path = path.clone();
            async move {
                // spread the adds over the delete
                tokio::time::sleep(std::time::Duration::from_millis(i * 3)).await;
                let value: Vec<Value> = (0..5)
                    .map(|_| json!({"value": Uuid::new_v4().to_string()}))
                    .collect();
                s.call(
                    "PATCH",
                    &path,
                    Some(patch_op(
                        json!([{"op": "add", "path": "members", "value": value}]),
                    )),
                )
                .await
                .0
            }
        });
        let delete = async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            s.call("DELETE", &path, None).await.0
        };
        let (statuses, deleted) = tokio::join!(futures::future::join_all(adds), delete);
        assert_eq!(deleted, StatusCode::NO_CONTENT, "adds: {statuses:?}");
        for status in statuses {
            assert!(
                [
                    StatusCode::NO_CONTENT,
                    StatusCode::NOT_FOUND,
                    StatusCode::CONFLICT
                ]
                .contains(&status),
                "an add answered {status}"
            );
        }
        assert_eq!(s.call("GET", &path, None).await.0, StatusCode::NOT_FOUND);
        assert_eq!(rows_naming(&s, &group).await, Vec::<String>::new());
    }
}

#[tokio::test]
async fn a_deletion_interrupted_after_its_commit_is_finished_by_the_next_request_or_housekeeping() {
    let s = Scim::start().await;
    let table = s.scim_table();
    let tenant = s.tenant.to_string();
    let users = [
        new_user(&s, "one").await,
        new_user(&s, "two").await,
        new_user(&s, "three").await,
    ];
    let mut groups = Vec::new();
    for name in ["left by housekeeping", "left for a retry", "kept"] {
        let group = new_group(&s, name).await;
        add_members(&s, &group, &users.iter().collect::<Vec<_>>()).await;
        groups.push(group);
    }
    let delete_row = |row_key: String| {
        let table = table.clone();
        let tenant = tenant.clone();
        async move { table.delete(&tenant, &row_key, IfMatch::Any).await.unwrap() }
    };
    let tombstone = |row_key: String| {
        let table = table.clone();
        let tenant = tenant.clone();
        async move {
            table
                .insert(
                    &Entity::new(tenant, row_key)
                        .with("DeletedAt", time::OffsetDateTime::now_utc()),
                )
                .await
                .unwrap();
        }
    };
    // the state a crash leaves right after a deletion's first transaction: the resource
    // and its index rows gone, a tombstone in their place, the memberships still there
    for (group, name) in [
        (&groups[0], "left by housekeeping"),
        (&groups[1], "left for a retry"),
    ] {
        delete_row(format!("group-{group}")).await;
        delete_row(format!("groupname-{name}")).await;
        tombstone(format!("deleted-group-{group}")).await;
    }
    delete_row(format!("user-{}", users[0])).await;
    delete_row("username-one@contoso.com".into()).await;
    delete_row(format!("userext-one-{}", users[0])).await;
    tombstone(format!("deleted-user-{}", users[0])).await;
    assert!(!rows_naming(&s, &groups[0]).await.is_empty());

    // a retried DELETE finishes its own resource's cleanup (and still answers 404)
    assert_eq!(
        s.call("DELETE", &format!("/Groups/{}", groups[1]), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(rows_naming(&s, &groups[1]).await, Vec::<String>::new());

    // housekeeping finishes the rest
    let logs = s.housekeeping().await;
    assert!(
        logs.iter().any(|l| l.contains("finished 2 SCIM deletions")),
        "{logs:?}"
    );
    assert_eq!(rows_naming(&s, &groups[0]).await, Vec::<String>::new());
    assert_eq!(rows_naming(&s, &users[0]).await, Vec::<String>::new());
    let (_, kept) = s.call("GET", &format!("/Groups/{}", groups[2]), None).await;
    assert_eq!(member_values(&kept), sorted(&[&users[1], &users[2]]));
    // and a second run finds nothing left to do
    let logs = s.housekeeping().await;
    assert!(
        logs.iter().any(|l| l.contains("finished 0 SCIM deletions")),
        "{logs:?}"
    );
}

// Found by Schemathesis: a group (or user) whose `schemas` held numbers, or whose
// `externalId` was a boolean, was stored and echoed, an answer that breaks RFC 7643.
#[tokio::test]
async fn resources_whose_schemas_or_external_id_have_the_wrong_type_are_refused() {
    let s = Scim::start().await;
    let bad_groups = [
        json!({"schemas": [934374, -332], "displayName": "Numbers"}),
        json!({"schemas": "urn:ietf:params:scim:schemas:core:2.0:Group", "displayName": "Text"}),
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Flag", "externalId": true}),
    ];
    for body in bad_groups {
        let (status, answer) = s.call("POST", "/Groups", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {answer}");
        assert_eq!(answer["scimType"], "invalidValue", "{answer}");
    }
    let mut user = entra_user("typed@contoso.com", "typed");
    user["externalId"] = json!(12);
    let (status, answer) = s.call("POST", "/Users", Some(user)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let mut user = entra_user("typed@contoso.com", "typed");
    user["schemas"] = json!([1]);
    let (status, _) = s.call("POST", "/Users", Some(user)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // the right types still work, and Entra's null externalId means none
    let (status, group) = s
        .call(
            "POST",
            "/Groups",
            Some(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Fine", "externalId": null})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
}

/// RFC 7644 §3.3: a create answers 201 with the new group's URI in `Location` (the same as
/// its meta.location) and its version in `ETag`.
#[tokio::test]
async fn a_created_group_answers_201_with_its_location_and_etag_headers() {
    let s = Scim::start().await;
    let response = s
        .http
        .post(format!("{}/Groups", s.base))
        .bearer_auth(&s.token)
        .header("content-type", SCIM)
        .body(json!({"displayName": "Located"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (location, etag) = (header("location"), header("etag"));
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(location, Some(format!("{}/Groups/{id}", s.base)));
    assert_eq!(location.as_deref(), created["meta"]["location"].as_str());
    assert_eq!(etag.as_deref(), created["meta"]["version"].as_str());
}
