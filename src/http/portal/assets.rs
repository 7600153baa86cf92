//! The portal's stylesheet and script, embedded in the binary and served from `/portal/static/`
//! (the Content-Security-Policy allows scripts and styles from this origin only, besides
//! Stripe.js).

use axum::extract::Path;
use axum::http::header;
use axum::response::IntoResponse;

use super::{PageError, PageResult};

pub async fn serve(Path(file): Path<String>) -> PageResult {
    let (body, kind) = match file.as_str() {
        "portal.css" => (include_str!("static/portal.css"), "text/css; charset=utf-8"),
        "portal.js" => (
            include_str!("static/portal.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return Err(PageError::NotFound),
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response())
}
