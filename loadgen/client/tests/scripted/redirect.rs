//! Clusters of scripted nodes (one certificate, one store): a device
//! follows `Redirect`s at once and only so many in a row, goes to its
//! next seed when a node fails it or has no owner to name, and comes back
//! to the owner that welcomed it after a plain disconnect.

use std::sync::atomic::{AtomicBool, Ordering};

use tillstream_client::{EndpointOptions, MAX_REDIRECTS, client_endpoint_with};

use super::*;

/// A device of the cluster: `seeds` after `first`, quick backoff.
fn cluster_config(first: SocketAddr, seeds: &[SocketAddr], device: u64) -> ClientConfig {
    let mut cfg = ClientConfig::new(first, device);
    cfg.seeds = seeds.to_vec();
    cfg.max_inflight = 8;
    cfg.backoff_min = Duration::from_millis(5);
    cfg.backoff_max = Duration::from_millis(50);
    cfg.connect_timeout = Duration::from_secs(5);
    cfg
}

fn redirect_to(owner: String) -> HelloScript {
    Arc::new(move |_| Some(Answer::Redirect(owner.clone())))
}

fn acks() -> Script {
    Arc::new(|_, _| Action::Ack)
}

/// The nodes that heard a `Hello` of `device`, in order.
fn hellos_of(log: &Mutex<Log>, device: u64) -> Vec<SocketAddr> {
    let l = log.lock().unwrap();
    l.hellos
        .iter()
        .filter(|(_, d)| *d == device)
        .map(|(at, _)| *at)
        .collect()
}

#[tokio::test]
async fn a_redirect_is_followed_at_once() -> TestResult {
    let c = Cluster::new()?;
    let b = c.node(acks(), no_reject())?;
    let a = c.node(acks(), redirect_to(b.addr.to_string()))?;
    let ep = client_endpoint(&a.ca_pem, a.addr)?;
    let mut cfg = cluster_config(a.addr, &[], 1);
    // A backoff would take a second at least: the redirect takes none.
    cfg.backoff_min = Duration::from_secs(2);
    cfg.backoff_max = Duration::from_secs(2);
    let dev = DeviceClient::start(ep, cfg);
    for seq in 1..=5 {
        dev.send(batch(seq)?).await?;
    }
    dev.wait_acked(5, Duration::from_millis(900)).await?;
    let stats = dev.stats();
    assert_eq!(stats.redirects, 1, "{stats:?}");
    assert_eq!(stats.connects, 1);
    assert_eq!(stats.connect_failures, 0);
    assert_eq!(stats.reconnects, 0);
    assert_eq!(hellos_of(&c.log, 1), [a.addr, b.addr]);
    dev.close().await;
    Ok(())
}

#[tokio::test]
async fn an_owner_named_by_dns_is_looked_up() -> TestResult {
    let c = Cluster::new()?;
    let b = c.node(acks(), no_reject())?;
    let a = c.node(acks(), redirect_to(format!("localhost:{}", b.addr.port())))?;
    let ep = client_endpoint(&a.ca_pem, a.addr)?;
    let dev = DeviceClient::start(ep, cluster_config(a.addr, &[], 1));
    send_all(&dev, 3).await?;
    assert_eq!(hellos_of(&c.log, 1), [a.addr, b.addr]);
    assert_eq!(dev.stats().redirects, 1);
    dev.close().await;
    Ok(())
}

#[tokio::test]
async fn redirects_in_a_row_are_bounded() -> TestResult {
    // Two nodes that each say the other owns the store.
    let c = Cluster::new()?;
    let owner = Arc::new(Mutex::new(String::new()));
    let o = owner.clone();
    let b = c.node(
        acks(),
        Arc::new(move |_| Some(Answer::Redirect(o.lock().unwrap().clone()))),
    )?;
    let a = c.node(acks(), redirect_to(b.addr.to_string()))?;
    *owner.lock().unwrap() = a.addr.to_string();
    let ep = client_endpoint(&a.ca_pem, a.addr)?;
    let mut cfg = cluster_config(a.addr, &[], 1);
    cfg.backoff_min = Duration::from_secs(4);
    cfg.backoff_max = Duration::from_secs(4);
    let dev = DeviceClient::start(ep, cfg);
    let limit = MAX_REDIRECTS as usize + 1;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1_900);
    while hellos_of(&c.log, 1).len() < limit {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the redirects were not followed at once: {:?}",
            hellos_of(&c.log, 1)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Then a backoff (2 to 4 s), not one more dial.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let hellos = hellos_of(&c.log, 1);
    assert_eq!(hellos, [a.addr, b.addr, a.addr, b.addr, a.addr]);
    let stats = dev.stats();
    assert_eq!(stats.redirects, limit as u64, "{stats:?}");
    assert_eq!(stats.connects, 0);
    dev.close().await;
    Ok(())
}

#[tokio::test]
async fn no_usable_owner_means_the_next_seed() -> TestResult {
    let c = Cluster::new()?;
    let b = c.node(acks(), no_reject())?;
    let a = c.node(
        acks(),
        Arc::new(|n| {
            Some(Answer::Redirect(match n / 2 {
                0 => String::new(),
                1 => "not an address:x".into(),
                2 => "x".repeat(100_000),
                _ => "\u{0}:1".into(),
            }))
        }),
    )?;
    let ep = client_endpoint(&a.ca_pem, a.addr)?;
    // Devices 2, 4, 6, 8 start at seed 0 (a), one after the other.
    for device in [2, 4, 6, 8] {
        let dev = DeviceClient::start(ep.clone(), cluster_config(a.addr, &[b.addr], device));
        dev.send(batch(1)?).await?;
        dev.wait_acked(1, Duration::from_secs(10)).await?;
        let stats = dev.stats();
        assert_eq!(stats.redirects, 1, "{stats:?}");
        assert_eq!(stats.connects, 1);
        assert_eq!(hellos_of(&c.log, device), [a.addr, b.addr]);
        dev.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn not_owner_refusal_means_the_next_seed() -> TestResult {
    let c = Cluster::new()?;
    let a = c.node(
        acks(),
        Arc::new(|_| Some(Answer::Reject(ErrorCode::NotOwner))),
    )?;
    let b = c.node(acks(), no_reject())?;
    let ep = client_endpoint(&a.ca_pem, a.addr)?;
    let dev = DeviceClient::start(ep, cluster_config(a.addr, &[b.addr], 0));
    send_all(&dev, 2).await?;
    let stats = dev.stats();
    assert_eq!(stats.rejects_by_code.get(&21), Some(&1), "{stats:?}");
    assert_eq!(stats.connect_failures, 1);
    assert_eq!(hellos_of(&c.log, 0), [a.addr, b.addr]);
    dev.close().await;
    Ok(())
}

#[tokio::test]
async fn a_dead_seed_means_the_next_one() -> TestResult {
    let c = Cluster::new()?;
    let b = c.node(acks(), no_reject())?;
    // Takes datagrams and never answers.
    let hole = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let ep = client_endpoint(&b.ca_pem, b.addr)?;
    let mut cfg = cluster_config(hole.local_addr()?, &[b.addr], 0);
    cfg.connect_timeout = Duration::from_millis(300);
    let dev = DeviceClient::start(ep, cfg);
    send_all(&dev, 2).await?;
    let stats = dev.stats();
    assert_eq!(stats.connect_failures, 1, "{stats:?}");
    assert_eq!(hellos_of(&c.log, 0), [b.addr]);
    dev.close().await;
    Ok(())
}

#[tokio::test]
async fn a_plain_disconnect_comes_back_to_the_owner() -> TestResult {
    let c = Cluster::new()?;
    // Connection 1 is the device's first to b.
    let b = c.node(
        Arc::new(|conn, seq| match (conn, seq) {
            (1, 3) => Action::Close,
            _ => Action::Ack,
        }),
        no_reject(),
    )?;
    let a = c.node(acks(), redirect_to(b.addr.to_string()))?;
    let ep = client_endpoint(&a.ca_pem, a.addr)?;
    let dev = DeviceClient::start(ep, cluster_config(a.addr, &[], 1));
    send_all(&dev, 6).await?;
    assert_eq!(hellos_of(&c.log, 1), [a.addr, b.addr, b.addr]);
    let stats = dev.stats();
    assert_eq!(stats.redirects, 1, "{stats:?}");
    assert_eq!(stats.reconnects, 1);
    dev.close().await;
    Ok(())
}

#[tokio::test]
async fn a_redirect_mid_session_moves_the_window() -> TestResult {
    let c = Cluster::new()?;
    let d = c.node(acks(), no_reject())?;
    let b = c.node(
        Arc::new(|_, seq| match seq {
            3 => Action::Redirect,
            _ => Action::Ack,
        }),
        no_reject(),
    )?;
    c.log.lock().unwrap().redirect_owner = d.addr.to_string();
    let ep = client_endpoint(&b.ca_pem, b.addr)?;
    let (tx, mut rx) = mpsc::channel(1024);
    let dev = DeviceClient::start_with_events(ep, cluster_config(b.addr, &[], 1), tx);
    send_all(&dev, 6).await?;
    assert_eq!(hellos_of(&c.log, 1), [b.addr, d.addr]);
    let at_d: Vec<u64> = {
        let l = c.log.lock().unwrap();
        l.received
            .iter()
            .filter(|(conn, _)| *conn == 1)
            .map(|(_, q)| *q)
            .collect()
    };
    assert_eq!(
        at_d,
        (3..=6).collect::<Vec<_>>(),
        "resent from the watermark"
    );
    let stats = dev.stats();
    assert_eq!(stats.redirects, 1, "{stats:?}");
    assert_eq!(stats.reconnects, 1);
    dev.close().await;
    assert_acked_once(&drain(&mut rx), 6);
    Ok(())
}

/// A UDP relay to `to` that can be cut: a node that dies without a word.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

async fn relay(to: SocketAddr) -> BoxResult<Relay> {
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await?);
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await?);
    back.connect(to).await?;
    let cut = Arc::new(AtomicBool::new(false));
    let peer = Arc::new(Mutex::new(None::<SocketAddr>));
    let (f, b, c, p) = (front.clone(), back.clone(), cut.clone(), peer.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *p.lock().unwrap() = Some(from);
            if !c.load(Ordering::Relaxed) {
                let _ = b.send(&buf[..n]).await;
            }
        }
    });
    let (f, b, c) = (front.clone(), back, cut.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = b.recv(&mut buf).await {
            let to = *peer.lock().unwrap();
            if let (Some(to), false) = (to, c.load(Ordering::Relaxed)) {
                let _ = f.send_to(&buf[..n], to).await;
            }
        }
    });
    Ok(Relay {
        addr: front.local_addr()?,
        cut,
    })
}

#[tokio::test]
async fn a_node_gone_silent_means_the_next_seed() -> TestResult {
    let c = Cluster::new()?;
    let a = c.node(acks(), no_reject())?;
    let b = c.node(acks(), no_reject())?;
    let via = relay(a.addr).await?;
    let opts = EndpointOptions {
        idle_timeout: Duration::from_millis(600),
        keep_alive: Duration::from_millis(150),
        ..EndpointOptions::default()
    };
    let ep = client_endpoint_with(&a.ca_pem, via.addr, &opts)?;
    let dev = DeviceClient::start(ep, cluster_config(via.addr, &[b.addr], 0));
    send_all(&dev, 3).await?;
    via.cut.store(true, Ordering::Relaxed);
    for seq in 4..=6 {
        dev.send(batch(seq)?).await?;
    }
    dev.wait_acked(6, Duration::from_secs(10)).await?;
    assert_eq!(hellos_of(&c.log, 0), [a.addr, b.addr]);
    let stats = dev.stats();
    assert_eq!(stats.disconnects, 1, "{stats:?}");
    assert_eq!(stats.reconnects, 1);
    assert_eq!(
        stats.connect_failures, 0,
        "straight to the next seed, not the silent node again: {stats:?}"
    );
    assert!(
        stats
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("timed out")),
        "{stats:?}"
    );
    dev.close().await;
    Ok(())
}
