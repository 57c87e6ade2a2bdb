//! The review dashboard's files: plain HTML, CSS and JavaScript embedded in
//! the binary, with no build step.
//!
//! The page is a shell; `app.js` signs the analyst in, loads approvals from
//! the review API and follows the event stream. It renders everything an
//! agent controls with `textContent`, never as markup, and the
//! Content-Security-Policy set on every review response refuses inline
//! script and style should anything slip through.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Shared;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// Routes for the page and its assets.
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/assets/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/assets/app.css", get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }))
        .route("/assets/favicon.svg", get(|| async { asset(FAVICON_SVG, "image/svg+xml") }))
}

/// One embedded file. Browsers revalidate every time, so a new binary's
/// files are picked up at the next load.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}
