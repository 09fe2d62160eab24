//! Documents: the handle to one opened document, its event streams, and
//! `transact`, the transaction loop (docs/semantics.md).
//!
//! ## The transaction loop
//! `transact(f)` hands `f` to the connection task (the replica's only
//! owner), whose `ClientSession` runs it and acts on what each run did:
//! - wrote nothing: the result stands locally, no server round trip;
//! - wrote: the writes are pending in the optimistic view at once; the loop
//!   waits for the server's outcome; a retryable rejection arrives after the
//!   changes that caused it, so the loop re-runs `f` on the current replica,
//!   at most `attempts_max` times;
//! - called `retry()`: the loop sleeps until a change (remote, or a local
//!   pending write) overlaps something the run read, then re-runs;
//! - read another pending transaction's writes (`Blocked`): it waits for a
//!   pending transaction to resolve, then re-runs.
//!
//! While the document is contended (this client's transactions on it were
//! rejected recently), each re-run after a rejection first takes a
//! jittered pause whose window grows with the contention level; see the
//! engine's `session::pacing` for why the pause is per document rather
//! than per transaction.
//!
//! The transaction is driven by the connection task: once awaited, a transaction proceeds to its
//! outcome even if the caller stops waiting, and its after-commit
//! continuation runs exactly once, after the commit, never for a run that did
//! not commit.

use std::convert::Infallible;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use concord_engine::protocol::PresenceEvent;
use concord_engine::replica::{Abort, RunOutcome, Tx};
use concord_engine::session::{RunReport, Settlement};
use concord_engine::{Change, DocId, PatchError, Pointer, Rejection, TxId, Version};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::connection::{Command, DocChannels, Job};
use crate::error::{Error, TransactError};

/// What a transaction function returns: its value, or how it stopped
/// (`retry()`, a failed write, or the function's own error `E`).
pub type TxResult<T, E = Infallible> = Result<T, Abort<E>>;

/// Something that happened to a document's replica, in version order.
#[derive(Debug, Clone)]
pub enum DocumentEvent {
    /// A committed change was applied: another client's, or one of this
    /// client's own transactions.
    Changed(Arc<Change>),
    /// The replica was replaced by a snapshot at `version` (a server resync,
    /// history no longer available after a reconnect, or a local error):
    /// re-read the value instead of applying changes.
    Reset { version: Version },
    /// This receiver fell more than `DOC_EVENTS_QUEUED_MAX` events behind and
    /// lost `missed` of them: re-read the value.
    Lagged { missed: u64 },
}

/// A presence event on an open document.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceUpdate {
    /// The session whose presence changed.
    pub session: String,
    pub event: PresenceEvent,
    pub state: Value,
}

/// What a committed (or read-only) transaction left behind, for the
/// after-commit continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// The id the transaction committed under; `None` for a read-only one.
    pub tx_id: Option<TxId>,
    /// The version it committed at (or, read-only, the replica's version).
    pub version: Version,
    /// How many times the function ran.
    pub runs: u32,
}

/// A handle to an opened document. Cheap to clone; every clone talks to the
/// same replica.
#[derive(Clone)]
pub struct Document {
    client: Client,
    id: DocId,
    channels: DocChannels,
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Document").field("id", &self.id).finish()
    }
}

impl Document {
    pub(crate) fn new(client: Client, id: DocId, channels: DocChannels) -> Self {
        Self { client, id, channels }
    }

    pub fn id(&self) -> &DocId {
        &self.id
    }

    /// The optimistic view: the confirmed state with this client's pending
    /// writes on top.
    pub async fn value(&self) -> Result<Value, Error> {
        Ok(self.read(Pointer::root()).await?.0.unwrap_or(Value::Null))
    }

    /// The value at `pointer` in the optimistic view, if present.
    pub async fn get(&self, pointer: &Pointer) -> Result<Option<Value>, Error> {
        Ok(self.read(pointer.clone()).await?.0)
    }

    /// The confirmed version: every change up to it has been applied.
    pub async fn version(&self) -> Result<Version, Error> {
        Ok(self.read(Pointer::root()).await?.1)
    }

    async fn read(&self, pointer: Pointer) -> Result<(Option<Value>, Version), Error> {
        let (reply, answer) = oneshot::channel();
        self.client.command(Command::Read { doc: self.id.clone(), pointer, reply }).await?;
        answer.await.map_err(|_| Error::Closed)
    }

    /// Events from now on. To follow a document without a gap, take the
    /// receiver first, then read the value and version, and skip events at
    /// or below that version.
    pub fn changes(&self) -> Changes {
        let receiver = match self.channels.events.upgrade() {
            Some(sender) => sender.subscribe(),
            None => closed_receiver(),
        };
        Changes { receiver }
    }

    /// Sets this session's presence on the document (`null` clears it). It is
    /// re-sent after every reconnect and vanishes when the client closes.
    pub async fn set_presence(&self, state: Value) -> Result<(), Error> {
        self.client.command(Command::SetPresence { doc: self.id.clone(), state }).await
    }

    /// Other sessions' presence events on this document, from now on.
    pub fn presence(&self) -> PresenceEvents {
        let receiver = match self.channels.presence.upgrade() {
            Some(sender) => sender.subscribe(),
            None => closed_receiver(),
        };
        PresenceEvents { receiver, missed: 0 }
    }

    /// A transaction running `f` on the replica; `.await` it to run it. `f`
    /// may run several times (after rejections, STM retries, or while
    /// blocked behind pending writes), so it must have no side effects: put
    /// those in [`Transact::after_commit`].
    ///
    /// ```no_run
    /// # async fn demo(doc: concord_client::Document) -> Result<(), Box<dyn std::error::Error>> {
    /// use concord_client::{Pointer, TxResult};
    /// let count = Pointer::parse("/count")?;
    /// let next = doc
    ///     .transact(move |tx| -> TxResult<i64> {
    ///         let next = tx.get_i64(&count).unwrap_or(0) + 1;
    ///         tx.set(&count, next.into())?;
    ///         Ok(next)
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn transact<T, E, F>(&self, f: F) -> Transact<T, E>
    where
        F: Fn(&mut Tx<'_>) -> Result<T, Abort<E>> + Send + Sync + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        Transact {
            doc: self.clone(),
            function: Arc::new(f),
            attempts_max: self.client.config().transact_attempts_max,
            after_commit: None,
        }
    }
}

fn closed_receiver<T: Clone>() -> broadcast::Receiver<T> {
    broadcast::channel(1).1
}

/// Document events, from [`Document::changes`].
#[derive(Debug)]
pub struct Changes {
    receiver: broadcast::Receiver<DocumentEvent>,
}

impl Changes {
    /// The next event; `None` once the client is closed.
    pub async fn next(&mut self) -> Option<DocumentEvent> {
        match self.receiver.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Some(DocumentEvent::Lagged { missed })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// Presence events, from [`Document::presence`].
#[derive(Debug)]
pub struct PresenceEvents {
    receiver: broadcast::Receiver<PresenceUpdate>,
    missed: u64,
}

impl PresenceEvents {
    /// The next event; `None` once the client is closed.
    pub async fn next(&mut self) -> Option<PresenceUpdate> {
        loop {
            match self.receiver.recv().await {
                Ok(update) => return Some(update),
                Err(broadcast::error::RecvError::Lagged(count)) => self.missed += count,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// How many events this receiver lost by falling behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

type Function<T, E> = Arc<dyn Fn(&mut Tx<'_>) -> Result<T, Abort<E>> + Send + Sync>;
type Continuation<T> = Box<dyn FnOnce(&T, &Receipt) + Send>;

/// A transaction to run, from [`Document::transact`]. Configure it, then
/// `.await` it.
#[must_use = "a transaction does nothing until awaited"]
pub struct Transact<T, E> {
    doc: Document,
    function: Function<T, E>,
    attempts_max: u32,
    after_commit: Option<Continuation<T>>,
}

impl<T, E> fmt::Debug for Transact<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transact")
            .field("doc", &self.doc.id)
            .field("attempts_max", &self.attempts_max)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static, E: Send + 'static> Transact<T, E> {
    /// Most retryable rejections to absorb before giving up (default
    /// `ClientConfig::transact_attempts_max`).
    pub fn attempts_max(mut self, attempts_max: u32) -> Self {
        self.attempts_max = attempts_max;
        self
    }

    /// Runs `continuation` exactly once when the transaction has committed
    /// (or returned read-only), with its value and receipt; never for a run
    /// that did not commit. It runs even if the caller stopped waiting.
    pub fn after_commit(
        mut self,
        continuation: impl FnOnce(&T, &Receipt) + Send + 'static,
    ) -> Self {
        self.after_commit = Some(Box::new(continuation));
        self
    }

    /// Starts the transaction now, in its own task, without waiting for it;
    /// `.await` the returned future for the outcome. (`.await` on the
    /// `Transact` itself does the same.)
    pub fn spawn(self) -> TransactFuture<T, E> {
        TransactFuture { task: tokio::spawn(self.run()) }
    }

    async fn run(self) -> Result<T, TransactError<E>> {
        let Transact { doc, function, attempts_max, after_commit } = self;
        let slot: Slot<T, E> = Arc::default();
        let job = make_job(function, slot.clone());
        let (settle, settled) = oneshot::channel();
        let command = Command::Transact { doc: doc.id.clone(), attempts_max, job, settle };
        doc.client.command(command).await.map_err(|_| TransactError::Closed)?;
        // The machine runs the function (pausing while the document is
        // contended, re-running after retryable rejections and STM wake-ups)
        // and says how it ended; the last run's value is in the slot.
        let settlement = settled.await.map_err(|_| TransactError::Closed)?;
        let last_run = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        let value = |last_run: Option<RunValue<T, E>>| match last_run {
            Some(RunValue::Value(value)) => Ok(value),
            _ => Err(TransactError::Closed),
        };
        let (value, receipt) = match settlement {
            Settlement::ReadOnly { version, runs } => {
                (value(last_run)?, Receipt { tx_id: None, version, runs })
            }
            Settlement::Committed { tx_id, version, runs } => {
                (value(last_run)?, Receipt { tx_id: Some(tx_id), version, runs })
            }
            Settlement::Aborted { .. } => {
                return Err(match last_run {
                    Some(RunValue::Patch(error)) => TransactError::Patch(error),
                    Some(RunValue::Failed(error)) => TransactError::Aborted(error),
                    _ => TransactError::Closed,
                })
            }
            // Refusals of the server's rules: never re-run.
            Settlement::Rejected {
                rejection: Rejection::Forbidden { op_index, pointer, message },
                ..
            } => return Err(TransactError::Forbidden { op_index, pointer, message }),
            Settlement::Rejected { rejection: Rejection::Invalid { pointer, message }, .. } => {
                return Err(TransactError::Invalid { pointer, message })
            }
            Settlement::Rejected { rejection: Rejection::Vetoed { message }, .. } => {
                return Err(TransactError::Vetoed { message })
            }
            Settlement::Rejected { rejection, attempts } => {
                return Err(TransactError::Rejected { rejection, attempts })
            }
            Settlement::RateLimited { attempts } => {
                return Err(TransactError::RateLimited { attempts })
            }
            Settlement::OutcomeUnknown { .. } => return Err(TransactError::OutcomeUnknown),
            Settlement::Refused { code, message } => {
                return Err(TransactError::Refused { code, message })
            }
            Settlement::Panicked => return Err(TransactError::Panicked),
            Settlement::Closed => return Err(TransactError::Closed),
        };
        if let Some(continuation) = after_commit {
            continuation(&value, &receipt);
        }
        Ok(value)
    }
}

impl<T: Send + 'static, E: Send + 'static> IntoFuture for Transact<T, E> {
    type Output = Result<T, TransactError<E>>;
    type IntoFuture = TransactFuture<T, E>;

    fn into_future(self) -> Self::IntoFuture {
        self.spawn()
    }
}

/// A running transaction. Dropping it does not stop the transaction: it runs
/// to its outcome (and its after-commit continuation) regardless.
#[derive(Debug)]
pub struct TransactFuture<T, E> {
    task: JoinHandle<Result<T, TransactError<E>>>,
}

impl<T, E> Future for TransactFuture<T, E> {
    type Output = Result<T, TransactError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.task).poll(cx).map(|joined| match joined {
            Ok(result) => result,
            // Only an after-commit continuation can panic in the task.
            Err(error) if error.is_panic() => Err(TransactError::Panicked),
            Err(_) => Err(TransactError::Closed),
        })
    }
}

/// What the last run of a transaction function produced.
enum RunValue<T, E> {
    Value(T),
    Patch(PatchError),
    Failed(E),
}

/// Where a transaction's job leaves its last run's value for the waiting
/// transaction.
type Slot<T, E> = Arc<Mutex<Option<RunValue<T, E>>>>;

fn make_job<T, E>(function: Function<T, E>, slot: Slot<T, E>) -> Job
where
    T: Send + 'static,
    E: Send + 'static,
{
    Box::new(move |replica, tx_id| {
        let outcome = replica.run(tx_id, |tx| function(tx));
        let report = RunReport::of(&outcome);
        let value = match outcome {
            RunOutcome::ReadOnly(value) | RunOutcome::Submit { value, .. } => {
                RunValue::Value(value)
            }
            RunOutcome::Patch(error) => RunValue::Patch(error),
            RunOutcome::Failed(error) => RunValue::Failed(error),
            // Nothing to keep: the machine runs it again.
            RunOutcome::Retry { .. } | RunOutcome::Blocked => return report,
        };
        *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(value);
        report
    })
}
