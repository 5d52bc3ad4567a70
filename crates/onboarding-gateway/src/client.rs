//! Who the client of a request is: its TCP peer or, behind trusted reverse proxies, the address
//! they name in `X-Forwarded-For`. The per-client limits count by it.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use warp::Filter;

use crate::throttle::ClientKey;
use crate::AppState;

/// The client of a request: its TCP peer or, when the peer is one of `trusted` proxies, the
/// nearest address in `X-Forwarded-For` that is not a trusted proxy. Reading from the right
/// means a client cannot choose its own address by sending the header: what it sends lands to
/// the left of what the proxy appends. An unreadable entry ends the walk.
pub(crate) fn client_address(
    peer: Option<SocketAddr>,
    forwarded_for: &str,
    trusted: &[ipnet::IpNet],
) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer?.ip();
    if !is_trusted(&client) || forwarded_for.trim().is_empty() {
        return Some(client);
    }
    for hop in forwarded_for.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

/// The request's client (see [`client_address`]) as the per-client limits count it.
pub(crate) fn client(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Option<ClientKey>,), Error = Infallible> + Clone {
    crate::connections::peer()
        .and(warp::header::headers_cloned())
        .map(move |peer, headers: warp::http::HeaderMap| {
            let forwarded_for: Vec<&str> = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            state.throttles.client(peer, &forwarded_for.join(","))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn client_of(peer: &str, forwarded_for: &str, trusted: &[&str]) -> String {
        let peer = SocketAddr::new(peer.parse().unwrap(), 40000);
        client_address(Some(peer), forwarded_for, &nets(trusted))
            .unwrap()
            .to_string()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(
            client_of("198.51.100.7", "203.0.113.9", &[]),
            "198.51.100.7"
        );
        assert_eq!(
            client_of("198.51.100.7", "203.0.113.9", &["10.0.0.0/8"]),
            "198.51.100.7"
        );
    }

    #[test]
    fn behind_trusted_proxies_the_nearest_untrusted_hop_is_the_client() {
        let trusted = ["10.0.0.0/8", "192.0.2.10/32"];
        // The proxy appended the address it saw; what the client sent stays to its left.
        assert_eq!(
            client_of("10.0.0.2", "1.2.3.4, 203.0.113.9", &trusted),
            "203.0.113.9"
        );
        // Two proxies in a row: skip both.
        assert_eq!(
            client_of("10.0.0.2", "203.0.113.9, 192.0.2.10", &trusted),
            "203.0.113.9"
        );
        // Several headers count as one list, in order.
        assert_eq!(
            client_of("10.0.0.2", "203.0.113.9,10.9.9.9", &trusted),
            "203.0.113.9"
        );
        // Only proxies: the leftmost. No header: the peer.
        assert_eq!(
            client_of("10.0.0.2", "10.1.1.1, 10.2.2.2", &trusted),
            "10.1.1.1"
        );
        assert_eq!(client_of("10.0.0.2", "", &trusted), "10.0.0.2");
        // An unreadable hop ends the walk at the last proxy that was read.
        assert_eq!(
            client_of("10.0.0.2", "203.0.113.9, unknown", &trusted),
            "10.0.0.2"
        );
        assert_eq!(client_of("::1", "2001:db8::5", &["::1/128"]), "2001:db8::5");
    }
}
