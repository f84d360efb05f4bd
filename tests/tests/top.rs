//! `tillstream top` in a real terminal (tmux): it shows a live server's
//! figures, and q leaves it with the terminal given back.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::crash::loadgen_args;
use crate::process::{SERVER_BIN, ServeOpts, ServerProcess};

fn tmux(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("tmux").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "tmux {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls the pane until `done` holds; the last capture either way.
fn wait_for(session: &str, limit: Duration, done: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]).unwrap_or_default();
        if done(&screen) || t0.elapsed() > limit {
            return screen;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_tmux),
    ignore = "needs tmux on PATH when built; .ci/run installs it"
)]
async fn top_shows_a_live_server_in_a_terminal_and_q_gives_it_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 2)?;
    let _server = ServerProcess::start(&opts)?;
    let load = tokio::spawn(tillstream_loadgen::run::run(loadgen_args(
        &opts,
        &dir.path().join("acked.json"),
        60_000,
        6_000,
        41,
    )?));

    let session = format!("tillstream-top-{}", std::process::id());
    let command = format!(
        "{SERVER_BIN} top --server-http {} --interval-ms 300; echo top-exited-$?; sleep 60",
        opts.http_url()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "40",
        &command,
    ])?;
    let result = tokio::task::block_in_place(|| -> anyhow::Result<()> {
        // A frame with a nonzero ingest rate and both shards.
        let screen = wait_for(&session, Duration::from_secs(20), |s| {
            s.contains("events/s")
                && s.lines().any(|l| l.starts_with("1 "))
                && !s.contains("ingest                  0 events/s")
        });
        assert!(screen.contains("tillstream top"), "{screen}");
        assert!(screen.contains("ack latency  p50"), "{screen}");
        assert!(
            screen.lines().any(|l| l.starts_with("0 "))
                && screen.lines().any(|l| l.starts_with("1 ")),
            "a row per shard: {screen}"
        );
        assert!(
            !screen.contains("ingest                  0 events/s"),
            "{screen}"
        );

        tmux(&["send-keys", "-t", &session, "q"])?;
        let screen = wait_for(&session, Duration::from_secs(5), |s| {
            s.contains("top-exited-")
        });
        assert!(screen.contains("top-exited-0"), "q leaves with 0: {screen}");
        // The alternate screen is gone: nothing of the view is left.
        assert!(!screen.contains("ack latency"), "{screen}");
        Ok(())
    });
    let _ = tmux(&["kill-session", "-t", &session]);
    result?;
    let report = load.await??;
    assert!(report.ok, "{:?}", report.failures);
    Ok(())
}
