//! The product's side of provisioning, against the built handler on Azurite: SCIM settings,
//! per-user and per-group overrides, users arriving Staged, invitations in the outbox, and
//! activation links that work once.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const SETTINGS_ON: &str = r#"{"automatic_invitation": true, "require_mobile_auth_users": true, "require_mobile_auth_groups": false}"#;

async fn create_user(s: &Scim, user_name: &str) -> String {
    let (status, user) = s
        .call("POST", "/Users", Some(entra_user(user_name, user_name)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert!(
        user.get("status").is_none() && user.get("Admin").is_none(),
        "the product's state stays out of SCIM: {user}"
    );
    user["id"].as_str().unwrap().to_string()
}

fn code_of(invitation: &Value) -> String {
    let link = invitation["link"]
        .as_str()
        .expect("a pending invitation has its link");
    link.split("code=").nth(1).unwrap().to_string()
}

async fn redeem(s: &Scim, code: &str) -> (StatusCode, Value) {
    let response = s
        .http
        .post(format!(
            "{}/api/v1/invitations/redeem",
            s.handler.base_url()
        ))
        .bearer_auth(&s.admin)
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn settings_have_defaults_and_a_put_must_be_whole_and_valid() {
    let s = Scim::start().await;
    let (status, settings) = s.admin_call("GET", "settings", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        settings,
        json!({"automatic_invitation": false, "require_mobile_auth_users": false,
               "require_mobile_auth_groups": false, "invitation_valid_hours": 168})
    );

    let (status, error) = s
        .admin_call(
            "PUT",
            "settings",
            Some(json!({"automatic_invitation": true})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("require_mobile_auth_users"),
        "{error}"
    );
    let mut typo: Value = serde_json::from_str(SETTINGS_ON).unwrap();
    typo["automatic_invitations"] = json!(true);
    let (status, error) = s.admin_call("PUT", "settings", Some(typo)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("automatic_invitations")
    );
    let mut too_long: Value = serde_json::from_str(SETTINGS_ON).unwrap();
    too_long["invitation_valid_hours"] = json!(10_000);
    let (status, _) = s.admin_call("PUT", "settings", Some(too_long)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = s.admin_call("GET", "settings", None).await;
    assert_eq!(status, StatusCode::OK, "a refused PUT changed nothing");
    assert_eq!(
        s.admin_call("GET", "settings", None).await.1["automatic_invitation"],
        false
    );

    let on: Value = serde_json::from_str(SETTINGS_ON).unwrap();
    let (status, saved) = s.admin_call("PUT", "settings", Some(on)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(saved["invitation_valid_hours"], 168);
    let (_, settings) = s.admin_call("GET", "settings", None).await;
    assert_eq!(settings["automatic_invitation"], true);
    assert_eq!(settings["require_mobile_auth_users"], true);

    // only administrators; only registered tenants
    let r = s
        .http
        .get(format!(
            "{}/api/v1/tenants/{}/scim/settings",
            s.handler.base_url(),
            s.tenant
        ))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = s
        .http
        .get(format!(
            "{}/api/v1/tenants/{}/scim/settings",
            s.handler.base_url(),
            uuid::Uuid::new_v4()
        ))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn users_arrive_staged_and_automatic_invitation_fills_the_outbox() {
    let s = Scim::start().await;
    let staged = create_user(&s, "staged@contoso.com").await;
    let (status, user) = s.admin_call("GET", &format!("users/{staged}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["status"], "Staged");
    assert_eq!(user["source"], "scim");
    assert_eq!(user["user_name"], "staged@contoso.com");
    assert_eq!(user["invitation_id"], Value::Null);
    let (_, outbox) = s.admin_call("GET", "invitations", None).await;
    assert_eq!(outbox["invitations"], json!([]));

    s.admin_call(
        "PUT",
        "settings",
        Some(serde_json::from_str(SETTINGS_ON).unwrap()),
    )
    .await;
    // a user provisioned disabled is not invited, even with automatic invitation on
    let mut disabled = entra_user("disabled@contoso.com", "disabled");
    disabled["active"] = json!("False");
    let (status, created) = s.call("POST", "/Users", Some(disabled)).await;
    assert_eq!(status, StatusCode::CREATED);
    let disabled_id = created["id"].as_str().unwrap().to_string();
    let (_, user) = s
        .admin_call("GET", &format!("users/{disabled_id}"), None)
        .await;
    assert_eq!(user["status"], "Staged");
    let invited = create_user(&s, "invited@contoso.com").await;
    let (_, user) = s.admin_call("GET", &format!("users/{invited}"), None).await;
    assert_eq!(user["status"], "Invited");
    assert_eq!(user["settings"]["require_mobile_auth"]["effective"], true);

    let (_, outbox) = s.admin_call("GET", "invitations?state=pending", None).await;
    let invitations = outbox["invitations"].as_array().unwrap();
    assert_eq!(invitations.len(), 1, "{outbox}");
    let invitation = &invitations[0];
    assert_eq!(invitation["user_id"], invited.as_str());
    assert_eq!(invitation["email"], "invited@contoso.com");
    assert_eq!(invitation["id"], user["invitation_id"]);
    let link = invitation["link"].as_str().unwrap();
    assert!(
        link.starts_with(&format!("{}/api/activate?code=inv_", s.handler.base_url())),
        "{link}"
    );

    // listing by status
    let (_, staged_only) = s.admin_call("GET", "users?status=Staged", None).await;
    let mut ids: Vec<&str> = staged_only["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected = vec![staged.as_str(), disabled_id.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    let (status, _) = s.admin_call("GET", "users?status=Happy", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // the mailer takes it: the link is erased, the invitation still works
    let id = invitation["id"].as_str().unwrap();
    let code = code_of(invitation);
    let (status, sent) = s
        .admin_call("POST", &format!("invitations/{id}/sent"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sent["state"], "sent");
    assert_eq!(sent["link"], Value::Null);
    let (status, again) = s
        .admin_call("POST", &format!("invitations/{id}/sent"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(again["error"], "not_pending");
    let (_, outbox) = s.admin_call("GET", "invitations?state=pending", None).await;
    assert_eq!(outbox["invitations"], json!([]));
    let (_, outbox) = s.admin_call("GET", "invitations?state=sent", None).await;
    assert_eq!(outbox["invitations"][0]["link"], Value::Null);
    let (status, redeemed) = redeem(&s, &code).await;
    assert_eq!(status, StatusCode::OK, "{redeemed}");
    assert_eq!(redeemed["user_id"], invited.as_str());
}

#[tokio::test]
async fn an_activation_link_works_once_and_a_get_does_not_use_it() {
    let s = Scim::start().await;
    let id = create_user(&s, "ada@contoso.com").await;
    let (status, invitation) = s
        .admin_call("POST", &format!("users/{id}/invitation"), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{invitation}");
    assert_eq!(invitation["state"], "pending");
    let code = code_of(&invitation);
    let page = format!("{}/api/activate", s.handler.base_url());

    // a mail scanner fetching the link burns nothing
    for _ in 0..2 {
        let r = s
            .http
            .get(format!("{page}?code={code}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(csp.contains("form-action 'self'"), "{csp}");
        let html = r.text().await.unwrap();
        assert!(html.contains("<form method=\"post\""), "{html}");
        assert!(html.contains("ada@contoso.com"));
    }
    let (_, user) = s.admin_call("GET", &format!("users/{id}"), None).await;
    assert_eq!(user["status"], "Invited");

    let r = s
        .http
        .post(&page)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("code={code}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("active"));
    let (_, user) = s.admin_call("GET", &format!("users/{id}"), None).await;
    assert_eq!(user["status"], "Active");
    assert!(user["activated_at"].is_string());

    // once only, in the browser and through the API
    let r = s
        .http
        .post(&page)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("code={code}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    let (status, error) = redeem(&s, &code).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(error["error"], "used");
    let (_, outbox) = s
        .admin_call("GET", "invitations?state=redeemed", None)
        .await;
    assert_eq!(outbox["invitations"].as_array().unwrap().len(), 1);

    // an active user is not invited again
    let (status, error) = s
        .admin_call("POST", &format!("users/{id}/invitation"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["error"], "already_active");

    // wrong and malformed codes
    let mut forged = code.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let (status, _) = redeem(&s, &forged).await;
    assert!(
        status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
        "{status}"
    );
    let (status, error) = redeem(&s, "inv_nonsense").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"], "malformed_code");
    let r = s.http.get(&page).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn concurrent_redemptions_activate_once() {
    let s = Scim::start().await;
    let id = create_user(&s, "race@contoso.com").await;
    let (_, invitation) = s
        .admin_call("POST", &format!("users/{id}/invitation"), None)
        .await;
    let code = code_of(&invitation);
    let attempts = (0..10).map(|_| redeem(&s, &code));
    let statuses: Vec<StatusCode> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::GONE),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn newer_invitations_revocation_and_deletion_withdraw_a_link() {
    let s = Scim::start().await;
    let id = create_user(&s, "grace@contoso.com").await;
    let (_, first) = s
        .admin_call("POST", &format!("users/{id}/invitation"), None)
        .await;
    let (_, second) = s
        .admin_call("POST", &format!("users/{id}/invitation"), None)
        .await;
    let (status, error) = redeem(&s, &code_of(&first)).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(error["error"], "revoked");
    let (_, outbox) = s.admin_call("GET", "invitations?state=pending", None).await;
    assert_eq!(outbox["invitations"].as_array().unwrap().len(), 1);
    assert_eq!(outbox["invitations"][0]["id"], second["id"]);

    // revoking puts the user back to Staged
    let second_id = second["id"].as_str().unwrap();
    let (status, _) = s
        .admin_call("DELETE", &format!("invitations/{second_id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, user) = s.admin_call("GET", &format!("users/{id}"), None).await;
    assert_eq!(user["status"], "Staged");
    let (status, _) = redeem(&s, &code_of(&second)).await;
    assert_eq!(status, StatusCode::GONE);
    let (status, _) = s
        .admin_call("DELETE", &format!("invitations/{second_id}"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // a disabled user cannot be invited; deleting a user withdraws its invitation
    let (_, third) = s
        .admin_call("POST", &format!("users/{id}/invitation"), None)
        .await;
    let (status, _) = s.call("DELETE", &format!("/Users/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = redeem(&s, &code_of(&third)).await;
    assert_eq!(status, StatusCode::GONE);
    let (_, outbox) = s.admin_call("GET", "invitations?state=pending", None).await;
    assert_eq!(outbox["invitations"], json!([]), "nothing left to mail");

    let disabled = create_user(&s, "off@contoso.com").await;
    let (status, _) = s
        .call(
            "PATCH",
            &format!("/Users/{disabled}"),
            Some(
                json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "Replace", "path": "active", "value": "False"}]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, error) = s
        .admin_call("POST", &format!("users/{disabled}/invitation"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["error"], "user_inactive");
}

#[tokio::test]
async fn users_and_groups_override_the_tenant_settings_and_keep_them_through_scim_writes() {
    let s = Scim::start().await;
    let id = create_user(&s, "linus@contoso.com").await;
    let (_, user) = s
        .admin_call("GET", &format!("users/{id}/settings"), None)
        .await;
    assert_eq!(
        user["settings"]["require_mobile_auth"],
        json!({"override": null, "effective": false})
    );
    let (status, user) = s
        .admin_call(
            "PUT",
            &format!("users/{id}/settings"),
            Some(json!({"settings": {"require_mobile_auth": true}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(
        user["settings"]["require_mobile_auth"],
        json!({"override": true, "effective": true})
    );

    // Entra's next update does not wipe what the product set
    let (status, _) = s
        .call(
            "PATCH",
            &format!("/Users/{id}"),
            Some(
                json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "Replace", "path": "displayName", "value": "Linus"}]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, scim_user) = s
        .call(
            "PUT",
            &format!("/Users/{id}"),
            Some(entra_user("linus@contoso.com", "l")),
        )
        .await;
    assert_eq!(scim_user["userName"], "linus@contoso.com");
    let (_, user) = s.admin_call("GET", &format!("users/{id}"), None).await;
    assert_eq!(user["settings"]["require_mobile_auth"]["override"], true);
    assert_eq!(user["status"], "Staged");

    // the tenant default moves users without an override only
    s.admin_call(
        "PUT",
        "settings",
        Some(
            json!({"automatic_invitation": false, "require_mobile_auth_users": true,
                    "require_mobile_auth_groups": true}),
        ),
    )
    .await;
    let (_, user) = s
        .admin_call(
            "PUT",
            &format!("users/{id}/settings"),
            Some(json!({"settings": {"require_mobile_auth": false}})),
        )
        .await;
    assert_eq!(
        user["settings"]["require_mobile_auth"],
        json!({"override": false, "effective": false})
    );
    let (_, user) = s
        .admin_call(
            "PUT",
            &format!("users/{id}/settings"),
            Some(json!({"settings": {"require_mobile_auth": null}})),
        )
        .await;
    assert_eq!(
        user["settings"]["require_mobile_auth"],
        json!({"override": null, "effective": true})
    );

    // groups
    let (status, group) = s
        .call(
            "POST",
            "/Groups",
            Some(
                json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "displayName": "Engineering", "externalId": "eng", "members": []}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let group_id = group["id"].as_str().unwrap();
    let (_, view) = s
        .admin_call("GET", &format!("groups/{group_id}/settings"), None)
        .await;
    assert_eq!(
        view["settings"]["require_mobile_auth"],
        json!({"override": null, "effective": true})
    );
    let (_, view) = s
        .admin_call(
            "PUT",
            &format!("groups/{group_id}/settings"),
            Some(json!({"settings": {"require_mobile_auth": false}})),
        )
        .await;
    assert_eq!(view["settings"]["require_mobile_auth"]["effective"], false);
    let (status, _) = s
        .call(
            "PATCH",
            &format!("/Groups/{group_id}"),
            Some(
                json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "Replace", "path": "displayName", "value": "Eng"}]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, view) = s
        .admin_call("GET", &format!("groups/{group_id}/settings"), None)
        .await;
    assert_eq!(view["display_name"], "Eng");
    assert_eq!(view["settings"]["require_mobile_auth"]["override"], false);

    // bad input
    let (status, _) = s
        .admin_call(
            "PUT",
            &format!("users/{id}/settings"),
            Some(json!({"settings": {"require_mobile": true}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = s
        .admin_call(
            "PUT",
            &format!("users/{}/settings", uuid::Uuid::new_v4()),
            Some(json!({"settings": {"require_mobile_auth": true}})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.admin_call("GET", "users/not-a-guid", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_offboarded_tenants_links_stop_working_and_its_settings_are_read_only() {
    let s = Scim::start().await;
    let id = create_user(&s, "leaving@contoso.com").await;
    let (_, invitation) = s
        .admin_call("POST", &format!("users/{id}/invitation"), None)
        .await;
    let code = code_of(&invitation);
    let r = s
        .http
        .delete(format!(
            "{}/api/v1/tenants/{}",
            s.handler.base_url(),
            s.tenant
        ))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, error) = redeem(&s, &code).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(error["error"], "tenant_offboarded");
    let r = s
        .http
        .get(format!("{}/api/activate?code={code}", s.handler.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    let (status, _) = s.admin_call("GET", "settings", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s
        .admin_call(
            "PUT",
            "settings",
            Some(serde_json::from_str(SETTINGS_ON).unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_revocation_racing_a_redemption_never_both_succeed() {
    let s = Scim::start().await;
    for round in 0..8 {
        let id = create_user(&s, &format!("race{round}@contoso.com")).await;
        let (_, invitation) = s
            .admin_call("POST", &format!("users/{id}/invitation"), None)
            .await;
        let code = code_of(&invitation);
        let invitation_id = invitation["id"].as_str().unwrap().to_string();
        let revoke_path = format!("invitations/{invitation_id}");
        let ((redeemed, _), (revoked, _)) = tokio::join!(
            redeem(&s, &code),
            s.admin_call("DELETE", &revoke_path, None)
        );
        let (_, user) = s.admin_call("GET", &format!("users/{id}"), None).await;
        match (redeemed, revoked) {
            (StatusCode::OK, StatusCode::CONFLICT) => assert_eq!(user["status"], "Active"),
            (StatusCode::GONE, StatusCode::NO_CONTENT) => assert_eq!(user["status"], "Staged"),
            other => panic!("round {round}: {other:?} {user}"),
        }
    }
}
