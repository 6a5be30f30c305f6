//! Synchronous double writes to idbase (phase ≥ 1): every member write is
//! sent to the gateway's `/internal/v1/users/{id}` with an internal client's
//! token before legacy commits its own; a write idbase did not take is not
//! acknowledged (the caller rolls back and answers 503).

use super::store::Member;
use serde_json::json;
use std::time::Duration;
use tracing::warn;

/// How long one double write may take: the member's request waits for it
/// while holding its row lock.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct DoubleWrite {
    gateway_url: String,
    client_token: String,
    http: reqwest::Client,
}

/// idbase did not take the write; the detail goes to the log only.
#[derive(Debug, thiserror::Error)]
#[error("the double write to idbase failed")]
pub struct Failed;

impl DoubleWrite {
    pub fn new(gateway_url: &str, client_token: String, http: reqwest::Client) -> Self {
        Self {
            gateway_url: gateway_url.trim_end_matches('/').to_owned(),
            client_token,
            http,
        }
    }

    /// `PUT /internal/v1/users/{id}`: the member as legacy now stores it.
    pub async fn upsert(&self, member: &Member, request_id: Option<&str>) -> Result<(), Failed> {
        let password_hash = member.credential.idbase_form().ok_or(Failed)?;
        let body = json!({
            "email": member.email,
            "phone": member.phone,
            "password_hash": password_hash,
            "version": member.version,
        });
        let request = self
            .http
            .put(format!(
                "{}/internal/v1/users/{}",
                self.gateway_url, member.id
            ))
            .json(&body);
        self.send(request, member.id, request_id).await
    }

    /// `DELETE /internal/v1/users/{id}?version=N`: the member withdrew.
    pub async fn delete(
        &self,
        id: i64,
        version: i64,
        request_id: Option<&str>,
    ) -> Result<(), Failed> {
        let request = self
            .http
            .delete(format!("{}/internal/v1/users/{id}", self.gateway_url))
            .query(&[("version", version)]);
        self.send(request, id, request_id).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        id: i64,
        request_id: Option<&str>,
    ) -> Result<(), Failed> {
        let mut request = request
            .header("Client-Token", &self.client_token)
            .timeout(TIMEOUT);
        if let Some(rid) = request_id {
            request = request.header("X-Request-Id", rid);
        }
        match request.send().await {
            Ok(answer) if answer.status().is_success() => Ok(()),
            Ok(answer) => {
                warn!(member_id = id, status = %answer.status(), "idbase refused the double write");
                Err(Failed)
            }
            Err(err) => {
                warn!(member_id = id, cause = %err, "idbase unreachable for the double write");
                Err(Failed)
            }
        }
    }
}
