//! The per-client limits of the public endpoints (the password submission and the pages behind
//! the links), counted by client address.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use onboarding_config::GatewaySettings;

use crate::client::client_address;
use crate::error::ApiError;

/// Link openings one client address may add to the log each minute.
const OPENINGS_RECORDED_PER_MINUTE: NonZeroU32 = NonZeroU32::new(10).expect("non-zero");

pub(crate) struct Throttles {
    /// Public requests per client (`gateway.public_rate_limit_per_minute`).
    public: DefaultKeyedRateLimiter<IpAddr>,
    /// Bounds how many link openings one client address can add to the log.
    openings: DefaultKeyedRateLimiter<IpAddr>,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`gateway.trusted_proxies`).
    trusted_proxies: Vec<ipnet::IpNet>,
}

impl Throttles {
    pub(crate) fn new(gateway: &GatewaySettings) -> Self {
        Self {
            public: RateLimiter::keyed(Quota::per_minute(gateway.public_rate_limit_per_minute)),
            openings: RateLimiter::keyed(Quota::per_minute(OPENINGS_RECORDED_PER_MINUTE)),
            trusted_proxies: gateway.trusted_proxies.clone(),
        }
    }

    /// The client of a request from `peer` that forwarded `forwarded_for` (see
    /// [`client_address`]).
    pub(crate) fn client(&self, peer: Option<SocketAddr>, forwarded_for: &str) -> Option<IpAddr> {
        client_address(peer, forwarded_for, &self.trusted_proxies)
    }

    /// Counts one public request from `client`; refuses it when the client is over its quota.
    pub(crate) fn check(&self, client: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(addr) = client else { return Ok(()) };
        self.public.check_key(&addr).map_err(|not_until| {
            metrics::counter!("onboard_rate_limited_total").increment(1);
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited(wait.as_secs().max(1))
        })
    }

    /// Whether an opening of a link by `client` should still be recorded (at most 10 a minute per
    /// address, so a reload loop cannot flood the log; the page is shown either way).
    pub(crate) fn record_open(&self, client: Option<IpAddr>) -> bool {
        client.is_none_or(|addr| self.openings.check_key(&addr).is_ok())
    }

    /// Forgets clients not seen lately: the limiters keep one entry per address seen.
    pub(crate) fn forget_idle(&self) {
        self.public.retain_recent();
        self.openings.retain_recent();
    }
}
