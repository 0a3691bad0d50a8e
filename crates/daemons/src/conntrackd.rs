//! conntrackd.conf of an HA router, as `agent/linux/conntrackd.py:
//! ConntrackdManager.build_config` renders its Jinja `CONFIG_TEMPLATE` (NEUTRON-OPS.md §1.9;
//! `ha_conntrackd_enabled`, #1365438, #2092907).
//!
//! The text is Neutron's: it starts with an empty line and has no trailing newline (Jinja
//! drops the template's last newline).
//!
//! Where we deliberately differ: nothing in the text. Neutron checks the lengths of the
//! derived paths when it builds them; here [`ConntrackdConf::validate`] does. Where the lock
//! file and the control socket are is the caller's ([`ConntrackdFiles`]: Neutron's
//! `$ha_confs/<rid>/conntrackd.{lock,ctl}`, or l3agent's supervisor's
//! `<state_path>/daemons/<rid>.conntrackd.{lock,ctl}`). Writing the file and the pid file is
//! the supervisor's.

use std::net::Ipv4Addr;

use l3agent_types::IfName;

use crate::{invalid, ConfPath, Error};

/// `conntrackd.py: UNIX_PATH_MAX`: conntrackd's limit for its control socket path.
pub const UNIX_PATH_MAX: usize = 107;

/// conntrackd's limit for its other paths (`get_full_config_file_path(maxlen=255)`).
pub const PATH_MAX: usize = 255;

/// The `[DEFAULT] ha_conntrackd_*` options (`conf/agent/l3/ha.py`); [`Default`] is Neutron's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackdOptions {
    /// `ha_conntrackd_hashsize`: `HashSize` (32768).
    pub hashsize: u32,
    /// `ha_conntrackd_hashlimit`: `HashLimit` (131072).
    pub hashlimit: u32,
    /// `ha_conntrackd_unix_backlog`: `UNIX { Backlog }` (20).
    pub unix_backlog: u32,
    /// `ha_conntrackd_socketbuffersize`: `SocketBufferSize` (262142).
    pub socketbuffersize: u32,
    /// `ha_conntrackd_socketbuffersize_max_grown`: `SocketBufferSizeMaxGrown` (655355).
    pub socketbuffersize_max_grown: u32,
    /// `ha_conntrackd_ipv4_mcast_addr`: the sync messages' destination (225.0.0.50).
    pub ipv4_mcast_addr: Ipv4Addr,
    /// `ha_conntrackd_group`: the multicast base port; the VRID is added (3780).
    pub group: u16,
    /// `ha_conntrackd_sndsocketbuffer`: `SndSocketBuffer` (24985600).
    pub sndsocketbuffer: u32,
    /// `ha_conntrackd_rcvsocketbuffer`: `RcvSocketBuffer` (24985600).
    pub rcvsocketbuffer: u32,
}

/// Neutron's defaults.
impl Default for ConntrackdOptions {
    fn default() -> Self {
        ConntrackdOptions {
            hashsize: 32768,
            hashlimit: 131072,
            unix_backlog: 20,
            socketbuffersize: 262142,
            socketbuffersize_max_grown: 655355,
            ipv4_mcast_addr: Ipv4Addr::new(225, 0, 0, 50),
            group: 3780,
            sndsocketbuffer: 24985600,
            rcvsocketbuffer: 24985600,
        }
    }
}

/// Where conntrackd keeps its lock file and its control socket: the two paths its config
/// names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackdFiles {
    /// `LockFile`.
    pub lockfile: ConfPath,
    /// `UNIX { Path }`: the control socket that `conntrackd -C <conf> -c|-f|-R|-B|-t|-n|-s|-k`
    /// talks to, at most [`UNIX_PATH_MAX`] characters.
    pub ctl: ConfPath,
}

impl ConntrackdFiles {
    /// Neutron's layout in the router's `$ha_confs/<rid>` (`get_conf_dir`):
    /// `get_lockfile_path` and `get_ctlfile_path`, `<conf_dir>/conntrackd.{lock,ctl}`.
    pub fn in_conf_dir(conf_dir: &ConfPath) -> ConntrackdFiles {
        ConntrackdFiles {
            lockfile: ConfPath(conf_dir.joined("conntrackd.lock")),
            ctl: ConfPath(conf_dir.joined("conntrackd.ctl")),
        }
    }
}

/// One router's conntrackd configuration (`ConntrackdManager`'s arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackdConf {
    /// Where the lock and the control socket go.
    pub files: ConntrackdFiles,
    /// The `ha_conntrackd_*` options.
    pub options: ConntrackdOptions,
    /// The HA port's first fixed IP (`_get_conntrackd_ipv4_interface`): the multicast
    /// interface address, and ignored by the kernel filter.
    pub ha_ip: Ipv4Addr,
    /// `ha_vr_id`, added to the multicast group port.
    pub vrid: u8,
    /// The ha- device.
    pub ha_dev: IfName,
}

impl ConntrackdConf {
    /// The bounds Neutron enforces: the control socket path at most [`UNIX_PATH_MAX`]
    /// characters and the lock file at most [`PATH_MAX`] (`get_full_config_file_path`; the
    /// error names `ha_confs_path`), the counts at least 1 (`min=1`), and the group port
    /// plus the VRID a UDP port (`ha_conntrackd_group`).
    pub fn validate(&self) -> Result<(), Error> {
        for (path, max) in [
            (&self.files.lockfile, PATH_MAX),
            (&self.files.ctl, UNIX_PATH_MAX),
        ] {
            if path.as_str().len() > max {
                return Err(invalid(
                    "ha_confs_path",
                    path,
                    format!("conntrackd takes paths of at most {max} characters here"),
                ));
            }
        }
        let o = &self.options;
        for (field, value) in [
            ("ha_conntrackd_hashsize", o.hashsize),
            ("ha_conntrackd_hashlimit", o.hashlimit),
            ("ha_conntrackd_unix_backlog", o.unix_backlog),
            ("ha_conntrackd_socketbuffersize", o.socketbuffersize),
            (
                "ha_conntrackd_socketbuffersize_max_grown",
                o.socketbuffersize_max_grown,
            ),
            ("ha_conntrackd_sndsocketbuffer", o.sndsocketbuffer),
            ("ha_conntrackd_rcvsocketbuffer", o.rcvsocketbuffer),
        ] {
            if value == 0 {
                return Err(invalid(field, value, "must be at least 1"));
            }
        }
        if self.mcast_group() > u32::from(u16::MAX) {
            return Err(invalid(
                "ha_conntrackd_group",
                o.group,
                format!(
                    "plus the VRID ({}) must be a UDP port (at most 65535)",
                    self.vrid
                ),
            ));
        }
        Ok(())
    }

    /// `Group`: `ha_conntrackd_group` + `ha_vr_id`.
    fn mcast_group(&self) -> u32 {
        u32::from(self.options.group) + u32::from(self.vrid)
    }
}

/// Renders conntrackd.conf as `ConntrackdManager.build_config` does: FTFW sync over IPv4
/// multicast on the ha- device, accepting TCP, SCTP, DCCP, UDP, ICMP and IPv6-ICMP, and
/// ignoring loopback and the HA port's own address.
pub fn render(conf: &ConntrackdConf) -> String {
    let o = &conf.options;
    format!(
        "
General {{
    HashSize {hashsize}
    HashLimit {hashlimit}
    Syslog on
    LockFile {lockfile}
    UNIX {{
        Path {ctl}
        Backlog {backlog}
    }}
    SocketBufferSize {sbs}
    SocketBufferSizeMaxGrown {sbs_max}
    Filter From Kernelspace {{
        Protocol Accept {{
            TCP
            SCTP
            DCCP
            UDP
            ICMP
            IPv6-ICMP
        }}
        Address Ignore {{
            IPv4_address 127.0.0.1
            IPv6_address ::1
            IPv4_address {ha_ip}
        }}
    }}
}}
Sync {{
    Mode FTFW {{
    }}
    Multicast Default {{
        IPv4_address {mcast}
        IPv4_interface {ha_ip}
        Group {group}
        Interface {dev}
        SndSocketBuffer {snd}
        RcvSocketBuffer {rcv}
        Checksum on
    }}
}}",
        hashsize = o.hashsize,
        hashlimit = o.hashlimit,
        lockfile = conf.files.lockfile,
        ctl = conf.files.ctl,
        backlog = o.unix_backlog,
        sbs = o.socketbuffersize,
        sbs_max = o.socketbuffersize_max_grown,
        ha_ip = conf.ha_ip,
        mcast = o.ipv4_mcast_addr,
        group = conf.mcast_group(),
        dev = conf.ha_dev,
        snd = o.sndsocketbuffer,
        rcv = o.rcvsocketbuffer,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> ConntrackdConf {
        ConntrackdConf {
            files: ConntrackdFiles::in_conf_dir(
                &ConfPath::new("ha_confs", "/var/lib/neutron/ha_confs/r1").unwrap(),
            ),
            options: ConntrackdOptions::default(),
            ha_ip: Ipv4Addr::new(169, 254, 192, 5),
            vrid: 7,
            ha_dev: IfName::new("dev", "ha-1111aaaa-bb").unwrap(),
        }
    }

    /// NEUTRON-OPS.md §1.9 with the defaults, `$ha_confs/<rid>` = `/var/lib/neutron/ha_confs/r1`.
    #[test]
    fn the_defaults_render_as_the_neutron_sample() {
        let expected = "
General {
    HashSize 32768
    HashLimit 131072
    Syslog on
    LockFile /var/lib/neutron/ha_confs/r1/conntrackd.lock
    UNIX {
        Path /var/lib/neutron/ha_confs/r1/conntrackd.ctl
        Backlog 20
    }
    SocketBufferSize 262142
    SocketBufferSizeMaxGrown 655355
    Filter From Kernelspace {
        Protocol Accept {
            TCP
            SCTP
            DCCP
            UDP
            ICMP
            IPv6-ICMP
        }
        Address Ignore {
            IPv4_address 127.0.0.1
            IPv6_address ::1
            IPv4_address 169.254.192.5
        }
    }
}
Sync {
    Mode FTFW {
    }
    Multicast Default {
        IPv4_address 225.0.0.50
        IPv4_interface 169.254.192.5
        Group 3787
        Interface ha-1111aaaa-bb
        SndSocketBuffer 24985600
        RcvSocketBuffer 24985600
        Checksum on
    }
}";
        assert_eq!(render(&conf()), expected);
    }

    #[test]
    fn paths_and_bounds_are_neutrons() {
        let c = conf();
        assert_eq!(
            c.files.lockfile.as_str(),
            "/var/lib/neutron/ha_confs/r1/conntrackd.lock"
        );
        assert_eq!(
            c.files.ctl.as_str(),
            "/var/lib/neutron/ha_confs/r1/conntrackd.ctl"
        );
        assert_eq!(c.validate(), Ok(()));
        // 107 - "/conntrackd.ctl".len() = 92 characters of directory fit, 93 do not.
        let dir = |n: usize| ConfPath::new("d", format!("/{}", "a".repeat(n - 1))).unwrap();
        let fits = ConntrackdConf {
            files: ConntrackdFiles::in_conf_dir(&dir(92)),
            ..conf()
        };
        assert_eq!(fits.files.ctl.as_str().len(), 107);
        assert_eq!(fits.validate(), Ok(()));
        let long = ConntrackdConf {
            files: ConntrackdFiles::in_conf_dir(&dir(93)),
            ..conf()
        };
        assert!(
            matches!(long.validate(), Err(Error::Invalid { field, .. }) if field == "ha_confs_path")
        );
        let mut zero = conf();
        zero.options.hashlimit = 0;
        assert!(
            matches!(zero.validate(), Err(Error::Invalid { field, .. }) if field == "ha_conntrackd_hashlimit")
        );
        let mut high = conf();
        high.options.group = 65530;
        assert!(
            matches!(high.validate(), Err(Error::Invalid { field, .. }) if field == "ha_conntrackd_group")
        );
    }
}
