//! Member support on the admin port: a member looked up by id or email and
//! shown masked, revealed unmasked, and their sessions revoked. Who asked
//! and why is audited by the admin service; this file only reads and acts.

use super::{IdentityService, User};
use crate::domain::{
    Email, Error, Phone, Result, SecurityEvent, SessionSummary, Tombstone, UserId, mask_email,
};

/// Sessions listed with a member: more than a member plausibly holds.
const MAX_SESSIONS: u32 = 50;
/// A member's most recent security events listed with them.
const RECENT_EVENTS: u32 = 20;
/// Members shown for one phone number: a family's, not a call centre's.
pub const MAX_SHARING_A_PHONE: u32 = 10;

/// How support names a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberKey {
    Id(UserId),
    /// Any form the member could log in with: normalised before the lookup.
    Email(String),
    /// Any form the member could have entered: normalised to E.164.
    Phone(String),
}

/// A member as support sees them: personal data masked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: UserId,
    /// `None` when withdrawn (nothing of them is kept but the tombstone).
    pub current: Option<MaskedMember>,
    pub tombstone: Option<Tombstone>,
    pub sessions: Vec<SessionSummary>,
    pub events: Vec<SecurityEvent>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedMember {
    /// `h****@example.com`
    pub email: String,
    /// `+81 ** **** **78`
    pub phone: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: i64,
}

impl IdentityService {
    /// The members `key` names, masked, with their live sessions and recent
    /// events: none when no member has that id, email or phone (and no
    /// tombstone that id); several when members share a phone (at most
    /// [`MAX_SHARING_A_PHONE`]).
    pub async fn lookup_members(&self, key: &MemberKey) -> Result<Vec<MemberRecord>> {
        let rows = match key {
            MemberKey::Phone(raw) => {
                let phone = Phone::parse(raw)?;
                self.store
                    .users_by_phone_index(&self.index.phone(phone.as_str()), MAX_SHARING_A_PHONE)
                    .await?
            }
            _ => return Ok(self.lookup_member(key).await?.into_iter().collect()),
        };
        let mut found = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(record) = self.lookup_member(&MemberKey::Id(row.id)).await? {
                found.push(record);
            }
        }
        Ok(found)
    }

    /// The member an id or email names (see [`Self::lookup_members`]).
    async fn lookup_member(&self, key: &MemberKey) -> Result<Option<MemberRecord>> {
        let row = match key {
            MemberKey::Id(id) => self.store.user(*id).await?,
            MemberKey::Email(raw) => {
                let email = Email::parse(raw)?;
                self.store
                    .user_by_email_index(&self.index.email(email.as_str()))
                    .await?
            }
            MemberKey::Phone(_) => return Err(Error::invalid("key", "one member by id or email")),
        };
        let (id, current) = match &row {
            Some(row) => {
                let user = self.user_from(row)?;
                let masked = MaskedMember {
                    email: mask_email_for_support(user.email.as_str()),
                    phone: user.phone.as_ref().map(|p| mask_phone(p.as_str())),
                    created_at: row.created_at,
                    updated_at: row.updated_at,
                    version: row.version,
                };
                (row.id, Some(masked))
            }
            None => match key {
                MemberKey::Id(id) => (*id, None),
                _ => return Ok(None),
            },
        };
        let tombstone = self.store.tombstone(id).await?;
        if current.is_none() && tombstone.is_none() {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        Ok(Some(MemberRecord {
            id,
            current,
            tombstone,
            sessions: self.store.member_sessions(id, now, MAX_SESSIONS).await?,
            events: self.store.member_events(id, RECENT_EVENTS).await?,
        }))
    }

    /// The member's email and phone, unmasked.
    pub async fn reveal_member(&self, id: UserId) -> Result<User> {
        let row = self.store.user(id).await?.ok_or(Error::NotFound)?;
        self.user_from(&row)
    }

    /// Revokes one session of the member, or all of them; how many were live.
    pub async fn revoke_member_sessions(&self, id: UserId, session: Option<&str>) -> Result<u64> {
        let now = self.clock.now_ms();
        let revoked = match session {
            Some(session) => u64::from(self.store.revoke_member_session(id, session, now).await?),
            None => self.store.revoke_sessions(id, None, now).await?,
        };
        Ok(revoked)
    }
}

/// `h****@example.com`: the first character of the local part, a fixed
/// number of stars (the length is not told) and the domain.
pub fn mask_email_for_support(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}****@{domain}")
        }
        None => mask_email(email),
    }
}

/// `+81 ** **** **78` for `+819012345678`: the country code and the last
/// two digits; the rest as stars in groups of four from the end.
pub fn mask_phone(e164: &str) -> String {
    let (country, national) = match phonenumber::parse(None, e164) {
        Ok(number) => (
            number.country().code().to_string(),
            number.national().to_string(),
        ),
        // Stored numbers are E.164; should one not parse, show no digit but the last two.
        Err(_) => (String::new(), e164.trim_start_matches('+').to_owned()),
    };
    let digits: Vec<char> = national.chars().collect();
    let shown = digits.len().saturating_sub(2);
    let masked: Vec<char> = digits
        .iter()
        .enumerate()
        .map(|(i, c)| if i < shown { '*' } else { *c })
        .collect();
    let mut groups: Vec<String> = masked
        .rchunks(4)
        .map(|chunk| chunk.iter().collect())
        .collect();
    groups.reverse();
    let body = groups.join(" ");
    if country.is_empty() {
        format!("+{body}")
    } else {
        format!("+{country} {body}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_show_what_support_may_see() {
        assert_eq!(
            mask_email_for_support("hanako.yamada@example.com"),
            "h****@example.com"
        );
        assert_eq!(mask_phone("+819012345678"), "+81 ** **** **78");
        assert_eq!(mask_phone("+14155550123"), "+1 ** **** **23");
        assert_eq!(mask_phone("+81312345678"), "+81 * **** **78");
    }
}
