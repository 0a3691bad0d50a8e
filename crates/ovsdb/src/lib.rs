//! Open vSwitch's database protocol (RFC 7047 JSON-RPC over a unix socket), in process: the router ports l3agent plugs into the integration bridge, one transaction per change set.
