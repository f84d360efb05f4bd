//! The `tillstream` command line as a library, so the end-to-end tests can
//! build the same program under another name (`tests/src/bin/`) and run it
//! as a real process they kill and restart.

use std::ffi::OsString;

use clap::{Parser, Subcommand};

mod api;
mod cli_reference;
mod commands;
mod config_file;
mod logging;
mod output;

/// tillstream: ingestion of point-of-sale telemetry (sales, refunds, stock
/// movements, shelf counts, device health) over QUIC, acknowledged only once
/// durable.
#[derive(Debug, Parser)]
#[command(
    name = "tillstream",
    version,
    after_help = "Exit codes: 0 done; 1 `verify` found a violated invariant; 2 an error (bad flags, an unreachable store, a port in use, a failed write), with the reason on stderr; 78 a bad setting (`check-config`; `serve`'s config file, its TILLSTREAM_* variables, or values it cannot use), each bad key named on stderr."
)]
struct Cli {
    /// Log format on stderr; with json, every line on stderr is JSON.
    #[arg(long, global = true, value_enum, default_value_t = logging::Format::Human, env = "TILLSTREAM_LOG_FORMAT")]
    log_format: logging::Format,
    /// More log detail (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Warnings and errors only.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: QUIC ingest, the embedded store or ScyllaDB, HTTP metrics and health.
    Serve(Box<commands::serve::Args>),
    /// Check the store's integrity (exactly-once, stock levels, rollups);
    /// prints one JSON object and exits 0 only when everything holds.
    Verify(commands::verify::Args),
    /// Read the tables: sales over time, top SKUs, stock history, low stock,
    /// device watermarks; as a table, CSV or JSON.
    Query(commands::query::Args),
    /// The ScyllaDB schema: `schema print` (for `cqlsh`), `schema apply` (on a cluster).
    Schema(commands::schema::Args),
    /// Several nodes over one keyspace (`serve --cluster`): `cluster status`.
    Cluster(commands::cluster::Args),
    /// Write one table's rows as CSV or JSON lines, streamed.
    Export(commands::export::Args),
    /// The device CA for mutual TLS: `ca init`, `ca issue`, `ca revoke`.
    Ca(commands::credentials::CaArgs),
    /// Signed tokens for devices and the HTTP API: `token issue`, `token revoke`.
    Token(commands::credentials::TokenArgs),
    /// A consistent copy of the store while the server runs (`--server-http`)
    /// or of a stopped server's data directory, and the credentials a
    /// restore needs beside it (signing key, TLS pair, device CA,
    /// revocation list; `--no-credentials` leaves them out).
    Backup(commands::backup::BackupArgs),
    /// Make a data directory from a backup: its store, verified, and its
    /// credentials where `serve` reads them.
    Restore(commands::backup::RestoreArgs),
    /// Names for SKUs and stores, shown beside their ids in query answers:
    /// `catalog import FILE.csv`.
    Catalog(commands::catalog::Args),
    /// A live view of a running server: events/s, ack latency, journal,
    /// flushes, connections, rejects and each shard's queue.
    Top(commands::top::Args),
    /// Measure shard counts and flush intervals on this machine (fresh
    /// in-process servers, the loadgen flat out) and recommend a setting.
    Tune(commands::tune::Args),
    /// How long the journal's appends (a write and an fdatasync) take on
    /// the data directory's disk, and whether it stalls: what no ack
    /// latency on that disk can be under.
    ///
    /// Appends records to a scratch journal in the data directory (removed
    /// after), as the server's journal thread does: one write (`O_DIRECT`
    /// where the file system allows) and one `fdatasync` each. Every batch
    /// that arrives during a slow append waits for it, so a disk that
    /// stalls sets the ack p99 of a lightly loaded server. Run it with the
    /// server stopped, or beside it to see what its appends meet.
    CheckDisk(commands::check_disk::Args),
    /// Check a config file of `serve` (keys, values, files, free ports);
    /// exits 78 naming the bad key.
    CheckConfig(commands::config::CheckArgs),
    /// Print a shell completion script (`tillstream completions bash >
    /// /etc/bash_completion.d/tillstream`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff; `tillstream man | man -l -`).
    Man,
    /// Print the book's command-line reference (docs/reference/cli.md).
    #[command(hide = true)]
    CliReference,
}

/// Writes `bytes` to stdout; a reader that stopped early (`| head`) is
/// not an error.
/// `println!` that returns an error instead of panicking when standard
/// output fails, and ends quietly when its reader has gone (`| head`).
#[macro_export]
#[doc(hidden)]
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::print_all(format!("{}\n", format_args!($($t)*)).as_bytes()).map(|_| ())
    };
}

pub(crate) fn print_all(bytes: &[u8]) -> anyhow::Result<std::process::ExitCode> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(std::process::ExitCode::SUCCESS),
    }
}

/// Exit code of a command that failed (as clap's for bad flags): 1 is
/// kept for `verify`'s "the store does not hold".
const EXIT_ERROR: u8 = 2;

/// Parses the process's arguments and runs the subcommand.
/// The first subcommand name in `argv` (values of `--log-format` skipped).
fn subcommand_of(argv: &[OsString]) -> Option<&str> {
    let mut it = argv.iter().skip(1).filter_map(|a| a.to_str());
    while let Some(a) = it.next() {
        match a {
            "--log-format" => {
                it.next();
            }
            a if a.starts_with('-') => {}
            a => return Some(a),
        }
    }
    None
}

/// What `serve` may ask of the process's global allocator, which the
/// binary picks and the engine does not know.
#[derive(Debug, Clone, Copy)]
pub struct AllocatorHooks {
    /// Hands the pages freed so far back to the OS (after each
    /// passivation sweep).
    pub release_memory: fn(),
    /// Returns freed pages soon (`true`: within
    /// [`PRESSURE_PURGE_DELAY_MS`]) or after the allocator's own delay
    /// (past and back under the memory soft limit).
    pub purge_soon: fn(bool),
}

/// The hooks of binaries whose global allocator is mimalloc.
pub const MIMALLOC: AllocatorHooks = AllocatorHooks {
    release_memory: mimalloc_release_memory,
    purge_soon: mimalloc_purge_soon,
};

/// Asks mimalloc to hand the pages freed so far back to the OS.
#[allow(unsafe_code)] // foreign calls std does not wrap; see SAFETY
fn mimalloc_release_memory() {
    // SAFETY: mi_collect only walks mimalloc's own bookkeeping; it may be
    // called from any thread at any time (it collects that thread's pages
    // and every arena).
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// mimalloc 3's `mi_option_purge_delay` (its place in `mi_option_e`;
/// libmimalloc-sys names no constant for it). A test checks that the
/// option read under this number is the purge delay's default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc's purge delay as the process started (its default, 1 s in
/// mimalloc 3, or what `MIMALLOC_PURGE_DELAY` set), restored when purging
/// at once ends.
static STARTING_PURGE_DELAY: std::sync::OnceLock<std::ffi::c_long> = std::sync::OnceLock::new();

#[allow(unsafe_code)] // foreign calls std does not wrap; see SAFETY
fn mimalloc_purge_delay() -> std::ffi::c_long {
    // SAFETY: reads one of mimalloc's option values; any thread, any time.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

/// mimalloc's purge delay under memory pressure, in ms: freed pages go
/// back to the OS this long after they were freed, unless allocated again
/// meanwhile.
///
/// Why not 0: at 0 every page freed was returned at once, and the next
/// allocation of its size faulted it in again. Under pressure the main
/// fleet's server (loadgen `--server --events 8000000`,
/// `--memory-soft-limit-mib 200`) took 22-25 page faults per 1,000
/// events at 0, 15-16 at 50 ms, and 12-13 with no pressure at all. The
/// pages pressure is for, freed and not wanted again soon, still go:
/// with 1 M resident SKUs (loadgen `--skus 150000`) RSS peaked at
/// 450-451 MiB at 50 ms, 425-455 at 0.
pub const PRESSURE_PURGE_DELAY_MS: std::ffi::c_long = 50;

/// Sets mimalloc's purge delay to [`PRESSURE_PURGE_DELAY_MS`] (`true`)
/// or back to what it was at the start; never above the starting delay.
#[allow(unsafe_code)] // foreign calls std does not wrap; see SAFETY
fn mimalloc_purge_soon(on: bool) {
    let starting = *STARTING_PURGE_DELAY.get_or_init(mimalloc_purge_delay);
    let delay = if on {
        starting.min(PRESSURE_PURGE_DELAY_MS)
    } else {
        starting
    };
    // SAFETY: mimalloc's options are plain integers it reads on each
    // purge decision; setting one from any thread at any time is allowed.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay) }
}

/// The `tillstream` program. `allocator` lets `serve` ask the global
/// allocator to return memory (after each passivation sweep, and past
/// the memory soft limit); the binary passes it because the binary picks
/// the allocator.
pub fn main(allocator: Option<AllocatorHooks>) -> std::process::ExitCode {
    let user_argv: Vec<OsString> = std::env::args_os().collect();
    let root = <Cli as clap::CommandFactory>::command()
        .mut_subcommand("serve", |c| c.args_override_self(true));
    // serve's settings (flags, variables, its config file) are read and
    // checked as check-config does, every problem reported at once.
    let (matches, from_file) = if subcommand_of(&user_argv) == Some("serve") {
        let file = config_file::config_flag(&user_argv);
        match commands::serve::settings::load(&root, &user_argv, file.as_deref()) {
            Ok(l) => (l.matches, l.from_file),
            Err(commands::serve::settings::LoadError::Usage(e)) => e.exit(),
            Err(commands::serve::settings::LoadError::Config(e)) => {
                for p in e.problems {
                    eprintln!("error: {p}");
                }
                return std::process::ExitCode::from(config_file::EXIT_CONFIG);
            }
        }
    } else {
        match root.clone().try_get_matches_from(&user_argv) {
            Ok(m) => (m, std::collections::BTreeSet::new()),
            Err(e) => e.exit(),
        }
    };
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // tune starts dozens of in-process servers: their session lines would
    // bury its progress bar and table, so it logs warnings unless -v.
    let tuning = matches!(cli.command, Command::Tune(_));
    let verbosity = if cli.quiet || (tuning && cli.verbose == 0) {
        -1
    } else {
        i8::try_from(cli.verbose).unwrap_or(i8::MAX)
    };
    logging::init(cli.log_format, verbosity);
    let result = match cli.command {
        Command::Serve(a) if a.print_config() => match matches.subcommand_matches("serve") {
            Some(m) => commands::config::print(m, &root, &from_file, &user_argv),
            None => Ok(std::process::ExitCode::SUCCESS),
        },
        Command::Serve(a) => {
            let started = matches
                .subcommand_matches("serve")
                .map(commands::serve::raw_values)
                .unwrap_or_default();
            commands::serve::run(
                *a,
                started,
                move || commands::serve::reread(&root, &user_argv),
                allocator,
            )
        }
        Command::CheckConfig(a) => commands::config::check(a, &root),
        Command::Verify(a) => commands::verify::run(a),
        Command::Query(a) => commands::query::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Schema(a) => commands::schema::run(a),
        Command::Cluster(a) => commands::cluster::run(a),
        Command::Ca(a) => commands::credentials::run_ca(a),
        Command::Token(a) => commands::credentials::run_token(a),
        Command::Backup(a) => commands::backup::run_backup(a),
        Command::Top(a) => commands::top::run(a),
        Command::Catalog(a) => commands::catalog::run(a),
        Command::Tune(a) => commands::tune::run(a),
        Command::CheckDisk(a) => commands::check_disk::run(a),
        Command::Restore(a) => commands::backup::run_restore(a),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "tillstream", &mut script);
            print_all(&script)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut page)
                .map_err(anyhow::Error::from)
                .and_then(|()| print_all(&page))
        }
        Command::CliReference => print_all(cli_reference::markdown().as_bytes()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            logging::fail(logging::chain(&e));
            std::process::ExitCode::from(EXIT_ERROR)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every exit code a command ends with is in the top-level --help.
    #[test]
    fn the_help_lists_every_exit_code() {
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for code in [0, 1, EXIT_ERROR, config_file::EXIT_CONFIG] {
            assert!(
                help.contains(&format!("; {code} ")) || help.contains(&format!(": {code} ")),
                "exit code {code} is not in\n{help}"
            );
        }
    }

    /// The option number names the purge delay: mimalloc 3's default for
    /// it is 1,000 ms, and no other option of its enum has that default.
    /// (A test binary's allocator is the system's, but mimalloc's options
    /// are there to read and set all the same.)
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        let starting = std::env::var("MIMALLOC_PURGE_DELAY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        assert_eq!(mimalloc_purge_delay(), starting);
        mimalloc_purge_soon(true);
        assert_eq!(
            mimalloc_purge_delay(),
            starting.min(PRESSURE_PURGE_DELAY_MS)
        );
        mimalloc_purge_soon(false);
        assert_eq!(mimalloc_purge_delay(), starting);
    }
}
