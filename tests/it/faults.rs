//! Faults at the TCP level: voxgate in front of an upstream that misbehaves on purpose
//! (`support::faults`), with a backup on another provider (the in-process fake `echo`). Each
//! case checks what an OpenAI client sees (status, `x-voxgate-attempts`, how the stream ends),
//! the ledger's record, and the primary's breaker. Paused time: deadlines are exact and nothing
//! waits for real time.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use voxgate::llm::breaker::BreakerState;

use crate::support::faults::{self, chunk, json_response, openai_frame, sse_head, FaultServer, Step, Voxgate, LAST_CHUNK};
use crate::support::{sse_data, FAKE_ECHO};

/// The primary's key: a canary that must reach the primary and nothing else.
const KEY: &str = "sk-canary-7Hq2xV9eLw";
const QUESTION: &str = "Say hello to the fault injector";
const ECHO: &str = "You said: Say hello to the fault injector";

/// A primary of `kind` at `base_url` (two models on it), the fake `echo` as the backup, and
/// routes: `backed` (primary, then echo), `alone` (primary only), `twice` (both primary models,
/// then echo). Three failures open a breaker; headers are due within 1.5 s.
fn config(kind: &str, base_url: &str) -> String {
    format!(
        r#"[gateway]
breaker_failures = 3
breaker_cooldown_ms = 60000
[providers.primary]
kind = "{kind}"
base_url = "{base_url}"
api_key = "env:PRIMARY_KEY"
[[models]]
id = "primary"
provider = "primary"
upstream = "fault-model"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[models]]
id = "primary-b"
provider = "primary"
upstream = "fault-model-b"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
{FAKE_ECHO}
[routes.backed]
models = ["primary", "echo"]
ttft_ms_max = 2000
idle_ms_max = 1000
headers_ms_max = 1500
[routes.alone]
models = ["primary"]
ttft_ms_max = 2000
idle_ms_max = 1000
headers_ms_max = 1500
[routes.twice]
models = ["primary", "primary-b", "echo"]
"#
    )
}

/// voxgate with an OpenAI-compatible primary served by `upstream`.
async fn openai_primary(upstream: &FaultServer) -> Voxgate {
    faults::start_voxgate(&config("openai", &upstream.url("/v1")), &[("PRIMARY_KEY", KEY)]).await
}

fn ask(model: &str, stream: bool) -> Value {
    let mut body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": QUESTION}]});
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn attempts(r: &reqwest::Response) -> String {
    r.headers().get("x-voxgate-attempts").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// The text of a streamed answer's content deltas.
fn text(frames: &[String]) -> String {
    frames
        .iter()
        .filter_map(|f| serde_json::from_str::<Value>(f).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect()
}

/// A streamed answer that ended as a complete one: a finish reason, then `[DONE]` last.
fn assert_complete(frames: &[String], what: &str) {
    assert_eq!(frames.last().map(String::as_str), Some("[DONE]"), "{what}: {frames:?}");
    assert!(
        frames.iter().filter_map(|f| serde_json::from_str::<Value>(f).ok()).any(|c| c["choices"][0]["finish_reason"].is_string()),
        "{what}: no finish reason in {frames:?}"
    );
}

/// The stream fell back to the backup before anything of the primary reached the client.
async fn assert_fell_back(vg: &Voxgate, body: &Value, expected_attempts: &str) {
    let r = vg.chat(body).await;
    assert_eq!(r.status(), 200, "{expected_attempts}");
    assert_eq!(attempts(&r), expected_attempts);
    assert_eq!(r.headers()["x-voxgate-model"], "echo");
    if body["stream"] == true {
        let frames = sse_data(r).await;
        assert_complete(&frames, expected_attempts);
        assert_eq!(text(&frames), ECHO, "the client sees only the backup's answer");
    } else {
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], ECHO);
    }
}

/// The `alone` route (no backup) answers with `status` and an upstream error whose message says `needle`.
async fn assert_error_says(vg: &Voxgate, stream: bool, status: u16, needle: &str) -> Value {
    let r = vg.chat(&ask("alone", stream)).await;
    assert_eq!(r.status(), status, "{needle}");
    let v: Value = r.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
    v
}

#[tokio::test(start_paused = true)]
async fn closed_port_falls_back_before_content() {
    let port = faults::closed_port().await;
    let vg = faults::start_voxgate(&config("openai", &format!("http://{port}/v1")), &[("PRIMARY_KEY", KEY)]).await;
    for stream in [true, false] {
        assert_fell_back(&vg, &ask("backed", stream), "primary=connect, echo=ok").await;
    }
    // Two failures: counted, not yet enough to open the breaker (three).
    assert_eq!(vg.breaker("primary"), BreakerState::Closed);
    let rows = vg.ledger_rows(2).await;
    assert!(rows.iter().all(|r| r.model == "echo" && r.outcome == "ok" && r.input_tokens > 0), "{rows:?}");
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_never_answers_falls_back_at_headers_ms_max() {
    // Accepts, reads the request, and says nothing.
    let upstream = FaultServer::start(|_| vec![Step::Stall]).await;
    let vg = openai_primary(&upstream).await;
    for stream in [false, true] {
        let t0 = Instant::now();
        assert_fell_back(&vg, &ask("backed", stream), "primary=timeout, echo=ok").await;
        // The route's timeout_ms is the default 300 s: a non-streaming request used to wait it out.
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_millis(2000), "stream={stream}: {waited:?}");
    }
    let message = assert_error_says(&vg, false, 504, "headers_ms_max").await;
    assert_eq!(message["error"]["code"], "all_models_failed");
    // The abandoned attempts' connections were closed.
    assert!(crate::support::eventually(|| upstream.released() == 3).await, "released {}", upstream.released());
    let rows = vg.ledger_rows(3).await;
    assert_eq!(rows.iter().filter(|r| r.model == "echo" && r.outcome == "ok").count(), 2, "{rows:?}");
    assert_eq!(rows.iter().filter(|r| r.model == "alone" && r.outcome == "error").count(), 1, "{rows:?}");
    // Three timeouts in a row open the breaker.
    assert_eq!(vg.breaker("primary"), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn headers_then_a_stall_falls_back_at_idle_ms_max() {
    let upstream = FaultServer::start(|raw| {
        let head = if raw.json()["stream"] == true { sse_head() } else { faults::chunked_head("200 OK", "application/json") };
        vec![Step::Write(head), Step::Stall]
    })
    .await;
    let vg = openai_primary(&upstream).await;
    for stream in [true, false] {
        let t0 = Instant::now();
        assert_fell_back(&vg, &ask("backed", stream), "primary=timeout, echo=ok").await;
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(1000) && waited < Duration::from_millis(1500), "stream={stream}: {waited:?}");
    }
    assert!(crate::support::eventually(|| upstream.released() == 2).await);
    assert_eq!(vg.breaker("primary"), BreakerState::Closed, "two failures of three");
    let rows = vg.ledger_rows(2).await;
    assert!(rows.iter().all(|r| r.model == "echo" && r.outcome == "ok"), "failed attempts are not billed: {rows:?}");
}

#[tokio::test(start_paused = true)]
async fn a_200_json_error_body_on_a_stream_is_an_upstream_error() {
    let upstream = FaultServer::start(|_| {
        let body = json!({"error": {"message": "The engine is currently overloaded, please try again later", "type": "server_error", "param": null, "code": null}});
        vec![Step::Write(json_response("200 OK", &body))]
    })
    .await;
    let vg = openai_primary(&upstream).await;
    assert_fell_back(&vg, &ask("backed", true), "primary=stream, echo=ok").await;
    // Without a backup the client reads the vendor's own words.
    let r = vg.chat(&ask("alone", true)).await;
    assert_eq!(r.status(), 502);
    assert_eq!(attempts(&r), "primary=stream");
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("currently overloaded"), "{v}");
    let rows = vg.ledger_rows(2).await;
    assert_eq!(rows.iter().map(|r| (r.model.as_str(), r.outcome.as_str())).collect::<Vec<_>>(), [("echo", "ok"), ("alone", "error")]);
    assert_eq!(vg.breaker("primary"), BreakerState::Closed, "two failures of three");
}

#[tokio::test(start_paused = true)]
async fn done_without_a_finish_reason_is_never_a_complete_answer() {
    // `[DONE]` after content but with no finish reason: a truncated answer.
    let upstream = FaultServer::start(|raw| {
        let mut bytes = sse_head();
        bytes.extend(openai_frame(None, None));
        if raw.json()["model"] == "fault-model" {
            bytes.extend(openai_frame(Some("Hel"), None));
        }
        bytes.extend(faults::done_frame());
        bytes.extend_from_slice(LAST_CHUNK);
        vec![Step::Write(bytes)]
    })
    .await;
    let vg = openai_primary(&upstream).await;
    let r = vg.chat(&ask("backed", true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(attempts(&r), "primary=ok", "committed at its first token: no fallback after content");
    let frames = sse_data(r).await;
    assert_eq!(text(&frames[..frames.len() - 1]), "Hel");
    assert!(!frames.iter().any(|f| f == "[DONE]"), "a truncated answer must not end like a complete one: {frames:?}");
    assert!(
        !frames.iter().filter_map(|f| serde_json::from_str::<Value>(f).ok()).any(|c| c["choices"][0]["finish_reason"].is_string()),
        "no finish reason is invented: {frames:?}"
    );
    let last: Value = serde_json::from_str(frames.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "upstream_error", "{last}");
    assert_eq!(last["error"]["code"], "stream", "{last}");
    assert!(last["error"]["message"].as_str().unwrap().contains("finish reason"), "{last}");
    // Booked as an error, with the tokens estimated (the upstream never said).
    let rows = vg.ledger_rows(1).await;
    assert_eq!((rows[0].model.as_str(), rows[0].outcome.as_str()), ("primary", "error_estimated"), "{rows:?}");
    assert_eq!((rows[0].input_tokens, rows[0].output_tokens), (QUESTION.len().div_ceil(4) as u64, 1), "{rows:?}");

    // Before any content, the same fault falls back.
    let mut body = ask("twice", true);
    body["models"] = json!(["primary-b", "echo"]);
    assert_fell_back(&vg, &body, "primary-b=stream, echo=ok").await;
    let rows = vg.ledger_rows(2).await;
    assert_eq!((rows[1].model.as_str(), rows[1].outcome.as_str()), ("echo", "ok"), "{rows:?}");
    // Both truncations counted against the provider: two failures of three.
    assert_eq!(vg.breaker("primary"), BreakerState::Closed);
    assert_fell_back(&vg, &body, "primary-b=stream, echo=ok").await;
    assert_eq!(vg.breaker("primary"), BreakerState::Open, "the third truncation opens it");
}

#[tokio::test(start_paused = true)]
async fn a_cut_between_finish_and_usage_books_estimated_tokens() {
    const ANSWER: &str = "Hello there, fault injector!";
    let upstream = FaultServer::start(|raw| {
        if raw.json()["stream"] == true {
            // Content, the finish reason, then the connection breaks before the usage chunk
            // and `[DONE]` (no last chunk: a cut, not an end).
            let mut bytes = sse_head();
            bytes.extend(openai_frame(None, None));
            bytes.extend(openai_frame(Some(ANSWER), None));
            bytes.extend(openai_frame(None, Some("stop")));
            vec![Step::Write(bytes)]
        } else {
            // A whole answer without its usage.
            let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "fault-model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}]});
            vec![Step::Write(json_response("200 OK", &body))]
        }
    })
    .await;
    let vg = openai_primary(&upstream).await;
    let estimate = json!({
        "prompt_tokens": QUESTION.len().div_ceil(4), "completion_tokens": ANSWER.len().div_ceil(4),
        "total_tokens": QUESTION.len().div_ceil(4) + ANSWER.len().div_ceil(4),
        "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}, "estimated": true,
    });

    // Streamed: the answer was complete, so it ends as one, with the estimate as its usage.
    let r = vg.chat(&ask("backed", true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(attempts(&r), "primary=ok");
    let frames = sse_data(r).await;
    assert_complete(&frames, "cut after finish");
    assert_eq!(text(&frames), ANSWER);
    let usage: Value = serde_json::from_str(&frames[frames.len() - 2]).unwrap();
    assert_eq!(usage["usage"], estimate, "{usage}");

    // Whole: the same estimate, marked.
    let r = vg.chat(&ask("backed", false)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], ANSWER);
    assert_eq!(v["usage"], estimate, "{v}");

    let rows = vg.ledger_rows(2).await;
    for row in &rows {
        assert_eq!((row.model.as_str(), row.outcome.as_str()), ("primary", "ok_estimated"), "{rows:?}");
        assert_eq!((row.input_tokens, row.output_tokens), (QUESTION.len().div_ceil(4) as u64, ANSWER.len().div_ceil(4) as u64));
        // $1 in and $2 out per million tokens, in picodollars.
        assert_eq!(row.cost_picousd, row.input_tokens * 1_000_000 + row.output_tokens * 2_000_000);
    }
    assert_eq!(vg.breaker("primary"), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_redirect_is_never_followed_and_falls_back() {
    // The second host records what reaches it: the canary key must not.
    let elsewhere = FaultServer::start(|_| vec![Step::Write(json_response("200 OK", &json!({})))]).await;
    let target = elsewhere.url("/v1/messages");
    let upstream =
        FaultServer::start(move |_| vec![Step::Write(faults::response("307 Temporary Redirect", &[("location", &target)], b""))]).await;
    let vg = faults::start_voxgate(&config("anthropic", &upstream.url("")), &[("PRIMARY_KEY", KEY)]).await;
    for stream in [true, false] {
        assert_fell_back(&vg, &ask("backed", stream), "primary=redirect, echo=ok").await;
    }
    assert_eq!(upstream.count(), 2);
    assert_eq!(upstream.requests()[0].header("x-api-key").as_deref(), Some(KEY), "the primary did get its key");
    assert_eq!(elsewhere.count(), 0, "the redirect's target must never be called");
    assert_eq!(vg.breaker("primary"), BreakerState::Closed, "two failures of three");
    let rows = vg.ledger_rows(2).await;
    assert!(rows.iter().all(|r| r.model == "echo" && r.outcome == "ok"), "{rows:?}");
}

#[tokio::test]
async fn the_providers_reqwest_client_follows_no_redirect() {
    // https upstreams, and every upstream when a proxy is configured, go through reqwest, whose
    // default policy would resend x-api-key / x-goog-api-key to the redirect's host.
    use voxgate::llm::providers::{anthropic::Anthropic, gemini::Gemini, http_client, HttpSettings};
    let elsewhere = FaultServer::start(|_| vec![Step::Write(json_response("200 OK", &json!({})))]).await;
    let target = elsewhere.url("/v1/messages");
    let upstream =
        FaultServer::start(move |_| vec![Step::Write(faults::response("308 Permanent Redirect", &[("location", &target)], b""))]).await;
    let settings = || {
        let client = http_client(Duration::from_secs(5), Duration::from_secs(90)).unwrap();
        HttpSettings::new(upstream.url(""), Some(voxgate::secret::Secret::new(KEY)), client)
    };
    let request: voxgate::llm::types::ChatRequest = serde_json::from_value(ask("m", true)).unwrap();
    let errors = [
        Anthropic::new(settings()).send(&request, "claude-x", true).await.err(),
        Gemini::new(settings()).send(&request, "gemini-x", true).await.err(),
    ];
    for e in errors {
        let e = e.expect("a redirect is an error");
        assert_eq!(e.kind(), "redirect", "{e:?}");
        assert!(e.is_retryable(), "{e:?}");
    }
    assert_eq!(upstream.requests()[1].header("x-goog-api-key").as_deref(), Some(KEY));
    assert_eq!(elsewhere.count(), 0, "a key went to the redirect's host: {:?}", elsewhere.requests());
}

#[tokio::test(start_paused = true)]
async fn a_body_over_16_mib_is_refused_without_reading_it_all() {
    let upstream = FaultServer::start(|raw| {
        if raw.json()["model"] == "fault-model" {
            // Undeclared length: 17 MiB of a JSON string in 1 MiB chunks.
            let mut bytes = faults::chunked_head("200 OK", "application/json");
            bytes.extend(chunk(b"{\"choices\":[{\"message\":{\"content\":\""));
            let mib = vec![b'a'; 1 << 20];
            let mut steps = vec![Step::Write(bytes)];
            steps.extend((0..17).map(|_| Step::Write(chunk(&mib))));
            steps.push(Step::Write([chunk(b"\"}}]}").as_slice(), LAST_CHUNK].concat()));
            steps
        } else {
            // Declared: refused from the header alone; the body never comes.
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", 17 << 20);
            vec![Step::Write(head.into_bytes()), Step::Stall]
        }
    })
    .await;
    let vg = openai_primary(&upstream).await;
    assert_fell_back(&vg, &ask("backed", false), "primary=stream, echo=ok").await;
    assert_error_says(&vg, false, 502, "larger than the 16 MiB limit").await;
    let mut body = ask("twice", false);
    body["models"] = json!(["primary-b", "echo"]);
    assert_fell_back(&vg, &body, "primary-b=stream, echo=ok").await;
    assert!(crate::support::eventually(|| upstream.released() == 1).await, "the declared body was never read");
    let rows = vg.ledger_rows(3).await;
    let rows: Vec<_> = rows.iter().map(|r| (r.model.as_str(), r.outcome.as_str())).collect();
    assert_eq!(rows, [("echo", "ok"), ("alone", "error"), ("echo", "ok")]);
    assert_eq!(vg.breaker("primary"), BreakerState::Open, "three failures");
}

#[tokio::test(start_paused = true)]
async fn an_sse_line_of_5_mib_is_refused_at_the_event_limit() {
    let upstream = FaultServer::start(|_| {
        let mut line = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"".to_vec();
        line.extend(vec![b'a'; 5 << 20]);
        vec![Step::Write(sse_head()), Step::Write(chunk(&line)), Step::Stall]
    })
    .await;
    let vg = openai_primary(&upstream).await;
    assert_fell_back(&vg, &ask("backed", true), "primary=stream, echo=ok").await;
    assert_error_says(&vg, true, 502, "larger than 4 MiB").await;
    // Refused at the limit, and the connection dropped rather than read on.
    assert!(crate::support::eventually(|| upstream.released() == 2).await, "released {}", upstream.released());
    let rows = vg.ledger_rows(2).await;
    let rows: Vec<_> = rows.iter().map(|r| (r.model.as_str(), r.outcome.as_str())).collect();
    assert_eq!(rows, [("echo", "ok"), ("alone", "error")]);
    assert_eq!(vg.breaker("primary"), BreakerState::Closed, "two failures of three");
}

/// One vendor's refusal of our key or quota, as it writes it.
struct Refusal {
    kind: &'static str,
    status: &'static str,
    body: Value,
    /// What `x-voxgate-attempts` calls it.
    result: &'static str,
}

fn refusals() -> Vec<Refusal> {
    let per_day = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests", "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "22s"}
    ]}});
    vec![
        Refusal {
            kind: "openai",
            status: "401 Unauthorized",
            body: json!({"error": {"message": format!("Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.", &KEY[..8]), "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            result: "unauthorized",
        },
        Refusal {
            kind: "openai",
            status: "429 Too Many Requests",
            body: json!({"error": {"message": "You exceeded your current quota, please check your plan and billing details.", "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}),
            result: "quota",
        },
        Refusal {
            kind: "openai",
            status: "404 Not Found",
            body: json!({"error": {"message": "The model `fault-model` does not exist or you do not have access to it.", "type": "invalid_request_error", "param": null, "code": "model_not_found"}}),
            result: "not_found",
        },
        Refusal {
            kind: "anthropic",
            status: "401 Unauthorized",
            body: json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}, "request_id": "req_fault"}),
            result: "unauthorized",
        },
        Refusal {
            kind: "anthropic",
            status: "403 Forbidden",
            body: json!({"type": "error", "error": {"type": "permission_error", "message": "Your API key does not have permission to use the specified resource."}, "request_id": "req_fault"}),
            result: "forbidden",
        },
        Refusal {
            kind: "anthropic",
            status: "400 Bad Request",
            body: json!({"type": "error", "error": {"type": "invalid_request_error", "message": "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}, "request_id": "req_fault"}),
            result: "quota",
        },
        Refusal {
            kind: "anthropic",
            status: "402 Payment Required",
            body: json!({"type": "error", "error": {"type": "billing_error", "message": "Your account has an outstanding balance."}, "request_id": "req_fault"}),
            result: "quota",
        },
        Refusal {
            kind: "gemini",
            status: "403 Forbidden",
            body: json!({"error": {"code": 403, "message": "Permission denied: Consumer 'api_key:x' has been suspended.", "status": "PERMISSION_DENIED"}}),
            result: "forbidden",
        },
        Refusal { kind: "gemini", status: "429 Too Many Requests", body: per_day, result: "quota" },
        Refusal {
            kind: "gemini",
            status: "400 Bad Request",
            body: json!({"error": {"code": 400, "message": "API key expired. Please renew the API key.", "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}),
            result: "unauthorized",
        },
    ]
}

#[tokio::test(start_paused = true)]
async fn a_revoked_or_exhausted_primary_moves_to_another_provider_and_opens_its_breaker() {
    for refusal in refusals() {
        let what = format!("{} {} {}", refusal.kind, refusal.status, refusal.result);
        let (status, body) = (refusal.status, refusal.body.clone());
        let upstream = FaultServer::start(move |_| vec![Step::Write(json_response(status, &body))]).await;
        let base_url = if refusal.kind == "openai" { upstream.url("/v1") } else { upstream.url("") };
        let vg = faults::start_voxgate(&config(refusal.kind, &base_url), &[("PRIMARY_KEY", KEY)]).await;

        let r = vg.chat(&ask("backed", true)).await;
        assert_eq!(r.status(), 200, "{what}");
        assert_eq!(attempts(&r), format!("primary={}, echo=ok", refusal.result), "{what}");
        let frames = sse_data(r).await;
        assert_complete(&frames, &what);
        assert_eq!(text(&frames), ECHO, "{what}");
        // One refusal is enough: the breaker opens at once (three failures otherwise).
        assert_eq!(vg.breaker("primary"), BreakerState::Open, "{what}");
        assert_eq!(vg.metric(r#"voxgate_gateway_breaker_open{provider="primary"}"#), Some(1.0), "{what}");

        // The next request does not knock on the refused provider again.
        assert_fell_back(&vg, &ask("backed", false), "primary=skipped_breaker_open, echo=ok").await;
        assert_eq!(upstream.count(), 1, "{what}: the refused provider was tried again");
        let rows = vg.ledger_rows(2).await;
        assert!(rows.iter().all(|r| r.model == "echo" && r.outcome == "ok"), "{what}: {rows:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_refusing_provider_is_never_tried_twice_in_one_request() {
    let body = json!({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
    let upstream = FaultServer::start(move |_| vec![Step::Write(json_response("401 Unauthorized", &body))]).await;
    let vg = openai_primary(&upstream).await;
    assert_fell_back(&vg, &ask("twice", true), "primary=unauthorized, primary-b=skipped_provider_refused, echo=ok").await;
    assert_eq!(upstream.count(), 1);
    // With every breaker open the models are tried anyway, but a refusing provider only once:
    // with no other provider left, its refusal ends the request.
    let mut both = ask("x", false);
    both["models"] = json!(["primary", "primary-b"]);
    let r = vg.chat(&both).await;
    assert_eq!(r.status(), 502);
    assert_eq!(attempts(&r), "primary=skipped_breaker_open, primary-b=skipped_breaker_open, primary=unauthorized");
    assert_eq!(upstream.count(), 2);
    let v: Value = r.json().await.unwrap();
    assert!(!v.to_string().contains(&KEY[..8]), "the vendor's echo of the key must not reach the client: {v}");
    let rows = vg.ledger_rows(2).await;
    let rows: Vec<_> = rows.iter().map(|r| (r.model.as_str(), r.outcome.as_str())).collect();
    assert_eq!(rows, [("echo", "ok"), ("primary", "error")]);
    assert_eq!(vg.breaker("primary"), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_releases_the_upstream_after_idle_ms_max() {
    // An upstream that streams content for ever.
    let upstream = FaultServer::start(|_| {
        let mut head = sse_head();
        head.extend(openai_frame(None, None));
        vec![Step::Write(head), Step::WriteForever(openai_frame(Some(&"a".repeat(8192)), None))]
    })
    .await;
    let vg = openai_primary(&upstream).await;
    // A client that sends its request and never reads a byte of the answer.
    let addr = vg.base.trim_start_matches("http://").to_string();
    let mut client = tokio::net::TcpStream::connect(&addr).await.unwrap();
    client.set_nodelay(true).unwrap();
    let body = ask("backed", true).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    // It reads the status and headers, then nothing more.
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tokio::io::AsyncReadExt::read(&mut client, &mut byte).await.unwrap(), 1, "{}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200") && head.contains("x-voxgate-attempts: primary=ok"), "{head}");

    let t0 = Instant::now();
    while upstream.released() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(600), "the upstream is still held for a client that reads nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Released once the client had left its stream unread for idle_ms_max (1 s).
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let rows = vg.ledger_rows(1).await;
    assert_eq!((rows[0].model.as_str(), rows[0].outcome.as_str()), ("primary", "cancelled_estimated"), "{rows:?}");
    assert!(rows[0].output_tokens > 0, "what was streamed is booked: {rows:?}");
    assert_eq!(vg.breaker("primary"), BreakerState::Closed, "the client's fault, not the provider's");
    drop(client);
}
