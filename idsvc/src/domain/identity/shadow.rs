//! Shadow reads (phases 1–3): a login or `me` read that legacy answered is
//! repeated here without side effects and compared with legacy's answer,
//! so that SREs see before a move whether idbase would have answered the
//! same (GitHub Scientist's experiments, LaunchDarkly's consistency checks).
//!
//! Nothing here changes a member: no session, no throttle count, no
//! re-hash. A credential check runs only when a hashing worker is free
//! ([`HashingPool::verify_if_idle`](crate::crypto::HashingPool)): a shadow
//! is dropped rather than queued before a member's login.
//!
//! The gateway compares once when legacy has answered and, on a
//! difference, once more a few seconds later: only a difference that
//! persists is a mismatch (a double write in flight is not). Shadows and
//! mismatches are counted per kind for the shadow-agreement check;
//! mismatches are sampled into the audit trail by member id and field
//! names, never values.

use super::IdentityService;
use crate::domain::phase::LegacyTraffic;
use crate::domain::{Email, Phone, Result, UserId};
use std::sync::Mutex;
use tracing::warn;
use zeroize::Zeroizing;

/// A read legacy answered, as the gateway saw it.
pub enum ShadowRead {
    /// A login: the credentials sent, and whether legacy accepted them.
    Login {
        email: String,
        password: Zeroizing<String>,
        legacy_accepted: bool,
    },
    /// A `me` read: the member as legacy showed them.
    Me {
        member_id: UserId,
        email: String,
        phone: Option<String>,
    },
}

impl ShadowRead {
    fn kinds(&self) -> (LegacyTraffic, LegacyTraffic, &'static str) {
        match self {
            Self::Login { .. } => (
                LegacyTraffic::ShadowLogin,
                LegacyTraffic::ShadowLoginMismatch,
                "login",
            ),
            Self::Me { .. } => (
                LegacyTraffic::ShadowMe,
                LegacyTraffic::ShadowMeMismatch,
                "me",
            ),
        }
    }
}

/// Mismatches written to the audit trail per second and replica, at most:
/// a broken migration must not flood the trail (the counts stay exact).
const AUDITED_MISMATCHES_PER_SECOND: u32 = 10;

/// How many mismatches this replica audited in which second.
#[derive(Default)]
pub struct MismatchSampler(Mutex<(i64, u32)>);

impl MismatchSampler {
    fn admit(&self, second: i64) -> bool {
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += 1;
        slot.1 <= AUDITED_MISMATCHES_PER_SECOND
    }
}

impl IdentityService {
    /// Compares a read legacy answered with what idbase holds; the names of
    /// the fields that differ. A first comparison (`recheck` false) counts
    /// the shadow; a re-check that still differs counts a mismatch.
    pub async fn shadow_read(&self, read: ShadowRead, recheck: bool) -> Result<Vec<&'static str>> {
        let (shadows, mismatches, kind) = read.kinds();
        let (member, differences) = match read {
            ShadowRead::Login {
                email,
                password,
                legacy_accepted,
            } => {
                let accepted = self.credentials_match(&email, &password).await?;
                let differences = if accepted == legacy_accepted {
                    vec![]
                } else {
                    vec!["outcome"]
                };
                (None, differences)
            }
            ShadowRead::Me {
                member_id,
                email,
                phone,
            } => (
                Some(member_id),
                self.member_differences(member_id, &email, phone.as_deref())
                    .await?,
            ),
        };
        if !recheck {
            self.legacy_traffic.count(shadows, 1).await?;
        }
        let outcome = match (recheck, differences.is_empty()) {
            (_, true) if recheck => "transient",
            (_, true) => "match",
            (false, false) => "differs",
            (true, false) => "mismatch",
        };
        metrics::counter!("idbase_shadow_reads_total", "kind" => kind, "outcome" => outcome)
            .increment(1);
        if recheck && !differences.is_empty() {
            self.legacy_traffic.count(mismatches, 1).await?;
            for field in &differences {
                metrics::counter!("idbase_shadow_mismatches_total", "kind" => kind, "field" => *field)
                    .increment(1);
            }
            let now = self.clock.now_ms();
            if self.mismatch_sampler.admit(now.div_euclid(1000)) {
                let detail = format!("{kind}: {} differ", differences.join(", "));
                if let Err(err) = self
                    .store
                    .record_security_event("shadow_mismatch", member, &detail, now)
                    .await
                {
                    warn!(cause = %err, "recording a shadow mismatch failed");
                }
            }
        }
        Ok(differences)
    }

    /// Whether idbase would accept these credentials; no session, no
    /// throttle count, no re-hash. An unknown email is simply not accepted.
    async fn credentials_match(&self, email: &str, password: &str) -> Result<bool> {
        let Ok(email) = Email::parse(email) else {
            return Ok(false);
        };
        let Some(user) = self
            .store
            .user_by_email_index(&self.index.email(email.as_str()))
            .await?
        else {
            return Ok(false);
        };
        if crate::domain::password::reject_oversized(password).is_err() {
            return Ok(false);
        }
        Ok(self
            .verify_when_idle(password, user.password_hash)
            .await?
            .matched())
    }

    /// The fields of member `id` that differ from what legacy showed, both
    /// sides normalised (email as stored, phone in E.164). A member idbase
    /// does not hold (or holds withdrawn) differs in `member_id`.
    async fn member_differences(
        &self,
        id: UserId,
        email: &str,
        phone: Option<&str>,
    ) -> Result<Vec<&'static str>> {
        let Some(row) = self.store.user(id).await? else {
            return Ok(vec!["member_id"]);
        };
        let ours = self.user_from(&row)?;
        let mut differences = Vec::new();
        let theirs = Email::parse(email).ok();
        if theirs.as_ref() != Some(&ours.email) {
            differences.push("email");
        }
        let theirs = phone
            .filter(|p| !p.trim().is_empty())
            .map(|p| Phone::parse(p).map_err(|_| ()));
        let same_phone = match (theirs, &ours.phone) {
            (None, None) => true,
            (Some(Ok(theirs)), Some(ours)) => &theirs == ours,
            _ => false,
        };
        if !same_phone {
            differences.push("phone");
        }
        Ok(differences)
    }
}
