//! SCIM 2.0 (RFC 7643/7644) for upstream identity systems: Entra ID, Okta, WSO2 Identity Server
//! and any generic SCIM client. `POST /scim2/Users` without a password invites the user (the one
//! invitation path, `Store::invite_as`; WSO2's `"askPassword": true` is accepted and, with
//! `identity_mgt.user_onboarding.scim_require_ask_password`, required), and the User shows
//! `active: false` until the user set a password from the mailed link. A `password` is refused:
//! this engine never accepts one from a provisioning client.
//!
//! Supported: `POST /Users`; `GET /Users/{id}`; `PUT` and `PATCH /Users/{id}` (the address, the
//! name, `displayName`, `externalId`, and `active`: `false` revokes an open invitation or
//! disables an active account, `true` enables it again); `DELETE /Users/{id}` (of a user who
//! has not set a password); `GET /Users` and `POST /Users/.search` with filters (`eq`, `ne`,
//! `sw`, `ew`, `co`, `pr`, `and`, `or`, `not`, parentheses, `emails[…]`) on userName, emails,
//! externalId, id and active, `sortBy`/`sortOrder`, `startIndex`/`count`, `attributes` and
//! `excludedAttributes`; ETags (`meta.version` = the account's newest sequence) with `If-Match`
//! on `PUT`, `PATCH` and `DELETE`; the discovery endpoints. Every answer is
//! `application/scim+json`; every error is a SCIM Error message; an unknown path is `404`.
//!
//! One module per job: [`dispatch`] routes a request and runs it against the store, [`user`] is
//! the User resource (what a `POST` or `PUT` may send, case-folded and read by serde, and what a
//! read answers), [`update`] what a `PUT` or `PATCH` changes and the commands that change it,
//! [`filter`] the search (filters parsed by `scim_v2`, docs/adr/0027), [`attributes`] attribute
//! selection, [`discovery`] the documents that describe the service, and [`error`] every
//! failure's status and SCIM Error message.

use serde::Serialize;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

mod attributes;
mod discovery;
mod dispatch;
mod error;
mod filter;
mod update;
mod user;

pub use dispatch::{handle, ScimRequest};

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
