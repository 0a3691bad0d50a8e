//! `neutron-l3-agent --config-file /etc/neutron/neutron.conf --config-file
//! /etc/neutron/l3_agent.ini`: the options of those files this agent uses, typed.
//!
//! Files are read as oslo.config reads them ([`crate::ini`]); values go through oslo's
//! template substitution (`$state_path`, `${host}`, `$$` and `\$` for a literal `$`);
//! booleans accept oslo's spellings (`true/false/yes/no/1/0/on/off`, any case). A value this
//! agent cannot honour is an error that names the file, line, section, key and value: the
//! agent refuses to start rather than run with a behaviour the operator did not ask for.
//! Keys this agent does not use are ignored with one `debug` line each.
//!
//! ## `[oslo_messaging_rabbit]`: what each option does here
//!
//! | option | decision |
//! |---|---|
//! | `amqp_durable_queues`, `amqp_auto_delete` | implemented: durable / auto-delete topic exchange and queues, as oslo declares them |
//! | `rabbit_ha_queues` | implemented: `x-ha-policy: all` (an error together with quorum queues, as in oslo) |
//! | `rabbit_quorum_queue` (+ `rabbit_quorum_delivery_limit`, `_max_memory_length`, `_max_memory_bytes`) | implemented: `x-queue-type: quorum` (+ limits) on topic queues, durable |
//! | `rabbit_transient_quorum_queue` | implemented: quorum fanout and reply queues, durable fanout exchanges |
//! | `rabbit_stream_fanout` | implemented: one `<topic>_fanout` stream queue (`x-queue-type: stream`, `x-max-age`), consumed from offset `last`, then from the offset after the last message seen; needs `rabbit_qos_prefetch_count > 0` and `rabbit_transient_quorum_queue`, as in oslo |
//! | `use_queue_manager` (+ `hostname`, `processname`) | implemented: queue names `reply_<hostname>:<processname>:<n>` and `<topic>_fanout_<hostname>:<processname>:<n>`, `n` counted from 1 in this process (oslo shares a counter between the processes of one service through `/dev/shm`; this agent is one process) |
//! | `rabbit_transient_queues_ttl` | implemented: `x-expires` (or the stream's `x-max-age`); 0: none |
//! | `rabbit_qos_prefetch_count` | implemented: `basic.qos` on the consuming channel |
//! | `heartbeat_timeout_threshold` | implemented: the AMQP heartbeat negotiated (0: none) |
//! | `enable_cancel_on_failover` | implemented: consumer argument `x-cancel-on-ha-failover` |
//! | `rabbit_retry_interval`, `rabbit_interval_max` | implemented: first and longest reconnect delay (exponential, with jitter) |
//! | `rabbit_retry_backoff` | read; the delay doubles instead of growing by this step |
//! | `kombu_failover_strategy` | implemented: `round-robin` (hosts in order) or `shuffle` |
//! | `kombu_missing_consumer_retry_timeout` | implemented: how long a reply to a missing reply queue is retried |
//! | `rabbit_login_method` | `AMQPLAIN`, `PLAIN`, `RABBIT-CR-DEMO`; `EXTERNAL` is refused (needs TLS) |
//! | `ssl` | `false` only: this build has no TLS, `true` is refused (so is `?ssl=1` in the URL) |
//! | `kombu_compression` | refused when set: messages would be compressed (kombu) and this agent does not compress |
//! | everything else (`rpc_conn_pool_size`, `kombu_reconnect_delay`, `heartbeat_rate`, `direct_mandatory_flag`, `ssl_*`, ...) | ignored: no effect on what goes on the wire |

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use l3agent_types::IfName;
use tracing::debug;

use crate::error::{NeutronError, Origin};
use crate::ini::{self, IniSet};

/// A value that must never be shown: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that needs it (the AMQP login).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One broker of `transport_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportHost {
    /// Host name or address (IPv6 without brackets).
    pub hostname: String,
    /// Port (5672 when not given).
    pub port: u16,
    /// User name (percent-decoded; `guest` when not given, as kombu).
    pub username: String,
    /// Password (percent-decoded; `guest` when not given).
    pub password: Secret,
}

impl fmt::Display for TransportHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hostname.contains(':') {
            write!(f, "[{}]:{}", self.hostname, self.port)
        } else {
            write!(f, "{}:{}", self.hostname, self.port)
        }
    }
}

/// `transport_url`, parsed as oslo.messaging's `TransportURL.parse`:
/// `rabbit://user:pass@host:port[,user:pass@host2:port2]/vhost?query`. `Display` and `Debug`
/// never show a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportUrl {
    /// `rabbit` (or its alias `kombu`).
    pub scheme: String,
    /// The brokers, in the order written (at least one: `localhost` when none is written).
    pub hosts: Vec<TransportHost>,
    /// The virtual host (percent-decoded; `/` when empty or absent).
    pub vhost: String,
    /// Query options (percent-decoded; repeated keys joined with `,`, as oslo).
    pub query: Vec<(String, String)>,
}

impl fmt::Display for TransportUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        for (i, h) in self.hosts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:***@{h}", h.username)?;
        }
        write!(f, "/{}", self.vhost.replace('%', "%25").replace('/', "%2F"))?;
        for (i, (k, v)) in self.query.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

impl TransportUrl {
    /// Parses a transport URL; the error says why (without echoing the URL, which may hold
    /// a password).
    pub fn parse(url: &str) -> Result<TransportUrl, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err("no scheme specified (expected rabbit://...)".into());
        };
        if scheme.is_empty() {
            return Err("no scheme specified (expected rabbit://...)".into());
        }
        match scheme {
            "rabbit" | "kombu" => {}
            "amqp" => {
                return Err(
                    "amqp:// is oslo.messaging's AMQP 1.0 driver; this agent speaks AMQP 0-9-1 to RabbitMQ: use rabbit://"
                        .into(),
                )
            }
            other => {
                return Err(format!(
                    "unsupported transport {other:?}: only rabbit:// (RabbitMQ) is supported"
                ))
            }
        }
        let rest = rest.split('#').next().unwrap_or("");
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (netloc, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], Some(&before_query[i..])),
            None => (before_query, None),
        };
        let vhost = match path {
            Some(p) => percent_decode(&p[1..]),
            None => String::new(),
        };
        let vhost = if vhost.is_empty() {
            "/".to_owned()
        } else {
            vhost
        };

        let mut hosts = Vec::new();
        for host in netloc.split(',') {
            if host.is_empty() {
                continue;
            }
            let (mut username, mut password, mut hostport) = (None, None, host);
            if let Some((userinfo, h)) = host.rsplit_once('@') {
                hostport = h;
                match userinfo.split_once(':') {
                    Some((u, p)) => {
                        username = Some(percent_decode(u));
                        password = Some(percent_decode(p));
                    }
                    None => username = Some(percent_decode(userinfo)),
                }
            }
            let (hostname, port) = parse_host_port(hostport)?;
            hosts.push(TransportHost {
                hostname: if hostname.is_empty() {
                    "localhost".to_owned()
                } else {
                    hostname
                },
                port: port.unwrap_or(5672),
                username: username
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| "guest".into()),
                password: Secret(
                    password
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| "guest".into()),
                ),
            });
        }
        if hosts.is_empty() {
            hosts.push(TransportHost {
                hostname: "localhost".into(),
                port: 5672,
                username: "guest".into(),
                password: Secret("guest".into()),
            });
        }
        let mut q: Vec<(String, String)> = Vec::new();
        for pair in query.unwrap_or("").split(['&', ';']) {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let (k, v) = (form_decode(k), form_decode(v));
            if v.is_empty() {
                continue;
            }
            match q.iter_mut().find(|(key, _)| *key == k) {
                Some((_, old)) => {
                    old.push(',');
                    old.push_str(&v);
                }
                None => q.push((k, v)),
            }
        }
        Ok(TransportUrl {
            scheme: scheme.to_owned(),
            hosts,
            vhost,
            query: q,
        })
    }
}

/// A URL as written with every password replaced by `***` (also one that does not parse).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (netloc, tail) = rest.split_at(end);
    let hosts: Vec<String> = netloc
        .split(',')
        .map(|h| match h.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => h.to_owned(),
            },
            None => h.to_owned(),
        })
        .collect();
    format!("{scheme}://{}{tail}", hosts.join(","))
}

/// oslo_utils `netutils.parse_host_port`.
fn parse_host_port(address: &str) -> Result<(String, Option<u16>), String> {
    let port = |p: &str| -> Result<Option<u16>, String> {
        if p.is_empty() {
            return Ok(None);
        }
        p.parse::<u16>()
            .map(Some)
            .map_err(|_| format!("invalid port {p:?}"))
    };
    if let Some(rest) = address.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err("an IPv6 address in [ ] is missing its ]".into());
        };
        let p = match after.split_once(':') {
            Some((_, p)) => port(p)?,
            None => None,
        };
        return Ok((host.to_owned(), p));
    }
    if address.matches(':').count() == 1 {
        let (h, p) = address.split_once(':').unwrap_or((address, ""));
        return Ok((h.to_owned(), port(p)?));
    }
    Ok((address.to_owned(), None))
}

/// Python's `urllib.parse.unquote`: `%XX` decoded as UTF-8, invalid sequences kept as they
/// are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `parse_qs` decoding: `+` is a space, then percent-decoding.
fn form_decode(s: &str) -> String {
    percent_decode(&s.replace('+', " "))
}

/// `agent_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentMode {
    /// Centralised routers.
    Legacy,
    /// DVR on a compute node.
    Dvr,
    /// DVR plus the centralised SNAT.
    DvrSnat,
    /// DVR without external access on this node (refused when the config is read: not
    /// supported yet).
    DvrNoExternal,
}

impl AgentMode {
    /// As written in the config and reported to the server.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::Legacy => "legacy",
            AgentMode::Dvr => "dvr",
            AgentMode::DvrSnat => "dvr_snat",
            AgentMode::DvrNoExternal => "dvr_no_external",
        }
    }
}

/// `ha_vrrp_auth_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VrrpAuthType {
    /// Simple password.
    Pass,
    /// IPsec AH.
    Ah,
}

/// The `ha_*` options, read and kept for the HA router implementation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaOptions {
    /// `ha_confs_path` (default `$state_path/ha_confs`).
    pub confs_path: PathBuf,
    /// `ha_vrrp_auth_type` (default `PASS`).
    pub vrrp_auth_type: VrrpAuthType,
    /// `ha_vrrp_auth_password` (default none).
    pub vrrp_auth_password: Option<Secret>,
    /// `ha_vrrp_advert_int` seconds (default 2).
    pub vrrp_advert_int: u32,
    /// `ha_vrrp_health_check_interval` seconds (default 0: off).
    pub vrrp_health_check_interval: u32,
    /// `ha_conntrackd_enabled` (default false).
    pub conntrackd_enabled: bool,
    /// The `ha_conntrackd_*` knobs as given (`None`: Neutron's default); checked by the
    /// agent config (`agent.ha.conntrackd_*`).
    pub conntrackd: ConntrackdKnobs,
}

/// The `[DEFAULT] ha_conntrackd_*` options that were set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConntrackdKnobs {
    /// `ha_conntrackd_hashsize`.
    pub hashsize: Option<u32>,
    /// `ha_conntrackd_hashlimit`.
    pub hashlimit: Option<u32>,
    /// `ha_conntrackd_unix_backlog`.
    pub unix_backlog: Option<u32>,
    /// `ha_conntrackd_socketbuffersize`.
    pub socketbuffersize: Option<u32>,
    /// `ha_conntrackd_socketbuffersize_max_grown`.
    pub socketbuffersize_max_grown: Option<u32>,
    /// `ha_conntrackd_ipv4_mcast_addr`.
    pub ipv4_mcast_addr: Option<String>,
    /// `ha_conntrackd_group`.
    pub group: Option<u32>,
    /// `ha_conntrackd_sndsocketbuffer`.
    pub sndsocketbuffer: Option<u32>,
    /// `ha_conntrackd_rcvsocketbuffer`.
    pub rcvsocketbuffer: Option<u32>,
}

/// The `[oslo_messaging_rabbit]` options that shape what goes on the wire (see the module
/// documentation for each decision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitOptions {
    /// `amqp_durable_queues`.
    pub amqp_durable_queues: bool,
    /// `amqp_auto_delete`.
    pub amqp_auto_delete: bool,
    /// `rabbit_ha_queues`.
    pub rabbit_ha_queues: bool,
    /// `rabbit_quorum_queue`.
    pub rabbit_quorum_queue: bool,
    /// `rabbit_transient_quorum_queue`.
    pub rabbit_transient_quorum_queue: bool,
    /// `rabbit_quorum_delivery_limit` (0: none).
    pub rabbit_quorum_delivery_limit: u64,
    /// `rabbit_quorum_max_memory_length` (0: none).
    pub rabbit_quorum_max_memory_length: u64,
    /// `rabbit_quorum_max_memory_bytes` (0: none).
    pub rabbit_quorum_max_memory_bytes: u64,
    /// `rabbit_stream_fanout`.
    pub rabbit_stream_fanout: bool,
    /// `rabbit_transient_queues_ttl` seconds (0: none).
    pub rabbit_transient_queues_ttl: u64,
    /// `rabbit_qos_prefetch_count` (0: unlimited).
    pub rabbit_qos_prefetch_count: u16,
    /// `heartbeat_timeout_threshold` seconds (0: no heartbeat).
    pub heartbeat_timeout_threshold: u16,
    /// `use_queue_manager`.
    pub use_queue_manager: bool,
    /// `[oslo_messaging_rabbit] hostname` (queue manager names; default: the host name).
    pub qm_hostname: String,
    /// `[oslo_messaging_rabbit] processname` (default `neutron-l3-agent`).
    pub qm_processname: String,
    /// `enable_cancel_on_failover`.
    pub enable_cancel_on_failover: bool,
    /// `rabbit_login_method`.
    pub login_method: LoginMethod,
    /// `rabbit_retry_interval`: the first reconnect delay.
    pub retry_interval: Duration,
    /// `rabbit_interval_max`: the longest reconnect delay.
    pub interval_max: Duration,
    /// `kombu_failover_strategy` is `shuffle`.
    pub shuffle_hosts: bool,
    /// `kombu_missing_consumer_retry_timeout`.
    pub missing_consumer_retry_timeout: Duration,
}

impl Default for RabbitOptions {
    /// oslo.messaging's defaults.
    fn default() -> Self {
        RabbitOptions {
            amqp_durable_queues: false,
            amqp_auto_delete: false,
            rabbit_ha_queues: false,
            rabbit_quorum_queue: false,
            rabbit_transient_quorum_queue: false,
            rabbit_quorum_delivery_limit: 0,
            rabbit_quorum_max_memory_length: 0,
            rabbit_quorum_max_memory_bytes: 0,
            rabbit_stream_fanout: false,
            rabbit_transient_queues_ttl: 1800,
            rabbit_qos_prefetch_count: 0,
            heartbeat_timeout_threshold: 60,
            use_queue_manager: false,
            qm_hostname: "localhost".into(),
            qm_processname: "neutron-l3-agent".into(),
            enable_cancel_on_failover: false,
            login_method: LoginMethod::AmqPlain,
            retry_interval: Duration::from_secs(1),
            interval_max: Duration::from_secs(30),
            shuffle_hosts: false,
            missing_consumer_retry_timeout: Duration::from_secs(60),
        }
    }
}

/// `rabbit_login_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginMethod {
    /// `AMQPLAIN` (oslo's default).
    AmqPlain,
    /// `PLAIN`.
    Plain,
    /// `RABBIT-CR-DEMO`.
    RabbitCrDemo,
}

/// `interface_driver`: only Open vSwitch ports are supported (the Linux bridge driver was
/// removed from Neutron).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceDriver {
    /// `openvswitch` or `neutron.agent.linux.interface.OVSInterfaceDriver`; holds the value
    /// as written (it is reported to the server as is).
    Openvswitch(String),
}

impl InterfaceDriver {
    /// As written in the config.
    pub fn as_str(&self) -> &str {
        match self {
            InterfaceDriver::Openvswitch(s) => s,
        }
    }
}

/// The options of neutron.conf + l3_agent.ini this agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeutronAgentConfig {
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// `[DEFAULT] transport_url` (default `rabbit://`: guest on localhost).
    pub transport_url: TransportUrl,
    /// `[DEFAULT] host` (default: the host name): queue `l3_agent.<host>`, and the host the
    /// server schedules routers to.
    pub host: String,
    /// `[DEFAULT] state_path` (default `/var/lib/neutron`).
    pub state_path: PathBuf,
    /// `[DEFAULT] agent_mode` (default `legacy`).
    pub agent_mode: AgentMode,
    /// `[DEFAULT] interface_driver` (required).
    pub interface_driver: InterfaceDriver,
    /// `[OVS] integration_bridge` (default `br-int`).
    pub integration_bridge: IfName,
    /// `[OVS] ovsdb_connection` as `unix:PATH` (default [`DEFAULT_OVSDB_CONNECTION`]; a TCP
    /// or SSL remote is refused: router ports are plugged through the local ovsdb-server).
    pub ovsdb_connection: String,
    /// `[DEFAULT] periodic_interval` (default 40 s): how often a full sync that failed is
    /// tried again (Neutron's `periodic_sync_routers_task`).
    pub periodic_interval: Duration,
    /// `[AGENT] report_interval` (default 30 s; 0: no state reports).
    pub report_interval: Option<Duration>,
    /// `[AGENT] availability_zone` (default `nova`).
    pub availability_zone: String,
    /// `[AGENT] log_agent_heartbeats` (default false; reported to the server).
    pub log_agent_heartbeats: bool,
    /// `[DEFAULT] handle_internal_only_routers` (default true).
    pub handle_internal_only_routers: bool,
    /// `[DEFAULT] control_exchange` (default `neutron`).
    pub control_exchange: String,
    /// `[DEFAULT] rpc_response_timeout` (default 60 s).
    pub rpc_response_timeout: Duration,
    /// `[DEFAULT] metadata_port` (default 9697).
    pub metadata_port: u16,
    /// `[DEFAULT] enable_metadata_proxy` (default true).
    pub enable_metadata_proxy: bool,
    /// `[DEFAULT] metadata_proxy_socket` (default `$state_path/metadata_proxy`): the
    /// metadata agent's socket haproxy forwards to.
    pub metadata_proxy_socket: PathBuf,
    /// `[DEFAULT] metadata_proxy_user` (default: the agent's user, root).
    pub metadata_proxy_user: Option<String>,
    /// `[DEFAULT] metadata_proxy_group` (default: the agent's group, root).
    pub metadata_proxy_group: Option<String>,
    /// `[DEFAULT] min_rtr_adv_interval` (default 30 s) and `max_rtr_adv_interval` (100 s).
    pub rtr_adv_intervals: (u32, u32),
    /// The `ha_*` options.
    pub ha: HaOptions,
    /// `[oslo_messaging_rabbit]`.
    pub rabbit: RabbitOptions,
}

/// `[OVS] ovsdb_connection` when none is set: ovsdb-server's socket where Open vSwitch
/// packages put it (Neutron's own default is a build-time path, `/usr/local/var/run/...`).
pub const DEFAULT_OVSDB_CONNECTION: &str = "unix:/run/openvswitch/db.sock";

/// The machine's host name (`gethostname`), neutron's default `host`.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// oslo.config's boolean spellings.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Some(true),
        "false" | "0" | "off" | "no" => Some(false),
        _ => None,
    }
}

/// Keys whose values are secrets: never echoed in errors.
const SECRET_KEYS: [&str; 2] = ["transport_url", "ha_vrrp_auth_password"];

/// Reads options from an [`IniSet`], remembering which were used.
struct Reader<'a> {
    set: &'a IniSet,
    defaults: Vec<(&'static str, String)>,
    used: Mutex<HashSet<(String, String)>>,
}

/// A raw option: its substituted value and where it came from.
struct Raw {
    value: String,
    origin: Origin,
}

impl<'a> Reader<'a> {
    fn raw(&self, section: &str, key: &str) -> Option<Raw> {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((ini::normalize_section(section), key.to_owned()));
        let (path, e) = self.set.get(section, key)?;
        Some(Raw {
            value: self.substitute(&e.value, section, 0),
            origin: Origin::File {
                path: path.to_path_buf(),
                line: e.line,
            },
        })
    }

    /// oslo's `_substitute`: `$name`, `${name}`, `$group.name`; `$$` and `\$` are a `$`.
    /// Names resolve in the option's section, then `[DEFAULT]`, then the defaults this
    /// agent knows (`state_path`, `host`); an unknown name is left as written.
    fn substitute(&self, value: &str, section: &str, depth: usize) -> String {
        if !value.contains('$') || depth > 8 {
            return value.to_owned();
        }
        let value = value.replace("\\$", "$$");
        let b = value.as_bytes();
        let mut out = String::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'$' {
                let next = value[i..].find('$').map_or(b.len(), |j| i + j);
                out.push_str(&value[i..next]);
                i = next;
                continue;
            }
            if b.get(i + 1) == Some(&b'$') {
                out.push('$');
                i += 2;
                continue;
            }
            let (name, end) = if b.get(i + 1) == Some(&b'{') {
                match value[i + 2..].find('}') {
                    Some(j) => (&value[i + 2..i + 2 + j], i + 3 + j),
                    None => ("", i + 1),
                }
            } else {
                let len = value[i + 1..]
                    .bytes()
                    .enumerate()
                    .take_while(|(k, c)| {
                        c.is_ascii_alphabetic()
                            || *c == b'_'
                            || (*k > 0 && (c.is_ascii_digit() || *c == b'.'))
                    })
                    .count();
                (&value[i + 1..i + 1 + len], i + 1 + len)
            };
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_');
            match valid.then(|| self.lookup(name, section, depth)).flatten() {
                Some(v) => {
                    out.push_str(&v);
                    i = end;
                }
                None => {
                    out.push('$');
                    i += 1;
                }
            }
        }
        out
    }

    fn lookup(&self, name: &str, section: &str, depth: usize) -> Option<String> {
        let (group, key) = match name.split_once('.') {
            Some((g, k)) => (g, k),
            None => (section, name),
        };
        let found = self
            .set
            .get(group, key)
            .or_else(|| self.set.get("DEFAULT", key))
            .map(|(_, e)| self.substitute(&e.value, group, depth + 1));
        found.or_else(|| {
            self.defaults
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
        })
    }

    fn shown(key: &str, value: &str) -> String {
        if key == "transport_url" {
            redact_url(value)
        } else if SECRET_KEYS.contains(&key) {
            "***".into()
        } else {
            value.to_owned()
        }
    }

    fn bad(&self, raw: &Raw, section: &str, key: &str, reason: impl Into<String>) -> NeutronError {
        NeutronError::option(
            raw.origin.clone(),
            section,
            key,
            &Self::shown(key, &raw.value),
            reason,
        )
    }

    fn string(&self, section: &str, key: &str, default: &str) -> String {
        self.raw(section, key)
            .map_or_else(|| default.to_owned(), |r| r.value)
    }

    fn boolean(&self, section: &str, key: &str, default: bool) -> Result<bool, NeutronError> {
        let Some(raw) = self.raw(section, key) else {
            return Ok(default);
        };
        parse_bool(raw.value.trim()).ok_or_else(|| {
            self.bad(
                &raw,
                section,
                key,
                "not a boolean (true/false, yes/no, on/off, 1/0)",
            )
        })
    }

    fn int<T: std::str::FromStr>(
        &self,
        section: &str,
        key: &str,
        default: T,
        what: &str,
    ) -> Result<T, NeutronError> {
        let Some(raw) = self.raw(section, key) else {
            return Ok(default);
        };
        raw.value
            .trim()
            .parse::<T>()
            .map_err(|_| self.bad(&raw, section, key, format!("not {what}")))
    }

    fn seconds_f64(&self, section: &str, key: &str, default: f64) -> Result<f64, NeutronError> {
        let Some(raw) = self.raw(section, key) else {
            return Ok(default);
        };
        match raw.value.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && (0.0..=86_400.0 * 365.0).contains(&v) => Ok(v),
            _ => Err(self.bad(&raw, section, key, "not a number of seconds (0 or more)")),
        }
    }

    /// Logs every assignment no option read, one debug line each.
    fn log_unused(&self) {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = BTreeSet::new();
        for (path, e) in self.set.entries() {
            if used.contains(&(e.section.clone(), e.key.clone())) {
                continue;
            }
            if seen.insert((path.to_path_buf(), e.line)) {
                debug!(
                    file = %path.display(),
                    line = e.line,
                    section = %e.section,
                    key = %e.key,
                    "config option not used by this agent: ignored"
                );
            }
        }
    }
}

impl NeutronAgentConfig {
    /// Reads the files in the order given (the last one wins), like `--config-file A
    /// --config-file B`. A missing or unreadable file is an error, as in oslo
    /// (`ConfigFilesNotFoundError`); so is one that is not UTF-8.
    pub fn load(paths: &[PathBuf]) -> Result<NeutronAgentConfig, NeutronError> {
        let mut set = IniSet::default();
        for path in paths {
            let bytes = std::fs::read(path).map_err(|source| NeutronError::ReadConfig {
                path: path.clone(),
                source,
            })?;
            let text = String::from_utf8(bytes).map_err(|e| NeutronError::ReadConfig {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
            })?;
            set.files.push(ini::parse(path, &text)?);
        }
        Self::from_ini(&set, &hostname())
    }

    /// The typed options of parsed files; `default_host` stands for the host name.
    pub fn from_ini(set: &IniSet, default_host: &str) -> Result<NeutronAgentConfig, NeutronError> {
        let state_path_default = "/var/lib/neutron";
        let r = Reader {
            set,
            defaults: vec![
                ("state_path", state_path_default.to_owned()),
                ("host", default_host.to_owned()),
            ],
            used: Mutex::new(HashSet::new()),
        };
        let d = "DEFAULT";

        // transport_url
        let url_raw = r.raw(d, "transport_url").unwrap_or(Raw {
            value: "rabbit://".into(),
            origin: Origin::Unset,
        });
        let transport_url = TransportUrl::parse(url_raw.value.trim())
            .map_err(|why| r.bad(&url_raw, d, "transport_url", why))?;

        let host = r.string(d, "host", default_host);
        if host.is_empty() || host.len() > 200 || host.chars().any(|c| c.is_control()) {
            let raw = r.raw(d, "host").unwrap_or(Raw {
                value: host.clone(),
                origin: Origin::Unset,
            });
            return Err(r.bad(
                &raw,
                d,
                "host",
                "must be 1 to 200 characters without control characters (it names the queue l3_agent.<host>)",
            ));
        }
        let state_path = PathBuf::from(r.string(d, "state_path", state_path_default));

        let agent_mode = match r.raw(d, "agent_mode") {
            None => AgentMode::Legacy,
            Some(raw) => match raw.value.as_str() {
                "legacy" => AgentMode::Legacy,
                "dvr" => AgentMode::Dvr,
                "dvr_snat" => AgentMode::DvrSnat,
                // A Neutron mode the reconciler cannot run yet: refused here, where the
                // file and line are known (agent_doc refuses it too, for a config built in
                // code).
                "dvr_no_external" => {
                    return Err(r.bad(
                        &raw,
                        d,
                        "agent_mode",
                        "not supported yet (legacy, dvr and dvr_snat are)",
                    ))
                }
                _ => {
                    return Err(r.bad(
                        &raw,
                        d,
                        "agent_mode",
                        "must be one of legacy, dvr, dvr_snat, dvr_no_external",
                    ))
                }
            },
        };

        let interface_driver = match r.raw(d, "interface_driver") {
            None => {
                return Err(NeutronError::option(
                    Origin::Unset,
                    d,
                    "interface_driver",
                    "",
                    "an interface driver must be specified: interface_driver = openvswitch",
                ))
            }
            Some(raw) => match raw.value.as_str() {
                "openvswitch" | "neutron.agent.linux.interface.OVSInterfaceDriver" => {
                    InterfaceDriver::Openvswitch(raw.value.clone())
                }
                _ => {
                    return Err(r.bad(
                        &raw,
                        d,
                        "interface_driver",
                        "only openvswitch (neutron.agent.linux.interface.OVSInterfaceDriver) is supported",
                    ))
                }
            },
        };
        if let Some(raw) = r.raw(d, "ovs_use_veth") {
            if parse_bool(&raw.value) != Some(false) {
                return Err(r.bad(
                    &raw,
                    d,
                    "ovs_use_veth",
                    "unsupported: router ports are OVS internal ports (ovs_use_veth = false)",
                ));
            }
        }
        if let Some(raw) = r.raw(d, "external_network_bridge") {
            if !raw.value.trim().is_empty() {
                return Err(r.bad(
                    &raw,
                    d,
                    "external_network_bridge",
                    "removed from Neutron: external networks are plugged through the integration bridge; leave it empty",
                ));
            }
        }
        let bridge = match r.raw("OVS", "integration_bridge") {
            Some(raw) => Some(("OVS", "integration_bridge", raw)),
            None => r
                .raw(d, "ovs_integration_bridge")
                .map(|raw| (d, "ovs_integration_bridge", raw)),
        };
        let integration_bridge = match bridge {
            None => IfName::new("integration_bridge", "br-int").map_err(|e| {
                NeutronError::option(
                    Origin::Unset,
                    "OVS",
                    "integration_bridge",
                    "br-int",
                    e.reason,
                )
            })?,
            Some((section, key, raw)) => IfName::new("integration_bridge", &raw.value)
                .map_err(|e| r.bad(&raw, section, key, e.reason))?,
        };

        let ovsdb_connection = match r.raw("OVS", "ovsdb_connection") {
            None => DEFAULT_OVSDB_CONNECTION.to_owned(),
            Some(raw) => {
                let v = raw.value.trim();
                match v.strip_prefix("unix:") {
                    Some(path) if path.starts_with('/') => v.to_owned(),
                    _ => return Err(r.bad(
                        &raw,
                        "OVS",
                        "ovsdb_connection",
                        "only unix:/ABSOLUTE/PATH is supported (the local ovsdb-server's socket)",
                    )),
                }
            }
        };
        let periodic_interval: u32 = r.int(d, "periodic_interval", 40, "a number of seconds")?;
        let periodic_interval = Duration::from_secs(u64::from(periodic_interval.max(1)));

        let report_interval = r.seconds_f64("AGENT", "report_interval", 30.0)?;
        let report_interval =
            (report_interval > 0.0).then(|| Duration::from_secs_f64(report_interval));
        let availability_zone = r.string("AGENT", "availability_zone", "nova");
        let log_agent_heartbeats = r.boolean("AGENT", "log_agent_heartbeats", false)?;
        let handle_internal_only_routers = r.boolean(d, "handle_internal_only_routers", true)?;
        let control_exchange = r.string(d, "control_exchange", "neutron");
        if control_exchange.is_empty() || control_exchange.len() > 255 {
            let raw = r.raw(d, "control_exchange").unwrap_or(Raw {
                value: control_exchange.clone(),
                origin: Origin::Unset,
            });
            return Err(r.bad(&raw, d, "control_exchange", "must be 1 to 255 bytes"));
        }
        let timeout: u32 = r.int(d, "rpc_response_timeout", 60, "a number of seconds")?;
        if timeout == 0 {
            let raw = r.raw(d, "rpc_response_timeout").unwrap_or(Raw {
                value: "0".into(),
                origin: Origin::Unset,
            });
            return Err(r.bad(&raw, d, "rpc_response_timeout", "must be at least 1 second"));
        }
        let metadata_port: u16 = r.int(d, "metadata_port", 9697, "a port number (0-65535)")?;
        let enable_metadata_proxy = r.boolean(d, "enable_metadata_proxy", true)?;
        let metadata_proxy_socket = PathBuf::from(match r.raw(d, "metadata_proxy_socket") {
            Some(raw) => raw.value,
            None => r.substitute("$state_path/metadata_proxy", d, 0),
        });
        let name = |key: &str| r.raw(d, key).map(|raw| raw.value).filter(|v| !v.is_empty());
        let metadata_proxy_user = name("metadata_proxy_user");
        let metadata_proxy_group = name("metadata_proxy_group");
        let rtr_adv_intervals = (
            r.int(d, "min_rtr_adv_interval", 30, "a number of seconds")?,
            r.int(d, "max_rtr_adv_interval", 100, "a number of seconds")?,
        );

        let ha = HaOptions {
            confs_path: PathBuf::from(match r.raw(d, "ha_confs_path") {
                Some(raw) => raw.value,
                None => r.substitute("$state_path/ha_confs", d, 0),
            }),
            vrrp_auth_type: match r.raw(d, "ha_vrrp_auth_type") {
                None => VrrpAuthType::Pass,
                Some(raw) => match raw.value.as_str() {
                    "PASS" => VrrpAuthType::Pass,
                    "AH" => VrrpAuthType::Ah,
                    _ => return Err(r.bad(&raw, d, "ha_vrrp_auth_type", "must be PASS or AH")),
                },
            },
            vrrp_auth_password: r
                .raw(d, "ha_vrrp_auth_password")
                .map(|raw| Secret(raw.value))
                .filter(|s| !s.is_empty()),
            vrrp_advert_int: r.int(d, "ha_vrrp_advert_int", 2, "a number of seconds")?,
            vrrp_health_check_interval: r.int(
                d,
                "ha_vrrp_health_check_interval",
                0,
                "a number of seconds",
            )?,
            conntrackd_enabled: r.boolean(d, "ha_conntrackd_enabled", false)?,
            conntrackd: {
                let count = |key: &str| -> Result<Option<u32>, NeutronError> {
                    match r.raw(d, key) {
                        None => Ok(None),
                        Some(raw) => raw
                            .value
                            .trim()
                            .parse::<u32>()
                            .map(Some)
                            .map_err(|_| r.bad(&raw, d, key, "not a non-negative integer")),
                    }
                };
                ConntrackdKnobs {
                    hashsize: count("ha_conntrackd_hashsize")?,
                    hashlimit: count("ha_conntrackd_hashlimit")?,
                    unix_backlog: count("ha_conntrackd_unix_backlog")?,
                    socketbuffersize: count("ha_conntrackd_socketbuffersize")?,
                    socketbuffersize_max_grown: count("ha_conntrackd_socketbuffersize_max_grown")?,
                    ipv4_mcast_addr: r
                        .raw(d, "ha_conntrackd_ipv4_mcast_addr")
                        .map(|raw| raw.value.trim().to_owned()),
                    group: count("ha_conntrackd_group")?,
                    sndsocketbuffer: count("ha_conntrackd_sndsocketbuffer")?,
                    rcvsocketbuffer: count("ha_conntrackd_rcvsocketbuffer")?,
                }
            },
        };

        let rabbit = Self::rabbit(&r, &transport_url, default_host)?;

        r.log_unused();
        Ok(NeutronAgentConfig {
            files: set.files.iter().map(|f| f.path.clone()).collect(),
            transport_url,
            host,
            state_path,
            agent_mode,
            interface_driver,
            integration_bridge,
            ovsdb_connection,
            periodic_interval,
            report_interval,
            availability_zone,
            log_agent_heartbeats,
            handle_internal_only_routers,
            control_exchange,
            rpc_response_timeout: Duration::from_secs(u64::from(timeout)),
            metadata_port,
            enable_metadata_proxy,
            metadata_proxy_socket,
            metadata_proxy_user,
            metadata_proxy_group,
            rtr_adv_intervals,
            ha,
            rabbit,
        })
    }

    fn rabbit(
        r: &Reader<'_>,
        url: &TransportUrl,
        default_host: &str,
    ) -> Result<RabbitOptions, NeutronError> {
        const S: &str = "oslo_messaging_rabbit";
        // oslo.messaging lets the URL's query override the section (ConfigOptsProxy).
        let from_query = |key: &str| -> Option<Raw> {
            url.query.iter().find(|(k, _)| k == key).map(|(_, v)| Raw {
                value: v.clone(),
                origin: Origin::TransportUrlQuery,
            })
        };
        let get = |key: &str| -> Option<Raw> {
            let file = r.raw(S, key);
            from_query(key).or(file)
        };
        let boolean = |key: &str, default: bool| -> Result<bool, NeutronError> {
            match get(key) {
                None => Ok(default),
                Some(raw) => parse_bool(raw.value.trim()).ok_or_else(|| {
                    r.bad(
                        &raw,
                        S,
                        key,
                        "not a boolean (true/false, yes/no, on/off, 1/0)",
                    )
                }),
            }
        };
        fn int<T: std::str::FromStr>(
            r: &Reader<'_>,
            raw: Option<Raw>,
            key: &str,
            default: T,
        ) -> Result<T, NeutronError> {
            match raw {
                None => Ok(default),
                Some(raw) => raw.value.trim().parse::<T>().map_err(|_| {
                    r.bad(
                        &raw,
                        "oslo_messaging_rabbit",
                        key,
                        "not a non-negative integer in range",
                    )
                }),
            }
        }
        let d = RabbitOptions::default();
        let mut o = RabbitOptions {
            amqp_durable_queues: boolean("amqp_durable_queues", d.amqp_durable_queues)?,
            amqp_auto_delete: boolean("amqp_auto_delete", d.amqp_auto_delete)?,
            rabbit_ha_queues: boolean("rabbit_ha_queues", d.rabbit_ha_queues)?,
            rabbit_quorum_queue: boolean("rabbit_quorum_queue", d.rabbit_quorum_queue)?,
            rabbit_transient_quorum_queue: boolean(
                "rabbit_transient_quorum_queue",
                d.rabbit_transient_quorum_queue,
            )?,
            rabbit_quorum_delivery_limit: int(
                r,
                get("rabbit_quorum_delivery_limit"),
                "rabbit_quorum_delivery_limit",
                0,
            )?,
            rabbit_quorum_max_memory_length: int(
                r,
                get("rabbit_quorum_max_memory_length"),
                "rabbit_quorum_max_memory_length",
                0,
            )?,
            rabbit_quorum_max_memory_bytes: int(
                r,
                get("rabbit_quorum_max_memory_bytes"),
                "rabbit_quorum_max_memory_bytes",
                0,
            )?,
            rabbit_stream_fanout: boolean("rabbit_stream_fanout", d.rabbit_stream_fanout)?,
            rabbit_transient_queues_ttl: int(
                r,
                get("rabbit_transient_queues_ttl"),
                "rabbit_transient_queues_ttl",
                d.rabbit_transient_queues_ttl,
            )?,
            rabbit_qos_prefetch_count: int(
                r,
                get("rabbit_qos_prefetch_count"),
                "rabbit_qos_prefetch_count",
                0,
            )?,
            heartbeat_timeout_threshold: int(
                r,
                get("heartbeat_timeout_threshold"),
                "heartbeat_timeout_threshold",
                d.heartbeat_timeout_threshold,
            )?,
            use_queue_manager: boolean("use_queue_manager", d.use_queue_manager)?,
            qm_hostname: get("hostname").map_or_else(|| default_host.to_owned(), |r| r.value),
            qm_processname: get("processname").map_or(d.qm_processname, |r| r.value),
            enable_cancel_on_failover: boolean(
                "enable_cancel_on_failover",
                d.enable_cancel_on_failover,
            )?,
            login_method: d.login_method,
            retry_interval: Duration::from_secs(int(
                r,
                get("rabbit_retry_interval"),
                "rabbit_retry_interval",
                1u64,
            )?),
            interval_max: Duration::from_secs(int(
                r,
                get("rabbit_interval_max"),
                "rabbit_interval_max",
                30u64,
            )?),
            shuffle_hosts: false,
            missing_consumer_retry_timeout: Duration::from_secs(int(
                r,
                get("kombu_missing_consumer_retry_timeout"),
                "kombu_missing_consumer_retry_timeout",
                60u64,
            )?),
        };
        // Read so that it is not reported as unused: the delay doubles here instead.
        let _: u64 = int(r, get("rabbit_retry_backoff"), "rabbit_retry_backoff", 2)?;
        if o.retry_interval.is_zero() {
            o.retry_interval = Duration::from_millis(100);
        }
        if o.interval_max < o.retry_interval {
            o.interval_max = o.retry_interval;
        }
        if let Some(raw) = get("kombu_failover_strategy") {
            o.shuffle_hosts = match raw.value.as_str() {
                "round-robin" => false,
                "shuffle" => true,
                _ => {
                    return Err(r.bad(
                        &raw,
                        S,
                        "kombu_failover_strategy",
                        "must be round-robin or shuffle",
                    ))
                }
            }
        }
        if let Some(raw) = get("rabbit_login_method") {
            o.login_method = match raw.value.as_str() {
                "AMQPLAIN" => LoginMethod::AmqPlain,
                "PLAIN" => LoginMethod::Plain,
                "RABBIT-CR-DEMO" => LoginMethod::RabbitCrDemo,
                _ => {
                    return Err(r.bad(
                        &raw,
                        S,
                        "rabbit_login_method",
                        "supported: AMQPLAIN, PLAIN, RABBIT-CR-DEMO (EXTERNAL needs TLS, which this build does not have)",
                    ))
                }
            }
        }
        if let Some(raw) = get("ssl") {
            if parse_bool(raw.value.trim()) != Some(false) {
                return Err(r.bad(
                    &raw,
                    S,
                    "ssl",
                    "TLS to the broker is not supported by this build of the agent: use ssl = false",
                ));
            }
        }
        if let Some(raw) = get("kombu_compression") {
            if !raw.value.trim().is_empty() {
                return Err(r.bad(
                    &raw,
                    S,
                    "kombu_compression",
                    "message compression is not supported: leave it unset",
                ));
            }
        }
        if o.rabbit_quorum_queue && o.rabbit_ha_queues {
            let raw = get("rabbit_ha_queues").unwrap_or(Raw {
                value: "true".into(),
                origin: Origin::Unset,
            });
            return Err(r.bad(
                &raw,
                S,
                "rabbit_ha_queues",
                "rabbit_quorum_queue and rabbit_ha_queues are both enabled: a queue is quorum or HA (mirrored), not both",
            ));
        }
        if o.rabbit_stream_fanout {
            let raw = get("rabbit_stream_fanout").unwrap_or(Raw {
                value: "true".into(),
                origin: Origin::Unset,
            });
            if o.rabbit_qos_prefetch_count == 0 {
                return Err(r.bad(
                    &raw,
                    S,
                    "rabbit_stream_fanout",
                    "needs rabbit_qos_prefetch_count set to a value greater than 0",
                ));
            }
            if !o.rabbit_transient_quorum_queue {
                return Err(r.bad(
                    &raw,
                    S,
                    "rabbit_stream_fanout",
                    "needs rabbit_transient_quorum_queue = true",
                ));
            }
        }
        // Every key of the URL query is an option override; the ones not read above are
        // logged like unused file keys.
        for (k, _) in &url.query {
            let known = r
                .used
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&(S.to_owned(), k.clone()));
            if !known {
                debug!(key = %k, "transport_url query option not used by this agent: ignored");
            }
        }
        Ok(o)
    }
}

/// The files `neutron-l3-agent` reads when none are given on the command line.
pub fn default_config_files() -> Vec<PathBuf> {
    ["/etc/neutron/neutron.conf", "/etc/neutron/l3_agent.ini"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| Path::new(p).exists())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(files: &[(&str, &str)]) -> Result<NeutronAgentConfig, NeutronError> {
        let set = IniSet {
            files: files
                .iter()
                .map(|(p, t)| ini::parse(Path::new(p), t).unwrap())
                .collect(),
        };
        NeutronAgentConfig::from_ini(&set, "node1")
    }

    const MIN: &str = "[DEFAULT]\ninterface_driver = openvswitch\n";

    #[test]
    fn defaults_are_neutrons() {
        let c = cfg(&[("l3_agent.ini", MIN)]).unwrap();
        assert_eq!(c.host, "node1");
        assert_eq!(c.state_path, PathBuf::from("/var/lib/neutron"));
        assert_eq!(c.agent_mode, AgentMode::Legacy);
        assert_eq!(c.integration_bridge.as_str(), "br-int");
        assert_eq!(c.ovsdb_connection, "unix:/run/openvswitch/db.sock");
        assert_eq!(c.periodic_interval, Duration::from_secs(40));
        assert_eq!(c.report_interval, Some(Duration::from_secs(30)));
        assert_eq!(c.availability_zone, "nova");
        assert!(c.handle_internal_only_routers);
        assert_eq!(c.control_exchange, "neutron");
        assert_eq!(c.rpc_response_timeout, Duration::from_secs(60));
        assert_eq!(c.metadata_port, 9697);
        assert!(c.enable_metadata_proxy);
        assert_eq!(c.ha.confs_path, PathBuf::from("/var/lib/neutron/ha_confs"));
        assert_eq!(c.ha.vrrp_auth_type, VrrpAuthType::Pass);
        assert_eq!(c.ha.vrrp_advert_int, 2);
        assert_eq!(
            c.rabbit,
            RabbitOptions {
                qm_hostname: "node1".into(),
                ..RabbitOptions::default()
            }
        );
        // transport_url defaults to rabbit:// = guest@localhost:5672, vhost /.
        assert_eq!(c.transport_url.hosts.len(), 1);
        assert_eq!(c.transport_url.hosts[0].hostname, "localhost");
        assert_eq!(c.transport_url.hosts[0].port, 5672);
        assert_eq!(c.transport_url.vhost, "/");
    }

    #[test]
    fn ha_conntrackd_options_are_read_and_off_by_default() {
        let c = cfg(&[("l3_agent.ini", MIN)]).unwrap();
        assert!(!c.ha.conntrackd_enabled);
        assert_eq!(c.ha.conntrackd, ConntrackdKnobs::default());
        let c = cfg(&[(
            "l3_agent.ini",
            "[DEFAULT]\ninterface_driver = openvswitch\nha_conntrackd_enabled = True\n\
             ha_conntrackd_group = 4000\nha_conntrackd_ipv4_mcast_addr = 239.0.0.9\n\
             ha_conntrackd_hashsize = 1024\n",
        )])
        .unwrap();
        assert!(c.ha.conntrackd_enabled);
        assert_eq!(
            c.ha.conntrackd,
            ConntrackdKnobs {
                group: Some(4000),
                ipv4_mcast_addr: Some("239.0.0.9".into()),
                hashsize: Some(1024),
                ..ConntrackdKnobs::default()
            }
        );
    }

    #[test]
    fn later_files_override_earlier_ones_and_sections_are_read() {
        let c = cfg(&[
            (
                "neutron.conf",
                "[DEFAULT]\nhost = a\ntransport_url = rabbit://u:p@h1:5673/\nstate_path = /srv/n\n\
                 [AGENT]\nreport_interval = 10\n[oslo_messaging_rabbit]\namqp_durable_queues = Yes\n",
            ),
            (
                "l3_agent.ini",
                "[DEFAULT]\nhost = b\ninterface_driver = neutron.agent.linux.interface.OVSInterfaceDriver\n\
                 agent_mode = dvr_snat\nhandle_internal_only_routers = OFF\n\
                 ha_confs_path = ${state_path}/ha\nha_vrrp_auth_type = AH\nha_vrrp_auth_password = s3cr$$t\n\
                 periodic_interval = 7\n\
                 [agent]\navailability_zone = az1\nreport_interval = 0\n[OVS]\nintegration_bridge = br-x\n\
                 ovsdb_connection = unix:$state_path/db.sock\n",
            ),
        ])
        .unwrap();
        assert_eq!(c.ovsdb_connection, "unix:/srv/n/db.sock");
        assert_eq!(c.periodic_interval, Duration::from_secs(7));
        assert_eq!(c.host, "b");
        assert_eq!(c.state_path, PathBuf::from("/srv/n"));
        assert_eq!(c.agent_mode, AgentMode::DvrSnat);
        assert!(!c.handle_internal_only_routers);
        assert_eq!(c.availability_zone, "az1");
        assert_eq!(c.report_interval, None);
        assert_eq!(c.integration_bridge.as_str(), "br-x");
        assert_eq!(
            c.interface_driver.as_str(),
            "neutron.agent.linux.interface.OVSInterfaceDriver"
        );
        assert_eq!(c.ha.confs_path, PathBuf::from("/srv/n/ha"));
        assert_eq!(c.ha.vrrp_auth_type, VrrpAuthType::Ah);
        assert_eq!(c.ha.vrrp_auth_password.as_ref().unwrap().expose(), "s3cr$t");
        assert!(c.rabbit.amqp_durable_queues);
        assert_eq!(c.transport_url.hosts[0].port, 5673);
        assert_eq!(
            c.files,
            vec![PathBuf::from("neutron.conf"), PathBuf::from("l3_agent.ini")]
        );
    }

    #[test]
    fn transport_urls_parse_like_oslo() {
        let u = TransportUrl::parse(
            "rabbit://us%40r:p%3Ass@h1:5673,u2:p2@[fd00::1]:5674,h3/my%2Fvhost?ssl=0&x=a&x=b",
        )
        .unwrap();
        assert_eq!(u.hosts.len(), 3);
        assert_eq!(u.hosts[0].username, "us@r");
        assert_eq!(u.hosts[0].password.expose(), "p:ss");
        assert_eq!(
            (u.hosts[0].hostname.as_str(), u.hosts[0].port),
            ("h1", 5673)
        );
        assert_eq!(
            (u.hosts[1].hostname.as_str(), u.hosts[1].port),
            ("fd00::1", 5674)
        );
        assert_eq!(u.hosts[1].username, "u2");
        // No credentials: guest, as kombu; no port: 5672.
        assert_eq!(
            (u.hosts[2].hostname.as_str(), u.hosts[2].port),
            ("h3", 5672)
        );
        assert_eq!(u.hosts[2].username, "guest");
        assert_eq!(u.vhost, "my/vhost");
        assert_eq!(
            u.query,
            vec![("ssl".into(), "0".into()), ("x".into(), "a,b".into())]
        );
        for (url, vhost) in [
            ("rabbit://h", "/"),
            ("rabbit://h/", "/"),
            ("rabbit://h//", "/"),
            ("rabbit://h/%2F", "/"),
            ("rabbit://h/openstack", "openstack"),
        ] {
            assert_eq!(TransportUrl::parse(url).unwrap().vhost, vhost, "{url}");
        }
        assert!(TransportUrl::parse("h:5672").is_err());
        assert!(TransportUrl::parse("amqp://h")
            .unwrap_err()
            .contains("AMQP 1.0"));
        assert!(TransportUrl::parse("rabbit://h:notaport/").is_err());
    }

    #[test]
    fn passwords_never_reach_debug_or_display() {
        let u = TransportUrl::parse("rabbit://user:hunter2@h1:5672,u:hunter3@h2/v").unwrap();
        let shown = format!("{u} {u:?} {:?} {}", u.hosts[0], u.hosts[0].password);
        assert!(!shown.contains("hunter"), "{shown}");
        assert_eq!(u.to_string(), "rabbit://user:***@h1:5672,u:***@h2:5672/v");
        let c = cfg(&[(
            "n.conf",
            "[DEFAULT]\ninterface_driver = openvswitch\ntransport_url = rabbit://u:hunter2@h/\n\
             ha_vrrp_auth_password = hunter4\n",
        )])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter"), "{shown}");
        // An error about the URL shows it redacted.
        let e = cfg(&[(
            "n.conf",
            "[DEFAULT]\ninterface_driver = openvswitch\ntransport_url = rabbit://u:hunter2@h/\n\
             [oslo_messaging_rabbit]\nssl = true\n",
        )])
        .unwrap_err()
        .to_string();
        assert!(!e.contains("hunter"), "{e}");
        let e = cfg(&[(
            "n.conf",
            "[DEFAULT]\ninterface_driver = openvswitch\ntransport_url = rabbit://u:hunter2@h:99999/\n",
        )])
        .unwrap_err()
        .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(
            e.starts_with("n.conf:3: [DEFAULT] transport_url = \"rabbit://u:***@"),
            "{e}"
        );
    }

    #[test]
    fn booleans_take_every_oslo_spelling() {
        for (s, b) in [
            ("true", true),
            ("TRUE", true),
            ("Yes", true),
            ("on", true),
            ("1", true),
            ("false", false),
            ("No", false),
            ("OFF", false),
            ("0", false),
        ] {
            assert_eq!(parse_bool(s), Some(b), "{s}");
        }
        assert_eq!(parse_bool("t"), None);
        assert_eq!(parse_bool(""), None);
    }

    #[test]
    fn errors_name_file_line_section_key_and_value() {
        let cases: &[(&str, &str)] = &[
            (
                "[DEFAULT]\ninterface_driver = linuxbridge\n",
                "l3.ini:2: [DEFAULT] interface_driver = \"linuxbridge\": only openvswitch",
            ),
            (
                "[DEFAULT]\ninterface_driver = openvswitch\novs_use_veth = True\n",
                "l3.ini:3: [DEFAULT] ovs_use_veth = \"True\": unsupported",
            ),
            (
                "[DEFAULT]\ninterface_driver = openvswitch\nexternal_network_bridge = br-ex\n",
                "l3.ini:3: [DEFAULT] external_network_bridge = \"br-ex\": removed from Neutron",
            ),
            (
                "[DEFAULT]\ninterface_driver = openvswitch\nagent_mode = fast\n",
                "l3.ini:3: [DEFAULT] agent_mode = \"fast\": must be one of",
            ),
            (
                "[DEFAULT]\ninterface_driver = openvswitch\n\nagent_mode = dvr_no_external\n",
                "l3.ini:4: [DEFAULT] agent_mode = \"dvr_no_external\": not supported yet (legacy, dvr and dvr_snat are)",
            ),
            (
                "[DEFAULT]\ninterface_driver = openvswitch\n[AGENT]\nreport_interval = soon\n",
                "l3.ini:4: [AGENT] report_interval = \"soon\": not a number",
            ),
            (
                "[DEFAULT]\ninterface_driver = openvswitch\nenable_metadata_proxy = maybe\n",
                "l3.ini:3: [DEFAULT] enable_metadata_proxy = \"maybe\": not a boolean",
            ),
            (
                "[DEFAULT]\ninterface_driver = openvswitch\nha_conntrackd_enabled = perhaps\n",
                "l3.ini:3: [DEFAULT] ha_conntrackd_enabled = \"perhaps\": not a boolean",
            ),
            (
                "[DEFAULT]\ninterface_driver = openvswitch\nha_conntrackd_hashsize = -1\n",
                "l3.ini:3: [DEFAULT] ha_conntrackd_hashsize = \"-1\": not a non-negative integer",
            ),
            (
                "[DEFAULT]\ninterface_driver = openvswitch\nmetadata_port = 70000\n",
                "l3.ini:3: [DEFAULT] metadata_port = \"70000\": not a port number",
            ),
            (
                "[DEFAULT]\ninterface_driver = openvswitch\n[OVS]\novsdb_connection = tcp:127.0.0.1:6640\n",
                "l3.ini:4: [OVS] ovsdb_connection = \"tcp:127.0.0.1:6640\": only unix:",
            ),
            (
                "[DEFAULT]\ninterface_driver = openvswitch\n[OVS]\nintegration_bridge = br/int\n",
                "l3.ini:4: [OVS] integration_bridge = \"br/int\":",
            ),
            (
                "[DEFAULT]\ninterface_driver = openvswitch\n[oslo_messaging_rabbit]\nrabbit_quorum_queue = true\nrabbit_ha_queues = true\n",
                "l3.ini:5: [oslo_messaging_rabbit] rabbit_ha_queues = \"true\": rabbit_quorum_queue and rabbit_ha_queues",
            ),
            (
                "[DEFAULT]\ninterface_driver = openvswitch\n[oslo_messaging_rabbit]\nrabbit_stream_fanout = true\nrabbit_transient_quorum_queue = true\n",
                "l3.ini:4: [oslo_messaging_rabbit] rabbit_stream_fanout = \"true\": needs rabbit_qos_prefetch_count",
            ),
            (
                "[DEFAULT]\ninterface_driver = openvswitch\n[oslo_messaging_rabbit]\nkombu_compression = gzip\n",
                "l3.ini:4: [oslo_messaging_rabbit] kombu_compression = \"gzip\": message compression is not supported",
            ),
            (
                "[DEFAULT]\ninterface_driver = openvswitch\ntransport_url = rabbit://h/?ssl=1\n",
                "transport_url query: [oslo_messaging_rabbit] ssl = \"1\": TLS",
            ),
            (
                "[DEFAULT]\n",
                "(not set): [DEFAULT] interface_driver = \"\": an interface driver must be specified",
            ),
        ];
        for (text, want) in cases {
            let e = cfg(&[("l3.ini", text)]).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}\n got: {e}\nwant: {want}");
        }
    }

    #[test]
    fn rabbit_options_and_url_query_overrides() {
        let c = cfg(&[(
            "n.conf",
            "[DEFAULT]\ninterface_driver = openvswitch\n\
             transport_url = rabbit://h/?heartbeat_timeout_threshold=10\n\
             [oslo_messaging_rabbit]\nrabbit_quorum_queue = true\nrabbit_transient_quorum_queue = 1\n\
             rabbit_stream_fanout = on\nrabbit_qos_prefetch_count = 10\nuse_queue_manager = true\n\
             processname = l3\nheartbeat_timeout_threshold = 30\nrabbit_transient_queues_ttl = 60\n\
             kombu_failover_strategy = shuffle\nrabbit_login_method = PLAIN\nssl = false\n\
             rabbit_quorum_delivery_limit = 5\n",
        )])
        .unwrap();
        let o = &c.rabbit;
        assert!(o.rabbit_quorum_queue && o.rabbit_transient_quorum_queue && o.rabbit_stream_fanout);
        assert_eq!(o.rabbit_qos_prefetch_count, 10);
        assert!(o.use_queue_manager);
        assert_eq!(
            (o.qm_hostname.as_str(), o.qm_processname.as_str()),
            ("node1", "l3")
        );
        assert_eq!(o.heartbeat_timeout_threshold, 10);
        assert_eq!(o.rabbit_transient_queues_ttl, 60);
        assert!(o.shuffle_hosts);
        assert_eq!(o.login_method, LoginMethod::Plain);
        assert_eq!(o.rabbit_quorum_delivery_limit, 5);
    }

    #[test]
    fn load_reads_files_in_order_and_refuses_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("l3agent-neutron-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("neutron.conf");
        let b = dir.join("l3_agent.ini");
        std::fs::write(
            &a,
            "[DEFAULT]\nhost = from-a\nstate_path = /a\n[database]\nconnection = x\n",
        )
        .unwrap();
        std::fs::write(
            &b,
            "[DEFAULT]\nhost = from-b\ninterface_driver = openvswitch\n",
        )
        .unwrap();
        let c = NeutronAgentConfig::load(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(
            (c.host.as_str(), c.state_path.as_path()),
            ("from-b", Path::new("/a"))
        );
        let missing = dir.join("nope.ini");
        let e = NeutronAgentConfig::load(&[a.clone(), missing.clone()]).unwrap_err();
        assert!(
            matches!(&e, NeutronError::ReadConfig { path, .. } if *path == missing),
            "{e}"
        );
        std::fs::write(&b, [0xffu8, 0xfe, b'\n']).unwrap();
        let e = NeutronAgentConfig::load(std::slice::from_ref(&b))
            .unwrap_err()
            .to_string();
        assert!(e.contains("l3_agent.ini"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn substitution_follows_oslo_templates() {
        let c = cfg(&[(
            "n.conf",
            "[DEFAULT]\ninterface_driver = openvswitch\nstate_path = /s\nhost = $$lit\n\
             availability_zone_x = 1\nha_confs_path = $state_path/$unknown/\\$x\n",
        )])
        .unwrap();
        assert_eq!(c.host, "$lit");
        assert_eq!(c.ha.confs_path, PathBuf::from("/s/$unknown/$x"));
    }
}
