//! The metadata proxy's haproxy.cfg, as `agent/metadata/driver_base.py:
//! HaproxyConfiguratorBase._create_config` renders it from `common/metadata.py:
//! METADATA_HAPROXY_GLOBAL`, `RATE_LIMITED_CONFIG_TEMPLATE` or `driver_base.py:
//! _UNLIMITED_CONFIG_TEMPLATE`, and `agent/metadata/driver.py: _HEADER_CONFIG_TEMPLATE`
//! (NEUTRON-OPS.md §3.2), for the L3 agent: keyed by router id, no `bind_v6_line`.
//!
//! The text is Neutron's: it starts with an empty line, the line after `bind` is the empty
//! `bind_v6_line` (four spaces), and it ends with a newline.
//!
//! Where we deliberately differ: nothing in the text. Neutron resolves
//! `metadata_proxy_user`/`_group` (a name or a numeric id) to names with `pwd`/`grp` and
//! reads `debug` from the global config; here the caller passes the names and the flag.
//! Neutron writes whatever strings it is given; [`render`] first refuses a user, group or
//! path that could carry a directive of its own (see [`HaproxyConf::validate`]). The file's
//! path (`$state_path/ns-metadata-proxy/<rid>.conf`) is the supervisor's.

use std::fmt::Write as _;
use std::path::PathBuf;

use l3agent_types::RouterId;

use crate::{invalid, ConfPath, Error, UnixName};

/// `[DEFAULT] metadata_port`: where the qr- REDIRECT sends metadata requests.
pub const METADATA_PORT: u16 = 9697;

/// A metadata proxy's haproxy configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyConf {
    /// The router: `log-tag haproxy-metadata-proxy-<rid>` and the `X-Neutron-Router-ID`
    /// header haproxy sets.
    pub router_id: RouterId,
    /// The user haproxy drops to (the name of `metadata_proxy_user`, or of the agent's
    /// euid); a [`UnixName`].
    pub user: String,
    /// The group haproxy drops to (the name of `metadata_proxy_group`, or of the agent's
    /// egid); a [`UnixName`].
    pub group: String,
    /// Where haproxy writes its pid (`$ext_pids/<rid>.pid.haproxy`); a [`ConfPath`].
    pub pidfile: PathBuf,
    /// The metadata agent's socket, `metadata_proxy_socket` (`$state_path/metadata_proxy`);
    /// a [`ConfPath`].
    pub socket: PathBuf,
    /// Bind `:::<port>` (the host has IPv6) instead of `0.0.0.0:<port>`.
    pub bind_v6: bool,
    /// `[DEFAULT] debug`: log level `debug` instead of `info`.
    pub debug: bool,
    /// `metadata_port` ([`METADATA_PORT`]).
    pub port: u16,
    /// `[metadata_haproxy]` timeouts.
    pub timeouts: Timeouts,
    /// `[metadata_rate_limiting]`, when enabled for exactly one IP version (Neutron's
    /// `parse_ip_versions` disables it, with a warning, for `[4, 6]`).
    pub rate_limit: Option<RateLimit>,
}

/// `[metadata_haproxy]` timeouts, in seconds (#2154609).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `timeout_connect` (30).
    pub connect: u32,
    /// `timeout_client` (32).
    pub client: u32,
    /// `timeout_server` (32).
    pub server: u32,
    /// `timeout_http_request` (30).
    pub http_request: u32,
    /// `timeout_http_keep_alive` (30).
    pub http_keep_alive: u32,
}

/// Neutron's defaults.
impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: 30,
            client: 32,
            server: 32,
            http_request: 30,
            http_keep_alive: 30,
        }
    }
}

/// The address family a rate limit's stick tables key on (`ip_versions`, one of 4 or 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    /// `stick-table type ip`.
    V4,
    /// `stick-table type ipv6`.
    V6,
}

/// `[metadata_rate_limiting]` with `rate_limit_enabled = True`: two stick tables counting
/// requests per source address, and HTTP 429 above either limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// `ip_versions` (`[4]`).
    pub ip_version: IpVersion,
    /// `base_window_duration`, seconds (10).
    pub base_window_duration: u32,
    /// `base_query_rate_limit` (10).
    pub base_query_rate_limit: u32,
    /// `burst_window_duration`, seconds (10).
    pub burst_window_duration: u32,
    /// `burst_query_rate_limit` (10).
    pub burst_query_rate_limit: u32,
}

/// Neutron's defaults (`ip_versions = [4]`, every window and limit 10).
impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            ip_version: IpVersion::V4,
            base_window_duration: 10,
            base_query_rate_limit: 10,
            burst_window_duration: 10,
            burst_query_rate_limit: 10,
        }
    }
}

impl HaproxyConf {
    /// What [`render`] checks first: the user and group are [`UnixName`]s and the paths
    /// [`ConfPath`]s (so that no space, newline, control character, quote or `#` reaches the
    /// file), and Neutron's option bounds hold: every timeout, window and limit at least 1
    /// (`min=1`), a non-zero port. The error names the option.
    pub fn validate(&self) -> Result<(), Error> {
        self.checked().map(|_| ())
    }

    /// The validated text values.
    fn checked(&self) -> Result<Checked, Error> {
        let checked = Checked {
            user: UnixName::new("metadata_proxy_user", &self.user)?,
            group: UnixName::new("metadata_proxy_group", &self.group)?,
            pidfile: ConfPath::new("pidfile", &self.pidfile)?,
            socket: ConfPath::new("metadata_proxy_socket", &self.socket)?,
        };
        if self.port == 0 {
            return Err(invalid("metadata_port", self.port, "must be 1 to 65535"));
        }
        let t = &self.timeouts;
        let mut counts = vec![
            ("timeout_connect", t.connect),
            ("timeout_client", t.client),
            ("timeout_server", t.server),
            ("timeout_http_request", t.http_request),
            ("timeout_http_keep_alive", t.http_keep_alive),
        ];
        if let Some(r) = &self.rate_limit {
            counts.extend([
                ("base_window_duration", r.base_window_duration),
                ("base_query_rate_limit", r.base_query_rate_limit),
                ("burst_window_duration", r.burst_window_duration),
                ("burst_query_rate_limit", r.burst_query_rate_limit),
            ]);
        }
        match counts.into_iter().find(|&(_, v)| v == 0) {
            Some((field, v)) => Err(invalid(field, v, "must be at least 1")),
            None => Ok(checked),
        }
    }
}

/// The strings of a [`HaproxyConf`], validated.
struct Checked {
    user: UnixName,
    group: UnixName,
    pidfile: ConfPath,
    socket: ConfPath,
}

/// Renders haproxy.cfg as `HaproxyConfiguratorBase._create_config` does for a router
/// (`common/metadata.py: get_haproxy_config`): the global and defaults sections, the two
/// rate-limiting backends and the limited listener when [`HaproxyConf::rate_limit`] is set
/// (else the plain listener), then the headers: a client's `X-Neutron-Network-ID` is deleted
/// and `X-Neutron-Router-ID` is set (#1865036).
///
/// Fails, naming the option, when [`HaproxyConf::validate`] does.
pub fn render(conf: &HaproxyConf) -> Result<String, Error> {
    let checked = conf.checked()?;
    let t = &conf.timeouts;
    let rid = &conf.router_id;
    let mut out = format!(
        "
global
    log         /dev/log local0 {log_level}
    log-tag     haproxy-metadata-proxy-{rid}
    user        {user}
    group       {group}
    maxconn     1024
    nbthread    2
    pidfile     {pidfile}
    daemon

defaults
    log global
    mode http
    option httplog
    option dontlognull
    option http-server-close
    option forwardfor
    retries                 3
    timeout http-request    {http_request}s
    timeout connect         {connect}s
    timeout client          {client}s
    timeout server          {server}s
    timeout http-keep-alive {keep_alive}s
",
        log_level = if conf.debug { "debug" } else { "info" },
        user = checked.user,
        group = checked.group,
        pidfile = checked.pidfile,
        http_request = t.http_request,
        connect = t.connect,
        client = t.client,
        server = t.server,
        keep_alive = t.http_keep_alive,
    );
    let host = if conf.bind_v6 { "::" } else { "0.0.0.0" };
    let port = conf.port;
    let socket = &checked.socket;
    // The empty `bind_v6_line` after `bind` (the DHCP agent's; the L3 agent never sets it).
    let bind_v6_line = "";
    // Writing to a String cannot fail.
    let _ = match &conf.rate_limit {
        Some(r) => write!(
            out,
            "
backend base_rate_limiter
    stick-table type {ip} size 10k expire {expire}s store http_req_rate({base_window}s)

backend burst_rate_limiter
    stick-table type {ip} size 10k expire {expire}s store http_req_rate({burst_window}s)

listen listener
    bind {host}:{port}
    {bind_v6_line}

    http-request track-sc0 src table base_rate_limiter
    http-request track-sc1 src table burst_rate_limiter
    http-request deny deny_status 429 if {{ src_http_req_rate(base_rate_limiter) gt {base_limit} }}
    http-request deny deny_status 429 if {{ src_http_req_rate(burst_rate_limiter) gt {burst_limit} }}

    server metadata {socket}
",
            ip = match r.ip_version {
                IpVersion::V4 => "ip",
                IpVersion::V6 => "ipv6",
            },
            expire = r.base_window_duration.max(r.burst_window_duration),
            base_window = r.base_window_duration,
            burst_window = r.burst_window_duration,
            base_limit = r.base_query_rate_limit,
            burst_limit = r.burst_query_rate_limit,
        ),
        None => write!(
            out,
            "
listen listener
    bind {host}:{port}
    {bind_v6_line}
    server metadata {socket}
"
        ),
    };
    let _ = write!(
        out,
        "
    http-request del-header X-Neutron-Network-ID
    http-request set-header X-Neutron-Router-ID {rid}
"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RID: &str = "87c7c2ae-d0ba-4691-820c-8053abf50b8d";

    fn conf() -> HaproxyConf {
        HaproxyConf {
            router_id: RouterId::new("id", RID).unwrap(),
            user: "neutron".into(),
            group: "neutron".into(),
            pidfile: format!("/var/lib/neutron/external/pids/{RID}.pid.haproxy").into(),
            socket: "/var/lib/neutron/metadata_proxy".into(),
            bind_v6: true,
            debug: false,
            port: METADATA_PORT,
            timeouts: Timeouts::default(),
            rate_limit: None,
        }
    }

    /// NEUTRON-OPS.md §3.2 (host with IPv6), `$state_path` = `/var/lib/neutron`.
    #[test]
    fn an_ipv6_host_renders_as_the_neutron_sample() {
        let expected = format!(
            "
global
    log         /dev/log local0 info
    log-tag     haproxy-metadata-proxy-{RID}
    user        neutron
    group       neutron
    maxconn     1024
    nbthread    2
    pidfile     /var/lib/neutron/external/pids/{RID}.pid.haproxy
    daemon

defaults
    log global
    mode http
    option httplog
    option dontlognull
    option http-server-close
    option forwardfor
    retries                 3
    timeout http-request    30s
    timeout connect         30s
    timeout client          32s
    timeout server          32s
    timeout http-keep-alive 30s

listen listener
    bind :::9697
    
    server metadata /var/lib/neutron/metadata_proxy

    http-request del-header X-Neutron-Network-ID
    http-request set-header X-Neutron-Router-ID {RID}
"
        );
        assert_eq!(render(&conf()).unwrap(), expected);
    }

    #[test]
    fn an_ipv4_host_binds_the_ipv4_wildcard_and_debug_raises_the_log_level() {
        let c = HaproxyConf {
            bind_v6: false,
            debug: true,
            ..conf()
        };
        let text = render(&c).unwrap();
        assert!(text.contains("\n    bind 0.0.0.0:9697\n    \n"), "{text}");
        assert!(text.contains("\n    log         /dev/log local0 debug\n"));
    }

    #[test]
    fn rate_limiting_adds_two_stick_tables_and_two_denies() {
        let c = HaproxyConf {
            rate_limit: Some(RateLimit {
                ip_version: IpVersion::V6,
                base_window_duration: 20,
                base_query_rate_limit: 15,
                burst_window_duration: 5,
                burst_query_rate_limit: 3,
            }),
            ..conf()
        };
        let text = render(&c).unwrap();
        let tail = text.split_once("timeout http-keep-alive 30s\n").unwrap().1;
        let expected = format!(
            "
backend base_rate_limiter
    stick-table type ipv6 size 10k expire 20s store http_req_rate(20s)

backend burst_rate_limiter
    stick-table type ipv6 size 10k expire 20s store http_req_rate(5s)

listen listener
    bind :::9697
    

    http-request track-sc0 src table base_rate_limiter
    http-request track-sc1 src table burst_rate_limiter
    http-request deny deny_status 429 if {{ src_http_req_rate(base_rate_limiter) gt 15 }}
    http-request deny deny_status 429 if {{ src_http_req_rate(burst_rate_limiter) gt 3 }}

    server metadata /var/lib/neutron/metadata_proxy

    http-request del-header X-Neutron-Network-ID
    http-request set-header X-Neutron-Router-ID {RID}
"
        );
        assert_eq!(tail, expected);
    }

    #[test]
    fn nothing_that_could_inject_a_directive_is_rendered() {
        for (edit, field) in [
            (
                (|c: &mut HaproxyConf| c.user = "neutron\n    maxconn 1".into())
                    as fn(&mut HaproxyConf),
                "metadata_proxy_user",
            ),
            (|c| c.user = String::new(), "metadata_proxy_user"),
            (|c| c.group = "a b".into(), "metadata_proxy_group"),
            (|c| c.pidfile = "/run/x.pid\ndaemon".into(), "pidfile"),
            (|c| c.pidfile = "run/x.pid".into(), "pidfile"),
            (|c| c.socket = "/a b".into(), "metadata_proxy_socket"),
            (|c| c.socket = "/a#b".into(), "metadata_proxy_socket"),
        ] {
            let mut c = conf();
            edit(&mut c);
            match render(&c) {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
            assert!(c.validate().is_err());
        }
    }

    #[test]
    fn validation_names_the_option() {
        assert_eq!(conf().validate(), Ok(()));
        let mut c = conf();
        c.timeouts.server = 0;
        assert_eq!(
            render(&c).unwrap_err().to_string(),
            "timeout_server: invalid value \"0\": must be at least 1"
        );
        let mut c = conf();
        c.rate_limit = Some(RateLimit {
            burst_query_rate_limit: 0,
            ..RateLimit::default()
        });
        assert!(
            matches!(c.validate(), Err(Error::Invalid { field, .. }) if field == "burst_query_rate_limit")
        );
        let c = HaproxyConf { port: 0, ..conf() };
        assert!(
            matches!(c.validate(), Err(Error::Invalid { field, .. }) if field == "metadata_port")
        );
    }
}
