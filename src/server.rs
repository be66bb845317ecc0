//! Starting and stopping the whole server: check the config is safe to serve, build the
//! gateway, bind, serve until shutdown, then drain.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::{self, AppState};
use crate::llm::router::Gateway;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("refusing to listen on {0} without API keys: anyone who can reach it could spend your provider credits. Set [auth] api_keys (e.g. api_keys = [\"env:VOXGATE_API_KEY\"]) or listen on a loopback address such as 127.0.0.1:8080.")]
    OpenWithoutKeys(std::net::SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Gateway(#[from] crate::llm::router::GatewayError),
    #[error("voice engines: {0}")]
    Voice(String),
    #[error("cannot open the metering ledger {path}: {message}")]
    Ledger { path: std::path::PathBuf, message: String },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Without gateway keys only loopback listening is allowed.
pub fn check_exposure(config: &Config) -> Result<(), ServerError> {
    if config.keys.is_empty() && !config.listen.ip().is_loopback() {
        return Err(ServerError::OpenWithoutKeys(config.listen));
    }
    Ok(())
}

/// A server that has bound its socket and is ready to run.
pub struct Server {
    pub listener: tokio::net::TcpListener,
    pub state: Arc<AppState>,
    /// `[http]`: connection deadlines and cap.
    pub http: crate::config::HttpSettings,
}

impl Server {
    pub async fn bind(config: &Config) -> Result<Server, ServerError> {
        check_exposure(config)?;
        let gateway = Arc::new(Gateway::new(config)?);
        for slot in config.providers.keys().filter_map(|id| gateway.provider(id)) {
            if let crate::llm::providers::Provider::Embedded(e) = &slot.provider {
                if let Err(message) = e.check() {
                    tracing::warn!(provider = %slot.id, "{message}");
                }
            }
        }
        raise_open_files_limit(config.http.max_connections);
        let listener =
            tokio::net::TcpListener::bind(config.listen).await.map_err(|source| ServerError::Bind { addr: config.listen, source })?;
        let voice = crate::session::VoiceEngines::from_config(config, gateway.clone()).map_err(ServerError::Voice)?;
        let ledger = open_ledger(config).await?;
        let sink_ledger = ledger.clone();
        let _ = gateway.accounts.sink.set(Arc::new(move |done: crate::llm::router::FinishedRequest| {
            let outcome = done.ledger_outcome();
            let record = crate::metering::ledger::RequestRecord {
                id: done.id,
                ts_ms: sink_ledger.now_unix_ms(),
                key_id: done.key,
                model: done.model,
                outcome,
                input_tokens: done.usage.input_tokens,
                output_tokens: done.usage.output_tokens,
                cached_tokens: done.usage.cached_input_tokens,
                cost_picousd: u64::try_from(done.cost_picousd).unwrap_or(u64::MAX),
                latency_ms: done.latency.as_millis() as u64,
            };
            sink_ledger.record_request_nowait(record);
        }));
        let state = Arc::new(AppState::new(config, gateway, Arc::new(voice), ledger));
        // The port a loopback listener answers to in `Host` (the config may say 0).
        if let Ok(addr) = listener.local_addr() {
            let _ = state.local_addr.set(addr);
        }
        Ok(Server { listener, state, http: config.http.clone() })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` is cancelled; in-flight responses get `drain` to finish.
    pub async fn run(self, shutdown: CancellationToken, drain: Duration) -> Result<(), ServerError> {
        let addr = self.local_addr()?;
        tracing::info!(%addr, "voxgate listening");
        let stopped = shutdown.clone();
        let state = self.state.clone();
        // Voice sessions are upgraded connections the HTTP server no longer tracks: close them ourselves.
        let sessions = {
            let state = state.clone();
            let stopped = stopped.clone();
            tokio::spawn(async move {
                stopped.cancelled().await;
                state.sessions_cancel.cancel();
                state.sessions.close();
                state.sessions.wait().await;
            })
        };
        let serving = http::serve_with(self.listener, self.state, &self.http, shutdown);
        tokio::pin!(serving);
        let deadline = async {
            stopped.cancelled().await;
            tokio::time::sleep(drain).await
        };
        tokio::pin!(deadline);
        tokio::select! {
            r = &mut serving => r?,
            _ = &mut deadline => {
                tracing::warn!(drain_ms = drain.as_millis() as u64, "shutdown deadline passed; closing remaining connections");
            }
        }
        tokio::select! {
            _ = sessions => {}
            _ = &mut deadline => tracing::warn!("voice sessions did not close before the shutdown deadline"),
        }
        // Last: every closed session's record is in; write the final checkpoint.
        state.ledger.shutdown().await;
        tracing::info!("voxgate stopped");
        Ok(())
    }
}

/// Every connection is a descriptor: raise the soft limit on open files to the hard limit, as Go's
/// runtime does at start (the soft limit is often 1,024, under `[http] max_connections`), and warn
/// when even that leaves no room for `max_connections` plus the sessions' upstream sockets.
fn raise_open_files_limit(max_connections: usize) {
    #[cfg(target_os = "linux")]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
        let raised = unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return;
            }
            if limit.rlim_cur < limit.rlim_max {
                let wanted = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                    limit = wanted;
                }
            }
            limit.rlim_cur
        };
        let wanted = max_connections as u64 + 1024;
        if (raised as u64) < wanted {
            tracing::warn!(
                open_files = raised as u64,
                max_connections,
                "the open-file limit is below [http] max_connections plus 1024 for everything else; raise it (ulimit -n) or lower max_connections"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = max_connections;
}

/// Opens the ledger (its folder created if needed), closing sessions a crash left open.
async fn open_ledger(config: &Config) -> Result<crate::metering::ledger::Ledger, ServerError> {
    let m = &config.metering;
    let fail = |message: String| ServerError::Ledger { path: m.ledger.clone(), message };
    if let Some(dir) = m.ledger.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    let (ledger, report) = crate::metering::ledger::Ledger::open(&m.ledger, &m.fallback, Duration::from_millis(m.checkpoint_ms))
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !report.recovered_sessions.is_empty() || report.imported_sessions + report.imported_requests > 0 {
        tracing::warn!(
            recovered = report.recovered_sessions.len(),
            imported_sessions = report.imported_sessions,
            imported_requests = report.imported_requests,
            "ledger: sessions left open by a crash were closed at their last checkpoint"
        );
    }
    Ok(ledger)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_listening_needs_keys() {
        let env = |k: &str| (k == "VK").then(|| "key".to_string());
        let open = Config::from_toml("listen = \"0.0.0.0:8080\"\n", &env).unwrap();
        assert!(matches!(check_exposure(&open), Err(ServerError::OpenWithoutKeys(_))));
        assert!(check_exposure(&Config::from_toml("listen = \"127.0.0.1:8080\"\n", &env).unwrap()).is_ok());
        assert!(check_exposure(&Config::from_toml("listen = \"[::1]:8080\"\n", &env).unwrap()).is_ok());
        let keyed = Config::from_toml("listen = \"0.0.0.0:8080\"\n[auth]\napi_keys = [\"env:VK\"]\n", &env).unwrap();
        assert!(check_exposure(&keyed).is_ok());
    }
}
