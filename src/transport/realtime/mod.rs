//! The OpenAI Realtime API (GA) in front of a session: the wire types ([`wire`]: client and server
//! events and the objects they carry, parsing with errors that name the field), the mapping to and
//! from the session's commands and events ([`mapper`]: event ids, output indexes, base64 audio, error
//! codes, the `Session` and `Response` objects), and the socket loop ([`socket`]).

pub mod mapper;
pub mod socket;
pub mod wire;

pub use wire::*;
