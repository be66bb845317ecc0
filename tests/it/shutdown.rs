//! Graceful shutdown: a stream in flight when shutdown begins finishes whole; new connections
//! are refused; the server then stops by itself.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use voxgate::config::Config;
use voxgate::server::Server;

const CONFIG: &str = r#"
[providers.fake]
kind = "fake"
[[models]]
id = "slow-talker"
provider = "fake"
upstream = "delay-40"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
"#;

#[tokio::test]
async fn shutdown_lets_streams_in_flight_finish_and_refuses_new_connections() {
    let mut config = Config::from_toml(CONFIG, &|_| None).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let server = Server::bind(&config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(server.run(shutdown.clone(), Duration::from_secs(10)));

    let body = json!({"model": "slow-talker", "stream": true, "messages": [{"role": "user", "content": "one two three four five"}]});
    let mut response = reqwest::Client::new().post(format!("http://{addr}/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut seen = String::from_utf8_lossy(&response.chunk().await.unwrap().expect("first chunk")).to_string();

    shutdown.cancel();
    while let Some(chunk) = response.chunk().await.expect("the stream is not cut by shutdown") {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.trim_end().ends_with("data: [DONE]"), "{seen}");
    assert!(seen.contains(" five"), "the whole answer arrived: {seen}");

    tokio::time::timeout(Duration::from_secs(5), running).await.expect("the server stops once idle").unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no new connections after shutdown");
}
