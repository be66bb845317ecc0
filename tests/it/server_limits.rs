//! The HTTP server against clients that hold it open: heads that never finish (slowloris), bodies
//! that never arrive, more connections than the cap. Paused time: hyper's timer runs on tokio's.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::support::{start_voxgate, FAKE_ECHO};

/// A loopback connection with `TCP_NODELAY` (paused time and delayed ACKs do not mix).
async fn connect(base: &str) -> TcpStream {
    let tcp = TcpStream::connect(base.trim_start_matches("http://")).await.expect("connects");
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// A connection that sends most of a request head and then nothing more.
async fn slow_head(base: &str) -> TcpStream {
    let mut tcp = connect(base).await;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();
    tcp
}

/// `GET path` on a fresh connection; the whole response as text.
async fn get(base: &str, path: &str) -> String {
    let mut tcp = connect(base).await;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the server has closed `tcp` (end of stream or reset), without waiting.
fn closed(tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match tcp.try_read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Waits (paused time) until the server closes `tcp`; whatever it sent first is returned.
async fn until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Lets this process hold `wanted` descriptors (each connection here is two sockets in one process).
fn raise_open_files_limit(wanted: u64) {
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
        }
    }
}

#[tokio::test(start_paused = true)]
async fn slowloris_heads_are_closed_at_the_header_deadline_and_healthz_answers_meanwhile() {
    const SLOW: usize = 2_000;
    raise_open_files_limit(2 * SLOW as u64 + 512);
    let (base, _state) = start_voxgate(FAKE_ECHO, &[]).await;
    let start = Instant::now();
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        slow.push(slow_head(&base).await);
    }
    // 2,000 half-sent heads are open, and the server still answers.
    let health = timeout(Duration::from_secs(5), get(&base, "/healthz")).await.expect("/healthz answers while the slow heads are open");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"ok\""), "{health}");
    assert!(slow.iter().all(|tcp| !closed(tcp)), "no slow head is closed before the deadline");

    // The default deadline (10 s) closes every one of them, without an answer.
    for tcp in &mut slow {
        let sent = timeout(Duration::from_secs(60), until_closed(tcp)).await.expect("the server closes a slow head");
        assert!(sent.is_empty(), "a closed slow head gets no answer: {}", String::from_utf8_lossy(&sent));
    }
    assert!(start.elapsed() >= Duration::from_secs(10), "closed at the deadline, not before: {:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn the_header_deadline_is_a_setting_and_a_complete_head_is_answered() {
    let (base, _state) = start_voxgate(&format!("{FAKE_ECHO}[http]\nheader_timeout_ms = 2000\n"), &[]).await;
    let start = Instant::now();
    let mut tcp = slow_head(&base).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!closed(&tcp), "open before its deadline");
    timeout(Duration::from_secs(60), until_closed(&mut tcp)).await.expect("closed at the deadline");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(10), "{waited:?}");
    // A client that sends its head (even slowly, within the deadline) is served.
    let mut tcp = connect(&base).await;
    for piece in ["GET /healthz HTTP/1.1\r\n", "Host: 127.0.0.1\r\n", "Connection: close\r\n", "\r\n"] {
        tcp.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let answer = String::from_utf8_lossy(&until_closed(&mut tcp).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_arrives_gets_408_at_the_body_deadline() {
    let (base, _state) = start_voxgate(&format!("{FAKE_ECHO}[http]\nbody_timeout_ms = 3000\nheader_timeout_ms = 60000\n"), &[]).await;
    let start = Instant::now();
    let mut tcp = connect(&base).await;
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"model\": \"echo\", ",
    )
    .await
    .unwrap();
    let answer = timeout(Duration::from_secs(120), until_closed(&mut tcp)).await.expect("the server gives up on the body");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "an OpenAI-style error: {answer}");
    assert!(start.elapsed() >= Duration::from_secs(3), "{:?}", start.elapsed());
    // A body sent whole is unaffected.
    let (status, body) = {
        let client = reqwest::Client::new();
        let r = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&serde_json::json!({"model": "echo", "messages": [{"role": "user", "content": "hello there"}]}))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    };
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(start_paused = true)]
async fn over_the_connection_cap_a_connection_waits_its_turn() {
    let (base, _state) = start_voxgate(&format!("{FAKE_ECHO}[http]\nmax_connections = 2\n"), &[]).await;
    let mut slow = vec![slow_head(&base).await, slow_head(&base).await];
    // The third is queued behind them: no answer while both are open...
    let third = tokio::spawn({
        let base = base.clone();
        async move { get(&base, "/healthz").await }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!third.is_finished(), "a connection over the cap is not served while the cap is full");
    assert!(slow.iter().all(|tcp| !closed(tcp)));
    // ...and is served once the header deadline has closed them.
    let answer = timeout(Duration::from_secs(60), third).await.expect("served after the slow heads close").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for tcp in &mut slow {
        assert!(until_closed(tcp).await.is_empty());
    }
}
