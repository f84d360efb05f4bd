//! A network namespace for one server process, so that a test can cut it
//! off from the Cassandra cluster while its devices still reach it: the
//! partition of ARCHITECTURE.md's fencing invariant, made with the
//! kernel's own links rather than a proxy the driver could route around.
//! Needs root (and `ip` from iproute2).
//!
//! Two veth pairs join the namespace to this one:
//! - the **cluster link** carries 127.0.0.0/8, where the Cassandra nodes
//!   listen: the namespace's loopback stays down, and both ends set
//!   `route_localnet`, which lets the kernel route loopback addresses
//!   over a real link;
//! - the **device link** carries the server's QUIC and HTTP ports, at
//!   [`NetNs::device_ip`].
//!
//! [`NetNs::cut`] takes the cluster link's outer end down: the inner end
//! loses its carrier and drops what it sends, silently, as a partition
//! does (no reset, no unreachable error). [`NetNs::heal`] brings it back,
//! and TCP connections that were stalled go on.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::ensure;

/// Runs `ip` with `args`; its error output in the error.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A namespace with its two links; deleted (links and all) when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    /// The third octet of both links' /30 subnets.
    subnet: u8,
}

impl NetNs {
    /// Creates the namespace `ts<pid>` and its links. Fails without root.
    pub fn new() -> anyhow::Result<Self> {
        let pid = std::process::id();
        // Interface names are at most 15 bytes: `ts<pid>c0` fits.
        let ns = NetNs {
            name: format!("ts{pid}"),
            subnet: (pid % 250) as u8 + 1,
        };
        let _ = ip(&["netns", "del", &ns.name]);
        ip(&["netns", "add", &ns.name])?;
        ns.link("c", 231)?;
        ns.link("d", 232)?;
        // Loopback addresses over the cluster link, both ways.
        ns.sysctl_outside(&ns.iface("c0"), "route_localnet", "1")?;
        for iface in [ns.iface("c1"), "all".to_string()] {
            let path = format!("/proc/sys/net/ipv4/conf/{iface}/route_localnet");
            ns.exec(&["sh", "-c", &format!("echo 1 > {path}")])?;
        }
        let via = Ipv4Addr::new(10, 231, ns.subnet, 1).to_string();
        let src = Ipv4Addr::new(10, 231, ns.subnet, 2).to_string();
        ip(&[
            "-n",
            &ns.name,
            "route",
            "add",
            "127.0.0.0/8",
            "via",
            &via,
            "dev",
            &ns.iface("c1"),
            "src",
            &src,
        ])?;
        Ok(ns)
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address a server in the namespace listens on for devices.
    pub fn device_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 232, self.subnet, 2)
    }

    /// Cuts the namespace off from the cluster (module docs).
    pub fn cut(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.iface("c0"), "down"])
    }

    /// Joins it to the cluster again.
    pub fn heal(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.iface("c0"), "up"])
    }

    fn iface(&self, end: &str) -> String {
        format!("{}{end}", self.name)
    }

    /// A veth pair `<name><kind>0` (here, `10.<octet>.<subnet>.1/30`) and
    /// `<name><kind>1` (in the namespace, `.2`), both up.
    fn link(&self, kind: &str, octet: u8) -> anyhow::Result<()> {
        let (outer, inner) = (
            self.iface(&format!("{kind}0")),
            self.iface(&format!("{kind}1")),
        );
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &self.name,
        ])?;
        let net = |host: u8| format!("{}/30", Ipv4Addr::new(10, octet, self.subnet, host));
        ip(&["addr", "add", &net(1), "dev", &outer])?;
        ip(&["link", "set", &outer, "up"])?;
        ip(&["-n", &self.name, "addr", "add", &net(2), "dev", &inner])?;
        ip(&["-n", &self.name, "link", "set", &inner, "up"])
    }

    fn sysctl_outside(&self, iface: &str, key: &str, value: &str) -> anyhow::Result<()> {
        let path = format!("/proc/sys/net/ipv4/conf/{iface}/{key}");
        std::fs::write(&path, value).map_err(|e| anyhow::anyhow!("writing {path}: {e}"))
    }

    fn exec(&self, cmd: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(cmd);
        ip(&args)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // The pairs' outer ends go with their inner ends.
        let _ = ip(&["netns", "del", &self.name]);
    }
}
