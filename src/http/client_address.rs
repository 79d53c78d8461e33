//! The address a request comes from, for per-client rate limits. Behind a
//! reverse proxy or an ingress the peer is the proxy, so the client is read
//! from `Forwarded` (RFC 7239) or `X-Forwarded-For`, but only when the peer
//! is a proxy the operator trusts (`SVC_TRUSTED_PROXIES`): anyone else could
//! write any address there and get a fresh bucket with each request.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, header};
use ipnet::IpNet;

/// The client of a request that arrived from `peer` with `headers`.
///
/// From a trusted peer, the hops the proxies recorded are walked from the
/// nearest (rightmost) back; the first one that is not itself a trusted
/// proxy is the client. A hop that is not an address (`unknown`, an
/// obfuscated name) ends the walk at the proxy that recorded it, which is
/// the last address known to be true.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |address: &IpAddr| trusted.iter().any(|net| net.contains(address));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_hops(headers).into_iter().rev() {
        let Some(address) = hop else {
            return client;
        };
        client = address;
        if !is_trusted(&address) {
            return client;
        }
    }
    client
}

/// The `for=` hops of every `Forwarded` header, or failing those the
/// entries of every `X-Forwarded-For` header, in order (client first).
/// `None` marks a hop that is not an address.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<Option<IpAddr>> = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(value.trim().trim_matches('"')))
            })
        })
        .collect();
    if !forwarded.is_empty() {
        return forwarded;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|entry| parse_node(entry.trim()))
        .collect()
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`,
/// `2001:db8::1` or `[2001:db8::1]:4711`.
fn parse_node(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            text.strip_prefix('[')?
                .split(']')
                .next()?
                .parse::<IpAddr>()
                .ok()
        })
}

/// One entry of `SVC_TRUSTED_PROXIES`: an address or a network in CIDR form.
pub fn parse_trusted_proxy(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| "expected an address or a network such as 10.0.0.0/8".into())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn trusted(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|t| parse_trusted_proxy(t).unwrap())
            .collect()
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            client_address(ip("203.0.113.9"), &spoofed, &[]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_address(ip("203.0.113.9"), &spoofed, &trusted(&["10.0.0.0/8"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let via = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(
            client_address(ip("10.1.2.3"), &via, &trusted(&["10.0.0.0/8"])),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn the_walk_stops_at_the_first_untrusted_hop_from_the_right() {
        // The client wrote a fake first hop; the trusted edge proxy appended
        // the address it saw, and an inner trusted proxy the edge's.
        let via = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.5")]);
        assert_eq!(
            client_address(ip("10.0.0.9"), &via, &trusted(&["10.0.0.0/8"])),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_handles_ports_and_ipv6() {
        let via = headers(&[
            (
                "forwarded",
                r#"for="[2001:db8::1]:4711";proto=https, for=192.0.2.60:80"#,
            ),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        assert_eq!(
            client_address(ip("127.0.0.1"), &via, &trusted(&["127.0.0.1"])),
            ip("192.0.2.60")
        );
        let via = headers(&[("forwarded", r#"for="[2001:db8::1]:4711""#)]);
        assert_eq!(
            client_address(ip("127.0.0.1"), &via, &trusted(&["127.0.0.1"])),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn a_hop_that_is_not_an_address_ends_the_walk_at_its_proxy() {
        let via = headers(&[("x-forwarded-for", "198.51.100.7, unknown, 10.0.0.5")]);
        assert_eq!(
            client_address(ip("10.0.0.9"), &via, &trusted(&["10.0.0.0/8"])),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn without_forwarding_headers_the_proxy_is_the_client() {
        assert_eq!(
            client_address(ip("10.0.0.9"), &HeaderMap::new(), &trusted(&["10.0.0.0/8"])),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        assert!(parse_trusted_proxy("10.0.0.0/8").is_ok());
        assert!(parse_trusted_proxy("127.0.0.1").is_ok());
        assert!(parse_trusted_proxy("::1").is_ok());
        assert!(parse_trusted_proxy("proxy.internal").is_err());
    }
}
