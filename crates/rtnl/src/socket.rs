//! One rtnetlink socket per namespace, opened inside it (a socket stays bound to the namespace
//! it was created in) and reused for every request: no process, no namespace switch per call.
//!
//! Every socket has strict checking on (`NETLINK_GET_STRICT_CHK`, as `ip` sets it since
//! iproute2 5.0): the kernel validates the header of every dump and get request and applies the
//! filters it carries (route table and type, address and neighbour device), so a dump returns
//! only what was asked for instead of the whole namespace. An error the kernel reports at the
//! end of a dump (the errno in `NLMSG_DONE`) is returned as an error, never as an empty answer.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::Error;
use crate::netns::Netns;

/// An rtnetlink socket bound to one namespace.
#[derive(Debug)]
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    netns: String,
    counters: Counters,
}

/// What a socket has asked the kernel and received so far. There is no `ip` equivalent: it is
/// for tests and benchmarks, to prove that a dump was filtered by the kernel (few messages
/// received) and to count the dumps an operation costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Dump requests sent (`NLM_F_DUMP`).
    pub dumps: u64,
    /// Messages received in answer to dumps (objects, before any client-side filtering).
    pub dumped: u64,
}

impl Rtnl {
    /// Opens a socket inside `netns`.
    pub fn open(netns: &Netns) -> Result<Rtnl, Error> {
        let socket = netns.run::<_, Error>(new_socket)??;
        Ok(Rtnl {
            socket,
            seq: 0,
            netns: netns.label().to_owned(),
            counters: Counters::default(),
        })
    }

    /// Opens a socket in the caller's namespace.
    pub fn current() -> Result<Rtnl, Error> {
        Ok(Rtnl {
            socket: new_socket()?,
            seq: 0,
            netns: "current".into(),
            counters: Counters::default(),
        })
    }

    /// The namespace's name, for messages.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The dumps sent and messages received so far (no `ip` equivalent; see [`Counters`]).
    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub(crate) fn kernel_error(&self, what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Kernel {
            what: what.into(),
            netns: self.netns.clone(),
            source,
        }
    }

    fn send(&mut self, what: &str, payload: RouteNetlinkMessage, flags: u16) -> Result<u32, Error> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| self.kernel_error(what, e))?;
        Ok(self.seq)
    }

    /// Reads answers to `seq` until `done` says stop; every message goes through `on_msg`.
    fn receive(
        &mut self,
        what: &str,
        seq: u32,
        mut on_msg: impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), Error> {
        loop {
            let (buf, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| self.kernel_error(what, e))?;
            let mut offset = 0;
            while offset < buf.len() {
                let msg: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&buf[offset..]).map_err(|e| Error::Decode {
                        what: what.to_owned(),
                        reason: e.to_string(),
                    })?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == seq {
                    match msg.payload {
                        // A dump that failed in the kernel (a strict-checking refusal, a
                        // table that does not exist) ends with its errno in NLMSG_DONE.
                        NetlinkPayload::Done(d) => {
                            return match d.code {
                                0 => Ok(()),
                                c => Err(self.kernel_error(
                                    what,
                                    std::io::Error::from_raw_os_error(c.saturating_abs()),
                                )),
                            }
                        }
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(()),
                                Some(_) => Err(self.kernel_error(what, e.to_io())),
                            }
                        }
                        NetlinkPayload::InnerMessage(m) => on_msg(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// Sends a request and waits for the kernel's acknowledgement.
    pub(crate) fn request(
        &mut self,
        what: &str,
        payload: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), Error> {
        let seq = self.send(what, payload, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        self.receive(what, seq, |_| {})
    }

    /// Sends a request that answers with one message (a `get` without dump).
    pub(crate) fn get(
        &mut self,
        what: &str,
        payload: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        let seq = self.send(what, payload, NLM_F_REQUEST | NLM_F_ACK)?;
        let mut out = Vec::new();
        self.receive(what, seq, |m| out.push(m))?;
        Ok(out)
    }

    /// Dumps a table of objects.
    pub(crate) fn dump(
        &mut self,
        what: &str,
        payload: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        let seq = self.send(what, payload, NLM_F_REQUEST | NLM_F_DUMP)?;
        self.counters.dumps += 1;
        let mut out = Vec::new();
        let result = self.receive(what, seq, |m| out.push(m));
        self.counters.dumped += out.len() as u64;
        result.map(|()| out)
    }
}

fn new_socket() -> Result<Socket, Error> {
    let io = |what: &'static str| {
        move |source| Error::Io {
            what: what.to_owned(),
            source,
        }
    };
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(io("opening an rtnetlink socket"))?;
    socket
        .bind_auto()
        .map_err(io("binding an rtnetlink socket"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(io("connecting an rtnetlink socket"))?;
    let _ = socket.set_ext_ack(true);
    // SOL_NETLINK (270), NETLINK_GET_STRICT_CHK (12): the kernel filters dumps by the fields of
    // the request (see the module documentation). Required (kernel >= 4.20): without it every
    // filtered dump would silently be a full one, and refused requests would go unnoticed.
    socket
        .set_netlink_get_strict_chk(true)
        .map_err(io("enabling NETLINK_GET_STRICT_CHK on an rtnetlink socket"))?;
    Ok(socket)
}
