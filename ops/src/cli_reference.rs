//! The command-line reference of the book (`docs/reference/cli.md`),
//! written from the clap definitions of `tillstream` and
//! `tillstream-loadgen` as the man page is: every subcommand with its
//! about, its usage and its arguments (help, default, environment
//! variable, possible values). `tillstream cli-reference` prints it; a
//! test (`tests/tests/docs.rs`) fails when the page in the book differs.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use clap::{ArgAction, Command};

/// How to make the page again, said at its top and by the test.
pub(crate) const REGENERATE: &str =
    "cargo run -p tillstream-ops -- cli-reference > docs/reference/cli.md";

/// The whole page: `tillstream` and each of its subcommands, then the loadgen.
pub(crate) fn markdown() -> String {
    let programs = [
        <crate::Cli as clap::CommandFactory>::command(),
        <tillstream_loadgen::cli::Args as clap::CommandFactory>::command(),
    ];
    let mut page = String::from("# Command-line reference\n\n");
    page.push_str(&format!(
        "<!-- Generated from the clap definitions by `tillstream cli-reference`: edit the \
         programs' doc comments, not this file, then run `{REGENERATE}`. -->\n\n"
    ));
    page.push_str(
        "Every subcommand of `tillstream` and every flag of `tillstream-loadgen`, as their \
         `--help` gives them. The options `tillstream` takes before or after any subcommand \
         (`--log-format`, `-v`, `-q`) are listed once, under [tillstream](#tillstream); every \
         command also takes `-h`/`--help`.\n\n",
    );
    page.push_str("Programs:\n\n");
    for program in &programs {
        let name = program.get_name();
        let _ = writeln!(page, "- [{name}](#{})", anchor(name));
    }
    for mut program in programs {
        // Terminal widths must not change the page: no wrapping.
        program = program.term_width(0);
        program.build();
        write_command(&mut page, &program, 0, &BTreeSet::new());
    }
    page
}

/// One command's section, then its subcommands'. A program and its
/// subcommands get `##` headings, their subcommands `###` (`depth` is 0
/// for the program). `inherited` holds the ids of the global arguments a
/// parent listed.
fn write_command(page: &mut String, cmd: &Command, depth: usize, inherited: &BTreeSet<String>) {
    let level = 2 + depth.saturating_sub(1);
    let mut cmd = cmd.clone();
    let title = cmd
        .get_bin_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_owned();
    let blank = page.trim_end_matches('\n').len();
    page.truncate(blank);
    let _ = writeln!(page, "\n\n{} {title}\n", "#".repeat(level.min(6)));
    if let Some(about) = cmd.get_long_about().or_else(|| cmd.get_about()) {
        paragraphs(page, &about.to_string());
    }
    let usage = cmd.render_usage().to_string();
    let _ = writeln!(page, "```text\n{}\n```\n", usage.trim_end());

    let shown = |a: &&clap::Arg| {
        !a.is_hide_set()
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong
            )
            && (!a.is_global_set() || !inherited.contains(a.get_id().as_str()))
    };
    let positionals: Vec<_> = cmd.get_positionals().filter(shown).collect();
    if !positionals.is_empty() {
        page.push_str("Arguments:\n\n");
        for arg in positionals {
            write_arg(page, arg);
        }
        page.push('\n');
    }
    let options: Vec<_> = cmd
        .get_arguments()
        .filter(|a| !a.is_positional())
        .filter(shown)
        .collect();
    if !options.is_empty() {
        page.push_str("Options:\n\n");
        for arg in options {
            write_arg(page, arg);
        }
        page.push('\n');
    }
    if let Some(after) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        paragraphs(page, &after.to_string());
    }

    let subcommands: Vec<&Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect();
    if !subcommands.is_empty() {
        page.push_str("Subcommands:\n\n");
        for sub in &subcommands {
            let name = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            let _ = writeln!(
                page,
                "- [{name}](#{}): {}",
                anchor(name),
                escape(about.trim())
            );
        }
        page.push('\n');
    }
    let mut inherited = inherited.clone();
    inherited.extend(
        cmd.get_arguments()
            .filter(|a| a.is_global_set())
            .map(|a| a.get_id().as_str().to_owned()),
    );
    for sub in subcommands {
        write_command(page, sub, depth + 1, &inherited);
    }
}

/// One argument as a list item: its flags and value, its help, then its
/// default, variable, aliases and possible values.
fn write_arg(page: &mut String, arg: &clap::Arg) {
    let takes_values = arg.get_action().takes_values();
    // As `--help` names it: `-v, --verbose...`, `--listen <LISTEN>`, `<SHELL>`.
    let name = match (arg.get_short(), arg.get_long()) {
        (Some(short), Some(_)) => format!("-{short}, {arg}"),
        _ => arg.to_string(),
    };
    let help = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let mut help = help.trim().split("\n\n");
    let _ = writeln!(
        page,
        "- `{name}`{}{}",
        if arg.is_required_set() {
            " (required)"
        } else {
            ""
        },
        help.next()
            .map(|first| format!(": {}", escape(&unwrap_lines(first))))
            .unwrap_or_default()
    );
    for more in help {
        let _ = writeln!(page, "\n  {}", escape(&unwrap_lines(more)));
    }

    let mut facts = Vec::new();
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    if takes_values && !defaults.is_empty() && !arg.is_hide_default_value_set() {
        facts.push(format!("Default: `{}`.", defaults.join(",")));
    }
    if let Some(env) = arg.get_env().filter(|_| !arg.is_hide_env_set()) {
        facts.push(format!(
            "Environment variable: `{}`.",
            env.to_string_lossy()
        ));
    }
    let aliases: Vec<String> = arg
        .get_visible_aliases()
        .unwrap_or_default()
        .iter()
        .map(|a| format!("`--{a}`"))
        .chain(
            arg.get_visible_short_aliases()
                .unwrap_or_default()
                .iter()
                .map(|a| format!("`-{a}`")),
        )
        .collect();
    if !aliases.is_empty() {
        facts.push(format!("Alias: {}.", aliases.join(", ")));
    }
    let possible: Vec<clap::builder::PossibleValue> =
        if takes_values && !arg.is_hide_possible_values_set() {
            arg.get_possible_values()
                .into_iter()
                .filter(|p| !p.is_hide_set())
                .collect()
        } else {
            Vec::new()
        };
    let with_help = possible.iter().any(|p| p.get_help().is_some());
    if !possible.is_empty() && !with_help {
        let names: Vec<String> = possible
            .iter()
            .map(|p| format!("`{}`", p.get_name()))
            .collect();
        facts.push(format!("Possible values: {}.", names.join(", ")));
    }
    if !facts.is_empty() {
        let _ = writeln!(page, "\n  {}", facts.join(" "));
    }
    if with_help {
        page.push_str("\n  Possible values:\n\n");
        for p in possible {
            let help = p.get_help().map(|h| h.to_string()).unwrap_or_default();
            let _ = writeln!(
                page,
                "  - `{}`{}",
                p.get_name(),
                if help.is_empty() {
                    String::new()
                } else {
                    format!(": {}", escape(&unwrap_lines(&help)))
                }
            );
        }
    }
}

/// Writes `text`'s paragraphs, each on one line.
fn paragraphs(page: &mut String, text: &str) {
    for p in text.trim().split("\n\n").filter(|p| !p.trim().is_empty()) {
        let _ = writeln!(page, "{}\n", escape(&unwrap_lines(p)));
    }
}

/// One paragraph on one line (clap keeps the line breaks of some texts).
fn unwrap_lines(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Help text as markdown: outside code spans, what markdown would take
/// for HTML or emphasis (`<server ip>`, `a*b*c`) is escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_code = false;
    for c in text.chars() {
        match c {
            '`' => in_code = !in_code,
            '<' | '>' | '*' | '\\' if !in_code => out.push('\\'),
            _ => {}
        }
        out.push(c);
    }
    out
}

/// The anchor mdBook and GitHub give a heading of plain words.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_text_is_escaped_outside_code_spans() {
        assert_eq!(
            escape("http://<ip>:<port> and `a <b>` *x*"),
            r"http://\<ip\>:\<port\> and `a <b>` \*x\*"
        );
    }

    #[test]
    fn every_subcommand_has_a_section() {
        let page = markdown();
        for heading in [
            "\n## tillstream\n",
            "\n## tillstream serve\n",
            "\n### tillstream query sales\n",
            "\n## tillstream-loadgen\n",
        ] {
            assert!(page.contains(heading), "no {heading:?} in the page");
        }
        assert!(
            !page.contains("cli-reference\n"),
            "the hidden command is listed"
        );
    }
}
