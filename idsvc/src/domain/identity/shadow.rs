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
//! mismatches are counted per kind for the shadow-agreement check —
//! shadows in memory, stored once a second ([`IdentityService::store_shadow_counts`]:
//! a store write per shadow would cost more than the shadow), mismatches
//! at once — and mismatches are sampled into the audit trail by member id
//! and field names, never values.

use super::IdentityService;
use crate::domain::phase::LegacyTraffic;
use crate::domain::{Email, Phone, Result, UserId, UserRow};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// One read to compare, first or again.
pub struct ShadowCheck {
    pub read: ShadowRead,
    /// The re-check of a read whose first comparison differed.
    pub recheck: bool,
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

/// Shadows compared and not yet stored, logins and `me` reads.
#[derive(Default)]
pub struct ShadowTally {
    logins: AtomicU64,
    mes: AtomicU64,
}

impl ShadowTally {
    fn of(&self, kind: LegacyTraffic) -> &AtomicU64 {
        if kind == LegacyTraffic::ShadowLogin {
            &self.logins
        } else {
            &self.mes
        }
    }
}

impl IdentityService {
    /// Stores the shadows counted since the last call; run every second.
    /// Counts a failed write could not store wait for the next.
    pub async fn store_shadow_counts(&self) -> Result<()> {
        for kind in [LegacyTraffic::ShadowLogin, LegacyTraffic::ShadowMe] {
            let pending = self.shadow_tally.of(kind).swap(0, Ordering::AcqRel);
            if let Err(err) = self.legacy_traffic.count(kind, pending).await {
                self.shadow_tally
                    .of(kind)
                    .fetch_add(pending, Ordering::AcqRel);
                return Err(err);
            }
        }
        Ok(())
    }

    /// Compares reads legacy answered with what idbase holds (the `me`
    /// reads' members in one query): for each, in order, the names of the
    /// fields that differ, or `Overloaded` for a login dropped because the
    /// hashing workers are busy. A first comparison (`recheck` false)
    /// counts a shadow; a re-check that still differs counts a mismatch.
    pub async fn shadow_reads(
        &self,
        checks: Vec<ShadowCheck>,
    ) -> Result<Vec<Result<Vec<&'static str>>>> {
        let ids: Vec<UserId> = checks
            .iter()
            .filter_map(|check| match check.read {
                ShadowRead::Me { member_id, .. } => Some(member_id),
                ShadowRead::Login { .. } => None,
            })
            .collect();
        let members: HashMap<UserId, UserRow> = self
            .store
            .users(&ids)
            .await?
            .into_iter()
            .map(|row| (row.id, row))
            .collect();
        let mut results = Vec::with_capacity(checks.len());
        for ShadowCheck { read, recheck } in checks {
            let (shadows, mismatches, kind) = read.kinds();
            let (member, differences) = match read {
                ShadowRead::Login {
                    email,
                    password,
                    legacy_accepted,
                } => match self.credentials_match(&email, &password).await {
                    Ok((accepted, member)) if accepted == legacy_accepted => (member, vec![]),
                    Ok((_, member)) => (member, vec!["outcome"]),
                    Err(dropped) => {
                        results.push(Err(dropped));
                        continue;
                    }
                },
                ShadowRead::Me {
                    member_id,
                    email,
                    phone,
                } => {
                    let ours = members.get(&member_id);
                    let differences = self.member_differences(ours, &email, phone.as_deref())?;
                    (Some(member_id), differences)
                }
            };
            if !recheck {
                self.shadow_tally
                    .of(shadows)
                    .fetch_add(1, Ordering::Relaxed);
            }
            let outcome = match (recheck, differences.is_empty()) {
                (true, true) => "transient",
                (false, true) => "match",
                (false, false) => "differs",
                (true, false) => "mismatch",
            };
            metrics::counter!("idbase_shadow_reads_total", "kind" => kind, "outcome" => outcome)
                .increment(1);
            if recheck && !differences.is_empty() {
                self.mismatched(mismatches, kind, member, &differences)
                    .await?;
            }
            results.push(Ok(differences));
        }
        Ok(results)
    }

    /// Counts a mismatch at once (they are rare, and must not be lost) and
    /// samples it into the audit trail.
    async fn mismatched(
        &self,
        mismatches: LegacyTraffic,
        kind: &'static str,
        member: Option<UserId>,
        differences: &[&'static str],
    ) -> Result<()> {
        self.legacy_traffic.count(mismatches, 1).await?;
        for field in differences {
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
        Ok(())
    }

    /// Whether idbase would accept these credentials, and whose they are
    /// (for the audit trail); no session, no throttle count, no re-hash.
    /// An unknown email is simply not accepted.
    async fn credentials_match(
        &self,
        email: &str,
        password: &str,
    ) -> Result<(bool, Option<UserId>)> {
        let Ok(email) = Email::parse(email) else {
            return Ok((false, None));
        };
        let Some(user) = self
            .store
            .user_by_email_index(&self.index.email(email.as_str()))
            .await?
        else {
            return Ok((false, None));
        };
        if crate::domain::password::reject_oversized(password).is_err() {
            return Ok((false, Some(user.id)));
        }
        let verified = self.verify_when_idle(password, user.password_hash).await?;
        Ok((verified.matched(), Some(user.id)))
    }

    /// The fields of the member that differ from what legacy showed, both
    /// sides normalised (email as stored, phone in E.164). A member idbase
    /// does not hold (or holds withdrawn) differs in `member_id`.
    fn member_differences(
        &self,
        ours: Option<&UserRow>,
        email: &str,
        phone: Option<&str>,
    ) -> Result<Vec<&'static str>> {
        let Some(row) = ours else {
            return Ok(vec!["member_id"]);
        };
        let ours = self.user_from(row)?;
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
