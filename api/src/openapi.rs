//! The OpenAPI 3 document, generated from the handlers and types.

use std::sync::OnceLock;

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi};

use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "tally API", description = "Records practice sessions and assessments; the tally PostgreSQL extension keeps the usage counters exact."),
    paths(
        crate::sessions::create_session,
        crate::sessions::get_session,
        crate::sessions::finish_session,
        crate::usage::get_usage,
        crate::health::healthz,
        crate::health::readyz,
        crate::health::render_metrics,
        openapi_json,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    modifiers(&BearerAuth, &SessionLinks),
)]
pub struct ApiDoc;

/// OpenAPI links from a recorded session to reading and finishing it, so that clients
/// and stateful testers can follow the `session_id` a POST returns.
struct SessionLinks;

impl Modify for SessionLinks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let get = ("GetSession", "get_session");
        let finish = ("FinishSession", "finish_session");
        add_links(openapi, "/v1/sessions", HttpMethod::Post, &[get, finish]);
        add_links(
            openapi,
            "/v1/sessions/{session_id}",
            HttpMethod::Patch,
            &[get],
        );
    }
}

/// Adds `links` (name, operation id) to the 200 and 201 responses of an operation.
fn add_links(
    openapi: &mut utoipa::openapi::OpenApi,
    path: &str,
    method: HttpMethod,
    links: &[(&str, &str)],
) {
    let Some(item) = openapi.paths.paths.get_mut(path) else {
        return;
    };
    let operation = match method {
        HttpMethod::Post => item.post.as_mut(),
        HttpMethod::Patch => item.patch.as_mut(),
        _ => None,
    };
    let Some(operation) = operation else { return };
    for (status, response) in operation.responses.responses.iter_mut() {
        let (true, RefOr::T(response)) = (status == "200" || status == "201", response) else {
            continue;
        };
        for (name, operation_id) in links {
            let link = LinkBuilder::new()
                .operation_id(*operation_id)
                .parameter("session_id", "$response.body#/session/session_id")
                .description("the session this response returns")
                .build();
            response.links.insert(name.to_string(), RefOr::T(link));
        }
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
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

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// This document
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub async fn openapi_json() -> Json<serde_json::Value> {
    Json(document().clone())
}

/// The OpenAPI document of the API, built once.
pub fn document() -> &'static serde_json::Value {
    static DOCUMENT: OnceLock<serde_json::Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut document =
            serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
        camel_case_links(&mut document);
        document
    })
}

/// utoipa 5.5 writes a Link Object's `operationId` and `requestBody` in snake case;
/// OpenAPI (and every tool reading it) wants camel case.
fn camel_case_links(document: &mut serde_json::Value) {
    // get_mut, not indexing: indexing a JSON object inserts the missing key as null.
    fn children(
        value: Option<&mut serde_json::Value>,
    ) -> impl Iterator<Item = &mut serde_json::Value> {
        value
            .and_then(|v| v.as_object_mut())
            .into_iter()
            .flat_map(|map| map.values_mut())
    }
    for item in children(document.get_mut("paths")) {
        for operation in children(Some(item)) {
            for response in children(operation.get_mut("responses")) {
                for link in children(response.get_mut("links")) {
                    let Some(link) = link.as_object_mut() else {
                        continue;
                    };
                    for (snake, camel) in [
                        ("operation_id", "operationId"),
                        ("request_body", "requestBody"),
                    ] {
                        if let Some(value) = link.remove(snake) {
                            link.insert(camel.into(), value);
                        }
                    }
                }
            }
        }
    }
}
