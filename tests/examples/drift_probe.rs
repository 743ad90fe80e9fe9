//! How soon slow drifts are found on simulator-like devices (three correlated metrics,
//! sensor rounding): 200 seeded devices, each learns `WARM` readings (10 a second), then
//! one metric ramps 0.1 sigma per reading for 55 readings and holds; detection is an
//! episode opening or escalating (production rules, 150 calm readings to close).
//!
//! `cargo run --release -p fleetwatch-e2e --example drift_probe -- [CONFIG.json|-] [WARM]`
use fleetwatch_models::production::{self, Episode, EpisodeRules};
use fleetwatch_models::{Observation, Scorer, Trainer};
use fleetwatch_protocol::MetricValues;
use fleetwatch_sim::signal::DeviceSignal;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let config: production::Config = match args.get(1) {
        Some(path) if path != "-" => {
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
        }
        _ => production::Config::default(),
    };
    let warm: usize = args.get(2).map_or(400, |a| a.parse().unwrap());
    let rules = EpisodeRules {
        clear_after_events: 150,
        ..production::episode_rules(&config)
    };
    let (mut found, mut total, mut delays) = (0, 0, Vec::new());
    for seed in 0..200u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let signal = DeviceSignal::random(&mut rng, 86_400.0);
        let names = ["temperature", "humidity", "power"];
        let metric = (seed % 3) as usize;
        let sigma = signal.metrics[metric].sigma;
        let mut trainer = production::trainer(&config);
        let mut scorer = production::scorer();
        let mut params = trainer.snapshot();
        let mut episode = Episode::default();
        let mut detected = None;
        let ramp = 55usize;
        for i in 0..(warm + ramp + 5) {
            let t = 1_800_000_000_000i64 + i as i64 * 100;
            let mut values = signal.sample(t, &mut rng);
            if i >= warm {
                let k = (i - warm + 1).min(ramp) as f64;
                values[metric] += 0.1 * sigma * k * if seed % 2 == 0 { 1.0 } else { -1.0 };
            }
            let map: MetricValues = names.iter().map(|&n| n.into()).zip(values).collect();
            let obs = Observation {
                ts_ms: t,
                metrics: &map,
            };
            let score = scorer.score(&params, &obs);
            if let Some(tr) = episode.observe(&rules, &score, i as u64) {
                if i >= warm && detected.is_none() && tr != production::Transition::Closed {
                    detected = Some(i - warm);
                }
            }
            trainer.update(&obs);
            if i % 10 == 9 {
                params = trainer.snapshot();
            }
        }
        total += 1;
        if let Some(d) = detected {
            found += 1;
            delays.push(d);
        }
    }
    delays.sort();
    println!(
        "found {found}/{total}; median delay {:?}",
        delays.get(delays.len() / 2)
    );
}
