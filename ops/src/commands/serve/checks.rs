//! What `serve` checks before it places anything, shared with
//! `check-config`: the settings alone (`Args::problems`, which
//! `config::load` runs for both), then the machine (`endpoints`: names
//! resolved; `environment_problems`: the files named exist, the ports are
//! free). Each returns every problem it finds, each naming its key.

use std::net::{SocketAddr, ToSocketAddrs};

use tillstream_engine::StoreChoice;

use super::Args;
use crate::config_file::Problem;

/// Where serve listens: its addresses with host names resolved, and
/// what to say about each name resolved.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    /// QUIC (UDP).
    pub(crate) listen: SocketAddr,
    /// The HTTP API, unless off.
    pub(crate) http: Option<SocketAddr>,
    /// "--listen localhost:7400 resolved to 127.0.0.1:7400", for each name.
    pub(crate) resolved: Vec<String>,
}

/// An address as written: an IP address and port, or a host name and port.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    Ip(SocketAddr),
    Name(String, u16),
}

/// Reads `HOST:PORT` (`127.0.0.1:7400`, `[::1]:7400`, `localhost:7400`)
/// without resolving it.
fn address(s: &str) -> Result<Address, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(Address::Ip(a));
    }
    let like = "an address like 127.0.0.1:7400, [::1]:7400 or localhost:7400";
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} has no port: {like}"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?}: the port {port:?} is not a number up to 65535"))?;
    let name_like = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    if host.contains(':') {
        return Err(format!(
            "{s:?}: an IPv6 address goes in brackets, [::1]:{port}"
        ));
    }
    if host.is_empty() || !host.chars().all(name_like) {
        return Err(format!("{s:?} is not {like}"));
    }
    Ok(Address::Name(host.to_string(), port))
}

/// `--http`'s value: an address, or off.
fn http_address(s: &str) -> Result<Option<Address>, String> {
    match s {
        "off" | "none" | "" => Ok(None),
        a => address(a).map(Some),
    }
}

/// `address` as one socket address: a name's first IPv4 address (devices
/// and tools given a literal address mostly give IPv4, and `localhost`
/// lists `::1` first on many systems), else its first; and, for a name,
/// the line that says so.
fn resolve(flag: &str, written: &str, a: Address) -> Result<(SocketAddr, Option<String>), String> {
    let (host, port) = match a {
        Address::Ip(a) => return Ok((a, None)),
        Address::Name(host, port) => (host, port),
    };
    let all: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("{written:?}: cannot resolve {host}: {e}"))?
        .collect();
    let Some(chosen) = all.iter().find(|a| a.is_ipv4()).or(all.first()).copied() else {
        return Err(format!("{written:?}: {host} resolves to no address"));
    };
    let others: Vec<String> = all
        .iter()
        .filter(|a| **a != chosen)
        .map(ToString::to_string)
        .collect();
    let also = if others.is_empty() {
        String::new()
    } else {
        format!(
            " (not to {}: one address is listened on)",
            others.join(", ")
        )
    };
    Ok((
        chosen,
        Some(format!("{flag} {written} resolved to {chosen}{also}")),
    ))
}

impl Args {
    /// What keeps these settings from serving, whatever the machine: the
    /// values that fit no form (addresses, auth modes, the store's
    /// settings) and the ones that do not fit together. Values clap
    /// checks one by one (ranges, numbers) are checked before this, by
    /// the same parse for serve and check-config.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Err(why) = address(&self.listen) {
            out.push(Problem::of("listen", why));
        }
        if let Err(why) = http_address(&self.http) {
            out.push(Problem::of("http", why));
        }
        if let Err(e) = self.auth.config() {
            out.push(Problem::of("auth", format!("{e:#}")));
        }
        match self.store.writer(&self.writer) {
            Err(e) => out.push(Problem::of("store", format!("{e:#}"))),
            Ok(StoreChoice::Scylla(_)) if self.journal_dir.is_some() => out.push(Problem::of(
                "journal-dir",
                "for the embedded store: with --store scylla the journal is in the cluster",
            )),
            Ok(_) => {}
        }
        out
    }

    /// The addresses serve would listen on, names resolved. (Settings
    /// that passed `problems`; a name that no longer resolves is a
    /// problem of the machine.)
    pub(crate) fn endpoints(&self) -> Result<Endpoints, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut resolved = Vec::new();
        let mut take = |key: &str, written: &str, a: Result<Address, String>| match a
            .and_then(|a| resolve(&format!("--{key}"), written, a))
        {
            Ok((at, said)) => {
                resolved.extend(said);
                Some(at)
            }
            Err(why) => {
                problems.push(Problem::of(key, why));
                None
            }
        };
        let listen = take("listen", &self.listen, address(&self.listen));
        let http = match http_address(&self.http) {
            Ok(None) => Some(None),
            Ok(Some(a)) => take("http", &self.http, Ok(a)).map(Some),
            Err(why) => take("http", &self.http, Err(why)).map(Some),
        };
        match (listen, http) {
            (Some(listen), Some(http)) if problems.is_empty() => Ok(Endpoints {
                listen,
                http,
                resolved,
            }),
            _ => Err(problems),
        }
    }

    /// What the machine must allow for serve to start: the files named
    /// exist and the ports are free. Serve checks this before it makes
    /// its data directory, keys or certificate, so a start that cannot
    /// listen leaves nothing behind. (A port checked free may be taken
    /// before the server binds it; that start fails as before, later.)
    pub(crate) fn environment_problems(&self, at: &Endpoints) -> Vec<Problem> {
        let mut out = Vec::new();
        for (key, file) in [("tls-cert", &self.tls_cert), ("tls-key", &self.tls_key)] {
            if let Some(f) = file
                && !f.is_file()
            {
                out.push(Problem::of(key, format!("no file {}", f.display())));
            }
        }
        if let Err(e) = std::net::UdpSocket::bind(at.listen) {
            out.push(Problem::of(
                "listen",
                format!("cannot listen on UDP {} (--listen): {e}", at.listen),
            ));
        }
        if let Some(http) = at.http
            && let Err(e) = std::net::TcpListener::bind(http)
        {
            out.push(Problem::of(
                "http",
                format!("cannot listen on TCP {http} (--http): {e}"),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_ips_or_host_names_with_a_port() {
        let ip = |s: &str| {
            s.parse::<SocketAddr>()
                .map(Address::Ip)
                .map_err(|e| e.to_string())
        };
        assert_eq!(address("127.0.0.1:7400"), ip("127.0.0.1:7400"));
        assert_eq!(address("[::1]:7400"), ip("[::1]:7400"));
        assert_eq!(
            address("localhost:7400"),
            Ok(Address::Name("localhost".into(), 7400))
        );
        assert_eq!(
            address("ingest.example.com:0"),
            Ok(Address::Name("ingest.example.com".into(), 0))
        );
        for (bad, says) in [
            ("localhost", "no port"),
            ("localhost:http", "not a number"),
            ("localhost:70000", "not a number"),
            ("::1:7400", "brackets"),
            (":7400", "not an address"),
            ("a b:7400", "not an address"),
        ] {
            let e = address(bad).err().unwrap_or_default();
            assert!(e.contains(says), "{bad}: {e:?}");
        }
        assert_eq!(http_address("off"), Ok(None));
    }

    #[test]
    fn a_name_resolves_to_one_address_and_says_so() -> Result<(), String> {
        let (at, said) = resolve("--listen", "localhost:0", address("localhost:0")?)?;
        assert!(at.ip().is_loopback(), "{at}");
        let said = said.unwrap_or_default();
        assert!(
            said.starts_with("--listen localhost:0 resolved to "),
            "{said}"
        );
        let (at, said) = resolve("--listen", "127.0.0.1:9", address("127.0.0.1:9")?)?;
        assert_eq!((at.port(), said), (9, None));
        Ok(())
    }
}
