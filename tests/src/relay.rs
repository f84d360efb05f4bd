//! A lossy UDP relay for the bad-network tests (fault 5 of issue 3): this
//! machine's kernel has no netem, so the faults are made in user space,
//! between the devices and the server.
//!
//! Every datagram, in either direction, meets one fate decided when it
//! arrives: lost (probability `loss`), or delivered after a delay drawn
//! uniformly from `delay ± jitter`. A jitter wider than the spacing of the
//! packets delivers them out of order, which is the reordering QUIC must
//! survive. During the partition window everything is dropped, both what
//! arrives and what was queued and falls due, as on a link that went down
//! with packets on it. After `faults_for` the link is clean: no loss, no
//! delay. The schedule is relative to the relay's start, so a test that
//! started it knows the phases (they are also announced, see
//! [`Relay::run`]).
//!
//! Each client source address gets its own upstream socket, so the server
//! sees as many peers as the relay has clients and can answer each.
//!
//! One task owns the decisions and one delay queue (a heap keyed by due
//! time), so a busy relay costs one heap entry per packet, not a task per
//! packet, and one seeded generator gives the fates.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams read but not yet decided on; a full channel stops the
/// readers, and the kernel then drops, which only adds loss.
const INBOUND_CHANNEL: usize = 16_384;
/// How often idle flows are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The faults and their schedule, relative to the relay's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Probability that a datagram is dropped, 0 to 1.
    pub loss: f64,
    /// Mean one-way delay.
    pub delay: Duration,
    /// Half-width of the uniform delay spread.
    pub jitter: Duration,
    /// Start of the full partition, if any.
    pub partition_after: Option<Duration>,
    /// Length of the partition.
    pub partition_for: Duration,
    /// End of loss and delay (the partition is scheduled on its own); None
    /// for faults until the end.
    pub faults_for: Option<Duration>,
}

impl Default for Faults {
    /// 5% loss, 100 ± 50 ms, no partition, faults forever.
    fn default() -> Self {
        Self {
            loss: 0.05,
            delay: Duration::from_millis(100),
            jitter: Duration::from_millis(50),
            partition_after: None,
            partition_for: Duration::from_secs(30),
            faults_for: None,
        }
    }
}

/// What the link does at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Loss and delay.
    Lossy,
    /// Nothing gets through.
    Partitioned,
    /// Everything gets through at once.
    Clean,
}

impl Phase {
    /// The name printed in `relay phase` lines.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Lossy => "lossy",
            Phase::Partitioned => "partitioned",
            Phase::Clean => "clean",
        }
    }
}

/// What happens to one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Delivered after this delay.
    Deliver(Duration),
    /// Dropped by the random loss.
    Lost,
    /// Dropped by the partition.
    Partitioned,
}

impl Faults {
    /// The phase `t` after the start.
    pub fn phase(&self, t: Duration) -> Phase {
        if let Some(from) = self.partition_after
            && t >= from
            && t < from + self.partition_for
        {
            return Phase::Partitioned;
        }
        match self.faults_for {
            Some(end) if t >= end => Phase::Clean,
            _ => Phase::Lossy,
        }
    }

    /// The first moment after `t` at which the phase may change.
    pub fn next_change(&self, t: Duration) -> Option<Duration> {
        let part = self
            .partition_after
            .map(|from| [from, from + self.partition_for]);
        part.into_iter()
            .flatten()
            .chain(self.faults_for)
            .filter(|&b| b > t)
            .min()
    }

    /// The fate of a datagram arriving `t` after the start.
    pub fn fate(&self, t: Duration, rng: &mut impl Rng) -> Fate {
        match self.phase(t) {
            Phase::Partitioned => Fate::Partitioned,
            Phase::Clean => Fate::Deliver(Duration::ZERO),
            Phase::Lossy => {
                if self.loss > 0.0 && rng.random_bool(self.loss.min(1.0)) {
                    return Fate::Lost;
                }
                let lo = self.delay.saturating_sub(self.jitter);
                let hi = self.delay + self.jitter;
                if hi <= lo {
                    return Fate::Deliver(lo);
                }
                let us = rng.random_range(micros(lo)..=micros(hi));
                Fate::Deliver(Duration::from_micros(us))
            }
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirStats {
    /// Datagrams read.
    pub received: u64,
    /// Datagrams sent on.
    pub forwarded: u64,
    /// Dropped by the random loss.
    pub lost: u64,
    /// Dropped by the partition (on arrival or when due).
    pub partitioned: u64,
    /// Forwarded after a datagram of the same flow that arrived later.
    pub reordered: u64,
    /// Dropped because the delay queue was full.
    pub overflow: u64,
    /// Dropped because sending failed or the flow was gone.
    pub failed: u64,
}

/// What the relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayStats {
    /// Client to server.
    pub to_server: DirStats,
    /// Server to client.
    pub to_client: DirStats,
    /// Client source addresses seen.
    pub flows: u64,
    /// Datagrams still queued when the relay stopped.
    pub queued: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToServer,
    ToClient,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::ToServer => 0,
            Dir::ToClient => 1,
        }
    }
}

/// A datagram read by one of the reader tasks.
#[derive(Debug)]
struct Inbound {
    dir: Dir,
    client: SocketAddr,
    bytes: Vec<u8>,
}

/// A datagram waiting for its due time; ordered by due time, then arrival,
/// so that equal delays keep their order.
#[derive(Debug)]
struct Queued {
    due: Instant,
    id: u64,
    dir: Dir,
    client: SocketAddr,
    /// Arrival index within its flow and direction, for the reorder count.
    arrival: u64,
    bytes: Vec<u8>,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.id) == (o.due, o.id)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.due, self.id).cmp(&(o.due, o.id))
    }
}

/// One client source address and its upstream socket.
#[derive(Debug)]
struct Flow {
    upstream: Arc<UdpSocket>,
    reader: JoinHandle<()>,
    last_seen: Instant,
    arrivals: [u64; 2],
    delivered: [Option<u64>; 2],
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Where and how to relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The server's UDP address.
    pub server: SocketAddr,
    /// The faults.
    pub faults: Faults,
    /// Seed of the fates.
    pub seed: u64,
    /// Most datagrams held in the delay queue; more are dropped.
    pub max_queued: usize,
    /// A flow that sent nothing for this long is forgotten.
    pub flow_idle: Duration,
}

/// The relay: see the module documentation.
#[derive(Debug)]
pub struct Relay {
    listen: Arc<UdpSocket>,
    cfg: RelayConfig,
    rng: SmallRng,
    start: Instant,
    flows: HashMap<SocketAddr, Flow>,
    queue: BinaryHeap<Reverse<Queued>>,
    next_id: u64,
    stats: RelayStats,
    tx: mpsc::Sender<Inbound>,
    rx: mpsc::Receiver<Inbound>,
}

impl Relay {
    /// A relay on `listen`; its clock (the fault schedule) starts now.
    pub fn new(listen: UdpSocket, cfg: RelayConfig) -> Self {
        let (tx, rx) = mpsc::channel(INBOUND_CHANNEL);
        Self {
            listen: Arc::new(listen),
            rng: SmallRng::seed_from_u64(cfg.seed),
            cfg,
            start: Instant::now(),
            flows: HashMap::new(),
            queue: BinaryHeap::new(),
            next_id: 0,
            stats: RelayStats::default(),
            tx,
            rx,
        }
    }

    /// The address clients should send to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listen.local_addr()
    }

    /// Relays until `stop` completes, calling `on_phase` with each phase
    /// as it begins (the first at once) and its time since the start, and
    /// `on_tick` with the counters every `tick` (if any). Returns the
    /// counters; what is still queued is dropped.
    pub async fn run(
        mut self,
        stop: impl Future<Output = ()>,
        mut on_phase: impl FnMut(Phase, Duration),
        tick: Option<Duration>,
        mut on_tick: impl FnMut(&RelayStats),
    ) -> RelayStats {
        tokio::pin!(stop);
        let client_reader = tokio::spawn(read_clients(self.listen.clone(), self.tx.clone()));
        let mut phase = self.cfg.faults.phase(Duration::ZERO);
        on_phase(phase, Duration::ZERO);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        let mut ticker = tokio::time::interval(tick.unwrap_or(Duration::from_secs(3600)));
        // Both fire at once on creation; the first real tick is later.
        sweep.tick().await;
        ticker.tick().await;
        loop {
            let next_due = self.queue.peek().map(|Reverse(q)| q.due);
            let next_phase = self
                .cfg
                .faults
                .next_change(self.start.elapsed())
                .map(|d| self.start + d);
            tokio::select! {
                biased;
                () = &mut stop => break,
                () = sleep_until(next_phase) => {}
                () = sleep_until(next_due) => self.deliver_due().await,
                Some(m) = self.rx.recv() => self.accept(m),
                _ = sweep.tick() => self.sweep(),
                _ = ticker.tick(), if tick.is_some() => on_tick(&self.stats),
            }
            let now = self.start.elapsed();
            let p = self.cfg.faults.phase(now);
            if p != phase {
                phase = p;
                on_phase(p, now);
            }
        }
        client_reader.abort();
        self.stats.queued = self.queue.len() as u64;
        self.stats
    }

    /// Decides a datagram's fate and queues it if it is to be delivered.
    fn accept(&mut self, m: Inbound) {
        let fate = self.cfg.faults.fate(self.start.elapsed(), &mut self.rng);
        let now = Instant::now();
        let i = m.dir.index();
        let st = dir_stats(&mut self.stats, m.dir);
        st.received += 1;
        if !self.flows.contains_key(&m.client) {
            if m.dir == Dir::ToClient {
                // From a flow forgotten since its reader read it.
                st.failed += 1;
                return;
            }
            match open_flow(self.cfg.server, m.client, self.tx.clone(), now) {
                Ok(flow) => {
                    self.flows.insert(m.client, flow);
                    self.stats.flows += 1;
                }
                Err(e) => {
                    eprintln!("relay: cannot open an upstream socket: {e}");
                    dir_stats(&mut self.stats, m.dir).failed += 1;
                    return;
                }
            }
        }
        let st = dir_stats(&mut self.stats, m.dir);
        let Some(flow) = self.flows.get_mut(&m.client) else {
            return;
        };
        flow.last_seen = now;
        match fate {
            Fate::Lost => st.lost += 1,
            Fate::Partitioned => st.partitioned += 1,
            Fate::Deliver(_) if self.queue.len() >= self.cfg.max_queued => st.overflow += 1,
            Fate::Deliver(delay) => {
                let arrival = flow.arrivals[i];
                flow.arrivals[i] += 1;
                self.next_id += 1;
                self.queue.push(Reverse(Queued {
                    due: now + delay,
                    id: self.next_id,
                    dir: m.dir,
                    client: m.client,
                    arrival,
                    bytes: m.bytes,
                }));
            }
        }
    }

    /// Sends every datagram that is due, unless the link is down now.
    async fn deliver_due(&mut self) {
        let now = Instant::now();
        let partitioned = self.cfg.faults.phase(self.start.elapsed()) == Phase::Partitioned;
        while self.queue.peek().is_some_and(|Reverse(q)| q.due <= now) {
            let Some(Reverse(q)) = self.queue.pop() else {
                break;
            };
            let st = dir_stats(&mut self.stats, q.dir);
            if partitioned {
                st.partitioned += 1;
                continue;
            }
            let Some(flow) = self.flows.get_mut(&q.client) else {
                st.failed += 1;
                continue;
            };
            let i = q.dir.index();
            match flow.delivered[i] {
                Some(high) if q.arrival < high => st.reordered += 1,
                _ => flow.delivered[i] = Some(q.arrival),
            }
            let sent = match q.dir {
                Dir::ToServer => flow.upstream.send(&q.bytes).await,
                Dir::ToClient => self.listen.send_to(&q.bytes, q.client).await,
            };
            match sent {
                Ok(_) => st.forwarded += 1,
                // The peer is gone or not there yet (an ICMP error on a
                // connected socket): a lost datagram, as on a real link.
                Err(_) => st.failed += 1,
            }
        }
    }

    /// Forgets flows idle for longer than `flow_idle`.
    fn sweep(&mut self) {
        let idle = self.cfg.flow_idle;
        self.flows.retain(|_, f| f.last_seen.elapsed() < idle);
    }
}

fn dir_stats(stats: &mut RelayStats, dir: Dir) -> &mut DirStats {
    match dir {
        Dir::ToServer => &mut stats.to_server,
        Dir::ToClient => &mut stats.to_client,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A socket connected to the server for one client, and its reader.
fn open_flow(
    server: SocketAddr,
    client: SocketAddr,
    tx: mpsc::Sender<Inbound>,
    now: Instant,
) -> std::io::Result<Flow> {
    let local = tillstream_client::udp::any_port_for(server);
    // Buffers as large as the devices' and the server's: with the kernel's
    // default (about 3 datagrams of 64 KiB) a relay short of CPU dropped
    // more than its faults said, and counted none of it.
    let (sock, _) = tillstream_client::udp::bind(local, tillstream_client::udp::BUFFER_BYTES)?;
    sock.connect(server)?;
    sock.set_nonblocking(true)?;
    let upstream = Arc::new(UdpSocket::from_std(sock)?);
    let reader = tokio::spawn(read_server(upstream.clone(), client, tx));
    Ok(Flow {
        upstream,
        reader,
        last_seen: now,
        arrivals: [0; 2],
        delivered: [None; 2],
    })
}

async fn read_clients(sock: Arc<UdpSocket>, tx: mpsc::Sender<Inbound>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        // Errors here are ICMP reports about earlier sends: keep reading.
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let m = Inbound {
            dir: Dir::ToServer,
            client: from,
            bytes: buf[..n].to_vec(),
        };
        if tx.send(m).await.is_err() {
            return;
        }
    }
}

async fn read_server(sock: Arc<UdpSocket>, client: SocketAddr, tx: mpsc::Sender<Inbound>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        // A refused send (server not listening) surfaces as an error on
        // the next read of a connected socket: keep reading.
        let Ok(n) = sock.recv(&mut buf).await else {
            continue;
        };
        let m = Inbound {
            dir: Dir::ToClient,
            client,
            bytes: buf[..n].to_vec(),
        };
        if tx.send(m).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults() -> Faults {
        Faults {
            partition_after: Some(Duration::from_secs(10)),
            partition_for: Duration::from_secs(30),
            faults_for: Some(Duration::from_secs(45)),
            ..Faults::default()
        }
    }

    #[test]
    fn phases_follow_the_schedule() {
        let f = faults();
        let s = Duration::from_secs;
        assert_eq!(f.phase(s(0)), Phase::Lossy);
        assert_eq!(f.phase(s(10)), Phase::Partitioned);
        assert_eq!(f.phase(Duration::from_millis(39_999)), Phase::Partitioned);
        assert_eq!(f.phase(s(40)), Phase::Lossy);
        assert_eq!(f.phase(s(45)), Phase::Clean);
        assert_eq!(f.next_change(s(0)), Some(s(10)));
        assert_eq!(f.next_change(s(10)), Some(s(40)));
        assert_eq!(f.next_change(s(41)), Some(s(45)));
        assert_eq!(f.next_change(s(45)), None);
        assert_eq!(Faults::default().next_change(s(0)), None);
    }

    #[test]
    fn fates_have_the_configured_loss_and_delay() {
        let f = faults();
        let mut rng = SmallRng::seed_from_u64(7);
        let (mut lost, mut early, mut late) = (0u32, 0u32, 0u32);
        for _ in 0..100_000 {
            match f.fate(Duration::from_secs(1), &mut rng) {
                Fate::Lost => lost += 1,
                Fate::Deliver(d) => {
                    assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(150));
                    early += u32::from(d < Duration::from_millis(60));
                    late += u32::from(d > Duration::from_millis(140));
                }
                Fate::Partitioned => panic!("no partition at 1 s"),
            }
        }
        assert!((4_500..5_500).contains(&lost), "{lost}");
        // Uniform: a tenth of the range at each end.
        assert!(early > 8_000 && late > 8_000, "{early} {late}");
        assert_eq!(f.fate(Duration::from_secs(20), &mut rng), Fate::Partitioned);
        assert_eq!(
            f.fate(Duration::from_secs(50), &mut rng),
            Fate::Deliver(Duration::ZERO)
        );
    }
}
