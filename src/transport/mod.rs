//! Client wire formats: what our clients put on the wire. Audio codecs and resampling; the Realtime
//! API's JSON events and its WebSocket; Twilio Media Streams. Each speaks to the same session actor.

pub mod audio;
pub mod realtime;
pub mod realtime_socket;
pub mod twilio;
