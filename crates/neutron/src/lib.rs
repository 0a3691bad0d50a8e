//! The drop-in front end for neutron-l3-agent: oslo.config INI files and oslo.messaging's RPC
//! over AMQP 0-9-1 (RabbitMQ), as neutron-server speaks it (NEUTRON-RPC.md is the protocol).
//!
//! ```text
//!  neutron.conf + l3_agent.ini ──► ini (oslo's iniparser) ──► config::NeutronAgentConfig
//!                                                                   │ TransportOptions
//!                                                                   ▼
//!  neutron-server ◄──── RabbitMQ ◄──── amqp::Transport (lapin, a blocking API over its own
//!                                      │ runtime; reconnects; replies by _msg_id)
//!         wire (envelope, requests, replies, failures: pure)
//!                                      │
//!   l3::PluginApi (agent → server: get_router_ids, sync_routers, report_state, ...)
//!   l3::AgentRpcServer (server → agent) ──► std::sync::mpsc::Receiver<l3::Notification>
//! ```
//!
//! Pure parts (`ini`, `config`, `wire`, notification decoding) know nothing of sockets;
//! `amqp` is the only module that talks to the broker. The agent stays thread-based: every
//! operation here blocks its caller, with a deadline, and notifications arrive on a channel.

pub mod amqp;
pub mod config;
pub mod error;
pub mod front;
pub mod ini;
pub mod l3;
pub mod wire;

pub use amqp::{ConnectionState, Handler, RpcServer, Transport, TransportOptions};
pub use config::{NeutronAgentConfig, Secret, TransportUrl};
pub use error::{NeutronError, OptionError, Origin};
pub use front::{Front, FrontError, FrontOptions, Started};
pub use l3::{
    AgentRpcServer, AgentState, AgentStatus, ArpEntry, FipStatus, HaState, Notification, PluginApi,
    RouterCounts,
};
pub use wire::{RemoteFailure, Request};
