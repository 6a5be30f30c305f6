//! `idbase admin user …`: member support from a runbook — look a member up
//! (masked), reveal them, revoke their sessions. Each needs a reason, which
//! idsvc records in the audit trail with the caller's name.

use crate::client::Client;
use crate::failure::{Exit, Failure};
use crate::output::timestamp;
use crate::phase::reason;
use idbase_proto::v1::lookup_user_request::Key;
use idbase_proto::v1::{
    LookupUserRequest, MemberRecord, RevealUserRequest, RevealedMember, RevokeSessionsRequest,
};
use serde::Serialize;
use std::fmt::Write;

#[derive(Clone, Debug, clap::Subcommand)]
pub enum UserCommand {
    /// A member by id, email or phone: masked email and phone, versions,
    /// tombstone, live sessions and recent security events.
    Lookup {
        #[command(flatten)]
        key: MemberKeyArgs,
        /// Why (1–500 characters): recorded in the audit trail.
        #[arg(long, value_parser = reason)]
        reason: String,
    },
    /// A member's email and phone unmasked.
    Reveal {
        /// The member id.
        id: i64,
        /// Why (1–500 characters): recorded in the audit trail.
        #[arg(long, value_parser = reason)]
        reason: String,
    },
    /// End one session of a member (`--session`) or all of them (`--all`):
    /// their refresh tokens stop working at once.
    Revoke {
        /// The member id.
        id: i64,
        /// The session's id, as `lookup` lists it.
        #[arg(long, value_name = "SESSION", required_unless_present = "all")]
        session: Option<String>,
        /// Every session of the member.
        #[arg(long, conflicts_with = "session")]
        all: bool,
        /// Why (1–500 characters): recorded in the audit trail.
        #[arg(long, value_parser = reason)]
        reason: String,
    },
}

/// How `lookup` names the member: exactly one of the three.
#[derive(Clone, Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct MemberKeyArgs {
    /// The member id.
    #[arg(long)]
    id: Option<i64>,
    /// Any form the member could log in with.
    #[arg(long)]
    email: Option<String>,
    /// Any form the member could have typed (read as Japanese without a
    /// country code).
    #[arg(long)]
    phone: Option<String>,
}

impl MemberKeyArgs {
    fn key(self) -> Key {
        match (self.id, self.email, self.phone) {
            (Some(id), ..) => Key::MemberId(id),
            (None, Some(email), _) => Key::Email(email),
            (None, None, phone) => Key::Phone(phone.unwrap_or_default()),
        }
    }
}

/// What a command found or did.
#[derive(Debug)]
pub enum Outcome {
    Found(MemberRecord),
    Revealed(RevealedMember),
    Revoked { member_id: i64, revoked: u32 },
}

impl Outcome {
    pub fn exit(&self) -> Exit {
        Exit::Ok
    }
}

pub async fn execute(command: UserCommand, mut client: Client) -> Result<Outcome, Failure> {
    match command {
        UserCommand::Lookup { key, reason } => {
            let request = client.request(LookupUserRequest {
                key: Some(key.key()),
                reason,
            });
            Ok(Outcome::Found(
                client.admin.lookup_user(request).await?.into_inner(),
            ))
        }
        UserCommand::Reveal { id, reason } => {
            let request = client.request(RevealUserRequest {
                member_id: id,
                reason,
            });
            Ok(Outcome::Revealed(
                client.admin.reveal_user(request).await?.into_inner(),
            ))
        }
        UserCommand::Revoke {
            id,
            session,
            all: _,
            reason,
        } => {
            let request = client.request(RevokeSessionsRequest {
                member_id: id,
                session_id: session.unwrap_or_default(),
                reason,
            });
            let revoked = client.admin.revoke_sessions(request).await?.into_inner();
            Ok(Outcome::Revoked {
                member_id: id,
                revoked: revoked.revoked,
            })
        }
    }
}

// ---------------------------------------------------------------- text

pub fn human(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Found(member) => member_text(member),
        Outcome::Revealed(member) => {
            let phone = if member.phone.is_empty() {
                "-"
            } else {
                &member.phone
            };
            format!(
                "member   {}\nemail    {}\nphone    {phone}\n",
                member.member_id, member.email
            )
        }
        Outcome::Revoked { member_id, revoked } => {
            let plural = if *revoked == 1 { "" } else { "s" };
            format!("revoked {revoked} live session{plural} of member {member_id}\n")
        }
    }
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

fn member_text(m: &MemberRecord) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "member     {}", m.member_id);
    if let Some(tombstone) = &m.tombstone {
        let _ = writeln!(
            text,
            "withdrawn  {} (version {})",
            timestamp(tombstone.deleted_at),
            tombstone.version
        );
    }
    if m.tombstone.is_none() || !m.email_masked.is_empty() {
        let _ = writeln!(text, "email      {}", or_dash(&m.email_masked));
        let _ = writeln!(text, "phone      {}", or_dash(&m.phone_masked));
        let _ = writeln!(text, "created    {}", timestamp(m.created_at));
        let _ = writeln!(text, "updated    {}", timestamp(m.updated_at));
        let _ = writeln!(text, "version    {}", m.version);
    }
    if !m.others_with_phone.is_empty() {
        let others: Vec<String> = m.others_with_phone.iter().map(i64::to_string).collect();
        let _ = writeln!(text, "same phone {}", others.join(", "));
    }
    let _ = writeln!(text, "\nsessions ({})", m.sessions.len());
    for s in &m.sessions {
        let last = s.last_used_at.map_or_else(|| "-".to_owned(), timestamp);
        let _ = writeln!(
            text,
            "  {}  created {}  last used {}  client {}",
            s.id,
            timestamp(s.created_at),
            last,
            or_dash(&s.client)
        );
    }
    let _ = writeln!(text, "\nrecent events ({})", m.events.len());
    for e in &m.events {
        let _ = writeln!(text, "  {}", crate::events::line(e));
    }
    text
}

// ---------------------------------------------------------------- JSON

#[derive(Serialize)]
struct SessionJson<'a> {
    id: &'a str,
    created_at: String,
    last_used_at: Option<String>,
    client: &'a str,
}

#[derive(Serialize)]
struct TombstoneJson {
    deleted_at: String,
    version: i64,
}

#[derive(Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
enum Json<'a> {
    Member {
        member_id: i64,
        email_masked: &'a str,
        phone_masked: &'a str,
        created_at: String,
        updated_at: String,
        version: i64,
        tombstone: Option<TombstoneJson>,
        others_with_phone: &'a [i64],
        sessions: Vec<SessionJson<'a>>,
        events: Vec<crate::events::EventJson<'a>>,
    },
    Revealed {
        member_id: i64,
        email: &'a str,
        phone: &'a str,
    },
    Revoked {
        member_id: i64,
        revoked: u32,
    },
}

pub fn json(outcome: &Outcome) -> String {
    let value = match outcome {
        Outcome::Found(m) => Json::Member {
            member_id: m.member_id,
            email_masked: &m.email_masked,
            phone_masked: &m.phone_masked,
            created_at: timestamp(m.created_at),
            updated_at: timestamp(m.updated_at),
            version: m.version,
            tombstone: m.tombstone.as_ref().map(|t| TombstoneJson {
                deleted_at: timestamp(t.deleted_at),
                version: t.version,
            }),
            others_with_phone: &m.others_with_phone,
            sessions: m
                .sessions
                .iter()
                .map(|s| SessionJson {
                    id: &s.id,
                    created_at: timestamp(s.created_at),
                    last_used_at: s.last_used_at.map(timestamp),
                    client: &s.client,
                })
                .collect(),
            events: m
                .events
                .iter()
                .map(crate::events::EventJson::from)
                .collect(),
        },
        Outcome::Revealed(m) => Json::Revealed {
            member_id: m.member_id,
            email: &m.email,
            phone: &m.phone,
        },
        Outcome::Revoked { member_id, revoked } => Json::Revoked {
            member_id: *member_id,
            revoked: *revoked,
        },
    };
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}
