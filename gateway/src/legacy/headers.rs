//! Which headers cross the proxy. Hop-by-hop headers (RFC 9110 §7.6.1)
//! describe one connection, not the message: the gateway's connection to
//! the client and its pooled connection to legacy are different connections,
//! so neither side's hop-by-hop headers may reach the other.

use crate::clients::{CLIENT_TOKEN, ClientClass};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// The gateway's credential at legacy.
pub const GATEWAY_TOKEN: &str = "idbase-gateway-token";
/// The authenticated client's id, for legacy's own logs and limits.
pub const CLIENT_ID: &str = "x-idbase-client";
/// `internal`, `web` or `mobile`.
pub const CLIENT_CLASS: &str = "x-idbase-client-class";
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// Hop-by-hop by definition, whatever `Connection` says.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Other ways a client could claim an address, host or scheme to legacy:
/// only `X-Forwarded-For`, rebuilt by the gateway, says where a request
/// came from.
const CLIENT_CLAIMS: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
];

/// Removes the hop-by-hop headers and every header that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

pub fn class_name(class: ClientClass) -> &'static str {
    match class {
        ClientClass::Internal => "internal",
        ClientClass::Web => "web",
        ClientClass::Mobile => "mobile",
    }
}

/// Makes a client's request headers legacy's: no hop-by-hop headers, no
/// `Client-Token` (the client's secret at idbase, not legacy's business), no
/// `Host` (the connector writes legacy's), and the identity headers set by
/// the gateway alone, so a client cannot smuggle in its own.
pub fn to_legacy(headers: &mut HeaderMap, identity: &Identity<'_>) {
    strip_hop_by_hop(headers);
    headers.remove(CLIENT_TOKEN);
    headers.remove(http::header::HOST);
    for name in CLIENT_CLAIMS {
        headers.remove(*name);
    }
    // The `x-idbase-*` namespace is the gateway's: legacy believes it.
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-idbase-"))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
    headers.insert(GATEWAY_TOKEN, identity.gateway_token.clone());
    match HeaderValue::from_str(identity.client_id) {
        Ok(id) => {
            headers.insert(CLIENT_ID, id);
        }
        // Client ids come from the operator's clients file, never from a request.
        Err(_) => {
            headers.remove(CLIENT_ID);
        }
    }
    headers.insert(
        CLIENT_CLASS,
        HeaderValue::from_static(class_name(identity.client_class)),
    );
    match identity
        .request_id
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        Some(id) => {
            headers.insert(crate::telemetry::REQUEST_ID, id);
        }
        None => {
            headers.remove(crate::telemetry::REQUEST_ID);
        }
    }
    let forwarded = forwarded_for(headers, identity.peer, identity.peer_trusted);
    headers.remove(FORWARDED_FOR);
    if let Some(value) = forwarded.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(FORWARDED_FOR, value);
    }
}

/// Who is asking, as the gateway established it.
pub struct Identity<'a> {
    pub gateway_token: &'a HeaderValue,
    pub client_id: &'a str,
    pub client_class: ClientClass,
    pub request_id: Option<&'a str>,
    /// The TCP peer of the client connection.
    pub peer: Option<std::net::IpAddr>,
    /// Whether the peer is one of our own proxies, whose `X-Forwarded-For`
    /// is believed.
    pub peer_trusted: bool,
}

/// The `X-Forwarded-For` legacy gets: the peer appended to the incoming list
/// when the peer is our proxy, otherwise the peer alone (a client's own list
/// proves nothing and is dropped).
fn forwarded_for(
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
    trusted: bool,
) -> Option<String> {
    let peer = peer?.to_string();
    if !trusted {
        return Some(peer);
    }
    let mut hops: Vec<&str> = headers
        .get_all(FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .collect();
    hops.push(&peer);
    Some(hops.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn connection_named_and_hop_by_hop_headers_go() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Custom-Hop"),
            ("connection", "close"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-authenticate", "Basic"),
            ("proxy-connection", "keep-alive"),
            ("authorization", "Bearer la_1"),
            ("content-type", "application/json"),
        ]);
        strip_hop_by_hop(&mut map);
        let mut left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type"]);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_our_proxies() {
        let map = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9")]);
        let peer = Some("10.0.0.5".parse().unwrap());
        assert_eq!(
            forwarded_for(&map, peer, true).as_deref(),
            Some("1.1.1.1, 203.0.113.9, 10.0.0.5")
        );
        assert_eq!(
            forwarded_for(&map, peer, false).as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(forwarded_for(&map, None, true), None);
    }

    #[test]
    fn identity_headers_are_the_gateways_alone() {
        let mut map = headers(&[
            ("client-token", "secret"),
            ("idbase-gateway-token", "forged"),
            ("x-idbase-client-class", "internal"),
            ("x-request-id", "client-chosen"),
            ("host", "gateway.example"),
            ("x-idbase-member", "42"),
            ("forwarded", "for=192.0.2.1"),
            ("x-real-ip", "192.0.2.1"),
            ("x-forwarded-proto", "http"),
        ]);
        let token = HeaderValue::from_static("gw");
        to_legacy(
            &mut map,
            &Identity {
                gateway_token: &token,
                client_id: "ios-app",
                client_class: ClientClass::Mobile,
                request_id: None,
                peer: None,
                peer_trusted: false,
            },
        );
        assert!(map.get("client-token").is_none());
        assert!(map.get("host").is_none());
        assert!(map.get("x-request-id").is_none());
        for claim in [
            "x-idbase-member",
            "forwarded",
            "x-real-ip",
            "x-forwarded-proto",
        ] {
            assert!(map.get(claim).is_none(), "{claim} reached legacy");
        }
        assert_eq!(map["idbase-gateway-token"], "gw");
        assert_eq!(map["x-idbase-client"], "ios-app");
        assert_eq!(map["x-idbase-client-class"], "mobile");
    }
}
