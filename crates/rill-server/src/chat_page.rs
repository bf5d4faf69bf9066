//! The chat page at `/`: plain HTML, CSS and a script embedded in the binary, with marked and
//! DOMPurify vendored under `web/vendor` (licences served beside them). It talks to `/v1/ws`
//! (or SSE) like any other client; the page and assets hold no data, so they are public.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};

use crate::dashboard::{static_file, HTML, JAVASCRIPT, STYLESHEET, TEXT};
use crate::error::ApiError;

const INDEX: &str = include_str!("../../../web/chat/index.html");
const JS: &str = include_str!("../../../web/chat/chat.js");
const CSS: &str = include_str!("../../../web/chat/chat.css");
const MARKED: &str = include_str!("../../../web/vendor/marked/marked.umd.js");
const MARKED_LICENSE: &str = include_str!("../../../web/vendor/marked/LICENSE.md");
const PURIFY: &str = include_str!("../../../web/vendor/dompurify/purify.min.js");
const PURIFY_LICENSE: &str = include_str!("../../../web/vendor/dompurify/LICENSE");

pub async fn page() -> Response {
    static_file(INDEX, HTML)
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "chat.js" => static_file(JS, JAVASCRIPT),
        "chat.css" => static_file(CSS, STYLESHEET),
        "marked.umd.js" => static_file(MARKED, JAVASCRIPT),
        "purify.min.js" => static_file(PURIFY, JAVASCRIPT),
        "marked.LICENSE.md" => static_file(MARKED_LICENSE, TEXT),
        "purify.LICENSE.txt" => static_file(PURIFY_LICENSE, TEXT),
        _ => ApiError::not_found(format!("no asset `{file}`")).into_response(),
    }
}
