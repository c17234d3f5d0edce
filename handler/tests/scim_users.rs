//! SCIM users as Microsoft Entra's provisioning service sends them, replayed against the
//! built handler on Azurite: test connection, match, create, update, disable, delete, in
//! Entra's order and shapes (../shared/reference/scim-entra.md).

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn entra_user_lifecycle_in_its_own_order() {
    let s = Scim::start().await;

    // Test connection: a filter on a random GUID gets an empty ListResponse, not a 404
    let (status, list) = s
        .call(
            "GET",
            &filter(&format!("userName eq \"{}\"", Uuid::new_v4())),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["totalResults"], 0);
    assert_eq!(list["Resources"], json!([]));
    assert_eq!(
        list["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:ListResponse"
    );

    // match (nothing), create
    let (_, none) = s
        .call("GET", &filter("userName eq \"Ada@Contoso.com\""), None)
        .await;
    assert_eq!(none["totalResults"], 0);
    let (status, created) = s
        .call("POST", "/Users", Some(entra_user("Ada@Contoso.com", "ada")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["meta"]["resourceType"], "User");
    assert_eq!(
        created["meta"]["location"],
        format!("{}/Users/{id}", s.base)
    );
    assert_eq!(created["meta"]["version"], "W/\"1\"");

    // duplicate userName, any case: 409 uniqueness
    let (status, conflict) = s
        .call(
            "POST",
            "/Users",
            Some(entra_user("ada@contoso.COM", "other")),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(conflict["scimType"], "uniqueness");
    assert_eq!(conflict["status"], "409");

    // match by userName (case-insensitive), externalId, and Entra's email filter
    for expression in [
        "userName eq \"ada@contoso.com\"".to_string(),
        "externalId eq \"ada\"".to_string(),
        "emails[type eq \"work\"].value eq \"Ada@Contoso.com\"".to_string(),
        format!("id eq \"{id}\""),
    ] {
        let (status, found) = s.call("GET", &filter(&expression), None).await;
        assert_eq!(status, StatusCode::OK, "{expression}");
        assert_eq!(found["totalResults"], 1, "{expression}: {found}");
        assert_eq!(found["Resources"][0]["id"], id.as_str());
    }

    // update in the older dialect, then disable with a string boolean
    let (status, updated) = s
        .call("PATCH", &format!("/Users/{id}"), Some(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [
                {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "ada.lovelace@contoso.com"},
                {"op": "Replace", "path": "name.familyName", "value": "Byron"},
                {"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", "value": "boss-id"},
            ],
        })))
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["emails"][0]["value"], "ada.lovelace@contoso.com");
    assert_eq!(updated["name"]["familyName"], "Byron");
    assert_eq!(
        updated["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"],
        json!({"value": "boss-id"})
    );
    assert_eq!(updated["meta"]["version"], "W/\"2\"");
    let (status, disabled) = s
        .call(
            "PATCH",
            &format!("/Users/{id}"),
            Some(json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "Replace", "path": "active", "value": "False"}],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(disabled["active"], false);
    // a disabled user is still returned by GET and by filters
    let (status, got) = s.call("GET", &format!("/Users/{id}"), None).await;
    assert_eq!(
        (status, got["active"].clone()),
        (StatusCode::OK, json!(false))
    );
    let (_, found) = s
        .call("GET", &filter("userName eq \"ada@contoso.com\""), None)
        .await;
    assert_eq!(found["totalResults"], 1);

    // the newer dialect: a pathless replace with dotted and URN keys
    let (status, renamed) = s
        .call("PATCH", &format!("/Users/{id}"), Some(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "value": {
                "userName": "augusta@contoso.com",
                "name.givenName": "Augusta",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber": "701",
            }}],
        })))
        .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    let (_, old_name) = s
        .call("GET", &filter("userName eq \"ada@contoso.com\""), None)
        .await;
    assert_eq!(
        old_name["totalResults"], 0,
        "the old userName is free again"
    );
    let (_, new_name) = s
        .call("GET", &filter("userName eq \"Augusta@contoso.com\""), None)
        .await;
    assert_eq!(new_name["totalResults"], 1);

    // delete, then 404 with the SCIM error body
    let (status, _) = s.call("DELETE", &format!("/Users/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, missing) = s.call("GET", &format!("/Users/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:Error"
    );
    assert_eq!(missing["status"], "404");
    let (status, _) = s
        .call(
            "POST",
            "/Users",
            Some(entra_user("augusta@contoso.com", "a2")),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the userName of a deleted user can be used again"
    );
}

#[tokio::test]
async fn secret_tokens_are_checked_and_replaced_at_once() {
    let s = Scim::start().await;
    let (status, body) = s.call_with("GET", "/Users", None, "not-the-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:Error"
    );
    let response = s
        .http
        .get(format!("{}/Users", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "no token");

    let r = s
        .http
        .post(format!(
            "{}/api/v1/tenants/{}/scim/token",
            s.handler.base_url(),
            s.tenant
        ))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    let new_token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        s.call("GET", "/Users", None).await.0,
        StatusCode::UNAUTHORIZED,
        "the old token stops at once"
    );
    assert_eq!(
        s.call_with("GET", "/Users", None, &new_token).await.0,
        StatusCode::OK
    );
    // another tenant's path with this token
    let other = format!(
        "{}/api/scim/{}/v2/Users",
        s.handler.base_url(),
        Uuid::new_v4()
    );
    let r = s
        .http
        .get(other)
        .bearer_auth(&new_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn concurrent_creates_of_one_user_give_one_201_and_one_409() {
    let s = Scim::start().await;
    let calls = (0..2).map(|_| {
        s.call(
            "POST",
            "/Users",
            Some(entra_user("twin@contoso.com", "twin")),
        )
    });
    let results = futures::future::join_all(calls).await;
    let mut statuses: Vec<u16> = results.iter().map(|r| r.0.as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, [201, 409]);
}

#[tokio::test]
async fn concurrent_patches_to_one_user_lose_no_update() {
    let s = Scim::start().await;
    let (_, created) = s
        .call(
            "POST",
            "/Users",
            Some(entra_user("busy@contoso.com", "busy")),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/Users/{id}");
    let patches = (0..6).map(|i| {
        s.call("PATCH", &path, Some(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "add", "path": format!("nickName{i}"), "value": format!("n{i}")}],
        })))
    });
    for (status, body) in futures::future::join_all(patches).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (_, user) = s.call("GET", &format!("/Users/{id}"), None).await;
    for i in 0..6 {
        assert_eq!(user[format!("nickName{i}")], format!("n{i}"), "{user}");
    }
    assert_eq!(user["meta"]["version"], "W/\"7\"");
}

#[tokio::test]
async fn bad_requests_get_scim_errors_and_discovery_answers() {
    let s = Scim::start().await;
    for (method, path, body, status, scim_type) in [
        (
            "POST",
            "/Users",
            Some(json!({"active": true})),
            400,
            Some("invalidValue"),
        ),
        (
            "GET",
            "/Users?filter=userName%20zz%20%22x%22",
            None,
            400,
            Some("invalidFilter"),
        ),
        (
            "PATCH",
            &format!("/Users/{}", Uuid::new_v4()) as &str,
            Some(
                json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "add", "path": "x", "value": 1}]}),
            ),
            404,
            None,
        ),
        ("GET", "/Users/not-a-guid", None, 404, None),
        ("PUT", "/Schemas", Some(json!({})), 405, None),
    ] {
        let (got, answer) = s.call(method, path, body).await;
        assert_eq!(got.as_u16(), status, "{method} {path}: {answer}");
        assert_eq!(answer["status"], status.to_string());
        assert_eq!(answer["scimType"].as_str(), scim_type, "{method} {path}");
    }
    let r = s
        .http
        .post(format!("{}/Users", s.base))
        .bearer_auth(&s.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<Value>().await.unwrap()["scimType"],
        "invalidSyntax"
    );
    let (status, config) = s
        .call("GET", "/ServiceProviderConfig?aadOptscim062020", None)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "unknown query parameters are ignored"
    );
    assert_eq!(config["patch"]["supported"], true);
    let (_, types) = s.call("GET", "/ResourceTypes", None).await;
    assert_eq!(types["totalResults"], 2);
    let (_, schemas) = s.call("GET", "/Schemas", None).await;
    assert_eq!(schemas["totalResults"], 3);
}

fn patch_op(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

fn member_values(group: &Value) -> Vec<String> {
    let mut ids: Vec<String> = group["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn entra_group_lifecycle_with_both_remove_dialects() {
    let s = Scim::start().await;
    let mut users = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let (_, u) = s
            .call(
                "POST",
                "/Users",
                Some(entra_user(&format!("{name}@contoso.com"), name)),
            )
            .await;
        users.push(u["id"].as_str().unwrap().to_string());
    }
    let (status, group) = s
        .call("POST", "/Groups", Some(json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group", "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
            "externalId": "grp-1", "displayName": "Engineering", "meta": {"resourceType": "Group"},
        })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    assert_eq!(group["members"], json!([]));
    let id = group["id"].as_str().unwrap().to_string();

    let match_query = format!(
        "/Groups?excludedAttributes=members&filter={}",
        percent_encode("displayName eq \"engineering\"")
    );
    let (status, found) = s.call("GET", &match_query, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found["totalResults"], 1);
    assert!(
        found["Resources"][0].get("members").is_none(),
        "members excluded"
    );
    let (status, duplicate) = s
        .call(
            "POST",
            "/Groups",
            Some(json!({"displayName": "ENGINEERING"})),
        )
        .await;
    assert_eq!(
        (status, duplicate["scimType"].as_str()),
        (StatusCode::CONFLICT, Some("uniqueness"))
    );

    // add several members in one request, twice (no duplicates)
    let add = patch_op(
        json!([{"op": "Add", "path": "members", "value": users.iter().map(|u| json!({"$ref": null, "value": u})).collect::<Vec<_>>()}]),
    );
    assert_eq!(
        s.call("PATCH", &format!("/Groups/{id}"), Some(add.clone()))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.call("PATCH", &format!("/Groups/{id}"), Some(add)).await.0,
        StatusCode::NO_CONTENT
    );
    let (_, full) = s.call("GET", &format!("/Groups/{id}"), None).await;
    let mut expected = users.clone();
    expected.sort();
    assert_eq!(member_values(&full), expected);
    let (_, lean) = s
        .call(
            "GET",
            &format!("/Groups/{id}?excludedAttributes=members"),
            None,
        )
        .await;
    assert!(lean.get("members").is_none());

    // older dialect: remove only the listed member; newer dialect: a filtered path
    let older =
        patch_op(json!([{"op": "Remove", "path": "members", "value": [{"value": users[0]}]}]));
    assert_eq!(
        s.call("PATCH", &format!("/Groups/{id}"), Some(older))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let newer =
        patch_op(json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", users[1])}]));
    assert_eq!(
        s.call("PATCH", &format!("/Groups/{id}"), Some(newer))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let (_, now) = s.call("GET", &format!("/Groups/{id}"), None).await;
    let mut left = vec![users[2].clone(), users[3].clone()];
    left.sort();
    assert_eq!(member_values(&now), left);

    // rename, then a deleted user leaves the group
    let rename = patch_op(json!([{"op": "Replace", "path": "displayName", "value": "Platform"}]));
    assert_eq!(
        s.call("PATCH", &format!("/Groups/{id}"), Some(rename))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.call("DELETE", &format!("/Users/{}", users[2]), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let (_, after) = s.call("GET", &format!("/Groups/{id}"), None).await;
    assert_eq!(after["displayName"], "Platform");
    assert_eq!(member_values(&after), vec![users[3].clone()]);
    let (_, by_old_name) = s
        .call(
            "GET",
            &format!(
                "/Groups?filter={}",
                percent_encode("displayName eq \"Engineering\"")
            ),
            None,
        )
        .await;
    assert_eq!(by_old_name["totalResults"], 0);

    assert_eq!(
        s.call("DELETE", &format!("/Groups/{id}"), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.call("GET", &format!("/Groups/{id}"), None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_large_group_keeps_its_members_outside_the_group_row() {
    let s = Scim::start().await;
    let (_, group) = s
        .call("POST", "/Groups", Some(json!({"displayName": "Everyone"})))
        .await;
    let id = group["id"].as_str().unwrap().to_string();
    let members: Vec<Value> = (0..1500)
        .map(|i| json!({"value": format!("member-{i:05}")}))
        .collect();
    let add = patch_op(json!([{"op": "Add", "path": "members", "value": members}]));
    assert_eq!(
        s.call("PATCH", &format!("/Groups/{id}"), Some(add)).await.0,
        StatusCode::NO_CONTENT
    );
    let (_, full) = s.call("GET", &format!("/Groups/{id}"), None).await;
    assert_eq!(full["members"].as_array().unwrap().len(), 1500);
}

#[tokio::test]
async fn scim2_tester_reports_every_check_successful() {
    let s = Scim::start().await;
    let cli = system_tests::scim2_cli();
    let output = tokio::process::Command::new(cli)
        .args(["--url", &s.base, "test"])
        .env(
            "SCIM_CLI_HEADERS",
            format!("Authorization: Bearer {}", s.token),
        )
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("scim2 runs");
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let successes = report.lines().filter(|l| l.starts_with("SUCCESS")).count();
    let failures: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("ERROR") || l.starts_with("CRITICAL"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} checks failed:\n{report}",
        failures.len()
    );
    assert!(
        output.status.success(),
        "scim2 exited {:?}:\n{report}",
        output.status.code()
    );
    assert!(successes >= 100, "only {successes} checks ran:\n{report}");
}

#[tokio::test]
async fn the_root_search_pages_users_then_groups_as_one_list() {
    let s = Scim::start().await;
    for i in 0..3 {
        let (status, _) = s
            .call(
                "POST",
                "/Users",
                Some(entra_user(&format!("p{i}@contoso.com"), &format!("p{i}"))),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    for name in ["Alpha", "Beta"] {
        let (status, _) = s
            .call(
                "POST",
                "/Groups",
                Some(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let search = |start: usize, count: usize| {
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
               "startIndex": start, "count": count})
    };
    let mut seen = Vec::new();
    for start in [1, 3, 5] {
        let (status, page) = s.call("POST", "/.search", Some(search(start, 2))).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["totalResults"], 5);
        assert_eq!(page["startIndex"], start);
        for r in page["Resources"].as_array().unwrap() {
            seen.push(r["meta"]["resourceType"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, ["User", "User", "User", "Group", "Group"]);
    let (_, past) = s.call("POST", "/.search", Some(search(9, 2))).await;
    assert_eq!(past["totalResults"], 5);
    assert_eq!(past["Resources"].as_array().map_or(0, Vec::len), 0);
}

fn fuzz_corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/scim/fuzz/corpus")
        .join(target);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect()
}

#[tokio::test]
async fn the_fuzzing_corpus_over_http_gets_answers_or_400s_never_a_failure() {
    let s = Scim::start().await;
    let (_, user) = s
        .call(
            "POST",
            "/Users",
            Some(entra_user("fuzz@contoso.com", "fuzz")),
        )
        .await;
    let id = user["id"].as_str().unwrap().to_string();
    let mut rejected = 0;
    for input in fuzz_corpus("filter") {
        let Ok(text) = String::from_utf8(input) else {
            continue;
        };
        let (status, body) = s.call("GET", &filter(&text), None).await;
        match status {
            StatusCode::OK => assert!(body["totalResults"].is_u64(), "{text:?}: {body}"),
            StatusCode::BAD_REQUEST => {
                assert_eq!(body["scimType"], "invalidFilter", "{text:?}: {body}");
                rejected += 1;
            }
            other => panic!("{text:?}: {other} {body}"),
        }
    }
    assert!(rejected > 0);
    for input in fuzz_corpus("patch_request") {
        let body: Value = match serde_json::from_slice(&input) {
            Ok(body) => body,
            Err(_) => continue,
        };
        let (status, answer) = s
            .call("PATCH", &format!("/Users/{id}"), Some(body.clone()))
            .await;
        assert!(
            status.is_success()
                || status == StatusCode::BAD_REQUEST
                || status == StatusCode::CONFLICT,
            "{body}: {status} {answer}"
        );
        if status == StatusCode::BAD_REQUEST {
            assert!(answer["scimType"].is_string(), "{body}: {answer}");
        }
    }
}

#[tokio::test]
async fn manager_arrives_in_both_forms_and_clears_with_null_or_empty() {
    let s = Scim::start().await;
    const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    let (_, boss) = s
        .call(
            "POST",
            "/Users",
            Some(entra_user("boss@contoso.com", "boss")),
        )
        .await;
    let (_, ada) = s
        .call("POST", "/Users", Some(entra_user("ada@contoso.com", "ada")))
        .await;
    let (boss, ada) = (boss["id"].as_str().unwrap(), ada["id"].as_str().unwrap());
    let path = format!("/Users/{ada}");
    let forms = [
        json!({"op": "Add", "path": format!("{ENTERPRISE}:manager"), "value": boss}),
        json!({"op": "Add", "path": "manager", "value": [{"$ref": null, "value": boss}]}),
    ];
    for form in forms {
        let (status, user) = s.call("PATCH", &path, Some(patch_op(json!([form])))).await;
        assert_eq!(status, StatusCode::OK, "{user}");
        assert_eq!(
            user[ENTERPRISE]["manager"],
            json!({"value": boss}),
            "{form}"
        );
        let (_, read) = s.call("GET", &path, None).await;
        assert_eq!(read[ENTERPRISE]["manager"], json!({"value": boss}));
    }
    for clear in [json!(null), json!("")] {
        s.call(
            "PATCH",
            &path,
            Some(patch_op(
                json!([{"op": "Add", "path": "manager", "value": [{"value": boss}]}]),
            )),
        )
        .await;
        let (status, user) = s
            .call(
                "PATCH",
                &path,
                Some(patch_op(json!([{"op": "Replace", "path": format!("{ENTERPRISE}:manager"), "value": clear}]))),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            user[ENTERPRISE].get("manager").is_none_or(Value::is_null),
            "{clear}: {user}"
        );
    }
}

#[tokio::test]
async fn a_resource_too_large_to_store_is_a_400_and_changes_nothing() {
    let s = Scim::start().await;
    let mut big = entra_user("big@contoso.com", "big");
    big["displayName"] = json!("x".repeat(40_000));
    let (status, error) = s.call("POST", "/Users", Some(big)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error["scimType"], "invalidValue");
    let (_, found) = s
        .call("GET", &filter("userName eq \"big@contoso.com\""), None)
        .await;
    assert_eq!(found["totalResults"], 0);

    let (_, user) = s
        .call(
            "POST",
            "/Users",
            Some(entra_user("small@contoso.com", "small")),
        )
        .await;
    let path = format!("/Users/{}", user["id"].as_str().unwrap());
    let grow =
        patch_op(json!([{"op": "Replace", "path": "displayName", "value": "y".repeat(40_000)}]));
    let (status, error) = s.call("PATCH", &path, Some(grow)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let (_, read) = s.call("GET", &path, None).await;
    assert_eq!(read["meta"]["version"], user["meta"]["version"]);
}

#[tokio::test]
async fn oversized_members_are_refused_before_anything_is_written() {
    let s = Scim::start().await;
    let (_, group) = s
        .call("POST", "/Groups", Some(json!({"displayName": "Ops"})))
        .await;
    let path = format!("/Groups/{}", group["id"].as_str().unwrap());
    for member in [
        json!({"value": "v".repeat(300)}),
        json!({"value": "ok", "display": "d".repeat(2000)}),
    ] {
        let body = patch_op(json!([
            {"op": "Replace", "path": "displayName", "value": "Renamed"},
            {"op": "Add", "path": "members", "value": [{"value": "fine"}, member]},
        ]));
        let (status, error) = s.call("PATCH", &path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
        assert_eq!(error["scimType"], "invalidValue");
        let (_, read) = s.call("GET", &path, None).await;
        assert_eq!(read["displayName"], "Ops", "nothing was written");
        assert_eq!(read["members"], json!([]));
    }
    let (status, _) = s
        .call(
            "POST",
            "/Groups",
            Some(json!({"displayName": "Big", "members": [{"value": "w".repeat(300)}]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn overlong_names_are_a_400_not_a_storage_failure() {
    let s = Scim::start().await;
    let long = format!("{}@contoso.com", "n".repeat(1100));
    let (status, error) = s.call("POST", "/Users", Some(entra_user(&long, "x"))).await;
    assert_eq!(
        (status, error["scimType"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalidValue"))
    );
    let (status, _) = s
        .call(
            "POST",
            "/Users",
            Some(entra_user("ok@contoso.com", &"e".repeat(1100))),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = s
        .call(
            "POST",
            "/Groups",
            Some(json!({"displayName": "g".repeat(1100)})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, found) = s
        .call("GET", &filter(&format!("userName eq \"{long}\"")), None)
        .await;
    assert_eq!(
        (status, found["totalResults"].clone()),
        (StatusCode::OK, json!(0))
    );
}

#[tokio::test]
async fn deleted_users_leave_every_group_whatever_the_member_spelling() {
    let s = Scim::start().await;
    let (_, user) = s
        .call("POST", "/Users", Some(entra_user("m@contoso.com", "m")))
        .await;
    let id = user["id"].as_str().unwrap().to_string();
    // 120 groups: more than one Table transaction can clear at once
    let mut groups = Vec::new();
    for i in 0..120 {
        let (status, group) = s
            .call(
                "POST",
                "/Groups",
                Some(json!({"displayName": format!("g{i}")})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let gid = group["id"].as_str().unwrap().to_string();
        // the same id twice, in two spellings, and a non-UUID member whose value starts
        // with the user's id
        let members = if i == 0 {
            json!([{"value": id}, {"value": id.to_uppercase()}, {"value": format!("{id}-x")}])
        } else {
            json!([{"value": id}])
        };
        let (status, error) = s
            .call(
                "PATCH",
                &format!("/Groups/{gid}"),
                Some(patch_op(
                    json!([{"op": "Add", "path": "members", "value": members}]),
                )),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{error}");
        groups.push(gid);
    }
    let (_, first) = s.call("GET", &format!("/Groups/{}", groups[0]), None).await;
    assert_eq!(member_values(&first).len(), 2, "{first}");

    let (status, error) = s.call("DELETE", &format!("/Users/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{error}");
    for gid in &groups {
        let (_, group) = s.call("GET", &format!("/Groups/{gid}"), None).await;
        assert!(!member_values(&group).contains(&id), "{gid}: {group}");
    }
    let (_, first) = s.call("GET", &format!("/Groups/{}", groups[0]), None).await;
    assert_eq!(member_values(&first), vec![format!("{id}-x")]);
}

#[tokio::test]
async fn a_corrupt_stored_user_is_a_500_not_a_503() {
    let s = Scim::start().await;
    let id = Uuid::new_v4();
    // a row this service could not have written: its Data is not JSON
    let table = system_tests::Azurite::shared()
        .client()
        .table(format!("{}ScimResources", s.prefix));
    table
        .upsert_replace(
            &tables::Entity::new(s.tenant.to_string(), format!("user-{id}"))
                .with("UserId", id.to_string())
                .with("Data", "{not json")
                .with("Version", 1i64),
        )
        .await
        .unwrap();
    let (status, error) = s.call("GET", &format!("/Users/{id}"), None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{error}");
    assert_eq!(error["status"], "500");
    let (status, _) = s.call("GET", "/Users", None).await;
    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "the listing reads it too"
    );
}

// Found by Schemathesis: U+2028 or U+2029 in an indexed value (here an e-mail, which gets
// search rows) made Azurite fail the write with a 500, answered as 503. JavaScript reads
// both as line ends; Table Storage requests now carry them escaped.
#[tokio::test]
async fn a_user_whose_email_holds_a_line_separator_is_stored_and_read_back() {
    let s = Scim::start().await;
    for (i, separator) in ["\u{2028}", "\u{2029}"].iter().enumerate() {
        let email = format!("line{separator}break{i}@contoso.com");
        let mut user = entra_user(&format!("sep{i}@contoso.com"), &format!("sep{i}"));
        user["emails"] = json!([{"value": email, "type": "work", "primary": true}]);
        user["displayName"] = json!(format!("Para{separator}graph"));
        let (status, created) = s.call("POST", "/Users", Some(user)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().unwrap();
        let (status, read) = s.call("GET", &format!("/Users/{id}"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(read["emails"][0]["value"], email.as_str());
    }
}

// Found by the SCIM bench: 16 concurrent creates (32 here) into a new tenant answered some 503s
// ("the directory is unavailable"), the SCIM user already written: the directory's
// counter rows did not exist yet, every writer raced to insert the same few, and the
// losers retried at once, colliding again until their attempts ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_creates_into_a_new_tenant_all_succeed() {
    let s = Scim::start().await;
    for round in 0..3 {
        let calls = (0..32).map(|i| {
            let name = format!("burst{round}-{i}@contoso.com");
            let user = entra_user(&name, &format!("burst{round}-{i}"));
            let s = &s;
            async move { s.call("POST", "/Users", Some(user)).await }
        });
        for (status, body) in futures::future::join_all(calls).await {
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
    }
    let (status, list) = s.call("GET", "/Users?count=1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["totalResults"], 96);
}

/// RFC 7644 §3.3: a create answers 201 with the new resource's URI in `Location` (the same
/// as its meta.location) and its version in `ETag`.
#[tokio::test]
async fn a_created_user_answers_201_with_its_location_and_etag_headers() {
    let s = Scim::start().await;
    let response = s
        .http
        .post(format!("{}/Users", s.base))
        .bearer_auth(&s.token)
        .header("content-type", SCIM)
        .body(entra_user("Grace@Contoso.com", "grace").to_string())
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
    assert_eq!(location, Some(format!("{}/Users/{id}", s.base)));
    assert_eq!(location.as_deref(), created["meta"]["location"].as_str());
    assert_eq!(etag.as_deref(), created["meta"]["version"].as_str());
}
