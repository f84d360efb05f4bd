//! Where a device dials next, among the nodes of one cluster: its seeds
//! (the addresses it was configured with) and the owner of its store that
//! a `Redirect` names. Plain bookkeeping without I/O, so that the rules
//! ([`Dialer`]) are tested on their own; the session (`session`) resolves
//! a `Redirect`'s owner and tells the dialer how each attempt ended.

use std::net::SocketAddr;

/// Most `Redirect`s a device follows in a row, without a `Welcome` or a
/// backoff between them; the next one sends it to its next seed after a
/// backoff. Two nodes that disagree on who owns a store would otherwise
/// bounce a device between them as fast as it can dial.
pub const MAX_REDIRECTS: u32 = 4;

/// What a device does before its next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextAttempt {
    /// Dial [`Dialer::target`] at once (a `Redirect` being followed).
    Now,
    /// Back off (the device's [`Backoff`](crate::Backoff)), then dial
    /// [`Dialer::target`].
    Backoff,
}

/// The address a device dials next, among its seeds
/// ([`ClientConfig::server`](crate::ClientConfig::server) and
/// [`ClientConfig::seeds`](crate::ClientConfig::seeds)) and the owners
/// `Redirect`s name:
/// - a device starts at seed `device % n`, which spreads a fleet over the
///   seeds;
/// - a `Redirect` naming an owner is followed at once, without a backoff,
///   at most [`MAX_REDIRECTS`] times in a row; past that, or when the
///   owner is empty (no live node holds the store yet) or unusable, the
///   device backs off and goes to the next seed;
/// - a connection that fails (refused, handshake or idle timeout: the node
///   may be dead), a `not_owner`, `draining` or `store_unavailable`
///   refusal, or a close with one of those codes moves the device to the
///   next seed, after a backoff;
/// - `busy` and a plain disconnect keep it where it was, after a backoff:
///   after a `Welcome`, that is the owner it was welcomed by;
/// - a backoff starts a new round of redirects, and so does a `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialer {
    /// The seeds, without duplicates, in the configured order; never empty.
    seeds: Vec<SocketAddr>,
    /// The seed the device last went to.
    seed: usize,
    /// Where it dials next.
    target: SocketAddr,
    /// `Redirect`s followed since the last `Welcome` or backoff.
    redirects: u32,
}

impl Dialer {
    /// A device's dialer over the seeds `first` and `more` (duplicates are
    /// dropped), starting at seed `device % n`.
    pub fn new(first: SocketAddr, more: &[SocketAddr], device: u64) -> Self {
        let mut seeds = vec![first];
        for &s in more {
            if !seeds.contains(&s) {
                seeds.push(s);
            }
        }
        let n = seeds.len() as u64;
        // Below `n`, so it fits a usize.
        let seed = usize::try_from(device % n).unwrap_or(0);
        Self {
            target: seeds[seed],
            seeds,
            seed,
            redirects: 0,
        }
    }

    /// Where the next attempt goes.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The seeds, without duplicates, in the configured order.
    pub fn seeds(&self) -> &[SocketAddr] {
        &self.seeds
    }

    /// `Redirect`s followed since the last `Welcome` or backoff.
    pub fn redirects_in_row(&self) -> u32 {
        self.redirects
    }

    /// The target welcomed the device: it serves the device's store, and
    /// is where the device reconnects first after a plain disconnect.
    pub fn on_welcome(&mut self) {
        self.redirects = 0;
    }

    /// The node answered with a `Redirect` to `owner` (`None`: empty, or
    /// not an address the device could resolve). The device follows it at
    /// once, unless it already followed [`MAX_REDIRECTS`] in a row or
    /// there is no owner: then it backs off and goes to its next seed.
    pub fn on_redirect(&mut self, owner: Option<SocketAddr>) -> NextAttempt {
        match owner {
            Some(owner) if self.redirects < MAX_REDIRECTS => {
                self.redirects += 1;
                self.target = owner;
                NextAttempt::Now
            }
            _ => self.on_failure(),
        }
    }

    /// The attempt failed in a way that says the target may not serve the
    /// device (no connection, a handshake or idle timeout, `not_owner`):
    /// next seed, after a backoff.
    pub fn on_failure(&mut self) -> NextAttempt {
        self.seed = (self.seed + 1) % self.seeds.len();
        self.target = self.seeds[self.seed];
        self.redirects = 0;
        NextAttempt::Backoff
    }

    /// The session ended in a way that says nothing against the target (a
    /// plain disconnect, a retryable refusal such as busy or draining):
    /// same address, after a backoff.
    pub fn on_lost(&mut self) -> NextAttempt {
        self.redirects = 0;
        NextAttempt::Backoff
    }
}

/// The address a `Redirect`'s owner names, looked up if it is a DNS
/// name (the first address of the endpoint's family it resolves to, or
/// else the first); `None` when it is empty, not `host:port`, or does
/// not resolve within the connect timeout.
pub(crate) async fn resolve_owner(
    endpoint: &quinn::Endpoint,
    connect_timeout: std::time::Duration,
    owner: &str,
) -> Option<SocketAddr> {
    let name = match parse_owner(owner) {
        Some(Owner::Addr(a)) => return Some(a),
        Some(Owner::Name(n)) => n,
        None => {
            if !owner.trim().is_empty() {
                tracing::warn!(
                    owner = shorten(owner, 128),
                    "a Redirect's owner is not host:port; taken as empty"
                );
            }
            return None;
        }
    };
    let found = tokio::time::timeout(connect_timeout, tokio::net::lookup_host(name.as_str())).await;
    let addrs: Vec<SocketAddr> = match found {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            tracing::warn!(owner = %name, error = %e, "cannot resolve a Redirect's owner");
            return None;
        }
        Err(_) => {
            tracing::warn!(owner = %name, "no answer in time resolving a Redirect's owner");
            return None;
        }
    };
    let v6 = endpoint.local_addr().ok().map(|a| a.is_ipv6());
    addrs
        .iter()
        .find(|a| Some(a.is_ipv6()) == v6)
        .or(addrs.first())
        .copied()
}

/// A `Redirect`'s owner, checked before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// An address literal.
    Addr(SocketAddr),
    /// `host:port` with a DNS name, to resolve.
    Name(String),
}

/// The longest `host:port` an owner may be: a DNS name of 253 bytes, a
/// colon and a port.
const MAX_OWNER_LEN: usize = 253 + 6;

/// Reads a `Redirect`'s owner: `None` when it is empty or not `host:port`
/// (the device then treats it as empty). Never panics, whatever the bytes.
pub(crate) fn parse_owner(owner: &str) -> Option<Owner> {
    let owner = owner.trim();
    if owner.is_empty() || owner.len() > MAX_OWNER_LEN {
        return None;
    }
    if let Ok(addr) = owner.parse::<SocketAddr>() {
        let usable = addr.port() != 0 && !addr.ip().is_unspecified();
        return usable.then_some(Owner::Addr(addr));
    }
    let (host, port) = owner.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let name = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    (port != 0 && name).then(|| Owner::Name(owner.to_owned()))
}

/// At most `max` characters of untrusted text, for a log line.
pub(crate) fn shorten(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        ([10, 0, 0, last], 7400).into()
    }

    fn seeds() -> Vec<SocketAddr> {
        vec![addr(1), addr(2), addr(3)]
    }

    #[test]
    fn a_fleet_starts_spread_over_the_seeds_and_rotates() {
        let s = seeds();
        let starts: Vec<SocketAddr> = (0..6)
            .map(|device| Dialer::new(s[0], &s[1..], device).target())
            .collect();
        assert_eq!(starts, [s[0], s[1], s[2], s[0], s[1], s[2]]);
        let mut d = Dialer::new(s[0], &s[1..], 4);
        assert_eq!(d.target(), s[1]);
        let mut visited = Vec::new();
        for _ in 0..4 {
            assert_eq!(d.on_failure(), NextAttempt::Backoff);
            visited.push(d.target());
        }
        assert_eq!(
            visited,
            [s[2], s[0], s[1], s[2]],
            "next seed, round and round"
        );
    }

    #[test]
    fn one_seed_or_duplicates() {
        let mut d = Dialer::new(addr(1), &[], u64::MAX);
        assert_eq!(d.target(), addr(1));
        assert_eq!(d.on_failure(), NextAttempt::Backoff);
        assert_eq!(d.target(), addr(1), "a lone seed is always the next one");
        let d = Dialer::new(addr(1), &[addr(1), addr(2), addr(2)], 0);
        assert_eq!(d.seeds(), [addr(1), addr(2)]);
    }

    #[test]
    fn a_redirect_is_followed_at_once_up_to_the_bound() {
        let s = seeds();
        let mut d = Dialer::new(s[0], &s[1..], 0);
        for i in 1..=MAX_REDIRECTS {
            let owner = addr(100 + i as u8);
            assert_eq!(d.on_redirect(Some(owner)), NextAttempt::Now);
            assert_eq!(d.target(), owner);
            assert_eq!(d.redirects_in_row(), i);
        }
        // One more in a row: back off and go to the next seed.
        assert_eq!(d.on_redirect(Some(addr(200))), NextAttempt::Backoff);
        assert_eq!(d.target(), s[1]);
        assert_eq!(d.redirects_in_row(), 0, "the backoff starts a new round");
        assert_eq!(d.on_redirect(Some(addr(200))), NextAttempt::Now);
        assert_eq!(d.target(), addr(200));
    }

    #[test]
    fn an_empty_owner_backs_off_to_the_next_seed() {
        let s = seeds();
        let mut d = Dialer::new(s[0], &s[1..], 2);
        assert_eq!(d.target(), s[2]);
        assert_eq!(d.on_redirect(None), NextAttempt::Backoff);
        assert_eq!(d.target(), s[0]);
        // Also in the middle of a chain of redirects.
        assert_eq!(d.on_redirect(Some(addr(9))), NextAttempt::Now);
        assert_eq!(d.on_redirect(None), NextAttempt::Backoff);
        assert_eq!(d.target(), s[1], "the seed after the last seed gone to");
        assert_eq!(d.redirects_in_row(), 0);
    }

    #[test]
    fn a_welcome_resets_the_count_and_keeps_the_owner() {
        let s = seeds();
        let mut d = Dialer::new(s[0], &s[1..], 0);
        for _ in 0..MAX_REDIRECTS {
            assert_eq!(d.on_redirect(Some(addr(9))), NextAttempt::Now);
        }
        d.on_welcome();
        assert_eq!(d.redirects_in_row(), 0);
        // A plain disconnect: back to the owner that welcomed it.
        assert_eq!(d.on_lost(), NextAttempt::Backoff);
        assert_eq!(d.target(), addr(9));
        // The owner moved on: followed again, a full round of them.
        for _ in 0..MAX_REDIRECTS {
            assert_eq!(d.on_redirect(Some(addr(8))), NextAttempt::Now);
        }
        assert_eq!(d.target(), addr(8));
        // The owner is gone: the next seed.
        d.on_welcome();
        assert_eq!(d.on_failure(), NextAttempt::Backoff);
        assert_eq!(d.target(), s[1]);
    }

    #[test]
    fn owners_are_checked_before_a_lookup() {
        assert_eq!(parse_owner(""), None);
        assert_eq!(parse_owner("   "), None);
        assert_eq!(
            parse_owner("10.0.0.2:7400"),
            Some(Owner::Addr(addr(2))),
            "a literal needs no lookup"
        );
        assert_eq!(
            parse_owner("[::1]:7400"),
            Some(Owner::Addr("[::1]:7400".parse().unwrap()))
        );
        assert_eq!(
            parse_owner("tillstream-1.tillstream.retail.svc.cluster.local:7400"),
            Some(Owner::Name(
                "tillstream-1.tillstream.retail.svc.cluster.local:7400".into()
            ))
        );
        for bad in [
            "10.0.0.2",
            "10.0.0.2:0",
            "0.0.0.0:7400",
            "host",
            "host:",
            ":7400",
            "host:70000",
            "host:-1",
            "ho st:7400",
            "host:7400\n:1",
            "::1:7400",
            "héllo:7400",
            "\u{0}:1",
        ] {
            assert_eq!(parse_owner(bad), None, "{bad:?}");
        }
        assert_eq!(parse_owner(&format!("{}:7400", "a".repeat(254))), None);
        assert!(parse_owner(&format!("{}:7400", "a".repeat(253))).is_some());
    }

    #[test]
    fn shorten_cuts_at_characters() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdef", 3), "abc");
        assert_eq!(shorten("ééé", 2), "éé");
    }
}
