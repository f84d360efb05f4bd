//! The limits an operator may change while the server runs (SIGHUP, see
//! docs/internals/design.md "Operations"): the connection cap and the per-device
//! caps and rate. Each is one atomic read where it is enforced, so a
//! reload takes effect at the next connection or batch, and no connection
//! is dropped for it. Everything else (ports, shards, buffers, the store)
//! is fixed for the process's life.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::ServerConfig;

/// The limits a reload may change, as a reload hands them to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadableLimits {
    /// See [`ServerConfig::max_connections`].
    pub max_connections: usize,
    /// See [`ServerConfig::max_events_per_s_per_device`].
    pub max_events_per_s_per_device: u32,
    /// See [`ServerConfig::max_stores_per_device`].
    pub max_stores_per_device: usize,
    /// See [`ServerConfig::max_terminals_per_device`].
    pub max_terminals_per_device: usize,
    /// See [`ServerConfig::max_skus_per_device`].
    pub max_skus_per_device: usize,
}

impl ReloadableLimits {
    /// The reloadable part of a server's configuration.
    pub fn of(cfg: &ServerConfig) -> Self {
        Self {
            max_connections: cfg.max_connections,
            max_events_per_s_per_device: cfg.max_events_per_s_per_device,
            max_stores_per_device: cfg.max_stores_per_device,
            max_terminals_per_device: cfg.max_terminals_per_device,
            max_skus_per_device: cfg.max_skus_per_device,
        }
    }

    /// The same with every cap at least 1 (0 events/s stays: no limit).
    fn sane(self) -> Self {
        Self {
            max_connections: self.max_connections.max(1),
            max_events_per_s_per_device: self.max_events_per_s_per_device,
            max_stores_per_device: self.max_stores_per_device.max(1),
            max_terminals_per_device: self.max_terminals_per_device.max(1),
            max_skus_per_device: self.max_skus_per_device.max(1),
        }
    }

    /// Each limit by its setting's name, in a fixed order.
    fn named(&self) -> [(&'static str, u64); 5] {
        let w = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        [
            ("max-connections", w(self.max_connections)),
            (
                "max-events-per-s-per-device",
                u64::from(self.max_events_per_s_per_device),
            ),
            ("max-stores-per-device", w(self.max_stores_per_device)),
            ("max-terminals-per-device", w(self.max_terminals_per_device)),
            ("max-skus-per-device", w(self.max_skus_per_device)),
        ]
    }
}

/// One limit a reload changed: its setting's name, old and new value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitChange {
    /// The setting, as the config file names it (`max-skus-per-device`).
    pub setting: &'static str,
    /// The value before the reload.
    pub old: u64,
    /// The value in force now.
    pub new: u64,
}

/// The limits in force, read where they are enforced.
#[derive(Debug)]
pub(crate) struct LiveLimits {
    max_connections: AtomicUsize,
    max_stores_per_device: AtomicUsize,
    max_terminals_per_device: AtomicUsize,
    max_skus_per_device: AtomicUsize,
    max_events_per_s_per_device: AtomicU32,
}

impl LiveLimits {
    pub(crate) fn new(limits: ReloadableLimits) -> Self {
        let l = limits.sane();
        Self {
            max_connections: AtomicUsize::new(l.max_connections),
            max_stores_per_device: AtomicUsize::new(l.max_stores_per_device),
            max_terminals_per_device: AtomicUsize::new(l.max_terminals_per_device),
            max_skus_per_device: AtomicUsize::new(l.max_skus_per_device),
            max_events_per_s_per_device: AtomicU32::new(l.max_events_per_s_per_device),
        }
    }

    /// The limits in force.
    pub(crate) fn get(&self) -> ReloadableLimits {
        // Relaxed: each limit stands alone; a batch checked against one old
        // and one new limit during a reload is checked against valid limits.
        let r = Ordering::Relaxed;
        ReloadableLimits {
            max_connections: self.max_connections.load(r),
            max_events_per_s_per_device: self.max_events_per_s_per_device.load(r),
            max_stores_per_device: self.max_stores_per_device.load(r),
            max_terminals_per_device: self.max_terminals_per_device.load(r),
            max_skus_per_device: self.max_skus_per_device.load(r),
        }
    }

    /// Puts `limits` in force; returns what changed.
    pub(crate) fn set(&self, limits: ReloadableLimits) -> Vec<LimitChange> {
        let new = limits.sane();
        let old = self.get();
        let r = Ordering::Relaxed;
        self.max_connections.store(new.max_connections, r);
        self.max_events_per_s_per_device
            .store(new.max_events_per_s_per_device, r);
        self.max_stores_per_device
            .store(new.max_stores_per_device, r);
        self.max_terminals_per_device
            .store(new.max_terminals_per_device, r);
        self.max_skus_per_device.store(new.max_skus_per_device, r);
        old.named()
            .into_iter()
            .zip(new.named())
            .filter(|((_, a), (_, b))| a != b)
            .map(|((setting, old), (_, new))| LimitChange { setting, old, new })
            .collect()
    }

    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_reports_only_what_changed_and_keeps_caps_above_zero() {
        let cfg = ServerConfig::new(std::path::Path::new("unused"));
        let live = LiveLimits::new(ReloadableLimits::of(&cfg));
        assert_eq!(live.get(), ReloadableLimits::of(&cfg));
        assert!(live.set(ReloadableLimits::of(&cfg)).is_empty());

        let changed = live.set(ReloadableLimits {
            max_skus_per_device: 3,
            max_connections: 0,
            ..ReloadableLimits::of(&cfg)
        });
        assert_eq!(
            changed,
            vec![
                LimitChange {
                    setting: "max-connections",
                    old: 20_000,
                    new: 1
                },
                LimitChange {
                    setting: "max-skus-per-device",
                    old: 200_000,
                    new: 3
                },
            ]
        );
        assert_eq!(live.get().max_skus_per_device, 3);
        assert_eq!(live.max_connections(), 1);
    }
}
