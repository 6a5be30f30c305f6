//! The phase router's per-request decision: a settled phase (a table
//! lookup), a ramped login (one keyed hash over the email), and telling a
//! refresh token's origin from its form.
//!
//! `cargo bench -p gateway --bench routing`

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::clients::ClientClass;
use gateway::phase::PhaseState;
use gateway::phase::route::{self, Request, Route, TokenOrigin};
use std::hint::black_box;

const KEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

fn decisions(c: &mut Criterion) {
    let settled = PhaseState::settled(3, 12, KEY);
    let ramped = PhaseState {
        weight: 25,
        ..PhaseState::settled(3, 13, KEY)
    };
    let me = Request {
        class: ClientClass::Web,
        route: Route::MeGet,
        origin: TokenOrigin::Legacy,
        email: None,
    };
    let login = Request {
        class: ClientClass::Mobile,
        route: Route::Login,
        origin: TokenOrigin::None,
        email: Some("  Hanako.Yamada@Example.com "),
    };
    c.bench_function("decide settled me", |b| {
        b.iter(|| route::decide(black_box(&settled), false, black_box(&me)))
    });
    c.bench_function("decide ramped login", |b| {
        b.iter(|| route::decide(black_box(&ramped), false, black_box(&login)))
    });
    let refresh = format!(
        "{}.1000000000042.0b8f9e7c-1234-4abc-9def-0123456789ab",
        "a".repeat(43)
    );
    c.bench_function("refresh token origin", |b| {
        b.iter(|| route::refresh_token_origin(black_box(&refresh)))
    });
}

criterion_group!(benches, decisions);
criterion_main!(benches);
