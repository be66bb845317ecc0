//! Fallback with paused time: the gateway as a library over fake providers, so deadlines are
//! exact and nothing waits for real time.

use std::time::Duration;

use tokio::time::Instant;
use voxgate::config::Config;
use voxgate::llm::router::{Gateway, GatewayError};
use voxgate::llm::types::{ChatRequest, Completion, Event, Message};

const CONFIG: &str = r#"
[gateway]
retry_after_ms_max = 2000
breaker_failures = 2
breaker_cooldown_ms = 10000
[providers.primary]
kind = "fake"
[providers.backup]
kind = "fake"
[[models]]
id = "p-500"
provider = "primary"
upstream = "error-500"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
[[models]]
id = "p-429"
provider = "primary"
upstream = "error-429+retry-1"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
[[models]]
id = "p-slow"
provider = "primary"
upstream = "slow-5000"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
[[models]]
id = "p-stall"
provider = "primary"
upstream = "stall-0"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
[[models]]
id = "p-stall-late"
provider = "primary"
upstream = "stall-2"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
[[models]]
id = "p-cut-late"
provider = "primary"
upstream = "cut-2"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
[[models]]
id = "p-flaky"
provider = "primary"
upstream = "flaky-1"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
[[models]]
id = "b-ok"
provider = "backup"
upstream = "echo"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
[[models]]
id = "b-500"
provider = "backup"
upstream = "error-503"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
[routes.r500]
models = ["p-500", "b-ok"]
[routes.r429]
models = ["p-429", "b-ok"]
[routes.only429]
models = ["p-429"]
[routes.slow]
models = ["p-slow", "b-ok"]
ttft_ms_max = 1200
[routes.stall]
models = ["p-stall", "b-ok"]
ttft_ms_max = 5000
idle_ms_max = 800
[routes.stall_late]
models = ["p-stall-late", "b-ok"]
ttft_ms_max = 5000
idle_ms_max = 800
[routes.cut_late]
models = ["p-cut-late", "b-ok"]
[routes.down]
models = ["p-500", "b-500"]
[routes.flaky_only]
models = ["p-flaky"]
"#;

fn gateway() -> Gateway {
    Gateway::new(&Config::from_toml(CONFIG, &|_| None).unwrap()).unwrap()
}

fn request(model: &str) -> ChatRequest {
    ChatRequest { model: model.into(), messages: vec![Message::user("hello")], stream: true, ..ChatRequest::default() }
}

async fn collect(gw: &Gateway, model: &str) -> Result<(String, Vec<String>, Completion), GatewayError> {
    let mut answer = gw.start(&request(model), "test").await?;
    let mut c = Completion::default();
    while let Some(e) = answer.next().await {
        c.push(&e.expect("no mid-stream error"));
    }
    let attempts = answer.attempts.iter().map(|a| format!("{}={}", a.model, a.result)).collect();
    Ok((answer.model.clone(), attempts, c))
}

/// Read an answer to its end: the texts, and the error that ended it, if one did.
async fn drain(answer: &mut voxgate::llm::router::Answer) -> (Vec<String>, Option<voxgate::llm::error::ProviderError>) {
    let mut texts = Vec::new();
    while let Some(e) = answer.next().await {
        match e {
            Ok(Event::Text(t)) => texts.push(t),
            Ok(_) => {}
            Err(e) => return (texts, Some(e)),
        }
    }
    (texts, None)
}

#[tokio::test(start_paused = true)]
async fn primary_500_falls_back_at_once() {
    let gw = gateway();
    let t0 = Instant::now();
    let (model, attempts, c) = collect(&gw, "r500").await.unwrap();
    assert_eq!(model, "b-ok");
    assert_eq!(attempts, ["p-500=server_error", "b-ok=ok"]);
    assert_eq!(c.text, "You said: hello");
    assert!(t0.elapsed() < Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn primary_429_moves_on_without_waiting_when_a_backup_exists() {
    let gw = gateway();
    let t0 = Instant::now();
    let (model, attempts, _) = collect(&gw, "r429").await.unwrap();
    assert_eq!(model, "b-ok");
    assert_eq!(attempts, ["p-429=rate_limited", "b-ok=ok"]);
    assert!(t0.elapsed() < Duration::from_millis(10), "no dead air waiting out Retry-After: {:?}", t0.elapsed());
}

#[tokio::test(start_paused = true)]
async fn last_model_429_waits_out_retry_after_once_then_gives_up() {
    let gw = gateway();
    let t0 = Instant::now();
    let err = collect(&gw, "only429").await.unwrap_err();
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_millis(1010), "{waited:?}");
    let results: Vec<&str> = err.attempts().iter().map(|a| a.result.as_str()).collect();
    assert_eq!(results, ["rate_limited", "rate_limited"]);
}

#[tokio::test(start_paused = true)]
async fn slow_first_token_falls_back_at_the_ttft_deadline() {
    let gw = gateway();
    let t0 = Instant::now();
    let (model, attempts, _) = collect(&gw, "slow").await.unwrap();
    assert_eq!(model, "b-ok");
    assert_eq!(attempts, ["p-slow=timeout", "b-ok=ok"]);
    // Fallback costs the TTFT deadline and no more than 10 ms beyond it.
    let spent = t0.elapsed();
    assert!(spent >= Duration::from_millis(1200) && spent <= Duration::from_millis(1210), "{spent:?}");
}

#[tokio::test(start_paused = true)]
async fn stall_before_content_falls_back_at_the_idle_deadline() {
    let gw = gateway();
    let t0 = Instant::now();
    let (model, attempts, _) = collect(&gw, "stall").await.unwrap();
    assert_eq!(model, "b-ok");
    assert_eq!(attempts, ["p-stall=timeout", "b-ok=ok"]);
    assert!(t0.elapsed() >= Duration::from_millis(800) && t0.elapsed() < Duration::from_millis(900));
}

#[tokio::test(start_paused = true)]
async fn stall_after_content_ends_with_an_error_not_a_fallback() {
    let gw = gateway();
    let mut answer = gw.start(&request("stall_late"), "test").await.unwrap();
    assert_eq!(answer.model, "p-stall-late");
    let (texts, error) = drain(&mut answer).await;
    assert_eq!(texts, ["You", " said:"]);
    let error = error.expect("the stall became an error");
    assert_eq!(error.kind(), "timeout");
    assert!(answer.next().await.is_none(), "nothing after the error");
}

#[tokio::test(start_paused = true)]
async fn all_down_lists_every_attempt() {
    let gw = gateway();
    let err = collect(&gw, "down").await.unwrap_err();
    assert!(matches!(err, GatewayError::AllFailed { .. }));
    let msg = err.to_string();
    assert!(msg.contains("p-500 (primary): HTTP 500") && msg.contains("b-500 (backup): HTTP 503"), "{msg}");
}

#[tokio::test(start_paused = true)]
async fn breaker_skips_a_failing_provider_then_probes_it() {
    let gw = gateway();
    // Two failures on `primary` open its breaker (breaker_failures = 2).
    for _ in 0..2 {
        collect(&gw, "r500").await.unwrap();
    }
    let (_, attempts, _) = collect(&gw, "r500").await.unwrap();
    assert_eq!(attempts, ["p-500=skipped_breaker_open", "b-ok=ok"]);
    // After the cooldown one probe goes through again.
    tokio::time::advance(Duration::from_millis(10_001)).await;
    let (_, attempts, _) = collect(&gw, "r500").await.unwrap();
    assert_eq!(attempts, ["p-500=server_error", "b-ok=ok"]);
}

#[tokio::test(start_paused = true)]
async fn when_every_breaker_is_open_the_models_are_tried_anyway() {
    let gw = gateway();
    for _ in 0..2 {
        let _ = collect(&gw, "flaky_only").await;
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    // p-flaky failed once (503) then would succeed; its breaker may be open, but with no other
    // model left the gateway still tries rather than fail without trying.
    let (model, _, c) = collect(&gw, "flaky_only").await.unwrap();
    assert_eq!(model, "p-flaky");
    assert!(!c.text.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_probe_abandoned_by_its_client_does_not_block_the_provider_forever() {
    let gw = gateway();
    for _ in 0..2 {
        collect(&gw, "r500").await.unwrap();
    }
    tokio::time::advance(Duration::from_millis(10_001)).await;
    // The half-open probe goes to p-slow (same provider), and its client gives up mid-attempt.
    let abandoned = tokio::time::timeout(Duration::from_millis(100), gw.start(&request("slow"), "test")).await;
    assert!(abandoned.is_err(), "the client gave up before an answer");
    // The next request may probe again instead of finding the slot taken forever.
    let (_, attempts, _) = collect(&gw, "r500").await.unwrap();
    assert_eq!(attempts, ["p-500=server_error", "b-ok=ok"]);
}

#[tokio::test(start_paused = true)]
async fn cut_after_content_ends_with_an_error_and_the_backup_is_never_called() {
    let gw = gateway();
    let mut answer = gw.start(&request("cut_late"), "test").await.unwrap();
    assert_eq!(answer.model, "p-cut-late");
    let (texts, error) = drain(&mut answer).await;
    assert_eq!(texts, ["You", " said:"]);
    assert_eq!(error.expect("an in-band error").kind(), "stream");
    assert_eq!(answer.attempts.len(), 1, "no second attempt after content");
    drop(answer);
    let rows = gw.accounts.usage.rows();
    assert_eq!((rows[0].model.as_str(), rows[0].errors), ("p-cut-late", 1));
}
