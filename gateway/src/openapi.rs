//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use crate::routes::{internal, meta, sessions, users};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "idbase", description = "Member identity: registration, login, tokens, and the legacy system's double writes."),
    paths(
        users::register, users::me, users::update_me, users::withdraw,
        sessions::login, sessions::refresh, sessions::revoke,
        internal::upsert, internal::delete,
        meta::jwks, meta::openapi, meta::healthz, meta::readyz,
    ),
    modifiers(&Security),
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "client_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("Client-Token"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
