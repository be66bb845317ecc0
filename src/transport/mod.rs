//! Client wire formats: what our clients put on the wire. Audio codecs and resampling; the Realtime
//! API's JSON events and its WebSocket; Twilio Media Streams. Each speaks to the same session actor.

pub mod audio;
pub mod realtime;
pub mod realtime_socket;
pub mod twilio;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};

/// A WebSocket close frame; the reason is cut at a character boundary to the 123 bytes a close
/// frame can carry.
pub fn close_frame(code: u16, reason: &str) -> Message {
    let mut reason = reason.to_string();
    while reason.len() > 123 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }))
}
