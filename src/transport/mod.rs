//! Client protocols: each is a mapper between its wire format and the session's commands and events,
//! plus a socket loop (a reader and a writer task). [`realtime`]: the OpenAI Realtime API;
//! [`twilio`]: Twilio Media Streams. Transport depends on the session, never the reverse.
//! What every socket loop shares lives here: the inbound audio queue, the [`Outbox`] (outbound
//! messages bounded in bytes, a deadline on every send, pings and their pong deadline), the close
//! frame and TCP keepalive.

pub mod outbox;
pub mod realtime;
pub mod twilio;

pub use outbox::{Outbox, OutboxLimits, Stop};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};

use crate::config::RealtimeSettings;
use crate::session::{CloseReason, Peer, VoiceEngines};

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

/// The close frame for a call that ends for `reason`: 1008 for a client that does not read (a
/// policy of this server), 1001 for a peer that stopped answering (we go away), 1000 for the limits
/// a call reaches by living (idle, maximum length).
pub fn close_for(reason: CloseReason, peer: &Peer, settings: &RealtimeSettings) -> Message {
    match reason {
        CloseReason::ClientNotReading => close_frame(1008, "client is not reading events"),
        CloseReason::PeerUnresponsive => close_frame(1001, &format!("no answer to a ping within {} ms", settings.pong_timeout_ms)),
        CloseReason::Idle => close_frame(1000, &format!("idle: nothing received for {} s", peer.idle().as_secs())),
        CloseReason::MaxDuration => {
            close_frame(1000, &format!("the session reached its maximum length of {} s", settings.max_session_ms / 1000))
        }
    }
}

/// Ends a connection whose [`Outbox`] stopped: records why in the session's [`Peer`] (the session
/// bills the call to the last time the client was heard from), counts it, and sends the close
/// frame if the socket still takes one.
pub async fn end_connection<K>(outbox: &mut Outbox<K>, stop: Stop, peer: &Peer, engines: &VoiceEngines, session_id: &str)
where
    K: futures::Sink<Message> + Unpin,
{
    let reason = match stop {
        Stop::Broken => {
            tracing::debug!(%session_id, "the client's socket failed");
            return;
        }
        Stop::SendTimeout | Stop::Overflow => CloseReason::ClientNotReading,
        Stop::PeerUnresponsive => CloseReason::PeerUnresponsive,
    };
    peer.end(reason);
    engines.metrics.inc("voxgate_errors_total", &[("kind", reason.as_str())]);
    tracing::warn!(
        %session_id,
        reason = reason.as_str(),
        ?stop,
        queued_bytes = outbox.queued_bytes(),
        "closing the connection"
    );
    outbox.close_now(close_for(reason, peer, &engines.settings)).await;
}

/// A WebSocket close frame; the reason is cut at a character boundary to the 123 bytes a close
/// frame can carry.
pub fn close_frame(code: u16, reason: &str) -> Message {
    let mut reason = reason.to_string();
    while reason.len() > 123 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }))
}

/// TCP keepalive on an accepted socket: after 30 s without a packet the kernel probes every 10 s
/// and gives up after 3 unanswered probes, so a peer whose network vanished is found within about
/// a minute even when nothing is being sent (the WebSocket pings find it too; this also covers
/// HTTP connections and a stream that is only being read). A failure is logged, not fatal.
pub fn set_tcp_keepalive(tcp: &tokio::net::TcpStream) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd = tcp.as_raw_fd();
        let options: [(libc::c_int, libc::c_int, libc::c_int); 4] = [
            (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
            (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 30),
            (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10),
            (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
        ];
        for (level, name, value) in options {
            // SAFETY: `fd` is the open socket `tcp` owns for the whole call; the option value is a
            // c_int on the stack whose size is passed with it.
            let done = unsafe {
                libc::setsockopt(
                    fd,
                    level,
                    name,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if done != 0 {
                tracing::warn!(error = %std::io::Error::last_os_error(), "could not set TCP keepalive");
                return;
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = tcp;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[tokio::test]
    async fn accepted_sockets_get_tcp_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        super::set_tcp_keepalive(&tcp);
        let get = |level, name| {
            use std::os::fd::AsRawFd;
            let mut value: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: reads one c_int option of an open socket into a local of the size given.
            let done = unsafe { libc::getsockopt(tcp.as_raw_fd(), level, name, (&mut value as *mut libc::c_int).cast(), &mut len) };
            assert_eq!(done, 0);
            value
        };
        assert_eq!(get(libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(get(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 30);
        assert_eq!(get(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 10);
        assert_eq!(get(libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
    }
}
