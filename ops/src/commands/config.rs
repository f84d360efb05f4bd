//! `tillstream check-config` and `serve --print-config`.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, FromArgMatches};

use crate::config_file::{self, EXIT_CONFIG, shown};

/// Check a config file of `serve` without starting anything: every key is
/// a setting, every value parses and is in range, the files it names
/// exist, the ports it would listen on are free. Exits 0 when it would
/// start, 78 naming the bad key otherwise.
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

/// serve's definition, as the file's keys are checked against it.
pub(crate) fn serve_command(root: &clap::Command) -> clap::Command {
    root.find_subcommand("serve")
        .cloned()
        .unwrap_or_else(|| clap::Command::new("serve"))
}

pub(crate) fn check(args: CheckArgs, root: &clap::Command) -> anyhow::Result<ExitCode> {
    let no_environment = args.no_environment;
    let file = args
        .file
        .or_else(|| std::env::var_os(config_file::VAR).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("tillstream.toml"));
    let bad = |why: String| -> anyhow::Result<ExitCode> {
        crate::logging::fail(format!("{}: {why}", file.display()));
        Ok(ExitCode::from(EXIT_CONFIG))
    };
    let (flags, keys) = match config_file::flags_from(&file, &serve_command(root)) {
        Ok(f) => f,
        Err(e) => return bad(e.why),
    };
    let mut argv: Vec<OsString> = vec!["tillstream".into(), "serve".into()];
    argv.extend(flags);
    let matches = match root.clone().try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) => return bad(format!("{}", e.render()).trim().to_string()),
    };
    let Some(serve) = matches.subcommand_matches("serve") else {
        return bad("no serve settings".into());
    };
    let args = super::serve::Args::from_arg_matches(serve)?;
    if let Err(why) = args.check_values() {
        return bad(why);
    }
    if !no_environment && let Err(why) = args.check_environment() {
        return bad(why);
    }
    crate::logging::say(format!(
        "{}: ok ({} settings; `tillstream serve --config {} --print-config` shows them all)",
        file.display(),
        keys.len(),
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
    let typed = |long: &str| {
        user_argv.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
        })
    };
    let mut out = String::from("# tillstream serve: the settings in force\n");
    for arg in serve_command(root).get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else {
            continue;
        };
        if arg.is_hide_set() || matches!(long, "config" | "print-config" | "help") {
            continue;
        }
        let Some(raw) = serve.get_raw(id) else {
            continue;
        };
        let value: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
        let in_file = from_file.contains(long) || from_file.contains(&long.replace('-', "_"));
        let source = match serve.value_source(id) {
            Some(ValueSource::EnvVariable) => "env",
            Some(ValueSource::DefaultValue) => "default",
            Some(ValueSource::CommandLine) if in_file && !typed(long) => "file",
            Some(ValueSource::CommandLine) => "flag",
            _ => "",
        };
        out.push_str(&format!(
            "{long} = {}  # {source}\n",
            shown(long, &value.join(","))
        ));
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
