//! The L3 agent's side of Neutron's RPC APIs (NEUTRON-RPC.md): what the server sends the
//! agent, decoded into typed [`Notification`]s, and what the agent asks of the server
//! ([`PluginApi`]), typed at the edges (ids, statuses) and raw where another layer maps the
//! content (router dicts).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime};

use l3agent_types::{Echo, FloatingIpId, MacAddr, NetworkId, RouterId, SubnetId};
use serde_json::{json, Map, Value};
use tracing::{debug, info};

use crate::amqp::{Handler, RpcServer, Transport};
use crate::config::NeutronAgentConfig;
use crate::error::NeutronError;
use crate::wire::{self, RemoteFailure, Request};

/// The agent's topic (`topics.L3_AGENT`).
pub const L3_AGENT_TOPIC: &str = "l3_agent";
/// The fanout the server sends network changes on (`q-agent-notifier-network-update`).
pub const NETWORK_UPDATE_TOPIC: &str = "q-agent-notifier-network-update";
/// The server's L3 plugin topic (`topics.L3PLUGIN`).
pub const L3_PLUGIN_TOPIC: &str = "q-l3-plugin";
/// The server's state report topic (`topics.REPORTS`).
pub const REPORTS_TOPIC: &str = "q-reports-plugin";
/// The agent API version this agent implements (`L3NATAgent.target`).
pub const AGENT_API_VERSION: &str = "1.4";
/// The state report API version (`PluginReportStateAPI`).
pub const REPORT_STATE_VERSION: &str = "1.4";

/// One ARP entry of a DVR router (`add_arp_entry` / `del_arp_entry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpEntry {
    /// The router.
    pub router_id: RouterId,
    /// The neighbour's address.
    pub ip_address: IpAddr,
    /// Its MAC.
    pub mac_address: MacAddr,
    /// Its subnet.
    pub subnet_id: SubnetId,
}

/// What neutron-server tells the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// `routers_updated(routers)`: fetch these routers again.
    RoutersUpdated {
        /// The routers.
        routers: Vec<RouterId>,
    },
    /// `router_deleted(router_id)` (fanout).
    RouterDeleted {
        /// The router.
        router_id: RouterId,
    },
    /// `router_added_to_agent(payload=[ids])`: a call; answered `null` once handed on.
    RouterAddedToAgent {
        /// The routers scheduled to this agent.
        routers: Vec<RouterId>,
    },
    /// `router_removed_from_agent(payload={router_id})`.
    RouterRemovedFromAgent {
        /// The router.
        router_id: RouterId,
    },
    /// `agent_updated(payload={admin_state_up})`: do a full sync.
    AgentUpdated {
        /// The agent's new admin state.
        admin_state_up: bool,
    },
    /// `fipnamespace_delete_on_ext_net(ext_net_id)` (fanout, DVR).
    FipNamespaceDeleteOnExtNet {
        /// The external network.
        ext_net_id: NetworkId,
    },
    /// `add_arp_entry(payload)` (fanout, DVR).
    AddArpEntry(ArpEntry),
    /// `del_arp_entry(payload)` (fanout, DVR).
    DelArpEntry(ArpEntry),
    /// `network_update(network)` on `q-agent-notifier-network-update`: routers with a port
    /// on it are resynced (MTU changes).
    NetworkUpdate {
        /// The network.
        network_id: NetworkId,
        /// Its MTU, when the server sent one.
        mtu: Option<u32>,
    },
}

fn arg<'a>(args: &'a Map<String, Value>, key: &str) -> Result<&'a Value, String> {
    args.get(key)
        .ok_or_else(|| format!("args.{key} is missing"))
}

fn text<'a>(v: &'a Value, field: &str) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{field} is not a string: {}", brief(v)))
}

fn brief(v: &Value) -> String {
    Echo(&v.to_string()).to_string()
}

fn router_id(v: &Value, field: &str) -> Result<RouterId, String> {
    RouterId::new(field, text(v, field)?).map_err(|e| e.to_string())
}

/// A list of router ids; a list of router dicts (`[{"id": ...}]`, the pre-1.1 form
/// Neutron still accepts) reads as their ids.
fn router_ids(v: &Value, field: &str) -> Result<Vec<RouterId>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let f = format!("{field}[{i}]");
                match item {
                    Value::Object(o) => {
                        router_id(o.get("id").unwrap_or(&Value::Null), &format!("{f}.id"))
                    }
                    other => router_id(other, &f),
                }
            })
            .collect(),
        other => Err(format!("{field} is not a list: {}", brief(other))),
    }
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{field} is not an object: {}", brief(v)))
}

fn arp_entry(args: &Map<String, Value>) -> Result<ArpEntry, String> {
    let payload = object(arg(args, "payload")?, "args.payload")?;
    let get = |m: &Map<String, Value>, k: &str, f: &str| -> Result<Value, String> {
        m.get(k)
            .cloned()
            .ok_or_else(|| format!("{f}.{k} is missing"))
    };
    let router_id = router_id(
        &get(payload, "router_id", "args.payload")?,
        "args.payload.router_id",
    )?;
    let table_v = get(payload, "arp_table", "args.payload")?;
    let table = object(&table_v, "args.payload.arp_table")?;
    let f = "args.payload.arp_table";
    let ip_v = get(table, "ip_address", f)?;
    let ip_s = text(&ip_v, "args.payload.arp_table.ip_address")?;
    let ip_address = ip_s.parse::<IpAddr>().map_err(|_| {
        format!(
            "args.payload.arp_table.ip_address: not an IP address: {}",
            Echo(ip_s)
        )
    })?;
    let mac_v = get(table, "mac_address", f)?;
    let mac_address = MacAddr::parse(
        "args.payload.arp_table.mac_address",
        text(&mac_v, "args.payload.arp_table.mac_address")?,
    )
    .map_err(|e| e.to_string())?;
    let subnet_v = get(table, "subnet_id", f)?;
    let subnet_id = SubnetId::new(
        "args.payload.arp_table.subnet_id",
        text(&subnet_v, "args.payload.arp_table.subnet_id")?,
    )
    .map_err(|e| e.to_string())?;
    Ok(ArpEntry {
        router_id,
        ip_address,
        mac_address,
        subnet_id,
    })
}

/// Decodes a request to the agent: `Ok(None)` for a method the agent does not have,
/// `Err` (why, by argument path) for one whose arguments are malformed.
pub fn decode_notification(req: &Request) -> Result<Option<Notification>, String> {
    let a = &req.args;
    let n = match req.method.as_str() {
        "routers_updated" => Notification::RoutersUpdated {
            routers: router_ids(arg(a, "routers")?, "args.routers")?,
        },
        "router_deleted" => Notification::RouterDeleted {
            router_id: router_id(arg(a, "router_id")?, "args.router_id")?,
        },
        "router_added_to_agent" => Notification::RouterAddedToAgent {
            routers: router_ids(arg(a, "payload")?, "args.payload")?,
        },
        "router_removed_from_agent" => {
            let p = object(arg(a, "payload")?, "args.payload")?;
            Notification::RouterRemovedFromAgent {
                router_id: router_id(
                    p.get("router_id").unwrap_or(&Value::Null),
                    "args.payload.router_id",
                )?,
            }
        }
        "agent_updated" => {
            let p = object(arg(a, "payload")?, "args.payload")?;
            let v = p.get("admin_state_up").unwrap_or(&Value::Null);
            Notification::AgentUpdated {
                admin_state_up: v.as_bool().ok_or_else(|| {
                    format!("args.payload.admin_state_up is not a boolean: {}", brief(v))
                })?,
            }
        }
        "fipnamespace_delete_on_ext_net" => {
            let v = arg(a, "ext_net_id")?;
            Notification::FipNamespaceDeleteOnExtNet {
                ext_net_id: NetworkId::new("args.ext_net_id", text(v, "args.ext_net_id")?)
                    .map_err(|e| e.to_string())?,
            }
        }
        "add_arp_entry" => Notification::AddArpEntry(arp_entry(a)?),
        "del_arp_entry" => Notification::DelArpEntry(arp_entry(a)?),
        "network_update" => {
            let net = object(arg(a, "network")?, "args.network")?;
            let id = net.get("id").unwrap_or(&Value::Null);
            let mtu = match net.get("mtu") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .and_then(|m| u32::try_from(m).ok())
                        .ok_or_else(|| format!("args.network.mtu is not an MTU: {}", brief(v)))?,
                ),
            };
            Notification::NetworkUpdate {
                network_id: NetworkId::new("args.network.id", text(id, "args.network.id")?)
                    .map_err(|e| e.to_string())?,
                mtu,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(n))
}

/// The agent's RPC endpoint: decodes each request and hands it on through a channel.
#[derive(Debug)]
pub struct AgentEndpoint {
    tx: Mutex<mpsc::Sender<Notification>>,
}

impl AgentEndpoint {
    /// An endpoint sending to `tx`.
    pub fn new(tx: mpsc::Sender<Notification>) -> AgentEndpoint {
        AgentEndpoint { tx: Mutex::new(tx) }
    }
}

impl Handler for AgentEndpoint {
    fn version(&self) -> &str {
        AGENT_API_VERSION
    }

    fn handle(&self, req: &Request) -> Result<Value, Box<RemoteFailure>> {
        match decode_notification(req) {
            Ok(Some(n)) => {
                debug!(method = %req.method, notification = ?n, "notification");
                let sent = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(n);
                if sent.is_err() {
                    info!(method = %req.method, "notification dropped: nobody receives them any more");
                }
                Ok(Value::Null)
            }
            Ok(None) => Err(RemoteFailure::no_such_method(&req.method).into()),
            Err(problem) => {
                let args = Value::Object(req.args.clone());
                debug!(method = %req.method, %args, "the malformed message");
                info!(method = %req.method, %problem, "malformed notification dropped");
                Err(RemoteFailure::new(
                    "builtins",
                    "ValueError",
                    &format!("{}: {problem}", req.method),
                )
                .into())
            }
        }
    }
}

/// The agent's RPC servers: `l3_agent` (with `l3_agent.<host>` and its fanout) and the
/// `q-agent-notifier-network-update` fanout, as neutron-l3-agent consumes them.
#[derive(Debug)]
pub struct AgentRpcServer {
    l3: RpcServer,
    network: RpcServer,
}

impl AgentRpcServer {
    /// Starts consuming; notifications arrive on the receiver, in order per queue.
    pub fn start(
        transport: &Transport,
        host: &str,
    ) -> Result<(AgentRpcServer, mpsc::Receiver<Notification>), NeutronError> {
        let (tx, rx) = mpsc::channel();
        let endpoint = Arc::new(AgentEndpoint::new(tx));
        let l3 = transport.serve(L3_AGENT_TOPIC, host, endpoint.clone())?;
        let network = transport.serve(NETWORK_UPDATE_TOPIC, host, endpoint)?;
        Ok((AgentRpcServer { l3, network }, rx))
    }

    /// Whether both servers consume on the current connection.
    pub fn is_consuming(&self) -> bool {
        self.l3.is_consuming() && self.network.is_consuming()
    }

    /// Waits up to `timeout` until both consume.
    pub fn wait_consuming(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        self.l3.wait_consuming(timeout)
            && self
                .network
                .wait_consuming(deadline.saturating_duration_since(std::time::Instant::now()))
    }

    /// Stops both.
    pub fn stop(self) {
        self.l3.stop();
        self.network.stop();
    }
}

/// A floating IP's status as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FipStatus {
    /// Configured.
    Active,
    /// Not configured (its router or port is down).
    Down,
    /// Configuration failed.
    Error,
}

impl FipStatus {
    /// As Neutron spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FipStatus::Active => "ACTIVE",
            FipStatus::Down => "DOWN",
            FipStatus::Error => "ERROR",
        }
    }
}

/// An HA router's VRRP state on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HaState {
    /// Master.
    Active,
    /// Backup.
    Standby,
}

impl HaState {
    /// As Neutron spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            HaState::Active => "active",
            HaState::Standby => "standby",
        }
    }
}

/// The counts the agent reports with its state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterCounts {
    /// Routers hosted.
    pub routers: u64,
    /// Of which with a gateway.
    pub ex_gw_ports: u64,
    /// Internal interfaces.
    pub interfaces: u64,
    /// Floating IPs.
    pub floating_ips: u64,
}

/// `agent_state` of `report_state`, as `L3NATAgentWithStateReport` builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentState {
    /// `host`.
    pub host: String,
    /// `availability_zone`.
    pub availability_zone: String,
    /// `configurations.agent_mode`.
    pub agent_mode: String,
    /// `configurations.handle_internal_only_routers`.
    pub handle_internal_only_routers: bool,
    /// `configurations.interface_driver`, as configured.
    pub interface_driver: String,
    /// `configurations.log_agent_heartbeats`.
    pub log_agent_heartbeats: bool,
    /// `configurations.extensions`.
    pub extensions: Vec<String>,
    /// `start_flag`: true until the first report succeeds.
    pub start_flag: bool,
    /// The `configurations` counts.
    pub counts: RouterCounts,
}

impl AgentState {
    /// The state of an agent configured by `cfg`, before its first report.
    pub fn from_config(cfg: &NeutronAgentConfig) -> AgentState {
        AgentState {
            host: cfg.host.clone(),
            availability_zone: cfg.availability_zone.clone(),
            agent_mode: cfg.agent_mode.as_str().to_owned(),
            handle_internal_only_routers: cfg.handle_internal_only_routers,
            interface_driver: cfg.interface_driver.as_str().to_owned(),
            log_agent_heartbeats: cfg.log_agent_heartbeats,
            extensions: Vec::new(),
            start_flag: true,
            counts: RouterCounts::default(),
        }
    }

    /// The `agent_state` dict, with this report's `uuid`.
    pub fn to_json(&self, uuid: &str) -> Value {
        let mut s = json!({
            "binary": "neutron-l3-agent",
            "host": self.host,
            "availability_zone": self.availability_zone,
            "topic": L3_AGENT_TOPIC,
            "agent_type": "L3 agent",
            "configurations": {
                "agent_mode": self.agent_mode,
                "handle_internal_only_routers": self.handle_internal_only_routers,
                "interface_driver": self.interface_driver,
                "log_agent_heartbeats": self.log_agent_heartbeats,
                "extensions": self.extensions,
                "routers": self.counts.routers,
                "ex_gw_ports": self.counts.ex_gw_ports,
                "interfaces": self.counts.interfaces,
                "floating_ips": self.counts.floating_ips,
            },
            "uuid": uuid,
        });
        if self.start_flag {
            s["start_flag"] = Value::Bool(true);
        }
        s
    }
}

/// What `report_state` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentStatus {
    /// The server created the agent record.
    New,
    /// The agent was alive.
    Alive,
    /// The agent had been marked dead: do a full sync.
    Revived,
    /// The server skipped the report (`null`: a report stamped before the server started).
    Ignored,
}

impl AgentStatus {
    /// The server's word for it (`new`, `alive`, `revived`), or `ignored` for `null`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::New => "new",
            AgentStatus::Alive => "alive",
            AgentStatus::Revived => "revived",
            AgentStatus::Ignored => "ignored",
        }
    }
}

/// The agent → server calls (`L3PluginApi`, `PluginReportStateAPI`), with this agent's host
/// and the config's `rpc_response_timeout`.
#[derive(Debug, Clone)]
pub struct PluginApi {
    transport: Transport,
    host: String,
    timeout: Duration,
}

impl PluginApi {
    /// The API for `host`, each call bounded by `timeout`.
    pub fn new(transport: Transport, host: &str, timeout: Duration) -> PluginApi {
        PluginApi {
            transport,
            host: host.to_owned(),
            timeout,
        }
    }

    /// The transport it uses.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    fn call(&self, method: &str, version: &str, args: Value) -> Result<Value, NeutronError> {
        let Value::Object(args) = args else {
            return Err(NeutronError::decode(method, "arguments are not an object"));
        };
        self.transport
            .call(L3_PLUGIN_TOPIC, None, method, args, version, self.timeout)
    }

    /// `get_router_ids(host)` (1.9): the routers scheduled to this host (the server
    /// schedules unhosted ones on the way).
    pub fn get_router_ids(&self) -> Result<Vec<RouterId>, NeutronError> {
        let v = self.call("get_router_ids", "1.9", json!({ "host": self.host }))?;
        router_ids(&v, "get_router_ids result")
            .map_err(|e| NeutronError::decode("get_router_ids result", e))
    }

    /// `sync_routers(host, router_ids)` (1.0): the router dicts, raw (`None`: every router
    /// of this host). Ask in chunks (Neutron: 256, fewer after timeouts).
    pub fn sync_routers(
        &self,
        router_ids: Option<&[RouterId]>,
    ) -> Result<Vec<Value>, NeutronError> {
        let ids = router_ids.map(|ids| ids.iter().map(|i| i.as_str()).collect::<Vec<_>>());
        let v = self.call(
            "sync_routers",
            "1.0",
            json!({ "host": self.host, "router_ids": ids }),
        )?;
        match v {
            Value::Array(routers) => Ok(routers),
            Value::Null => Ok(Vec::new()),
            other => Err(NeutronError::decode(
                "sync_routers result",
                format!("not a list: {}", brief(&other)),
            )),
        }
    }

    /// `update_floatingip_statuses(router_id, fip_statuses)` (1.1).
    pub fn update_floatingip_statuses(
        &self,
        router_id: &RouterId,
        statuses: &BTreeMap<FloatingIpId, FipStatus>,
    ) -> Result<(), NeutronError> {
        let fip_statuses: Map<String, Value> = statuses
            .iter()
            .map(|(id, s)| (id.to_string(), Value::String(s.as_str().to_owned())))
            .collect();
        self.call(
            "update_floatingip_statuses",
            "1.1",
            json!({ "router_id": router_id.as_str(), "fip_statuses": fip_statuses }),
        )
        .map(|_| ())
    }

    /// `get_agent_gateway_port(network_id, host)` (1.2): this host's `fg-` port on an
    /// external network (DVR), raw; `None` when the server has none.
    pub fn get_agent_gateway_port(
        &self,
        network_id: &NetworkId,
    ) -> Result<Option<Value>, NeutronError> {
        let v = self.call(
            "get_agent_gateway_port",
            "1.2",
            json!({ "network_id": network_id.as_str(), "host": self.host }),
        )?;
        Ok((!v.is_null()).then_some(v))
    }

    /// `get_ports_by_subnet(host, subnet_id)` (1.2): the bound ports with an address in the
    /// subnet, raw port dicts (`l3_dvr_db.py: get_ports_under_dvr_connected_subnet`; DVR ARP
    /// entries, NEUTRON-OPS §8.1).
    pub fn get_ports_by_subnet(&self, subnet_id: &SubnetId) -> Result<Vec<Value>, NeutronError> {
        let v = self.call(
            "get_ports_by_subnet",
            "1.2",
            json!({ "host": self.host, "subnet_id": subnet_id.as_str() }),
        )?;
        match v {
            Value::Array(ports) => Ok(ports),
            Value::Null => Ok(Vec::new()),
            other => Err(NeutronError::decode(
                "get_ports_by_subnet result",
                format!("not a list: {}", brief(&other)),
            )),
        }
    }

    /// `update_ha_routers_states(host, states)` (1.5), a cast.
    pub fn update_ha_routers_states(
        &self,
        states: &BTreeMap<RouterId, HaState>,
    ) -> Result<(), NeutronError> {
        let states: Map<String, Value> = states
            .iter()
            .map(|(id, s)| (id.to_string(), Value::String(s.as_str().to_owned())))
            .collect();
        let Value::Object(args) = json!({ "host": self.host, "states": states }) else {
            return Ok(());
        };
        self.transport.cast(
            L3_PLUGIN_TOPIC,
            None,
            "update_ha_routers_states",
            args,
            "1.5",
        )
    }

    /// `report_state(agent_state={"agent_state": ...}, time=...)` on `q-reports-plugin`
    /// (1.4), a call as neutron-l3-agent makes it. Clear `start_flag` after a success.
    pub fn report_state(&self, state: &AgentState) -> Result<AgentStatus, NeutronError> {
        let mut args = Map::new();
        args.insert(
            "agent_state".into(),
            json!({ "agent_state": state.to_json(&wire::uuid4()) }),
        );
        args.insert(
            "time".into(),
            Value::String(wire::utc_timestamp(SystemTime::now(), 'T')),
        );
        let v = self.transport.call(
            REPORTS_TOPIC,
            None,
            "report_state",
            args,
            REPORT_STATE_VERSION,
            self.timeout,
        )?;
        match &v {
            Value::String(s) if s == "new" => Ok(AgentStatus::New),
            Value::String(s) if s == "alive" => Ok(AgentStatus::Alive),
            Value::String(s) if s == "revived" => Ok(AgentStatus::Revived),
            Value::Null => Ok(AgentStatus::Ignored),
            other => Err(NeutronError::decode(
                "report_state result",
                format!("expected new, alive or revived: {}", brief(other)),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R1: &str = "87c7c2ae-d0ba-4691-820c-8053abf50b8d";
    const R2: &str = "11111111-2222-4333-8444-555555555555";

    fn req(method: &str, args: Value) -> Request {
        let Value::Object(a) = args else { panic!() };
        Request::new(method, a, "1.0")
    }

    fn rid(s: &str) -> RouterId {
        RouterId::new("t", s).unwrap()
    }

    #[test]
    fn decodes_every_notification_neutron_sends() {
        let cases = vec![
            (
                req("routers_updated", json!({"routers": [R1, R2]})),
                Notification::RoutersUpdated {
                    routers: vec![rid(R1), rid(R2)],
                },
            ),
            (
                req("routers_updated", json!({"routers": [{"id": R1}]})),
                Notification::RoutersUpdated {
                    routers: vec![rid(R1)],
                },
            ),
            (
                req("router_deleted", json!({"router_id": R1})),
                Notification::RouterDeleted { router_id: rid(R1) },
            ),
            (
                req("router_added_to_agent", json!({"payload": [R2]})),
                Notification::RouterAddedToAgent {
                    routers: vec![rid(R2)],
                },
            ),
            (
                req(
                    "router_removed_from_agent",
                    json!({"payload": {"router_id": R1}}),
                ),
                Notification::RouterRemovedFromAgent { router_id: rid(R1) },
            ),
            (
                req(
                    "agent_updated",
                    json!({"payload": {"admin_state_up": false}}),
                ),
                Notification::AgentUpdated {
                    admin_state_up: false,
                },
            ),
            (
                req("fipnamespace_delete_on_ext_net", json!({"ext_net_id": R2})),
                Notification::FipNamespaceDeleteOnExtNet {
                    ext_net_id: NetworkId::new("t", R2).unwrap(),
                },
            ),
            (
                req(
                    "add_arp_entry",
                    json!({"payload": {"router_id": R1, "arp_table": {
                        "ip_address": "10.0.0.5", "mac_address": "fa:16:3e:00:00:01", "subnet_id": R2}}}),
                ),
                Notification::AddArpEntry(ArpEntry {
                    router_id: rid(R1),
                    ip_address: "10.0.0.5".parse().unwrap(),
                    mac_address: "fa:16:3e:00:00:01".parse().unwrap(),
                    subnet_id: SubnetId::new("t", R2).unwrap(),
                }),
            ),
            (
                req(
                    "network_update",
                    json!({"network": {"id": R2, "mtu": 1450, "name": "n"}}),
                ),
                Notification::NetworkUpdate {
                    network_id: NetworkId::new("t", R2).unwrap(),
                    mtu: Some(1450),
                },
            ),
        ];
        for (r, want) in cases {
            assert_eq!(decode_notification(&r), Ok(Some(want)), "{}", r.method);
        }
        assert_eq!(decode_notification(&req("nope", json!({}))), Ok(None));
    }

    #[test]
    fn malformed_ids_are_reported_by_argument_path() {
        for (r, want) in [
            (
                req("router_deleted", json!({"router_id": "-rf"})),
                "args.router_id: invalid value \"-rf\"",
            ),
            (
                req("routers_updated", json!({"routers": [R1, "a b"]})),
                "args.routers[1]: invalid value \"a b\"",
            ),
            (
                req("router_deleted", json!({})),
                "args.router_id is missing",
            ),
            (
                req("router_added_to_agent", json!({"payload": {"x": 1}})),
                "args.payload is not a list",
            ),
            (
                req(
                    "del_arp_entry",
                    json!({"payload": {"router_id": R1, "arp_table": {
                        "ip_address": "10.0.0.500", "mac_address": "fa:16:3e:00:00:01", "subnet_id": R2}}}),
                ),
                "args.payload.arp_table.ip_address: not an IP address",
            ),
            (
                req(
                    "agent_updated",
                    json!({"payload": {"admin_state_up": "yes"}}),
                ),
                "args.payload.admin_state_up is not a boolean",
            ),
            (
                req("network_update", json!({"network": {"id": R1, "mtu": -1}})),
                "args.network.mtu is not an MTU",
            ),
        ] {
            let e = decode_notification(&r).unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn the_endpoint_hands_notifications_on_and_refuses_unknown_methods() {
        let (tx, rx) = mpsc::channel();
        let ep = AgentEndpoint::new(tx);
        assert_eq!(
            ep.handle(&req("router_added_to_agent", json!({"payload": [R1]}))),
            Ok(Value::Null)
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            Notification::RouterAddedToAgent {
                routers: vec![rid(R1)]
            }
        );
        let f = ep.handle(&req("bogus", json!({}))).unwrap_err();
        assert!(f.is(wire::DISPATCHER_MODULE, "NoSuchMethod"));
        let f = ep
            .handle(&req("router_deleted", json!({"router_id": 5})))
            .unwrap_err();
        assert_eq!(f.class, "ValueError");
        assert!(
            rx.try_recv().is_err(),
            "nothing handed on for a malformed message"
        );
    }

    #[test]
    fn agent_state_is_neutrons_dict() {
        let s = AgentState {
            host: "node1".into(),
            availability_zone: "nova".into(),
            agent_mode: "legacy".into(),
            handle_internal_only_routers: true,
            interface_driver: "openvswitch".into(),
            log_agent_heartbeats: false,
            extensions: vec![],
            start_flag: true,
            counts: RouterCounts {
                routers: 2,
                ex_gw_ports: 1,
                interfaces: 3,
                floating_ips: 4,
            },
        };
        assert_eq!(
            s.to_json("u-1"),
            json!({
                "binary": "neutron-l3-agent",
                "host": "node1",
                "availability_zone": "nova",
                "topic": "l3_agent",
                "agent_type": "L3 agent",
                "start_flag": true,
                "uuid": "u-1",
                "configurations": {
                    "agent_mode": "legacy",
                    "handle_internal_only_routers": true,
                    "interface_driver": "openvswitch",
                    "log_agent_heartbeats": false,
                    "extensions": [],
                    "routers": 2, "ex_gw_ports": 1, "interfaces": 3, "floating_ips": 4
                }
            })
        );
        let later = AgentState {
            start_flag: false,
            ..s
        };
        assert!(later.to_json("u").get("start_flag").is_none());
    }
}
