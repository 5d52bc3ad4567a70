//! SCIM as Entra ID and Okta send it: the request shapes their documentation shows, kept here as
//! data (only the values that must be unique per run differ), and what each IdP then sees: the
//! status, the body, the account's state, and the mails sent or not.
//!
//! - Entra ID: "Tutorial: Develop and plan provisioning for a SCIM endpoint in Microsoft Entra
//!   ID", https://learn.microsoft.com/en-us/entra/identity/app-provisioning/use-scim-to-provision-users-and-groups
//!   (create, query by userName, update of multi-valued and single-valued attributes, disable),
//!   and "Known issues and resolutions with SCIM 2.0 protocol compliance",
//!   https://learn.microsoft.com/en-us/entra/identity/app-provisioning/application-provisioning-config-problem-scim-compatibility
//!   (`"op": "Replace"` capitalised, booleans as the strings `"False"`/`"True"`).
//! - Okta: "Okta and SCIM Version 2.0",
//!   https://developer.okta.com/docs/api/openapi/okta-scim/guides/scim-20 (the connection test
//!   `startIndex=1&count=2`, the userName look-up, create with `password` when "Sync Password"
//!   is on, PUT of the whole User, deactivation by a pathless `replace` of `active`).

use reqwest::Method;
use serde_json::{json, Value};

use onboarding_e2e::{unique, Options, Stack};

use crate::scim::{assert_scim_error, scim};

const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ONBOARDING: &str = "urn:onboard:params:scim:schemas:extension:onboarding:2.0:User";
const PASSWORD: &str = "Violet harbour lanterns at nine";

/// `GET /scim2/Users?filter=…` as an IdP sends it (the filter URL-encoded).
fn filtered(filter: &str) -> String {
    format!("/scim2/Users?filter={}", urlencoding::encode(filter))
}

/// Entra ID's create request, as documented, for one user.
fn entra_create(user_name: &str, external_id: &str, email: &str) -> Value {
    json!({
        "schemas": [
            "urn:ietf:params:scim:schemas:core:2.0:User",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
        ],
        "externalId": external_id,
        "userName": user_name,
        "active": true,
        "emails": [{"primary": true, "type": "work", "value": email}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
        "roles": []
    })
}

#[tokio::test]
async fn entra_id_provisions_updates_and_deprovisions_as_its_documentation_shows() {
    let stack = Stack::start("scim_entra", Options::default()).await;
    let token = stack.admin_token.clone();
    let call = |method: Method, path: String, body: Option<Value>| {
        let (stack, token) = (&stack, token.clone());
        async move { scim(stack, method, &path, Some(&token), body).await }
    };

    // Entra looks the user up before it creates them: nobody yet.
    let user_name = format!("Test_User_{}@testuser.example", unique(""));
    let external_id = uuid::Uuid::new_v4().to_string();
    let email = format!("{}@pickup.example", unique("test_user_"));
    let (status, _, body) = call(
        Method::GET,
        filtered(&format!("userName eq \"{user_name}\"")),
        None,
    )
    .await;
    assert_eq!((status, &body["totalResults"]), (200, &json!(0)), "{body}");

    // The create, without password or askPassword: an invitation, mailed.
    let (status, headers, created) = call(
        Method::POST,
        "/scim2/Users".into(),
        Some(entra_create(&user_name, &external_id, &email)),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["active"], false, "{created}");
    assert_eq!(created["externalId"], external_id.as_str());
    assert_eq!(created[ONBOARDING]["state"], "CodeIssued");
    assert_eq!(
        headers["etag"].to_str().unwrap(),
        created["meta"]["version"].as_str().unwrap()
    );
    let first_mail = stack.wait_for_mail(&email).await;
    // Found again by userName and by externalId, the look-ups Entra makes.
    for filter in [
        format!("userName eq \"{user_name}\""),
        format!("externalId eq \"{external_id}\""),
    ] {
        let (status, _, body) = call(Method::GET, filtered(&filter), None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["totalResults"], 1, "{filter}: {body}");
        assert_eq!(body["Resources"][0]["id"], id.as_str(), "{body}");
    }

    // "Update User [Multi-valued properties]": a new work address and family name, in one
    // request. The invitation is re-issued to the new address; the old link is dead.
    let new_email = format!("{}@pickup.example", unique("updated_"));
    let (status, _, updated) = call(
        Method::PATCH,
        format!("/scim2/Users/{id}"),
        Some(json!({
            "schemas": [PATCH_OP],
            "Operations": [
                {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": new_email},
                {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"}
            ]
        })),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        updated["emails"][0]["value"],
        new_email.as_str(),
        "{updated}"
    );
    assert_eq!(updated["name"]["familyName"], "updatedFamilyName");
    // The formatted name was the parts joined, so it follows them.
    assert_eq!(updated["name"]["formatted"], "givenName updatedFamilyName");
    assert_eq!(updated[ONBOARDING]["state"], "CodeIssued");
    let new_mail = stack.wait_for_mail(&new_email).await;
    assert_ne!(new_mail.code(), first_mail.code());
    assert_eq!(
        stack.mails_to(&email).await.len(),
        1,
        "nothing more to the old address"
    );
    let (status, answer) = stack.submit_password(&first_mail.code(), PASSWORD).await;
    assert_eq!(
        (status, &answer["error"]),
        (410, &json!("code_superseded")),
        "{answer}"
    );
    let view = stack.user(&id).await;
    assert_eq!(view["email"], new_email.as_str(), "{view}");

    // "Update User [Single-valued properties]" renames the user: refused, saying why.
    let (status, _, body) = call(
        Method::PATCH,
        format!("/scim2/Users/{id}"),
        Some(json!({
            "schemas": [PATCH_OP],
            "Operations": [{"op": "Replace", "path": "userName", "value": format!("{}@testuser.example", unique("renamed_"))}]
        })),
    )
    .await;
    assert_scim_error(status, &body, 400, Some("mutability"));
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("userName cannot change"));

    // "Disable User" before Jane set a password: the invitation is revoked and the User gone.
    let (status, _, disabled) = call(
        Method::PATCH,
        format!("/scim2/Users/{id}"),
        Some(json!({
            "Operations": [{"op": "Replace", "path": "active", "value": false}],
            "schemas": [PATCH_OP]
        })),
    )
    .await;
    assert_eq!(status, 200, "{disabled}");
    assert_eq!(disabled["active"], false);
    assert_eq!(disabled[ONBOARDING]["state"], "Revoked", "{disabled}");
    let (status, _, body) = call(Method::GET, format!("/scim2/Users/{id}"), None).await;
    assert_scim_error(status, &body, 404, None);
    assert_eq!(stack.user(&id).await["state"], "Revoked");
    let (status, answer) = stack.submit_password(&new_mail.code(), PASSWORD).await;
    assert_eq!(status, 410, "{answer}");

    // A second user sets her password; Entra then disables her with the string "False", as
    // it did before its compatibility fix: the account is Disabled, still readable, inactive.
    let user_name = format!("Test_User_{}@testuser.example", unique(""));
    let email = format!("{}@pickup.example", unique("test_user_"));
    let (status, _, created) = call(
        Method::POST,
        "/scim2/Users".into(),
        Some(entra_create(
            &user_name,
            &uuid::Uuid::new_v4().to_string(),
            &email,
        )),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let code = stack.wait_for_mail(&email).await.code();
    let (status, answer) = stack.submit_password(&code, PASSWORD).await;
    assert_eq!(status, 200, "{answer}");
    stack.wait_for_mails(&email, 2).await; // the invitation and the welcome mail
    let (status, _, body) = call(
        Method::PATCH,
        format!("/scim2/Users/{id}"),
        Some(json!({
            "schemas": [PATCH_OP],
            "Operations": [{"op": "Replace", "path": "active", "value": "False"}]
        })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["active"], &body[ONBOARDING]["state"]),
        (&json!(false), &json!("Disabled"))
    );
    let (status, _, body) = call(
        Method::GET,
        filtered(&format!("userName eq \"{user_name}\"")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Resources"][0]["active"], false, "{body}");
    assert_eq!(stack.user(&id).await["state"], "Disabled");
    let (status, _, body) = call(
        Method::GET,
        filtered("active eq false and userName pr"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == id.as_str()));
    // Re-assigned: "True" enables her again.
    let (status, _, body) = call(
        Method::PATCH,
        format!("/scim2/Users/{id}"),
        Some(json!({
            "schemas": [PATCH_OP],
            "Operations": [{"op": "Replace", "path": "active", "value": "True"}]
        })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["active"], &body[ONBOARDING]["state"]),
        (&json!(true), &json!("Active"))
    );
    // Downstream services learned both, from their public events; neither mails anyone (the
    // email worker mails only issued codes and activations, and no code followed).
    let records = stack
        .user_records(
            &id,
            &["onboard.user.disabled.v1", "onboard.user.enabled.v1"],
        )
        .await;
    let types: Vec<&str> = records
        .iter()
        .map(|r| r.headers["ce_type"].as_str())
        .collect();
    let disabled_at = types
        .iter()
        .position(|t| *t == "onboard.user.disabled.v1")
        .unwrap();
    assert!(
        !types[disabled_at..].contains(&"onboard.user.code_issued.v1"),
        "{types:?}"
    );
    assert_eq!(stack.mails_to(&email).await.len(), 2);

    // The projections the triggers keep (state, address, externalId) are what the log says,
    // rebuilt from PostgreSQL and from the topic.
    for source in ["postgres", "kafka"] {
        let o = stack.cli(&["audit", "replay", "--from", source]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && text.contains("projections match the log"),
            "replay from {source}: {text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Okta's create request, as documented (with "Sync Password" on, it carries `password`).
fn okta_create(user_name: &str, external_id: &str, with_password: bool) -> Value {
    let mut body = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": user_name,
        "name": {"givenName": "Test", "familyName": "User"},
        "emails": [{"primary": true, "value": user_name, "type": "work"}],
        "displayName": "Test User",
        "locale": "en-US",
        "externalId": external_id,
        "groups": [],
        "password": "1mz050nq",
        "active": true
    });
    if !with_password {
        body.as_object_mut().unwrap().remove("password");
    }
    body
}

#[tokio::test]
async fn okta_provisions_replaces_and_deactivates_as_its_documentation_shows() {
    let stack = Stack::start("scim_okta", Options::default()).await;
    let token = stack.admin_token.clone();
    let call = |method: Method, path: String, body: Option<Value>| {
        let (stack, token) = (&stack, token.clone());
        async move { scim(stack, method, &path, Some(&token), body).await }
    };

    // The connection test Okta makes when the integration is saved.
    let (status, _, body) = call(
        Method::GET,
        "/scim2/Users?startIndex=1&count=2".into(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:ListResponse"
    );
    assert_eq!(body["totalResults"], 0);

    // With "Sync Password" on, Okta sends the password: refused, saying why and what to change,
    // without repeating it. Nothing is created, so nothing is mailed.
    let user_name = format!("{}@pickup.example", unique("test.user."));
    let external_id = unique("00ujl29u0le5T6Aj10h7");
    let (status, _, body) = call(
        Method::POST,
        "/scim2/Users".into(),
        Some(okta_create(&user_name, &external_id, true)),
    )
    .await;
    assert_scim_error(status, &body, 400, Some("invalidValue"));
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("never accepts a password"), "{detail}");
    assert!(detail.contains("Sync Password"), "{detail}");
    assert!(!body.to_string().contains("1mz050nq"), "{body}");
    assert!(stack.list("").await["items"].as_array().unwrap().is_empty());

    // Okta looks the user up, then creates them without a password: an invitation.
    let (status, _, body) = call(
        Method::GET,
        filtered(&format!("userName eq \"{user_name}\"")),
        None,
    )
    .await;
    assert_eq!((status, &body["totalResults"]), (200, &json!(0)), "{body}");
    let (status, _, created) = call(
        Method::POST,
        "/scim2/Users".into(),
        Some(okta_create(&user_name, &external_id, false)),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["displayName"], "Test User");
    let view = stack.wait_for_delivery(&id, "sent").await;
    assert_eq!(view["state"], "CodeIssued");
    // Read before the write: the mail's delivery changed the User (and its ETag) since the
    // create, so the ETag of the create's answer would be refused.
    let (status, headers, _) = call(Method::GET, format!("/scim2/Users/{id}"), None).await;
    assert_eq!(status, 200);
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert_ne!(
        Some(etag.as_str()),
        created["meta"]["version"].as_str(),
        "the recorded delivery is a new version"
    );

    // PUT: the whole User, as Okta sends its updates; the ETag it read as If-Match.
    let mut put = okta_create(&user_name, &external_id, false);
    put["id"] = json!(id);
    put["name"] = json!({"givenName": "Another", "middleName": "", "familyName": "User"});
    put["displayName"] = json!("Another User");
    let put_with = |if_match: Option<String>, body: Value| {
        let (stack, token, id) = (&stack, token.clone(), id.clone());
        async move {
            let mut req = stack
                .http
                .put(stack.url(&format!("/scim2/Users/{id}")))
                .bearer_auth(token)
                .header("content-type", "application/scim+json")
                .body(body.to_string());
            if let Some(tag) = if_match {
                req = req.header("if-match", tag);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let etag = r
                .headers()
                .get("etag")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, etag, r.json::<Value>().await.unwrap())
        }
    };
    let (status, new_etag, replaced) = put_with(Some(etag.clone()), put.clone()).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["name"]["givenName"], "Another");
    assert_eq!(replaced["name"]["formatted"], "Another User");
    assert_eq!(replaced["displayName"], "Another User");
    assert_ne!(new_etag.as_deref(), Some(etag.as_str()));
    let view = stack.user(&id).await;
    assert_eq!(view["claims"]["given_name"], "Another", "{view}");
    // The same PUT with the ETag from before the change: 412, and nothing changes.
    put["displayName"] = json!("Stale Write");
    let (status, _, body) = put_with(Some(etag), put.clone()).await;
    assert_scim_error(status, &body, 412, None);
    assert_eq!(
        stack.user(&id).await["claims"]["display_name"],
        "Another User"
    );
    // A PUT that carries Okta's password is refused like the create.
    let (status, _, body) = put_with(None, okta_create(&user_name, &external_id, true)).await;
    assert_scim_error(status, &body, 400, Some("invalidValue"));

    // Deactivation: a pathless replace of `active`. The invitation is revoked.
    let (status, _, body) = call(
        Method::PATCH,
        format!("/scim2/Users/{id}"),
        Some(json!({
            "schemas": [PATCH_OP],
            "Operations": [{"op": "replace", "value": {"active": false}}]
        })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["active"], &body[ONBOARDING]["state"]),
        (&json!(false), &json!("Revoked"))
    );
    let view = stack.user(&id).await;
    assert_eq!(
        (view["state"].as_str(), view["revoked_by"].as_str()),
        (Some("Revoked"), Some("admin")),
        "{view}"
    );
    // Its username is free: Okta can provision the person again later.
    let (status, _, again) = call(
        Method::POST,
        "/scim2/Users".into(),
        Some(okta_create(&user_name, &unique("00u-again-"), false)),
    )
    .await;
    assert_eq!(status, 201, "{again}");
    assert_ne!(again["id"], id.as_str());
}
