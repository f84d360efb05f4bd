//! One loadgen run from arguments to report: prepare the workload, find or
//! start the server, send, verify, report.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use std::sync::Arc;
use tillstream_auth::ca::DeviceCa;
use tillstream_engine::{AuthConfig, CertAuth, Server, ServerConfig};

use crate::cli::{Args, AuthMode};
use crate::credentials::Credentials;
use crate::fleet::{self, RunConfig};
use crate::generator::{FleetSpec, clock_start_us, with_run_id};
use crate::meter::ServerMeter;
use crate::remote::{self, Remote};
use crate::report::{GeneratorInfo, Report};
use crate::sched::DeviceSched;
use crate::workload::{self, Workload};
use crate::{replay, verify};
use tillstream_client::EndpointOptions;

/// Where the load goes.
enum Target {
    /// A server started here, over a temporary directory unless one was given.
    InProcess {
        server: Box<Server>,
        _dir: Option<tempfile::TempDir>,
    },
    /// A server elsewhere, with its HTTP API where it answers (and an
    /// admin token for it).
    Remote {
        http: Option<String>,
        bearer: Option<String>,
    },
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Builds every batch before the clock starts.
pub async fn prepare(args: &Args) -> anyhow::Result<(Workload, GeneratorInfo)> {
    let started = Instant::now();
    let a = args.clone();
    let (work, info) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut info = GeneratorInfo {
            mode: "fleet",
            stores: a.stores,
            terminals_per_store: a.terminals_per_store,
            sensors_per_store: a.sensors_per_store,
            skus: a.skus,
            batch_size: a.batch_size,
            batch_max_wait_ms: a.batch_max_wait_events().map(|_| a.batch_max_wait_ms),
            rate: a.rate,
            step_us: a.step_us(),
            csv: None,
        };
        if let Some(path) = &a.replay_csv {
            let (work, csv) = replay::build(
                path,
                a.batch_size,
                a.batch_max_wait_events(),
                a.terminals_per_store,
            )?;
            info.mode = "csv";
            info.stores = u32::try_from(csv.stores).unwrap_or(u32::MAX);
            info.sensors_per_store = 0;
            info.skus = 0;
            info.step_us = 0;
            info.csv = Some(csv);
            return Ok((work, info));
        }
        let events = a.events_to_send()?;
        let spec = FleetSpec {
            stores: a.stores,
            terminals_per_store: a.terminals_per_store,
            sensors_per_store: a.sensors_per_store,
            skus: a.skus,
            events,
            seed: a.seed,
            start_us: clock_start_us(now_us(), events, a.step_us(), a.rate),
            step_us: a.step_us(),
        };
        Ok((
            workload::build(&spec, a.batch_size, a.batch_max_wait_events())?,
            info,
        ))
    })
    .await
    .context("the generator task failed")??;
    tracing::info!(
        events = work.events,
        batches = work.batches,
        mib = work.bytes >> 20,
        secs = started.elapsed().as_secs_f64(),
        "workload prepared"
    );
    Ok((work, info))
}

/// Runs the whole benchmark and returns its report.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    args.check()?;
    let endpoint = EndpointOptions {
        max_udp_payload: args
            .quic_max_udp_payload
            .unwrap_or(tillstream_protocol::DEFAULT_MAX_UDP_PAYLOAD),
        ..EndpointOptions::default()
    };
    // A server elsewhere is asked whether it answers before a workload,
    // which may take a while, is prepared for it.
    let remote = match &args.server {
        Some(s) => Some(remote::connect(&args, s, &endpoint).await?),
        None => None,
    };
    let (mut work, info) = prepare(&args).await?;
    let totals = (work.events, work.batches, work.bytes);
    let run_id = args.run_id.unwrap_or_else(|| {
        if args.server.is_some() {
            // Seconds of the clock: a fresh id for each run a second apart.
            (now_us() / 1_000_000) as u32 & 0xff_ffff
        } else {
            0
        }
    });
    for d in &mut work.devices {
        d.device = with_run_id(d.device, run_id);
    }

    let (target, addr, seeds, ca_pem, settings, credentials) = match remote {
        Some(Remote {
            addr,
            seeds,
            ca_pem,
            credentials,
            http,
            bearer,
            settings,
        }) => (
            Target::Remote { http, bearer },
            addr,
            seeds,
            ca_pem,
            settings,
            credentials,
        ),
        None => {
            let (dir, path) = match &args.data_dir {
                Some(d) => (None, d.clone()),
                None => {
                    let t = tempfile::tempdir().context("creating a temporary data directory")?;
                    let p = t.path().to_path_buf();
                    (Some(t), p)
                }
            };
            let mut cfg = ServerConfig::new(&path);
            cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            if let Some(n) = args.shards {
                cfg.shards = n.max(1);
            }
            if let Some(ms) = args.flush_interval_ms {
                cfg.flush_interval = Duration::from_millis(ms);
            }
            if let Some(bytes) = args.quic_max_udp_payload {
                cfg.quic_max_udp_payload = bytes;
            }
            let device_ca = match args.auth {
                AuthMode::None => {
                    cfg.auth = AuthConfig::none();
                    None
                }
                AuthMode::Token => None,
                AuthMode::Certificate => {
                    let ca = match DeviceCa::load(&path) {
                        Ok(ca) => ca,
                        Err(_) => DeviceCa::init(&path).context("making the device CA")?,
                    };
                    cfg.auth.certificates = CertAuth::On;
                    Some(Arc::new(ca))
                }
            };
            let server = Server::start(cfg)
                .await
                .with_context(|| format!("starting the in-process server in {}", path.display()))?;
            let settings = server.settings();
            if args.batch_size > settings.max_events_per_batch {
                bail!(
                    "--batch-size {} is above the server's limit of {} events per batch",
                    args.batch_size,
                    settings.max_events_per_batch
                );
            }
            let pem = std::fs::read(server.cert_path())
                .with_context(|| format!("reading {}", server.cert_path().display()))?;
            let credentials = match device_ca {
                Some(ca) => Credentials::Certificates {
                    ca,
                    trust_pem: pem.clone(),
                },
                None => Credentials::of_server(&server)?,
            };
            let addr = server.quic_addr();
            let settings =
                serde_json::to_value(settings).context("encoding the server settings")?;
            tracing::info!(%addr, data = %path.display(), "in-process server started");
            (
                Target::InProcess {
                    server: Box::new(server),
                    _dir: dir,
                },
                addr,
                Vec::new(),
                pem,
                settings,
                credentials,
            )
        }
    };
    tracing::info!(auth = credentials.mode(), "devices authenticate");
    let auth_mode = credentials.mode();

    let devices = work
        .devices
        .iter()
        .filter(|d| !d.batches.is_empty())
        .count();
    let cfg = RunConfig {
        server: addr,
        seeds,
        server_name: args.server_name.clone(),
        ca_pem,
        credentials,
        rate: args.rate,
        give_up_after: Duration::from_secs(args.give_up_after),
        max_inflight: args.max_inflight,
        connect_wait: Duration::from_secs(10),
        endpoint,
    };
    // The CPU the run costs (the server's, or this whole process's) and
    // the server's own ack latency.
    // None: a server whose HTTP API does not answer (`remote`).
    let meter = match &target {
        Target::Remote { http, bearer } => http.as_ref().map(|http| ServerMeter::Remote {
            http: http.clone(),
            bearer: bearer.clone(),
        }),
        Target::InProcess { .. } => Some(ServerMeter::Own),
    };
    let before = match &meter {
        Some(m) => m.read().await,
        None => None,
    };
    let out = match args.device_threads {
        Some(threads) => {
            let sched = args.device_sched();
            on_device_runtime(threads.into(), sched, async move {
                fleet::run(work, &cfg).await
            })
            .await?
        }
        None => fleet::run(work, &cfg).await?,
    };
    let after = match &meter {
        Some(m) => m.read().await,
        None => None,
    };
    if let Some(path) = &args.manifest {
        let json =
            serde_json::to_vec(&verify::manifest(&out.acked)).context("encoding the manifest")?;
        std::fs::write(path, json)
            .with_context(|| format!("writing the manifest to {}", path.display()))?;
    }
    let mut report = Report::new(&out, totals, devices, args.seed, info, settings);
    report.run_id = run_id;
    report.auth = auth_mode.to_string();
    report.device_threads = args.device_threads;
    report.device_sched = args.device_sched().effective();
    report.cpu = meter
        .as_ref()
        .and_then(|m| m.between(before.as_ref(), after.as_ref(), out.events_acked));
    report.server_ack_latency_ms =
        ServerMeter::ack_latency_between(before.as_ref(), after.as_ref());
    report.server_journal_appends_ms =
        ServerMeter::journal_appends_between(before.as_ref(), after.as_ref());
    report.server_memory_pressure =
        ServerMeter::memory_pressure_between(before.as_ref(), after.as_ref());

    // A replay names its products and stores in the server's catalogue.
    if let Some(catalog) = report
        .generator
        .csv
        .as_ref()
        .map(|c| &c.catalog)
        .filter(|c| !c.is_empty())
    {
        let written = match &target {
            Target::InProcess { server, .. } => {
                let store = server.store();
                let catalog = catalog.clone();
                tokio::task::spawn_blocking(move || store.put_catalog(&catalog))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r.map_err(anyhow::Error::from))
            }
            Target::Remote {
                http: Some(http),
                bearer,
            } => verify::put_catalog(http, bearer.as_deref(), catalog).await,
            Target::Remote { http: None, .. } => Err(anyhow::anyhow!(
                "the server's HTTP API does not answer (pass --http URL)"
            )),
        };
        if let Err(e) = written {
            tracing::warn!(error = %format!("{e:#}"), "the replay's catalogue was not written");
        }
    }

    let verified = if args.verify {
        let expected = verify::manifest(&out.acked);
        let got = match &target {
            Target::InProcess { server, .. } => {
                // Acks mean journaled; the tables follow a flush interval later.
                server.tables_caught_up(Duration::from_secs(120)).await;
                verify::in_process(server.store(), expected).await
            }
            Target::Remote {
                http: Some(http),
                bearer,
            } => verify::remote(http, bearer.as_deref(), expected).await,
            // `remote::connect` refuses --verify without an HTTP API.
            Target::Remote { http: None, .. } => Err(anyhow::anyhow!(
                "the server's HTTP API does not answer (pass --http URL)"
            )),
        };
        Some(got.unwrap_or_else(|e| serde_json::json!({ "ok": false, "error": format!("{e:#}") })))
    } else {
        None
    };
    report.finish(verified);

    // The temporary directory, if any, goes after the server has stopped.
    let stopped = match target {
        Target::InProcess { server, .. } => server.shutdown().await,
        Target::Remote { .. } => Ok(()),
    };
    if let Err(e) = stopped {
        tracing::warn!(error = %e, "the in-process server did not shut down cleanly");
    }
    Ok(report)
}

/// Runs `fleet` on a runtime of its own with `threads` workers (apart
/// from the in-process server's, if there is one), under `sched`.
async fn on_device_runtime<T: Send + 'static>(
    threads: usize,
    sched: DeviceSched,
    fleet: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("tillstream-devices")
        .on_thread_start(move || {
            sched.apply_to_current_thread();
        })
        .enable_all()
        .build()
        .context("starting the devices' runtime")?;
    let outcome = runtime.spawn(fleet).await;
    // Dropping a runtime blocks, which an async context may not do.
    runtime.shutdown_background();
    outcome.context("the devices' runtime failed")?
}
