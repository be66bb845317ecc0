//! `voxgate bench`: load generators that print p50/p95/p99.
//!
//! `bench gateway` measures what voxgate adds to a request. An instant fake OpenAI upstream runs
//! in this process; voxgate runs as a child process (so its peak memory is its own) with a
//! config pointing at the fake. At each rate, an open-loop generator sends non-streaming chat
//! completions for the given time, first straight to the fake ("direct"), then through voxgate;
//! the overhead is the difference of the percentiles. Requests leave evenly spaced, one every
//! 1/rate s, released by a pacing thread (tokio's timer has 1 ms ticks, which would send them in
//! bursts; `--tokio-timers` does that, for comparison). A closed-loop step then measures
//! throughput. Everything shares the same 2 cores, so the figure includes contention with the
//! load generator itself: an upper bound.
//!
//! `bench pipeline` ([`pipeline`]) measures what the voice pipeline adds to a turn under load
//! (`--embedded`: whole turns on the offline engines); `bench engines` ([`engines`]) measures the
//! embedded speech engines alone.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use serde_json::json;
use tokio::time::Instant;

#[cfg(all(feature = "embedded-stt", feature = "embedded-tts"))]
pub mod engines;
pub mod pipeline;
pub mod soak;
pub mod vendor;
pub use pipeline::{pipeline, PipelineOptions};

const BODY: &str =
    r#"{"model":"bench","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello."}],"max_tokens":16}"#;

async fn fake_upstream() -> std::io::Result<SocketAddr> {
    let reply = Bytes::from(
        json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "bench",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
        })
        .to_string(),
    );
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let reply = reply.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], reply) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |t| {
        let _ = t.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub sent: usize,
    pub ok: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub achieved_rps: f64,
}

/// How the load generator spaces its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// One request every 1/rate s, released by an OS thread that sleeps on the high-resolution
    /// timer between requests.
    Even,
    /// Released by tokio's timer, which fires on 1 ms ticks: at 5,000 req/s the requests leave in
    /// bursts of five at the same instant. What this bench did before; kept for comparison.
    TokioTicks,
}

/// The load generator's HTTP client: hyper's pooled HTTP/1.1 client (the type the gateway uses
/// for `http://` upstreams), the lightest one at hand, so that the generator takes as little of
/// the shared cores as it can.
type BenchClient = crate::llm::providers::PlainClient;

fn bench_client() -> BenchClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).pool_max_idle_per_host(2048).build(connector)
}

/// One chat completion; its latency in ms, or `None` when it failed.
async fn one_request(client: &BenchClient, uri: &axum::http::Uri) -> Option<f64> {
    use http_body_util::BodyExt;
    let t0 = Instant::now();
    let request = axum::http::Request::post(uri.clone())
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(Bytes::from_static(BODY.as_bytes())))
        .ok()?;
    let response = client.request(request).await.ok()?;
    let ok = response.status().is_success();
    let body = response.into_body().collect().await.ok()?;
    (ok && !body.to_bytes().is_empty()).then(|| t0.elapsed().as_secs_f64() * 1000.0)
}

/// Send `rate` requests per second for `duration` to `url`, open loop: a request leaves when it
/// is due whether or not earlier ones were answered.
async fn load(client: &BenchClient, url: &str, rate: u32, duration: Duration, pacing: Pacing) -> Run {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<f64>>();
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let Ok(uri) = url.parse::<axum::http::Uri>() else {
        return Run { sent: 0, ok: 0, p50_ms: f64::NAN, p95_ms: f64::NAN, p99_ms: f64::NAN, achieved_rps: 0.0 };
    };
    let send = {
        let client = client.clone();
        move |handle: &tokio::runtime::Handle| {
            let (client, uri, tx) = (client.clone(), uri.clone(), tx.clone());
            handle.spawn(async move {
                let _ = tx.send(one_request(&client, &uri).await);
            });
        }
    };
    let started = Instant::now();
    let handle = tokio::runtime::Handle::current();
    match pacing {
        Pacing::Even => {
            // The pacer is a plain thread: the runtime's timer cannot wait less than a millisecond.
            let pacer = std::thread::spawn(move || {
                let started = std::time::Instant::now();
                for i in 0..total {
                    let due = started + interval.mul_f64(i as f64);
                    let now = std::time::Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    send(&handle);
                }
            });
            // Joined off the runtime's workers; the results arrive on `rx` meanwhile.
            let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
        }
        Pacing::TokioTicks => {
            for i in 0..total {
                let due = started + interval.mul_f64(i as f64);
                if due > Instant::now() {
                    tokio::time::sleep_until(due).await;
                }
                send(&handle);
            }
            drop(send);
        }
    }
    let mut lat = Vec::with_capacity(total);
    let mut sent = 0;
    while let Some(r) = rx.recv().await {
        sent += 1;
        if let Some(ms) = r {
            lat.push(ms);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let at = |q: f64| if lat.is_empty() { f64::NAN } else { lat[((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1] };
    Run { sent, ok: lat.len(), p50_ms: at(0.5), p95_ms: at(0.95), p99_ms: at(0.99), achieved_rps: sent as f64 / elapsed }
}

/// Requests in flight at once in the throughput step.
const THROUGHPUT_CONNECTIONS: usize = 64;

/// `connections` loops, each sending its next request as soon as the last one is answered, for
/// `duration`: how many requests succeeded and how many failed.
async fn closed_loop(client: &BenchClient, url: &str, connections: usize, duration: Duration) -> (usize, usize) {
    let Ok(uri) = url.parse::<axum::http::Uri>() else { return (0, 0) };
    let end = Instant::now() + duration;
    let loops: Vec<_> = (0..connections)
        .map(|_| {
            let (client, uri) = (client.clone(), uri.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                while Instant::now() < end {
                    match one_request(&client, &uri).await {
                        Some(_) => ok += 1,
                        None => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut total = (0, 0);
    for done in loops {
        if let Ok((ok, failed)) = done.await {
            total = (total.0 + ok, total.1 + failed);
        }
    }
    total
}

/// CPU seconds (user + system) the process has used so far; Linux `/proc`, 100 ticks a second.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn wait_ready(client: &BenchClient, base: &str) -> anyhow::Result<()> {
    let uri: axum::http::Uri = format!("{base}/healthz").parse()?;
    for _ in 0..200 {
        if client.get(uri.clone()).await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("voxgate did not become ready")
}

/// This binary as `voxgate serve --config CONFIG` (listening on `port`), killed when dropped. It
/// gets its own ledger beside the config, never the one of a server running from the same folder.
fn spawn_server(config: &std::path::Path, port: u16) -> std::io::Result<tokio::process::Child> {
    let ledger = config.with_file_name(format!("ledger-{port}.sqlite"));
    tokio::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--config"])
        .arg(config)
        .env("VOXGATE_LOG", "warn")
        .env("VOXGATE_LEDGER", ledger)
        .kill_on_drop(true)
        .spawn()
}

/// Run the gateway overhead benchmark and return a Markdown report.
pub async fn gateway(rates: &[u32], duration: Duration, pacing: Pacing) -> anyhow::Result<String> {
    let upstream = fake_upstream().await?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let dir = std::env::temp_dir().join(format!("voxgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("voxgate.toml");
    std::fs::write(
        &config_path,
        format!(
            "listen = \"127.0.0.1:{port}\"\n[providers.bench]\nkind = \"openai\"\nbase_url = \"http://{upstream}/v1\"\n\
             [[models]]\nid = \"bench\"\nprovider = \"bench\"\ninput_usd_per_mtok = 0.4\noutput_usd_per_mtok = 1.6\n"
        ),
    )?;
    let mut child = spawn_server(&config_path, port)?;
    let pid = child.id().unwrap_or(0);
    let client = bench_client();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &base).await?;

    let direct_url = format!("http://{upstream}/v1/chat/completions");
    let via_url = format!("{base}/v1/chat/completions");
    // Warm both paths (connections, allocator).
    load(&client, &direct_url, 500, Duration::from_secs(1), pacing).await;
    load(&client, &via_url, 500, Duration::from_secs(1), pacing).await;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} s per rate per path; voxgate, the load generator and the fake upstream share every CPU; requests {}\n",
        duration.as_secs(),
        match pacing {
            Pacing::Even => "evenly spaced",
            Pacing::TokioTicks => "released on tokio's 1 ms ticks",
        }
    );
    let _ = writeln!(out, "| rate (req/s) | path | sent | ok | achieved req/s | p50 ms | p95 ms | p99 ms |");
    let _ = writeln!(out, "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut overheads = Vec::new();
    let mut cpu_rows = Vec::new();
    for &rate in rates {
        let direct = load(&client, &direct_url, rate, duration, pacing).await;
        let before = (cpu_seconds(pid), cpu_seconds(std::process::id()));
        let via = load(&client, &via_url, rate, duration, pacing).await;
        if let ((Some(a), Some(own_a)), Some(b), Some(own_b)) = (before, cpu_seconds(pid), cpu_seconds(std::process::id())) {
            let per_request_us = |cpu: f64| cpu / via.sent.max(1) as f64 * 1e6;
            cpu_rows.push((rate, per_request_us(b - a), (b - a) / duration.as_secs_f64() * 100.0, per_request_us(own_b - own_a)));
        }
        for (name, r) in [("direct", direct), ("via voxgate", via)] {
            let _ = writeln!(
                out,
                "| {rate} | {name} | {} | {} | {:.0} | {:.3} | {:.3} | {:.3} |",
                r.sent, r.ok, r.achieved_rps, r.p50_ms, r.p95_ms, r.p99_ms
            );
        }
        overheads.push((rate, via.p50_ms - direct.p50_ms, via.p99_ms - direct.p99_ms));
    }
    let _ = writeln!(out, "\n| rate (req/s) | overhead p50 ms | overhead p99 ms |");
    let _ = writeln!(out, "| ---: | ---: | ---: |");
    for (rate, p50, p99) in overheads {
        let _ = writeln!(out, "| {rate} | {p50:.3} | {p99:.3} |");
    }
    let _ = writeln!(
        out,
        "\n| rate (req/s) | voxgate CPU per request µs | voxgate CPU % of one core | load generator + fake upstream CPU per request µs |"
    );
    let _ = writeln!(out, "| ---: | ---: | ---: | ---: |");
    for (rate, per_request_us, percent, bench_us) in cpu_rows {
        let _ = writeln!(out, "| {rate} | {per_request_us:.0} | {percent:.0} | {bench_us:.0} |");
    }
    let _ = writeln!(
        out,
        "\nThroughput, closed loop ({THROUGHPUT_CONNECTIONS} connections, each sending its next request when the last is answered, {} s):\n",
        duration.as_secs()
    );
    let _ = writeln!(out, "| path | requests ok | failed | requests/s | voxgate CPU % of one core |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: |");
    for (name, url) in [("direct", &direct_url), ("via voxgate", &via_url)] {
        let cpu_before = cpu_seconds(pid);
        let (ok, failed) = closed_loop(&client, url, THROUGHPUT_CONNECTIONS, duration).await;
        let cpu = match (cpu_before, cpu_seconds(pid)) {
            (Some(a), Some(b)) if name != "direct" => format!("{:.0}", (b - a) / duration.as_secs_f64() * 100.0),
            _ => "–".to_string(),
        };
        let _ = writeln!(out, "| {name} | {ok} | {failed} | {:.0} | {cpu} |", ok as f64 / duration.as_secs_f64());
    }
    let peak = peak_rss_mb(pid).map_or("unknown".to_string(), |mb| format!("{mb:.1} MB"));
    let _ = writeln!(out, "\nvoxgate peak resident memory over the whole run (VmHWM): {peak}");
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}
