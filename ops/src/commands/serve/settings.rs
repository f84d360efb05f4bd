//! The one reading of serve's settings (command line, variables, config
//! file) that `serve`, its SIGHUP and `check-config` share, so that what
//! one accepts the others do.
//!
//! Beside `serve`, whose `Args` it parses, not in `config`: `config`
//! (check-config, --print-config) uses it, and `serve` uses nothing of
//! `config`'s.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;

use clap::error::{ContextKind, ContextValue};
use clap::{ArgMatches, FromArgMatches};

use crate::config_file::{self, ConfigError, Problem};

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
        let args = super::Args::from_arg_matches(serve).map_err(|e| {
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
pub(crate) fn typed(argv: &[OsString], long: &str) -> bool {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The command line `tillstream serve` is parsed with, for tests.
    pub(crate) fn root() -> clap::Command {
        <crate::Cli as clap::CommandFactory>::command()
            .mut_subcommand("serve", |c| c.args_override_self(true))
    }

    /// `tillstream serve` and `args`.
    pub(crate) fn argv(args: &[&str]) -> Vec<OsString> {
        ["tillstream", "serve"]
            .iter()
            .chain(args)
            .map(OsString::from)
            .collect()
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
