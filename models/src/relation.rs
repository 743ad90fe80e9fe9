//! Relations between a device's metrics: PCA of an exponentially weighted correlation
//! matrix (so the trainer keeps no window of readings), refitted on a schedule with
//! linfa's pure-Rust symmetric eigensolver.
//!
//! Per event the scorer computes Hotelling's T² (how unusual the reading is along the
//! directions the metrics normally move in together) and the squared prediction error
//! SPE/Q (how far the reading is from the plane those directions span: a broken
//! relation), each against its control limit (χ² for T², Jackson–Mudholkar for Q, 99%).
//! Like the per-metric checks, the short average of each ratio is then compared with its
//! learned long-run distribution in log space, which keeps the score calibrated when
//! readings are autocorrelated or the fit is noisy. Each metric's share of Q names the
//! metrics that broke the relation.

use linfa::ParamGuard;
use linfa_linalg::eigh::{EigSort, Eigh};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::detector::Running;
use crate::ring::{Ring, Rings};
use crate::ModelError;

/// Most metrics a relation model covers (the first ones seen, by name).
pub const MAX_COLUMNS: usize = 16;

/// Settings of the relation model (part of the detector's configuration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelationConfig {
    /// Score broken relations between metrics (devices with 2+ metrics).
    pub enabled: bool,
    /// Weight of the newest reading in the mean and covariance, in (0, 1).
    pub alpha: f64,
    /// Refit the principal components every this many events, once the fit has settled.
    pub refit_every: u32,
    /// Refits come this often at first (a young covariance changes quickly), then every
    /// fifth of the events learned, up to `refit_every`.
    pub first_refit_every: u32,
    /// Keep the components that explain this fraction of the variance, in (0, 1).
    pub explained: f64,
    /// Events before the first fit.
    pub min_events: u64,
    /// Events after the first fit before the score is trusted (its calibration learns).
    pub calibration_events: u64,
}

impl Default for RelationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            alpha: 0.002,
            refit_every: 100,
            first_refit_every: 20,
            explained: 0.9,
            min_events: 60,
            calibration_events: 40,
        }
    }
}

impl ParamGuard for RelationConfig {
    type Checked = RelationConfig;
    type Error = ModelError;

    fn check_ref(&self) -> Result<&Self::Checked, Self::Error> {
        let invalid = |what: &str| Err(ModelError::InvalidConfig(format!("relation: {what}")));
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return invalid("alpha must be in (0, 1)");
        }
        if !(self.explained > 0.0 && self.explained < 1.0) {
            return invalid("explained must be in (0, 1)");
        }
        if self.first_refit_every == 0 || self.refit_every < self.first_refit_every {
            return invalid("need 1 <= first_refit_every <= refit_every");
        }
        if self.min_events < 10 {
            return invalid("min_events must be at least 10");
        }
        Ok(self)
    }

    fn check(self) -> Result<Self::Checked, Self::Error> {
        self.check_ref()?;
        Ok(self)
    }
}

/// What the scorer needs: the fitted components, limits and calibration. `f32`: these
/// travel with every parameter snapshot.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(try_from = "RelationParamsWire")]
pub struct RelationParams {
    /// Indexes of the covered metrics in the detector's (sorted) metric list. Boxed
    /// slices, not `Vec`s: 40 bytes less per copy (the same encoding).
    pub columns: Box<[u8]>,
    /// The fit, in one allocation (the trainer and every scorer keep one per device):
    /// `width` means, `width` scales, `components` eigenvalues, then `components` ×
    /// `width` loadings, component after component. Written as four arrays, as it was.
    fit: Box<[f32]>,
    width: u8,
    components: u8,
    /// 99% control limits of T² and Q.
    pub t2_limit: f32,
    pub spe_limit: f32,
    /// Long-run mean and standard deviation of ln(average ratio to the limit).
    pub t2_calibration: (f32, f32),
    pub spe_calibration: (f32, f32),
    /// The calibration has learned enough for the score to count.
    pub ready: bool,
}

/// [`RelationParams`] as written (the fit as four arrays).
#[derive(Deserialize)]
#[serde(rename = "RelationParams")]
struct RelationParamsWire {
    columns: Box<[u8]>,
    mean: Vec<f32>,
    scale: Vec<f32>,
    loadings: Vec<f32>,
    eigenvalues: Vec<f32>,
    t2_limit: f32,
    spe_limit: f32,
    t2_calibration: (f32, f32),
    spe_calibration: (f32, f32),
    ready: bool,
}

impl TryFrom<RelationParamsWire> for RelationParams {
    type Error = &'static str;

    fn try_from(wire: RelationParamsWire) -> Result<Self, Self::Error> {
        let fitted =
            RelationParams::fitted(&wire.mean, &wire.scale, &wire.eigenvalues, &wire.loadings)
                .ok_or("a relation whose arrays do not fit together")?;
        Ok(RelationParams {
            columns: wire.columns,
            t2_limit: wire.t2_limit,
            spe_limit: wire.spe_limit,
            t2_calibration: wire.t2_calibration,
            spe_calibration: wire.spe_calibration,
            ready: wire.ready,
            ..fitted
        })
    }
}

impl Serialize for RelationParams {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("RelationParams", 10)?;
        out.serialize_field("columns", &self.columns)?;
        out.serialize_field("mean", self.mean())?;
        out.serialize_field("scale", self.scale())?;
        out.serialize_field("loadings", self.loadings())?;
        out.serialize_field("eigenvalues", self.eigenvalues())?;
        out.serialize_field("t2_limit", &self.t2_limit)?;
        out.serialize_field("spe_limit", &self.spe_limit)?;
        out.serialize_field("t2_calibration", &self.t2_calibration)?;
        out.serialize_field("spe_calibration", &self.spe_calibration)?;
        out.serialize_field("ready", &self.ready)?;
        out.end()
    }
}

/// One reading against the model: standardised values and residuals per column.
pub struct Evaluation {
    pub t2: f64,
    pub spe: f64,
    pub z: [f64; MAX_COLUMNS],
    pub residual: [f64; MAX_COLUMNS],
    /// Each column's share of T² (may be negative).
    pub t2_share: [f64; MAX_COLUMNS],
}

impl RelationParams {
    /// A fit of `mean.len()` columns (at most 255) and `eigenvalues.len()` components (at
    /// most 255), with no columns, limits or calibration yet; `None` when the arrays'
    /// lengths do not fit together.
    pub fn fitted(
        mean: &[f32],
        scale: &[f32],
        eigenvalues: &[f32],
        loadings: &[f32],
    ) -> Option<Self> {
        let (width, components) = (mean.len(), eigenvalues.len());
        let fits = scale.len() == width && loadings.len() == width * components;
        if !fits || width > usize::from(u8::MAX) || components > usize::from(u8::MAX) {
            return None;
        }
        let parts = [mean, scale, eigenvalues, loadings];
        Some(RelationParams {
            fit: parts.concat().into_boxed_slice(),
            width: width as u8,
            components: components as u8,
            ..RelationParams::default()
        })
    }

    fn width(&self) -> usize {
        usize::from(self.width)
    }

    pub fn mean(&self) -> &[f32] {
        &self.fit[..self.width()]
    }

    pub fn scale(&self) -> &[f32] {
        &self.fit[self.width()..][..self.width()]
    }

    pub fn eigenvalues(&self) -> &[f32] {
        &self.fit[2 * self.width()..][..usize::from(self.components)]
    }

    /// `k` components of `width` loadings each, component after component.
    pub fn loadings(&self) -> &[f32] {
        &self.fit[2 * self.width() + usize::from(self.components)..]
    }

    /// Whether the fit is whole and usable, and its columns as many as its width
    /// (parameters come from outside the process).
    pub fn is_consistent(&self) -> bool {
        let m = self.width();
        (1..=MAX_COLUMNS).contains(&m)
            && (self.columns.is_empty() || self.columns.len() == m)
            && self.eigenvalues().iter().all(|&l| l > 0.0)
            && self.scale().iter().all(|&s| s > 0.0)
    }

    /// T², Q and the per-column parts of one reading (`values` in column order).
    pub fn evaluate(&self, values: &[f64]) -> Evaluation {
        // Parameters come from outside the process: whatever their shape, no panic (a
        // relation of no column, more loadings than eigenvalues: fuzz target
        // `model_params`). Consistent ones (`is_consistent`) are evaluated in full.
        let width = self.width().min(MAX_COLUMNS);
        let m = width.min(values.len());
        let mut out = Evaluation {
            t2: 0.0,
            spe: 0.0,
            z: [0.0; MAX_COLUMNS],
            residual: [0.0; MAX_COLUMNS],
            t2_share: [0.0; MAX_COLUMNS],
        };
        if width == 0 || self.width() > MAX_COLUMNS {
            return out;
        }
        let (mean, scale) = (self.mean(), self.scale());
        for (j, &value) in values.iter().enumerate().take(m) {
            out.z[j] = (value - f64::from(mean[j])) / f64::from(scale[j]);
            out.residual[j] = out.z[j];
        }
        for (loadings, &lambda) in self.loadings().chunks_exact(width).zip(self.eigenvalues()) {
            let t: f64 = loadings
                .iter()
                .zip(&out.z)
                .map(|(&p, z)| f64::from(p) * z)
                .sum();
            let lambda = f64::from(lambda);
            out.t2 += t * t / lambda;
            for (j, &p) in loadings.iter().enumerate() {
                let p = f64::from(p);
                out.residual[j] -= p * t;
                out.t2_share[j] += out.z[j] * p * t / lambda;
            }
        }
        out.spe = out.residual[..m].iter().map(|r| r * r).sum();
        out
    }

    /// The value of column `j` that the other columns imply (the reading projected on the
    /// components), in the metric's units.
    pub fn expected(&self, evaluation: &Evaluation, j: usize) -> f64 {
        let fitted = evaluation.z[j] - evaluation.residual[j];
        f64::from(self.mean()[j]) + f64::from(self.scale()[j]) * fitted
    }
}

/// Short-term context: the last few ratios of T² and Q to their limits, in one buffer
/// (ring `T2` and ring `SPE`); serialized as it was with a [`Ring`] each, so the
/// trainer's state is unchanged.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(try_from = "RelationContextWire")]
pub struct RelationContext {
    recent: Rings<2, RELATION_INLINE>,
}

/// Ratios kept without an allocation: both rings at the default averaging window (5).
const RELATION_INLINE: usize = 10;

const T2: usize = 0;
const SPE: usize = 1;

/// [`RelationContext`] as the trainer's state holds it.
#[derive(Deserialize)]
#[serde(rename = "RelationContext")]
struct RelationContextWire {
    t2: Ring<f32>,
    spe: Ring<f32>,
}

impl TryFrom<RelationContextWire> for RelationContext {
    type Error = &'static str;

    fn try_from(wire: RelationContextWire) -> Result<Self, Self::Error> {
        let mut recent = Rings::default();
        recent.restore(T2, &wire.t2)?;
        recent.restore(SPE, &wire.spe)?;
        Ok(Self { recent })
    }
}

impl Serialize for RelationContext {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("RelationContext", 2)?;
        out.serialize_field("t2", &self.recent.wire(T2))?;
        out.serialize_field("spe", &self.recent.wire(SPE))?;
        out.end()
    }
}

impl RelationContext {
    /// Remember this reading's ratios; returns ln(average + 1e-3) of T² and of Q.
    pub fn observe(
        &mut self,
        params: &RelationParams,
        eval: &Evaluation,
        window: usize,
    ) -> RelationReading {
        let t2 = eval.t2 / f64::from(params.t2_limit).max(1e-9);
        let spe = eval.spe / f64::from(params.spe_limit).max(1e-9);
        self.recent.push(T2, t2 as f32, window);
        self.recent.push(SPE, spe as f32, window);
        let average = |r: usize| {
            let sum: f64 = self.recent.iter(r).map(f64::from).sum();
            sum / self.recent.len(r) as f64
        };
        let (t2_average, spe_average) = (average(T2), average(SPE));
        RelationReading {
            t2: (t2_average + 1e-3).ln(),
            spe: (spe_average + 1e-3).ln(),
            t2_current: t2 >= 0.5 * t2_average,
            spe_current: spe >= 0.5 * spe_average,
        }
    }
}

/// The short averages of one reading's statistics (log space), and whether this reading
/// itself carries them: after a spike the average stays high for a few readings, but the
/// readings that follow are not the fault and must not be blamed for it.
#[derive(Clone, Copy, Debug)]
pub struct RelationReading {
    pub t2: f64,
    pub spe: f64,
    pub t2_current: bool,
    pub spe_current: bool,
}

/// The learning half: streaming mean and covariance, and the current fit.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RelationTrainer {
    /// Indexes of the covered metrics in the detector's sorted metric list (kept right
    /// by [`RelationTrainer::metric_inserted`]); fixed once chosen.
    /// (Boxed slices, not `Vec`s: fixed once chosen, 8 bytes less each.)
    columns: Box<[u8]>,
    #[serde(with = "crate::detector::count_as_u64")]
    n: u32,
    mean: Box<[f64]>,
    /// Packed upper triangle of the covariance, row after row (`f32`: half the memory,
    /// and a correlation needs no more precision).
    cov: Box<[f32]>,
    since_refit: u32,
    #[serde(with = "crate::detector::count_as_u64")]
    fitted_events: u32,
    model: Option<RelationParams>,
    context: RelationContext,
    t2: Running,
    spe: Running,
}

fn packed(i: usize, j: usize, m: usize) -> usize {
    let (i, j) = if i <= j { (i, j) } else { (j, i) };
    i * m - i * (i + 1) / 2 + j
}

impl RelationTrainer {
    pub fn columns(&self) -> &[u8] {
        &self.columns
    }

    /// Whether a restored trainer's arrays fit together and its columns name metrics of
    /// a detector that knows `metrics` (trainer state comes from outside the process).
    pub fn is_consistent(&self, metrics: usize) -> bool {
        let m = self.columns.len();
        if m == 0 {
            return self.mean.is_empty() && self.cov.is_empty() && self.model.is_none();
        }
        m <= MAX_COLUMNS
            && self.columns.iter().all(|&c| usize::from(c) < metrics)
            && self.mean.len() == m
            && self.cov.len() == m * (m + 1) / 2
            && self
                .model
                .as_ref()
                .is_none_or(|model| model.is_consistent() && model.mean().len() == m)
    }

    /// The detector inserted a metric at `index` of its list: later indexes move up.
    pub fn metric_inserted(&mut self, index: usize) {
        for column in self.columns.iter_mut() {
            if usize::from(*column) >= index {
                *column = column.saturating_add(1);
            }
        }
    }

    /// Learn one reading. `values` holds the current value of every covered metric in
    /// `columns` order, or is `None` when one is missing (nothing is learned then).
    /// `metrics` is how many metrics the detector knows: the first time there are 2+,
    /// they become the columns.
    pub fn update(
        &mut self,
        config: &RelationConfig,
        window: usize,
        calibration_alpha: f64,
        metrics: usize,
        values: Option<&[f64]>,
    ) {
        if !config.enabled {
            return;
        }
        if self.columns.is_empty() {
            if metrics < 2 {
                return;
            }
            self.columns = (0..metrics.min(MAX_COLUMNS)).map(|i| i as u8).collect();
            let m = self.columns.len();
            self.mean = vec![0.0; m].into();
            self.cov = vec![0.0; m * (m + 1) / 2].into();
            return;
        }
        let Some(values) = values else { return };
        self.learn_calibration(config, window, calibration_alpha, values);
        self.learn_moments(config, values);
        self.since_refit += 1;
        let n = u64::from(self.n);
        let interval = (n / 5).clamp(
            u64::from(config.first_refit_every),
            u64::from(config.refit_every),
        );
        if n >= config.min_events && u64::from(self.since_refit) >= interval {
            self.refit(config);
        }
    }

    fn learn_moments(&mut self, config: &RelationConfig, values: &[f64]) {
        let m = self.columns.len();
        self.n = self.n.saturating_add(1);
        let weight = config.alpha.max(1.0 / f64::from(self.n));
        let mut delta = [0.0; MAX_COLUMNS];
        for j in 0..m {
            delta[j] = values[j] - self.mean[j];
            self.mean[j] += weight * delta[j];
        }
        // West's exponentially weighted update of the covariance.
        for i in 0..m {
            for j in i..m {
                let c = &mut self.cov[packed(i, j, m)];
                *c = ((1.0 - weight) * (f64::from(*c) + weight * delta[i] * delta[j])) as f32;
            }
        }
    }

    /// The score's calibration learns the current fit's ratios on the trainer's own
    /// readings (the scorer keeps its own short context).
    fn learn_calibration(
        &mut self,
        config: &RelationConfig,
        window: usize,
        alpha: f64,
        values: &[f64],
    ) {
        let Some(model) = self.model.as_mut() else {
            return;
        };
        let eval = model.evaluate(values);
        let reading = self.context.observe(model, &eval, window);
        self.fitted_events = self.fitted_events.saturating_add(1);
        if u64::from(self.fitted_events) > window as u64 {
            self.t2.learn(reading.t2, alpha);
            self.spe.learn(reading.spe, alpha);
        }
        model.t2_calibration = (self.t2.mean as f32, self.t2.std() as f32);
        model.spe_calibration = (self.spe.mean as f32, self.spe.std() as f32);
        model.ready = u64::from(self.fitted_events) >= config.calibration_events;
    }

    /// Principal components of the correlation matrix, keeping enough to explain
    /// `config.explained` of the variance and at least one dimension of residual.
    pub fn refit(&mut self, config: &RelationConfig) {
        if self.columns.len() < 2 || self.n < 2 {
            return;
        }
        self.since_refit = 0;
        let m = self.columns.len();
        let scale: Vec<f64> = (0..m)
            .map(|j| {
                let floor = 1e-6 * self.mean[j].abs().max(1e-6);
                f64::from(self.cov[packed(j, j, m)])
                    .max(0.0)
                    .sqrt()
                    .max(floor)
            })
            .collect();
        let correlation = Array2::from_shape_fn((m, m), |(i, j)| {
            f64::from(self.cov[packed(i, j, m)]) / (scale[i] * scale[j])
        });
        if correlation.iter().any(|v| !v.is_finite()) {
            return;
        }
        let Ok((values, vectors)) = correlation.eigh().map(|e| e.sort_eig_desc()) else {
            return;
        };
        let total: f64 = values.iter().map(|v| v.max(0.0)).sum::<f64>().max(1e-12);
        let floor = 1e-6 * total;
        let mut k = 0;
        let mut explained = 0.0;
        while k < m - 1 && explained < config.explained {
            explained += values[k].max(0.0) / total;
            k += 1;
        }
        let residual: Vec<f64> = values.iter().skip(k).map(|v| v.max(floor)).collect();
        // Exactly `k × m` (collected from a `flat_map`, a `Vec` doubles past it).
        let mut loadings = Vec::with_capacity(k * m);
        for a in 0..k {
            loadings.extend(vectors.column(a).iter().map(|&v| v as f32));
        }
        let mean: Vec<f32> = self.mean.iter().map(|&v| v as f32).collect();
        let scale: Vec<f32> = scale.iter().map(|&v| v as f32).collect();
        let eigenvalues: Vec<f32> = values.iter().take(k).map(|v| v.max(floor) as f32).collect();
        let Some(fitted) = RelationParams::fitted(&mean, &scale, &eigenvalues, &loadings) else {
            return;
        };
        let previous = self.model.take().unwrap_or_default();
        self.model = Some(RelationParams {
            columns: Box::default(),
            t2_limit: chi_square_99(k as f64) as f32,
            spe_limit: spe_limit_99(&residual) as f32,
            fit: fitted.fit,
            width: fitted.width,
            components: fitted.components,
            ..previous
        });
    }

    /// The current fit, with `columns` filled by the caller.
    pub fn params(&self) -> Option<&RelationParams> {
        self.model.as_ref()
    }
}

/// 99% quantile of χ² with `k` degrees of freedom (Wilson–Hilferty).
fn chi_square_99(k: f64) -> f64 {
    let c = 2.0 / (9.0 * k);
    k * (1.0 - c + 2.326 * c.sqrt()).powi(3)
}

/// 99% control limit of Q from the residual eigenvalues (Jackson–Mudholkar).
fn spe_limit_99(residual: &[f64]) -> f64 {
    let theta = |p: i32| residual.iter().map(|l| l.powi(p)).sum::<f64>();
    let (t1, t2, t3) = (theta(1), theta(2), theta(3));
    let h0 = 1.0 - 2.0 * t1 * t3 / (3.0 * t2 * t2);
    let inner = 2.326 * (2.0 * t2 * h0 * h0).sqrt() / t1 + 1.0 + t2 * h0 * (h0 - 1.0) / (t1 * t1);
    let limit = t1 * inner.max(1e-9).powf(1.0 / h0);
    if limit.is_finite() && limit > 0.0 {
        limit
    } else {
        // Degenerate residual: fall back to the χ² approximation.
        t1 * chi_square_99(residual.len() as f64) / residual.len().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`model_params`): parameters of no column, or more loadings than
    /// eigenvalues, made `evaluate` panic. Arrays that do not fit together are refused
    /// when read; a fit of no column is read, but is not consistent and scores nothing.
    #[test]
    fn malformed_parameters_do_not_panic() {
        let written =
            |mean: Vec<f32>, scale: Vec<f32>, loadings: Vec<f32>, eigenvalues: Vec<f32>| {
                let wire = (Vec::<u8>::new(), mean, scale, loadings, eigenvalues);
                let rest = (1.0f32, 1.0f32, (0.0f32, 1.0f32), (0.0f32, 1.0f32), true);
                postcard::to_allocvec(&(wire, rest)).unwrap()
            };
        let empty = written(vec![], vec![], vec![], vec![1.0]);
        let empty: RelationParams = postcard::from_bytes(&empty).unwrap();
        assert!(!empty.is_consistent());
        assert_eq!(empty.evaluate(&[1.0, 2.0]).t2, 0.0);
        let lopsided = written(vec![0.0, 0.0], vec![1.0, 1.0], vec![1.0; 6], vec![1.0]);
        assert!(postcard::from_bytes::<RelationParams>(&lopsided).is_err());
    }

    /// The fit in one allocation is written as the four arrays it was.
    #[test]
    fn the_fit_is_written_as_four_arrays() {
        let fitted =
            RelationParams::fitted(&[1.0, 2.0], &[0.5, 0.25], &[3.0], &[0.6, 0.8]).unwrap();
        let params = RelationParams {
            columns: vec![0, 1].into(),
            t2_limit: 6.6,
            ready: true,
            ..fitted
        };
        assert_eq!(params.mean(), [1.0, 2.0]);
        assert_eq!(params.scale(), [0.5, 0.25]);
        assert_eq!(params.eigenvalues(), [3.0]);
        assert_eq!(params.loadings(), [0.6, 0.8]);
        let before = (
            vec![0u8, 1],
            vec![1.0f32, 2.0],
            vec![0.5f32, 0.25],
            vec![0.6f32, 0.8],
            vec![3.0f32],
            (6.6f32, 0.0f32, (0.0f32, 0.0f32), (0.0f32, 0.0f32), true),
        );
        let bytes = postcard::to_allocvec(&params).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&before).unwrap());
        assert_eq!(
            postcard::from_bytes::<RelationParams>(&bytes).unwrap(),
            params
        );
        let json = serde_json::to_string(&params).unwrap();
        assert_eq!(
            serde_json::from_str::<RelationParams>(&json).unwrap(),
            params
        );
    }

    #[test]
    fn limits_match_tables() {
        // χ²(0.99): 6.635 (1), 11.345 (3), 23.209 (10); Wilson–Hilferty is close.
        assert!((chi_square_99(1.0) - 6.635).abs() < 0.2);
        assert!((chi_square_99(3.0) - 11.345).abs() < 0.1);
        assert!((chi_square_99(10.0) - 23.209).abs() < 0.1);
        // One residual eigenvalue λ: Q/λ is χ²(1).
        assert!((spe_limit_99(&[2.0]) / 2.0 - 6.635).abs() < 0.5);
    }

    #[test]
    fn config_is_checked() {
        assert!(RelationConfig::default().check().is_ok());
        let bad = RelationConfig {
            explained: 1.0,
            ..RelationConfig::default()
        };
        assert!(bad.check().is_err());
    }
}
