//! The migration phase as this gateway follows it, and what it routes by.
//!
//! idsvc owns the phase (0 legacy … 5 complete); every gateway follows it
//! ([`follow`]) and routes each member request to legacy or to idbase by
//! phase × client class × route × token origin ([`route`]); [`gate`] is the
//! middleware that applies the decision. The state is published lock-free:
//! the hot path reads one `ArcSwap` and one atomic.

pub mod follow;
pub mod gate;
pub mod route;
pub mod shadow;
pub mod traffic;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The routing-relevant part of idsvc's `PhaseState`, as last applied.
#[derive(Clone, Debug)]
pub struct PhaseState {
    /// 0..=5.
    pub phase: u32,
    /// 1..=100: the share of members a ramped move into 2 or 3 applies to.
    pub weight: u32,
    pub generation: u64,
    /// Writes pause until idsvc lifts the fence of a 3→4 or 4→3 move.
    pub write_fence: bool,
    pub ramp: Ramp,
}

impl PhaseState {
    /// A settled phase (weight 100, no fence), for tests and benchmarks.
    pub fn settled(phase: u32, generation: u64, ramp_key: &[u8]) -> Self {
        Self {
            phase,
            weight: 100,
            generation,
            write_fence: false,
            ramp: Ramp::new(ramp_key),
        }
    }
}

/// Decides which side of a ramp a member is on: `HMAC-SHA256(ramp_key,
/// normalised email)`, first 8 bytes as a big-endian u64, `% 100 < weight`.
/// Every gateway computes it alike, so a member stays on one side whichever
/// gateway they reach, and stays there as the weight grows (the share at
/// weight w is a subset of the share at any larger weight).
#[derive(Clone)]
pub struct Ramp {
    /// The keyed MAC before any input: cloning it skips the key schedule on
    /// every request.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for Ramp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret of the fleet: never printed.
        f.write_str("Ramp(..)")
    }
}

/// Emails longer than this are not addresses (RFC 5321 caps them at 254
/// octets); they are hashed through an allocation like any non-ASCII one.
const STACK_EMAIL: usize = 256;

impl Ramp {
    pub fn new(key: &[u8]) -> Self {
        Self {
            // HMAC takes keys of any length.
            keyed: Hmac::new_from_slice(key).unwrap_or_else(|_| unreachable!()),
        }
    }

    /// The member's bucket, 0..100.
    pub fn bucket(&self, email: &str) -> u64 {
        let mut mac = self.keyed.clone();
        let email = email.trim();
        // idsvc's `Email::parse` normalisation is `trim()` then
        // `to_lowercase()`; ASCII (nearly every address) is lowered on the
        // stack instead of allocating.
        if email.is_ascii() && email.len() <= STACK_EMAIL {
            let mut buffer = [0u8; STACK_EMAIL];
            let lowered = &mut buffer[..email.len()];
            lowered.copy_from_slice(email.as_bytes());
            lowered.make_ascii_lowercase();
            mac.update(lowered);
        } else {
            mac.update(email.to_lowercase().as_bytes());
        }
        let digest = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first) % 100
    }

    /// Whether the member is in the share a ramp at `weight` moves.
    pub fn in_share(&self, email: &str, weight: u32) -> bool {
        self.bucket(email) < u64::from(weight)
    }

    /// The bucket, 0..1,000,000, of `member` (as given) for shadow reads:
    /// apart from the ramp's, so the shadowed members are not the ramp's first.
    pub fn sample_bucket(&self, member: &str) -> u64 {
        let mut mac = self.keyed.clone();
        mac.update(b"shadow\0");
        mac.update(member.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first) % 1_000_000
    }
}
