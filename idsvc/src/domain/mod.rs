//! The ID service's domain: members, their credentials and sessions, and the
//! rules that govern them. Plain Rust: no protobuf, no SQL.

pub mod audit;
mod clock;
mod email;
mod error;
mod identity;
mod password;
pub mod phase;
mod phone;
mod store;
mod throttle;

pub use clock::{Clock, ManualClock, SystemClock};
pub use email::{Email, mask_email};
pub use error::{Error, Result};
pub use identity::{
    DEFAULT_ACCESS_TTL_SECS, DEFAULT_CREDENTIAL_FAILURE_FLOOR_MS, DEFAULT_REFRESH_GRACE_SECS,
    DEFAULT_REFRESH_TTL_DAYS, DEFAULT_SESSION_IDLE_DAYS, DEFAULT_SESSION_MAX_DAYS, IdempotencyKey,
    IdentityService, LegacyFields, LegacyUser, MaskedMember, MemberKey, MemberRecord, Policy,
    Principal, REGISTRATION_KEY_TTL, ShadowCheck, ShadowRead, TokenPair, User, UserChanges, days,
    flag_nonconforming_email, mask_email_for_support, mask_phone,
};
pub use password::{DEFAULT_MIN_PASSWORD_CHARS, MAX_PASSWORD_CHARS, Password};
pub use phone::Phone;
pub use store::*;
pub use throttle::{
    DEFAULT_EMAIL_FAILURE_FACTOR, DEFAULT_LOGIN_FAILURE_LIMIT, LoginThrottleKeys, SourceNetwork,
    ThrottlePolicy,
};
