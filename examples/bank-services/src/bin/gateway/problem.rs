//! Errors as problem details (RFC 9457): `application/problem+json`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bank_services::queries::QueryError;
use evently::nats::RemoteError;
use serde::Serialize;

/// An error response: `application/problem+json`.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    kind: &'static str,
    title: String,
    status: u16,
    detail: String,
    /// The aggregate's own error, for a refused command.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<serde_json::Value>,
}

impl Problem {
    /// A problem with `status` and what went wrong.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            error: None,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(&self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

impl From<QueryError> for Problem {
    fn from(e: QueryError) -> Self {
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_GATEWAY);
        Problem::new(status, e.detail)
    }
}

impl From<RemoteError<bank_services::domain::AccountError>> for Problem {
    fn from(e: RemoteError<bank_services::domain::AccountError>) -> Self {
        match e {
            RemoteError::Rejected(error) => Problem {
                error: serde_json::to_value(&error).ok(),
                ..Problem::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
            },
            other => {
                let status =
                    StatusCode::from_u16(other.status()).unwrap_or(StatusCode::BAD_GATEWAY);
                Problem::new(status, other.to_string())
            }
        }
    }
}
