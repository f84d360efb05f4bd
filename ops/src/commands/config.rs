//! `tillstream check-config`, `serve --print-config`, and the one reading
//! of serve's settings (command line, variables, config file) that
//! `serve`, its SIGHUP and `check-config` share, so that what one accepts
//! the others do.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, FromArgMatches};

use super::serve::settings::{LoadError, load, serve_command, typed};
use crate::config_file;
use crate::config_file::{EXIT_CONFIG, Problem, shown};

/// Check a config file of `serve` without starting anything: every key is
/// a setting, every value parses and is in range, the settings fit
/// together (the checks `serve` makes before it starts), the files it
/// names exist, the ports it would listen on are free. Exits 0 when it
/// would start, 78 naming every bad key otherwise.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// The file (default: $TILLSTREAM_CONFIG, else ./tillstream.toml).
    file: Option<PathBuf>,
    /// Check the keys and values only, not that the files it names exist
    /// or its ports are free: for a file that will run on another machine
    /// (a Kubernetes ConfigMap checked in CI, say).
    #[arg(long)]
    no_environment: bool,
}

pub(crate) fn check(args: CheckArgs, root: &clap::Command) -> anyhow::Result<ExitCode> {
    let no_environment = args.no_environment;
    let file = args
        .file
        .or_else(|| std::env::var_os(config_file::VAR).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("tillstream.toml"));
    let refuse = |problems: Vec<Problem>| -> anyhow::Result<ExitCode> {
        for p in problems {
            // Every problem names the file: those of no key of it (a
            // variable, two keys that do not fit together) too.
            let p = if p.file.is_none() {
                p.in_file(&file)
            } else {
                p
            };
            crate::logging::fail(p);
        }
        Ok(ExitCode::from(EXIT_CONFIG))
    };
    let argv: Vec<OsString> = vec!["tillstream".into(), "serve".into()];
    let loaded = match load(root, &argv, Some(&file)) {
        Ok(l) => l,
        Err(LoadError::Config(e)) => return refuse(e.problems),
        Err(e @ LoadError::Usage(_)) => return refuse(vec![Problem::new(e.to_string())]),
    };
    let Some(serve) = loaded.matches.subcommand_matches("serve") else {
        return refuse(vec![Problem::new("no serve settings")]);
    };
    if !no_environment {
        let args = super::serve::Args::from_arg_matches(serve)?;
        let problems = match args.endpoints() {
            Ok(at) => args.environment_problems(&at),
            Err(problems) => problems,
        };
        if !problems.is_empty() {
            return refuse(problems);
        }
    }
    crate::logging::say(format!(
        "{}: ok ({} settings; `tillstream serve --config {} --print-config` shows them all)",
        file.display(),
        loaded.from_file.len(),
        file.display()
    ));
    Ok(ExitCode::SUCCESS)
}

/// `serve --print-config`: every setting in force, as TOML, with where it
/// came from.
pub(crate) fn print(
    serve: &ArgMatches,
    root: &clap::Command,
    from_file: &BTreeSet<String>,
    user_argv: &[OsString],
) -> anyhow::Result<ExitCode> {
    crate::print_all(render(serve, root, from_file, user_argv).as_bytes())
}

/// What `--print-config` prints: a line for every key of the config file
/// format (`config_file::keys`). One without a value (a setting whose
/// absence means something, like `shards`) is a comment saying what the
/// server does without it, so that the output still reads as a config
/// file with the same meaning.
fn render(
    serve: &ArgMatches,
    root: &clap::Command,
    from_file: &BTreeSet<String>,
    user_argv: &[OsString],
) -> String {
    let command = serve_command(root);
    let mut out = String::from("# tillstream serve: the settings in force\n");
    for arg in config_file::keys(&command) {
        let (id, Some(long)) = (arg.get_id().as_str(), arg.get_long()) else {
            continue;
        };
        let Some(raw) = serve.get_raw(id) else {
            out.push_str(&format!("# {long} is not set: {}\n", unset(long)));
            continue;
        };
        let value: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
        let in_file = from_file.contains(long) || from_file.contains(&long.replace('-', "_"));
        let source = match serve.value_source(id) {
            Some(ValueSource::EnvVariable) => "env",
            Some(ValueSource::DefaultValue) => "default",
            Some(ValueSource::CommandLine) if in_file && !typed(user_argv, long) => "file",
            Some(ValueSource::CommandLine) => "flag",
            _ => "",
        };
        out.push_str(&format!(
            "{long} = {}  # {source}\n",
            shown(long, &value.join(","))
        ));
    }
    out
}

/// What the server does with `long` not set.
fn unset(long: &str) -> String {
    let defaults = tillstream_engine::ServerConfig::new(".");
    match long {
        "shards" => format!("{} here (half the cores, at least one)", defaults.shards),
        "max-handshakes" => format!("{} here (16 per core)", defaults.max_handshakes),
        "auth" => "tokens, and certificates once `tillstream ca init` made a device CA".into(),
        "audit-log" => "DATA_DIR/audit.jsonl".into(),
        "journal-dir" => "the journal is in DATA_DIR/store/wal".into(),
        "tls-cert" | "tls-key" => "a self-signed certificate in DATA_DIR/tls".into(),
        "scylla-dc" => "requests go to any data centre".into(),
        "scylla-user" | "scylla-password" => "no password authentication".into(),
        "scylla-tls-ca" => "no TLS to the cluster".into(),
        _ => "see `tillstream serve --help`".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::serve::settings::tests::{argv, root};

    /// `--print-config` cannot forget a key: each one the file format
    /// has is a line of its own, set or not.
    #[test]
    fn print_config_has_a_line_for_every_key_of_the_file() -> anyhow::Result<()> {
        let root = root();
        let matches = root.clone().try_get_matches_from(argv(&[]))?;
        let serve = matches
            .subcommand_matches("serve")
            .ok_or_else(|| anyhow::anyhow!("no serve"))?;
        let shown = render(serve, &root, &BTreeSet::new(), &argv(&[]));
        let command = serve_command(&root);
        let keys: Vec<&str> = config_file::keys(&command)
            .filter_map(clap::Arg::get_long)
            .collect();
        for key in [
            "auth",
            "audit-log",
            "max-handshakes",
            "listen",
            "scylla-password",
        ] {
            assert!(keys.contains(&key), "{key} is no key of the file");
        }
        for key in keys {
            let lines = shown
                .lines()
                .filter(|l| {
                    l.starts_with(&format!("{key} = "))
                        || l.starts_with(&format!("# {key} is not set: "))
                })
                .count();
            assert_eq!(lines, 1, "{key} in\n{shown}");
        }
        Ok(())
    }
}
