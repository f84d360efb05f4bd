//! `tillstream-loadgen`: see `--help`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tillstream_loadgen::cli::Args;
use tillstream_loadgen::report::Report;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logs(format: tillstream_loadgen::cli::LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,tillstream_loadgen=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        tillstream_loadgen::cli::LogFormat::Human => builder.init(),
        tillstream_loadgen::cli::LogFormat::Json => builder.json().init(),
    }
}

fn write_report(args: &Args, report: &Report) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report).context("encoding the report")?;
    match &args.report {
        Some(path) => std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the report to {}", path.display())),
        None => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{json}").context("writing the report to stdout")
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logs(args.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // Where this runtime runs the devices and nothing of a server's, its
    // threads, and this one, which polls the run, take the devices'
    // policy (`sched` module; a refusal is logged there).
    if let Some(sched) = args.main_runtime_sched()
        && sched.apply_to_current_thread()
    {
        builder.on_thread_start(move || {
            sched.apply_to_current_thread();
        });
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(tillstream_loadgen::run::run(args.clone()));
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    eprint!("{}", report.summary());
    if let Err(e) = write_report(&args, &report) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
