//! OpenAI-style error responses: `{"error":{"message","type","param","code"}}` with the right
//! status. Every error a client can see over HTTP goes through [`ApiError`].

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::llm::error::ProviderError;
use crate::llm::router::{attempts_header, GatewayError};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
    pub attempts: Option<String>,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, code: None, attempts: None, retry_after_s: None }
    }

    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = param.map(str::to_string);
        e
    }

    pub fn code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(a) = self.attempts.as_deref().and_then(|a| HeaderValue::from_str(a).ok()) {
            response.headers_mut().insert("x-voxgate-attempts", a);
        }
        if let Some(s) = self.retry_after_s {
            response.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        response
    }
}

/// How a provider error that ends a request looks to our client. Upstream 401/403 mean
/// voxgate's own upstream key is wrong, which the client cannot fix: 502, not 401.
fn provider_status(error: &ProviderError) -> (StatusCode, &'static str) {
    match error {
        ProviderError::Http { quota: true, .. } => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota"),
        ProviderError::Http { status: 429, .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        ProviderError::Http { status: 401 | 403, .. } => (StatusCode::BAD_GATEWAY, "upstream_error"),
        ProviderError::Http { status, .. } if (400..500).contains(status) => {
            (StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST), "invalid_request_error")
        }
        ProviderError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        ProviderError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_error"),
        _ => (StatusCode::BAD_GATEWAY, "upstream_error"),
    }
}

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        let attempts = Some(attempts_header(e.attempts())).filter(|s| !s.is_empty());
        let mut api = match &e {
            GatewayError::UnknownModel(m) => {
                let mut a = ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", m.clone()).code("model_not_found");
                a.param = Some("model".into());
                a
            }
            GatewayError::Invalid(m) => ApiError::invalid(m.clone(), None),
            GatewayError::Rejected { error, .. } => {
                let (status, kind) = provider_status(error);
                let code = match error {
                    ProviderError::Http { status: 401 | 403, .. } => e.kind().to_string(),
                    ProviderError::Http { code: Some(c), .. } => c.clone(),
                    _ => e.kind().to_string(),
                };
                ApiError::new(status, kind, e.to_string()).code(&code)
            }
            GatewayError::AllFailed { attempts, last } => {
                // All rate-limited: say so (429, with the last vendor's wait); else a gateway error.
                let all_429 = !attempts.is_empty() && attempts.iter().all(|a| a.status == Some(429) || a.result == "skipped_breaker_open");
                let all_timeout = attempts.iter().any(|a| a.result == "timeout")
                    && attempts.iter().all(|a| a.result == "timeout" || a.result == "skipped_breaker_open");
                let status = if all_429 {
                    StatusCode::TOO_MANY_REQUESTS
                } else if all_timeout {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                let mut a = ApiError::new(status, if all_429 { "rate_limit_error" } else { "upstream_error" }, e.to_string())
                    .code("all_models_failed");
                if all_429 {
                    if let Some(ProviderError::Http { retry_after: Some(d), .. }) = last {
                        a.retry_after_s = Some(d.as_secs_f64().ceil() as u64);
                    }
                }
                a
            }
        };
        api.attempts = attempts;
        api
    }
}
