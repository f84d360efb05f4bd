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

/// A config file that cannot be used: the key (if one is at fault) and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {why}")]
pub(crate) struct ConfigError {
    /// The file.
    pub(crate) file: PathBuf,
    /// What is wrong, naming the key.
    pub(crate) why: String,
}

/// The file's settings as flags for `command` (serve's definition), and
/// the keys it set. Unknown keys, and values of a shape no flag takes, are
/// errors naming the key.
pub(crate) fn flags_from(
    file: &Path,
    command: &clap::Command,
) -> Result<(Vec<OsString>, BTreeSet<String>), ConfigError> {
    let err = |why: String| ConfigError {
        file: file.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(file).map_err(|e| err(format!("cannot read it: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e| err(format!("not TOML: {e}")))?;
    let mut flags = Vec::new();
    let mut keys = BTreeSet::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && !a.is_hide_set() && long != "config")
            .ok_or_else(|| {
                err(format!(
                    "unknown key `{key}` (keys are `tillstream serve` flags: see --help)"
                ))
            })?;
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
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    toml::Value::Integer(i) => Ok(i.to_string()),
                    _ => Err(err(format!("`{key}`: a list of strings or numbers"))),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            _ => return Err(err(format!("`{key}`: a string, number, boolean or list"))),
        };
        let takes_value = arg.get_action().takes_values();
        match (takes_value, value) {
            (true, _) => flags.push(OsString::from(format!("--{long}={text}"))),
            (false, toml::Value::Boolean(true)) => flags.push(OsString::from(format!("--{long}"))),
            (false, toml::Value::Boolean(false)) => {}
            (false, _) => return Err(err(format!("`{key}` is a switch: true or false"))),
        }
        keys.insert(key.clone());
    }
    Ok((flags, keys))
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

/// The user's `tillstream serve ...` line with its config file's settings
/// (if it names one) placed as flags before the user's own, and the keys
/// the file set. What `serve` starts with, and what SIGHUP reads again.
pub(crate) fn serve_argv(
    user_argv: &[OsString],
    serve: &clap::Command,
) -> Result<(Vec<OsString>, BTreeSet<String>), ConfigError> {
    match config_flag(user_argv) {
        Some(file) => {
            let (flags, keys) = flags_from(&file, serve)?;
            Ok((with_file_flags(user_argv.to_vec(), flags), keys))
        }
        None => Ok((user_argv.to_vec(), BTreeSet::new())),
    }
}

/// `argv` (a `tillstream serve ...` line) with the file's flags placed
/// right after `serve`, before the user's own.
fn with_file_flags(argv: Vec<OsString>, flags: Vec<OsString>) -> Vec<OsString> {
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
        let (mut flags, keys) = flags_from(&path, &command())?;
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
        assert_eq!(keys.len(), 3);
        Ok(())
    }

    #[test]
    fn an_unknown_key_or_a_bad_shape_names_the_key() -> Result<(), Box<dyn std::error::Error>> {
        for (text, says) in [
            ("max_conections = 5\n", "unknown key `max_conections`"),
            ("metrics-auth = 3\n", "`metrics-auth` is a switch"),
            ("max-connections = { a = 1 }\n", "`max-connections`"),
            ("max-connections = \n", "not TOML"),
        ] {
            let (_d, path) = file(text)?;
            let e = flags_from(&path, &command()).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains(says)),
                "{text}: {e:?}"
            );
        }
        Ok(())
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
