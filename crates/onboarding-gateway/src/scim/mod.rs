//! SCIM 2.0 (RFC 7643/7644) for upstream identity systems, as WSO2 Identity Server provisions a
//! user with `askPassword`: `POST /scim2/Users` with the enterprise extension's
//! `"askPassword": true` invites the user (the one invitation path, `Store::invite_as`), and the
//! user resource shows `active: false` until the user set a password from the mailed link.
//!
//! Supported: `POST /Users`, `GET /Users/{id}`, `DELETE /Users/{id}` (of a user who has not set
//! a password), `GET /Users` with `filter=userName eq "…"` (case-insensitive, as userName is
//! `caseExact: false`), `startIndex`/`count`, and the discovery endpoints. Not supported
//! (answered with a SCIM error): PUT, PATCH, other filters, sorting, bulk, and any
//! administrator-chosen `password` (this engine never accepts one).
//! Every answer is `application/scim+json`; every error is a SCIM Error message.
//!
//! One module per job: [`dispatch`] routes a request and runs it against the store, [`user`] is
//! the User resource (what a `POST` may send, case-folded and read by serde, and what a read
//! answers), [`filter`] reads the search query, [`discovery`] builds the documents that describe
//! the service, and [`error`] gives every failure its status and SCIM Error message.

use serde::Serialize;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

mod discovery;
mod dispatch;
mod error;
mod filter;
mod user;

pub use dispatch::handle;

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const ONBOARDING: &str = "urn:onboard:params:scim:schemas:extension:onboarding:2.0:User";
const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const LIST: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const MEDIA_TYPE: &str = "application/scim+json";

/// `body` as `application/scim+json`, with `status`.
fn reply(status: StatusCode, body: &impl Serialize) -> Response {
    let mut r = warp::reply::with_status(warp::reply::json(body), status).into_response();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static(MEDIA_TYPE));
    r
}

/// A page of resources (RFC 7644 §3.4.2): the search's answer, and the discovery lists.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ListResponse<T> {
    schemas: [&'static str; 1],
    total_results: i64,
    start_index: i64,
    items_per_page: usize,
    #[serde(rename = "Resources")]
    resources: Vec<T>,
}

impl<T> ListResponse<T> {
    /// `resources`, the page from `start` (1-based) of `total`.
    fn page(resources: Vec<T>, total: i64, start: i64) -> Self {
        Self {
            schemas: [LIST],
            total_results: total,
            start_index: start,
            items_per_page: resources.len(),
            resources,
        }
    }

    /// All of `resources` on one page.
    fn all(resources: Vec<T>) -> Self {
        let total = resources.len() as i64;
        Self::page(resources, total, 1)
    }
}
