//! The Realtime API on a WebSocket: a reader task turns client JSON into session commands (through
//! [`super::mapper::command`]), a writer turns the session's events into JSON (through
//! [`super::mapper::Projection`]) and hands it to the socket through an [`Outbox`] (bounded in
//! bytes, a deadline on every send, pings). Both are generic over the socket's `Stream`/`Sink`, so
//! tests can drive them without a network. Every frame read tells the session's [`Peer`] the client
//! is alive; the writer task is aborted, never left behind, when the session ends.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use futures::{Sink, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::mapper::{command, Projection};
use super::{parse_client_event, RealtimeError, ServerEvent};
use crate::audio::AudioFormat;
use crate::metering::ledger::SessionMeter;
use crate::session::{run_session, Command, Inbound, Outbound, Peer, SessionStart, VoiceEngines};
use crate::transport::{close_for, end_connection, push_audio, Outbox, OutboxLimits, INBOUND_CAPACITY};

/// Errors about client events the reader could not turn into commands, waiting for the writer.
const REJECTED_CAPACITY: usize = 64;
/// Outbound events waiting for the writer; the actor closes a session whose writer leaves this many
/// untaken. The writer takes them at once and holds them as bytes in its [`Outbox`], bounded by
/// `max_outbound_bytes`: a client that does not read is closed by that bound first.
const OUTBOUND_CAPACITY: usize = 1024;
/// How long the client may take to answer the server's close frame before its socket is dropped.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);

/// Serves one Realtime session on `socket` until either side ends it or `cancel` fires (server shutdown).
pub async fn serve<S, E>(socket: S, engines: Arc<VoiceEngines>, start: SessionStart, meter: Option<SessionMeter>, cancel: CancellationToken)
where
    S: Stream<Item = Result<Message, E>> + Sink<Message> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    let metrics_engines = engines.clone();
    let metrics = || &metrics_engines.metrics;
    let max_event_bytes = engines.settings.max_event_bytes;
    let (sink, mut stream) = socket.split();
    let (in_tx, in_rx) = mpsc::channel(INBOUND_CAPACITY);
    let (out_tx, mut out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    // Boxed: a channel allocates room for 32 of its items up front, in every idle session.
    let (rejected_tx, mut rejected_rx) = mpsc::channel::<Box<RealtimeError>>(REJECTED_CAPACITY);
    let session_cancel = cancel.child_token();
    let session_id = start.session_id.clone();
    let peer = Arc::new(Peer::new(Duration::from_millis(engines.settings.idle_timeout_ms)));
    let actor = tokio::spawn(run_session(engines.clone(), start, meter, Some(peer.clone()), in_rx, out_tx, session_cancel.clone()));
    metrics().add("voxgate_realtime_sessions_active", &[], 1.0);

    let writer_session_id = session_id.clone();
    let writer_peer = peer.clone();
    let writer_engines = engines.clone();
    let mut outbox = Outbox::new(sink, OutboxLimits::from_settings(&engines.settings), peer.clone(), engines.metrics.clone());
    let writer = async move {
        let session_id = writer_session_id;
        let peer = writer_peer;
        let engines = writer_engines;
        let mut projection = Projection::default();
        // Serialised as they are made: a session keeps this buffer's room for a few small messages,
        // not for a few server events.
        let mut messages: Vec<Message> = Vec::new();
        let to_text = |messages: &mut Vec<Message>, event: ServerEvent| match serde_json::to_string(&event) {
            Ok(text) => messages.push(Message::Text(Utf8Bytes::from(text))),
            Err(e) => debug!(%session_id, error = %e, "could not serialise a server event"),
        };
        let stop = loop {
            tokio::select! {
                biased;
                stop = outbox.run() => break stop,
                out = out_rx.recv() => match out {
                    Some(Outbound::Event(event)) => projection.events(*event, |e| to_text(&mut messages, e)),
                    Some(Outbound::Close(reason)) => {
                        // The session's last events (its `error`) go out first.
                        for message in messages.drain(..) {
                            if outbox.push(message).is_err() {
                                break;
                            }
                        }
                        return outbox.finish(close_for(reason, &peer, &engines.settings)).await.is_ok();
                    }
                    None => {
                        // The actor ended without a close of its own: the server is shutting down or the client left.
                        for message in messages.drain(..) {
                            let _ = outbox.push(message);
                        }
                        return outbox.finish(crate::transport::close_frame(1001, "session ended")).await.is_ok();
                    }
                },
                Some(error) = rejected_rx.recv() => to_text(&mut messages, ServerEvent::error(*error)),
            }
            let mut overflow = None;
            for message in messages.drain(..) {
                if let Err(stop) = outbox.push(message) {
                    overflow = Some(stop);
                    break;
                }
            }
            if let Some(stop) = overflow {
                messages.clear();
                break stop;
            }
        };
        end_connection(&mut outbox, stop, &peer, &engines, &session_id).await;
        false
    };

    let reader_session_id = session_id.clone();
    let reader_engines = engines.clone();
    let reader_peer = peer.clone();
    let reader = async move {
        let session_id = reader_session_id;
        let metrics = || &reader_engines.metrics;
        // How the client's audio is encoded: the session's input format, as the session accepted it.
        let mut input_format = AudioFormat::REALTIME_PCM;
        while let Some(message) = stream.next().await {
            if message.is_ok() {
                reader_peer.heard();
            }
            let text = match message {
                Ok(Message::Text(text)) => Some(text),
                Ok(Message::Binary(_)) => None,
                Ok(Message::Close(_)) => return,
                Ok(_) => continue,
                Err(e) => {
                    debug!(%session_id, error = %e, "websocket read failed");
                    reader_peer.lost();
                    return;
                }
            };
            let read = match text {
                None => Err(invalid("invalid_event", "binary frames are not supported: send each event as JSON text")),
                Some(text) if text.len() > max_event_bytes => Err(invalid(
                    "event_too_large",
                    &format!("event of {} bytes is over the limit of {max_event_bytes} bytes: send audio in smaller appends", text.len()),
                )),
                Some(text) => parse_client_event(&text).map_err(|e| e.to_realtime_error()).and_then(|e| command(e, input_format)),
            };
            let mut inbound = match read {
                Ok(inbound) => inbound,
                Err(error) => {
                    metrics().inc("voxgate_errors_total", &[("kind", "bad_client_event")]);
                    // The error goes out after the events of every command before it: the session
                    // answers `Sync` once it has handled them, and the writer sends the session's
                    // events first.
                    let (done, handled) = tokio::sync::oneshot::channel();
                    if in_tx.send(Inbound::from(Command::Sync { done })).await.is_err() || handled.await.is_err() {
                        return;
                    }
                    if rejected_tx.send(Box::new(error)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            match &mut inbound.command {
                Command::Audio { .. } => {
                    if !push_audio(&in_tx, inbound, metrics()).await {
                        return;
                    }
                }
                Command::Configure { update, applied } if update.input_format.is_some() => {
                    // Later appends are decoded in the new format only if the session takes the update.
                    let format = update.input_format;
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    *applied = Some(tx);
                    if in_tx.send(inbound).await.is_err() {
                        return;
                    }
                    if let (Ok(true), Some(format)) = (rx.await, format) {
                        input_format = format;
                    }
                }
                _ => {
                    if in_tx.send(inbound).await.is_err() {
                        return;
                    }
                }
            }
        }
        // The stream ended without a close frame: the connection was cut.
        reader_peer.lost();
    };

    let mut writer = tokio::spawn(writer);
    let mut actor = actor;
    let cancelled = crate::session::cancellation_signal(&session_cancel);
    let mut writer_done = false;
    tokio::pin!(reader);
    let client_left = tokio::select! {
        _ = &mut reader => true,
        // The writer ended the connection (a client that does not read, a peer gone) or the session
        // closed it; the reader is dropped here, and with it the actor's inbound.
        closed = &mut writer => {
            writer_done = true;
            // A close sent on a working connection: let the client's own close frame arrive (the
            // reader ends on it) before the socket goes, so nothing the server said is lost to a reset.
            if matches!(closed, Ok(true)) {
                let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, &mut reader).await;
            }
            true
        }
        _ = cancelled => false,
    };
    // The reader (and its sender) is gone. When the client left, the actor sees its inbound close
    // and ends the session itself (recording why); otherwise, or if it does not, cancel it.
    if !client_left || tokio::time::timeout(Duration::from_secs(2), &mut actor).await.is_err() {
        session_cancel.cancel();
        let _ = actor.await;
    }
    session_cancel.cancel();
    // The writer has its close to send; then it is aborted, not detached: a writer stuck on a client
    // that does not read would otherwise keep the socket and everything queued for it.
    if !writer_done && tokio::time::timeout(Duration::from_secs(2), &mut writer).await.is_err() {
        writer.abort();
        let _ = writer.await;
    }
    metrics().add("voxgate_realtime_sessions_active", &[], -1.0);
}

fn invalid(code: &str, message: &str) -> RealtimeError {
    RealtimeError {
        error_type: "invalid_request_error".into(),
        code: Some(code.into()),
        message: message.into(),
        param: None,
        event_id: None,
    }
}
