//! Routers from a declarative host config: Neutron's router dicts in, validated typed routers
//! out, persisted allocators, and the dataplane built from them.

pub mod alloc;
pub mod config;
pub mod dvr;
pub mod error;
pub mod host;
pub mod legacy;
