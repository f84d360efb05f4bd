//! Analysts' questions answered from scans of the tables, the same for
//! every backend: terminals, device health, dead stock and basket pairs.
//! Each is a fold over rows [`Query::scan`] hands out, so a backend needs
//! nothing of its own for them.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::query::{Query, RowRef};
use crate::rows::{EventKey, SaleKind, Table};
use crate::store::StoreError;

/// A time range `[from_us, to_us)` and, optionally, one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// Store id; all stores when `None`.
    pub store: Option<u32>,
    /// Start, inclusive (UTC µs).
    pub from_us: i64,
    /// End, exclusive (UTC µs).
    pub to_us: i64,
}

impl Scope {
    fn holds(&self, store: u32, ts_us: i64) -> bool {
        self.store.is_none_or(|s| s == store) && (self.from_us..self.to_us).contains(&ts_us)
    }
}

/// One terminal's totals over a range, from its per-minute rollups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TerminalTotal {
    /// Store.
    pub store: u32,
    /// Terminal.
    pub terminal: u32,
    /// Sales.
    pub sales: u64,
    /// Refunds.
    pub refunds: u64,
    /// Σ gross of sales, in minor units of the currency (pence, cents).
    pub gross_minor: i64,
    /// Σ tax of sales, minor units.
    pub tax_minor: i64,
    /// Σ gross of refunds, minor units.
    pub refunded_minor: i64,
    /// gross − refunded, minor units.
    pub net_minor: i64,
    /// Start of the last minute with activity: UTC microseconds since
    /// the epoch.
    pub last_active_us: i64,
}

/// Per-terminal totals over `scope`, by (store, terminal).
pub fn terminals(q: &dyn Query, scope: Scope) -> Result<Vec<TerminalTotal>, StoreError> {
    let mut out: BTreeMap<(u32, u32), TerminalTotal> = BTreeMap::new();
    q.scan(Table::TerminalRollups, &mut |row| {
        let RowRef::Rollup(r) = row else { return };
        let start_us = crate::time::day_start_us(r.day) + i64::from(r.minute) * 60_000_000;
        if !scope.holds(r.store, start_us) {
            return;
        }
        let t = out.entry((r.store, r.terminal)).or_insert(TerminalTotal {
            store: r.store,
            terminal: r.terminal,
            sales: 0,
            refunds: 0,
            gross_minor: 0,
            tax_minor: 0,
            refunded_minor: 0,
            net_minor: 0,
            last_active_us: start_us,
        });
        t.sales += u64::from(r.sales);
        t.refunds += u64::from(r.refunds);
        t.gross_minor += r.gross;
        t.tax_minor += r.tax;
        t.refunded_minor += r.refunded;
        t.net_minor = t.gross_minor - t.refunded_minor;
        t.last_active_us = t.last_active_us.max(start_us);
    })?;
    Ok(out.into_values().collect())
}

/// One device's health over a range: its latest report and the extremes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceHealth {
    /// Device.
    #[serde(serialize_with = "crate::json::id")]
    pub device: u64,
    /// Store it reported for.
    pub store: u32,
    /// Reports in the range.
    pub reports: u64,
    /// When it was last heard from: UTC microseconds since the epoch.
    pub last_seen_us: i64,
    /// Battery at the last report: 0–100 percent, or 255 when the device
    /// runs on mains power (the protocol's `DeviceHealth::battery_pct`;
    /// devices send the byte unchecked, so 101–254 may appear and mean
    /// nothing).
    pub battery_pct: u8,
    /// Lowest battery in the range, 0–100 percent; 255 when every report
    /// in it was on mains power.
    pub battery_min_pct: u8,
    /// Highest temperature in the range, in tenths of a degree Celsius
    /// (`215` is 21.5 °C).
    pub temperature_max_dc: i16,
    /// Weakest radio signal in the range, in dBm (negative; closer to 0
    /// is stronger).
    pub rssi_min_dbm: i16,
    /// Most batches the device held unacknowledged at a report in the
    /// range.
    pub queue_depth_max: u32,
    /// Seconds since the device booted, at the last report.
    pub uptime_s: u32,
}

/// Per-device health over `scope`, by device.
pub fn health(q: &dyn Query, scope: Scope) -> Result<Vec<DeviceHealth>, StoreError> {
    let mut out: BTreeMap<u64, DeviceHealth> = BTreeMap::new();
    q.scan(Table::DeviceHealth, &mut |row| {
        let RowRef::Health(r) = row else { return };
        if !scope.holds(r.store, r.ts_us) {
            return;
        }
        let h = out.entry(r.key.device).or_insert(DeviceHealth {
            device: r.key.device,
            store: r.store,
            reports: 0,
            last_seen_us: i64::MIN,
            battery_pct: r.battery_pct,
            battery_min_pct: r.battery_pct,
            temperature_max_dc: r.temperature_dc,
            rssi_min_dbm: r.rssi_dbm,
            queue_depth_max: r.queue_depth,
            uptime_s: r.uptime_s,
        });
        h.reports += 1;
        if r.ts_us >= h.last_seen_us {
            h.last_seen_us = r.ts_us;
            h.store = r.store;
            h.battery_pct = r.battery_pct;
            h.uptime_s = r.uptime_s;
        }
        h.battery_min_pct = h.battery_min_pct.min(r.battery_pct);
        h.temperature_max_dc = h.temperature_max_dc.max(r.temperature_dc);
        h.rssi_min_dbm = h.rssi_min_dbm.min(r.rssi_dbm);
        h.queue_depth_max = h.queue_depth_max.max(r.queue_depth);
    })?;
    Ok(out.into_values().collect())
}

/// A SKU with stock and no sale in the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadStock {
    /// Store.
    pub store: u32,
    /// Product.
    #[serde(serialize_with = "crate::json::id")]
    pub sku: u64,
    /// Units in stock now.
    pub level: i64,
    /// Its last sale ever seen (UTC microseconds since the epoch); `None`
    /// (JSON `null`) if it never sold.
    pub last_sale_us: Option<i64>,
}

/// SKUs whose current level is above zero and that sold nothing in
/// `scope` (typically the last N days), most stock first.
pub fn dead_stock(q: &dyn Query, scope: Scope) -> Result<Vec<DeadStock>, StoreError> {
    let mut sold_in_range: HashSet<(u32, u64)> = HashSet::new();
    let mut last_sale: HashMap<(u32, u64), i64> = HashMap::new();
    q.scan(Table::SaleLines, &mut |row| {
        let RowRef::SaleLine(l) = row else { return };
        if l.kind != SaleKind::Sale || scope.store.is_some_and(|s| s != l.store) {
            return;
        }
        let last = last_sale.entry((l.store, l.sku)).or_insert(l.ts_us);
        *last = (*last).max(l.ts_us);
        if scope.holds(l.store, l.ts_us) {
            sold_in_range.insert((l.store, l.sku));
        }
    })?;
    let mut out = Vec::new();
    q.scan(Table::StockLevels, &mut |row| {
        let RowRef::Level(r) = row else { return };
        if r.level <= 0 || scope.store.is_some_and(|s| s != r.store) {
            return;
        }
        if !sold_in_range.contains(&(r.store, r.sku)) {
            out.push(DeadStock {
                store: r.store,
                sku: r.sku,
                level: r.level,
                last_sale_us: last_sale.get(&(r.store, r.sku)).copied(),
            });
        }
    })?;
    out.sort_by(|a, b| {
        b.level
            .cmp(&a.level)
            .then((a.store, a.sku).cmp(&(b.store, b.sku)))
    });
    Ok(out)
}

/// Two SKUs bought together.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BasketPair {
    /// The store whose sales these are; `None` (JSON `null`, named "all
    /// stores") when counted over all.
    pub store: Option<u32>,
    /// One product (the lower id).
    #[serde(serialize_with = "crate::json::id")]
    pub sku_a: u64,
    /// The other.
    #[serde(serialize_with = "crate::json::id")]
    pub sku_b: u64,
    /// Sales holding both.
    pub baskets: u64,
    /// `baskets` over all sales in the range, 0 to 1.
    pub support: f64,
    /// `baskets` over the sales holding `sku_a`: how often a buyer of A
    /// also takes B.
    pub confidence: f64,
    /// `confidence` over B's share of all sales: above 1, A makes B more
    /// likely than chance.
    pub lift: f64,
}

/// The `limit` pairs of SKUs most often in one sale (a basket is one sale,
/// refunds left out) in `scope`, with at least `min_baskets` baskets; most
/// baskets first, then highest lift. Baskets of more than 64 distinct SKUs
/// (a stock-taking sale, a wholesale order) are left out: their pairs
/// would swamp a shop's baskets and cost their square.
pub fn basket_pairs(
    q: &dyn Query,
    scope: Scope,
    limit: usize,
    min_baskets: u64,
) -> Result<Vec<BasketPair>, StoreError> {
    const MAX_BASKET: usize = 64;
    let mut baskets: HashMap<EventKey, Vec<u64>> = HashMap::new();
    q.scan(Table::SaleLines, &mut |row| {
        let RowRef::SaleLine(l) = row else { return };
        if l.kind == SaleKind::Sale && scope.holds(l.store, l.ts_us) {
            baskets.entry(l.key).or_default().push(l.sku);
        }
    })?;
    let total = baskets.len() as f64;
    let mut single: HashMap<u64, u64> = HashMap::new();
    let mut pairs: HashMap<(u64, u64), u64> = HashMap::new();
    for mut skus in baskets.into_values() {
        skus.sort_unstable();
        skus.dedup();
        for &s in &skus {
            *single.entry(s).or_default() += 1;
        }
        if skus.len() > MAX_BASKET {
            continue;
        }
        for (i, &a) in skus.iter().enumerate() {
            for &b in &skus[i + 1..] {
                *pairs.entry((a, b)).or_default() += 1;
            }
        }
    }
    let mut out: Vec<BasketPair> = pairs
        .into_iter()
        .filter(|(_, n)| *n >= min_baskets.max(1))
        .map(|((a, b), n)| {
            let with_a = single.get(&a).copied().unwrap_or(n) as f64;
            let share_b = single.get(&b).copied().unwrap_or(n) as f64 / total;
            let confidence = n as f64 / with_a;
            BasketPair {
                store: scope.store,
                sku_a: a,
                sku_b: b,
                baskets: n,
                support: n as f64 / total,
                confidence,
                lift: confidence / share_b,
            }
        })
        .collect();
    out.sort_by(|x, y| {
        y.baskets
            .cmp(&x.baskets)
            .then(y.lift.total_cmp(&x.lift))
            .then((x.sku_a, x.sku_b).cmp(&(y.sku_a, y.sku_b)))
    });
    out.truncate(limit);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::SaleKind::{Refund, Sale};
    use crate::testkit::{Gen, MemQuery, key};
    use crate::time::{DAY_US, MINUTE_US};

    const T0: i64 = 1_700_000_000_000_000;
    const ALL: Scope = Scope {
        store: None,
        from_us: i64::MIN,
        to_us: i64::MAX,
    };

    /// Three sales and a refund: {100, 101}, {100, 101, 102}, {100}, and
    /// a refund of {101, 102} that is no basket.
    fn shop() -> MemQuery {
        let mut g = Gen::default();
        g.sale(key(1, 1, 0), 1, 10, T0, Sale, &[(100, 1, 10), (101, 2, 20)]);
        g.sale(
            key(1, 1, 1),
            1,
            10,
            T0 + MINUTE_US,
            Sale,
            &[(100, 1, 10), (101, 1, 20), (102, 1, 5)],
        );
        g.sale(
            key(1, 1, 2),
            1,
            11,
            T0 + 2 * MINUTE_US,
            Sale,
            &[(100, 3, 10)],
        );
        g.sale(
            key(1, 1, 3),
            1,
            11,
            T0 + 3 * MINUTE_US,
            Refund,
            &[(101, 1, 20), (102, 1, 5)],
        );
        g.health(key(2, 1, 0), 1, T0);
        g.health(key(2, 2, 0), 1, T0 + DAY_US);
        MemQuery(g.finish())
    }

    #[test]
    fn basket_pairs_count_sales_not_refunds() -> Result<(), StoreError> {
        let pairs = basket_pairs(&shop(), ALL, 10, 1)?;
        let ab = &pairs[0];
        assert_eq!((ab.sku_a, ab.sku_b, ab.baskets), (100, 101, 2));
        assert!((ab.support - 2.0 / 3.0).abs() < 1e-12);
        // 100 is in all 3 baskets, 101 in 2: buying 100 makes 101 no
        // likelier than chance.
        assert!((ab.confidence - 2.0 / 3.0).abs() < 1e-12);
        assert!((ab.lift - 1.0).abs() < 1e-12);
        let bc = pairs
            .iter()
            .find(|p| (p.sku_a, p.sku_b) == (101, 102))
            .ok_or(StoreError::Corrupt {
                what: "test",
                reason: "no pair 101-102".into(),
            })?;
        // The refund does not count: one basket, and 102 in 1 of 3 sales.
        assert_eq!(bc.baskets, 1);
        assert!((bc.confidence - 0.5).abs() < 1e-12);
        assert!((bc.lift - 1.5).abs() < 1e-12);
        assert_eq!(basket_pairs(&shop(), ALL, 10, 2)?.len(), 1, "min_baskets");
        Ok(())
    }

    #[test]
    fn terminals_sum_their_minutes_in_range() -> Result<(), StoreError> {
        let all = terminals(&shop(), ALL)?;
        assert_eq!(all.len(), 2);
        let t10 = &all[0];
        assert_eq!(
            (t10.store, t10.terminal, t10.sales, t10.refunds),
            (1, 10, 2, 0)
        );
        assert_eq!(t10.gross_minor, 10 + 40 + 10 + 20 + 5);
        let t11 = &all[1];
        assert_eq!((t11.sales, t11.refunds), (1, 1));
        assert_eq!(t11.net_minor, t11.gross_minor - t11.refunded_minor);
        let late = Scope {
            from_us: T0 + 2 * MINUTE_US,
            ..ALL
        };
        assert_eq!(
            terminals(&shop(), late)?.len(),
            1,
            "terminal 10 sold earlier"
        );
        Ok(())
    }

    #[test]
    fn health_keeps_the_latest_report_and_the_extremes() -> Result<(), StoreError> {
        let h = health(&shop(), ALL)?;
        assert_eq!(h.len(), 1);
        assert_eq!(
            (h[0].device, h[0].reports, h[0].last_seen_us),
            (2, 2, T0 + DAY_US)
        );
        let first_day = Scope {
            to_us: T0 + 1,
            ..ALL
        };
        assert_eq!(health(&shop(), first_day)?[0].reports, 1);
        Ok(())
    }

    #[test]
    fn dead_stock_is_stock_that_did_not_sell_in_range() -> Result<(), StoreError> {
        let mut g = Gen::default();
        g.stock(
            key(3, 1, 0),
            1,
            100,
            T0,
            crate::rows::MovementReason::Receipt,
            50,
        );
        g.stock(
            key(3, 1, 1),
            1,
            200,
            T0,
            crate::rows::MovementReason::Receipt,
            30,
        );
        g.sale(key(1, 1, 0), 1, 10, T0 + DAY_US, Sale, &[(100, 1, 10)]);
        let q = MemQuery(g.finish());
        let since = Scope {
            from_us: T0 + DAY_US,
            ..ALL
        };
        let dead = dead_stock(&q, since)?;
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(
            (dead[0].sku, dead[0].level, dead[0].last_sale_us),
            (200, 30, None)
        );
        // Before the sale, both were dead.
        let before = Scope {
            to_us: T0 + DAY_US,
            ..ALL
        };
        let dead = dead_stock(&q, before)?;
        assert_eq!(dead.iter().map(|d| d.sku).collect::<Vec<_>>(), [100, 200]);
        assert_eq!(dead[0].last_sale_us, Some(T0 + DAY_US));
        Ok(())
    }
}
