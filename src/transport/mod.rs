//! Client wire formats: what our clients (Realtime API WebSocket, Twilio Media Streams) put on the wire.
//! Today only the audio codecs and resampling; sockets and JSON event schemas will live beside them.

pub mod audio;
