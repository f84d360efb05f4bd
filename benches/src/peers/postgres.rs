//! PostgreSQL: the generator's events (values, not frames) as rows of a
//! `sales` table (sales and refunds), a `sale_lines` table and a
//! `device_health` table, written with binary COPY in transactions of
//! about `--pg-txn-events` events, `synchronous_commit = on`, `fsync = on`.
//! `--pg-connections` connections in parallel, each owning every n-th
//! device and taking its devices' batches in the order they were
//! generated; the COMMIT is the ack of every batch in the transaction, and
//! a batch's latency runs from its transaction's start to the COMMIT.
//!
//! The tables have no indexes or constraints: the cheapest durable insert
//! PostgreSQL offers.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use tillstream_protocol::{Event, SaleLine, Tender};
use tokio::task::JoinSet;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use crate::procs::{self, ServerProc};
use crate::tally::{Measured, Tally};
use crate::workload::Prepared;
use crate::{Settings, Started};

/// What an ack promises.
pub(crate) const DURABILITY: &str = "COMMIT returned: the transaction's WAL is flushed with fsync \
     (synchronous_commit = on, fsync = on): survives a crash or power loss";

const SCHEMA: &str = "
CREATE TABLE sales (
    device bigint NOT NULL, seq bigint NOT NULL, ts_us bigint NOT NULL,
    store integer NOT NULL, terminal integer NOT NULL, operator integer NOT NULL,
    txn bytea NOT NULL, refund boolean NOT NULL, original_txn bytea,
    currency text NOT NULL, customer bigint,
    tender_methods smallint[] NOT NULL, tender_amounts bigint[] NOT NULL,
    tender_tips bigint[] NOT NULL);
CREATE TABLE sale_lines (
    txn bytea NOT NULL, line smallint NOT NULL, sku bigint NOT NULL,
    quantity integer NOT NULL, unit_price bigint NOT NULL,
    discount bigint NOT NULL, tax bigint NOT NULL);
CREATE TABLE device_health (
    device bigint NOT NULL, seq bigint NOT NULL, ts_us bigint NOT NULL,
    store integer NOT NULL, battery_pct smallint NOT NULL,
    temperature_dc smallint NOT NULL, uptime_s bigint NOT NULL,
    queue_depth bigint NOT NULL, rssi_dbm smallint NOT NULL);
";

const SALES_COLS: [Type; 14] = [
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT4,
    Type::INT4,
    Type::INT4,
    Type::BYTEA,
    Type::BOOL,
    Type::BYTEA,
    Type::TEXT,
    Type::INT8,
    Type::INT2_ARRAY,
    Type::INT8_ARRAY,
    Type::INT8_ARRAY,
];
const LINE_COLS: [Type; 7] = [
    Type::BYTEA,
    Type::INT2,
    Type::INT8,
    Type::INT4,
    Type::INT8,
    Type::INT8,
    Type::INT8,
];
const HEALTH_COLS: [Type; 9] = [
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT4,
    Type::INT2,
    Type::INT2,
    Type::INT8,
    Type::INT8,
    Type::INT2,
];

/// The newest `/usr/lib/postgresql/N/bin`.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// uid and gid of the `postgres` user (postgres refuses to run as root).
fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres"))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .context("no postgres user in /etc/passwd")
}

fn chown(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}

/// Installs, initdb's, starts the server; runs the fleet; stops it.
pub(crate) async fn run(
    prep: &Prepared,
    s: &Settings,
    started: &mut Started,
) -> anyhow::Result<Measured> {
    let bin = match bin_dir() {
        Some(b) => b,
        None if s.install => {
            procs::apt_install("postgresql")?;
            bin_dir().context("no /usr/lib/postgresql/*/bin/postgres after installing")?
        }
        None => bail!("PostgreSQL not found (and --no-install was given)"),
    };
    started.server = procs::version_line(&bin.join("postgres"), &["--version"]);
    let (uid, gid) = postgres_user()?;
    let dir = tempfile::Builder::new()
        .prefix("tillstream-peers-pg")
        .tempdir()
        .context("creating a temporary directory")?;
    // The postgres user owns the whole temporary directory.
    chown(dir.path(), uid, gid)?;
    let data = dir.path().join("data");
    let out = Command::new(bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
        .uid(uid)
        .gid(gid)
        .current_dir(dir.path())
        .output()
        .context("running initdb")?;
    if !out.status.success() {
        bail!(
            "initdb failed: {}",
            procs::tail(&String::from_utf8_lossy(&out.stderr), 4)
        );
    }
    let port = procs::free_port()?;
    let proc = ServerProc::spawn(
        "postgres",
        Command::new(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .uid(uid)
            .gid(gid)
            .current_dir(dir.path()),
        &dir.path().join("postgres.log"),
    )?;
    let result = proc
        .measure(
            port,
            Duration::from_secs(60),
            s.give_up_after,
            measure(prep, s, port),
        )
        .await;
    drop(dir);
    result
}

async fn connect(port: u16) -> anyhow::Result<Client> {
    let conn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    // Accepting TCP comes a moment before accepting sessions.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio_postgres::connect(&conn, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        eprintln!("[peers] postgres connection: {e}");
                    }
                });
                return Ok(client);
            }
            Err(e) if Instant::now() >= deadline => return Err(e).context("connecting"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One batch of one device: its events and where it stands in the run.
#[derive(Debug, Clone, Copy)]
struct BatchRef<'a> {
    device: u64,
    seq: u64,
    due: u64,
    events: &'a [Event],
}

/// Groups `batches` (in order) into transactions of at least `txn_events`
/// events (the last one may hold fewer).
fn transactions<T>(batches: Vec<T>, size: impl Fn(&T) -> usize, txn_events: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut n = 0;
    for b in batches {
        n += size(&b);
        cur.push(b);
        if n >= txn_events.max(1) {
            out.push(std::mem::take(&mut cur));
            n = 0;
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

async fn measure(prep: &Prepared, s: &Settings, port: u16) -> anyhow::Result<Measured> {
    let admin = connect(port).await?;
    admin
        .batch_execute(SCHEMA)
        .await
        .context("creating the tables")?;
    let conns = s.pg_connections.max(1);
    // Each connection's batches, in the order they were generated.
    let mut owned: Vec<Vec<BatchRef<'_>>> = vec![Vec::new(); conns];
    for (i, (plan, rows)) in prep.work.devices.iter().zip(&prep.rows).enumerate() {
        for (b, events) in plan.batches.iter().zip(&rows.events) {
            owned[i % conns].push(BatchRef {
                device: rows.device,
                seq: b.batch.seq,
                due: b.due_event,
                events,
            });
        }
    }
    // Owned copies, made before the clock starts: the tasks outlive `prep`'s borrow.
    let mut work = Vec::new();
    for mut batches in owned {
        batches.sort_by_key(|b| b.due);
        let txns: Vec<Vec<OwnedBatch>> = transactions(batches, |b| b.events.len(), s.pg_txn_events)
            .into_iter()
            .map(|t| t.into_iter().map(OwnedBatch::from).collect())
            .collect();
        work.push((connect(port).await?, txns));
    }

    let tally = Tally::start()?;
    let mut tasks = JoinSet::new();
    for (mut client, txns) in work {
        let tally = tally.clone();
        tasks.spawn(async move {
            for txn in txns {
                let sent = Instant::now();
                write_transaction(&mut client, &txn).await?;
                let at = Instant::now();
                for b in &txn {
                    tally.ack(sent, at, u32::try_from(b.events.len()).unwrap_or(u32::MAX));
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.context("connection task").and_then(|r| r) {
            tasks.abort_all();
            return Err(e);
        }
    }
    let m = tally.finish();
    let row = admin
        .query_one(
            "SELECT (SELECT count(*) FROM sales) + (SELECT count(*) FROM device_health)",
            &[],
        )
        .await?;
    let stored: i64 = row.get(0);
    if u64::try_from(stored).ok() != Some(m.events) {
        bail!(
            "the tables hold {stored} events, {} were acknowledged",
            m.events
        );
    }
    Ok(m)
}

/// A batch the connection task owns.
#[derive(Debug, Clone)]
struct OwnedBatch {
    device: u64,
    seq: u64,
    events: Vec<Event>,
}

impl From<BatchRef<'_>> for OwnedBatch {
    fn from(b: BatchRef<'_>) -> Self {
        Self {
            device: b.device,
            seq: b.seq,
            events: b.events.to_vec(),
        }
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

struct Tenders {
    methods: Vec<i16>,
    amounts: Vec<i64>,
    tips: Vec<i64>,
}

fn tenders(t: &[Tender]) -> Tenders {
    Tenders {
        methods: t.iter().map(|t| t.method as i16).collect(),
        amounts: t.iter().map(|t| t.amount).collect(),
        tips: t.iter().map(|t| t.tip).collect(),
    }
}

async fn write_lines(
    w: std::pin::Pin<&mut BinaryCopyInWriter>,
    txn: &[u8],
    lines: &[SaleLine],
) -> anyhow::Result<()> {
    let mut w = w;
    for (i, l) in lines.iter().enumerate() {
        let line = i16::try_from(i).unwrap_or(i16::MAX);
        let row: [&(dyn ToSql + Sync); 7] = [
            &txn,
            &line,
            &i64_of(l.sku),
            &l.quantity,
            &l.unit_price,
            &l.discount,
            &l.tax,
        ];
        w.as_mut().write(&row).await?;
    }
    Ok(())
}

/// The fields of a sale or refund that go into its `sales` row.
struct SaleHead<'a> {
    ts_us: i64,
    store: u32,
    terminal: u32,
    operator: u32,
    txn: &'a [u8],
    refund: bool,
    original: Option<&'a [u8]>,
    currency: &'a [u8],
    customer: Option<i64>,
    tenders: &'a [Tender],
}

/// One `sales` row.
async fn write_sale(
    w: std::pin::Pin<&mut BinaryCopyInWriter>,
    device: i64,
    seq: i64,
    h: &SaleHead<'_>,
) -> anyhow::Result<()> {
    let t = tenders(h.tenders);
    let currency = String::from_utf8_lossy(h.currency).into_owned();
    let row: [&(dyn ToSql + Sync); 14] = [
        &device,
        &seq,
        &h.ts_us,
        &i32_of(h.store),
        &i32_of(h.terminal),
        &i32_of(h.operator),
        &h.txn,
        &h.refund,
        &h.original,
        &currency,
        &h.customer,
        &t.methods,
        &t.amounts,
        &t.tips,
    ];
    w.write(&row).await?;
    Ok(())
}

/// One transaction: three binary COPYs and a COMMIT.
async fn write_transaction(client: &mut Client, txn: &[OwnedBatch]) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    let sales = tx
        .copy_in::<_, Bytes>(
            "COPY sales (device, seq, ts_us, store, terminal, operator, txn, refund, \
             original_txn, currency, customer, tender_methods, tender_amounts, tender_tips) \
             FROM STDIN BINARY",
        )
        .await?;
    let mut sales = std::pin::pin!(BinaryCopyInWriter::new(sales, &SALES_COLS));
    let mut health = Vec::new();
    for b in txn {
        let (device, seq) = (i64_of(b.device), i64_of(b.seq));
        for ev in &b.events {
            match ev {
                Event::Sale(e) => {
                    let head = SaleHead {
                        ts_us: e.ts_us,
                        store: e.store,
                        terminal: e.terminal,
                        operator: e.operator,
                        txn: &e.txn,
                        refund: false,
                        original: None,
                        currency: &e.currency,
                        customer: e.customer.map(i64_of),
                        tenders: &e.tenders,
                    };
                    write_sale(sales.as_mut(), device, seq, &head).await?;
                }
                Event::Refund(e) => {
                    let head = SaleHead {
                        ts_us: e.ts_us,
                        store: e.store,
                        terminal: e.terminal,
                        operator: e.operator,
                        txn: &e.txn,
                        refund: true,
                        original: e.original_txn.as_ref().map(|o| &o[..]),
                        currency: &e.currency,
                        customer: None,
                        tenders: &e.tenders,
                    };
                    write_sale(sales.as_mut(), device, seq, &head).await?;
                }
                Event::Health(h) => health.push((device, seq, *h)),
                Event::Movement(_) | Event::Count(_) => {
                    bail!("a till sent a stock movement or count: not a fleet of tills")
                }
            }
        }
    }
    sales.as_mut().finish().await?;

    let lines = tx
        .copy_in::<_, Bytes>(
            "COPY sale_lines (txn, line, sku, quantity, unit_price, discount, tax) \
             FROM STDIN BINARY",
        )
        .await?;
    let mut lines = std::pin::pin!(BinaryCopyInWriter::new(lines, &LINE_COLS));
    for b in txn {
        for ev in &b.events {
            match ev {
                Event::Sale(e) => write_lines(lines.as_mut(), &e.txn, &e.lines).await?,
                Event::Refund(e) => write_lines(lines.as_mut(), &e.txn, &e.lines).await?,
                _ => {}
            }
        }
    }
    lines.as_mut().finish().await?;

    if !health.is_empty() {
        let sink = tx
            .copy_in::<_, Bytes>(
                "COPY device_health (device, seq, ts_us, store, battery_pct, temperature_dc, \
                 uptime_s, queue_depth, rssi_dbm) FROM STDIN BINARY",
            )
            .await?;
        let mut w = std::pin::pin!(BinaryCopyInWriter::new(sink, &HEALTH_COLS));
        for (device, seq, h) in &health {
            let row: [&(dyn ToSql + Sync); 9] = [
                device,
                seq,
                &h.ts_us,
                &i32_of(h.store),
                &i16::from(h.battery_pct),
                &h.temperature_dc,
                &i64::from(h.uptime_s),
                &i64::from(h.queue_depth),
                &h.rssi_dbm,
            ];
            w.as_mut().write(&row).await?;
        }
        w.as_mut().finish().await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_take_whole_batches_up_to_the_size() {
        let t = transactions(vec![128usize; 20], |b| *b, 1_000);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].len(), 8);
        assert_eq!(t[1].len(), 8);
        assert_eq!(t[2].len(), 4);
        assert_eq!(transactions(Vec::<usize>::new(), |b| *b, 1_000).len(), 0);
        assert_eq!(transactions(vec![5usize; 3], |b| *b, 0).len(), 3);
    }
}
