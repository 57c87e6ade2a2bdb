//! The OpenAPI document of the review API, generated from the handlers'
//! annotations and served at `/api/openapi.json`.

use axum::Json;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{api, error, events, session, view};

/// The review API, as OpenAPI.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Midosoc review API",
        description = "Approve or deny the requests Midosoc holds. Errors are \
            RFC 9457 problem details (`application/problem+json`) with stable \
            `type` URIs under `https://midosoc.dev/problems/`.",
    ),
    paths(
        session::sign_in,
        session::current,
        session::sign_out,
        api::list,
        api::show,
        api::approve,
        api::deny,
        api::audit,
        events::stream,
    ),
    components(schemas(
        view::ApprovalView,
        view::ApprovalList,
        view::EventView,
        view::AuditLog,
        view::SessionView,
        api::DecisionRequest,
        session::SignIn,
        session::SignedOut,
        error::Problem,
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "approvals", description = "Held requests and their decisions"),
        (name = "events", description = "Live store events as Server-Sent Events"),
        (name = "audit", description = "What happened, by whom, when"),
        (name = "session", description = "Browser sign-in with an analyst token"),
    )
)]
pub(super) struct ReviewApi;

/// Adds the two ways to authenticate.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.description = Some(
            "An analyst token (`mdsr_…`). Agent keys are refused. Exempt from CSRF checks."
                .to_owned(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));

        let mut cookie = ApiKeyValue::new(session::SECURE_COOKIE);
        cookie.description = Some(format!(
            "The session cookie set by `POST /api/session` (`{}` when the gateway \
             runs without secure cookies on loopback). State changes also need \
             the session's CSRF token in `X-CSRF-Token` and a same-origin `Origin`.",
            session::DEV_COOKIE
        ));
        components.add_security_scheme("session", SecurityScheme::ApiKey(ApiKey::Cookie(cookie)));
    }
}

/// Serves the OpenAPI document.
pub(super) async fn document() -> Json<Document> {
    Json(ReviewApi::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_describes_every_review_route() {
        let doc = serde_json::to_value(ReviewApi::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/api/approvals",
            "/api/approvals/{id}",
            "/api/approvals/{id}/approve",
            "/api/approvals/{id}/deny",
            "/api/events",
            "/api/audit",
            "/api/session",
        ] {
            assert!(paths.contains_key(path), "{path} missing from the OpenAPI document");
        }
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["session"]["in"], "cookie");
        assert!(doc["components"]["schemas"]["ApprovalView"].is_object());
        assert!(doc["components"]["schemas"]["Problem"]["properties"]["type"].is_object());
    }
}
