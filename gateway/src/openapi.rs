//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use crate::routes::{internal, meta, sessions, users};
use idbase_proto::ProblemType;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
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
    modifiers(&Security, &ProblemTypes, &DependentRequired),
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

/// The Problem schema's `type` lists every [`ProblemType`], so the document
/// cannot drift from the types the API answers with.
struct ProblemTypes;

impl Modify for ProblemTypes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(RefOr::T(Schema::Object(problem))) = openapi
            .components
            .as_mut()
            .and_then(|c| c.schemas.get_mut("Problem"))
        else {
            return;
        };
        let types = ProblemType::ALL
            .iter()
            .map(|t| format!("`{}` ({}, {})", t.uri(), t.http_status(), t.title()))
            .collect::<Vec<_>>()
            .join("; ");
        let kind = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ProblemType::ALL.iter().map(|t| t.uri())))
            .description(Some(format!("Stable problem type: {types}.")))
            .build();
        problem.properties.insert("type".to_owned(), kind.into());
    }
}

/// `current_password` is required with `email`, `phone` or `password` in a PATCH of
/// the member: JSON Schema's `dependentRequired`, which utoipa has no field
/// for, so it goes in as a raw keyword.
struct DependentRequired;

impl Modify for DependentRequired {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(RefOr::T(Schema::Object(update))) = openapi
            .components
            .as_mut()
            .and_then(|c| c.schemas.get_mut("UpdateMeBody"))
        else {
            return;
        };
        update
            .extensions
            .get_or_insert_with(Default::default)
            .insert(
                "dependentRequired".to_owned(),
                serde_json::json!({
                    "email": ["current_password"],
                    "phone": ["current_password"],
                    "password": ["current_password"],
                }),
            );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn document() -> Value {
        serde_json::to_value(ApiDoc::openapi()).unwrap()
    }

    #[test]
    fn problem_type_lists_every_type() {
        let doc = document();
        let listed = doc["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
            .as_array()
            .unwrap()
            .clone();
        let all: Vec<Value> = ProblemType::ALL.iter().map(|t| t.uri().into()).collect();
        assert_eq!(listed, all);
    }

    #[test]
    fn states_the_constraints_the_handlers_enforce() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let register = &schemas["RegisterBody"]["properties"];
        assert_eq!(register["password"]["minLength"], 8);
        assert_eq!(register["password"]["maxLength"], 128);
        assert_eq!(register["email"]["format"], "email");
        assert_eq!(register["email"]["maxLength"], 254);
        assert_eq!(
            schemas["LegacyUserBody"]["properties"]["version"]["minimum"],
            0
        );
        let item = &doc["paths"]["/internal/v1/users/{id}"];
        for method in ["put", "delete"] {
            let id = &item[method]["parameters"][0];
            assert_eq!(id["name"], "id");
            assert_eq!(id["schema"]["minimum"], 1, "{method}");
        }
        let update = &schemas["UpdateMeBody"];
        assert_eq!(update["dependentRequired"]["email"][0], "current_password");
        assert_eq!(update["dependentRequired"]["phone"][0], "current_password");
        assert_eq!(update["properties"]["current_password"]["type"], "string");
        let version = &item["delete"]["parameters"][1];
        assert_eq!(version["name"], "version");
        assert_eq!(version["schema"]["minimum"], 0);
        let key = &doc["paths"]["/v1/users"]["post"]["parameters"][0];
        assert_eq!(key["name"], "Idempotency-Key");
        assert_eq!(key["schema"]["pattern"], "^[!-~]{1,255}$");
    }
}
