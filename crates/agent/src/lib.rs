//! The building blocks of the long-running agent (`l3agent agent --config FILE`): each one
//! standalone and tested on its own, wired together by the binary.
//!
//! ```text
//!  config FILE ──inotify on its dir──► watch::FileWatcher ─┐
//!  SIGHUP (systemctl reload) ─────────► watch::SighupListener ─┤ WatchEvent channel
//!                                                             ▼
//!                          file front end: re-read + validate, diff desired routers by id
//!                                                             │ mark_dirty(router id)
//!                                                             ▼
//!            queue::WorkQueue: coalescing, one worker per router, N workers, backoff
//!                                                             │ next() / done()
//!                                                             ▼
//!                          the router reconciler (crates/router) ──► kernel
//! ```
//!
//! A front end only translates changes into dirty router ids; it never touches the kernel.
//! Other front ends (Neutron RPC, etcd) feed the same queue, and so does [`ha::HaWatch`]:
//! keepalived's VRRP transitions (address events in HA routers' namespaces) mark their
//! router dirty, after a short settle delay.
//!
//! [`daemon`] wires them together onto the router reconciler: `l3agent agent` is a thin
//! call of [`daemon::run`].
//!
//! Around that loop are the surfaces for people and supervisors:
//! - [`metrics`]: the Prometheus registry the workers record into;
//! - [`traffic`]: the routers' and floating IPs' traffic counters, read from the kernel
//!   in-process when `/metrics` is scraped (at most every few seconds);
//! - [`http`]: `/metrics`, `/healthz`, `/readyz` on a small HTTP server;
//! - [`notify`]: sd_notify to systemd (`READY=1`, `STATUS=`, the watchdog);
//! - [`control`]: the root-only Unix socket `l3agent status` queries.
//!
//! Everything here uses threads and std channels, and every blocking wait can be ended: the
//! servers and the watcher poll their descriptor together with a wake-up pipe, so stopping
//! them is prompt and never relies on a timeout.

#![warn(missing_docs)]

pub mod control;
pub mod daemon;
mod error;
pub mod ha;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod queue;
#[cfg(test)]
mod scratch;
pub mod traffic;
mod wake;
pub mod watch;

pub use control::{ControlConfig, ControlServer, Request};
pub use error::AgentError;
pub use http::{HttpConfig, HttpServer, HttpState};
pub use metrics::Metrics;
pub use notify::Notifier;
pub use queue::{QueueConfig, WorkQueue};
pub use watch::{FileWatcher, SighupListener, WatchConfig, WatchEvent};
