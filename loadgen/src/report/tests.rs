use super::*;

#[test]
fn percentiles_of_a_uniform_spread() -> Result<(), Box<dyn std::error::Error>> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for ms in 1..=1000u64 {
        h.record(ms * 1000)?;
    }
    let p = Percentiles::from_us(&h);
    assert_eq!(p.count, 1000);
    let near = |got: f64, want: f64| (got - want).abs() <= want * 0.002 + 0.001;
    assert!(near(p.p50, 500.0), "{p:?}");
    assert!(near(p.p90, 900.0), "{p:?}");
    assert!(near(p.p99, 990.0), "{p:?}");
    assert!(near(p.p999, 999.0), "{p:?}");
    assert!(near(p.max, 1000.0), "{p:?}");
    assert!(near(p.mean, 500.5), "{p:?}");
    Ok(())
}

#[test]
fn empty_histogram_is_all_zero() -> Result<(), Box<dyn std::error::Error>> {
    let h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    assert_eq!(Percentiles::from_us(&h), Percentiles::default());
    Ok(())
}

#[test]
fn a_single_tail_sample_shows_in_max_not_p99() -> Result<(), Box<dyn std::error::Error>> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    h.record_n(2_000, 999)?;
    h.record(5_000_000)?;
    let p = Percentiles::from_us(&h);
    assert!((p.p99 - 2.0).abs() < 0.01, "{p:?}");
    assert!((p.max - 5000.0).abs() < 5.0, "{p:?}");
    Ok(())
}

#[test]
fn a_lagging_loadgen_is_named_as_the_source_of_the_p99() -> Result<(), Box<dyn std::error::Error>> {
    let mut r = Report::new(
        &outcome(100)?,
        (100, 10, 1000),
        1,
        1,
        info(),
        serde_json::Value::Null,
    );
    r.ack_latency_ms.p99 = 60.0;
    assert!(r.loadgen_bound().is_none(), "no lag measured");
    let lag = |p99| Percentiles {
        count: 100,
        p50: 1.0,
        p99,
        max: p99,
        ..Percentiles::default()
    };
    r.device_runtime_lag_ms = Some(lag(5.0));
    assert!(
        r.loadgen_bound().is_none(),
        "a lag of 5 ms does not make 60"
    );
    r.device_runtime_lag_ms = Some(lag(40.0));
    let why = r.loadgen_bound().ok_or("a 40 ms lag is most of 60 ms")?;
    assert!(why.contains("40.0 ms late"), "{why}");
    assert!(
        r.summary()
            .contains("note: the devices' runtime ran 40.0 ms late")
    );
    Ok(())
}

#[test]
fn slow_journal_appends_are_named_as_a_source_of_the_p99() -> Result<(), Box<dyn std::error::Error>>
{
    let mut r = Report::new(
        &outcome(100)?,
        (100, 10, 1000),
        1,
        1,
        info(),
        serde_json::Value::Null,
    );
    r.ack_latency_ms.p99 = 230.0;
    assert!(r.disk_bound().is_none(), "no journal figures");
    let appends = |over_50ms, over_100ms| ServerJournalAppends {
        count: 2_000,
        p50: 0.2,
        p99: 1.0,
        over_50ms,
        over_100ms,
    };
    r.server_journal_appends_ms = Some(appends(0, 0));
    assert!(r.disk_bound().is_none(), "no slow append");
    r.server_journal_appends_ms = Some(appends(3, 1));
    let why = r
        .disk_bound()
        .ok_or("3 appends over 50 ms under a 230 ms p99")?;
    assert!(
        why.starts_with("3 of the server's journal appends"),
        "{why}"
    );
    let text = r.summary();
    assert!(
        text.contains("over 50 ms: 3, over 100 ms: 1 (of 2000)"),
        "{text}"
    );
    assert!(
        text.contains("note: 3 of the server's journal appends"),
        "{text}"
    );
    r.ack_latency_ms.p99 = 20.0;
    assert!(
        r.disk_bound().is_none(),
        "a 20 ms p99 is not a 50 ms append's"
    );
    Ok(())
}

#[test]
fn code_names() {
    let mut m = BTreeMap::new();
    m.insert(10u16, 3u64);
    m.insert(999u16, 1u64);
    let named = by_code_name(&m);
    assert_eq!(named.get("busy"), Some(&3));
    assert_eq!(named.get("code_999"), Some(&1));
}

fn outcome(acked: u64) -> Result<RunOutcome, Box<dyn std::error::Error>> {
    Ok(RunOutcome {
        events_sent: acked,
        events_acked: acked,
        events_refused: 0,
        events_rejected: 0,
        elapsed: std::time::Duration::from_secs(1),
        events_timed: acked,
        latency_us: Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?,
        runtime_lag_us: None,
        stats: tillstream_client::ClientStats::default(),
        acked: Vec::new(),
        failures: Vec::new(),
    })
}

fn info() -> GeneratorInfo {
    GeneratorInfo {
        mode: "fleet",
        stores: 1,
        terminals_per_store: 1,
        sensors_per_store: 0,
        skus: 1,
        batch_size: 10,
        batch_max_wait_ms: None,
        rate: 0.0,
        step_us: 1,
        csv: None,
    }
}

#[test]
fn a_complete_run_is_ok() -> Result<(), Box<dyn std::error::Error>> {
    let mut r = Report::new(
        &outcome(100)?,
        (100, 10, 1000),
        1,
        1,
        info(),
        serde_json::Value::Null,
    );
    r.finish(None);
    assert!(r.ok, "{}", r.summary());
    Ok(())
}

#[test]
fn a_watermark_regression_fails_the_run_without_verify() -> Result<(), Box<dyn std::error::Error>> {
    let mut out = outcome(100)?;
    out.stats.watermark_regressions = 1;
    let mut r = Report::new(&out, (100, 10, 1000), 1, 1, info(), serde_json::Value::Null);
    r.finish(None);
    assert!(!r.ok, "{}", r.summary());
    assert_eq!(r.watermark_regressions, 1);
    assert!(
        r.failures
            .iter()
            .any(|f| f.contains("lost acknowledged batches")),
        "{:?}",
        r.failures
    );
    let json = serde_json::to_value(&r)?;
    assert_eq!(json["ok"], false);
    assert_eq!(json["watermark_regressions"], 1);
    Ok(())
}

/// Issue 70: 798 refusals that the server counted as `count_too_late`
/// were blamed on the clocks. A diagnosis comes from the server's code.
#[test]
fn refusals_are_diagnosed_by_the_servers_code_not_guessed() -> Result<(), Box<dyn std::error::Error>>
{
    use tillstream_protocol::RejectCode;
    let mut out = outcome(1_000)?;
    let report = |out: &RunOutcome, info| {
        Report::new(out, (1_000, 10, 1000), 1, 1, info, serde_json::Value::Null)
    };
    assert!(
        report(&out, info()).rejected_notes().is_empty(),
        "none refused"
    );
    out.events_rejected = 798;
    out.stats
        .rejected_by_code
        .insert(RejectCode::CountTooLate.as_u16(), 798);
    let r = report(&out, info());
    assert_eq!(r.rejected_by_code.get("count_too_late"), Some(&798));
    let json = serde_json::to_value(&r)?;
    assert_eq!(json["rejected_by_code"]["count_too_late"], 798);
    let notes = r.rejected_notes();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].starts_with("count_too_late: 798 "), "{}", notes[0]);
    assert!(notes[0].contains("1,024 movements"), "{}", notes[0]);
    assert!(
        !notes[0].contains("clock"),
        "a count refused as too late says nothing of clocks: {}",
        notes[0]
    );
    let text = r.summary();
    assert!(
        text.contains("rejected events by the server's code: count_too_late 798"),
        "{text}"
    );
    assert!(!text.contains("future_timestamp"), "{text}");

    // The clocks where, and only where, the server said future_timestamp.
    out.events_rejected = 810;
    out.stats
        .rejected_by_code
        .insert(RejectCode::FutureTimestamp.as_u16(), 12);
    let notes = report(&out, info()).rejected_notes();
    assert_eq!(notes.len(), 2, "{notes:?}");
    let clocks = notes
        .iter()
        .find(|n| n.starts_with("future_timestamp: 12 "))
        .ok_or("a note for future_timestamp")?;
    assert!(clocks.contains("--max-clock-skew-s"), "{clocks}");

    // A code this build does not know: counted under its number, and
    // not explained.
    out.stats.rejected_by_code.insert(177, 1);
    let r = report(&out, info());
    assert_eq!(r.rejected_by_code.get("code_177"), Some(&1));
    let unknown = r
        .rejected_notes()
        .into_iter()
        .find(|n| n.starts_with("code_177: 1 "))
        .ok_or("a note for code 177")?;
    assert!(unknown.contains("unknown to this build"), "{unknown}");
    // A replayed file makes no shelf counts: the code's own meaning, no
    // word about the generator.
    let csv = GeneratorInfo {
        mode: "csv",
        ..info()
    };
    let notes = report(&out, csv).rejected_notes();
    assert!(notes.iter().all(|n| !n.contains("generator")), "{notes:?}");
    Ok(())
}

#[test]
fn a_run_the_server_spent_under_memory_pressure_says_so() -> Result<(), Box<dyn std::error::Error>>
{
    let out = outcome(1_000)?;
    let mut r = Report::new(
        &out,
        (1_000, 10, 1000),
        1,
        1,
        info(),
        serde_json::Value::Null,
    );
    assert!(r.memory_pressure_note().is_none(), "not read");
    r.server_memory_pressure = Some(ServerMemoryPressure {
        seconds: 0,
        at_end: false,
    });
    assert!(r.memory_pressure_note().is_none(), "none");
    r.server_memory_pressure = Some(ServerMemoryPressure {
        seconds: 12,
        at_end: true,
    });
    let why = r.memory_pressure_note().ok_or("12 s under pressure")?;
    assert!(
        why.contains("for 12 s of the run, and still was at its end"),
        "{why}"
    );
    assert!(
        r.summary()
            .contains("note: the server was past its memory soft limit")
    );
    let json = serde_json::to_value(&r)?;
    assert_eq!(json["server_memory_pressure"]["seconds"], 12);
    // Under it for less than a second, at the end: still named.
    r.server_memory_pressure = Some(ServerMemoryPressure {
        seconds: 0,
        at_end: true,
    });
    assert!(r.memory_pressure_note().is_some());
    Ok(())
}

#[test]
fn redirects_are_reported_next_to_reconnects() -> Result<(), Box<dyn std::error::Error>> {
    let mut out = outcome(100)?;
    let r = Report::new(&out, (100, 10, 1000), 1, 1, info(), serde_json::Value::Null);
    assert!(!r.summary().contains("redirects"), "none, none said");
    out.stats.reconnects = 2;
    out.stats.redirects = 3;
    let r = Report::new(&out, (100, 10, 1000), 1, 1, info(), serde_json::Value::Null);
    let json = serde_json::to_value(&r)?;
    assert_eq!(json["reconnects"], 2);
    assert_eq!(json["redirects"], 3);
    let keys: Vec<&String> = json.as_object().ok_or("an object")?.keys().collect();
    let at = |k: &str| keys.iter().position(|x| *x == k);
    assert_eq!(at("redirects"), at("reconnects").map(|i| i + 1));
    assert!(r.summary().contains("redirects 3 ("), "{}", r.summary());
    Ok(())
}
