//! The scripted-server tests of errors without a seq and of device ids
//! the server already holds seqs of.

use super::*;

#[tokio::test]
async fn final_error_without_a_seq_refuses_the_oldest_unacked_batch() -> TestResult {
    // The server could not read batch 2 (a bad payload): its Error carries
    // no seq, the ack of batch 1 comes before it, and the cumulative ack
    // of batch 3 covers 2 as well.
    let s = server(
        Arc::new(|_, seq| match seq {
            2 => Action::ErrorNoSeq(ErrorCode::InvalidPayload),
            _ => Action::Ack,
        }),
        no_reject(),
    )?;
    let ep = client_endpoint(&s.ca_pem, s.addr)?;
    let (tx, mut rx) = mpsc::channel(1024);
    let dev = DeviceClient::start_with_events(ep, config(&s), tx);
    send_all(&dev, 5).await?;
    let r = dev.wait_acked(2, Duration::from_secs(1)).await;
    assert!(
        matches!(
            r,
            Err(ClientError::Refused {
                seq: 2,
                code: 5,
                ..
            })
        ),
        "{r:?}"
    );
    let stats = dev.stats();
    assert_eq!(stats.refused_batches, 1, "{stats:?}");
    assert_eq!(stats.acked_batches, 4, "{stats:?}");
    assert_eq!(stats.acked_events, 0);
    assert_eq!(stats.reconnects, 0);
    dev.close().await;
    let events = drain(&mut rx);
    let refused: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Refused(r) => Some(r.seq),
            _ => None,
        })
        .collect();
    assert_eq!(refused, vec![2]);
    assert_eq!(acked_seqs(&events), vec![1, 3, 4, 5]);
    Ok(())
}

#[tokio::test]
async fn retryable_error_without_a_seq_keeps_the_batch() -> TestResult {
    let s = server(
        Arc::new(|conn, seq| match (conn, seq) {
            (0, 3) => Action::ErrorNoSeq(ErrorCode::Busy),
            _ => Action::Ack,
        }),
        no_reject(),
    )?;
    let ep = client_endpoint(&s.ca_pem, s.addr)?;
    let dev = DeviceClient::start(ep, config(&s));
    send_all(&dev, 6).await?;
    let stats = dev.stats();
    assert_eq!(stats.refused_batches, 0, "{stats:?}");
    assert_eq!(stats.acked_batches, 6, "{stats:?}");
    assert_eq!(stats.reconnects, 1);
    dev.wait_acked(3, Duration::from_secs(1)).await?;
    dev.close().await;
    Ok(())
}

/// A server that already holds seqs 1..=10 of device 1 (an earlier run
/// used the id) and answers `Hello` late, so the client queues first.
fn used_device_server() -> Result<Scripted, Box<dyn std::error::Error + Send + Sync>> {
    let s = server(Arc::new(|_, _| Action::Ack), no_reject())?;
    {
        let mut l = s.log.lock().unwrap();
        l.durable.insert(1, 10);
        l.welcome_delay = Duration::from_millis(300);
    }
    Ok(s)
}

#[tokio::test]
async fn a_used_device_id_is_refused_as_stale_not_acknowledged() -> TestResult {
    let s = used_device_server()?;
    let ep = client_endpoint(&s.ca_pem, s.addr)?;
    let (tx, mut rx) = mpsc::channel(1024);
    let dev = DeviceClient::start_with_events(ep, config(&s), tx);
    // Queued before the Welcome that tells the server's durable seq.
    for seq in 1..=3 {
        dev.send(batch(seq)?).await?;
    }
    let r = dev.wait_acked(3, Duration::from_secs(10)).await;
    assert!(
        matches!(
            r,
            Err(ClientError::Stale {
                seq: 3,
                durable: 10
            })
        ),
        "{r:?}"
    );
    // Known from now on: refused at once.
    let r = dev.send(batch(4)?).await;
    assert!(
        matches!(
            r,
            Err(ClientError::Stale {
                seq: 4,
                durable: 10
            })
        ),
        "{r:?}"
    );
    let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("already used"), "{msg}");
    // A seq above it is fine.
    dev.send(batch(11)?).await?;
    dev.wait_acked(11, Duration::from_secs(10)).await?;
    let r = dev.wait_acked(1, Duration::from_secs(1)).await;
    assert!(matches!(r, Err(ClientError::Stale { seq: 1, .. })), "{r:?}");
    let stats = dev.stats();
    assert_eq!(stats.stale_batches, 4, "{stats:?}");
    assert_eq!(stats.acked_batches, 1, "{stats:?}");
    dev.close().await;
    assert_eq!(
        s.log.lock().unwrap().received,
        vec![(0, 11)],
        "stale batches are never written"
    );
    let events = drain(&mut rx);
    let stale: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Stale(b) => Some((b.seq, b.durable)),
            _ => None,
        })
        .collect();
    assert_eq!(stale, vec![(1, 10), (2, 10), (3, 10)]);
    assert_eq!(acked_seqs(&events), vec![11]);
    Ok(())
}

#[tokio::test]
async fn a_replaying_device_takes_what_the_server_already_has() -> TestResult {
    // A device after a reboot resends what it kept, some of which an
    // earlier life of it already sent.
    let s = used_device_server()?;
    let ep = client_endpoint(&s.ca_pem, s.addr)?;
    let mut cfg = config(&s);
    cfg.replay = true;
    let (tx, mut rx) = mpsc::channel(1024);
    let dev = DeviceClient::start_with_events(ep, cfg, tx);
    send_all(&dev, 12).await?;
    dev.wait_acked(3, Duration::from_secs(1)).await?;
    let stats = dev.stats();
    assert_eq!(stats.stale_batches, 0, "{stats:?}");
    assert_eq!(stats.acked_batches, 12, "{stats:?}");
    dev.close().await;
    assert_acked_once(&drain(&mut rx), 12);
    Ok(())
}
