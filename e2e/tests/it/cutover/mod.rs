//! The phase cutover end to end: idsvc, gateways and the legacy emulator as
//! processes on loopback ([`e2e::cutover::Cutover`]), driven over HTTP by the
//! three client classes while the phase moves.

mod exchange;
mod follow;
mod load;
mod parity;
mod ramp;
mod routing;
mod shadow;

use e2e::cutover::{Cutover, CutoverOptions};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub(crate) const SEEDED: u32 = 200;

/// A cutover deployment with `gateways` gateways and the extra gateway flags.
pub(crate) async fn start(gateways: usize, gateway_args: &[&str]) -> Cutover {
    start_with(gateways, gateway_args, true).await
}

pub(crate) async fn start_with(
    gateways: usize,
    gateway_args: &[&str],
    double_writes: bool,
) -> Cutover {
    Cutover::start(CutoverOptions {
        binary: std::path::Path::new(env!("CARGO_BIN_EXE_idbase")),
        idsvc_args: e2e::CHEAP_ARGON2,
        gateways,
        gateway_args,
        seed_members: SEEDED,
        double_writes,
    })
    .await
    .unwrap()
}

/// Which side answered: legacy marks every answer with `Legacy-Served: true`;
/// everything else is idbase's (idsvc through the gateway, or the gateway's
/// own answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Legacy,
    Idbase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Internal,
    Web,
    Mobile,
}

impl Class {
    pub(crate) const ALL: [Self; 3] = [Self::Internal, Self::Web, Self::Mobile];

    pub(crate) fn token(self, tokens: &e2e::Tokens) -> &str {
        match self {
            Self::Internal => &tokens.internal,
            Self::Web => &tokens.web,
            Self::Mobile => &tokens.mobile,
        }
    }
}

/// One answer, with the side that gave it.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub side: Side,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Answer {
    /// The problem type's slug, if the body is a problem.
    pub(crate) fn problem(&self) -> Option<&str> {
        self.body["type"]
            .as_str()
            .and_then(|t| t.strip_prefix("urn:idbase:problem:"))
    }

    pub(crate) fn str(&self, field: &str) -> String {
        self.body[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field} in {self:?}"))
            .to_owned()
    }
}

/// Tokens of one session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub access: String,
    pub refresh: String,
}

impl Session {
    pub(crate) fn from(answer: &Answer) -> Self {
        Self {
            access: answer.str("access_token"),
            refresh: answer.str("refresh_token"),
        }
    }

    /// An access token idbase signed (a JWT) rather than legacy's `la_…`.
    pub(crate) fn is_idbase(&self) -> bool {
        self.access.split('.').count() == 3
    }
}

/// The member API of one gateway, as a client of some class calls it.
#[derive(Clone)]
pub(crate) struct Api {
    pub url: String,
    pub tokens: e2e::Tokens,
    pub http: reqwest::Client,
}

impl Api {
    pub(crate) fn new(url: &str, tokens: &e2e::Tokens) -> Self {
        Self {
            url: url.to_owned(),
            tokens: tokens.clone(),
            http: reqwest::Client::new(),
        }
    }

    pub(crate) async fn call(
        &self,
        class: Class,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .header("Client-Token", class.token(&self.tokens));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status();
        let headers = answer.headers().clone();
        let side = if answer
            .headers()
            .get("legacy-served")
            .is_some_and(|v| v == "true")
        {
            Side::Legacy
        } else {
            Side::Idbase
        };
        let retry_after = answer
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = answer.bytes().await.unwrap();
        if side == Side::Legacy {
            // The gateway's legacy path keeps to the contract legacy meets.
            crate::contract::check_contract(&method, path, status, &headers, &bytes);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            side,
            body,
            retry_after,
        }
    }

    pub(crate) async fn login(&self, class: Class, email: &str, password: &str) -> Answer {
        let body = json!({"email": email, "password": password});
        self.call(class, Method::POST, "/v1/sessions", None, Some(body))
            .await
    }

    pub(crate) async fn register(&self, class: Class, email: &str, password: &str) -> Answer {
        let body = json!({"email": email, "password": password});
        self.call(class, Method::POST, "/v1/users", None, Some(body))
            .await
    }

    pub(crate) async fn refresh(&self, class: Class, refresh_token: &str) -> Answer {
        let body = json!({"refresh_token": refresh_token});
        self.call(class, Method::POST, "/v1/tokens/refresh", None, Some(body))
            .await
    }

    pub(crate) async fn revoke(&self, class: Class, refresh_token: &str) -> Answer {
        let body = json!({"refresh_token": refresh_token});
        self.call(class, Method::POST, "/v1/tokens/revoke", None, Some(body))
            .await
    }

    pub(crate) async fn me(&self, class: Class, access: Option<&str>) -> Answer {
        self.call(class, Method::GET, "/v1/users/me", access, None)
            .await
    }

    pub(crate) async fn patch_me(&self, class: Class, access: Option<&str>, body: Value) -> Answer {
        self.call(class, Method::PATCH, "/v1/users/me", access, Some(body))
            .await
    }

    pub(crate) async fn withdraw(
        &self,
        class: Class,
        access: Option<&str>,
        password: &str,
    ) -> Answer {
        let body = json!({"current_password": password});
        self.call(class, Method::DELETE, "/v1/users/me", access, Some(body))
            .await
    }

    pub(crate) async fn internal_put(&self, class: Class, id: i64, version: i64) -> Answer {
        // An argon2id PHC string, as a double write may carry one.
        let body = json!({
            "email": format!("internal-{id}@example.com"),
            "phone": null,
            "password_hash": "$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHRzYWx0$3Tf4m8cM5eV6cFfY1QSrmXL0yQkH3mvbM2QtYQbo0C0",
            "version": version,
        });
        self.call(
            class,
            Method::PUT,
            &format!("/internal/v1/users/{id}"),
            None,
            Some(body),
        )
        .await
    }

    pub(crate) async fn internal_delete(&self, class: Class, id: i64, version: i64) -> Answer {
        self.call(
            class,
            Method::DELETE,
            &format!("/internal/v1/users/{id}?version={version}"),
            None,
            None,
        )
        .await
    }
}
