//! The OpenAPI 3.1 document of the whole HTTP API, `schemas/openapi.json`, compiled in and served
//! at `GET /api/v1/openapi.json` without a token: it describes what `docs/api.md` describes, and
//! nothing a caller could not learn from the answers (docs/adr/0020).
//!
//! The document is kept by hand. The tests below keep it true: its operations are exactly the
//! route table's (`endpoints.rs`), each one reaches its handler through the real router, every
//! other method on a documented path is refused with `405`, and the served bytes are the file's.

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::endpoints::{self, at};

/// `schemas/openapi.json`, as built into the binary.
pub(crate) const DOCUMENT: &str = include_str!("../../../schemas/openapi.json");

/// `GET /api/v1/openapi.json`: the document. Not rate-limited: it reads no account.
pub(crate) fn route() -> BoxedFilter<(Response,)> {
    at(&endpoints::OPENAPI)
        .map(|| {
            let mut r = warp::reply::with_header(DOCUMENT, "content-type", "application/json")
                .into_response();
            r.headers_mut().insert(
                "cache-control",
                warp::http::HeaderValue::from_static("public, max-age=3600"),
            );
            r
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use futures::future::join_all;
    use onboarding_config::Settings;
    use serde_json::Value;
    use sha2::{Digest, Sha256};
    use warp::http::StatusCode;

    use super::DOCUMENT;
    use crate::endpoints;
    use crate::{routes, AppState, Readiness, Role};

    const TOKEN: &str = "openapi-test-admin-token";
    /// Where nothing listens: a handler that reaches the database gets `503` within a second.
    const NO_DATABASE: &str = "postgres://postgres@127.0.0.1:9/onboarding";

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("schemas/openapi.json is JSON")
    }

    /// `(path, method)` of every operation of the document.
    fn documented() -> BTreeSet<(String, String)> {
        let doc = document();
        let paths = doc["paths"].as_object().expect("the document has paths");
        let mut operations = BTreeSet::new();
        for (path, item) in paths {
            for method in item.as_object().expect("a path item is an object").keys() {
                if [
                    "get", "head", "post", "put", "patch", "delete", "options", "trace",
                ]
                .contains(&method.as_str())
                {
                    operations.insert((path.clone(), method.clone()));
                }
            }
        }
        operations
    }

    /// `(path, method)` of every endpoint of the route table.
    fn routed() -> BTreeSet<(String, String)> {
        endpoints::all()
            .flat_map(|e| {
                e.verbs
                    .iter()
                    .map(|v| (e.path.to_owned(), v.as_str().to_owned()))
            })
            .collect()
    }

    #[test]
    fn the_document_and_the_route_table_name_the_same_operations() {
        let (documented, routed) = (documented(), routed());
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "routes missing from schemas/openapi.json: {undocumented:?}; operations of the \
             document that no route serves: {unrouted:?}"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_and_every_reference_resolves() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str();
                assert!(
                    id.is_some_and(|id| ids.insert(id.to_owned())),
                    "{method} {path}: operationId missing or not unique"
                );
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path}: no responses"
                );
                // Every `{parameter}` of the path is declared as a path parameter.
                let declared: BTreeSet<String> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| resolve(&doc, p))
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap().to_owned())
                    .collect();
                let in_path: BTreeSet<String> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                    .map(str::to_owned)
                    .collect();
                assert_eq!(declared, in_path, "{method} {path}: path parameters");
            }
        }
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let target = r.strip_prefix('#').and_then(|pointer| doc.pointer(pointer));
            assert!(target.is_some(), "$ref {r} does not resolve");
        }
    }

    fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v["$ref"].as_str() {
            Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap_or(v),
            None => v,
        }
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r.clone());
                }
                map.values().for_each(|v| collect_refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    /// A gateway whose database does not answer: routing, the token check and the checks of a
    /// request that come before the store all run as in production.
    fn state() -> Arc<AppState> {
        let sha256 = hex::encode(Sha256::digest(TOKEN.as_bytes()));
        let settings = Settings::from_toml_str(&format!(
            r#"
            [output_adapter.email]
            from_address = "noreply@pickup.example"
            hostname = "smtp.pickup.example"
            [database]
            url = "{NO_DATABASE}"
            acquire_timeout_seconds = 1
            [kafka]
            bootstrap_servers = "127.0.0.1:9"
            [gateway]
            public_base_url = "https://id.pickup.example"
            [[gateway.admin_tokens]]
            id = "openapi-test"
            sha256 = "{sha256}"
            scopes = ["invite", "read", "revoke"]
            [codes]
            active_key = "k1"
            [[codes.keys]]
            id = "k1"
            secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
            "#
        ))
        .expect("the test settings load");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_secs(1))
            .connect_lazy(NO_DATABASE)
            .expect("a lazy pool");
        let services = onboarding_store::services(&settings).expect("services");
        let store = onboarding_store::Store::new(pool, services, Default::default());
        let readiness =
            Readiness::new(vec![Role::Gateway], store.clone(), &settings.kafka).expect("readiness");
        Arc::new(AppState::new(Arc::new(settings), store, None, Arc::new(readiness)).unwrap())
    }

    /// The template's `{parameters}` filled with a well-formed id nobody has.
    fn concrete(template: &str) -> String {
        template
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    "0193a9b0-0000-7000-8000-000000000000"
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    struct Answer {
        status: StatusCode,
        content_type: String,
        allow: Option<String>,
        body: Value,
    }

    async fn send(state: &Arc<AppState>, method: &str, path: &str) -> Answer {
        let r = warp::test::request()
            .method(method)
            .path(path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .reply(&routes(state.clone()))
            .await;
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Answer {
            status: r.status(),
            content_type: header("content-type").unwrap_or_default(),
            allow: header("allow"),
            body: serde_json::from_slice(r.body()).unwrap_or(Value::Null),
        }
    }

    /// The router's own refusals: no route for the path, or not with this method (the JSON API's
    /// and SCIM's).
    fn unrouted(a: &Answer) -> Option<&'static str> {
        let scim_detail = a.body["detail"].as_str().unwrap_or_default();
        if a.status == StatusCode::METHOD_NOT_ALLOWED {
            Some("405")
        } else if a.status == StatusCode::NOT_FOUND
            && (a.body["error"] == "not_found" || scim_detail.starts_with("no such SCIM endpoint"))
        {
            Some("404")
        } else {
            None
        }
    }

    #[tokio::test]
    async fn every_documented_operation_reaches_its_handler() {
        let state = state();
        let operations: Vec<(String, String)> = documented().into_iter().collect();
        let answers = join_all(operations.iter().map(|(path, method)| {
            let state = state.clone();
            async move { send(&state, &method.to_uppercase(), &concrete(path)).await }
        }))
        .await;
        let mut failures = BTreeMap::new();
        for ((path, method), answer) in operations.iter().zip(&answers) {
            if let Some(refusal) = unrouted(answer) {
                failures.insert(format!("{method} {path}"), refusal);
            }
        }
        assert!(
            failures.is_empty(),
            "documented operations the router refuses: {failures:?}"
        );
        // And what the document promises is what they answer here, where the database is down.
        let served = answers[operations
            .iter()
            .position(|(p, m)| p == "/api/v1/openapi.json" && m == "get")
            .unwrap()]
        .status;
        assert_eq!(served, StatusCode::OK);
    }

    #[tokio::test]
    async fn every_other_method_on_a_documented_path_is_refused_and_other_paths_are_not_found() {
        let state = state();
        let documented = documented();
        let paths: BTreeSet<&String> = documented.iter().map(|(p, _)| p).collect();
        let mut probes = Vec::new();
        for path in paths {
            let concrete = concrete(path);
            for verb in ["get", "head", "post", "put", "patch", "delete", "options"] {
                // A method the document gives this concrete path (a path written out in it, or
                // else a template that names it) is routed.
                let served = methods_at(&documented, &concrete).contains(&verb.to_uppercase());
                if !served {
                    probes.push((verb.to_uppercase(), concrete.clone(), "405"));
                }
            }
        }
        for path in [
            "/",
            "/api",
            "/api/v1",
            "/api/v2/users",
            "/api/v1/users/0193a9b0-0000-7000-8000-000000000000/activate",
            "/api/v1/openapi.yaml",
            "/confirm/other",
            "/assets/other.css",
            "/scim2/Groups",
            "/scim2/Bulk",
            "/scim2/Me",
        ] {
            probes.push(("GET".to_owned(), path.to_owned(), "404"));
        }
        let answers = join_all(probes.iter().map(|(method, path, _)| {
            let state = state.clone();
            async move { send(&state, method, path).await }
        }))
        .await;
        let mut failures = Vec::new();
        for ((method, path, want), answer) in probes.iter().zip(&answers) {
            if unrouted(answer) != Some(want) {
                failures.push(format!(
                    "{method} {path}: {} {} (want the router's {want})",
                    answer.status, answer.body
                ));
            }
            // A 405 names the methods the path takes: those the document gives it.
            if *want == "405" {
                let methods = methods_at(&documented, path);
                assert_eq!(
                    answer.allow.as_deref(),
                    Some(methods.join(", ").as_str()),
                    "{method} {path}: Allow"
                );
            }
            // A refusal is JSON (SCIM's is SCIM's JSON), never a page or an empty answer.
            assert!(
                answer.content_type.contains("json"),
                "{method} {path}: {}",
                answer.content_type
            );
        }
        assert!(
            failures.is_empty(),
            "undocumented requests the router serves: {failures:#?}"
        );
    }

    /// The methods the document gives the concrete `path`: those of the path if the document
    /// writes it out, else those of the templates that name it; in the route table's order.
    fn methods_at(documented: &BTreeSet<(String, String)>, path: &str) -> Vec<String> {
        let literal = documented.iter().any(|(t, _)| t == path);
        let mut methods: Vec<String> = documented
            .iter()
            .filter(|(t, _)| {
                if literal {
                    t == path
                } else {
                    endpoints::names(t, path)
                }
            })
            .map(|(_, m)| m.to_uppercase())
            .collect();
        methods.sort_by_key(|m| order(m));
        methods.dedup();
        methods
    }

    /// Where a method sorts in `Allow` (the route table's order of `Verb`).
    fn order(method: &str) -> usize {
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .position(|m| *m == method)
            .unwrap_or(usize::MAX)
    }

    #[tokio::test]
    async fn the_served_document_is_the_committed_file() {
        let state = state();
        let r = warp::test::request()
            .path("/api/v1/openapi.json")
            .reply(&routes(state))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/json");
        let file = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/openapi.json"),
        )
        .expect("read schemas/openapi.json");
        assert!(
            r.body() == &file[..],
            "the served document differs from the file"
        );
    }
}
