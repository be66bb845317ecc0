//! Waits for the fake engines: tokio's timer, or a precise one for benchmarks.
//!
//! tokio's timer fires on the first 1 ms tick after a deadline, so a fake engine that waits with
//! it takes up to a millisecond longer than it was told, and a benchmark that subtracts the
//! configured engine time from a turn would count that rounding as pipeline overhead. The precise
//! timer is one thread that sleeps until the earliest deadline (the OS's high-resolution timer)
//! and wakes the waiting task through a channel: the way a real engine on its own thread or across
//! a network reports back. Tests keep tokio's timer, which paused time controls.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Waits `duration`: with tokio's timer, or with the precise timer thread when `precise`.
pub async fn wait(duration: Duration, precise: bool) {
    if duration.is_zero() {
        return;
    }
    if !precise {
        tokio::time::sleep(duration).await;
        return;
    }
    let (tx, rx) = oneshot::channel();
    timer().add(Instant::now() + duration, tx);
    // The timer thread never drops a sender unanswered; should it ever, the wait just ends.
    let _ = rx.await;
}

struct Timer {
    due: Mutex<Due>,
    changed: Condvar,
}

#[derive(Default)]
struct Due {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    waiters: std::collections::HashMap<u64, oneshot::Sender<()>>,
    next_id: u64,
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::new(Timer { due: Mutex::default(), changed: Condvar::new() }));
        std::thread::Builder::new().name("fake-clock".into()).spawn(move || timer.run()).expect("the fake engines' timer thread starts");
        timer
    })
}

impl Timer {
    fn add(&self, at: Instant, tx: oneshot::Sender<()>) {
        let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
        let id = due.next_id;
        due.next_id += 1;
        due.heap.push(Reverse((at, id)));
        due.waiters.insert(id, tx);
        self.changed.notify_one();
    }

    fn run(&self) {
        let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let now = Instant::now();
            let mut ready = Vec::new();
            while let Some(&Reverse((at, id))) = due.heap.peek() {
                if at > now {
                    break;
                }
                due.heap.pop();
                ready.extend(due.waiters.remove(&id));
            }
            if !ready.is_empty() {
                drop(due);
                for tx in ready {
                    let _ = tx.send(());
                }
                due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            due = match due.heap.peek() {
                Some(&Reverse((at, _))) => {
                    self.changed.wait_timeout(due, at.saturating_duration_since(now)).unwrap_or_else(PoisonError::into_inner).0
                }
                None => self.changed.wait(due).unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn precise_waits_never_end_before_their_deadline() {
        // Deadlines in scrambled order, some equal: every wait ends, none early.
        let waits = (0..40u64).map(|n| async move {
            let d = Duration::from_micros((n * 7_919) % 20_000);
            let start = Instant::now();
            wait(d, true).await;
            (d, start.elapsed())
        });
        for (asked, took) in futures::future::join_all(waits).await {
            assert!(took >= asked, "asked {asked:?}, took {took:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_waits_follow_paused_time() {
        let start = tokio::time::Instant::now();
        wait(Duration::from_secs(5), false).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
