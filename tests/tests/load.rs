//! The load harness as a smoke test (its full run is `--example load`, docs/benchmarks.md):
//! a few seconds at one small rate through real Mosquitto, tansu, the service and
//! fleetsim as separate processes; nothing the devices had acknowledged is lost, and
//! every figure the full run reports is there.

use std::path::Path;

use fleetwatch_e2e::brokers::OwnBrokers;
use fleetwatch_e2e::load::{run, table_row, Layout, Load, TABLE_HEADER};

#[test]
fn a_short_load_loses_nothing_and_is_measured() {
    let fleetwatch = std::env::var("FLEETWATCH_BIN").expect("FLEETWATCH_BIN");
    let fleetsim = Path::new(&fleetwatch).with_file_name("fleetsim");
    let dir = std::env::temp_dir().join(fleetwatch_e2e::unique("load-smoke"));
    let brokers = OwnBrokers::start_with_storage(dir.clone(), "memory://tansu/");
    let load = Load {
        devices: 50,
        interval_ms: 100,
        warmup_secs: 4.0,
        window_secs: 4.0,
        partitions: fleetwatch_e2e::RIG_PARTITIONS,
        anomalies_per_minute: 6.0,
    };
    let measured = run(
        &brokers,
        fleetsim.to_str().unwrap(),
        load,
        Layout::OneProcess,
    );
    println!("{TABLE_HEADER}\n{}", table_row(&measured));
    assert!(measured.acknowledged > 1000, "{measured:?}");
    assert_eq!(measured.lost, 0, "{measured:?}");
    assert!(measured.rate > 100.0, "{measured:?}");
    for process in ["fleetwatch", "tansu", "mosquitto", "fleetsim"] {
        let cpu = measured.cpu_us_per_message[process];
        assert!(cpu > 0.0, "{process} used no CPU? {measured:?}");
    }
    assert!(measured.service_rss_mb > 1.0);
    assert!(measured.twin_ms_p99.is_some(), "twins were updated");
    assert!(measured.floor_ms_p99.is_some(), "the bare probe ran");
    let _ = std::fs::remove_dir_all(dir);
}
