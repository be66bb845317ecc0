//! One conformance suite over every HTTP provider: voxgate on loopback in front of each fake
//! vendor (OpenAI, Anthropic, Gemini wire formats), checked as an OpenAI client sees it. The
//! same scenarios must give the same answers whatever the vendor.

use serde_json::{json, Value};

use crate::support::{self, sse_data, start_voxgate, vendors, Recorder};

#[derive(Clone, Copy, Debug)]
enum Vendor {
    OpenAi,
    Anthropic,
    Gemini,
}

const ALL: [Vendor; 3] = [Vendor::OpenAi, Vendor::Anthropic, Vendor::Gemini];
const SECRET: &str = "sk-upstream-SECRET-9f8e7d";

/// Start the vendor's fake and voxgate in front of it. Models are named after the scenarios;
/// `with_backup` routes fall back to the fake OpenAI vendor's `text` scenario.
async fn setup(vendor: Vendor) -> (String, Recorder, std::sync::Arc<voxgate::http::AppState>) {
    let (base_url, recorder) = match vendor {
        Vendor::OpenAi => vendors::openai::start().await,
        Vendor::Anthropic => vendors::anthropic::start().await,
        Vendor::Gemini => vendors::gemini::start().await,
    };
    let (backup_url, _) = vendors::openai::start().await;
    let kind = match vendor {
        Vendor::OpenAi => "openai",
        Vendor::Anthropic => "anthropic",
        Vendor::Gemini => "gemini",
    };
    let mut config = format!(
        "[providers.vendor]\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\napi_key = \"env:UPSTREAM_KEY\"\n\
         [providers.backup]\nkind = \"openai\"\nbase_url = \"{backup_url}\"\n\
         [[models]]\nid = \"backup-text\"\nprovider = \"backup\"\nupstream = \"text\"\ninput_usd_per_mtok = 0.4\noutput_usd_per_mtok = 1.6\n"
    );
    for scenario in [
        "text",
        "tool",
        "two_tools",
        "json",
        "rate_limited",
        "overloaded",
        "bad_request",
        "unauthorized",
        "quota",
        "stall",
        "cut",
        "malformed",
        "midstream_error",
        "stall_after_content",
    ] {
        config.push_str(&format!(
            "[[models]]\nid = \"{scenario}\"\nprovider = \"vendor\"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\ncached_input_usd_per_mtok = 0.5\n\
             [routes.{scenario}_with_backup]\nmodels = [\"{scenario}\", \"backup-text\"]\nttft_ms_max = 1000\nidle_ms_max = 500\n"
        ));
    }
    let (base, state) = start_voxgate(&config, &[("UPSTREAM_KEY", SECRET)]).await;
    (base, recorder, state)
}

fn body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Weather in Paris?"}],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}
        ],
    })
}

async fn post(base: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new().post(format!("{base}/v1/chat/completions")).json(body).send().await.unwrap()
}

/// A streamed answer put together: text, tool calls (name, arguments), finish reason, usage.
type Assembled = (String, Vec<(String, String)>, Option<String>, Option<Value>);

/// Text, tool calls (name, arguments) and finish reason from a streamed answer.
fn assemble(frames: &[String]) -> Assembled {
    let mut text = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut finish = None;
    let mut usage = None;
    for f in frames.iter().filter(|f| *f != "[DONE]") {
        let c: Value = serde_json::from_str(f).unwrap();
        if !c["usage"].is_null() {
            usage = Some(c["usage"].clone());
        }
        let Some(choice) = c["choices"].get(0) else { continue };
        if let Some(t) = choice["delta"]["content"].as_str() {
            text.push_str(t);
        }
        for tc in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let i = tc["index"].as_u64().unwrap() as usize;
            if calls.len() <= i {
                calls.resize(i + 1, (String::new(), String::new()));
            }
            if let Some(n) = tc["function"]["name"].as_str() {
                calls[i].0 = n.to_string();
            }
            if let Some(a) = tc["function"]["arguments"].as_str() {
                calls[i].1.push_str(a);
            }
        }
        if let Some(r) = choice["finish_reason"].as_str() {
            finish = Some(r.to_string());
        }
    }
    (text, calls, finish, usage)
}

#[tokio::test]
async fn text_streamed_and_whole() {
    for v in ALL {
        let (base, _, _) = setup(v).await;
        let frames = sse_data(post(&base, &body("text", true)).await).await;
        assert_eq!(frames.last().map(String::as_str), Some("[DONE]"), "{v:?}");
        let (text, calls, finish, usage) = assemble(&frames);
        assert_eq!(text, "Hello, world!", "{v:?}");
        assert!(calls.is_empty(), "{v:?}");
        assert_eq!(finish.as_deref(), Some("stop"), "{v:?}");
        let usage = usage.unwrap_or_else(|| panic!("{v:?}: no usage chunk"));
        assert!(usage["prompt_tokens"].as_u64().unwrap() >= 10, "{v:?}: {usage}");
        assert!(usage["completion_tokens"].as_u64().unwrap() >= 4, "{v:?}: {usage}");
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 2, "{v:?}: {usage}");

        let r: Value = post(&base, &body("text", false)).await.json().await.unwrap();
        assert_eq!(r["choices"][0]["message"]["content"], "Hello, world!", "{v:?}: {r}");
        assert_eq!(r["choices"][0]["finish_reason"], "stop", "{v:?}");
        assert_eq!(r["model"], "text", "{v:?}");
    }
}

#[tokio::test]
async fn tool_calls_streamed_and_whole() {
    for v in ALL {
        let (base, _, _) = setup(v).await;
        let (_, calls, finish, _) = assemble(&sse_data(post(&base, &body("tool", true)).await).await);
        assert_eq!(calls.len(), 1, "{v:?}");
        assert_eq!(calls[0].0, "get_weather", "{v:?}");
        assert_eq!(serde_json::from_str::<Value>(&calls[0].1).unwrap(), json!({"city": "Paris"}), "{v:?}");
        assert_eq!(finish.as_deref(), Some("tool_calls"), "{v:?}");

        let (text, calls, finish, _) = assemble(&sse_data(post(&base, &body("two_tools", true)).await).await);
        assert_eq!(text, "Let me check.", "{v:?}");
        let names: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["get_weather", "get_time"], "{v:?}: tool indexes 0 and 1");
        assert_eq!(serde_json::from_str::<Value>(&calls[1].1).unwrap(), json!({"tz": "CET"}), "{v:?}");
        assert_eq!(finish.as_deref(), Some("tool_calls"), "{v:?}");

        let r: Value = post(&base, &body("two_tools", false)).await.json().await.unwrap();
        let tc = r["choices"][0]["message"]["tool_calls"].as_array().unwrap_or_else(|| panic!("{v:?}: {r}"));
        assert_eq!(tc.len(), 2, "{v:?}");
        assert!(tc.iter().all(|c| c["id"].as_str().is_some_and(|id| !id.is_empty()) && c["type"] == "function"), "{v:?}: {r}");
    }
}

#[tokio::test]
async fn tool_results_reach_the_vendor_in_its_own_format() {
    for v in ALL {
        let (base, recorder, _) = setup(v).await;
        let mut b = body("text", false);
        b["messages"] = json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_7", "content": "{\"temp_c\": 18}"}
        ]);
        let r = post(&base, &b).await;
        assert_eq!(r.status(), 200, "{v:?}");
        let sent = recorder.last().body;
        match v {
            Vendor::OpenAi => {
                assert_eq!(sent["messages"][3]["role"], "tool");
                assert_eq!(sent["messages"][3]["tool_call_id"], "call_7");
            }
            Vendor::Anthropic => {
                assert_eq!(sent["system"], "You are terse.");
                let last = sent["messages"].as_array().unwrap().last().unwrap().clone();
                assert_eq!(last["role"], "user");
                assert_eq!(last["content"][0]["type"], "tool_result");
                assert_eq!(last["content"][0]["tool_use_id"], "call_7");
            }
            Vendor::Gemini => {
                assert!(sent["systemInstruction"].is_object());
                let contents = sent["contents"].as_array().unwrap();
                assert_eq!(contents[1]["role"], "model");
                let fr = &contents[2]["parts"][0]["functionResponse"];
                assert_eq!(fr["name"], "get_weather");
                assert_eq!(fr["response"]["temp_c"], 18);
            }
        }
    }
}

#[tokio::test]
async fn a_user_name_reaches_every_vendor() {
    for v in ALL {
        let (base, recorder, _) = setup(v).await;
        let mut b = body("text", false);
        b["messages"] = json!([
            {"role": "user", "name": "speaker_A", "content": "Weather in Paris?"},
            {"role": "user", "name": "speaker_B", "content": "And in Rome?"}
        ]);
        let r = post(&base, &b).await;
        assert_eq!(r.status(), 200, "{v:?}");
        let sent = recorder.last().body;
        match v {
            Vendor::OpenAi => {
                assert_eq!(sent["messages"][0]["name"], "speaker_A");
                assert_eq!(sent["messages"][1]["name"], "speaker_B");
                assert_eq!(sent["messages"][1]["content"], "And in Rome?");
            }
            Vendor::Anthropic => assert_eq!(
                sent["messages"],
                json!([{"role": "user", "content": [
                    {"type": "text", "text": "speaker_A: Weather in Paris?"},
                    {"type": "text", "text": "speaker_B: And in Rome?"}
                ]}])
            ),
            Vendor::Gemini => assert_eq!(
                sent["contents"],
                json!([{"role": "user", "parts": [{"text": "speaker_A: Weather in Paris?"}, {"text": "speaker_B: And in Rome?"}]}])
            ),
        }
    }
}

#[tokio::test]
async fn json_mode_gives_json_text() {
    for v in ALL {
        let (base, _, _) = setup(v).await;
        let mut b = body("json", false);
        b.as_object_mut().unwrap().remove("tools");
        b["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object", "properties": {"answer": {"type": "integer"}}}}});
        let r: Value = post(&base, &b).await.json().await.unwrap();
        let text = r["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("{v:?}: {r}"));
        assert_eq!(serde_json::from_str::<Value>(text).unwrap(), json!({"answer": 42}), "{v:?}");
    }
}

#[tokio::test]
async fn retryable_failures_before_content_fall_back() {
    for v in ALL {
        let (base, _, _) = setup(v).await;
        for scenario in ["rate_limited", "overloaded", "stall", "malformed"] {
            let r = post(&base, &body(&format!("{scenario}_with_backup"), true)).await;
            assert_eq!(r.status(), 200, "{v:?} {scenario}");
            assert_eq!(r.headers()["x-voxgate-model"], "backup-text", "{v:?} {scenario}");
            let attempts = r.headers()["x-voxgate-attempts"].to_str().unwrap().to_string();
            assert!(attempts.starts_with(&format!("{scenario}=")) && attempts.ends_with("backup-text=ok"), "{v:?} {scenario}: {attempts}");
            let (text, _, _, _) = assemble(&sse_data(r).await);
            assert_eq!(text, "Hello, world!", "{v:?} {scenario}: the client sees only the backup's answer");
        }
    }
}

#[tokio::test]
async fn client_errors_are_not_retried_and_keep_their_meaning() {
    for v in ALL {
        let (base, _, _) = setup(v).await;
        let r = post(&base, &body("bad_request_with_backup", false)).await;
        assert_eq!(r.status(), 400, "{v:?}");
        assert_eq!(r.headers()["x-voxgate-attempts"], "bad_request=client_error", "{v:?}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"]["message"].as_str().unwrap().contains("bad_request"), "{v:?}: {e}");

        // The vendor rejecting voxgate's key is voxgate's problem, not the client's: another
        // provider answers when the route has one, else 502.
        let r = post(&base, &body("unauthorized_with_backup", false)).await;
        assert_eq!(r.status(), 200, "{v:?}");
        assert_eq!(r.headers()["x-voxgate-attempts"], "unauthorized=unauthorized, backup-text=ok", "{v:?}");
        // The first refusal opened the provider's breaker; with nothing else to try, the
        // model is tried anyway.
        let r = post(&base, &body("unauthorized", false)).await;
        assert_eq!(r.status(), 502, "{v:?}");
        assert_eq!(r.headers()["x-voxgate-attempts"], "unauthorized=skipped_breaker_open, unauthorized=unauthorized", "{v:?}");
    }
}

#[tokio::test]
async fn failure_after_content_is_in_band_without_done() {
    for v in ALL {
        let (base, _, _) = setup(v).await;
        for (scenario, code) in [("stall_after_content", "timeout"), ("cut", "stream"), ("midstream_error", "stream")] {
            let r = post(&base, &body(&format!("{scenario}_with_backup"), true)).await;
            assert_eq!(r.headers()["x-voxgate-model"], scenario, "{v:?}: no fallback after content");
            let frames = sse_data(r).await;
            assert!(!frames.iter().any(|f| f == "[DONE]"), "{v:?} {scenario}: {frames:?}");
            let last: Value = serde_json::from_str(frames.last().unwrap()).unwrap();
            assert_eq!(last["error"]["code"], code, "{v:?} {scenario}: {last}");
            let (text, _, _, _) = assemble(&frames[..frames.len() - 1]);
            assert_eq!(text, "Hel", "{v:?} {scenario}");
        }
    }
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    for v in ALL {
        let (base, recorder, _) = setup(v).await;
        let mut r = post(&base, &body("stall_after_content", true)).await;
        // Read until the first content arrives, then hang up.
        let mut seen = String::new();
        while !seen.contains("Hel") {
            let chunk = r.chunk().await.unwrap().expect("stream open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        drop(r);
        assert!(support::eventually(|| recorder.dropped_early() == 1).await, "{v:?}: the fake vendor never saw the upstream close");
    }
}

#[tokio::test]
async fn upstream_keys_never_leak_into_errors_metrics_or_usage() {
    for v in ALL {
        let (base, recorder, _) = setup(v).await;
        let mut everything = String::new();
        for scenario in ["unauthorized", "bad_request", "quota", "rate_limited", "text"] {
            let r = post(&base, &body(scenario, false)).await;
            everything.push_str(&format!("{:?}", r.headers()));
            everything.push_str(&r.text().await.unwrap());
        }
        for path in ["/metrics", "/v1/usage", "/v1/models"] {
            everything.push_str(&reqwest::get(format!("{base}{path}")).await.unwrap().text().await.unwrap());
        }
        assert!(!everything.contains(SECRET), "{v:?}: the upstream key leaked");
        // ...while the vendor did receive it, in its own header.
        let sent = recorder.last();
        let header = match v {
            Vendor::OpenAi => sent.header("authorization").map(|h| h.trim_start_matches("Bearer ").to_string()),
            Vendor::Anthropic => sent.header("x-api-key").map(str::to_string),
            Vendor::Gemini => sent.header("x-goog-api-key").map(str::to_string),
        };
        assert_eq!(header.as_deref(), Some(SECRET), "{v:?}");
        assert!(!sent.query.contains(SECRET), "{v:?}: key in the URL");
    }
}
