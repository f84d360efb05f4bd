use super::*;

#[test]
fn a_window_reads_each_hour_it_touches_once() {
    let h = 3_600_000_000;
    assert_eq!(hours_of(0, h), (0, 0));
    assert_eq!(hours_of(0, h + 1), (0, 1));
    assert_eq!(hours_of(h - 1, h + 1), (0, 1));
    assert_eq!(hours_of(5 * h, 5 * h), (5, 5));
}

/// The engine calls the store from `spawn_blocking` threads of its own
/// runtime: blocking on the driver's runtime there must work (and not
/// panic as "a runtime within a runtime").
#[test]
fn a_blocking_thread_of_another_runtime_can_wait_on_the_drivers() -> Result<(), String> {
    let driver = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let engine = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .map_err(|e| e.to_string())?;
    let handle = driver.handle().clone();
    let got = engine.block_on(async move {
        tokio::task::spawn_blocking(move || {
            handle.block_on(async {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                7
            })
        })
        .await
    });
    driver.shutdown_background();
    assert_eq!(got.ok(), Some(7));
    Ok(())
}
