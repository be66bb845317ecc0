//! A fault-injecting upstream at the TCP level: a raw `TcpListener` on `127.0.0.1:0` that reads a
//! request and answers with bytes written by hand, so it can produce anything an HTTP library
//! would refuse to: a status and then silence, a body cut mid-chunk, a redirect, a body larger
//! than any limit, an event stream that never ends. It records every request (head and body) and
//! counts the connections voxgate released while the fault was still going on (a stall whose
//! peer closed, an endless body whose write failed).
//!
//! Also: voxgate on a loopback port with its ledger's path known ([`start_voxgate`]), and the
//! ledger's per-request rows read straight from its SQLite file ([`Voxgate::ledger_rows`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request the fault server read.
#[derive(Debug, Clone)]
pub struct Raw {
    /// The request line and headers, as sent.
    pub head: String,
    pub body: Vec<u8>,
}

impl Raw {
    /// A header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// The body as JSON (`null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What the server does on a connection after reading the request, in order. When the steps
/// run out the connection is closed (mid-body if the steps left it there: a cut).
#[derive(Debug, Clone)]
pub enum Step {
    Write(Vec<u8>),
    /// Write nothing more, and keep the connection until the peer closes it.
    Stall,
    /// Write these bytes again and again until the peer stops taking them (closes).
    WriteForever(Vec<u8>),
}

type Handler = Arc<dyn Fn(&Raw) -> Vec<Step> + Send + Sync>;

/// A running fault server.
#[derive(Clone)]
pub struct FaultServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Raw>>>,
    released: Arc<AtomicUsize>,
}

impl FaultServer {
    /// Serve `handler` on a fresh loopback port: each accepted connection reads one request,
    /// records it, and runs the steps the handler returns for it.
    pub async fn start(handler: impl Fn(&Raw) -> Vec<Step> + Send + Sync + 'static) -> FaultServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = FaultServer { addr: listener.local_addr().unwrap(), requests: Arc::default(), released: Arc::default() };
        let handler: Handler = Arc::new(handler);
        let shared = server.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                // Paused-time tests: no byte may wait on Nagle and delayed ACKs.
                let _ = socket.set_nodelay(true);
                tokio::spawn(shared.clone().serve(socket, handler.clone()));
            }
        });
        server
    }

    /// Everything received, in order.
    pub fn requests(&self) -> Vec<Raw> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Connections voxgate closed while a [`Step::Stall`] or [`Step::WriteForever`] was going on.
    pub fn released(&self) -> usize {
        self.released.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT` and `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn serve(self, mut socket: TcpStream, handler: Handler) {
        let Some(request) = read_request(&mut socket).await else { return };
        let steps = handler(&request);
        self.requests.lock().unwrap().push(request);
        for step in steps {
            match step {
                Step::Write(bytes) => {
                    if socket.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Step::Stall => {
                    let mut buf = [0u8; 1024];
                    // Nothing more comes from voxgate: a read ends only when it closes.
                    while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
                    self.released.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Step::WriteForever(bytes) => loop {
                    if socket.write_all(&bytes).await.is_err() {
                        self.released.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                },
            }
        }
        // Out of steps: close (after a complete response, or mid-body as a cut).
        let _ = socket.shutdown().await;
    }
}

/// Read one request: the head up to the blank line, then `Content-Length` bytes of body
/// (bounded: a test server, not a target).
async fn read_request(socket: &mut TcpStream) -> Option<Raw> {
    let mut data = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = socket.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        data.extend_from_slice(&buf[..n]);
        if data.len() > 1 << 20 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end - 4]).into_owned();
    let mut raw = Raw { head, body: Vec::new() };
    let length: usize = raw.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0).min(16 << 20);
    let mut body = data[head_end..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        body.extend_from_slice(&buf[..n]);
    }
    raw.body = body;
    Some(raw)
}

/// A port nothing listens on (bound, then closed).
pub async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A whole response: status line, headers, `content-length`, `connection: close`, body.
pub fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A JSON error response with the vendor's body.
pub fn json_response(status: &str, body: &serde_json::Value) -> Vec<u8> {
    response(status, &[("content-type", "application/json")], body.to_string().as_bytes())
}

/// The head of a chunked response of `content_type` (its body follows in [`chunk`]s).
pub fn chunked_head(status: &str, content_type: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").into_bytes()
}

/// The head of a 200 event stream.
pub fn sse_head() -> Vec<u8> {
    chunked_head("200 OK", "text/event-stream")
}

/// One chunk of a chunked body.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The chunk that ends a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// An OpenAI `chat.completion.chunk` frame with `content` and/or a finish reason.
pub fn openai_frame(content: Option<&str>, finish: Option<&str>) -> Vec<u8> {
    let delta = match content {
        Some(c) => serde_json::json!({"content": c}),
        None => serde_json::json!({"role": "assistant", "content": ""}),
    };
    let c = serde_json::json!({
        "id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": 1, "model": "fault",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": null,
    });
    chunk(format!("data: {c}\n\n").as_bytes())
}

/// `data: [DONE]`.
pub fn done_frame() -> Vec<u8> {
    chunk(b"data: [DONE]\n\n")
}

/// voxgate on a loopback port, with its ledger's file known.
pub struct Voxgate {
    pub base: String,
    pub state: Arc<voxgate::http::AppState>,
    pub ledger: PathBuf,
}

/// One row of the ledger's `requests` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub model: String,
    pub outcome: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_picousd: u64,
}

/// Start voxgate with `config` (TOML; `listen` and the ledger's paths are overridden) and `env`.
pub async fn start_voxgate(config: &str, env: &[(&str, &str)]) -> Voxgate {
    let (base, state, ledger) = super::start_voxgate_with_ledger(config, env).await;
    Voxgate { base, state, ledger }
}

impl Voxgate {
    /// The ledger's request rows once there are `n` of them (the record is written when the
    /// answer is dropped, and batched): a query through the ledger first writes what is buffered.
    pub async fn ledger_rows(&self, n: usize) -> Vec<LedgerRow> {
        let mut rows = Vec::new();
        for _ in 0..500 {
            let query =
                voxgate::metering::ledger::UsageQuery { from_ms: 0, to_ms: i64::MAX, group_by: voxgate::metering::ledger::GroupBy::Key };
            self.state.ledger.usage(query).await.expect("the ledger answers");
            rows = read_rows(&self.ledger);
            if rows.len() >= n {
                return rows;
            }
            // The record comes from another task of this runtime (or its ledger thread).
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("the ledger holds {} request rows, not {n}: {rows:?}", rows.len());
    }

    /// The state of provider `id`'s breaker.
    pub fn breaker(&self, id: &str) -> voxgate::llm::breaker::BreakerState {
        self.state.gateway.provider(id).expect("a configured provider").breaker.state()
    }

    /// `POST /v1/chat/completions` with `body`.
    pub async fn chat(&self, body: &serde_json::Value) -> reqwest::Response {
        reqwest::Client::new().post(format!("{}/v1/chat/completions", self.base)).json(body).send().await.expect("voxgate answers")
    }

    /// The value of a series as `/metrics` renders it (`name{label="v"}`), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.state.gateway.accounts.metrics.render();
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

fn read_rows(path: &std::path::Path) -> Vec<LedgerRow> {
    let Ok(conn) = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else { return Vec::new() };
    let Ok(mut st) = conn.prepare("SELECT model, outcome, input_tokens, output_tokens, cost_picousd FROM requests ORDER BY ts_ms, id")
    else {
        return Vec::new();
    };
    st.query_map([], |r| {
        Ok(LedgerRow {
            model: r.get(0)?,
            outcome: r.get(1)?,
            input_tokens: r.get::<_, i64>(2)? as u64,
            output_tokens: r.get::<_, i64>(3)? as u64,
            cost_picousd: r.get::<_, i64>(4)? as u64,
        })
    })
    .map(|rows| rows.flatten().collect())
    .unwrap_or_default()
}
