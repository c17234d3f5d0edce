//! Delta rounds, bulk user reads and error classification against the Graph stand-in.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use entra::credentials::{AppCredential, AppRegistration, TokenProvider};
use entra::delta::{DeltaItem, DeltaKind, DeltaNext, DeltaPage, DeltaUser, Removed};
use entra::graph::{GraphClient, GraphError, GraphErrorClass, GraphPolicy};
use entra::{Cloud, Endpoints};
use serde_json::json;
use system_tests::fake_graph::{Collection, FakeMicrosoft, group_id, user_id};
use uuid::Uuid;

const TENANT: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";

struct Setup {
    fake: FakeMicrosoft,
    tokens: Arc<TokenProvider>,
    graph: GraphClient,
    app: AppRegistration,
}

async fn setup() -> Setup {
    setup_with(GraphPolicy {
        initial_backoff: Duration::from_millis(50),
        total_budget: Duration::from_secs(20),
        ..GraphPolicy::default()
    })
    .await
}

async fn setup_with(policy: GraphPolicy) -> Setup {
    let fake = FakeMicrosoft::start().await;
    let client_id = Uuid::new_v4();
    fake.register_secret_app(&client_id.to_string(), "s3cret-value");
    fake.add_tenant(TENANT, "Contoso", "contoso.onmicrosoft.com");
    fake.consent(TENANT, &client_id.to_string(), 0);
    let endpoints = Endpoints::new(Some(&fake.login_url), Some(&fake.graph_url)).unwrap();
    let tokens = Arc::new(TokenProvider::new(
        endpoints.clone(),
        Duration::from_secs(5),
    ));
    let graph = GraphClient::new(endpoints, tokens.clone(), policy);
    let app = AppRegistration {
        cloud: Cloud::Global,
        client_id,
        credential: AppCredential::Secret("s3cret-value".into()),
    };
    Setup {
        fake,
        tokens,
        graph,
        app,
    }
}

/// Follows a round to its deltaLink: the pages and the deltaLink.
async fn round(s: &Setup, kind: DeltaKind, from: Option<&str>) -> (Vec<DeltaPage>, String) {
    let mut pages = Vec::new();
    let mut link = from.map(str::to_string);
    for _ in 0..10_000 {
        let page = s
            .graph
            .delta_page(&s.app, TENANT, kind, link.as_deref())
            .await
            .unwrap();
        let next = page.next.clone();
        pages.push(page);
        match next {
            DeltaNext::NextLink(l) => link = Some(l),
            DeltaNext::DeltaLink(l) => return (pages, l),
        }
    }
    panic!("the round never ended");
}

fn users(pages: &[DeltaPage]) -> Vec<DeltaUser> {
    pages
        .iter()
        .flat_map(|p| &p.items)
        .map(|i| match i {
            DeltaItem::User(u) => u.clone(),
            DeltaItem::Group(_) => panic!("a group in a users round"),
        })
        .collect()
}

/// Group id -> (members added, members removed), over all pages, and how many times each
/// group appeared.
type Memberships = BTreeMap<String, (BTreeSet<String>, BTreeSet<String>, usize)>;

fn memberships(pages: &[DeltaPage]) -> Memberships {
    let mut out = Memberships::new();
    for item in pages.iter().flat_map(|p| &p.items) {
        let DeltaItem::Group(g) = item else {
            panic!("a user in a groups round")
        };
        let entry = out.entry(g.id.clone()).or_default();
        entry.2 += 1;
        for m in &g.members_delta {
            if m.removed {
                entry.1.insert(m.id.clone());
            } else {
                entry.0.insert(m.id.clone());
            }
        }
    }
    out
}

#[tokio::test]
async fn a_full_round_pages_every_user_once_to_a_delta_link() {
    let s = setup().await;
    s.fake.populate(TENANT, 450, 0, 0);
    let (pages, delta_link) = round(&s, DeltaKind::Users, None).await;
    assert_eq!(pages.len(), 3, "Graph's page size of 200");
    assert!(pages[..2].iter().all(|p| !p.next.is_delta_link()));
    assert!(delta_link.contains("$deltatoken="));
    let all = users(&pages);
    let ids: HashSet<_> = all.iter().map(|u| u.id.clone()).collect();
    assert_eq!((all.len(), ids.len()), (450, 450));
    let u = all.iter().find(|u| u.id == user_id(7)).unwrap();
    assert_eq!(
        u.user_principal_name,
        Some(Some("user7@contoso.onmicrosoft.com".into()))
    );
    assert_eq!(u.account_enabled, Some(Some(true)));
    assert_eq!(u.employee_id, Some(Some("E0000007".into())));
    assert_eq!(u.removed, None);

    let requests = s.fake.requests();
    let first = requests
        .iter()
        .find(|r| r.path == "/v1.0/users/delta")
        .unwrap();
    assert_eq!(
        first.query,
        "$select=id,userPrincipalName,displayName,mail,accountEnabled,givenName,surname,jobTitle,department,employeeId"
    );
    assert_eq!(s.fake.request_count("/v1.0/users/delta"), 3);
}

#[tokio::test]
async fn a_round_from_the_delta_link_returns_only_what_changed() {
    let s = setup().await;
    s.fake.populate(TENANT, 300, 0, 0);
    let (_, delta_link) = round(&s, DeltaKind::Users, None).await;

    s.fake.update_user(
        TENANT,
        &user_id(5),
        json!({"jobTitle": null, "department": "Finance"}),
    );
    let new = s.fake.add_user(
        TENANT,
        json!({"userPrincipalName": "new@contoso.onmicrosoft.com", "displayName": "New"}),
    );
    s.fake.soft_delete_user(TENANT, &user_id(7));
    s.fake.soft_delete_user(TENANT, &user_id(8));
    s.fake.hard_delete_user(TENANT, &user_id(8));

    let (pages, next_link) = round(&s, DeltaKind::Users, Some(&delta_link)).await;
    let changed: BTreeMap<String, DeltaUser> = users(&pages)
        .into_iter()
        .map(|u| (u.id.clone(), u))
        .collect();
    assert_eq!(changed.len(), 4, "{changed:?}");
    let five = &changed[&user_id(5)];
    assert_eq!(five.job_title, Some(None), "cleared is null, not absent");
    assert_eq!(five.department, Some(Some("Finance".into())));
    let added = &changed[&new];
    assert_eq!(added.display_name, Some(Some("New".into())));
    assert_eq!(added.job_title, None, "never set is absent");
    assert_eq!(changed[&user_id(7)].removed, Some(Removed::Changed));
    assert_eq!(changed[&user_id(8)].removed, Some(Removed::Deleted));

    // restoring brings the user back whole; nothing else changed
    s.fake.restore_user(TENANT, &user_id(7));
    let (pages, last_link) = round(&s, DeltaKind::Users, Some(&next_link)).await;
    let back = users(&pages);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].id, user_id(7));
    assert_eq!(back[0].removed, None);
    assert_eq!(back[0].account_enabled, Some(Some(true)));

    let (pages, _) = round(&s, DeltaKind::Users, Some(&last_link)).await;
    assert_eq!(pages.len(), 1);
    assert!(pages[0].items.is_empty(), "no changes: one empty page");
}

#[tokio::test]
async fn a_group_with_more_members_than_a_page_spans_pages() {
    let s = setup().await;
    s.fake.set_page_sizes(200, 50, 10);
    s.fake.populate(TENANT, 40, 0, 0);
    let big = s
        .fake
        .add_group(TENANT, json!({"displayName": "All staff"}));
    for i in 0..25 {
        s.fake.add_member(TENANT, &big, &user_id(i));
    }
    let small = s.fake.add_group(TENANT, json!({"displayName": "Admins"}));
    s.fake.add_member(TENANT, &small, &user_id(30));
    s.fake.add_member(TENANT, &small, &big); // nested: a direct member of type group

    let (pages, delta_link) = round(&s, DeltaKind::Groups, None).await;
    let seen = memberships(&pages);
    let (added, removed, appearances) = &seen[&big];
    assert_eq!(added.len(), 25);
    assert!(removed.is_empty());
    assert!(*appearances >= 3, "25 members in slices of 10");
    assert!(pages.len() >= 3);
    let (small_members, _, _) = &seen[&small];
    assert_eq!(small_members, &BTreeSet::from([user_id(30), big.clone()]));
    let nested = pages
        .iter()
        .flat_map(|p| &p.items)
        .find_map(|i| match i {
            DeltaItem::Group(g) if g.id == small => g.members_delta.iter().find(|m| m.id == big),
            _ => None,
        })
        .unwrap();
    assert!(!nested.is_user());
    let name = pages.iter().flat_map(|p| &p.items).find_map(|i| match i {
        DeltaItem::Group(g) if g.id == big => g.display_name.clone(),
        _ => None,
    });
    assert_eq!(name, Some(Some("All staff".into())));

    // later rounds carry only membership changes, removals marked
    s.fake.remove_member(TENANT, &big, &user_id(3));
    s.fake.add_member(TENANT, &big, &user_id(35));
    s.fake.hard_delete_user(TENANT, &user_id(30)); // leaves its groups
    s.fake.delete_group(TENANT, &small, true);
    let (pages, _) = round(&s, DeltaKind::Groups, Some(&delta_link)).await;
    let seen = memberships(&pages);
    assert_eq!(seen[&big].0, BTreeSet::from([user_id(35)]));
    assert_eq!(seen[&big].1, BTreeSet::from([user_id(3)]));
    let gone = pages
        .iter()
        .flat_map(|p| &p.items)
        .find_map(|i| match i {
            DeltaItem::Group(g) if g.id == small => Some(g.removed),
            _ => None,
        })
        .unwrap();
    assert_eq!(gone, Some(Removed::Deleted));
}

#[tokio::test]
async fn a_membership_change_while_a_group_is_sliced_is_neither_lost_nor_needed_twice() {
    let s = setup().await;
    s.fake.set_page_sizes(200, 50, 5);
    s.fake.populate(TENANT, 30, 0, 0);
    let g = s.fake.add_group(TENANT, json!({"displayName": "Sliced"}));
    for i in 0..20 {
        s.fake.add_member(TENANT, &g, &user_id(i));
    }
    // read the first slice, then change the group mid-round
    let first = s
        .graph
        .delta_page(&s.app, TENANT, DeltaKind::Groups, None)
        .await
        .unwrap();
    s.fake.remove_member(TENANT, &g, &user_id(19));
    s.fake.add_member(TENANT, &g, &user_id(25));
    let (rest, delta_link) = round(&s, DeltaKind::Groups, Some(first.next.link())).await;
    let mut pages = vec![first];
    pages.extend(rest);
    let (pages_after, _) = round(&s, DeltaKind::Groups, Some(&delta_link)).await;
    // applying both rounds in order gives Graph's membership
    let mut members = BTreeSet::new();
    for p in pages.iter().chain(&pages_after) {
        for item in &p.items {
            let DeltaItem::Group(group) = item else {
                panic!()
            };
            for m in &group.members_delta {
                if m.removed {
                    members.remove(&m.id);
                } else {
                    members.insert(m.id.clone());
                }
            }
        }
    }
    let expected: BTreeSet<String> = (0..19).chain([25]).map(user_id).collect();
    assert_eq!(members, expected);
}

#[tokio::test]
async fn empty_pages_and_replayed_pages_still_reach_the_delta_link() {
    let s = setup().await;
    s.fake.set_page_sizes(10, 50, 500);
    s.fake.populate(TENANT, 25, 0, 0);
    s.fake.inject_empty_pages(TENANT, Collection::Users, 2);
    s.fake.replay_pages(TENANT, Collection::Users, 1);
    let (pages, _) = round(&s, DeltaKind::Users, None).await;
    assert!(pages.iter().filter(|p| p.items.is_empty()).count() >= 2);
    let all = users(&pages);
    let distinct: HashSet<_> = all.iter().map(|u| u.id.clone()).collect();
    assert_eq!(distinct.len(), 25);
    assert_eq!(all.len(), 35, "one page of 10 came twice");
}

#[tokio::test]
async fn an_expired_delta_token_is_classified_as_resync() {
    let s = setup().await;
    s.fake.set_page_sizes(10, 50, 500);
    s.fake.populate(TENANT, 25, 0, 0);
    let (_, delta_link) = round(&s, DeltaKind::Users, None).await;
    let first = s
        .graph
        .delta_page(&s.app, TENANT, DeltaKind::Users, None)
        .await
        .unwrap();
    s.fake.expire_delta_tokens(TENANT);
    for link in [delta_link.as_str(), first.next.link()] {
        let err = s
            .graph
            .delta_page(&s.app, TENANT, DeltaKind::Users, Some(link))
            .await
            .unwrap_err();
        assert!(matches!(err, GraphError::ResyncRequired(_)), "{err:?}");
        assert_eq!(err.class(), GraphErrorClass::ResyncRequired);
    }
    let statuses: Vec<u16> = s.fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(&statuses[statuses.len() - 2..], &[400, 400], "not retried");
    // a full round works again
    let (pages, _) = round(&s, DeltaKind::Users, None).await;
    assert_eq!(users(&pages).len(), 25);
}

#[tokio::test]
async fn a_410_gone_with_location_is_classified_as_resync() {
    let s = setup().await;
    s.fake.populate(TENANT, 5, 0, 0);
    let (_, delta_link) = round(&s, DeltaKind::Groups, None).await;
    s.fake.reset_delta_sync(TENANT);

    // the wire format: 410 and a Location naming the initial query with an empty token
    let token = s.tokens.graph_token(&s.app, TENANT).await.unwrap();
    let raw = reqwest::Client::new()
        .get(&delta_link)
        .bearer_auth(&*token.token)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 410);
    let location = raw.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&format!("{}/v1.0/groups/delta?", s.fake.graph_url))
            && location.ends_with("$deltatoken="),
        "{location}"
    );

    let err = s
        .graph
        .delta_page(&s.app, TENANT, DeltaKind::Groups, Some(&delta_link))
        .await
        .unwrap_err();
    assert_eq!(err.class(), GraphErrorClass::ResyncRequired, "{err:?}");
}

#[tokio::test]
async fn a_throttled_delta_request_is_retried_no_earlier_than_retry_after() {
    let s = setup().await;
    s.fake.populate(TENANT, 450, 0, 0);
    s.fake.throttle_delta_requests(2, 1, 1);
    let (pages, _) = round(&s, DeltaKind::Users, None).await;
    assert_eq!(users(&pages).len(), 450);
    let deltas: Vec<_> = s
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1.0/users/delta")
        .collect();
    let throttled = deltas.iter().position(|r| r.status == 429).unwrap();
    assert_eq!(throttled, 1);
    let retry = &deltas[throttled + 1];
    assert_eq!(retry.query, deltas[throttled].query, "the same page again");
    let waited = retry.at.duration_since(deltas[throttled].at);
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
}

#[tokio::test]
async fn throttling_beyond_the_policy_is_returned_with_graphs_wait() {
    let s = setup().await;
    s.fake.populate(TENANT, 5, 0, 0);
    // a wait longer than the policy's cap is not cut short: returned at once
    s.fake.throttle_delta_requests(1, 1, 120);
    let err = s
        .graph
        .delta_page(&s.app, TENANT, DeltaKind::Users, None)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        GraphError::Throttled {
            retry_after: Some(Duration::from_secs(120))
        }
    );
    assert_eq!(
        err.class(),
        GraphErrorClass::Throttled {
            retry_after: Some(Duration::from_secs(120))
        }
    );
    assert_eq!(
        s.fake.request_count("/v1.0/users/delta"),
        1,
        "no early retry"
    );

    // throttled on every attempt: the policy's attempts, then the error
    s.fake.throttle_delta_requests(1, 5, 0);
    let err = s
        .graph
        .delta_page(&s.app, TENANT, DeltaKind::Users, None)
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::ZERO));
    assert_eq!(s.fake.request_count("/v1.0/users/delta"), 6);

    // 503 with Retry-After is throttling too; without it, a transient outage
    s.fake.fail_next(503, 5, Some(0));
    let err = s
        .graph
        .delta_page(&s.app, TENANT, DeltaKind::Users, None)
        .await
        .unwrap_err();
    assert!(matches!(err.class(), GraphErrorClass::Throttled { .. }));
    s.fake.fail_next(503, 5, None);
    let err = s
        .graph
        .delta_page(&s.app, TENANT, DeltaKind::Users, None)
        .await
        .unwrap_err();
    assert_eq!(err.class(), GraphErrorClass::Transient);
}

#[tokio::test]
async fn revoked_consent_and_removed_permissions_are_classified_as_access_revoked() {
    let s = setup().await;
    s.fake.populate(TENANT, 5, 0, 0);
    round(&s, DeltaKind::Users, None).await;
    let client = s.app.client_id.to_string();

    // consent revoked: the cached token answers 401, a new token is refused
    s.fake.revoke_consent(TENANT, &client);
    let err = s
        .graph
        .delta_page(&s.app, TENANT, DeltaKind::Users, None)
        .await
        .unwrap_err();
    assert!(err.is_access_revoked(), "{err:?}");
    let GraphErrorClass::AccessRevoked { reason } = err.class() else {
        panic!()
    };
    assert!(reason.contains("AADSTS700016"), "{reason}");

    // permission removed: 403 from Graph
    s.fake.consent(TENANT, &client, 0);
    s.fake.remove_permission(TENANT, &client);
    let err = s
        .graph
        .delta_page(&s.app, TENANT, DeltaKind::Users, None)
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::Forbidden(_)), "{err:?}");
    assert!(err.is_access_revoked());

    // consented again: it works
    s.fake.consent(TENANT, &client, 0);
    round(&s, DeltaKind::Users, None).await;
}

#[tokio::test]
async fn a_link_to_another_host_is_never_followed() {
    let s = setup().await;
    let before = s.fake.graph_requests();
    for link in [
        "https://evil.example/v1.0/users/delta?$skiptoken=abc".to_string(),
        format!("{}.evil.example/v1.0/users/delta", s.fake.graph_url),
        format!("{}/v1.0/groups/delta?$deltatoken=abc", s.fake.graph_url),
    ] {
        let err = s
            .graph
            .delta_page(&s.app, TENANT, DeltaKind::Users, Some(&link))
            .await
            .unwrap_err();
        assert_eq!(err.class(), GraphErrorClass::ResyncRequired, "{link}");
    }
    assert_eq!(s.fake.graph_requests(), before);
}

#[tokio::test]
async fn fifty_upns_take_three_batch_requests_with_a_throttled_item_retried() {
    let s = setup().await;
    s.fake.populate(TENANT, 48, 0, 0);
    let mut upns: Vec<String> = (0..48)
        .map(|i| format!("user{i}@contoso.onmicrosoft.com"))
        .collect();
    upns.push("nobody@contoso.onmicrosoft.com".into());
    upns.push("ghost@contoso.onmicrosoft.com".into());
    let throttled_url = format!(
        "/users/user7@contoso.onmicrosoft.com?$select={}",
        entra::delta::USER_SELECT
    );
    s.fake.throttle_batch_item(&throttled_url, 1, 1);

    let results = s.graph.users_by_upn(&s.app, TENANT, &upns).await;
    assert_eq!(results.len(), 50);
    for (i, (upn, result)) in results.iter().enumerate() {
        assert_eq!(upn, &upns[i], "input order");
        if i < 48 {
            let user = result.as_ref().unwrap();
            assert_eq!(user.id, user_id(i));
            assert_eq!(user.user_principal_name, Some(Some(upn.clone())));
        } else {
            assert!(matches!(result, Err(GraphError::NotFound(_))), "{result:?}");
        }
    }
    assert_eq!(s.fake.request_count("/v1.0/$batch"), 3);
    let batches: Vec<_> = s
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1.0/$batch")
        .collect();
    let waited = batches[2].at.duration_since(batches[0].at);
    assert!(
        waited >= Duration::from_secs(1),
        "the throttled item went again after its Retry-After, not {waited:?}"
    );
    let item_calls = s
        .fake
        .graph_calls()
        .iter()
        .filter(|c| c.starts_with("batch ") && c.ends_with(throttled_url.as_str()))
        .count();
    assert_eq!(item_calls, 2);
}

#[tokio::test]
async fn an_item_throttled_past_the_attempts_answers_throttled_and_the_rest_are_kept() {
    let s = setup_with(GraphPolicy {
        max_attempts: 2,
        ..GraphPolicy::default()
    })
    .await;
    s.fake.populate(TENANT, 3, 0, 0);
    let upns: Vec<String> = (0..3)
        .map(|i| format!("user{i}@contoso.onmicrosoft.com"))
        .collect();
    s.fake.throttle_batch_item(
        &format!("/users/{}?$select={}", upns[1], entra::delta::USER_SELECT),
        5,
        0,
    );
    let results = s.graph.users_by_upn(&s.app, TENANT, &upns).await;
    assert!(results[0].1.is_ok() && results[2].1.is_ok());
    assert_eq!(
        results[1].1,
        Err(GraphError::Throttled {
            retry_after: Some(Duration::ZERO)
        })
    );
    assert_eq!(s.fake.request_count("/v1.0/$batch"), 2);
}

#[tokio::test]
async fn guest_dollar_and_apostrophe_upns_are_read_singly_and_in_bulk() {
    let s = setup().await;
    let upns = [
        "ada_gmail.com#EXT#@contoso.onmicrosoft.com",
        "$admin@contoso.com",
        "o'neil@contoso.com",
        "$o'brien_x.com#EXT#@contoso.onmicrosoft.com",
    ];
    let mut ids = Vec::new();
    for upn in upns {
        ids.push(s.fake.add_user(
            TENANT,
            json!({"userPrincipalName": upn, "displayName": upn, "accountEnabled": true}),
        ));
    }
    for (upn, id) in upns.iter().zip(&ids) {
        let user = s.graph.user_record(&s.app, TENANT, upn).await.unwrap();
        assert_eq!(&user.id, id);
        assert_eq!(user.user_principal_name.flatten().as_deref(), Some(*upn));
    }
    let list: Vec<String> = upns.iter().map(|u| u.to_string()).collect();
    let results = s.graph.users_by_upn(&s.app, TENANT, &list).await;
    for ((upn, result), id) in results.iter().zip(&ids) {
        assert_eq!(&result.as_ref().unwrap().id, id, "{upn}");
    }
    // what went over the wire
    let calls = s.fake.graph_calls();
    let items: Vec<&String> = calls.iter().filter(|c| c.starts_with("batch ")).collect();
    assert!(items[0].starts_with("batch /users/ada_gmail.com%23EXT%23@contoso.onmicrosoft.com?"));
    assert!(items[1].starts_with("batch /users('$admin@contoso.com')?"));
    assert!(items[2].starts_with("batch /users/o%27neil@contoso.com?"));
    assert!(
        items[3].starts_with("batch /users('$o''brien_x.com%23EXT%23@contoso.onmicrosoft.com')?")
    );

    let missing = s
        .graph
        .user_record(&s.app, TENANT, "$nobody@contoso.com")
        .await
        .unwrap_err();
    assert_eq!(missing.class(), GraphErrorClass::NotFound);
}

#[tokio::test]
async fn a_upn_listed_twice_is_read_once() {
    let s = setup().await;
    s.fake.populate(TENANT, 2, 0, 0);
    let upns = vec![
        "user0@contoso.onmicrosoft.com".to_string(),
        "USER0@Contoso.onmicrosoft.com".to_string(),
        "user1@contoso.onmicrosoft.com".to_string(),
    ];
    let results = s.graph.users_by_upn(&s.app, TENANT, &upns).await;
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].1, results[1].1);
    assert_eq!(results[1].0, "USER0@Contoso.onmicrosoft.com");
    let items = s
        .fake
        .graph_calls()
        .iter()
        .filter(|c| c.starts_with("batch "))
        .count();
    assert_eq!(items, 2);
}

#[tokio::test]
async fn a_directory_of_100000_users_and_2000_groups_pages_through() {
    let s = setup().await;
    s.fake.populate(TENANT, 100_000, 2_000, 50);
    let (pages, delta_link) = round(&s, DeltaKind::Users, None).await;
    assert_eq!(pages.len(), 500);
    assert_eq!(pages.iter().map(|p| p.items.len()).sum::<usize>(), 100_000);
    let (pages, _) = round(&s, DeltaKind::Groups, None).await;
    let seen = memberships(&pages);
    assert_eq!(seen.len(), 2_000);
    assert!(seen.values().all(|(added, _, _)| added.len() == 50));
    assert_eq!(seen[&group_id(3)].0.len(), 50);

    // 1,000 changes afterwards come in 5 pages, not a walk of the tenant
    for i in 0..1_000 {
        s.fake
            .update_user(TENANT, &user_id(i * 97), json!({"jobTitle": "Changed"}));
    }
    let (pages, _) = round(&s, DeltaKind::Users, Some(&delta_link)).await;
    let changed = users(&pages);
    assert_eq!(changed.len(), 1_000);
    assert!(
        changed
            .iter()
            .all(|u| u.job_title == Some(Some("Changed".into())))
    );
    assert_eq!(pages.len(), 5);
}
