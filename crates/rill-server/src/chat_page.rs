//! The chat page at `/`: plain HTML, CSS and a script embedded in the binary, with marked and
//! DOMPurify vendored under `web/vendor` (licences served beside them). It talks to `/v1/ws`
//! (or SSE) like any other client; the page and assets hold no data, so they are public.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

const INDEX: &str = include_str!("../../../web/chat/index.html");
const JS: &str = include_str!("../../../web/chat/chat.js");
const CSS: &str = include_str!("../../../web/chat/chat.css");
const MARKED: &str = include_str!("../../../web/vendor/marked/marked.umd.js");
const MARKED_LICENSE: &str = include_str!("../../../web/vendor/marked/LICENSE.md");
const PURIFY: &str = include_str!("../../../web/vendor/dompurify/purify.min.js");
const PURIFY_LICENSE: &str = include_str!("../../../web/vendor/dompurify/LICENSE");

pub async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response()
}

pub async fn asset(Path(file): Path<String>) -> Response {
    let js = "text/javascript; charset=utf-8";
    let (body, ty) = match file.as_str() {
        "chat.js" => (JS, js),
        "chat.css" => (CSS, "text/css; charset=utf-8"),
        "marked.umd.js" => (MARKED, js),
        "purify.min.js" => (PURIFY, js),
        "marked.LICENSE.md" => (MARKED_LICENSE, "text/plain; charset=utf-8"),
        "purify.LICENSE.txt" => (PURIFY_LICENSE, "text/plain; charset=utf-8"),
        _ => return ApiError::not_found(format!("no asset `{file}`")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}
