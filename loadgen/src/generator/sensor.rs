//! What a shelf sensor emits: shelf counts, stock movements, health pings.

use rand::Rng;
use rand::rngs::StdRng;
use tillstream_protocol::{DeviceHealth, Event, MovementKind, ShelfCount, StockMovement};

use super::catalogue::{Catalogue, Shelves};
use super::{DeviceSpec, DeviceState, weighted};

/// Movement reasons, by weight.
const REASON: [(MovementKind, u32); 4] = [
    (MovementKind::Receipt, 45),
    (MovementKind::Shrink, 30),
    (MovementKind::TransferIn, 12),
    (MovementKind::TransferOut, 13),
];

/// An absolute shelf level; sometimes a unit off what the simulation
/// thinks, as real counts are. The count becomes the simulated level.
pub(super) fn count(
    rng: &mut StdRng,
    catalogue: &Catalogue,
    shelves: &mut Shelves,
    dev: &DeviceSpec,
    ts_us: i64,
) -> Event {
    let i = shelves.pick(rng);
    let noise = if rng.random_bool(0.1) {
        rng.random_range(-1..=1)
    } else {
        0
    };
    let level = (shelves.level(i) + noise).max(0);
    shelves.set(i, level);
    Event::Count(ShelfCount {
        ts_us,
        store: dev.store,
        sku: catalogue.get(i).sku,
        level,
    })
}

/// A delivery, a write-off or a transfer; never a zero delta.
pub(super) fn movement(
    rng: &mut StdRng,
    catalogue: &Catalogue,
    shelves: &mut Shelves,
    dev: &DeviceSpec,
    ts_us: i64,
) -> Event {
    let i = shelves.pick(rng);
    let reason = REASON[weighted(rng, &REASON.map(|(_, w)| w))].0;
    let delta: i32 = match reason {
        MovementKind::Receipt => [6, 12, 24][rng.random_range(0..3)] * rng.random_range(1..=4),
        MovementKind::Shrink => -rng.random_range(1..=3),
        MovementKind::TransferIn => rng.random_range(6..=24),
        MovementKind::TransferOut => -rng.random_range(6..=24),
    };
    shelves.adjust(i, i64::from(delta));
    Event::Movement(StockMovement {
        ts_us,
        store: dev.store,
        sku: catalogue.get(i).sku,
        delta,
        reason,
    })
}

/// A sensor's health ping: on battery, at room temperature, on radio.
pub(super) fn health(
    rng: &mut StdRng,
    dev: &DeviceSpec,
    st: &mut DeviceState,
    ts_us: i64,
) -> Event {
    if rng.random_bool(0.05) {
        st.battery = if st.battery <= 10 {
            100
        } else {
            st.battery - 1
        };
    }
    Event::Health(DeviceHealth {
        ts_us,
        store: dev.store,
        battery_pct: st.battery,
        temperature_dc: rng.random_range(170..240),
        uptime_s: st.uptime_s(ts_us),
        queue_depth: 0,
        rssi_dbm: st.rssi_dbm + rng.random_range(-6..=6),
    })
}
