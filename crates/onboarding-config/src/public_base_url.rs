//! `gateway.public_base_url`, parsed once: the links in mails and the SCIM locations are built
//! from it, and a form post's `Origin` is compared with its origin.

use std::fmt;

use serde::Deserialize;

/// The address users reach the gateway at (`https://id.pickup.example`, perhaps with a path),
/// without a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PublicBaseUrl {
    base: String,
    /// Where scheme, host and port end in `base`.
    origin_len: usize,
}

impl PublicBaseUrl {
    /// `https://…`, or `http://…` for local use; trailing slashes are dropped.
    pub fn parse(url: &str) -> Result<Self, NotHttp> {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or(NotHttp)?;
        let base = url.trim_end_matches('/').to_owned();
        let scheme_len = url.len() - rest.len();
        let origin_len = base[scheme_len.min(base.len())..]
            .find('/')
            .map_or(base.len(), |i| scheme_len + i);
        Ok(Self { base, origin_len })
    }

    /// Scheme, host and port: what a browser sends as `Origin` from our pages.
    pub fn origin(&self) -> &str {
        &self.base[..self.origin_len]
    }

    /// `path` (which starts with `/`) under the base, with `query`'s pairs percent-encoded.
    pub fn link(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut link = format!("{}{path}", self.base);
        for (i, (name, value)) in query.iter().enumerate() {
            link.push(if i == 0 { '?' } else { '&' });
            link.push_str(&urlencoding::encode(name));
            link.push('=');
            link.push_str(&urlencoding::encode(value));
        }
        link
    }

    pub fn as_str(&self) -> &str {
        &self.base
    }
}

impl fmt::Display for PublicBaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

/// A public base URL that is not an HTTP(S) address.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("gateway.public_base_url must start with https:// (or http:// for local use)")]
pub struct NotHttp;

impl TryFrom<String> for PublicBaseUrl {
    type Error = NotHttp;

    fn try_from(url: String) -> Result<Self, NotHttp> {
        Self::parse(&url)
    }
}

#[cfg(test)]
mod tests {
    use super::PublicBaseUrl;

    #[test]
    fn the_origin_is_scheme_host_and_port_and_links_go_under_the_path() {
        let url = PublicBaseUrl::parse("https://id.pickup.example:8443/onboard/").unwrap();
        assert_eq!(url.as_str(), "https://id.pickup.example:8443/onboard");
        assert_eq!(url.origin(), "https://id.pickup.example:8443");
        assert_eq!(
            url.link("/confirm", &[("code", "aB-_9")]),
            "https://id.pickup.example:8443/onboard/confirm?code=aB-_9"
        );
        assert_eq!(
            url.link("/scim2", &[]),
            "https://id.pickup.example:8443/onboard/scim2"
        );
        let bare = PublicBaseUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(bare.origin(), "http://127.0.0.1:8080");
        assert_eq!(
            bare.link("/x", &[("a", "1 2"), ("b", "&")]),
            "http://127.0.0.1:8080/x?a=1%202&b=%26"
        );
        assert!(PublicBaseUrl::parse("id.pickup.example").is_err());
    }
}
