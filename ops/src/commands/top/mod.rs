//! `tillstream top`: a live view of a running server, from its
//! `/metrics`, refreshed every second.

mod view;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, terminal};

use tillstream_engine::scrape::Scrape;

/// Watch a running server: events/s, ack latency percentiles, journal and
/// flush latency, connections, rejects, and each shard's queue. q, Esc or
/// Ctrl-C leaves. When stdout is not a terminal, prints a frame per
/// interval instead (as `top -b`).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The server's HTTP API.
    #[arg(
        long,
        default_value = "http://127.0.0.1:7401",
        env = "TILLSTREAM_SERVER_HTTP"
    )]
    server_http: String,
    /// Bearer token (analyst or admin): needed when the server runs with
    /// --metrics-auth, and to show each shard's share of its budget.
    #[arg(long, env = "TILLSTREAM_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Refresh interval in milliseconds.
    #[arg(long, default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    interval_ms: u64,
    /// Frames to show before leaving (default: until q).
    #[arg(long)]
    frames: Option<u64>,
}

/// Puts the terminal back however `top` ends (error or panic included).
struct Screen;

impl Screen {
    fn enter() -> anyhow::Result<Screen> {
        terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
        let guard = Screen;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        Ok(guard)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let base = args.server_http.trim_end_matches('/').to_string();
    let token = args.api_token.as_deref();
    let budget = crate::api::call(&format!("{base}/v1/settings"), token, None)
        .ok()
        .and_then(|s| s["max_inflight_bytes_per_shard"].as_f64());
    let scrape = || -> anyhow::Result<Scrape> {
        Ok(Scrape::parse(&metrics_text(
            &format!("{base}/metrics"),
            token,
        )?))
    };
    let interval = Duration::from_millis(args.interval_ms);
    let mut before = (Instant::now(), scrape()?);
    let live = std::io::stdout().is_terminal();
    let _screen = if live { Some(Screen::enter()?) } else { None };
    let mut shown = 0u64;
    loop {
        if wait_or_quit(interval, live)? {
            break;
        }
        let now = (Instant::now(), scrape()?);
        let secs = now.0.duration_since(before.0).as_secs_f64();
        let lines = view::frame(&base, &before.1, &now.1, secs, budget);
        let mut out = std::io::stdout().lock();
        if live {
            execute!(
                out,
                cursor::MoveTo(0, 0),
                terminal::Clear(terminal::ClearType::All)
            )?;
            for l in &lines {
                // Raw mode: a line feed does not return the carriage.
                write!(out, "{l}\r\n")?;
            }
        } else {
            writeln!(out, "{}\n", lines.join("\n"))?;
        }
        out.flush()?;
        before = now;
        shown += 1;
        if args.frames.is_some_and(|n| shown >= n) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits one interval; true if the user asked to leave meanwhile.
fn wait_or_quit(interval: Duration, live: bool) -> anyhow::Result<bool> {
    if !live {
        std::thread::sleep(interval);
        return Ok(false);
    }
    let until = Instant::now() + interval;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if !event::poll(left)? {
            break;
        }
        if let Event::Key(k) = event::read()?
            && k.kind == KeyEventKind::Press
        {
            let ctrl_c =
                k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
            if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The text of `/metrics` (not JSON, so not through `api::call`).
fn metrics_text(url: &str, token: Option<&str>) -> anyhow::Result<String> {
    let mut req = ureq::get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {}", t.trim()));
    }
    let mut resp = req
        .call()
        .with_context(|| format!("reading {url} (is the server running with --http?)"))?;
    resp.body_mut()
        .read_to_string()
        .with_context(|| format!("reading {url}"))
}
