//! `tillstream check-config`, `serve --print-config`, and the one reading
//! of serve's settings (command line, variables, config file) that
//! `serve`, its SIGHUP and `check-config` share, so that what one accepts
//! the others do.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{ArgMatches, FromArgMatches};

use crate::config_file::{self, ConfigError, EXIT_CONFIG, Problem, shown};

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

/// serve's definition, as the file's keys are checked against it.
pub(crate) fn serve_command(root: &clap::Command) -> clap::Command {
    root.find_subcommand("serve")
        .cloned()
        .unwrap_or_else(|| clap::Command::new("serve"))
}

/// serve's settings, read and checked.
pub(crate) struct Loaded {
    /// The whole command line's matches (`serve`'s among them).
    pub(crate) matches: ArgMatches,
    /// The keys the config file set.
    pub(crate) from_file: BTreeSet<String>,
}

/// Why serve's settings cannot be used.
#[derive(Debug)]
pub(crate) enum LoadError {
    /// The command line itself: `--help`, `--version`, or a flag typed
    /// wrong, which clap reports (with the usage) as for any command.
    Usage(clap::Error),
    /// The settings: every problem found.
    Config(ConfigError),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(e) => f.write_str(&clap_message(e)),
            Self::Config(e) => e.fmt(f),
        }
    }
}

/// Reads serve's settings from `argv` (a `tillstream ... serve ...` line),
/// the variables and `file`, and checks them as serve does before it
/// starts: every key of the file is a setting and its value parses and
/// is in range, and the settings fit together (`Args::problems`). What
/// `serve` starts with, what SIGHUP reads again and what `check-config`
/// judges, so the three agree. Every problem is reported, not the first.
pub(crate) fn load(
    root: &clap::Command,
    argv: &[OsString],
    file: Option<&Path>,
) -> Result<Loaded, LoadError> {
    let serve = serve_command(root);
    let read = match file {
        Some(f) => config_file::flags_from(f, &serve).map_err(LoadError::Config)?,
        None => config_file::FileFlags::default(),
    };
    let (mut flags, from_file, mut problems) = (read.flags, read.keys, read.problems);
    // clap stops at the first bad value: a bad value of the file's is
    // noted against its key and left out, and the rest parsed again, so
    // every bad value is found (a file has a few dozen keys at most).
    let matches = loop {
        let file_flags = flags.iter().map(|(_, f)| f.clone()).collect();
        let line = config_file::with_file_flags(argv.to_vec(), file_flags);
        let e = match root.clone().try_get_matches_from(&line) {
            Ok(m) => break Some(m),
            Err(e) => e,
        };
        if !e.use_stderr() {
            return Err(LoadError::Usage(e));
        }
        let long = failed_long(&e);
        if let Some(at) = long
            .as_deref()
            .and_then(|l| blamed_on_file(&e, l, &flags, argv))
        {
            let (key, _) = flags.remove(at);
            problems.push(Problem::of(key, clap_message(&e)).with_file(file));
            continue;
        }
        let var = long
            .as_deref()
            .and_then(|long| variable_of(&serve, argv, long));
        match var {
            Some(var) => problems.push(Problem::of(var, clap_message(&e))),
            // A typed flag's error, as clap gives it for any command.
            None if problems.is_empty() => return Err(LoadError::Usage(e)),
            None => problems.push(Problem::new(clap_message(&e))),
        }
        break None;
    };
    if let Some(m) = &matches
        && let Some(serve) = m.subcommand_matches("serve")
    {
        let args = super::serve::Args::from_arg_matches(serve).map_err(|e| {
            LoadError::Config(ConfigError {
                problems: vec![Problem::new(clap_message(&e))],
            })
        })?;
        problems.extend(args.problems().into_iter().map(|p| {
            let in_file = p
                .key
                .as_ref()
                .is_some_and(|k| from_file.contains(k) || from_file.contains(&k.replace('-', "_")));
            if in_file { p.with_file(file) } else { p }
        }));
    }
    match matches {
        Some(matches) if problems.is_empty() => Ok(Loaded { matches, from_file }),
        _ => Err(LoadError::Config(ConfigError { problems })),
    }
}

impl Problem {
    /// Placed in `file`, if there is one.
    fn with_file(self, file: Option<&Path>) -> Self {
        match file {
            Some(f) => self.in_file(f),
            None => self,
        }
    }
}

/// The flag (its long name) a clap error is about, if it names one.
fn failed_long(e: &clap::Error) -> Option<String> {
    match e.get(ContextKind::InvalidArg)? {
        ContextValue::String(arg) => {
            let long = arg.strip_prefix("--")?;
            Some(long.split([' ', '=']).next().unwrap_or(long).to_string())
        }
        _ => None,
    }
}

/// Which of the file's flags a clap error about `long` is about: the
/// file's value of it, unless the same flag is typed and the error does
/// not show which value it refused (both are parsed: the file's first).
fn blamed_on_file(
    e: &clap::Error,
    long: &str,
    flags: &[(String, OsString)],
    argv: &[OsString],
) -> Option<usize> {
    let at = flags
        .iter()
        .position(|(key, _)| key.replace('_', "-") == long)?;
    let file_value = flags[at].1.to_str()?.split_once('=').map(|(_, v)| v);
    match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(refused)) => (file_value == Some(refused.as_str())).then_some(at),
        _ => (!typed(argv, long)).then_some(at),
    }
}

/// Whether `--long` is on the command line `argv`.
fn typed(argv: &[OsString], long: &str) -> bool {
    argv.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")))
    })
}

/// The variable that set `long`, when it is set and the flag is not typed.
fn variable_of(serve: &clap::Command, argv: &[OsString], long: &str) -> Option<String> {
    let arg = serve.get_arguments().find(|a| a.get_long() == Some(long))?;
    let var = arg.get_env()?;
    (!typed(argv, long) && std::env::var_os(var).is_some())
        .then(|| var.to_string_lossy().into_owned())
}

/// A clap error's message alone: without its `error: ` (the caller says
/// that once) and the usage and `--help` tip after it, which name the
/// command line where the value came from a file or a variable.
pub(crate) fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let text = text.trim_start_matches("error: ");
    let message = text.split("\n\n").next().unwrap_or(text);
    // A list clap puts on lines of their own (the missing flags) goes on
    // the one line of the problem.
    message.split_whitespace().collect::<Vec<_>>().join(" ")
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

    fn root() -> clap::Command {
        <crate::Cli as clap::CommandFactory>::command()
            .mut_subcommand("serve", |c| c.args_override_self(true))
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        ["tillstream", "serve"]
            .iter()
            .chain(args)
            .map(OsString::from)
            .collect()
    }

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

    /// `load` refuses what serve cannot start with, all of it at once,
    /// naming each key; a good line loads.
    #[test]
    fn load_names_every_bad_setting() {
        let root = root();
        let bad = load(
            &root,
            &argv(&["--shards", "2", "--http", "nowhere", "--auth", "passwords"]),
            None,
        );
        let said = match bad {
            Err(LoadError::Config(e)) => e.to_string(),
            Err(LoadError::Usage(e)) => panic!("usage: {e}"),
            Ok(_) => panic!("loaded"),
        };
        assert!(said.contains("`http`") && said.contains("`auth`"), "{said}");
        assert!(!said.contains("error:"), "{said}");
        assert!(load(&root, &argv(&["--shards", "2"]), None).is_ok());
        let typed = load(&root, &argv(&["--shards", "0"]), None);
        assert!(
            matches!(typed, Err(LoadError::Usage(_))),
            "a typed flag's error stays clap's"
        );
    }

    /// A typed flag's bad value is not blamed on the file's good one.
    #[test]
    fn a_bad_value_is_blamed_where_it_was_written() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("tillstream.toml");
        std::fs::write(&file, "shards = 2\nquic-window-kib = 1\n")?;
        let said = match load(&root(), &argv(&["--shards", "0"]), Some(&file)) {
            Err(LoadError::Config(e)) => e.problems,
            _ => anyhow::bail!("loaded"),
        };
        assert_eq!(said.len(), 2, "{said:?}");
        assert_eq!(said[0].key.as_deref(), Some("quic-window-kib"), "{said:?}");
        assert!(said[0].file.is_some(), "{said:?}");
        assert!(
            said[1].key.is_none() && said[1].why.contains("'0'"),
            "{said:?}"
        );
        Ok(())
    }

    #[test]
    fn clap_messages_lose_their_prefix_and_tip() {
        let e = root()
            .try_get_matches_from(argv(&["--quic-window-kib", "1"]))
            .err()
            .map(|e| (clap_message(&e), failed_long(&e)));
        let Some((message, long)) = e else {
            panic!("a window of 1 KiB parsed");
        };
        assert!(
            message.starts_with("invalid value '1' for '--quic-window-kib"),
            "{message}"
        );
        assert!(
            !message.contains("--help") && !message.contains('\n'),
            "{message}"
        );
        assert_eq!(long.as_deref(), Some("quic-window-kib"));
    }
}
