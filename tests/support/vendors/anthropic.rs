//! A fake Anthropic Messages API (`POST /v1/messages`), streaming (`event:` + `data:` frames,
//! `ping`s mixed in, split in 7-byte pieces) and not.
//!
//! Scenarios as in `support/mod.rs`, chosen by the request's `model`. Anthropic specifics:
//! - usage always carries cache tokens: input 8, cache_creation 3, cache_read 2; output 1 in
//!   `message_start` and a final total of 4 in `message_delta` (so a gateway that adds them up,
//!   or forgets the cache tokens, is caught);
//! - `json`: when the request forces a tool (`tool_choice {"type":"tool","name":…}`), the answer
//!   is a `tool_use` of that tool with input `{"answer":42}`, as the real API does; otherwise the
//!   text `{"answer":42}`;
//! - `overloaded`: 529 `overloaded_error`; `quota`: 402 `billing_error`;
//! - two extra quota scenarios: `spend_limit` (429 `rate_limit_error` with
//!   `details.error_code` `enforced_spend_limit_reached`) and `credit_balance` (400
//!   `invalid_request_error` "Your credit balance is too low…");
//! - `midstream_error`: "Hel", then `event: error` with `overloaded_error`.
//!
//! Non-streaming: error scenarios answer the same; `stall*` never answer, `cut` breaks the body
//! half-way, `malformed` sends a body that is not JSON, `midstream_error` is a 529.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};

use crate::support::{recorded, spawn, sse_body, End, Recorder};

/// Start the fake; returns its base URL (no path, like `https://api.anthropic.com`) and its recorder.
pub async fn start() -> (String, Recorder) {
    let recorder = Recorder::default();
    let app = axum::Router::new().route("/v1/messages", axum::routing::post(handle)).with_state(recorder.clone());
    let addr: SocketAddr = spawn(app).await;
    (format!("http://{addr}"), recorder)
}

fn error(status: u16, kind: &str, message: &str, details: Option<Value>, retry_after: Option<&str>) -> Response {
    let mut b = Response::builder().status(status).header("content-type", "application/json").header("request-id", "req_fake");
    if let Some(r) = retry_after {
        b = b.header("retry-after", r);
    }
    let mut err = json!({"type": kind, "message": message});
    if let Some(d) = details {
        err["details"] = d;
    }
    b.body(Body::from(json!({"type":"error","error":err,"request_id":"req_fake"}).to_string())).unwrap()
}

/// One SSE frame in Anthropic's shape: the event name repeated as the payload's `type`.
fn frame(kind: &str, mut data: Value) -> String {
    data["type"] = json!(kind);
    format!("event: {kind}\ndata: {data}\n\n")
}

fn ping() -> String {
    frame("ping", json!({}))
}

fn start_usage() -> Value {
    json!({"input_tokens":8,"cache_creation_input_tokens":3,"cache_read_input_tokens":2,"output_tokens":1})
}

fn final_usage() -> Value {
    json!({"input_tokens":8,"cache_creation_input_tokens":3,"cache_read_input_tokens":2,"output_tokens":4})
}

fn message_start(model: &str) -> String {
    frame(
        "message_start",
        json!({"message":{"id":"msg_fake","type":"message","role":"assistant","content":[],"model":model,
            "stop_reason":null,"stop_sequence":null,"usage":start_usage()}}),
    )
}

/// A content block of the scripted answer: text pieces, or a tool call with input fragments.
enum Block {
    Text(Vec<&'static str>),
    Tool { id: &'static str, name: String, fragments: Vec<&'static str> },
}

/// The scripted answer for `scenario`; `forced_tool` is the tool the request forces, if any.
fn answer(scenario: &str, forced_tool: Option<&str>) -> Vec<Block> {
    match scenario {
        "tool" => vec![Block::Tool { id: "toolu_01", name: "get_weather".into(), fragments: vec!["{\"ci", "ty\": \"Par", "is\"}"] }],
        "two_tools" => vec![
            Block::Text(vec!["Let me ", "check."]),
            Block::Tool { id: "toolu_01", name: "get_weather".into(), fragments: vec!["{\"city\":", "\"Paris\"}"] },
            Block::Tool { id: "toolu_02", name: "get_time".into(), fragments: vec!["{\"tz\":\"CET\"}"] },
        ],
        "json" => match forced_tool {
            Some(name) => vec![Block::Tool { id: "toolu_01", name: name.to_string(), fragments: vec!["{\"answer\"", ":42}"] }],
            None => vec![Block::Text(vec!["{\"answer\"", ":42}"])],
        },
        _ => vec![Block::Text(vec!["Hello", ", wor", "ld!"])],
    }
}

fn stream_frames(model: &str, blocks: &[Block]) -> Vec<String> {
    let mut frames = vec![message_start(model), ping()];
    for (index, block) in blocks.iter().enumerate() {
        match block {
            Block::Text(pieces) => {
                frames.push(frame("content_block_start", json!({"index":index,"content_block":{"type":"text","text":""}})));
                for p in pieces {
                    frames.push(frame("content_block_delta", json!({"index":index,"delta":{"type":"text_delta","text":p}})));
                }
            }
            Block::Tool { id, name, fragments } => {
                frames.push(frame(
                    "content_block_start",
                    json!({"index":index,"content_block":{"type":"tool_use","id":id,"name":name,"input":{}}}),
                ));
                // The real API opens tool input with an empty fragment.
                frames.push(frame("content_block_delta", json!({"index":index,"delta":{"type":"input_json_delta","partial_json":""}})));
                for f in fragments {
                    frames.push(frame("content_block_delta", json!({"index":index,"delta":{"type":"input_json_delta","partial_json":f}})));
                }
            }
        }
        frames.push(frame("content_block_stop", json!({"index":index})));
        frames.push(ping());
    }
    frames.push(frame(
        "message_delta",
        json!({"delta":{"stop_reason":stop_reason(blocks),"stop_sequence":null},"usage":{"output_tokens":4}}),
    ));
    frames.push(frame("message_stop", json!({})));
    frames
}

fn stop_reason(blocks: &[Block]) -> &'static str {
    if blocks.iter().any(|b| matches!(b, Block::Tool { .. })) {
        "tool_use"
    } else {
        "end_turn"
    }
}

fn whole_message(model: &str, blocks: &[Block]) -> Value {
    let content: Vec<Value> = blocks
        .iter()
        .map(|b| match b {
            Block::Text(pieces) => json!({"type":"text","text":pieces.concat()}),
            Block::Tool { id, name, fragments } => {
                let input: Value = serde_json::from_str(&fragments.concat()).unwrap();
                json!({"type":"tool_use","id":id,"name":name,"input":input})
            }
        })
        .collect();
    json!({"id":"msg_fake","type":"message","role":"assistant","model":model,"content":content,
        "stop_reason":stop_reason(blocks),"stop_sequence":null,"usage":final_usage()})
}

fn sse(frames: Vec<String>, end: End, rec: &Recorder) -> Response {
    Response::builder().status(StatusCode::OK).header("content-type", "text/event-stream").body(sse_body(frames, end, rec)).unwrap()
}

fn json_response(body: Body) -> Response {
    Response::builder().status(StatusCode::OK).header("content-type", "application/json").body(body).unwrap()
}

/// `frames` (split like [`sse_body`]), then a broken connection.
///
/// `End::Cut` aborts the body right after its last piece, and hyper then drops what it had not
/// flushed yet, so the client never sees the frames before the cut. A short pause before the
/// error lets them leave first, as they would from a real server that dies mid-answer.
fn cut_after(frames: Vec<String>, rec: &Recorder) -> Body {
    let head = sse_body(frames, End::Close, rec).into_data_stream().map_err(std::io::Error::other);
    let tail = futures::stream::once(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err::<Bytes, _>(std::io::Error::other("cut"))
    });
    Body::from_stream(head.chain(tail))
}

/// The text "Hel" as a started text block, for the scenarios that fail after content.
fn hel(model: &str) -> Vec<String> {
    vec![
        message_start(model),
        frame("content_block_start", json!({"index":0,"content_block":{"type":"text","text":""}})),
        ping(),
        frame("content_block_delta", json!({"index":0,"delta":{"type":"text_delta","text":"Hel"}})),
    ]
}

async fn handle(State(rec): State<Recorder>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let r = recorded(&uri, &headers, &body);
    rec.record(r.clone());
    let scenario = r.body["model"].as_str().unwrap_or("text").to_string();
    let stream = r.body["stream"].as_bool().unwrap_or(false);
    if r.body["max_tokens"].as_u64().is_none() {
        return error(400, "invalid_request_error", "max_tokens: Field required", None, None);
    }
    match scenario.as_str() {
        "rate_limited" => {
            return error(429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit", None, Some("2"))
        }
        "overloaded" => return error(529, "overloaded_error", "Overloaded", None, None),
        "bad_request" => {
            return error(400, "invalid_request_error", "messages: roles must alternate between \"user\" and \"assistant\"", None, None)
        }
        "unauthorized" => return error(401, "authentication_error", "invalid x-api-key", None, None),
        "quota" => return error(402, "billing_error", "Your account has no remaining credits", None, None),
        "spend_limit" => {
            return error(
                429,
                "rate_limit_error",
                "Your organization has reached its monthly spend limit",
                Some(json!({"error_code":"enforced_spend_limit_reached"})),
                None,
            )
        }
        "credit_balance" => {
            return error(400, "invalid_request_error", "Your credit balance is too low to access the Anthropic API.", None, None)
        }
        _ => {}
    }
    let forced_tool = match r.body.pointer("/tool_choice/type").and_then(Value::as_str) {
        Some("tool") => r.body.pointer("/tool_choice/name").and_then(Value::as_str),
        _ => None,
    };
    let blocks = answer(&scenario, forced_tool);

    if !stream {
        return match scenario.as_str() {
            "stall" | "stall_after_content" => json_response(sse_body(Vec::new(), End::Hang, &rec)),
            "cut" => json_response(cut_after(vec!["{\"id\":\"msg_fake\",\"content\":[{\"type\":\"te".into()], &rec)),
            "malformed" => json_response(Body::from("{\"id\":\"msg_fake\",\"content\":[")),
            "midstream_error" => error(529, "overloaded_error", "Overloaded", None, None),
            _ => json_response(Body::from(whole_message(&scenario, &blocks).to_string())),
        };
    }

    match scenario.as_str() {
        "stall" => sse(vec![message_start(&scenario), ping()], End::Hang, &rec),
        "malformed" => {
            let frames = vec![
                message_start(&scenario),
                "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\n\n".into(),
            ];
            sse(frames, End::Close, &rec)
        }
        "stall_after_content" => sse(hel(&scenario), End::Hang, &rec),
        "cut" => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/event-stream")
            .body(cut_after(hel(&scenario), &rec))
            .unwrap(),
        "midstream_error" => {
            let mut frames = hel(&scenario);
            frames.push(frame("error", json!({"error":{"type":"overloaded_error","message":"Overloaded"}})));
            sse(frames, End::Close, &rec)
        }
        _ => sse(stream_frames(&scenario, &blocks), End::Close, &rec),
    }
}
