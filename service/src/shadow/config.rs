use serde::{Deserialize, Serialize};

/// The model registry: candidate models in shadow beside production (docs/shadow.md).
/// Section `[shadow]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShadowConfig {
    /// Candidates trained at once, at most: those in shadow, promoted anywhere, or the
    /// one a promotion replaced (kept trained for a rollback). Each costs about one more
    /// production model per device it covers, in the trainer and in the scorer
    /// (docs/benchmarks.md measures it). Starting a shadow beyond it is refused (409).
    pub max_candidates: usize,
    /// Candidates kept in the registry (created, whatever their state), at most.
    pub max_created: usize,
    /// How long (ms) a REST change waits for this instance's reader of `iot.models` to
    /// apply it, so the answer shows the change.
    pub apply_timeout_ms: u64,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        Self {
            max_candidates: 2,
            max_created: 100,
            apply_timeout_ms: 10_000,
        }
    }
}
