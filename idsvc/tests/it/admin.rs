//! The Admin service over a real gRPC connection on loopback: who am I by
//! role, member support (masked lookup, reveal and revocation, each with a
//! reason, each audited with the caller's name and the member), and the
//! event tail (filters on the server, resumable from a cursor).

use crate::harness::{Backend, Harness};
use crate::phases::{ALICE, EVE, GATEWAY_TOKEN, SAM, as_, report, serve};
use idbase_proto::v1 as pb;
use idbase_proto::v1::admin_client::AdminClient;
use idbase_proto::v1::lookup_user_request::Key;
use idsvc::domain::{Clock, LegacyUser, Store, SystemClock};
use std::time::Duration;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

const PASSWORD: &str = "correct horse battery";

on_both_backends!(
    each_role_is_told_what_it_may_call,
    support_sees_members_masked_reveals_and_revokes_with_a_reason_and_is_audited,
    the_event_tail_filters_on_the_server_and_resumes_from_its_cursor,
    the_fleet_traffic_adds_up_what_every_gateway_reports,
);

async fn client(h: &Harness, shutdown: &CancellationToken) -> AdminClient<Channel> {
    let url = serve(h, None, shutdown).await;
    for _ in 0..50 {
        if let Ok(channel) = Channel::from_shared(url.clone()).unwrap().connect().await {
            return AdminClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{url} never answered");
}

fn lookup(key: Key, reason: &str) -> pb::LookupUserRequest {
    pb::LookupUserRequest {
        key: Some(key),
        reason: reason.to_owned(),
    }
}

async fn each_role_is_told_what_it_may_call(backend: Backend) {
    let h = Harness::new(backend).await;
    let shutdown = CancellationToken::new();
    let mut c = client(&h, &shutdown).await;
    let who = |token| as_(token, pb::WhoAmIRequest {});
    let eve = c.who_am_i(who(EVE)).await.unwrap().into_inner();
    assert_eq!((eve.name.as_str(), eve.role.as_str()), ("eve", "viewer"));
    assert!(eve.may_call.contains(&"Admin.TailEvents".to_owned()));
    assert!(eve.may_call.contains(&"Phases.CheckPhase".to_owned()));
    assert!(!eve.may_call.contains(&"Admin.LookupUser".to_owned()));
    assert!(!eve.may_call.contains(&"Phases.SetPhase".to_owned()));
    assert!(!eve.pod.is_empty());
    let sam = c.who_am_i(who(SAM)).await.unwrap().into_inner();
    assert_eq!(sam.role, "support");
    assert!(sam.may_call.contains(&"Admin.RevealUser".to_owned()));
    assert!(!sam.may_call.contains(&"Phases.SetPhase".to_owned()));
    let alice = c.who_am_i(who(ALICE)).await.unwrap().into_inner();
    assert_eq!(alice.role, "operator");
    assert!(alice.may_call.contains(&"Phases.SetPhase".to_owned()));
    assert!(alice.may_call.contains(&"Admin.RevokeSessions".to_owned()));
    assert!(!alice.may_call.contains(&"Phases.ReportPhase".to_owned()));
    assert_eq!(alice.expires_at, None);
    let refused = c
        .who_am_i(tonic::Request::new(pb::WhoAmIRequest {}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    shutdown.cancel();
}

async fn support_sees_members_masked_reveals_and_revokes_with_a_reason_and_is_audited(
    backend: Backend,
) {
    let h = Harness::new(backend).await;
    let shutdown = CancellationToken::new();
    let mut c = client(&h, &shutdown).await;
    let member = h
        .service
        .register("hanako.yamada@example.com", PASSWORD, Some("090-1234-5678"))
        .await
        .unwrap();
    let web = h
        .service
        .login_from("hanako.yamada@example.com", PASSWORD, None, "web-shop")
        .await
        .unwrap();
    let mobile = h
        .service
        .login_from("hanako.yamada@example.com", PASSWORD, None, "mobile-app")
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(60));
    let mobile = h.service.refresh(&mobile.refresh_token).await.unwrap();

    // By email in any form a member could log in with: masked, with sessions.
    let found = c
        .lookup_user(as_(
            SAM,
            lookup(
                Key::Email(" Hanako.Yamada@EXAMPLE.com".into()),
                "ticket 4711",
            ),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.member_id, member.id);
    assert_eq!(found.email_masked, "h****@example.com");
    assert_eq!(found.phone_masked, "+81 ** **** **78");
    assert!(found.tombstone.is_none());
    let mut clients: Vec<_> = found.sessions.iter().map(|s| s.client.as_str()).collect();
    clients.sort_unstable();
    assert_eq!(clients, ["mobile-app", "web-shop"]);
    let refreshed = found
        .sessions
        .iter()
        .find(|s| s.client == "mobile-app")
        .unwrap();
    assert_eq!(
        refreshed.last_used_at,
        Some(refreshed.created_at + 60_000),
        "the refresh is its last use"
    );
    let web_session = found.sessions.iter().find(|s| s.client == "web-shop");
    assert_eq!(web_session.unwrap().last_used_at, None);
    assert!(found.others_with_phone.is_empty());
    let text = format!("{found:?}");
    assert!(!text.contains("hanako.yamada") && !text.contains("12345678"));

    // By phone, typed any way: members may share a number (a double write
    // stores its index like a registration does).
    let (_, sharing) = h
        .service
        .upsert_legacy(LegacyUser {
            id: 77,
            email: "taro@example.com".into(),
            phone: Some("+81 90 1234 5678".into()),
            password_hash: idsvc::crypto::PasswordParams::CHEAP.hash(PASSWORD).unwrap(),
            version: 1,
        })
        .await
        .unwrap();
    assert!(sharing >= 1);
    let by_phone = c
        .lookup_user(as_(
            SAM,
            lookup(Key::Phone("09012345678".into()), "ticket 4712"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_phone.member_id, member.id, "the lowest id first");
    assert_eq!(by_phone.others_with_phone, [77]);
    let bad_phone = c
        .lookup_user(as_(SAM, lookup(Key::Phone("12".into()), "t")))
        .await
        .unwrap_err();
    assert_eq!(bad_phone.code(), Code::InvalidArgument);

    // Who may not, what is refused, and what is not there.
    let as_viewer = c
        .lookup_user(as_(EVE, lookup(Key::MemberId(member.id), "curious")))
        .await
        .unwrap_err();
    assert_eq!(as_viewer.code(), Code::PermissionDenied);
    let no_reason = c
        .lookup_user(as_(SAM, lookup(Key::MemberId(member.id), "  ")))
        .await
        .unwrap_err();
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    let unknown = c
        .lookup_user(as_(
            SAM,
            lookup(Key::Email("nobody@example.com".into()), "t"),
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let bad_id = c
        .lookup_user(as_(SAM, lookup(Key::MemberId(-3), "t")))
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);

    // Reveal: only with a reason.
    let reveal = |reason: &str| {
        as_(
            SAM,
            pb::RevealUserRequest {
                member_id: member.id,
                reason: reason.to_owned(),
            },
        )
    };
    let refused = c.reveal_user(reveal("")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let revealed = c
        .reveal_user(reveal("member asked which address we hold"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revealed.email, "hanako.yamada@example.com");
    assert_eq!(revealed.phone, "+819012345678");

    // Revoke one session, then the rest.
    let revoke = |session: &str| {
        as_(
            ALICE,
            pb::RevokeSessionsRequest {
                member_id: member.id,
                session_id: session.to_owned(),
                reason: "lost phone".to_owned(),
            },
        )
    };
    let one = c.revoke_sessions(revoke(&refreshed.id)).await.unwrap();
    assert_eq!(one.into_inner().revoked, 1);
    assert!(h.service.refresh(&mobile.refresh_token).await.is_err());
    let again = c.revoke_sessions(revoke(&refreshed.id)).await.unwrap();
    assert_eq!(again.into_inner().revoked, 0);
    let rest = c.revoke_sessions(revoke("")).await.unwrap();
    assert_eq!(rest.into_inner().revoked, 1);
    assert!(h.service.refresh(&web.refresh_token).await.is_err());
    let after = c
        .lookup_user(as_(SAM, lookup(Key::MemberId(member.id), "check")))
        .await
        .unwrap()
        .into_inner();
    assert!(after.sessions.is_empty());

    // A withdrawn member: the tombstone, and nothing else of them.
    let now = h.clock.now_ms();
    assert!(
        h.store
            .delete_user(member.id, i64::MAX - 1, now)
            .await
            .unwrap()
    );
    let gone = c
        .lookup_user(as_(SAM, lookup(Key::MemberId(member.id), "check")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.tombstone.unwrap().version, i64::MAX - 1);
    assert!(gone.email_masked.is_empty() && gone.phone_masked.is_empty());

    // Every call in the audit trail: who, what, the member and the reason.
    let audit = h.store.security_events(100).await.unwrap();
    let audited = |detail: &str, member_id: Option<i64>| {
        audit
            .iter()
            .any(|e| e.kind == "admin_call" && e.detail == detail && e.user_id == member_id)
    };
    let id = Some(member.id);
    for (detail, member_id) in [
        ("who=sam rpc=LookupUser outcome=ok reason=ticket 4711", id),
        ("who=eve rpc=LookupUser outcome=PermissionDenied", None),
        (
            "who=sam rpc=LookupUser outcome=InvalidArgument reason=",
            None,
        ),
        ("who=sam rpc=LookupUser outcome=NotFound reason=t", None),
        ("who=sam rpc=RevealUser outcome=InvalidArgument reason=", id),
        (
            "who=sam rpc=RevealUser outcome=ok reason=member asked which address we hold",
            id,
        ),
        (
            "who=alice rpc=RevokeSessions outcome=ok reason=lost phone",
            id,
        ),
    ] {
        assert!(audited(detail, member_id), "{detail}: {audit:#?}");
    }
    let trail = format!("{audit:?}");
    assert!(!trail.contains("hanako.yamada") && !trail.contains("12345678"));
    shutdown.cancel();
}

async fn the_event_tail_filters_on_the_server_and_resumes_from_its_cursor(backend: Backend) {
    let h = Harness::new(backend).await;
    let shutdown = CancellationToken::new();
    let mut c = client(&h, &shutdown).await;
    let record = |kind: &'static str, detail: String| {
        let store = h.store.clone();
        async move {
            store
                .record_security_event(kind, Some(7), &detail, SystemClock.now_ms())
                .await
                .unwrap();
        }
    };
    for i in 0..30 {
        record("login_anomaly", format!("burst {i}")).await;
        record("migration_purge", format!("job {i}")).await;
    }
    let tail = |after: Option<u64>, follow: bool, min_level: &str, text: &str| {
        as_(
            EVE,
            pb::TailEventsRequest {
                after,
                backlog: 5,
                follow,
                kinds: vec![],
                min_level: min_level.to_owned(),
                text: text.to_owned(),
                logs: false,
            },
        )
    };
    let details = |events: &[pb::AdminEvent]| -> Vec<String> {
        events.iter().map(|e| e.detail.clone()).collect()
    };

    // The backlog: the newest that match, oldest first, filtered on the server.
    let mut stream = c
        .tail_events(tail(None, false, "warn", ""))
        .await
        .unwrap()
        .into_inner();
    let mut backlog = Vec::new();
    while let Some(message) = stream.next().await {
        backlog.extend(message.unwrap().events);
    }
    assert_eq!(
        details(&backlog),
        ["burst 25", "burst 26", "burst 27", "burst 28", "burst 29"]
    );
    assert!(
        backlog
            .iter()
            .all(|e| e.level == "warn" && e.kind == "login_anomaly")
    );
    assert!(backlog.windows(2).all(|w| w[0].cursor < w[1].cursor));
    let mut stream = c
        .tail_events(tail(None, false, "", "JOB 1"))
        .await
        .unwrap()
        .into_inner();
    let mut texts = Vec::new();
    while let Some(message) = stream.next().await {
        texts.extend(details(&message.unwrap().events));
    }
    assert_eq!(
        texts,
        ["job 15", "job 16", "job 17", "job 18", "job 19"][..]
    );

    // Following: new events arrive; after a reconnect from the last cursor,
    // the ones in between arrive once, and nothing before them again.
    let mut stream = c
        .tail_events(tail(None, true, "", "burst"))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap().events;
    assert_eq!(first.len(), 5);
    record("login_anomaly", "burst live".into()).await;
    let live = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .events;
    assert_eq!(details(&live), ["burst live"]);
    let cursor = live[0].cursor;
    drop(stream);
    record("login_anomaly", "burst missed 1".into()).await;
    record("migration_purge", "job missed".into()).await;
    record("login_anomaly", "burst missed 2".into()).await;
    let mut stream = c
        .tail_events(tail(Some(cursor), true, "", "burst"))
        .await
        .unwrap()
        .into_inner();
    let resumed = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .events;
    assert_eq!(details(&resumed), ["burst missed 1", "burst missed 2"]);

    // Bad filters are the caller's error.
    for (min_level, text) in [("loud", ""), ("", &"x".repeat(201)[..])] {
        let refused = c
            .tail_events(tail(None, false, min_level, text))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
    }
    shutdown.cancel();
}

async fn the_fleet_traffic_adds_up_what_every_gateway_reports(backend: Backend) {
    use idbase_proto::v1::phases_client::PhasesClient;
    let h = Harness::new(backend).await;
    let shutdown = CancellationToken::new();
    let url = serve(&h, None, &shutdown).await;
    let mut c = client(&h, &shutdown).await;
    let mut phases = PhasesClient::new(Channel::from_shared(url).unwrap().connect().await.unwrap());
    let tally = |side: &str, ok, server_error, buckets: Vec<u64>| pb::TrafficTally {
        side: side.into(),
        kind: "read".into(),
        ok,
        server_error,
        latency_buckets: buckets,
        ..Default::default()
    };
    // Two gateways: 200 idbase reads, 99% within 10 ms; a few legacy 5xx.
    for (gateway, idbase_fast, idbase_slow) in [("gw-1", 100, 0), ("gw-2", 98, 2)] {
        let mut heartbeat = report(gateway, 1, 0);
        heartbeat.traffic = vec![
            tally(
                "idbase",
                100,
                0,
                vec![0, 0, 0, idbase_fast, 0, 0, idbase_slow],
            ),
            tally("legacy", 7, 3, vec![0, 0, 0, 0, 10]),
        ];
        phases
            .report_phase(as_(GATEWAY_TOKEN, heartbeat))
            .await
            .unwrap();
    }
    let mut bad = report("gw-3", 1, 0);
    bad.traffic = vec![tally("mainframe", 1, 0, vec![])];
    let refused = phases
        .report_phase(as_(GATEWAY_TOKEN, bad))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    let request = || pb::FleetTrafficRequest {
        window_s: 60,
        step_s: 10,
    };
    // Written each second by the replica that received them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let fleet = loop {
        let fleet = c
            .fleet_traffic(as_(EVE, request()))
            .await
            .unwrap()
            .into_inner();
        let requests: u64 = fleet
            .series
            .iter()
            .flat_map(|s| &s.points)
            .map(|p| p.requests)
            .sum();
        if requests == 220 {
            break fleet;
        }
        assert!(std::time::Instant::now() < deadline, "{fleet:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(fleet.step_s, 10);
    assert_eq!(fleet.latency_bounds_ms[..4], [1, 2, 5, 10]);
    let total = |side: &str| {
        let series = fleet.series.iter().find(|s| s.side == side).unwrap();
        assert_eq!(series.points.len(), 6);
        let mut requests = 0;
        let mut errors = 0;
        let mut p99 = None;
        for point in &series.points {
            requests += point.requests;
            errors += point.server_error;
            p99 = p99.or(point.p99_ms);
        }
        (requests, errors, p99)
    };
    assert_eq!(total("idbase"), (200, 0, Some(10)));
    assert_eq!(total("legacy"), (20, 6, Some(20)));
    let bad_step = c
        .fleet_traffic(as_(
            EVE,
            pb::FleetTrafficRequest {
                window_s: 60,
                step_s: 1,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_step.code(), Code::InvalidArgument);
    shutdown.cancel();
}
