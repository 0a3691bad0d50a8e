//! A router port as the interface driver makes it: a veth pair whose router end is created
//! directly in the router's namespace (MTU, MAC, addresses, up) and whose host end is
//! enslaved to a bridge. A compound operation: when a later step fails, the pair is deleted
//! again, so nothing half-made is left behind.

use ipnet::IpNet;
use l3agent_types::IfName;

use crate::error::Error;
use crate::netns::Netns;
use crate::socket::Rtnl;

/// What to build.
#[derive(Debug, Clone)]
pub struct VethPort {
    /// The router end (`qr-…`, `qg-…`), created in the router namespace.
    pub name: IfName,
    /// The host end, in the namespace of the `host` socket.
    pub peer: IfName,
    /// MTU of both ends.
    pub mtu: u32,
    /// MAC of the router end (Neutron's port MAC).
    pub mac: Option<[u8; 6]>,
    /// Addresses of the router end.
    pub addresses: Vec<IpNet>,
    /// Bridge to enslave the host end to.
    pub bridge: Option<IfName>,
}

/// Builds `port`: `host` is a socket in the host namespace, `router` one in `router_ns`.
/// On failure the pair is removed and the first error returned.
pub fn create_veth_port(
    host: &mut Rtnl,
    router: &mut Rtnl,
    router_ns: &Netns,
    port: &VethPort,
) -> Result<(), Error> {
    host.add_veth(&port.peer, &port.name, Some(router_ns.fd()), None)?;
    let result = (|| {
        router.set_mtu(&port.name, port.mtu)?;
        host.set_mtu(&port.peer, port.mtu)?;
        if let Some(mac) = port.mac {
            router.set_mac(&port.name, mac)?;
        }
        router.set_up(&port.name, true)?;
        for a in &port.addresses {
            router.add_address(&port.name, *a, true)?;
        }
        if let Some(br) = &port.bridge {
            host.set_master(&port.peer, br)?;
        }
        host.set_up(&port.peer, true)
    })();
    if let Err(e) = result {
        // Deleting one end deletes both; the router end may already be gone with its namespace.
        let _ = host.delete_link(&port.peer);
        return Err(e);
    }
    Ok(())
}
