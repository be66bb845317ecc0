//! A socket's way out: the messages a writer task has made and the socket has not yet taken, bounded
//! in bytes; a deadline on every send; a ping every `ping_interval_ms` and `pong_timeout_ms` to hear
//! back. The writer keeps taking the session's events while a send is under way, so events never
//! pile up unserialised behind a client that does not read: they wait here, as bytes, counted, and a
//! session over its bound is ended instead of growing.
//!
//! [`Outbox::run`] drives the sends and pings; it is cancel-safe (all its state is in the
//! `Outbox`), so a writer polls it in a `select!` beside its other sources, and it completes only
//! when the connection must end ([`Stop`]).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::Message;
use futures::Sink;
use tokio::time::{Instant, Sleep};

use crate::config::RealtimeSettings;
use crate::metrics::Metrics;
use crate::session::Peer;

/// The gauge of bytes waiting in every session's outbox. Reported in steps of this many bytes, so a
/// call's usual traffic (audio deltas of a few KB, gone at once) never touches the metrics lock.
const GAUGE_STEP_BYTES: usize = 64 * 1024;

/// How long a close frame may take after the connection failed (a send past its deadline, too many
/// bytes waiting, a peer gone): then the socket is dropped.
const CLOSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The outbox's limits, from `[realtime]`.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub max_bytes: usize,
    pub send_timeout: Duration,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
}

impl OutboxLimits {
    pub fn from_settings(s: &RealtimeSettings) -> OutboxLimits {
        OutboxLimits {
            max_bytes: s.max_outbound_bytes,
            send_timeout: Duration::from_millis(s.send_timeout_ms),
            ping_interval: Duration::from_millis(s.ping_interval_ms),
            pong_timeout: Duration::from_millis(s.pong_timeout_ms),
        }
    }
}

/// Why the connection must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The socket failed (the peer reset it, or it is closed).
    Broken,
    /// A message waited longer than `send_timeout` for the socket to take it.
    SendTimeout,
    /// Nothing was heard within `pong_timeout` of a ping.
    PeerUnresponsive,
    /// A message would take the bytes waiting over `max_bytes`.
    Overflow,
}

/// The outbound side of one WebSocket. See the module docs.
pub struct Outbox<K> {
    sink: K,
    limits: OutboxLimits,
    peer: Arc<Peer>,
    metrics: Arc<Metrics>,
    queue: VecDeque<Message>,
    /// Bytes in `queue` and in the message the sink holds.
    queued_bytes: usize,
    /// The bytes of the message handed to the sink and not yet flushed.
    in_flight: Option<usize>,
    /// When the message now being sent became the next to go: its deadline runs from then.
    sending_since: Option<Instant>,
    /// Set (lazily: moved only when it fires early) while a message is being sent.
    send_deadline: Pin<Box<Sleep>>,
    ping_timer: Pin<Box<Sleep>>,
    /// When the unanswered ping went out.
    ping_sent: Option<Instant>,
    /// This outbox's share of the bytes gauge.
    reported_bytes: usize,
}

impl<K> Outbox<K>
where
    K: Sink<Message> + Unpin,
{
    pub fn new(sink: K, limits: OutboxLimits, peer: Arc<Peer>, metrics: Arc<Metrics>) -> Outbox<K> {
        let now = Instant::now();
        Outbox {
            sink,
            limits,
            peer,
            metrics,
            queue: VecDeque::new(),
            queued_bytes: 0,
            in_flight: None,
            sending_since: None,
            send_deadline: Box::pin(tokio::time::sleep_until(now + limits.send_timeout)),
            ping_timer: Box::pin(tokio::time::sleep_until(now + limits.ping_interval)),
            ping_sent: None,
            reported_bytes: 0,
        }
    }

    /// Bytes waiting: queued, and in the message the socket is taking.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Queues `message`, or refuses it (and drops it) when it would take the bytes waiting over the
    /// bound: the client is not reading, and the caller ends the connection ([`Stop::Overflow`]).
    pub fn push(&mut self, message: Message) -> Result<(), Stop> {
        let bytes = message_bytes(&message);
        if self.queued_bytes.saturating_add(bytes) > self.limits.max_bytes {
            return Err(Stop::Overflow);
        }
        self.queued_bytes += bytes;
        self.queue.push_back(message);
        self.report();
        Ok(())
    }

    /// Sends what is queued and pings the peer, until the connection must end. Cancel-safe.
    pub fn run(&mut self) -> impl Future<Output = Stop> + '_ {
        std::future::poll_fn(move |cx| self.poll_run(cx))
    }

    /// Sends what is queued, then `close`, each within its deadline: the end of a call that went
    /// well. `Err` when the connection failed on the way.
    pub async fn finish(&mut self, close: Message) -> Result<(), Stop> {
        self.queued_bytes += message_bytes(&close);
        self.queue.push_back(close);
        std::future::poll_fn(|cx| match self.poll_run(cx) {
            Poll::Ready(stop) => Poll::Ready(Err(stop)),
            Poll::Pending if self.queue.is_empty() && self.in_flight.is_none() => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        })
        .await
    }

    /// Drops what is queued and sends `close` within a short deadline: the end of a connection that
    /// failed. The socket is dropped with the outbox whether the close went out or not.
    pub async fn close_now(&mut self, close: Message) {
        self.queue.clear();
        self.queued_bytes = self.in_flight.unwrap_or(0);
        self.report();
        let _ = tokio::time::timeout(CLOSE_AFTER_FAILURE, self.finish(close)).await;
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        if let Some(stop) = self.poll_ping(cx) {
            return Poll::Ready(stop);
        }
        loop {
            if let Some(bytes) = self.in_flight {
                match Pin::new(&mut self.sink).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.in_flight = None;
                        self.sending_since = None;
                        self.queued_bytes -= bytes;
                        self.report();
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Stop::Broken),
                    Poll::Pending => break,
                }
            }
            if self.queue.is_empty() {
                break;
            }
            if self.sending_since.is_none() {
                self.sending_since = Some(Instant::now());
            }
            match Pin::new(&mut self.sink).poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let Some(message) = self.queue.pop_front() else { break };
                    let bytes = message_bytes(&message);
                    if Pin::new(&mut self.sink).start_send(message).is_err() {
                        return Poll::Ready(Stop::Broken);
                    }
                    self.in_flight = Some(bytes);
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Stop::Broken),
                Poll::Pending => break,
            }
        }
        // A send under way: its deadline. The timer is moved only when it fires before the current
        // message's deadline (it was set for an earlier message), not for every message.
        if let Some(since) = self.sending_since {
            let due = since + self.limits.send_timeout;
            if self.send_deadline.deadline() != due && self.send_deadline.deadline() > due {
                self.send_deadline.as_mut().reset(due);
            }
            while self.send_deadline.as_mut().poll(cx).is_ready() {
                if Instant::now() >= due {
                    return Poll::Ready(Stop::SendTimeout);
                }
                self.send_deadline.as_mut().reset(due);
            }
        }
        Poll::Pending
    }

    /// Pings on time, and ends the connection when a ping went unanswered for `pong_timeout`.
    /// Anything heard from the peer after the ping went out counts as its answer.
    fn poll_ping(&mut self, cx: &mut Context<'_>) -> Option<Stop> {
        while self.ping_timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if let Some(sent) = self.ping_sent.take() {
                if !self.peer.heard_since(sent) {
                    return Some(Stop::PeerUnresponsive);
                }
                let next = sent + self.limits.ping_interval;
                if next > now {
                    self.ping_timer.as_mut().reset(next);
                    continue;
                }
            }
            // Ahead of everything queued (the message the socket is taking stays first).
            self.queue.push_front(Message::Ping(Default::default()));
            self.ping_sent = Some(now);
            self.ping_timer.as_mut().reset(now + self.limits.pong_timeout);
        }
        None
    }

    /// Moves this outbox's share of the bytes gauge, in steps of [`GAUGE_STEP_BYTES`].
    fn report(&mut self) {
        let stepped = self.queued_bytes / GAUGE_STEP_BYTES * GAUGE_STEP_BYTES;
        if stepped != self.reported_bytes {
            self.metrics.add("voxgate_outbound_queued_bytes", &[], stepped as f64 - self.reported_bytes as f64);
            self.reported_bytes = stepped;
        }
    }
}

impl<K> Drop for Outbox<K> {
    fn drop(&mut self) {
        if self.reported_bytes != 0 {
            self.metrics.add("voxgate_outbound_queued_bytes", &[], -(self.reported_bytes as f64));
        }
    }
}

/// What a message holds in memory, for the bound.
fn message_bytes(message: &Message) -> usize {
    match message {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(c) => 2 + c.as_ref().map_or(0, |c| c.reason.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::Utf8Bytes;

    /// A socket that takes nothing, or everything, as told.
    struct FakeSink {
        open: bool,
        sent: Vec<Message>,
    }

    impl Sink<Message> for FakeSink {
        type Error = ();
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            if self.open {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), ()> {
            self.sent.push(item);
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            if self.open {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn limits() -> OutboxLimits {
        OutboxLimits {
            max_bytes: 1000,
            send_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(20),
        }
    }

    fn text(bytes: usize) -> Message {
        Message::Text(Utf8Bytes::from("x".repeat(bytes)))
    }

    fn outbox(open: bool) -> (Outbox<FakeSink>, Arc<Peer>) {
        let peer = Arc::new(Peer::new(Duration::from_secs(300)));
        (Outbox::new(FakeSink { open, sent: Vec::new() }, limits(), peer.clone(), Arc::new(Metrics::default())), peer)
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_takes_nothing_holds_at_most_the_bound_then_times_out() {
        let (mut out, _) = outbox(false);
        let mut pushed = 0;
        while out.push(text(300)).is_ok() {
            pushed += 1;
            assert!(out.queued_bytes() <= 1000);
        }
        assert_eq!((pushed, out.queued_bytes()), (3, 900));
        assert_eq!(out.push(text(101)), Err(Stop::Overflow));
        assert_eq!(out.push(text(100)), Ok(()));
        let started = Instant::now();
        assert_eq!(out.run().await, Stop::SendTimeout);
        assert_eq!(Instant::now() - started, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_socket_takes_everything_and_gets_pings_on_time() {
        let t0 = Instant::now();
        let (mut out, peer) = outbox(true);
        for _ in 0..10 {
            out.push(text(300)).unwrap();
            assert_eq!(tokio::time::timeout(Duration::from_millis(1), out.run()).await.ok(), None);
            assert_eq!(out.queued_bytes(), 0);
        }
        assert_eq!(out.sink.sent.len(), 10);
        // The first ping at 20 s; an answer at 25 s; the next ping at 40 s, unanswered: gone at 60 s.
        let answer = async {
            tokio::time::sleep_until(t0 + Duration::from_secs(25)).await;
            peer.heard();
            std::future::pending::<()>().await
        };
        tokio::select! {
            stop = out.run() => assert_eq!(stop, Stop::PeerUnresponsive),
            () = answer => unreachable!(),
        }
        assert_eq!(Instant::now() - t0, Duration::from_secs(60));
        let pings = out.sink.sent.iter().filter(|m| matches!(m, Message::Ping(_))).count();
        assert_eq!(pings, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_after_a_failure_does_not_wait_on_a_stuck_socket() {
        let (mut out, _) = outbox(false);
        out.push(text(500)).unwrap();
        let started = Instant::now();
        out.close_now(crate::transport::close_frame(1008, "client is not reading events")).await;
        assert_eq!(Instant::now() - started, CLOSE_AFTER_FAILURE);
        // The 500 bytes are gone; only the close frame that could not go out is left.
        assert_eq!(out.queued_bytes(), 2 + "client is not reading events".len());
    }
}
