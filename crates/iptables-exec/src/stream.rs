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
use std::time::Duration;

use l3agent_iptables::{Family, Feed, IptablesModel, RuleSpec, Table};
use l3agent_process::{Fed, Killer};

use crate::applied::OneShot;

/// Below this many rules in a table, streaming it gains nothing worth a thread.
const STREAM_RULES: usize = 2048;

/// How long a table to stream waits for the kernel read: an empty namespace is read in
/// about 10 ms; at 50,000 rules it takes a quarter of a second, which the model build then
/// overlaps instead.
const READ_WAIT: Duration = Duration::from_millis(40);

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

/// The thread writing a streamed restore's input, and what kills the restore (while a
/// write may be blocked on a full pipe: the child is not reaped before the thread ends).
#[derive(Debug)]
pub struct Writer {
    killer: Killer,
    thread: JoinHandle<Fed>,
    /// Told when the thread is done writing (in a mutex: the stream is shared with the model
    /// build's threads, which never touch it).
    done: Mutex<mpsc::Receiver<()>>,
    /// How long the restore may take to read what it was given.
    timeout: Duration,
}

impl Writer {
    /// Waits until everything queued is written (a restore that stops reading is killed after
    /// the time limit); the restore, to be given the rest.
    pub fn written(self) -> Option<Fed> {
        let finished = self
            .done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recv_timeout(self.timeout);
        if finished.is_err() {
            self.killer.kill();
        }
        self.thread.join().ok()
    }

    /// Kills the restore (nothing it was given is applied) and reaps it.
    pub fn kill(self) {
        self.killer.kill();
        if let Ok(fed) = self.thread.join() {
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
    pub(crate) fn start(fed: Fed, family: Family, prefix: String, timeout: Duration) -> Streamed {
        let killer = fed.killer();
        let (tx, rx) = mpsc::channel::<(usize, Arc<str>)>();
        let (done_tx, done) = mpsc::channel();
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
            let _ = done_tx.send(());
            fed
        });
        Streamed {
            family,
            prefix,
            queued: Mutex::new(Vec::new()),
            pieces: Some(tx),
            writer: Some(Writer {
                killer,
                thread,
                done: Mutex::new(done),
                timeout,
            }),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(program: &str, args: &[&str]) -> Fed {
        let path = l3agent_process::find_program(program).unwrap();
        l3agent_process::start(&path, args, None, Duration::from_secs(10)).unwrap()
    }

    fn gone(pid: u32) -> bool {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
        nix::sys::signal::kill(pid, None).is_err()
    }

    /// Pieces arriving out of order are written in order after the prefix; the text known at
    /// the end is exactly what the process read, and the rest follows it.
    #[test]
    fn pieces_are_written_in_order_and_the_rest_follows() {
        let s = Streamed::start(
            fed("cat", &[]),
            Family::V4,
            "*filter\n".into(),
            Duration::from_secs(10),
        );
        for i in [2, 0, 3, 1] {
            s.piece(i, format!("-A c{i}\n"));
        }
        let (text, writer) = s.end().unwrap();
        assert_eq!(text, "*filter\n-A c0\n-A c1\n-A c2\n-A c3\n");
        let out = writer.written().unwrap().finish(b"COMMIT\n").unwrap();
        assert_eq!(out.stdout, format!("{text}COMMIT\n"));
    }

    /// A piece after a missing one is neither written nor counted as written.
    #[test]
    fn a_gap_stops_the_text_where_the_writing_stops() {
        let s = Streamed::start(
            fed("cat", &[]),
            Family::V4,
            "h\n".into(),
            Duration::from_secs(10),
        );
        s.piece(0, "a\n".into());
        s.piece(2, "c\n".into());
        let (text, writer) = s.end().unwrap();
        assert_eq!(text, "h\na\n");
        assert_eq!(writer.written().unwrap().finish(b"").unwrap().stdout, text);
    }

    /// Dropped without being ended (an invalid file), the restore is killed and reaped, even
    /// while a write is blocked on a full pipe; a restore that stops reading is killed after
    /// the time limit.
    #[test]
    fn a_stream_dropped_or_stuck_kills_its_process() {
        let f = fed("sleep", &["30"]);
        let pid = f.id();
        let s = Streamed::start(f, Family::V4, String::new(), Duration::from_secs(10));
        s.piece(0, "x".repeat(1 << 20));
        drop(s);
        assert!(gone(pid));

        let f = fed("sleep", &["30"]);
        let pid = f.id();
        let s = Streamed::start(f, Family::V4, String::new(), Duration::from_millis(200));
        s.piece(0, "x".repeat(1 << 20));
        let (_, writer) = s.end().unwrap();
        let fed = writer.written().unwrap();
        let out = fed.finish(b"").unwrap();
        assert_eq!(out.code, None, "killed by a signal");
        assert!(gone(pid));
    }
}
