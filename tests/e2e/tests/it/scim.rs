//! SCIM 2.0 as an upstream identity system speaks it: scim2-client (the python-scim2 project's
//! client library, installed from PyPI by `tests/run`) discovers the service, provisions Jane as
//! any generic client does (no password, no askPassword), reads her back by id, by `userName`
//! filter and by `POST /.search`, changes her with PATCH and PUT, and meets the uniqueness
//! error; Jane gets her invitation mail. Hand-made requests cover what the library refuses to
//! send (WSO2's `"askPassword": "true"`, a password, junk), the filters, attribute selection,
//! sorting and the errors. Entra ID's and Okta's own request shapes are in `scim_idps.rs`.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use onboarding_e2e::{unique, Options, Stack};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

fn scim_python() -> String {
    std::env::var("TEST_SCIM_PYTHON")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!("TEST_SCIM_PYTHON is not set: run the SCIM tests with `tests/run`, which installs scim2-client")
        })
}

#[tokio::test]
async fn a_generic_scim_client_provisions_searches_and_changes_jane_and_she_is_mailed() {
    let stack = Stack::start("scim_client", Options::default()).await;
    let email = format!("{}@pickup.example", unique("jane."));
    let user_name = unique("Jane.");
    let leaver_email = format!("{}@pickup.example", unique("leaver."));
    let leaver_name = unique("Leaver.");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scim/provision.py");
    let out = Command::new(scim_python())
        .arg(&script)
        .args(["--base-url", &stack.base_url])
        .args(["--token", &stack.admin_token])
        .args(["--user-name", &user_name])
        .args(["--email", &email])
        .args(["--leaver-name", &leaver_name])
        .args(["--leaver-email", &leaver_email])
        .output()
        .expect("run the SCIM client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SCIM client failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let saw: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("the SCIM client printed no JSON line:\n{stdout}\n{stderr}"));

    // Discovery, as the library understood it.
    assert_eq!(saw["resource_types"], json!(["User"]), "{saw}");
    assert_eq!(saw["filter_supported"], true);

    // The created user: an id, not active until Jane sets her password, her name and address.
    let created = &saw["created"];
    let id = created["id"].as_str().expect("an id").to_owned();
    assert_eq!(created["userName"], user_name.as_str());
    assert_eq!(created["active"], false, "{created}");
    assert_eq!(created["emails"][0]["value"], email.as_str());
    assert_eq!(created["name"]["givenName"], "Jane");
    assert_eq!(created["meta"]["resourceType"], "User");
    assert_eq!(
        created["meta"]["location"],
        stack.url(&format!("/scim2/Users/{id}"))
    );
    assert!(created["meta"]["version"].is_string(), "{created}");
    // Read back by id, and by userName in another case (userName is caseExact: false).
    assert_eq!(saw["fetched"]["id"], id.as_str());
    assert_eq!(saw["fetched"]["active"], false);
    assert_eq!(saw["filter_total"], 1, "{saw}");
    assert_eq!(saw["filter_ids"], json!([id]));
    assert_eq!(saw["search_ids"], json!([id]), "{saw}");
    // PATCH and PUT, as the library sends them (PUT with the ETag it read as If-Match).
    assert_eq!(saw["modified"]["name"]["familyName"], "Doe-Smith", "{saw}");
    assert_eq!(saw["replaced"]["displayName"], "Jane D.", "{saw}");
    assert_eq!(saw["replaced"]["name"]["familyName"], "Doe-Smith", "{saw}");
    // The same userName again: 409 uniqueness. An unknown id: 404.
    assert_eq!(saw["duplicate"]["status"], 409, "{saw}");
    assert_eq!(saw["duplicate"]["scim_type"], "uniqueness");
    assert_eq!(saw["unknown"]["status"], 404, "{saw}");

    // The one invitation path: the API shows the same account, and Jane got her link.
    let view = stack.user(&id).await;
    assert_eq!(view["state"], "CodeIssued", "{view}");
    assert_eq!(view["claims"]["name"], "Jane Doe-Smith");
    assert_eq!(view["claims"]["display_name"], "Jane D.");
    let mail = stack.wait_for_mail(&email).await;
    assert!(mail.link().starts_with(&stack.url("/confirm?code=")));
    let listed = stack.list("state=CodeIssued").await;
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "one invitation, not two: {listed}"
    );
    // What PATCH and PUT changed is sealed in the log like her invitation (docs/adr/0030): her
    // new family name and her address are nowhere in clear in her events.
    let pool = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let in_clear: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_id = $1 \
         AND (payload::text LIKE '%Doe-Smith%' OR payload::text ILIKE '%' || $2 || '%') \
         ORDER BY sequence",
    )
    .bind(&id)
    .bind(&email)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        in_clear.is_empty(),
        "events holding her name or address in clear: {in_clear:?}"
    );

    // The leaver, deleted by the library: gone for SCIM, the invitation revoked (whose links then
    // stop working, as links.rs shows; the mail may not even have gone out).
    let deleted = &saw["deleted"];
    assert_eq!(deleted["read_back"], 404, "{saw}");
    assert_eq!(deleted["filter_total"], 0, "{saw}");
    assert_eq!(deleted["again"], 404, "{saw}");
    let leaver = deleted["id"].as_str().unwrap();
    let view = stack.user(leaver).await;
    assert_eq!(
        (view["state"].as_str(), view["revoked_by"].as_str()),
        (Some("Revoked"), Some("admin")),
        "{view}"
    );
}

pub(crate) async fn scim(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = stack.http.request(method, stack.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/scim+json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

pub(crate) fn assert_scim_error(status: u16, body: &Value, want: u16, scim_type: Option<&str>) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["schemas"], json!([ERROR]), "{body}");
    assert_eq!(body["status"], want.to_string(), "{body}");
    assert_eq!(body["scimType"].as_str(), scim_type, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn wso2s_request_shape_is_accepted_and_passwords_and_junk_get_scim_errors() {
    let stack = Stack::start("scim_raw", Options::default()).await;
    let token = stack.admin_token.clone();
    let email = format!("{}@pickup.example", unique("sam."));
    let name = unique("sam");
    let post = |body: Value| {
        scim(
            &stack,
            reqwest::Method::POST,
            "/scim2/Users",
            Some(&token),
            Some(body),
        )
    };

    // WSO2 sends askPassword as the string "true", and a domain as a userName prefix.
    let wso2 = json!({
        "schemas": [USER, ENTERPRISE],
        "name": {"familyName": "Smith", "givenName": "Sam"},
        "userName": format!("EMPLOYEES/{name}"),
        "externalId": format!("hr-{name}"),
        "emails": [{"primary": true, "value": email, "type": "work"}],
        ENTERPRISE: {"askPassword": "true"},
    });
    let (status, headers, created) = post(wso2.clone()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(headers["content-type"], "application/scim+json");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        headers["location"].to_str().unwrap(),
        stack.url(&format!("/scim2/Users/{id}"))
    );
    assert!(headers.contains_key("etag"));
    assert_eq!(created["userName"], format!("EMPLOYEES/{name}"));
    assert_eq!(created["externalId"], format!("hr-{name}"));
    assert_eq!(stack.user(&id).await["domain"], "EMPLOYEES");
    // An auditor finds the provisioning request by the upstream's id in the account's history.
    let history = stack.cli(&["audit", "history", &id]);
    let history = String::from_utf8_lossy(&history.stdout);
    assert!(
        history.contains(&format!("correlation=scim:hr-{name}")),
        "{history}"
    );
    // The upstream retries (it lost our answer): the same user, not a second invitation.
    let (status, _, again) = post(wso2).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["id"], id.as_str());
    stack.wait_for_mail(&email).await;
    // The same externalId for someone else is a clear conflict, not a silent second user.
    let (status, _, body) = post(json!({
        "schemas": [USER, ENTERPRISE], "userName": unique("other"), "externalId": format!("hr-{name}"),
        "emails": [{"value": "other@pickup.example"}], ENTERPRISE: {"askPassword": true},
    }))
    .await;
    assert_scim_error(status, &body, 409, Some("uniqueness"));
    assert!(
        body["detail"].as_str().unwrap().contains("externalId"),
        "{body}"
    );

    // A password chosen by an administrator is refused, without echoing it.
    let (status, _, body) = post(json!({
        "schemas": [USER, ENTERPRISE], "userName": unique("p"), "password": "Hunter2-Secret!",
        "emails": [{"value": "p@pickup.example"}], ENTERPRISE: {"askPassword": true},
    }))
    .await;
    assert_scim_error(status, &body, 400, Some("invalidValue"));
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("never accepts a password from a provisioning client"));
    assert!(!body.to_string().contains("Hunter2"), "{body}");
    // Without askPassword (and without a password) it is an invitation too.
    let plain = format!("{}@pickup.example", unique("plain."));
    let (status, _, body) = post(json!({
        "schemas": [USER], "userName": unique("n"), "emails": [{"value": plain}],
    }))
    .await;
    assert_eq!(status, 201, "{body}");
    stack.wait_for_mail(&plain).await;
    let (status, _, body) = post(json!({"schemas": [USER, ENTERPRISE], "userName": unique("e"), ENTERPRISE: {"askPassword": true}})).await;
    assert_scim_error(status, &body, 400, Some("invalidValue"));
    let (status, _, body) = scim(
        &stack,
        reqwest::Method::POST,
        "/scim2/Users",
        Some(&token),
        Some(json!("not an object")),
    )
    .await;
    assert_scim_error(status, &body, 400, Some("invalidSyntax"));

    // Lookups: no match, an unsupported filter, pagination, unknown ids.
    let st = &stack;
    let get = |path: String, t: Option<String>| async move {
        scim(st, reqwest::Method::GET, &path, t.as_deref(), None).await
    };
    let t = Some(token.clone());
    let (status, _, body) = get(
        format!(
            "/scim2/Users?filter={}",
            urlencoding::encode("userName eq \"nobody\"")
        ),
        t.clone(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["totalResults"], 0);
    let (status, _, body) = get(
        format!(
            "/scim2/Users?filter={}",
            urlencoding::encode("title eq \"x\"")
        ),
        t.clone(),
    )
    .await;
    assert_scim_error(status, &body, 400, Some("invalidFilter"));
    scim(&stack, reqwest::Method::POST, "/scim2/Users", Some(&token), Some(json!({
        "schemas": [USER, ENTERPRISE], "userName": unique("second"),
        "emails": [{"value": format!("{}@pickup.example", unique("second."))}], ENTERPRISE: {"askPassword": true},
    })))
    .await;
    let (status, _, body) = get("/scim2/Users?startIndex=2&count=1".into(), t.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["totalResults"], 3, "{body}");
    assert_eq!(body["startIndex"], 2);
    assert_eq!(body["itemsPerPage"], 1);
    assert_eq!(body["Resources"].as_array().unwrap().len(), 1);
    let (status, _, body) = get("/scim2/Users/not-a-uuid".into(), t.clone()).await;
    assert_scim_error(status, &body, 404, None);

    // Tokens: none, read-only (may read, may not create), revoked.
    let (status, _, body) = get(format!("/scim2/Users/{id}"), None).await;
    assert_scim_error(status, &body, 401, None);
    let (status, _, body) = get(
        format!("/scim2/Users/{id}"),
        Some(stack.reader_token.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = scim(
        &stack,
        reqwest::Method::POST,
        "/scim2/Users",
        Some(&stack.reader_token),
        Some(json!({})),
    )
    .await;
    assert_scim_error(status, &body, 403, None);
    let (status, _, body) = get("/scim2/Schemas".into(), Some(stack.revoked_token.clone())).await;
    assert_scim_error(status, &body, 401, None);
    // A PATCH without operations is not a PatchOp; a PATCH by a reader is refused.
    let (status, _, body) = scim(
        &stack,
        reqwest::Method::PATCH,
        &format!("/scim2/Users/{id}"),
        Some(&token),
        Some(
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": []}),
        ),
    )
    .await;
    assert_scim_error(status, &body, 400, Some("invalidSyntax"));
    // Deleting a User who has set a password is refused: the account and its history stay.
    let code = stack.wait_for_mail(&email).await.code();
    let (status, answer) = stack
        .submit_password(&code, "Violet harbour lanterns at nine")
        .await;
    assert_eq!(status, 200, "{answer}");
    let path = format!("/scim2/Users/{id}");
    let delete = |token: &'static str| {
        let token = if token == "reader" {
            &stack.reader_token
        } else {
            &stack.admin_token
        };
        scim(&stack, reqwest::Method::DELETE, &path, Some(token), None)
    };
    let (status, _, body) = delete("reader").await;
    assert_scim_error(status, &body, 403, None);
    let (status, _, body) = delete("admin").await;
    assert_scim_error(status, &body, 409, None);
    assert!(
        body["detail"].as_str().unwrap().contains("active"),
        "{body}"
    );
    assert_eq!(stack.user(&id).await["state"], "Active");
}

#[tokio::test]
async fn a_nul_byte_in_a_scim_user_is_an_invalid_value_that_names_the_attribute() {
    let stack = Stack::start("scim_nul", Options::default()).await;
    let token = stack.admin_token.clone();
    let name = unique("nul");
    let email = format!("{name}@pickup.example");
    let user = |extra: Value| {
        let mut body = json!({
            "schemas": [USER, ENTERPRISE], "userName": name,
            "emails": [{"value": email, "primary": true}], ENTERPRISE: {"askPassword": true},
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        scim(
            &stack,
            reqwest::Method::POST,
            "/scim2/Users",
            Some(&token),
            Some(body),
        )
    };
    let no_control = crate::bad_input::NO_CONTROL;
    for (extra, attribute) in [
        (json!({"userName": "sa\u{0}m"}), "userName: username"),
        (json!({"name": {"givenName": "Sa\u{0}m"}}), "name.givenName"),
        (
            json!({"name": {"familyName": "Sm\u{0}ith"}}),
            "name.familyName",
        ),
        (
            json!({"name": {"formatted": "Sam\u{0}Smith"}}),
            "name.formatted",
        ),
        (json!({"displayName": "Sam\u{0}"}), "displayName"),
        (json!({"externalId": "hr-\u{0}42"}), "externalId"),
    ] {
        let (status, _, body) = user(extra.clone()).await;
        assert_scim_error(status, &body, 400, Some("invalidValue"));
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!("{attribute} {no_control}")),
            "{extra}: {detail}"
        );
    }
    // Nothing was created, and the same user without the NUL is.
    let (status, _, created) =
        user(json!({"externalId": "hr-42", "name": {"givenName": "Sam"}})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"]["givenName"], "Sam", "{created}");
    assert_eq!(stack.list("").await["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn filters_sorting_selection_etags_and_unknown_paths_answer_as_rfc_7644_says() {
    let stack = Stack::start("scim_search", Options::default()).await;
    let token = stack.admin_token.clone();
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let (stack, token) = (&stack, token.clone());
        async move { scim(stack, method, &path, Some(&token), body).await }
    };
    let tag = unique("");
    // Three users, each with an externalId, two at one domain.
    let mut ids = Vec::new();
    for (name, domain, ext) in [
        ("ann", "alpha.example", "hr-1"),
        ("bob", "alpha.example", "hr-2"),
        ("cy", "beta.example", "HR-3"),
    ] {
        let (status, _, created) = call(
            reqwest::Method::POST,
            "/scim2/Users".into(),
            Some(json!({
                "schemas": [USER], "userName": format!("{name}.{tag}"),
                "externalId": format!("{ext}-{tag}"),
                "emails": [{"value": format!("{name}.{tag}@{domain}"), "type": "work"}],
            })),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let search = |filter: String, extra: &'static str| {
        let call = &call;
        async move {
            let (status, _, body) = call(
                reqwest::Method::GET,
                format!(
                    "/scim2/Users?filter={}{extra}",
                    urlencoding::encode(&filter)
                ),
                None,
            )
            .await;
            assert_eq!(status, 200, "{filter}: {body}");
            let found: Vec<String> = body["Resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect();
            (body, found)
        }
    };
    let (ann, bob, cy) = (&ids[0], &ids[1], &ids[2]);
    // eq ignores the case of userName but not of externalId; sw, co, ew, pr, and, or, not.
    let (_, found) = search(format!("userName eq \"ANN.{tag}\""), "").await;
    assert_eq!(found, [ann.as_str()]);
    let (_, found) = search(format!("externalId eq \"hr-3-{tag}\""), "").await;
    assert!(found.is_empty(), "externalId is case-exact: {found:?}");
    let (_, found) = search(
        format!("emails.value ew \"@alpha.example\" and userName co \"{tag}\""),
        "&sortBy=userName&sortOrder=descending",
    )
    .await;
    assert_eq!(found, [bob.clone(), ann.clone()]);
    let (_, found) = search(
        format!("(userName sw \"ann.{tag}\" or emails[value co \"beta\"]) and externalId pr"),
        "&sortBy=userName",
    )
    .await;
    assert_eq!(found, [ann.clone(), cy.clone()]);
    let (_, found) = search(
        format!("userName co \"{tag}\" and not (emails co \"alpha\")"),
        "",
    )
    .await;
    assert_eq!(found, [cy.as_str()]);
    // A page of the sorted result, and only the attributes asked for.
    let (body, found) = search(
        format!("userName co \"{tag}\""),
        "&sortBy=userName&startIndex=2&count=1&attributes=userName,emails.value",
    )
    .await;
    assert_eq!(found, [bob.as_str()]);
    assert_eq!(body["totalResults"], 3);
    assert_eq!(
        body["Resources"][0],
        json!({
            "schemas": [USER, "urn:onboard:params:scim:schemas:extension:onboarding:2.0:User"],
            "id": bob, "userName": format!("bob.{tag}"),
            "emails": [{"value": format!("bob.{tag}@alpha.example")}],
        })
    );
    // POST /Users/.search says the same.
    let (status, _, body) = call(
        reqwest::Method::POST,
        "/scim2/Users/.search".into(),
        Some(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": format!("emails.value ew \"@alpha.example\" and userName co \"{tag}\""),
            "sortBy": "userName", "excludedAttributes": ["emails", "meta"], "count": 10,
        })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["totalResults"], 2);
    assert_eq!(body["Resources"][0]["id"], ann.as_str());
    assert!(body["Resources"][0].get("emails").is_none(), "{body}");
    assert!(body["Resources"][0]["userName"].is_string());
    // Too complex a filter is tooMany; a bad one invalidFilter.
    let many = (0..13)
        .map(|i| format!("userName eq \"u{i}\""))
        .collect::<Vec<_>>()
        .join(" or ");
    let (status, _, body) = call(
        reqwest::Method::GET,
        format!("/scim2/Users?filter={}", urlencoding::encode(&many)),
        None,
    )
    .await;
    assert_scim_error(status, &body, 400, Some("tooMany"));
    let (status, _, body) = call(
        reqwest::Method::GET,
        format!("/scim2/Users?filter={}", urlencoding::encode("userName eq")),
        None,
    )
    .await;
    assert_scim_error(status, &body, 400, Some("invalidFilter"));

    // ETags: the version of GET is the one If-Match must name; DELETE with an old one is 412.
    // (Read once Cy's mail is recorded, which is a new version of her.)
    stack.wait_for_delivery(cy, "sent").await;
    let (status, headers, body) =
        call(reqwest::Method::GET, format!("/scim2/Users/{cy}"), None).await;
    assert_eq!(status, 200, "{body}");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(body["meta"]["version"], etag.as_str());
    let patch = |if_match: &str| {
        let (stack, token, cy, if_match) = (&stack, token.clone(), cy.clone(), if_match.to_owned());
        async move {
            let r = stack
                .http
                .patch(stack.url(&format!("/scim2/Users/{cy}")))
                .bearer_auth(token)
                .header("if-match", if_match)
                .body(
                    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                    "Operations": [{"op": "replace", "path": "displayName", "value": "Cy"}]})
                    .to_string(),
                )
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = patch(&etag).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = patch(&etag).await;
    assert_scim_error(status, &body, 412, None);
    let r = stack
        .http
        .delete(stack.url(&format!("/scim2/Users/{cy}")))
        .bearer_auth(&token)
        .header("if-match", etag.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 412);
    assert_eq!(stack.user(cy).await["state"], "CodeIssued");

    // Unknown resource types and paths are SCIM 404s, whatever the method; a known path with
    // a method it does not take is 405 with Allow.
    for (method, path) in [
        (reqwest::Method::GET, "/scim2/Groups"),
        (reqwest::Method::POST, "/scim2/Groups"),
        (reqwest::Method::GET, "/scim2/Users/x/y"),
        (reqwest::Method::PATCH, "/scim2/"),
        (reqwest::Method::GET, "/scim2/ResourceTypes/Group"),
    ] {
        let (status, headers, body) = call(method.clone(), path.into(), None).await;
        assert_scim_error(status, &body, 404, None);
        assert_eq!(
            headers["content-type"], "application/scim+json",
            "{method} {path}"
        );
    }
    let (status, headers, body) = call(reqwest::Method::DELETE, "/scim2/Users".into(), None).await;
    assert_scim_error(status, &body, 405, None);
    assert_eq!(headers["allow"], "GET, POST");
}
