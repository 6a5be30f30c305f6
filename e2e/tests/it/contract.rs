//! docs/legacy-contract.yaml as a test oracle: an answer legacy gave (to the
//! emulator's own tests, or through the gateway's legacy proxy) is one the
//! contract documents, with a body valid against the operation's schema.

use e2e::legacy::SERVED_HEADER;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::sync::LazyLock;

/// docs/legacy-contract.yaml as JSON.
static CONTRACT: LazyLock<Value> = LazyLock::new(|| {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/legacy-contract.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::from_str(&text).unwrap()
});

/// Follows a `$ref` within the contract.
fn resolve(value: &Value) -> &Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => CONTRACT
            .pointer(pointer.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {pointer}")),
        None => value,
    }
}

/// The contract's path template a concrete path falls under
/// (`/legacy/v1/sync/members/2` → `/legacy/v1/sync/members/{id}`).
fn template_of(path: &str) -> &'static str {
    let segments: Vec<&str> = path.split('/').collect();
    CONTRACT["paths"]
        .as_object()
        .unwrap()
        .keys()
        .find(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(part, segment)| {
                    part == segment || (part.starts_with('{') && !segment.is_empty())
                })
        })
        .map_or("", String::as_str)
}

/// Asserts that an answer of `method path` is one the contract documents.
pub(crate) fn check_contract(
    method: &Method,
    path: &str,
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) {
    let operation = &CONTRACT["paths"][template_of(path)][method.as_str().to_lowercase()];
    assert!(
        operation.is_object(),
        "{method} {path} is not in the contract"
    );
    let response = resolve(&operation["responses"][status.as_str()]);
    assert!(
        response.is_object(),
        "{method} {path}: status {status} is not documented"
    );
    assert_eq!(
        headers.get(SERVED_HEADER).and_then(|v| v.to_str().ok()),
        Some("true"),
        "{method} {path} {status}: no Legacy-Served"
    );
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        assert!(
            body.is_empty(),
            "{method} {path} {status}: undocumented body"
        );
        return;
    };
    let (media_type, media) = content.iter().next().unwrap();
    let content_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_eq!(content_type, media_type, "{method} {path} {status}");
    let instance: Value = serde_json::from_slice(body).unwrap();
    let mut schema = media["schema"].clone();
    // The operation's schema with the contract's components beside it, so
    // that its `#/components/…` references resolve.
    schema["components"] = CONTRACT["components"].clone();
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: {instance} breaks the contract: {errors:?}"
    );
}
