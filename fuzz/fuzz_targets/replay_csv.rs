//! The replay CLI's CSV reader (models crate, `replay --input FILE`): any table is read
//! and replayed, or refused with an error naming the row; never a panic.
#![no_main]

use fleetwatch_models::replay::{replay_table, TableOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let options = TableOptions {
        timestamp_column: "timestamp".to_owned(),
        metrics: Vec::new(),
        separator: b',',
        publish_every: 10,
        threshold: 0.65,
    };
    let mut output = Vec::new();
    if let Ok(summary) = replay_table(data, &mut output, &options) {
        assert!(summary.anomalies <= summary.rows && summary.episodes <= summary.anomalies);
        assert!(
            !output.is_empty(),
            "a replayed table writes at least its header"
        );
    }
});
