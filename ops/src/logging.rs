//! Logs on stderr, human or JSON, filtered by `RUST_LOG` (default `info`,
//! or what `-v`/`-q` ask for). With `--log-format json` every line on
//! stderr is JSON: the tool's own messages ([`say`]) and its final error
//! go through the same logger.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Readable lines (coloured on a terminal).
    Human,
    /// One JSON object per line.
    Json,
}

static FORMAT: OnceLock<Format> = OnceLock::new();

/// The default level for `verbosity`: -1 is `-q`, 0 none, 1 `-v`, 2 `-vv`.
fn level(verbosity: i8) -> &'static str {
    match verbosity {
        i8::MIN..=-1 => "warn,fjall=error,lsm_tree=error",
        0 => "info,fjall=warn,lsm_tree=warn",
        1 => "debug,fjall=info,lsm_tree=info,quinn=info,rustls=info,h2=info,hyper=info",
        _ => "trace",
    }
}

pub(crate) fn init(format: Format, verbosity: i8) {
    let _ = FORMAT.set(format);
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level(verbosity)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        Format::Human => builder.try_init(),
        Format::Json => builder.json().try_init(),
    };
}

/// A message for the person at the terminal (where the server listens,
/// what a command did): a plain line, or a JSON log line with
/// `--log-format json`.
pub(crate) fn say(msg: impl std::fmt::Display) {
    match FORMAT.get() {
        Some(Format::Json) => tracing::info!(target: "tillstream", "{msg}"),
        _ => eprintln!("{msg}"),
    }
}

/// The error a command ended with, in the same form.
pub(crate) fn fail(msg: impl std::fmt::Display) {
    match FORMAT.get() {
        Some(Format::Json) => tracing::error!(target: "tillstream", "{msg}"),
        _ => eprintln!("error: {msg}"),
    }
}

/// `e` and its causes, `: `-joined as `{e:#}` is, but each cause once:
/// an error whose message already ends with its source's (the engine's
/// `cannot listen on ADDR: {source}`) printed the OS error twice.
pub(crate) fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if out.ends_with(&cause) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&cause);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{chain, level};

    #[test]
    fn a_cause_the_message_already_holds_is_printed_once() {
        let os = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address in use");
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen on 127.0.0.1:7400: {0}")]
        struct Bind(#[source] std::io::Error);
        let e = anyhow::Error::new(Bind(os)).context("starting the server");
        assert_eq!(
            chain(&e),
            "starting the server: cannot listen on 127.0.0.1:7400: Address in use"
        );
        let plain = anyhow::anyhow!("no store").context("verify");
        assert_eq!(chain(&plain), format!("{plain:#}"));
    }

    #[test]
    fn quiet_and_verbose_move_the_default_level() {
        assert!(level(-1).starts_with("warn"));
        assert!(level(0).starts_with("info"));
        assert!(level(1).starts_with("debug"));
        assert_eq!(level(5), "trace");
    }
}
