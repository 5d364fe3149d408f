//! The router: endpoints, request checks, and the middleware that times
//! each request, bounds its time and counts it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use distillrec_data::ItemId;

use crate::api::{json_response, parse, ApiError, BatchRequest, RecommendRequest, ReloadRequest};
use crate::batcher::{Batcher, Row};
use crate::limits::{Limits, PeerAddr};
use crate::metrics::Metrics;
use crate::model::{Identity, ModelHolder};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The dataset and current model.
    pub holder: Arc<ModelHolder>,
    /// The way to the batching task.
    pub batcher: Batcher,
    /// The counters of `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Request bounds.
    pub limits: Limits,
}

/// The routes, in the order a reader meets them; the route names of the
/// metrics are these paths.
const ROUTES: [&str; 6] = [
    "/recommend",
    "/recommend/batch",
    "/healthz",
    "/readyz",
    "/metrics",
    "/admin/reload",
];

/// The application: every endpoint with its limits and metrics.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(ROUTES[0], post(recommend))
        .route(ROUTES[1], post(recommend_batch))
        .route(
            ROUTES[2],
            get(|| async { json_response(StatusCode::OK, &json!({"status": "ok"})) }),
        )
        .route(ROUTES[3], get(readyz))
        .route(ROUTES[4], get(metrics))
        .route(ROUTES[5], post(admin_reload))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "wrong method for this endpoint",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
}

/// Bounds the request's time (503 past `--timeout-ms`) and counts it.
async fn track(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().map(|m| m.as_str());
    let route = ROUTES
        .into_iter()
        .find(|r| Some(*r) == matched)
        .unwrap_or("unmatched");
    let start = Instant::now();
    let resp = match tokio::time::timeout(s.limits.timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "request took longer than {} ms (--timeout-ms)",
                s.limits.timeout.as_millis()
            ),
        )
        .into_response(),
    };
    s.metrics
        .observe_request(route, resp.status().as_u16(), start.elapsed());
    resp
}

/// The body's bytes, or the 4xx of why it could not be read.
fn body_bytes(body: Result<Bytes, BytesRejection>, s: &AppState) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is larger than {} bytes (--max-body-bytes)",
                s.limits.max_body_bytes
            ),
        ),
        status => ApiError::new(status, e.body_text()),
    })
}

/// `POST /recommend`.
async fn recommend(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: RecommendRequest = parse(&body_bytes(body, &s)?)?;
    check_k(req.k, &s.limits)?;
    let row = to_row(&s, &req.history, "history", req.k, req.exclude_history)?;
    let answer = s.batcher.rank(vec![row]).await?;
    let v = json!({
        "items": items(&s.holder, &answer.ranked[0]),
        "model": answer.model.identity,
    });
    Ok(json_response(StatusCode::OK, &v))
}

/// `POST /recommend/batch`.
async fn recommend_batch(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: BatchRequest = parse(&body_bytes(body, &s)?)?;
    check_k(req.k, &s.limits)?;
    let n = req.histories.len();
    if n == 0 || n > s.limits.max_histories {
        return Err(ApiError::bad(format!(
            "histories has {n} entries; give 1 to {} (--max-batch)",
            s.limits.max_histories
        )));
    }
    let rows = req
        .histories
        .iter()
        .enumerate()
        .map(|(i, h)| {
            to_row(
                &s,
                h,
                &format!("histories[{i}]"),
                req.k,
                req.exclude_history,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let answer = s.batcher.rank(rows).await?;
    let results: Vec<Value> = answer
        .ranked
        .iter()
        .map(|r| json!({ "items": items(&s.holder, r) }))
        .collect();
    let v = json!({ "results": results, "model": answer.model.identity });
    Ok(json_response(StatusCode::OK, &v))
}

/// Refuses a `k` outside `1..=max_k`.
fn check_k(k: usize, limits: &Limits) -> Result<(), ApiError> {
    if k == 0 || k > limits.max_k {
        return Err(ApiError::bad(format!(
            "k must be between 1 and {} (--max-k), not {k}",
            limits.max_k
        )));
    }
    Ok(())
}

/// Resolves one history (`what` names it in errors) into a row to rank.
fn to_row(
    s: &AppState,
    history: &[Value],
    what: &str,
    k: usize,
    exclude_history: bool,
) -> Result<Row, ApiError> {
    if history.is_empty() {
        return Err(ApiError::bad(format!(
            "{what} is empty; give at least one item id or title"
        )));
    }
    if history.len() > s.limits.max_history {
        return Err(ApiError::bad(format!(
            "{what} has {} items; at most {} are accepted (--max-history)",
            history.len(),
            s.limits.max_history
        )));
    }
    let ids = history
        .iter()
        .enumerate()
        .map(|(i, e)| {
            s.holder.resolve(e).map_err(|m| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("{what}[{i}]: {m}"),
                )
            })
        })
        .collect::<Result<Vec<ItemId>, _>>()?;
    Ok(Row {
        history: ids,
        top: k,
        include_history: !exclude_history,
    })
}

/// The JSON items of one ranked list.
fn items(holder: &ModelHolder, ranked: &[(ItemId, f32)]) -> Value {
    ranked
        .iter()
        .map(|&(id, score)| {
            let (raw, title) = holder.item(id);
            json!({"id": raw, "title": title, "score": score})
        })
        .collect()
}

/// `GET /readyz`: ready once a model is loaded (always, after start).
async fn readyz(State(s): State<AppState>) -> Response {
    let v = json!({"status": "ready", "model": s.holder.current().identity});
    json_response(StatusCode::OK, &v)
}

/// `GET /metrics`.
async fn metrics(State(s): State<AppState>) -> Response {
    let text = s.metrics.render(&s.holder.current().identity);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `POST /admin/reload` (loopback peers only): body empty or
/// `{"checkpoint": PATH}`.
async fn admin_reload(
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !peer.ip().is_loopback() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "/admin/reload is only served to loopback clients",
        ));
    }
    let body = body_bytes(body, &s)?;
    let req: ReloadRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReloadRequest::default()
    } else {
        parse(&body)?
    };
    let identity = reload(&s, req.checkpoint).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"reloaded": true, "model": identity}),
    ))
}

/// Loads `path` (default: the served checkpoint) off the async threads and
/// swaps it in when it passes the checks; a refusal keeps the old model,
/// is logged and counted.
pub async fn reload(s: &AppState, path: Option<PathBuf>) -> Result<Identity, ApiError> {
    let holder = s.holder.clone();
    let done = tokio::task::spawn_blocking(move || holder.reload(path.as_deref())).await;
    let result = match done {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("the reload task failed")),
    };
    s.metrics.observe_reload(result.is_ok());
    result
        .inspect(|id| {
            eprintln!(
                "reloaded {} (sha256 {})",
                id.checkpoint, id.checkpoint_sha256
            )
        })
        .map_err(|e| {
            let msg = format!("reload refused, the old model keeps serving: {e}");
            eprintln!("warning: {msg}");
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, msg)
        })
}
