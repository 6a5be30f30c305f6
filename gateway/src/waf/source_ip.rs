//! The client's address: the TCP peer, unless the peer is one of our own
//! proxies (the ALB), in which case the right-most `X-Forwarded-For` entry
//! that is not one of our proxies. Entries left of that were written by
//! the client and prove nothing, so a client cannot spoof its way past a block.

use axum::http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;
use std::str::FromStr;

/// The request's source address as the gateway decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceIp(pub IpAddr);

/// CIDRs of the proxies in front of the gateway.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(IpNet::aggregate(&nets))
    }

    /// Whether `ip` is one of our proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn source_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut source = peer;
        // All X-Forwarded-For headers form one list, the right-most hop last.
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            // Garbage stops the walk: the last trusted hop is all we know.
            let Some(ip) = parse_hop(hop.trim()) else {
                break;
            };
            source = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        source
    }
}

/// IPv4-mapped IPv6 peers (dual-stack sockets) are their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// `1.2.3.4`, `2001:db8::1`, and the port-carrying forms some proxies write.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(hop) {
        return Some(canonical(ip));
    }
    std::net::SocketAddr::from_str(hop)
        .ok()
        .map(|addr| canonical(addr.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    fn alb() -> TrustedProxies {
        TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()])
    }

    #[test]
    fn untrusted_peer_is_the_source_whatever_it_claims() {
        let ip = alb().source_ip("198.51.100.7".parse().unwrap(), &xff(&["1.1.1.1"]));
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn right_most_untrusted_hop_wins_over_spoofed_left_entries() {
        let headers = xff(&["1.1.1.1, 203.0.113.9", "10.1.2.3"]);
        let ip = alb().source_ip("10.0.0.5".parse().unwrap(), &headers);
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_stops_at_the_last_trusted_hop() {
        let headers = xff(&["203.0.113.9, nonsense, 10.9.9.9"]);
        let ip = alb().source_ip("10.0.0.5".parse().unwrap(), &headers);
        assert_eq!(ip, "10.9.9.9".parse::<IpAddr>().unwrap());
        let ip = alb().source_ip("10.0.0.5".parse().unwrap(), &HeaderMap::new());
        assert_eq!(ip, "10.0.0.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn mapped_ipv4_and_ports_are_normalised() {
        let headers = xff(&["[2001:db8::1]:443"]);
        let ip = alb().source_ip("::ffff:10.0.0.5".parse().unwrap(), &headers);
        assert_eq!(ip, "2001:db8::1".parse::<IpAddr>().unwrap());
    }
}
