//! A small blocking client of Neutron's REST API, for tests against the real control plane
//! that `scripts/testbed/neutron.sh` starts (noauth: every request says which project it acts
//! for, `X-Project-Id`, and is admin, `X-Roles: admin`).
//!
//! The API listens on 127.0.0.1 of the namespace it runs in, so the client opens its socket
//! from a thread inside that namespace ([`Netns::run`], like [`TestNs::inside`]). HTTP/1.1 over
//! a plain [`TcpStream`], one connection per request (`Connection: close`); every request is
//! bounded by the client's timeout, connect to last byte. Errors carry the method, the path,
//! the status code and the body Neutron sent.
//!
//! Subnets may only use documentation prefixes (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
//! 2001:db8::/32): the addresses a test gives routers never collide with real ones.

use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use l3agent_netns::{Netns, NetnsError};
use l3agent_types::NetnsName;
use serde_json::{json, Map, Value};

use crate::TestNs;

/// The project the client acts for unless told otherwise.
pub const DEFAULT_PROJECT: &str = "l3agent-test";

/// Why a request failed.
#[derive(Debug)]
pub enum ApiError {
    /// Neutron answered with a status other than 2xx.
    Status {
        /// `GET`, `POST`, ...
        method: String,
        /// The path asked for.
        path: String,
        /// The HTTP status code.
        status: u16,
        /// The body Neutron sent (its `NeutronError` JSON, usually).
        body: String,
    },
    /// No answer: connecting, sending or reading failed or timed out, the namespace could not
    /// be entered, or the answer was not HTTP or not JSON.
    Transport {
        /// `GET`, `POST`, ...
        method: String,
        /// The path asked for.
        path: String,
        /// What went wrong.
        error: String,
    },
    /// A subnet outside the documentation prefixes was asked for (nothing was sent).
    NotDocumentationPrefix(String),
}

impl ApiError {
    /// The HTTP status code, if Neutron answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Status {
                method,
                path,
                status,
                body,
            } => write!(f, "{method} {path}: HTTP {status}: {body}"),
            ApiError::Transport {
                method,
                path,
                error,
            } => write!(f, "{method} {path}: {error}"),
            ApiError::NotDocumentationPrefix(cidr) => write!(
                f,
                "{cidr} is not within a documentation prefix (192.0.2.0/24, 198.51.100.0/24, \
                 203.0.113.0/24, 2001:db8::/32)"
            ),
        }
    }
}

impl std::error::Error for ApiError {}

/// A result of this client.
pub type ApiResult<T> = Result<T, ApiError>;

/// A port to create (see [`NeutronApi::create_port`]).
#[derive(Debug, Clone, Default)]
pub struct PortSpec<'a> {
    /// Its network.
    pub network_id: &'a str,
    /// The subnet to take its address from (a network with two subnets may otherwise give
    /// either).
    pub subnet_id: Option<&'a str>,
    /// A fixed address (with or without `subnet_id`).
    pub ip_address: Option<&'a str>,
    /// `binding:host_id`.
    pub host: Option<&'a str>,
    /// `device_owner` (default: `compute:nova`, a VM's port).
    pub device_owner: Option<&'a str>,
    /// Its name.
    pub name: Option<&'a str>,
}

/// A blocking Neutron REST client (see the module documentation).
#[derive(Debug, Clone)]
pub struct NeutronApi {
    netns: Option<NetnsName>,
    port: u16,
    project: String,
    timeout: Duration,
}

impl NeutronApi {
    /// A client of the API on 127.0.0.1:`port` inside `ns`, acting for [`DEFAULT_PROJECT`],
    /// with a 30 s timeout per request.
    pub fn new(ns: &TestNs, port: u16) -> NeutronApi {
        NeutronApi::in_netns(Some(ns.netns_name().clone()), port)
    }

    /// A client of the API on 127.0.0.1:`port` inside the named namespace, or the caller's
    /// own with `None`.
    pub fn in_netns(netns: Option<NetnsName>, port: u16) -> NeutronApi {
        NeutronApi {
            netns,
            port,
            project: DEFAULT_PROJECT.to_owned(),
            timeout: Duration::from_secs(30),
        }
    }

    /// The same client acting for `project`.
    pub fn with_project(mut self, project: &str) -> NeutronApi {
        project.clone_into(&mut self.project);
        self
    }

    /// The same client with another timeout per request.
    pub fn with_timeout(mut self, timeout: Duration) -> NeutronApi {
        self.timeout = timeout;
        self
    }

    /// The project it acts for.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// One request to `/v2.0{path}`; the JSON answer (`Null` for an empty body, as after a
    /// DELETE).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> ApiResult<Value> {
        let path = format!("/v2.0{path}");
        let transport = |error: String| ApiError::Transport {
            method: method.to_owned(),
            path: path.clone(),
            error,
        };
        let payload = body.map(Value::to_string);
        let exchange = || self.exchange(method, &path, payload.as_deref());
        let outcome = match &self.netns {
            None => exchange(),
            Some(name) => {
                match Netns::open(name).and_then(|ns| ns.run::<_, NetnsError>(exchange)) {
                    Ok(outcome) => outcome,
                    Err(e) => Err(format!("entering {name}: {e}")),
                }
            }
        };
        let (status, body) = outcome.map_err(transport)?;
        if !(200..300).contains(&status) {
            return Err(ApiError::Status {
                method: method.to_owned(),
                path,
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| {
            transport(format!(
                "HTTP {status} with a body that is not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            ))
        })
    }

    /// GET `/v2.0{path}`.
    pub fn get(&self, path: &str) -> ApiResult<Value> {
        self.request("GET", path, None)
    }

    /// DELETE `/v2.0{path}`.
    pub fn delete(&self, path: &str) -> ApiResult<()> {
        self.request("DELETE", path, None).map(drop)
    }

    /// POST `/v2.0/{collection}` with `{key: fields}`, `project_id` added unless given; the
    /// created resource.
    pub fn create(&self, collection: &str, key: &str, mut fields: Value) -> ApiResult<Value> {
        if let Some(map) = fields.as_object_mut() {
            map.entry("project_id")
                .or_insert_with(|| Value::String(self.project.clone()));
        }
        let body = json!({ key: fields });
        self.request("POST", &format!("/{collection}"), Some(&body))
            .map(|v| unwrap_key(v, key))
    }

    /// PUT `/v2.0/{collection}/{id}` with `{key: fields}`; the updated resource.
    pub fn update(&self, collection: &str, key: &str, id: &str, fields: Value) -> ApiResult<Value> {
        let body = json!({ key: fields });
        self.request("PUT", &format!("/{collection}/{id}"), Some(&body))
            .map(|v| unwrap_key(v, key))
    }

    /// GET `/v2.0/{collection}/{id}`; the resource.
    pub fn show(&self, collection: &str, key: &str, id: &str) -> ApiResult<Value> {
        self.get(&format!("/{collection}/{id}"))
            .map(|v| unwrap_key(v, key))
    }

    /// GET `/v2.0/{collection}`; its list.
    pub fn list(&self, collection: &str) -> ApiResult<Vec<Value>> {
        let v = self.get(&format!("/{collection}"))?;
        Ok(match unwrap_key(v, collection) {
            Value::Array(items) => items,
            _ => Vec::new(),
        })
    }

    /// A flat external network (`router:external`) on `physnet`.
    pub fn create_external_network(&self, name: &str, physnet: &str) -> ApiResult<Value> {
        self.create(
            "networks",
            "network",
            json!({
                "name": name,
                "router:external": true,
                "provider:network_type": "flat",
                "provider:physical_network": physnet,
            }),
        )
    }

    /// A tenant network (VXLAN: the testbed's `tenant_network_types`).
    pub fn create_tenant_network(&self, name: &str) -> ApiResult<Value> {
        self.create("networks", "network", json!({ "name": name }))
    }

    /// A subnet of `cidr` (documentation prefixes only), DHCP off (there is no DHCP agent),
    /// Neutron's default gateway (the first address).
    pub fn create_subnet(&self, network_id: &str, name: &str, cidr: &str) -> ApiResult<Value> {
        let version = documentation_prefix(cidr)?;
        self.create(
            "subnets",
            "subnet",
            json!({
                "network_id": network_id,
                "name": name,
                "cidr": cidr,
                "ip_version": version,
                "enable_dhcp": false,
            }),
        )
    }

    /// A router, with a gateway on `external_network_id` if given.
    pub fn create_router(&self, name: &str, external_network_id: Option<&str>) -> ApiResult<Value> {
        let mut fields = json!({ "name": name });
        if let Some(net) = external_network_id {
            fields["external_gateway_info"] = json!({ "network_id": net });
        }
        self.create("routers", "router", fields)
    }

    /// Sets (`Some`) or clears (`None`) a router's gateway.
    pub fn set_router_gateway(
        &self,
        router_id: &str,
        external_network_id: Option<&str>,
    ) -> ApiResult<Value> {
        let info = match external_network_id {
            Some(net) => json!({ "network_id": net }),
            None => json!({}),
        };
        self.update(
            "routers",
            "router",
            router_id,
            json!({ "external_gateway_info": info }),
        )
    }

    /// Adds an interface on `subnet_id` to a router; Neutron's answer (`port_id`, ...).
    pub fn add_router_interface(&self, router_id: &str, subnet_id: &str) -> ApiResult<Value> {
        self.request(
            "PUT",
            &format!("/routers/{router_id}/add_router_interface"),
            Some(&json!({ "subnet_id": subnet_id })),
        )
    }

    /// Removes a router's interface on `subnet_id`.
    pub fn remove_router_interface(&self, router_id: &str, subnet_id: &str) -> ApiResult<Value> {
        self.request(
            "PUT",
            &format!("/routers/{router_id}/remove_router_interface"),
            Some(&json!({ "subnet_id": subnet_id })),
        )
    }

    /// Deletes a router (Neutron refuses while it has interfaces: remove them first).
    pub fn delete_router(&self, router_id: &str) -> ApiResult<()> {
        self.delete(&format!("/routers/{router_id}"))
    }

    /// A port (a VM's unless `device_owner` says otherwise).
    pub fn create_port(&self, spec: &PortSpec<'_>) -> ApiResult<Value> {
        let mut fields = Map::new();
        fields.insert("network_id".into(), spec.network_id.into());
        fields.insert(
            "device_owner".into(),
            spec.device_owner.unwrap_or("compute:nova").into(),
        );
        if let Some(name) = spec.name {
            fields.insert("name".into(), name.into());
        }
        if let Some(host) = spec.host {
            fields.insert("binding:host_id".into(), host.into());
        }
        if spec.subnet_id.is_some() || spec.ip_address.is_some() {
            let mut ip = Map::new();
            if let Some(s) = spec.subnet_id {
                ip.insert("subnet_id".into(), s.into());
            }
            if let Some(a) = spec.ip_address {
                ip.insert("ip_address".into(), a.into());
            }
            fields.insert("fixed_ips".into(), json!([ip]));
        }
        self.create("ports", "port", Value::Object(fields))
    }

    /// Deletes a port.
    pub fn delete_port(&self, port_id: &str) -> ApiResult<()> {
        self.delete(&format!("/ports/{port_id}"))
    }

    /// A floating IP on `external_network_id`, associated with `port_id` if given.
    pub fn create_floating_ip(
        &self,
        external_network_id: &str,
        port_id: Option<&str>,
    ) -> ApiResult<Value> {
        let mut fields = json!({ "floating_network_id": external_network_id });
        if let Some(port) = port_id {
            fields["port_id"] = port.into();
        }
        self.create("floatingips", "floatingip", fields)
    }

    /// Associates a floating IP with a port.
    pub fn associate_floating_ip(&self, fip_id: &str, port_id: &str) -> ApiResult<Value> {
        self.update(
            "floatingips",
            "floatingip",
            fip_id,
            json!({ "port_id": port_id }),
        )
    }

    /// Disassociates a floating IP from its port.
    pub fn disassociate_floating_ip(&self, fip_id: &str) -> ApiResult<Value> {
        self.update(
            "floatingips",
            "floatingip",
            fip_id,
            json!({ "port_id": null }),
        )
    }

    /// A floating IP (its `status`: `ACTIVE`, `DOWN` or `ERROR`, as the L3 agent reported).
    pub fn show_floating_ip(&self, fip_id: &str) -> ApiResult<Value> {
        self.show("floatingips", "floatingip", fip_id)
    }

    /// Deletes a floating IP.
    pub fn delete_floating_ip(&self, fip_id: &str) -> ApiResult<()> {
        self.delete(&format!("/floatingips/{fip_id}"))
    }

    /// The agents Neutron knows (`agent_type`, `host`, `alive`, ...).
    pub fn list_agents(&self) -> ApiResult<Vec<Value>> {
        self.list("agents")
    }

    /// The L3 agents hosting a router.
    pub fn l3_agents_hosting_router(&self, router_id: &str) -> ApiResult<Vec<Value>> {
        let v = self.get(&format!("/routers/{router_id}/l3-agents"))?;
        Ok(match unwrap_key(v, "agents") {
            Value::Array(items) => items,
            _ => Vec::new(),
        })
    }

    /// Sends one request on a new connection and reads the whole answer, all within the
    /// timeout: (status, body).
    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Vec<u8>), String> {
        let deadline = Instant::now() + self.timeout;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream = TcpStream::connect_timeout(&addr, self.timeout)
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let left = |deadline: Instant| {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("no complete answer within {:?}", self.timeout))
        };
        stream
            .set_write_timeout(Some(left(deadline)?))
            .map_err(|e| e.to_string())?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             Accept: application/json\r\nX-Project-Id: {}\r\nX-Roles: admin\r\n",
            self.port, self.project
        );
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ));
        } else {
            req.push_str("Content-Length: 0\r\n\r\n");
        }
        stream
            .write_all(req.as_bytes())
            .map_err(|e| format!("sending: {e}"))?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            stream
                .set_read_timeout(Some(left(deadline)?))
                .map_err(|e| e.to_string())?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading the answer: {e}")),
            }
        }
        parse_response(&raw)
    }
}

/// The value under `key` of a `{key: value}` answer (the answer itself otherwise).
fn unwrap_key(mut v: Value, key: &str) -> Value {
    match v.get_mut(key) {
        Some(inner) => inner.take(),
        None => v,
    }
}

/// A resource's `id` (empty if it has none).
pub fn id(resource: &Value) -> &str {
    resource["id"].as_str().unwrap_or_default()
}

/// Splits an HTTP/1.x answer read to its end into status and body (de-chunked, cut at
/// `Content-Length`).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = &raw[head_end + 4..];
    if chunked {
        return Ok((status, dechunk(body)?));
    }
    match length {
        Some(n) if body.len() < n => Err(format!(
            "answer cut short: {} of {n} body bytes",
            body.len()
        )),
        Some(n) => Ok((status, body[..n].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunked body cut short")?;
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err("chunked body cut short".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// The IP version (4 or 6) of `cidr` if it lies within a documentation prefix.
pub fn documentation_prefix(cidr: &str) -> ApiResult<u8> {
    let refuse = || ApiError::NotDocumentationPrefix(cidr.to_owned());
    let (addr, len) = cidr.split_once('/').ok_or_else(refuse)?;
    let addr: IpAddr = addr.parse().map_err(|_| refuse())?;
    let len: u32 = len.parse().map_err(|_| refuse())?;
    let within = |a: u128, bits: u32, net: u128, net_len: u32| {
        len >= net_len && len <= bits && (a >> (bits - net_len)) == (net >> (bits - net_len))
    };
    match addr {
        IpAddr::V4(a) => {
            let a = u128::from(u32::from(a));
            let docs = [
                Ipv4Addr::new(192, 0, 2, 0),
                Ipv4Addr::new(198, 51, 100, 0),
                Ipv4Addr::new(203, 0, 113, 0),
            ];
            docs.iter()
                .any(|n| within(a, 32, u128::from(u32::from(*n)), 24))
                .then_some(4)
                .ok_or_else(refuse)
        }
        IpAddr::V6(a) => {
            let net = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0);
            within(u128::from(a), 128, u128::from(net), 32)
                .then_some(6)
                .ok_or_else(refuse)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_documentation_prefixes_are_accepted() {
        for ok in [
            "192.0.2.0/24",
            "192.0.2.128/25",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "2001:db8::/32",
            "2001:db8:1::/64",
        ] {
            assert!(documentation_prefix(ok).is_ok(), "{ok}");
        }
        assert_eq!(documentation_prefix("2001:db8:1::/64").unwrap(), 6);
        assert_eq!(documentation_prefix("198.51.100.0/24").unwrap(), 4);
        for bad in [
            "10.0.0.0/24",
            "192.0.2.0/23",
            "192.0.3.0/24",
            "2001:db9::/32",
            "2001::/16",
            "192.0.2.0",
            "192.0.2.0/33",
            "nonsense/24",
        ] {
            assert!(documentation_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_are_parsed_by_length_or_chunks() {
        let (s, b) =
            parse_response(b"HTTP/1.0 201 Created\r\nContent-Length: 2\r\n\r\n{}trailing").unwrap();
        assert_eq!((s, b.as_slice()), (201, b"{}".as_slice()));
        let (s, b) = parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_slice()), (200, b"{\"a\":1}".as_slice()));
        let (s, b) = parse_response(b"HTTP/1.0 204 No Content\r\n\r\n").unwrap();
        assert_eq!((s, b.len()), (204, 0));
        assert!(parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"SSH-2.0 x\r\n\r\n").is_err());
    }
}
