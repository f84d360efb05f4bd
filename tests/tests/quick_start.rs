//! The quick start (`docs/start/quick-start.md`) run as a script: its
//! ```console blocks, in order, by one bash shell in a temporary
//! directory, with the `tillstream` and `tillstream-loadgen` built from
//! this checkout first on PATH, each command's output checked against the
//! lines the page shows. The convention is in a comment at the top of the
//! page: `$ ` starts a command (`\` at the end of a line continues it),
//! the lines after it are its output, `...` matches any text in a line and
//! a line of `...` any lines; a command ending with `&` runs in the
//! background and the next starts once its output begins as shown; ports
//! 7400 and 7401 become two free ones.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::process::SERVER_BIN;

/// The `tillstream-loadgen` program, built from its own `main.rs` inside
/// this package (cargo tells a test only where its package's binaries are).
const LOADGEN_BIN: &str = env!("CARGO_BIN_EXE_tillstream-loadgen-under-test");

/// The page, from the repository's root.
const PAGE: &str = "docs/start/quick-start.md";

/// How long a command may run; debug builds are slow.
const COMMAND_LIMIT: Duration = Duration::from_secs(180);

/// How long a background command may take to print what the page shows.
const BACKGROUND_LIMIT: Duration = Duration::from_secs(60);

/// One command of the page and the output it shows.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    /// Line of the page where it starts.
    line: usize,
    /// The command, continuation lines included.
    command: String,
    /// What the page shows it prints.
    expected: Vec<String>,
}

impl Step {
    fn background(&self) -> bool {
        let c = self.command.trim_end();
        c.ends_with('&') && !c.ends_with("&&")
    }
}

/// The commands of the page's ```console blocks, in order.
fn steps(page: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_console = false;
    let mut in_other = false;
    let mut continued = false;
    for (i, line) in page.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        if !in_console && !in_other {
            if fence {
                let info = line.trim_start().trim_start_matches('`').trim();
                in_console = info == "console";
                in_other = !in_console;
            }
            continue;
        }
        if fence {
            in_console = false;
            in_other = false;
            continued = false;
            continue;
        }
        if in_other {
            continue;
        }
        if continued {
            let step = steps.last_mut().expect("a continued command");
            step.command.push('\n');
            step.command.push_str(line);
            continued = line.ends_with('\\');
        } else if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                line: i + 1,
                command: command.to_owned(),
                expected: Vec::new(),
            });
            continued = command.ends_with('\\');
        } else {
            let step = steps
                .last_mut()
                .unwrap_or_else(|| panic!("{PAGE}:{}: output before any `$ ` command", i + 1));
            step.expected.push(line.to_owned());
        }
    }
    for step in &mut steps {
        while step.expected.last().is_some_and(|l| l.trim().is_empty()) {
            step.expected.pop();
        }
    }
    steps
}

/// Whether `line` matches `pattern`, where `...` matches any text.
fn line_matches(pattern: &str, line: &str) -> bool {
    let (pattern, line) = (pattern.trim_end(), line.trim_end());
    let parts: Vec<&str> = pattern.split("...").collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !line.starts_with(first) || line.len() < first.len() + last.len() || !line.ends_with(last) {
        return false;
    }
    let mut rest = &line[first.len()..line.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `lines` match `expected`, where a line of `...` matches any
/// number of lines; with `open_end`, lines past the last expected one are
/// allowed too (the output of a background command so far).
fn lines_match(expected: &[String], lines: &[String], open_end: bool) -> bool {
    match expected.split_first() {
        None => open_end || lines.iter().all(|l| l.trim().is_empty()),
        Some((first, rest)) if first.trim() == "..." => {
            (0..=lines.len()).any(|skip| lines_match(rest, &lines[skip..], open_end))
        }
        Some((first, rest)) => lines
            .split_first()
            .is_some_and(|(l, more)| line_matches(first, l) && lines_match(rest, more, open_end)),
    }
}

/// A QUIC (UDP) port and the next one (TCP, HTTP) both free on loopback:
/// the loadgen looks for the HTTP API on the port after the server's, as
/// the page's 7400 and 7401.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("binding a UDP port");
        let port = udp.local_addr().expect("its address").port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two free consecutive ports on 127.0.0.1");
}

/// The bash shell running the page, in a process group of its own
/// (killed with everything it started when the test ends).
#[derive(Debug)]
struct Shell {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Shell {
    fn start(dir: &Path, bin: &Path, quic: u16) -> Self {
        use std::os::unix::process::CommandExt as _;
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin.to_path_buf()];
        paths.extend(std::env::split_paths(&path));
        let mut command = Command::new("bash");
        command
            .args(["--norc", "--noprofile"])
            .current_dir(dir)
            .env("PATH", std::env::join_paths(paths).expect("a PATH"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        // A newcomer's shell has none of the variables CI sets.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TILLSTREAM_") {
                command.env_remove(key);
            }
        }
        command
            .env("TILLSTREAM_LISTEN", format!("127.0.0.1:{quic}"))
            .env("TILLSTREAM_HTTP", format!("127.0.0.1:{}", quic + 1));
        let mut child = command.spawn().expect("starting bash");
        let mut stdin = child.stdin.take().expect("bash's stdin");
        let stdout = child.stdout.take().expect("bash's stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Every command's stderr with its stdout, as a terminal shows them.
        writeln!(stdin, "exec 2>&1").expect("writing to bash");
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// Runs `command` (its output to `log` if given) and returns its exit
    /// status and what it printed.
    fn run(&mut self, n: usize, command: &str, log: Option<&Path>) -> (i32, Vec<String>) {
        let marker = format!("@@quick-start-done-{n} ");
        let redirect = match log {
            Some(log) => format!("> '{}' 2>&1 < /dev/null", log.display()),
            None => "< /dev/null".to_owned(),
        };
        write!(
            self.stdin,
            "{{\n{command}\n}} {redirect}\nprintf '\\n{marker}%s\\n' \"$?\"\n"
        )
        .and_then(|()| self.stdin.flush())
        .expect("writing to bash");
        let deadline = Instant::now() + COMMAND_LIMIT;
        let mut output = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(status) = line.strip_prefix(&marker) {
                        // The line break printed before the marker.
                        if output.last().is_some_and(|l: &String| l.is_empty()) {
                            output.pop();
                        }
                        return (status.trim().parse().unwrap_or(-1), output);
                    }
                    output.push(line);
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "`{command}` did not finish within {COMMAND_LIMIT:?}; its output so far:\n{}",
                    output.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "bash exited during `{command}`; its output:\n{}",
                    output.join("\n")
                ),
            }
        }
    }
}

impl Drop for Shell {
    /// Kills bash and whatever it left running (a server the page did
    /// not stop because a step failed).
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// Lines of a file, empty if it is not there yet.
fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_quick_start_runs_as_shown() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let page = std::fs::read_to_string(root.join(PAGE)).expect("reading the quick start");
    let quic = free_port_pair();
    let ports = |s: &str| {
        s.replace(":7400", &format!(":{quic}"))
            .replace(":7401", &format!(":{}", quic + 1))
    };
    let steps = steps(&page);
    assert!(
        steps.len() >= 5,
        "{PAGE} has {} console commands: fewer than the tour it must show",
        steps.len()
    );

    let dir = tempfile::tempdir().expect("a temporary directory");
    let bin: PathBuf = dir.path().join(".bin");
    std::fs::create_dir(&bin).expect("creating .bin");
    for (name, program) in [
        ("tillstream", SERVER_BIN),
        ("tillstream-loadgen", LOADGEN_BIN),
    ] {
        std::os::unix::fs::symlink(program, bin.join(name)).expect("linking a program");
    }
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("creating the working directory");
    let mut shell = Shell::start(&work, &bin, quic);

    for (n, step) in steps.iter().enumerate() {
        let command = ports(&step.command);
        let expected: Vec<String> = step.expected.iter().map(|l| ports(l)).collect();
        let at = format!("{PAGE}:{}", step.line);
        eprintln!("quick start, {at}: $ {command}");
        let started = Instant::now();
        if step.background() {
            let log = dir.path().join(format!("background-{n}.log"));
            let (status, output) = shell.run(n, &command, Some(&log));
            assert_eq!(status, 0, "{at}: `{command}` could not start: {output:?}");
            loop {
                let lines = read_lines(&log);
                if lines_match(&expected, &lines, true) {
                    break;
                }
                assert!(
                    started.elapsed() < BACKGROUND_LIMIT,
                    "{at}: within {BACKGROUND_LIMIT:?}, `{command}` did not print what the page shows.\n\
                     The page shows:\n{}\nIt printed:\n{}",
                    expected.join("\n"),
                    lines.join("\n")
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        } else {
            let (status, output) = shell.run(n, &command, None);
            assert!(
                status == 0,
                "{at}: `{command}` exited with {status}; it printed:\n{}",
                output.join("\n")
            );
            assert!(
                expected.is_empty() || lines_match(&expected, &output, false),
                "{at}: `{command}` printed other lines than the page shows.\n\
                 The page shows:\n{}\nIt printed:\n{}",
                expected.join("\n"),
                output.join("\n")
            );
        }
        eprintln!("  done in {:.1} s", started.elapsed().as_secs_f64());
    }
}

/// The convention itself: commands, continuations, output, wildcards.
#[test]
fn the_page_convention_is_read_as_documented() {
    let page = "text\n```sh\n$ not run\n```\n```console\n$ a \\\n  b &\nout 1\n...\n\n$ c\n```\n";
    let steps = steps(page);
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].command, "a \\\n  b &");
    assert!(steps[0].background());
    assert_eq!(steps[0].expected, ["out 1", "..."]);
    assert_eq!(steps[1].command, "c");
    assert!(!steps[1].background());
    assert!(steps[1].expected.is_empty());

    assert!(line_matches(
        "10 of 10 in ... s: ... events/s",
        "10 of 10 in 0.5 s: 20 events/s"
    ));
    assert!(!line_matches("10 of 10 in ... s", "10 of 11 in 0.5 s"));
    assert!(line_matches("a...", "a"));
    assert!(!line_matches("ab...ba", "aba"));
    let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(lines_match(
        &lines(&["...", "x", "..."]),
        &lines(&["a", "x", "b"]),
        false
    ));
    assert!(!lines_match(&lines(&["x"]), &lines(&["x", "y"]), false));
    assert!(lines_match(&lines(&["x"]), &lines(&["x", "y"]), true));
    assert!(!lines_match(
        &lines(&["...", "z"]),
        &lines(&["x", "y"]),
        true
    ));
}
