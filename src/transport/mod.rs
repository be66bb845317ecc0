//! Client protocols: each is a mapper between its wire format and the session's commands and events,
//! plus a socket loop (a reader and a writer task). [`realtime`]: the OpenAI Realtime API;
//! [`twilio`]: Twilio Media Streams. Transport depends on the session, never the reverse.

pub mod realtime;
pub mod twilio;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};

/// Client events waiting for a session's actor (256 audio appends are 5 s of 20 ms frames).
pub const INBOUND_CAPACITY: usize = 256;

/// How long an audio append waits for room in a full queue before it is dropped (and counted).
/// A client that uploads faster than real time only fills the queue for the moment the actor
/// needs to catch up, so it loses nothing; a server that stays behind real time drops audio
/// rather than let the caller's latency grow without bound.
pub const APPEND_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(200);

/// Hands an audio append to the session's actor (see [`APPEND_WAIT_MAX`]); `false` when the
/// actor has ended.
pub async fn push_audio(
    to_actor: &tokio::sync::mpsc::Sender<crate::session::Inbound>,
    audio: crate::session::Inbound,
    metrics: &crate::metrics::Metrics,
) -> bool {
    use tokio::sync::mpsc::error::TrySendError;
    match to_actor.try_send(audio) {
        Ok(()) => true,
        Err(TrySendError::Closed(_)) => false,
        Err(TrySendError::Full(audio)) => match tokio::time::timeout(APPEND_WAIT_MAX, to_actor.send(audio)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                metrics.inc("voxgate_audio_frames_dropped_total", &[("stage", "input")]);
                true
            }
        },
    }
}

/// Each WebSocket's read buffer. The WebSocket library zero-fills the whole buffer before every
/// read: at its default (128 KiB) that was the largest single cost of a call (a 20 ms audio
/// event is about 2.6 KB). Larger messages still arrive whole, over several reads.
pub const WS_READ_BUFFER_BYTES: usize = 4 * 1024;

/// A WebSocket close frame; the reason is cut at a character boundary to the 123 bytes a close
/// frame can carry.
pub fn close_frame(code: u16, reason: &str) -> Message {
    let mut reason = reason.to_string();
    while reason.len() > 123 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }))
}
