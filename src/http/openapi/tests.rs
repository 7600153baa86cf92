//! The document and the router describe the same routes: every route the daemon serves is in the
//! document with the same methods, and nothing the document lists is missing from the router.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use tower::ServiceExt;

use super::{NOT_DESCRIBED, document};

const TOKEN: &str = "openapi-test-token-0123456789abcdef";

/// Every `(METHOD, path)` the document describes.
fn documented() -> BTreeSet<(String, String)> {
    let doc = serde_json::to_value(document()).expect("the document serializes");
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in [
            "get", "post", "patch", "delete", "put", "head", "options", "trace",
        ] {
            if item.get(method).is_some() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// The paths a router holds, read from its `Debug` form (axum lists each route's path there;
/// it has no other way to enumerate them).
fn router_paths(router: &axum::Router) -> BTreeSet<String> {
    let text = format!("{router:?}");
    // The routes proper come first; the fallback router's own paths are not routes.
    let routes = text.split("fallback_router").next().unwrap_or_default();
    let mut out = BTreeSet::new();
    for piece in routes.split("RouteId(").skip(1) {
        let Some(rest) = piece.split_once("): \"").map(|(_, rest)| rest) else {
            continue;
        };
        if let Some((path, _)) = rest.split_once('"') {
            out.insert(path.to_string());
        }
    }
    out
}

/// The methods a path answers, from the `Allow` header of the 405 that a method no route uses
/// (OPTIONS) gets.
async fn methods_of(router: &axum::Router, path: &str) -> Vec<String> {
    let concrete: String = path
        .split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/");
    let request = Request::builder()
        .method(Method::OPTIONS)
        .uri(&concrete)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("answer");
    assert_eq!(
        response.status(),
        StatusCode::METHOD_NOT_ALLOWED,
        "OPTIONS {concrete} should be refused by the router with the methods it allows"
    );
    let allow = response
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    allow
        .split(',')
        .map(|m| m.trim().to_uppercase())
        .filter(|m| !m.is_empty() && m != "HEAD")
        .collect()
}

#[tokio::test]
async fn every_route_served_is_documented_and_every_documented_route_is_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = crate::config::Config::load_from(
        None,
        vec![
            (
                "SETTLED__DATABASE__URL".to_string(),
                format!("sqlite://{}", dir.path().join("settled.db").display()),
            ),
            (
                "SETTLED__DAEMON__STATE_DIR".to_string(),
                dir.path().display().to_string(),
            ),
            (
                "SETTLED__ADMIN__TOKENS".to_string(),
                format!("[\"{TOKEN}\"]"),
            ),
        ],
    )
    .expect("config");
    let state = crate::app::Context::build(config)
        .await
        .expect("context")
        .http;
    state.set_ready();
    let router = crate::http::router(state);
    let paths = router_paths(&router);
    assert!(
        paths.len() > 40,
        "the router's routes could not be read from its Debug form: {paths:?}"
    );
    let mut served = BTreeSet::new();
    for path in paths
        .iter()
        .filter(|p| !NOT_DESCRIBED.iter().any(|prefix| p.starts_with(prefix)))
    {
        let methods = methods_of(&router, path).await;
        assert!(!methods.is_empty(), "{path} answers no method");
        for method in methods {
            served.insert((method, path.clone()));
        }
    }
    let documented = documented();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in the OpenAPI document (annotate the handler with #[utoipa::path] and \
         list it in ApiDoc): {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "in the OpenAPI document but not served: {unserved:?}"
    );
}

#[test]
fn every_admin_post_takes_an_idempotency_key_and_every_admin_route_the_token() {
    let doc = serde_json::to_value(document()).expect("the document serializes");
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let admin = path.starts_with("/v1/");
            assert_eq!(
                op.get("security").is_some(),
                admin,
                "{method} {path}: the admin token is required exactly on /v1"
            );
            let has_key = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "Idempotency-Key"));
            assert_eq!(has_key, admin && method == "post", "{method} {path}");
            if admin {
                assert!(op["responses"].get("401").is_some(), "{method} {path}");
            }
        }
    }
}

#[test]
fn amounts_are_decimal_strings_and_alternatives_are_offered() {
    let doc = serde_json::to_value(document()).expect("the document serializes");
    let amount = &doc["components"]["schemas"]["Amount"];
    assert_eq!(amount["type"], "string");
    assert_eq!(amount["pattern"], super::wire::AMOUNT_PATTERN);
    let invoice = &doc["components"]["schemas"]["Invoice"]["properties"];
    assert_eq!(invoice["amount_due"]["$ref"], "#/components/schemas/Amount");
    let statement =
        &doc["paths"]["/v1/customers/{id}/statement"]["get"]["responses"]["200"]["content"];
    for media in ["application/json", "text/csv", "application/pdf"] {
        assert!(statement.get(media).is_some(), "the statement as {media}");
    }
    let list = &doc["components"]["schemas"]["ListResponse_Customer"]["properties"];
    assert_eq!(
        list["data"]["items"]["$ref"],
        "#/components/schemas/Customer"
    );
    let statuses = &doc["components"]["schemas"]["InvoiceStatus"]["enum"];
    assert_eq!(
        statuses,
        &serde_json::json!(settled_jobs::status::InvoiceStatus::names())
    );
}
