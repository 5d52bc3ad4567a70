//! The rate limits: who a client is as the limits count it ([`ClientKey`]: an IPv4 address or an
//! IPv6 /64), and one budget per kind of route ([`Throttles`]): the public posts and the pages
//! per client, the admin routes per admin token (or per client, without a valid token). See
//! docs/adr/0015.

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, NotUntil, Quota, RateLimiter};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use onboarding_config::GatewaySettings;

use crate::client::client_address;
use crate::error::ApiError;

/// Link openings one client may add to the log each minute.
const OPENINGS_RECORDED_PER_MINUTE: NonZeroU32 = NonZeroU32::new(10).expect("non-zero");

/// The prefix of an IPv6 client that the limits count as one: the smallest network one site is
/// given (RFC 6177), inside which a host picks addresses at will.
const IPV6_CLIENT_PREFIX: u8 = 64;

/// One client as the limits count it: its IPv4 address, or the /64 of its IPv6 address. An
/// IPv4-mapped IPv6 address (`::ffff:192.0.2.7`, as a dual-stack listener reports IPv4 peers)
/// is the IPv4 client it maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey(IpNet);

impl ClientKey {
    pub(crate) fn of(addr: IpAddr) -> Self {
        let v6 = match addr {
            IpAddr::V4(v4) => return Self(Ipv4Net::from(v4).into()),
            IpAddr::V6(v6) => v6,
        };
        match v6.to_ipv4_mapped() {
            Some(v4) => Self(Ipv4Net::from(v4).into()),
            None => Self(
                Ipv6Net::new(v6, IPV6_CLIENT_PREFIX)
                    .expect("64 is a valid IPv6 prefix length")
                    .trunc()
                    .into(),
            ),
        }
    }
}

/// The routes a budget guards, as `onboard_rate_limited_total` labels its refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteGroup {
    /// The public posts: `POST /api/v1/password-submissions`, `/confirm`, `/confirm/new-link`,
    /// `/revoke`.
    Forms,
    /// `GET` and `HEAD` of `/confirm` and `/revoke`.
    Pages,
    /// `/api/v1/users…`.
    Api,
    /// `/api/v1/bulk-invites…`.
    Bulk,
    /// `/scim2/…`.
    Scim,
    /// `POST /api/v1/credentials/verify`: the token's budget, the client's and the username's.
    Verify,
    /// The admin console, `/admin…`: the signed-in token's budget (a sign-in attempt or a
    /// request without a session, the client's).
    Console,
}

impl RouteGroup {
    fn label(self) -> &'static str {
        match self {
            Self::Forms => "forms",
            Self::Pages => "pages",
            Self::Api => "api",
            Self::Bulk => "bulk",
            Self::Scim => "scim",
            Self::Verify => "verify",
            Self::Console => "console",
        }
    }
}

/// Requests per minute of each budget.
struct Budgets {
    /// The posts, per client (and admin routes without a valid token).
    public: NonZeroU32,
    /// The pages, per client.
    pages: NonZeroU32,
    /// The admin routes, per admin token.
    admin: NonZeroU32,
    /// Password verifications, per client.
    verify_client: NonZeroU32,
    /// Password verifications, per username.
    verify_username: NonZeroU32,
}

pub(crate) struct Throttles {
    /// The public posts, per client (`gateway.public_rate_limit_per_minute`).
    forms: DefaultKeyedRateLimiter<ClientKey>,
    /// The pages behind the links, per client (`gateway.page_rate_limit_per_minute`).
    pages: DefaultKeyedRateLimiter<ClientKey>,
    /// The admin routes, per admin token id (`gateway.admin_rate_limit_per_minute`).
    tokens: DefaultKeyedRateLimiter<String>,
    /// The admin routes without a valid token, per client (`public_rate_limit_per_minute`, apart
    /// from the forms' budget).
    unauthenticated: DefaultKeyedRateLimiter<ClientKey>,
    /// Bounds how many link openings one client can add to the log.
    openings: DefaultKeyedRateLimiter<ClientKey>,
    /// Password verifications, per client (`gateway.verify_client_rate_limit_per_minute`).
    verify_clients: DefaultKeyedRateLimiter<ClientKey>,
    /// Password verifications, per domain and username key
    /// (`gateway.verify_username_rate_limit_per_minute`).
    verify_usernames: DefaultKeyedRateLimiter<(String, String)>,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`gateway.trusted_proxies`).
    trusted_proxies: Vec<IpNet>,
}

impl Throttles {
    pub(crate) fn new(gateway: &GatewaySettings) -> Self {
        Self::with_budgets(
            Budgets {
                public: gateway.public_rate_limit_per_minute,
                pages: gateway.page_rate_limit_per_minute,
                admin: gateway.admin_rate_limit_per_minute,
                verify_client: gateway.verify_client_rate_limit_per_minute,
                verify_username: gateway.verify_username_rate_limit_per_minute,
            },
            gateway.trusted_proxies.clone(),
        )
    }

    fn with_budgets(budgets: Budgets, trusted_proxies: Vec<IpNet>) -> Self {
        Self {
            forms: per_minute(budgets.public),
            pages: per_minute(budgets.pages),
            tokens: per_minute(budgets.admin),
            unauthenticated: per_minute(budgets.public),
            openings: per_minute(OPENINGS_RECORDED_PER_MINUTE),
            verify_clients: per_minute(budgets.verify_client),
            verify_usernames: per_minute(budgets.verify_username),
            trusted_proxies,
        }
    }

    /// The client of a request from `peer` that forwarded `forwarded_for` (see
    /// [`client_address`]), as the limits count it.
    pub(crate) fn client(
        &self,
        peer: Option<SocketAddr>,
        forwarded_for: &str,
    ) -> Option<ClientKey> {
        client_address(peer, forwarded_for, &self.trusted_proxies).map(ClientKey::of)
    }

    /// Counts one public post from `client`; refuses it when the client is over its budget.
    pub(crate) fn form(&self, client: Option<ClientKey>) -> Result<(), ApiError> {
        let Some(client) = client else { return Ok(()) };
        check(&self.forms, &client, RouteGroup::Forms).map_err(ApiError::RateLimited)
    }

    /// Counts one opening of a page behind a link by `client`.
    pub(crate) fn page(&self, client: Option<ClientKey>) -> Result<(), ApiError> {
        let Some(client) = client else { return Ok(()) };
        check(&self.pages, &client, RouteGroup::Pages).map_err(ApiError::RateLimited)
    }

    /// Counts one request to the admin routes `group` made with the admin token `token_id`.
    pub(crate) fn admin(&self, token_id: &str, group: RouteGroup) -> Result<(), ApiError> {
        check(&self.tokens, &token_id.to_owned(), group).map_err(ApiError::TokenRateLimited)
    }

    /// Counts one request to the admin routes `group` from `client` without a valid token.
    pub(crate) fn unauthenticated(
        &self,
        client: Option<ClientKey>,
        group: RouteGroup,
    ) -> Result<(), ApiError> {
        let Some(client) = client else { return Ok(()) };
        check(&self.unauthenticated, &client, group).map_err(ApiError::RateLimited)
    }

    /// Counts one password verification from `client` for `username_key` in `domain`: first
    /// against the client's budget, then (if that allowed it) against the username's, so that a
    /// client refused for its own excess does not use up the username's budget.
    pub(crate) fn verify(
        &self,
        client: Option<ClientKey>,
        domain: &str,
        username_key: &str,
    ) -> Result<(), ApiError> {
        if let Some(client) = client {
            check(&self.verify_clients, &client, RouteGroup::Verify)
                .map_err(ApiError::RateLimited)?;
        }
        let username = (domain.to_owned(), username_key.to_owned());
        check(&self.verify_usernames, &username, RouteGroup::Verify)
            .map_err(ApiError::UsernameRateLimited)
    }

    /// Whether an opening of a link by `client` should still be recorded (at most 10 a minute per
    /// client, so a reload loop cannot flood the log).
    pub(crate) fn record_open(&self, client: Option<ClientKey>) -> bool {
        client.is_none_or(|client| self.openings.check_key(&client).is_ok())
    }

    /// Forgets clients and tokens not seen lately: the limiters keep one entry per key seen.
    pub(crate) fn forget_idle(&self) {
        self.forms.retain_recent();
        self.pages.retain_recent();
        self.tokens.retain_recent();
        self.unauthenticated.retain_recent();
        self.openings.retain_recent();
        self.verify_clients.retain_recent();
        self.verify_usernames.retain_recent();
    }
}

/// A budget of `n` requests a minute per key: all `n` at once, then refilled one at a time.
fn per_minute<K: Clone + Eq + Hash>(n: NonZeroU32) -> DefaultKeyedRateLimiter<K> {
    RateLimiter::keyed(Quota::per_minute(n))
}

/// Counts one request of `key` against `budget`; over it, counts the refusal for `group` and
/// gives the whole seconds until the next request would be allowed (at least 1).
fn check<K: Clone + Eq + Hash>(
    budget: &DefaultKeyedRateLimiter<K>,
    key: &K,
    group: RouteGroup,
) -> Result<(), u64> {
    budget.check_key(key).map_err(|not_until: NotUntil<_>| {
        metrics::counter!("onboard_rate_limited_total", "group" => group.label()).increment(1);
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        wait.as_secs_f64().ceil().max(1.0) as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(addr: &str) -> ClientKey {
        ClientKey::of(addr.parse().unwrap())
    }

    #[test]
    fn two_addresses_in_one_ipv6_64_are_one_client() {
        assert_eq!(
            key("2001:db8:1:2::10"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_eq!(key("2001:db8:1:2::10"), key("2001:db8:1:2:abcd::1"));
        assert_eq!(key("2001:db8:1:2::10").0.to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn addresses_in_different_ipv6_64s_are_different_clients() {
        assert_ne!(key("2001:db8:1:2::10"), key("2001:db8:1:3::10"));
        assert_ne!(key("2001:db8:1:2::10"), key("2001:db8:2:2::10"));
        assert_ne!(key("fe80::1"), key("2001:db8::1"));
    }

    #[test]
    fn ipv4_counts_by_address_and_ipv4_mapped_ipv6_as_that_address() {
        assert_eq!(key("::ffff:203.0.113.9"), key("203.0.113.9"));
        assert_ne!(key("203.0.113.9"), key("203.0.113.10"));
        assert_ne!(key("::ffff:203.0.113.9"), key("::ffff:203.0.113.10"));
        assert_eq!(key("203.0.113.9").0.to_string(), "203.0.113.9/32");
        // Only the mapped form is IPv4: the deprecated IPv4-compatible form is IPv6 (in ::/64).
        assert_ne!(key("::203.0.113.9"), key("203.0.113.9"));
    }

    #[test]
    fn each_budget_counts_on_its_own_and_says_how_long_to_wait() {
        let n = |n| NonZeroU32::new(n).unwrap();
        let throttles = Throttles::with_budgets(
            Budgets {
                public: n(1),
                pages: n(2),
                admin: n(1),
                verify_client: n(2),
                verify_username: n(1),
            },
            Vec::new(),
        );
        let jane = Some(key("2001:db8:1:2::10"));
        let her_other_address = Some(key("2001:db8:1:2::11"));
        let sam = Some(key("198.51.100.7"));

        assert!(throttles.form(jane).is_ok());
        match throttles.form(her_other_address) {
            Err(ApiError::RateLimited(seconds)) => assert!((1..=60).contains(&seconds)),
            other => panic!("{other:?}"),
        }
        assert!(throttles.form(sam).is_ok());
        // Pages, and admin routes without a token, are budgets of their own.
        assert!(throttles.page(jane).is_ok());
        assert!(throttles.page(her_other_address).is_ok());
        assert!(throttles.page(jane).is_err());
        assert!(throttles.unauthenticated(jane, RouteGroup::Api).is_ok());
        assert!(throttles.unauthenticated(jane, RouteGroup::Scim).is_err());
        // A token's budget is the token's, whatever client sends it.
        assert!(throttles.admin("hr-system", RouteGroup::Api).is_ok());
        assert!(matches!(
            throttles.admin("hr-system", RouteGroup::Scim),
            Err(ApiError::TokenRateLimited(_))
        ));
        assert!(throttles.admin("ops-admin", RouteGroup::Bulk).is_ok());
        // A request without a known client (no peer address) is not counted.
        assert!(throttles.form(None).is_ok() && throttles.form(None).is_ok());
        // Password checks: the client's budget (2), then the username's (1), in its domain.
        assert!(throttles.verify(sam, "PRIMARY", "jane").is_ok());
        assert!(matches!(
            throttles.verify(jane, "PRIMARY", "jane"),
            Err(ApiError::UsernameRateLimited(s)) if (1..=60).contains(&s)
        ));
        assert!(throttles.verify(sam, "EMPLOYEES", "jane").is_ok());
        // Sam's two are spent: refused as a client, before Max's budget is touched.
        assert!(matches!(
            throttles.verify(sam, "PRIMARY", "max"),
            Err(ApiError::RateLimited(_))
        ));
        assert!(throttles.verify(jane, "PRIMARY", "max").is_ok());
    }
}
