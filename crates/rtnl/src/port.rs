//! A router port as the interface driver makes it: a veth pair whose router end is created
//! directly in the router's namespace (MTU, MAC, addresses, up) and whose host end is
//! enslaved to a bridge. A compound operation: when a later step fails, the pair is deleted
//! again, so nothing half-made is left behind.

use ipnet::IpNet;
use l3agent_types::IfName;

use crate::error::Error;
use crate::netns::Netns;
use crate::prelude::*;

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

/// Builds `port`: `host` works in the host namespace, `router` in `router_ns` (real
/// [`crate::Rtnl`] sockets, or fakes that inject a fault at any step). On failure the pair is
/// removed and the first error returned.
pub fn create_veth_port<H: Links, R: Links + Addresses>(
    host: &mut H,
    router: &mut R,
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

/// The undo path under injected faults: whichever step fails, nothing is left behind.
#[cfg(test)]
mod fault_tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::os::fd::BorrowedFd;
    use std::rc::Rc;

    use ipnet::IpNet;
    use l3agent_types::IfName;

    use super::*;
    use crate::addr::Address;
    use crate::link::Link;

    /// One end of a link: (namespace, name).
    type End = (&'static str, String);

    /// Two namespaces' links in memory; the `fail_at`-th mutating call fails.
    #[derive(Default)]
    struct World {
        links: BTreeSet<End>,
        pairs: Vec<(End, End)>,
        calls: usize,
        fail_at: usize,
    }

    struct Fake {
        ns: &'static str,
        other: &'static str,
        world: Rc<RefCell<World>>,
    }

    impl Fake {
        fn step(&self, what: &str) -> Result<(), Error> {
            let mut w = self.world.borrow_mut();
            w.calls += 1;
            if w.calls == w.fail_at {
                return Err(Error::Value(format!(
                    "injected failure at {what} in {}",
                    self.ns
                )));
            }
            Ok(())
        }
        fn has(&self, name: &IfName) -> Result<(), Error> {
            if self
                .world
                .borrow()
                .links
                .contains(&(self.ns, name.to_string()))
            {
                Ok(())
            } else {
                Err(Error::NoDevice {
                    what: "op".into(),
                    netns: self.ns.into(),
                    device: name.to_string(),
                })
            }
        }
    }

    impl Links for Fake {
        fn links(&mut self) -> Result<Vec<Link>, Error> {
            Ok(Vec::new())
        }
        fn link(&mut self, _: &IfName) -> Result<Option<Link>, Error> {
            Ok(None)
        }
        fn add_veth(
            &mut self,
            name: &IfName,
            peer: &IfName,
            peer_netns: Option<BorrowedFd<'_>>,
            _: Option<u32>,
        ) -> Result<(), Error> {
            self.step("add_veth")?;
            let peer_ns = if peer_netns.is_some() {
                self.other
            } else {
                self.ns
            };
            let mut w = self.world.borrow_mut();
            w.links.insert((self.ns, name.to_string()));
            w.links.insert((peer_ns, peer.to_string()));
            w.pairs
                .push(((self.ns, name.to_string()), (peer_ns, peer.to_string())));
            Ok(())
        }
        fn add_bridge(&mut self, _: &IfName) -> Result<(), Error> {
            self.step("add_bridge")
        }
        fn set_up(&mut self, name: &IfName, _: bool) -> Result<(), Error> {
            self.has(name)?;
            self.step("set_up")
        }
        fn set_mtu(&mut self, name: &IfName, _: u32) -> Result<(), Error> {
            self.has(name)?;
            self.step("set_mtu")
        }
        fn set_mac(&mut self, name: &IfName, _: [u8; 6]) -> Result<(), Error> {
            self.has(name)?;
            self.step("set_mac")
        }
        fn set_master(&mut self, name: &IfName, _: &IfName) -> Result<(), Error> {
            self.has(name)?;
            self.step("set_master")
        }
        fn move_to(&mut self, _: &IfName, _: BorrowedFd<'_>, _: &str) -> Result<(), Error> {
            self.step("move_to")
        }
        fn delete_link(&mut self, name: &IfName) -> Result<bool, Error> {
            let mut w = self.world.borrow_mut();
            let key = (self.ns, name.to_string());
            let Some(pos) = w.pairs.iter().position(|(a, b)| *a == key || *b == key) else {
                return Ok(false);
            };
            let (a, b) = w.pairs.remove(pos);
            w.links.remove(&a);
            w.links.remove(&b);
            Ok(true)
        }
    }

    impl Addresses for Fake {
        fn addresses(&mut self, _: Option<&IfName>) -> Result<Vec<Address>, Error> {
            Ok(Vec::new())
        }
        fn add_address(&mut self, dev: &IfName, _: IpNet, _: bool) -> Result<(), Error> {
            self.has(dev)?;
            self.step("add_address")
        }
        fn delete_address(&mut self, dev: &IfName, _: IpNet) -> Result<(), Error> {
            self.has(dev)?;
            self.step("delete_address")
        }
    }

    fn name(s: &str) -> IfName {
        IfName::new("t", s).unwrap()
    }

    #[test]
    fn every_failing_step_leaves_nothing() {
        let router_ns = Netns::current().unwrap();
        let port = VethPort {
            name: name("qr-1"),
            peer: name("tap-1"),
            mtu: 1450,
            mac: Some([2, 0, 0, 0, 0, 1]),
            addresses: vec![
                "192.0.2.1/24".parse().unwrap(),
                "2001:db8::1/64".parse().unwrap(),
            ],
            bridge: Some(name("br-int")),
        };
        let mut failures = 0;
        for fail_at in 1..=20 {
            let world = Rc::new(RefCell::new(World {
                fail_at,
                ..World::default()
            }));
            let mut host = Fake {
                ns: "host",
                other: "router",
                world: world.clone(),
            };
            let mut router = Fake {
                ns: "router",
                other: "host",
                world: world.clone(),
            };
            match create_veth_port(&mut host, &mut router, &router_ns, &port) {
                Ok(()) => {
                    assert_eq!(world.borrow().links.len(), 2);
                    assert!(failures >= 8, "only {failures} steps were exercised");
                    return;
                }
                Err(e) => {
                    failures += 1;
                    assert!(e.to_string().contains("injected failure"), "{e}");
                    assert!(
                        world.borrow().links.is_empty(),
                        "step {fail_at} left {:?}",
                        world.borrow().links
                    );
                }
            }
        }
        panic!("never succeeded");
    }
}
