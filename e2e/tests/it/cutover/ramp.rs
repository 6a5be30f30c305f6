//! Ramps: while a read move is ramped, a login's side is the keyed hash of
//! the member's normalised email (design "Ramp"), the same on every gateway,
//! and a member in the share at 10% stays in it at 50% and 100%.

use super::{Api, Class, Side, start};
use e2e::cutover::{in_ramp, seeded_email, seeded_password};
use reqwest::StatusCode;
use std::collections::BTreeSet;

const MEMBERS: i64 = 40;

#[tokio::test]
async fn every_gateway_sorts_a_member_to_the_same_side_of_a_ramp() {
    let cutover = start(2, &[]).await;
    let apis: Vec<Api> = cutover
        .gateway_urls()
        .iter()
        .map(|url| Api::new(url, &cutover.tokens))
        .collect();
    cutover.move_to(1, 100).await.unwrap();
    cutover.migrate_members().unwrap();
    let mut wrong = Vec::new();
    let mut shares: Vec<(u32, u32, BTreeSet<i64>)> = Vec::new();
    // Web clients move to idbase in 3, internal clients in 2: ramp both.
    for (phase, class) in [(2, Class::Internal), (3, Class::Web)] {
        for weight in [10, 50, 100] {
            let state = cutover.move_to(phase, weight).await.unwrap();
            assert_eq!((state.phase, state.weight), (phase, weight));
            let mut share = BTreeSet::new();
            for id in 1..=MEMBERS {
                // Spelled differently on each gateway: the side is the
                // normalised address's.
                let spellings = [
                    seeded_email(id),
                    format!("{}  ", seeded_email(id).to_uppercase()),
                ];
                let expected = if in_ramp(&state.ramp_key, &seeded_email(id), weight).unwrap() {
                    Side::Idbase
                } else {
                    Side::Legacy
                };
                for (api, email) in apis.iter().zip(&spellings) {
                    let login = api.login(class, email, &seeded_password(id)).await;
                    if login.status != StatusCode::OK || login.side != expected {
                        wrong.push(format!(
                            "phase {phase} at {weight}%, member {id} as {email:?} at {}: expected {expected:?}, got {:?} {} {}",
                            api.url, login.side, login.status, login.body
                        ));
                    }
                }
                if expected == Side::Idbase {
                    share.insert(id);
                }
            }
            shares.push((phase, weight, share));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    for pair in shares.windows(2) {
        let ((phase, low, smaller), (same_phase, high, larger)) = (&pair[0], &pair[1]);
        if phase == same_phase {
            assert!(
                smaller.is_subset(larger),
                "phase {phase}: the share at {low}% is not inside the one at {high}%"
            );
        }
    }
    for (phase, weight, share) in &shares {
        if *weight == 100 {
            assert_eq!(share.len() as i64, MEMBERS, "phase {phase} at 100%");
        }
    }
}
