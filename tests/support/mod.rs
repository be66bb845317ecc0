//! Test support: a loopback HTTP server for fake vendor APIs, a request recorder, and SSE bodies
//! that arrive split across many small writes, hang, or are cut mid-stream; voxgate itself on a
//! loopback port, and the fake echo provider most test configs start with.
//!
//! Every fake vendor (one file per provider beside this one) reads the scenario from the
//! upstream model name in the request. The scenarios, the same for every vendor:
//! - `text`: "Hello, world!" in several chunks, then usage;
//! - `tool`: one call `get_weather` with `{"city":"Paris"}` in fragments;
//! - `two_tools`: text "Let me check." then `get_weather` `{"city":"Paris"}` and `get_time` `{"tz":"CET"}`;
//! - `json`: the text `{"answer":42}`;
//! - `long` (OpenAI vendor only): a reply of several sentences (`vendors::openai::LONG`);
//! - `rate_limited`: 429 with `Retry-After: 2` (Gemini: `retryDelay` "2s");
//! - `overloaded`: the vendor's overload status (Anthropic 529, others 503);
//! - `bad_request`: 400; `unauthorized`: 401;
//! - `quota`: the vendor's quota/billing error (never retried);
//! - `stall`: status 200, then nothing (before any content);
//! - `stall_after_content`: "Hel", then nothing;
//! - `cut`: "Hel", then the connection breaks;
//! - `malformed`: a frame that is not JSON, before any content;
//! - `midstream_error`: "Hel", then the vendor's in-band error event.
pub mod faults;
pub mod speech_stt;
pub mod speech_tts;
pub mod vendors;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;

/// One request a fake vendor received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Shared state of a fake vendor: what it received and how many response bodies were dropped
/// before they ended (the client went away or cancelled).
#[derive(Clone, Default)]
pub struct Recorder {
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub bodies_dropped_early: Arc<AtomicUsize>,
}

impl Recorder {
    pub fn record(&self, r: Recorded) {
        self.requests.lock().unwrap().push(r);
    }
    pub fn all(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
    pub fn last(&self) -> Recorded {
        self.requests.lock().unwrap().last().cloned().expect("no request recorded")
    }
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
    pub fn dropped_early(&self) -> usize {
        self.bodies_dropped_early.load(Ordering::SeqCst)
    }
}

/// Build a `Recorded` from the parts an axum handler sees.
pub fn recorded(uri: &axum::http::Uri, headers: &axum::http::HeaderMap, body: &Bytes) -> Recorded {
    Recorded {
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string())).collect(),
        body: serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
    }
}

/// Serve `router` on a fresh loopback port.
pub async fn spawn(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Without TCP_NODELAY the 7-byte pieces wait on Nagle and delayed ACKs (tens of ms of real time,
    // during which a paused-clock test would jump its timers forward).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        axum::serve(listener, router).await.ok();
    });
    addr
}

/// How an SSE body ends after its frames.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum End {
    /// The body ends normally.
    Close,
    /// The body never ends.
    Hang,
    /// The connection breaks (the server aborts the chunked body).
    Cut,
}

/// An SSE body from whole frames (each already ending in a blank line), written in pieces of
/// 7 bytes so every event arrives split across reads.
pub fn sse_body(frames: Vec<String>, end: End, recorder: &Recorder) -> Body {
    let text: String = frames.concat();
    let pieces: Vec<Bytes> = text.as_bytes().chunks(7).map(Bytes::copy_from_slice).collect();
    let guard = DropGuard { counter: recorder.bodies_dropped_early.clone(), armed: true };
    let stream = futures::stream::unfold((pieces.into_iter(), guard), move |(mut it, mut guard)| async move {
        match it.next() {
            Some(p) => {
                // Yield to the runtime so pieces leave as separate writes.
                tokio::task::yield_now().await;
                Some((Ok::<Bytes, std::io::Error>(p), (it, guard)))
            }
            None => match end {
                End::Close => {
                    guard.disarm();
                    None
                }
                End::Hang => {
                    std::future::pending::<()>().await;
                    None
                }
                End::Cut => {
                    guard.disarm();
                    // Let the last piece leave before the connection breaks.
                    tokio::task::yield_now().await;
                    Some((Err(std::io::Error::other("cut")), (it, guard)))
                }
            },
        }
    });
    Body::from_stream(stream)
}

struct DropGuard {
    counter: Arc<AtomicUsize>,
    armed: bool,
}

impl DropGuard {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if self.armed {
            self.counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Wait (in real time, bounded) until `f` holds; for observing another task's side effects.
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// The in-process fake provider and its `echo` model (it answers "You said: " and the user's last
/// words), at $1 in and $2 out per million tokens: the start of most test configs. It ends inside
/// the `echo` table, so what follows it must begin with a table header (`[[models]]`, `[routes.x]`).
pub const FAKE_ECHO: &str = r#"[providers.fake]
kind = "fake"
[[models]]
id = "echo"
provider = "fake"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
"#;

/// The fake OpenAI vendor at `vendor_url` as provider `vendor`, with model `vendor-long` (its
/// `long` answer: enough speech to be cut off).
pub fn vendor_long(vendor_url: &str) -> String {
    format!(
        r#"[providers.vendor]
kind = "openai"
base_url = "{vendor_url}"
[[models]]
id = "vendor-long"
provider = "vendor"
upstream = "long"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
"#
    )
}

/// Start voxgate itself on a fresh loopback port with `config` (TOML, `listen` is overridden).
/// Returns the base URL (`http://127.0.0.1:PORT`) and the shared state.
pub async fn start_voxgate(config: &str, env: &[(&str, &str)]) -> (String, std::sync::Arc<voxgate::http::AppState>) {
    let (base, state, _) = start_voxgate_with_ledger(config, env).await;
    (base, state)
}

/// [`start_voxgate`], also returning the path of the server's ledger (an SQLite file).
pub async fn start_voxgate_with_ledger(
    config: &str,
    env: &[(&str, &str)],
) -> (String, std::sync::Arc<voxgate::http::AppState>, std::path::PathBuf) {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut config = voxgate::config::Config::from_toml(config, &lookup).expect("test config is valid");
    config.listen = "127.0.0.1:0".parse().unwrap();
    // Each server its own ledger: one server's start must not recover another's open sessions.
    let dir = temp_dir("ledger");
    config.metering.fallback = dir.join("ledger.sqlite.fallback.jsonl");
    config.metering.ledger = dir.join("ledger.sqlite");
    let server = voxgate::server::Server::bind(&config).await.expect("server binds");
    let addr = server.local_addr().unwrap();
    let state = server.state.clone();
    tokio::spawn(server.run(tokio_util::sync::CancellationToken::new(), Duration::from_secs(1)));
    (format!("http://{addr}"), state, config.metering.ledger)
}

/// A fresh, empty folder under the system's temp dir for one test.
pub fn temp_dir(what: &str) -> std::path::PathBuf {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep_stale_temp_files);
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("voxgate-test-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes what earlier test runs left in the temporary folder: `voxgate-*` entries none of whose
/// numeric name parts is a running process (each name carries its test process's id). A full
/// run leaves hundreds of small ledgers; over many runs they filled a CI disk.
pub fn sweep_stale_temp_files() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("voxgate-") else { continue };
        let numbers: Vec<u32> = rest.split(['-', '.']).filter_map(|part| part.parse().ok()).collect();
        let alive = numbers.iter().any(|n| std::path::Path::new(&format!("/proc/{n}")).exists());
        if numbers.is_empty() || alive {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
}

/// Read an SSE response body to the end and return its `data:` payloads.
pub async fn sse_data(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.unwrap_or_default();
    text.split("\n\n").filter_map(|f| f.strip_prefix("data: ")).map(str::to_string).collect()
}

/// A Realtime client socket, as the tests open it.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next server event on `ws` (a minute without one, in real or paused time, is a hang).
pub async fn next_event(ws: &mut Ws) -> serde_json::Value {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("an event within 60 s")
            .expect("socket open")
            .expect("frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("server events are JSON"),
            Message::Close(c) => panic!("server closed the socket: {c:?}"),
            _ => continue,
        }
    }
}

/// Server events up to and including the first of type `until`.
pub async fn events_until(ws: &mut Ws, until: &str) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    loop {
        let e = next_event(ws).await;
        let done = e["type"] == until;
        seen.push(e);
        if done {
            return seen;
        }
    }
}

/// Lets this process hold `wanted` descriptors (a connection in these tests is two sockets in one
/// process), up to the hard limit, which must allow it.
pub fn raise_open_files_limit(wanted: u64) {
    #[cfg(target_os = "linux")]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0, "getrlimit");
            if limit.rlim_cur < wanted as libc::rlim_t {
                limit.rlim_cur = (wanted as libc::rlim_t).min(limit.rlim_max);
                assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0, "setrlimit");
            }
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0, "getrlimit");
        }
        assert!(limit.rlim_cur >= wanted as libc::rlim_t, "this test needs {wanted} open files; the hard limit is {}", limit.rlim_max);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = wanted;
}

/// voxgate on a loopback port, built as `Server::bind` builds it but with its ledger (in a fresh
/// folder named after `what`) on `clock`. Returns the base URL (`http://127.0.0.1:PORT`) and the
/// shared state.
pub async fn start_voxgate_on_clock(
    config: &str,
    what: &str,
    clock: Arc<dyn voxgate::metering::Clock>,
) -> (String, Arc<voxgate::http::AppState>) {
    let mut config = voxgate::config::Config::from_toml(config, &|_| None).expect("test config is valid");
    config.listen = "127.0.0.1:0".parse().unwrap();
    let dir = temp_dir(what);
    let gateway = Arc::new(voxgate::llm::router::Gateway::new(&config).unwrap());
    let voice = voxgate::session::VoiceEngines::from_config(&config, gateway.clone()).unwrap();
    let (ledger, _) = voxgate::metering::ledger::Ledger::open_with(voxgate::metering::ledger::LedgerOptions {
        path: dir.join("ledger.sqlite"),
        fallback_path: dir.join("ledger.sqlite.fallback.jsonl"),
        checkpoint_every: Duration::from_millis(config.metering.checkpoint_ms),
        clock,
    })
    .await
    .unwrap();
    let state = Arc::new(voxgate::http::AppState::new(&config, gateway, Arc::new(voice), ledger));
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(voxgate::http::serve(listener, state.clone(), tokio_util::sync::CancellationToken::new()));
    (base, state)
}
