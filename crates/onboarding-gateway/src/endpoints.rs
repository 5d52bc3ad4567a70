//! The route table: every endpoint the gateway serves, by its methods and its path template as
//! `schemas/openapi.json` writes it. `routes.rs` builds each route's path and method filter from
//! its entry here ([`at`], [`at_with_id`]); the SCIM entries are served under one `/scim2` mount by
//! `scim::dispatch`. A test (`openapi.rs`) keeps this table and the document equal, and sends
//! every documented request to the router, so a route cannot be added, moved or dropped without
//! the document following.

use warp::filters::BoxedFilter;
use warp::{Filter, Rejection};

/// An HTTP method the gateway routes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verb {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

impl Verb {
    /// As OpenAPI names it (the key of an operation under its path).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Head => "head",
            Self::Post => "post",
            Self::Put => "put",
            Self::Patch => "patch",
            Self::Delete => "delete",
        }
    }

    fn filter(self) -> BoxedFilter<()> {
        match self {
            Self::Get => warp::get().boxed(),
            Self::Head => warp::head().boxed(),
            Self::Post => warp::post().boxed(),
            Self::Put => warp::put().boxed(),
            Self::Patch => warp::patch().boxed(),
            Self::Delete => warp::delete().boxed(),
        }
    }
}

/// One endpoint: a path template (`{name}` is one path segment) and the methods it answers.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) path: &'static str,
    pub(crate) verbs: &'static [Verb],
}

use Verb::{Delete, Get, Head, Patch, Post, Put};

const fn endpoint(path: &'static str, verbs: &'static [Verb]) -> Endpoint {
    Endpoint { path, verbs }
}

// The admin API.
pub(crate) const USERS_CREATE: Endpoint = endpoint("/api/v1/users", &[Post]);
pub(crate) const USERS_LIST: Endpoint = endpoint("/api/v1/users", &[Get]);
pub(crate) const USER: Endpoint = endpoint("/api/v1/users/{id}", &[Get]);
pub(crate) const USER_ERASE: Endpoint = endpoint("/api/v1/users/{id}", &[Delete]);
pub(crate) const USER_RESEND: Endpoint = endpoint("/api/v1/users/{id}/resend", &[Post]);
pub(crate) const USER_REVOKE: Endpoint = endpoint("/api/v1/users/{id}/revoke", &[Post]);
pub(crate) const BULK_UPLOAD: Endpoint = endpoint("/api/v1/bulk-invites", &[Post]);
pub(crate) const BULK_JOB: Endpoint = endpoint("/api/v1/bulk-invites/{job_id}", &[Get]);
pub(crate) const CREDENTIALS_VERIFY: Endpoint = endpoint("/api/v1/credentials/verify", &[Post]);
// The password API and the pages behind the links.
pub(crate) const PASSWORD_SUBMISSIONS: Endpoint = endpoint("/api/v1/password-submissions", &[Post]);
pub(crate) const CONFIRM_PAGE: Endpoint = endpoint("/confirm", &[Get, Head]);
pub(crate) const CONFIRM_FORM: Endpoint = endpoint("/confirm", &[Post]);
pub(crate) const NEW_LINK: Endpoint = endpoint("/confirm/new-link", &[Post]);
pub(crate) const REVOKE_PAGE: Endpoint = endpoint("/revoke", &[Get, Head]);
pub(crate) const REVOKE_FORM: Endpoint = endpoint("/revoke", &[Post]);
pub(crate) const STYLE_SHEET: Endpoint = endpoint("/assets/onboard.css", &[Get, Head]);
// The admin console (`console/`).
pub(crate) const CONSOLE_SIGN_IN_PAGE: Endpoint = endpoint("/admin/sign-in", &[Get]);
pub(crate) const CONSOLE_SIGN_IN: Endpoint = endpoint("/admin/sign-in", &[Post]);
pub(crate) const CONSOLE_SIGN_OUT: Endpoint = endpoint("/admin/sign-out", &[Post]);
pub(crate) const CONSOLE_OVERVIEW: Endpoint = endpoint("/admin", &[Get]);
pub(crate) const CONSOLE_INVITATIONS: Endpoint = endpoint("/admin/invitations", &[Get]);
pub(crate) const CONSOLE_USER: Endpoint = endpoint("/admin/users/{id}", &[Get]);
pub(crate) const CONSOLE_RESEND_PAGE: Endpoint = endpoint("/admin/users/{id}/resend", &[Get]);
pub(crate) const CONSOLE_RESEND: Endpoint = endpoint("/admin/users/{id}/resend", &[Post]);
pub(crate) const CONSOLE_REVOKE_PAGE: Endpoint = endpoint("/admin/users/{id}/revoke", &[Get]);
pub(crate) const CONSOLE_REVOKE: Endpoint = endpoint("/admin/users/{id}/revoke", &[Post]);
pub(crate) const CONSOLE_BULK_PAGE: Endpoint = endpoint("/admin/bulk", &[Get]);
pub(crate) const CONSOLE_BULK_UPLOAD: Endpoint = endpoint("/admin/bulk", &[Post]);
pub(crate) const CONSOLE_BULK_JOB: Endpoint = endpoint("/admin/bulk/{job_id}", &[Get]);
pub(crate) const CONSOLE_BULK_FAILED_ROWS: Endpoint =
    endpoint("/admin/bulk/{job_id}/failed.csv", &[Get]);
// Operations.
pub(crate) const HEALTHZ: Endpoint = endpoint("/healthz", &[Get]);
pub(crate) const READYZ: Endpoint = endpoint("/readyz", &[Get]);
pub(crate) const METRICS: Endpoint = endpoint("/metrics", &[Get]);
pub(crate) const OPENAPI: Endpoint = endpoint("/api/v1/openapi.json", &[Get]);

/// Every endpoint that `routes.rs` mounts itself.
pub(crate) const ROUTED: &[&Endpoint] = &[
    &USERS_CREATE,
    &USERS_LIST,
    &USER,
    &USER_ERASE,
    &USER_RESEND,
    &USER_REVOKE,
    &BULK_UPLOAD,
    &BULK_JOB,
    &CREDENTIALS_VERIFY,
    &PASSWORD_SUBMISSIONS,
    &CONFIRM_PAGE,
    &CONFIRM_FORM,
    &NEW_LINK,
    &REVOKE_PAGE,
    &REVOKE_FORM,
    &STYLE_SHEET,
    &CONSOLE_SIGN_IN_PAGE,
    &CONSOLE_SIGN_IN,
    &CONSOLE_SIGN_OUT,
    &CONSOLE_OVERVIEW,
    &CONSOLE_INVITATIONS,
    &CONSOLE_USER,
    &CONSOLE_RESEND_PAGE,
    &CONSOLE_RESEND,
    &CONSOLE_REVOKE_PAGE,
    &CONSOLE_REVOKE,
    &CONSOLE_BULK_PAGE,
    &CONSOLE_BULK_UPLOAD,
    &CONSOLE_BULK_JOB,
    &CONSOLE_BULK_FAILED_ROWS,
    &HEALTHZ,
    &READYZ,
    &METRICS,
    &OPENAPI,
];

/// Where SCIM is mounted: every request under it goes to `scim::handle`.
pub(crate) const SCIM_MOUNT: &str = "scim2";

/// The endpoints `scim::dispatch` answers under [`SCIM_MOUNT`] (each other path there is a SCIM
/// `404`, each other method on these paths a SCIM `405`).
pub(crate) const SCIM: &[Endpoint] = &[
    endpoint("/scim2/Users", &[Get, Post]),
    endpoint("/scim2/Users/{id}", &[Get, Put, Patch, Delete]),
    endpoint("/scim2/Users/.search", &[Post]),
    endpoint("/scim2/ServiceProviderConfig", &[Get]),
    endpoint("/scim2/Schemas", &[Get]),
    endpoint("/scim2/Schemas/{id}", &[Get]),
    endpoint("/scim2/ResourceTypes", &[Get]),
    endpoint("/scim2/ResourceTypes/User", &[Get]),
];

/// Every endpoint of the gateway.
pub(crate) fn all() -> impl Iterator<Item = &'static Endpoint> {
    ROUTED.iter().copied().chain(SCIM.iter())
}

/// Whether `template` names the request path `path` (each `{parameter}` is one non-empty
/// segment).
pub(crate) fn names(template: &str, path: &str) -> bool {
    let mut path = path.trim_start_matches('/').split('/');
    let mut template = template.trim_start_matches('/').split('/');
    loop {
        match (template.next(), path.next()) {
            (None, None) => return true,
            (Some(t), Some(p)) if t == p || (t.starts_with('{') && !p.is_empty()) => {}
            _ => return false,
        }
    }
}

/// The methods the endpoints at `path` answer. A path written out in the table is that endpoint
/// alone (as OpenAPI matches a concrete path before a template): `/scim2/Users/.search` is not
/// the User `.search`.
pub(crate) fn methods_at(path: &str) -> Vec<Verb> {
    let literal: Vec<&Endpoint> = all().filter(|e| e.path == path).collect();
    let endpoints = if literal.is_empty() {
        all().filter(|e| names(e.path, path)).collect()
    } else {
        literal
    };
    let mut verbs: Vec<Verb> = endpoints
        .iter()
        .flat_map(|e| e.verbs.iter().copied())
        .collect();
    verbs.sort();
    verbs.dedup();
    verbs
}

/// The methods the endpoints at `path` answer, as an `Allow` header lists them (`GET, HEAD`);
/// empty when no endpoint is there.
pub(crate) fn allowed_methods(path: &str) -> String {
    let verbs = methods_at(path);
    verbs
        .iter()
        .map(|v| v.as_str().to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Adds `Allow` to a `405` answer that has none, with the methods the requested path takes
/// (RFC 9110 15.5.6).
pub(crate) fn allow(path: &str, mut response: warp::reply::Response) -> warp::reply::Response {
    if response.status() == warp::http::StatusCode::METHOD_NOT_ALLOWED
        && !response.headers().contains_key("allow")
    {
        let methods = allowed_methods(path);
        if let Ok(value) = warp::http::HeaderValue::from_str(&methods) {
            if !methods.is_empty() {
                response.headers_mut().insert("allow", value);
            }
        }
    }
    response
}

/// The path filter of `template`: its literal segments matched as `warp::path!` matches them,
/// each `{name}` segment extracted, then the end of the path.
fn path(template: &'static str) -> BoxedFilter<(Vec<String>,)> {
    let mut filter = warp::any().map(Vec::new).boxed();
    for segment in template.trim_start_matches('/').split('/') {
        filter = if segment.starts_with('{') && segment.ends_with('}') {
            filter
                .and(warp::path::param::<String>())
                .map(|mut params: Vec<String>, value| {
                    params.push(value);
                    params
                })
                .boxed()
        } else {
            filter.and(warp::path(segment)).boxed()
        };
    }
    filter.and(warp::path::end()).boxed()
}

/// The method filter of `verbs`: any one of them (a request with another method is rejected as
/// `405` when its path matched).
fn methods(verbs: &[Verb]) -> BoxedFilter<()> {
    let mut verbs = verbs.iter();
    let Some(first) = verbs.next() else {
        // No method: nothing is served.
        return warp::any()
            .and_then(|| async { Err::<(), _>(warp::reject::not_found()) })
            .untuple_one()
            .boxed();
    };
    verbs.fold(first.filter(), |either, v| {
        either.or(v.filter()).unify().boxed()
    })
}

/// The path and the methods of `endpoint`, whose path has no parameter.
pub(crate) fn at(endpoint: &'static Endpoint) -> BoxedFilter<()> {
    path(endpoint.path)
        .and_then(|params: Vec<String>| async move {
            if params.is_empty() {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(methods(endpoint.verbs))
        .boxed()
}

/// The path and the methods of `endpoint`, whose path has one `{parameter}`: its value.
pub(crate) fn at_with_id(endpoint: &'static Endpoint) -> BoxedFilter<(String,)> {
    path(endpoint.path)
        .and_then(|mut params: Vec<String>| async move {
            match (params.pop(), params.is_empty()) {
                (Some(id), true) => Ok::<_, Rejection>(id),
                _ => Err(warp::reject::not_found()),
            }
        })
        .and(methods(endpoint.verbs))
        .boxed()
}
