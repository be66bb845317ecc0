//! The OpenAI Realtime API (GA) in front of a session. The wire types, split by what they are:
//! [`objects`] (session, items, responses, errors, ids), [`client`] (client events), [`parse`]
//! (reading a client event with errors that name the field) and [`server`] (server events); the
//! mapping to and from the session's commands and events ([`mapper`]: event ids, output indexes,
//! base64 audio, error codes, the `Session` and `Response` objects); and the socket loop
//! ([`socket`]). Pure data and pure functions but for the socket.

pub mod client;
pub mod mapper;
pub mod objects;
pub mod parse;
pub mod server;
pub mod socket;

pub use client::*;
pub use objects::*;
pub use parse::*;
pub use server::*;
