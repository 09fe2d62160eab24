//! The bounded outbound queue of one session, and the slow-consumer policy.
//!
//! Shards, the hub, procedure tasks and the session's own reader all push
//! already-serialised frames into a session's `Outbox`; its writer task is
//! the only consumer. A push never waits: a shard must not stall on one slow
//! client. Instead the queue is bounded by `outbound_queue_messages_max` and
//! `outbound_queue_bytes_max`, and a push that would pass either bound
//! *overflows* the session: its backlog is dropped, the push is refused, and
//! the session is closed with `close_code::SLOW_CONSUMER` (4001). Nothing is
//! skipped silently, acknowledgements included: the client reconnects,
//! re-opens its documents at the versions it holds (getting the missing
//! changes or a snapshot) and resubmits unacknowledged transactions, whose
//! original outcomes the store's dedup window returns.
//!
//! A frame is pushed either as traffic the session did not ask for just now
//! (`push`: changes, presence, topic messages), which the writer may hold
//! for its coalescing window, or as an answer to one of the session's own
//! requests (`push_reply`: `committed`, `rejected`, the reply to `open`,
//! errors, RPC answers and the calls a client must answer), which ends that
//! wait: a client waits on its answers, so
//! they go out at once, with whatever queued before them.
//!
//! The queue is a `VecDeque` behind a per-session `std::sync::Mutex`: it is
//! held only for a push or a pop, never across an await, and only the
//! session's own producers contend for it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use concord_engine::protocol::close_code;
use concord_engine::sequencer::Burst;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::{saturating_i64, Metrics};

/// What the writer task sends next.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Text(Utf8Bytes),
    Ping,
    Close { code: u16, reason: &'static str },
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// This push overflowed the queue; the session is now closing (4001).
    Overflow,
    /// The session is already closing.
    Closed,
}

/// A handle to one session's outbound queue; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer; `notify_one` stores a permit when the writer is not
    /// waiting yet, so no wake-up is lost.
    ready: Notify,
    /// Wakes a writer that is waiting out its coalescing window when a reply
    /// is queued.
    reply_ready: Notify,
    /// Cancelled when the session must end (overflow or a close request), so
    /// the session's reader stops reading.
    closing: CancellationToken,
    messages_max: usize,
    bytes_max: usize,
    metrics: Metrics,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Utf8Bytes>,
    bytes: usize,
    ping_due: bool,
    /// A reply was queued since the writer last began a write.
    reply_queued: bool,
    /// Set once the session is closing: with `drain`, queued frames are
    /// written before the close frame; without, the queue was dropped.
    close: Option<(u16, &'static str)>,
    drain: bool,
    close_sent: bool,
}

impl Outbox {
    pub(crate) fn new(messages_max: usize, bytes_max: usize, metrics: Metrics) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                ready: Notify::new(),
                reply_ready: Notify::new(),
                closing: CancellationToken::new(),
                messages_max,
                bytes_max,
                metrics,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a push or pop panicked half-way; the queue is
        // still a valid VecDeque, so carry on rather than take the server down.
        self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Half of this queue's bounds: a burst that a reader keeping up can
    /// take without overflowing, even with other traffic queued beside it
    /// (how many missed changes an `open` may catch up with).
    pub(crate) fn burst(&self) -> Burst {
        Burst { frames_max: self.shared.messages_max / 2, bytes_max: self.shared.bytes_max / 2 }
    }

    /// Queues one text frame that the writer may hold for its coalescing
    /// window, or overflows the session (see module docs).
    pub(crate) fn push(&self, frame: Utf8Bytes) -> Result<(), Refused> {
        self.push_frame(frame, false)
    }

    /// Queues what the session's client is waiting on (an answer to one of
    /// its requests, or an RPC call it must answer): the writer writes it,
    /// and everything queued before it, without its coalescing wait.
    pub(crate) fn push_reply(&self, frame: Utf8Bytes) -> Result<(), Refused> {
        self.push_frame(frame, true)
    }

    fn push_frame(&self, frame: Utf8Bytes, reply: bool) -> Result<(), Refused> {
        let len = frame.len();
        let mut state = self.lock();
        if state.close.is_some() {
            return Err(Refused::Closed);
        }
        // A single message always fits an empty queue, so a snapshot larger
        // than the byte bound can still be delivered to a reader that keeps up.
        let full = !state.queue.is_empty()
            && (state.queue.len() >= self.shared.messages_max
                || state.bytes.saturating_add(len) > self.shared.bytes_max);
        if full {
            self.drop_backlog(&mut state);
            state.close = Some((close_code::SLOW_CONSUMER, "slow consumer: outbound queue full"));
            state.drain = false;
            drop(state);
            self.shared.metrics.outbound_overflows.inc();
            self.shared.closing.cancel();
            self.shared.ready.notify_one();
            return Err(Refused::Overflow);
        }
        state.bytes += len;
        state.queue.push_back(frame);
        state.reply_queued |= reply;
        let bytes = state.bytes;
        drop(state);
        self.shared.metrics.outbound_queued_bytes.add(saturating_i64(len));
        self.shared.metrics.observe_queue_bytes(bytes);
        self.shared.ready.notify_one();
        if reply {
            self.shared.reply_ready.notify_one();
        }
        Ok(())
    }

    /// Resolves once a reply is queued or the session is closing: what ends
    /// the writer's coalescing wait early.
    pub(crate) async fn urgent(&self) {
        loop {
            // Registered before the check: a reply pushed in between leaves
            // a permit, so the wake-up is not lost.
            let replied = self.shared.reply_ready.notified();
            if self.lock().reply_queued {
                return;
            }
            tokio::select! {
                () = replied => {}
                () = self.shared.closing.cancelled() => return,
            }
        }
    }

    /// The writer is about to take what is queued: replies queued so far
    /// leave with it.
    pub(crate) fn begin_write(&self) {
        self.lock().reply_queued = false;
    }

    /// Asks the writer to send a ping ahead of queued frames.
    pub(crate) fn ping(&self) {
        self.lock().ping_due = true;
        self.shared.ready.notify_one();
    }

    /// Closes the session after the frames already queued are written.
    pub(crate) fn close_after_drain(&self, code: u16, reason: &'static str) {
        self.close(code, reason, true);
    }

    /// Drops the backlog and closes the session at once.
    pub(crate) fn close_now(&self, code: u16, reason: &'static str) {
        self.close(code, reason, false);
    }

    fn close(&self, code: u16, reason: &'static str, drain: bool) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some((code, reason));
            state.drain = drain;
        }
        if !drain {
            state.drain = false;
            self.drop_backlog(&mut state);
        }
        drop(state);
        self.shared.closing.cancel();
        self.shared.ready.notify_one();
    }

    fn drop_backlog(&self, state: &mut State) {
        let bytes = std::mem::take(&mut state.bytes);
        state.queue.clear();
        self.shared.metrics.outbound_queued_bytes.sub(saturating_i64(bytes));
    }

    /// Resolves once the session is closing, for the reader to stop reading.
    pub(crate) fn closing(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.shared.closing.cancelled()
    }

    /// The close code the session is closing with, if it is.
    pub(crate) fn close_code(&self) -> Option<u16> {
        self.lock().close.map(|(code, _)| code)
    }

    /// The next frame to write, without waiting. After a close frame was
    /// handed out, nothing more is.
    pub(crate) fn try_next(&self) -> Option<Outgoing> {
        let mut state = self.lock();
        let next = pop(&mut state);
        drop(state);
        if let Some(Outgoing::Text(frame)) = &next {
            self.shared.metrics.outbound_queued_bytes.sub(saturating_i64(frame.len()));
        }
        next
    }

    /// Moves up to `max` items onto `out`, in the order they are to be
    /// written, under one lock (the writer, on another core than the
    /// producers, takes it once per write rather than once per frame);
    /// returns how many.
    pub(crate) fn take_into(&self, out: &mut Vec<Outgoing>, max: usize) -> usize {
        let mut state = self.lock();
        let mut bytes = 0;
        let mut taken = 0;
        while taken < max {
            let Some(next) = pop(&mut state) else { break };
            if let Outgoing::Text(frame) = &next {
                bytes += frame.len();
            }
            out.push(next);
            taken += 1;
        }
        drop(state);
        if bytes > 0 {
            self.shared.metrics.outbound_queued_bytes.sub(saturating_i64(bytes));
        }
        taken
    }

    /// The next frame to write; `None` once the close frame was handed out.
    pub(crate) async fn next(&self) -> Option<Outgoing> {
        loop {
            if let Some(outgoing) = self.try_next() {
                return Some(outgoing);
            }
            if self.lock().close_sent {
                return None;
            }
            self.shared.ready.notified().await;
        }
    }

    /// Frames and bytes queued now (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> (usize, usize) {
        let state = self.lock();
        (state.queue.len(), state.bytes)
    }
}

/// Takes the next item to write from `state`: a close without draining
/// first, then a due ping, the queued frames, and a draining close after
/// them; nothing once the close frame was taken. The global queued-bytes
/// gauge is the caller's to update, once per lock.
fn pop(state: &mut State) -> Option<Outgoing> {
    if state.close_sent {
        return None;
    }
    if let (Some((code, reason)), false) = (state.close, state.drain) {
        state.close_sent = true;
        return Some(Outgoing::Close { code, reason });
    }
    if std::mem::take(&mut state.ping_due) {
        return Some(Outgoing::Ping);
    }
    if let Some(frame) = state.queue.pop_front() {
        state.bytes -= frame.len();
        return Some(Outgoing::Text(frame));
    }
    let (code, reason) = state.close?;
    state.close_sent = true;
    Some(Outgoing::Close { code, reason })
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Keep the global gauge honest when a session ends with frames queued.
        let bytes = self.state.get_mut().map_or(0, |state| state.bytes);
        self.metrics.outbound_queued_bytes.sub(saturating_i64(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(messages_max: usize, bytes_max: usize) -> (Outbox, Metrics) {
        let metrics = Metrics::new().unwrap();
        (Outbox::new(messages_max, bytes_max, metrics.clone()), metrics)
    }

    #[test]
    fn overflow_drops_the_backlog_and_closes_with_slow_consumer() {
        let (outbox, metrics) = outbox(2, 1_000);
        outbox.push("a".into()).unwrap();
        outbox.push("b".into()).unwrap();
        assert_eq!(outbox.push("c".into()), Err(Refused::Overflow));
        assert_eq!(outbox.queued(), (0, 0));
        assert_eq!(metrics.outbound_queued_bytes.get(), 0);
        assert_eq!(metrics.outbound_overflows.get(), 1);
        assert!(matches!(
            outbox.try_next(),
            Some(Outgoing::Close { code: close_code::SLOW_CONSUMER, .. })
        ));
        assert!(outbox.try_next().is_none());
        assert_eq!(outbox.push("d".into()), Err(Refused::Closed));
    }

    #[test]
    fn the_byte_bound_holds_but_one_large_frame_fits_an_empty_queue() {
        let (outbox, metrics) = outbox(100, 10);
        outbox.push("0123456789abcdef".into()).unwrap();
        assert!(matches!(outbox.try_next(), Some(Outgoing::Text(_))));
        outbox.push("0123456".into()).unwrap();
        assert_eq!(outbox.push("0123456".into()), Err(Refused::Overflow));
        assert_eq!(metrics.outbound_queue_high_water_bytes.get(), 16);
    }

    #[test]
    fn a_draining_close_writes_the_backlog_first_and_pings_jump_the_queue() {
        let (outbox, _) = outbox(10, 1_000);
        outbox.push("a".into()).unwrap();
        outbox.ping();
        outbox.close_after_drain(close_code::GOING_AWAY, "bye");
        assert!(matches!(outbox.try_next(), Some(Outgoing::Ping)));
        assert!(matches!(outbox.try_next(), Some(Outgoing::Text(t)) if t.as_str() == "a"));
        assert!(matches!(outbox.try_next(), Some(Outgoing::Close { code: 1001, .. })));
        assert!(outbox.try_next().is_none());
    }

    #[test]
    fn take_into_hands_out_what_try_next_would_at_most_max_at_a_time() {
        let (outbox, metrics) = outbox(10, 1_000);
        for text in ["a", "bb", "ccc"] {
            outbox.push(text.into()).unwrap();
        }
        outbox.ping();
        outbox.close_after_drain(close_code::GOING_AWAY, "bye");
        let mut out = Vec::new();
        assert_eq!(outbox.take_into(&mut out, 3), 3);
        assert!(
            matches!(out.as_slice(), [Outgoing::Ping, Outgoing::Text(a), Outgoing::Text(b)] if a.as_str() == "a" && b.as_str() == "bb")
        );
        assert_eq!(outbox.queued(), (1, 3));
        assert_eq!(metrics.outbound_queued_bytes.get(), 3, "the gauge follows what was taken");
        out.clear();
        assert_eq!(outbox.take_into(&mut out, 10), 2);
        assert!(
            matches!(out.as_slice(), [Outgoing::Text(c), Outgoing::Close { code: 1001, .. }] if c.as_str() == "ccc")
        );
        assert_eq!(metrics.outbound_queued_bytes.get(), 0);
        assert_eq!(outbox.take_into(&mut out, 10), 0, "nothing after the close frame");
        assert!(outbox.try_next().is_none());
    }

    #[test]
    fn a_close_without_draining_goes_before_anything_else() {
        let (outbox, _) = outbox(10, 1_000);
        outbox.push("a".into()).unwrap();
        outbox.ping();
        outbox.close_now(close_code::GOING_AWAY, "now");
        let mut out = Vec::new();
        assert_eq!(outbox.take_into(&mut out, 10), 1);
        assert!(matches!(out.as_slice(), [Outgoing::Close { code: 1001, .. }]));
    }
}
