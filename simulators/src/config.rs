use std::path::PathBuf;

use clap::Args;

use crate::AnomalyKind;

/// What to simulate. Every field is also a `fleetsim` flag.
#[derive(Args, Clone, Debug)]
pub struct SimConfig {
    /// MQTT broker host.
    #[arg(long, default_value = "127.0.0.1")]
    pub mqtt_host: String,
    /// MQTT broker port.
    #[arg(long, default_value_t = 1883)]
    pub mqtt_port: u16,
    /// Number of devices, each with its own MQTT connection.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Device ids are this prefix and a zero-padded number.
    #[arg(long, default_value = "sim-")]
    pub id_prefix: String,
    /// Milliseconds between two readings of one device.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Seed of every random choice: the same seed gives the same fleet and anomalies.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Anomalies started per minute across the fleet (Poisson arrivals).
    #[arg(long, default_value_t = 10.0)]
    pub anomalies_per_minute: f64,
    /// No anomaly starts in the first seconds, while models learn.
    #[arg(long, default_value_t = 60.0)]
    pub warmup_secs: f64,
    /// Stop after this many seconds (unset: run until interrupted).
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// No anomaly starts in the last seconds of a run with a duration, so each one can end
    /// and be detected before the run stops.
    #[arg(long, default_value_t = 10.0)]
    pub quiet_tail_secs: f64,
    /// Length of a device's "day" in seconds (the period of its daily cycle).
    #[arg(long, default_value_t = 86_400.0)]
    pub day_secs: f64,
    /// Kinds of anomaly to inject (comma-separated), the mix: each anomaly's kind is
    /// drawn uniformly from this list, so a kind listed twice comes twice as often. In a
    /// run with a duration, a drift (at least 50 readings of ramp, then a short hold) is
    /// started early enough to end before the devices stop; where the run is too short
    /// for one, another kind is drawn instead.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "spike,level_shift,drift,stuck,decorrelation,dropout"
    )]
    pub kinds: Vec<AnomalyKind>,
    /// Write the ground truth (one JSON line per injected anomaly: device, kind, metric,
    /// magnitude_sigmas, start_ms, end_ms, and peak_ms for a drift; each field is
    /// described in simulators/src/anomaly.rs) to this file.
    #[arg(long)]
    pub ground_truth: Option<PathBuf>,
    /// Fraction of commands a device reports as failed (a command's args can force it:
    /// `{"simulate": "fail"}`, `"slow"` or `"ok"`).
    #[arg(long, default_value_t = 0.1)]
    pub command_failure_rate: f64,
    /// Fraction of commands that take `slow_command_ms` between acknowledgement and
    /// outcome (args can set it: `{"delay_ms": 3000}`).
    #[arg(long, default_value_t = 0.2)]
    pub slow_command_rate: f64,
    #[arg(long, default_value_t = 5000)]
    pub slow_command_ms: u64,
    /// Outages started per minute across the fleet: a device drops its connection
    /// without saying goodbye (the broker publishes its Last Will), stays away for
    /// `outage_secs`, and comes back. Recorded in the ground truth as a dropout.
    #[arg(long, default_value_t = 0.0)]
    pub outages_per_minute: f64,
    #[arg(long, default_value_t = 20.0)]
    pub outage_secs: f64,
    /// Fraction of software updates (`software_update` commands) that fail at
    /// verification (args can force it: `{"simulate": "fail"}`).
    #[arg(long, default_value_t = 0.05)]
    pub update_failure_rate: f64,
    /// Milliseconds each stage of a software update takes (downloading, verifying,
    /// installing).
    #[arg(long, default_value_t = 1000)]
    pub update_stage_ms: u64,
    /// Firmware versions that misbehave (comma-separated): a device running one starts
    /// a spike `bad_build_gap_ms` after its previous anomaly ends.
    #[arg(long, value_delimiter = ',')]
    pub bad_builds: Vec<String>,
    #[arg(long, default_value_t = 2000)]
    pub bad_build_gap_ms: i64,
}

impl SimConfig {
    /// Devices that are `devices` in number with defaults otherwise; for tests and the demo.
    pub fn new(mqtt_host: &str, mqtt_port: u16, devices: usize) -> Self {
        Self {
            mqtt_host: mqtt_host.to_owned(),
            mqtt_port,
            devices,
            id_prefix: "sim-".to_owned(),
            interval_ms: 1000,
            seed: 7,
            anomalies_per_minute: 10.0,
            warmup_secs: 60.0,
            duration_secs: None,
            quiet_tail_secs: 10.0,
            day_secs: 86_400.0,
            kinds: AnomalyKind::ALL.to_vec(),
            ground_truth: None,
            command_failure_rate: 0.1,
            slow_command_rate: 0.2,
            slow_command_ms: 5000,
            outages_per_minute: 0.0,
            outage_secs: 20.0,
            update_failure_rate: 0.05,
            update_stage_ms: 1000,
            bad_builds: Vec::new(),
            bad_build_gap_ms: 2000,
        }
    }

    pub fn device_id(&self, index: usize) -> String {
        format!("{}{index:05}", self.id_prefix)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimConfig,
    }

    #[test]
    fn the_flags_default_to_every_kind_as_the_library_does() {
        let cli = Cli::parse_from(["fleetsim"]);
        assert_eq!(cli.sim.kinds, SimConfig::new("h", 1, 1).kinds);
        assert_eq!(cli.sim.kinds, AnomalyKind::ALL.to_vec());
        let mix = Cli::parse_from(["fleetsim", "--kinds", "drift,drift,decorrelation"]);
        assert_eq!(
            mix.sim.kinds,
            [
                AnomalyKind::Drift,
                AnomalyKind::Drift,
                AnomalyKind::Decorrelation
            ]
        );
    }
}
