//! Starting and stopping a server: the store, the shards, the flusher, the
//! QUIC endpoint and its accept loop, and the HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tillstream_engine_core::shard::ShardConfig;
use tillstream_engine_core::validate::Rules;
use tillstream_storage::{Backend, Store};
use tokio::sync::watch;

use crate::auth::{self, Auth};
use crate::config::StoreChoice;
use crate::ctx::EngineCtx;
use crate::devices::Devices;
use crate::flusher::{self, FlushSettings};
use crate::live_limits::{LimitChange, LiveLimits, ReloadableLimits};
use crate::recovery;
use crate::rowpool::RowSetPool;
use crate::sequencer::Sequencer;
use crate::shards::{self, ShardHandle, ShardMsg};
use crate::wire::FrameBudget;
use crate::{EngineError, ServerConfig, ServerSettings, accept, http, passivate, tls, udp};

/// Row sets the pool keeps for the shards (`rowpool`): the parts in flight
/// between apply and the end of their materialization, two flushes' worth
/// at peak (a 50 ms flush at 400 k events/s is ~160 batches, ~320 parts).
const ROW_SETS_KEPT: usize = 1024;

/// How long shutdown waits for each of its last steps: shard actors to
/// stop, connections to close, sessions to let go of the context.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A running server.
#[derive(Debug)]
pub struct Server {
    quic_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    cert_path: PathBuf,
    signing_key: Option<PathBuf>,
    store: Arc<dyn Backend>,
    settings: ServerSettings,
    ctx: Arc<EngineCtx>,
    endpoint: quinn::Endpoint,
    shutdown_tx: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
    http: Option<tokio::task::JoinHandle<()>>,
    flusher: tokio::task::JoinHandle<()>,
    sequencer: Arc<Sequencer>,
    journal_writer: std::thread::JoinHandle<()>,
    drain_timeout: Duration,
}

impl Server {
    /// Opens the store, binds the sockets and starts every task.
    pub async fn start(cfg: ServerConfig) -> Result<Server, EngineError> {
        // The recorder first: a metric handle taken before it is installed
        // (the shards take theirs when they start) records nothing.
        let _ = crate::metrics::handle();
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| EngineError::Io {
            what: "creating the data directory",
            path: cfg.data_dir.clone(),
            source,
        })?;
        let material = tls::load_or_create(cfg.tls.as_ref(), &cfg.data_dir)?;
        if material.created {
            tracing::info!(cert = %material.trust_path.display(), "created a self-signed development certificate; devices must trust this file");
        }
        let auth = Arc::new(Auth::start(&cfg.auth, &cfg.data_dir)?);
        let quic_cfg = tls::quic_server_config(
            &material,
            auth.client_ca(),
            cfg.quic_window_bytes,
            cfg.idle_timeout,
        )?;

        let (choice, dir) = (cfg.store.clone(), cfg.data_dir.clone());
        let (journal_dir, fail_after) = (cfg.journal_dir.clone(), cfg.faults.fail_sync_after);
        let backend = tokio::task::spawn_blocking(move || {
            crate::backend::open_backend(&choice, &dir, journal_dir.as_deref(), fail_after)
        })
        .await
        .map_err(|e| EngineError::Actor(e.to_string()))??;
        // Queries read the backend itself; the write path may go through
        // injected faults.
        let store: Arc<dyn Store> = cfg.faults.wrap(backend.clone());
        let shard_count = cfg.shards.max(1);
        let rules = Rules {
            max_future_us: i64::try_from(cfg.max_clock_skew.as_secs())
                .unwrap_or(i64::MAX / 1_000_000)
                .clamp(1, i64::from(u32::MAX))
                * 1_000_000,
            ..Rules::default()
        };
        let cfg_of = move |id| ShardConfig {
            id,
            shards: shard_count,
            rules,
            ..ShardConfig::default()
        };
        // What the journal holds beyond the tables goes into them before
        // any device is served: watermarks and activations then read
        // everything that was ever acknowledged.
        let replay_store = store.clone();
        let replay_started = std::time::Instant::now();
        let (replayed, cores) = tokio::task::spawn_blocking(move || {
            recovery::replay(&*replay_store, shard_count, rules, cfg_of)
        })
        .await
        .map_err(|e| EngineError::Actor(e.to_string()))??;
        crate::metrics::recovered(replayed.records, replay_started.elapsed());
        let materialized = watch::Sender::new(replayed.checkpoint);
        // Enough for the parts in flight between the shards and the flusher.
        let row_sets = Arc::new(RowSetPool::new(ROW_SETS_KEPT));
        let shards = shards::spawn_shards(
            cores,
            store.clone(),
            &materialized.subscribe(),
            cfg.max_inflight_bytes_per_shard,
            &row_sets,
        )
        .await?;
        let (sequencer, journal_writer) = Sequencer::start(store.clone(), replayed.checkpoint)
            .map_err(|source| EngineError::Io {
                what: "starting the journal writer",
                path: cfg.data_dir.clone(),
                source,
            })?;
        let failed = watch::Sender::new(false);
        let (flush, flusher) = flusher::spawn(
            store.clone(),
            replayed.checkpoint,
            &sequencer,
            failed.subscribe(),
            materialized.clone(),
            FlushSettings {
                interval: cfg.flush_interval,
                max_rows: cfg.flush_max_rows,
                // A quarter of one shard's budget (every shard's is the
                // same), against the permits of all shards together: no
                // shard then holds more than a quarter of its own, so a
                // write starts well before any reader waits for permits,
                // however the load falls across the shards.
                max_permits: shards
                    .first()
                    .map_or(usize::MAX, |s| s.budget_units as usize / 4),
                sync_every: Duration::from_millis(500),
                queue: 4096,
            },
            row_sets.clone(),
        );
        let ctx = Arc::new(EngineCtx {
            store,
            devices: Devices::new(cfg.limits.max_events_per_batch),
            shards,
            shard_count,
            sequencer: sequencer.clone(),
            flush,
            limits: cfg.limits,
            rules,
            draining: AtomicBool::new(false),
            ack_stall_not_ready: cfg.ack_stall_not_ready,
            ack_write_deadline: cfg.ack_write_deadline,
            live: LiveLimits::new(ReloadableLimits::of(&cfg)),
            hello_timeout: cfg.hello_timeout,
            auth: auth.clone(),
            frame_budget: FrameBudget {
                bytes: Arc::new(tokio::sync::Semaphore::new(
                    cfg.max_frame_buffer_bytes.clamp(
                        cfg.limits.max_frame_bytes as usize,
                        tokio::sync::Semaphore::MAX_PERMITS,
                    ),
                )),
                deadline: cfg.frame_deadline.max(Duration::from_millis(100)),
            },
            failed,
            connections: AtomicUsize::new(0),
            cluster: std::sync::OnceLock::new(),
        });

        let listen = cfg.listen;
        let bind_err = |source| EngineError::Bind {
            addr: listen,
            source,
        };
        let (socket, udp_socket) = udp::bind(cfg.listen).map_err(bind_err)?;
        // GSO batches under 64 KiB: `tillstream_socket::gso`. The server's
        // own packets stay at QUIC's first size: it runs no path MTU
        // discovery (`tls::quic_server_config`).
        let socket = tillstream_socket::gso::quic_socket(
            socket,
            tillstream_socket::gso::MIN_MTU,
            &quinn::TokioRuntime,
        )
        .map_err(bind_err)?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            tls::endpoint_config(&cfg.data_dir, cfg.quic_max_udp_payload)?,
            Some(quic_cfg),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_err)?;
        let quic_addr = endpoint.local_addr().map_err(bind_err)?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        if let Some(cc) = &cfg.cluster {
            let cluster = join_cluster(&cfg, cc, quic_addr, auth.enabled()).await?;
            let _ = ctx.cluster.set(cluster.clone());
            tokio::spawn(crate::cluster::run(
                cluster,
                ctx.clone(),
                shutdown_rx.clone(),
            ));
        }
        let accept = tokio::spawn(accept::accept_loop(
            endpoint.clone(),
            ctx.clone(),
            shutdown_rx.clone(),
            accept::AdmissionLimits {
                max_handshakes: cfg.max_handshakes,
                max_wait: cfg.handshake_max_wait,
            },
            cfg.drain_timeout,
        ));

        let settings = ServerSettings {
            shards: shard_count,
            flush_interval_ms: u64::try_from(cfg.flush_interval.as_millis()).unwrap_or(u64::MAX),
            flush_max_rows: cfg.flush_max_rows,
            max_inflight_bytes_per_shard: cfg.max_inflight_bytes_per_shard,
            backend: ctx.store.backend().to_string(),
            max_events_per_batch: cfg.limits.max_events_per_batch,
            max_inflight_batches: cfg.limits.max_inflight_batches,
            passivate_after_s: cfg.passivate_after.as_secs(),
            max_clock_skew_s: cfg.max_clock_skew.as_secs(),
            quic_max_udp_payload: cfg.quic_max_udp_payload,
            auth: match (auth.enabled(), cfg.auth.tokens, auth.client_ca().is_some()) {
                (false, _, _) => "none",
                (true, true, true) => "token+certificate",
                (true, true, false) => "token",
                (true, false, true) => "certificate",
                (true, false, false) => "api-only",
            }
            .to_string(),
        };
        tokio::spawn(crate::runtime_lag::run(shutdown_rx.clone()));
        tokio::spawn(auth::run_sweeper(auth.clone(), shutdown_rx.clone()));
        tokio::spawn(crate::silence::run(backend.clone(), shutdown_rx.clone()));
        tokio::spawn(passivate::run(
            ctx.clone(),
            cfg.passivate_after,
            materialized.subscribe(),
            row_sets.clone(),
            cfg.release_memory,
            shutdown_rx.clone(),
        ));
        if cfg.memory_soft_limit_bytes > 0 {
            tokio::spawn(crate::memory_limit::run(
                ctx.clone(),
                row_sets,
                cfg.memory_soft_limit_bytes,
                cfg.purge_soon,
                shutdown_rx.clone(),
            ));
        }
        let (http_addr, http) = match cfg.http {
            Some(addr) => {
                let (bound, join) = http::serve(
                    addr,
                    http::HttpState {
                        ctx: ctx.clone(),
                        store: backend.clone(),
                        settings: settings.clone(),
                        udp: udp_socket,
                        credentials: crate::backup::CredentialSources {
                            data_dir: cfg.data_dir.clone(),
                            tls: cfg.tls.clone(),
                        },
                    },
                    shutdown_rx,
                )
                .await?;
                (Some(bound), Some(join))
            }
            None => (None, None),
        };
        tracing::info!(%quic_addr, http = ?http_addr, shards = shard_count, data_dir = %cfg.data_dir.display(), "tillstream serving");
        Ok(Server {
            quic_addr,
            http_addr,
            cert_path: material.trust_path,
            signing_key: auth
                .enabled()
                .then(|| cfg.data_dir.join(tillstream_auth::token::SIGNING_KEY)),
            store: backend,
            settings,
            ctx,
            endpoint,
            shutdown_tx,
            accept,
            http,
            flusher,
            sequencer,
            journal_writer,
            drain_timeout: cfg.drain_timeout,
        })
    }

    /// Every shard's counters and gauges (entities resident, parts
    /// applied), asked of the shard actors: they answer between batches.
    pub async fn shard_stats(&self) -> Vec<tillstream_engine_core::shard::ShardStats> {
        let mut out = Vec::with_capacity(self.ctx.shards.len());
        for shard in &self.ctx.shards {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if shard.actor.send_message(ShardMsg::Stats(tx)).is_ok()
                && let Ok(s) = rx.await
            {
                out.push(s);
            }
        }
        out
    }

    /// The QUIC address devices connect to.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The HTTP API address, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// PEM of the certificate devices must trust.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The key that signs device and API tokens (`tillstream token issue`
    /// uses it); `None` when authentication is off.
    pub fn signing_key_path(&self) -> Option<&Path> {
        self.signing_key.as_deref()
    }

    /// The store, for in-process verification and queries.
    pub fn store(&self) -> Arc<dyn Backend> {
        self.store.clone()
    }

    /// The settings in force.
    pub fn settings(&self) -> ServerSettings {
        self.settings.clone()
    }

    /// Waits (up to `limit`) until the tables hold every batch
    /// acknowledged so far; false if they did not catch up in time.
    pub async fn tables_caught_up(&self, limit: Duration) -> bool {
        self.ctx.tables_caught_up(limit).await
    }

    /// The limits in force (those a reload may change).
    pub fn limits(&self) -> ReloadableLimits {
        self.ctx.live.get()
    }

    /// Puts new limits in force without dropping a connection (the next
    /// connection or batch meets them), and reads the revocation list now,
    /// closing the connections of credentials revoked since the last look.
    /// Returns the limits that changed. What SIGHUP does.
    pub fn reload(&self, limits: ReloadableLimits) -> Result<Vec<LimitChange>, EngineError> {
        let changed = self.ctx.live.set(limits);
        crate::metrics::config_reloaded(true);
        for c in &changed {
            tracing::info!(
                setting = c.setting,
                old = c.old,
                new = c.new,
                "limit reloaded"
            );
        }
        self.ctx.auth.sweep()?;
        Ok(changed)
    }

    /// Reads the token keys again, the signing key and the accepted
    /// previous keys (`DATA_DIR/auth/previous-keys/*.key`), and puts them
    /// in force; closes the connections whose token's key is no longer
    /// accepted. A key file that does not load changes nothing (the error
    /// names it). What SIGHUP does besides [`Server::reload`]; `None` when
    /// authentication is off.
    pub fn reload_keys(&self) -> Result<Option<crate::TokenKeys>, EngineError> {
        self.ctx.auth.reload_keys()
    }

    /// The token keys in force, by id; `None` when authentication is off.
    pub fn token_keys(&self) -> Option<crate::TokenKeys> {
        self.ctx.auth.token_keys()
    }

    /// Counts a reload whose settings could not be read (the limits in
    /// force stay): `tillstream_config_last_reload_successful` drops to 0.
    pub fn reload_refused(&self) {
        crate::metrics::config_reloaded(false);
    }

    /// Devices seen since start.
    pub fn devices_seen(&self) -> usize {
        self.ctx.devices.len()
    }

    /// Drains: refuses new sessions, stops reading batches, commits and
    /// acknowledges what was read, closes connections (after at most the
    /// drain timeout), then stops the shards and the flusher.
    pub async fn shutdown(self) -> Result<(), EngineError> {
        // In a cluster, the stores go to other nodes first, so their
        // devices move while this one still answers them.
        if let Some(c) = self.ctx.cluster.get() {
            crate::cluster::leave(c, &self.ctx).await;
        }
        self.ctx.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown_tx.send(true);
        let _ = self.accept.await;
        self.endpoint.close(
            quinn::VarInt::from_u32(u32::from(tillstream_protocol::ErrorCode::Draining.as_u16())),
            b"server shutting down",
        );
        if let Some(h) = self.http {
            let _ = h.await;
        }
        let shards: Vec<ShardHandle> = self.ctx.shards.clone();
        let ctx_held = Arc::downgrade(&self.ctx);
        let store = self.ctx.store.clone();
        // The flusher ends once every sender (the context's included) is gone.
        drop(self.ctx);
        if tokio::time::timeout(self.drain_timeout, self.flusher)
            .await
            .is_err()
        {
            // Nothing acknowledged is lost: the journal holds it, and the
            // next start replays it. But until then the tables trail what
            // devices were told is stored, and a reader of the tables
            // (verify, an analyst) would see them short.
            let journaled = self.sequencer.subscribe().borrow().durable;
            let materialized = tokio::task::spawn_blocking(move || store.materialized_lsn())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            tracing::warn!(
                drain_timeout_s = self.drain_timeout.as_secs(),
                materialized,
                journaled,
                "the drain timeout passed before the tables caught up with the journal: the tables hold LSNs up to {materialized} of {journaled}; the next start replays the rest (nothing acknowledged is lost)"
            );
        }
        self.sequencer.close();
        let writer = self.journal_writer;
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        // Stopped and waited for: each actor holds the store, and a store
        // still open when this returns is still locked, so reopening it
        // at once (a restart in the same process) failed now and then
        // with "another process has it open".
        for s in shards {
            let _ = s.actor.stop_and_wait(None, Some(STOP_WAIT)).await;
        }
        let _ = tokio::time::timeout(STOP_WAIT, self.endpoint.wait_idle()).await;
        // Sessions ending hold the context, and with it the store, a
        // little longer than their connections.
        let since = tokio::time::Instant::now();
        while ctx_held.strong_count() > 0 && since.elapsed() < STOP_WAIT {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if ctx_held.strong_count() > 0 {
            tracing::warn!("tasks still hold the server's context after shutdown");
        }
        tracing::info!(
            waited_ms = since.elapsed().as_millis() as u64,
            "tillstream stopped"
        );
        Ok(())
    }
}

/// Checks that `--cluster` fits the other settings, and joins.
async fn join_cluster(
    cfg: &ServerConfig,
    cc: &crate::config::ClusterConfig,
    quic_addr: SocketAddr,
    auth_on: bool,
) -> Result<Arc<crate::cluster::Cluster>, EngineError> {
    let StoreChoice::Scylla(scylla) = &cfg.store else {
        return Err(EngineError::Config(
            "--cluster needs --store scylla: the nodes share the cluster's tables".into(),
        ));
    };
    if !auth_on {
        return Err(EngineError::Config(
            "--cluster needs device authentication: a device's store, which decides its node, comes from its credential".into(),
        ));
    }
    let quic = match &cc.advertise_quic {
        Some(a) => a.clone(),
        None if quic_addr.ip().is_unspecified() => {
            return Err(EngineError::Config(format!(
                "--cluster: the QUIC address {quic_addr} is a wildcard, which devices sent here cannot dial; give --advertise host:port"
            )));
        }
        None => quic_addr.to_string(),
    };
    let http = cc
        .advertise_http
        .clone()
        .or_else(|| cfg.http.map(|a| a.to_string()))
        .unwrap_or_default();
    Ok(crate::cluster::Cluster::join(scylla.clone(), quic, http).await?)
}
