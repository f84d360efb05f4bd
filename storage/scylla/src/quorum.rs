//! Whether a consistency level makes every read see every acknowledged
//! write (docs/internals/design.md, "ScyllaDB"). One level serves reads and writes
//! alike, so they overlap when twice its replica count passes the
//! replication factor of the replicas it counts among: a start that
//! reads its checkpoint, generation or journal end at a level that can
//! miss an acknowledged write would resume below it and overwrite
//! acknowledged records.

use std::collections::BTreeMap;

use scylla::statement::Consistency;

/// A keyspace's replication: replicas per data centre (SimpleStrategy's
/// single factor is one entry under `""`).
pub(crate) type Replication = BTreeMap<String, u32>;

/// Reads the `replication` map of `system_schema.keyspaces` (strategy
/// class plus factors) into [`Replication`].
pub(crate) fn replication_of(map: &BTreeMap<String, String>) -> Result<Replication, String> {
    let class = map.get("class").map(String::as_str).unwrap_or_default();
    let factor = |k: &str, v: &str| -> Result<u32, String> {
        // "3", or "3/1" (replicas/transient) in Cassandra 4+.
        let all = v.split('/').next().unwrap_or(v);
        all.trim()
            .parse()
            .map_err(|_| format!("replication factor {k} = {v:?} is not a number"))
    };
    let mut out = Replication::new();
    if class.ends_with("SimpleStrategy") {
        let rf = map
            .get("replication_factor")
            .ok_or("SimpleStrategy without replication_factor")?;
        out.insert(String::new(), factor("replication_factor", rf)?);
    } else {
        for (k, v) in map {
            if k != "class" && k != "replication_factor" {
                out.insert(k.clone(), factor(k, v)?);
            }
        }
    }
    if out.values().all(|&rf| rf == 0) {
        return Err(format!("no replicas in {map:?}"));
    }
    Ok(out)
}

/// `Ok` when reads and writes at `level` always share a replica; the
/// error says why not and what to use instead.
pub(crate) fn check_overlap(
    level: Consistency,
    datacenter: Option<&str>,
    replication: &Replication,
) -> Result<(), String> {
    let total: u32 = replication.values().sum();
    let dcs: Vec<&str> = replication
        .iter()
        .filter(|(_, rf)| **rf > 0)
        .map(|(dc, _)| dc.as_str())
        .collect();
    let fix =
        "use local_quorum (with --scylla-dc when the keyspace spans data centres), quorum or all";
    let counted = |n: u32, among: u32, name: &str| {
        if 2 * n > among {
            Ok(())
        } else {
            Err(format!(
                "consistency {name} waits for {n} of {among} replicas: a read can miss an acknowledged write, and a start resume below it; {fix}"
            ))
        }
    };
    match level {
        Consistency::Quorum | Consistency::All | Consistency::EachQuorum => Ok(()),
        Consistency::One => counted(1, total, "one"),
        Consistency::Two => counted(2, total, "two"),
        Consistency::Three => counted(3, total, "three"),
        Consistency::LocalQuorum | Consistency::LocalOne => {
            let name = if level == Consistency::LocalOne {
                "local_one"
            } else {
                "local_quorum"
            };
            let local = match (datacenter, dcs.as_slice()) {
                (Some(dc), _) => *replication.get(dc).ok_or_else(|| {
                    format!(
                        "--scylla-dc {dc:?} holds no replica of the keyspace (its data centres: {})",
                        dcs.join(", ")
                    )
                })?,
                (None, [_]) => total,
                (None, _) => {
                    return Err(format!(
                        "consistency {name} without --scylla-dc, and the keyspace spans data centres ({}): requests may go to either, and a local quorum in one does not overlap one in another; give --scylla-dc",
                        dcs.join(", ")
                    ));
                }
            };
            if level == Consistency::LocalOne {
                counted(1, local, name)
            } else {
                Ok(())
            }
        }
        other => Err(format!(
            "consistency {other:?} cannot serve both reads and writes; {fix}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rf(pairs: &[(&str, u32)]) -> Replication {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn levels_that_can_miss_a_write_are_refused() {
        let three = rf(&[("dc1", 3)]);
        assert!(check_overlap(Consistency::LocalQuorum, None, &three).is_ok());
        assert!(check_overlap(Consistency::Quorum, None, &three).is_ok());
        assert!(check_overlap(Consistency::All, None, &three).is_ok());
        assert!(check_overlap(Consistency::Two, None, &three).is_ok());
        let one = check_overlap(Consistency::One, None, &three);
        assert!(matches!(&one, Err(e) if e.contains("1 of 3")), "{one:?}");
        assert!(check_overlap(Consistency::LocalOne, None, &three).is_err());
        // A single replica: every level sees it.
        assert!(check_overlap(Consistency::One, None, &rf(&[("dc1", 1)])).is_ok());
        assert!(check_overlap(Consistency::Two, None, &rf(&[("dc1", 5)])).is_err());
        assert!(check_overlap(Consistency::Any, None, &three).is_err());
    }

    #[test]
    fn a_local_quorum_across_data_centres_needs_the_dc() {
        let two = rf(&[("eu", 3), ("us", 3)]);
        let e = check_overlap(Consistency::LocalQuorum, None, &two);
        assert!(matches!(&e, Err(m) if m.contains("--scylla-dc")), "{e:?}");
        assert!(check_overlap(Consistency::LocalQuorum, Some("eu"), &two).is_ok());
        assert!(check_overlap(Consistency::LocalQuorum, Some("asia"), &two).is_err());
        // Three of six replicas in all: no majority.
        assert!(check_overlap(Consistency::Three, None, &two).is_err());
        assert!(check_overlap(Consistency::Quorum, None, &two).is_ok());
        // A data centre given 0 replicas does not count as one.
        let dormant = rf(&[("eu", 3), ("us", 0)]);
        assert!(check_overlap(Consistency::LocalQuorum, None, &dormant).is_ok());
    }

    #[test]
    fn replication_maps_read_as_cassandra_writes_them() -> Result<(), String> {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let nts = map(&[
            (
                "class",
                "org.apache.cassandra.locator.NetworkTopologyStrategy",
            ),
            ("datacenter1", "3"),
        ]);
        assert_eq!(replication_of(&nts)?, rf(&[("datacenter1", 3)]));
        let simple = map(&[
            ("class", "org.apache.cassandra.locator.SimpleStrategy"),
            ("replication_factor", "2"),
        ]);
        assert_eq!(replication_of(&simple)?, rf(&[("", 2)]));
        let transient = map(&[("class", "NetworkTopologyStrategy"), ("dc1", "3/1")]);
        assert_eq!(replication_of(&transient)?, rf(&[("dc1", 3)]));
        assert!(replication_of(&map(&[("class", "SimpleStrategy")])).is_err());
        Ok(())
    }
}
