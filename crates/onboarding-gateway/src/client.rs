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

/// Properties of [`client_address`], the reader of `X-Forwarded-For`.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    /// A trusted proxy network, and an address in it.
    fn proxy() -> impl Strategy<Value = (ipnet::IpNet, IpAddr)> {
        (ip(), 0u8..=32).prop_map(|(ip, bits)| {
            let prefix = match ip {
                IpAddr::V4(_) => bits,
                IpAddr::V6(_) => bits * 4,
            };
            let net = ipnet::IpNet::new(ip, prefix).unwrap().trunc();
            (net, ip)
        })
    }

    proptest! {
        #[test]
        fn any_header_gives_the_peer_or_an_address_the_header_names(
            peer in ip(),
            header in "[0-9a-fA-F.:, \t\\[\\]%x-]{0,80}",
            trusted in prop::collection::vec(proxy(), 0..3),
        ) {
            let nets: Vec<ipnet::IpNet> = trusted.iter().map(|(n, _)| *n).collect();
            let client = client_address(Some(SocketAddr::new(peer, 443)), &header, &nets).unwrap();
            let named: Vec<IpAddr> = header.split(',').filter_map(|h| h.trim().parse().ok()).collect();
            prop_assert!(client == peer || named.contains(&client));
            // Only a trusted peer's header is read at all.
            if !nets.iter().any(|n| n.contains(&peer)) {
                prop_assert_eq!(client, peer);
            }
        }

        #[test]
        fn behind_trusted_proxies_a_client_cannot_choose_its_own_address(
            (net, proxy_ip) in proxy(),
            real in ip(),
            spoofed in prop::collection::vec(ip(), 0..4),
            junk in "[ -~]{0,20}",
            hops in 0usize..3,
        ) {
            prop_assume!(!net.contains(&real));
            // What the client sent, then what the proxies appended: the address they saw and
            // their own addresses.
            let mut list: Vec<String> = spoofed.iter().map(IpAddr::to_string).collect();
            list.push(junk.replace(',', ""));
            list.push(real.to_string());
            list.extend(std::iter::repeat_n(proxy_ip.to_string(), hops));
            let header = list.join(", ");
            let client = client_address(Some(SocketAddr::new(proxy_ip, 443)), &header, &[net]).unwrap();
            prop_assert_eq!(client, real);
        }

        #[test]
        fn a_list_of_addresses_reads_back_hop_by_hop(
            chain in prop::collection::vec(ip(), 1..6),
        ) {
            // Every hop trusted: the walk goes to the leftmost address.
            let all: Vec<ipnet::IpNet> = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
            let header = chain.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(",");
            let client = client_address(Some(SocketAddr::new(chain[0], 1)), &header, &all).unwrap();
            prop_assert_eq!(client, chain[0]);
        }
    }
}
