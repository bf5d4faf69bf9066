//! Every static file the server serves, embedded in the binary from `crates/rill-server/web/`:
//! the chat page at `/` and the dashboard at `/dashboard`, their scripts and styles under
//! `/chat/assets/` and `/dashboard/assets/`, and the vendored libraries (marked, DOMPurify,
//! uPlot; `web/vendor/`, each beside its licence) with those licences. One table maps each URL
//! path to its bytes and content type; one handler answers them all with an hour of public
//! caching. None of them holds data, so none needs an API key.

use axum::http::{header, Uri};
use axum::response::{IntoResponse, Response};

use crate::protocol::ApiError;

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const STYLESHEET: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// How long browsers and proxies may keep a file.
const CACHE_CONTROL: &str = "public, max-age=3600";

/// An embedded file: its URL path, bytes and content type.
#[derive(Debug, Clone, Copy)]
pub struct StaticFile {
    /// The URL path it is served at.
    pub path: &'static str,
    /// Its contents.
    pub body: &'static [u8],
    /// Its `Content-Type`.
    pub content_type: &'static str,
}

/// Builds the table: `URL path => file under web/, content type;` per line.
macro_rules! table {
    ($($path:literal => $file:literal, $content_type:expr;)*) => {
        &[$(StaticFile {
            path: $path,
            body: include_bytes!(concat!("../web/", $file)),
            content_type: $content_type,
        }),*]
    };
}

/// Every static file, by URL path.
pub const FILES: &[StaticFile] = table! {
    // The chat page.
    "/" => "chat/index.html", HTML;
    "/chat/assets/chat.js" => "chat/chat.js", JAVASCRIPT;
    "/chat/assets/chat.css" => "chat/chat.css", STYLESHEET;
    "/chat/assets/marked.umd.js" => "vendor/marked/marked.umd.js", JAVASCRIPT;
    "/chat/assets/marked.LICENSE.md" => "vendor/marked/LICENSE.md", TEXT;
    "/chat/assets/purify.min.js" => "vendor/dompurify/purify.min.js", JAVASCRIPT;
    "/chat/assets/purify.LICENSE.txt" => "vendor/dompurify/LICENSE", TEXT;
    // The dashboard.
    "/dashboard" => "dashboard/index.html", HTML;
    "/dashboard/assets/dashboard.js" => "dashboard/dashboard.js", JAVASCRIPT;
    "/dashboard/assets/dashboard.css" => "dashboard/dashboard.css", STYLESHEET;
    "/dashboard/assets/uPlot.iife.min.js" => "vendor/uplot/uPlot.iife.min.js", JAVASCRIPT;
    "/dashboard/assets/uPlot.min.css" => "vendor/uplot/uPlot.min.css", STYLESHEET;
    "/dashboard/assets/uPlot.LICENSE.txt" => "vendor/uplot/LICENSE", TEXT;
};

/// The embedded file served at `path`, if any.
pub fn lookup(path: &str) -> Option<&'static StaticFile> {
    FILES.iter().find(|f| f.path == path)
}

/// The response for `path`: the file with its content type and cache header, or a 404.
pub fn respond(path: &str) -> Response {
    match lookup(path) {
        Some(f) => (
            [
                (header::CONTENT_TYPE, f.content_type),
                (header::CACHE_CONTROL, CACHE_CONTROL),
            ],
            f.body,
        )
            .into_response(),
        None => {
            let name = path.rsplit('/').next().unwrap_or(path);
            ApiError::not_found(format!("no asset `{name}`")).into_response()
        }
    }
}

/// The handler for every static route (`/`, `/chat/assets/{file}`, `/dashboard`,
/// `/dashboard/assets/{file}`).
pub async fn serve(uri: Uri) -> Response {
    respond(uri.path())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn every_file_has_its_content_type_and_cache_header() {
        for f in FILES {
            let r = respond(f.path);
            assert_eq!(r.status(), StatusCode::OK, "{}", f.path);
            assert_eq!(
                r.headers()[header::CONTENT_TYPE],
                f.content_type,
                "{}",
                f.path
            );
            assert_eq!(
                r.headers()[header::CACHE_CONTROL],
                CACHE_CONTROL,
                "{}",
                f.path
            );
            assert!(!f.body.is_empty(), "{}", f.path);
            let ext = f.path.rsplit_once('.').map_or("html", |(_, e)| e);
            let want = match ext {
                "html" => HTML,
                "js" => JAVASCRIPT,
                "css" => STYLESHEET,
                "md" | "txt" => TEXT,
                other => panic!("unexpected extension {other} in {}", f.path),
            };
            assert_eq!(f.content_type, want, "{}", f.path);
        }
        let mut paths: Vec<_> = FILES.iter().map(|f| f.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), FILES.len(), "a path is listed twice");
    }

    #[test]
    fn pages_reference_only_embedded_assets() {
        for page in ["/", "/dashboard"] {
            let html = std::str::from_utf8(lookup(page).unwrap().body).unwrap();
            for attr in ["src=\"", "href=\""] {
                for (i, _) in html.match_indices(attr) {
                    let url = &html[i + attr.len()..];
                    let url = &url[..url.find('"').unwrap()];
                    if url.starts_with("/chat/assets/") || url.starts_with("/dashboard/assets/") {
                        assert!(lookup(url).is_some(), "{page} references missing {url}");
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_assets_are_404() {
        for p in [
            "/dashboard/assets/nope.js",
            "/chat/assets/../Cargo.toml",
            "/chat/assets/",
        ] {
            assert_eq!(respond(p).status(), StatusCode::NOT_FOUND, "{p}");
        }
    }
}
