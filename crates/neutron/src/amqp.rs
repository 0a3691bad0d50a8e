//! oslo.messaging's RabbitMQ driver (`impl_rabbit.py` + `amqpdriver.py`) over `lapin`,
//! behind a blocking API for the thread-based agent.
//!
//! ```text
//!  callers' threads ── call/cast ──► publish channel (confirms) ──► exchange `neutron`
//!        ▲ replies by _msg_id                                           │
//!  reply_<hex> consumer (lapin's executor: ack, route to the waiting call)
//!
//!  supervisor thread: connect (hosts in turn, backoff + jitter) ─► declare the reply queue
//!                     and every server's queues ─► watch the link ─► on loss: again
//!
//!  RpcServer: consumers of T, T.<host>, T_fanout_<hex> ─► std channel ─► its dispatcher
//!             thread: decode, drop duplicates, version check, Handler, reply (calls)
//! ```
//!
//! - **Declarations** are oslo's, option for option ([`crate::config::RabbitOptions`]): a
//!   topic exchange named `control_exchange`; per server topic `T` on host `H` the queues
//!   `T` and `T.H` (bound with those routing keys) and a fanout queue bound to `T_fanout`;
//!   one `reply_<hex>` queue per process, reached through the default exchange.
//! - **Messages** carry `content_type=application/json`, `content_encoding=utf-8`,
//!   `delivery_mode=2`; a call also carries `expiration` = the time it has left (kombu sets
//!   its timeout), so a request nobody took in time is not executed later. Publishes wait
//!   for the broker's confirm (oslo: `confirm_publish`). Replies are published `mandatory`;
//!   one that finds no queue is retried (`kombu_missing_consumer_retry_timeout`). Calls are
//!   `mandatory` too (oslo's `at_least_once`): a call to a topic no server consumes yet is
//!   sent again every 250 ms within its timeout instead of vanishing.
//! - **Acks**: every delivery is acknowledged on receipt, before it is processed (oslo's
//!   `RpcAMQPListener`: a request whose ack fails is discarded, never run twice).
//! - **Reconnection** never gives up while the transport lives: every host of
//!   `transport_url` in turn, then an exponential delay with jitter between
//!   `rabbit_retry_interval` and `rabbit_interval_max`; the reply queue and every server's
//!   consumers are declared again on each new connection. Calls in flight keep waiting for
//!   their replies until their own timeout (the reply queue outlives a client reconnect).
//! - **Nothing blocks forever**: every wait (connect, declare, publish, confirm, reply,
//!   shutdown) has a deadline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use lapin::message::DeliveryResult;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use serde_json::{Map, Value};
use tracing::{debug, error, info, warn};

use crate::config::{LoginMethod, NeutronAgentConfig, RabbitOptions, TransportHost, TransportUrl};
use crate::error::NeutronError;
use crate::wire::{
    self, version_is_compatible, CallHeader, DuplicateFilter, RemoteFailure, Reply, Request,
};

/// `use_queue_manager`'s counter: one per process, as oslo's `QManager` counts per service
/// (through `/dev/shm`, shared by its workers): every transport of this process gets its own
/// names, and a restarted process gets the same names again (the point of the option). Two
/// agent processes on one host with the same `processname` would collide, as two oslo
/// services with the same identity would.
static QM_COUNTER: AtomicU64 = AtomicU64::new(1);

/// How often the supervisor checks a connection it has not heard from.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// How often a dispatcher thread looks at its stop flag.
const DISPATCH_POLL: Duration = Duration::from_millis(200);
/// The pause between two tries of a publish that failed on a broken link.
const PUBLISH_RETRY: Duration = Duration::from_millis(100);
/// oslo's pause between two tries of a reply whose queue is missing.
const REPLY_RETRY: Duration = Duration::from_millis(250);

/// How to reach the broker and how to declare queues.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// The brokers (`[DEFAULT] transport_url`).
    pub url: TransportUrl,
    /// The topic exchange (`[DEFAULT] control_exchange`).
    pub exchange: String,
    /// `[oslo_messaging_rabbit]`.
    pub rabbit: RabbitOptions,
    /// One connection attempt (TCP + AMQP handshake + declarations) may take this long.
    pub connect_timeout: Duration,
    /// A cast waits this long for a connection and the broker's confirm.
    pub cast_timeout: Duration,
    /// The request context sent with every request (`_context_*`).
    pub context: Map<String, Value>,
    /// The name the broker shows for the connection (oslo:
    /// `<program>:<pid>:<connection uuid>`).
    pub connection_name: String,
}

impl TransportOptions {
    /// oslo.messaging's defaults for `url`: exchange `neutron`, neutron-l3-agent's admin
    /// context.
    pub fn new(url: TransportUrl) -> TransportOptions {
        let now = SystemTime::now();
        TransportOptions {
            url,
            exchange: "neutron".into(),
            rabbit: RabbitOptions::default(),
            connect_timeout: Duration::from_secs(10),
            cast_timeout: Duration::from_secs(60),
            context: wire::admin_context(
                &format!("req-{}", wire::uuid4()),
                &wire::utc_timestamp(now, ' '),
            ),
            connection_name: format!("neutron-l3-agent:{}:{}", std::process::id(), wire::uuid4()),
        }
    }

    /// The options of an agent config.
    pub fn from_config(cfg: &NeutronAgentConfig) -> TransportOptions {
        let mut o = TransportOptions::new(cfg.transport_url.clone());
        o.exchange = cfg.control_exchange.clone();
        o.rabbit = cfg.rabbit.clone();
        o.cast_timeout = cfg.rpc_response_timeout;
        o.connection_name = format!(
            "{}:{}:{}",
            cfg.rabbit.qm_processname,
            std::process::id(),
            wire::uuid4()
        );
        o
    }
}

/// The transport's link to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not connected; trying (attempt counts failures since the last connection).
    Connecting {
        /// Failed attempts so far.
        attempt: u32,
        /// Why the last attempt failed, or why the link was lost.
        last_error: Option<String>,
    },
    /// Connected, queues declared.
    Connected {
        /// `host:port` of the broker.
        host: String,
        /// Since when.
        since: SystemTime,
        /// Counts connections made (1 for the first).
        generation: u64,
    },
    /// Shut down.
    Closed,
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionState::Connecting {
                attempt,
                last_error,
            } => {
                write!(f, "connecting, {attempt} failed attempts")?;
                if let Some(e) = last_error {
                    write!(f, ", last error: {e}")?;
                }
                Ok(())
            }
            ConnectionState::Connected {
                host, generation, ..
            } => write!(f, "connected to {host} (connection #{generation})"),
            ConnectionState::Closed => f.write_str("closed"),
        }
    }
}

/// An RPC endpoint: what oslo calls an endpoint object with a `target`.
pub trait Handler: Send + Sync {
    /// The API version implemented (oslo `Target.version`): requests asking for an
    /// incompatible one get `UnsupportedVersion`.
    fn version(&self) -> &str;

    /// Runs one request. `Ok` is a call's result (ignored for a cast); an unknown method is
    /// `Err(RemoteFailure::no_such_method(..).into())`.
    fn handle(&self, request: &Request) -> Result<Value, Box<RemoteFailure>>;
}

/// A delivery handed from a consumer to its server's dispatcher thread.
struct Incoming {
    body: Vec<u8>,
    routing_key: String,
}

/// One server's registration: re-declared on every connection.
struct ServerEntry {
    id: u64,
    topic: String,
    server: String,
    fanout_queue: String,
    tx: Mutex<mpsc::Sender<Incoming>>,
    /// The connection generation its consumers were last declared on (0: none).
    declared_on: AtomicU64,
    /// Stream fanout: the offset to resume from (`None`: `last`).
    stream_offset: Mutex<Option<i64>>,
}

enum Control {
    /// The link of `generation` is broken.
    Kick {
        generation: u64,
        reason: String,
    },
    /// Declare this server's consumers now.
    Declare(u64),
    /// Cancel this server's consumers.
    Remove(u64),
    Shutdown,
}

struct Link {
    conn: Connection,
    publish: Channel,
    consume: Channel,
    _reply_consumer: Consumer,
    server_consumers: BTreeMap<u64, Vec<Consumer>>,
    /// Exchanges declared for publishing on this link.
    declared: HashSet<String>,
}

struct LinkState {
    state: ConnectionState,
    link: Option<Link>,
    generation: u64,
}

struct Inner {
    opts: TransportOptions,
    reply_queue: String,
    link: Mutex<LinkState>,
    changed: Condvar,
    pending: Mutex<HashMap<String, mpsc::Sender<Reply>>>,
    reply_dups: Mutex<DuplicateFilter>,
    servers: Mutex<BTreeMap<u64, Arc<ServerEntry>>>,
    control: Mutex<mpsc::Sender<Control>>,
    next_id: AtomicU64,
    shutdown: AtomicBool,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `fut` on this thread until it completes or `deadline` passes (`None`).
fn block<T>(deadline: Instant, fut: impl Future<Output = T>) -> Option<T> {
    async_io::block_on(futures_lite::future::or(async { Some(fut.await) }, async {
        async_io::Timer::at(deadline).await;
        None
    }))
}

/// `block` for lapin results, with the step named in the error.
fn step<T>(
    deadline: Instant,
    what: &str,
    fut: impl Future<Output = lapin::Result<T>>,
) -> Result<T, String> {
    match block(deadline, fut) {
        None => Err(format!("{what}: timed out")),
        Some(Err(e)) => Err(format!("{what}: {e}")),
        Some(Ok(v)) => Ok(v),
    }
}

/// An AMQP integer the way py-amqp encodes a Python int (32-bit when it fits).
fn int_value(v: i64) -> AMQPValue {
    match i32::try_from(v) {
        Ok(i) => AMQPValue::LongInt(i),
        Err(_) => AMQPValue::LongLongInt(v),
    }
}

fn str_value(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// oslo's `_get_queue_arguments`.
fn queue_arguments(
    o: &RabbitOptions,
    ha: bool,
    ttl_secs: u64,
    quorum: bool,
    stream: bool,
) -> FieldTable {
    let mut t = FieldTable::default();
    if stream {
        t.insert("x-queue-type".into(), str_value("stream"));
        if ttl_secs > 0 {
            t.insert("x-max-age".into(), str_value(&format!("{ttl_secs}s")));
        }
        return t;
    }
    if ha {
        t.insert("x-ha-policy".into(), str_value("all"));
    }
    if quorum {
        t.insert("x-queue-type".into(), str_value("quorum"));
        if o.rabbit_quorum_delivery_limit > 0 {
            t.insert(
                "x-delivery-limit".into(),
                int_value(o.rabbit_quorum_delivery_limit as i64),
            );
        }
        if o.rabbit_quorum_max_memory_length > 0 {
            t.insert(
                "x-max-in-memory-length".into(),
                int_value(o.rabbit_quorum_max_memory_length as i64),
            );
        }
        if o.rabbit_quorum_max_memory_bytes > 0 {
            t.insert(
                "x-max-in-memory-bytes".into(),
                int_value(o.rabbit_quorum_max_memory_bytes as i64),
            );
        }
    }
    if ttl_secs > 0 {
        t.insert("x-expires".into(), int_value((ttl_secs * 1000) as i64));
    }
    t
}

/// What oslo declares for one kind of queue.
#[derive(Debug, Clone, PartialEq)]
struct QueueSpec {
    name: String,
    durable: bool,
    auto_delete: bool,
    arguments: FieldTable,
}

/// What oslo declares for one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExchangeSpec {
    name: String,
    fanout: bool,
    durable: bool,
    auto_delete: bool,
}

impl RabbitOptions {
    /// oslo's `Connection.durable`.
    fn topic_durable(&self) -> bool {
        self.amqp_durable_queues || self.rabbit_quorum_queue
    }

    fn fanout_durable(&self) -> bool {
        self.rabbit_transient_quorum_queue || self.rabbit_stream_fanout
    }

    fn topic_exchange(&self, name: &str) -> ExchangeSpec {
        ExchangeSpec {
            name: name.to_owned(),
            fanout: false,
            durable: self.topic_durable(),
            auto_delete: self.amqp_auto_delete,
        }
    }

    fn fanout_exchange(&self, topic: &str) -> ExchangeSpec {
        ExchangeSpec {
            name: format!("{topic}_fanout"),
            fanout: true,
            durable: self.fanout_durable(),
            auto_delete: true,
        }
    }

    /// `declare_topic_consumer`.
    fn topic_queue(&self, name: &str) -> QueueSpec {
        QueueSpec {
            name: name.to_owned(),
            durable: self.topic_durable(),
            auto_delete: self.amqp_auto_delete,
            arguments: queue_arguments(
                self,
                self.rabbit_ha_queues,
                0,
                self.rabbit_quorum_queue,
                false,
            ),
        }
    }

    /// `declare_fanout_consumer`.
    fn fanout_queue(&self, name: &str) -> QueueSpec {
        QueueSpec {
            name: name.to_owned(),
            durable: self.fanout_durable(),
            auto_delete: false,
            arguments: queue_arguments(
                self,
                self.rabbit_ha_queues,
                self.rabbit_transient_queues_ttl,
                self.rabbit_transient_quorum_queue,
                self.rabbit_stream_fanout,
            ),
        }
    }

    /// `declare_direct_consumer` (the reply queue).
    fn reply_queue(&self, name: &str) -> QueueSpec {
        QueueSpec {
            name: name.to_owned(),
            durable: self.rabbit_transient_quorum_queue,
            auto_delete: false,
            arguments: queue_arguments(
                self,
                self.rabbit_ha_queues,
                self.rabbit_transient_queues_ttl,
                self.rabbit_transient_quorum_queue,
                false,
            ),
        }
    }
}

/// The properties of every message oslo sends (captured from kombu: `content_type`,
/// `content_encoding`, empty `application_headers`, `delivery_mode` 2, `priority` 0, and
/// `expiration` in ms for a call).
fn message_properties(expiration: Option<Duration>) -> BasicProperties {
    let p = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_delivery_mode(2)
        .with_priority(0)
        .with_headers(FieldTable::default());
    match expiration {
        Some(t) => p.with_expiration(ShortString::from(t.as_millis().max(1).to_string())),
        None => p,
    }
}

/// Why a publish did not go through.
enum PublishFailure {
    NotConnected,
    /// A mandatory message found no queue.
    Returned,
    Failed(String),
}

/// A connection to RabbitMQ shared by RPC clients and servers. Cheap to clone; the
/// connection closes when the last clone (and every [`RpcServer`]) is gone, or on
/// [`Transport::close`].
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("url", &self.inner.opts.url.to_string())
            .field("reply_queue", &self.inner.reply_queue)
            .field("state", &self.state())
            .finish()
    }
}

/// Shuts the transport down when the last user handle goes.
struct Owner {
    inner: Weak<Inner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.begin_shutdown();
        }
    }
}

impl Transport {
    /// Starts connecting in the background (a supervisor thread) and returns at once: use
    /// [`Transport::wait_connected`] to wait, or just call (a call waits for the connection
    /// within its own timeout).
    pub fn start(opts: TransportOptions) -> Transport {
        let (control_tx, control_rx) = mpsc::channel();
        let reply_queue = if opts.rabbit.use_queue_manager {
            format!(
                "reply_{}:{}:{}",
                opts.rabbit.qm_hostname,
                opts.rabbit.qm_processname,
                QM_COUNTER.fetch_add(1, Ordering::SeqCst)
            )
        } else {
            format!("reply_{}", wire::uuid4_hex())
        };
        let inner = Arc::new(Inner {
            opts,
            reply_queue,
            link: Mutex::new(LinkState {
                state: ConnectionState::Connecting {
                    attempt: 0,
                    last_error: None,
                },
                link: None,
                generation: 0,
            }),
            changed: Condvar::new(),
            pending: Mutex::new(HashMap::new()),
            reply_dups: Mutex::new(DuplicateFilter::default()),
            servers: Mutex::new(BTreeMap::new()),
            control: Mutex::new(control_tx),
            next_id: AtomicU64::new(1),
            shutdown: AtomicBool::new(false),
            supervisor: Mutex::new(None),
        });
        let sup = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("amqp-supervisor".into())
            .spawn(move || supervise(&sup, &control_rx))
            .ok();
        if handle.is_none() {
            error!("cannot start the AMQP supervisor thread: the transport stays unconnected");
        }
        *lock(&inner.supervisor) = handle;
        let owner = Arc::new(Owner {
            inner: Arc::downgrade(&inner),
        });
        Transport {
            inner,
            _owner: owner,
        }
    }

    /// The link's state now.
    pub fn state(&self) -> ConnectionState {
        lock(&self.inner.link).state.clone()
    }

    /// Connections made so far (1 after the first; each reconnection adds one).
    pub fn generation(&self) -> u64 {
        lock(&self.inner.link).generation
    }

    /// Waits up to `timeout` for a connection; true if connected.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        self.inner.wait_link(Instant::now() + timeout).is_some()
    }

    /// This process's reply queue (`reply_<uuid4 hex>`).
    pub fn reply_queue(&self) -> &str {
        &self.inner.reply_queue
    }

    /// The options it runs with.
    pub fn options(&self) -> &TransportOptions {
        &self.inner.opts
    }

    /// oslo's `RPCClient.call`: sends `method(args)` at `version` to `topic` (or
    /// `topic.<server>`) and waits for the reply, all within `timeout`.
    pub fn call(
        &self,
        topic: &str,
        server: Option<&str>,
        method: &str,
        args: Map<String, Value>,
        version: &str,
        timeout: Duration,
    ) -> Result<Value, NeutronError> {
        let mut req = Request::new(method, args, version);
        req.context = self.inner.opts.context.clone();
        self.inner.call(topic, server, req, timeout)
    }

    /// oslo's `RPCClient.cast`: sends without waiting for a reply (but waits, up to the
    /// cast timeout, for the broker to take it).
    pub fn cast(
        &self,
        topic: &str,
        server: Option<&str>,
        method: &str,
        args: Map<String, Value>,
        version: &str,
    ) -> Result<(), NeutronError> {
        let mut req = Request::new(method, args, version);
        req.context = self.inner.opts.context.clone();
        let exchange = self
            .inner
            .opts
            .rabbit
            .topic_exchange(&self.inner.opts.exchange);
        let key = routing_key(topic, server);
        self.inner
            .publish_or_error(
                Some(&exchange),
                &key,
                &req.to_body(),
                None,
                self.inner.opts.cast_timeout,
            )
            .map(|_| ())
    }

    /// A cast to every server of `topic` (`prepare(fanout=True).cast`).
    pub fn fanout_cast(
        &self,
        topic: &str,
        method: &str,
        args: Map<String, Value>,
        version: &str,
    ) -> Result<(), NeutronError> {
        let mut req = Request::new(method, args, version);
        req.context = self.inner.opts.context.clone();
        let o = &self.inner.opts.rabbit;
        // `fanout_send`: durable only with transient quorum queues.
        let exchange = ExchangeSpec {
            name: format!("{topic}_fanout"),
            fanout: true,
            durable: o.rabbit_transient_quorum_queue,
            auto_delete: true,
        };
        self.inner
            .publish_or_error(
                Some(&exchange),
                "",
                &req.to_body(),
                None,
                self.inner.opts.cast_timeout,
            )
            .map(|_| ())
    }

    /// oslo's `get_rpc_server(target(topic, server=host), [handler]).start()`: consumes
    /// `topic`, `topic.<server>` and a fanout queue of `topic_fanout`, on this and every
    /// later connection. Requests are handled one at a time on the server's own thread.
    pub fn serve(
        &self,
        topic: &str,
        server: &str,
        handler: Arc<dyn Handler>,
    ) -> Result<RpcServer, NeutronError> {
        let o = &self.inner.opts.rabbit;
        let fanout_queue = if o.rabbit_stream_fanout {
            format!("{topic}_fanout")
        } else if o.use_queue_manager {
            format!(
                "{topic}_fanout_{}:{}:{}",
                o.qm_hostname,
                o.qm_processname,
                QM_COUNTER.fetch_add(1, Ordering::SeqCst)
            )
        } else {
            format!("{topic}_fanout_{}", wire::uuid4_hex())
        };
        let (tx, rx) = mpsc::channel();
        let entry = Arc::new(ServerEntry {
            id: self.inner.next_id.fetch_add(1, Ordering::SeqCst),
            topic: topic.to_owned(),
            server: server.to_owned(),
            fanout_queue,
            tx: Mutex::new(tx),
            declared_on: AtomicU64::new(0),
            stream_offset: Mutex::new(None),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let inner = Arc::clone(&self.inner);
            let stop = Arc::clone(&stop);
            let name = format!("rpc-{topic}");
            let topic = topic.to_owned();
            std::thread::Builder::new()
                .name(name.chars().take(15).collect())
                .spawn(move || dispatch_loop(&inner, &topic, &*handler, &rx, &stop))
                .map_err(|e| NeutronError::Publish {
                    exchange: String::new(),
                    routing_key: String::new(),
                    reason: format!("cannot start the dispatcher thread: {e}"),
                })?
        };
        lock(&self.inner.servers).insert(entry.id, Arc::clone(&entry));
        self.inner.control(Control::Declare(entry.id));
        info!(topic, server, fanout_queue = %entry.fanout_queue, "RPC server registered");
        Ok(RpcServer {
            transport: self.clone(),
            entry,
            stop,
            thread: Some(thread),
        })
    }

    /// Shuts down: stops reconnecting, closes the connection (bounded by `timeout`); calls
    /// still waiting fail with [`NeutronError::Closed`].
    pub fn close(&self, timeout: Duration) {
        self.inner.begin_shutdown();
        let deadline = Instant::now() + timeout;
        let handle = lock(&self.inner.supervisor).take();
        if let Some(h) = handle {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                warn!("the AMQP supervisor did not stop in time: left behind");
            }
        }
    }
}

fn routing_key(topic: &str, server: Option<&str>) -> String {
    match server {
        Some(s) => format!("{topic}.{s}"),
        None => topic.to_owned(),
    }
}

impl Inner {
    fn control(&self, c: Control) {
        let _ = lock(&self.control).send(c);
    }

    fn begin_shutdown(&self) {
        if !self.shutdown.swap(true, Ordering::SeqCst) {
            self.control(Control::Shutdown);
        }
        self.changed.notify_all();
    }

    /// Waits for a connection until `deadline`: its publish channel and generation.
    fn wait_link(&self, deadline: Instant) -> Option<(Channel, u64)> {
        let mut g = lock(&self.link);
        loop {
            if let Some(link) = &g.link {
                if matches!(g.state, ConnectionState::Connected { .. }) {
                    return Some((link.publish.clone(), g.generation));
                }
            }
            if self.shutdown.load(Ordering::SeqCst) {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn kick(&self, generation: u64, reason: String) {
        self.control(Control::Kick { generation, reason });
    }

    /// Publishes one message, declaring `exchange` first on this link (oslo declares the
    /// exchange before its first publish on a channel), retrying on a broken link until
    /// `deadline`.
    fn publish(
        &self,
        exchange: Option<&ExchangeSpec>,
        routing_key: &str,
        body: &[u8],
        expiration: Option<Duration>,
        mandatory: bool,
        deadline: Instant,
    ) -> Result<(), PublishFailure> {
        let mut last = PublishFailure::NotConnected;
        loop {
            let Some((channel, generation)) = self.wait_link(deadline) else {
                return Err(last);
            };
            match self.publish_once(
                &channel,
                generation,
                exchange,
                routing_key,
                body,
                expiration,
                mandatory,
                deadline,
            ) {
                Ok(()) => return Ok(()),
                Err(PublishFailure::Returned) => return Err(PublishFailure::Returned),
                Err(f) => {
                    if let PublishFailure::Failed(reason) = &f {
                        debug!(routing_key, %reason, "publish failed; retried on a new link");
                        if !channel.status().connected() {
                            self.kick(generation, format!("publish channel closed: {reason}"));
                        }
                    }
                    last = f;
                }
            }
            if Instant::now() + PUBLISH_RETRY >= deadline {
                return Err(last);
            }
            std::thread::sleep(PUBLISH_RETRY);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn publish_once(
        &self,
        channel: &Channel,
        generation: u64,
        exchange: Option<&ExchangeSpec>,
        routing_key: &str,
        body: &[u8],
        expiration: Option<Duration>,
        mandatory: bool,
        deadline: Instant,
    ) -> Result<(), PublishFailure> {
        if let Some(ex) = exchange {
            let known = {
                let g = lock(&self.link);
                g.generation == generation
                    && g.link
                        .as_ref()
                        .is_some_and(|l| l.declared.contains(&ex.name))
            };
            if !known {
                declare_exchange(channel, ex, deadline).map_err(PublishFailure::Failed)?;
                let mut g = lock(&self.link);
                if g.generation == generation {
                    if let Some(l) = g.link.as_mut() {
                        l.declared.insert(ex.name.clone());
                    }
                }
            }
        }
        let name = exchange.map_or("", |e| e.name.as_str());
        let confirm = step(
            deadline,
            "basic.publish",
            channel.basic_publish(
                name,
                routing_key,
                BasicPublishOptions {
                    mandatory,
                    immediate: false,
                },
                body,
                message_properties(expiration),
            ),
        )
        .map_err(PublishFailure::Failed)?;
        match step(deadline, "publisher confirm", confirm).map_err(PublishFailure::Failed)? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishFailure::Returned),
            Confirmation::Nack(_) => Err(PublishFailure::Failed(
                "the broker refused the message (nack)".into(),
            )),
        }
    }

    fn publish_or_error(
        &self,
        exchange: Option<&ExchangeSpec>,
        routing_key: &str,
        body: &[u8],
        expiration: Option<Duration>,
        timeout: Duration,
    ) -> Result<(), NeutronError> {
        let started = Instant::now();
        self.publish(
            exchange,
            routing_key,
            body,
            expiration,
            false,
            started + timeout,
        )
        .map_err(|f| {
            let exchange = exchange.map_or(String::new(), |e| e.name.clone());
            match f {
                PublishFailure::NotConnected => NeutronError::NotConnected {
                    waited: started.elapsed(),
                    state: lock(&self.link).state.to_string(),
                },
                PublishFailure::Returned => NeutronError::Publish {
                    exchange,
                    routing_key: routing_key.to_owned(),
                    reason: "no queue is bound for it".into(),
                },
                PublishFailure::Failed(reason) => NeutronError::Publish {
                    exchange,
                    routing_key: routing_key.to_owned(),
                    reason,
                },
            }
        })
    }

    fn call(
        &self,
        topic: &str,
        server: Option<&str>,
        mut req: Request,
        timeout: Duration,
    ) -> Result<Value, NeutronError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let msg_id = wire::uuid4_hex();
        req.call = Some(CallHeader {
            msg_id: msg_id.clone(),
            reply_q: self.reply_queue.clone(),
            timeout: Value::Null,
        });
        let (tx, rx) = mpsc::channel();
        lock(&self.pending).insert(msg_id.clone(), tx);
        struct Unlisten<'a>(&'a Inner, &'a str);
        impl Drop for Unlisten<'_> {
            fn drop(&mut self) {
                lock(&self.0.pending).remove(self.1);
            }
        }
        let _unlisten = Unlisten(self, &msg_id);

        let exchange = self.opts.rabbit.topic_exchange(&self.opts.exchange);
        let key = routing_key(topic, server);
        debug!(method = %req.method, topic = %key, %msg_id, "CALL");
        // Mandatory: while no queue is bound for the topic (the server is not up yet, or has
        // not declared its queues again after a broker restart), the broker hands the
        // request back and it is sent again, within the call's timeout.
        let body = req.to_body();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.publish(Some(&exchange), &key, &body, Some(left), true, deadline) {
                Ok(()) => break,
                Err(PublishFailure::Returned) => {
                    if Instant::now() + REPLY_RETRY >= deadline {
                        return Err(NeutronError::Timeout {
                            topic: key,
                            method: req.method,
                            msg_id: msg_id.clone(),
                            timeout,
                        });
                    }
                    debug!(topic = %key, %msg_id, "no queue bound for the call yet: sent again");
                    std::thread::sleep(REPLY_RETRY);
                }
                Err(PublishFailure::NotConnected) => {
                    return Err(NeutronError::NotConnected {
                        waited: started.elapsed(),
                        state: lock(&self.link).state.to_string(),
                    })
                }
                Err(PublishFailure::Failed(reason)) => {
                    return Err(NeutronError::Publish {
                        exchange: exchange.name.clone(),
                        routing_key: key,
                        reason,
                    })
                }
            }
        }

        let mut result = Value::Null;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(reply) => {
                    if let Some(failure) = reply.failure {
                        return Err(NeutronError::Remote {
                            topic: key,
                            method: req.method,
                            failure: Box::new(failure),
                        });
                    }
                    if !reply.result.is_null() {
                        result = reply.result;
                    }
                    if reply.ending {
                        debug!(%msg_id, elapsed_ms = started.elapsed().as_millis() as u64, "reply");
                        return Ok(result);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(NeutronError::Timeout {
                        topic: key,
                        method: req.method,
                        msg_id: msg_id.clone(),
                        timeout,
                    })
                }
                Err(RecvTimeoutError::Disconnected) => return Err(NeutronError::Closed),
            }
        }
    }

    /// A delivery on the reply queue.
    fn route_reply(&self, body: &[u8]) {
        let reply = match Reply::from_body(body) {
            Ok(r) => r,
            Err(e) => {
                info!(error = %e, "undecodable message on the reply queue: dropped");
                debug!(body = %String::from_utf8_lossy(body), "the undecodable reply");
                return;
            }
        };
        if !lock(&self.reply_dups).first_time(reply.unique_id.as_deref()) {
            debug!(msg_id = ?reply.msg_id, "duplicate reply dropped");
            return;
        }
        let Some(msg_id) = reply.msg_id.clone() else {
            debug!("reply without _msg_id dropped");
            return;
        };
        let waiter = lock(&self.pending).get(&msg_id).cloned();
        match waiter {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => debug!(
                %msg_id,
                "reply for a call that is no longer waiting (timed out): dropped"
            ),
        }
    }

    /// Sends a call's reply to its reply queue (oslo's `AMQPIncomingMessage.reply`): a
    /// missing queue (the caller reconnecting) is retried for
    /// `kombu_missing_consumer_retry_timeout`.
    fn send_reply(&self, call: &CallHeader, reply: &Reply) {
        let deadline = Instant::now() + self.opts.rabbit.missing_consumer_retry_timeout;
        let body = reply.to_body();
        loop {
            match self.publish(None, &call.reply_q, &body, None, true, deadline) {
                Ok(()) => return,
                Err(PublishFailure::Returned) if Instant::now() + REPLY_RETRY < deadline => {
                    debug!(msg_id = %call.msg_id, reply_q = %call.reply_q, "reply queue missing: retrying");
                    std::thread::sleep(REPLY_RETRY);
                }
                Err(f) => {
                    let why = match f {
                        PublishFailure::NotConnected => "no connection".to_owned(),
                        PublishFailure::Returned => "the reply queue does not exist".to_owned(),
                        PublishFailure::Failed(r) => r,
                    };
                    warn!(msg_id = %call.msg_id, reply_q = %call.reply_q, reason = %why, "reply abandoned");
                    return;
                }
            }
        }
    }
}

fn declare_exchange(channel: &Channel, ex: &ExchangeSpec, deadline: Instant) -> Result<(), String> {
    step(
        deadline,
        &format!("exchange.declare {}", ex.name),
        channel.exchange_declare(
            &ex.name,
            if ex.fanout {
                ExchangeKind::Fanout
            } else {
                ExchangeKind::Topic
            },
            ExchangeDeclareOptions {
                passive: false,
                durable: ex.durable,
                auto_delete: ex.auto_delete,
                internal: false,
                nowait: false,
            },
            FieldTable::default(),
        ),
    )
}

fn declare_queue(channel: &Channel, q: &QueueSpec, deadline: Instant) -> Result<(), String> {
    step(
        deadline,
        &format!("queue.declare {}", q.name),
        channel.queue_declare(
            &q.name,
            QueueDeclareOptions {
                passive: false,
                durable: q.durable,
                exclusive: false,
                auto_delete: q.auto_delete,
                nowait: false,
            },
            q.arguments.clone(),
        ),
    )
    .map(|_| ())
}

fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
    deadline: Instant,
) -> Result<(), String> {
    step(
        deadline,
        &format!("queue.bind {queue} to {exchange} ({key})"),
        channel.queue_bind(
            queue,
            exchange,
            key,
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
}

/// The supervisor: keeps one connection up until shutdown.
fn supervise(inner: &Arc<Inner>, rx: &mpsc::Receiver<Control>) {
    let hosts = {
        let mut h = inner.opts.url.hosts.clone();
        // oslo shuffles the hosts once (spreading agents over a cluster), then goes round.
        if h.len() > 1 {
            let k = fastrand::usize(..h.len());
            h.rotate_left(k);
        }
        h
    };
    let mut idx = 0usize;
    let mut tried_this_round = 0usize;
    let mut round: u32 = 0;
    let mut attempt: u32 = 0;
    'outer: loop {
        if inner.shutdown.load(Ordering::SeqCst) {
            break;
        }
        if inner.opts.rabbit.shuffle_hosts && hosts.len() > 1 {
            idx = fastrand::usize(..hosts.len());
        }
        let host = &hosts[idx % hosts.len()];
        let generation = lock(&inner.link).generation + 1;
        match connect(inner, host, generation) {
            Ok(mut link) => {
                {
                    // Servers stopped while this connection was being set up lose their
                    // consumers now; the others are marked as consuming on it.
                    let servers = lock(&inner.servers);
                    link.server_consumers
                        .retain(|id, _| servers.contains_key(id));
                    for (id, s) in servers.iter() {
                        if link.server_consumers.contains_key(id) {
                            s.declared_on.store(generation, Ordering::SeqCst);
                        }
                    }
                }
                {
                    let mut g = lock(&inner.link);
                    g.generation = generation;
                    g.link = Some(link);
                    g.state = ConnectionState::Connected {
                        host: host.to_string(),
                        since: SystemTime::now(),
                        generation,
                    };
                }
                inner.changed.notify_all();
                info!(broker = %host, generation, attempts = attempt, "connected to the message broker");
                attempt = 0;
                round = 0;
                tried_this_round = 0;
                // Watch the link.
                let reason = loop {
                    match rx.recv_timeout(WATCH_INTERVAL) {
                        Ok(Control::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                            break 'outer;
                        }
                        Ok(Control::Kick {
                            generation: g,
                            reason,
                        }) => {
                            if g == generation {
                                break reason;
                            }
                        }
                        Ok(Control::Declare(id)) => {
                            if let Err(e) = declare_server_now(inner, id, generation) {
                                break e;
                            }
                        }
                        Ok(Control::Remove(id)) => {
                            let consumers = lock(&inner.link)
                                .link
                                .as_mut()
                                .and_then(|l| l.server_consumers.remove(&id));
                            drop(consumers);
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            let g = lock(&inner.link);
                            if let Some(l) = &g.link {
                                if !l.conn.status().connected() {
                                    break "the connection was lost".to_owned();
                                }
                                if !l.consume.status().connected() {
                                    break "the consuming channel was closed".to_owned();
                                }
                            }
                        }
                    }
                };
                warn!(broker = %host, %reason, "lost the message broker: reconnecting");
                teardown(inner, Some(reason));
                idx += 1;
            }
            Err(e) => {
                attempt += 1;
                tried_this_round += 1;
                if attempt == 1 || attempt % 10 == 0 {
                    warn!(broker = %host, error = %e, attempt, "cannot connect to the message broker");
                } else {
                    debug!(broker = %host, error = %e, attempt, "cannot connect to the message broker");
                }
                {
                    let mut g = lock(&inner.link);
                    g.state = ConnectionState::Connecting {
                        attempt,
                        last_error: Some(format!("{host}: {e}")),
                    };
                }
                inner.changed.notify_all();
                idx += 1;
                if tried_this_round >= hosts.len() {
                    tried_this_round = 0;
                    let delay = backoff(
                        round,
                        inner.opts.rabbit.retry_interval,
                        inner.opts.rabbit.interval_max,
                    );
                    round = round.saturating_add(1);
                    // Sleep, but wake for a shutdown.
                    let until = Instant::now() + delay;
                    while let Some(left) = until.checked_duration_since(Instant::now()) {
                        match rx.recv_timeout(left) {
                            Ok(Control::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                                break 'outer
                            }
                            Ok(_) => continue,
                            Err(RecvTimeoutError::Timeout) => break,
                        }
                    }
                }
            }
        }
    }
    teardown(inner, None);
    lock(&inner.link).state = ConnectionState::Closed;
    // Calls still waiting: their channels disconnect.
    lock(&inner.pending).clear();
    inner.changed.notify_all();
    debug!("AMQP supervisor stopped");
}

/// Exponential backoff with jitter: `base * 2^round` capped at `cap`, then a uniform draw
/// in its upper half (so two agents restarted together do not retry in step).
pub fn backoff(round: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << round.min(20));
    let d = exp.min(cap);
    let half = d / 2;
    half + Duration::from_nanos(fastrand::u64(
        ..=half.as_nanos().min(u64::MAX as u128) as u64,
    ))
}

/// Drops the link (closing the connection, bounded) and marks the state.
fn teardown(inner: &Inner, reason: Option<String>) {
    let link = {
        let mut g = lock(&inner.link);
        if let Some(r) = reason {
            g.state = ConnectionState::Connecting {
                attempt: 0,
                last_error: Some(r),
            };
        }
        g.link.take()
    };
    inner.changed.notify_all();
    if let Some(l) = link {
        if l.conn.status().connected() {
            let _ = block(
                Instant::now() + Duration::from_secs(2),
                l.conn.close(200, "closing"),
            );
        }
        drop(l);
    }
}

/// What a new connection is made of, before it becomes a [`Link`].
type LinkParts = (Channel, Channel, Consumer, BTreeMap<u64, Vec<Consumer>>);

/// Opens a connection to `host`: channels, the reply queue and its consumer, every
/// registered server's consumers.
fn connect(inner: &Arc<Inner>, host: &TransportHost, generation: u64) -> Result<Link, String> {
    let o = &inner.opts;
    let deadline = Instant::now() + o.connect_timeout;
    let uri = AMQPUri {
        scheme: AMQPScheme::AMQP,
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: host.username.clone(),
                password: host.password.expose().to_owned(),
            },
            host: host.hostname.clone(),
            port: host.port,
        },
        vhost: o.url.vhost.clone(),
        query: AMQPQueryString {
            heartbeat: Some(o.rabbit.heartbeat_timeout_threshold),
            connection_timeout: Some(o.connect_timeout.as_millis() as u64),
            auth_mechanism: Some(match o.rabbit.login_method {
                LoginMethod::AmqPlain => lapin::uri::SASLMechanism::AMQPlain,
                LoginMethod::Plain => lapin::uri::SASLMechanism::Plain,
                LoginMethod::RabbitCrDemo => lapin::uri::SASLMechanism::RabbitCrDemo,
            }),
            ..AMQPQueryString::default()
        },
    };
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(o.connection_name.as_bytes().to_vec()));
    let conn = step(deadline, "connect", Connection::connect_uri(uri, props))?;
    let result = (|| -> Result<LinkParts, String> {
        let publish = step(deadline, "channel.open", conn.create_channel())?;
        step(
            deadline,
            "confirm.select",
            publish.confirm_select(ConfirmSelectOptions::default()),
        )?;
        let consume = step(deadline, "channel.open", conn.create_channel())?;
        if o.rabbit.rabbit_qos_prefetch_count > 0 {
            step(
                deadline,
                "basic.qos",
                consume.basic_qos(
                    o.rabbit.rabbit_qos_prefetch_count,
                    BasicQosOptions::default(),
                ),
            )?;
        }
        // The reply queue, through the default exchange (no binding).
        declare_queue(
            &consume,
            &o.rabbit.reply_queue(&inner.reply_queue),
            deadline,
        )?;
        let reply_consumer = step(
            deadline,
            &format!("basic.consume {}", inner.reply_queue),
            consume.basic_consume(
                &inner.reply_queue,
                &format!("l3agent-{generation}-reply"),
                BasicConsumeOptions::default(),
                consumer_arguments(&o.rabbit, None),
            ),
        )?;
        let weak = Arc::downgrade(inner);
        let kick = lock(&inner.control).clone();
        reply_consumer.set_delegate(move |d: DeliveryResult| {
            let weak = weak.clone();
            let kick = kick.clone();
            async move {
                match d {
                    Ok(Some(delivery)) => {
                        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                        if let Some(inner) = weak.upgrade() {
                            inner.route_reply(&delivery.data);
                        }
                    }
                    Ok(None) => {
                        let _ = kick.send(Control::Kick {
                            generation,
                            reason: "the broker cancelled the reply consumer".into(),
                        });
                    }
                    Err(e) => {
                        let _ = kick.send(Control::Kick {
                            generation,
                            reason: format!("reply consumer: {e}"),
                        });
                    }
                }
            }
        });
        let mut server_consumers = BTreeMap::new();
        let servers: Vec<Arc<ServerEntry>> = lock(&inner.servers).values().cloned().collect();
        for s in servers {
            let consumers = declare_server(inner, &consume, &s, generation, deadline)?;
            server_consumers.insert(s.id, consumers);
        }
        Ok((publish, consume, reply_consumer, server_consumers))
    })();
    match result {
        Ok((publish, consume, reply_consumer, server_consumers)) => Ok(Link {
            conn,
            publish,
            consume,
            _reply_consumer: reply_consumer,
            server_consumers,
            declared: HashSet::new(),
        }),
        Err(e) => {
            if conn.status().connected() {
                let _ = block(
                    Instant::now() + Duration::from_secs(2),
                    conn.close(200, "setup failed"),
                );
            }
            Err(e)
        }
    }
}

/// Consumer arguments oslo passes (`Consumer.declare`).
fn consumer_arguments(o: &RabbitOptions, stream_offset: Option<Option<i64>>) -> FieldTable {
    let mut t = FieldTable::default();
    if o.enable_cancel_on_failover {
        t.insert("x-cancel-on-ha-failover".into(), AMQPValue::Boolean(true));
    }
    if let Some(offset) = stream_offset {
        let mut s = FieldTable::default();
        s.insert(
            "x-stream-offset".into(),
            match offset {
                Some(n) => AMQPValue::LongLongInt(n),
                None => str_value("last"),
            },
        );
        return s;
    }
    t
}

/// Declares one server's exchanges, queues and bindings, and starts its consumers.
fn declare_server(
    inner: &Arc<Inner>,
    channel: &Channel,
    s: &Arc<ServerEntry>,
    generation: u64,
    deadline: Instant,
) -> Result<Vec<Consumer>, String> {
    let o = &inner.opts.rabbit;
    let topic_ex = o.topic_exchange(&inner.opts.exchange);
    declare_exchange(channel, &topic_ex, deadline)?;
    let server_topic = format!("{}.{}", s.topic, s.server);
    let mut queues: Vec<(QueueSpec, bool)> = Vec::new();
    for name in [s.topic.as_str(), server_topic.as_str()] {
        let q = o.topic_queue(name);
        declare_queue(channel, &q, deadline)?;
        bind(channel, name, &topic_ex.name, name, deadline)?;
        queues.push((q, false));
    }
    let fanout_ex = o.fanout_exchange(&s.topic);
    declare_exchange(channel, &fanout_ex, deadline)?;
    let fq = o.fanout_queue(&s.fanout_queue);
    declare_queue(channel, &fq, deadline)?;
    bind(channel, &fq.name, &fanout_ex.name, &s.topic, deadline)?;
    queues.push((fq, o.rabbit_stream_fanout));

    let mut consumers = Vec::new();
    for (i, (q, stream)) in queues.into_iter().enumerate() {
        let offset = stream.then(|| *lock(&s.stream_offset));
        let consumer = step(
            deadline,
            &format!("basic.consume {}", q.name),
            channel.basic_consume(
                &q.name,
                &format!("l3agent-{generation}-{}-{i}", s.id),
                BasicConsumeOptions::default(),
                consumer_arguments(o, offset),
            ),
        )?;
        let tx = lock(&s.tx).clone();
        let kick = lock(&inner.control).clone();
        let entry = Arc::downgrade(s);
        let queue = q.name.clone();
        consumer.set_delegate(move |d: DeliveryResult| {
            let tx = tx.clone();
            let kick = kick.clone();
            let entry = entry.clone();
            let queue = queue.clone();
            async move {
                match d {
                    Ok(Some(delivery)) => {
                        if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                            warn!(%queue, error = %e, "discarding an RPC request: its acknowledgement failed");
                            return;
                        }
                        if stream {
                            let offset = delivery.properties.headers().as_ref().and_then(|h| {
                                match h.inner().get("x-stream-offset") {
                                    Some(AMQPValue::LongLongInt(n)) => Some(*n),
                                    Some(AMQPValue::LongInt(n)) => Some(i64::from(*n)),
                                    _ => None,
                                }
                            });
                            if let (Some(n), Some(e)) = (offset, entry.upgrade()) {
                                *lock(&e.stream_offset) = Some(n + 1);
                            }
                        }
                        let _ = tx.send(Incoming {
                            body: delivery.data,
                            routing_key: delivery.routing_key.to_string(),
                        });
                    }
                    Ok(None) => {
                        let _ = kick.send(Control::Kick {
                            generation,
                            reason: format!("the broker cancelled the consumer of {queue}"),
                        });
                    }
                    Err(e) => {
                        let _ = kick.send(Control::Kick {
                            generation,
                            reason: format!("consumer of {queue}: {e}"),
                        });
                    }
                }
            }
        });
        consumers.push(consumer);
    }
    Ok(consumers)
}

/// Declares a server registered while connected.
fn declare_server_now(inner: &Arc<Inner>, id: u64, generation: u64) -> Result<(), String> {
    let Some(entry) = lock(&inner.servers).get(&id).cloned() else {
        return Ok(());
    };
    if entry.declared_on.load(Ordering::SeqCst) == generation {
        return Ok(());
    }
    let channel = match lock(&inner.link).link.as_ref() {
        Some(l) => l.consume.clone(),
        None => return Ok(()),
    };
    let deadline = Instant::now() + inner.opts.connect_timeout;
    let consumers = declare_server(inner, &channel, &entry, generation, deadline)?;
    {
        let mut g = lock(&inner.link);
        if g.generation == generation {
            if let Some(l) = g.link.as_mut() {
                l.server_consumers.insert(id, consumers);
            }
        }
    }
    entry.declared_on.store(generation, Ordering::SeqCst);
    inner.changed.notify_all();
    Ok(())
}

/// A server's dispatcher: one request at a time, as they arrive.
fn dispatch_loop(
    inner: &Arc<Inner>,
    topic: &str,
    handler: &dyn Handler,
    rx: &mpsc::Receiver<Incoming>,
    stop: &AtomicBool,
) {
    let mut dups = DuplicateFilter::default();
    while !stop.load(Ordering::SeqCst) {
        let incoming = match rx.recv_timeout(DISPATCH_POLL) {
            Ok(i) => i,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        dispatch_one(inner, topic, handler, &mut dups, &incoming);
    }
}

fn dispatch_one(
    inner: &Inner,
    topic: &str,
    handler: &dyn Handler,
    dups: &mut DuplicateFilter,
    incoming: &Incoming,
) {
    let req = match Request::from_body(&incoming.body) {
        Ok(r) => r,
        Err(e) => {
            info!(topic, routing_key = %incoming.routing_key, error = %e, "undecodable RPC message: dropped");
            debug!(body = %String::from_utf8_lossy(&incoming.body), "the undecodable message");
            return;
        }
    };
    if !dups.first_time(req.unique_id.as_deref()) {
        info!(topic, method = %req.method, unique_id = req.unique_id.as_deref().unwrap_or("-"), "duplicate RPC message: dropped");
        return;
    }
    let started = Instant::now();
    let outcome =
        if req.namespace.is_some() || !version_is_compatible(handler.version(), &req.version) {
            Err(Box::new(RemoteFailure::unsupported_version(
                &req.version,
                Some(&req.method),
            )))
        } else {
            handler.handle(&req)
        };
    match (&req.call, outcome) {
        (Some(call), Ok(result)) => {
            inner.send_reply(call, &Reply::result(&call.msg_id, result));
            debug!(topic, method = %req.method, msg_id = %call.msg_id, elapsed_us = started.elapsed().as_micros() as u64, "replied");
        }
        (Some(call), Err(failure)) => {
            if failure.module == wire::DISPATCHER_MODULE {
                info!(topic, method = %req.method, version = %req.version, msg_id = %call.msg_id, %failure, "call refused: failure sent back");
            } else {
                debug!(topic, method = %req.method, msg_id = %call.msg_id, %failure, "call failed: failure sent back");
            }
            inner.send_reply(call, &Reply::failure(&call.msg_id, *failure));
        }
        (None, Ok(_)) => {}
        (None, Err(failure)) => {
            // The handler logged its own failures; the dispatcher's are logged here.
            if failure.module == wire::DISPATCHER_MODULE {
                info!(topic, method = %req.method, version = %req.version, %failure, "cast refused");
            } else {
                debug!(topic, method = %req.method, %failure, "cast failed");
            }
        }
    }
}

/// A running RPC server (see [`Transport::serve`]); stopped on drop.
pub struct RpcServer {
    transport: Transport,
    entry: Arc<ServerEntry>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer")
            .field("topic", &self.entry.topic)
            .field("server", &self.entry.server)
            .field("fanout_queue", &self.entry.fanout_queue)
            .finish()
    }
}

impl RpcServer {
    /// Whether its consumers are declared on the current connection.
    pub fn is_consuming(&self) -> bool {
        let g = lock(&self.transport.inner.link);
        matches!(g.state, ConnectionState::Connected { .. })
            && self.entry.declared_on.load(Ordering::SeqCst) == g.generation
    }

    /// Waits up to `timeout` until it consumes; true if it does.
    pub fn wait_consuming(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let inner = &self.transport.inner;
        let mut g = lock(&inner.link);
        loop {
            if matches!(g.state, ConnectionState::Connected { .. })
                && self.entry.declared_on.load(Ordering::SeqCst) == g.generation
            {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || inner.shutdown.load(Ordering::SeqCst) {
                return false;
            }
            g = inner
                .changed
                .wait_timeout(g, (deadline - now).min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Its fanout queue's name.
    pub fn fanout_queue(&self) -> &str {
        &self.entry.fanout_queue
    }

    /// Stops consuming and joins the dispatcher (bounded: it checks its stop flag every
    /// 200 ms, after the request in progress).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        lock(&self.transport.inner.servers).remove(&self.entry.id);
        self.transport.inner.control(Control::Remove(self.entry.id));
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(t: &FieldTable) -> Vec<(String, String)> {
        t.inner()
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    AMQPValue::LongString(s) => {
                        format!("{:?}", String::from_utf8_lossy(s.as_bytes()))
                    }
                    other => format!("{other:?}"),
                };
                (k.to_string(), v)
            })
            .collect()
    }

    #[test]
    fn classic_defaults_declare_what_oslo_declares() {
        let o = RabbitOptions::default();
        let ex = o.topic_exchange("neutron");
        assert_eq!(
            ex,
            ExchangeSpec {
                name: "neutron".into(),
                fanout: false,
                durable: false,
                auto_delete: false
            }
        );
        let q = o.topic_queue("l3_agent.node1");
        assert!(!q.durable && !q.auto_delete);
        assert!(table(&q.arguments).is_empty());
        let f = o.fanout_exchange("l3_agent");
        assert_eq!(
            (f.name.as_str(), f.fanout, f.durable, f.auto_delete),
            ("l3_agent_fanout", true, false, true)
        );
        let fq = o.fanout_queue("l3_agent_fanout_x");
        assert!(!fq.durable && !fq.auto_delete);
        assert_eq!(
            table(&fq.arguments),
            vec![("x-expires".into(), "LongInt(1800000)".into())]
        );
        let rq = o.reply_queue("reply_x");
        assert!(!rq.durable && !rq.auto_delete);
        assert_eq!(
            table(&rq.arguments),
            vec![("x-expires".into(), "LongInt(1800000)".into())]
        );
    }

    #[test]
    fn quorum_ha_stream_and_durability_options_change_declarations_like_oslo() {
        let o = RabbitOptions {
            rabbit_quorum_queue: true,
            rabbit_quorum_delivery_limit: 3,
            rabbit_transient_quorum_queue: true,
            ..RabbitOptions::default()
        };
        let q = o.topic_queue("l3_agent");
        assert!(q.durable);
        assert_eq!(
            table(&q.arguments),
            vec![
                ("x-delivery-limit".into(), "LongInt(3)".into()),
                ("x-queue-type".into(), "\"quorum\"".into())
            ]
        );
        assert!(o.topic_exchange("neutron").durable);
        let fq = o.fanout_queue("f");
        assert!(fq.durable);
        assert_eq!(table(&fq.arguments).len(), 3);
        assert!(o.fanout_exchange("l3_agent").durable);

        let ha = RabbitOptions {
            rabbit_ha_queues: true,
            amqp_durable_queues: true,
            amqp_auto_delete: true,
            rabbit_transient_queues_ttl: 0,
            ..RabbitOptions::default()
        };
        let q = ha.topic_queue("l3_agent");
        assert!(q.durable && q.auto_delete);
        assert_eq!(
            table(&q.arguments),
            vec![("x-ha-policy".into(), "\"all\"".into())]
        );
        assert!(ha.topic_exchange("neutron").auto_delete);
        // ttl 0: no x-expires.
        assert_eq!(table(&ha.reply_queue("r").arguments).len(), 1);

        let stream = RabbitOptions {
            rabbit_stream_fanout: true,
            rabbit_transient_quorum_queue: true,
            rabbit_qos_prefetch_count: 10,
            ..RabbitOptions::default()
        };
        let fq = stream.fanout_queue("l3_agent_fanout");
        assert!(fq.durable);
        assert_eq!(
            table(&fq.arguments),
            vec![
                ("x-max-age".into(), "\"1800s\"".into()),
                ("x-queue-type".into(), "\"stream\"".into())
            ]
        );
        let c = consumer_arguments(&stream, Some(None));
        assert_eq!(
            table(&c),
            vec![("x-stream-offset".into(), "\"last\"".into())]
        );
        let c = consumer_arguments(&stream, Some(Some(42)));
        assert_eq!(
            table(&c),
            vec![("x-stream-offset".into(), "LongLongInt(42)".into())]
        );
    }

    #[test]
    fn messages_carry_oslos_properties() {
        let p = message_properties(Some(Duration::from_secs(60)));
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(
            p.content_encoding().as_ref().map(|s| s.as_str()),
            Some("utf-8")
        );
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(p.expiration().as_ref().map(|s| s.as_str()), Some("60000"));
        assert_eq!(*message_properties(None).expiration(), None);
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_stays_bounded() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(30);
        for round in 0..40 {
            let d = backoff(round, base, cap);
            let full = base.saturating_mul(1 << round.min(20)).min(cap);
            assert!(d >= full / 2 && d <= full, "round {round}: {d:?}");
        }
        assert!(backoff(100, base, cap) <= cap);
    }
}
