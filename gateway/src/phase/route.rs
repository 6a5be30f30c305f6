//! The routing decision: which side serves a member request in the current
//! phase, or what the gateway answers itself. Pure and allocation-free (the
//! ramp hash aside, which only a login during a ramp pays): the same inputs
//! give the same answer on every gateway.
//!
//! The table (docs/edge.md "Routing by phase"), effective phase = `phase`,
//! or `phase - 1` for a login outside a ramp's share:
//!
//! | route | 0 | 1 | 2 | 3 | 4 | 5 |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | login | L | L | internal I, else L | I | I | I |
//! | register | L | L | L | L | I | I |
//! | me GET, idbase or no token | L | L | internal I, else L | I | I | I |
//! | me GET, legacy token | L | L | L | L | L | 401 invalid |
//! | me PATCH/DELETE, idbase or no token | L | L | L | L | I | I |
//! | me PATCH/DELETE, legacy token | L | L | L | L | 401 upgrade | 401 invalid |
//! | refresh/revoke, idbase token | I | I | I | I | I | I |
//! | refresh/revoke, no token | L | L | L | I | I | I |
//! | refresh, legacy token | L | L | L | exchange | exchange | 401 invalid |
//! | revoke, legacy token | L | L | L | L | L | 204 |
//! | internal PUT/DELETE | I | I | I | I | I | 410 |
//!
//! Writes (register, me PATCH/DELETE) answer 503 `writes-paused` while the
//! write fence is up or the phase is stale, in every phase.

use super::PhaseState;
use crate::clients::ClientClass;

/// Who serves a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Legacy,
    Idbase,
}

impl Side {
    pub const fn label(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Idbase => "idbase",
        }
    }
}

/// The member routes the phase decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Login,
    Register,
    Refresh,
    Revoke,
    MeGet,
    MePatch,
    MeDelete,
    InternalPut,
    InternalDelete,
}

impl Route {
    pub const ALL: [Self; 9] = [
        Self::Login,
        Self::Register,
        Self::Refresh,
        Self::Revoke,
        Self::MeGet,
        Self::MePatch,
        Self::MeDelete,
        Self::InternalPut,
        Self::InternalDelete,
    ];

    /// The member writes the write fence pauses.
    pub const fn is_fenced_write(self) -> bool {
        matches!(self, Self::Register | Self::MePatch | Self::MeDelete)
    }
}

/// Who issued the token a request carries (the bearer access token on `me`,
/// the refresh token on `tokens/*`), decided from its form alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenOrigin {
    None,
    Idbase,
    Legacy,
}

/// What the gateway answers itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 401: a write with a legacy access token once idbase takes writes.
    TokenUpgradeRequired,
    /// 401: a legacy token once legacy is retired.
    InvalidToken,
    /// 410: double writes once migration is complete.
    Gone,
    /// 503 + Retry-After: the write fence is up or the phase is stale.
    WritesPaused,
    /// 204: revoking a legacy token once legacy is retired; nothing to revoke.
    NothingToRevoke,
}

/// The outcome of routing one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    To(Side),
    /// Redeem the legacy refresh token at legacy, open an idbase session.
    Exchange,
    Answer(Answer),
}

/// One request's routing inputs.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub class: ClientClass,
    pub route: Route,
    pub origin: TokenOrigin,
    /// The email of a login (the ramp's key); `None` elsewhere.
    pub email: Option<&'a str>,
}

/// Routes one request. `writes_paused` is the write fence or a stale phase.
pub fn decide(state: &PhaseState, writes_paused: bool, request: &Request<'_>) -> Decision {
    use Decision::{Answer as Say, Exchange, To};
    use Side::{Idbase, Legacy};
    let phase = state.phase;
    if writes_paused && request.route.is_fenced_write() {
        return Say(Answer::WritesPaused);
    }
    let internal = request.class == ClientClass::Internal;
    // Reads of an idbase member: idbase in 3 and later, and in 2 for the
    // legacy web tier (internal clients) first.
    let reads = |phase: u32| match phase {
        0 | 1 => Legacy,
        2 if internal => Idbase,
        2 => Legacy,
        _ => Idbase,
    };
    let writes = if phase >= 4 { Idbase } else { Legacy };
    match (request.route, request.origin) {
        (Route::Login, _) => To(reads(effective_phase(state, request.email))),
        (Route::Register, _) => To(writes),
        (Route::MeGet, TokenOrigin::Legacy) if phase >= 5 => Say(Answer::InvalidToken),
        (Route::MeGet, TokenOrigin::Legacy) => To(Legacy),
        (Route::MeGet, _) => To(reads(phase)),
        (Route::MePatch | Route::MeDelete, TokenOrigin::Legacy) => match phase {
            0..=3 => To(Legacy),
            4 => Say(Answer::TokenUpgradeRequired),
            _ => Say(Answer::InvalidToken),
        },
        (Route::MePatch | Route::MeDelete, _) => To(writes),
        (Route::Refresh | Route::Revoke, TokenOrigin::Idbase) => To(Idbase),
        (Route::Refresh | Route::Revoke, TokenOrigin::None) => {
            To(if phase >= 3 { Idbase } else { Legacy })
        }
        (Route::Refresh, TokenOrigin::Legacy) => match phase {
            0..=2 => To(Legacy),
            3 | 4 => Exchange,
            _ => Say(Answer::InvalidToken),
        },
        (Route::Revoke, TokenOrigin::Legacy) => {
            if phase >= 5 {
                Say(Answer::NothingToRevoke)
            } else {
                To(Legacy)
            }
        }
        (Route::InternalPut | Route::InternalDelete, _) => {
            if phase >= 5 {
                Say(Answer::Gone)
            } else {
                To(Idbase)
            }
        }
    }
}

/// The phase a login follows: during a ramp into 2 or 3, members outside
/// the share still follow the previous phase. A login without an email
/// (a malformed body) stays on the previous phase too; that side answers 400.
fn effective_phase(state: &PhaseState, email: Option<&str>) -> u32 {
    let ramping = state.weight < 100 && matches!(state.phase, 2 | 3);
    if !ramping {
        return state.phase;
    }
    match email {
        Some(email) if state.ramp.in_share(email, state.weight) => state.phase,
        _ => state.phase - 1,
    }
}

/// An idbase refresh token: `SECRET.USER.SESSION` (idsvc's
/// `crypto::tokens::refresh_token`), SECRET 256 random bits in unpadded
/// base64url (43 characters), USER a decimal member id; or a bare SECRET
/// from before tokens named their session. Legacy's tokens (`lr_…`) have
/// neither form.
pub fn refresh_token_origin(token: &str) -> TokenOrigin {
    let token = token.trim();
    if token.is_empty() {
        return TokenOrigin::None;
    }
    let mut parts = token.splitn(3, '.');
    let secret = parts.next().unwrap_or_default();
    let ours_secret = secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let ours = match (parts.next(), parts.next()) {
        (Some(user), Some(session)) => {
            ours_secret && user.parse::<i64>().is_ok() && !session.is_empty()
        }
        (None, _) => ours_secret && !secret.starts_with("lr_"),
        (Some(_), None) => false,
    };
    if ours {
        TokenOrigin::Idbase
    } else {
        TokenOrigin::Legacy
    }
}

/// The `kid` of a token shaped like a JWT (three dot-separated parts, a
/// JSON header), without verifying anything; `None` for anything else.
pub fn jwt_kid(token: &str) -> Option<String> {
    // Every JWT header is a JSON object, so its base64url starts with `eyJ`.
    if !token.starts_with("eyJ") || token.bytes().filter(|&b| b == b'.').count() != 2 {
        return None;
    }
    jsonwebtoken::decode_header(token).ok()?.kid
}

#[cfg(test)]
mod tests {
    use super::*;
    use ClientClass::{Internal, Mobile, Web};

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// The design table, one row per route × token origin × class: the
    /// answer in phases 0..=5. L legacy, I idbase, X exchange, U 401
    /// token-upgrade-required, T 401 invalid-token, G 410 gone, N 204.
    fn expected(route: Route, origin: TokenOrigin, class: ClientClass) -> &'static str {
        use Route::*;
        use TokenOrigin as O;
        let internal = class == Internal;
        match (route, origin) {
            (Login, _) if internal => "LLIIII",
            (Login, _) => "LLLIII",
            (Register, _) => "LLLLII",
            (MeGet, O::Legacy) => "LLLLLT",
            (MeGet, _) if internal => "LLIIII",
            (MeGet, _) => "LLLIII",
            (MePatch | MeDelete, O::Legacy) => "LLLLUT",
            (MePatch | MeDelete, _) => "LLLLII",
            (Refresh | Revoke, O::Idbase) => "IIIIII",
            (Refresh | Revoke, O::None) => "LLLIII",
            (Refresh, O::Legacy) => "LLLXXT",
            (Revoke, O::Legacy) => "LLLLLN",
            (InternalPut | InternalDelete, _) => "IIIIIG",
        }
    }

    fn letter(decision: Decision) -> char {
        match decision {
            Decision::To(Side::Legacy) => 'L',
            Decision::To(Side::Idbase) => 'I',
            Decision::Exchange => 'X',
            Decision::Answer(Answer::TokenUpgradeRequired) => 'U',
            Decision::Answer(Answer::InvalidToken) => 'T',
            Decision::Answer(Answer::Gone) => 'G',
            Decision::Answer(Answer::NothingToRevoke) => 'N',
            Decision::Answer(Answer::WritesPaused) => 'P',
        }
    }

    const ORIGINS: [TokenOrigin; 3] = [TokenOrigin::None, TokenOrigin::Idbase, TokenOrigin::Legacy];
    const CLASSES: [ClientClass; 3] = [Internal, Web, Mobile];

    fn request(class: ClientClass, route: Route, origin: TokenOrigin) -> Request<'static> {
        Request {
            class,
            route,
            origin,
            email: Some("hanako@example.com"),
        }
    }

    #[test]
    fn every_cell_follows_the_design_table() {
        let mut cells = 0;
        for route in Route::ALL {
            for origin in ORIGINS {
                for class in CLASSES {
                    let got: String = (0..=5)
                        .map(|phase| {
                            let state = PhaseState::settled(phase, 1, KEY);
                            letter(decide(&state, false, &request(class, route, origin)))
                        })
                        .collect();
                    assert_eq!(
                        got,
                        expected(route, origin, class),
                        "{route:?} {origin:?} {class:?}"
                    );
                    cells += 6;
                }
            }
        }
        assert_eq!(cells, 6 * 3 * 9 * 3);
    }

    #[test]
    fn a_paused_phase_answers_writes_and_routes_everything_else() {
        for phase in 0..=5 {
            let state = PhaseState::settled(phase, 1, KEY);
            for route in Route::ALL {
                for origin in ORIGINS {
                    for class in CLASSES {
                        let r = request(class, route, origin);
                        let paused = decide(&state, true, &r);
                        if route.is_fenced_write() {
                            assert_eq!(paused, Decision::Answer(Answer::WritesPaused), "{r:?}");
                        } else {
                            assert_eq!(paused, decide(&state, false, &r), "{r:?}");
                        }
                    }
                }
            }
        }
    }

    fn ramped(phase: u32, weight: u32) -> PhaseState {
        PhaseState {
            weight,
            ..PhaseState::settled(phase, 1, KEY)
        }
    }

    fn emails(n: usize) -> impl Iterator<Item = String> {
        (0..n).map(|i| format!("member{i}@example.com"))
    }

    #[test]
    fn a_ramped_login_outside_the_share_follows_the_previous_phase() {
        let state = ramped(3, 50);
        let email = emails(1000).find(|e| !state.ramp.in_share(e, 50)).unwrap();
        let login = |class, email: &str| {
            decide(
                &state,
                false,
                &Request {
                    class,
                    route: Route::Login,
                    origin: TokenOrigin::None,
                    email: Some(email),
                },
            )
        };
        // Outside the share: phase 2, so web goes to legacy, internal to idbase.
        assert_eq!(login(Web, &email), Decision::To(Side::Legacy));
        assert_eq!(login(Internal, &email), Decision::To(Side::Idbase));
        let inside = emails(1000).find(|e| state.ramp.in_share(e, 50)).unwrap();
        assert_eq!(login(Web, &inside), Decision::To(Side::Idbase));
        // Registration is never ramped, nor a token-carrying route.
        let register = Request {
            class: Web,
            route: Route::Register,
            origin: TokenOrigin::None,
            email: Some(&email),
        };
        assert_eq!(decide(&state, false, &register), Decision::To(Side::Legacy));
        let me = request(Web, Route::MeGet, TokenOrigin::Idbase);
        assert_eq!(decide(&state, false, &me), Decision::To(Side::Idbase));
    }

    #[test]
    fn a_member_stays_on_the_new_side_as_the_weight_grows() {
        let state = ramped(2, 1);
        for email in emails(2000) {
            let mut moved = false;
            for weight in [1, 10, 50, 100] {
                let inside = state.ramp.in_share(&email, weight);
                assert!(inside || !moved, "{email} moved back at {weight}");
                moved = inside;
            }
            assert!(moved, "everyone is in at 100");
            // Normalised like idsvc: spaces and case do not change the side.
            let shouted = format!("  {}  ", email.to_uppercase());
            assert_eq!(state.ramp.bucket(&shouted), state.ramp.bucket(&email));
        }
    }

    #[test]
    fn the_share_is_close_to_the_weight() {
        let state = ramped(2, 1);
        for weight in [1, 10, 50, 90] {
            let inside = emails(10_000)
                .filter(|e| state.ramp.in_share(e, weight))
                .count();
            let expected = 100 * weight as usize;
            // Binomial sd at 10k draws is at most 50: 4 sd either way.
            assert!(
                inside.abs_diff(expected) <= 200,
                "{inside} of 10000 at {weight}%"
            );
        }
        // Another key draws another share.
        let other = PhaseState::settled(2, 1, b"another key");
        let differ = emails(1000)
            .filter(|e| other.ramp.bucket(e) != state.ramp.bucket(e))
            .count();
        assert!(differ > 900, "{differ}");
    }

    #[test]
    fn non_ascii_emails_are_lowered_like_idsvc() {
        let ramp = super::super::Ramp::new(KEY);
        assert_eq!(
            ramp.bucket("ÉMILE@Example.com"),
            ramp.bucket("émile@example.com")
        );
    }

    #[test]
    fn refresh_tokens_are_told_apart_by_form() {
        let secret = "a".repeat(43);
        let ours = format!("{secret}.42.0b8f9e7c-1234-4abc-9def-0123456789ab");
        assert_eq!(refresh_token_origin(&ours), TokenOrigin::Idbase);
        assert_eq!(refresh_token_origin(&secret), TokenOrigin::Idbase);
        for legacy in [
            "lr_3f9a0c2d",
            &format!("lr_{}", "b".repeat(40)),
            &format!("{secret}.x.s"),
            &format!("{secret}.42"),
            &format!("{secret}.42."),
            "a.b.c",
            "garbage",
        ] {
            assert_eq!(
                refresh_token_origin(legacy),
                TokenOrigin::Legacy,
                "{legacy}"
            );
        }
        assert_eq!(refresh_token_origin("  "), TokenOrigin::None);
    }

    #[test]
    fn jwt_kids_are_read_without_verifying() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"EdDSA","typ":"JWT","kid":"k-1"}"#),
            b64("{}")
        );
        assert_eq!(jwt_kid(&token).as_deref(), Some("k-1"));
        assert_eq!(jwt_kid("la_0123456789"), None);
        assert_eq!(jwt_kid("eyJhbGciOi"), None);
        assert_eq!(jwt_kid(&format!("{}.x.y", b64("not json"))), None);
    }
}
