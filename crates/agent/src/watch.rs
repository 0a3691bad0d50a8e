//! The file front end's triggers: changes to the config file and SIGHUP (`systemctl
//! reload`), both delivered as [`WatchEvent`]s on one channel.
//!
//! The watcher watches the file's *directory* with inotify and filters for the file's name,
//! because the ways people and tools change a file rarely keep its inode: `mv tmp FILE`
//! (atomic rename, what configuration management does), editors that write a temporary
//! file and rename it over the original, and delete-then-recreate all replace the inode, and
//! a watch on the file itself would go silent after the first of them. Bursts (an editor's
//! several writes, a truncate then a write) are debounced into one event.
//!
//! Not seen: a change to the target of a symbolic link `FILE` that lives in another
//! directory, or to a directory on the way being renamed. SIGHUP covers those.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tracing::{debug, warn};

use crate::wake::{self, Background, Ready, Waker};
use crate::AgentError;

/// Why the front end should re-read the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEvent {
    /// The file was written, replaced, created or removed (after the debounce delay).
    Changed,
    /// SIGHUP: an operator asked for a reload (`systemctl reload`), whether or not the file
    /// changed.
    Reload,
    /// A front end fed the agent (see `daemon::Feed`): its events are waiting.
    Fed,
    /// The watched directory was removed or renamed: no more [`WatchEvent::Changed`] will
    /// come (SIGHUP still works). The front end should log it loudly.
    WatchLost,
}

/// How file events are debounced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    /// An event is sent once the file has been quiet this long.
    pub debounce: Duration,
    /// ... or at the latest this long after the first change of a burst, so a file that
    /// is written continuously is still picked up.
    pub max_delay: Duration,
    /// A file renamed into place (an atomic replace: complete by construction) with no write
    /// after it fires this soon instead of after the quiet period (by default at once: the
    /// events queued with it are read first, so a burst already there is one firing). Writes
    /// in place keep the quiet period: an editor may close and write again.
    pub settle: Duration,
}

impl Default for WatchConfig {
    /// 200 ms quiet, at most 2 s late; at once after a rename into place.
    fn default() -> WatchConfig {
        WatchConfig {
            debounce: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            settle: Duration::ZERO,
        }
    }
}

/// Turns a burst of notes into one firing: fires `quiet` after the last note, or
/// `max_delay` after the first, whichever is earlier; `settle` after a note of a completed
/// write ([`Debouncer::note_complete`]) that no other note followed. Pure (the time is passed in), so the
/// watcher's timing rules are tested without sleeping; usable by any front end with bursty
/// input.
#[derive(Debug, Clone)]
pub struct Debouncer {
    quiet: Duration,
    max_delay: Duration,
    settle: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
    /// The last note was of a completed write.
    complete: bool,
}

impl Debouncer {
    /// A debouncer with nothing pending.
    pub fn new(config: WatchConfig) -> Debouncer {
        Debouncer {
            quiet: config.debounce,
            max_delay: config.max_delay.max(config.debounce),
            settle: config.settle.min(config.debounce),
            first: None,
            last: None,
            complete: false,
        }
    }

    /// Something happened at `now` (a write that may go on).
    pub fn note(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.complete = false;
    }

    /// A write completed at `now` (the file was renamed into place).
    pub fn note_complete(&mut self, now: Instant) {
        self.note(now);
        self.complete = true;
    }

    /// When the pending burst fires, if one is pending.
    pub fn deadline(&self) -> Option<Instant> {
        let quiet = if self.complete {
            self.settle
        } else {
            self.quiet
        };
        match (self.first, self.last) {
            (Some(first), Some(last)) => Some((last + quiet).min(first + self.max_delay)),
            _ => None,
        }
    }

    /// Whether the pending burst fires at `now`; if so, it is cleared.
    pub fn fire(&mut self, now: Instant) -> bool {
        if self.deadline().is_some_and(|d| d <= now) {
            self.first = None;
            self.last = None;
            self.complete = false;
            true
        } else {
            false
        }
    }
}

/// Watches one config file (through its directory) on a thread of its own, sending
/// [`WatchEvent::Changed`] per debounced burst. Stops when dropped, when [`stop`]ped, or
/// when the receiver is gone.
///
/// [`stop`]: FileWatcher::stop
#[derive(Debug)]
pub struct FileWatcher {
    thread: Background,
}

/// The inotify events that can mean the file's content changed. `IN_MODIFY` keeps a burst
/// of writes open until the file is quiet; the others are the end of a write, a rename in
/// or out, a creation and a removal.
fn file_events() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
}

/// Events on the directory itself that end the watch.
fn lost_events() -> AddWatchFlags {
    AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_IGNORED
}

impl FileWatcher {
    /// Starts watching `file` (which need not exist yet; its directory must).
    pub fn start(
        file: &Path,
        config: WatchConfig,
        tx: Sender<WatchEvent>,
    ) -> Result<FileWatcher, AgentError> {
        let name = file
            .file_name()
            .ok_or_else(|| AgentError::WatchPath(file.to_path_buf()))?
            .to_os_string();
        let dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let watch_err = |source| AgentError::Watch {
            path: dir.clone(),
            source,
        };
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(watch_err)?;
        inotify
            .add_watch(
                &dir,
                file_events()
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF
                    | AddWatchFlags::IN_ONLYDIR,
            )
            .map_err(watch_err)?;
        let thread = Background::spawn("config watcher", "config-watch", move |waker| {
            watch_loop(&inotify, &waker, &name, &dir, config, &tx)
        })?;
        Ok(FileWatcher { thread })
    }

    /// Stops the watcher and waits for its thread (which returns within one `poll`).
    pub fn stop(mut self) {
        self.thread.halt();
    }
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.thread.halt();
    }
}

fn watch_loop(
    inotify: &Inotify,
    waker: &Waker,
    name: &OsStr,
    dir: &Path,
    config: WatchConfig,
    tx: &Sender<WatchEvent>,
) {
    let mut debouncer = Debouncer::new(config);
    loop {
        match wake::wait(inotify.as_fd(), waker, debouncer.deadline()) {
            Ready::Woken => return,
            Ready::Timeout => {}
            Ready::Error => std::thread::sleep(Duration::from_millis(50)),
            Ready::Fd => {
                let mut lost = false;
                // Drain what is queued; the descriptor is non-blocking, so this ends at EAGAIN.
                loop {
                    match inotify.read_events() {
                        Ok(events) if !events.is_empty() => {
                            for ev in events {
                                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                                    // Events were dropped: assume the file was among them.
                                    debouncer.note(Instant::now());
                                } else if ev.name.as_deref() == Some(name)
                                    && ev.mask.intersects(file_events())
                                {
                                    debug!(mask = ?ev.mask, "config file event");
                                    if ev.mask.contains(AddWatchFlags::IN_MOVED_TO) {
                                        debouncer.note_complete(Instant::now());
                                    } else {
                                        debouncer.note(Instant::now());
                                    }
                                } else if ev.name.is_none() && ev.mask.intersects(lost_events()) {
                                    lost = true;
                                }
                            }
                        }
                        Ok(_) | Err(nix::errno::Errno::EAGAIN) => break,
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => {
                            warn!(dir = %dir.display(), error = %e, "reading inotify events failed");
                            let _ = tx.send(WatchEvent::WatchLost);
                            return;
                        }
                    }
                }
                if lost {
                    if debouncer.deadline().is_some() {
                        let _ = tx.send(WatchEvent::Changed);
                    }
                    warn!(dir = %dir.display(), "the config directory went away; file changes are no longer seen (SIGHUP still reloads)");
                    let _ = tx.send(WatchEvent::WatchLost);
                    return;
                }
            }
        }
        if debouncer.fire(Instant::now()) && tx.send(WatchEvent::Changed).is_err() {
            return;
        }
    }
}

/// Delivers SIGHUP as [`WatchEvent::Reload`] on the watcher's channel, from a thread of its
/// own (signal-hook's self-pipe: nothing runs in the signal handler but a write). Installing
/// it also keeps SIGHUP from killing the process, its default action.
#[derive(Debug)]
pub struct SighupListener {
    handle: signal_hook::iterator::Handle,
    thread: Option<JoinHandle<()>>,
}

impl SighupListener {
    /// Installs the handler and starts the forwarding thread.
    pub fn start(tx: Sender<WatchEvent>) -> Result<SighupListener, AgentError> {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
            .map_err(AgentError::Signal)?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("sighup".into())
            .spawn(move || {
                for _ in signals.forever() {
                    if tx.send(WatchEvent::Reload).is_err() {
                        return;
                    }
                }
            })
            .map_err(|source| AgentError::Thread {
                what: "SIGHUP",
                source,
            })?;
        Ok(SighupListener {
            handle,
            thread: Some(thread),
        })
    }

    /// Stops forwarding and waits for the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SighupListener {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::sync::mpsc::{self, Receiver, RecvTimeoutError};

    use crate::scratch::Scratch;

    const QUICK: WatchConfig = WatchConfig {
        debounce: Duration::from_millis(250),
        max_delay: Duration::from_secs(3),
        settle: Duration::from_millis(5),
    };
    /// Long enough for an event that is coming on a busy 2-core machine.
    const ARRIVES: Duration = Duration::from_secs(5);
    /// How long the absence of an event is watched for: several debounce periods.
    const QUIET: Duration = Duration::from_millis(750);

    fn watching(tag: &str) -> (Scratch, PathBuf, FileWatcher, Receiver<WatchEvent>) {
        let dir = Scratch::new(tag);
        let file = dir.0.join("host.yaml");
        fs::write(&file, "a: 1\n").unwrap();
        let (tx, rx) = mpsc::channel();
        let w = FileWatcher::start(&file, QUICK, tx).unwrap();
        (dir, file, w, rx)
    }

    fn expect_one_change(rx: &Receiver<WatchEvent>) {
        assert_eq!(rx.recv_timeout(ARRIVES), Ok(WatchEvent::Changed));
        assert_eq!(rx.recv_timeout(QUIET), Err(RecvTimeoutError::Timeout));
    }

    #[test]
    fn a_write_in_place_gives_one_event() {
        let (_d, file, w, rx) = watching("inplace");
        // Truncate, two writes, close: several inotify events, one debounced change.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&file)
            .unwrap();
        f.write_all(b"a: 2\n").unwrap();
        f.write_all(b"b: 3\n").unwrap();
        drop(f);
        expect_one_change(&rx);
        w.stop();
    }

    #[test]
    fn an_atomic_rename_over_the_file_is_seen() {
        let (d, file, w, rx) = watching("rename");
        let tmp = d.0.join(".host.yaml.tmp");
        fs::write(&tmp, "a: 2\n").unwrap();
        fs::rename(&tmp, &file).unwrap();
        expect_one_change(&rx);
        // And again: the watch survives the inode being replaced.
        fs::write(&tmp, "a: 3\n").unwrap();
        fs::rename(&tmp, &file).unwrap();
        expect_one_change(&rx);
        w.stop();
    }

    #[test]
    fn a_delete_and_recreate_is_seen() {
        let (_d, file, w, rx) = watching("recreate");
        fs::remove_file(&file).unwrap();
        fs::write(&file, "a: 4\n").unwrap();
        assert_eq!(rx.recv_timeout(ARRIVES), Ok(WatchEvent::Changed));
        w.stop();
    }

    #[test]
    fn a_burst_of_writes_gives_one_event() {
        let (_d, file, w, rx) = watching("burst");
        for i in 0..20 {
            fs::write(&file, format!("a: {i}\n")).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        expect_one_change(&rx);
        w.stop();
    }

    #[test]
    fn an_unrelated_file_in_the_same_directory_is_ignored() {
        let (d, _file, w, rx) = watching("unrelated");
        fs::write(d.0.join("other.yaml"), "x").unwrap();
        fs::write(d.0.join("host.yaml.bak"), "x").unwrap();
        fs::rename(d.0.join("other.yaml"), d.0.join("other2.yaml")).unwrap();
        assert_eq!(rx.recv_timeout(QUIET), Err(RecvTimeoutError::Timeout));
        w.stop();
    }

    #[test]
    fn removing_the_directory_reports_the_watch_lost() {
        let (d, _file, w, rx) = watching("lost");
        fs::remove_dir_all(&d.0).unwrap();
        let mut got = Vec::new();
        while let Ok(ev) = rx.recv_timeout(ARRIVES) {
            got.push(ev);
            if ev == WatchEvent::WatchLost || got.len() > 4 {
                break;
            }
        }
        assert_eq!(got.last(), Some(&WatchEvent::WatchLost), "{got:?}");
        w.stop();
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let (tx, _rx) = mpsc::channel();
        assert!(matches!(
            FileWatcher::start(Path::new("/"), QUICK, tx),
            Err(AgentError::WatchPath(_))
        ));
    }

    #[test]
    fn stop_returns_promptly() {
        let (_d, _file, w, _rx) = watching("stop");
        let start = Instant::now();
        w.stop();
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn sighup_is_delivered_as_a_distinct_reload_event() {
        let (tx, rx) = mpsc::channel();
        let l = SighupListener::start(tx).unwrap();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
        assert_eq!(rx.recv_timeout(ARRIVES), Ok(WatchEvent::Reload));
        l.stop();
    }

    #[test]
    fn the_debouncer_fires_after_the_quiet_period_or_the_maximum_delay() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(WatchConfig {
            debounce: ms(200),
            max_delay: ms(1000),
            settle: ms(5),
        });
        assert_eq!(d.deadline(), None);
        assert!(!d.fire(t0 + ms(10_000)));
        d.note(t0);
        d.note(t0 + ms(150));
        assert_eq!(d.deadline(), Some(t0 + ms(350)));
        assert!(!d.fire(t0 + ms(349)));
        assert!(d.fire(t0 + ms(350)));
        assert!(!d.fire(t0 + ms(351)), "fires once per burst");
        // A continuous stream fires at the maximum delay.
        for i in 0..20 {
            d.note(t0 + ms(1000 + i * 100));
        }
        assert_eq!(d.deadline(), Some(t0 + ms(2000)));
        assert!(d.fire(t0 + ms(2000)));
    }

    #[test]
    fn a_completed_write_fires_after_the_settle_time_unless_written_again() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(WatchConfig {
            debounce: ms(200),
            max_delay: ms(1000),
            settle: ms(5),
        });
        // An atomic rename: fires 5 ms later, not 200.
        d.note_complete(t0);
        assert_eq!(d.deadline(), Some(t0 + ms(5)));
        assert!(d.fire(t0 + ms(5)));
        // Written, closed, then written again: the quiet period is back.
        d.note(t0 + ms(100));
        d.note_complete(t0 + ms(110));
        d.note(t0 + ms(120));
        assert_eq!(d.deadline(), Some(t0 + ms(320)));
        assert!(!d.fire(t0 + ms(200)));
        assert!(d.fire(t0 + ms(320)));
        // A settle time longer than the quiet period is the quiet period.
        let mut d = Debouncer::new(WatchConfig {
            debounce: ms(20),
            max_delay: ms(1000),
            settle: ms(500),
        });
        d.note_complete(t0);
        assert_eq!(d.deadline(), Some(t0 + ms(20)));
    }
}
