//! `bench soak`: many calls for a long time, watching the server's memory and file descriptors.
//!
//! voxgate runs as a child process on the fake engines, as in `bench pipeline`. Half the clients
//! are Realtime sessions, half Twilio calls that never echo a mark. Each client calls, speaks the
//! fixture, waits for the agent's first audio and talks over it (a barge-in), a few turns, then
//! hangs up: every fifth call vanishes without a close, as a phone on a dead network does, so the
//! server must find it dead on its own. Then it calls again. Every sample period the child's
//! resident memory and open file descriptors are read from `/proc`; the report gives each sample
//! and the least-squares slope of both after the warm-up (the first fifth of the run), per hour.
//! A server that leaks shows a slope that does not fall with a longer run.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::pipeline::{audio_delta, connect, fixture_path, load_frames, twilio_media, Child, Dial, Frames, Transport};

/// Turns per call before it hangs up.
const TURNS_PER_CALL: usize = 3;
/// How long a client waits for the agent's first audio before it speaks again anyway.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// How much of the agent's answer plays before the caller talks over it.
const BARGE_IN_AFTER: Duration = Duration::from_millis(400);
/// Every this-many-th call ends by going silent without a close.
const VANISH_EVERY: u64 = 5;
/// How long a vanished call's connection is held open, unread, before the client lets it go: longer
/// than the server's ping deadline, so the server is the one that finds it dead.
const VANISHED_HELD: Duration = Duration::from_secs(120);
/// How long after the last call the server is sampled once more: a dead peer is found within a
/// minute (a ping every 20 s, 20 s to answer).
const AFTER_LAST_CALL: Duration = Duration::from_secs(75);

pub struct SoakOptions {
    pub sessions: usize,
    pub minutes: u64,
    pub sample_seconds: u64,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    vanished: AtomicU64,
    turns: AtomicU64,
    answers: AtomicU64,
    errors: AtomicU64,
    /// Calls that could not connect (the server full, say).
    refused: AtomicU64,
    /// Why the server closed calls it ended itself: close code and reason, and how often.
    server_closes: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// One sample of the child: seconds into the run, resident MB, open descriptors, calls so far.
struct Sample {
    at_s: f64,
    rss_mb: f64,
    fds: usize,
    calls: u64,
    answers: u64,
}

/// Least-squares slope of `y` over `x`.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Runs the soak and returns a Markdown report.
pub async fn soak(options: SoakOptions) -> anyhow::Result<String> {
    let wav = fixture_path("wav");
    let script = [fixture_path("json")];
    let realtime = Arc::new(load_frames(std::slice::from_ref(&wav), Transport::Realtime)?);
    let twilio = Arc::new(load_frames(std::slice::from_ref(&wav), Transport::Twilio)?);
    // Room for the vanished calls too: each holds its slot until the server finds it dead (within a
    // minute), while its client has called again.
    let child = Child::start(2 * options.sessions + 16, true, false, &script, None, None).await?;
    let dials = [Transport::Realtime, Transport::Twilio]
        .map(|transport| Arc::new(Dial { transport, url: child.ws_url(transport), route: child.route, setup: None }));
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let end = started + Duration::from_secs(options.minutes * 60);
    let mut clients = Vec::with_capacity(options.sessions);
    for index in 0..options.sessions {
        let (dial, frames) = if index % 2 == 0 { (dials[0].clone(), realtime.clone()) } else { (dials[1].clone(), twilio.clone()) };
        // Starts spread over the first 10 s.
        let start = started + Duration::from_millis(index as u64 * 10_000 / options.sessions.max(1) as u64);
        clients.push(tokio::spawn(client(dial, frames, index, start, end, counters.clone())));
    }
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(options.sample_seconds.max(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        samples.push(Sample {
            at_s: (now - started).as_secs_f64(),
            rss_mb: child.rss_mb().unwrap_or(0.0),
            fds: open_fds(child.pid),
            calls: counters.calls.load(Ordering::Relaxed),
            answers: counters.answers.load(Ordering::Relaxed),
        });
        if now >= end {
            break;
        }
    }
    for c in clients {
        let _ = c.await;
    }
    // The calls are over: what is left once the server has had time to find the vanished ones
    // (still held open, unread, by this process).
    tokio::time::sleep(AFTER_LAST_CALL).await;
    let after = (child.rss_mb().unwrap_or(0.0), open_fds(child.pid));
    child.stop().await;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} clients for {} min (half Realtime, half Twilio never echoing marks; {TURNS_PER_CALL} turns a call, each answer talked over after {} ms; every {VANISH_EVERY}th call vanishes without a close); fake engines\n",
        options.sessions,
        options.minutes,
        BARGE_IN_AFTER.as_millis()
    );
    let _ = writeln!(out, "| minute | RSS MB | open fds | calls so far | answers so far |\n|---:|---:|---:|---:|---:|");
    for s in &samples {
        let _ = writeln!(out, "| {:.1} | {:.1} | {} | {} | {} |", s.at_s / 60.0, s.rss_mb, s.fds, s.calls, s.answers);
    }
    let warm = samples.len() / 5;
    let hours = |s: &Sample| s.at_s / 3600.0;
    let rss: Vec<(f64, f64)> = samples[warm..].iter().map(|s| (hours(s), s.rss_mb)).collect();
    let fds: Vec<(f64, f64)> = samples[warm..].iter().map(|s| (hours(s), s.fds as f64)).collect();
    let spread = |v: &[(f64, f64)]| {
        let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        if v.is_empty() {
            0.0
        } else {
            hi - lo
        }
    };
    let _ = writeln!(
        out,
        "\nafter the warm-up ({} samples): RSS slope {:+.2} MB/hour (range {:.1} MB), open fds slope {:+.1}/hour (range {:.0})",
        rss.len(),
        slope(&rss),
        spread(&rss),
        slope(&fds),
        spread(&fds)
    );
    let _ = writeln!(
        out,
        "calls {} ({} vanished without a close, {} could not connect), turns spoken {}, answers heard {}, calls broken {}",
        counters.calls.load(Ordering::Relaxed),
        counters.vanished.load(Ordering::Relaxed),
        counters.refused.load(Ordering::Relaxed),
        counters.turns.load(Ordering::Relaxed),
        counters.answers.load(Ordering::Relaxed),
        counters.errors.load(Ordering::Relaxed)
    );
    for (why, n) in counters.server_closes.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(out, "calls the server closed: {n} × {why}");
    }
    let _ = writeln!(
        out,
        "{} s after the last call (vanished calls still held open by the client): RSS {:.1} MB, open fds {} (at the first sample: {})",
        AFTER_LAST_CALL.as_secs(),
        after.0,
        after.1,
        samples.first().map_or(0, |s| s.fds)
    );
    Ok(out)
}

/// One client: calls until `end`, each call a few turns talked over, then a hang-up.
async fn client(dial: Arc<Dial>, frames: Arc<Frames>, index: usize, start: Instant, end: Instant, counters: Arc<Counters>) {
    sleep_until(start).await;
    let utterance = &frames.utterances[0];
    while Instant::now() < end {
        let call_no = counters.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let (mut ws, mut line) = match connect(&dial, index).await {
            Ok(c) => c,
            Err(_) => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut alive = true;
        'turns: for _ in 0..TURNS_PER_CALL {
            if Instant::now() >= end {
                break;
            }
            counters.turns.fetch_add(1, Ordering::Relaxed);
            // The utterance, a frame every 20 ms, then silence until the answer plays a while.
            let mut frame = 0usize;
            let mut answered: Option<Instant> = None;
            let give_up = Instant::now() + Duration::from_millis(utterance.duration_ms as u64) + ANSWER_WAIT;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let now = Instant::now();
                        if answered.is_some_and(|at| now >= at + BARGE_IN_AFTER) || now >= give_up {
                            break; // talk over the answer: the next turn starts speaking now
                        }
                        let payload = utterance.speech.get(frame).unwrap_or(&frames.silence);
                        frame += 1;
                        if ws.send(Message::Text(line.input(payload))).await.is_err() {
                            alive = false;
                            break 'turns;
                        }
                    }
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Text(text))) => {
                            let audio = match dial.transport {
                                Transport::Realtime => audio_delta(&text).is_some(),
                                Transport::Twilio => twilio_media(&text).is_some(),
                            };
                            if audio && answered.is_none() && frame >= utterance.speech.len() {
                                answered = Some(Instant::now());
                                counters.answers.fetch_add(1, Ordering::Relaxed);
                            }
                            // Marks are never echoed.
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame.map_or("no close frame".to_string(), |f| format!("{} {}", u16::from(f.code), f.reason));
                            *counters.server_closes.lock().unwrap_or_else(|p| p.into_inner()).entry(why).or_default() += 1;
                            alive = false;
                            break 'turns;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => {
                            counters.errors.fetch_add(1, Ordering::Relaxed);
                            alive = false;
                            break 'turns;
                        }
                    }
                }
            }
        }
        if alive && call_no % VANISH_EVERY == 0 {
            // Gone without a word, as a phone whose network died: the connection stays open but
            // nothing is read or sent on it (no pong, no close) until the server gives up on it.
            counters.vanished.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                tokio::time::sleep(VANISHED_HELD).await;
                drop(ws);
            });
        } else if alive {
            let _ = ws.close(None).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), async { while ws.next().await.is_some() {} }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::slope;

    #[test]
    fn slope_of_a_line_and_of_noise_around_a_flat_level() {
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 + 2.0 * i as f64)).collect();
        assert!((slope(&line) - 2.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, if i % 2 == 0 { 5.0 } else { 7.0 })).collect();
        assert!(slope(&flat).abs() < 0.25);
        assert_eq!(slope(&[(1.0, 1.0)]), 0.0);
    }
}
