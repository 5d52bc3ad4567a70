//! `[gateway]`: the HTTP server, its public address, the admin tokens and the public endpoints'
//! limits.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer, Serialize};

use crate::limits;
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
    /// Reverse proxies (`10.0.0.5`) or their networks (`10.0.0.0/8`) whose `X-Forwarded-For`
    /// names the client; an address is a network of one. Empty (the default): the TCP peer is
    /// the client and the header is ignored.
    #[serde(default, deserialize_with = "trusted_proxies")]
    pub trusted_proxies: Vec<IpNet>,
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
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Invite, Scope::Read, Scope::Revoke];

    /// The scope's name in `gateway.admin_tokens[].scopes` and in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Invite => "invite",
            Scope::Read => "read",
            Scope::Revoke => "revoke",
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
    /// What the token may do; all scopes when the file does not say.
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
    /// `invite` (create, resend), `read` (show, list), `revoke`.
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    revoked: bool,
}

impl TryFrom<AdminTokenFile> for AdminToken {
    type Error = String;

    fn try_from(file: AdminTokenFile) -> Result<Self, String> {
        let scopes = match file.scopes {
            None => Scope::ALL.to_vec(),
            Some(names) => names
                .iter()
                .map(|name| {
                    Scope::ALL
                        .into_iter()
                        .find(|s| s.as_str() == name)
                        .ok_or_else(|| {
                            format!(
                                "gateway.admin_tokens `{}`: unknown scope `{name}`; use invite, read or revoke",
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
}

impl Default for GatewayDefaults {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 16384,
            public_rate_limit_per_minute: limits::nonzero_u32(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::*;

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
}
