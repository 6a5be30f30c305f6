//! Client applications and the `Client-Token` header that identifies them.
//!
//! The clients file holds only SHA-256 hashes of the tokens:
//!
//! ```toml
//! [[client]]
//! id = "ios-app"
//! class = "mobile"          # internal | web | mobile
//! token_sha256 = "9f86d0…"  # hex SHA-256 of the token
//! ```

use crate::problem::Problem;
use anyhow::{Context, bail};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use idbase_proto::ProblemType;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub const CLIENT_TOKEN: &str = "client-token";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientClass {
    /// The legacy web tier: may double-write.
    Internal,
    Web,
    Mobile,
}

/// An authenticated client application.
#[derive(Clone, Debug)]
pub struct Client {
    pub id: String,
    pub class: ClientClass,
}

struct Entry {
    client: Client,
    token_hash: [u8; 32],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    id: String,
    class: ClientClass,
    token_sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    client: Vec<FileEntry>,
}

#[derive(Clone)]
pub struct Clients(Arc<Vec<Entry>>);

impl Clients {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: File = toml::from_str(text)?;
        let mut entries: Vec<Entry> = Vec::new();
        for entry in file.client {
            let bytes = hex::decode(entry.token_sha256.trim())
                .with_context(|| format!("client {}: token_sha256 is not hex", entry.id))?;
            let Ok(token_hash) = <[u8; 32]>::try_from(bytes) else {
                bail!("client {}: token_sha256 must be 32 bytes", entry.id);
            };
            // One token must name one client: with a shared hash, which client
            // (and class) a request is would depend on the file's order, and
            // revoking one client's token would silently revoke the other's.
            if let Some(other) = entries.iter().find(|e| e.token_hash == token_hash) {
                bail!(
                    "clients {} and {} have the same token_sha256; every client needs its own token",
                    other.client.id,
                    entry.id
                );
            }
            if entries.iter().any(|e| e.client.id == entry.id) {
                bail!("client id {} appears twice", entry.id);
            }
            entries.push(Entry {
                client: Client {
                    id: entry.id,
                    class: entry.class,
                },
                token_hash,
            });
        }
        if entries.is_empty() {
            bail!("no clients");
        }
        Ok(Self(Arc::new(entries)))
    }

    /// From plaintext tokens (dev mode creates them).
    pub fn from_tokens<'a>(
        tokens: impl IntoIterator<Item = (&'a str, ClientClass, &'a str)>,
    ) -> Self {
        let entries = tokens
            .into_iter()
            .map(|(id, class, token)| Entry {
                client: Client {
                    id: id.to_owned(),
                    class,
                },
                token_hash: hash(token),
            })
            .collect();
        Self(Arc::new(entries))
    }

    /// Compares against every client in constant time, so timing tells
    /// nothing about how close a guess came or which client matched.
    pub fn authenticate(&self, token: &str) -> Option<Client> {
        let presented = hash(token);
        let mut found = None;
        for entry in self.0.iter() {
            if bool::from(entry.token_hash.ct_eq(&presented)) {
                found = Some(entry.client.clone());
            }
        }
        found
    }
}

pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Middleware: 401 without a known `Client-Token`.
pub async fn require_client(
    State(clients): State<Clients>,
    mut request: Request,
    next: Next,
) -> Result<Response, Problem> {
    let token = request
        .headers()
        .get(CLIENT_TOKEN)
        .and_then(|v| v.to_str().ok());
    let Some(client) = token.and_then(|t| clients.authenticate(t)) else {
        return Err(Problem::new(
            ProblemType::InvalidClient,
            "a valid Client-Token header is required".to_owned(),
        ));
    };
    tracing::Span::current().record("client", client.id.as_str());
    request.extensions_mut().insert(client);
    Ok(next.run(request).await)
}

/// Middleware after `require_client`: 403 unless the client is internal.
pub async fn require_internal(request: Request, next: Next) -> Result<Response, Problem> {
    let internal = request
        .extensions()
        .get::<Client>()
        .is_some_and(|c| c.class == ClientClass::Internal);
    if !internal {
        return Err(Problem::new(
            ProblemType::Forbidden,
            "only internal clients may double-write".to_owned(),
        ));
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_and_authenticates() {
        let text = format!(
            "[[client]]\nid = \"legacy-web\"\nclass = \"internal\"\ntoken_sha256 = \"{}\"\n",
            hex::encode(hash("s3cret"))
        );
        let clients = Clients::parse(&text).unwrap();
        let client = clients.authenticate("s3cret").unwrap();
        assert_eq!(
            (client.id.as_str(), client.class),
            ("legacy-web", ClientClass::Internal)
        );
        assert!(clients.authenticate("s3cre").is_none());
    }

    #[test]
    fn rejects_bad_files() {
        assert!(
            Clients::parse("[[client]]\nid = \"a\"\nclass = \"web\"\ntoken_sha256 = \"zz\"\n")
                .is_err()
        );
        assert!(
            Clients::parse("[[client]]\nid = \"a\"\nclass = \"root\"\ntoken_sha256 = \"00\"\n")
                .is_err()
        );
        assert!(Clients::parse("client = []\n").is_err());
    }

    #[test]
    fn refuses_a_token_hash_shared_by_two_clients() {
        let entry = |id: &str, class: &str, token: &str| {
            format!(
                "[[client]]\nid = \"{id}\"\nclass = \"{class}\"\ntoken_sha256 = \"{}\"\n",
                hex::encode(hash(token))
            )
        };
        let shared = entry("legacy-web", "internal", "same") + &entry("ios-app", "mobile", "same");
        let err = Clients::parse(&shared).err().unwrap().to_string();
        assert!(
            err.contains("legacy-web") && err.contains("ios-app"),
            "{err}"
        );
        // Upper-case hex is the same hash and is refused too.
        let upper = entry("legacy-web", "internal", "same")
            + &format!(
                "[[client]]\nid = \"ios-app\"\nclass = \"mobile\"\ntoken_sha256 = \"{}\"\n",
                hex::encode_upper(hash("same"))
            );
        assert!(Clients::parse(&upper).is_err());
        let distinct = entry("legacy-web", "internal", "one") + &entry("ios-app", "mobile", "two");
        assert!(Clients::parse(&distinct).is_ok());
        let same_id = entry("web", "web", "one") + &entry("web", "mobile", "two");
        assert!(Clients::parse(&same_id).is_err());
    }
}
