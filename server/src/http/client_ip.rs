//! Who the client is: the TCP peer, or — when the peer is a trusted reverse proxy — the right-most
//! address of `X-Forwarded-For` that is not itself a trusted proxy. The failure throttle keys on
//! this address, so a proxy in front of the server does not make every client one.
//!
//! Crash behaviour: stateless; it reads the request and keeps nothing.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use ipnet::IpNet;

use super::{ApiError, AppState};

/// The client address of a request (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|n| n.contains(&ip))
}

/// The client address for a request from `peer` with `headers`. `X-Forwarded-For` is read only
/// when `peer` is a trusted proxy; its entries are walked from the right (the hop nearest the
/// server) and the first one that is not a trusted proxy is the client. An entry that is not an
/// address stops the walk: the proxy that appended it is taken as the client, since nothing to its
/// left can be believed. When every entry is a trusted proxy, the left-most is the client.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted(peer, proxies) {
        return peer;
    }
    let mut client = peer;
    // Several headers are one list, in order.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) else {
            return client;
        };
        client = ip;
        if !trusted(ip, proxies) {
            return ip;
        }
    }
    client
}

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        Ok(ClientIp(resolve(
            peer,
            &parts.headers,
            &state.inner.settings.trusted_proxies,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_forwarded_chain_is_believed_only_from_trusted_proxies() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap(), "::1/128".parse().unwrap()];
        // An untrusted peer's header is ignored.
        let forged = xff(&["203.0.113.9"]);
        assert_eq!(
            resolve(ip("198.51.100.1"), &forged, &proxies),
            ip("198.51.100.1")
        );
        // A trusted peer: the right-most untrusted hop, even when the client forged a left part.
        let chain = xff(&["203.0.113.9, 198.51.100.7, 10.0.0.3"]);
        assert_eq!(
            resolve(ip("10.0.0.2"), &chain, &proxies),
            ip("198.51.100.7")
        );
        // Several headers form one list.
        let split = xff(&["203.0.113.9", "198.51.100.8"]);
        assert_eq!(resolve(ip("::1"), &split, &proxies), ip("198.51.100.8"));
        // No header: the proxy itself; only proxies: the left-most; garbage: the proxy before it.
        assert_eq!(
            resolve(ip("10.0.0.2"), &HeaderMap::new(), &proxies),
            ip("10.0.0.2")
        );
        let all = xff(&["10.0.0.4, 10.0.0.3"]);
        assert_eq!(resolve(ip("10.0.0.2"), &all, &proxies), ip("10.0.0.4"));
        let junk = xff(&["198.51.100.7, unknown, 10.0.0.3"]);
        assert_eq!(resolve(ip("10.0.0.2"), &junk, &proxies), ip("10.0.0.3"));
        // An IPv4 peer seen through an IPv6 socket is the same client.
        assert_eq!(
            resolve(ip("::ffff:198.51.100.1"), &forged, &proxies),
            ip("198.51.100.1")
        );
        // Without trusted proxies nothing is believed.
        assert_eq!(resolve(ip("10.0.0.2"), &chain, &[]), ip("10.0.0.2"));
    }
}
