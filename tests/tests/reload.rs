//! SIGHUP on a real `tillstream serve`: the limits in its config file are
//! read again and put in force without dropping a connection; a file that
//! no longer parses changes nothing.

use std::process::Command;
use std::time::{Duration, Instant};

use tillstream_engine_core::testkit::movement;
use tillstream_protocol::frame::decode;
use tillstream_protocol::{Ack, Error, ErrorCode, MsgType};
use tillstream_tests::raw::{RawSession, batch_frame, read_msg};

use crate::process::{ServeOpts, ServerProcess};

/// `kill -HUP` of the server.
pub(crate) fn hangup(server: &ServerProcess) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -HUP failed");
    Ok(())
}

/// Waits until `tillstream_config_reloads_total` (both results) reaches
/// `n`.
fn wait_reloads(server: &ServerProcess, n: f64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metric("tillstream_config_reloads_total")? < n {
        anyhow::ensure!(Instant::now() < deadline, "no reload seen after SIGHUP");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Sends batch `seq` and reads what comes back for it: Ok(durable seq) for
/// an Ack, Err(code) for an Error.
async fn send(
    raw: &mut RawSession,
    seq: u64,
    skus: std::ops::Range<u64>,
) -> anyhow::Result<Result<u64, u16>> {
    let now = tillstream_tests::now_us();
    let events = skus.map(|sku| movement(now, 1, sku, 1)).collect();
    raw.send.write_all(&batch_frame(seq, events)?).await?;
    loop {
        let (t, p) = read_msg(&mut raw.recv).await?;
        match t {
            MsgType::Error => {
                let e = decode::<Error>(&p)?;
                if e.batch_seq == seq {
                    return Ok(Err(e.code));
                }
            }
            MsgType::Ack => {
                let durable = decode::<Ack>(&p)?.durable_seq;
                if durable >= seq {
                    return Ok(Ok(durable));
                }
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_limits_from_the_config_file_and_keeps_connections() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tillstream.toml");
    std::fs::write(&file, "max-skus-per-device = 100\nidle-timeout-s = 30\n")?;
    let mut opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 1)?;
    opts.extra = vec!["--config".into(), file.display().to_string()];
    let server = ServerProcess::start(&opts)?;
    let tokens = tillstream_tests::Tokens::of_data_dir(&opts.data_dir).await?;
    let endpoint =
        tillstream_client::client_endpoint(&std::fs::read(opts.cert_path())?, opts.quic)?;
    let mut raw = RawSession::open(&endpoint, opts.quic, 61, &tokens.device(61, 1, false)?).await?;

    // 64 SKUs are within 100.
    assert_eq!(send(&mut raw, 1, 0..64).await?, Ok(1));

    // The file now allows 64, and changes a setting only a restart applies.
    std::fs::write(&file, "max-skus-per-device = 64\nidle-timeout-s = 31\n")?;
    hangup(&server)?;
    wait_reloads(&server, 1.0)?;
    assert_eq!(
        server.metric("tillstream_config_last_reload_successful")?,
        1.0
    );

    // On the same connection: a new SKU is past the new limit, known ones pass.
    assert_eq!(
        send(&mut raw, 2, 64..70).await?,
        Err(ErrorCode::TooManySkus.as_u16())
    );
    assert_eq!(send(&mut raw, 3, 0..10).await?, Ok(3));
    assert!(
        raw.conn.close_reason().is_none(),
        "the connection was dropped"
    );

    // A file that no longer parses changes nothing, and says so.
    std::fs::write(&file, "max-skus-per-device = \"lots\"\n")?;
    hangup(&server)?;
    wait_reloads(&server, 2.0)?;
    assert_eq!(
        server.metric("tillstream_config_last_reload_successful")?,
        0.0
    );
    assert_eq!(
        send(&mut raw, 4, 70..71).await?,
        Err(ErrorCode::TooManySkus.as_u16()),
        "the limit of the last good reload still holds"
    );

    let log = std::fs::read_to_string(&opts.log)?;
    assert!(
        log.contains("reloaded: max-skus-per-device 100 -> 64"),
        "{log}"
    );
    assert!(
        log.contains("idle-timeout-s"),
        "the restart-only change is named: {log}"
    );
    assert!(log.contains("nothing was reloaded"), "{log}");
    Ok(())
}
