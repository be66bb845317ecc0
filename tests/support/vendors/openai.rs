//! A fake OpenAI Chat Completions API (`POST /v1/chat/completions`), streaming and not.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{json, Value};

use crate::support::{recorded, spawn, sse_body, End, Recorder};

/// Start the fake; returns its base URL (ending in `/v1`) and its recorder.
pub async fn start() -> (String, Recorder) {
    let recorder = Recorder::default();
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(handle)).with_state(recorder.clone());
    let addr: SocketAddr = spawn(app).await;
    (format!("http://{addr}/v1"), recorder)
}

fn error(status: u16, code: &str, message: &str, retry_after: Option<&str>) -> Response {
    let mut b = Response::builder().status(status).header("content-type", "application/json");
    if let Some(r) = retry_after {
        b = b.header("retry-after", r);
    }
    b.body(Body::from(json!({"error": {"message": message, "type": code, "param": null, "code": code}}).to_string())).unwrap()
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",
        "choices":[{"index":0,"delta":delta,"finish_reason":finish}],"usage":null});
    format!("data: {c}\n\n")
}

fn usage_frame() -> String {
    let u = json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],
        "usage":{"prompt_tokens":10,"completion_tokens":4,"total_tokens":14,
                 "prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":0}}});
    format!("data: {u}\n\n")
}

/// The `long` scenario's answer, in pieces: a reply long enough to talk over.
pub const LONG: &[&str] = &[
    "Certainly. ",
    "Your table for four is booked for seven thirty tonight, ",
    "and I have added a note about the birthday cake. ",
    "We will hold the table for fifteen minutes, ",
    "so please call us if you are running late. ",
    "Is there anything else I can help you with?",
];

/// (text pieces, tool calls as (name, argument fragments))
fn answer(scenario: &str) -> (Vec<&'static str>, Vec<(&'static str, Vec<&'static str>)>) {
    match scenario {
        "tool" => (vec![], vec![("get_weather", vec!["{\"ci", "ty\": \"Par", "is\"}"])]),
        "two_tools" => {
            (vec!["Let me ", "check."], vec![("get_weather", vec!["{\"city\":", "\"Paris\"}"]), ("get_time", vec!["{\"tz\":\"CET\"}"])])
        }
        "json" => (vec!["{\"answer\"", ":42}"], vec![]),
        "long" => (LONG.to_vec(), vec![]),
        _ => (vec!["Hello", ", wor", "ld!"], vec![]),
    }
}

async fn handle(State(rec): State<Recorder>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let r = recorded(&uri, &headers, &body);
    rec.record(r.clone());
    let scenario = r.body["model"].as_str().unwrap_or("text").to_string();
    let stream = r.body["stream"].as_bool().unwrap_or(false);
    match scenario.as_str() {
        "rate_limited" => return error(429, "rate_limit_exceeded", "Rate limit reached for requests", Some("2")),
        "overloaded" => return error(503, "server_error", "The server is overloaded", None),
        "bad_request" => return error(400, "invalid_request_error", "Invalid 'messages': empty", None),
        "unauthorized" => return error(401, "invalid_api_key", "Incorrect API key provided", None),
        "quota" => return error(429, "insufficient_quota", "You exceeded your current quota", None),
        _ => {}
    }
    let (texts, calls) = answer(&scenario);
    let finish = if calls.is_empty() { "stop" } else { "tool_calls" };
    if !stream {
        let content = if texts.is_empty() { Value::Null } else { json!(texts.concat()) };
        let tool_calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, (name, args))| json!({"id": format!("call_{i}"), "type":"function","function":{"name":name,"arguments":args.concat()}}))
            .collect();
        let mut message = json!({"role":"assistant","content":content});
        if !tool_calls.is_empty() {
            message["tool_calls"] = json!(tool_calls);
        }
        let body = json!({"id":"chatcmpl-1","object":"chat.completion","created":1,"model":scenario,
            "choices":[{"index":0,"message":message,"finish_reason":finish}],
            "usage":{"prompt_tokens":10,"completion_tokens":4,"total_tokens":14,"prompt_tokens_details":{"cached_tokens":2}}});
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
    }

    let mut frames = vec![chunk(json!({"role":"assistant","content":""}), None)];
    let end = match scenario.as_str() {
        "stall" => End::Hang,
        "malformed" => {
            frames.push("data: {\"choices\":[{\"delta\":{\"content\":\n\n".into());
            End::Close
        }
        "stall_after_content" | "cut" | "midstream_error" => {
            frames.push(chunk(json!({"content":"Hel"}), None));
            match scenario.as_str() {
                "stall_after_content" => End::Hang,
                "cut" => End::Cut,
                _ => {
                    frames.push(format!(
                        "data: {}\n\n",
                        json!({"error":{"message":"upstream overloaded","type":"server_error","code":"overloaded"}})
                    ));
                    End::Close
                }
            }
        }
        _ => {
            for t in &texts {
                frames.push(chunk(json!({"content": t}), None));
            }
            for (i, (name, args)) in calls.iter().enumerate() {
                frames.push(chunk(
                    json!({"tool_calls":[{"index":i,"id":format!("call_{i}"),"type":"function","function":{"name":name,"arguments":""}}]}),
                    None,
                ));
                for a in args {
                    frames.push(chunk(json!({"tool_calls":[{"index":i,"function":{"arguments":a}}]}), None));
                }
            }
            frames.push(chunk(json!({}), Some(finish)));
            frames.push(usage_frame());
            frames.push("data: [DONE]\n\n".into());
            End::Close
        }
    };
    Response::builder().status(200).header("content-type", "text/event-stream").body(sse_body(frames, end, &rec)).unwrap()
}
