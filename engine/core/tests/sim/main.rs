//! A deterministic simulation of the core, quinn-proto style: a fleet of
//! tills and shelf sensors across a few stores streams batches to the
//! engine's write path reduced to its decisions (sequencer, shard
//! mailboxes and cores, journal, flusher, passivation, recovery; see
//! `server.rs`) over a virtual clock, with resends, replays, reconnects,
//! shards stepped in any interleaving, journal syncs cut short, and crashes
//! that lose what the journal had not synced (possibly coming back with
//! another shard count). The model store checks the invariants of
//! docs/internals/design.md after every materialization and everything after every
//! crash and at the end (see `model.rs`); after a crash, nothing a device
//! was told is durable may be missing.
//!
//! A failure names the seed (in the test's captured output); rerun one with
//! `SIM_SEED=<n> cargo test -p tillstream-engine-core --test sim`.
//! `SIM_STEPS` sets the length (4,000), `SIM_SEEDS` the seeds per shard
//! count (4), `SIM_VERBOSE=1` prints what each run exercised.

mod fleet;
mod model;
mod server;

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tillstream_storage::time::{MINUTE_US, parse_ts};

use fleet::Device;
use model::{ModelStore, Registry};
use server::{Journal, Server};

const SHARD_COUNTS: [u16; 4] = [1, 2, 3, 7];

#[derive(Debug, Default)]
struct Counters {
    sends: u64,
    replays: u64,
    reconnects: u64,
    crashes: u64,
    reshards: u64,
    flushes: u64,
}

struct Sim {
    rng: StdRng,
    now: i64,
    devices: Vec<Device>,
    index: BTreeMap<u64, usize>,
    server: Server,
    model: ModelStore,
    journal: Journal,
    registry: Registry,
    counters: Counters,
}

impl Sim {
    fn new(seed: u64, shards: u16) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let devices = Device::fleet(&mut rng);
        let index = devices.iter().enumerate().map(|(i, d)| (d.id, i)).collect();
        let mut model = ModelStore::default();
        let mut journal = Journal::default();
        let registry = Registry::new();
        let server = Server::start(
            shards,
            &mut model,
            &mut journal,
            &registry,
            Default::default(),
        );
        Self {
            rng,
            // Twenty minutes before midnight: the run crosses a day.
            now: parse_ts("2024-03-09T23:40:00Z").unwrap_or(0),
            devices,
            index,
            server,
            model,
            journal,
            registry,
            counters: Counters::default(),
        }
    }

    fn step(&mut self) {
        self.now += self.rng.random_range(0..2_000_000);
        let p: f64 = self.rng.random();
        if p < 0.25 {
            let i = self.rng.random_range(0..self.devices.len());
            self.send(i);
        } else if p < 0.45 {
            self.journal.sync(&mut self.rng);
            self.release();
        } else if p < 0.80 {
            for _ in 0..self.rng.random_range(1..4) {
                self.server.step_shard(&mut self.rng, self.now, &self.model);
            }
            self.release();
        } else if p < 0.82 {
            let i = self.rng.random_range(0..self.devices.len());
            self.replay(i);
        } else if p < 0.83 {
            let i = self.rng.random_range(0..self.devices.len());
            let d = &mut self.devices[i];
            d.reconnect(self.model.watermark(d.id));
            self.counters.reconnects += 1;
        } else if p < 0.833 {
            self.crash();
        } else if p < 0.86 {
            // Idle for a few minutes, or for no time at all: only what is
            // in the tables may go, whatever its age.
            let idle_us = self.rng.random_range(0..5 * MINUTE_US);
            self.server.passivate(self.now - idle_us, &self.model);
        } else if p < 0.92 {
            self.flush();
        }
    }

    fn send(&mut self, i: usize) {
        let d = &mut self.devices[i];
        let Some(s) = d.next_send(&mut self.rng, self.now, &mut self.registry) else {
            return;
        };
        self.counters.sends += 1;
        if let Some(durable) = self.server.receive(
            s.device,
            s.seq,
            s.batch,
            self.now,
            &self.model,
            &mut self.journal,
        ) {
            self.devices[i].ack(durable);
        }
    }

    fn replay(&mut self, i: usize) {
        let Some(s) = self.devices[i].replay(&mut self.rng) else {
            return;
        };
        self.counters.replays += 1;
        let fresh = self.server.stats.fresh;
        let got = self.server.receive(
            s.device,
            s.seq,
            s.batch,
            self.now,
            &self.model,
            &mut self.journal,
        );
        assert!(
            got.is_some_and(|durable| durable >= s.seq),
            "replay of durable {}/{} was not acked as a duplicate: {got:?}",
            s.device,
            s.seq
        );
        assert_eq!(fresh, self.server.stats.fresh, "a replay was applied");
    }

    /// The flusher's acks, delivered to the devices.
    fn release(&mut self) {
        for (device, seq) in self.server.release(&self.journal) {
            if let Some(&i) = self.index.get(&device) {
                self.devices[i].ack(seq);
            }
        }
    }

    fn flush(&mut self) {
        self.counters.flushes += 1;
        self.release();
        self.server
            .materialize(&mut self.model, &mut self.journal, &self.registry);
    }

    /// Everything in memory and whatever the journal had not synced is
    /// lost; the server recovers from the tables and the journal.
    fn crash(&mut self) {
        self.counters.crashes += 1;
        self.server.absorb_core_stats();
        let stats = self.server.stats;
        let mut shards = self.server.shards;
        if self.rng.random_bool(0.4) {
            shards = SHARD_COUNTS[self.rng.random_range(0..SHARD_COUNTS.len())];
            self.counters.reshards += 1;
        }
        self.journal.crash();
        self.server = Server::start(
            shards,
            &mut self.model,
            &mut self.journal,
            &self.registry,
            stats,
        );
        self.model.check_all(&self.registry);
        for d in &mut self.devices {
            let stored = self.model.watermark(d.id);
            assert!(
                d.durable <= stored,
                "device {} was acked through seq {} but the recovered store holds {stored}",
                d.id,
                d.durable
            );
            d.reconnect(stored);
        }
    }

    /// No more new batches: deliver, apply and commit until every device
    /// has everything acknowledged.
    fn drain(&mut self) {
        for round in 0.. {
            assert!(round < 10_000, "the run does not drain");
            for i in 0..self.devices.len() {
                while self.devices[i].sent < self.devices[i].outbox.len() {
                    self.send(i);
                }
            }
            while self.server.step_shard(&mut self.rng, self.now, &self.model) {}
            self.journal.sync(&mut self.rng);
            self.flush();
            if self.server.idle() && self.devices.iter().all(Device::all_acked) {
                break;
            }
            self.now += 1_000;
        }
    }
}

fn run(seed: u64, shards: u16, steps: usize) -> u64 {
    let mut sim = Sim::new(seed, shards);
    for _ in 0..steps {
        sim.step();
    }
    sim.drain();
    for d in &sim.devices {
        let l = sim.server.ledger(d.id);
        assert!(
            l.is_none_or(|l| l.is_quiescent()),
            "device {} not quiescent: {l:?}",
            d.id
        );
    }
    for &(device, seq) in sim.registry.keys() {
        assert!(
            seq <= sim.model.watermark(device),
            "batch {device}/{seq} never became durable"
        );
    }
    sim.model.check_all(&sim.registry);
    sim.server.absorb_core_stats();
    let s = sim.server.stats;
    assert!(
        s.duplicates > 0 && sim.counters.replays > 0,
        "no replays exercised: {s:?}"
    );
    if std::env::var_os("SIM_VERBOSE").is_some() {
        eprintln!(
            "seed {seed} shards {shards}: {:?} {s:?} rows {} (sales {}, movements {}) materializations {} rejected {:?}",
            sim.counters,
            sim.model.rows,
            sim.model.sale_rows(),
            sim.model.movement_rows(),
            sim.model.commits,
            sim.model.rejected_by_code(),
        );
    }
    sim.model.digest()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn sweep(shards: u16) {
    let steps = env_u64("SIM_STEPS").map_or(4_000, |s| s as usize);
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(s) => vec![s],
        None => (0..env_u64("SIM_SEEDS").unwrap_or(4))
            .map(|i| u64::from(shards) * 1_000 + i)
            .collect(),
    };
    for seed in seeds {
        // Shown with the panic if the run fails.
        eprintln!("sim: seed {seed}, {shards} shards, {steps} steps");
        run(seed, shards, steps);
    }
}

#[test]
fn sim_one_shard() {
    sweep(1);
}

#[test]
fn sim_two_shards() {
    sweep(2);
}

#[test]
fn sim_three_shards() {
    sweep(3);
}

#[test]
fn sim_seven_shards() {
    sweep(7);
}

#[test]
fn sim_is_deterministic() {
    assert_eq!(run(42, 3, 800), run(42, 3, 800));
}
