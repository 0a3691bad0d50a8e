//! Open vSwitch's database protocol (RFC 7047 JSON-RPC over a unix socket), in process: the
//! router ports l3agent plugs into the integration bridge, one transaction per change set.
//!
//! # Why
//! Every ML2/OVS deployment plugs router ports with Neutron's `OVSInterfaceDriver`: an OVS
//! **internal** port on `br-int` whose Interface row has `type=internal` and `external_ids`
//! `iface-id=<neutron port id>`, `iface-status=active`, `attached-mac=<mac>`; the Port starts
//! in the dead VLAN (`tag=4095`) until neutron-openvswitch-agent, which watches for the
//! `iface-id`, wires it. ovs-vswitchd then creates the device (a tap device on the userspace
//! datapath), which the agent moves into the router's namespace and configures. Neutron speaks
//! OVSDB natively (ovsdbapp); so does this crate, instead of running one `ovs-vsctl` process per
//! port: a change set of 200 ports is one request and one commit (the integration test prints
//! the comparison).
//!
//! # Layers
//! - [`datum`] and [`op`]: RFC 7047 values and typed operations, encoding only (pure).
//! - `framing`: splits the socket's byte stream into JSON messages (pure).
//! - [`Connection`]: one blocking connection; request ids, answers to the server's `echo`,
//!   a deadline on every call (connect, write and read included), per-operation errors
//!   ([`OvsdbError::Operation`] names the operation and carries the server's `error` and
//!   `details`). Dead server: [`OvsdbError::Closed`]; stuck server: [`OvsdbError::Timeout`].
//! - `plan` (pure): rows read + [`ChangeSet`] → the operations of one transaction.
//! - [`Ovsdb`]: read, plan, commit; [`Ovsdb::ports`], [`Ovsdb::bridge_exists`],
//!   [`Ovsdb::apply`]. It connects eagerly ([`Ovsdb::connect`]) or on first use
//!   ([`Ovsdb::new`]), and reconnects on the call after an error broke the connection (a
//!   restarted ovsdb-server); a call that failed is never silently retried. The [`OvsPorts`]
//!   trait is what the router layer takes; [`fake::FakeOvs`] stands in for it in tests.
//!
//! Cost: an apply is one request to read (the bridge's list of port UUIDs, and the Port and
//! Interface rows of each name in the change set, not of the whole bridge) and one to commit;
//! nothing is written when nothing differs. [`Ovsdb::ports`] reads every Port and Interface row (it is the full
//! picture, for status and drift checks).
//!
//! # What an apply guarantees
//! - **One transaction** per change set: every port of it changes, or none does.
//! - **Idempotent**: a port already on the bridge is updated in place (never deleted and
//!   re-added, so its device and its ofport survive and the L2 agent sees no flap); when
//!   everything matches, nothing is written at all.
//! - **Ownership**: an apply owns the Interface's `type`, `mtu_request` and the `external_ids`
//!   keys it names, and that the Port has exactly its one Interface. `external_ids` keys written
//!   by others are kept (the map is changed with `mutate`, key by key); `Port.tag` is written
//!   only when the port is created or moved (afterwards the L2 agent owns it); `Bridge.ports` is
//!   changed with `mutate`, so concurrent writers' ports are never lost.
//! - **A port of that name on another bridge** is refused ([`OvsdbError::PortOnOtherBridge`])
//!   unless the change set allows moving ([`ChangeSet::move_from_other_bridges`]); then it is
//!   moved in the same transaction and parked in the dead VLAN again, as Neutron's
//!   `replace_port` (which deletes the name wherever it is) would leave it. Unplugging a name
//!   that is not on the bridge is a no-op, also when it is on another bridge.
//! - **Concurrent writers**: the transaction begins with `wait` operations asserting that the
//!   rows it was planned from are unchanged; if another writer got in between, the server
//!   refuses the whole transaction and the apply reads and plans again (bounded).
//! - **Inputs are checked before anything is sent**: names are [`l3agent_types::IfName`],
//!   `external_ids` are [`ExternalIds`], MTUs are [`MtuRequest`]; errors name the field and
//!   echo the value.
//! - **vswitchd applied it**: like `ovs-vsctl` without `--no-wait`, the transaction bumps
//!   `next_cfg` and the apply waits (bounded) for `cur_cfg` to reach it, so the devices exist
//!   when it returns.
//!
//! The crate never runs a process; it needs only the socket.

pub mod client;
pub mod datum;
mod error;
pub mod fake;
mod framing;
pub mod model;
pub mod op;
mod plan;
pub mod rpc;

pub use client::{OvsPorts, Ovsdb, DB, MAX_ATTEMPTS};
pub use error::OvsdbError;
pub use framing::MAX_MESSAGE;
pub use model::{
    Applied, ChangeSet, ExternalIds, InternalPort, MtuRequest, PortChange, PortChangeRequest,
    PortRecord, DEAD_VLAN_TAG, INTERNAL,
};
pub use rpc::Connection;
