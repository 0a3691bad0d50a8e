//! A table streamed into `iptables-restore` while its model is still being built: the cold
//! path of a one-shot apply at tens of thousands of rules (issue 14).
//!
//! `iptables-restore` spends about a third of a large restore parsing its input and the rest in
//! the kernel's commit, which happens only at `COMMIT`. A one-shot apply that waited for its
//! whole model before starting the restore paid for both in sequence; streamed, the restore
//! parses the rules already read while the rest of the file is read, on the other core.
//!
//! Nothing reaches the kernel before the whole file is valid: the stream writes the table's
//! header, the declarations of the chains the plan will create and the `-A` lines of rules
//! appended to them, never `COMMIT`. Once the model is built and planned, the plan is reordered
//! to begin with exactly what was written ([`l3agent_iptables::Plan::lead_with`], which
//! refuses anything that would change what the plan does) and the restore gets the rest. An
//! invalid file, a plan that does not begin that way, or any early return kills the restore
//! before `COMMIT`: nothing applied (then the plan is restored whole, as without a stream).

use std::collections::{BTreeMap, HashSet};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use l3agent_iptables::{Family, Feed, IptablesModel, RuleSpec, Table};
use l3agent_process::Fed;

use crate::applied::OneShot;

/// Below this many rules in a table, streaming it gains nothing worth a thread.
const STREAM_RULES: usize = 2048;

/// How long a table to stream waits for the kernel read: an empty namespace is read in
/// about 10 ms; at 50,000 rules it takes a quarter of a second, which the model build then
/// overlaps instead.
const READ_WAIT: std::time::Duration = std::time::Duration::from_millis(40);

/// A restore whose input is being written: the prefix of a table block, then pieces of `-A`
/// lines in order as they arrive. Dropped without [`Streamed::end`], it kills the restore.
#[derive(Debug)]
pub struct Streamed {
    family: Family,
    prefix: String,
    /// Every piece queued, kept to know what the writer writes without waiting for it.
    queued: Mutex<Vec<(usize, Arc<str>)>>,
    pieces: Option<mpsc::Sender<(usize, Arc<str>)>>,
    writer: Option<Writer>,
}

/// The thread writing a streamed restore's input, and the restore's pid (to kill it while a
/// write may be blocked on a full pipe: the child is not reaped before the thread ends).
#[derive(Debug)]
pub struct Writer {
    pid: u32,
    thread: JoinHandle<Fed>,
}

impl Writer {
    /// Waits until everything queued is written; the restore, to be given the rest.
    pub fn written(self) -> Option<Fed> {
        self.thread.join().ok()
    }

    /// Kills the restore (nothing it was given is applied) and reaps it.
    pub fn kill(self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(fed) = self.written() {
            fed.abort();
        }
    }
}

/// The pieces from 0 up to the first one missing, in order (what the writer writes).
fn in_order<T>(mut pieces: Vec<(usize, T)>) -> impl Iterator<Item = T> {
    pieces.sort_unstable_by_key(|(i, _)| *i);
    pieces
        .into_iter()
        .enumerate()
        .take_while(|(n, (i, _))| n == i)
        .map(|(_, (_, t))| t)
}

impl Streamed {
    /// Writes `prefix` to `fed`, then each piece in index order, on a thread of its own (a full
    /// pipe blocks it, never the model build).
    pub(crate) fn start(fed: Fed, family: Family, prefix: String) -> Streamed {
        let pid = fed.id();
        let (tx, rx) = mpsc::channel::<(usize, Arc<str>)>();
        let head = prefix.clone();
        let thread = std::thread::spawn(move || {
            let mut fed = fed;
            // A failed write means the restore exited (it refused a line): what it said is
            // read when it is finished.
            let mut open = fed.write(head.as_bytes()).is_ok();
            let mut next = 0;
            let mut waiting = BTreeMap::new();
            for (index, text) in rx {
                waiting.insert(index, text);
                while let Some(text) = waiting.remove(&next) {
                    next += 1;
                    open = open && fed.write(text.as_bytes()).is_ok();
                }
            }
            tracing::debug!(pieces = next, "streamed input written");
            fed
        });
        Streamed {
            family,
            prefix,
            queued: Mutex::new(Vec::new()),
            pieces: Some(tx),
            writer: Some(Writer { pid, thread }),
        }
    }

    /// The family of the restore.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Queues piece `index` (see [`Feed::lines`]).
    fn piece(&self, index: usize, text: String) {
        let text: Arc<str> = text.into();
        if let Some(tx) = &self.pieces {
            self.queued
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((index, text.clone()));
            let _ = tx.send((index, text));
        }
    }

    /// Takes no more pieces: the whole text the restore is being given (while the writer may
    /// still be writing it), and the writer.
    pub(crate) fn end(mut self) -> Option<(String, Writer)> {
        drop(self.pieces.take());
        let queued = std::mem::take(&mut *self.queued.lock().unwrap_or_else(|e| e.into_inner()));
        let mut text = std::mem::take(&mut self.prefix);
        text.reserve(queued.iter().map(|(_, t)| t.len()).sum());
        for piece in in_order(queued) {
            text.push_str(&piece);
        }
        Some((text, self.writer.take()?))
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        // Not ended: nothing may commit.
        drop(self.pieces.take());
        if let Some(writer) = self.writer.take() {
            writer.kill();
        }
    }
}

/// The [`Feed`] of a one-shot apply: when the model build reaches its first table of at least
/// [`STREAM_RULES`] rules, it waits for the kernel read (the [`OneShot`] sent by the thread
/// that read it) and, if the read was the backend detection's, starts streaming that table
/// (see [`OneShot::stream_start`]). `E` is the caller's error for a one-shot that could not
/// begin.
#[derive(Debug)]
pub struct StreamFeed<E> {
    source: Mutex<Source<E>>,
    takes: OnceLock<HashSet<String>>,
    stream: OnceLock<Streamed>,
}

#[derive(Debug)]
struct Source<E> {
    from: mpsc::Receiver<Result<OneShot, E>>,
    shot: Option<Result<OneShot, E>>,
    tried: bool,
}

impl<E: Send> StreamFeed<E> {
    /// A feed, and where the reading thread sends the one-shot apply once it has read the
    /// kernel ([`OneShot::read`]).
    pub fn new() -> (StreamFeed<E>, mpsc::Sender<Result<OneShot, E>>) {
        let (tx, rx) = mpsc::channel();
        let feed = StreamFeed {
            source: Mutex::new(Source {
                from: rx,
                shot: None,
                tried: false,
            }),
            takes: OnceLock::new(),
            stream: OnceLock::new(),
        };
        (feed, tx)
    }

    /// After the build: the one-shot apply (waited for if no table asked for it; `None` if the
    /// reading thread ended without sending it) and the stream, if one started.
    pub fn finish(self) -> (Option<Result<OneShot, E>>, Option<Streamed>) {
        let source = self.source.into_inner().unwrap_or_else(|e| e.into_inner());
        let shot = source.shot.or_else(|| source.from.recv().ok());
        (shot, self.stream.into_inner())
    }
}

impl<E: Send> Feed for StreamFeed<E> {
    fn table(
        &self,
        model: &IptablesModel,
        family: Family,
        table: Table,
        rules: &[RuleSpec<'_>],
    ) -> bool {
        if rules.len() < STREAM_RULES {
            return false;
        }
        let mut source = self.source.lock().unwrap_or_else(|e| e.into_inner());
        if source.tried {
            return false;
        }
        // Waited for briefly: a kernel read still running after that is a namespace with much
        // in it (where the model is built while it runs, and little would be streamed).
        if source.shot.is_none() {
            source.shot = source.from.recv_timeout(READ_WAIT).ok();
        }
        let source = &mut *source;
        let Some(Ok(shot)) = &mut source.shot else {
            return false;
        };
        source.tried = true;
        let Some((stream, created)) = shot.stream_start(model, family, table) else {
            return false;
        };
        // A chain with a rule at its top is planned top rules first: not streamed.
        let topped: HashSet<String> = rules
            .iter()
            .filter(|r| r.wrap && r.top)
            .filter_map(|r| model.kernel_chain(r.chain, true).ok())
            .collect();
        let takes = created
            .into_iter()
            .filter(|c| !topped.contains(c))
            .collect();
        let _ = self.takes.set(takes);
        let _ = self.stream.set(stream);
        true
    }

    fn takes(&self, chain: &str) -> bool {
        self.takes.get().is_some_and(|t| t.contains(chain))
    }

    fn lines(&self, index: usize, text: String) {
        if let Some(stream) = self.stream.get() {
            stream.piece(index, text);
        }
    }
}
