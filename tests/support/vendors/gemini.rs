//! A fake Gemini API: `POST /v1beta/models/{scenario}:generateContent` and
//! `…:streamGenerateContent?alt=sse`, also served under `/proxy` to show that a base URL's path
//! prefix is kept. Streams end when the body ends (Gemini sends no `[DONE]`), function calls
//! arrive whole and without ids, and every frame repeats the usage so far.
//!
//! Besides the shared scenarios (see `support`), `closed_early` streams "Hel" and then ends the
//! body cleanly without a `finishReason`: with no `[DONE]` in Gemini's format, only the missing
//! finish reason shows that the answer is incomplete.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{json, Value};

use crate::support::{recorded, spawn, sse_body, End, Recorder};

/// Start the fake; returns its base URL (no path: the adapter adds `/v1beta/…`) and its recorder.
pub async fn start() -> (String, Recorder) {
    let recorder = Recorder::default();
    let app = axum::Router::new()
        .route("/v1beta/models/{call}", axum::routing::post(handle))
        .route("/proxy/v1beta/models/{call}", axum::routing::post(handle))
        .with_state(recorder.clone());
    let addr: SocketAddr = spawn(app).await;
    (format!("http://{addr}"), recorder)
}

/// Google's error body. `details` are `google.rpc` messages (`QuotaFailure`, `RetryInfo` …).
fn error(status: u16, google_status: &str, message: &str, details: Vec<Value>) -> Response {
    let mut err = json!({"code": status, "message": message, "status": google_status});
    if !details.is_empty() {
        err["details"] = json!(details);
    }
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=UTF-8")
        .body(Body::from(json!({ "error": err }).to_string()))
        .unwrap()
}

fn quota_failure(quota_id: &str) -> Value {
    json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        "quotaId": quota_id,
        "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
        "quotaValue": "250"
    }]})
}

fn retry_info(delay: &str) -> Value {
    json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
}

/// Usage as every frame reports it: the prompt, and the answer so far.
fn usage(candidates: u64, last: bool) -> Value {
    if last {
        json!({"promptTokenCount": 10, "candidatesTokenCount": 4, "totalTokenCount": 17,
               "cachedContentTokenCount": 2, "thoughtsTokenCount": 3,
               "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 10}]})
    } else {
        json!({"promptTokenCount": 10, "candidatesTokenCount": candidates, "totalTokenCount": 10 + candidates})
    }
}

/// One response object: the body of `generateContent`, or one SSE frame's data.
fn response(parts: Vec<Value>, finish: Option<&str>, usage: Value) -> Value {
    let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
    if let Some(reason) = finish {
        candidate["finishReason"] = json!(reason);
    }
    json!({"candidates": [candidate], "usageMetadata": usage,
           "modelVersion": "gemini-2.5-flash", "responseId": "fake-response-1"})
}

fn frame(value: &Value) -> String {
    format!("data: {value}\r\n\r\n")
}

fn text(t: &str) -> Value {
    json!({ "text": t })
}

fn call(name: &str, args: Value, signed: bool) -> Value {
    let mut part = json!({"functionCall": {"name": name, "args": args}});
    if signed {
        part["thoughtSignature"] = json!("ZmFrZS1zaWduYXR1cmU=");
    }
    part
}

/// The answer of a successful scenario, one entry per frame.
fn answer(scenario: &str) -> Vec<Vec<Value>> {
    match scenario {
        "tool" => vec![vec![call("get_weather", json!({"city": "Paris"}), true)]],
        "two_tools" => vec![
            vec![text("Let me ")],
            vec![text("check.")],
            vec![call("get_weather", json!({"city": "Paris"}), true)],
            vec![call("get_time", json!({"tz": "CET"}), false)],
        ],
        "json" => vec![vec![text("{\"answer\"")], vec![text(":42}")]],
        // A thought summary first: not part of the answer.
        _ => vec![
            vec![json!({"text": "The user wants a greeting.", "thought": true})],
            vec![text("Hello")],
            vec![text(", wor")],
            vec![text("ld!")],
        ],
    }
}

async fn handle(State(rec): State<Recorder>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let r = recorded(&uri, &headers, &body);
    rec.record(r.clone());
    let last_segment = uri.path().rsplit('/').next().unwrap_or_default();
    let Some((scenario, method)) = last_segment.split_once(':') else {
        return error(404, "NOT_FOUND", "Method not found.", vec![]);
    };
    let stream = match method {
        "streamGenerateContent" => true,
        "generateContent" => false,
        _ => return error(404, "NOT_FOUND", "Method not found.", vec![]),
    };
    match scenario {
        "rate_limited" => {
            return error(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details.",
                vec![quota_failure("GenerateRequestsPerMinutePerProjectPerModel-FreeTier"), retry_info("2s")],
            )
        }
        "quota" => {
            return error(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details.",
                vec![quota_failure("GenerateRequestsPerDayPerProjectPerModel-FreeTier"), retry_info("22s")],
            )
        }
        "overloaded" => return error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.", vec![]),
        "bad_request" => return error(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified", vec![]),
        "unauthorized" => return error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", vec![]),
        _ => {}
    }

    let partial = frame(&response(vec![text("Hel")], None, usage(1, false)));
    if !stream {
        // The one-shot method has no frames; its failures are a body that never ends, one
        // that breaks, one that is not JSON, or an error status.
        let (pieces, end) = match scenario {
            "stall" => (vec![], End::Hang),
            "stall_after_content" => (vec![r#"{"candidates": ["#.to_string()], End::Hang),
            "cut" => (vec![r#"{"candidates": ["#.to_string()], End::Cut),
            "malformed" => (vec![r#"{"candidates": [{"content":"#.to_string()], End::Close),
            "midstream_error" => return error(503, "UNAVAILABLE", "The model is overloaded.", vec![]),
            _ => {
                let parts: Vec<Value> = answer(scenario).into_iter().flatten().collect();
                let whole = response(parts, Some("STOP"), usage(4, true));
                (vec![whole.to_string()], End::Close)
            }
        };
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json; charset=UTF-8")
            .body(sse_body(pieces, end, &rec))
            .unwrap();
    }

    let mut frames = Vec::new();
    let end = match scenario {
        "stall" => End::Hang,
        "malformed" => {
            frames.push("data: {\"candidates\": [{\"content\":\r\n\r\n".to_string());
            End::Close
        }
        "stall_after_content" => {
            frames.push(partial);
            End::Hang
        }
        "closed_early" => {
            frames.push(partial);
            End::Close
        }
        "cut" => {
            // The break comes inside the next frame. (`sse_body` loses the last piece written
            // before a cut, so the "Hel" frame must not be the last thing sent.)
            frames.push(partial);
            frames.push(r#"data: {"candidates": [{"content": {"parts": [{"text": "lo, wo"#.to_string());
            End::Cut
        }
        "midstream_error" => {
            frames.push(partial);
            frames.push(frame(&json!({"error": {"code": 503,
                "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}})));
            End::Close
        }
        _ => {
            let answer = answer(scenario);
            let n = answer.len();
            for (i, parts) in answer.into_iter().enumerate() {
                let last = i + 1 == n;
                let finish = last.then_some("STOP");
                frames.push(frame(&response(parts, finish, usage(i as u64 + 1, last))));
            }
            End::Close
        }
    };
    Response::builder().status(StatusCode::OK).header("content-type", "text/event-stream").body(sse_body(frames, end, &rec)).unwrap()
}
