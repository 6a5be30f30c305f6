//! The WAF through the real router: rules, source address, rate limit on a
//! controlled clock, hot reload.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use gateway::clients::Clients;
use gateway::clock::Clock;
use gateway::edge::Edge;
use gateway::waf::Waf;
use gateway::waf::source_ip::TrustedProxies;
use gateway::{GatewayConfig, router};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const RULES: &str = r#"
[[rule]]
name = "monitors"
action = "allow"
user_agent = ["^kube-probe/"]

[[rule]]
name = "denylist"
action = "block"
ip = ["203.0.113.0/24", "2001:db8:bad::/48", "198.51.100.7"]

[[rule]]
name = "scanners"
action = "block"
user_agent = ["(?i)sqlmap", "(?i)nikto"]

[[rule]]
name = "per-ip"
action = "rate"
limit = 10
window_secs = 60
"#;

struct Setup {
    app: axum::Router,
    waf: Arc<Waf>,
    clock: Clock,
    _dir: tempfile::TempDir,
}

fn setup(rules: &str) -> Setup {
    gateway::telemetry::prometheus();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("waf.toml");
    std::fs::write(&path, rules).unwrap();
    let clock = Clock::manual();
    let waf = Arc::new(Waf::load(&path, clock.clone(), 10_000).unwrap());
    let edge = Edge {
        trusted: TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]),
        waf: Some(waf.clone()),
        anomaly: None,
        registrations: None,
    };
    let app = router(GatewayConfig {
        // Never dialled: /healthz does not call idsvc.
        upstream: gateway::upstream::UpstreamConfig::single("http://127.0.0.1:9".to_owned()),
        clients: Clients::from_tokens([]),
        max_body_bytes: 1024,
        edge,
    })
    .unwrap();
    Setup {
        app,
        waf,
        clock,
        _dir: dir,
    }
}

async fn get(app: &axum::Router, peer: &str, headers: &[(&str, &str)]) -> axum::response::Response {
    let peer: SocketAddr = peer.parse().unwrap();
    let mut request = Request::get("/healthz");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Body::empty()).unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    app.clone().oneshot(request).await.unwrap()
}

async fn status(app: &axum::Router, peer: &str, headers: &[(&str, &str)]) -> StatusCode {
    get(app, peer, headers).await.status()
}

#[tokio::test]
async fn ipv4_and_ipv6_cidrs_and_single_addresses_are_blocked() {
    let s = setup(RULES);
    let blocked = get(&s.app, "203.0.113.77:5000", &[]).await;
    assert_eq!(blocked.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        blocked.headers()["content-type"],
        "application/problem+json"
    );
    let body = axum::body::to_bytes(blocked.into_body(), 4096)
        .await
        .unwrap();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["type"], "urn:idbase:problem:blocked");
    assert_eq!(
        status(&s.app, "198.51.100.7:1", &[]).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(status(&s.app, "198.51.100.8:1", &[]).await, StatusCode::OK);
    assert_eq!(
        status(&s.app, "[2001:db8:bad:1::9]:443", &[]).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&s.app, "[2001:db8:600d::9]:443", &[]).await,
        StatusCode::OK
    );
    // A dual-stack socket's IPv4-mapped form is the IPv4 address.
    assert_eq!(
        status(&s.app, "[::ffff:203.0.113.1]:1", &[]).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&s.app, "192.0.2.1:1", &[("user-agent", "sqlmap/1.7")]).await,
        StatusCode::FORBIDDEN
    );

    // Unknown paths too: a blocked scanner learns nothing about routes.
    for (peer, expected) in [
        ("203.0.113.77:5000", StatusCode::FORBIDDEN),
        ("198.51.100.8:1", StatusCode::NOT_FOUND),
    ] {
        let mut probe = Request::get("/wp-login.php").body(Body::empty()).unwrap();
        probe
            .extensions_mut()
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        assert_eq!(
            s.app.clone().oneshot(probe).await.unwrap().status(),
            expected,
            "{peer}"
        );
    }

    let metrics = gateway::telemetry::prometheus().render();
    assert!(
        metrics.contains(r#"idbase_waf_decisions_total{rule="denylist",action="block"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn user_agent_allow_overrides_a_later_block() {
    let s = setup(RULES);
    let probe = [("user-agent", "kube-probe/1.31")];
    assert_eq!(
        status(&s.app, "203.0.113.5:1", &probe).await,
        StatusCode::OK
    );
    // Only an earlier rule overrides: the allow is not sticky per address.
    assert_eq!(
        status(&s.app, "203.0.113.5:1", &[]).await,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn forwarded_for_cannot_spoof_past_a_block() {
    let s = setup(RULES);
    // An untrusted peer's own header is ignored.
    let spoof = [("x-forwarded-for", "192.0.2.10")];
    assert_eq!(
        status(&s.app, "203.0.113.5:1", &spoof).await,
        StatusCode::FORBIDDEN
    );
    // Behind the ALB, the right-most untrusted hop is the client; entries the
    // client prepended do not help it.
    let prepended = [("x-forwarded-for", "192.0.2.10, 203.0.113.5")];
    assert_eq!(
        status(&s.app, "10.0.0.1:1", &prepended).await,
        StatusCode::FORBIDDEN
    );
    let chained = [("x-forwarded-for", "203.0.113.5, 10.2.3.4")];
    assert_eq!(
        status(&s.app, "10.0.0.1:1", &chained).await,
        StatusCode::FORBIDDEN
    );
    // And a good client behind the ALB passes.
    let good = [("x-forwarded-for", "192.0.2.10")];
    assert_eq!(status(&s.app, "10.0.0.1:1", &good).await, StatusCode::OK);
}

#[tokio::test]
async fn rate_rule_limits_per_source_on_the_controlled_clock() {
    let s = setup(RULES);
    for _ in 0..10 {
        assert_eq!(status(&s.app, "192.0.2.20:1", &[]).await, StatusCode::OK);
    }
    let limited = get(&s.app, "192.0.2.20:1", &[]).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Other addresses have their own count.
    assert_eq!(status(&s.app, "192.0.2.21:1", &[]).await, StatusCode::OK);
    // Two windows later the count has slid out.
    s.clock.advance(Duration::from_secs(120));
    assert_eq!(status(&s.app, "192.0.2.20:1", &[]).await, StatusCode::OK);
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn a_good_file_reloads_and_a_broken_one_keeps_the_previous_rules() {
    let s = setup(RULES);
    let path = s._dir.path().join("waf.toml");
    assert!(!s.waf.check_for_change().unwrap(), "unchanged file");
    write(
        &path,
        "[[rule]]\nname = \"new-denylist\"\naction = \"block\"\nip = [\"192.0.2.0/24\"]\n",
    );
    assert!(s.waf.check_for_change().unwrap());
    assert_eq!(status(&s.app, "203.0.113.5:1", &[]).await, StatusCode::OK);
    assert_eq!(
        status(&s.app, "192.0.2.9:1", &[]).await,
        StatusCode::FORBIDDEN
    );

    for broken in [
        "[[rule]\nname = ",
        "[[rule]]\nname = \"r\"\naction = \"block\"\nip = [\"300.1.1.1\"]\n",
        "[[rule]]\nname = \"r\"\naction = \"rate\"\nlimit = 5\n",
        "[[rule]]\nname = \"r\"\naction = \"rate\"\nlimit = 100\nwindow_secs = 30\n",
        "[[rule]]\nname = \"r\"\naction = \"block\"\nuser_agent = [\"(unclosed\"]\n",
    ] {
        write(&path, broken);
        let error = s.waf.check_for_change().unwrap_err();
        assert!(format!("{error:#}").contains("waf.toml"), "{error:#}");
        assert_eq!(
            status(&s.app, "192.0.2.9:1", &[]).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(status(&s.app, "203.0.113.5:1", &[]).await, StatusCode::OK);
    }
}

#[tokio::test]
async fn rate_state_is_bounded_under_a_flood_of_distinct_addresses() {
    gateway::telemetry::prometheus();
    let rules = gateway::waf::rules::RuleSet::parse(
        "[[rule]]\nname = \"r\"\naction = \"rate\"\nlimit = 100\n",
        |_, _| Arc::new(gateway::waf::rules::RateState::new(300, 50_000)),
    )
    .unwrap();
    for i in 0..1_000_000u32 {
        let ip = std::net::IpAddr::from(i.to_be_bytes());
        rules.evaluate(ip, ip, "", 0);
    }
    let tracked: usize = rules.rate_rules().map(|(_, _, s)| s.tracked()).sum();
    assert!(tracked <= 50_000 + 64, "{tracked}");
}

#[tokio::test]
async fn addresses_in_one_ipv6_64_share_a_rate_counter() {
    let s = setup(RULES);
    // Ten requests (the limit) spread over ten addresses of one /64.
    for i in 1..=10 {
        let peer = format!("[2001:db8:1:2::{i:x}]:443");
        assert_eq!(status(&s.app, &peer, &[]).await, StatusCode::OK, "{peer}");
    }
    assert_eq!(
        status(&s.app, "[2001:db8:1:2:ffff::1]:443", &[]).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The neighbouring /64 has a counter of its own.
    assert_eq!(
        status(&s.app, "[2001:db8:1:3::1]:443", &[]).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_flood_of_fresh_addresses_does_not_reset_a_busy_counter() {
    gateway::telemetry::prometheus();
    let rules = gateway::waf::rules::RuleSet::parse(
        "[[rule]]\nname = \"r\"\naction = \"rate\"\nlimit = 100\n",
        |_, _| Arc::new(gateway::waf::rules::RateState::new(300, 1_000)),
    )
    .unwrap();
    let limited = |d: &gateway::waf::rules::Decision| {
        matches!(d, gateway::waf::rules::Decision::RateLimited { .. })
    };
    let busy: std::net::IpAddr = "192.0.2.66".parse().unwrap();
    for _ in 0..100 {
        assert!(!limited(&rules.evaluate(busy, busy, "", 0)));
    }
    for i in 0..200_000u32 {
        let fresh = std::net::IpAddr::from((0x0a00_0000 + i).to_be_bytes());
        rules.evaluate(fresh, fresh, "", 1_000);
    }
    assert!(
        limited(&rules.evaluate(busy, busy, "", 2_000)),
        "the flood reset the busy address's counter"
    );
}

/// Registration is under a per-source rate rule by default, WAF file or not:
/// the 11th `POST /v1/users` from one address within a minute gets 429 with
/// Retry-After; another address, and the same one a minute later, pass.
#[tokio::test]
async fn the_eleventh_registration_from_one_address_in_a_minute_is_refused() {
    gateway::telemetry::prometheus();
    let clock = Clock::manual();
    let edge = Edge {
        registrations: gateway::waf::registration::RegistrationLimit::new(
            gateway::waf::registration::DEFAULT_REGISTRATIONS_PER_MINUTE,
            64,
            clock.clone(),
        ),
        ..Edge::default()
    };
    let app = router(GatewayConfig {
        // Never answers: registrations that pass the rule end in 502/503.
        upstream: gateway::upstream::UpstreamConfig::single("http://127.0.0.1:9".to_owned()),
        clients: Clients::from_tokens([("web", gateway::clients::ClientClass::Web, "web-token")]),
        max_body_bytes: 1024,
        edge,
    })
    .unwrap();
    let register = |peer: &str| {
        let peer: SocketAddr = peer.parse().unwrap();
        let mut request = Request::post("/v1/users")
            .header("client-token", "web-token")
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"email":"a@example.com","password":"correct horse battery"}"#,
            ))
            .unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    };
    for n in 1..=10 {
        let response = register("192.0.2.10:4000").await.unwrap();
        assert_ne!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "registration {n}"
        );
    }
    let refused = register("192.0.2.10:4001").await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_ne!(
        register("192.0.2.11:4000").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.advance(Duration::from_secs(120));
    assert_ne!(
        register("192.0.2.10:4000").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}
