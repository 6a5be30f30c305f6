//! Sessions survive the cutover: a legacy refresh token is exchanged for
//! idbase tokens from phase 3, the redeemed legacy token is spent at legacy,
//! a retry of the exchange within the grace window still succeeds, and no
//! session from any phase is lost by any move.

use super::{Answer, Api, Class, Session, Side, start};
use e2e::cutover::Cutover;
use e2e::cutover::{seeded_email, seeded_password};
use reqwest::StatusCode;
use serde_json::json;

/// Legacy's own refresh, called directly with the gateway's credential.
async fn refresh_at_legacy(legacy_url: &str, credential: &str, refresh_token: &str) -> StatusCode {
    reqwest::Client::new()
        .post(format!("{legacy_url}/v1/tokens/refresh"))
        .header("Idbase-Gateway-Token", credential)
        .json(&json!({"refresh_token": refresh_token}))
        .send()
        .await
        .unwrap()
        .status()
}

/// A deployment in phase 3 where member 7's legacy session (logged in and
/// refreshed at legacy in phase 2) was just exchanged: the deployment, the
/// spent legacy session and the answer of the exchange.
async fn exchanged() -> (Cutover, Api, Session, Answer) {
    let cutover = start(1, &[]).await;
    let api = Api::new(&cutover.gateways[0].url, &cutover.tokens);
    cutover.move_to(1, 100).await.unwrap();
    cutover.migrate_members().unwrap();
    cutover.move_to(2, 100).await.unwrap();

    let login = api
        .login(Class::Web, &seeded_email(7), &seeded_password(7))
        .await;
    assert_eq!(
        (login.status, login.side),
        (StatusCode::OK, Side::Legacy),
        "{login:?}"
    );
    let legacy = Session::from(&login);
    assert!(!legacy.is_idbase(), "{legacy:?}");
    // One refresh at legacy in phase 2: the token the exchange redeems is a
    // rotated one, as a real client's would be.
    let rotated = api.refresh(Class::Web, &legacy.refresh).await;
    assert_eq!(
        (rotated.status, rotated.side),
        (StatusCode::OK, Side::Legacy),
        "{rotated:?}"
    );
    let legacy = Session::from(&rotated);

    cutover.move_to(3, 100).await.unwrap();
    let exchanged = api.refresh(Class::Web, &legacy.refresh).await;
    assert_eq!(
        (exchanged.status, exchanged.side),
        (StatusCode::OK, Side::Idbase),
        "{exchanged:?}"
    );
    (cutover, api, legacy, exchanged)
}

#[tokio::test]
async fn a_legacy_session_is_exchanged_for_idbase_tokens_once() {
    let (cutover, api, legacy, exchanged) = exchanged().await;
    assert_eq!(exchanged.body["token_type"], "Bearer");
    let ours = Session::from(&exchanged);
    assert!(ours.is_idbase(), "{ours:?}");
    let me = api.me(Class::Web, Some(&ours.access)).await;
    assert_eq!(
        (me.status, me.side),
        (StatusCode::OK, Side::Idbase),
        "{me:?}"
    );
    assert_eq!(me.body["id"], "7");
    assert_eq!(me.body["email"], seeded_email(7));
    // The idbase refresh tokens go on rotating at idbase.
    let next = api.refresh(Class::Web, &ours.refresh).await;
    assert_eq!(
        (next.status, next.side),
        (StatusCode::OK, Side::Idbase),
        "{next:?}"
    );

    // The redeemed legacy token is spent at legacy.
    let at_legacy =
        refresh_at_legacy(&cutover.legacy_url, &cutover.legacy_token, &legacy.refresh).await;
    assert_eq!(at_legacy, StatusCode::UNAUTHORIZED);

    // A legacy token nobody issued is not exchanged.
    let forged = api.refresh(Class::Web, "lr_forged-token-value").await;
    assert_eq!(
        (forged.status, forged.side),
        (StatusCode::UNAUTHORIZED, Side::Idbase),
        "{forged:?}"
    );
    assert_eq!(forged.problem(), Some("invalid-token"), "{forged:?}");
}

#[tokio::test]
async fn a_retried_exchange_within_the_grace_window_gets_the_same_session() {
    let (_cutover, api, legacy, exchanged) = exchanged().await;
    let first = Session::from(&exchanged);
    // A client that lost the answer retries with the same legacy token
    // within the grace window: the same session, rotated again.
    let retried = api.refresh(Class::Web, &legacy.refresh).await;
    assert_eq!(
        (retried.status, retried.side),
        (StatusCode::OK, Side::Idbase),
        "{retried:?}"
    );
    let again = Session::from(&retried);
    assert!(again.is_idbase(), "{again:?}");
    let me = api.me(Class::Web, Some(&again.access)).await;
    assert_eq!(
        (me.status, &me.body["id"]),
        (StatusCode::OK, &json!("7")),
        "{me:?}"
    );
    // The same session: its refresh token names the first answer's session
    // (`SECRET.USER.SESSION`).
    let session = |token: &str| token.rsplit('.').next().unwrap().to_owned();
    assert_eq!(session(&again.refresh), session(&first.refresh));
}

/// A member's session: its class, whom it belongs to, its current tokens.
struct Held {
    class: Class,
    id: i64,
    obtained_in: u32,
    session: Session,
}

#[tokio::test]
async fn no_move_logs_anybody_out() {
    let cutover = start(1, &[]).await;
    let api = Api::new(&cutover.gateways[0].url, &cutover.tokens);
    let mut held: Vec<Held> = Vec::new();
    let mut next_id = 0;
    for phase in 0..=5u32 {
        if phase > 0 {
            cutover.move_to(phase, 100).await.unwrap();
        }
        if phase == 1 {
            cutover.migrate_members().unwrap();
        }
        // Every session held so far still reads `me` (refreshing if told
        // to), and refreshes, as it does whenever its access token expires:
        // from phase 3 that exchanges a legacy session for idbase tokens, so
        // none is left on legacy tokens when phase 5 retires them.
        for h in &mut held {
            let what = format!(
                "phase {phase}: {:?} session of member {} from phase {}",
                h.class, h.id, h.obtained_in
            );
            let me = api.me(h.class, Some(&h.session.access)).await;
            if me.status == StatusCode::UNAUTHORIZED {
                let refreshed = api.refresh(h.class, &h.session.refresh).await;
                assert_eq!(
                    refreshed.status,
                    StatusCode::OK,
                    "{what} could not refresh: {refreshed:?}"
                );
                h.session = Session::from(&refreshed);
                let me = api.me(h.class, Some(&h.session.access)).await;
                assert_eq!(me.status, StatusCode::OK, "{what}, refreshed: {me:?}");
                assert_eq!(me.body["id"], h.id.to_string(), "{what}");
            } else {
                assert_eq!(
                    (me.status, &me.body["id"]),
                    (StatusCode::OK, &json!(h.id.to_string())),
                    "{what}: {me:?}"
                );
            }
            let refreshed = api.refresh(h.class, &h.session.refresh).await;
            assert_eq!(
                refreshed.status,
                StatusCode::OK,
                "{what} could not refresh: {refreshed:?}"
            );
            h.session = Session::from(&refreshed);
            if phase >= 3 {
                assert!(
                    h.session.is_idbase(),
                    "{what}: refreshed to {:?}",
                    h.session
                );
            }
        }
        for class in Class::ALL {
            next_id += 1;
            let login = api
                .login(class, &seeded_email(next_id), &seeded_password(next_id))
                .await;
            assert_eq!(
                login.status,
                StatusCode::OK,
                "phase {phase} {class:?}: {login:?}"
            );
            held.push(Held {
                class,
                id: next_id,
                obtained_in: phase,
                session: Session::from(&login),
            });
        }
    }
    // By the end every session runs on idbase tokens.
    for h in &held {
        let me = api.me(h.class, Some(&h.session.access)).await;
        assert_eq!(
            (me.status, me.side),
            (StatusCode::OK, Side::Idbase),
            "{me:?}"
        );
        assert!(h.session.is_idbase(), "{:?}", h.session);
    }
}
