//! Deleting the connection-tracking entries of an address, as Neutron does when a floating IP
//! goes away (`conntrack -D -d IP` and `conntrack -D -q IP`, OSSN-0020). No maintained Rust
//! crate speaks ctnetlink, so this goes through the project's one process module, inside the
//! namespace.

use std::net::IpAddr;
use std::time::Duration;

use l3agent_process::{find_program, run};

use crate::error::Error;
use crate::netns::Netns;

/// Deletes every entry whose original destination (`-d`) or reply destination (`-q`) is `ip`.
/// Returns how many were deleted. "No entries" is not an error.
pub fn delete_entries(netns: &Netns, ip: IpAddr) -> Result<u64, Error> {
    let conntrack = find_program("conntrack").map_err(|e| Error::Value(e.to_string()))?;
    let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
    let addr = ip.to_string();
    let mut deleted = 0;
    for selector in ["-d", "-q"] {
        let what = format!("conntrack -D {selector} {addr} in {}", netns.label());
        let out = run(
            &conntrack,
            &["-D", "-f", family, selector, &addr],
            None,
            Some(netns.fd()),
            Duration::from_secs(60),
        )
        .map_err(|e| Error::Value(format!("{what}: {e}")))?;
        // conntrack exits 1 when nothing matched, and says how many it deleted on stderr.
        if !matches!(out.code, Some(0) | Some(1)) {
            return Err(Error::Value(format!(
                "{what}: exit {:?}: {}",
                out.code,
                out.stderr.trim()
            )));
        }
        deleted += count(&out.stderr);
    }
    Ok(deleted)
}

/// Parses `... N flow entries have been deleted.`
fn count(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| {
            l.split_once(" flow entries have been deleted")
                .or_else(|| l.split_once(" flow entry has been deleted"))
        })
        .and_then(|(head, _)| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts() {
        assert_eq!(
            super::count("conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.\n"),
            3
        );
        assert_eq!(
            super::count("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n"),
            0
        );
        assert_eq!(super::count("garbage"), 0);
    }
}
