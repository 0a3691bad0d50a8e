//! A real RabbitMQ (scripts/testbed/rabbitmq.sh) in a throwaway network namespace, and
//! transports started inside it (their threads, and so their sockets, live in the
//! namespace: its 127.0.0.1 is the broker's).
#![allow(dead_code)] // each test binary uses part of it

use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

use l3agent_neutron::config::TransportUrl;
use l3agent_neutron::{Transport, TransportOptions};
use l3agent_testkit::service::Service;
use l3agent_testkit::{unique, TestNs};

/// Logs to the test's output when `RUST_LOG` is set (e.g. `RUST_LOG=l3agent_neutron=debug`).
pub fn logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// RabbitMQ in its own namespace. Field order matters: the broker stops before the
/// namespace goes.
pub struct Broker {
    service: Option<Service>,
    pub ns: TestNs,
    pub dir: PathBuf,
}

impl Broker {
    /// Starts RabbitMQ in a new namespace (bounded by the script: ~10 s here).
    pub fn start(tag: &str) -> Broker {
        logs();
        let ns = TestNs::new(tag);
        let dir = std::env::temp_dir().join(format!(
            "l3agent-rmq-{}-{}-{tag}",
            std::process::id(),
            unique()
        ));
        let started = Instant::now();
        let service = Service::start(&ns, "rabbitmq", &dir, &[]);
        eprintln!("rabbitmq started in {:?}", started.elapsed());
        Broker {
            service: Some(service),
            ns,
            dir,
        }
    }

    /// Stops the broker (by pid; its data stays).
    pub fn stop(&mut self) {
        let started = Instant::now();
        self.service = None;
        eprintln!("rabbitmq stopped in {:?}", started.elapsed());
    }

    /// Starts it again in the same namespace and directory.
    pub fn start_again(&mut self) {
        assert!(self.service.is_none());
        let started = Instant::now();
        self.service = Some(Service::start(&self.ns, "rabbitmq", &self.dir, &[]));
        eprintln!("rabbitmq restarted in {:?}", started.elapsed());
    }

    /// `rabbit://guest:guest@127.0.0.1:5672/`.
    pub fn url() -> TransportUrl {
        TransportUrl::parse("rabbit://guest:guest@127.0.0.1:5672/").unwrap()
    }

    /// Test-friendly options: short reconnect delays.
    pub fn options() -> TransportOptions {
        let mut o = TransportOptions::new(Self::url());
        o.rabbit.retry_interval = Duration::from_millis(200);
        o.rabbit.interval_max = Duration::from_secs(1);
        o.connect_timeout = Duration::from_secs(5);
        o.cast_timeout = Duration::from_secs(10);
        o
    }

    /// A transport whose threads run in the broker's namespace.
    pub fn transport(&self, opts: TransportOptions) -> Transport {
        self.ns.inside(move || Transport::start(opts))
    }

    /// A connected transport (waits up to 20 s).
    pub fn connected(&self) -> Transport {
        let t = self.transport(Self::options());
        assert!(
            t.wait_connected(Duration::from_secs(20)),
            "not connected: {}",
            t.state()
        );
        t
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.service = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` every 20 ms until it is `Some`, for at most `timeout`.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
