//! The routing matrix: every phase 0→5 (walked forward, weight 100), every
//! client class, every route and token origin; each answer's side (legacy
//! marks its answers `Legacy-Served: true`) and status against the rules of
//! the cutover design ("Routing").

use super::{Answer, Api, Class, Session, Side, start};
use e2e::cutover::{seeded_email, seeded_password};
use serde_json::json;
use std::collections::HashMap;

/// What a request should get: the side and one of the statuses, and for the
/// gateway's own refusals the problem type.
#[derive(Debug)]
struct Expect {
    side: Side,
    statuses: &'static [u16],
    problem: Option<&'static str>,
}

const fn on(side: Side, statuses: &'static [u16]) -> Expect {
    Expect {
        side,
        statuses,
        problem: None,
    }
}

const fn refused(statuses: &'static [u16], problem: &'static str) -> Expect {
    Expect {
        side: Side::Idbase,
        statuses,
        problem: Some(problem),
    }
}

use Side::{Idbase, Legacy};

/// Login: legacy in 0–1; in 2 internal clients idbase, the others legacy;
/// idbase from 3.
fn login_side(phase: u32, class: Class) -> Side {
    if phase >= 3 || (phase == 2 && class == Class::Internal) {
        Idbase
    } else {
        Legacy
    }
}

/// Reads of `me` follow the login rule; writes move in phase 4.
fn write_side(phase: u32) -> Side {
    if phase >= 4 { Idbase } else { Legacy }
}

/// Seeded legacy members, handed out one by one (each used for one purpose).
struct Members {
    next: i64,
}

impl Members {
    fn take(&mut self) -> (String, String) {
        self.next += 1;
        assert!(
            self.next <= i64::from(super::SEEDED),
            "out of seeded members"
        );
        (seeded_email(self.next), seeded_password(self.next))
    }
}

/// Sessions of one member for one (phase, class) cell.
struct Cell {
    password: String,
    me: Session,
    refresh: Session,
    revoke: Session,
    withdraw_password: String,
    withdraw: Session,
}

/// Waits (5 s at most) until the gateway has reported proxied writes; the
/// parity check passes over them.
async fn parity_over_proxied_writes(cutover: &e2e::cutover::Cutover) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let parity = cutover.check(2, 100, "double-write-parity").await.unwrap();
        let proxied: u64 = parity
            .figure
            .split(' ')
            .nth(5)
            .and_then(|n| n.parse().ok())
            .unwrap();
        if proxied > 0 {
            assert!(parity.pass, "{parity:?}");
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{parity:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn cell(api: &Api, members: &mut Members, login_as: Class) -> Cell {
    let (email, password) = members.take();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let answer = api.login(login_as, &email, &password).await;
        assert_eq!(answer.status, 200, "login {email}: {answer:?}");
        sessions.push(Session::from(&answer));
    }
    let (withdraw_email, withdraw_password) = members.take();
    let answer = api
        .login(login_as, &withdraw_email, &withdraw_password)
        .await;
    assert_eq!(answer.status, 200, "login {withdraw_email}: {answer:?}");
    let revoke = sessions.pop().unwrap();
    let refresh = sessions.pop().unwrap();
    Cell {
        password,
        me: sessions.pop().unwrap(),
        refresh,
        revoke,
        withdraw_password,
        withdraw: Session::from(&answer),
    }
}

#[derive(Default)]
struct Mismatches(Vec<String>);

impl Mismatches {
    fn check(&mut self, what: &str, expect: &Expect, answer: &Answer) {
        let ok = answer.side == expect.side
            && expect.statuses.contains(&answer.status.as_u16())
            && expect.problem.is_none_or(|p| answer.problem() == Some(p))
            && !answer.status.is_server_error();
        if !ok {
            self.0.push(format!(
                "{what}: expected {expect:?}, got {:?} {} {}",
                answer.side, answer.status, answer.body
            ));
        }
    }
}

#[tokio::test]
async fn every_route_goes_to_the_side_its_phase_names() {
    let cutover = start(1, &[]).await;
    let api = Api::new(&cutover.gateways[0].url, &cutover.tokens);
    let mut members = Members { next: 0 };
    let mut wrong = Mismatches::default();

    // Legacy sessions for every later phase, made while legacy serves every
    // login: a legacy token keeps its origin whenever it is used.
    let mut legacy_cells: HashMap<(u32, usize), Cell> = HashMap::new();
    for phase in 0..=5 {
        for (c, class) in Class::ALL.into_iter().enumerate() {
            let made = cell(&api, &mut members, class).await;
            assert!(
                !made.me.is_idbase(),
                "phase 0 logs in at legacy: {:?}",
                made.me
            );
            legacy_cells.insert((phase, c), made);
        }
    }

    for phase in 0..=5u32 {
        if phase == 2 {
            // Phase 1's member writes went to legacy, which double-wrote
            // each: parity holds over writes the gateway counted.
            parity_over_proxied_writes(&cutover).await;
        }
        if phase == 5 {
            // Legacy's double writes (1–3) and the exchanges of its tokens
            // (3–4) reached idsvc, which waits for both to stop.
            let quiet = cutover.check(5, 100, "legacy-quiet").await.unwrap();
            assert!(!quiet.figure.contains("never"), "{quiet:?}");
        }
        if phase > 0 {
            cutover.move_to(phase, 100).await.unwrap();
        }
        if phase == 1 {
            // The runbook's copy of legacy's members, once double writes are on.
            cutover.migrate_members().unwrap();
        }
        for (c, class) in Class::ALL.into_iter().enumerate() {
            let at = |route: &str, origin: &str| {
                format!("phase {phase} {class:?} {route} ({origin} token)")
            };

            // Login and registration.
            let (email, password) = members.take();
            let login = api.login(class, &email, &password).await;
            wrong.check(
                &at("login", "no"),
                &on(login_side(phase, class), &[200]),
                &login,
            );
            let register_side = if phase >= 4 { Idbase } else { Legacy };
            let register = api
                .register(
                    class,
                    &format!("new-{phase}-{c}@example.com"),
                    super::super::api::PASSWORD,
                )
                .await;
            wrong.check(&at("register", "no"), &on(register_side, &[201]), &register);

            // No token: whichever side the route goes to says 401.
            let me = api.me(class, None).await;
            wrong.check(
                &at("GET me", "no"),
                &on(login_side(phase, class), &[401]),
                &me,
            );
            let patch = api.patch_me(class, None, json!({"phone": ""})).await;
            wrong.check(
                &at("PATCH me", "no"),
                &on(write_side(phase), &[400, 401]),
                &patch,
            );
            let delete = api.withdraw(class, None, "whatever it was").await;
            wrong.check(
                &at("DELETE me", "no"),
                &on(write_side(phase), &[401]),
                &delete,
            );
            let garbage = api.refresh(class, "lr_not-a-token-anyone-issued").await;
            let garbage_side = if phase >= 3 { Idbase } else { Legacy };
            wrong.check(
                &at("refresh", "garbage"),
                &on(garbage_side, &[401]),
                &garbage,
            );

            // Legacy tokens.
            let legacy = legacy_cells.remove(&(phase, c)).unwrap();
            let me = api.me(class, Some(&legacy.me.access)).await;
            let expect = if phase <= 4 {
                on(Legacy, &[200])
            } else {
                refused(&[401], "invalid-token")
            };
            wrong.check(&at("GET me", "legacy"), &expect, &me);
            let phone = format!("090-1234-5{phase}{c}0");
            let patch = api
                .patch_me(
                    class,
                    Some(&legacy.me.access),
                    json!({"phone": phone, "current_password": legacy.password}),
                )
                .await;
            let expect = match phase {
                0..=3 => on(Legacy, &[200]),
                4 => refused(&[401], "token-upgrade-required"),
                _ => refused(&[401], "invalid-token"),
            };
            wrong.check(&at("PATCH me", "legacy"), &expect, &patch);
            let delete = api
                .withdraw(
                    class,
                    Some(&legacy.withdraw.access),
                    &legacy.withdraw_password,
                )
                .await;
            let expect = match phase {
                0..=3 => on(Legacy, &[204]),
                4 => refused(&[401], "token-upgrade-required"),
                _ => refused(&[401], "invalid-token"),
            };
            wrong.check(&at("DELETE me", "legacy"), &expect, &delete);
            // Legacy's own refresh until phase 3, then the exchange for
            // idbase tokens; once legacy is retired, nothing.
            let refresh = api.refresh(class, &legacy.refresh.refresh).await;
            let expect = match phase {
                0..=2 => on(Legacy, &[200]),
                3 | 4 => on(Idbase, &[200]),
                _ => refused(&[401], "invalid-token"),
            };
            wrong.check(&at("refresh", "legacy"), &expect, &refresh);
            if refresh.status == 200 {
                let session = Session::from(&refresh);
                if session.is_idbase() != (phase >= 3) {
                    wrong.0.push(format!(
                        "{}: tokens of the wrong origin {session:?}",
                        at("refresh", "legacy")
                    ));
                }
            }
            let revoke = api.revoke(class, &legacy.revoke.refresh).await;
            let expect = on(if phase <= 4 { Legacy } else { Idbase }, &[200, 204]);
            wrong.check(&at("revoke", "legacy"), &expect, &revoke);

            // idbase tokens, from the phase on where idbase logs anyone in
            // (in 2 only internal clients: their session serves every class).
            if phase >= 2 {
                let login_as = if login_side(phase, class) == Idbase {
                    class
                } else {
                    Class::Internal
                };
                let ours = cell(&api, &mut members, login_as).await;
                assert!(
                    ours.me.is_idbase(),
                    "{}: {:?}",
                    at("login", "idbase"),
                    ours.me
                );
                let me = api.me(class, Some(&ours.me.access)).await;
                wrong.check(
                    &at("GET me", "idbase"),
                    &on(login_side(phase, class), &[200]),
                    &me,
                );
                let patch = api
                    .patch_me(
                        class,
                        Some(&ours.me.access),
                        json!({"phone": "090-2222-3333", "current_password": ours.password}),
                    )
                    .await;
                wrong.check(
                    &at("PATCH me", "idbase"),
                    &on(write_side(phase), &[200]),
                    &patch,
                );
                let refresh = api.refresh(class, &ours.refresh.refresh).await;
                wrong.check(&at("refresh", "idbase"), &on(Idbase, &[200]), &refresh);
                let revoke = api.revoke(class, &ours.revoke.refresh).await;
                wrong.check(&at("revoke", "idbase"), &on(Idbase, &[200, 204]), &revoke);
                let delete = api
                    .withdraw(class, Some(&ours.withdraw.access), &ours.withdraw_password)
                    .await;
                wrong.check(
                    &at("DELETE me", "idbase"),
                    &on(write_side(phase), &[204]),
                    &delete,
                );
            }

            // The double-write routes: idbase's, internal clients only, gone in 5.
            let id = 900_000 + i64::from(phase) * 10 + c as i64;
            let put = api.internal_put(class, id, 1).await;
            let delete = api.internal_delete(class, id, 2).await;
            let (put_expect, delete_expect) = match (phase, class) {
                (5, Class::Internal) => (refused(&[410], "gone"), refused(&[410], "gone")),
                (5, _) => (on(Idbase, &[403, 410]), on(Idbase, &[403, 410])),
                (_, Class::Internal) => (on(Idbase, &[201]), on(Idbase, &[204])),
                _ => (on(Idbase, &[403]), on(Idbase, &[403])),
            };
            wrong.check(&at("PUT internal", "client"), &put_expect, &put);
            wrong.check(&at("DELETE internal", "client"), &delete_expect, &delete);
        }
    }
    assert!(
        wrong.0.is_empty(),
        "{} answers off the routing rules:\n{}",
        wrong.0.len(),
        wrong.0.join("\n")
    );
}
