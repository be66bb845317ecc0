//! The gateway over real HTTP: voxgate on a loopback port, talking to fake providers and to the
//! fake OpenAI vendor server, checked as a client sees it.

use serde_json::{json, Value};

use crate::support::{sse_data, start_voxgate, FAKE_ECHO};

/// The fake echo model and fakes that fail, cut, call tools or say nothing, behind three routes.
fn fakes() -> String {
    format!(
        r#"{FAKE_ECHO}[[models]]
id = "broken"
provider = "fake"
upstream = "error-500"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[models]]
id = "limited"
provider = "fake"
upstream = "error-429+retry-30"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[models]]
id = "rejecting"
provider = "fake"
upstream = "error-400"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[models]]
id = "cutter"
provider = "fake"
upstream = "cut-3"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[models]]
id = "tooler"
provider = "fake"
upstream = "tool"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[models]]
id = "silent"
provider = "fake"
upstream = "reply="
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[models]]
id = "short-context"
provider = "fake"
upstream = "context"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[[models]]
id = "inexpressible"
provider = "fake"
upstream = "invalid"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
[routes.voice]
models = ["broken", "limited", "echo"]
[routes.doomed]
models = ["broken", "limited"]
[routes.late_cut]
models = ["cutter", "echo"]
"#
    )
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]})
}

async fn post(base: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new().post(format!("{base}/v1/chat/completions")).json(body).send().await.unwrap()
}

#[tokio::test]
async fn non_streaming_answer_names_the_model_and_usage() {
    let (base, _) = start_voxgate(&fakes(), &[]).await;
    let r = post(&base, &chat("echo", "hello there")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-voxgate-model"], "echo");
    assert_eq!(r.headers()["x-voxgate-attempts"], "echo=ok");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "echo");
    assert_eq!(v["choices"][0]["message"]["content"], "You said: hello there");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(v["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn streaming_with_usage_ends_with_usage_chunk_and_done() {
    let (base, _) = start_voxgate(&fakes(), &[]).await;
    let mut body = chat("echo", "one two");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(&base, &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let frames = sse_data(r).await;
    assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = frames[..frames.len() - 1].iter().map(|f| serde_json::from_str(f).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "You said: one two");
    let finish: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finish, vec![&json!("stop")]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    // Every other chunk carries "usage": null, as OpenAI does.
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()));
}

#[tokio::test]
async fn streamed_tool_calls_have_index_id_type_and_name_then_argument_deltas() {
    let (base, _) = start_voxgate(&fakes(), &[]).await;
    let mut body = chat("tooler", "Paris");
    body["stream"] = json!(true);
    body["tools"] = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
    let frames = sse_data(post(&base, &body).await).await;
    let chunks: Vec<Value> = frames.iter().filter(|f| *f != "[DONE]").map(|f| serde_json::from_str(f).unwrap()).collect();
    let calls: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0)).collect();
    assert_eq!(calls[0]["index"], 0);
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "lookup");
    // Later fragments carry only index and arguments (no repeated type, no empty deltas).
    for c in &calls[1..] {
        assert!(c.get("type").is_none() && c.get("id").is_none());
        assert!(!c["function"]["arguments"].as_str().unwrap().is_empty());
    }
    let args: String = calls.iter().filter_map(|c| c["function"]["arguments"].as_str()).collect();
    assert_eq!(serde_json::from_str::<Value>(&args).unwrap(), json!({"text": "Paris"}));
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
}

#[tokio::test]
async fn route_falls_back_past_500_and_429_and_reports_attempts() {
    let (base, state) = start_voxgate(&fakes(), &[]).await;
    let r = post(&base, &chat("voice", "hi")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-voxgate-model"], "echo");
    assert_eq!(r.headers()["x-voxgate-attempts"], "broken=server_error, limited=rate_limited, echo=ok");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "echo");
    // Only the serving attempt is billed; the fallback is counted.
    let rows = state.gateway.accounts.usage.rows();
    let echo = rows.iter().find(|r| r.model == "echo").unwrap();
    assert_eq!((echo.requests, echo.fallbacks), (1, 1));
    assert!(rows.iter().all(|r| r.model == "echo"), "failed attempts are not billed: {rows:?}");
}

#[tokio::test]
async fn request_models_list_overrides_the_route() {
    let (base, _) = start_voxgate(&fakes(), &[]).await;
    let mut body = chat("anything-ignored-when-models-given", "x");
    body["model"] = json!("voice");
    body["models"] = json!(["broken", "echo"]);
    let r = post(&base, &body).await;
    assert_eq!(r.headers()["x-voxgate-attempts"], "broken=server_error, echo=ok");
}

#[tokio::test]
async fn all_models_down_gives_an_error_listing_each_attempt() {
    let (base, _) = start_voxgate(&fakes(), &[]).await;
    let r = post(&base, &chat("doomed", "hi")).await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-voxgate-attempts"], "broken=server_error, limited=rate_limited");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "all_models_failed");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("broken") && msg.contains("500") && msg.contains("limited") && msg.contains("429"), "{msg}");
}

#[tokio::test]
async fn a_400_from_upstream_is_not_retried() {
    let (base, _) = start_voxgate(&fakes(), &[]).await;
    let mut body = chat("x", "hi");
    body["model"] = json!("rejecting");
    body["models"] = json!(["rejecting", "echo"]);
    let r = post(&base, &body).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-voxgate-attempts"], "rejecting=client_error");
}

#[tokio::test]
async fn failure_after_content_is_in_band_with_no_done_and_no_fallback() {
    let (base, _) = start_voxgate(&fakes(), &[]).await;
    let mut body = chat("late_cut", "a b c d e");
    body["stream"] = json!(true);
    let r = post(&base, &body).await;
    assert_eq!(r.headers()["x-voxgate-model"], "cutter");
    let frames = sse_data(r).await;
    assert!(!frames.iter().any(|f| f == "[DONE]"), "{frames:?}");
    let last: Value = serde_json::from_str(frames.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "upstream_error");
    let text: String = frames
        .iter()
        .filter_map(|f| serde_json::from_str::<Value>(f).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "You said: a", "content before the cut came from the first model only");
}

#[tokio::test]
async fn bad_input_gets_openai_error_objects() {
    let (base, _) = start_voxgate(&fakes(), &[]).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/chat/completions");

    let cases: Vec<(reqwest::RequestBuilder, u16, Option<&str>)> = vec![
        (client.post(&url).header("content-type", "application/json").body("{\"model\": "), 400, None),
        (client.post(&url).json(&json!({"model": "echo"})), 400, Some("messages")),
        (client.post(&url).json(&json!({"model": "echo", "messages": []})), 400, Some("messages")),
        (client.post(&url).json(&json!({"model": 7, "messages": [{"role": "user", "content": "x"}]})), 400, Some("model")),
        (client.post(&url).json(&json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]})), 404, Some("model")),
        (client.post(&url).header("content-type", "text/plain").body("hi"), 415, None),
        (client.post(&url).header("content-type", "application/json").body(vec![b' '; 5 * 1024 * 1024]), 413, None),
        (client.get(&url), 405, None),
        (client.get(format!("{base}/v2/nothing")), 404, None),
    ];
    for (i, (req, status, param)) in cases.into_iter().enumerate() {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "case {i}");
        let v: Value = r.json().await.unwrap();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| m.len() > 10), "case {i}: {v}");
        assert!(e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(), "case {i}: {v}");
        if let Some(p) = param {
            assert_eq!(e["param"], p, "case {i}");
        }
    }
}

#[tokio::test]
async fn gateway_keys_are_required_when_configured() {
    let config = format!("[auth]\napi_keys = [\"env:VOXGATE_API_KEY\"]\n{}", fakes());
    let (base, _) = start_voxgate(&config, &[("VOXGATE_API_KEY", "vk-123")]).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/chat/completions");
    let r = client.post(&url).json(&chat("echo", "x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client.post(&url).bearer_auth("vk-wrong").json(&chat("echo", "x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let r = client.post(&url).bearer_auth("vk-123").json(&chat("echo", "x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Health stays open for load balancers.
    assert_eq!(client.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn models_usage_and_metrics_endpoints() {
    let (base, _) = start_voxgate(&fakes(), &[]).await;
    post(&base, &chat("voice", "hi")).await.bytes().await.unwrap();
    post(&base, &chat("doomed", "hi")).await.bytes().await.unwrap();
    let client = reqwest::Client::new();
    let models: Value = client.get(format!("{base}/v1/models")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"voice") && ids.contains(&"echo") && ids.contains(&"smollm2-135m-instruct"), "{ids:?}");

    let usage: Value = client.get(format!("{base}/v1/usage")).send().await.unwrap().json().await.unwrap();
    let rows = usage["data"].as_array().unwrap();
    let echo = rows.iter().find(|r| r["model"] == "echo").unwrap();
    assert_eq!(echo["key"], "anonymous");
    assert_eq!(echo["requests"], 1);
    assert_eq!(echo["fallbacks"], 1);
    assert!(echo["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(echo["ttft_ms"]["p99"].is_number() && echo["latency_ms"]["p50"].is_number());
    let doomed = rows.iter().find(|r| r["model"] == "doomed").unwrap();
    assert_eq!(doomed["errors"], 1);

    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for needle in [
        "voxgate_gateway_requests_total{model=\"echo\",outcome=\"ok\"} 1",
        "voxgate_gateway_fallbacks_total{reason=\"server_error\"}",
        "voxgate_gateway_ttft_seconds_count{model=\"echo\"} 1",
        "voxgate_gateway_cost_usd_total{model=\"echo\"}",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

#[tokio::test]
async fn streaming_request_that_fails_everywhere_gets_an_error_status_not_a_200_stream() {
    // LiteLLM #38610: the client had already received 200 and a first event when the fallback
    // failed too. voxgate holds everything back until a model produces content.
    let (base, _) = start_voxgate(&fakes(), &[]).await;
    let mut body = chat("doomed", "hi");
    body["stream"] = json!(true);
    let r = post(&base, &body).await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "all_models_failed");
}

#[tokio::test]
async fn an_answer_without_content_ends_cleanly() {
    // A reasoning model that spends every token thinking, or a filtered answer: no content at
    // all. The stream must still end with a finish reason, usage and [DONE].
    let (base, _) = start_voxgate(&fakes(), &[]).await;
    let mut body = chat("silent", "hi");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let frames = sse_data(post(&base, &body).await).await;
    assert_eq!(frames.last().map(String::as_str), Some("[DONE]"), "{frames:?}");
    let usage: Value = serde_json::from_str(&frames[frames.len() - 2]).unwrap();
    assert!(usage["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let r: Value = post(&base, &chat("silent", "hi")).await.json().await.unwrap();
    assert_eq!(r["choices"][0]["message"]["content"], "");
}

#[tokio::test]
async fn a_request_one_provider_cannot_express_goes_to_the_next_model() {
    let (base, _) = start_voxgate(&fakes(), &[]).await;
    let mut body = chat("x", "hi");
    body["model"] = json!("inexpressible");
    body["models"] = json!(["inexpressible", "echo"]);
    let r = post(&base, &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-voxgate-attempts"], "inexpressible=invalid_request, echo=ok");
    // Alone, it is the client's error: 400.
    let r = post(&base, &chat("inexpressible", "hi")).await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn unknown_model_names_do_not_grow_usage_or_metrics() {
    let (base, state) = start_voxgate(&fakes(), &[]).await;
    for i in 0..20 {
        post(&base, &chat(&format!("made-up-{i}"), "hi")).await.bytes().await.unwrap();
    }
    let rows = state.gateway.accounts.usage.rows();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].model.as_str(), rows[0].errors), ("unknown", 20));
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("made-up"));
}

#[tokio::test]
async fn a_prompt_too_long_for_one_model_goes_to_the_next() {
    let (base, _) = start_voxgate(&fakes(), &[]).await;
    let mut body = chat("x", "a very long prompt");
    body["model"] = json!("short-context");
    body["models"] = json!(["short-context", "echo"]);
    let r = post(&base, &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-voxgate-attempts"], "short-context=context_length, echo=ok");
    // With no larger model left, the client learns why, in OpenAI's terms.
    let r = post(&base, &chat("short-context", "hi")).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
}
