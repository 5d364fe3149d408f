//! The wire format: request bodies, answers and one-line JSON errors.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// A failed request: its status and a one-line message.
#[derive(Debug)]
pub struct ApiError {
    /// 4xx for the client's mistakes, 5xx for the server's.
    pub status: StatusCode,
    /// What went wrong and what to do (one line).
    pub message: String,
}

impl ApiError {
    /// A 400 Bad Request.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let one_line = self.message.replace(['\n', '\r'], " ");
        json_response(self.status, &serde_json::json!({ "error": one_line }))
    }
}

/// `value` as a JSON body with `status`.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn default_k() -> usize {
    10
}

fn yes() -> bool {
    true
}

/// `POST /recommend`: one history, oldest first.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendRequest {
    /// Raw item ids (strings or numbers) or titles.
    pub history: Vec<serde_json::Value>,
    /// How many items to return.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Leave the history's own items out (default true).
    #[serde(default = "yes")]
    pub exclude_history: bool,
}

/// `POST /recommend/batch`: several histories with one `k`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The histories, each as in [`RecommendRequest::history`].
    pub histories: Vec<Vec<serde_json::Value>>,
    /// How many items to return per history.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Leave each history's own items out (default true).
    #[serde(default = "yes")]
    pub exclude_history: bool,
}

/// `POST /admin/reload`: optionally another checkpoint path.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// The checkpoint to load (default: the one being served).
    pub checkpoint: Option<std::path::PathBuf>,
}

/// Parses a JSON body, naming the problem in one line.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}
