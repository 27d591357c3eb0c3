//! The browser assets the node (at `/`) and the registry (at `/demo`) serve, compiled in
//! so a deployment is one binary. See assets/README.md.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

/// The demo page.
pub const DEMO_PAGE: &str = include_str!("../../assets/demo.html");

/// web-client/'s browser bundle (pushcenter-client with @stomp/stompjs), served at
/// `/assets/pushcenter-client.js`.
pub const CLIENT_JS: &str = include_str!("../../assets/pushcenter-client.js");

/// Where pages load [`CLIENT_JS`] from.
pub const CLIENT_JS_PATH: &str = "/assets/pushcenter-client.js";

pub async fn demo_page() -> Html<&'static str> {
    Html(DEMO_PAGE)
}

pub async fn client_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            // Not immutable: the URL has no version in it.
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        CLIENT_JS,
    )
        .into_response()
}
