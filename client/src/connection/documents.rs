//! The shell's side of documents: the handles' event channels and `open`
//! waiters, and the transaction jobs the machine asks to run.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

use concord_engine::protocol::ErrorCode;
use concord_engine::session::{ClientSession, RunReport, Settlement, TransactionKey};
use concord_engine::time::Time;
use concord_engine::DocId;
use tokio::sync::{broadcast, oneshot};

use super::{DocChannels, Job, Waiters};
use crate::config::{DOC_EVENTS_QUEUED_MAX, PRESENCE_EVENTS_QUEUED_MAX};
use crate::document::{DocumentEvent, PresenceUpdate};
use crate::error::Error;

struct DocEvents {
    events: broadcast::Sender<DocumentEvent>,
    presence: broadcast::Sender<PresenceUpdate>,
}

impl DocEvents {
    fn new() -> Self {
        Self {
            events: broadcast::channel(DOC_EVENTS_QUEUED_MAX).0,
            presence: broadcast::channel(PRESENCE_EVENTS_QUEUED_MAX).0,
        }
    }

    fn channels(&self) -> DocChannels {
        DocChannels { events: self.events.downgrade(), presence: self.presence.downgrade() }
    }
}

/// A transaction the machine drives: its function and who waits for it.
struct Running {
    job: Job,
    settle: oneshot::Sender<Settlement>,
}

#[derive(Default)]
pub(super) struct Documents {
    docs: HashMap<DocId, DocEvents>,
    open_waiters: Waiters<DocId, Result<DocChannels, Error>>,
    running: HashMap<TransactionKey, Running>,
}

impl Documents {
    pub(super) fn open(
        &mut self,
        session: &mut ClientSession,
        doc: DocId,
        reply: oneshot::Sender<Result<DocChannels, Error>>,
    ) {
        self.docs.entry(doc.clone()).or_insert_with(DocEvents::new);
        self.open_waiters.entry(doc.clone()).or_default().push(reply);
        session.open(doc);
    }

    pub(super) fn opened(&mut self, doc: &DocId) {
        let Some(events) = self.docs.get(doc) else {
            return;
        };
        let channels = events.channels();
        for waiter in self.open_waiters.remove(doc).into_iter().flatten() {
            let _ = waiter.send(Ok(channels.clone()));
        }
    }

    pub(super) fn open_refused(&mut self, doc: &DocId, code: ErrorCode, message: String) {
        self.docs.remove(doc);
        for waiter in self.open_waiters.remove(doc).into_iter().flatten() {
            let error = match code {
                ErrorCode::Forbidden => Error::Forbidden { message: message.clone() },
                code => Error::Refused { code, message: message.clone() },
            };
            let _ = waiter.send(Err(error));
        }
    }

    pub(super) fn emit(&self, doc: &DocId, event: DocumentEvent) {
        if let Some(events) = self.docs.get(doc) {
            // No receiver is not an error: nobody is watching this document.
            let _ = events.events.send(event);
        }
    }

    pub(super) fn presence(&self, doc: &DocId, update: PresenceUpdate) {
        if let Some(events) = self.docs.get(doc) {
            let _ = events.presence.send(update);
        }
    }

    pub(super) fn transact(
        &mut self,
        session: &mut ClientSession,
        doc: &DocId,
        attempts_max: u32,
        job: Job,
        settle: oneshot::Sender<Settlement>,
        now: Time,
    ) {
        let key = session.transact(doc, attempts_max, now);
        self.running.insert(key, Running { job, settle });
    }

    /// Runs a transaction's function on the machine's replica, as the
    /// machine asked, and reports what it did.
    pub(super) fn run(&mut self, session: &mut ClientSession, key: TransactionKey, now: Time) {
        let Some(running) = self.running.get_mut(&key) else {
            return;
        };
        let Some((replica, tx_id)) = session.begin_run(key) else {
            return;
        };
        // A panicking function must not take the connection task down with
        // it; the machine reloads the replica its half-done writes touched.
        let report = std::panic::catch_unwind(AssertUnwindSafe(|| (running.job)(replica, tx_id)))
            .unwrap_or(RunReport::Panicked);
        session.end_run(key, report, now);
    }

    pub(super) fn settled(&mut self, key: TransactionKey, settlement: Settlement) {
        if let Some(running) = self.running.remove(&key) {
            // The waiter may have gone; the transaction's outcome stands.
            let _ = running.settle.send(settlement);
        }
    }
}
