//! One config file for `serve`: TOML whose keys are serve's flag names
//! (`max-connections = 20000`, or `max_connections`). A setting comes from
//! the first of: the command line, its `TILLSTREAM_*` variable, the file,
//! the default.
//!
//! The file's settings become flags placed before the user's own (which
//! override them: the command line allows a flag twice, the last wins),
//! except those whose variable is set, so the order above holds with
//! clap doing all the parsing and checking.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Exit code of a bad config (`EX_CONFIG` of sysexits.h).
pub(crate) const EXIT_CONFIG: u8 = 78;

/// The flag and variable naming the file.
pub(crate) const FLAG: &str = "--config";
pub(crate) const VAR: &str = "TILLSTREAM_CONFIG";

/// One thing that keeps `serve` from starting with its settings: the
/// file it is in (when it is in one), the key at fault (when one is) and
/// why. Every problem is gathered before any is reported, so a file is
/// mended in one pass, not one key per run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// The config file holding the key.
    pub(crate) file: Option<PathBuf>,
    /// The key (or variable) at fault, as written.
    pub(crate) key: Option<String>,
    /// What is wrong.
    pub(crate) why: String,
}

impl Problem {
    /// A problem of no one key.
    pub(crate) fn new(why: impl Into<String>) -> Self {
        Self {
            file: None,
            key: None,
            why: why.into(),
        }
    }

    /// A problem of `key`.
    pub(crate) fn of(key: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            ..Self::new(why)
        }
    }

    /// The same problem, placed in `file`.
    pub(crate) fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        self
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        f.write_str(&self.why)
    }
}

/// Settings that cannot be used: every problem found.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub(crate) struct ConfigError {
    /// What is wrong, each naming its key.
    pub(crate) problems: Vec<Problem>,
}

/// What a config file sets: its settings as flags (each with the key
/// that set it), the keys it set, and what is wrong with the rest.
#[derive(Debug, Default)]
pub(crate) struct FileFlags {
    /// `(key, --flag=value)` in the file's order.
    pub(crate) flags: Vec<(String, OsString)>,
    /// The keys the file set (flags whose variable is set among them).
    pub(crate) keys: BTreeSet<String>,
    /// Keys that are no setting, or whose values no flag takes.
    pub(crate) problems: Vec<Problem>,
}

/// The settings a config file may hold: `command`'s (serve's) flags, but
/// for the hidden ones (testing only), the file itself and what only
/// makes sense typed (`--print-config`, `--help`). `--print-config` lists
/// these, so a setting is in the file format and the listing or neither.
pub(crate) fn keys(command: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    command.get_arguments().filter(|a| {
        a.get_long()
            .is_some_and(|long| !matches!(long, "config" | "print-config" | "help" | "version"))
            && !a.is_hide_set()
    })
}

/// The file's settings as flags for `command` (serve's definition). An
/// unknown key (named with the key it likely misspells) or a value of a
/// shape no flag takes is a problem; the other keys are still read. Only
/// a file that cannot be read or is not TOML is an error.
pub(crate) fn flags_from(file: &Path, command: &clap::Command) -> Result<FileFlags, ConfigError> {
    let err = |why: String| ConfigError {
        problems: vec![Problem::new(why).in_file(file)],
    };
    let text = std::fs::read_to_string(file).map_err(|e| err(format!("cannot read it: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e| err(format!("not TOML: {e}")))?;
    let mut out = FileFlags::default();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let problem = |why: String| Problem::of(key, why).in_file(file);
        let Some(arg) = keys(command).find(|a| a.get_long() == Some(long.as_str())) else {
            let hint = match suggest(&long, command) {
                Some(known) => format!("did you mean `{known}`?"),
                None => "keys are `tillstream serve` flags: see --help".into(),
            };
            out.problems
                .push(Problem::new(format!("unknown key `{key}` ({hint})")).in_file(file));
            continue;
        };
        out.keys.insert(key.clone());
        // Its variable, when set, comes before the file.
        if arg
            .get_env()
            .is_some_and(|var| std::env::var_os(var).is_some())
        {
            continue;
        }
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => {
                let items: Option<Vec<String>> = items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Some(s.clone()),
                        toml::Value::Integer(i) => Some(i.to_string()),
                        _ => None,
                    })
                    .collect();
                match items {
                    Some(items) => items.join(","),
                    None => {
                        out.problems
                            .push(problem("a list of strings or numbers".into()));
                        continue;
                    }
                }
            }
            _ => {
                out.problems
                    .push(problem("a string, number, boolean or list".into()));
                continue;
            }
        };
        match (arg.get_action().takes_values(), value) {
            (true, _) => out
                .flags
                .push((key.clone(), OsString::from(format!("--{long}={text}")))),
            (false, toml::Value::Boolean(true)) => out
                .flags
                .push((key.clone(), OsString::from(format!("--{long}")))),
            (false, toml::Value::Boolean(false)) => {}
            (false, _) => out.problems.push(problem("a switch: true or false".into())),
        }
    }
    Ok(out)
}

/// The known key nearest `unknown` (a typo's distance: at most 2 edits,
/// or a quarter of its length), if one is that near.
pub(crate) fn suggest(unknown: &str, command: &clap::Command) -> Option<String> {
    let unknown = unknown.replace('_', "-");
    let within = (unknown.chars().count() / 4).max(2);
    keys(command)
        .filter_map(|a| a.get_long())
        .map(|known| (edit_distance(&unknown, known), known))
        .filter(|(d, _)| *d <= within)
        .min()
        .map(|(_, known)| known.to_string())
}

/// Levenshtein distance: the insertions, deletions and substitutions of
/// one character that turn `a` into `b`. (Keys are a few dozen short
/// strings: the two-row table costs nothing.)
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The config file `argv` names (`--config FILE`, `--config=FILE`), or
/// the variable does.
pub(crate) fn config_flag(argv: &[OsString]) -> Option<PathBuf> {
    let mut file = std::env::var_os(VAR).map(PathBuf::from);
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some(FLAG) => file = it.next().map(PathBuf::from),
            Some(s) if s.starts_with("--config=") => {
                file = Some(PathBuf::from(&s["--config=".len()..]));
            }
            _ => {}
        }
    }
    file
}

/// `argv` (a `tillstream serve ...` line) with the file's flags placed
/// right after `serve`, before the user's own.
pub(crate) fn with_file_flags(argv: Vec<OsString>, flags: Vec<OsString>) -> Vec<OsString> {
    let Some(at) = argv.iter().position(|a| a == "serve") else {
        return argv;
    };
    let mut out = argv[..=at].to_vec();
    out.extend(flags);
    out.extend_from_slice(&argv[at + 1..]);
    out
}

/// A value to print in `--print-config`: secrets are not.
pub(crate) fn shown(key: &str, value: &str) -> String {
    if key.contains("password") || key.contains("token") || key.contains("secret") {
        "\"<redacted>\"".into()
    } else if value.parse::<i64>().is_ok() || value == "true" || value == "false" {
        value.into()
    } else {
        format!("{value:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> clap::Command {
        clap::Command::new("serve")
            .arg(
                clap::Arg::new("max_connections")
                    .long("max-connections")
                    .env("T_TEST_MAXCONN"),
            )
            .arg(
                clap::Arg::new("scylla_nodes")
                    .long("scylla-nodes")
                    .value_delimiter(','),
            )
            .arg(
                clap::Arg::new("metrics_auth")
                    .long("metrics-auth")
                    .action(clap::ArgAction::SetTrue),
            )
    }

    fn file(text: &str) -> Result<(tempfile::TempDir, PathBuf), std::io::Error> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tillstream.toml");
        std::fs::write(&path, text)?;
        Ok((dir, path))
    }

    #[test]
    fn keys_become_flags_in_either_spelling() -> Result<(), Box<dyn std::error::Error>> {
        let (_d, path) = file(
            "max_connections = 5\nscylla-nodes = [\"a:9042\", \"b:9042\"]\nmetrics-auth = true\n",
        )?;
        let read = flags_from(&path, &command())?;
        let mut flags: Vec<OsString> = read.flags.into_iter().map(|(_, f)| f).collect();
        flags.sort();
        assert_eq!(
            flags,
            [
                "--max-connections=5",
                "--metrics-auth",
                "--scylla-nodes=a:9042,b:9042"
            ]
            .map(OsString::from)
        );
        assert_eq!(read.keys.len(), 3);
        assert!(read.problems.is_empty(), "{:?}", read.problems);
        Ok(())
    }

    #[test]
    fn every_bad_key_is_named_and_the_good_ones_still_read()
    -> Result<(), Box<dyn std::error::Error>> {
        let (_d, path) = file(
            "max_conections = 5\nmetrics-auth = 3\nmax-connections = { a = 1 }\n\
             scylla-nodes = \"a:9042\"\nlisten-address = \"x\"\n",
        )?;
        let read = flags_from(&path, &command())?;
        let said: Vec<String> = read.problems.iter().map(ToString::to_string).collect();
        for says in [
            "unknown key `max_conections` (did you mean `max-connections`?)",
            "`metrics-auth`: a switch",
            "`max-connections`: a string, number",
            "unknown key `listen-address` (keys are `tillstream serve` flags",
        ] {
            assert!(
                said.iter().any(|p| p.contains(says)),
                "no {says:?} in {said:?}"
            );
        }
        assert_eq!(said.len(), 4, "{said:?}");
        assert!(
            said.iter()
                .all(|p| p.starts_with(&path.display().to_string()))
        );
        assert_eq!(
            read.flags,
            [(
                "scylla-nodes".to_string(),
                OsString::from("--scylla-nodes=a:9042")
            )]
        );
        let (_d, path) = file("max-connections = \n")?;
        let e = flags_from(&path, &command()).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("not TOML")));
        Ok(())
    }

    #[test]
    fn a_misspelt_key_suggests_the_nearest_and_a_far_one_none() {
        assert_eq!(edit_distance("max-conections", "max-connections"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let c = command();
        assert_eq!(
            suggest("max_conections", &c).as_deref(),
            Some("max-connections")
        );
        assert_eq!(suggest("metrics-aut", &c).as_deref(), Some("metrics-auth"));
        assert_eq!(suggest("scyla-node", &c).as_deref(), Some("scylla-nodes"));
        assert_eq!(suggest("listen", &c), None);
    }

    #[test]
    fn the_file_goes_before_the_users_flags() {
        let argv: Vec<OsString> = ["tillstream", "-v", "serve", "--shards=2"]
            .map(OsString::from)
            .to_vec();
        let out = with_file_flags(argv, vec!["--shards=4".into()]);
        assert_eq!(
            out,
            ["tillstream", "-v", "serve", "--shards=4", "--shards=2"].map(OsString::from)
        );
        let file = config_flag(
            &["tillstream", "serve", "--config", "a.toml", "--shards=2"].map(OsString::from),
        );
        assert_eq!(file, Some(PathBuf::from("a.toml")));
    }

    #[test]
    fn secrets_are_not_printed() {
        assert_eq!(shown("scylla-password", "hunter2"), "\"<redacted>\"");
        assert_eq!(shown("api-token", "x"), "\"<redacted>\"");
        assert_eq!(shown("max-connections", "20000"), "20000");
        assert_eq!(shown("listen", "0.0.0.0:7400"), "\"0.0.0.0:7400\"");
    }
}
