//! Client wire formats: what our clients (Realtime API WebSocket, Twilio Media Streams) put on the wire.
//! Today the audio codecs and resampling, and the Realtime API's JSON events; sockets will live beside them.

pub mod audio;
pub mod realtime;
pub mod realtime_socket;
