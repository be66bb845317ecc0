//! What the speech stages (`stt/`, `tts/`) share about building their engines: an engine loaded
//! lazily on a blocking thread ([`Lazy`]), and the rule for a default engine that cannot run
//! ([`absent`]).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::OnceCell;

/// An engine loaded on first use (or on warm-up) on a blocking thread, so a server that never
/// hears speech never pays for the model, and loading never stalls the async runtime. The outcome
/// is kept: a load that failed is reported by every later call, without loading again.
///
/// `E` is the stage's engine trait (`dyn SpeechToText`, `dyn TextToSpeech`), `Er` its error; each
/// stage implements its trait for its `Lazy`.
pub struct Lazy<E: ?Sized, Er> {
    name: String,
    load: Arc<dyn Fn() -> Result<Arc<E>, Er> + Send + Sync>,
    engine: Arc<OnceCell<Result<Arc<E>, Er>>>,
    /// The error when the loading thread itself failed (it panicked).
    unavailable: fn(String) -> Er,
}

impl<E, Er> Lazy<E, Er>
where
    E: ?Sized + Send + Sync + 'static,
    Er: Clone + Send + Sync + 'static,
{
    /// `name` is the engine's name before it loads (logs, `response.voxgate`).
    pub fn new(
        name: impl Into<String>,
        unavailable: fn(String) -> Er,
        load: impl Fn() -> Result<Arc<E>, Er> + Send + Sync + 'static,
    ) -> Self {
        Lazy { name: name.into(), load: Arc::new(load), engine: Arc::default(), unavailable }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The engine, loaded now if this is the first call; it does not borrow `self`.
    pub fn get(&self) -> impl Future<Output = Result<Arc<E>, Er>> + Send + 'static {
        let (load, engine, unavailable) = (self.load.clone(), self.engine.clone(), self.unavailable);
        async move {
            engine
                .get_or_init(|| async move {
                    tokio::task::spawn_blocking(move || load())
                        .await
                        .unwrap_or_else(|e| Err(unavailable(format!("loading the engine failed: {e}"))))
                })
                .await
                .clone()
        }
    }
}

/// The largest message or frame a speech vendor may send: a vendor's messages are results and audio
/// pieces of tens of KiB; tungstenite's own limit (64 MiB) would let one vendor message take that
/// much of the server's memory. A larger one breaks the socket, which falls back.
pub const VENDOR_WS_MESSAGE_BYTES_MAX: usize = 4 << 20;

/// The WebSocket settings of a socket to a speech vendor (one per call and vendor): reads in 16 KiB
/// pieces and writes each message at once, instead of tungstenite's 128 KiB buffers each way, which
/// made a thousand calls on a hosted vendor hold 160 MB more; messages up to
/// [`VENDOR_WS_MESSAGE_BYTES_MAX`].
pub fn vendor_ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(VENDOR_WS_MESSAGE_BYTES_MAX))
        .max_frame_size(Some(VENDOR_WS_MESSAGE_BYTES_MAX))
}

/// A default engine that cannot run is left out with a warning (`without` says what sessions do
/// instead); one the config names (`explicit`) is an error at start-up.
pub(crate) fn absent<T>(explicit: bool, message: String, without: &str) -> Result<Option<T>, String> {
    if explicit {
        Err(message)
    } else {
        tracing::warn!("{message}; {without}");
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use super::Lazy;
    use crate::stt::fake::{FakeStt, ScriptedUtterance};
    use crate::stt::{SpeechToText, SttError, Utterance};

    #[tokio::test]
    async fn a_vendor_message_over_the_limit_breaks_the_socket_instead_of_being_read() {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            ws.send(Message::text("x".repeat(1024))).await.unwrap();
            ws.send(Message::text("x".repeat(super::VENDOR_WS_MESSAGE_BYTES_MAX + 1))).await.unwrap();
            let _ = ws.next().await;
        });
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/"), Some(super::vendor_ws_config()), true).await.unwrap();
        assert!(matches!(ws.next().await, Some(Ok(Message::Text(t))) if t.len() == 1024));
        match ws.next().await {
            Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {}
            other => panic!("a message over the limit was not refused: {:?}", other.map(|m| m.map(|m| m.len()))),
        }
    }

    #[tokio::test]
    async fn an_engine_loads_once_when_first_needed_and_a_failure_is_kept() {
        let loads = Arc::new(AtomicUsize::new(0));
        let counted = loads.clone();
        let engine: Arc<dyn SpeechToText> = Arc::new(Lazy::new("scripted", SttError::Unavailable, move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(FakeStt::new(vec![ScriptedUtterance::from_text("hello there")], 0)) as Arc<dyn SpeechToText>)
        }));
        assert_eq!(engine.name(), "scripted", "the name is known before the engine loads");
        assert_eq!(loads.load(Ordering::SeqCst), 0);
        engine.warm_up().await.unwrap();
        engine.warm_up().await.unwrap();
        let (audio_tx, audio) = mpsc::channel(1);
        drop(audio_tx);
        let (partials, _partials_rx) = mpsc::channel(8);
        let transcript = engine.transcribe(Utterance { start_ms: 0, ordinal: 0, audio, pause: None }, partials).await.unwrap();
        assert_eq!(transcript.text, "hello there");
        assert_eq!(loads.load(Ordering::SeqCst), 1);

        let counted = loads.clone();
        let broken: Arc<dyn SpeechToText> = Arc::new(Lazy::<dyn SpeechToText, _>::new("broken", SttError::Unavailable, move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Err(SttError::Engine("no model".into()))
        }));
        for _ in 0..2 {
            assert!(matches!(broken.warm_up().await, Err(SttError::Engine(m)) if m == "no model"));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 2, "a failed load is not tried again");

        let panicking: Arc<dyn SpeechToText> =
            Arc::new(Lazy::<dyn SpeechToText, _>::new("panicking", SttError::Unavailable, || panic!("loader panicked")));
        assert!(matches!(panicking.warm_up().await, Err(SttError::Unavailable(m)) if m.starts_with("loading the engine failed")));
    }
}
