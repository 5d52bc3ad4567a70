//! `[gateway]`: the HTTP server, its public address, the admin tokens and the
//! per-client rate limits.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer, Serialize};

use crate::limits;
use crate::ConfigError;
use crate::PublicBaseUrl;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    pub bind: SocketAddr,
    /// Base of the links in mails, e.g. `https://id.pickup.example`.
    pub public_base_url: PublicBaseUrl,
    pub max_body_bytes: u64,
    #[serde(default)]
    pub admin_tokens: Vec<AdminToken>,
    /// Requests per minute one client address may make to the public, unauthenticated
    /// endpoints that can fail a code check or send mail (submissions, new-link requests).
    /// 0 counts as 1.
    #[serde(deserialize_with = "limits::u32_zero_as_one")]
    pub public_rate_limit_per_minute: NonZeroU32,
    /// Requests per minute one client may make to the pages behind the links (`GET` and `HEAD`
    /// of `/confirm` and `/revoke`), each of which loads an account and may record an opening.
    #[serde(deserialize_with = "page_rate_limit")]
    pub page_rate_limit_per_minute: NonZeroU32,
    /// Requests per minute one admin token may make to the admin API, bulk uploads and SCIM,
    /// together. Requests without a valid token count against the client's
    /// `public_rate_limit_per_minute` instead.
    #[serde(deserialize_with = "admin_rate_limit")]
    pub admin_rate_limit_per_minute: NonZeroU32,
    /// Password verifications (`POST /api/v1/credentials/verify`) per minute for one client: the
    /// TCP peer, or the address a trusted proxy names (the end user, when the login service is
    /// one of `trusted_proxies`).
    #[serde(deserialize_with = "verify_client_rate_limit")]
    pub verify_client_rate_limit_per_minute: NonZeroU32,
    /// Password verifications per minute for one username (in its domain), whoever asks: every
    /// attempt counts, so guesses at one account are bounded wherever they come from.
    #[serde(deserialize_with = "verify_username_rate_limit")]
    pub verify_username_rate_limit_per_minute: NonZeroU32,
    /// Reverse proxies (`10.0.0.5`) or their networks (`10.0.0.0/8`) whose `X-Forwarded-For`
    /// names the client; an address is a network of one. Empty (the default): the TCP peer is
    /// the client and the header is ignored.
    #[serde(default, deserialize_with = "trusted_proxies")]
    pub trusted_proxies: Vec<IpNet>,
    /// How long a connection may take to send a request's headers, counted from when the
    /// gateway starts waiting for them (a new connection, or the previous answer sent); then
    /// the gateway closes the connection. It is also how long an idle keep-alive connection
    /// stays open.
    #[serde(rename = "header_read_timeout_seconds", deserialize_with = "seconds")]
    pub header_read_timeout: Duration,
    /// How long a request's body may take to arrive once its headers did; then the answer is
    /// `408` and the connection is closed.
    #[serde(rename = "body_read_timeout_seconds", deserialize_with = "seconds")]
    pub body_read_timeout: Duration,
    /// How long the gateway may take to answer once a request's headers arrived; then the
    /// answer is `503` (or `408` while the body is still arriving).
    #[serde(rename = "request_timeout_seconds", deserialize_with = "seconds")]
    pub request_timeout: Duration,
    /// Connections served at once by each listener; more wait in the listen backlog.
    #[serde(deserialize_with = "max_connections")]
    pub max_connections: NonZeroUsize,
    /// How long a stopping gateway lets open requests finish before it drops their connections.
    #[serde(rename = "shutdown_timeout_seconds", deserialize_with = "seconds")]
    pub shutdown_timeout: Duration,
}

impl GatewaySettings {
    /// A body that arrives late must meet its own deadline (`408`, the client's doing) before
    /// the request timeout (`503`, the gateway's) can pass.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.request_timeout <= self.body_read_timeout {
            return Err(ConfigError::Invalid(format!(
                "gateway.request_timeout_seconds ({}) must be longer than \
                 gateway.body_read_timeout_seconds ({}): a request whose body is late is \
                 answered 408 by the body deadline, before the request timeout passes",
                self.request_timeout.as_secs(),
                self.body_read_timeout.as_secs()
            )));
        }
        Ok(())
    }
}

/// A timeout in whole seconds, at least 1: none of the gateway's timeouts can be switched off.
fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(de::Error::custom(
            "must be at least 1 (seconds); a gateway timeout cannot be switched off",
        )),
        n => Ok(Duration::from_secs(n)),
    }
}

fn max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroUsize, D::Error> {
    NonZeroUsize::new(usize::deserialize(d)?).ok_or_else(|| {
        de::Error::custom("must be at least 1; with 0 the gateway would serve nobody")
    })
}

fn page_rate_limit<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU32, D::Error> {
    positive(d, "gateway.page_rate_limit_per_minute")
}

fn admin_rate_limit<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU32, D::Error> {
    positive(d, "gateway.admin_rate_limit_per_minute")
}

fn verify_client_rate_limit<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU32, D::Error> {
    positive(d, "gateway.verify_client_rate_limit_per_minute")
}

fn verify_username_rate_limit<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU32, D::Error> {
    positive(d, "gateway.verify_username_rate_limit_per_minute")
}

/// A budget that must allow at least one request: 0 would shut the routes it guards.
fn positive<'de, D: Deserializer<'de>>(d: D, key: &str) -> Result<NonZeroU32, D::Error> {
    NonZeroU32::new(u32::deserialize(d)?).ok_or_else(|| {
        de::Error::custom(format!(
            "{key} must be at least 1 (requests per minute); raise it, or leave it out for the default"
        ))
    })
}

fn trusted_proxies<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    de::Error::custom(format!(
                        "gateway.trusted_proxies: `{entry}` is neither an IP address (10.0.0.5) nor a network (10.0.0.0/8)"
                    ))
                })
        })
        .collect()
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Create invitations and resend codes.
    Invite,
    /// Show and list accounts and bulk jobs.
    Read,
    /// Revoke invitations.
    Revoke,
    /// Verify a user's password (`POST /api/v1/credentials/verify`): for a login service. Not
    /// among a token's scopes unless named.
    Verify,
    /// Erase a user's personal data (`DELETE /api/v1/users/{id}?erase=true`), which cannot be
    /// undone. Not among a token's scopes unless named.
    Erase,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Invite,
        Scope::Read,
        Scope::Revoke,
        Scope::Verify,
        Scope::Erase,
    ];
    /// A token's scopes when the file does not name them: the administrator's, not `verify`,
    /// which answers whether a password is right and belongs to a login service's token alone,
    /// nor `erase`, which destroys what cannot be restored and is granted by name.
    pub const DEFAULT: [Scope; 3] = [Scope::Invite, Scope::Read, Scope::Revoke];

    /// The scope's name in `gateway.admin_tokens[].scopes` and in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Invite => "invite",
            Scope::Read => "read",
            Scope::Revoke => "revoke",
            Scope::Verify => "verify",
            Scope::Erase => "erase",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An admin token, stored as the SHA-256 of the token (the token itself is never configured).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "AdminTokenFile")]
pub struct AdminToken {
    pub id: String,
    pub sha256: String,
    /// What the token may do; [`Scope::DEFAULT`] when the file does not say.
    pub scopes: Vec<Scope>,
    /// A revoked token is refused (401) without being removed from the file.
    pub revoked: bool,
}

/// An admin token as written, checked into [`AdminToken`] while it is read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminTokenFile {
    id: String,
    sha256: String,
    /// `invite` (create, resend), `read` (show, list), `revoke`, `verify` (passwords).
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    revoked: bool,
}

impl TryFrom<AdminTokenFile> for AdminToken {
    type Error = String;

    fn try_from(file: AdminTokenFile) -> Result<Self, String> {
        let scopes = match file.scopes {
            None => Scope::DEFAULT.to_vec(),
            Some(names) => names
                .iter()
                .map(|name| {
                    Scope::ALL
                        .into_iter()
                        .find(|s| s.as_str() == name)
                        .ok_or_else(|| {
                            format!(
                                "gateway.admin_tokens `{}`: unknown scope `{name}`; use invite, read, revoke, verify or erase",
                                file.id
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            id: file.id,
            sha256: file.sha256,
            scopes,
            revoked: file.revoked,
        })
    }
}

/// The keys of `[gateway]` that have a default; `public_base_url` has none.
#[derive(Serialize)]
pub(crate) struct GatewayDefaults {
    bind: SocketAddr,
    max_body_bytes: u64,
    public_rate_limit_per_minute: NonZeroU32,
    header_read_timeout_seconds: u64,
    body_read_timeout_seconds: u64,
    request_timeout_seconds: u64,
    max_connections: usize,
    shutdown_timeout_seconds: u64,
    page_rate_limit_per_minute: NonZeroU32,
    admin_rate_limit_per_minute: NonZeroU32,
    verify_client_rate_limit_per_minute: NonZeroU32,
    verify_username_rate_limit_per_minute: NonZeroU32,
}

impl Default for GatewayDefaults {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 16384,
            public_rate_limit_per_minute: limits::nonzero_u32(30),
            header_read_timeout_seconds: 10,
            body_read_timeout_seconds: 30,
            request_timeout_seconds: 60,
            max_connections: 1024,
            shutdown_timeout_seconds: 15,
            // Ten a second from one address (or IPv6 /64), sustained: more than a mail scanner
            // and a company's users behind one NAT open after a mass invitation.
            page_rate_limit_per_minute: limits::nonzero_u32(600),
            // A hundred a second per token, sustained: above what one IdP's SCIM sync or an HR
            // system sends (bulk files are one request each).
            admin_rate_limit_per_minute: limits::nonzero_u32(6000),
            // One sign-in a second from one end user's address, sustained (a shared NAT's users
            // included); a login service that is not a trusted proxy is one client for all.
            verify_client_rate_limit_per_minute: limits::nonzero_u32(60),
            // Ten guesses at one account, then one every six seconds: far above what a person
            // signing in needs, far below what guessing a password needs.
            verify_username_rate_limit_per_minute: limits::nonzero_u32(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Scope;
    use crate::test_support::*;

    #[test]
    fn verify_is_a_scope_only_when_named_and_its_budgets_have_defaults() {
        let toml = format!(
            "{MINIMAL}\n[[gateway.admin_tokens]]\nid = \"ops\"\nsha256 = \"{h}\"\n\
             [[gateway.admin_tokens]]\nid = \"login\"\nsha256 = \"{h}\"\nscopes = [\"verify\"]\n",
            h = "ab".repeat(32)
        );
        let s = load(&toml).unwrap();
        let tokens = &s.gateway.admin_tokens;
        assert_eq!(tokens[0].scopes, Scope::DEFAULT);
        assert!(!tokens[0].scopes.contains(&Scope::Verify));
        assert_eq!(tokens[1].scopes, [Scope::Verify]);
        assert_eq!(s.gateway.verify_client_rate_limit_per_minute.get(), 60);
        assert_eq!(s.gateway.verify_username_rate_limit_per_minute.get(), 10);

        let err = load(&toml.replace("[\"verify\"]", "[\"login\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown scope `login`; use invite, read, revoke, verify or erase"),
            "{err}"
        );
        let err = load(&MINIMAL.replacen(
            "[gateway]",
            "[gateway]\nverify_username_rate_limit_per_minute = 0",
            1,
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("gateway.verify_username_rate_limit_per_minute must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks_and_a_bad_one_is_named() {
        let toml = MINIMAL.replacen(
            "[gateway]",
            "[gateway]\ntrusted_proxies = [\"10.1.2.3/8\", \"192.0.2.10\", \"::1\"]",
            1,
        );
        let s = load(&toml).unwrap();
        let nets: Vec<String> = s
            .gateway
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.10/32", "::1/128"]);
        let toml = MINIMAL.replacen(
            "[gateway]",
            "[gateway]\ntrusted_proxies = [\"proxy.internal\"]",
            1,
        );
        let err = load(&toml).unwrap_err().to_string();
        assert!(
            err.contains("gateway.trusted_proxies: `proxy.internal` is neither"),
            "{err}"
        );
    }

    #[test]
    fn http_limits_have_defaults_and_refuse_zero_by_name() {
        let s = load(MINIMAL).unwrap();
        assert_eq!(s.gateway.header_read_timeout.as_secs(), 10);
        assert_eq!(s.gateway.body_read_timeout.as_secs(), 30);
        assert_eq!(s.gateway.request_timeout.as_secs(), 60);
        assert_eq!(s.gateway.max_connections.get(), 1024);
        assert_eq!(s.gateway.shutdown_timeout.as_secs(), 15);
        let toml = MINIMAL.replacen(
            "[gateway]",
            "[gateway]\nheader_read_timeout_seconds = 3\nmax_connections = 2",
            1,
        );
        let s = load(&toml).unwrap();
        assert_eq!(s.gateway.header_read_timeout.as_secs(), 3);
        assert_eq!(s.gateway.max_connections.get(), 2);
        for key in [
            "header_read_timeout_seconds",
            "body_read_timeout_seconds",
            "request_timeout_seconds",
            "shutdown_timeout_seconds",
            "max_connections",
        ] {
            let toml = MINIMAL.replacen("[gateway]", &format!("[gateway]\n{key} = 0"), 1);
            let err = load(&toml).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
            assert!(err.contains("must be at least 1"), "{key}: {err}");
        }
        let toml = MINIMAL.replacen(
            "[gateway]",
            "[gateway]\nbody_read_timeout_seconds = 60\nrequest_timeout_seconds = 60",
            1,
        );
        let err = load(&toml).unwrap_err().to_string();
        assert!(
            err.contains("gateway.request_timeout_seconds (60) must be longer than gateway.body_read_timeout_seconds (60)"),
            "{err}"
        );
    }

    #[test]
    fn rate_limits_have_generous_defaults_and_refuse_zero() {
        let s = load(MINIMAL).unwrap();
        assert_eq!(s.gateway.public_rate_limit_per_minute.get(), 30);
        assert_eq!(s.gateway.page_rate_limit_per_minute.get(), 600);
        assert_eq!(s.gateway.admin_rate_limit_per_minute.get(), 6000);
        let toml = MINIMAL.replacen(
            "[gateway]",
            "[gateway]\npage_rate_limit_per_minute = 5\nadmin_rate_limit_per_minute = 7",
            1,
        );
        let s = load(&toml).unwrap();
        assert_eq!(s.gateway.page_rate_limit_per_minute.get(), 5);
        assert_eq!(s.gateway.admin_rate_limit_per_minute.get(), 7);
        for key in ["page_rate_limit_per_minute", "admin_rate_limit_per_minute"] {
            let toml = MINIMAL.replacen("[gateway]", &format!("[gateway]\n{key} = 0"), 1);
            let err = load(&toml).unwrap_err().to_string();
            assert!(
                err.contains(&format!("gateway.{key} must be at least 1")),
                "{err}"
            );
        }
    }
}
