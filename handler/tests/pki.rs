//! Certificates for directory users through the built handler: the tenant's CA and CRL
//! published anonymously, issuance checked by `openssl verify -crl_check` against them,
//! revocation by the API and automatically when SCIM disables or deletes a user, and every
//! precondition refused with a 4xx and nothing written.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Scim, entra_user};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

impl Scim {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handler.base_url())
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), self.url(path))
            .bearer_auth(&self.admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// An anonymous GET of a published file: status, content type, bytes.
    async fn published(&self, tenant: Uuid, file: &str) -> (StatusCode, String, Vec<u8>) {
        let r = self
            .http
            .get(self.url(&format!("/api/v1/pki/{tenant}/{file}")))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let kind = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, kind, r.bytes().await.unwrap().to_vec())
    }

    async fn scim_user(&self, name: &str) -> String {
        let (status, created) = self
            .call("POST", "/Users", Some(entra_user(name, name)))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created["id"].as_str().unwrap().to_string()
    }

    async fn provision(&self, body: Value) -> (StatusCode, Value) {
        self.api("POST", "/api/v1/entra-id/provision-certificate", Some(body))
            .await
    }

    /// Issues a certificate to `user` for a fresh CSR; answers its serial.
    async fn issue_to(&self, user: &str) -> String {
        let (status, issued) = self
            .provision(json!({"user_id": user, "csr": ec_csr()}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{issued}");
        issued["certificate"]["serial"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn ec_csr() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["asks-for-more.example".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// `openssl verify -crl_check` against the published CA (PEM) and CRL (DER).
fn verify(dir: &Path, ca_pem: &[u8], crl_der: &[u8], leaf_pem: &str) -> (bool, String) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.join("crl.der"), crl_der).unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf_pem).unwrap();
    let out = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(dir.join("crl.der"))
        .arg("-out")
        .arg(dir.join("crl.pem"))
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("openssl")
        .args(["verify", "-crl_check", "-purpose", "sslclient", "-CAfile"])
        .arg(dir.join("ca.pem"))
        .arg("-CRLfile")
        .arg(dir.join("crl.pem"))
        .arg(dir.join("leaf.pem"))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn crl_serials(der: &[u8]) -> Vec<String> {
    let (_, crl) = x509_parser::parse_x509_crl(der).unwrap();
    crl.iter_revoked_certificates()
        .map(|r| pki::x509::hex(r.raw_serial()))
        .collect()
}

#[tokio::test]
async fn a_provisioned_certificate_verifies_against_the_published_ca_and_crl_until_revoked() {
    let s = Scim::start().await;
    let dir = std::env::temp_dir().join(format!("pki-bb-{}", Uuid::new_v4()));
    let t = s.tenant;
    let (status, _, _) = s.published(t, "ca.pem").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no CA before one is made");
    let (status, ca) = s
        .api("POST", &format!("/api/v1/tenants/{t}/pki/ca"), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ca}");
    assert_eq!(ca["crl_url"], s.url(&format!("/api/v1/pki/{t}/crl")));
    let (status, again) = s
        .api("POST", &format!("/api/v1/tenants/{t}/pki/ca"), None)
        .await;
    assert_eq!((status, &again["serial"]), (StatusCode::OK, &ca["serial"]));
    let (status, kind, ca_pem) = s.published(t, "ca.pem").await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::OK, "application/x-pem-file")
    );
    let (status, kind, ca_der) = s.published(t, "ca.crt").await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::OK, "application/pkix-cert")
    );
    assert_eq!(
        pki::x509::pem("CERTIFICATE", &ca_der).as_bytes(),
        ca_pem.as_slice()
    );
    let (status, kind, crl) = s.published(t, "crl").await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::OK, "application/pkix-crl")
    );
    assert!(crl_serials(&crl).is_empty());

    let user = s.scim_user("ada@contoso.com").await;
    let (status, issued) = s.provision(json!({"user_id": user})).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let cert = &issued["certificate"];
    assert_eq!(
        (
            cert["type"].as_str(),
            cert["certificate_type"].as_str(),
            cert["status"].as_str()
        ),
        (Some("entra_user"), Some("client_auth"), Some("active"))
    );
    assert_eq!(issued["user"]["id"], user.as_str());
    assert_eq!(issued["private_key"]["format"], "pkcs8");
    assert!(
        issued["private_key"]["pem"]
            .as_str()
            .unwrap()
            .contains("BEGIN PRIVATE KEY")
    );
    assert_eq!(cert["chain"].as_array().unwrap().len(), 2);
    assert_eq!(cert["thumbprint_sha256"].as_str().unwrap().len(), 64);
    let leaf = cert["pem"].as_str().unwrap();
    let (ok, out) = verify(&dir, &ca_pem, &crl, leaf);
    assert!(ok, "{out}");

    // the CSR path: a P-256 key, nothing else of what the CSR asks for
    let (status, by_csr) = s
        .provision(json!({"user_id": user, "csr": ec_csr(), "tenant_id": t}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{by_csr}");
    assert!(by_csr["private_key"].is_null());
    let (_, parsed) =
        x509_parser::pem::parse_x509_pem(by_csr["certificate"]["pem"].as_str().unwrap().as_bytes())
            .unwrap();
    let parsed = parsed.parse_x509().unwrap();
    let eku = parsed.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);

    // listed: active ones in the listing, all in the detail
    let (_, list) = s
        .api(
            "GET",
            &format!("/api/v1/entra-id/users?tenant_id={t}"),
            None,
        )
        .await;
    let listed = &list["users"][0]["certificates"];
    assert_eq!(listed.as_array().unwrap().len(), 2, "{list}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["type"] == "entra_user")
    );

    let id = cert["id"].as_str().unwrap();
    let (status, revoked) = s
        .api(
            "POST",
            &format!("/api/v1/certificates/{id}/revoke"),
            Some(json!({"reason": "keyCompromise"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(
        (
            revoked["status"].as_str(),
            revoked["revocation_reason"].as_str(),
            revoked["revoked_by"].as_str()
        ),
        (Some("revoked"), Some("keyCompromise"), Some("admin"))
    );
    let (status, twice) = s
        .api(
            "POST",
            &format!("/api/v1/certificates/{id}/revoke"),
            Some(json!({"reason": "superseded"})),
        )
        .await;
    assert_eq!(
        (status, &twice["revocation_reason"]),
        (StatusCode::OK, &json!("keyCompromise"))
    );
    let (_, _, crl2) = s.published(t, "crl").await;
    assert_eq!(
        crl_serials(&crl2),
        vec![cert["serial"].as_str().unwrap().to_string()]
    );
    let (ok, out) = verify(&dir, &ca_pem, &crl2, leaf);
    assert!(!ok && out.contains("revoked"), "{out}");

    let (_, list) = s
        .api(
            "GET",
            &format!("/api/v1/entra-id/users?tenant_id={t}"),
            None,
        )
        .await;
    assert_eq!(
        list["users"][0]["certificates"].as_array().unwrap().len(),
        1
    );
    let (_, detail) = s
        .api(
            "GET",
            &format!("/api/v1/entra-id/users/{user}?tenant_id={t}"),
            None,
        )
        .await;
    assert_eq!(
        detail["certificates"].as_array().unwrap().len(),
        2,
        "{detail}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_scim_disable_or_delete_revokes_the_users_certificates() {
    let s = Scim::start().await;
    let t = s.tenant;
    let ada = s.scim_user("ada@contoso.com").await;
    let bob = s.scim_user("bob@contoso.com").await;
    let mut serials = Vec::new();
    for user in [&ada, &ada, &bob] {
        let (status, issued) = s.provision(json!({"user_id": user, "csr": ec_csr()})).await;
        assert_eq!(status, StatusCode::CREATED, "{issued}");
        serials.push(
            issued["certificate"]["serial"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let disable = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Replace", "path": "active", "value": "False"}],
    });
    let (status, _) = s
        .call("PATCH", &format!("/Users/{ada}"), Some(disable.clone()))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, detail) = s
        .api("GET", &format!("/api/v1/entra-id/users/{ada}"), None)
        .await;
    for c in detail["certificates"].as_array().unwrap() {
        assert_eq!(
            (
                c["status"].as_str(),
                c["revocation_reason"].as_str(),
                c["revoked_by"].as_str()
            ),
            (Some("revoked"), Some("cessationOfOperation"), Some("scim")),
            "{c}"
        );
    }
    let (_, _, crl) = s.published(t, "crl").await;
    let mut listed = crl_serials(&crl);
    listed.sort();
    let mut expected = serials[..2].to_vec();
    expected.sort();
    assert_eq!(listed, expected);
    // Entra repeats the PATCH: nothing more is revoked, no new CRL is needed
    let (status, _) = s
        .call("PATCH", &format!("/Users/{ada}"), Some(disable))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, crl_again) = s.published(t, "crl").await;
    assert_eq!(crl_again, crl);
    // deleted over SCIM: revoked too
    let (status, _) = s.call("DELETE", &format!("/Users/{bob}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, _, crl) = s.published(t, "crl").await;
    assert_eq!(crl_serials(&crl).len(), 3);
    // each automatic revocation is its own event, by Entra's provisioning, told once
    let (status, trail) = s
        .api(
            "GET",
            &format!("/api/v1/tenants/{t}/audit?action=certificate.revoke"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{trail}");
    let events = trail["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{trail}");
    assert!(
        events
            .iter()
            .all(|e| e["actor"]["kind"] == "entra-provisioning"
                && e["changes"].to_string().contains("cessationOfOperation")),
        "{trail}"
    );
    let mut targets: Vec<&str> = events
        .iter()
        .map(|e| e["target"]["id"].as_str().unwrap())
        .collect();
    targets.sort();
    targets.dedup();
    assert_eq!(targets.len(), 3);
}

#[tokio::test]
async fn preconditions_are_refused_with_a_clear_4xx_and_nothing_is_written() {
    let s = Scim::start().await;
    let t = s.tenant;
    let user = s.scim_user("ada@contoso.com").await;
    let inactive = s.scim_user("gone@contoso.com").await;
    let (status, _) = s
        .call(
            "PATCH",
            &format!("/Users/{inactive}"),
            Some(json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "Replace", "path": "active", "value": false}],
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // a second tenant: its users are never issued under the first one, and back
    let other = Uuid::new_v4();
    let (status, _) = s
        .api(
            "POST",
            "/api/v1/tenants",
            Some(json!({"tenant_id": other, "display_name": "Fabrikam"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let good = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let mut der = good.der().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let forged = pki::x509::pem("CERTIFICATE REQUEST", &der);
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"user_id": user}),
            StatusCode::BAD_REQUEST,
            "tenant_id is required",
        ),
        (
            json!({"user_id": Uuid::new_v4(), "tenant_id": t}),
            StatusCode::NOT_FOUND,
            "no user",
        ),
        (
            json!({"user_id": user, "tenant_id": other}),
            StatusCode::NOT_FOUND,
            "no user",
        ),
        (
            json!({"user_id": inactive, "tenant_id": t}),
            StatusCode::CONFLICT,
            "not active",
        ),
        (
            json!({"user_id": "12", "tenant_id": t}),
            StatusCode::BAD_REQUEST,
            "user_id",
        ),
        (
            json!({"user_id": user, "tenant_id": t, "validity_days": 0}),
            StatusCode::BAD_REQUEST,
            "validity_days",
        ),
        (
            json!({"user_id": user, "tenant_id": t, "validity_days": 3651}),
            StatusCode::BAD_REQUEST,
            "validity_days",
        ),
        (
            json!({"user_id": user, "tenant_id": t, "key_size": 1024}),
            StatusCode::BAD_REQUEST,
            "key_size",
        ),
        (
            json!({"user_id": user, "tenant_id": t, "certificate_type": "server_auth"}),
            StatusCode::BAD_REQUEST,
            "certificate_type",
        ),
        (
            json!({"user_id": user, "tenant_id": t, "key_format": "jks"}),
            StatusCode::BAD_REQUEST,
            "key_format",
        ),
        (
            json!({"user_id": user, "tenant_id": t, "csr": forged}),
            StatusCode::BAD_REQUEST,
            "signature",
        ),
        (
            json!({"user_id": user, "tenant_id": t, "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}),
            StatusCode::BAD_REQUEST,
            "csr",
        ),
        (
            json!({"user_id": user, "tenant_id": t, "is_ca": true}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
    ];
    for (body, expected, why) in cases {
        let (status, answer) = s.provision(body.clone()).await;
        assert_eq!(status, expected, "{body}: {answer}");
        assert!(
            answer["message"].as_str().unwrap_or_default().contains(why),
            "{body}: {answer} should say {why}"
        );
    }
    let anonymous = s
        .http
        .post(s.url("/api/v1/entra-id/provision-certificate"))
        .json(&json!({"user_id": user, "tenant_id": t}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    for tenant in [t, other] {
        let (status, _, _) = s.published(tenant, "crl").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "no CA was made for {tenant}");
    }
    let (_, detail) = s
        .api(
            "GET",
            &format!("/api/v1/entra-id/users/{user}?tenant_id={t}"),
            None,
        )
        .await;
    assert_eq!(detail["certificates"], json!([]));
    let (status, answer) = s
        .api(
            "POST",
            &format!(
                "/api/v1/certificates/{}/revoke?tenant_id={t}",
                Uuid::new_v4()
            ),
            Some(json!({"reason": "keyCompromise"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, answer) = s
        .api(
            "POST",
            &format!(
                "/api/v1/certificates/{}/revoke?tenant_id={t}",
                Uuid::new_v4()
            ),
            Some(json!({"reason": "because"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, _, _) = s.published(t, "ca.pem").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let r = s
        .http
        .get(s.url("/api/v1/pki/not-a-guid/crl"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn offboarding_a_tenant_revokes_its_certificates_and_keeps_the_crl_published() {
    let s = Scim::start().await;
    let t = s.tenant;
    let user = s.scim_user("ada@contoso.com").await;
    let (status, issued) = s.provision(json!({"user_id": user, "csr": ec_csr()})).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let (status, gone) = s.api("DELETE", &format!("/api/v1/tenants/{t}"), None).await;
    assert_eq!(status, StatusCode::OK, "{gone}");
    assert_eq!(gone["revoked_certificates"], 1);
    let (status, again) = s.api("DELETE", &format!("/api/v1/tenants/{t}"), None).await;
    assert_eq!(
        (status, &again["revoked_certificates"]),
        (StatusCode::OK, &json!(0))
    );
    let (status, _, crl) = s.published(t, "crl").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        crl_serials(&crl),
        vec![
            issued["certificate"]["serial"]
                .as_str()
                .unwrap()
                .to_string()
        ]
    );
}

#[tokio::test]
async fn certificate_issue_and_revoke_are_audited_without_the_key() {
    let s = Scim::start().await;
    let t = s.tenant;
    let user = s.scim_user("cert-audit@contoso.com").await;
    let (status, issued) = s.provision(json!({"user_id": user})).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let id = issued["certificate"]["id"].as_str().unwrap().to_string();
    let key_pem = issued["private_key"]["pem"].as_str().unwrap().to_string();
    let (status, _) = s
        .api(
            "POST",
            &format!("/api/v1/certificates/{id}/revoke"),
            Some(json!({"reason": "keyCompromise"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, trail) = s
        .api(
            "GET",
            &format!("/api/v1/tenants/{t}/audit?target={id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let events = trail["events"].as_array().unwrap();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["certificate.revoke", "certificate.issue"]);
    assert!(events.iter().all(|e| e["actor"]["kind"] == "admin"));
    let text = serde_json::to_string(&trail).unwrap();
    assert!(
        !text.contains(key_pem.lines().nth(1).unwrap()),
        "the key is never recorded"
    );
    let issue = &events[1]["changes"];
    assert!(
        issue
            .as_array()
            .unwrap()
            .contains(&json!({"attribute": "private_key", "old": null, "new": "changed"})),
        "{issue}"
    );
    let (_, ca) = s
        .api(
            "GET",
            &format!("/api/v1/tenants/{t}/audit?action=certificate_authority."),
            None,
        )
        .await;
    assert_eq!(
        ca["events"].as_array().unwrap().len(),
        1,
        "the CA made on first issuance"
    );
}

// A process that stopped between a directory write's commit and the revocation it owed
// left the user's certificates active: a replay of a Graph page no longer sees a user
// deleted for good, so nothing else would ever revoke them. Housekeeping's daily
// backstop sweep now does, once a day.
#[tokio::test]
async fn housekeeping_revokes_the_certificates_a_write_left_active_on_a_user_no_longer_active() {
    let s = Scim::start().await;
    let t = s.tenant;
    let ada = s.scim_user("ada@contoso.com").await;
    let bob = s.scim_user("bob@contoso.com").await;
    let serials = [s.issue_to(&ada).await, s.issue_to(&bob).await];
    // another instance of the deployment disables ada without revoking: the write's
    // commit with no revocation after it
    let twin = s.twin(vec![("CERT_REVOKE_ON_DISABLE", "false".into())]);
    let disable = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Replace", "path": "active", "value": false}],
    });
    let r = s
        .http
        .patch(format!("{}/api/scim/{t}/v2/Users/{ada}", twin.base_url()))
        .bearer_auth(&s.token)
        .json(&disable)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let status_of = |detail: &Value| -> Vec<(String, String)> {
        detail["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_string(),
                    c["revoked_by"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let (_, detail) = s
        .api("GET", &format!("/api/v1/entra-id/users/{ada}"), None)
        .await;
    assert_eq!(status_of(&detail), vec![("active".into(), String::new())]);
    let logs = s.housekeeping().await;
    assert!(
        logs.iter()
            .any(|l| l.contains("owed revocations, 1 revoked")),
        "{logs:?}"
    );
    let (_, detail) = s
        .api("GET", &format!("/api/v1/entra-id/users/{ada}"), None)
        .await;
    assert_eq!(
        status_of(&detail),
        vec![("revoked".into(), "housekeeping".into())]
    );
    // bob is active: his certificate stays; the CRL lists ada's alone
    let (_, detail) = s
        .api("GET", &format!("/api/v1/entra-id/users/{bob}"), None)
        .await;
    assert_eq!(status_of(&detail), vec![("active".into(), String::new())]);
    let (_, _, crl) = s.published(t, "crl").await;
    assert_eq!(crl_serials(&crl), vec![serials[0].clone()]);
    // audited as Housekeeping's, told what revoked it
    let (_, trail) = s
        .api(
            "GET",
            &format!("/api/v1/tenants/{t}/audit?action=certificate.revoke"),
            None,
        )
        .await;
    let events = trail["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{trail}");
    assert_eq!(
        (&events[0]["actor"]["kind"], &events[0]["actor"]["id"]),
        (&json!("system"), &json!("Housekeeping")),
        "{trail}"
    );
    assert_eq!(
        events[0]["correlation"], "revoked by housekeeping",
        "{trail}"
    );
    // once a day: the next run does not sweep again
    let logs = s.housekeeping().await;
    assert!(
        !logs.iter().any(|l| l.contains("owed revocations")),
        "{logs:?}"
    );
}

// An offboarding that stopped after it set the tenant's status (its first step) left the
// tenant's certificates active, and an offboarded tenant is not offboarded again. As
// offboarding itself, this revocation does not depend on CERT_REVOKE_ON_DISABLE.
#[tokio::test]
async fn housekeeping_revokes_the_certificates_a_stopped_offboarding_left_active() {
    let s = Scim::start_with(vec![("CERT_REVOKE_ON_DISABLE", "false".into())]).await;
    let t = s.tenant;
    let ada = s.scim_user("ada@contoso.com").await;
    let serial = s.issue_to(&ada).await;
    // the offboarding's status, written alone
    s.storage
        .client()
        .table(format!("{}Tenants", s.prefix))
        .transact(&[tables::Operation::Merge(
            tables::Entity::new("tenant", t.to_string()).with("Status", "offboarded"),
            tables::IfMatch::Any,
        )])
        .await
        .unwrap();
    let (_, _, crl) = s.published(t, "crl").await;
    assert!(crl_serials(&crl).is_empty());
    let logs = s.housekeeping().await;
    assert!(
        logs.iter()
            .any(|l| l.contains("owed revocations, 1 revoked")),
        "{logs:?}"
    );
    let (_, _, crl) = s.published(t, "crl").await;
    assert_eq!(crl_serials(&crl), vec![serial]);
}
