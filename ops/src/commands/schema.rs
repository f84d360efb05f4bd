//! `tillstream schema print`: the CQL of the ScyllaDB tables.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use tillstream_storage::schema::FILES;

/// The ScyllaDB schema (keyspace and every table), as CQL.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the keyspace and tables as CQL, ready for `cqlsh -f -`.
    /// Every statement is `IF NOT EXISTS`: applying it twice is harmless.
    Print {
        /// Replication of the keyspace, one `DC=FACTOR` per data centre
        /// (`dc1=3` by default).
        #[arg(
            long,
            value_name = "DC=FACTOR",
            default_value = "dc1=3",
            value_delimiter = ','
        )]
        replication: Vec<String>,
    },
}

/// `{'class': 'NetworkTopologyStrategy', 'dc1': 3, ...}` from `dc1=3`.
fn replication_map(pairs: &[String]) -> anyhow::Result<String> {
    let mut parts = vec!["'class': 'NetworkTopologyStrategy'".to_string()];
    for p in pairs {
        let Some((dc, n)) = p.split_once('=') else {
            bail!("--replication {p:?}: expected DC=FACTOR, like dc1=3");
        };
        let dc = dc.trim();
        if dc.is_empty()
            || !dc
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!("--replication {p:?}: a data-centre name is letters, digits, '_' or '-'");
        }
        let n: u8 = n
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("--replication {p:?}: the factor is a small number"))?;
        if n == 0 {
            bail!("--replication {p:?}: the factor must be at least 1");
        }
        parts.push(format!("'{dc}': {n}"));
    }
    Ok(format!("{{{}}}", parts.join(", ")))
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Print { replication } => {
            let map = replication_map(&replication)?;
            let mut out = std::io::stdout().lock();
            let printed = FILES.iter().try_for_each(|f| {
                let cql = f
                    .cql
                    .replace("{'class': 'NetworkTopologyStrategy', 'dc1': 3}", &map);
                writeln!(out, "-- {}\n{cql}", f.name)
            });
            match printed {
                // A reader that stopped early (`| head`) is not an error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_is_checked_and_lands_in_the_keyspace() -> anyhow::Result<()> {
        assert_eq!(
            replication_map(&["eu=3".into(), "us=2".into()])?,
            "{'class': 'NetworkTopologyStrategy', 'eu': 3, 'us': 2}"
        );
        assert!(replication_map(&["eu".into()]).is_err());
        assert!(replication_map(&["eu=0".into()]).is_err());
        assert!(replication_map(&["e'u=3".into()]).is_err());
        // The default map is what the keyspace file holds, so it is replaced.
        assert!(
            FILES[0]
                .cql
                .contains("{'class': 'NetworkTopologyStrategy', 'dc1': 3}")
        );
        Ok(())
    }
}
