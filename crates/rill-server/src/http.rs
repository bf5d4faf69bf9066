//! The HTTP routes: health and readiness, models, the two OpenAI generation endpoints, stream
//! resume and cancel, the WebSocket upgrade and the OpenAPI document; plus auth, CORS and
//! body-limit layers.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use rill_scheduler::Event;
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use crate::openai::Renderer;
use crate::params::{self, GenParams, Kind};
use crate::protocol::ApiError;
use crate::relay::{relay, Choices, Collector, Relayed};
use crate::resume::Resumable;
use crate::state::SharedState;
use crate::{openapi, sse, ws};

/// The API key a request authenticated with ("anonymous" without auth).
#[derive(Clone, Debug)]
pub struct ApiKey(pub String);

/// The whole app: public `/health`, web pages and assets; every other route behind API-key
/// auth; body limit, panic-to-500 and (when origins are configured) CORS layers.
pub fn router(state: SharedState) -> Router {
    let cors = cors_layer(&state.cfg.cors_origins);
    let api = Router::new()
        .route("/ready", get(ready))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/messages", post(crate::anthropic::messages))
        .route(
            "/v1/messages/count_tokens",
            post(crate::anthropic::count_tokens),
        )
        .route("/v1/streams/{id}", get(resume).delete(cancel))
        .route("/v1/ws", get(ws::upgrade))
        .route("/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics))
        .route("/dashboard/live", get(crate::dashboard::live))
        .route("/dashboard/history", get(crate::dashboard::history))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    let mut app = Router::new()
        .route("/health", get(health))
        // The page and its static assets hold no data: public (data routes need the key).
        .route("/", get(crate::static_files::serve))
        .route("/chat/assets/{file}", get(crate::static_files::serve))
        .route("/dashboard", get(crate::static_files::serve))
        .route("/dashboard/assets/{file}", get(crate::static_files::serve))
        .merge(api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), limit_body))
        // A panic in one handler answers that request with a 500 and nothing else.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send + 'static>| {
                ApiError::internal("internal error while handling the request").into_response()
            },
        ))
        .with_state(state);
    if let Some(c) = cors {
        app = app.layer(c);
    }
    app
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers([
                axum::http::header::AUTHORIZATION,
                axum::http::header::CONTENT_TYPE,
                "x-api-key".parse().unwrap_or(axum::http::header::ACCEPT),
                "anthropic-version"
                    .parse()
                    .unwrap_or(axum::http::header::ACCEPT),
                "last-event-id"
                    .parse()
                    .unwrap_or(axum::http::header::ACCEPT),
                "x-rill-resumable"
                    .parse()
                    .unwrap_or(axum::http::header::ACCEPT),
            ])
            .expose_headers([
                "x-rill-stream-id"
                    .parse()
                    .unwrap_or(axum::http::header::ACCEPT),
                axum::http::header::RETRY_AFTER,
            ]),
    )
}

/// Bytes of an oversized body read and dropped before its 413 goes out.
const DRAIN_BYTES: usize = 256 << 20;
/// How long an oversized body is drained at most.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a POST body up to `max_body_bytes`. A larger one is read on and dropped (up to
/// [`DRAIN_BYTES`] or [`DRAIN_TIME`]) before the 413 goes out: a client that sends its whole
/// body before it reads (Python's urllib, curl without `Expect`) then gets the 413 instead of
/// a connection reset, which is what closing with unread bytes in the socket would give it.
async fn limit_body(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let limit = state.cfg.max_body_bytes;
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut over = declared.is_some_and(|n| n > limit as u64);
    let mut kept: Vec<u8> = Vec::new();
    let mut seen = 0usize;
    let mut chunks = body.into_data_stream();
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, chunks.next()).await {
            Ok(Some(Ok(c))) => c,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return ApiError::invalid(format!("cannot read the request body: {e}"))
                    .into_response()
            }
            Err(_) if over => break,
            Err(_) => {
                return ApiError::invalid("the request body did not arrive in time").into_response()
            }
        };
        seen += chunk.len();
        if !over && kept.len() + chunk.len() > limit {
            over = true;
            kept = Vec::new();
        }
        if over {
            if seen > DRAIN_BYTES {
                break;
            }
            continue;
        }
        kept.extend_from_slice(&chunk);
    }
    if over {
        state
            .metrics
            .on_rejected(crate::protocol::ErrorKind::BodyTooLarge.code());
        let mut r = ApiError::too_large(limit).into_response();
        r.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
        return r;
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(kept)))
        .await
}

/// Bearer auth (or Anthropic's `x-api-key: KEY`) on every route but `/health`; WebSocket
/// clients (browsers cannot set headers) may pass `?api_key=`. Anthropic routes answer a
/// missing or wrong key in Anthropic's error shape.
async fn auth(State(state): State<SharedState>, mut req: Request, next: Next) -> Response {
    let key = if state.auth_required() {
        let bearer = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .map(String::from);
        let x_api_key = req
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .map(String::from);
        let query = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("api_key="))
                .map(String::from)
        });
        match bearer
            .or(x_api_key)
            .or(query)
            .and_then(|t| state.check_key(&t))
        {
            Some(k) => k,
            None if req.uri().path().starts_with("/v1/messages") => {
                return crate::protocol::anthropic::error_response(&ApiError::unauthorized())
            }
            None => return ApiError::unauthorized().into_response(),
        }
    } else {
        "anonymous".to_string()
    };
    req.extensions_mut().insert(ApiKey(key));
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

#[utoipa::path(get, path = "/health", responses((status = 200, description = "The process is alive")))]
pub(crate) async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/ready", responses((status = 200, description = "The model is loaded and requests are accepted"), (status = 503, description = "Loading or shutting down", body = crate::protocol::ErrorEnvelope)))]
pub(crate) async fn ready(State(state): State<SharedState>) -> Response {
    if state.is_ready() {
        Json(json!({"status": "ready", "model": state.model_id})).into_response()
    } else {
        ApiError::unavailable("the server is not ready (loading or shutting down)").into_response()
    }
}

#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = crate::openapi::ModelList)))]
pub(crate) async fn models(State(state): State<SharedState>) -> Json<serde_json::Value> {
    let l = state.sched.limits();
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_id,
            "object": "model",
            "created": state.created,
            "owned_by": "rill",
            "context_length": l.context_length,
            "max_sequence_tokens": l.max_sequence_tokens,
        }],
    }))
}

#[utoipa::path(post, path = "/v1/chat/completions", request_body = crate::openapi::ChatCompletionRequest, responses((status = 200, description = "A completion, or an SSE stream of chunks when `stream` is true", content((crate::protocol::openai::Completion = "application/json"), (crate::openapi::SseEvent = "text/event-stream"))), (status = 400, body = crate::protocol::ErrorEnvelope), (status = 401, body = crate::protocol::ErrorEnvelope), (status = 413, body = crate::protocol::ErrorEnvelope), (status = 429, description = "Overloaded or rate limited (see Retry-After)", body = crate::protocol::ErrorEnvelope), (status = 503, body = crate::protocol::ErrorEnvelope)))]
pub(crate) async fn chat(
    State(state): State<SharedState>,
    Extension(key): Extension<ApiKey>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    generate(state, key, headers, body, Kind::Chat).await
}

#[utoipa::path(post, path = "/v1/completions", request_body = crate::openapi::CompletionRequest, responses((status = 200, description = "A completion, or an SSE stream of chunks when `stream` is true", content((crate::protocol::openai::Completion = "application/json"), (crate::openapi::SseEvent = "text/event-stream"))), (status = 400, body = crate::protocol::ErrorEnvelope), (status = 429, body = crate::protocol::ErrorEnvelope)))]
pub(crate) async fn completions(
    State(state): State<SharedState>,
    Extension(key): Extension<ApiKey>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    generate(state, key, headers, body, Kind::Completion).await
}

async fn generate(
    state: SharedState,
    key: ApiKey,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let r = generate_inner(state.clone(), key, headers, body, kind).await;
    if let Err(e) = &r {
        state.metrics.on_rejected(e.code());
    }
    r
}

/// Submits `p`'s choices. With `n` > 1 the first runs alone until its prompt is computed (its
/// first token), then its siblings follow and attach the prompt's blocks from the prefix cache
/// instead of computing them again; with a `seed`, sibling `i` samples with `seed + i`.
async fn submit_choices(state: &SharedState, p: &GenParams) -> Result<Choices, ApiError> {
    let mut first = state.sched.submit(p.request.clone())?;
    if p.n <= 1 {
        return Ok(Choices::one(first));
    }
    let mut head = Vec::new();
    while let Some(ev) = first.recv().await {
        let computed = matches!(ev, Event::Tokens { .. }) || ev.is_terminal();
        let failed = matches!(ev, Event::Error { .. });
        head.push(ev);
        if failed {
            return Ok(Choices::one(first).with_head(head));
        }
        if computed {
            break;
        }
    }
    let mut streams = vec![first];
    for i in 1..p.n {
        let mut r = p.request.clone();
        r.sampling.seed = r.sampling.seed.map(|s| s.wrapping_add(i as u64));
        streams.push(state.sched.submit(r)?);
    }
    Ok(Choices::new(streams).with_head(head))
}

async fn generate_inner(
    state: SharedState,
    key: ApiKey,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.cfg.max_body_bytes)
        } else {
            ApiError::invalid(format!("cannot read the request body: {e}"))
        }
    })?;
    if !state.is_ready() {
        return Err(ApiError::shutting_down());
    }
    let map = params::parse_body(&body)?;
    // Rendering and tokenizing a large prompt is CPU work: off the async executor.
    let (h, limits) = (state.sched.clone(), params::RequestLimits::of(&state.cfg));
    let p = tokio::task::spawn_blocking(move || params::parse(kind, &map, &h, limits))
        .await
        .map_err(|e| ApiError::internal(format!("request parsing failed: {e}")))??;
    let resumable = p.resumable
        || headers
            .get("x-rill-resumable")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    state.charge(&key.0, p.request.prompt.len() + p.request.max_tokens * p.n)?;
    let mut stream = submit_choices(&state, &p).await?;
    let id = state.new_stream_id(match kind {
        Kind::Chat => "chatcmpl",
        Kind::Completion => "cmpl",
    });
    let renderer = Renderer::new(
        &p,
        id.clone(),
        &state.model_id,
        state.sched.tokenizer().clone(),
    );
    if p.stream {
        return Ok(sse::respond(
            state,
            renderer,
            stream,
            resumable,
            Some(key.0),
        ));
    }
    state.streams.insert(
        &id,
        crate::resume::StreamEntry {
            request_ids: stream.ids(),
            resumable: Resumable::No,
            owner: Some(key.0),
        },
    );
    // Dropping this future (client gone) drops `stream`, which cancels the request.
    let span = tracing::info_span!("request", id = %id, stream = false);
    let mut collector = Collector {
        renderer,
        error: None,
    };
    let relayed = relay(&state.metrics, &mut stream, &mut collector, None)
        .instrument(span)
        .await;
    state.streams.remove(&id);
    // A failure after the request started is not a rejection: answered, not counted as one.
    if let Some(e) = collector.error {
        return Ok(e.into_response());
    }
    if relayed != Relayed::Ended {
        return Ok(ApiError::internal("the generation ended without a result").into_response());
    }
    let mut r = Json(collector.renderer.response()).into_response();
    if let Ok(v) = HeaderValue::from_str(&id) {
        r.headers_mut().insert("x-rill-stream-id", v);
    }
    Ok(r)
}

fn owned(entry: &crate::resume::StreamEntry, key: &ApiKey) -> bool {
    entry.owner.as_deref().is_none_or(|o| o == key.0)
}

#[utoipa::path(get, path = "/v1/streams/{id}", params(("id" = String, Path, description = "The stream id (X-Rill-Stream-Id)"), ("Last-Event-ID" = Option<String>, Header, description = "STREAM_ID:INDEX of the last event received")), responses((status = 200, description = "SSE: every event after Last-Event-ID, then live ones", content((crate::openapi::SseEvent = "text/event-stream"))), (status = 404, body = crate::protocol::ErrorEnvelope), (status = 410, body = crate::protocol::ErrorEnvelope)))]
/// `GET /v1/streams/{id}` with `Last-Event-ID`: replay and follow a resumable stream.
pub(crate) async fn resume(
    State(state): State<SharedState>,
    Extension(key): Extension<ApiKey>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let entry = state
        .streams
        .get(&id)
        .filter(|e| owned(e, &key))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no stream `{id}` (unknown, or its resume window is over)"
            ))
        })?;
    let Resumable::Sse(buf) = &entry.resumable else {
        return Err(ApiError::not_found(format!(
            "stream `{id}` is not resumable (send `X-Rill-Resumable: true` or `\"resumable\": true`)"
        )));
    };
    let cursor = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        None => None,
        Some(v) => {
            let (sid, idx) = v
                .rsplit_once(':')
                .ok_or_else(|| ApiError::param("Last-Event-ID", "expected STREAM_ID:INDEX"))?;
            if sid != id {
                return Err(ApiError::param(
                    "Last-Event-ID",
                    "the event id belongs to another stream",
                ));
            }
            Some(
                idx.parse::<u64>()
                    .map_err(|_| ApiError::param("Last-Event-ID", "expected STREAM_ID:INDEX"))?,
            )
        }
    };
    if buf.is_expired(cursor) {
        return Err(ApiError::gone(format!(
            "events after {} of stream `{id}` are no longer buffered",
            cursor.map_or("the start".into(), |c| c.to_string())
        )));
    }
    Ok(sse::follow(&state, &id, buf, cursor))
}

#[utoipa::path(delete, path = "/v1/streams/{id}", params(("id" = String, Path)), responses((status = 200, description = "Cancelled; the stream ends with finish_reason cancelled"), (status = 404, body = crate::protocol::ErrorEnvelope)))]
/// `DELETE /v1/streams/{id}`: cancels any running stream (it ends with `finish_reason:
/// "cancelled"`).
pub(crate) async fn cancel(
    State(state): State<SharedState>,
    Extension(key): Extension<ApiKey>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let entry = state
        .streams
        .get(&id)
        .filter(|e| owned(e, &key))
        .ok_or_else(|| ApiError::not_found(format!("no running stream `{id}`")))?;
    for &r in &entry.request_ids {
        state.sched.cancel(r);
    }
    Ok(Json(
        json!({"id": id, "object": "stream", "cancelled": true}),
    ))
}

/// Prometheus scrape endpoint (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "OpenMetrics text exposition")))]
pub(crate) async fn metrics(State(state): State<SharedState>) -> Response {
    let body = state.metrics.render();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
